"""Secure aggregation's cost on W2: the plain round against the secure round, same run.

``python -m benchmarks.secagg [--bits B] [--dropout P] [--quick]``

W2 (LEAF Synthetic(1, 1), 32 examples per client, logistic regression 60->10, 1000 of
10,000 clients per round, 5 local epochs of batch 8) with FedAvg. Timed round-robin
(``benchmarks.common.time_interleaved``), printed as JSON lines:

* ``plain``: the round with the example-weighted mean;
* ``secagg``: the same round through ``fl.secagg.secure_aggregator(bits=B)`` (encoding,
  SecAgg+ masks of ``2 ceil(log2 K)`` neighbours, modular sum, unmasking), with its ratio
  to ``plain`` (the target: at most 1.3);
* ``secagg_dropout``: the same with a fraction ``P`` of the clients dropping out after
  masking (the server recovers their pairs' masks).
"""

from __future__ import annotations

import argparse

from benchmarks import common, w2


def main(argv=None) -> int:
  import fedjax_lite as fl

  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--bits", type=int, default=16)
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--clip", type=float, default=100.0,
                 help="per-coordinate bound of a client's weighted message")
  p.add_argument("--rounds", type=int, default=10)
  p.add_argument("--quick", action="store_true")
  args = p.parse_args(argv)
  w2_args = argparse.Namespace(**w2.W2_DEFAULTS, seed=0, devices=None)
  if args.quick:
    w2_args.population, w2_args.clients_per_round, args.rounds = 200, 20, 2
  setup = w2.build(w2_args)
  aggregators = {
      "plain": None,
      "secagg": fl.secagg.secure_aggregator(bits=args.bits, clip=args.clip),
      "secagg_dropout": fl.secagg.secure_aggregator(bits=args.bits, clip=args.clip,
                                                    dropout=args.dropout),
  }
  runners = {name: common.round_runner(*w2.vectorized_impl(setup, w2_args, "auto", agg),
                                       setup["params"])
             for name, agg in aggregators.items()}
  timings = common.time_interleaved(runners, warmup=2, rounds=args.rounds)
  plain = timings["plain"]["sec_per_round_median"]
  for name, stats in timings.items():
    common.emit({"benchmark": "secagg", "impl": name, "bits": args.bits,
                 "dropout": args.dropout if name == "secagg_dropout" else 0.0,
                 "clients_per_round": w2_args.clients_per_round, **stats,
                 "over_plain": stats["sec_per_round_median"] / plain})
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
