"""The ``fedjax-lite`` command line.

``fedjax-lite run`` trains a federated model on real data with evaluation,
checkpoints and plots (see :mod:`fedjax_lite.experiment`); with ``--sweep
KEY=VALUES`` it runs many such experiments as one vectorized program; with
``--devices N`` it shards the clients over devices, and with ``--coordinator
HOST:PORT --num-processes N --process-id I`` over several processes;
``fedjax-lite privacy epsilon|noise`` answers privacy-accounting questions;
``fedjax-lite bench`` runs the benchmarks in ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedjax_lite import experiment, presets
from fedjax_lite.checkpoint import CheckpointError

# (flag, type, help); every flag defaults to None so a --config file's value
# is only overridden by flags actually given.
_OPTIONS = [
    ("--dataset", str, f"one of {', '.join(experiment.DATASETS)}"),
    ("--model", str, f"one of {', '.join(experiment.MODELS)}"),
    ("--algorithm", str, f"one of {', '.join(experiment.ALGORITHMS)} (the first five are "
     "FedAvg with that server optimizer)"),
    ("--server-optimizer", str, "server step of fedprox..qffl: fedavg (SGD at --server-lr, "
     "default 1), fedavgm, fedadam, fedyogi or fedadagrad"),
    *((f"--{h.key.replace('_', '-')}", h.kind, h.help) for h in presets.HYPERPARAMETERS.values()),
    ("--local-work", str, "local steps per client: full (every step of the epochs), "
     "fixed:S, sampled:MIN-MAX (uniform per client and round) or proportional:R (R steps per "
     "example)"),
    ("--stragglers", float, "fraction of clients per round that are stragglers (FedProx "
     "paper's setting: a random number of steps in [1, all])"),
    ("--straggler-mode", str, "drop (stragglers' updates are dropped, FedAvg) or partial "
     "(their partial work is aggregated, FedProx)"),
    ("--aggregator", str, "mean, median, trimmed_mean or krum (robust ones are not for --dp)"),
    ("--trim-beta", float, "trimmed mean: fraction trimmed at each end"),
    ("--num-byzantine", int, "Krum: assumed number of Byzantine clients f"),
    ("--multi-krum", int, "Krum: average the m best-scored clients (Multi-Krum; 1 = Krum)"),
    ("--norm-bound", float, "clip every client update to this L2 norm before aggregating"),
    ("--quantize-bits", int, "stochastic uniform quantization of updates to this many bits"),
    ("--topk-fraction", float, "top-k sparsification with error feedback: fraction of "
     "coordinates sent"),
    ("--attack", str, "simulate malicious clients: none, sign_flip, gaussian or scaled"),
    ("--attack-fraction", float, "fraction of clients that are malicious (a fixed set)"),
    ("--attack-scale", float, "sign_flip/scaled: factor; gaussian: noise std"),
    ("--attack-seed", int, "seed choosing the malicious clients"),
    ("--fine-tune-epochs", int, "also evaluate after this many local epochs of fine-tuning "
     "on each client's train split (0: off)"),
    ("--rounds", int, "total rounds"),
    ("--clients-per-round", int, "cohort size"),
    ("--local-epochs", int, "local epochs per round"),
    ("--batch-size", int, "local batch size"),
    ("--client-lr", float, "client SGD learning rate"),
    ("--server-lr", float, "server learning rate (default: the algorithm's preset)"),
    ("--seed", int, "seed of model init and client sampling (and of the data unless "
     "--data-seed)"),
    ("--data-seed", int, "seed of the data partition/generation (default: --seed; in a sweep, "
     "the base --seed for every experiment)"),
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
    ("--chunk-size", experiment.chunk_size_arg,
     "clients per vmapped chunk, or auto (sized from the model and data)"),
    ("--dp", str, "differential privacy: none, gaussian or laplace"),
    ("--clip", float, "clip norm C (L2 for gaussian, L1 for laplace; initial C if adaptive)"),
    ("--noise-multiplier", float, "noise std (gaussian) or scale (laplace) over sensitivity"),
    ("--target-epsilon", float, "calibrate the noise multiplier to reach this epsilon"),
    ("--delta", float, "delta of the (epsilon, delta) guarantee"),
    ("--sampling", str, "client sampling: fixed (size) or poisson (rate K/N)"),
    ("--accountant", str, "privacy accountant: rdp or pld"),
    ("--target-quantile", float, "adaptive clipping's target quantile"),
    ("--devices", experiment.devices_arg,
     "shard the clients over N devices, or all (default: one device; all with --coordinator; "
     "on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N devices)"),
    ("--coordinator", str,
     "HOST:PORT of process 0 for a multi-process run (with --num-processes and --process-id), "
     "or auto (SLURM, Open MPI, Cloud TPU: jax.distributed.initialize detects them)"),
    ("--num-processes", int, "processes of a multi-process run"),
    ("--process-id", int, "this process's index, 0..N-1; only process 0 writes --out and logs"),
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
  p.add_argument(
      "--sweep", action="append", default=None, metavar="KEY=VALUES",
      help="run one experiment per value, all as one vectorized program; VALUES is an "
      "inclusive integer range a..b (seed=0..15) or a comma list (client_lr=0.01,0.03,0.1); "
      "repeat the flag to sweep the Cartesian product of several keys (the last varying "
      f"fastest); sweepable: {', '.join(experiment.SWEEPABLE)} (noise_multiplier and clip "
      "under --dp, not with --adaptive-clip). --out gets one subdirectory per experiment plus "
      "sweep.json and sweep.png; --resume needs the same --sweep. In a --config file: "
      'sweep = ["seed=0..15"] or sweep = {client_lr = [0.01, 0.1]}; --sweep flags replace it')
  p.add_argument("--resume", action="store_const", const=True, default=None,
                 help="continue the run in --out from its checkpoint")
  p.add_argument("--overwrite", action="store_const", const=True, default=None,
                 help="replace the outputs in a non-empty --out")
  p.add_argument("--eval-train", action="store_const", const=True, default=None,
                 help="also evaluate the global model on the training clients (train_eval_*)")
  p.add_argument("--adaptive-clip", action="store_const", const=True, default=None,
                 help="adaptive clipping (Andrew et al. 2021), gaussian only")
  p.add_argument("--local-dp", action="store_const", const=True, default=None,
                 help="noise each client's update (local DP) instead of the sum")
  p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                 help="progress bar (default: only when stderr is a terminal)")
  return p


def _privacy_parser(sub) -> None:
  p = sub.add_parser("privacy", help="epsilon for a noise multiplier, or the reverse")
  what = p.add_subparsers(dest="privacy_command", required=True)
  for name, help_ in (("epsilon", "epsilon spent by a DP run"),
                      ("noise", "noise multiplier needed for a target epsilon")):
    q = what.add_parser(name, help=help_)
    if name == "epsilon":
      q.add_argument("--noise-multiplier", type=float, required=True)
    else:
      q.add_argument("--target-epsilon", type=float, required=True)
    q.add_argument("--sampling-rate", type=float, required=True,
                   help="q: expected fraction of clients per round")
    q.add_argument("--rounds", type=int, required=True)
    q.add_argument("--delta", type=float, required=True)
    q.add_argument("--mechanism", choices=("gaussian", "laplace"), default="gaussian")
    q.add_argument("--sampling", choices=("poisson", "fixed"), default="poisson")
    q.add_argument("--accountant", choices=("rdp", "pld"), default="rdp")
    q.add_argument("--num-clients", type=int, default=None,
                   help="population size (needed for --sampling fixed)")


def cmd_privacy(args) -> int:
  import json

  from fedjax_lite import accounting

  if args.sampling == "fixed" and args.num_clients is None:
    raise ValueError("--sampling fixed needs --num-clients (the event names the population "
                     "and the cohort size).")
  n = args.num_clients or 1_000_000
  spec = accounting.DPSpec(args.mechanism, getattr(args, "noise_multiplier", None) or 1.0,
                           args.sampling, n, args.sampling_rate * n)
  inputs = {k: v for k, v in vars(args).items() if k not in ("command", "privacy_command")}
  if args.privacy_command == "epsilon":
    result = {"epsilon": accounting.epsilon(spec, args.rounds, args.delta, args.accountant)}
  else:
    result = {"noise_multiplier": accounting.calibrate_noise(
        spec, args.rounds, args.target_epsilon, args.delta, args.accountant)}
  print(json.dumps({**result, **inputs}))
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="fedjax-lite", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  _run_parser(sub)
  _privacy_parser(sub)
  sub.add_parser("bench", help="run benchmarks (see `fedjax-lite bench --help`)", add_help=False)
  args, rest = parser.parse_known_args(argv)
  if args.command == "bench":
    from benchmarks.__main__ import main as bench_main
    return bench_main(rest)
  if rest:
    parser.error(f"unrecognized arguments: {' '.join(rest)}")
  if args.command == "privacy":
    try:
      return cmd_privacy(args)
    except ValueError as e:
      print(f"fedjax-lite privacy: error: {experiment.flag_message(e)}", file=sys.stderr)
      return 2
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
