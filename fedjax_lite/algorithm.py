"""The federated round: vmapped client updates, streamed aggregation, server step.

A :class:`FederatedAlgorithm` is a pair of pure functions over an explicit
:class:`ServerState`, in the optax style::

    algo = fl.build_federated_algorithm(client_update, fl.server.fedavg())
    state = algo.init(params)
    state, metrics = algo.round(state, cohort, key)

``round`` is one ``jax.jit``-compiled program: the cohort (a
:class:`~fedjax_lite.data.FederatedData` with leading client axis ``K``) is
processed chunk by chunk inside ``lax.scan`` (the last chunk padded with empty
clients); each chunk runs the client update under ``jax.vmap`` and adds its
clients' weighted deltas to a running sum, so peak memory holds one chunk of
model copies, not ``K``. The aggregator then finalizes the sums and the
server optimizer takes a step with the negated aggregate as pseudo-gradient.
Given a device ``mesh``, each device runs this chunk loop over its share of
the cohort under ``jax.shard_map`` and one ``psum`` combines the sums (see
:mod:`fedjax_lite.sharding`).

Per-client randomness comes from ``fold_in(client_key, client_id)`` and the
reduction is a sum, so results do not depend on the chunk size or on the
order of clients in the cohort (up to float summation order).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from fedjax_lite.aggregation import Aggregator, mean_aggregator, weighted_sum
from fedjax_lite.client import _PER_EXAMPLE_MAX_LEAF, ClientUpdate
from fedjax_lite.data import FederatedData, _check_int
from fedjax_lite.sharding import CLIENT_AXIS, pad_clients, replicate

Params = Any
PRNGKey = Any


class ServerState(NamedTuple):
  """Everything the server carries between rounds.

  Attributes:
    params: the global model parameters.
    opt_state: the server optimizer's state.
    aggregator_state: the aggregator's state (empty for the plain mean).
    round: ``int32`` scalar, the number of rounds applied so far.
  """

  params: Params
  opt_state: Any
  aggregator_state: Any
  round: Any


class FederatedAlgorithm(NamedTuple):
  """A federated algorithm as two pure functions.

  Attributes:
    init: ``init(params) -> ServerState``.
    round: ``round(state, cohort, key) -> (state, metrics)``; see
      :func:`build_federated_algorithm` for the metrics.
  """

  init: Callable[[Params], ServerState]
  round: Callable[[ServerState, FederatedData, PRNGKey], tuple[ServerState, dict[str, Any]]]


NONFINITE_POLICIES = ("raise", "drop")


def build_federated_algorithm(
    client_update: ClientUpdate,
    server_optimizer: optax.GradientTransformation,
    *,
    aggregator: Aggregator | None = None,
    chunk_size: int | str | None = "auto",
    nonfinite: str = "raise",
    jit: bool = True,
    mesh: Mesh | None = None,
    client_axis: str = CLIENT_AXIS,
) -> FederatedAlgorithm:
  """Composes a client update, an aggregator and a server optimizer.

  Args:
    client_update: ``client_update(server_params, client_data, key) ->
      ClientOutput``, e.g. from :func:`fedjax_lite.build_client_update`. It is
      called with ``key`` = the round's client key and must fold in
      ``client_data.client_ids`` itself for per-client randomness.
    server_optimizer: any ``optax.GradientTransformation``; it receives
      ``-aggregate`` as the gradient (see :mod:`fedjax_lite.server` presets).
    aggregator: defaults to :func:`fedjax_lite.mean_aggregator` (weighted by
      example counts).
    chunk_size: clients per vmapped chunk (>= 1, or the cohort if smaller).
      ``"auto"`` (the default) picks it from the model and data sizes with
      :func:`auto_chunk_size`; ``None`` processes the whole cohort in one
      chunk. Memory holds one chunk of model copies and optimizer states, not
      the cohort's, and results do not depend on it beyond float rounding.
    nonfinite: what to do with a client whose delta or weight holds NaN/Inf.
      In both modes the client gets weight 0 and a zero delta, so it can never
      be averaged into the model, and it is counted in
      ``metrics["num_nonfinite_clients"]``. ``"raise"`` additionally leaves the
      whole server state unchanged for that round, and
      :func:`fedjax_lite.run_rounds` (or :func:`raise_if_nonfinite`) raises a
      ``ValueError`` naming the clients; ``"drop"`` applies the round without
      them.
    jit: wrap ``round`` in ``jax.jit`` (the default). Set False to compose the
      pure function into your own jitted program.
    mesh: a ``jax.sharding.Mesh`` (e.g. :func:`fedjax_lite.client_mesh`) to
      shard the cohort's clients over its ``client_axis``: the cohort is
      padded with empty clients to a multiple of that axis's size, each device
      runs its share through the chunked client loop (chunks sized per
      device), the sums are combined with one ``psum``, and the aggregator's
      finalize (DP noise included, drawn once from the same key) and the
      server step run replicated, so results equal the single-device round's
      up to float summation order. Parameters stay replicated. ``init``
      replicates the state on the mesh (every process of a multi-process run
      must pass the same params). Default: no sharding.
    client_axis: the mesh axis the clients are sharded over.

  Returns:
    A :class:`FederatedAlgorithm`. ``round`` returns metrics with float32
    scalars ``train_loss`` (example-weighted mean over finite clients),
    ``num_clients`` (finite clients with at least one example),
    ``num_examples``, ``num_nonfinite_clients``, ``applied`` (1.0 if the server
    step was applied), the aggregator's metrics under ``aggregator/...``,
    and ``clients``: a dict of per-client arrays ``[K]`` in cohort order (each
    client metric, plus ``nonfinite``).

  Raises:
    ValueError, TypeError: for a bad ``chunk_size``, ``nonfinite`` policy or
      ``server_optimizer``.
  """
  if chunk_size is not None and chunk_size != "auto":
    _check_int("chunk_size", chunk_size, minimum=1)
  if nonfinite not in NONFINITE_POLICIES:
    raise ValueError(f"`nonfinite` must be one of {NONFINITE_POLICIES}; got {nonfinite!r}.")
  if not (hasattr(server_optimizer, "init") and hasattr(server_optimizer, "update")):
    raise TypeError(
        "`server_optimizer` must be an optax.GradientTransformation (e.g. "
        f"fedjax_lite.server.fedavg()); got {server_optimizer!r}.")
  if aggregator is None:
    aggregator = mean_aggregator()
  if mesh is not None and client_axis not in mesh.shape:
    raise ValueError(f"`mesh` has axes {tuple(mesh.shape)}; `client_axis`={client_axis!r} is not "
                     "one of them.")

  def init(params) -> ServerState:
    # Under a trace (e.g. run_sweep's jitted init) placement is the caller's.
    place = mesh is not None and not any(
        isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(params))
    params = jax.tree.map(jnp.asarray, replicate(params, mesh) if place else params)
    state = ServerState(params, server_optimizer.init(params), aggregator.init(params),
                        jnp.zeros((), jnp.int32))
    return replicate(state, mesh) if place else state

  def client_sums(params, agg_state, cohort: FederatedData, client_key, agg_client_key):
    """The cohort's streamed sums ``(total, total_weight, stats)`` and per-client metrics."""
    k = cohort.num_clients
    if chunk_size == "auto":
      chunk = min(auto_chunk_size(params, cohort), k)
    else:
      chunk = k if chunk_size is None else min(chunk_size, k)
    num_chunks = math.ceil(k / chunk)

    def chunk_of(i):
      # Clients i*chunk .. i*chunk+chunk-1, gathered from the cohort (no padded
      # copy of the whole cohort); slots past its end repeat its last client as
      # an empty client (0 examples: zero delta, weight 0) and are dropped below.
      idx = i * chunk + jnp.arange(chunk)
      clamped = jnp.minimum(idx, k - 1)
      part = jax.tree.map(lambda x: jnp.take(x, clamped, axis=0, mode="clip"), cohort)
      return part._replace(num_examples=jnp.where(idx < k, part.num_examples, 0))

    def run_chunk(carry, chunk_data):
      out = jax.vmap(client_update, in_axes=(None, 0, None))(params, chunk_data, client_key)
      keys = jax.vmap(lambda i: jax.random.fold_in(agg_client_key, i))(chunk_data.client_ids)

      def aggregate_chunk(finite):
        delta = jax.tree.map(lambda d: jnp.where(_bcast(finite, d), d, 0).astype(d.dtype),
                             out.delta)
        weight = jnp.where(finite, out.weight, 0.0)
        delta, weight, stats = jax.vmap(aggregator.per_client, in_axes=(0, 0, None, 0))(
            delta, weight, agg_state, keys)
        return (weighted_sum(delta, weight), jnp.sum(weight),
                jax.tree.map(lambda x: jnp.sum(x, axis=0), stats), finite)

      # A chunk whose summed deltas and weights are finite has no NaN/Inf
      # entry, so the per-client check (a pass over every client's delta) runs
      # only for the rare chunk that fails this cheap one (a product with ones,
      # much faster on CPU than a reduction over the client axis).
      every_client = jnp.ones(out.weight.shape, bool)
      chunk_sum = (weighted_sum(out.delta, every_client.astype(jnp.float32)), out.weight)
      chunk_total, chunk_weight, chunk_stats, finite = jax.lax.cond(
          _all_finite(chunk_sum), lambda: aggregate_chunk(every_client),
          lambda: aggregate_chunk(jax.vmap(_all_finite)((out.delta, out.weight))))
      total, total_weight, stats_sum = carry
      total = jax.tree.map(jnp.add, total, chunk_total)
      stats_sum = jax.tree.map(jnp.add, stats_sum, chunk_stats)
      client_metrics = dict(out.metrics)
      client_metrics["nonfinite"] = ~finite
      return (total, total_weight + chunk_weight, stats_sum), client_metrics

    stats_shape = jax.eval_shape(
        lambda d: aggregator.per_client(d, jnp.zeros((), jnp.float32), agg_state,
                                        jax.random.key(0))[2], params)
    carry0 = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32),
              jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats_shape))
    metrics_shape = jax.eval_shape(
        lambda c: run_chunk(carry0, c)[1], chunk_of(0))

    def skip_chunk(carry, chunk_data):
      del chunk_data
      return carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)

    def chunk_step(carry, i):
      # Chunks with no client data (e.g. the unused slots of a Poisson-sampled
      # cohort) are skipped outright.
      chunk_data = chunk_of(i)
      has_data = jnp.any(chunk_data.num_examples > 0)
      return jax.lax.cond(has_data, run_chunk, skip_chunk, carry, chunk_data)

    sums, per_client = jax.lax.scan(chunk_step, carry0, jnp.arange(num_chunks))
    return sums, jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:k], per_client)

  def sharded_client_sums(params, agg_state, cohort: FederatedData, client_key, agg_client_key):
    # Each device runs client_sums on its slice of the (padded) cohort; one
    # psum combines the sums and one all_gather the per-client metrics, so
    # everything after this is replicated and identical to one device's.
    k = cohort.num_clients
    padded = pad_clients(cohort, mesh.shape[client_axis])

    def local(params, agg_state, part, client_key, agg_client_key):
      sums, per_client = client_sums(params, agg_state, part, client_key, agg_client_key)
      return (jax.lax.psum(sums, client_axis),
              jax.lax.all_gather(per_client, client_axis, tiled=True))

    replicated, sharded = PartitionSpec(), PartitionSpec(client_axis)
    # check_vma=False: the client loop's lax.cond/scan mix per-device and
    # replicated values, which is fine here (the outputs are replicated by
    # the psum and all_gather) but which the varying-axes checker rejects.
    sums, per_client = jax.shard_map(
        local, mesh=mesh, in_specs=(replicated, replicated, sharded, replicated, replicated),
        out_specs=(replicated, replicated), check_vma=False)(params, agg_state, padded, client_key,
                                            agg_client_key)
    return sums, jax.tree.map(lambda x: x[:k], per_client)

  def round_fn(state: ServerState, cohort: FederatedData, key) -> tuple[ServerState, dict]:
    _check_cohort(cohort)
    client_key, server_key = jax.random.split(key)
    agg_client_key, agg_key = jax.random.split(server_key)
    params, agg_state = state.params, state.aggregator_state
    sums_fn = client_sums if mesh is None else sharded_client_sums
    (total, total_weight, stats_sum), per_client = sums_fn(params, agg_state, cohort, client_key,
                                                           agg_client_key)

    aggregate, new_agg_state, agg_metrics = aggregator.finalize(
        total, total_weight, stats_sum, agg_state, agg_key)
    pseudo_grad = jax.tree.map(jnp.negative, aggregate)
    updates, new_opt_state = server_optimizer.update(pseudo_grad, state.opt_state, params)
    new_state = ServerState(optax.apply_updates(params, updates), new_opt_state, new_agg_state,
                            state.round + 1)

    bad = per_client["nonfinite"]
    num_bad = jnp.sum(bad)
    applied = num_bad == 0 if nonfinite == "raise" else jnp.bool_(True)
    new_state = jax.tree.map(lambda new, old: jnp.where(applied, new, old), new_state, state)
    metrics = _summarize(per_client)
    metrics.update({
        "num_nonfinite_clients": num_bad.astype(jnp.float32),
        "applied": applied.astype(jnp.float32),
        "clients": per_client,
    })
    metrics.update({f"aggregator/{name}": v for name, v in agg_metrics.items()})
    return new_state, metrics

  return FederatedAlgorithm(init, jax.jit(round_fn) if jit else round_fn)


