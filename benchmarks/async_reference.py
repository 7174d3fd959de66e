"""An event-driven FedBuff / FedAsync: a priority queue of finish times, one client at a time.

The reference that :mod:`fedjax_lite.asynchronous`'s vectorized simulation is checked
against (``tests/test_asynchronous.py``) and timed against (the benchmark): written the way
event-driven simulators (FLSim, FedScale) run it, with no vectorization. Each server step
pops the ``K`` earliest finishers from a heap keyed by ``(finish time, slot)``, trains each
from the version it started from (kept in a dict, all of them), averages the deltas with
weights ``weight * staleness(s)`` in NumPy, applies the optax server optimizer to the negated
average, and pushes the ``K`` new clients. The semantics are those the module docstring of
:mod:`fedjax_lite.asynchronous` states; the client draws use its ``sample_excluding`` with the
same keys, so both simulate the same clients.
"""

from __future__ import annotations

import heapq
from typing import Any

import jax
import numpy as np
import optax


def reference_fedbuff(client_update: Any, optimizer: optax.GradientTransformation,
                      params: Any, population: Any, devices: Any, *, concurrency: int,
                      buffer: int, max_staleness: int, staleness: Any, num_steps: int,
                      key: Any, num_epochs: int = 1) -> tuple[Any, list[dict[str, float]]]:
  """Runs ``num_steps`` server steps event by event; returns the params and per-step rows."""
  from fedjax_lite import asynchronous

  n = population.num_clients
  counts = np.asarray(population.num_examples)
  speeds = np.asarray(devices.seconds_per_example, np.float32)
  update = jax.jit(client_update)

  def duration(i: int) -> np.float32:
    work = np.float32(counts[i] * num_epochs)
    return np.float32(np.float32(devices.overhead) + speeds[i] * work)

  def draw(version: int, count: int, excluded: list[int]) -> list[int]:
    k = jax.random.fold_in(jax.random.fold_in(key, asynchronous.SAMPLE_FOLD), version)
    return [int(i) for i in asynchronous.sample_excluding(k, n, count,
                                                          np.asarray(excluded, np.int32))]

  versions = {0: params}
  opt_state = optimizer.init(params)
  ids = draw(0, concurrency, [])
  start = [0] * concurrency
  heap = [(duration(ids[j]), j) for j in range(concurrency)]
  heapq.heapify(heap)
  version, rows = 0, []
  for _ in range(num_steps):
    done = [heapq.heappop(heap) for _ in range(buffer)]
    now = done[-1][0]
    client_key = jax.random.split(jax.random.fold_in(key, version))[0]
    total, weight_sum, stale = None, 0.0, []
    for _, j in done:
      s = version - start[j]
      stale.append(s)
      if s >= max_staleness:
        continue
      client = jax.tree.map(lambda x, i=ids[j]: x[i], population)
      out = update(versions[start[j]], client, client_key)
      w = float(out.weight) * float(staleness(s))
      delta = jax.tree.map(lambda d, w=w: w * np.asarray(d, np.float64), out.delta)
      total = delta if total is None else jax.tree.map(np.add, total, delta)
      weight_sum += w
    if total is None or weight_sum == 0:
      average = jax.tree.map(np.zeros_like, jax.tree.map(np.asarray, params))
    else:
      average = jax.tree.map(lambda t: (t / weight_sum).astype(np.float32), total)
    updates, opt_state = optimizer.update(jax.tree.map(np.negative, average), opt_state,
                                          versions[version])
    version += 1
    versions[version] = optax.apply_updates(versions[version - 1], updates)
    staying = {j for _, j in heap}
    new = draw(version, buffer, [ids[j] for j in sorted(staying)])
    for (_, j), i in zip(done, new, strict=True):
      ids[j], start[j] = i, version
      heapq.heappush(heap, (np.float32(now + duration(i)), j))
    rows.append({"virtual_time": float(now), "staleness_max": float(max(stale))})
  return versions[version], rows
