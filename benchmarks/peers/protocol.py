"""What every peer script shares: the workload file, the timing loop, the output.

This module imports only NumPy and the standard library, so each peer's own
virtual environment (FedJAX with its old JAX, Flower, pfl-research, PyTorch)
can import it; the peer scripts run as ``python -m benchmarks.peers.<peer>``
from the repository root.

A workload file (``.npz``, written by :mod:`benchmarks.peers.workloads`) holds

* ``x``: ``float32[N, n, d]``, every client's features (all clients hold ``n``
  examples); ``y``: ``int64[N, n]`` labels in ``[0, num_classes)``;
* ``kernel_i`` ``float32[d_in, d_out]`` and ``bias_i`` ``float32[d_out]`` for
  each dense layer ``i`` (``x @ kernel + bias``, ReLU between layers, softmax
  cross-entropy on the last);
* scalars ``clients_per_round``, ``epochs``, ``batch_size``, ``lr`` (client
  SGD), ``server_lr`` (server SGD on the mean delta; 1.0 is plain FedAvg),
  ``rounds`` (for a results check) and the string ``workload``.

A round samples ``clients_per_round`` clients uniformly without replacement,
each runs ``epochs`` epochs of SGD at ``lr`` over its shuffled examples in
batches of ``batch_size``, and the server adds ``server_lr`` times the
example-weighted mean of the clients' deltas.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def parse_args(doc: str, argv=None, extra: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> argparse.Namespace:
  """The options every peer script takes.

  ``--data FILE`` the workload; ``--warmup W`` untimed rounds; ``--rounds R``
  timed rounds at most; ``--budget-sec B`` stop timing after ``B`` seconds
  (at least two rounds); ``--check OUT``: instead of timing, run the file's
  ``rounds`` rounds with every client in every round and save the final
  parameters to ``OUT`` (see :func:`save_params`).
  """
  p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", required=True)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--rounds", type=int, default=10)
  p.add_argument("--budget-sec", type=float, default=60.0)
  p.add_argument("--check", default=None)
  p.add_argument("--seed", type=int, default=0)
  if extra is not None:
    extra(p)
  return p.parse_args(argv)


def load(path: str) -> dict[str, Any]:
  """The workload file as a dict: arrays, ``layers`` (a list of ``(kernel, bias)``) and scalars."""
  with np.load(path) as f:
    data = {k: f[k] for k in f.files}
  layers = []
  while f"kernel_{len(layers)}" in data:
    i = len(layers)
    layers.append((data.pop(f"kernel_{i}"), data.pop(f"bias_{i}")))
  data["layers"] = layers
  for k in ("clients_per_round", "epochs", "batch_size", "rounds"):
    data[k] = int(data[k])
  for k in ("lr", "server_lr"):
    data[k] = float(data[k])
  data["workload"] = str(data["workload"])
  data["num_clients"], data["examples"] = data["x"].shape[:2]
  return data


def cohort(rng: np.random.Generator, num_clients: int, clients_per_round: int) -> np.ndarray:
  """Client indices of one round, uniform without replacement."""
  return np.sort(rng.choice(num_clients, clients_per_round, replace=False))


def save_params(path: str, layers) -> None:
  """Saves ``[(kernel [d_in, d_out], bias [d_out]), ...]`` in the workload file's layout."""
  arrays = {}
  for i, (kernel, bias) in enumerate(layers):
    arrays[f"kernel_{i}"] = np.asarray(kernel, np.float32)
    arrays[f"bias_{i}"] = np.asarray(bias, np.float32)
  np.savez(path, **arrays)


def emit(**row: Any) -> None:
  """One JSON line on stdout (the driver reads these; anything else a peer prints is ignored)."""
  print(json.dumps(row), flush=True)


def timed_rounds(run_round: Callable[[int], Any], *, warmup: int, rounds: int,
                 budget_sec: float, sync: Callable[[Any], Any] = lambda out: out
                 ) -> dict[str, Any]:
  """Runs ``warmup`` rounds, then times up to ``rounds`` rounds (at least 2) within ``budget_sec``.

  ``run_round(r)`` runs round ``r``; ``sync(its result)`` waits for it (e.g.
  ``jax.block_until_ready``). Emits one ``{"event": "round"}`` line per round.

  Returns:
    ``{"first_round_sec", "sec_per_round_median", "sec_per_round_min",
    "sec_per_round_max", "rounds_timed"}``.
  """
  first = None
  for r in range(warmup):
    t = time.perf_counter()
    sync(run_round(r))
    sec = time.perf_counter() - t
    first = sec if first is None else first
    emit(event="round", round=r, warmup=True, seconds=sec)
  times: list[float] = []
  start = time.perf_counter()
  for r in range(warmup, warmup + rounds):
    t = time.perf_counter()
    sync(run_round(r))
    times.append(time.perf_counter() - t)
    emit(event="round", round=r, warmup=False, seconds=times[-1])
    if len(times) >= 2 and time.perf_counter() - start > budget_sec:
      break
  return {"first_round_sec": first, "sec_per_round_median": statistics.median(times),
          "sec_per_round_min": min(times), "sec_per_round_max": max(times),
          "rounds_timed": len(times)}


def main_guard(fn: Callable[[], dict[str, Any]]) -> int:
  """Runs a peer's ``fn`` and emits its result as ``{"event": "done", ...}`` or the failure."""
  try:
    row = fn()
  except Exception as e:  # reported to the driver as a row, not a traceback
    emit(event="error", error=f"{type(e).__name__}: {e}")
    import traceback
    traceback.print_exc(file=sys.stderr)
    return 1
  emit(event="done", **row)
  return 0
