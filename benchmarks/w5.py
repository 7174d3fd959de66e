"""W5: many simulations as one vectorized program.

The W2 workload (LEAF Synthetic(1, 1), 1000 of 10,000 clients per round,
logistic regression) run for ``S`` seeds: ``fedjax_lite.run_sweep`` steps all
``S`` together with ``vmap`` over an experiment axis, against ``S`` runs one
after the other with the same vectorized round. Prints one JSON line per
implementation with seconds per round of all ``S`` simulations and the
speedup of the sweep; a results check compares the sweep with the sequential
runs (1e-4).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import fedjax_lite as fl
from benchmarks import common, w2

# The sweep and the sequential runs use different chunk sizes, so their sums
# run in different orders; after 4 rounds of 20 local steps float32 rounding
# differs by up to ~3e-5 (measured), still far below a wrong seed or key.
CHECK_TOL = 1e-4


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--experiments", type=int, default=16)
  p.add_argument("--rounds", type=int, default=3, help="timed rounds")
  p.add_argument("--chunk-size", type=w2.chunk_size_arg, default="auto",
                 help="clients per chunk of each sequential run")
  p.add_argument("--sweep-chunk-size", type=w2.chunk_size_arg, default=64,
                 help="clients per chunk of each experiment in the sweep (S of them run at "
                 "once, so the best is about the sequential chunk over S; 64 measured best "
                 "here against 32, 128 and 500)")
  p.add_argument("--quick", action="store_true")
  args = p.parse_args(argv)
  shape = dict(w2.W2_DEFAULTS, seed=0)
  if args.quick:
    shape.update(population=500, clients_per_round=50)
    args.experiments, args.rounds, args.sweep_chunk_size = 4, 2, 16
  ns = argparse.Namespace(**shape)
  setup = w2.build(ns)
  make_with = lambda chunk: lambda h: fl.build_federated_algorithm(
      setup["update"], fl.server.fedavg(), chunk_size=chunk)
  keys = jax.vmap(jax.random.key)(np.arange(args.experiments))
  total = args.rounds + 1  # the first round includes compilation

  states, sweep_hist = fl.run_sweep(make_with(args.sweep_chunk_size), None, setup["params"],
                                    setup["population"], num_rounds=total, keys=keys,
                                    cohort_size=ns.clients_per_round)
  sweep_compile = float(sweep_hist[0]["seconds"])
  sweep_sec = sum(float(h["seconds"]) for h in sweep_hist[1:]) / args.rounds

  algo = make_with(args.chunk_size)(None)
  algo = algo._replace(round=jax.jit(algo.round))
  finals, steady, first = [], 0.0, None
  for s in range(args.experiments):
    state, hist = fl.run_rounds(algo, algo.init(setup["params"]), setup["population"],
                                num_rounds=total, cohort_size=ns.clients_per_round,
                                key=jax.random.key(s), progress=False)
    first = hist[0]["seconds"] if first is None else first
    steady += sum(h["seconds"] for h in hist[1:])  # each run's first round may compile
    finals.append(state)
  sequential_sec = steady / args.rounds
  peak = common.matmul_peak_gflops()
  for impl, sec, compile_sec in (("sequential", sequential_sec, first),
                                 ("run_sweep", sweep_sec, sweep_compile)):
    common.emit({"workload": "w5", "impl": impl, "experiments": args.experiments,
                 "clients_per_round": ns.clients_per_round,
                 "chunk_size": args.sweep_chunk_size if impl == "run_sweep" else args.chunk_size,
                 "sec_per_round_all_experiments": sec, "compile_sec": compile_sec,
                 "peak_gflops": peak, "peak_rss_mib": common.peak_rss_mib(),
                 "speedup_vs_sequential": sequential_sec / sec})
  for s, ref in enumerate(finals):
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x, s=s: x[s], states.params)),
                    jax.tree.leaves(ref.params), strict=True):
      np.testing.assert_allclose(a, b, atol=CHECK_TOL, rtol=CHECK_TOL)
  common.emit({"workload": "w5", "check": "sweep_matches_sequential", "ok": True,
               "atol": CHECK_TOL,
               "experiments": args.experiments})
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
