"""FedBuff / FedAsync (fedjax_lite.asynchronous) against an event-driven reference."""

import jax
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from benchmarks.async_reference import reference_fedbuff
from fedjax_lite import asynchronous, timing
from tests.reference import logistic_task

SIZES = [6, 3, 9, 4, 7, 2, 5, 8, 3, 6, 4, 7]


@pytest.fixture(scope="module")
def setup():
  population, params, loss = logistic_task(SIZES)
  return population, params, fl.build_client_update(loss, optax.sgd(0.2), batch_size=4)


def _run(algo, params, population, steps, key):
  state = algo.init(params, population, key)
  rows = []
  for _ in range(steps):
    state, m = algo.step(state, population, key)
    rows.append(jax.device_get(m))
  return state, rows


@pytest.mark.parametrize("concurrency, buffer, max_staleness", [(5, 2, 2), (4, 1, 8)])
def test_vectorized_fedbuff_equals_the_event_driven_reference(setup, concurrency, buffer,
                                                              max_staleness):
  population, params, update = setup
  devices = timing.device_trace(np.linspace(0.05, 1.0, len(SIZES))[::-1], overhead=0.3)
  optimizer = fl.server.fedadam(0.05)
  algo = asynchronous.build_fedbuff(fl.build_federated_algorithm(update, optimizer), devices,
                                    concurrency=concurrency, buffer=buffer,
                                    max_staleness=max_staleness)
  key = jax.random.key(7)
  state, rows = _run(algo, params, population, 10, key)
  want, ref_rows = reference_fedbuff(update, optimizer, params, population, devices,
                                     concurrency=concurrency, buffer=buffer,
                                     max_staleness=max_staleness,
                                     staleness=asynchronous.polynomial_staleness(0.5),
                                     num_steps=10, key=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               state.server.params, want)
  np.testing.assert_allclose([r["virtual_time"] for r in rows],
                             [r["virtual_time"] for r in ref_rows], rtol=1e-6)
  assert [r["staleness_max"] for r in rows] == [r["staleness_max"] for r in ref_rows]
  times = [r["virtual_time"] for r in rows]
  assert all(b >= a for a, b in zip(times, times[1:], strict=False))
  assert max(r["staleness_max"] for r in rows) > 0  # heterogeneous devices: stale updates


def test_fedbuff_with_concurrency_equal_to_buffer_and_equal_durations_is_fedavg(setup):
  population, params, update = setup
  equal = fl.from_arrays(population.arrays, np.full(len(SIZES), 2), population.client_ids)
  devices = timing.device_trace(np.full(len(SIZES), 0.1))
  algo = fl.build_federated_algorithm(update, fl.server.fedavg(1.0))
  fedbuff = asynchronous.build_fedbuff(algo, devices, concurrency=4, buffer=4)
  key = jax.random.key(3)
  state, rows = _run(fedbuff, params, equal, 5, key)
  sync = algo.init(params)
  for v in range(5):
    k = jax.random.fold_in(jax.random.fold_in(key, asynchronous.SAMPLE_FOLD), v)
    ids = asynchronous.sample_excluding(k, len(SIZES), 4, np.zeros((0,), np.int32))
    sync, _ = algo.round(sync, fl.take(equal, ids), jax.random.fold_in(key, v))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               state.server.params, sync.params)
  assert all(r["staleness_max"] == 0 for r in rows)


def test_sample_excluding_is_uniform_over_the_allowed_clients():
  excluded = np.array([0, 3, 4])
  draws = np.asarray(jax.vmap(lambda k: asynchronous.sample_excluding(k, 10, 3, excluded))(
      jax.random.split(jax.random.key(0), 4000)))
  assert not np.isin(draws, excluded).any()
  assert all(len(set(r)) == 3 for r in draws.tolist())
  counts = np.bincount(draws.ravel(), minlength=10)[[1, 2, 5, 6, 7, 8, 9]]
  expected = 4000 * 3 / 7
  assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)


def test_staleness_functions():
  s = np.arange(6)
  np.testing.assert_allclose(asynchronous.polynomial_staleness(0.5)(s), 1 / np.sqrt(1 + s))
  np.testing.assert_allclose(asynchronous.constant_staleness()(s), 1.0)
  np.testing.assert_allclose(asynchronous.hinge_staleness(10.0, 2)(s),
                             [1, 1, 1, 1 / 11, 1 / 21, 1 / 31], rtol=1e-6)


