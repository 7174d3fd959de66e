"""User-level differential privacy: clipping and the noising aggregators.

Mechanisms are :class:`~fedjax_lite.aggregation.Aggregator`\\ s, so any
algorithm can use them in place of the plain mean:

* :func:`gaussian_aggregator`: clip each client delta to L2 norm ``C`` (one
  global norm over the whole pytree), sum, add ``N(0, (z C)^2)`` per
  coordinate, divide by a fixed denominator (the expected cohort size) —
  DP-FedAvg (McMahan et al. 2018). Optional adaptive clipping (Andrew et al.
  2021).
* :func:`laplace_aggregator`: clip to L1 norm ``C1``, add Laplace noise of
  scale ``z C1`` per coordinate: each round is pure ``(1/z)``-DP under
  add/remove-one-client before sampling.
* ``local=True`` on either: each client noises its own clipped delta before
  aggregation (local DP, accounted per client).

Under DP every client that takes part weighs the same (its clipped delta is
summed as is): example-count weights would give clients unbounded influence,
so they are refused.

This module holds what runs inside ``jit``. The host-side accounting (what a
run spends: :class:`DPSpec`, :func:`round_event`, :func:`dp_event`,
:func:`make_accountant`, :func:`epsilon`, :func:`calibrate_noise`) lives in
:mod:`fedjax_lite.accounting` and is re-exported here unchanged, so
``fedjax_lite.privacy.epsilon`` and ``fedjax_lite.accounting.epsilon`` are the
same function.

References:
  McMahan, Ramage, Talwar, Zhang. "Learning Differentially Private Recurrent
  Language Models", ICLR 2018. https://arxiv.org/abs/1710.06963
  Andrew, Thakkar, McMahan, Ramaswamy. "Differentially Private Learning with
  Adaptive Clipping", NeurIPS 2021. https://arxiv.org/abs/1905.03871
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_lite import accounting
from fedjax_lite._validate import concrete_float
from fedjax_lite.accounting import (  # noqa: F401  (re-exported)
    ACCOUNTANTS,
    MECHANISMS,
    PLD_DISCRETIZATION,
    SAMPLINGS,
    DPSpec,
    adaptive_noise_multiplier,
    calibrate_noise,
    dp_event,
    epsilon,
    make_accountant,
    round_event,
)
from fedjax_lite.aggregation import Aggregator

__all__ = [
    # Clipping and the DP aggregators (this module).
    "AdaptiveClipping",
    "DPState",
    "clip_by_global_norm",
    "clip_scale",
    "gaussian_aggregator",
    "global_norm",
    "laplace_aggregator",
    # Host-side accounting, re-exported from fedjax_lite.accounting.
    *accounting.__all__,
]


# --------------------------------------------------------------------------
# Clipping


def global_norm(tree: Any, ord: int = 2) -> Any:  # noqa: A002 - numpy's name
  """The L1 or L2 norm of a whole pytree flattened into one vector.

  Args:
    tree: pytree of arrays.
    ord: 1 or 2.

  Returns:
    float32 scalar.
  """
  if ord not in (1, 2):
    raise ValueError(f"`ord` must be 1 or 2; got {ord!r}.")
  leaves = [jnp.ravel(jnp.asarray(x, jnp.float32)) for x in jax.tree.leaves(tree)]
  # Each leaf's sum, then the sum of those: one more level of accurate_sum's bound.
  terms = [jnp.abs(x) if ord == 1 else x * x for x in leaves]
  total = accurate_sum(jnp.stack([accurate_sum(t) for t in terms])) if terms \
      else jnp.zeros((), jnp.float32)
  if ord == 1:
    return total
  # sqrt's derivative is infinite at 0: a zero vector (e.g. an empty
  # client's delta) gets norm 0 with gradient 0, not NaN, under jax.grad.
  squares = total
  positive = squares > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)


# Terms each partial sum of accurate_sum adds.
_FAN_IN = 16
# accurate_sum's relative error bound is 15 u per level (u = eps / 2). global_norm's
# levels (those of its largest leaf plus those of its leaves' totals) are at most 16
# for any pytree of fewer than 2^64 numbers: 240 u = 120 eps, and clip_scale
# shrinks by 128 eps (a relative 1.5e-5).
_SUM_ERROR_EPS = 128


def accurate_sum(x: Any) -> Any:
  """The sum of a non-negative float32 vector with a bounded relative error.

  A plain float32 reduction of ``n`` terms, in an order XLA chooses, can be
  off by up to ``(n - 1) u`` of the total (``u`` half a float32 epsilon). Here
  the terms are summed 16 at a time, level after level, with an optimization
  barrier between levels so XLA cannot merge them into one reduction: each
  level adds at most ``15 u``, so ``n <= 16^k`` terms are off by at most
  ``15 k u``, whatever the order within a level. Clipping relies on this bound
  to guarantee a clipped norm never exceeds its bound. Differentiable, jit-
  and vmap-safe.

  Args:
    x: ``float32[n]``, non-negative (absolute values or squares).

  Returns:
    ``float32`` scalar.
  """
  n = x.shape[0]
  if n == 0:
    return jnp.zeros((), jnp.float32)
  while n > 1:
    width = -(-n // _FAN_IN)
    x = jnp.pad(x, (0, width * _FAN_IN - n)).reshape(_FAN_IN, width).sum(axis=0)
    x = jax.lax.optimization_barrier(x)
    n = width
  return x[0]


def clip_scale(norm: Any, clip: Any) -> Any:
  """The factor ``<= 1`` that brings a vector of norm ``norm`` within ``clip``.

  ``1`` when ``norm <= clip``, else ``clip / norm`` shrunk by 128 float32
  epsilons (a relative 1.5e-5), more than the error bound of
  :func:`global_norm` (:func:`accurate_sum`) and of the scaling, so that
  rounding can never leave the scaled norm above ``clip``.

  Args:
    norm: a vector's (or a pytree's global) norm, a float scalar or array.
    clip: the clipping bound (> 0), broadcastable with ``norm``.

  Returns:
    The scale factor, shaped like ``norm``.
  """
  shrink = clip / jnp.maximum(norm, clip) * (
      1.0 - _SUM_ERROR_EPS * jnp.finfo(jnp.float32).eps)
  return jnp.where(norm <= clip, 1.0, shrink)


def clip_by_global_norm(tree: Any, clip: Any, ord: int = 2) -> tuple[Any, Any]:  # noqa: A002
  """Scales ``tree`` so its global L``ord`` norm is at most ``clip``.

  Args:
    tree: pytree of arrays (e.g. a client delta).
    clip: positive scalar bound ``C``.
    ord: 1 or 2.

  Returns:
    ``(clipped_tree, norm_before_clipping)``; the clipped tree's norm is
    ``min(norm, clip)`` (up to float rounding, never above ``clip``).
  """
  norm = global_norm(tree, ord)
  scale = clip_scale(norm, clip)
  return jax.tree.map(lambda x: (x * scale).astype(x.dtype), tree), norm


# --------------------------------------------------------------------------
# Aggregators


class AdaptiveClipping(NamedTuple):
  """Hyperparameters of adaptive clipping (Andrew et al. 2021; their defaults).

  Attributes:
    target_quantile: ``gamma``, the fraction of updates to leave unclipped.
    learning_rate: ``eta_C`` of the geometric update
      ``C <- C * exp(-eta_C * (b - gamma))``.
    initial_clip: ``C_0``.
    count_noise_std: ``sigma_b``, the std of the noise on the clipped count;
      ``None`` means ``expected_cohort_size / 20``.
  """

  target_quantile: float = 0.5
  learning_rate: float = 0.2
  initial_clip: float = 0.1
  count_noise_std: float | None = None


class DPState(NamedTuple):
  """State of a DP aggregator: the current clip norm (constant unless adaptive)."""

  clip: Any



def gaussian_aggregator(
    clip: float,
    noise_multiplier: float,
    expected_cohort_size: float,
    *,
    adaptive: AdaptiveClipping | None = None,
    local: bool = False,
    weighting: str = "uniform",
) -> Aggregator:
  """DP-FedAvg's Gaussian aggregator (optionally adaptive or local).

  Central (default): each participating client's delta (a client with weight
  > 0) is clipped to global L2 norm ``C``; the clipped deltas are summed,
  ``N(0, (z_delta * C)^2)`` is added to every coordinate once per round, and
  the result is divided by ``expected_cohort_size``. ``z_delta = z`` for a
  fixed clip, or :func:`adaptive_noise_multiplier` with adaptive clipping,
  which also releases the centred count ``sum_i (1[norm_i <= C] - 1/2) +
  N(0, sigma_b^2)`` and moves ``C`` geometrically toward the
  ``target_quantile`` of update norms.

  Local (``local=True``): each client adds ``N(0, (z C)^2)`` to its own
  clipped delta; the server averages the noisy reports with the same fixed
  denominator and adds nothing.

  Args:
    clip: the L2 clip norm ``C`` (> 0); ignored with ``adaptive`` (which
      starts from ``adaptive.initial_clip``).
    noise_multiplier: ``z`` (>= 0): noise std over L2 sensitivity.
    expected_cohort_size: the fixed denominator: ``q * N`` under Poisson
      sampling, the cohort size under fixed-size sampling.
    adaptive: :class:`AdaptiveClipping` hyperparameters, or ``None``.
    local: local instead of central noise.
    weighting: must be ``"uniform"``; DP needs a bound on every client's
      influence, which example-count weights do not have.

  Returns:
    An :class:`~fedjax_lite.aggregation.Aggregator` with state
    :class:`DPState`; finalize metrics: ``clip``, ``noise_std`` (of the
    released average), ``participants``, and with adaptive clipping
    ``unclipped_fraction`` (the noised estimate ``b``).

  Raises:
    ValueError: for non-positive ``clip`` or ``expected_cohort_size``,
      negative ``noise_multiplier``, adaptive with local or with a count
      noise too small for ``z``, or non-uniform ``weighting``.
  """
  return _dp_aggregator("gaussian", clip, noise_multiplier, expected_cohort_size,
                        adaptive=adaptive, local=local, weighting=weighting)


def laplace_aggregator(
    clip: float,
    noise_multiplier: float,
    expected_cohort_size: float,
    *,
    local: bool = False,
    weighting: str = "uniform",
) -> Aggregator:
  """The Laplace mechanism on L1-clipped client deltas.

  Each participating client's delta is clipped to global L1 norm ``C1``; the
  sum gets Laplace noise of scale ``b = z * C1`` per coordinate (so each round
  is pure ``(1/z)``-DP under add/remove-one-client, before any amplification
  by sampling) and is divided by ``expected_cohort_size``. With
  ``local=True`` every client adds that noise to its own clipped delta.

  Args:
    clip: the L1 clip norm ``C1`` (> 0).
    noise_multiplier: ``z`` (>= 0): Laplace scale over L1 sensitivity.
    expected_cohort_size: the fixed denominator.
    local: local instead of central noise.
    weighting: must be ``"uniform"`` (see :func:`gaussian_aggregator`).

  Returns:
    An :class:`~fedjax_lite.aggregation.Aggregator` (state :class:`DPState`).
  """
  return _dp_aggregator("laplace", clip, noise_multiplier, expected_cohort_size,
                        adaptive=None, local=local, weighting=weighting)


def _dp_aggregator(mechanism, clip, noise_multiplier, expected_cohort_size, *, adaptive, local,
                   weighting) -> Aggregator:
  if weighting != "uniform":
    raise ValueError(
        f"`weighting`={weighting!r} is not allowed under DP: example-count weights give a "
        "client with many examples unbounded influence, so no sensitivity (and no epsilon) "
        "can be stated. Use weighting='uniform' (each participating client's clipped delta "
        "counts once).")
  # noise_multiplier (and clip) may be traced, e.g. in a vectorized sweep over
  # noise levels (fedjax_lite.run_sweep); they are checked when concrete.
  z_value = concrete_float(noise_multiplier)
  if z_value is not None and not z_value >= 0:
    raise ValueError(f"`noise_multiplier` must be >= 0; got {noise_multiplier}.")
  if not expected_cohort_size > 0:
    raise ValueError(f"`expected_cohort_size` must be > 0; got {expected_cohort_size}.")
  if adaptive is not None:
    if local:
      raise ValueError("adaptive clipping is a central mechanism; it cannot be combined with "
                       "local=True.")
    if not 0.0 < adaptive.target_quantile < 1.0:
      raise ValueError(f"`target_quantile` must be in (0, 1); got {adaptive.target_quantile}.")
    if not adaptive.learning_rate > 0 or not adaptive.initial_clip > 0:
      raise ValueError("adaptive `learning_rate` and `initial_clip` must be > 0.")
    sigma_b = (expected_cohort_size / 20.0 if adaptive.count_noise_std is None
               else adaptive.count_noise_std)
    z_delta = adaptive_noise_multiplier(noise_multiplier, sigma_b)
    clip = adaptive.initial_clip
  else:
    sigma_b = None
    z_delta = noise_multiplier
  clip_value = concrete_float(clip)
  if clip_value is not None and not clip_value > 0:
    raise ValueError(f"`clip` must be > 0; got {clip}.")
  ord_ = 2 if mechanism == "gaussian" else 1
  denom = float(expected_cohort_size)

  def noise(key, like, std_or_scale):
    if mechanism == "gaussian":
      return jax.random.normal(key, like.shape, jnp.float32) * std_or_scale
    return jax.random.laplace(key, like.shape, jnp.float32) * std_or_scale

  def tree_noise(key, tree, scale):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))[:len(leaves)]
    noisy = [(x + noise(k, x, scale)).astype(x.dtype) for k, x in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, noisy)

  def init(params):
    del params
    return DPState(jnp.asarray(clip, jnp.float32))

  def per_client(delta, weight, state, key):
    participating = weight > 0
    norm = global_norm(delta, ord_)
    scale = clip_scale(norm, state.clip)
    stats = {"participants": participating.astype(jnp.float32)}
    if adaptive is not None:
      stats["centred_unclipped"] = jnp.where(
          participating, (norm <= state.clip).astype(jnp.float32) - 0.5, 0.0)
    if local:
      clipped = jax.tree.map(lambda x: (x * scale).astype(x.dtype), delta)
      noisy = tree_noise(key, clipped, z_delta * state.clip)
      noisy = jax.tree.map(lambda x: jnp.where(participating, x, 0).astype(x.dtype), noisy)
      return noisy, participating.astype(jnp.float32), stats
    # Central: the clip factor becomes the client's weight in the round's
    # weighted sum, sum_i w_i * delta_i = sum of clipped deltas, so the
    # clipped delta is never materialized.
    return delta, jnp.where(participating, scale, 0.0).astype(jnp.float32), stats

  def finalize(total, total_weight, stats, state, key):
    del total_weight
    delta_key, count_key = jax.random.split(key)
    scale = z_delta * state.clip
    if not local and z_value != 0:  # noise unless the multiplier is a concrete 0
      total = tree_noise(delta_key, total, scale)
    mean = jax.tree.map(lambda s: (s / denom).astype(s.dtype), total)
    metrics = {"clip": state.clip, "participants": stats["participants"],
               "noise_std": (scale * (math.sqrt(2.0) if mechanism == "laplace" else 1.0)
                             * (1.0 if not local else jnp.sqrt(stats["participants"]))) / denom}
    new_state = state
    if adaptive is not None:
      b = (stats["centred_unclipped"] + sigma_b * jax.random.normal(count_key, ())) / denom + 0.5
      new_clip = state.clip * jnp.exp(-adaptive.learning_rate * (b - adaptive.target_quantile))
      new_state = DPState(new_clip.astype(jnp.float32))
      metrics["unclipped_fraction"] = b
    return mean, new_state, metrics

  return Aggregator(init, per_client, finalize)
