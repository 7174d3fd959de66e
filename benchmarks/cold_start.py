"""Cold start: the seconds to trace and compile a round before it runs, cache off.

``python -m benchmarks.cold_start [--quick]`` prints one JSON line per program: the
default main job's round step (digits, MLP, FedAvg, 10 clients), every algorithm of
``fedjax-lite run --algorithm`` on that task, and W1's and W2's round steps, each
``trace_lower_sec`` (Python tracing to StableHLO) and ``compile_sec`` (XLA), with
``run_rounds``' own step and compiler options (``fl.hardware.jit``), and the same trace
compiled with XLA's default options (``compile_sec_xla_defaults``) for comparison. JAX's persistent
cache is not used (a compiled program is never read back), so these are what a first
run on a fresh machine waits for.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np


def step_seconds(algo, population, cohort_size: int, params) -> dict[str, float]:
  """Tracing and compiling ``run_rounds``' step of ``algo`` (a fixed-size sampler).

  Compiled twice from the same trace: with fedjax_lite's compiler options
  (``compile_sec``) and with XLA's defaults (``compile_sec_xla_defaults``).
  """
  import fedjax_lite as fl
  from fedjax_lite import training

  state = algo.init(params, num_clients=population.num_clients)
  step = training._round_step(algo, fl.fixed_size_sampler(population.num_clients, cohort_size))
  t = time.perf_counter()
  lowered = step.lower(state, jax.device_put(population), jax.random.key(0), np.int32(0))
  traced = time.perf_counter() - t
  t = time.perf_counter()
  lowered.compile()
  ours = time.perf_counter() - t
  t = time.perf_counter()
  lowered.compile(compiler_options={"xla_backend_optimization_level": 2}
                  if jax.default_backend() == "cpu" else None)
  return {"trace_lower_sec": traced, "compile_sec": ours,
          "compile_sec_xla_defaults": time.perf_counter() - t}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--quick", action="store_true", help="the default job and FedAvg only")
  args = p.parse_args(argv)
  cached = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    _measure(args)
  finally:
    jax.config.update("jax_enable_compilation_cache", cached)
  return 0


def _measure(args) -> None:
  from benchmarks import common, w1, w2
  from fedjax_lite import presets
  from fedjax_lite.experiment import build, config

  base = config.resolve_config(None, {"progress": False, "compile_cache": False})
  task = build.build_task(base)
  names = ["fedavg"] if args.quick else [a for a in presets.ALGORITHMS
                                         if a not in presets.ASYNC_ALGORITHMS]
  for name in names:
    c = config.resolve_config(None, {"progress": False, "algorithm": name})
    algo = build._algorithm(c, task, None)
    common.emit({"benchmark": "cold_start", "program": "default job" if name == "fedavg"
                 else f"--algorithm {name}", "algorithm": name,
                 **step_seconds(algo, task.dataset.train, c["clients_per_round"], task.params)})
  if not args.quick:
    for workload, module, defaults in (("w1", w1, w1.W1_DEFAULTS), ("w2", w2, w2.W2_DEFAULTS)):
      wargs = argparse.Namespace(**defaults, seed=0, devices=None)
      setup = module.build(wargs)
      import fedjax_lite as fl
      algo = fl.build_federated_algorithm(setup["update"], fl.server.fedavg())
      common.emit({"benchmark": "cold_start", "program": f"{workload} round",
                   **step_seconds(algo, setup["population"], wargs.clients_per_round,
                                  setup["params"])})


if __name__ == "__main__":
  raise SystemExit(main())