def test_dp_and_bad_sizes_are_refused(setup):
  population, params, update = setup
  devices = timing.device_trace(np.full(len(SIZES), 0.1))
  dp = fl.build_federated_algorithm(update, fl.server.fedavg(), aggregator=fl.privacy
                                    .gaussian_aggregator(1.0, 1.0, 4.0))
  with pytest.raises(ValueError, match="DP aggregator is refused"):
    asynchronous.build_fedbuff(dp, devices, concurrency=4, buffer=2).init(
        params, population, jax.random.key(0))
  plain = fl.build_federated_algorithm(update, fl.server.fedavg())
  with pytest.raises(ValueError, match="exceeds `concurrency`"):
    asynchronous.build_fedbuff(plain, devices, concurrency=2, buffer=3)
  with pytest.raises(ValueError, match="exceeds the population"):
    asynchronous.build_fedbuff(plain, devices, concurrency=20, buffer=3).init(
        params, population, jax.random.key(0))


def test_sharded_fedbuff_equals_one_device_and_robust_aggregators_run(setup):
  population, params, update = setup
  devices = timing.lognormal_devices(len(SIZES), sigma=1.0, seed=2)
  key = jax.random.key(11)
  results = []
  for mesh in (None, fl.client_mesh(4)):
    algo = fl.build_federated_algorithm(update, fl.server.fedyogi(0.05), mesh=mesh)
    fedbuff = asynchronous.build_fedbuff(algo, devices, concurrency=6, buffer=3)
    results.append(_run(fedbuff, params, population, 6, key)[0].server.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *results)
  robust = fl.build_federated_algorithm(update, fl.server.fedavg(),
                                        aggregator=fl.robust.trimmed_mean(0.2))
  state, rows = _run(asynchronous.build_fedbuff(robust, devices, concurrency=6, buffer=5),
                     params, population, 3, key)
  assert all(np.isfinite(r["train_loss"]) for r in rows)


def test_the_benchmark_reports_each_implementation(capsys):
  import json

  from benchmarks import fedbuff

  fedbuff.main(["--quick"])
  rows = {r["impl"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
  assert set(rows) == {"sync", "fedbuff", "event_driven"}
  assert rows["fedbuff"]["sec_per_step_median"] > 0 and rows["event_driven"]["sec_per_step"] > 0
  assert rows["event_driven"]["vectorized_speedup"] == pytest.approx(
      rows["event_driven"]["sec_per_step"] / rows["fedbuff"]["sec_per_step_median"])


def test_run_async_equals_stepping_and_a_resumed_run_equals_the_uninterrupted_one(setup,
                                                                                   tmp_path):
  from fedjax_lite import checkpoint

  population, params, update = setup
  devices = timing.lognormal_devices(len(SIZES), sigma=1.5, seed=4)
  algo = asynchronous.build_fedbuff(fl.build_federated_algorithm(update, fl.server.fedavg()),
                                    devices, concurrency=6, buffer=2, max_staleness=4)
  key = jax.random.key(5)
  stepped, rows = _run(algo, params, population, 6, key)
  seen = []
  state, history = asynchronous.run_async(
      algo, algo.init(params, population, key), population, num_steps=3, key=key,
      progress=False, callback=lambda r, s, row: seen.append(r))
  checkpoint.save_checkpoint(tmp_path / "c.ckpt", state, {"round": 3})
  resumed, _ = checkpoint.load_checkpoint(tmp_path / "c.ckpt", algo.init(params, population,
                                                                         key))
  resumed, more = asynchronous.run_async(algo, resumed, population, num_steps=3, key=key,
                                         progress=False)
  assert seen == [0, 1, 2] and [r["round"] for r in history + more] == list(range(6))
  jax.tree.map(np.testing.assert_array_equal, resumed, stepped)
  np.testing.assert_array_equal([r["virtual_time"] for r in history + more],
                                [float(r["virtual_time"]) for r in rows])
  assert all(np.asarray(r["clients"]["staleness"]).shape == (2,) for r in rows)
