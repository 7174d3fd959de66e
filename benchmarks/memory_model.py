"""The memory model against XLA and the resident memory: W1, W2 and W3's cohorts.

``python -m benchmarks.memory_model [--quick]`` prints, for each workload and cohort, the
round's temporary memory as ``fl.hardware.estimate_memory`` predicts it, as XLA's compiled
``memory_analysis()`` reports it, and as measured: the growth of the process's peak resident
memory over one round, once the state and population are on the device and the round is
compiled (each configuration in a fresh process; the kernel's high-water mark is reset just
before the round, so an earlier peak, e.g. while the data was generated, cannot count).
``temp_ratio`` is predicted over XLA's temporary bytes, ``measured_ratio`` predicted over the
measured growth, ``total_ratio`` the predicted total over XLA's (arguments, temporary and output,
less what donation aliases), ``peak_ratio`` the predicted total over the measured peak (the exact
bytes of the state and population the round is handed plus its measured growth). A second round's
growth is reported too: the first execution also makes the runtime's one-time allocations.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

CONFIGS = {"w1": [100, 1000], "w2": [1000], "w3": [100, 10_000, 100_000]}


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak() -> bool:
  """Resets this process's peak resident memory (Linux >= 4.0); False where it cannot."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _peak_bytes() -> int:
  """The peak resident memory since the last reset (``VmHWM``), else since the start."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(workload: str, clients: int) -> dict:
  """One configuration, in this process: prediction, XLA's analysis, measured growth."""
  import jax
  import numpy as np

  import fedjax_lite as fl
  from benchmarks import w1, w2
  from fedjax_lite import hardware, training

  module, defaults = (w1, w1.W1_DEFAULTS) if workload == "w1" else (w2, w2.W2_DEFAULTS)
  args = argparse.Namespace(**{**defaults, "population": max(defaults["population"], clients),
                               "clients_per_round": clients}, seed=0, devices=None)
  setup = module.build(args)
  algo = fl.build_federated_algorithm(setup["update"], fl.server.fedavg())
  state = algo.init(setup["params"])
  population = jax.device_put(setup["population"])
  step = training._round_step(algo, fl.fixed_size_sampler(population.num_clients, clients))
  compiled = step.lower(state, population, jax.random.key(0), np.int32(0)).compile()
  analysis = compiled.memory_analysis()
  predicted = hardware.estimate_memory(state, population, clients)
  jax.block_until_ready((state, population))
  reset = _reset_peak()
  before = _rss_bytes()
  state = jax.block_until_ready(compiled(state, population, jax.random.key(0), np.int32(0)))[0]
  growth = max(_peak_bytes() - before, 1)
  # A second round (the first donated its state): what a round needs once the runtime's
  # one-time allocations (thread pools, kernels' work space) are made and kept.
  _reset_peak()
  before = _rss_bytes()
  jax.block_until_ready(compiled(state, population, jax.random.key(1), np.int32(1)))
  growth_second = max(_peak_bytes() - before, 0)
  xla_total = (analysis.argument_size_in_bytes + analysis.temp_size_in_bytes
               + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)
  # The round's own peak: what it was handed (exact bytes) plus what it grew by.
  measured_peak = hardware.tree_bytes((state, population)) + growth
  return {"benchmark": "memory_model", "workload": workload, "clients_per_round": clients,
          "chunk_size": predicted.chunk_size, "peak_reset": reset,
          "predicted_temporary": predicted.temporary,
          "xla_temporary": analysis.temp_size_in_bytes, "measured_growth": growth,
          "measured_growth_second_round": growth_second,
          "temp_ratio": predicted.temporary / analysis.temp_size_in_bytes,
          "measured_ratio": predicted.temporary / growth,
          "predicted_total": predicted.total, "xla_total": xla_total,
          "total_ratio": predicted.total / xla_total, "measured_peak": measured_peak,
          "peak_ratio": predicted.total / measured_peak}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--quick", action="store_true", help="W3 at 100 clients only")
  p.add_argument("--one", nargs=2, metavar=("WORKLOAD", "CLIENTS"), help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.one:
    print(json.dumps(measure(args.one[0], int(args.one[1]))), flush=True)
    return 0
  for workload, cohorts in ({"w3": [100]} if args.quick else CONFIGS).items():
    for clients in cohorts:
      done = subprocess.run([sys.executable, "-m", "benchmarks.memory_model", "--one", workload,
                             str(clients)], capture_output=True, text=True, check=True)
      print(done.stdout.strip().splitlines()[-1], flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
