"""DP-FTRL and banded matrix factorization: Gaussian noise correlated across rounds.

Sampled DP-FedAvg needs clients drawn uniformly at random each round, which a
deployment cannot always guarantee. The matrix mechanisms need no sampling:
the server releases the stream of the rounds' clipped sums ``x_1, x_2, ...``
as ``C x + z`` (``z`` i.i.d. Gaussian, one draw per row of ``C``) for a
factorization ``A = B C`` of the prefix-sum workload ``A``, and the model is
a post-processing of that release. Equivalently, round ``t``'s sum gets the
noise ``(C^{-1} z)_t``: correlated across rounds so that the noise of the
*prefix sums* the model follows, ``(A C^{-1} z)_t``, stays small. The
privacy guarantee is that of one Gaussian mechanism on ``C x`` with the
sensitivity of ``C`` under the participation pattern, which here is the
cyclic one of :func:`cyclic_sampler`: client groups take turns, so a client
takes part exactly once every ``b`` rounds (``b``-min-separation). The
accounting is :func:`fedjax_lite.accounting.correlated_epsilon`.

Two factorizations (``schedule``):

* :func:`tree_schedule` -- tree aggregation, DP-FTRL (Kairouz et al. 2021):
  every dyadic interval of rounds gets one Gaussian node; the prefix sum of
  rounds ``1..t`` gets the sum of the ``popcount(t)`` nodes covering it, and
  round ``t`` the difference of consecutive prefix noises. The tree restarts
  every ``b`` rounds, so a client is in each tree once; its epsilon is
  dp-accounting's ``SingleEpochTreeAggregationDpEvent`` per tree, composed.
* :func:`banded_schedule` -- banded Toeplitz matrix factorization
  (Choquette-Choo et al. 2023), the coefficients of a lower-triangular
  Toeplitz ``C`` with ``bands <= b`` bands optimized by jax-privacy
  (:func:`optimal_banded_coefs`); round ``t``'s noise is the back-substitution
  ``y_t = (z_t - sum_j c_j y_{t-j}) / c_0``, keeping the last ``bands - 1``
  noises (model copies) as state. Its sensitivity under ``b``-min-separation
  is jax-privacy's ``toeplitz.minsep_sensitivity_squared``, and its epsilon
  that of one Gaussian mechanism at multiplier ``z / sensitivity``
  (dp-accounting).

References:
  Kairouz, McMahan, Song, Thakkar, Thakurta, Xu. "Practical and Private
  (Deep) Learning without Sampling or Shuffling", ICML 2021.
  Choquette-Choo, Ganesh, McKenna, McMahan, Rush, Thakurta, Xu. "(Amplified)
  Banded Matrix Factorization: A unified approach to private training",
  NeurIPS 2023.
  Denisov, McMahan, Rush, Smith, Thakurta. "Improved Differential Privacy
  for SGD via Optimal Private Linear Operators on Adaptive Streams", NeurIPS
  2022 (the adaptive streams the model's updates are).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_lite._optional import jax_privacy_toeplitz
from fedjax_lite._validate import check_int
from fedjax_lite.aggregation import Aggregator
from fedjax_lite.privacy import clip_scale, global_norm
from fedjax_lite.sampling import Sampler


class NoiseSchedule(NamedTuple):
  """Unit-variance Gaussian noise for every round, correlated across rounds.

  Attributes:
    name: ``"tree"`` or ``"bandmf"``.
    init: ``init(params, key) -> state``.
    next: ``next(state, key, like) -> (noise, state)``: round ``t``'s noise
      ``(C^{-1} z)_t`` with the shapes of the pytree ``like``; ``key`` is
      fresh each round.
    group_rounds: ``b``, the rounds between two participations of a client
      (the tree's size; the bands are at most this).
    coefs: the Toeplitz coefficients of ``C`` (``bandmf``), else ``None``.
  """

  name: str
  init: Callable[[Any, Any], Any]
  next: Callable[[Any, Any, Any], tuple[Any, Any]]
  group_rounds: int
  coefs: Any = None


def _normal_like(key: Any, like: Any) -> Any:
  leaves, treedef = jax.tree.flatten(like)
  keys = jax.random.split(key, max(len(leaves), 1))[:len(leaves)]
  return jax.tree.unflatten(treedef, [jax.random.normal(k, jnp.shape(x), jnp.float32)
                                      for k, x in zip(keys, leaves, strict=True)])


def tree_levels(group_rounds: int) -> int:
  """Levels of a binary tree over ``group_rounds`` leaves: ``floor(log2 b) + 1``."""
  return int(group_rounds).bit_length()


def tree_schedule(group_rounds: int) -> NoiseSchedule:
  """Tree-aggregation noise (DP-FTRL), restarting every ``group_rounds`` rounds.

  Node ``(level l, index j)`` of tree ``m`` covers rounds ``j 2^l + 1 .. (j +
  1) 2^l`` of that tree; its standard normal is drawn from the run's noise
  key, ``m``, ``l`` and ``j``, so no node is stored. With ``Z_t`` the sum of
  the nodes covering rounds ``1..t`` (those of the set bits of ``t``), round
  ``t``'s noise is ``Z_t - Z_{t-1}``.

  Args:
    group_rounds: ``b``, rounds per tree (the cyclic sampler's groups).

  Returns:
    The :class:`NoiseSchedule`; its state is ``(noise key data, round)``.
  """
  check_int("group_rounds", group_rounds, minimum=1)
  levels = tree_levels(group_rounds)

  def prefix(key, tree, t, like):
    total = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), like)
    for level in range(levels):
      on = (t >> level) & 1
      node = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, tree), level),
                                (t >> level) - 1)
      total = jax.tree.map(lambda a, z, on=on: a + jnp.where(on > 0, z, 0.0), total,
                           _normal_like(node, like))
    return total

  def init(params, key):
    del params
    return (jax.random.key_data(key), jnp.zeros((), jnp.int32))

  def next_noise(state, key, like):
    del key  # the nodes come from the run's noise key
    data, r = state
    base = jax.random.wrap_key_data(data)
    tree, t = r // group_rounds, r % group_rounds + 1
    now, before = prefix(base, tree, t, like), prefix(base, tree, t - 1, like)
    return jax.tree.map(jnp.subtract, now, before), (data, r + 1)

  return NoiseSchedule("tree", init, next_noise, int(group_rounds))


def optimal_banded_coefs(num_rounds: int, bands: int) -> np.ndarray:
  """The banded Toeplitz strategy jax-privacy optimizes for the prefix workload.

  Args:
    num_rounds: ``n``, the rounds of the run.
    bands: ``1 <= bands <= n`` (one band is plain DP-SGD noise).

  Returns:
    ``float64[bands]``, non-negative, non-increasing, unit L2 norm (the
    first column of ``C``); the optimization (a few seconds) runs once per
    ``(num_rounds, bands)`` in a process.
  """
  check_int("num_rounds", num_rounds, minimum=1)
  check_int("bands", bands, minimum=1)
  return np.array(_optimal_banded_coefs(int(num_rounds), min(int(bands), int(num_rounds))))


@functools.lru_cache(maxsize=64)
def _optimal_banded_coefs(num_rounds: int, bands: int) -> tuple[float, ...]:
  """:func:`optimal_banded_coefs`, optimized once per ``(num_rounds, bands)``."""
  if bands == 1:
    return (1.0,)
  toeplitz = jax_privacy_toeplitz()
  return tuple(float(c) for c in toeplitz.optimize_banded_toeplitz(num_rounds, bands))


def banded_schedule(coefs: Any, group_rounds: int) -> NoiseSchedule:
  """Banded Toeplitz matrix-factorization noise (``y = C^{-1} z``, by back-substitution).

  Args:
    coefs: the first column of the lower-triangular Toeplitz ``C``,
      ``[bands]``, positive first entry (e.g. :func:`optimal_banded_coefs`).
    group_rounds: ``b``, the rounds between a client's participations; at
      least ``bands`` (so the sensitivity is that of ``b``-min-separation).

  Returns:
    The :class:`NoiseSchedule`; its state is the last ``bands - 1`` noises
    (newest first) and the round.

  Raises:
    ValueError: for coefficients that are not finite with a positive first
      entry, or more bands than ``group_rounds``.
  """
  coefs = np.asarray(coefs, np.float64)
  if coefs.ndim != 1 or coefs.size == 0 or not np.all(np.isfinite(coefs)) or coefs[0] <= 0:
    raise ValueError("`coefs` must be a finite 1-D array with a positive first entry.")
  check_int("group_rounds", group_rounds, minimum=1)
  if coefs.size > group_rounds:
    raise ValueError(f"{coefs.size} bands exceed `group_rounds`={group_rounds}: a client "
                     "would take part within one band; use at most that many bands.")
  c = jnp.asarray(coefs, jnp.float32)
  bands = coefs.size

  def init(params, key):
    del key
    history = jax.tree.map(lambda x: jnp.zeros((bands - 1,) + jnp.shape(x), jnp.float32),
                           params)
    return (history, jnp.zeros((), jnp.int32))

  def next_noise(state, key, like):
    history, r = state
    z = _normal_like(key, like)
    # y_t = (z_t - sum_{j=1}^{bands-1} c_j y_{t-j}) / c_0; missing past terms are zero.
    y = jax.tree.map(lambda zz, h: (zz - jnp.tensordot(c[1:], h, axes=1)) / c[0], z, history)
    history = jax.tree.map(lambda h, new: jnp.concatenate([new[None], h[:-1]]), history, y) \
        if bands > 1 else history
    return y, (history, r + 1)

  return NoiseSchedule("bandmf", init, next_noise, int(group_rounds), coefs)


class CorrelatedState(NamedTuple):
  """The aggregator's state: the clip norm and the noise schedule's state."""

  clip: Any
  noise: Any


def correlated_gaussian_aggregator(clip: float, noise_multiplier: Any,
                                   expected_cohort_size: float, schedule: NoiseSchedule, *,
                                   noise_seed: int = 0) -> Aggregator:
  """Central Gaussian DP with noise correlated across rounds (DP-FTRL, banded MF).

  Each participating client's delta is clipped to L2 norm ``C``; the round's
  clipped sum gets ``noise_multiplier * C`` times the schedule's noise for
  the round, and is divided by the fixed ``expected_cohort_size``.

  Args:
    clip: the L2 clip norm ``C > 0``.
    noise_multiplier: ``z >= 0``, per unit of ``C`` (the std of each ``z``
      entry of the release ``C x + z``, over the clip norm).
    expected_cohort_size: the fixed denominator (clients per round).
    schedule: :func:`tree_schedule` or :func:`banded_schedule`.
    noise_seed: seed of the tree's node noises (each round's fresh noise of
      the banded schedule comes from the round key).

  Returns:
    An :class:`~fedjax_lite.Aggregator` with state :class:`CorrelatedState`;
    metrics ``clip``, ``participants``, ``noise_std`` (of the released
    average's per-round noise at the schedule's stationary scale).

  Raises:
    ValueError: for a non-positive clip or denominator, a negative multiplier.
  """
  if not (isinstance(clip, (int, float)) and clip > 0 and math.isfinite(clip)):
    raise ValueError(f"`clip` must be a positive number; got {clip!r}.")
  if not expected_cohort_size > 0:
    raise ValueError(f"`expected_cohort_size` must be > 0; got {expected_cohort_size}.")
  if isinstance(noise_multiplier, (int, float)) and not noise_multiplier >= 0:
    raise ValueError(f"`noise_multiplier` must be >= 0; got {noise_multiplier}.")
  denom = float(expected_cohort_size)

  def init(params):
    return CorrelatedState(jnp.asarray(clip, jnp.float32),
                           schedule.init(params, jax.random.key(noise_seed)))

  def per_client(delta, weight, state, key):
    del key
    participating = weight > 0
    scale = clip_scale(global_norm(delta), state.clip)
    return (delta, jnp.where(participating, scale, 0.0).astype(jnp.float32),
            {"participants": participating.astype(jnp.float32)})

  def finalize(total, total_weight, stats, state, key):
    del total_weight
    noise, noise_state = schedule.next(state.noise, key, total)
    std = noise_multiplier * state.clip
    mean = jax.tree.map(lambda s, n: ((s + std * n) / denom).astype(s.dtype), total, noise)
    return mean, CorrelatedState(state.clip, noise_state), {
        "clip": state.clip, "participants": stats["participants"], "noise_std": std / denom}

  return Aggregator(init, per_client, finalize)


# -- participation: client groups in turn ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _CyclicSample:
  groups: tuple[tuple[int, ...], ...]
  slots: int

  def __call__(self, key, round_index):
    del key
    table = np.full((len(self.groups), self.slots), -1, np.int32)
    for g, members in enumerate(self.groups):
      table[g, :len(members)] = members
    row = jnp.asarray(table)[jnp.asarray(round_index) % len(self.groups)]
    return jnp.maximum(row, 0), row >= 0, jnp.bool_(False)


def cyclic_sampler(num_clients: int, cohort_size: int, seed: int = 0) -> Sampler:
  """Fixed client groups that take turns: ``b``-min-separated participation.

  The clients are permuted once (from ``seed``) and split into ``b =
  floor(N / K)`` groups of ``K`` or ``K + 1`` clients; round ``r`` takes
  group ``r mod b``. Every client takes part exactly once every ``b``
  rounds, the participation pattern :func:`correlated_epsilon` accounts. No
  sampling randomness is claimed for privacy.

  Args:
    num_clients: ``N``.
    cohort_size: ``K <= N``.
    seed: the permutation's seed.

  Returns:
    A :class:`~fedjax_lite.Sampler` of kind ``"cyclic"`` with ``ceil(N / b)``
    slots.
  """
  check_int("num_clients", num_clients, minimum=1)
  check_int("cohort_size", cohort_size, minimum=1)
  if cohort_size > num_clients:
    raise ValueError(f"`cohort_size`={cohort_size} exceeds `num_clients`={num_clients}.")
  b = num_clients // cohort_size
  order = np.random.default_rng(seed).permutation(num_clients)
  groups = tuple(tuple(int(i) for i in order[g::b]) for g in range(b))
  slots = max(len(g) for g in groups)
  return Sampler(_CyclicSample(groups, slots), slots, "cyclic", int(num_clients), 1.0 / b,
                 by_round=True)


def num_groups(num_clients: int, cohort_size: int) -> int:
  """``b``: the cyclic sampler's groups, the rounds between a client's turns."""
  return num_clients // cohort_size
