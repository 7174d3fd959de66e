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
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from fedjax_lite import hardware, mapreduce
from fedjax_lite._types import Params, PRNGKey
from fedjax_lite._validate import check_int, is_concrete
from fedjax_lite.aggregation import Aggregator, PerClient, mean_aggregator, weighted_sum
from fedjax_lite.client import ClientUpdate, ClientUpdateFn, as_client_update, output_counts
from fedjax_lite.data import FederatedData
from fedjax_lite.hardware import auto_chunk_size  # noqa: F401  (re-exported)
from fedjax_lite.sharding import CLIENT_AXIS, replicate

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
    client_states: for a client update with a state (:class:`ClientUpdate`),
      every client's state stacked ``[N, ...]`` and indexed by client id
      (SCAFFOLD's control variates, Ditto's personal models); else ``()``.
    extra: the server update's own state beyond the optimizer's
      (:class:`ServerUpdate`: SCAFFOLD's server control variate, Mime's
      momentum); else ``()``.
  """

  params: Params
  opt_state: Any
  aggregator_state: Any
  round: Any
  client_states: Any = ()
  extra: Any = ()


class ServerUpdate(NamedTuple):
  """The server step paired with its state's initializer, in the optax style.

  Attributes:
    init: ``init(params) -> (opt_state, extra)``: the server optimizer's
      state and the algorithm's own server state (``()`` if none).
    update: ``update(state, aggregate, metrics, key) -> (params, opt_state,
      extra)``: one server step from the round's :class:`ServerState`, the
      aggregate of the client messages, the round's summed and averaged
      client metrics (``num_clients``, ``train_loss``, ...) and a key of its
      own.
    broadcast: optional ``broadcast(state) -> what clients receive`` (default:
      ``state.params``), e.g. the params with SCAFFOLD's server control
      variate read from ``state.extra``.

  Any ``optax.GradientTransformation`` is one (:func:`as_server_update`): it
  receives ``-aggregate`` as the gradient.
  """

  init: Callable[[Params], tuple[Any, Any]]
  update: Callable[[ServerState, Any, dict[str, Any], PRNGKey], tuple[Params, Any, Any]]
  broadcast: Callable[[ServerState], Any] | None = None


def optax_server_update(optimizer: optax.GradientTransformation) -> ServerUpdate:
  """The server step that applies ``optimizer`` to ``-aggregate`` (FedAvg, FedAdam, ...).

  Args:
    optimizer: an optax transformation (see :mod:`fedjax_lite.server`).

  Returns:
    A :class:`ServerUpdate` with no extra state.
  """

  def init(params):
    return optimizer.init(params), ()

  def update(state, aggregate, metrics, key):
    del metrics, key
    pseudo_grad = jax.tree.map(jnp.negative, aggregate)
    updates, opt_state = optimizer.update(pseudo_grad, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state, state.extra

  return ServerUpdate(init, update)


def as_server_update(server: Any) -> ServerUpdate:
  """A :class:`ServerUpdate` as is; an optax transformation via :func:`optax_server_update`.

  Raises:
    TypeError: for anything else.
  """
  if isinstance(server, ServerUpdate):
    return server
  if isinstance(server, optax.GradientTransformation) or (
      hasattr(server, "init") and hasattr(server, "update") and not isinstance(server, tuple)):
    return optax_server_update(server)
  raise TypeError(
      "`server_optimizer` must be an optax.GradientTransformation (e.g. "
      f"fedjax_lite.server.fedavg()) or a fedjax_lite.ServerUpdate; got {server!r}.")


class AlgorithmSpec(NamedTuple):
  """What a federated algorithm computes, apart from how it runs.

  Attributes:
    client_update: the :class:`fedjax_lite.ClientUpdate`.
    server_update: the :class:`ServerUpdate`.
    aggregator: the :class:`fedjax_lite.Aggregator` (``None``: the example-
      weighted mean).
  """

  client_update: ClientUpdate
  server_update: ServerUpdate
  aggregator: Aggregator | None = None


class FederatedAlgorithm(NamedTuple):
  """A federated algorithm as two pure functions.

  Attributes:
    init: ``init(params) -> ServerState``; an algorithm whose client update
      keeps a state needs ``init(params, num_clients=N)`` to create the
      population's stacked client states.
    round: ``round(state, cohort, key) -> (state, metrics)``, already wrapped
      in ``jax.jit`` (it also composes under a caller's ``jit``, ``vmap`` and
      ``grad``); see :func:`build_federated_algorithm` for the metrics.
    spec: the :class:`AlgorithmSpec` it was built from, so that
      ``build_federated_algorithm(algo, mesh=..., chunk_size=...)`` runs the
      same algorithm another way (``None`` for a hand-made pair).
    round_from: ``round_from(state, cohort, key, versions, version_index,
      weight_scale) -> (state, metrics)``: the round with client ``i``
      starting from ``versions[version_index[i]]`` (``versions``: broadcast
      values stacked ``[S, ...]``, e.g. the model versions clients
      downloaded; each chunk gathers its clients' own, so memory holds the
      ``S`` versions and one chunk) and its aggregation weight multiplied by
      ``weight_scale[i]``; what asynchronous aggregation
      (:mod:`fedjax_lite.asynchronous`) runs. With every client on the
      state's broadcast and scales of 1 it is ``round`` (up to float
      rounding). ``None`` for a hand-made pair.
  """

  init: Callable[..., ServerState]
  round: Callable[[ServerState, FederatedData, PRNGKey], tuple[ServerState, dict[str, Any]]]
  spec: AlgorithmSpec | None = None
  round_from: Callable[..., tuple[ServerState, dict[str, Any]]] | None = None


NONFINITE_POLICIES = ("raise", "drop")


def build_federated_algorithm(
    client_update: ClientUpdate | ClientUpdateFn | FederatedAlgorithm | AlgorithmSpec,
    server_optimizer: optax.GradientTransformation | ServerUpdate | None = None,
    *,
    aggregator: Aggregator | None = None,
    chunk_size: int | str | None = "auto",
    nonfinite: str = "raise",
    mesh: Mesh | None = None,
    client_axis: str = CLIENT_AXIS,
) -> FederatedAlgorithm:
  """Composes a client update, an aggregator and a server step; chooses how the round runs.

  What the algorithm computes comes from ``client_update``,
  ``server_optimizer`` and ``aggregator`` (or from an algorithm already
  built, e.g. by :mod:`fedjax_lite.algorithms`); how it runs is chosen here
  once, by ``chunk_size``, ``nonfinite`` and ``mesh``::

      algo = fl.build_federated_algorithm(fl.algorithms.scaffold(loss, ...), mesh=mesh)

  Args:
    client_update: a :class:`fedjax_lite.ClientUpdate` ``(init, update)``, or
      a plain stateless ``client_update(server_params, client_data, key) ->
      ClientOutput`` (e.g. from :func:`fedjax_lite.build_client_update`).
      It is called with ``key`` = the round's client key and must fold in
      ``client_data.client_ids`` itself for per-client randomness. A client
      update with a non-empty state makes ``init`` need ``num_clients=N``
      (the population's ids must be ``0..N-1``, the default of
      :func:`fedjax_lite.from_clients`); each round gathers the cohort's
      states inside the program and writes back ``ClientOutput.state`` for
      the clients that had data and finite outputs (others, padding and
      unused Poisson slots included, keep theirs).
    server_optimizer: any ``optax.GradientTransformation`` (it receives
      ``-aggregate`` as the gradient; see :mod:`fedjax_lite.server`), or a
      :class:`ServerUpdate` for a server step of the algorithm's own
      (SCAFFOLD, Mime, FedNova, q-FFL).
    aggregator: defaults to :func:`fedjax_lite.mean_aggregator` (weighted by
      example counts).
    chunk_size: clients per vmapped chunk (>= 1, or the cohort if smaller).
      ``"auto"`` (the default) picks it for the platform with
      :func:`fedjax_lite.hardware.auto_chunk_size`: a cache-sized working set on a CPU, and on an
      accelerator as many clients as fit in half its free memory (so a
      cohort that fits is one chunk; see :mod:`fedjax_lite.hardware`).
      ``None`` processes the whole cohort in one chunk. Memory holds one
      chunk of model copies and optimizer states, not the cohort's, and
      results do not depend on it beyond float rounding.
    nonfinite: what to do with a client whose delta, weight, state or
      metrics (e.g. its training loss) hold NaN/Inf. In both modes the
      client gets weight 0 and a zero delta, so it can never be averaged
      into the model, and it is counted in
      ``metrics["num_nonfinite_clients"]``. ``"raise"`` additionally leaves
      the server state unchanged for that round (``metrics["applied"]`` is
      0; :func:`fedjax_lite.run_rounds` then raises with the client ids);
      ``"drop"`` applies the round without those clients.
    mesh: optional ``jax.sharding.Mesh`` to shard the cohort's clients over
      the ``client_axis`` devices: the cohort is padded with empty clients to
      a multiple of that axis's size, each device runs its share through the
      chunked client loop (chunks sized per device), the sums are combined
      with one ``psum``, and the aggregator's finalize (DP noise included,
      drawn once from the same key) and the server step run replicated, so
      results equal the single-device round's up to float summation order.
      Parameters stay replicated. ``init`` replicates the state on the mesh
      (every process of a multi-process run must pass the same params).
      Default: no sharding.
    client_axis: the mesh axis the clients are sharded over.

  Returns:
    A :class:`FederatedAlgorithm`. ``round`` returns metrics with float32
    scalars ``train_loss`` (and every other ``ClientOutput.metrics`` entry:
    the mean over finite clients weighted by their ``num_examples`` count),
    ``num_clients`` (finite clients with at least one example),
    ``num_examples`` (and every other ``ClientOutput.counts`` entry: summed
    over finite clients), ``num_nonfinite_clients``, ``applied`` (1.0 if the
    server step was applied), the aggregator's scalar metrics under
    ``aggregator/...``, and ``clients``: a dict of per-client arrays ``[K]``
    in cohort order (each client metric and count, ``nonfinite``, and the
    aggregator's :class:`fedjax_lite.aggregation.PerClient` metrics, e.g.
    ``aggregator/selected``).

  Raises:
    ValueError, TypeError: for a bad ``chunk_size``, ``nonfinite`` policy,
      ``client_update`` or ``server_optimizer``.
  """
  mapreduce.check_chunk_size(chunk_size)
  if nonfinite not in NONFINITE_POLICIES:
    raise ValueError(f"`nonfinite` must be one of {NONFINITE_POLICIES}; got {nonfinite!r}.")
  if isinstance(client_update, FederatedAlgorithm):
    if client_update.spec is None:
      raise TypeError("this FederatedAlgorithm was made by hand (no spec); pass its client "
                      "update and server step to build_federated_algorithm instead.")
    client_update = client_update.spec
  if isinstance(client_update, AlgorithmSpec):
    if server_optimizer is not None or aggregator is not None:
      raise TypeError("an algorithm already has its server step and aggregator; give only "
                      "chunk_size, nonfinite and mesh to run it another way.")
    client_update, server_optimizer, aggregator = client_update
  elif server_optimizer is None:
    raise TypeError("`server_optimizer` is missing: give an optax.GradientTransformation (e.g. "
                    "fedjax_lite.server.fedavg()) or a fedjax_lite.ServerUpdate.")
  client = as_client_update(client_update)
  server = as_server_update(server_optimizer)
  spec = AlgorithmSpec(client, server, aggregator)
  if aggregator is None:
    aggregator = mean_aggregator()
  if mesh is not None and client_axis not in mesh.shape:
    raise ValueError(f"`mesh` has axes {tuple(mesh.shape)}; `client_axis`={client_axis!r} is not "
                     "one of them.")

  def init(params, num_clients: int | None = None) -> ServerState:
    # Under a trace (e.g. run_sweep's jitted init) placement is the caller's.
    place = mesh is not None and is_concrete(params)
    params = jax.tree.map(jnp.asarray, replicate(params, mesh) if place else params)
    one_state = client.init(params)
    client_states = ()
    if jax.tree.leaves(one_state):
      if num_clients is None:
        raise ValueError(
            "this algorithm keeps a state per client: call init(params, num_clients=N) with "
            "the population's size N (its client ids must be 0..N-1).")
      check_int("num_clients", num_clients, minimum=1)
      client_states = jax.tree.map(
          lambda x: jnp.broadcast_to(jnp.asarray(x), (num_clients,) + jnp.shape(x)).copy(),
          one_state)
    elif num_clients is not None:
      check_int("num_clients", num_clients, minimum=1)
    opt_state, extra = server.init(params)
    state = ServerState(params, opt_state, aggregator.init(params), jnp.zeros((), jnp.int32),
                        client_states, extra)
    return replicate(state, mesh) if place else state

  stacked = aggregator.combine is not None

  def client_sums(sent, params, agg_state, cohort: FederatedData, cohort_states, client_key,
                  agg_client_key, own=None):
    """The cohort's streamed sums ``(total, total_weight, stats)`` and per-client outputs.

    The per-client outputs (cohort order) are a dict: ``metrics``, ``counts``
    and ``nonfinite``; ``states`` (the new client states, ``()`` if none);
    for an aggregator with ``combine``, ``deltas`` and ``weights`` (its
    per_client outputs).
    """

    def chunk_fn(sent, chunk, valid):
      chunk_data, chunk_states, chunk_own = chunk
      # Slots past the cohort are empty clients (0 examples: zero delta, weight 0).
      n = jnp.where(valid, chunk_data.num_examples, 0)
      chunk_data = chunk_data._replace(num_examples=n)
      if chunk_own is None:
        out = jax.vmap(client.update, in_axes=(None, 0, None, 0))(sent, chunk_data, client_key,
                                                                 chunk_states)
      else:  # each client from its own version, its weight scaled (round_from)
        index, scale = chunk_own
        own_sent = jax.tree.map(lambda v: jnp.take(v, index, axis=0, mode="clip"), sent)
        out = jax.vmap(client.update, in_axes=(0, 0, None, 0))(own_sent, chunk_data, client_key,
                                                              chunk_states)
        out = out._replace(weight=out.weight * scale)
      counts = output_counts(out, n)
      keys = jax.vmap(lambda i: jax.random.fold_in(agg_client_key, i))(chunk_data.client_ids)

      def aggregate_chunk(finite):
        delta = jax.tree.map(lambda d: jnp.where(_bcast(finite, d), d, 0).astype(d.dtype),
                             out.delta)
        weight = jnp.where(finite, out.weight, 0.0)
        delta, weight, stats = jax.vmap(aggregator.per_client, in_axes=(0, 0, None, 0))(
            delta, weight, agg_state, keys)
        kept = (delta, weight) if stacked else ()
        return ((weighted_sum(delta, weight), jnp.sum(weight),
                 jax.tree.map(lambda x: jnp.sum(x, axis=0), stats)), finite, kept)

      sums, finite, kept = mapreduce.finite_clients(
          aggregate_chunk, (out.delta, out.weight, out.state, out.metrics, counts))
      outputs = {"metrics": dict(out.metrics), "counts": dict(counts), "nonfinite": ~finite,
                 "states": out.state}
      if stacked:
        outputs["deltas"], outputs["weights"] = kept
      return sums, outputs

    return mapreduce.map_reduce(chunk_fn, sent, (cohort, cohort_states, own),
                                active=cohort.num_examples > 0, chunk_size=chunk_size,
                                mesh=mesh, axis=client_axis, model=params)

  def round_fn(state: ServerState, cohort: FederatedData, key) -> tuple[ServerState, dict]:
    return round_core(state, cohort, key)

  def round_from(state: ServerState, cohort: FederatedData, key, versions: Any,
                 version_index: Any, weight_scale: Any) -> tuple[ServerState, dict]:
    own = (jnp.asarray(version_index, jnp.int32), jnp.asarray(weight_scale, jnp.float32))
    return round_core(state, cohort, key, own, versions)

  def round_core(state, cohort, key, own=None, versions=None):
    _check_cohort(cohort)
    client_key, server_key = jax.random.split(key)
    agg_client_key, agg_key = jax.random.split(server_key)
    update_key = jax.random.fold_in(server_key, 2)
    params, agg_state = state.params, state.aggregator_state
    sent = params if server.broadcast is None else server.broadcast(state)
    if versions is not None:  # round_from: the clients gather their versions chunk by chunk
      sent = versions
    ids = cohort.client_ids
    population = _population(state.client_states)
    cohort_states = jax.tree.map(
        lambda x: jnp.take(x, jnp.clip(ids, 0, population - 1), axis=0), state.client_states)
    (total, total_weight, stats_sum), outputs = client_sums(
        sent, params, agg_state, cohort, cohort_states, client_key, agg_client_key, own)

    if stacked:
      aggregate, new_agg_state, agg_metrics = aggregator.combine(
          outputs["deltas"], outputs["weights"], stats_sum, agg_state, agg_key)
    else:
      aggregate, new_agg_state, agg_metrics = aggregator.finalize(
          total, total_weight, stats_sum, agg_state, agg_key)
    bad = outputs["nonfinite"]
    metrics = _summarize(outputs["metrics"], outputs["counts"], bad)
    new_params, new_opt_state, new_extra = server.update(state, aggregate, dict(metrics),
                                                         update_key)
    # Written back: clients with data and finite outputs whose id is a
    # position of the store (not padding, not an unused Poisson slot).
    write = (cohort.num_examples > 0) & ~bad & (ids >= 0) & (ids < population)
    target = jnp.where(write, ids, population)  # out of bounds: dropped
    client_states = jax.tree.map(
        lambda store, new: store.at[target].set(new.astype(store.dtype), mode="drop"),
        state.client_states, outputs["states"])
    new_state = ServerState(new_params, new_opt_state, new_agg_state, state.round + 1,
                            client_states, new_extra)

    num_bad = jnp.sum(bad)
    applied = num_bad == 0 if nonfinite == "raise" else jnp.bool_(True)
    new_state = jax.tree.map(lambda new, old: jnp.where(applied, new, old), new_state, state)
    per_client = {**outputs["metrics"], **outputs["counts"], "nonfinite": bad}
    metrics.update({
        "num_nonfinite_clients": num_bad.astype(jnp.float32),
        "applied": applied.astype(jnp.float32),
        "clients": per_client,
    })
    for name, v in agg_metrics.items():
      if isinstance(v, PerClient):
        per_client[f"aggregator/{name}"] = v.value  # one value per client, e.g. Krum's selection
      else:
        metrics[f"aggregator/{name}"] = v
    return new_state, metrics

  return FederatedAlgorithm(init, jax.jit(round_fn), spec, jax.jit(round_from))


def raise_if_nonfinite(metrics: dict[str, Any], cohort_client_ids: Any = None,
                       round_index: int | None = None) -> None:
  """Raises ``ValueError`` if a round's metrics report non-finite client outputs.

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
      f"client output (delta, weight, state, loss or counts) is NaN/Inf for {len(where)} "
      f"client(s){when} (client ids {where[:20]}); the "
      "server state was left unchanged. Lower the client learning rate or check the data, or "
      "build the algorithm with nonfinite='drop' to exclude such clients (weight 0) and continue.")


def _summarize(means: dict[str, Any], counts: dict[str, Any], nonfinite: Any) -> dict[str, Any]:
  """Round-level metrics: ``counts`` summed, ``means`` weighted by ``num_examples``.

  Non-finite clients are left out of both.
  """
  ok = ~nonfinite
  counts = {k: jnp.where(ok, v, 0.0).astype(jnp.float32) for k, v in counts.items()}
  n = counts["num_examples"]
  out = {"num_clients": jnp.sum((n > 0).astype(jnp.float32))}
  out.update({k: jnp.sum(v) for k, v in counts.items()})
  for name, v in means.items():
    v = jnp.where(ok, v, 0.0).astype(jnp.float32)
    out[name] = jnp.sum(n * v) / jnp.maximum(jnp.sum(n), 1.0)
  return out


def _population(client_states: Any) -> int:
  leaves = jax.tree.leaves(client_states)
  return leaves[0].shape[0] if leaves else 0


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


def _bcast(flag, x):
  return flag.reshape(flag.shape + (1,) * (x.ndim - flag.ndim))
