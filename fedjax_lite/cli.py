"""The ``fedjax-lite`` command line: ``run`` an experiment, or answer ``privacy`` questions.

Results go to stdout, progress and logs to stderr. Every option of ``run`` is
declared once in :mod:`fedjax_lite.experiment.options`; the flags, their
groups and their help text are generated from there, and reading them
imports no JAX (``--help`` and ``--version`` answer at once).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from fedjax_lite.experiment import options, schema

_DESCRIPTION = """\
Vectorized federated learning simulation in JAX.

  fedjax-lite run        train a federated model on real data: evaluation,
                         checkpoints, resume, sweeps, differential privacy
  fedjax-lite privacy    the epsilon a DP run spends, or the noise it needs

Run `fedjax-lite run --help` for the options of a run.
"""

_RUN_EPILOG = """\
examples:
  fedjax-lite run                                    digits, MLP, FedAvg (defaults above)
  fedjax-lite run --rounds 20 --json > summary.json  the summary as JSON on stdout
  fedjax-lite run --algorithm fedprox --mu 0.1 --stragglers 0.5 --straggler-mode partial
  fedjax-lite run --dp gaussian --noise-multiplier 1.0 --sampling poisson --accountant pld
  fedjax-lite run --sweep seed=0..7 --sweep client_lr=0.01,0.1
  fedjax-lite run --config run.toml --out runs/a      a TOML file of options (flat keys or
                                                     [data], [training], ... tables)
  fedjax-lite run --out runs/a --resume               continue a run from its checkpoint

Every option is also a TOML key (--clients-per-round is clients_per_round). Results go
to stdout; progress and logs to stderr.
"""

class _Parser(argparse.ArgumentParser):
  """Bad arguments end with one line naming the argument (and where to look), no usage dump."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_GROUPS = {
    "data": "data", "model": "model", "training": "training", "algorithm": "algorithm",
    "aggregation": "aggregation (robust, compressed)", "attack": "attack simulation",
    "privacy": "differential privacy", "secagg": "secure aggregation",
    "timing": "virtual time and asynchrony",
    "evaluation": "evaluation", "output": "output",
    "runtime": "scale-out (devices and processes)", "sweep": "sweep",
}


def _help(key: str, opt: schema.Opt) -> str:
  parts = [opt.help]
  domain = opt.domain()
  if opt.choices is not None:
    parts.append("one of " + ", ".join(opt.choices))
  elif domain:
    parts.append(domain.removeprefix("in "))
  default = options.DEFAULTS[key]
  if default is not None and opt.kind != "sweep" and default is not False:
    parts.append(f"default {default}")
  return "; ".join(parts)


def _add_option(group, key: str, opt: schema.Opt) -> None:
  flag = "--" + key.replace("_", "-")
  kwargs: dict[str, Any] = {"default": None, "help": _help(key, opt), "dest": key}
  if opt.kind is bool:
    kwargs["action"] = argparse.BooleanOptionalAction
  elif opt.kind == "sweep":
    kwargs.update(action="append", metavar="KEY=VALUES", help=(
        "one experiment per value, all as one vectorized program: an inclusive integer range "
        "(seed=0..15) or a comma list (client_lr=0.01,0.1); repeat for a product; sweepable: "
        "seed, client_lr, server_lr, and under --dp noise_multiplier, clip"))
  else:
    kwargs["type"] = {int: int, float: float, str: str,
                      schema.INT_OR_AUTO: schema.int_or_word_arg("auto", flag),
                      schema.INT_OR_ALL: schema.int_or_word_arg("all", flag)}[opt.kind]
    kwargs["metavar"] = opt.metavar or ("NAME" if opt.choices else
                                        {int: "N", float: "X"}.get(opt.kind, "TEXT"))
  group.add_argument(flag, **kwargs)


def _run_parser(sub) -> argparse.ArgumentParser:
  p = sub.add_parser("run", help="train a federated model on real data",
                     usage="fedjax-lite run [--config FILE] [--json] [-q|-v] [options]",
                     description="Train a federated model on real data.", epilog=_RUN_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
  general = p.add_argument_group("general")
  general.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help="TOML file of options; flags override it")
  general.add_argument("--json", action="store_true",
                       help="print the summary as one JSON object on stdout")
  general.add_argument("-q", "--quiet", action="store_true",
                       help="no progress bar or log lines on stderr (errors still)")
  general.add_argument("-v", "--verbose", action="store_true",
                       help="also log every round's metrics on stderr")
  groups = {name: p.add_argument_group(title) for name, title in _GROUPS.items()}
  for key, (section, opt) in options.OPTIONS.items():
    _add_option(groups[section], key, opt)
  return p


def _privacy_parser(sub) -> None:
  p = sub.add_parser("privacy", help="epsilon for a noise multiplier, or the reverse",
                     description="Privacy accounting of a DP run, answered as JSON on stdout.")
  what = p.add_subparsers(dest="privacy_command", required=True, metavar="{epsilon,noise}")
  for name, help_ in (("epsilon", "epsilon spent by a DP run"),
                      ("noise", "noise multiplier needed for a target epsilon")):
    q = what.add_parser(name, help=help_, description=help_ + ".")
    if name == "epsilon":
      q.add_argument("--noise-multiplier", type=float, required=True)
    else:
      q.add_argument("--target-epsilon", type=float, required=True)
    q.add_argument("--sampling-rate", type=float, required=True,
                   help="q in (0, 1]: the expected fraction of clients per round")
    q.add_argument("--rounds", type=int, required=True, help="rounds run (>= 1)")
    q.add_argument("--delta", type=float, required=True, help="delta in (0, 1)")
    q.add_argument("--mechanism", choices=("gaussian", "laplace"), default="gaussian")
    q.add_argument("--sampling", choices=("poisson", "fixed"), default="poisson")
    q.add_argument("--accountant", choices=("rdp", "pld"), default="rdp")
    q.add_argument("--num-clients", type=int, default=None,
                   help="population size N (needed for --sampling fixed: the cohort is q N)")


