"""The ``fedjax-lite`` command line.

``fedjax-lite run`` trains a federated model on real data with evaluation,
checkpoints and plots (see :mod:`fedjax_lite.experiment`);
``fedjax-lite bench`` runs the benchmarks in ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedjax_lite import experiment
from fedjax_lite.checkpoint import CheckpointError

# (flag, type, help); every flag defaults to None so a --config file's value
# is only overridden by flags actually given.
_OPTIONS = [
    ("--dataset", str, f"one of {', '.join(experiment.DATASETS)}"),
    ("--model", str, f"one of {', '.join(experiment.MODELS)}"),
    ("--algorithm", str, f"server optimizer: {', '.join(experiment.ALGORITHMS)}"),
    ("--rounds", int, "total rounds"),
    ("--clients-per-round", int, "cohort size"),
    ("--local-epochs", int, "local epochs per round"),
    ("--batch-size", int, "local batch size"),
    ("--client-lr", float, "client SGD learning rate"),
    ("--server-lr", float, "server learning rate (default: the algorithm's preset)"),
    ("--seed", int, "seed of data partition, model init and client sampling"),
    ("--eval-every", int, "evaluate every N rounds (0: only at the end)"),
    ("--checkpoint-every", int, "checkpoint every N rounds (0: only at the end)"),
    ("--out", str, "output directory (default: runs/<dataset>-<algorithm>-<time>)"),
    ("--num-clients", int, "clients to partition image/synthetic data into"),
    ("--partition", str, f"one of {', '.join(experiment.PARTITIONS)}"),
    ("--alpha", float, "Dirichlet concentration for --partition dirichlet"),
    ("--shards-per-client", int, "shards per client for --partition shards"),
    ("--test-fraction", float, "per-client held-out fraction"),
    ("--synthetic-alpha", float, "LEAF Synthetic(alpha, beta): alpha"),
    ("--synthetic-beta", float, "LEAF Synthetic(alpha, beta): beta"),
    ("--data-dir", str, "directory of Fashion-MNIST IDX files"),
    ("--max-examples-per-client", int,
     "truncate clients to this many examples (Shakespeare: 64 snippets if unset)"),
    ("--hidden", int, "hidden width of mlp/2nn/char_lstm"),
    ("--chunk-size", int, "clients per vmapped chunk"),
]


def _run_parser(sub) -> argparse.ArgumentParser:
  p = sub.add_parser(
      "run", help="train a federated model on real data (defaults: "
      + ", ".join(f"{k}={v}" for k, v in experiment.DEFAULTS.items() if v is not None) + ")")
  for flag, typ, help_ in _OPTIONS:
    key = flag[2:].replace("-", "_")
    p.add_argument(flag, type=typ, default=None,
                   help=f"{help_} [default: {experiment.DEFAULTS[key]}]")
  p.add_argument("--config", type=Path, default=None,
                 help="TOML file whose keys mirror these options; flags override it")
  p.add_argument("--resume", action="store_const", const=True, default=None,
                 help="continue the run in --out from its checkpoint")
  p.add_argument("--overwrite", action="store_const", const=True, default=None,
                 help="replace the outputs in a non-empty --out")
  p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                 help="progress bar (default: only when stderr is a terminal)")
  return p


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="fedjax-lite", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  _run_parser(sub)
  sub.add_parser("bench", help="run benchmarks (see `fedjax-lite bench --help`)", add_help=False)
  args, rest = parser.parse_known_args(argv)
  if args.command == "bench":
    from benchmarks.__main__ import main as bench_main
    return bench_main(rest)
  if rest:
    parser.error(f"unrecognized arguments: {' '.join(rest)}")
  overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
  try:
    config = experiment.resolve_config(args.config, overrides)
    experiment.run_experiment(config)
  except (experiment.ConfigError, CheckpointError, FileNotFoundError, ImportError, ValueError,
          TypeError) as e:
    print(f"fedjax-lite run: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
