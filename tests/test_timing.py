"""Virtual time: device speeds, durations and availability (fedjax_lite.timing)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_lite import timing


def test_lognormal_speeds_are_per_client_and_follow_the_distribution():
  big = timing.lognormal_devices(20_000, median_seconds_per_example=0.02, sigma=0.8, seed=3)
  small = timing.lognormal_devices(10, median_seconds_per_example=0.02, sigma=0.8, seed=3)
  # A client's device does not depend on the population size.
  np.testing.assert_array_equal(small.seconds_per_example, big.seconds_per_example[:10])
  logs = np.log(np.asarray(big.seconds_per_example, np.float64))
  se = 0.8 / np.sqrt(logs.size)
  assert abs(logs.mean() - np.log(0.02)) < 5 * se
  assert abs(logs.std() - 0.8) < 5 * 0.8 / np.sqrt(2 * logs.size)
  other = timing.lognormal_devices(10, median_seconds_per_example=0.02, sigma=0.8, seed=4)
  assert not np.array_equal(other.seconds_per_example, small.seconds_per_example)
  flat = timing.lognormal_devices(5, median_seconds_per_example=0.5, sigma=0.0)
  np.testing.assert_allclose(flat.seconds_per_example, 0.5)


def test_durations_are_overhead_plus_speed_times_work():
  devices = timing.device_trace([0.5, 0.1, 2.0, 0.25], overhead=3.0)
  ids = np.array([2, 0, 3, 3])
  work = np.array([10, 4, 0, 8])
  got = jax.jit(timing.client_durations)(devices, ids, work)
  np.testing.assert_allclose(got, 3.0 + np.array([0.5, 0.1, 2.0, 0.25])[ids] * work)


def test_availability_is_a_per_client_draw_with_its_probability():
  devices = timing.lognormal_devices(5000, availability=0.3)
  ids = jnp.arange(5000)
  mask = np.asarray(timing.available(devices, jax.random.key(1), ids))
  assert abs(mask.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 5000)
  order = np.random.default_rng(0).permutation(5000)
  shuffled = np.asarray(timing.available(devices, jax.random.key(1), ids[order]))
  np.testing.assert_array_equal(shuffled, mask[order])  # independent of cohort position
  again = np.asarray(timing.available(devices, jax.random.key(2), ids))
  assert not np.array_equal(again, mask)  # a new draw each round
  always = timing.lognormal_devices(10)
  assert np.asarray(timing.available(always, jax.random.key(0), jnp.arange(10))).all()


@pytest.mark.parametrize("call, match", [
    (lambda: timing.device_trace([0.1, -1.0]), "client 1 has -1.0"),
    (lambda: timing.device_trace([0.1, float("nan")]), "client 1 has nan"),
    (lambda: timing.device_trace([[0.1]]), "1-D"),
    (lambda: timing.device_trace([0.1], overhead=-1), "`overhead`"),
    (lambda: timing.lognormal_devices(4, availability=0.0), "`availability`"),
    (lambda: timing.lognormal_devices(4, median_seconds_per_example=0), "median"),
    (lambda: timing.lognormal_devices(4, sigma=-1), "`sigma`"),
])
def test_bad_device_arguments_are_one_clear_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# -- synchronous rounds on the virtual clock -------------------------------------------------

import optax  # noqa: E402

import fedjax_lite as fl  # noqa: E402
from tests.reference import logistic_task  # noqa: E402

SIZES = [6, 3, 9, 4, 7, 2, 5, 8]
SPEEDS = np.array([0.5, 0.1, 0.3, 1.0, 0.2, 0.05, 0.4, 0.15])


@pytest.fixture(scope="module")
def task():
  return logistic_task(SIZES)


def _close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)


def test_deadline_and_over_selection_keep_exactly_the_right_clients(task):
  population, params, loss = task
  devices = timing.device_trace(SPEEDS, overhead=0.5)
  algo = fl.build_federated_algorithm(fl.build_client_update(loss, optax.sgd(0.1), batch_size=4),
                                      fl.server.fedavg())
  durations = 0.5 + SPEEDS * np.array(SIZES) * 2
  key = jax.random.key(1)
  for deadline, keep in ((3.0, None), (None, 3), (4.0, 4)):
    timed = timing.timed(algo, devices, deadline=deadline, keep=keep, num_epochs=2)
    state, m = timed.round(algo.init(params), population, key)
    kept = np.ones(len(SIZES), bool) if deadline is None else durations <= deadline
    if keep is not None:
      order = np.argsort(np.where(kept, durations, np.inf), kind="stable")
      kept &= np.isin(np.arange(len(SIZES)), order[:keep])
    want, _ = algo.round(algo.init(params), population._replace(
        num_examples=np.where(kept, population.num_examples, 0)), key)
    _close(state.params, want.params)
    waited = durations[kept].max() if deadline is None else min(durations[kept].max(), deadline)
    if deadline is not None and keep is not None and kept.sum() < keep:
      waited = deadline
    if deadline is not None and keep is None and (durations > deadline).any():
      waited = deadline  # the server waited for the late clients until the deadline
    assert float(m["round_time"]) == pytest.approx(waited, rel=1e-6)
    assert float(m["num_late"]) == (0 if deadline is None else (durations > deadline).sum())


def test_partial_work_finishes_the_steps_that_fit_before_the_deadline(task):
  population, params, loss = task
  devices = timing.device_trace(SPEEDS, overhead=0.5)
  deadline, batch = 2.0, 2
  update = fl.build_client_update(loss, optax.sgd(0.1), batch_size=batch, num_epochs=2,
                                  local_work=timing.deadline_work(devices, deadline,
                                                                  batch_size=batch))
  algo = timing.timed(fl.build_federated_algorithm(update, fl.server.fedavg()), devices,
                      deadline=deadline, partial=True, num_epochs=2)
  _, m = algo.round(algo.init(params), population, jax.random.key(0))
  n = np.array(SIZES)
  full = 2 * -(-n // batch)
  late = 0.5 + SPEEDS * n * 2 > deadline
  want = np.where(late, np.minimum(full, np.floor((deadline - 0.5) / (SPEEDS * batch))), full)
  np.testing.assert_array_equal(np.asarray(m["clients"]["num_steps"]), want)
  assert float(m["num_late"]) == late.sum() and float(m["round_time"]) == deadline


def test_unavailable_clients_sit_the_round_out(task):
  population, params, loss = task
  devices = timing.device_trace(SPEEDS, availability=0.5)
  algo = fl.build_federated_algorithm(fl.build_client_update(loss, optax.sgd(0.1), batch_size=4),
                                      fl.server.fedavg())
  key = jax.random.key(4)
  up = np.asarray(timing.available(devices, key, population.client_ids))
  assert 0 < up.sum() < len(SIZES)
  state, m = timing.timed(algo, devices).round(algo.init(params), population, key)
  want, _ = algo.round(algo.init(params), population._replace(
      num_examples=np.where(up, population.num_examples, 0)), key)
  _close(state.params, want.params)
  assert float(m["num_unavailable"]) == (~up).sum()
  _, history = fl.run_rounds(timing.timed(algo, devices, keep=2), algo.init(params), population,
                             num_rounds=2, cohort_size=5, key=key)
  assert all(h["round_time"] > 0 for h in history)