def cmd_privacy(args) -> int:
  """``fedjax-lite privacy epsilon|noise``: one JSON object on stdout.

  Args:
    args: the parsed arguments.

  Returns:
    The exit status.

  Raises:
    ValueError: for an argument outside its domain, naming it.
  """
  from fedjax_lite import accounting  # noqa: PLC0415 - dp-accounting only when asked

  rate, rounds, n = args.sampling_rate, args.rounds, args.num_clients
  if not (isinstance(rate, float) and 0 < rate <= 1):
    raise ValueError(f"--sampling-rate must be in (0, 1]; got {rate!r}.")
  if rounds < 1:
    raise ValueError(f"--rounds must be >= 1; got {rounds}.")
  if n is not None and n < 1:
    raise ValueError(f"--num-clients must be >= 1; got {n}.")
  if args.sampling == "fixed":
    if n is None:
      raise ValueError("--sampling fixed needs --num-clients (the event names the population "
                       "and the cohort size q N).")
    cohort = rate * n
    if cohort != round(cohort):
      raise ValueError(f"--sampling fixed samples exactly q N clients; --sampling-rate {rate} "
                       f"x --num-clients {n} = {cohort:g} is not an integer.")
  elif n is not None:
    raise ValueError("--num-clients applies to --sampling fixed only (Poisson accounting "
                     "depends on the rate alone); drop it.")
  population = n if n is not None else 1_000_000
  noise = getattr(args, "noise_multiplier", None)
  if noise is not None and not noise > 0:
    raise ValueError(f"--noise-multiplier must be > 0; got {noise}.")
  spec = accounting.DPSpec(args.mechanism, noise if noise is not None else 1.0, args.sampling,
                           population, rate * population)
  inputs = {k: v for k, v in vars(args).items() if k not in ("command", "privacy_command")}
  if args.privacy_command == "epsilon":
    result = {"epsilon": accounting.epsilon(spec, rounds, args.delta, args.accountant)}
  else:
    result = {"noise_multiplier": accounting.calibrate_noise(
        spec, rounds, args.target_epsilon, args.delta, args.accountant)}
  print(json.dumps({**result, **inputs}))
  return 0


def _version() -> str:
  try:
    from importlib.metadata import version  # noqa: PLC0415

    return version("fedjax-lite")
  except Exception:  # noqa: BLE001 - an uninstalled checkout
    import fedjax_lite  # noqa: PLC0415

    return fedjax_lite.__version__


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
  if as_json:
    print(json.dumps(summary, sort_keys=True))
    return
  for key, value in summary.items():
    if not isinstance(value, (dict, list)):
      print(f"{key}: {value}")


def main(argv=None) -> int:
  """The ``fedjax-lite`` entry point.

  Args:
    argv: the arguments (default: ``sys.argv[1:]``).

  Returns:
    The exit status: 0, 2 for bad input (one line on stderr), 130 after
    Ctrl-C and 143 after SIGTERM.
  """
  parser = _Parser(prog="fedjax-lite", description=_DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--version", action="version", version=f"fedjax-lite {_version()}")
  sub = parser.add_subparsers(dest="command", required=True, metavar="{run,privacy}",
                              parser_class=_Parser)
  _run_parser(sub)
  _privacy_parser(sub)
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(argv)
  if args.command == "privacy":
    try:
      return cmd_privacy(args)
    except ValueError as e:
      from fedjax_lite.experiment.config import flag_message  # noqa: PLC0415

      print(f"fedjax-lite privacy: error: {flag_message(e)}", file=sys.stderr)
      return 2
  return _cmd_run(args, argv)


def _cmd_run(args, argv: list[str]) -> int:
  from fedjax_lite import experiment  # noqa: PLC0415 - JAX only once a run starts
  from fedjax_lite.checkpoint import CheckpointError  # noqa: PLC0415

  overrides = {k: v for k, v in vars(args).items()
               if k not in ("command", "config", "json", "quiet", "verbose")}
  if args.quiet and overrides.get("progress") is None:
    overrides["progress"] = False
  log = (lambda line: None) if args.quiet else None
  try:
    config = experiment.resolve_config(args.config, overrides)
    summary = experiment.run_experiment(config, log=log, verbose=args.verbose)
  except experiment.Interrupted as e:
    again = [a for a in argv if a not in ("--resume", "--overwrite")]
    if "--out" not in again and not any(a.startswith("--out=") for a in again):
      again += ["--out", str(e.out)]
    command = " ".join(shlex.quote(a) for a in ["fedjax-lite", *again, "--resume"])
    print(f"fedjax-lite run: {e}; its checkpoint is saved. Continue with: {command}",
          file=sys.stderr)
    return e.exit_status
  except KeyboardInterrupt:  # a second Ctrl-C: stop now
    print("fedjax-lite run: interrupted; the last checkpoint in --out is intact (resume with "
          "--resume).", file=sys.stderr)
    return 130
  except (experiment.ConfigError, CheckpointError, ValueError, OSError, ImportError) as e:
    # ImportError: an optional package the options need (its install command is named).
    print(f"fedjax-lite run: error: {experiment.flag_message(e)}", file=sys.stderr)
    return 2
  _print_summary(summary, args.json)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
