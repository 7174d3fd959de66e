"""Aggregators: how client deltas become one server pseudo-update.

An :class:`Aggregator` is a triple of pure functions over explicit state, in
the optax style, designed so that the round can *stream* over chunks of
clients (memory bounded by a chunk, not by the cohort):

* ``init(params) -> state``
* ``per_client(delta, weight, state, key) -> (delta, weight, stats)``:
  applied to each client on its own (under ``vmap``) before summation, with
  a per-client PRNG key (for local noise). It may transform the delta (e.g.
  clip it) and choose its weight (examples, uniform, capped). The round gives
  clients that must not count (padding, non-finite deltas) weight 0.
  ``stats`` is a pytree of per-client scalars that the round sums over
  clients, alongside ``sum_i weight_i * delta_i`` and ``sum_i weight_i``.
* ``finalize(weighted_sum, total_weight, stats_sum, state, key) ->
  (aggregate, state, metrics)``: turns the sums into the aggregate delta
  (e.g. divide, or add noise and divide by a fixed denominator).
* ``combine(deltas, weights, stats_sum, state, key) -> (aggregate, state,
  metrics)`` (optional, ``None`` for streaming aggregators): for aggregators
  that need every client's delta at once (coordinate-wise median, trimmed
  mean, Krum). When it is set, the round keeps the cohort's ``per_client``
  outputs stacked -- ``deltas`` with leaves ``[K, ...]`` and ``weights``
  ``float[K]`` in cohort order, clients that must not count with weight 0
  and a zero delta -- and calls ``combine`` instead of ``finalize``. Memory
  then holds the cohort's ``K`` deltas.

Metrics are a dict of scalars; a metric with one value per client is
declared by wrapping it in :class:`PerClient` (never inferred from its shape).

Wrapping aggregators (differential privacy, compression) compose by
transforming these three functions, as TensorFlow Federated's aggregation
factories do.

The stacked helpers :func:`weighted_sum` and :func:`weighted_mean` are the
same reductions for deltas that are all in memory at once.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_lite._types import Params


class Aggregator(NamedTuple):
  """A streaming aggregator (see the module docstring)."""

  init: Callable[[Params], Any]
  per_client: Callable[[Params, Any, Any, Any], tuple[Params, Any, Any]]
  finalize: Callable[[Params, Any, Any, Any, Any], tuple[Params, Any, dict[str, Any]]]
  combine: Callable[[Params, Any, Any, Any, Any], tuple[Params, Any, dict[str, Any]]] | None = None


class PerClient(NamedTuple):
  """An aggregator metric with one value per cohort client (``[K]``, in cohort order).

  ``finalize``/``combine`` return their metrics as a dict; a value wrapped in
  ``PerClient`` goes to the round's ``metrics["clients"]["aggregator/<name>"]``,
  every other value is a round-level scalar ``metrics["aggregator/<name>"]``.
  """

  value: Any


def weighted_sum(stacked: Params, weights: Any) -> Params:
  """``sum_i weights[i] * stacked[i]`` for every leaf.

  Args:
    stacked: pytree whose leaves have a leading client axis ``[K, ...]``.
    weights: ``float[K]``.

  Returns:
    Pytree like one client's slice of ``stacked``.
  """
  return jax.tree.map(lambda x: jnp.tensordot(weights.astype(x.dtype), x, axes=1), stacked)


def weighted_mean(stacked: Params, weights: Any) -> Params:
  """The ``weights``-weighted mean over the leading client axis.

  Args:
    stacked: pytree with leaves ``[K, ...]``.
    weights: non-negative ``float[K]`` (e.g. example counts; 0 excludes a
      client).

  Returns:
    ``sum_i w_i x_i / sum_i w_i``, or zeros if every weight is 0.
  """
  total = jnp.sum(weights)
  return jax.tree.map(lambda s: s / jnp.maximum(total, _tiny(s.dtype)).astype(s.dtype),
                      weighted_sum(stacked, weights))


def uniform_mean(stacked: Params, present: Any) -> Params:
  """The unweighted mean over the clients where ``present`` is true.

  Args:
    stacked: pytree with leaves ``[K, ...]``.
    present: ``bool[K]`` (e.g. ``num_examples > 0``).

  Returns:
    Mean over present clients, or zeros if none is present.
  """
  return weighted_mean(stacked, jnp.asarray(present, jnp.float32))


WEIGHTINGS = ("num_examples", "uniform")


def mean_aggregator(weighting: str = "num_examples") -> Aggregator:
  """The plain (FedAvg) mean of client deltas.

  Args:
    weighting: ``"num_examples"`` (each client weighted by its example count,
      McMahan et al. 2017) or ``"uniform"`` (each client with at least one
      example weighs 1). Clients with zero examples weigh 0 either way.

  Returns:
    An :class:`Aggregator` with empty state. ``finalize`` returns
    ``weighted_sum / total_weight`` (zeros if the total weight is 0) and
    reports ``total_weight`` in its metrics.

  Raises:
    ValueError: for an unknown ``weighting``.
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"`weighting` must be one of {WEIGHTINGS}; got {weighting!r}.")

  def init(params):
    del params
    return ()

  def per_client(delta, weight, state, key):
    del state, key
    if weighting == "uniform":
      weight = (weight > 0).astype(jnp.float32)
    return delta, weight, ()

  def finalize(total, total_weight, stats, state, key):
    del stats, key
    mean = jax.tree.map(
        lambda s: s / jnp.maximum(total_weight, _tiny(s.dtype)).astype(s.dtype), total)
    return mean, state, {"total_weight": total_weight}

  return Aggregator(init, per_client, finalize)


def inner_aggregator(inner: Any, wrapper: str) -> Aggregator:
  """The aggregator a wrapping aggregator wraps: ``inner``, or the example-weighted mean.

  Args:
    inner: an :class:`Aggregator` or ``None``.
    wrapper: the wrapping aggregator's name, for the message.

  Returns:
    ``inner``, or :func:`mean_aggregator` ``()`` for ``None``.

  Raises:
    TypeError: for anything else.
  """
  if inner is None:
    return mean_aggregator()
  if not isinstance(inner, Aggregator):
    raise TypeError(
        f"{wrapper}: `inner` must be a fedjax_lite.Aggregator (e.g. fl.mean_aggregator() or "
        f"fedjax_lite.robust.coordinate_median()); got {type(inner).__name__}.")
  return inner


def _tiny(dtype):
  return jnp.finfo(dtype).tiny
