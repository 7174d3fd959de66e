"""The round loop for users who just want to train."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from fedjax_lite.algorithm import FederatedAlgorithm, ServerState, raise_if_nonfinite
from fedjax_lite.data import FederatedData, _check_int, take
from fedjax_lite.sampling import sample_clients


def round_keys(key: Any, round_index: int) -> tuple[Any, Any]:
  """The (sampling key, round key) of round ``round_index`` of a run seeded by ``key``."""
  return tuple(jax.random.split(jax.random.fold_in(key, round_index)))


def run_rounds(
    algorithm: FederatedAlgorithm,
    state: ServerState,
    population: FederatedData,
    *,
    num_rounds: int,
    cohort_size: int,
    key: Any,
    progress: bool | None = None,
    callback: Callable[[int, ServerState, dict[str, float]], dict[str, Any] | None] | None = None,
) -> tuple[ServerState, list[dict[str, float]]]:
  """Runs ``num_rounds`` rounds of sampling and training.

  Round ``r`` (counted from ``state.round``, so a resumed run continues the
  same sequence) samples ``cohort_size`` clients uniformly without
  replacement with the first key of :func:`round_keys`, gathers them from the
  device-resident population inside the compiled step, and calls
  ``algorithm.round`` with the second key. The step is compiled once and the
  previous state's buffers are donated to the next.

  Args:
    algorithm: a :class:`FederatedAlgorithm` (``round`` must be traceable).
    state: the starting state, e.g. ``algorithm.init(params)``. It is copied
      once, so it (and the params it was built from) stays valid; the copies
      are donated from round to round.
    population: all clients; moved to the default device once.
    num_rounds: rounds to run (>= 0).
    cohort_size: clients per round, ``1 <= cohort_size <= population size``.
    key: the run's PRNG key; the same key reproduces the run bit for bit.
    progress: show a progress bar; ``None`` shows one only when stderr is a
      terminal or in a notebook.
    callback: optional ``callback(round_index, state, metrics)`` after each
      round (e.g. for evaluation or checkpointing). If it returns a dict, its
      items are shown in the progress bar (e.g. ``{"acc": 0.91}``).

  Returns:
    ``(final_state, history)`` where ``history[r]`` is a dict of Python floats:
    ``round``, ``train_loss``, ``num_clients``, ``num_examples``,
    ``num_nonfinite_clients``, ``seconds`` (wall time of the round, including
    compilation in the first one) and any other scalar round metric.

  Raises:
    ValueError: for a bad ``num_rounds`` or ``cohort_size``, or (with
      ``nonfinite="raise"``) when a client delta is NaN/Inf.
  """
  _check_int("num_rounds", num_rounds, minimum=0)
  num_clients = population.num_clients
  sample_clients(jax.random.key(0), num_clients, cohort_size)  # validates cohort_size early
  population = jax.device_put(population)
  state = jax.tree.map(jnp.copy, state)  # the caller's buffers are never donated

  def step(state, population, round_index):
    sample_key, round_key = round_keys(key, round_index)
    indices = sample_clients(sample_key, num_clients, cohort_size)
    cohort = take(population, indices)
    state, metrics = algorithm.round(state, cohort, round_key)
    return state, metrics, cohort.client_ids

  step = jax.jit(step, donate_argnums=0)
  first = int(jax.device_get(state.round))
  history = []
  bar = tqdm(total=num_rounds, disable=None if progress is None else not progress,
             desc="rounds", unit="round")
  try:
    for r in range(first, first + num_rounds):
      start = time.perf_counter()
      state, metrics, ids = step(state, population, np.int32(r))
      jax.block_until_ready(state)
      seconds = time.perf_counter() - start
      if not bool(metrics["applied"]):
        raise_if_nonfinite(metrics, ids, r)
      row = {"round": float(r)}
      row.update({k: float(v) for k, v in metrics.items() if k != "clients"})
      row["seconds"] = seconds
      history.append(row)
      postfix = {"loss": f"{row['train_loss']:.4f}", "clients": int(row["num_clients"])}
      if callback is not None:
        extra = callback(r, state, row)
        if isinstance(extra, dict):
          postfix.update(extra)
      bar.set_postfix(postfix)
      bar.update(1)
  finally:
    bar.close()
  return state, history
