"""Virtual time: how long each client's round takes on its device.

Real federated training is shaped by device speed: phones differ by orders of
magnitude. Here a client's training time in a round is its work (examples
processed: examples times local epochs) times its device's seconds per
example, plus a fixed per-round overhead (download and upload):

    duration_i = overhead + seconds_per_example[id_i] * work_i

A device's speed is a property of the client, not of the round: it is drawn
once from the seed and the client's id (log-normal by default,
:func:`lognormal_devices`), or read from an array of measured per-client
speeds (:func:`device_trace`). Whether a sampled client is available in a
round is an independent draw with probability ``availability`` from the
round's key and the client's id. Everything here is pure and jit-safe, and
like every per-client draw in this package it does not depend on where a
client sits in a cohort.

References:
  Bonawitz et al. "Towards Federated Learning at Scale: System Design", MLSys
  2019 (device heterogeneity, deadlines, over-selection).
  Lai et al. "FedScale: Benchmarking Model and System Performance of
  Federated Learning at Scale", ICML 2022 (trace-driven device speeds).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_lite._validate import check_int

# The data folded into a round's key for the availability draws.
AVAILABILITY_FOLD = 0x41564149


class Devices(NamedTuple):
  """Every client's device.

  Attributes:
    seconds_per_example: ``float32[N]``, indexed by client id: seconds the
      device takes to train on one example once.
    overhead: seconds every round costs a client besides training
      (download and upload), ``>= 0``.
    availability: probability that a sampled client is available in a round,
      in ``(0, 1]``.
  """

  seconds_per_example: Any
  overhead: float = 0.0
  availability: float = 1.0


def _check(overhead: float, availability: float) -> None:
  if not (isinstance(overhead, (int, float)) and math.isfinite(overhead) and overhead >= 0):
    raise ValueError(f"`overhead` must be a finite number of seconds >= 0; got {overhead!r}.")
  if not (isinstance(availability, (int, float)) and 0 < availability <= 1):
    raise ValueError(f"`availability` must be a probability in (0, 1]; got {availability!r}.")


def lognormal_devices(num_clients: int, *, median_seconds_per_example: float = 0.01,
                      sigma: float = 1.0, seed: int = 0, overhead: float = 0.0,
                      availability: float = 1.0) -> Devices:
  """Devices whose speeds are log-normal across clients.

  Client ``i``'s seconds per example is ``median * exp(sigma * z_i)`` with
  ``z_i`` a standard normal drawn from ``fold_in(key(seed), i)``: the same
  client has the same device in every run with this seed, whatever the
  population size.

  Args:
    num_clients: ``N`` (client ids ``0..N-1``).
    median_seconds_per_example: the median device's seconds per example.
    sigma: the spread of ``log`` speed (1.0: the fastest of 1,000 devices is
      about 20 times the median, the slowest about 1/20 of it).
    seed: the devices' seed.
    overhead: see :class:`Devices`.
    availability: see :class:`Devices`.

  Returns:
    The :class:`Devices`.

  Raises:
    ValueError: for a non-positive median or a negative sigma, overhead or
      an availability outside ``(0, 1]``.
  """
  check_int("num_clients", num_clients, minimum=1)
  if not (median_seconds_per_example > 0 and math.isfinite(median_seconds_per_example)):
    raise ValueError("`median_seconds_per_example` must be a positive number; got "
                     f"{median_seconds_per_example!r}.")
  if not (sigma >= 0 and math.isfinite(sigma)):
    raise ValueError(f"`sigma` must be a number >= 0; got {sigma!r}.")
  _check(overhead, availability)
  key = jax.random.key(seed)
  z = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i)))(
      jnp.arange(num_clients))
  speeds = median_seconds_per_example * jnp.exp(sigma * z)
  return Devices(speeds.astype(jnp.float32), float(overhead), float(availability))


def device_trace(seconds_per_example: Any, *, overhead: float = 0.0,
                 availability: float = 1.0) -> Devices:
  """Devices read from measured per-client speeds (e.g. a device trace).

  Args:
    seconds_per_example: ``[N]`` positive finite seconds per example, indexed
      by client id.
    overhead: see :class:`Devices`.
    availability: see :class:`Devices`.

  Returns:
    The :class:`Devices`.

  Raises:
    ValueError: for a speed that is not a positive finite number, naming the
      first such client.
  """
  speeds = np.asarray(seconds_per_example, np.float64)
  if speeds.ndim != 1 or speeds.size == 0:
    raise ValueError(f"`seconds_per_example` must be a 1-D array with one entry per client; "
                     f"got shape {speeds.shape}.")
  bad = np.flatnonzero(~(np.isfinite(speeds) & (speeds > 0)))
  if bad.size:
    raise ValueError(f"`seconds_per_example` must be positive and finite; client {bad[0]} has "
                     f"{float(speeds[bad[0]])!r}.")
  _check(overhead, availability)
  return Devices(jnp.asarray(speeds, jnp.float32), float(overhead), float(availability))


def client_durations(devices: Devices, client_ids: Any, work: Any) -> Any:
  """Each client's virtual training time for a round; pure and jit-safe.

  Args:
    devices: the :class:`Devices`.
    client_ids: ``int[K]`` client ids (indices into the devices).
    work: ``[K]`` examples processed in the round (examples times local
      epochs, or steps times batch size).

  Returns:
    ``float32[K]``: ``overhead + seconds_per_example[id] * work`` seconds.
  """
  speeds = jnp.take(jnp.asarray(devices.seconds_per_example), jnp.asarray(client_ids),
                    mode="clip")
  return (devices.overhead + speeds * jnp.asarray(work, jnp.float32)).astype(jnp.float32)


def available(devices: Devices, key: Any, client_ids: Any) -> Any:
  """Which clients are available this round; pure and jit-safe.

  Args:
    devices: the :class:`Devices` (its ``availability``).
    key: the round's key.
    client_ids: ``int[K]`` client ids.

  Returns:
    ``bool[K]``: client ``i`` is available with probability ``availability``,
    drawn from ``fold_in(fold_in(key, AVAILABILITY_FOLD), id)``.
  """
  base = jax.random.fold_in(key, AVAILABILITY_FOLD)
  draw = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(base, i)))(
      jnp.asarray(client_ids))
  return draw < devices.availability


def deadline_work(devices: Devices, deadline: float, *, batch_size: int,
                  mode: str = "partial") -> Any:
  """A client's local work cut at a round deadline on its own device.

  For :func:`fedjax_lite.build_client_update` (``local_work=``). A client
  whose full work (``overhead + seconds_per_example * examples * epochs``)
  ends after ``deadline`` is a straggler: with ``mode="partial"`` it
  contributes the steps it finished by then, ``floor((deadline - overhead) /
  (seconds_per_example * batch_size))`` (each step taken as a full batch);
  with ``"drop"`` it contributes nothing.

  Args:
    devices: the :class:`Devices`.
    deadline: seconds, ``> 0``.
    batch_size: the client update's batch size.
    mode: ``"partial"`` or ``"drop"``.

  Returns:
    A :class:`fedjax_lite.LocalWork` (``by_client``).

  Raises:
    ValueError: for a non-positive deadline or an unknown mode.
  """
  from fedjax_lite.local_work import LocalWork

  if not (isinstance(deadline, (int, float)) and deadline > 0 and math.isfinite(deadline)):
    raise ValueError(f"`deadline` must be a positive number of seconds; got {deadline!r}.")
  check_int("batch_size", batch_size, minimum=1)
  if mode not in ("partial", "drop"):
    raise ValueError(f"`mode` must be 'partial' or 'drop'; got {mode!r}.")
  speeds = jnp.asarray(devices.seconds_per_example)

  def budget(key, num_examples, steps_per_epoch, num_epochs, client_id):
    del key
    speed = jnp.take(speeds, client_id, mode="clip")
    full = steps_per_epoch * num_epochs
    late = devices.overhead + speed * num_examples * num_epochs > deadline
    done = jnp.floor(jnp.maximum(deadline - devices.overhead, 0.0) / (speed * batch_size))
    steps = jnp.minimum(full, done.astype(jnp.int32))
    return jnp.where(late, steps, full), late

  return LocalWork(budget, drop_stragglers=mode == "drop", by_client=True)


def timed(algorithm: Any, devices: Devices, *, deadline: float | None = None,
          keep: int | None = None, partial: bool = False, num_epochs: int = 1) -> Any:
  """Synchronous rounds on the virtual clock: availability, over-selection, a deadline.

  The returned algorithm's ``round`` takes the sampled cohort (sample more
  than ``keep`` clients to over-select, as in Bonawitz et al. 2019) and
  turns into empty clients (no delta, weight 0) those that are unavailable
  this round (:func:`available`), those beyond the ``keep`` fastest
  available ones, and, with a ``deadline``, those whose full work ends after
  it, unless ``partial``: the client update then cuts their work itself
  (built with :func:`deadline_work`, ``mode="partial"``) and they stay with
  the steps they finished. The round's metrics add ``round_time`` (the virtual
  seconds the server waited: the ``keep``-th kept client's finish time, or
  the last one's without ``keep``; the deadline when a client is late and no
  ``keep`` count was reached first), ``num_unavailable``, ``num_late`` and ``num_not_kept``.

  Args:
    algorithm: a :class:`fedjax_lite.FederatedAlgorithm`.
    devices: the :class:`Devices`.
    deadline: optional round deadline in seconds.
    keep: optional number of clients to aggregate (the fastest available).
    partial: late clients stay (their client update was built with
      ``deadline_work(..., mode="partial")`` and the same deadline).
    num_epochs: local epochs, for a client's work.

  Returns:
    A :class:`fedjax_lite.FederatedAlgorithm` (same ``init`` and ``spec``).
  """
  from fedjax_lite.algorithm import FederatedAlgorithm

  if deadline is not None and not (deadline > 0 and math.isfinite(deadline)):
    raise ValueError(f"`deadline` must be a positive number of seconds; got {deadline!r}.")
  if keep is not None:
    check_int("keep", keep, minimum=1)
  check_int("num_epochs", num_epochs, minimum=1)
  if partial and deadline is None:
    raise ValueError("`partial` keeps the clients that miss the deadline with the work they "
                     "finished; give the `deadline` too.")
  spec = getattr(algorithm, "spec", None)

  def round_fn(state, cohort, key):
    n = cohort.num_examples
    ids = cohort.client_ids
    duration = client_durations(devices, ids, n * num_epochs)
    has_data = n > 0
    up = available(devices, key, ids) & has_data
    late = up & (duration > deadline) if deadline is not None else jnp.zeros_like(up)
    eligible = up & ~late if not partial else up
    if keep is not None:
      rank = jnp.argsort(jnp.where(eligible, duration, jnp.inf), stable=True)
      position = jnp.zeros_like(rank).at[rank].set(jnp.arange(rank.shape[0]))
      kept = eligible & (position < keep)
    else:
      kept = eligible
    finish = duration if deadline is None else jnp.minimum(duration, deadline)
    waited = jnp.max(jnp.where(kept, finish, 0.0))
    if deadline is not None and keep is not None:
      # The server stops at the keep-th finisher, or at the deadline without enough.
      waited = jnp.where(jnp.sum(kept) < keep, deadline, waited)
    elif deadline is not None:
      # Without a count to stop at, the server waits for every available client
      # it kept: until the deadline when one of them is late.
      waited = jnp.where(jnp.any(late), deadline, waited)
    new_state, metrics = algorithm.round(state, cohort._replace(num_examples=jnp.where(
        kept, n, 0)), key)
    metrics = dict(metrics, round_time=waited.astype(jnp.float32),
                   num_unavailable=jnp.sum(has_data & ~up).astype(jnp.float32),
                   num_late=jnp.sum(late).astype(jnp.float32),
                   num_not_kept=jnp.sum(eligible & ~kept).astype(jnp.float32))
    return new_state, metrics

  return FederatedAlgorithm(algorithm.init, jax.jit(round_fn), spec)
