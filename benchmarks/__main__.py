"""``python -m benchmarks --workload w1|w2|w3|w4|w5|w6 [options]``, ``--all --report DIR``,
or ``--suite gpu --report DIR`` (the accelerator suite, ``make bench-gpu``).

Run it from a checkout of the repository (``benchmarks`` is not installed with
the package). Each workload module
(``benchmarks/w1.py`` ...) has its own ``--help``; ``--quick`` runs small
sizes for a smoke test. Every workload prints one JSON line per configuration
(``--json`` is accepted and changes nothing).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

WORKLOADS = ("w1", "w2", "w3", "w4", "w5", "w6")


def _force_host_devices(n: int) -> None:
  """Asks XLA for ``n`` CPU devices (read when JAX first creates its CPU backend)."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(prog="benchmarks", description=__doc__, add_help=False)
  p.add_argument("--workload", default=None, help=f"one of {', '.join(WORKLOADS)}")
  p.add_argument("--all", action="store_true", help="run every workload")
  p.add_argument("--suite", choices=("gpu",), default=None,
                 help="gpu: the accelerator suite in one process (see benchmarks/gpu.py; "
                 "`--suite gpu --help` for its options)")
  p.add_argument("--report", type=Path, default=None, help="with --all: output directory")
  p.add_argument("--devices", type=int, default=None,
                 help="w1/w2: shard the vectorized round's clients over this many devices "
                 "(on a CPU, forced host devices; set before JAX starts its backend)")
  p.add_argument("--json", action="store_true",
                 help="JSON lines on stdout (always the format; accepted for scripts)")
  args, rest = p.parse_known_args(argv)
  if args.suite == "gpu":
    from benchmarks import gpu
    return gpu.main(rest + ([] if args.report is None else ["--report", str(args.report)]))
  if args.devices is not None:
    _force_host_devices(args.devices)
    rest += ["--devices", str(args.devices)]
  if args.all:
    if args.report is None:
      raise SystemExit("--all needs --report DIR (where results, tables and plots go)")
    from benchmarks import report
    report.run(args.report, quick="--quick" in rest)
    print(f"wrote {args.report}/results.jsonl, report.md, scaling.png, memory.png")
    return 0
  workload = (args.workload or "w2").lower()
  if workload not in WORKLOADS:
    raise SystemExit(f"unknown workload {workload!r}; available: {', '.join(WORKLOADS)}")
  return importlib.import_module(f"benchmarks.{workload}").main(rest)


if __name__ == "__main__":
  raise SystemExit(main())
