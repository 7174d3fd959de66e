"""W3: scale sweep over the cohort size.

The W2 model and clients (LEAF Synthetic(1, 1), 32 examples each, logistic
regression, 5 local epochs of batch 8) with 100, 1k, 10k and 100k clients per
round, drawn from a population of the largest cohort size. Each cohort size
runs in its own process so that its peak resident memory is its own; each
prints one JSON line with seconds per round and per client and the peak RSS,
next to the population's data size and the chunk's model-state size, the two
terms memory should be bounded by.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks import w2

SIZES = (100, 1_000, 10_000, 100_000)


def run_one(population: int, cohort: int, chunk, rounds: int | None) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import fedjax_lite as fl
  from benchmarks import common

  data = fl.datasets.leaf_synthetic(population, 1.0, 1.0, examples_per_client=32,
                                    test_fraction=0.0, seed=0).train
  model = fl.models.LogisticRegression(10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 60)))
  update = fl.build_client_update(fl.models.classification_loss(model.apply), optax.sgd(0.05),
                                  num_epochs=5, batch_size=8)
  if chunk == "auto":
    chunk = fl.hardware.auto_chunk_size(params, data)
  if rounds is None:  # small rounds are noisy just after compilation: time more of them
    rounds = 10 if cohort <= 10_000 else 3
  algo = fl.build_federated_algorithm(update, fl.server.fedavg(), chunk_size=chunk)
  rss_data = common.peak_rss_mib()
  _, hist = fl.run_rounds(algo, algo.init(params), data, num_rounds=rounds + 1,
                          cohort_size=cohort, key=jax.random.key(0), progress=False)
  times = [h["seconds"] for h in hist[1:]]
  data_mib = sum(np.asarray(x).nbytes for x in jax.tree.leaves(data)) / 2**20
  model_bytes = sum(x.size * 4 for x in jax.tree.leaves(params))
  return {
      "workload": "w3", "impl": "vmap_chunked", "clients_per_round": cohort,
      "population": population, "chunk_size": min(chunk, cohort),
      "sec_per_round_median": float(np.median(times)), "sec_per_round_min": min(times),
      "sec_per_round_max": max(times), "rounds_timed": rounds,
      "compile_sec": hist[0]["seconds"],
      "sec_per_client": float(np.median(times)) / cohort,
      "peak_rss_mib": common.peak_rss_mib(), "rss_after_data_mib": rss_data,
      "population_data_mib": data_mib,
      "chunk_model_state_mib": min(chunk, cohort) * model_bytes * 3 / 2**20,
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--sizes", default=",".join(map(str, SIZES)))
  p.add_argument("--population", type=int, default=None,
                 help="population size (default: the largest cohort)")
  p.add_argument("--chunk-size", type=w2.chunk_size_arg, default="auto")
  p.add_argument("--rounds", type=int, default=None,
                 help="timed rounds (default: 10 up to 10k clients per round, else 3)")
  p.add_argument("--quick", action="store_true")
  p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  sizes = [int(s) for s in args.sizes.split(",")]
  if args.quick:
    sizes, args.rounds, args.chunk_size = [10, 100], 1, 50
  population = args.population or max(sizes)
  if args.one is not None:
    print(json.dumps(run_one(population, args.one, args.chunk_size, args.rounds)), flush=True)
    return 0
  for cohort in sizes:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.w3", "--one", str(cohort), "--population",
         str(population), "--chunk-size", str(args.chunk_size)]
        + ([] if args.rounds is None else ["--rounds", str(args.rounds)]),
        capture_output=True, text=True, check=True)
    print(out.stdout.strip().splitlines()[-1], flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
