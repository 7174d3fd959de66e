"""The round's extension points: per-client state, broadcast, server update, stacked aggregation.

A toy algorithm exercises all of them against a plain Python reference: each
client keeps a running vector (its state) that it adds to the broadcast value;
the server keeps an ``extra`` counter of rounds and participating clients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from tests.conftest import make_clients

SIZES = (5, 0, 13, 1, 8, 21, 3, 7, 2, 9)  # client 1 is empty
DIM = 3


def _population():
  return fl.from_clients(make_clients(SIZES), max_examples=24)


def _toy_client(broadcast, data, key, state):
  """Message: mean of x's first DIM features + state + broadcast['offset'];
  new state: state + message (so every participation changes it)."""
  del key
  n = data.num_examples
  mask = fl.example_mask(data.num_examples, data.arrays["x"].shape[0])
  mean_x = jnp.sum(jnp.where(mask[:, None], data.arrays["x"][:, :DIM], 0.0), 0) / jnp.maximum(
      n, 1)
  message = {"w": mean_x + state + broadcast["offset"]}
  nf = n.astype(jnp.float32)
  return fl.ClientOutput(message, nf, {}, state=state + message["w"], counts={"num_examples": nf})


def _server_update(state, aggregate, metrics, key):
  del key
  params = {"w": state.params["w"] + aggregate["w"]}
  extra = {"rounds": state.extra["rounds"] + 1,
           "clients": state.extra["clients"] + metrics["num_clients"]}
  return params, state.opt_state, extra


TOY_CLIENT = fl.ClientUpdate(lambda p: jnp.zeros_like(p["w"]), _toy_client)
TOY_SERVER = fl.ServerUpdate(
    init=lambda p: ((), {"rounds": jnp.zeros((), jnp.int32), "clients": jnp.zeros(())}),
    update=_server_update,
    broadcast=lambda s: {"offset": 0.1 * s.extra["rounds"].astype(jnp.float32)})


def _toy_algorithm(**kwargs):
  return fl.build_federated_algorithm(TOY_CLIENT, TOY_SERVER, **kwargs)


def _reference(clients, cohorts):
  """Python loop: the same algorithm, example-weighted mean of messages."""
  n_pop = len(clients)
  states = np.zeros((n_pop, DIM))
  w = np.zeros(DIM)
  rounds, participants = 0, 0
  for cohort in cohorts:
    offset = 0.1 * rounds
    msgs, weights = [], []
    for i in cohort:
      x = clients[i]["x"]
      if len(x) == 0:
        continue
      msg = x[:, :DIM].mean(0) + states[i] + offset
      msgs.append(msg)
      weights.append(len(x))
      states[i] = states[i] + msg
    weights = np.asarray(weights, float)
    w = w + (weights[:, None] * np.asarray(msgs)).sum(0) / weights.sum()
    rounds += 1
    participants += len(msgs)
  return w, states, rounds, participants


COHORTS = [[2, 0, 1, 5], [5, 9, 3, 7], [0, 5, 6, 8], [1, 4, 2, 9]]


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_client_states_broadcast_and_server_update_match_a_loop(chunk_size):
  pop = _population()
  algo = _toy_algorithm(chunk_size=chunk_size)
  state = algo.init({"w": jnp.zeros(DIM)}, num_clients=len(SIZES))
  assert state.client_states.shape == (len(SIZES), DIM)
  for r, cohort in enumerate(COHORTS):
    state, metrics = algo.round(state, fl.take(pop, jnp.asarray(cohort)), jax.random.key(r))
  w, states, rounds, participants = _reference(make_clients(SIZES), COHORTS)
  np.testing.assert_allclose(state.params["w"], w, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(state.client_states, states, rtol=1e-5, atol=1e-5)
  assert int(state.extra["rounds"]) == rounds and int(state.round) == rounds
  assert float(state.extra["clients"]) == participants


def test_unused_slots_and_padding_ids_never_write_states():
  pop = _population()
  algo = _toy_algorithm(chunk_size=2)
  state = algo.init({"w": jnp.zeros(DIM)}, num_clients=len(SIZES))
  cohort = fl.take(pop, jnp.asarray([2, 3, 4, 5]))
  # Slot 1 is an unused Poisson slot (no examples), slot 3 a padding client (id -1).
  cohort = cohort._replace(num_examples=cohort.num_examples.at[1].set(0),
                           client_ids=cohort.client_ids.at[3].set(-1))
  state, _ = algo.round(state, cohort, jax.random.key(0))
  written = np.abs(np.asarray(state.client_states)).sum(1) > 0
  assert written.tolist() == [i in (2, 4) for i in range(len(SIZES))]


def test_sharded_stateful_round_equals_one_device():
  assert jax.device_count() >= 4
  pop = _population()
  mesh = fl.client_mesh(4)
  one, many = _toy_algorithm(chunk_size=2), _toy_algorithm(chunk_size=2, mesh=mesh)
  s1 = one.init({"w": jnp.zeros(DIM)}, num_clients=len(SIZES))
  s4 = many.init({"w": jnp.zeros(DIM)}, num_clients=len(SIZES))
  for r, cohort in enumerate([[2, 0, 1, 5, 9, 3, 7], [0, 5, 6, 8, 4]]):  # 7 and 5 clients
    c = fl.take(pop, jnp.asarray(cohort))
    s1, _ = one.round(s1, c, jax.random.key(r))
    s4, _ = many.round(s4, c, jax.random.key(r))
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s4), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_nonfinite_client_state_is_refused_and_not_written():
  pop = _population()

  def client(broadcast, data, key, state):
    out = _toy_client(broadcast, data, key, state)
    bad = data.client_ids == 3
    return out._replace(state=jnp.where(bad, jnp.nan, out.state))

  for policy, applied in (("raise", 0.0), ("drop", 1.0)):
    algo = fl.build_federated_algorithm(
        fl.ClientUpdate(lambda p: jnp.zeros_like(p["w"]), client),
        fl.ServerUpdate(TOY_SERVER.init, _server_update, lambda s: {"offset": 0.0}),
        nonfinite=policy)
    state = algo.init({"w": jnp.zeros(DIM)}, num_clients=len(SIZES))
    state, metrics = algo.round(state, fl.take(pop, jnp.asarray([2, 3, 4])), jax.random.key(0))
    assert float(metrics["num_nonfinite_clients"]) == 1 and float(metrics["applied"]) == applied
    assert np.isfinite(np.asarray(state.client_states)).all()
    assert (np.asarray(state.client_states[3]) == 0).all()
    assert (np.abs(np.asarray(state.client_states[2])).sum() > 0) == (policy == "drop")


def test_stateful_init_needs_the_population_size():
  algo = _toy_algorithm()
  with pytest.raises(ValueError, match="num_clients=N"):
    algo.init({"w": jnp.zeros(DIM)})
  with pytest.raises(ValueError, match="num_clients"):
    algo.init({"w": jnp.zeros(DIM)}, num_clients=0)


def _stacked_mean(weighting="num_examples"):
  """The plain mean, written as a stacked (combine) aggregator."""
  inner = fl.mean_aggregator(weighting)

  def combine(deltas, weights, stats, state, key):
    del stats, key
    total = jnp.sum(weights)
    mean = jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1) / jnp.maximum(total, 1e-30),
                        deltas)
    return mean, state, {"num_stacked": jnp.asarray(deltas["w"].shape[0], jnp.float32)}

  return inner._replace(combine=combine)


def _stateless_update():
  params = {"w": jnp.zeros((6, 3)), "b": jnp.zeros(3)}

  def loss(p, batch):
    logits = batch["x"] @ p["w"] + p["b"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1))

  return params, fl.build_client_update(loss, optax.sgd(0.3), num_epochs=2, batch_size=4)


@pytest.mark.parametrize("mesh_devices", [None, 4])
def test_stacked_aggregator_equals_streaming_mean(mesh_devices):
  pop = _population()
  params, update = _stateless_update()
  mesh = None if mesh_devices is None else fl.client_mesh(mesh_devices)
  streaming = fl.build_federated_algorithm(update, fl.server.fedavg(), chunk_size=3)
  stacked = fl.build_federated_algorithm(update, fl.server.fedavg(), chunk_size=3,
                                         aggregator=_stacked_mean(), mesh=mesh)
  s1, s2 = streaming.init(params), stacked.init(params)
  for r, cohort in enumerate([[2, 0, 1, 5, 9, 3, 7], [0, 5, 6, 8, 4]]):
    c = fl.take(pop, jnp.asarray(cohort))
    s1, _ = streaming.round(s1, c, jax.random.key(r))
    s2, m2 = stacked.round(s2, c, jax.random.key(r))
    assert float(m2["aggregator/num_stacked"]) == len(cohort)  # the cohort, in order
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_run_rounds_and_run_sweep_with_client_states():
  pop = _population()
  algo = _toy_algorithm(chunk_size=2)
  state = algo.init({"w": jnp.zeros(DIM)}, num_clients=len(SIZES))
  state, _ = fl.run_rounds(algo, state, pop, num_rounds=3, cohort_size=4, key=jax.random.key(1))
  participated = np.abs(np.asarray(state.client_states)).sum(1) > 0
  assert 4 <= participated.sum() <= 10 and float(state.extra["clients"]) >= 4
  states, _ = fl.run_sweep(lambda h: _toy_algorithm(chunk_size=2), None,
                           {"w": jnp.zeros(DIM)}, pop, num_rounds=3, cohort_size=4,
                           keys=jnp.stack([jax.random.key(1), jax.random.key(2)]))
  assert states.client_states.shape == (2, len(SIZES), DIM)
  np.testing.assert_allclose(states.client_states[0], state.client_states, rtol=1e-6)
  with pytest.raises(ValueError, match="ids 0..N-1"):
    fl.run_rounds(algo, algo.init({"w": jnp.zeros(DIM)}, num_clients=4), pop, num_rounds=1,
                  cohort_size=2, key=jax.random.key(0))


# --------------------------------------------------------------------------
# The contracts are explicit: structure and types decide, never names or arity


def test_metric_kinds_are_declared_not_named():
  """``counts`` are summed and ``metrics`` example-weighted, whatever their names."""
  pop = _population()

  def client(params, data, key):
    del key
    nf = data.num_examples.astype(jnp.float32)
    cid = data.client_ids.astype(jnp.float32)
    return fl.ClientOutput({"w": jnp.zeros(DIM)}, nf, {"num_looks_like_a_count": cid},
                           counts={"num_examples": nf, "tokens": 2.0 * nf})

  algo = fl.build_federated_algorithm(client, fl.server.fedavg())
  cohort = [0, 2, 3, 1]
  _, m = algo.round(algo.init({"w": jnp.zeros(DIM)}), fl.take(pop, jnp.asarray(cohort)),
                    jax.random.key(0))
  n = np.array([SIZES[c] for c in cohort], np.float64)
  assert float(m["tokens"]) == 2 * n.sum()  # a count without the num_ prefix: summed
  np.testing.assert_allclose(float(m["num_looks_like_a_count"]), (n * cohort).sum() / n.sum(),
                             rtol=1e-6)  # a mean despite its name
  np.testing.assert_array_equal(m["clients"]["tokens"], 2 * n)


def test_a_nonfinite_client_loss_is_caught_like_a_nonfinite_delta():
  pop = _population()

  def client(params, data, key):
    del key
    nf = data.num_examples.astype(jnp.float32)
    loss = jnp.where(data.client_ids == 2, jnp.nan, 1.0)
    return fl.ClientOutput({"w": jnp.ones(DIM)}, nf, {"train_loss": loss},
                           counts={"num_examples": nf})

  for policy, applied in (("raise", 0.0), ("drop", 1.0)):
    algo = fl.build_federated_algorithm(client, fl.server.fedavg(), nonfinite=policy)
    state0 = algo.init({"w": jnp.zeros(DIM)})
    state, m = algo.round(state0, fl.take(pop, jnp.asarray([0, 2, 3])), jax.random.key(0))
    np.testing.assert_array_equal(m["clients"]["nonfinite"], [False, True, False])
    assert float(m["applied"]) == applied and float(m["num_nonfinite_clients"]) == 1
    assert np.isfinite(float(m["train_loss"]))  # the bad client is left out of the mean
    expected = np.ones(DIM) if policy == "drop" else np.zeros(DIM)
    np.testing.assert_allclose(state.params["w"], expected, rtol=1e-6)


def test_plain_functions_and_paired_updates_are_interchangeable():
  """A plain ``f(params, data, key)`` is the stateless ClientUpdate; an optax optimizer the
  ServerUpdate that applies it to -aggregate."""
  pop = _population()
  update = fl.build_client_update(lambda p, b: jnp.mean((b["x"][:, :DIM] @ p["w"]) ** 2),
                                  optax.sgd(0.1), batch_size=4)
  paired = fl.ClientUpdate(lambda p: (), lambda b, d, k, s: update(b, d, k))
  server = fl.algorithm.optax_server_update(fl.server.fedavg(0.5))
  params = {"w": jnp.ones((DIM,))}
  cohort, key = fl.take(pop, jnp.asarray([0, 2, 4])), jax.random.key(3)
  results = []
  for c, s in ((update, fl.server.fedavg(0.5)), (paired, server), (update, server)):
    algo = fl.build_federated_algorithm(c, s)
    state = algo.init(params)  # no state per client: no num_clients needed
    assert state.client_states == () and state.extra == ()
    results.append(np.asarray(algo.round(state, cohort, key)[0].params["w"]))
  np.testing.assert_array_equal(results[0], results[1])
  np.testing.assert_array_equal(results[0], results[2])
  assert not np.allclose(results[0], params["w"])
  with pytest.raises(TypeError, match="client_update"):
    fl.build_federated_algorithm(42, fl.server.fedavg())
  with pytest.raises(TypeError, match="server_optimizer"):
    fl.build_federated_algorithm(update, lambda g: g)


def test_execution_is_chosen_once_where_the_algorithm_is_built():
  """Constructors take only their hyperparameters; chunking, mesh and the NaN policy are
  chosen by build_federated_algorithm, with results independent of them."""
  pop = _population()
  params = {"w": jnp.zeros(DIM)}
  loss = lambda p, b: jnp.mean((b["x"][:, :DIM] @ p["w"] - b["y"]) ** 2)
  base = fl.algorithms.fedprox(loss, mu=0.1, client_lr=0.05, num_epochs=1, batch_size=4)
  assert isinstance(base.spec, fl.algorithm.AlgorithmSpec)
  cohort, key = fl.take(pop, jnp.arange(8)), jax.random.key(1)
  ref = base.round(base.init(params), cohort, key)[0].params["w"]
  for execution in (dict(chunk_size=3), dict(chunk_size=None, nonfinite="drop"),
                    dict(chunk_size=2, mesh=fl.client_mesh(4))):
    algo = fl.build_federated_algorithm(base, **execution)
    np.testing.assert_allclose(algo.round(algo.init(params), cohort, key)[0].params["w"], ref,
                               rtol=1e-5, atol=1e-7)
  with pytest.raises(TypeError, match="chunk_size"):
    fl.algorithms.fedprox(loss, mu=0.1, client_lr=0.05, num_epochs=1, batch_size=4,
                          chunk_size=2)
  with pytest.raises(TypeError, match="already has its server step"):
    fl.build_federated_algorithm(base, fl.server.fedavg())
  with pytest.raises(TypeError, match="made by hand"):
    fl.build_federated_algorithm(fl.FederatedAlgorithm(base.init, base.round), chunk_size=2)
  with pytest.raises(TypeError, match="server_optimizer"):
    fl.build_federated_algorithm(lambda p, d, k: None)
