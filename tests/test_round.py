"""The vectorized round against a plain per-client reference loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from tests.conftest import MODELS, RAGGED_SIZES, linear_model, make_clients
from tests.reference import NumpyServer, reference_round

LR, EPOCHS, BATCH = 0.1, 2, 4

SERVERS = {
    # name: (library optimizer, reference optimizer, tolerance)
    "fedavg": (lambda: fl.server.fedavg(1.0), lambda: NumpyServer("sgd", 1.0), 1e-5),
    "fedavgm": (lambda: fl.server.fedavgm(0.7, 0.9),
                lambda: NumpyServer("sgd", 0.7, momentum=0.9), 1e-5),
    "fedadam": (lambda: fl.server.fedadam(0.03, tau=1e-2),
                lambda: NumpyServer("adam", 0.03, tau=1e-2), 1e-4),
    "fedyogi": (lambda: fl.server.fedyogi(0.03, tau=1e-2),
                lambda: NumpyServer("yogi", 0.03, tau=1e-2), 1e-4),
    "fedadagrad": (lambda: fl.server.fedadagrad(0.03, tau=1e-2),
                   lambda: NumpyServer("adagrad", 0.03, b1=0.0, tau=1e-2), 1e-4),
}


def _run(algo, params, data, keys, cohort_idx=None):
  state = algo.init(params)
  for key in keys:
    cohort = data if cohort_idx is None else data.take(jnp.asarray(cohort_idx))
    state, metrics = algo.round(state, cohort, key)
  return state, metrics


def _assert_tree_close(a, b, tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_matches_reference_loop_after_three_rounds(model, server):
  clients = make_clients(RAGGED_SIZES)
  data = fl.from_clients(clients)
  params, loss = MODELS[model]()
  lib_opt, ref_opt, tol = SERVERS[server]
  update = fl.build_client_update(loss, optax.sgd(LR), num_epochs=EPOCHS, batch_size=BATCH)
  algo = fl.build_federated_algorithm(update, lib_opt(), chunk_size=3)
  keys = [jax.random.key(100 + r) for r in range(3)]
  state, metrics = _run(algo, params, data, keys)

  ref_server = ref_opt()
  ref = jax.tree.map(np.asarray, params)
  for key in keys:
    ref = reference_round(loss, ref, clients, range(len(clients)), key, ref_server, lr=LR,
                          num_epochs=EPOCHS, batch_size=BATCH)
  _assert_tree_close(state.params, ref, tol)
  # The parameters moved, so the comparison is not vacuous.
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True))
  assert moved > 100 * tol
  assert int(state.round) == 3
  assert float(metrics["num_clients"]) == sum(n > 0 for n in RAGGED_SIZES)
  assert float(metrics["num_examples"]) == sum(RAGGED_SIZES)


def test_uniform_weighting_matches_reference():
  clients = make_clients(RAGGED_SIZES)
  params, loss = MODELS["linear"]()
  update = fl.build_client_update(loss, optax.sgd(LR), num_epochs=1, batch_size=BATCH)
  algo = fl.build_federated_algorithm(update, fl.server.fedavg(),
                                      aggregator=fl.mean_aggregator("uniform"))
  key = jax.random.key(7)
  state, _ = _run(algo, params, fl.from_clients(clients), [key])
  ref = reference_round(loss, jax.tree.map(np.asarray, params), clients, range(len(clients)), key,
                        NumpyServer("sgd", 1.0), lr=LR, num_epochs=1, batch_size=BATCH,
                        weighting="uniform")
  _assert_tree_close(state.params, ref, 1e-5)


def test_padding_is_exact_against_unpadded_clients():
  """A cohort padded far beyond its longest client gives the same round."""
  clients = make_clients(RAGGED_SIZES)
  params, loss = MODELS["mlp"]()
  update = fl.build_client_update(loss, optax.sgd(LR), num_epochs=EPOCHS, batch_size=BATCH)
  algo = fl.build_federated_algorithm(update, fl.server.fedavg())
  key = jax.random.key(3)
  tight, m1 = algo.round(algo.init(params), fl.from_clients(clients), key)
  padded, m2 = algo.round(algo.init(params), fl.from_clients(clients, max_examples=64), key)
  _assert_tree_close(tight.params, padded.params, 1e-6)
  np.testing.assert_allclose(m1["train_loss"], m2["train_loss"], rtol=1e-6)
  # Each client alone (unpadded, a cohort of one) reproduces its own delta: one client
  # smaller than a batch, one of a whole number of batches, two with a partial last batch
  # (each distinct size is a compile; the other sizes repeat these cases).
  one = fl.build_federated_algorithm(update, fl.server.fedavg())
  for i, c in enumerate(clients):
    if len(c["y"]) not in (1, 5, 8, 21):
      continue
    alone = fl.from_clients([c], client_ids=[i])
    s, _ = one.round(one.init(params), alone, key)
    s_pad, _ = one.round(one.init(params), fl.from_clients([c], client_ids=[i], max_examples=40),
                         key)
    _assert_tree_close(s.params, s_pad.params, 1e-6)


def test_chunk_size_does_not_change_result():
  clients = make_clients(RAGGED_SIZES)
  data = fl.from_clients(clients)
  params, loss = MODELS["mlp"]()
  update = fl.build_client_update(loss, optax.sgd(LR), num_epochs=EPOCHS, batch_size=BATCH)
  keys = [jax.random.key(r) for r in range(2)]
  base, _ = _run(fl.build_federated_algorithm(update, fl.server.fedadam(0.05)), params, data, keys)
  for chunk_size in (1, 2, 3, 5, 7, 100):  # dividing the 7 clients, not dividing, over them
    got, metrics = _run(
        fl.build_federated_algorithm(update, fl.server.fedadam(0.05), chunk_size=chunk_size),
        params, data, keys)
    _assert_tree_close(got.params, base.params, 1e-5)
    assert metrics["clients"]["num_examples"].shape == (len(clients),)


def test_cohort_order_does_not_change_result():
  clients = make_clients(RAGGED_SIZES)
  data = fl.from_clients(clients)
  params, loss = MODELS["linear"]()
  update = fl.build_client_update(loss, optax.sgd(LR), num_epochs=EPOCHS, batch_size=BATCH)
  algo = fl.build_federated_algorithm(update, fl.server.fedavg(), chunk_size=2)
  keys = [jax.random.key(r) for r in range(3)]
  perm = np.random.default_rng(0).permutation(len(clients))
  a, ma = _run(algo, params, data, keys)
  b, mb = _run(algo, params, data, keys, cohort_idx=perm)
  _assert_tree_close(a.params, b.params, 1e-5)
  # Per-client metrics follow the cohort order.
  np.testing.assert_allclose(mb["clients"]["train_loss"], ma["clients"]["train_loss"][perm],
                             rtol=1e-5)


def test_same_seed_is_bitwise_reproducible():
  data = fl.datasets.synthetic_classification(40, np.arange(40) % 9, num_features=6,
                                              num_classes=3, seed=1)
  params, loss = MODELS["mlp"]()
  update = fl.build_client_update(loss, optax.sgd(LR), num_epochs=2, batch_size=3)
  runs = []
  for _ in range(2):
    algo = fl.build_federated_algorithm(update, fl.server.fedyogi(0.05), chunk_size=8)
    state, hist = fl.run_rounds(algo, algo.init(params), data, num_rounds=3, cohort_size=12,
                                key=jax.random.key(5), progress=False)
    runs.append((state, hist))
  for x, y in zip(jax.tree.leaves(runs[0][0]), jax.tree.leaves(runs[1][0]), strict=True):
    assert np.array_equal(np.asarray(x), np.asarray(y))
  assert [h["train_loss"] for h in runs[0][1]] == [h["train_loss"] for h in runs[1][1]]
  # A different seed gives a different run.
  algo = fl.build_federated_algorithm(update, fl.server.fedyogi(0.05), chunk_size=8)
  other, _ = fl.run_rounds(algo, algo.init(params), data, num_rounds=3, cohort_size=12,
                           key=jax.random.key(6), progress=False)
  assert not np.array_equal(np.asarray(jax.tree.leaves(other.params)[0]),
                            np.asarray(jax.tree.leaves(runs[0][0].params)[0]))


def test_run_rounds_history_and_sampling():
  data = fl.datasets.synthetic_classification(30, 10, num_features=6, num_classes=3, seed=2)
  params, loss = MODELS["linear"]()
  update = fl.build_client_update(loss, optax.sgd(0.1), num_epochs=1, batch_size=5)
  algo = fl.build_federated_algorithm(update, fl.server.fedavg(), chunk_size=4)
  seen = []
  state, hist = fl.run_rounds(algo, algo.init(params), data, num_rounds=4, cohort_size=6,
                              key=jax.random.key(0), progress=False,
                              callback=lambda r, s, m: seen.append(r))
  assert seen == [0, 1, 2, 3] and len(hist) == 4
  for row in hist:
    assert row["num_clients"] == 6 and row["num_examples"] == 60
    assert row["seconds"] > 0 and np.isfinite(row["train_loss"])
  assert hist[-1]["train_loss"] < hist[0]["train_loss"]
  # Resuming from round 4 continues the sequence: rounds 0-3 then 4-5 equal rounds 0-5.
  state2, hist2 = fl.run_rounds(algo, state, data, num_rounds=2, cohort_size=6,
                                key=jax.random.key(0), progress=False)
  full, hist_full = fl.run_rounds(algo, algo.init(params), data, num_rounds=6, cohort_size=6,
                                  key=jax.random.key(0), progress=False)
  assert [h["round"] for h in hist2] == [4.0, 5.0]
  for x, y in zip(jax.tree.leaves(state2), jax.tree.leaves(full), strict=True):
    assert np.array_equal(np.asarray(x), np.asarray(y))
  # The caller's state is not donated away.
  assert np.isfinite(np.asarray(jax.tree.leaves(state.params)[0])).all()


def test_round_compiles_once_across_rounds():
  data = fl.datasets.synthetic_classification(20, 6, num_features=6, num_classes=3, seed=3)
  params, loss = MODELS["linear"]()
  update = fl.build_client_update(loss, optax.sgd(0.1), num_epochs=1, batch_size=3)
  algo = fl.build_federated_algorithm(update, fl.server.fedadam(0.01), chunk_size=3)
  state = algo.init(params)
  cohort = data.take(jnp.arange(5))
  for r in range(4):
    state, _ = algo.round(state, cohort, jax.random.key(r))
  assert algo.round._cache_size() == 1


def test_round_is_pure_and_composable_under_jit_and_vmap():
  """The (already jitted) round composes under jit and vmap: over seeds, independent rounds."""
  data = fl.from_clients(make_clients((4, 7, 2)))
  params, loss = MODELS["linear"]()
  update = fl.build_client_update(loss, optax.sgd(0.1), num_epochs=1, batch_size=2)
  pure = fl.build_federated_algorithm(update, fl.server.fedavg())
  keys = jax.random.split(jax.random.key(0), 3)
  states, _ = jax.jit(jax.vmap(lambda k: pure.round(pure.init(params), data, k)))(keys)
  for i in range(3):
    single, _ = pure.round(pure.init(params), data, keys[i])
    _assert_tree_close(jax.tree.map(lambda x: x[i], states.params), single.params, 1e-6)


def test_run_rounds_compiles_once_over_ten_rounds():
  """No XLA compilation happens in rounds 2..11 of a run (the step compiles once)."""
  data = fl.datasets.synthetic_classification(30, 8, num_features=6, num_classes=3, seed=4)
  params, loss = MODELS["mlp"]()
  update = fl.build_client_update(loss, optax.sgd(0.1), num_epochs=1, batch_size=4)
  algo = fl.build_federated_algorithm(update, fl.server.fedadam(0.01), chunk_size=4)
  compiles, seen = [], {}

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    fl.run_rounds(algo, algo.init(params), data, num_rounds=11, cohort_size=10,
                  key=jax.random.key(0), progress=False,
                  callback=lambda r, s, m: seen.setdefault(r, len(compiles)))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert seen[0] >= 1  # the listener does see the first round's compilation
  assert seen[10] == seen[0]


def test_auto_chunk_size_follows_model_and_data_size():
  def cohort(num_examples, features):
    return fl.FederatedData({"x": jnp.zeros((3, num_examples, features), jnp.float32)},
                            jnp.zeros((3,), jnp.int32), jnp.arange(3, dtype=jnp.int32))

  small = {"w": jnp.zeros((60, 10)), "b": jnp.zeros((10,))}
  per_client = 4 * 610 * 4 + 32 * 61 * 4 + 32 * 610 * 4  # per-example gradients: small model
  assert (fl.hardware.auto_chunk_size(small, cohort(32, 61))
          == fl.algorithm.AUTO_CHUNK_BYTES // per_client)
  mlp = {"w1": jnp.zeros((784, 200)), "w2": jnp.zeros((200, 200)), "w3": jnp.zeros((200, 10))}
  assert 5 <= fl.hardware.auto_chunk_size(mlp, cohort(64, 785)) <= 12
  huge = {"w": jax.ShapeDtypeStruct((4096, 4096), jnp.float32)}
  assert fl.hardware.auto_chunk_size(huge, cohort(1, 1)) == 1
  assert fl.hardware.auto_chunk_size(small, cohort(32, 61), budget_bytes=per_client * 7) == 7


def test_run_rounds_twice_compiles_once():
  """A second run_rounds call with the same algorithm, sampler and shapes reuses the program."""
  params, loss = linear_model()
  population = fl.from_clients(make_clients(RAGGED_SIZES))
  update = fl.build_client_update(loss, optax.sgd(0.1), batch_size=4)
  inner = fl.build_federated_algorithm(update, fl.server.fedavg())
  traces = []

  def round_fn(state, cohort, key):
    traces.append(1)  # runs once per trace (compile), not per round
    return inner.round(state, cohort, key)

  algo = fl.FederatedAlgorithm(inner.init, round_fn)
  key = jax.random.key(0)
  state, h1 = fl.run_rounds(algo, algo.init(params), population, num_rounds=2, key=key,
                            cohort_size=3, progress=False)
  state, h2 = fl.run_rounds(algo, state, population, num_rounds=2, key=key, cohort_size=3,
                            progress=False)
  assert len(traces) == 1
  # ... and continuing equals the uninterrupted run.
  _, h = fl.run_rounds(algo, algo.init(params), population, num_rounds=4, key=key,
                       cohort_size=3, progress=False)
  assert len(traces) == 1
  assert [r["train_loss"] for r in h1 + h2] == [r["train_loss"] for r in h]
  sampler = fl.poisson_sampler(len(RAGGED_SIZES), 0.5)
  for _ in range(2):
    fl.run_rounds(algo, algo.init(params), population, num_rounds=1, key=key,
                  sampler=fl.poisson_sampler(len(RAGGED_SIZES), 0.5), progress=False)
  assert len(traces) == 2 and sampler == fl.poisson_sampler(len(RAGGED_SIZES), 0.5)
