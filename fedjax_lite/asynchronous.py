"""Asynchronous aggregation on a virtual clock: FedBuff and FedAsync, vectorized.

``C`` clients are in flight at once, each training from the model version it
downloaded and finishing at a virtual time set by its device
(:mod:`fedjax_lite.timing`). The server takes a step whenever ``K`` of them
have finished (FedBuff, Nguyen et al. 2022; FedAsync, Xie et al. 2019, is
``K = 1``): the ``K`` earliest finishers run as one vmapped computation
(:attr:`fedjax_lite.FederatedAlgorithm.round_from`), each from its own
starting version gathered from a ring buffer of the last ``S`` versions, each
delta's weight multiplied by a staleness function of ``s = version now -
version started from``; the algorithm's aggregator and server step (any of
the library's) then apply them. The ``K`` finished slots are refilled with
clients drawn uniformly from those not in flight, starting from the new
version at the step's virtual time.

Exact semantics of one server step ``v -> v + 1`` (what
``benchmarks/async_reference.py``'s event-driven loop also does):

1. the ``K`` slots with the earliest finish times finish (ties: lower slot
   first); the step's virtual time ``t`` is the ``K``-th finish time;
2. a finisher that started from version ``v0`` has staleness ``s = v - v0``;
   if ``s >= S`` its starting version is no longer kept: its update is
   dropped (weight 0) and counted in ``num_too_stale`` (raise ``S`` to keep
   it); the others train from version ``v0``'s broadcast with the round key
   ``fold_in(key, v)``, weight ``weight_i * staleness(s)``;
3. the server step as in a synchronous round (``round_from``);
4. the ``K`` slots take ``K`` new clients, drawn uniformly without
   replacement from the clients not among the other ``C - K`` in flight
   (key ``fold_in(key, v + 1)``), start version ``v + 1``, finish time ``t +
   duration`` (:func:`fedjax_lite.timing.client_durations` of their work,
   examples times local epochs).

With ``C = K`` and equal durations every step is a synchronous round of the
``K`` clients drawn (a test checks it equals ``round``). Differential privacy
is refused: a client's participation here depends on its device's speed and
on the other clients, which the sampled-Gaussian accounting does not cover.

References:
  Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba. "Federated Learning
  with Buffered Asynchronous Aggregation", AISTATS 2022.
  Xie, Koyejo, Gupta. "Asynchronous Federated Optimization", 2019
  (staleness functions: constant, polynomial, hinge).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_lite import training
from fedjax_lite._validate import check_int
from fedjax_lite.algorithm import FederatedAlgorithm, ServerState
from fedjax_lite.correlated import CorrelatedState
from fedjax_lite.data import FederatedData, take
from fedjax_lite.privacy import DPState
from fedjax_lite.timing import Devices, client_durations

# The data folded into the run's key for the client draws of each version.
SAMPLE_FOLD = 0x53414D50


def constant_staleness() -> Callable[[Any], Any]:
  """``w(s) = 1``: staleness does not change a delta's weight.

  Returns:
    ``w(s) -> float32`` (elementwise).
  """
  return lambda s: jnp.ones(jnp.shape(s), jnp.float32)


def polynomial_staleness(a: float = 0.5) -> Callable[[Any], Any]:
  """``w(s) = (1 + s)^-a``; ``a = 0.5`` is FedBuff's ``1 / sqrt(1 + s)``.

  Args:
    a: the exponent, ``>= 0``.

  Returns:
    ``w(s) -> float32`` (elementwise).
  """
  if not a >= 0:
    raise ValueError(f"`a` must be >= 0; got {a!r}.")
  return lambda s: jnp.power(1.0 + jnp.asarray(s, jnp.float32), -a)


def hinge_staleness(a: float = 10.0, b: int = 4) -> Callable[[Any], Any]:
  """Xie et al.'s hinge: ``w(s) = 1`` for ``s <= b``, else ``1 / (a (s - b) + 1)``.

  Args:
    a: the slope after the hinge, ``>= 0``.
    b: the staleness up to which deltas keep their full weight, ``>= 0``.

  Returns:
    ``w(s) -> float32`` (elementwise).
  """
  if not a >= 0:
    raise ValueError(f"`a` must be >= 0; got {a!r}.")
  check_int("b", b, minimum=0)
  return lambda s: jnp.where(jnp.asarray(s) <= b, 1.0,
                             1.0 / (a * (jnp.asarray(s, jnp.float32) - b) + 1.0)).astype(
                                 jnp.float32)


def sample_excluding(key: Any, num_clients: int, count: int, excluded: Any) -> Any:
  """``count`` distinct clients drawn uniformly from those not in ``excluded``; jit-safe.

  Every client gets an independent uniform score; the excluded ones are
  pushed past all others, and the ``count`` lowest scores are taken (in
  score order), so every ordered sample of the allowed clients is equally
  likely. Cost: ``O(N log count)``.

  Args:
    key: PRNG key.
    num_clients: ``N``.
    count: clients to draw, at most ``N`` minus the excluded.
    excluded: ``int[E]`` client ids (may be empty).

  Returns:
    ``int32[count]`` client ids.
  """
  scores = jax.random.uniform(key, (num_clients,))
  scores = scores.at[jnp.asarray(excluded, jnp.int32)].set(2.0, mode="drop")
  _, ids = jax.lax.top_k(-scores, count)
  return ids.astype(jnp.int32)


class AsyncState(NamedTuple):
  """The server and the clients in flight.

  Attributes:
    server: the algorithm's :class:`~fedjax_lite.ServerState`; its ``round``
      is the model version ``v``.
    versions: the broadcast values of versions ``v - S + 1 .. v``, leaves
      ``[S, ...]``; version ``u`` at index ``u mod S``.
    slot_ids: ``int32[C]``, the client in each slot.
    slot_start: ``int32[C]``, the version each started from.
    slot_finish: ``float32[C]``, its virtual finish time.
    now: ``float32``, the virtual time of the last server step.
  """

  server: ServerState
  versions: Any
  slot_ids: Any
  slot_start: Any
  slot_finish: Any
  now: Any


class AsyncAlgorithm(NamedTuple):
  """FedBuff / FedAsync as two pure functions.

  Attributes:
    init: ``init(params, population, key) -> AsyncState``: version 0 and the
      first ``C`` clients in flight.
    step: ``step(state, population, key) -> (state, metrics)``, jitted: one
      server step (``key``: the run's key, the same for every step). Its
      metrics are the round's (``train_loss``, ``num_clients``, the
      aggregator's...) and ``virtual_time``, ``staleness_mean`` (of the kept
      updates), ``staleness_max``, ``num_too_stale``, ``clients_in_flight``;
      under ``clients``, each finisher's ``client_id`` and ``staleness``.
    concurrency: ``C``.
    buffer: ``K``.
    max_staleness: ``S``.
  """

  init: Callable[..., AsyncState]
  step: Callable[..., tuple[AsyncState, dict[str, Any]]]
  concurrency: int
  buffer: int
  max_staleness: int


def build_fedbuff(algorithm: FederatedAlgorithm, devices: Devices, *, concurrency: int,
                  buffer: int, staleness: Callable[[Any], Any] | None = None,
                  max_staleness: int | None = None, num_epochs: int = 1) -> AsyncAlgorithm:
  """Buffered asynchronous aggregation (FedBuff; FedAsync with ``buffer=1``).

  Args:
    algorithm: any algorithm from :func:`fedjax_lite.build_federated_algorithm`
      (its client update, aggregator, server step, chunk size and mesh are
      used as they are). Its aggregator must not add DP noise.
    devices: the clients' devices (:mod:`fedjax_lite.timing`).
    concurrency: ``C``, clients in flight (``>= buffer``, at most the
      population).
    buffer: ``K``, finished clients per server step.
    staleness: ``w(s)`` (default :func:`polynomial_staleness` ``(0.5)``).
    max_staleness: ``S``, versions kept (default ``max(8, 4 C / K)``); an
      update staler than that is dropped and counted.
    num_epochs: local epochs, for a client's work (examples times epochs).

  Returns:
    The :class:`AsyncAlgorithm`.

  Raises:
    ValueError: for sizes out of range or an algorithm without ``round_from``.
  """
  check_int("concurrency", concurrency, minimum=1)
  check_int("buffer", buffer, minimum=1)
  if buffer > concurrency:
    raise ValueError(f"`buffer`={buffer} exceeds `concurrency`={concurrency}: the server waits "
                     "for `buffer` of the clients in flight; raise concurrency.")
  if algorithm.round_from is None:
    raise ValueError("`algorithm` has no round_from (a hand-made FederatedAlgorithm); build it "
                     "with fl.build_federated_algorithm.")
  check_int("num_epochs", num_epochs, minimum=1)
  staleness = polynomial_staleness(0.5) if staleness is None else staleness
  if max_staleness is None:
    max_staleness = max(8, -(-4 * concurrency // buffer))
  check_int("max_staleness", max_staleness, minimum=1)
  spec = algorithm.spec
  server = spec.server_update if spec is not None else None

  def broadcast(state: ServerState) -> Any:
    if server is None or server.broadcast is None:
      return state.params
    return server.broadcast(state)

  def durations(population: FederatedData, ids: Any) -> Any:
    work = jnp.take(population.num_examples, ids, mode="clip") * num_epochs
    return client_durations(devices, ids, work)

  def draw(key, version, population, count, excluded):
    k = jax.random.fold_in(jax.random.fold_in(key, SAMPLE_FOLD), version)
    return sample_excluding(k, population.num_clients, count, excluded)

  def init(params: Any, population: FederatedData, key: Any) -> AsyncState:
    if concurrency > population.num_clients:
      raise ValueError(f"`concurrency`={concurrency} exceeds the population's "
                       f"{population.num_clients} clients.")
    server_state = algorithm.init(params, num_clients=population.num_clients)
    if isinstance(server_state.aggregator_state, (DPState, CorrelatedState)):
      raise ValueError(
          "asynchronous aggregation with a DP aggregator is refused: which clients take part "
          "in a server step depends on their devices' speeds and on the other clients in "
          "flight, not on an independent sample, so the sampled-Gaussian accounting does not "
          "cover it; use synchronous rounds for DP.")
    sent = broadcast(server_state)
    versions = jax.tree.map(lambda x: jnp.broadcast_to(x, (max_staleness,) + jnp.shape(x)),
                            sent)
    ids = draw(key, 0, population, concurrency, jnp.zeros((0,), jnp.int32))
    return AsyncState(server_state, versions, ids, jnp.zeros((concurrency,), jnp.int32),
                      durations(population, ids), jnp.zeros((), jnp.float32))

  def step(state: AsyncState, population: FederatedData, key: Any):
    version = state.server.round
    order = jnp.argsort(state.slot_finish, stable=True)
    done, staying = order[:buffer], order[buffer:]
    now = state.slot_finish[order[buffer - 1]]
    ids = state.slot_ids[done]
    stale = version - state.slot_start[done]
    kept = stale < max_staleness
    cohort = take(population, ids)
    cohort = cohort._replace(num_examples=jnp.where(kept, cohort.num_examples, 0))
    new_server, metrics = algorithm.round_from(
        state.server, cohort, jax.random.fold_in(key, version), state.versions,
        state.slot_start[done] % max_staleness, jnp.where(kept, staleness(stale), 0.0))
    new_version = new_server.round
    versions = jax.tree.map(lambda v, x: v.at[new_version % max_staleness].set(x),
                            state.versions, broadcast(new_server))
    new_ids = draw(key, new_version, population, buffer, state.slot_ids[staying])
    slot_ids = state.slot_ids.at[done].set(new_ids)
    slot_start = state.slot_start.at[done].set(jnp.broadcast_to(new_version, (buffer,)))
    slot_finish = state.slot_finish.at[done].set(now + durations(population, new_ids))
    used = jnp.maximum(jnp.sum(kept), 1).astype(jnp.float32)
    clients = dict(metrics.get("clients", {}), client_id=ids, staleness=stale)
    metrics = dict(metrics, clients=clients, virtual_time=now,
                   staleness_mean=jnp.sum(jnp.where(kept, stale, 0)).astype(jnp.float32) / used,
                   staleness_max=jnp.max(stale).astype(jnp.float32),
                   num_too_stale=jnp.sum(~kept).astype(jnp.float32),
                   clients_in_flight=jnp.float32(concurrency))
    return AsyncState(new_server, versions, slot_ids, slot_start, slot_finish, now), metrics

  return AsyncAlgorithm(init, jax.jit(step), concurrency, buffer, max_staleness)


def run_async(algorithm: AsyncAlgorithm, state: AsyncState, population: FederatedData, *,
              num_steps: int, key: Any, progress: bool | None = None,
              callback: Callable[[int, AsyncState, dict[str, float]], dict[str, Any] | None]
              | None = None) -> tuple[AsyncState, list[dict[str, float]]]:
  """Runs ``num_steps`` server steps of FedBuff / FedAsync (the analogue of ``run_rounds``).

  Step ``r`` is counted from ``state.server.round``, so a run resumed from a
  saved :class:`AsyncState` continues exactly as the uninterrupted one.

  Args:
    algorithm: from :func:`build_fedbuff`.
    state: from ``algorithm.init(params, population, key)`` or a checkpoint.
    population: all clients (stacked), moved to the default device once.
    num_steps: server steps to run (``>= 0``).
    key: the run's PRNG key (the one ``init`` took).
    progress: show a progress bar; ``None``: only when stderr is a terminal.
    callback: optional ``callback(step_index, state, row)`` after each step;
      a returned dict is shown in the progress bar.

  Returns:
    ``(state, history)``: per step a dict of Python floats, the scalar step
    metrics (``train_loss``, ``virtual_time``, ``staleness_mean``, ...) and
    ``round`` (the step index) and ``seconds`` (its wall time).

  Raises:
    ValueError: for a bad ``num_steps``, or when a finisher's output is
      NaN/Inf (the step is not applied; the message names the clients).
  """
  check_int("num_steps", num_steps, minimum=0)
  population = training._on_device(population)
  first = int(jax.device_get(state.server.round))

  def step_round(state, r):
    del r
    return algorithm.step(state, population, key)

  def record(r, metrics, seconds):
    if not bool(metrics["applied"]):
      training.raise_if_nonfinite(metrics, metrics["clients"]["client_id"], r)
    row = {"round": float(r)}
    row.update({k: float(v) for k, v in metrics.items() if k != "clients"})
    row["seconds"] = seconds
    return row, {"loss": f"{row['train_loss']:.4f}", "t": f"{row['virtual_time']:.4g}"}

  return training._loop(state, range(first, first + num_steps), step_round, record, progress,
                        callback)
