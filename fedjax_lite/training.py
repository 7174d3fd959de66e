"""The round loop for users who just want to train."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from fedjax_lite import hardware
from fedjax_lite._validate import check_int
from fedjax_lite.algorithm import FederatedAlgorithm, ServerState, raise_if_nonfinite
from fedjax_lite.data import FederatedData, take
from fedjax_lite.ragged import CohortFeed, RaggedData
from fedjax_lite.sampling import Sampler, fixed_size_sampler
from fedjax_lite.sharding import PADDING_CLIENT_ID, num_real_clients


def _on_device(tree: Any) -> Any:
  """Moves host arrays to the default device; JAX arrays (sharded ones too) stay where they are."""
  return jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jax.device_put(x), tree)


def _report_round(bar, callback, round_index, state, row, postfix) -> None:
  """Runs the user's callback and advances the progress bar (with the callback's items)."""
  if callback is not None:
    extra = callback(round_index, state, row)
    if isinstance(extra, dict):
      postfix = {**postfix, **extra}
  bar.set_postfix(postfix)
  bar.update(1)


def round_keys(key: Any, round_index: int) -> tuple[Any, Any]:
  """The (sampling key, round key) of round ``round_index`` of a run seeded by ``key``.

  Args:
    key: the run's PRNG key.
    round_index: the round, counted from 0 over the whole run (also after a resume).

  Returns:
    ``(sampling_key, round_key)``: the cohort is drawn with the first, the
    round (local training, DP noise) runs with the second.
  """
  return tuple(jax.random.split(jax.random.fold_in(key, round_index)))


def _resolve_sampler(num_clients: int, cohort_size: int | None,
                     sampler: Sampler | None) -> Sampler:
  if (cohort_size is None) == (sampler is None):
    raise ValueError("give exactly one of `cohort_size` (fixed-size sampling) and `sampler`.")
  if sampler is None:
    return fixed_size_sampler(num_clients, cohort_size)
  if sampler.num_clients != num_clients:
    raise ValueError(f"`sampler` draws from {sampler.num_clients} clients but the population "
                     f"has {num_clients}.")
  return sampler


def check_client_states(state: ServerState, population: FederatedData, *,
                        stacked: bool = False) -> None:
  """Checks that a stateful algorithm's client-state store fits the population.

  The store (``state.client_states``, leading axis ``N``; after the
  experiment axis for ``stacked`` sweep states) is indexed by client id, so
  the population's real clients must be exactly ids ``0..N-1``.

  Raises:
    ValueError: naming the mismatch and the fix.
  """
  leaves = jax.tree.leaves(state.client_states)
  if not leaves:
    return
  store = leaves[0].shape[1 if stacked else 0]
  ids = np.asarray(jax.device_get(population.client_ids))
  ids = np.sort(ids[ids != PADDING_CLIENT_ID])
  if len(ids) != store or not np.array_equal(ids, np.arange(store)):
    raise ValueError(
        f"the algorithm keeps a state for each of {store} clients, indexed by client id, but the "
        f"population has {len(ids)} clients with ids from {ids.min() if len(ids) else None} to "
        f"{ids.max() if len(ids) else None}: build the population with ids 0..N-1 (the default "
        "of fl.from_clients / fl.from_arrays) and init(params, num_clients=N) with its size.")


def sampled_round(algorithm: FederatedAlgorithm, sampler: Sampler, key: Any, state: ServerState,
                  population: FederatedData, round_index: Any):
  """Round ``round_index`` of a run seeded by ``key``: sample, gather, train; pure.

  Unused (Poisson-padding) cohort slots become empty clients. An overflowing
  Poisson draw is not a valid sample, so the state is then returned unchanged
  and ``metrics["sampling_overflow"]`` is 1.

  Args:
    algorithm: the :class:`FederatedAlgorithm` whose ``round`` runs.
    sampler: the :class:`~fedjax_lite.Sampler` that draws the cohort.
    key: the run's PRNG key (see :func:`round_keys`).
    state: the :class:`ServerState` before the round.
    population: all clients (leading axis ``N``).
    round_index: the round (an int or a traced int32 scalar).

  Returns:
    ``(state, metrics, cohort_client_ids)``; ``metrics`` are the round's plus
    ``sampled_clients`` and ``sampling_overflow``.
  """
  sample_key, round_key = round_keys(key, round_index)
  indices, mask, overflow = sampler.draw(sample_key, round_index)
  return cohort_round(algorithm, state, take(population, indices), mask, overflow, round_key)


def cohort_round(algorithm: FederatedAlgorithm, state: ServerState, cohort: FederatedData,
                 mask: Any, overflow: Any, round_key: Any):
  """The round on a cohort already gathered (what :func:`sampled_round` does after sampling).

  Args:
    algorithm: the :class:`FederatedAlgorithm` whose ``round`` runs.
    state: the :class:`ServerState` before the round.
    cohort: the sampled clients (leading axis ``K``, any padded length).
    mask: ``bool[K]``, the slots the sampler filled; the others become
      empty clients.
    overflow: the sampler's overflow flag; the state is then kept.
    round_key: the round's key (the second of :func:`round_keys`).

  Returns:
    ``(state, metrics, cohort_client_ids)``, as :func:`sampled_round`.
  """
  cohort = cohort._replace(num_examples=jnp.where(mask, cohort.num_examples, 0))
  new_state, metrics = algorithm.round(state, cohort, round_key)
  new_state = jax.tree.map(lambda n, o: jnp.where(overflow, o, n), new_state, state)
  metrics = dict(metrics, sampled_clients=jnp.sum(mask).astype(jnp.float32),
                 sampling_overflow=overflow.astype(jnp.float32))
  return new_state, metrics, cohort.client_ids


@functools.lru_cache(maxsize=16)
def _cohort_step(algorithm: FederatedAlgorithm):
  """The jitted round step of ``run_rounds`` on a gathered cohort (a ragged population)."""
  return hardware.jit(lambda state, cohort, mask, overflow, key, r: cohort_round(
      algorithm, state, cohort, mask, overflow, round_keys(key, r)[1]), donate_argnums=0)


@functools.lru_cache(maxsize=16)
def _round_step(algorithm: FederatedAlgorithm, sampler: Sampler):
  """The jitted round step of ``run_rounds``, one per (algorithm, sampler).

  Kept across calls, so calling :func:`run_rounds` again with the same
  algorithm, sampler and shapes (e.g. to continue a run from a notebook)
  reuses the compiled program instead of compiling it again.
  """
  return hardware.jit(lambda state, population, key, r: sampled_round(
      algorithm, sampler, key, state, population, r), donate_argnums=0)


def run_rounds(
    algorithm: FederatedAlgorithm,
    state: ServerState,
    population: FederatedData | RaggedData,
    *,
    num_rounds: int,
    key: Any,
    cohort_size: int | None = None,
    sampler: Sampler | None = None,
    progress: bool | None = None,
    callback: Callable[[int, ServerState, dict[str, float]], dict[str, Any] | None] | None = None,
    max_examples_per_client: int | None = None,
) -> tuple[ServerState, list[dict[str, float]]]:
  """Runs ``num_rounds`` rounds of sampling and training.

  Round ``r`` (counted from ``state.round``, so a resumed run continues the
  same sequence) samples a cohort with the first key of :func:`round_keys`
  (``cohort_size`` clients uniformly without replacement, or the given
  ``sampler``), gathers it from the device-resident population inside the
  compiled step (unused Poisson slots become empty clients), and calls
  ``algorithm.round`` with the second key. The step is compiled once and the
  previous state's buffers are donated to the next.

  Args:
    algorithm: a :class:`FederatedAlgorithm` (``round`` must be traceable).
    state: the starting state, e.g. ``algorithm.init(params)``. It is copied
      once, so it (and the params it was built from) stays valid; the copies
      are donated from round to round.
    population: all clients: a :class:`~fedjax_lite.FederatedData`, moved to
      the default device once; or a :class:`~fedjax_lite.RaggedData`, whose
      cohorts are gathered on the host into their bucket
      (:mod:`fedjax_lite.ragged`) while the previous round computes, with
      results equal to the stacked population's.
    num_rounds: rounds to run (>= 0).
    key: the run's PRNG key; the same key reproduces the run bit for bit.
    cohort_size: clients per round for fixed-size uniform sampling,
      ``1 <= cohort_size <= population size``.
    sampler: instead of ``cohort_size``, a :class:`~fedjax_lite.Sampler`
      (e.g. :func:`~fedjax_lite.poisson_sampler`). A round whose Poisson draw
      overflows the padded cohort is not applied and raises ``ValueError``.
    progress: show a progress bar; ``None`` shows one only when stderr is a
      terminal or in a notebook.
    callback: optional ``callback(round_index, state, metrics)`` after each
      round (e.g. for evaluation or checkpointing). If it returns a dict, its
      items are shown in the progress bar (e.g. ``{"acc": 0.91}``).
    max_examples_per_client: with a ragged population, an optional cap: each
      round, a larger client trains on a uniformly random subset of this many
      of its examples (drawn from the round's sampling key and its id).

  Returns:
    ``(final_state, history)`` where ``history[r]`` is a dict of Python floats:
    ``round``, ``train_loss``, ``num_clients``, ``num_examples``,
    ``num_nonfinite_clients``, ``seconds`` (wall time of the round, including
    compilation in the first one) and any other scalar round metric.

  Raises:
    ValueError: for a bad ``num_rounds`` or ``cohort_size``, neither or both of
      ``cohort_size`` and ``sampler``, a sampler for another population, a
      Poisson overflow, or (with ``nonfinite="raise"``) a NaN/Inf client output.
  """
  check_int("num_rounds", num_rounds, minimum=0)
  ragged = _check_population(population, max_examples_per_client)
  sampler = _resolve_sampler(_num_clients(population), cohort_size, sampler)
  if not ragged:
    population = _on_device(population)
  check_client_states(state, population)
  state = jax.tree.map(jnp.copy, state)  # the caller's buffers are never donated
  key = jnp.asarray(key)
  first = int(jax.device_get(state.round))
  if ragged:
    feed = CohortFeed(population, sampler, key, max_examples_per_client=max_examples_per_client)
    step_round = _ragged_steps(_cached(_cohort_step, algorithm), feed, key,
                               first + num_rounds)
  else:
    step = _cached(_round_step, algorithm, sampler)

    def step_round(state, r):
      state, metrics, ids = step(state, population, key, np.int32(r))
      return state, (metrics, ids)

  def record(r, out, seconds):
    metrics, ids = out
    _check_overflow(r, sampler, metrics["sampling_overflow"])
    if not bool(metrics["applied"]):
      raise_if_nonfinite(metrics, ids, r)
    row = {"round": float(r)}
    row.update({k: float(v) for k, v in metrics.items() if k != "clients"})
    row["seconds"] = seconds
    shown = {"clients": int(row["num_clients"])}
    if "train_loss" in row:
      shown = {"loss": f"{row['train_loss']:.4f}", **shown}
    return row, shown

  return _loop(state, range(first, first + num_rounds), step_round, record, progress, callback)


def run_sweep(
    make_algorithm: Callable[[Any], FederatedAlgorithm],
    hparams: Any,
    params: Any,
    population: FederatedData | RaggedData,
    *,
    num_rounds: int,
    keys: Any,
    cohort_size: int | None = None,
    sampler: Sampler | None = None,
    stacked_params: bool = False,
    stacked_population: bool = False,
    states: ServerState | None = None,
    callback: Callable[[int, ServerState, dict[str, np.ndarray]], dict[str, Any] | None]
    | None = None,
    progress: bool | None = False,
    max_examples_per_client: int | None = None,
) -> tuple[ServerState, list[dict[str, np.ndarray]]]:
  """Runs ``S`` independent simulations as one vectorized program.

  Experiment ``s`` is exactly ``run_rounds(make_algorithm(hparams[s]),
  make_algorithm(hparams[s]).init(params), population, key=keys[s], ...)``
  (with ``params[s]`` when ``stacked_params``): the same sampling and round
  keys, so its results equal the one-by-one run's up to float rounding. All
  ``S`` are stepped together by ``jax.vmap`` over a leading experiment axis
  inside one ``jax.jit``-compiled round.

  Each chunk of clients is processed for all ``S`` experiments at once, so the
  working set of a chunk is ``S`` times a single run's: give ``make_algorithm``
  a chunk size about ``S`` times smaller than a single run's best (the W5
  benchmark: 64 clients per chunk for 16 experiments, against 1000 for one
  run; ``chunk_size="auto"`` sizes for one experiment).

  Args:
    make_algorithm: ``make_algorithm(h) -> FederatedAlgorithm`` for one
      experiment's hyperparameters ``h`` (a pytree of scalars, traced under
      ``vmap``, e.g. ``optax.sgd(h["client_lr"])``). It must be pure and must
      not branch in Python on ``h``.
    hparams: pytree of arrays with a leading axis ``S`` (e.g.
      ``{"client_lr": jnp.array([0.01, 0.03, 0.1])}``), or ``None`` when only
      the seeds differ (``make_algorithm`` then receives a dummy scalar).
    params: the initial model parameters, shared by every experiment; or,
      with ``stacked_params``, one set per experiment (a leading axis ``S`` on
      every leaf, e.g. each initialized from its own seed). Ignored when
      ``states`` is given.
    population: all clients, shared by every experiment; or, with
      ``stacked_population``, one population per experiment (a leading axis
      ``S`` on every leaf, e.g. each partitioned with its own seed or
      Dirichlet alpha), all of the same shape and client count. A
      :class:`~fedjax_lite.RaggedData` (shared, not stacked) is gathered on
      the host each round: every experiment's cohort, padded to one bucket.
    num_rounds: rounds to run (>= 0).
    keys: ``S`` PRNG keys, one per experiment (e.g. ``jax.random.split(key, S)``
      or ``jax.vmap(jax.random.key)(seeds)``).
    cohort_size: fixed-size sampling, as in :func:`run_rounds`.
    sampler: or a :class:`~fedjax_lite.Sampler`.
    stacked_params: ``params`` has a leading experiment axis ``S``.
    stacked_population: ``population`` has a leading experiment axis ``S``.
    states: instead of initializing from ``params``, continue these stacked
      states (e.g. a checkpoint of an earlier sweep's result; leading axis
      ``S``). Rounds continue from ``states.round``, which must be the same
      for every experiment, so ``num_rounds`` more rounds reproduce exactly
      the rounds an uninterrupted sweep would have run. They are copied once,
      so the caller's buffers stay valid.
    callback: optional ``callback(round_index, states, row)`` after each round,
      with the stacked states and the round's history row (below), e.g. for
      evaluation or checkpointing. ``states`` is donated to the next round:
      read or save it inside the callback, do not keep it. If it returns a
      dict, its items are shown in the progress bar.
    progress: show a progress bar; ``None`` shows one only when stderr is a
      terminal or in a notebook.
    max_examples_per_client: with a ragged population, the per-round cap of
      :func:`run_rounds`.

  Returns:
    ``(states, history)``: the final :class:`ServerState` with a leading axis
    ``S`` on every leaf, and per round of this call a dict of NumPy arrays
    ``[S]`` (each scalar round metric, plus ``sampled_clients``) and
    ``seconds`` (the wall time of that round of all ``S`` experiments,
    compilation included in the first).

  Raises:
    ValueError: for mismatched ``S`` between ``keys``, ``hparams``, stacked
      ``params``, a stacked ``population`` or ``states``, ``states`` at
      different rounds, a bad ``num_rounds``/``cohort_size``/``sampler``, a
      Poisson overflow, or -- as in :func:`run_rounds` -- a round that an
      experiment's algorithm (with ``nonfinite="raise"``) did not apply
      because a client's outputs were NaN/Inf, naming the experiment and
      clients (the states before that round were the last ones handed to
      ``callback``).
  """
  check_int("num_rounds", num_rounds, minimum=0)
  ragged = _check_population(population, max_examples_per_client)
  if ragged and stacked_population:
    raise ValueError("`stacked_population` stacks FederatedData populations; a RaggedData is "
                     "shared by every experiment (stacked_population=False).")
  first_population = (jax.tree.map(lambda x: x[0], population) if stacked_population
                      else population)
  sampler = _resolve_sampler(_num_clients(first_population), cohort_size, sampler)
  keys = jnp.asarray(keys)
  if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.wrap_key_data(keys)
  num_experiments = keys.shape[0]
  for name, tree, what in (
      ("hparams", hparams, "one hyperparameter per experiment"),
      ("params", params if stacked_params and states is None else None,
       "one set of params per experiment (or stacked_params=False to share them)"),
      ("states", states, "one state per experiment"),
      ("population", population if stacked_population else None,
       "one population per experiment (or stacked_population=False to share one)")):
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(tree)}
    if sizes - {num_experiments}:
      raise ValueError(f"`{name}` leaves have leading axes {sorted(sizes, key=str)} but there "
                       f"are {num_experiments} `keys`; give {what}.")
  if hparams is None:
    hparams = jnp.zeros((num_experiments,))
  if not ragged:
    population = _on_device(population)

  def scalars(new_state, metrics, ids):
    # One experiment's round: its scalar metrics, and its non-finite clients' flags and ids.
    nonfinite = metrics["clients"]["nonfinite"]
    return new_state, {k: v for k, v in metrics.items() if k != "clients"}, (nonfinite, ids)

  def one_round(state, h, key, population, round_index):
    return scalars(*sampled_round(make_algorithm(h), sampler, key, state, population,
                                  round_index))

  def one_cohort_round(state, h, cohort, mask, overflow, key, round_index):
    return scalars(*cohort_round(make_algorithm(h), state, cohort, mask, overflow,
                                 round_keys(key, round_index)[1]))

  population_axis = 0 if stacked_population else None
  if ragged:
    step = hardware.jit(jax.vmap(one_cohort_round, in_axes=(0, 0, 0, 0, 0, 0, None)),
                   donate_argnums=0)
  else:
    step = hardware.jit(jax.vmap(one_round, in_axes=(0, 0, 0, population_axis, None)),
                   donate_argnums=0)
  if states is None:
    num_clients = _num_clients(first_population)
    init = lambda h, p: make_algorithm(h).init(p, num_clients=num_clients)
    states = jax.jit(jax.vmap(init, in_axes=(0, 0 if stacked_params else None)))(hparams,
                                                                                    params)
    first = 0
  else:
    states = jax.tree.map(jnp.copy, states)  # the caller's buffers are never donated
    rounds = np.asarray(jax.device_get(states.round))
    if rounds.size and np.any(rounds != rounds.flat[0]):
      raise ValueError(f"`states` are at different rounds {rounds.tolist()}; a sweep continues "
                       "all its experiments from one round.")
    first = int(rounds.flat[0]) if rounds.size else 0
  check_client_states(states, first_population, stacked=True)

  if ragged:
    feed = CohortFeed(population, sampler, keys, max_examples_per_client=max_examples_per_client)
    step_round = _ragged_steps(step, feed, keys, first + num_rounds, hparams)
  else:

    def step_round(states, r):
      states, metrics, nonfinite_ids = step(states, hparams, keys, population, np.int32(r))
      return states, (metrics, nonfinite_ids)

  def record(r, out, seconds):
    metrics, (nonfinite, ids) = out
    _check_overflow(r, sampler, metrics["sampling_overflow"])
    refused = np.flatnonzero(np.asarray(jax.device_get(metrics["applied"])) == 0)
    if refused.size:
      s = int(refused[0])
      try:
        raise_if_nonfinite({"clients": {"nonfinite": nonfinite[s]}}, ids[s], r)
      except ValueError as e:
        raise ValueError(f"experiment {s} (of {refused.size} refused: {refused.tolist()}): "
                         f"{e}") from None
    row = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
    row["seconds"] = np.float64(seconds)  # wall time of the round of all S experiments
    shown = {"loss": f"{float(np.mean(row['train_loss'])):.4f}"} if "train_loss" in row else {}
    return row, shown

  return _loop(states, range(first, first + num_rounds), step_round, record, progress, callback)


def _cached(build: Callable, *args: Any) -> Any:
  """``build(*args)`` from its cache; compiled for this call only when an argument is unhashable."""
  try:
    return build(*args)
  except TypeError:
    return build.__wrapped__(*args)


def _check_population(population: Any, max_examples_per_client: int | None) -> bool:
  """Whether ``population`` is ragged; refuses anything else, and a cap on a stacked one."""
  if isinstance(population, RaggedData):
    if max_examples_per_client is not None:
      check_int("max_examples_per_client", max_examples_per_client, minimum=1)
    return True
  if not isinstance(population, FederatedData):
    raise TypeError(f"`population` must be a FederatedData or a RaggedData; got "
                    f"{type(population).__name__}.")
  if max_examples_per_client is not None:
    raise ValueError("`max_examples_per_client` subsamples a RaggedData's clients each round; "
                     "for a FederatedData, cap the clients when building it (or use "
                     "fl.RaggedData.from_stacked(population)).")
  return False


def _num_clients(population: FederatedData | RaggedData) -> int:
  if isinstance(population, RaggedData):
    return population.num_clients
  return num_real_clients(population)


def _ragged_steps(step: Callable, feed: CohortFeed, keys: Any, end: int,
                  hparams: Any = None) -> Callable:
  """``step_round(state, r)`` of a ragged population: the next cohort gathered during the round."""

  def step_round(state, r):
    cohort, mask, overflow = feed.take(r)
    ahead = r + 1 < end
    if ahead:
      feed.sample(r + 1)  # before the round is dispatched, so it is not queued behind it
    args = (cohort, mask, overflow, keys, np.int32(r))
    state, metrics, ids = step(state, *args) if hparams is None else step(state, hparams, *args)
    if ahead:
      feed.gather(r + 1)  # on the host, while the device runs round r
    return state, (metrics, ids)

  return step_round


def _check_overflow(r: int, sampler: Sampler, overflow: Any) -> None:
  """Refuses a round whose Poisson draw overflowed the padded cohort (any experiment's)."""
  if bool(np.any(jax.device_get(overflow))):
    raise ValueError(
        f"round {r}: the Poisson sample overflowed the padded cohort of {sampler.cohort_size} "
        "slots (probability below the bound it was built with); the round was not applied. "
        "Build the sampler with a smaller overflow_probability.")


def _loop(state: Any, rounds: range, step_round: Callable[[Any, int], tuple[Any, Any]],
          record: Callable[[int, Any, float], tuple[dict, dict]], progress: bool | None,
          callback: Callable | None) -> tuple[Any, list[dict]]:
  """The round loop of :func:`run_rounds` and :func:`run_sweep`.

  Each round: ``step_round(state, r) -> (state, out)``, timed to completion;
  ``record(r, out, seconds) -> (row, shown)`` checks it (raising refuses the
  round before anyone sees its state) and makes its history row; then the
  progress bar and ``callback``.
  """
  history = []
  bar = tqdm(total=len(rounds), disable=None if progress is None else not progress,
             desc="rounds", unit="round")
  try:
    for r in rounds:
      start = time.perf_counter()
      state, out = step_round(state, r)
      jax.block_until_ready(state)
      row, shown = record(r, out, time.perf_counter() - start)
      history.append(row)
      _report_round(bar, callback, r, state, row, shown)
  finally:
    bar.close()
  return state, history
