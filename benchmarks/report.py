"""``python -m benchmarks --all --report DIR [--quick]``: every workload, one report.

Runs W1-W5 (each ``python -m benchmarks --workload wX`` in its own process)
and writes to ``DIR``:

* ``results.jsonl``: every JSON line the workloads printed;
* ``report.md``: one Markdown table per workload;
* ``scaling.png``: W3 seconds per round and per client against clients per
  round (log-log);
* ``memory.png``: W3 peak resident memory against clients per round, with the
  population's data size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WORKLOADS = ("w1", "w2", "w3", "w4", "w5")
COLUMNS = {
    "w1": ("impl", "clients_per_round", "sec_per_round_median", "speedup_vs_baseline",
           "achieved_gflops", "peak_gflops", "fraction_of_gemm_bound", "compile_sec"),
    "w2": ("impl", "clients_per_round", "sec_per_round_median", "speedup_vs_baseline",
           "achieved_gflops", "peak_gflops", "fraction_of_gemm_bound", "compile_sec"),
    "w3": ("clients_per_round", "sec_per_round_median", "sec_per_client", "peak_rss_mib",
           "population_data_mib", "compile_sec"),
    "w4": ("shape", "impl", "sec_per_round_median", "overhead_vs_no_dp", "compile_sec"),
    "w5": ("impl", "experiments", "sec_per_round_all_experiments", "speedup_vs_sequential",
           "compile_sec"),
}


def run(out: Path, quick: bool) -> list[dict]:
  out.mkdir(parents=True, exist_ok=True)
  rows = []
  with open(out / "results.jsonl", "w") as f:
    for w in WORKLOADS:
      cmd = [sys.executable, "-m", "benchmarks", "--workload", w] + (["--quick"] if quick else [])
      lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
      for line in lines.splitlines():
        row = json.loads(line)
        row.setdefault("workload", w)
        rows.append(row)
        f.write(json.dumps(row) + "\n")
  write_markdown(rows, out / "report.md", quick)
  plot_scaling(rows, out)
  return rows


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return "" if v is None else str(v)


def write_markdown(rows: list[dict], path: Path, quick: bool) -> None:
  lines = ["# fedjax_lite benchmark report", "",
           "Ratios are measured within one run on the same machine. "
           + ("(`--quick` sizes: smoke test only, not the workloads' figures.)" if quick else ""),
           ""]
  for w in WORKLOADS:
    data = [r for r in rows if r.get("workload") == w and "check" not in r]
    checks = [r for r in rows if r.get("workload") == w and "check" in r]
    lines += [f"## {w.upper()}", "", "| " + " | ".join(COLUMNS[w]) + " |",
              "|" + "---|" * len(COLUMNS[w])]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS[w]) + " |" for r in data]
    lines += [""] + [f"Check `{c['check']}`: {'passed' if c.get('ok') else 'FAILED'}."
                     for c in checks] + [""]
  path.write_text("\n".join(lines))


def plot_scaling(rows: list[dict], out: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  w3 = sorted((r for r in rows if r.get("workload") == "w3"), key=lambda r: r["clients_per_round"])
  k = [r["clients_per_round"] for r in w3]
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
  a.loglog(k, [r["sec_per_round_median"] for r in w3], "o-")
  a.set(xlabel="clients per round", ylabel="seconds per round", title="W3: time per round")
  b.loglog(k, [1e6 * r["sec_per_client"] for r in w3], "o-")
  b.set(xlabel="clients per round", ylabel="µs per client", title="W3: time per client")
  fig.tight_layout()
  fig.savefig(out / "scaling.png", dpi=100)
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(5, 4))
  ax.semilogx(k, [r["peak_rss_mib"] for r in w3], "o-", label="peak RSS")
  ax.semilogx(k, [r["population_data_mib"] for r in w3], "s--", label="population data")
  ax.set(xlabel="clients per round", ylabel="MiB", title="W3: memory")
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / "memory.png", dpi=100)
  plt.close(fig)
