"""A/B: the vectorized W1/W2 round of two checkouts, timed alternately in one run.

    python -m benchmarks.ab --base /path/to/old/checkout [--workload w1 w2] [--trials 5]

Each trial starts one process per checkout (in alternating order), each with
its own ``fedjax_lite`` on ``PYTHONPATH``; a process builds the workload's
population and round through the public API only, as the README uses it
(``build_client_update``, ``build_federated_algorithm(update,
fl.server.fedavg())``, ``chunk_size`` left at its default), compiles it,
and times ``--rounds`` rounds after ``--warmup``. The parent prints one JSON
line per process and a summary per workload: each side's median seconds per
round, and ``new / base`` as the median over trials of the ratio within a
trial (below 1.05 is "within 5%"). Trials interleave the two sides (in
alternating order) so drift of this shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np, optax
import fedjax_lite as fl
workload, rounds, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if workload == "w1":
  population = fl.datasets.synthetic_classification(1000, 64, num_features=784, num_classes=10,
                                                    seed=0)
  model, dim, k, epochs, batch, lr = fl.models.MLP((200, 200), 10), 784, 100, 1, 16, 0.1
else:
  population = fl.datasets.leaf_synthetic(10000, 1.0, 1.0, examples_per_client=32,
                                          test_fraction=0.0, seed=0).train
  model, dim, k, epochs, batch, lr = fl.models.LogisticRegression(10), 60, 1000, 5, 8, 0.05
params = model.init(jax.random.key(0), jnp.zeros((1, dim)))
update = fl.build_client_update(fl.models.classification_loss(model.apply), optax.sgd(lr),
                                num_epochs=epochs, batch_size=batch)
algo = fl.build_federated_algorithm(update, fl.server.fedavg())
population = jax.device_put(population)
n = population.num_clients

@jax.jit
def step(state, population, r):
  sample_key, round_key = fl.round_keys(jax.random.key(0), r)
  cohort = fl.take(population, fl.sample_clients(sample_key, n, k))
  return algo.round(state, cohort, round_key)[0]

state = algo.init(params)
t = time.perf_counter()
state = jax.block_until_ready(step(state, population, np.int32(0)))
first = time.perf_counter() - t
times = []
for r in range(1, warmup + rounds + 1):
  t = time.perf_counter()
  state = jax.block_until_ready(step(state, population, np.int32(r)))
  if r > warmup:
    times.append(time.perf_counter() - t)
print(json.dumps({"first_round_sec": first, "times": times}))
"""


def run_child(checkout: Path, workload: str, rounds: int, warmup: int) -> dict:
  env = dict(os.environ, PYTHONPATH=str(checkout))
  out = subprocess.run([sys.executable, "-c", CHILD, workload, str(rounds), str(warmup)],
                       cwd=checkout, env=env, capture_output=True, text=True, timeout=1800)
  if out.returncode:
    raise SystemExit(f"{checkout}: the {workload} child failed:\n{out.stderr[-2000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--base", type=Path, required=True, help="the old checkout's root")
  p.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1],
                 help="the new checkout's root (default: this one)")
  p.add_argument("--workload", nargs="+", default=["w1", "w2"], choices=["w1", "w2"])
  p.add_argument("--trials", type=int, default=5)
  p.add_argument("--rounds", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  args = p.parse_args(argv)
  for workload in args.workload:
    medians: dict[str, list[float]] = {"base": [], "new": []}
    for trial in range(args.trials):
      order = ("base", "new") if trial % 2 == 0 else ("new", "base")
      for side in order:
        out = run_child(getattr(args, side), workload, args.rounds, args.warmup)
        medians[side].append(statistics.median(out["times"]))
        print(json.dumps({"workload": workload, "trial": trial, "side": side,
                          "first_round_sec": out["first_round_sec"],
                          "sec_per_round_median": medians[side][-1]}), flush=True)
    # The ratio within each trial (its two processes ran back to back), then the median
    # over trials: robust to the machine's load drifting between trials.
    ratios = [n / b for n, b in zip(medians["new"], medians["base"], strict=True)]
    ratio = statistics.median(ratios)
    print(json.dumps({"workload": workload, "summary": True,
                      "base_sec": statistics.median(medians["base"]),
                      "new_sec": statistics.median(medians["new"]), "trial_ratios": ratios,
                      "new_over_base": ratio, "within_5_percent": ratio <= 1.05}), flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
