"""W4: the cost of differential privacy.

Times the vectorized round on a W2-shaped workload (1000 clients/round,
logistic regression) and a W1-shaped one (100 clients/round, the 784-200-200-10
"2NN" MLP) with the plain FedAvg mean, then with central DP: Gaussian (L2 clip,
Gaussian noise) and Laplace (L1 clip, Laplace noise). Client work, cohorts and
keys are identical; only the aggregator differs. The three are timed
round-robin (one round of each in turn). Prints one JSON line per
configuration with ``overhead_vs_no_dp`` (the DP round's median time over the
plain round's, measured in the same run).
"""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import optax

import fedjax_lite as fl
from benchmarks import common, w2

SHAPES = {
    # name: population, clients/round, examples, features, hidden, epochs, batch, lr, chunk
    "w2": dict(population=10_000, clients_per_round=1000, examples=32, features=60, hidden=(),
               epochs=5, batch_size=8, lr=0.05, chunk_size=500),
    "w1": dict(population=1000, clients_per_round=100, examples=64, features=784,
               hidden=(200, 200), epochs=1, batch_size=16, lr=0.1, chunk_size=10),
}


def build(shape: dict, quick: bool) -> dict:
  if quick:
    shape = dict(shape, population=shape["population"] // 10,
                 clients_per_round=max(shape["clients_per_round"] // 10, 2))
  population = fl.datasets.synthetic_classification(
      shape["population"], shape["examples"], num_features=shape["features"], num_classes=10,
      seed=0)
  model = (fl.models.MLP(shape["hidden"], 10) if shape["hidden"]
           else fl.models.LogisticRegression(10))
  params = model.init(jax.random.key(0), jnp.zeros((1, shape["features"])))
  loss = fl.models.classification_loss(model.apply)
  update = fl.build_client_update(loss, optax.sgd(shape["lr"]), num_epochs=shape["epochs"],
                                  batch_size=shape["batch_size"])
  return shape, dict(population=population, params=params, loss=loss, update=update)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--shapes", default=None,
                 help="comma-separated: w2, w1 (default both; with --quick, w2)")
  p.add_argument("--rounds", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--noise-multiplier", type=float, default=1.0)
  p.add_argument("--clip", type=float, default=1.0)
  p.add_argument("--quick", action="store_true")
  args = p.parse_args(argv)
  if args.quick:
    args.rounds, args.warmup = 3, 1
  peak = common.matmul_peak_gflops()
  shapes = (args.shapes or ("w2" if args.quick else "w2,w1")).split(",")
  unknown = [s for s in shapes if s not in SHAPES]
  if unknown:
    p.error(f"--shapes: unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
  for name in shapes:
    shape, setup = build(SHAPES[name], args.quick)
    k = shape["clients_per_round"]
    aggregators = {
        "no_dp": None,
        "gaussian": fl.privacy.gaussian_aggregator(args.clip, args.noise_multiplier, k),
        "laplace": fl.privacy.laplace_aggregator(args.clip, args.noise_multiplier, k),
    }
    batch = jax.tree.map(lambda x: x[0, :shape["batch_size"]], setup["population"].arrays)
    per_example = lambda p, b: setup["loss"](p, b) * shape["batch_size"]
    flops = (common.flops_per_example_step(per_example, setup["params"], batch)
             * shape["batch_size"] * math.ceil(shape["examples"] / shape["batch_size"])
             * shape["epochs"] * k)
    ns = SimpleNamespace(seed=0, clients_per_round=k)
    runners = {impl: common.round_runner(*w2.vectorized_impl(setup, ns, shape["chunk_size"], agg),
                                         setup["params"])
               for impl, agg in aggregators.items()}
    timings = common.time_interleaved(runners, warmup=args.warmup, rounds=args.rounds)
    base = timings["no_dp"]["sec_per_round_median"]
    for impl, stats in timings.items():
      common.emit({
          "workload": "w4", "shape": name, "impl": impl, "clients_per_round": k,
          "chunk_size": shape["chunk_size"], **stats,
          "achieved_gflops": flops / stats["sec_per_round_median"] / 1e9, "peak_gflops": peak,
          "peak_rss_mib": common.peak_rss_mib(),
          "overhead_vs_no_dp": stats["sec_per_round_median"] / base,
      })
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
