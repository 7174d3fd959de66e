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

import logging
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from fedjax_lite import hardware
from fedjax_lite.aggregation import Aggregator, mean_aggregator, weighted_sum
from fedjax_lite.client import ClientUpdate
from fedjax_lite.data import FederatedData, _check_int
from fedjax_lite.hardware import auto_chunk_size  # noqa: F401  (re-exported)
from fedjax_lite.sharding import CLIENT_AXIS, pad_clients, replicate

Params = Any
PRNGKey = Any

_log = logging.getLogger(__name__)

# The CPU's chunk working set (kept under its former name).
AUTO_CHUNK_BYTES = hardware.CPU_CHUNK_BYTES


class ServerState(NamedTuple):
  """Everything the server carries between rounds.

  Attributes:
    params: the global model parameters.
    opt_state: the server optimizer's state.
    aggregator_state: the aggregator's state (empty for the plain mean).
    round: ``int32`` scalar, the number of rounds applied so far.
    client_states: for a stateful algorithm (``client_state_init``), every
      client's persistent state stacked ``[N, ...]`` and indexed by client id
      (SCAFFOLD's control variates, Ditto's personal models); else ``()``.
    extra: the algorithm's server-side state (``extra_init``: SCAFFOLD's
      server control variate, Mime's momentum); else ``()``.
  """

  params: Params
  opt_state: Any
  aggregator_state: Any
  round: Any
  client_states: Any = ()
  extra: Any = ()


