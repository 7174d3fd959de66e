"""Timing, FLOP and memory helpers shared by the benchmarks."""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
  """Best float32 ``n x n`` matmul throughput of this machine, measured now."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  f(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best / 1e9


def time_rounds(run_round: Callable[[int], Any], *, warmup: int, rounds: int) -> dict[str, Any]:
  """Times ``run_round(r)`` (which must block until done) after warm-up rounds.

  Returns:
    ``compile_sec`` (the first warm-up round, which includes compilation),
    ``sec_per_round_median/min/max`` and ``rounds_timed``.
  """
  t = time.perf_counter()
  run_round(0)
  compile_sec = time.perf_counter() - t
  for r in range(1, warmup):
    run_round(r)
  times = []
  for r in range(warmup, warmup + rounds):
    t = time.perf_counter()
    run_round(r)
    times.append(time.perf_counter() - t)
  return {
      "compile_sec": compile_sec,
      "sec_per_round_median": statistics.median(times),
      "sec_per_round_min": min(times),
      "sec_per_round_max": max(times),
      "rounds_timed": rounds,
  }


def round_runner(step: Callable[[Any, int], Any], init: Callable[[Any], Any], params: Any
                 ) -> Callable[[int], None]:
  """``run_round(r)``: advances a private state with ``step`` and blocks until done."""
  holder = {"state": init(params)}

  def run_round(r: int) -> None:
    holder["state"] = step(holder["state"], r)
    jax.block_until_ready(holder["state"])

  return run_round


def time_interleaved(run_rounds: dict[str, Callable[[int], Any]], *, warmup: int,
                     rounds: int, budget_sec: float | None = None) -> dict[str, dict[str, Any]]:
  """Like :func:`time_rounds` for several implementations, timed round-robin.

  Each timed round runs every implementation once, in turn, so slow drifts of
  a shared, noisy machine hit all of them alike and their ratios stay fair.
  With ``budget_sec``, an implementation whose last warm-up round took ``t``
  is timed for ``min(rounds, max(2, budget_sec / t))`` rounds (a slow loop
  baseline is timed less often; the passes still interleave).
  """
  compile_sec, last = {}, {}
  for name, run_round in run_rounds.items():
    t = time.perf_counter()
    run_round(0)
    compile_sec[name] = last[name] = time.perf_counter() - t
    for r in range(1, warmup):
      t = time.perf_counter()
      run_round(r)
      last[name] = time.perf_counter() - t
  counts = {name: rounds if budget_sec is None else
            min(rounds, max(2, int(budget_sec / max(last[name], 1e-9))))
            for name in run_rounds}
  times: dict[str, list[float]] = {name: [] for name in run_rounds}
  for r in range(warmup, warmup + max(counts.values())):
    for name, run_round in run_rounds.items():
      if len(times[name]) == counts[name]:
        continue
      t = time.perf_counter()
      run_round(r)
      times[name].append(time.perf_counter() - t)
  return {name: {"compile_sec": compile_sec[name],
                 "sec_per_round_median": statistics.median(ts),
                 "sec_per_round_min": min(ts), "sec_per_round_max": max(ts),
                 "rounds_timed": len(ts)} for name, ts in times.items()}


def flops_per_example_step(loss_fn, params, example_batch) -> float:
  """XLA's FLOP count of one gradient of ``loss_fn`` per example in the batch.

  Counted on a single unrolled gradient (XLA's cost analysis does not
  multiply loop bodies by their trip count, so a whole round cannot be
  counted directly).
  """
  batch = next(iter(example_batch.values())).shape[0]
  compiled = jax.jit(jax.grad(loss_fn)).lower(params, example_batch).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, list):
    cost = cost[0]
  return float(cost["flops"]) / batch


def peak_rss_mib() -> float:
  """This process's resident-memory high-water mark so far, in MiB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(row: dict[str, Any]) -> None:
  print(json.dumps(row, sort_keys=False), flush=True)
  sys.stdout.flush()
