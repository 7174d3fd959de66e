"""Compressed client messages: stochastic quantization and top-k with error feedback.

Two ways to send fewer bits from clients to the server:

* :func:`quantize` / :func:`quantization_aggregator`: unbiased stochastic
  uniform quantization of every leaf of a client's message to ``2**bits``
  levels between the leaf's minimum and maximum (Suresh et al. 2017's
  stochastic k-level quantization; QSGD, Alistarh et al. 2017, is the same
  idea with a norm scale). The aggregator wraps any other aggregator (the
  plain mean by default, or a DP aggregator) and reports the bits sent.
* :func:`top_k` / :func:`with_error_feedback`: each client sends only the
  ``k`` largest-magnitude coordinates of its message and keeps the rest in a
  per-client residual that is added to its next message (error feedback;
  Stich et al. 2018, Karimireddy et al. 2019). The residual is the client's
  persistent state, so the wrapper returns a stateful
  :class:`fedjax_lite.ClientUpdate`.

Everything here is pure and safe under ``jax.jit`` and ``jax.vmap``; sizes
(``bits``, ``k``) are static Python ints.

References:
  Suresh, Yu, Kumar, McMahan. "Distributed Mean Estimation with Limited
  Communication", ICML 2017. https://arxiv.org/abs/1611.00429
  Alistarh, Grubic, Li, Tomioka, Vojnovic. "QSGD: Communication-Efficient SGD
  via Gradient Quantization and Encoding", NeurIPS 2017.
  https://arxiv.org/abs/1610.02132
  Stich, Cordonnier, Jaggi. "Sparsified SGD with Memory", NeurIPS 2018.
  https://arxiv.org/abs/1809.07599
  Karimireddy, Rebjock, Stich, Jaggi. "Error Feedback Fixes SignSGD and other
  Gradient Compression Schemes", ICML 2019. https://arxiv.org/abs/1901.09847
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fedjax_lite._types import Params, PRNGKey
from fedjax_lite._validate import check_int
from fedjax_lite.aggregation import Aggregator, inner_aggregator
from fedjax_lite.client import ClientOutput, ClientUpdate, as_client_update, output_counts
from fedjax_lite.data import FederatedData

# Bits of one float sent uncompressed (a value, or a quantization scale).
FLOAT_BITS = 32
# Stochastic quantization sends two floats per leaf: its minimum and maximum.
SCALE_FLOATS_PER_LEAF = 2
MAX_BITS = 32


# --------------------------------------------------------------------------
# Stochastic uniform quantization


def _check_bits(bits: Any) -> int:
  check_int("bits", bits, minimum=1)
  if bits > MAX_BITS:
    raise ValueError(f"`bits` must be at most {MAX_BITS} (float32 resolution); got {bits}.")
  return bits


def _float_leaves(tree: Any, name: str) -> tuple[list[Any], Any]:
  leaves, treedef = jax.tree.flatten(tree)
  for i, x in enumerate(leaves):
    if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
      raise TypeError(
          f"`{name}` must hold floating-point arrays; leaf {i} has dtype "
          f"{jnp.asarray(x).dtype}. Cast it (e.g. with .astype(jnp.float32)).")
  return leaves, treedef


def _quantize_leaf(x: Any, bits: int, key: PRNGKey) -> Any:
  x = jnp.asarray(x)
  if x.size == 0:
    return x
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  v = x.astype(dtype)
  lo, hi = jnp.min(v), jnp.max(v)
  span = hi - lo
  levels = jnp.asarray(2.0**bits - 1.0, dtype)
  step = span / levels
  positive = step > 0  # else the leaf is constant (or its span underflows): send min
  # t in [0, levels]: the position of each value on the grid of levels (the
  # maximum pinned to the top level so that rounding cannot move it).
  t = jnp.where(positive, (v - lo) / jnp.where(positive, step, 1), 0)
  t = jnp.where(positive & (v == hi), levels, jnp.clip(t, 0, levels))
  below = jnp.floor(t)
  u = jax.random.uniform(key, v.shape, dtype)
  r = below + (u < t - below).astype(dtype)  # up with probability t - floor(t)
  q = jnp.where(r == levels, hi, jnp.clip(lo + r * step, lo, hi))
  return q.astype(x.dtype)


def quantize(x: Params, bits: int, key: PRNGKey) -> Params:
  """Unbiased stochastic uniform quantization of every leaf to ``2**bits`` levels.

  Each leaf ``v`` (any shape) is quantized on its own grid of ``k = 2**bits``
  evenly spaced levels ``B_r = min(v) + r * s``, ``s = (max(v) - min(v)) /
  (k - 1)``, ``r = 0 .. k-1`` (the *min/max* scale, Suresh et al. 2017,
  Section 3's stochastic k-level quantization). A coordinate with
  ``B_r <= v_j <= B_{r+1}`` becomes ``B_{r+1}`` with probability
  ``(v_j - B_r) / s`` and ``B_r`` otherwise, so ``E[q(v)] = v`` exactly and
  ``Var[q(v)_j] = (B_{r+1} - v_j)(v_j - B_r) <= s**2 / 4``. Values on a level
  (including the minimum and maximum) are kept exactly, every output lies in
  ``[min(v), max(v)]``, and a constant leaf is returned unchanged. The
  message a client would send is ``bits`` bits per coordinate (the level
  index ``r``) plus the leaf's ``min`` and ``max`` as two 32-bit floats (see
  :func:`quantized_bits`).

  Randomness: leaf ``i`` (in ``jax.tree.leaves`` order) draws
  ``jax.random.uniform(jax.random.fold_in(key, i), shape, dtype)`` (dtype at
  least float32) and rounds up where that draw is below ``(v_j - B_r) / s``.

  References:
    Suresh, Yu, Kumar, McMahan. "Distributed Mean Estimation with Limited
    Communication", ICML 2017. https://arxiv.org/abs/1611.00429
    Alistarh, Grubic, Li, Tomioka, Vojnovic. "QSGD: Communication-Efficient
    SGD via Gradient Quantization and Encoding", NeurIPS 2017.
    https://arxiv.org/abs/1610.02132

  Args:
    x: a pytree of floating arrays (e.g. one client's delta), any shapes.
    bits: bits per coordinate, a Python int in ``[1, 32]`` (static). Above
      about 24 bits the float32 grid is finer than float32 itself and the
      result is ``x`` up to float32 rounding of ``min + r * s``.
    key: a PRNG key (e.g. the client's key from the aggregator).

  Returns:
    A pytree like ``x`` (same shapes and dtypes) of quantized values.

  Raises:
    ValueError, TypeError: for ``bits`` that is not an int in ``[1, 32]``,
      or a non-floating leaf.
  """
  bits = _check_bits(bits)
  leaves, treedef = _float_leaves(x, "x")
  out = [_quantize_leaf(v, bits, jax.random.fold_in(key, i)) for i, v in enumerate(leaves)]
  return jax.tree.unflatten(treedef, out)


def quantized_bits(x: Params, bits: int) -> int:
  """Bits of one :func:`quantize`\\ d message: ``bits * d + 64 * L``.

  Args:
    x: the message pytree (arrays or ``ShapeDtypeStruct``\\ s; only shapes
      are read).
    bits: bits per coordinate.

  Returns:
    A Python int: ``bits`` per coordinate for its ``d`` coordinates, plus the
    two 32-bit scale floats (``min``, ``max``) of each of its ``L`` non-empty
    leaves.

  Raises:
    ValueError, TypeError: for a ``bits`` that is not an int in ``[1, 32]``.
  """
  bits = _check_bits(bits)
  sizes = [math.prod(jnp.shape(v)) for v in jax.tree.leaves(x)]
  nonempty = sum(1 for s in sizes if s > 0)
  return bits * sum(sizes) + SCALE_FLOATS_PER_LEAF * FLOAT_BITS * nonempty


def quantization_aggregator(bits: int, inner: Aggregator | None = None) -> Aggregator:
  """Quantizes each client's message with :func:`quantize`, then aggregates with ``inner``.

  ``per_client(delta, weight, state, key)`` splits the client's key into
  ``(quantize_key, inner_key)``, replaces ``delta`` by ``quantize(delta,
  bits, quantize_key)`` and hands it to ``inner.per_client`` with
  ``inner_key``. ``init`` and the aggregator state are ``inner``'s;
  ``finalize`` (and ``combine``, present exactly when ``inner`` has one, then
  receiving the quantized deltas) delegate to ``inner`` with the same key.
  Since quantization is unbiased, with the plain mean the aggregate is an
  unbiased estimate of the unquantized mean (Suresh et al. 2017).

  Composition with differential privacy (:mod:`fedjax_lite.privacy`): the
  valid order is the one this builds, ``quantization_aggregator(bits,
  inner=privacy.gaussian_aggregator(...))`` (or ``laplace_aggregator``):
  clients quantize, and the DP aggregator then clips *the quantized message*
  and adds noise. DP needs the clip to bound exactly what is summed, and it
  does here whatever the quantizer produced (its randomness is the client's
  own and independent of other clients), so the DP guarantee and its
  accounting are unchanged. The opposite order -- clipping, then quantizing
  the clipped delta before summation -- is *not* valid for central DP:
  quantization can raise a message's norm above the clip, so the stated
  sensitivity would no longer hold (it is fine for local DP, where
  quantizing a noised report is post-processing, but the DP aggregators here
  do not wrap an inner aggregator). With ``local=True`` the report that is
  summed is the noised one, which is no longer on the quantization grid, so
  ``bits_sent`` then counts the quantized message the client computed, not a
  transmitted encoding of its noisy report.

  References:
    Suresh, Yu, Kumar, McMahan. "Distributed Mean Estimation with Limited
    Communication", ICML 2017. https://arxiv.org/abs/1611.00429

  Args:
    bits: bits per coordinate, an int in ``[1, 32]`` (static).
    inner: the aggregator to delegate to (default
      :func:`fedjax_lite.mean_aggregator`, example-weighted).

  Returns:
    An :class:`~fedjax_lite.aggregation.Aggregator` whose metrics are
    ``inner``'s plus ``bits_sent`` (``quantized_bits(delta, bits)`` per
    present client, i.e. with weight > 0 when it reaches ``per_client``,
    summed) and ``bits_uncompressed`` (32 bits per coordinate per present
    client, summed), both float32 scalars.

  Raises:
    ValueError, TypeError: for a bad ``bits`` or an ``inner`` that is not an
      :class:`~fedjax_lite.aggregation.Aggregator`.
  """
  bits = _check_bits(bits)
  inner = inner_aggregator(inner, "quantization_aggregator")

  def per_client(delta, weight, state, key):
    quantize_key, inner_key = jax.random.split(key)
    sent = quantize(delta, bits, quantize_key)
    present = (weight > 0).astype(jnp.float32)
    size = sum(math.prod(jnp.shape(v)) for v in jax.tree.leaves(delta))
    new_delta, new_weight, inner_stats = inner.per_client(sent, weight, state, inner_key)
    stats = {"inner": inner_stats,
             "bits_sent": present * float(quantized_bits(delta, bits)),
             "bits_uncompressed": present * float(FLOAT_BITS * size)}
    return new_delta, new_weight, stats

  def metrics_with_bits(metrics, stats):
    return {**metrics, "bits_sent": stats["bits_sent"],
            "bits_uncompressed": stats["bits_uncompressed"]}

  def finalize(total, total_weight, stats, state, key):
    aggregate, new_state, metrics = inner.finalize(total, total_weight, stats["inner"], state,
                                                   key)
    return aggregate, new_state, metrics_with_bits(metrics, stats)

  combine = None
  if inner.combine is not None:
    def combine(deltas, weights, stats, state, key):
      aggregate, new_state, metrics = inner.combine(deltas, weights, stats["inner"], state, key)
      return aggregate, new_state, metrics_with_bits(metrics, stats)

  return Aggregator(inner.init, per_client, finalize, combine)


# --------------------------------------------------------------------------
# Top-k sparsification with error feedback


def _flatten(tree: Any) -> tuple[Any, Callable[[Any], Any]]:
  """One vector of every leaf (common dtype), and the inverse."""
  leaves, treedef = jax.tree.flatten(tree)
  shapes = [jnp.shape(v) for v in leaves]
  dtypes = [jnp.asarray(v).dtype for v in leaves]
  dtype = jnp.result_type(*dtypes) if leaves else jnp.float32
  flat = (jnp.concatenate([jnp.ravel(jnp.asarray(v)).astype(dtype) for v in leaves])
          if leaves else jnp.zeros((0,), dtype))

  def unflatten(vec):
    out, start = [], 0
    for shape, dt in zip(shapes, dtypes, strict=True):
      size = math.prod(shape)
      out.append(vec[start:start + size].reshape(shape).astype(dt))
      start += size
    return jax.tree.unflatten(treedef, out)

  return flat, unflatten


def message_size(x: Params) -> int:
  """The number of coordinates ``d`` of a message pytree.

  Args:
    x: a pytree of arrays or ``ShapeDtypeStruct``\\ s (only shapes are read).

  Returns:
    A Python int, the total number of elements of its leaves.
  """
  return sum(math.prod(jnp.shape(v)) for v in jax.tree.leaves(x))


def top_k(x: Params, k: int) -> Params:
  """Keeps the ``k`` largest-magnitude coordinates of a whole message, zeroing the rest.

  The pytree is flattened into one vector of ``d`` coordinates (leaves in
  ``jax.tree.leaves`` order, each raveled in C order); the ``k`` coordinates
  of largest ``|x_j|`` are kept and all others set to 0. Ties are broken
  deterministically in favour of the lower flat index (``jax.lax.top_k``'s
  rule), i.e. the kept set is the first ``k`` of a stable sort by
  decreasing magnitude.

  References:
    Stich, Cordonnier, Jaggi. "Sparsified SGD with Memory", NeurIPS 2018.
    https://arxiv.org/abs/1809.07599

  Args:
    x: a pytree of floating arrays (e.g. one client's delta).
    k: how many coordinates to keep, an int in ``[1, d]`` (static).

  Returns:
    A pytree like ``x`` with at most ``k`` non-zero coordinates in total.

  Raises:
    ValueError, TypeError: for ``k`` not an int in ``[1, d]``, or a
      non-floating leaf.
  """
  _float_leaves(x, "x")
  check_int("k", k, minimum=1)
  d = message_size(x)
  if k > d:
    raise ValueError(f"`k`={k} exceeds the message's {d} coordinates; use k <= {d}.")
  flat, unflatten = _flatten(x)
  mask = _top_k_mask(flat, k)
  return unflatten(jnp.where(mask, flat, jnp.zeros_like(flat)))


def _top_k_mask(flat: Any, k: int) -> Any:
  _, idx = jax.lax.top_k(jnp.abs(flat), k)
  return jnp.zeros(flat.shape, bool).at[idx].set(True)


def top_k_bits(d: int, k: int) -> int:
  """Bits of one top-k message of ``d`` coordinates: ``k * (32 + ceil(log2(d)))``.

  Each kept coordinate is sent as a 32-bit value and its index in
  ``ceil(log2(d))`` bits.

  Args:
    d: the message's number of coordinates (>= 1).
    k: coordinates sent (>= 0).

  Returns:
    A Python int.

  Raises:
    ValueError, TypeError: for a non-int or out-of-range ``d`` or ``k``.
  """
  check_int("d", d, minimum=1)
  check_int("k", k, minimum=0)
  return k * (FLOAT_BITS + math.ceil(math.log2(d)))


def error_feedback_state_init(params: Params) -> Params:
  """The initial error-feedback residual of one client: zeros like ``params``.

  The ``init`` of the :class:`fedjax_lite.ClientUpdate` that
  :func:`with_error_feedback` returns (the message must be shaped like the
  params, as a model delta is).

  Args:
    params: the model parameters (a pytree).

  Returns:
    A pytree of zeros with ``params``' shapes and dtypes.
  """
  return jax.tree.map(jnp.zeros_like, params)


def with_error_feedback(
    client_update: ClientUpdate | Callable[[Any, FederatedData, PRNGKey], ClientOutput],
    k: int | None = None,
    *,
    fraction: float | None = None,
) -> ClientUpdate:
  """Top-k sparsified client messages with per-client error feedback.

  Wraps a stateless client update into a complete stateful
  :class:`fedjax_lite.ClientUpdate` whose state is the client's residual
  (``init``: :func:`error_feedback_state_init`) and whose ``update(broadcast,
  client_data, key, residual) -> ClientOutput`` for a client with data
  computes

      corrected = delta + residual
      sent      = top_k(corrected, k)
      residual' = corrected - sent      (the coordinates not sent)

  and returns ``ClientOutput(sent, weight, metrics, state=residual')``. What
  a client leaves out is not lost but delayed: after any number of rounds,
  the sum of its sent messages plus its residual equals the sum of its
  deltas (the "memory" of Stich et al. 2018; error feedback of Karimireddy et
  al. 2019, which makes biased compressors like top-k converge). A client
  with no data sends zeros and keeps its residual unchanged. The count
  ``num_bits_sent`` (``top_k_bits(d, k)`` for a client with data, else 0)
  is added to the client's counts (the round sums it).

  References:
    Stich, Cordonnier, Jaggi. "Sparsified SGD with Memory", NeurIPS 2018.
    https://arxiv.org/abs/1809.07599
    Karimireddy, Rebjock, Stich, Jaggi. "Error Feedback Fixes SignSGD and
    other Gradient Compression Schemes", ICML 2019.
    https://arxiv.org/abs/1901.09847

  Args:
    client_update: a stateless client update: a plain function (e.g. from
      :func:`fedjax_lite.build_client_update`) or a
      :class:`fedjax_lite.ClientUpdate` with an empty state.
    k: coordinates kept per message (static int >= 1, at most the message's
      size ``d``); give exactly one of ``k`` and ``fraction``.
    fraction: the share of coordinates kept, in ``(0, 1]``:
      ``k = max(1, ceil(fraction * d))``, resolved from the message's shape.

  Returns:
    A :class:`fedjax_lite.ClientUpdate`, pure and safe under
    ``jax.jit``/``jax.vmap``.

  Raises:
    ValueError, TypeError: unless exactly one of ``k`` and ``fraction`` is
      given and valid, or if ``client_update`` is not a client update; from
      ``init``, if ``client_update`` is itself stateful; when called, if
      ``k`` exceeds the message size or the residual's structure differs from
      the message's.
  """
  inner = as_client_update(client_update)
  if (k is None) == (fraction is None):
    raise ValueError("give exactly one of `k` (coordinates kept) and `fraction` (share kept).")
  if k is not None:
    check_int("k", k, minimum=1)
  elif isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
      0.0 < fraction <= 1.0):
    raise ValueError(f"`fraction` must be a float in (0, 1]; got {fraction!r}.")

  def init(params):
    if jax.tree.leaves(inner.init(params)):
      raise TypeError("`client_update` must be stateless (its ClientUpdate.init returns a "
                      "state); with_error_feedback adds the residual as the client state.")
    return error_feedback_state_init(params)

  def stateful_update(broadcast, client_data: FederatedData, key, residual) -> ClientOutput:
    out = inner.update(broadcast, client_data, key, ())
    if jax.tree.structure(out.delta) != jax.tree.structure(residual):
      raise ValueError(
          "the error-feedback residual (client state) must have the message's structure "
          f"{jax.tree.structure(out.delta)}; got {jax.tree.structure(residual)}: the message "
          "must be shaped like the params, as a model delta is.")
    d = message_size(out.delta)
    keep = k if k is not None else max(1, math.ceil(fraction * d))
    if keep > d:
      raise ValueError(f"`k`={keep} exceeds the message's {d} coordinates; use k <= {d}.")
    corrected = jax.tree.map(lambda a, r: a + r.astype(a.dtype), out.delta, residual)
    flat, unflatten = _flatten(corrected)
    has_data = client_data.num_examples > 0
    mask = _top_k_mask(flat, keep) & has_data
    zeros = jnp.zeros_like(flat)
    sent = unflatten(jnp.where(mask, flat, zeros))
    # corrected - sent, written as a select so that sent + residual' ==
    # corrected holds exactly.
    left = unflatten(jnp.where(mask, zeros, flat))
    new_residual = jax.tree.map(
        lambda new, old: jnp.where(has_data, new.astype(old.dtype), old), left, residual)
    counts = output_counts(out, client_data.num_examples)
    counts["num_bits_sent"] = jnp.where(has_data, float(top_k_bits(d, keep)), 0.0).astype(
        jnp.float32)
    return ClientOutput(sent, out.weight, out.metrics, state=new_residual, counts=counts)

  return ClientUpdate(init, stateful_update)