class FederatedAlgorithm(NamedTuple):
  """A federated algorithm as two pure functions.

  Attributes:
    init: ``init(params) -> ServerState``; a stateful algorithm's
      ``init(params, num_clients=N)`` also creates the population's stacked
      client states.
    round: ``round(state, cohort, key) -> (state, metrics)``; see
      :func:`build_federated_algorithm` for the metrics.
  """

  init: Callable[..., ServerState]
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
    client_state_init: Callable[[Params], Any] | None = None,
    broadcast: Callable[[ServerState], Any] | None = None,
    server_update: Callable[[ServerState, Any, dict[str, Any], PRNGKey],
                            tuple[Params, Any, Any]] | None = None,
    extra_init: Callable[[Params], Any] | None = None,
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
      ``"auto"`` (the default) picks it for the platform with
      :func:`auto_chunk_size`: a cache-sized working set on a CPU, and on an
      accelerator as many clients as fit in half its free memory (so a
      cohort that fits is one chunk; see :mod:`fedjax_lite.hardware`).
      ``None`` processes the whole cohort in one chunk. Memory holds one
      chunk of model copies and optimizer states, not the cohort's, and
      results do not depend on it beyond float rounding.
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
    client_state_init: makes the algorithm *stateful*:
      ``client_state_init(params) -> one client's initial state``.
      ``init(params, num_clients=N)`` then stores ``N`` copies stacked in
      ``ServerState.client_states``, indexed by client id (the population's
      ids must be ``0..N-1``, the default of :func:`fedjax_lite.from_clients`).
      Each round gathers the cohort's states inside the program, calls
      ``client_update(broadcast, client_data, key, client_state)``, and
      writes back ``ClientOutput.state`` for the clients that had data and
      finite outputs (others, padding and unused Poisson slots included, keep
      theirs).
    broadcast: ``broadcast(state) -> what clients receive`` as their first
      argument (default: ``state.params``), e.g. the params with SCAFFOLD's
      server control variate.
    server_update: ``server_update(state, aggregate, metrics, key) ->
      (params, opt_state, extra)`` replaces the default server step
      (``server_optimizer`` applied to ``-aggregate``); ``metrics`` are the
      round's summed client metrics (``num_clients``, ...), ``key`` a key of
      its own. Needed when client messages are not plain parameter deltas.
    extra_init: ``extra_init(params) -> ServerState.extra`` (default ``()``).

  Returns:
    A :class:`FederatedAlgorithm`. ``round`` returns metrics with float32
    scalars ``train_loss`` (example-weighted mean over finite clients),
    ``num_clients`` (finite clients with at least one example),
    ``num_examples``, ``num_nonfinite_clients``, ``applied`` (1.0 if the server
    step was applied), the aggregator's scalar metrics under
    ``aggregator/...``, and ``clients``: a dict of per-client arrays ``[K]``
    in cohort order (each client metric, ``nonfinite``, and the aggregator's
    per-client metrics, e.g. ``aggregator/selected``).

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

  stateful = client_state_init is not None

  def init(params, num_clients: int | None = None) -> ServerState:
    # Under a trace (e.g. run_sweep's jitted init) placement is the caller's.
    place = mesh is not None and not any(
        isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(params))
    params = jax.tree.map(jnp.asarray, replicate(params, mesh) if place else params)
    client_states = ()
    if stateful:
      if num_clients is None:
        raise ValueError(
            "this algorithm keeps a state per client: call init(params, num_clients=N) with "
            "the population's size N (its client ids must be 0..N-1).")
      _check_int("num_clients", num_clients, minimum=1)
      client_states = jax.tree.map(
          lambda x: jnp.broadcast_to(jnp.asarray(x), (num_clients,) + jnp.shape(x)).copy(),
          client_state_init(params))
    elif num_clients is not None:
      _check_int("num_clients", num_clients, minimum=1)
    extra = () if extra_init is None else extra_init(params)
    state = ServerState(params, server_optimizer.init(params), aggregator.init(params),
                        jnp.zeros((), jnp.int32), client_states, extra)
    return replicate(state, mesh) if place else state

  stacked = aggregator.combine is not None

  def _auto_chunk(sent, params, cohort, cohort_states, client_key):
    # On an accelerator, one client's update is traced (not compiled) for an
    # upper estimate of its working set, and the gathered cohort (plus the
    # per-client deltas a stacked aggregator keeps) is set aside.
    memory = hardware.device_memory(None if mesh is None else mesh.devices.flat[0])
    if hardware.tuning(memory.platform).chunk_bytes is not None:
      return hardware.auto_chunk_size(params, cohort, memory=memory)
    first = jax.tree.map(lambda x: x[:1], (cohort, cohort_states))
    jaxpr = jax.make_jaxpr(lambda s, c, key: _one_delta(client_update, stateful, s, c, key))(
        sent, first, client_key)
    reserved = hardware.tree_bytes(cohort)
    if stacked:
      reserved += cohort.num_clients * hardware.tree_bytes(params)
    return hardware.auto_chunk_size(params, cohort, memory=memory,
                                    client_bytes=hardware.jaxpr_bytes(jaxpr),
                                    reserved_bytes=reserved)

  def client_sums(sent, params, agg_state, cohort: FederatedData, cohort_states, client_key,
                  agg_client_key):
    """The cohort's streamed sums ``(total, total_weight, stats)`` and per-client outputs.

    The per-client outputs (cohort order) are a dict: ``metrics``; with
    ``stateful``, ``states`` (the new client states); with ``stacked``,
    ``deltas`` and ``weights`` (the aggregator's per_client outputs).
    """
    k = cohort.num_clients
    if chunk_size == "auto":
      chunk = min(_auto_chunk(sent, params, cohort, cohort_states, client_key), k)
      # At trace time only: what "auto" chose, for benchmarks and debugging.
      _log.debug("chunk_size='auto': %d of %d clients per chunk (%d chunks)", chunk, k,
                 math.ceil(k / chunk))
    else:
      chunk = k if chunk_size is None else min(chunk_size, k)
    num_chunks = math.ceil(k / chunk)

    def chunk_of(i):
      # Clients i*chunk .. i*chunk+chunk-1, gathered from the cohort (no padded
      # copy of the whole cohort); slots past its end repeat its last client as
      # an empty client (0 examples: zero delta, weight 0) and are dropped below.
      idx = i * chunk + jnp.arange(chunk)
      clamped = jnp.minimum(idx, k - 1)
      part, states = jax.tree.map(lambda x: jnp.take(x, clamped, axis=0, mode="clip"),
                                  (cohort, cohort_states))
      return part._replace(num_examples=jnp.where(idx < k, part.num_examples, 0)), states

    def run_chunk(carry, chunk_in):
      chunk_data, chunk_states = chunk_in
      if stateful:
        out = jax.vmap(client_update, in_axes=(None, 0, None, 0))(sent, chunk_data, client_key,
                                                                  chunk_states)
      else:
        out = jax.vmap(client_update, in_axes=(None, 0, None))(sent, chunk_data, client_key)
      keys = jax.vmap(lambda i: jax.random.fold_in(agg_client_key, i))(chunk_data.client_ids)
      new_states = out.state if stateful else ()

      def aggregate_chunk(finite):
        delta = jax.tree.map(lambda d: jnp.where(_bcast(finite, d), d, 0).astype(d.dtype),
                             out.delta)
        weight = jnp.where(finite, out.weight, 0.0)
        delta, weight, stats = jax.vmap(aggregator.per_client, in_axes=(0, 0, None, 0))(
            delta, weight, agg_state, keys)
        kept = (delta, weight) if stacked else ()
        return (weighted_sum(delta, weight), jnp.sum(weight),
                jax.tree.map(lambda x: jnp.sum(x, axis=0), stats), finite, kept)

      # A chunk whose summed deltas, weights (and new client states) are finite
      # has no NaN/Inf entry, so the per-client check (a pass over every
      # client's outputs) runs only for the rare chunk that fails this cheap
      # one (a product with ones, much faster on CPU than a reduction over the
      # client axis).
      every_client = jnp.ones(out.weight.shape, bool)
      ones = every_client.astype(jnp.float32)
      chunk_sum = (weighted_sum(out.delta, ones), out.weight, weighted_sum(new_states, ones))
      chunk_total, chunk_weight, chunk_stats, finite, kept = jax.lax.cond(
          _all_finite(chunk_sum), lambda: aggregate_chunk(every_client),
          lambda: aggregate_chunk(jax.vmap(_all_finite)((out.delta, out.weight, new_states))))
      total, total_weight, stats_sum = carry
      total = jax.tree.map(jnp.add, total, chunk_total)
      stats_sum = jax.tree.map(jnp.add, stats_sum, chunk_stats)
      client_metrics = dict(out.metrics)
      client_metrics["nonfinite"] = ~finite
      outputs = {"metrics": client_metrics}
      if stateful:
        outputs["states"] = new_states
      if stacked:
        outputs["deltas"], outputs["weights"] = kept
      return (total, total_weight + chunk_weight, stats_sum), outputs

    delta_shape = jax.eval_shape(lambda c: _one_delta(client_update, stateful, sent, c,
                                                      client_key), chunk_of(0))
    stats_shape = jax.eval_shape(
        lambda d: aggregator.per_client(d, jnp.zeros((), jnp.float32), agg_state,
                                        jax.random.key(0))[2], delta_shape)
    carry0 = (jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), delta_shape),
              jnp.zeros((), jnp.float32),
              jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats_shape))
    outputs_shape = jax.eval_shape(lambda c: run_chunk(carry0, c)[1], chunk_of(0))

    def skip_chunk(carry, chunk_in):
      # Zeros: metrics of empty clients, weight 0 (their states are not written).
      del chunk_in
      return carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), outputs_shape)

    def chunk_step(carry, i):
      # Chunks with no client data (e.g. the unused slots of a Poisson-sampled
      # cohort) are skipped outright.
      chunk_in = chunk_of(i)
      has_data = jnp.any(chunk_in[0].num_examples > 0)
      return jax.lax.cond(has_data, run_chunk, skip_chunk, carry, chunk_in)

    sums, per_client = jax.lax.scan(chunk_step, carry0, jnp.arange(num_chunks))
    return sums, jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:k], per_client)

  def sharded_client_sums(sent, params, agg_state, cohort: FederatedData, cohort_states,
                          client_key, agg_client_key):
    # Each device runs client_sums on its slice of the (padded) cohort; one
    # psum combines the sums and one all_gather the per-client outputs, so
    # everything after this is replicated and identical to one device's.
    k = cohort.num_clients
    devices = mesh.shape[client_axis]
    padded = pad_clients(cohort, devices)
    padded_states = jax.tree.map(
        lambda x: jnp.pad(x, [(0, padded.num_clients - k)] + [(0, 0)] * (x.ndim - 1)),
        cohort_states)

    def local(sent, params, agg_state, part, part_states, client_key, agg_client_key):
      sums, per_client = client_sums(sent, params, agg_state, part, part_states, client_key,
                                     agg_client_key)
      return (jax.lax.psum(sums, client_axis),
              jax.lax.all_gather(per_client, client_axis, tiled=True))

    replicated, sharded = PartitionSpec(), PartitionSpec(client_axis)
    # check_vma=False: the client loop's lax.cond/scan mix per-device and
    # replicated values, which is fine here (the outputs are replicated by
    # the psum and all_gather) but which the varying-axes checker rejects.
    sums, per_client = jax.shard_map(
        local, mesh=mesh,
        in_specs=(replicated, replicated, replicated, sharded, sharded, replicated, replicated),
        out_specs=(replicated, replicated), check_vma=False)(
            sent, params, agg_state, padded, padded_states, client_key, agg_client_key)
    return sums, jax.tree.map(lambda x: x[:k], per_client)

  def round_fn(state: ServerState, cohort: FederatedData, key) -> tuple[ServerState, dict]:
    _check_cohort(cohort)
    client_key, server_key = jax.random.split(key)
    agg_client_key, agg_key = jax.random.split(server_key)
    update_key = jax.random.fold_in(server_key, 2)
    params, agg_state = state.params, state.aggregator_state
    sent = params if broadcast is None else broadcast(state)
    if stateful:
      population = jax.tree.leaves(state.client_states)[0].shape[0]
      ids = cohort.client_ids
      cohort_states = jax.tree.map(
          lambda x: jnp.take(x, jnp.clip(ids, 0, population - 1), axis=0), state.client_states)
    else:
      cohort_states = ()
    sums_fn = client_sums if mesh is None else sharded_client_sums
    (total, total_weight, stats_sum), outputs = sums_fn(
        sent, params, agg_state, cohort, cohort_states, client_key, agg_client_key)
    per_client = outputs["metrics"]

    if stacked:
      aggregate, new_agg_state, agg_metrics = aggregator.combine(
          outputs["deltas"], outputs["weights"], stats_sum, agg_state, agg_key)
    else:
      aggregate, new_agg_state, agg_metrics = aggregator.finalize(
          total, total_weight, stats_sum, agg_state, agg_key)
    metrics = _summarize(per_client)
    if server_update is None:
      pseudo_grad = jax.tree.map(jnp.negative, aggregate)
      updates, new_opt_state = server_optimizer.update(pseudo_grad, state.opt_state, params)
      new_params, new_extra = optax.apply_updates(params, updates), state.extra
    else:
      new_params, new_opt_state, new_extra = server_update(state, aggregate, dict(metrics),
                                                           update_key)
    client_states = state.client_states
    if stateful:
      # Written back: clients with data and finite outputs whose id is a
      # position of the store (not padding, not an unused Poisson slot).
      write = ((cohort.num_examples > 0) & ~per_client["nonfinite"] & (ids >= 0)
               & (ids < population))
      target = jnp.where(write, ids, population)  # out of bounds: dropped
      client_states = jax.tree.map(
          lambda store, new: store.at[target].set(new.astype(store.dtype), mode="drop"),
          state.client_states, outputs["states"])
    new_state = ServerState(new_params, new_opt_state, new_agg_state, state.round + 1,
                            client_states, new_extra)

    bad = per_client["nonfinite"]
    num_bad = jnp.sum(bad)
    applied = num_bad == 0 if nonfinite == "raise" else jnp.bool_(True)
    new_state = jax.tree.map(lambda new, old: jnp.where(applied, new, old), new_state, state)
    metrics.update({
        "num_nonfinite_clients": num_bad.astype(jnp.float32),
        "applied": applied.astype(jnp.float32),
        "clients": per_client,
    })
    for name, v in agg_metrics.items():
      if jnp.ndim(v) == 1 and jnp.shape(v)[0] == cohort.num_clients:
        per_client[f"aggregator/{name}"] = v  # one value per client, e.g. Krum's selection
      else:
        metrics[f"aggregator/{name}"] = v
    return new_state, metrics

  return FederatedAlgorithm(init, jax.jit(round_fn) if jit else round_fn)


def raise_if_nonfinite(metrics: dict[str, Any], cohort_client_ids: Any = None,
                       round_index: int | None = None) -> None:
  """Raises ``ValueError`` if a round's metrics report non-finite client deltas.

  Args:
    metrics: the metrics returned by ``algo.round``.
    cohort_client_ids: optional ids of the cohort's clients, to name them.
    round_index: optional round number for the message.

  Returns:
    None when every client's delta was finite.

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


def _one_delta(client_update, stateful, sent, chunk_in, client_key):
  """One client's message (for its shape): the first client of a chunk."""
  data, states = jax.tree.map(lambda x: x[0], chunk_in)
  if stateful:
    return client_update(sent, data, client_key, states).delta
  return client_update(sent, data, client_key).delta


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
