"""Byzantine-robust aggregators: coordinate-wise median, trimmed mean, Krum, norm bounding.

The median, trimmed mean and Krum need every client's delta at once, so they
are :class:`~fedjax_lite.aggregation.Aggregator`\\ s with a ``combine``
function: the round keeps the cohort's deltas stacked (leaves ``[K, ...]``)
and calls ``combine(deltas, weights, stats_sum, state, key)`` instead of
``finalize`` (memory holds the cohort's ``K`` deltas). Their ``per_client``
passes each delta and weight through unchanged.

Weights are used only as a *presence mask*: a client counts iff its weight is
``> 0`` (padding, unused Poisson slots and non-finite clients have weight 0)
and every present client counts the same, as in the papers. The result is
exactly that of the aggregator applied to the present clients alone, whatever
the absent clients' deltas hold. The number of present clients ``m`` is a
traced value, so the implementations sort with ``+inf`` sentinels in the
absent slots and select positions by index arithmetic on ``m``; there is no
Python control flow on ``m``, and everything is safe under ``jax.jit`` and
``jax.vmap``.

:func:`norm_bounding` is a streaming wrapper: it clips each client's delta to
a global L2 norm before any inner aggregator (the plain mean by default, or
one of the robust ones above).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from fedjax_lite._types import Params
from fedjax_lite._validate import check_int, concrete_float
from fedjax_lite.aggregation import (
  Aggregator,
  PerClient,
  inner_aggregator,
  weighted_mean,
)
from fedjax_lite.privacy import clip_by_global_norm


def _identity_per_client(delta, weight, state, key):
  del state, key
  return delta, weight, ()


def _stateless_init(params):
  del params
  return ()


def _combine_only_finalize(name: str):
  def finalize(total, total_weight, stats, state, key):
    del total, total_weight, stats, state, key
    raise TypeError(
        f"fedjax_lite.robust.{name} needs every client's delta at once: it has no streaming "
        "`finalize`, only `combine`. Use it as the `aggregator` of "
        "fl.build_federated_algorithm (whose round calls `combine`), or call its `combine` on "
        "stacked deltas; it cannot be wrapped by an aggregator that only calls `finalize`.")

  return finalize


def _present(weights: Any) -> tuple[Any, Any]:
  """``(present bool[K], m int32)`` from the weights ``float[K]``."""
  weights = jnp.asarray(weights)
  if weights.ndim != 1:
    raise ValueError(f"`weights` must be float[K] (one per client); got shape {weights.shape}.")
  present = weights > 0
  return present, jnp.sum(present, dtype=jnp.int32)


def _bcast(flag: Any, x: Any) -> Any:
  return flag.reshape(flag.shape + (1,) * (x.ndim - flag.ndim))


def _work_dtype(x: Any) -> Any:
  return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32


def _sorted_present(x: Any, present: Any) -> Any:
  """``x`` ``[K, ...]`` sorted along the client axis, absent clients as ``+inf`` last."""
  x = x.astype(_work_dtype(x))
  return jnp.sort(jnp.where(_bcast(present, x), x, jnp.inf), axis=0)


def _check_leaves(deltas: Params, k: int) -> None:
  for x in jax.tree.leaves(deltas):
    if jnp.ndim(x) < 1 or jnp.shape(x)[0] != k:
      raise ValueError(
          f"stacked `deltas` must have leaves [K, ...] with K={k} (the length of `weights`); "
          f"got a leaf of shape {jnp.shape(x)}.")


# --------------------------------------------------------------------------
# Coordinate-wise median


def coordinate_median() -> Aggregator:
  """The coordinate-wise median of the present clients' deltas.

  For every coordinate of every leaf, the median over the ``m`` present
  clients (weight ``> 0``): the middle value for odd ``m``, the mean of the
  two middle values for even ``m`` (as ``numpy.median``); zeros when no
  client is present. Weights serve only as a presence mask: every present
  client counts once, whatever its example count.

  References:
    Yin, Chen, Ramchandran, Bartlett. "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML 2018.
    https://arxiv.org/abs/1803.01498

  Returns:
    An :class:`~fedjax_lite.aggregation.Aggregator` with empty state and a
    ``combine(deltas, weights, stats_sum, state, key)``: ``deltas`` leaves
    ``[K, ...]``, ``weights`` ``float[K]``; it returns the median pytree (like
    one client's delta), the state, and metrics ``num_present`` (float32
    ``m``). Its ``finalize`` raises ``TypeError`` (it cannot stream).
  """

  def combine(deltas, weights, stats, state, key):
    del stats, key
    present, m = _present(weights)
    _check_leaves(deltas, present.shape[0])
    lo = jnp.maximum((m - 1) // 2, 0)
    hi = jnp.maximum(m // 2, 0)

    def leaf_median(x):
      s = _sorted_present(x, present)
      a = jax.lax.dynamic_index_in_dim(s, lo, axis=0, keepdims=False)
      b = jax.lax.dynamic_index_in_dim(s, hi, axis=0, keepdims=False)
      return jnp.where(m > 0, 0.5 * a + 0.5 * b, 0).astype(x.dtype)

    return (jax.tree.map(leaf_median, deltas), state,
            {"num_present": m.astype(jnp.float32)})

  return Aggregator(_stateless_init, _identity_per_client,
                    _combine_only_finalize("coordinate_median"), combine)


# --------------------------------------------------------------------------
# Coordinate-wise trimmed mean


def trimmed_mean(beta: float) -> Aggregator:
  """The coordinate-wise ``beta``-trimmed mean of the present clients' deltas.

  For every coordinate of every leaf, the ``b = floor(beta * m)`` largest and
  the ``b`` smallest values of the ``m`` present clients (weight ``> 0``) are
  dropped and the remaining ``m - 2b`` averaged uniformly; zeros when no
  client is present. ``trimmed_mean(0.0)`` is the uniform mean of the present
  clients. Weights serve only as a presence mask.

  ``floor(beta * m)`` is evaluated in Python float64 arithmetic for every
  possible ``m`` (a table indexed by the traced ``m``) when ``beta`` is a
  concrete number; a traced ``beta`` (e.g. a swept hyperparameter) uses
  float32 arithmetic in the program.

  References:
    Yin, Chen, Ramchandran, Bartlett. "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML 2018.
    https://arxiv.org/abs/1803.01498

  Args:
    beta: the fraction trimmed from each end, ``0 <= beta < 0.5``.

  Returns:
    An :class:`~fedjax_lite.aggregation.Aggregator` with empty state and a
    ``combine(deltas, weights, stats_sum, state, key)`` (``deltas`` leaves
    ``[K, ...]``, ``weights`` ``float[K]``) returning the trimmed mean, the
    state, and metrics ``num_present`` (``m``) and ``num_trimmed`` (``2b``
    values dropped per coordinate). Its ``finalize`` raises ``TypeError``.

  Raises:
    ValueError: if ``beta`` is not in ``[0, 0.5)``.
  """
  concrete = concrete_float(beta)
  if isinstance(beta, bool) or (concrete is not None and not 0.0 <= concrete < 0.5):
    raise ValueError(f"`beta` must be a fraction in [0, 0.5); got {beta!r}.")

  def combine(deltas, weights, stats, state, key):
    del stats, key
    present, m = _present(weights)
    k = present.shape[0]
    _check_leaves(deltas, k)
    if concrete is not None:
      table = jnp.asarray([math.floor(concrete * j) for j in range(k + 1)], jnp.int32)
      b = table[m]
    else:
      b = jnp.floor(jnp.asarray(beta, jnp.float32) * m.astype(jnp.float32)).astype(jnp.int32)
    kept = m - 2 * b
    pos = jnp.arange(k)
    keep = (pos >= b) & (pos < m - b)

    def leaf_trimmed(x):
      s = _sorted_present(x, present)
      total = jnp.sum(jnp.where(_bcast(keep, s), s, 0), axis=0)
      return (total / jnp.maximum(kept, 1).astype(s.dtype)).astype(x.dtype)

    metrics = {"num_present": m.astype(jnp.float32), "num_trimmed": (2 * b).astype(jnp.float32)}
    return jax.tree.map(leaf_trimmed, deltas), state, metrics

  return Aggregator(_stateless_init, _identity_per_client,
                    _combine_only_finalize("trimmed_mean"), combine)


# --------------------------------------------------------------------------
# Krum / Multi-Krum


def pairwise_sq_distances(deltas: Params) -> Any:
  """Squared Euclidean distances between the clients' whole flattened deltas.

  Args:
    deltas: pytree with leaves ``[K, ...]``.

  Returns:
    ``float32[K, K]``: ``||x_i - x_j||^2`` over every coordinate of every
    leaf, computed as sums of squared differences (no Gram-matrix
    cancellation), one row at a time (memory ``O(K D)``).
  """
  leaves = jax.tree.leaves(deltas)
  k = leaves[0].shape[0]
  flat = jnp.concatenate([jnp.reshape(x, (k, -1)).astype(jnp.float32) for x in leaves], axis=1)
  return jax.lax.map(lambda row: jnp.sum(jnp.square(flat - row), axis=1), flat)


def krum_scores(deltas: Params, weights: Any, num_byzantine: int) -> Any:
  """Krum's score of each present client; ``+inf`` for absent ones.

  The score of present client ``i`` is the sum of its squared distances to
  its ``n_i = m - f - 2`` nearest *other* present clients, where ``m`` is the
  number of present clients (weight ``> 0``) and ``f = num_byzantine``. When
  ``m < f + 3`` (outside Krum's guarantee, which needs ``m > 2f + 2``) the
  single nearest neighbour is used, and a lone client scores 0.

  Args:
    deltas: pytree with leaves ``[K, ...]``.
    weights: ``float[K]``; only ``> 0`` is read.
    num_byzantine: ``f``.

  Returns:
    ``float32[K]``.
  """
  present, m = _present(weights)
  k = present.shape[0]
  _check_leaves(deltas, k)
  deltas = jax.tree.map(lambda x: jnp.where(_bcast(present, x), x, 0), deltas)
  dist = pairwise_sq_distances(deltas)
  valid = present[:, None] & present[None, :] & ~jnp.eye(k, dtype=bool)
  nearest = jnp.sort(jnp.where(valid, dist, jnp.inf), axis=1)
  neighbours = jnp.minimum(jnp.maximum(m - num_byzantine - 2, 1), m - 1)
  score = jnp.sum(jnp.where(jnp.arange(k)[None, :] < neighbours, nearest, 0.0), axis=1)
  return jnp.where(present, score, jnp.inf)


def krum(num_byzantine: int, multi: int = 1) -> Aggregator:
  """Krum, or Multi-Krum: the mean of the ``multi`` present clients with the lowest Krum score.

  Each present client (weight ``> 0``) is scored by the sum of squared
  distances from its delta (the whole pytree flattened) to its ``m - f - 2``
  nearest other present clients (see :func:`krum_scores`); the ``min(multi,
  m)`` lowest-scoring clients are selected (ties go to the earlier cohort
  position) and their deltas averaged uniformly. ``multi=1`` is Krum: the
  selected client's delta itself. Zeros when no client is present. Weights
  serve only as a presence mask. Krum tolerates ``f`` Byzantine clients when
  ``m > 2f + 2``.

  References:
    Blanchard, El Mhamdi, Guerraoui, Stainer. "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
    https://papers.nips.cc/paper/6617

  Args:
    num_byzantine: ``f``, the number of Byzantine clients to tolerate (int
      ``>= 0``).
    multi: how many clients to select and average (int ``>= 1``).

  Returns:
    An :class:`~fedjax_lite.aggregation.Aggregator` with empty state and a
    ``combine(deltas, weights, stats_sum, state, key)`` (``deltas`` leaves
    ``[K, ...]``, ``weights`` ``float[K]``) returning the mean of the
    selected deltas, the state, and metrics ``num_present`` (``m``),
    ``num_selected`` and ``selected`` (``float32[K]``, 1 for the selected
    clients in cohort order). Its ``finalize`` raises ``TypeError``.

  Raises:
    TypeError, ValueError: for a non-int or negative ``num_byzantine``, or a
      non-int or non-positive ``multi``.
  """
  f = check_int("num_byzantine", num_byzantine, minimum=0)
  multi = check_int("multi", multi, minimum=1)

  def combine(deltas, weights, stats, state, key):
    del stats, key
    present, m = _present(weights)
    k = present.shape[0]
    score = krum_scores(deltas, weights, f)
    order = jnp.argsort(score, stable=True)
    rank = jnp.zeros((k,), jnp.int32).at[order].set(jnp.arange(k, dtype=jnp.int32))
    num_selected = jnp.minimum(multi, m)
    selected = present & (rank < num_selected)
    safe = jax.tree.map(lambda x: jnp.where(_bcast(present, x), x, 0), deltas)
    aggregate = weighted_mean(safe, selected.astype(jnp.float32))
    aggregate = jax.tree.map(lambda a, x: a.astype(x.dtype), aggregate, deltas)
    metrics = {"num_present": m.astype(jnp.float32),
               "num_selected": num_selected.astype(jnp.float32),
               "selected": PerClient(selected.astype(jnp.float32))}
    return aggregate, state, metrics

  return Aggregator(_stateless_init, _identity_per_client, _combine_only_finalize("krum"),
                    combine)


# --------------------------------------------------------------------------
# Norm bounding


def norm_bounding(inner: Aggregator | None = None, *, max_norm: float) -> Aggregator:
  """Clips every client's delta to global L2 norm ``max_norm``, then aggregates with ``inner``.

  ``per_client`` scales each delta (the whole pytree as one vector) by
  ``min(1, max_norm / ||delta||)`` and hands it to ``inner.per_client``;
  ``finalize`` and ``combine`` are ``inner``'s. With a streaming ``inner``
  (the default :func:`fedjax_lite.mean_aggregator`, example-weighted) the
  result streams; with a combine-style ``inner`` (e.g.
  :func:`coordinate_median`) it is combine-style too. The state is
  ``inner``'s.

  References:
    Sun, Kairouz, Suresh, McMahan. "Can You Really Backdoor Federated
    Learning?", NeurIPS 2019 Workshop on Federated Learning.
    https://arxiv.org/abs/1911.07963

  Args:
    inner: the aggregator of the clipped deltas; default
      ``fl.mean_aggregator()``.
    max_norm: the L2 bound (> 0; may be a traced scalar, e.g. a swept
      hyperparameter).

  Returns:
    An :class:`~fedjax_lite.aggregation.Aggregator`. Its metrics are
    ``inner``'s plus ``num_clipped``: the present clients (weight ``> 0``)
    whose delta norm exceeded ``max_norm``.

  Raises:
    TypeError: if ``inner`` is not an ``Aggregator``.
    ValueError: if ``max_norm`` is not positive.
  """
  inner = inner_aggregator(inner, "norm_bounding")
  concrete = concrete_float(max_norm)
  if isinstance(max_norm, bool) or (concrete is not None and not concrete > 0):
    raise ValueError(f"`max_norm` must be > 0; got {max_norm!r}.")

  def per_client(delta, weight, state, key):
    clipped, norm = clip_by_global_norm(delta, max_norm)
    delta, weight_out, inner_stats = inner.per_client(clipped, weight, state, key)
    was_clipped = ((norm > max_norm) & (jnp.asarray(weight) > 0)).astype(jnp.float32)
    return delta, weight_out, {"inner": inner_stats, "num_clipped": was_clipped}

  def finalize(total, total_weight, stats, state, key):
    aggregate, state, metrics = inner.finalize(total, total_weight, stats["inner"], state, key)
    return aggregate, state, dict(metrics, num_clipped=stats["num_clipped"])

  combine = None
  if inner.combine is not None:
    def combine(deltas, weights, stats, state, key):
      aggregate, state, metrics = inner.combine(deltas, weights, stats["inner"], state, key)
      return aggregate, state, dict(metrics, num_clipped=stats["num_clipped"])

  return Aggregator(inner.init, per_client, finalize, combine)
