"""Compression: stochastic quantization and top-k with error feedback, against NumPy references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from fedjax_lite import compression, privacy
from tests.conftest import RAGGED_SIZES, linear_model, make_clients
from tests.reference import reference_client

# --------------------------------------------------------------------------
# NumPy references (independent of the code under test; they share only the
# documented randomness convention: leaf i of a message quantized with key
# `key` draws jax.random.uniform(fold_in(key, i), shape, float32)).


def np_quantize_leaf(v, bits, u):
  v = np.asarray(v, np.float64)
  lo, hi = v.min(), v.max()
  step = (hi - lo) / (2**bits - 1)
  if step == 0:
    return v.copy()
  t = (v - lo) / step
  r = np.floor(t) + (np.asarray(u, np.float64) < t - np.floor(t))
  return lo + r * step


def np_quantize(tree, bits, key):
  leaves, treedef = jax.tree.flatten(tree)
  out = []
  for i, v in enumerate(leaves):
    u = jax.random.uniform(jax.random.fold_in(key, i), np.shape(v), jnp.float32)
    out.append(np_quantize_leaf(v, bits, u))
  return jax.tree.unflatten(treedef, out)


def np_top_k(vec, k):
  vec = np.asarray(vec, np.float64)
  keep = np.argsort(-np.abs(vec), kind="stable")[:k]  # ties: lower index first
  out = np.zeros_like(vec)
  out[keep] = vec[keep]
  return out


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _assert_tree_close(a, b, tol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                               rtol=tol, atol=tol)


# --------------------------------------------------------------------------
# quantize


def test_quantize_is_unbiased():
  """Mean over N independent keys is within a Hoeffding bound of x.

  Each q_j lies in [B_r, B_{r+1}], an interval of width s, so by Hoeffding
  P(|mean_N q_j - E q_j| >= t) <= 2 exp(-2 N t^2 / s^2). With t = s *
  sqrt(log(2 * d / 1e-6) / (2N)) the union bound over the d coordinates makes
  a false failure less likely than 1e-6.
  """
  bits, n, d = 2, 4000, 64
  x = jnp.asarray(np.random.default_rng(0).uniform(-1.5, 2.0, d), jnp.float32)
  step = float(x.max() - x.min()) / (2**bits - 1)
  keys = jax.random.split(jax.random.key(1), n)
  samples = jax.jit(jax.vmap(lambda k: compression.quantize(x, bits, k)))(keys)
  mean = np.asarray(samples, np.float64).mean(0)
  tol = step * math.sqrt(math.log(2 * d / 1e-6) / (2 * n))
  np.testing.assert_array_less(np.abs(mean - np.asarray(x, np.float64)), tol)
  # The test has power: deterministic rounding to the nearest level (a biased
  # quantizer) is off by far more than tol somewhere.
  nearest = float(x.min()) + np.round((np.asarray(x) - float(x.min())) / step) * step
  assert np.abs(nearest - np.asarray(x)).max() > 5 * tol
  # ... and the samples really are quantized: each takes one of two levels.
  assert len(np.unique(np.asarray(samples))) <= 2**bits


def test_quantize_is_exact_on_the_levels():
  # bits=3: 8 levels from -1 to 0.75 in exact steps of 0.25.
  grid = -1.0 + 0.25 * np.arange(8)
  x = jnp.asarray(np.random.default_rng(0).choice(grid, size=(5, 7)), jnp.float32)
  x = x.at[0, 0].set(-1.0).at[0, 1].set(0.75)  # both ends present
  keys = jax.random.split(jax.random.key(0), 5)
  q = jax.jit(jax.vmap(lambda k: compression.quantize({"a": x}, 3, k)["a"]))(keys)
  np.testing.assert_array_equal(np.asarray(q), np.broadcast_to(np.asarray(x), q.shape))
  # A constant leaf (span 0) is returned unchanged.
  c = jnp.full((4,), 0.3, jnp.float32)
  np.testing.assert_array_equal(np.asarray(compression.quantize(c, 2, jax.random.key(0))),
                                np.asarray(c))


@pytest.mark.parametrize("bits", [1, 2, 8])
def test_quantize_stays_in_range_on_the_grid(bits):
  x = jnp.asarray(np.random.default_rng(bits).standard_normal((300,)) * 3, jnp.float32)
  q = np.asarray(compression.quantize(x, bits, jax.random.key(7)), np.float64)
  lo, hi = float(x.min()), float(x.max())
  assert q.min() >= lo and q.max() <= hi
  step = (hi - lo) / (2**bits - 1)
  r = (q - lo) / step
  np.testing.assert_allclose(r, np.round(r), atol=1e-3)
  # Stochastic rounding moves each value to one of its two neighbouring levels.
  assert np.all(np.abs(q - np.asarray(x)) <= step * (1 + 1e-5))
  if bits == 1:
    assert set(np.unique(q)) <= {lo, hi}


def test_quantize_with_many_bits_is_close_to_identity():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((1000,)), jnp.float32)
  span = float(x.max() - x.min())
  q = compression.quantize(x, 24, jax.random.key(0))
  err = np.abs(np.asarray(q, np.float64) - np.asarray(x, np.float64))
  # One grid step (span / (2^24 - 1)) plus float32 rounding of lo + r * s.
  assert err.max() <= span * 2.0**-24 + 4 * np.finfo(np.float32).eps * np.abs(x).max()


def test_quantize_matches_numpy_reference_per_leaf():
  rng = np.random.default_rng(5)
  tree = {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
          "b": jnp.asarray(rng.standard_normal((3,)), jnp.float32)}
  key = jax.random.key(11)
  _assert_tree_close(compression.quantize(tree, 3, key), np_quantize(tree, 3, key))


def test_quantize_bad_arguments():
  x = jnp.ones((3,))
  with pytest.raises(ValueError, match="bits"):
    compression.quantize(x, 0, jax.random.key(0))
  with pytest.raises(ValueError, match="bits"):
    compression.quantize(x, 33, jax.random.key(0))
  with pytest.raises(TypeError, match="bits"):
    compression.quantize(x, 2.5, jax.random.key(0))
  with pytest.raises(TypeError, match="floating"):
    compression.quantize(jnp.ones((3,), jnp.int32), 2, jax.random.key(0))
  with pytest.raises(TypeError, match="inner"):
    compression.quantization_aggregator(8, inner=lambda: None)


# --------------------------------------------------------------------------
# quantization_aggregator


def _cohort_deltas(k=5, seed=0):
  rng = np.random.default_rng(seed)
  deltas = {"w": rng.standard_normal((k, 4, 3)).astype(np.float32),
            "b": rng.standard_normal((k, 3)).astype(np.float32)}
  weights = np.array([3.0, 0.0, 7.0, 1.0, 2.0], np.float32)[:k]
  deltas = jax.tree.map(lambda d: d * (weights > 0).reshape((-1,) + (1,) * (d.ndim - 1)), deltas)
  return deltas, weights


def _per_client(agg, deltas, weights, key, ids):
  """What the round does: vmapped per_client with keys fold_in(key, client_id)."""
  state = agg.init(jax.tree.map(lambda d: d[0], deltas))
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
  out = jax.jit(jax.vmap(agg.per_client, in_axes=(0, 0, None, 0)))(
      deltas, jnp.asarray(weights), state, keys)
  return out, keys, state


def _reference_quantized(deltas, keys, bits, k):
  return [np_quantize(jax.tree.map(lambda d, i=i: d[i], deltas),
                      bits, jax.random.split(keys[i])[0]) for i in range(k)]


def test_quantization_aggregator_is_the_mean_of_quantized_deltas():
  bits, k = 3, 5
  deltas, weights = _cohort_deltas(k)
  ids = jnp.arange(10, 10 + k)
  agg = compression.quantization_aggregator(bits)
  (d, w, stats), keys, state = _per_client(agg, deltas, weights, jax.random.key(4), ids)
  total = fl.weighted_sum(d, w)
  stats_sum = jax.tree.map(lambda s: jnp.sum(s, 0), stats)
  mean, _, metrics = agg.finalize(total, jnp.sum(w), stats_sum, state, jax.random.key(5))

  quantized = _reference_quantized(deltas, keys, bits, k)
  ref = jax.tree.map(lambda *qs: sum(wi * q for wi, q in zip(weights, qs, strict=True))
                     / weights.sum(), *quantized)
  _assert_tree_close(mean, ref)
  # The quantized mean is not the plain mean (quantization happened).
  plain = jax.tree.map(lambda x: np.tensordot(weights, x, 1) / weights.sum(), deltas)
  assert np.abs(flat(mean) - flat(plain)).max() > 1e-3
  # Bits: per present client bits * d + 2 floats of 32 bits per leaf.
  present = int((weights > 0).sum())
  d_size = 4 * 3 + 3
  assert float(metrics["bits_sent"]) == present * (bits * d_size + 2 * 32 * 2)
  assert float(metrics["bits_uncompressed"]) == present * 32 * d_size
  assert float(metrics["total_weight"]) == weights.sum()  # the inner mean's metric
  assert compression.quantized_bits(jax.tree.map(lambda x: x[0], deltas), bits) == \
      bits * d_size + 128


def _median_aggregator():
  """A toy stacked aggregator: the coordinate-wise median of participating clients."""

  def per_client(delta, weight, state, key):
    del state, key
    return delta, weight, {"count": (weight > 0).astype(jnp.float32)}

  def finalize(*args):
    raise AssertionError("combine must be used instead of finalize")

  def combine(deltas, weights, stats, state, key):
    del key
    med = jax.tree.map(
        lambda d: jnp.nanmedian(jnp.where(weights.reshape((-1,) + (1,) * (d.ndim - 1)) > 0,
                                          d, jnp.nan), axis=0), deltas)
    return med, state, {"count": stats["count"]}

  return fl.Aggregator(lambda p: (), per_client, finalize, combine)


def test_quantization_aggregator_passes_through_combine():
  bits, k = 2, 5
  deltas, weights = _cohort_deltas(k, seed=1)
  ids = jnp.arange(k)
  agg = compression.quantization_aggregator(bits, inner=_median_aggregator())
  assert agg.combine is not None
  assert compression.quantization_aggregator(bits).combine is None
  (d, w, stats), keys, state = _per_client(agg, deltas, weights, jax.random.key(2), ids)
  stats_sum = jax.tree.map(lambda s: jnp.sum(s, 0), stats)
  med, _, metrics = agg.combine(d, w, stats_sum, state, jax.random.key(3))
  quantized = _reference_quantized(deltas, keys, bits, k)
  present = [i for i in range(k) if weights[i] > 0]
  ref = jax.tree.map(lambda *qs: np.median(np.stack([qs[i] for i in present]), axis=0),
                     *quantized)
  _assert_tree_close(med, ref)
  assert float(metrics["count"]) == len(present)
  assert float(metrics["bits_sent"]) == len(present) * (bits * 15 + 128)


def test_quantization_before_dp_clips_the_quantized_message():
  """quantization_aggregator(bits, inner=gaussian_aggregator): DP clips what is sent."""
  bits, k, clip, m = 4, 5, 0.8, 4.0
  deltas, weights = _cohort_deltas(k, seed=2)
  ids = jnp.arange(k)
  agg = compression.quantization_aggregator(
      bits, inner=privacy.gaussian_aggregator(clip, 0.0, m))
  (d, w, stats), keys, state = _per_client(agg, deltas, weights, jax.random.key(6), ids)
  # Every client's contribution to the sum has norm <= clip: the bound holds
  # for the quantized message.
  for i in range(k):
    norm = np.linalg.norm(flat(jax.tree.map(lambda x, i=i: x[i], d))) * float(w[i])
    assert norm <= clip * (1 + 1e-6)
  stats_sum = jax.tree.map(lambda s: jnp.sum(s, 0), stats)
  mean, _, metrics = agg.finalize(fl.weighted_sum(d, w), jnp.sum(w), stats_sum, state,
                                  jax.random.key(7))
  quantized = _reference_quantized(deltas, keys, bits, k)
  total = None
  for i in range(k):
    if weights[i] == 0:
      continue
    norm = np.linalg.norm(flat(quantized[i]))
    scale = min(1.0, clip / norm)
    part = jax.tree.map(lambda q, s=scale: s * q, quantized[i])
    total = part if total is None else jax.tree.map(np.add, total, part)
  _assert_tree_close(mean, jax.tree.map(lambda t: t / m, total))
  assert float(metrics["participants"]) == (weights > 0).sum()
  assert float(metrics["bits_sent"]) == (weights > 0).sum() * (bits * 15 + 128)


# --------------------------------------------------------------------------
# top_k and error feedback


def test_top_k_matches_numpy_argsort_with_ties():
  rng = np.random.default_rng(0)
  # Small integers: many equal magnitudes within and across leaves, so every
  # k cuts through a tie, which the lower flat index must win.
  tree = {"a": rng.integers(-3, 4, (3, 4)).astype(np.float32),
          "b": rng.integers(-3, 4, (5,)).astype(np.float32)}
  fn = jax.jit(compression.top_k, static_argnums=1)
  for k in (1, 3, 6, 12, 16):
    out = fn(jax.tree.map(jnp.asarray, tree), k)
    np.testing.assert_array_equal(flat(out), np_top_k(flat(tree), k))
    assert jax.tree.structure(out) == jax.tree.structure(tree)
  # vmap over a batch of messages.
  batch = jnp.asarray(rng.standard_normal((3, 10)), jnp.float32)
  out = jax.vmap(lambda x: compression.top_k(x, 3))(batch)
  for i in range(3):
    np.testing.assert_array_equal(np.asarray(out[i]), np_top_k(batch[i], 3))


def test_top_k_bad_k():
  with pytest.raises(ValueError, match="k"):
    compression.top_k(jnp.ones((4,)), 5)
  with pytest.raises(ValueError, match="k"):
    compression.top_k(jnp.ones((4,)), 0)
  with pytest.raises(ValueError, match="exactly one"):
    compression.with_error_feedback(lambda *a: None)
  with pytest.raises(ValueError, match="exactly one"):
    compression.with_error_feedback(lambda *a: None, 2, fraction=0.5)
  with pytest.raises(ValueError, match="fraction"):
    compression.with_error_feedback(lambda *a: None, fraction=1.5)


def _fake_update(broadcast, data, key):
  """A stateless client update whose delta is a random draw per (key, client)."""
  del broadcast
  ck = jax.random.fold_in(key, data.client_ids)
  ka, kb = jax.random.split(ck)
  delta = {"w": jax.random.normal(ka, (3, 4)), "b": jax.random.normal(kb, (4,))}
  n = data.num_examples.astype(jnp.float32)
  return fl.ClientOutput(delta, n, {}, counts={"num_examples": n})


def _one_client(n, cid=3):
  return fl.FederatedData({"x": jnp.zeros((2, 1))}, jnp.int32(n), jnp.int32(cid))


@pytest.mark.parametrize("how", [{"k": 5}, {"fraction": 0.3}])  # ceil(0.3 * 16) = 5
def test_error_feedback_conserves_the_sum_of_deltas(how):
  k = 5
  wrapped = compression.with_error_feedback(_fake_update, **how)
  assert isinstance(wrapped, fl.ClientUpdate)  # complete: it carries its state's init
  update = jax.jit(wrapped.update)
  like = {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,))}
  residual = wrapped.init(like)
  assert jax.tree.all(jax.tree.map(lambda r, x: r.shape == x.shape and not r.any(), residual,
                                   like))
  ref_residual = np.zeros(16)
  sent_sum, delta_sum = np.zeros(16), np.zeros(16)
  for r in range(3):
    key = jax.random.key(r)
    out = update(None, _one_client(2), key, residual)
    delta = flat(_fake_update(None, _one_client(2), key).delta)
    # Independent reference: top_k of delta + residual, the rest kept.
    corrected = delta + ref_residual
    ref_sent = np_top_k(corrected, k)
    ref_residual = corrected - ref_sent
    np.testing.assert_allclose(flat(out.delta), ref_sent, atol=1e-6)
    np.testing.assert_allclose(flat(out.state), ref_residual, atol=1e-6)
    assert np.count_nonzero(flat(out.delta)) == k
    assert float(out.counts["num_bits_sent"]) == k * (32 + 4)  # d = 16
    assert float(out.counts["num_examples"]) == 2.0
    residual = out.state
    sent_sum += flat(out.delta)
    delta_sum += delta
  np.testing.assert_allclose(sent_sum + flat(residual), delta_sum, atol=1e-5)
  # The residual is non-trivial, so the identity is not vacuous.
  assert np.abs(flat(residual)).max() > 0.1
  # A client with no data sends zeros and keeps its residual.
  out = update(None, _one_client(0), jax.random.key(9), residual)
  np.testing.assert_array_equal(flat(out.delta), np.zeros(16))
  np.testing.assert_array_equal(flat(out.state), flat(residual))
  assert float(out.counts["num_bits_sent"]) == 0.0


def test_error_feedback_refuses_a_stateful_update():
  stateful = fl.ClientUpdate(lambda p: p, lambda b, d, k, s: _fake_update(b, d, k))
  with pytest.raises(TypeError, match="stateless"):
    compression.with_error_feedback(stateful, 2).init({"w": jnp.zeros((3, 4))})


def test_error_feedback_rejects_a_mismatched_residual():
  update = compression.with_error_feedback(_fake_update, 2).update
  with pytest.raises(ValueError, match="structure"):
    update(None, _one_client(2), jax.random.key(0), jnp.zeros((16,)))
  with pytest.raises(ValueError, match="exceeds"):
    compression.with_error_feedback(_fake_update, 17).update(
        None, _one_client(2), jax.random.key(0),
        {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,))})


# --------------------------------------------------------------------------
# End to end through the round


def test_error_feedback_round_matches_numpy_reference():
  """Three rounds of top-k FedAvg with error feedback over changing cohorts.

  The reference: per-client local SGD (tests.reference), a residual per
  client id kept in a Python dict, NumPy top-k, example-weighted mean, server
  SGD with learning rate 1.
  """
  lr, epochs, batch, k = 0.1, 2, 4, 5
  clients = make_clients(RAGGED_SIZES)
  population = fl.from_clients(clients)
  params, loss = linear_model()
  d = sum(x.size for x in jax.tree.leaves(params))  # 6 * 3 + 3 = 21
  update = fl.build_client_update(loss, optax.sgd(lr), num_epochs=epochs, batch_size=batch)
  algo = fl.build_federated_algorithm(
      compression.with_error_feedback(update, k), fl.server.fedavg(1.0), chunk_size=3)
  state = algo.init(params, num_clients=len(clients))
  cohorts = [[0, 1, 2, 3], [2, 4, 5, 6], [0, 2, 5, 6]]  # client 1 is empty
  keys = [jax.random.key(40 + r) for r in range(3)]

  ref_params = jax.tree.map(np.asarray, params)
  leaves, treedef = jax.tree.flatten(ref_params)
  sizes = [x.size for x in leaves]
  unflat = lambda v: jax.tree.unflatten(treedef, [
      a.reshape(x.shape) for a, x in zip(np.split(v, np.cumsum(sizes)[:-1]), leaves,
                                         strict=True)])
  residuals = {c: np.zeros(d) for c in range(len(clients))}
  for cohort, key in zip(cohorts, keys, strict=True):
    state, metrics = algo.round(state, population.take(jnp.asarray(cohort)), key)
    client_key, _ = jax.random.split(key)
    total, total_w, senders = np.zeros(d), 0.0, 0
    for c in cohort:
      n = RAGGED_SIZES[c]
      if n == 0:
        continue
      delta, _ = reference_client(loss, ref_params, clients[c], c, client_key, lr=lr,
                                  num_epochs=epochs, batch_size=batch)
      corrected = flat(delta) + residuals[c]
      sent = np_top_k(corrected, k)
      residuals[c] = corrected - sent
      total += n * sent
      total_w += n
      senders += 1
    new = flat(ref_params) + total / total_w
    ref_params = unflat(new.astype(np.float32))
    assert float(metrics["num_bits_sent"]) == senders * k * (32 + math.ceil(math.log2(d)))

  _assert_tree_close(state.params, ref_params)
  for c in range(len(clients)):
    got = flat(jax.tree.map(lambda x, c=c: x[c], state.client_states))
    np.testing.assert_allclose(got, residuals[c], rtol=1e-5, atol=1e-5)
  assert np.abs(flat(state.client_states)).max() > 1e-3  # residuals are non-trivial
  assert np.all(flat(jax.tree.map(lambda x: x[1], state.client_states)) == 0)  # empty client


def test_8bit_quantized_fedavg_matches_uncompressed_accuracy():
  """8-bit quantized FedAvg stays within 1% test accuracy of uncompressed FedAvg.

  Setting: multinomial logistic regression (10 features, 4 classes; 44
  parameters) on 16 synthetic clients of 30 examples each (tests.conftest's
  generator: labels from a random linear teacher plus noise), every client in
  every round, 1 local epoch of SGD (lr 0.1, batch 10), server SGD lr 1, 15
  rounds with the same keys for both runs; accuracy on 600 held-out examples
  from the same generator.
  """
  num_clients, n, features, classes, rounds = 16, 30, 10, 4, 15
  data = make_clients([n] * num_clients + [600], num_features=features, num_classes=classes,
                      seed=1)
  test = data.pop()
  population = fl.from_clients(data)
  params, loss = linear_model(features, classes)
  update = fl.build_client_update(loss, optax.sgd(0.1), num_epochs=1, batch_size=10)
  model = fl.models.LogisticRegression(classes)

  def train(aggregator):
    algo = fl.build_federated_algorithm(update, fl.server.fedavg(1.0), aggregator=aggregator,
                                        chunk_size=None)
    state = algo.init(params)
    for r in range(rounds):
      state, metrics = algo.round(state, population, jax.random.key(r))
    acc = float(fl.models.accuracy(model.apply, state.params, test["x"], test["y"]))
    return state.params, acc, metrics

  plain_params, plain_acc, _ = train(None)
  q_params, q_acc, metrics = train(compression.quantization_aggregator(8))
  assert plain_acc > 0.6  # the model learned something
  assert abs(q_acc - plain_acc) <= 0.01
  # The runs really differ (quantization is not a no-op), and the bits add up.
  assert np.abs(flat(q_params) - flat(plain_params)).max() > 1e-6
  d = features * classes + classes
  assert float(metrics["aggregator/bits_sent"]) == num_clients * (8 * d + 2 * 32 * 2)
  assert float(metrics["aggregator/bits_uncompressed"]) == num_clients * 32 * d
