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
