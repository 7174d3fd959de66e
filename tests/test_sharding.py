"""The client axis sharded over 4 (forced CPU) devices equals the single-device round."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from tests.conftest import MODELS, make_clients

SIZES = (5, 0, 13, 1, 8, 21, 3, 7, 2, 9)  # 10 clients: not a multiple of 4 devices


def _close(a, b, tol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol)


def _aggregators():
  return {
      "fedavg": (lambda: fl.server.fedavg(1.0), None),
      "fedadam": (lambda: fl.server.fedadam(0.03, tau=1e-2), None),
      "dp_fedavg": (lambda: fl.server.fedavg(1.0),
                    lambda: fl.privacy.gaussian_aggregator(0.5, 1.0, expected_cohort_size=10)),
      "dp_fedavg_local": (lambda: fl.server.fedavg(1.0),
                          lambda: fl.privacy.gaussian_aggregator(0.5, 0.3, 10, local=True)),
  }


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() >= 4, "conftest sets XLA_FLAGS for 4 CPU devices"
  return fl.client_mesh(4)


@pytest.mark.parametrize("name", list(_aggregators()))
def test_sharded_round_equals_single_device(mesh, name):
  server, aggregator = _aggregators()[name]
  params, loss = MODELS["mlp"]()
  data = fl.from_clients(make_clients(SIZES))
  update = fl.build_client_update(loss, optax.sgd(0.1), num_epochs=2, batch_size=4)

  def build(m, chunk_size):
    return fl.build_federated_algorithm(update, server(), chunk_size=chunk_size, mesh=m,
                                        aggregator=aggregator() if aggregator else None)

  def run(algo):
    state, history = algo.init(params), []
    for r in range(2):
      state, metrics = algo.round(state, data, jax.random.key(r))
      history.append(metrics)
    return state, history[-1]

  s1, m1 = run(build(None, "auto"))
  for chunk_size in (2, "auto"):  # 10 clients on 4 devices (3 each, 2 padded): chunks of 2, 3
    s2, m2 = run(build(mesh, chunk_size))
    assert s2.params["params"]["Dense_0"]["kernel"].sharding.is_fully_replicated
    _close(s2.params, s1.params)
    _close(s2.opt_state, s1.opt_state)
    for k, v in m1["clients"].items():
      np.testing.assert_allclose(m2["clients"][k], v, atol=1e-5, err_msg=k)
    for k in ("train_loss", "num_clients", "num_examples"):
      np.testing.assert_allclose(m2[k], m1[k], rtol=1e-5)


def test_nonfinite_client_is_found_on_its_device(mesh):
  params, loss = MODELS["linear"]()
  clients = make_clients(SIZES)
  clients[6]["x"][0, 0] = np.nan
  data = fl.from_clients(clients)
  update = fl.build_client_update(loss, optax.sgd(0.1), batch_size=4)
  algo = fl.build_federated_algorithm(update, fl.server.fedavg(), mesh=mesh)
  state, metrics = algo.round(algo.init(params), data, jax.random.key(0))
  assert np.flatnonzero(np.asarray(metrics["clients"]["nonfinite"])).tolist() == [6]
  assert float(metrics["applied"]) == 0.0


def test_sharded_population_run_rounds_equals_unsharded(mesh):
  params, loss = MODELS["linear"]()
  population = fl.from_clients(make_clients(SIZES * 2 + (4,)))  # 21 clients -> 24 on 4 devices
  sharded = fl.shard_clients(population, mesh)
  assert sharded.num_clients == 24 and fl.num_real_clients(sharded) == 21
  assert fl.num_real_clients(population) == 21
  assert sharded.arrays["x"].sharding.spec == jax.sharding.PartitionSpec("clients")
  np.testing.assert_array_equal(np.asarray(sharded.client_ids)[21:], [-1, -1, -1])
  np.testing.assert_array_equal(np.asarray(sharded.num_examples)[21:], [0, 0, 0])
  update = fl.build_client_update(loss, optax.sgd(0.1), num_epochs=2, batch_size=4)
  single = fl.build_federated_algorithm(update, fl.server.fedadam(0.05, tau=1e-2))
  spread = fl.build_federated_algorithm(update, fl.server.fedadam(0.05, tau=1e-2), mesh=mesh)
  kw = dict(num_rounds=3, key=jax.random.key(7), cohort_size=7, progress=False)
  s1, h1 = fl.run_rounds(single, single.init(params), population, **kw)
  s2, h2 = fl.run_rounds(spread, spread.init(params), sharded, **kw)
  _close(s2.params, s1.params)
  for a, b in zip(h1, h2, strict=True):  # the same clients were sampled each round
    assert a["num_examples"] == b["num_examples"] and a["num_clients"] == b["num_clients"]
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-5

  # The same for Poisson sampling with DP (the padded slots and the padding
  # clients are both empty).
  sampler = fl.poisson_sampler(21, 0.3)
  agg = lambda: fl.privacy.gaussian_aggregator(0.5, 1.0, expected_cohort_size=21 * 0.3)
  single = fl.build_federated_algorithm(update, fl.server.fedavg(), aggregator=agg())
  spread = fl.build_federated_algorithm(update, fl.server.fedavg(), aggregator=agg(), mesh=mesh)
  kw = dict(num_rounds=2, key=jax.random.key(3), sampler=sampler, progress=False)
  s1, _ = fl.run_rounds(single, single.init(params), population, **kw)
  s2, _ = fl.run_rounds(spread, spread.init(params), sharded, **kw)
  _close(s2.params, s1.params)


def test_sharded_sweep_equals_unsharded(mesh):
  params, loss = MODELS["linear"]()
  population = fl.from_clients(make_clients(SIZES))

  def make(m):
    return lambda h: fl.build_federated_algorithm(
        fl.build_client_update(loss, optax.sgd(h), batch_size=4), fl.server.fedavg(), mesh=m)

  lrs = jnp.array([0.05, 0.2])
  keys = jax.random.split(jax.random.key(1), 2)
  kw = dict(num_rounds=2, keys=keys, cohort_size=6)
  s1, _ = fl.run_sweep(make(None), lrs, params, population, **kw)
  s2, _ = fl.run_sweep(make(mesh), lrs, params, fl.shard_clients(population, mesh), **kw)
  _close(s2.params, s1.params)


def test_sharded_evaluation_ignores_padding(mesh):
  params, _ = MODELS["linear"]()
  model = fl.models.LogisticRegression(3)
  data = fl.from_clients(make_clients(SIZES))
  evaluate = fl.evaluation.build_evaluator(fl.models.classification_metrics(model.apply))
  plain = evaluate(params, data)
  spread = evaluate(params, fl.shard_clients(data, mesh))
  assert len(spread["clients"]["accuracy"]) == len(SIZES)
  for k in ("loss", "accuracy", "num_examples", "num_clients", "accuracy_p10"):
    assert spread[k] == pytest.approx(plain[k], rel=1e-6), k


def test_padding_and_mesh_errors(mesh):
  data = fl.from_clients(make_clients((3, 2, 4)))
  padded = fl.pad_clients(data, 4)
  assert padded.num_clients == 4 and fl.num_real_clients(padded) == 3
  assert fl.pad_clients(padded, 2) is padded
  bad = padded._replace(client_ids=np.array([-1, 0, 1, 2], np.int32))
  with pytest.raises(ValueError, match="padding clients, which must come after"):
    fl.num_real_clients(bad)
  with pytest.raises(ValueError, match="no client axis 'data'"):
    fl.shard_clients(data, mesh, axis="data")
  with pytest.raises(ValueError, match="`client_axis`='data' is not"):
    fl.build_federated_algorithm(lambda *a: None, fl.server.fedavg(), mesh=mesh,
                                 client_axis="data")
  with pytest.raises(ValueError, match="xla_force_host_platform_device_count=64"):
    fl.client_mesh(64)
  with pytest.raises(ValueError, match="below `num_processes`"):
    fl.initialize_distributed("127.0.0.1:1234", 2, 2)
  with pytest.raises(ValueError, match="'host:port'"):
    fl.initialize_distributed("localhost", 2, 0)
