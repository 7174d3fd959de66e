"""FedBuff on the virtual clock: the vectorized server step against a synchronous round and
against an event-driven simulation of the same clients.

``python -m benchmarks.fedbuff [--clients N] [--concurrency C] [--buffer K] [--steps S]
[--quick]``

W2's clients and model (LEAF Synthetic(1, 1), 32 examples each, logistic regression 60->10,
5 local epochs of batch 8 at lr 0.05), devices log-normal (sigma 1), FedAdam on the server.
Printed as JSON lines, all from one run:

* ``sync``: a synchronous round of ``K`` clients (``algo.round``), seconds (median);
* ``fedbuff``: one vectorized server step with ``C`` clients in flight and ``K`` finishing
  (``fl.asynchronous.build_fedbuff``), seconds (median), its ratio to ``sync``, the compiled
  step's XLA temporary memory against ``S`` model copies plus one chunk, and the staleness it
  saw;
* ``event_driven``: ``benchmarks/async_reference.py`` doing the same server steps one client
  at a time (each client a jitted call), its seconds per step, and the speed-up of the
  vectorized simulation over it (both after compilation).
"""

from __future__ import annotations

import argparse
import statistics
import time


def run(num_clients: int, concurrency: int, buffer: int, steps: int, reference_steps: int):
  import jax

  import fedjax_lite as fl
  from benchmarks import common, w2
  from benchmarks.async_reference import reference_fedbuff
  from fedjax_lite import asynchronous, timing

  w2_args = argparse.Namespace(**{**w2.W2_DEFAULTS, "population": num_clients})
  setup = w2.build(w2_args)
  population, params, update = setup["population"], setup["params"], setup["update"]
  optimizer = fl.server.fedadam(1e-2)
  algo = fl.build_federated_algorithm(update, optimizer)
  devices = timing.lognormal_devices(num_clients, sigma=1.0, seed=0)
  fedbuff = asynchronous.build_fedbuff(algo, devices, concurrency=concurrency, buffer=buffer,
                                       num_epochs=w2_args.epochs)
  key = jax.random.key(0)
  population = jax.device_put(population)

  # A synchronous round of K clients.
  state = algo.init(params)
  ids = fl.sample_clients(key, num_clients, buffer)
  cohort = fl.take(population, ids)
  jax.block_until_ready(algo.round(state, cohort, key))
  sync = []
  for r in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(algo.round(state, cohort, jax.random.fold_in(key, r)))
    sync.append(time.perf_counter() - t)

  # The vectorized FedBuff steps.
  astate = fedbuff.init(params, population, key)
  astate, _ = jax.block_until_ready(fedbuff.step(astate, population, key))  # compile
  times, stale = [], []
  for _ in range(steps):
    t = time.perf_counter()
    astate, m = jax.block_until_ready(fedbuff.step(astate, population, key))
    times.append(time.perf_counter() - t)
    stale.append(float(m["staleness_max"]))
  compiled = jax.jit(fedbuff.step).lower(astate, population, key).compile()
  memory = compiled.memory_analysis()
  temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
  model_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  chunk = fl.hardware.auto_chunk_size(params, cohort)

  # The event-driven reference on the same clients (after one step to compile its update).
  reference_fedbuff(update, optimizer, params, population, devices, concurrency=concurrency,
                    buffer=buffer, max_staleness=fedbuff.max_staleness,
                    staleness=asynchronous.polynomial_staleness(0.5), num_steps=1, key=key,
                    num_epochs=w2_args.epochs)
  t = time.perf_counter()
  reference_fedbuff(update, optimizer, params, population, devices, concurrency=concurrency,
                    buffer=buffer, max_staleness=fedbuff.max_staleness,
                    staleness=asynchronous.polynomial_staleness(0.5),
                    num_steps=reference_steps, key=key, num_epochs=w2_args.epochs)
  reference = (time.perf_counter() - t) / reference_steps

  common.emit({"benchmark": "fedbuff", "impl": "sync", "clients_per_round": buffer,
               "sec_per_round_median": statistics.median(sync)})
  fedbuff_sec = statistics.median(times)
  common.emit({"benchmark": "fedbuff", "impl": "fedbuff", "concurrency": concurrency,
               "buffer": buffer, "max_staleness": fedbuff.max_staleness,
               "sec_per_step_median": fedbuff_sec,
               "over_sync_round": fedbuff_sec / statistics.median(sync),
               "xla_temp_bytes": temp,
               "versions_plus_chunk_bytes": (fedbuff.max_staleness + chunk * 3) * model_bytes,
               "staleness_max_seen": max(stale)})
  common.emit({"benchmark": "fedbuff", "impl": "event_driven", "concurrency": concurrency,
               "buffer": buffer, "sec_per_step": reference, "steps_timed": reference_steps,
               "vectorized_speedup": reference / fedbuff_sec})


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--clients", type=int, default=10_000)
  p.add_argument("--concurrency", type=int, default=1000)
  p.add_argument("--buffer", type=int, default=100)
  p.add_argument("--steps", type=int, default=10, help="timed steps of each vectorized kind")
  p.add_argument("--reference-steps", type=int, default=3, help="timed event-driven steps")
  p.add_argument("--quick", action="store_true")
  args = p.parse_args(argv)
  if args.quick:
    args.clients, args.concurrency, args.buffer, args.steps, args.reference_steps = (
        100, 20, 4, 1, 1)
  run(args.clients, args.concurrency, args.buffer, args.steps, args.reference_steps)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