# The working set auto_chunk_size aims for: about a fast cache's worth (L2 plus
# a share of L3 on current x86 servers). Measured on a 2-core x86 CPU: W1's
# 784-200-200-10 MLP ran best at 8-12 clients per chunk (3.4 MB each here), W2's
# logistic regression at 250-500 (96 KB each) and 2x slower at 1900.
AUTO_CHUNK_BYTES = 32 * 2**20


def auto_chunk_size(params: Params, cohort: FederatedData,
                    budget_bytes: int = AUTO_CHUNK_BYTES) -> int:
  """Clients per chunk such that one chunk's working set fits ``budget_bytes``.

  A client's working set is estimated as four model copies (its parameters,
  gradient, optimizer state and delta) plus its padded data, plus one model
  copy per padded example for small models, whose client updates take
  per-example gradients (see :func:`fedjax_lite.masked_mean_grad`). Only
  shapes are read, so it works on tracers.

  Args:
    params: the model parameters (arrays or ``ShapeDtypeStruct``s).
    cohort: the cohort (only its arrays' shapes are read).
    budget_bytes: the target working set of one chunk.

  Returns:
    A chunk size ``>= 1`` (callers cap it at the cohort size).
  """
  leaves = jax.tree.leaves(params)
  model = sum(x.size * x.dtype.itemsize for x in leaves)
  data = sum(math.prod(x.shape[1:]) * x.dtype.itemsize for x in cohort.arrays.values())
  per_client = 4 * model + data
  if max((x.size for x in leaves), default=0) <= _PER_EXAMPLE_MAX_LEAF:
    max_examples = next(iter(cohort.arrays.values())).shape[1] if cohort.arrays else 1
    per_client += max_examples * model
  return max(1, budget_bytes // max(per_client, 1))


def raise_if_nonfinite(metrics: dict[str, Any], cohort_client_ids: Any = None,
                       round_index: int | None = None) -> None:
  """Raises ``ValueError`` if a round's metrics report non-finite client deltas.

  Args:
    metrics: the metrics returned by ``algo.round``.
    cohort_client_ids: optional ids of the cohort's clients, to name them.
    round_index: optional round number for the message.

  Raises:
    ValueError: naming the offending clients and the ``nonfinite`` option.
  """
  bad = jax.device_get(metrics["clients"]["nonfinite"])
  if not bad.any():
    return
  where = [i for i, b in enumerate(bad) if b]
  if cohort_client_ids is not None:
    ids = jax.device_get(cohort_client_ids)
    where = [int(ids[i]) for i in where]
  when = "" if round_index is None else f" in round {round_index}"
  raise ValueError(
      f"client delta is NaN/Inf for {len(where)} client(s){when} (client ids {where[:20]}); the "
      "server state was left unchanged. Lower the client learning rate or check the data, or "
      "build the algorithm with nonfinite='drop' to exclude such clients (weight 0) and continue.")


def _summarize(per_client: dict[str, Any]) -> dict[str, Any]:
  """Round-level metrics: counts (``num_*``) are summed, others example-weighted."""
  ok = ~per_client["nonfinite"]
  n = jnp.where(ok, per_client["num_examples"], 0.0)
  out = {"num_clients": jnp.sum((n > 0).astype(jnp.float32))}
  for name, v in per_client.items():
    if name == "nonfinite":
      continue
    v = jnp.where(ok, v, 0.0).astype(jnp.float32)
    if name.startswith("num_"):
      out[name] = jnp.sum(v)
    else:
      out[name] = jnp.sum(n * v) / jnp.maximum(jnp.sum(n), 1.0)
  return out


def _check_cohort(cohort: FederatedData) -> None:
  if not isinstance(cohort, FederatedData):
    raise TypeError(
        "`cohort` must be a FederatedData (see fedjax_lite.from_clients); got "
        f"{type(cohort).__name__}.")
  k = cohort.num_examples.shape
  if len(k) != 1:
    raise ValueError(f"`cohort.num_examples` must be [num_clients]; got shape {k}.")
  if tuple(cohort.client_ids.shape) != k:
    raise ValueError(f"`cohort.client_ids` has shape {cohort.client_ids.shape}; expected {k}.")
  lengths = set()
  for name, x in cohort.arrays.items():
    if x.ndim < 2 or x.shape[0] != k[0]:
      raise ValueError(
          f"`cohort.arrays['{name}']` has shape {x.shape}; its leading axis must be the "
          f"{k[0]} clients of `num_examples`, then the example axis.")
    lengths.add(x.shape[1])
  if len(lengths) != 1:
    raise ValueError(f"`cohort.arrays` disagree on the padded example axis: {sorted(lengths)}.")


def _all_finite(tree) -> Any:
  # 0 * x is exactly 0 for every finite x and NaN for NaN/Inf, so one float
  # sum flags any non-finite entry; XLA:CPU reduces it about 3x faster than a
  # boolean all(isfinite(x)).
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.bool_(True)
  return jnp.isfinite(sum(jnp.sum(jnp.asarray(x, jnp.float32) * 0.0) for x in leaves))


def _bcast(flag, x):
  return flag.reshape(flag.shape + (1,) * (x.ndim - flag.ndim))
