"""Secure aggregation (fedjax_lite.secagg) against plain integer sums in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import fedjax_lite as fl
from fedjax_lite import secagg
from tests.reference import logistic_task

SIZES = [5, 3, 7, 4, 6, 2, 8, 5]


def _wrap(total, bits):
  """A NumPy integer sum reduced to [-2^(bits-1), 2^(bits-1))."""
  half = 1 << (bits - 1)
  return (np.asarray(total, np.int64) + half) % (1 << bits) - half


def _inputs(k, d, bits, seed):
  rng = np.random.default_rng(seed)
  high = 1 << (bits - 1)
  encoded = rng.integers(-high // 4, high // 4, size=(k, d)).astype(np.int32)
  key_bits = rng.integers(0, 2**32, size=(k, 2), dtype=np.uint64).astype(np.uint32)
  return encoded, key_bits, rng


@pytest.mark.parametrize("bits, k, neighbours", [(8, 7, None), (16, 12, 4), (32, 5, 2),
                                                 (12, 2, None)])
def test_the_masked_sum_equals_the_plain_sum_bit_for_bit_with_dropouts(bits, k, neighbours):
  encoded, key_bits, rng = _inputs(k, 33, bits, bits + k)
  active = rng.random(k) < 0.9
  active[0] = True
  encoded[~active] = 0
  run = jax.jit(lambda e, kb, a, s: secagg.secure_sum(e, kb, a, s, bits=bits,
                                                      neighbours=neighbours))
  for survived in (active, active & (rng.random(k) < 0.6)):
    got = run(encoded, key_bits, active, survived)
    want = _wrap(encoded[survived].astype(np.int64).sum(0), bits)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_each_masked_message_is_uniform_whatever_the_client_sends():
  # A client's masked message, over fresh pair keys, is uniform on Z_{2^bits}
  # whatever it encodes: the server learns nothing from it alone.
  bits, k, draws = 4, 5, 4000
  ring_mask = jnp.uint32((1 << bits) - 1)
  keys = jax.random.bits(jax.random.key(0), (draws, k, 2), jnp.uint32)
  for value in (0, 5):
    ring = jnp.full((k, 1), value, jnp.uint32)
    masked, _ = jax.vmap(lambda kb: secagg.mask_messages(  # noqa: B023
        ring, kb, jnp.ones(k, bool), jnp.ones(k, bool), 2, ring_mask))(keys)  # noqa: B023
    counts = np.bincount(np.asarray(masked[:, 0, 0]), minlength=1 << bits)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_the_server_output_depends_only_on_the_sum():
  # Moving t from one client's message to another's changes both masked
  # messages but not one bit of what the server computes.
  bits, k = 16, 6
  encoded, key_bits, _ = _inputs(k, 9, bits, 1)
  moved = encoded.copy()
  moved[1] += 123
  moved[4] -= 123
  run = jax.jit(lambda e: secagg.secure_sum(e, key_bits, np.ones(k, bool), np.ones(k, bool),
                                            bits=bits))
  np.testing.assert_array_equal(np.asarray(run(encoded)), np.asarray(run(moved)))
  ring_mask = jnp.uint32((1 << bits) - 1)
  as_ring = lambda e: jax.lax.bitcast_convert_type(jnp.asarray(e), jnp.uint32) & ring_mask
  everyone = jnp.ones(k, bool)
  a, _ = secagg.mask_messages(as_ring(encoded), key_bits, everyone, everyone, 2, ring_mask)
  b, _ = secagg.mask_messages(as_ring(moved), key_bits, everyone, everyone, 2, ring_mask)
  assert not np.array_equal(np.asarray(a[1]), np.asarray(b[1]))


def test_overflow_wraps_around_and_is_counted():
  bits, k = 8, 5
  encoded = np.full((k, 4), 60, np.int32)  # 300 > 127: every coordinate wraps
  encoded[:, 3] = 20                        # 100 fits
  got = secagg.secure_sum(encoded, np.arange(2 * k, dtype=np.uint32).reshape(k, 2),
                          np.ones(k, bool), np.ones(k, bool), bits=bits)
  np.testing.assert_array_equal(np.asarray(got), _wrap(encoded.sum(0), bits))
  assert np.asarray(got)[0] == 300 - 256


@pytest.fixture(scope="module")
def task():
  population, params, loss = logistic_task(SIZES)
  return population, params, fl.build_client_update(loss, optax.sgd(0.1), batch_size=4)


def _round(update, params, population, aggregator=None, mesh=None, key=1):
  algo = fl.build_federated_algorithm(update, fl.server.fedavg(), aggregator=aggregator,
                                      mesh=mesh)
  return algo.round(algo.init(params), population, jax.random.key(key))


def test_a_secure_round_is_the_plain_round_up_to_the_encodings_resolution(task):
  population, params, update = task
  plain, _ = _round(update, params, population)
  for bits in (8, 16, 24):
    state, m = _round(update, params, population,
                      secagg.secure_aggregator(bits=bits, clip=10.0))
    scale = secagg.SecAggConfig(bits, 10.0, None, 0.0, None).scale(len(SIZES))
    # Each client's coordinate moves by < 1/s; the mean divides by the total weight.
    bound = len(SIZES) / scale / float(np.sum(SIZES))
    assert float(m["aggregator/secagg_clipped_fraction"]) == 0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=bound), state.params,  # noqa: B023
                 plain.params)
    d = sum(x.size for x in jax.tree.leaves(params))
    assert float(m["aggregator/secagg_bits_per_client"]) == d * bits + 32
    assert float(m["aggregator/secagg_bits_sent"]) == len(SIZES) * (d * bits + 32)
    assert float(m["aggregator/num_overflow"]) == 0


def test_dropouts_leave_exactly_the_survivors_mean(task):
  population, params, update = task
  state, m = _round(update, params, population,
                    secagg.secure_aggregator(bits=32, clip=50.0, dropout=0.4), key=3)
  dropped = np.asarray(m["clients"]["aggregator/secagg_dropped"]) > 0
  assert 0 < dropped.sum() < len(SIZES) and float(m["aggregator/num_secagg_dropped"]) == \
      dropped.sum()
  want, _ = _round(update, params, population._replace(
      num_examples=np.where(dropped, 0, population.num_examples)), key=3)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state.params,
               want.params)


def test_a_sharded_secure_round_equals_one_device(task):
  population, params, update = task
  agg = secagg.secure_aggregator(bits=12, clip=10.0, dropout=0.2)
  one, m1 = _round(update, params, population, agg)
  four, m4 = _round(update, params, population, agg, mesh=fl.client_mesh(4))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               one.params, four.params)
  np.testing.assert_array_equal(m1["clients"]["aggregator/secagg_dropped"],
                                m4["clients"]["aggregator/secagg_dropped"])


def test_client_order_does_not_change_the_secure_round(task):
  population, params, update = task
  agg = secagg.secure_aggregator(bits=10, clip=10.0, dropout=0.3)
  order = np.random.default_rng(0).permutation(len(SIZES))
  a, _ = _round(update, params, population, agg)
  b, _ = _round(update, params, fl.take(population, order), agg)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a.params,
               b.params)


def test_small_num_summands_overflows_and_says_so(task):
  population, params, update = task
  _, m = _round(update, params, population,
                secagg.secure_aggregator(bits=6, clip=0.05, num_summands=1))
  assert float(m["aggregator/num_overflow"]) > 0


def test_central_dp_after_secure_aggregation_and_the_rounding_bound(task):
  population, params, update = task
  dp = fl.privacy.gaussian_aggregator(1.0, 1.0, len(SIZES))
  state, m = _round(update, params, population, secagg.secure_aggregator(dp, bits=16, clip=1.0))
  assert float(m["aggregator/noise_std"]) == pytest.approx(1.0 / len(SIZES))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  # Rounding moves a clipped message by less than sqrt(d)/s in L2 norm.
  config = secagg.SecAggConfig(8, 1.0, None, 0.0, None)
  k, d = 4, 50
  x = jax.random.uniform(jax.random.key(0), (200, d), minval=-1, maxval=1) / np.sqrt(d)
  s = config.scale(k)
  u = jax.random.uniform(jax.random.key(1), x.shape)
  moved = np.linalg.norm(np.floor(np.asarray(x) * s + np.asarray(u)) / s - np.asarray(x), axis=1)
  assert moved.max() < secagg.rounding_sensitivity(config, k, d)


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="reveals only their sum"):
    secagg.secure_aggregator(fl.robust.coordinate_median())
  for kw, match in (({"bits": 1}, "bits"), ({"bits": 33}, "at most 32"),
                    ({"clip": 0.0}, "clip"), ({"dropout": 1.0}, "dropout"),
                    ({"neighbours": 1}, "neighbours"), ({"num_summands": 0}, "num_summands")):
    with pytest.raises(ValueError, match=match):
      secagg.secure_aggregator(**kw)
