"""``python -m benchmarks [--workload w2] [workload options]``."""

from __future__ import annotations

import sys

WORKLOADS = ("w1", "w2", "w3", "w4", "w5")


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  workload = "w2"
  if "--workload" in argv:
    i = argv.index("--workload")
    if i + 1 >= len(argv):
      raise SystemExit("--workload needs a value: one of " + ", ".join(WORKLOADS))
    workload = argv[i + 1].lower()
    del argv[i:i + 2]
  if workload not in WORKLOADS:
    raise SystemExit(f"unknown workload {workload!r}; available: {', '.join(WORKLOADS)}")
  if workload == "w1":
    from benchmarks import w1
    return w1.main(argv)
  if workload == "w3":
    from benchmarks import w3
    return w3.main(argv)
  if workload == "w5":
    from benchmarks import w5
    return w5.main(argv)
  if workload == "w4":
    from benchmarks import w4
    return w4.main(argv)
  from benchmarks import w2
  return w2.main(argv)


if __name__ == "__main__":
  raise SystemExit(main())
