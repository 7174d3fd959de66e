"""``python -m benchmarks.peers``: fedjax_lite and its peers on W1 and W2, side by side.

Every implementation runs in its own virtual environment under ``.peers/``
(``--install`` creates them from ``benchmarks/peers/requirements/*.txt``;
``make bench-peers`` does both), as a separate process on the same workload
file (:mod:`benchmarks.peers.workloads`). Before timing, each passes a
results check: two full-batch rounds of every client of a 16-client slice,
whose parameters must equal fedjax_lite's within :data:`CHECK_TOL`. Then, in
``--passes`` round-robin passes (the order rotates each pass), every case
runs every implementation once: warm-up rounds, then up to ``--rounds``
timed rounds within ``--budget-sec``. The machine's matmul peak is measured
before and after, its load average at every run.

Writes ``results.jsonl`` (every row, as it comes), ``table.md`` and
``peers.png`` to ``--out`` (default ``docs/benchmarks/peers``) and, with
``--readme``, the README's table between its ``peers:begin``/``peers:end``
markers. A peer whose environment is missing or fails is reported and
skipped. ``--smoke``: one tiny case, one pass, two rounds, for the tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).resolve().parent / "requirements"
CHECK_TOL = 1e-5  # max abs difference of any parameter after the check's two rounds

# name -> (environment, module, extra arguments). ``None``: fedjax_lite's own interpreter.
IMPLS: dict[str, tuple[str | None, str, list[str]]] = {
    "fedjax_lite": (None, "fedjax_lite_peer", []),
    "fedjax": ("fedjax", "fedjax_peer", []),
    "pfl_1proc": ("pfl", "pfl_peer", ["--procs", "1"]),
    "pfl_2proc": ("pfl", "pfl_peer", ["--procs", "2"]),
    "pytorch_loop": ("pytorch", "pytorch_peer", ["--impl", "loop"]),
    "torch_vmap": ("pytorch", "pytorch_peer", ["--impl", "vmap"]),
    "flower": ("flower", "flower_peer", []),
}
# Arguments that make a smoke run quick (its timings are not figures).
SMOKE_ARGS = {"torch_vmap": ["--no-compile"]}
# At most this many warm-up rounds: Flower compiles nothing, and its rounds take minutes at
# 1,000 clients; its first round already loads the workload in every actor.
MAX_WARMUP = {"flower": 1}
LABELS = {
    "fedjax_lite": "fedjax_lite (chunked vmap)",
    "fedjax": "FedJAX 0.0.17",
    "pfl_1proc": "pfl-research, 1 process",
    "pfl_2proc": "pfl-research, 2 processes",
    "pytorch_loop": "PyTorch loop",
    "torch_vmap": "torch.func.vmap + compile",
    "flower": "Flower simulation",
    "roofline": "fedjax_lite's matrix products alone (roofline)",
}
# Table rows: the roofline (measured in fedjax_lite's run) under fedjax_lite.
ROWS = ["fedjax_lite", "roofline", *list(IMPLS)[1:]]
CASES = {"w1-100": ("w1", 100), "w1-1000": ("w1", 1000), "w2-1000": ("w2", 1000)}


def python_of(env: str | None, venvs: Path) -> Path:
  return Path(sys.executable) if env is None else venvs / env / "bin" / "python"


def install(venvs: Path, envs: list[str]) -> dict[str, str]:
  """Creates each environment from its requirements file; returns ``{env: error}`` for failures."""
  failed = {}
  for env in envs:
    req = REQUIREMENTS / f"{env}.txt"
    py = python_of(env, venvs)
    print(f"[peers] installing {env} into {venvs / env} from {req.relative_to(ROOT)}",
          file=sys.stderr, flush=True)
    try:
      if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venvs / env)],
                       check=True, capture_output=True, text=True)
      subprocess.run([str(py), "-m", "pip", "install", "--quiet", "-r", str(req)], check=True,
                     capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
      lines = (e.stderr or e.stdout or "").strip().splitlines()
      failed[env] = lines[-1] if lines else str(e)
      print(f"[peers] {env}: install failed: {failed[env]}", file=sys.stderr, flush=True)
  return failed


def run_impl(name: str, venvs: Path, data: Path, args: list[str], timeout: float,
             smoke: bool = False) -> dict[str, Any]:
  """Runs one implementation's script; returns its ``done`` row or an ``error`` row.

  ``smoke`` adds the implementation's :data:`SMOKE_ARGS` (e.g. no ``torch.compile``).
  """
  env, module, extra = IMPLS[name]
  if smoke:
    extra = extra + SMOKE_ARGS.get(name, [])
  cmd = [str(python_of(env, venvs)), "-m", f"benchmarks.peers.{module}", "--data", str(data),
         *extra, *args]
  proc_env = dict(os.environ, PYTHONPATH=str(ROOT))
  load = os.getloadavg()[0]
  t = time.perf_counter()
  try:
    proc = subprocess.run(cmd, cwd=ROOT, env=proc_env, capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"event": "error", "impl": name, "error": f"timed out after {timeout:.0f} s"}
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  final = next((r for r in reversed(rows) if r.get("event") in ("done", "error")), None)
  if final is None:
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    final = {"event": "error", "error": f"exit {proc.returncode}: {tail}"}
  final = {**final, "impl": name, "wall_sec": time.perf_counter() - t, "load_1m": load}
  final["round_seconds"] = [r["seconds"] for r in rows
                            if r.get("event") == "round" and not r.get("warmup")]
  return final


def check_impl(name: str, venvs: Path, files: dict[str, Path], refs: dict[str, Any],
               tmp: Path, timeout: float, smoke: bool = False) -> dict[str, Any]:
  """The results check of one implementation on every workload's check file."""
  diffs, errors = {}, []
  for workload, data in files.items():
    out = tmp / f"check-{name}-{workload}.npz"
    row = run_impl(name, venvs, data, ["--check", str(out)], timeout, smoke)
    if row["event"] != "done" or not out.exists():
      errors.append(f"{workload}: {row.get('error', 'no parameters saved')}")
      continue
    with np.load(out) as got:
      diffs[workload] = max(float(np.max(np.abs(got[k] - v))) for k, v in refs[workload].items())
  passed = not errors and all(d <= CHECK_TOL for d in diffs.values())
  return {"event": "check", "impl": name, "max_abs_diff": diffs, "tolerance": CHECK_TOL,
          "passed": passed, "errors": errors}


def machine() -> dict[str, Any]:
  cpu = "unknown"
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip() or None
  return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
          "date": datetime.date.today().isoformat(), "commit": commit,
          "load_1m_before": os.getloadavg()[0]}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per case and implementation: the range of per-pass medians and the ratio to fedjax_lite.

  The ratio is the median over passes of (this pass's median / fedjax_lite's
  median in the same pass): both measured minutes apart, not days. The
  ``roofline`` row is fedjax_lite's ``gemm_sec`` (its round's matrix products
  alone, timed in the same process): its ratio is the fraction of the round
  they take.
  """
  timed = [r for r in rows if r.get("event") == "done" and "sec_per_round_median" in r]
  timed += [{**r, "impl": "roofline", "sec_per_round_median": r["gemm_sec"]}
            for r in timed if r["impl"] == "fedjax_lite" and r.get("gemm_sec")]
  errors = {(r["case"], r["impl"]): r["error"] for r in rows if r.get("event") == "error"}
  out = []
  for case in dict.fromkeys(r["case"] for r in rows if "case" in r):
    base = {r["pass"]: r["sec_per_round_median"] for r in timed
            if r["case"] == case and r["impl"] == "fedjax_lite"}
    for impl in ROWS:
      meds = {r["pass"]: r["sec_per_round_median"] for r in timed
              if r["case"] == case and r["impl"] == impl}
      if not meds:
        if (case, impl) in errors:
          out.append({"case": case, "impl": impl, "error": errors[(case, impl)]})
        continue
      ratios = [meds[p] / base[p] for p in meds if p in base]
      out.append({"case": case, "impl": impl, "sec_min": min(meds.values()),
                  "sec_max": max(meds.values()), "passes": len(meds),
                  "ratio": statistics.median(ratios) if ratios else None})
  return out


def table(summary: list[dict[str, Any]], checks: dict[str, dict], header: dict[str, Any],
          cases: dict[str, tuple[str, int]]) -> str:
  """The Markdown table: one row per implementation, one column per case."""
  by = {(s["case"], s["impl"]): s for s in summary}
  lines = ["| implementation | " + " | ".join(
      f"{w.upper()}, {k:,} clients/round" for w, k in cases.values()) + " | results check |",
           "|---|" + "---|" * len(cases) + "---|"]
  for impl in ROWS:
    if not any((c, impl) in by for c in cases) and impl not in checks:
      continue
    cells = []
    for c in cases:
      s = by.get((c, impl))
      if s is None:
        cells.append("-")
      elif "error" in s:
        cells.append("failed")
      else:
        rng = (f"{s['sec_min']:.3g}" if s["sec_min"] == s["sec_max"]
               else f"{s['sec_min']:.3g}-{s['sec_max']:.3g}")
        digits = 2 if impl == "roofline" else 1
        ratio = ("" if impl == "fedjax_lite" or s["ratio"] is None
                 else f" ({s['ratio']:.{digits}f}x)")
        cells.append(f"{rng} s{ratio}")
    chk = checks.get(impl)
    if chk is None:
      verdict = "-"
    elif chk["passed"]:
      verdict = "max diff " + f"{max(chk['max_abs_diff'].values()):.0e}"
    else:
      verdict = "FAILED: " + "; ".join(chk["errors"] or [str(chk["max_abs_diff"])])
    lines.append(f"| {LABELS[impl]} | " + " | ".join(cells) + f" | {verdict} |")
  note = (f"Seconds per round, range of the per-pass medians over {header['passes']} "
          f"round-robin passes; in brackets, the median over passes of the time relative to "
          f"fedjax_lite's in the same pass. {header['date']}, {header['cpus']}-core "
          f"{header['cpu']}, float32 matmul peak {header['peak_gflops_before']:.0f} GFLOP/s "
          f"before and {header['peak_gflops_after']:.0f} after, load average "
          f"{header['load_1m_before']:.1f} before the run; fedjax_lite at {header['commit']}. "
          f"Results check: parameters after two full-batch rounds of 16 clients, largest "
          f"absolute difference from fedjax_lite's (tolerance {CHECK_TOL:g}).")
  if any(s["impl"] == "roofline" for s in summary):
    note += (" The roofline row: fedjax_lite's round's matrix products alone, at its chunks' "
             "shapes, timed in the same process after its rounds (`benchmarks/roofline.py`); "
             "in brackets, the fraction of the round's time they take.")
  return "\n".join(lines) + "\n\n" + note + "\n"


def plot(summary: list[dict[str, Any]], path: Path, cases: dict[str, tuple[str, int]]) -> None:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return
  order = [LABELS[i] for i in ROWS]
  names = [n for n in order if any(LABELS[s["impl"]] == n and "sec_min" in s for s in summary)]
  fig, axes = plt.subplots(1, len(cases), figsize=(3.2 * len(cases) + 3.2, 0.42 * len(names) + 1.4),
                           sharey=True, squeeze=False)
  for ax, case in zip(axes[0], cases, strict=True):
    rows = {LABELS[s["impl"]]: s for s in summary if s["case"] == case and "sec_min" in s}
    for y, name in enumerate(names):
      s = rows.get(name)
      if s is None:
        continue
      color = {"fedjax_lite": "tab:blue", "roofline": "lightsteelblue"}.get(s["impl"], "tab:gray")
      ax.plot([s["sec_min"], s["sec_max"]], [y, y], color=color, linewidth=6,
              solid_capstyle="round")
      if s.get("ratio") is not None and s["impl"] != "fedjax_lite":
        r = s["ratio"]
        ax.annotate(f"{r:.2f}x" if r < 10 else f"{r:.0f}x", (s["sec_max"], y), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set_xscale("log")
    ax.margins(x=0.25)
    ax.grid(axis="x", alpha=0.3)
    wl, k = cases[case]
    ax.set_title(f"{wl.upper()}, {k:,} clients/round")
    ax.set_xlabel("seconds per round (log)")
  axes[0][0].invert_yaxis()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def update_readme(readme: Path, text: str, command: str) -> None:
  begin, end = "<!-- peers:begin -->", "<!-- peers:end -->"
  src = readme.read_text()
  if begin not in src or end not in src:
    raise SystemExit(f"--readme: {readme} has no {begin} ... {end} markers; add them where the "
                     "table belongs")
  head, rest = src.split(begin, 1)
  _, tail = rest.split(end, 1)
  readme.write_text(f"{head}{begin}\n{text}\nCommand: `{command}`.\n{end}{tail}")


def parse(argv) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--install", action="store_true",
                 help="create the peers' environments under --venvs first")
  p.add_argument("--venvs", default=str(ROOT / ".peers"))
  p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated, of: "
                 + ", ".join(IMPLS))
  p.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: "
                 + ", ".join(CASES))
  p.add_argument("--passes", type=int, default=3)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--rounds", type=int, default=10)
  p.add_argument("--budget-sec", type=float, default=15.0,
                 help="per implementation and pass: stop timing after this (>= 2 rounds)")
  p.add_argument("--timeout", type=float, default=900.0, help="per process, seconds")
  p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "peers"))
  p.add_argument("--readme", default=None, help="README to update between its markers")
  p.add_argument("--smoke", action="store_true",
                 help="a tiny W2 case, one pass of two rounds, installed peers only")
  args = p.parse_args(argv)
  for name in args.impls.split(","):
    if name not in IMPLS:
      p.error(f"--impls: unknown implementation {name!r}; choose from {', '.join(IMPLS)}")
  if not args.smoke:
    for c in args.cases.split(","):
      if c not in CASES:
        p.error(f"--cases: unknown case {c!r}; choose from {', '.join(CASES)}")
  if args.passes < 1 or args.rounds < 2 or args.warmup < 1:
    p.error("--passes must be >= 1, --rounds >= 2 and --warmup >= 1")
  return args


def main(argv=None) -> int:
  args = parse(argv)
  from benchmarks import common
  from benchmarks.peers import workloads

  venvs, out = Path(args.venvs), Path(args.out)
  impls = args.impls.split(",")
  envs = sorted({IMPLS[i][0] for i in impls} - {None})
  install_failed = install(venvs, envs) if args.install else {}
  rows: list[dict[str, Any]] = []
  out.mkdir(parents=True, exist_ok=True)
  results = (out / "results.jsonl").open("w")

  def record(row):
    rows.append(row)
    results.write(json.dumps(row) + "\n")
    results.flush()
    common.emit(row)

  available = []
  for name in impls:
    env = IMPLS[name][0]
    if env in install_failed:
      record({"event": "skipped", "impl": name, "reason": f"install failed: {install_failed[env]}"})
    elif not python_of(env, venvs).exists():
      record({"event": "skipped", "impl": name,
              "reason": f"no environment {venvs / env} (make bench-peers installs it)"})
    else:
      available.append(name)

  header = {"event": "machine", **machine(), "passes": 1 if args.smoke else args.passes,
            "peak_gflops_before": common.matmul_peak_gflops()}
  record(header)
  with tempfile.TemporaryDirectory() as d:
    tmp = Path(d)
    checked = ("w2",) if args.smoke else ("w1", "w2")
    checks_files = {w: tmp / f"{w}-check.npz" for w in checked}
    refs = {}
    for w, f in checks_files.items():
      workloads.write(f, w, 0, check=True)
      refs[w] = {k: v for i, (kern, b) in enumerate(workloads.reference(f))
                 for k, v in ((f"kernel_{i}", kern), (f"bias_{i}", b))}
    checks = {}
    for name in available:
      checks[name] = check_impl(name, venvs, checks_files, refs, tmp, args.timeout, args.smoke)
      record(checks[name])
    if args.smoke:
      cases = {"smoke": ("w2", 20)}
      workloads.write(tmp / "smoke.npz", "w2", 20, num_clients=100)
      files = {"smoke": tmp / "smoke.npz"}
      passes, timing = 1, ["--rounds", "2", "--budget-sec", "0"]
      args.warmup = 1
    else:
      cases = {c: CASES[c] for c in args.cases.split(",")}
      files = {}
      for c, (w, k) in cases.items():
        files[c] = tmp / f"{c}.npz"
        workloads.write(files[c], w, k)
      passes = args.passes
      timing = ["--rounds", str(args.rounds), "--budget-sec", str(args.budget_sec)]
    record({"event": "cases", "cases": cases})
    for p in range(passes):
      order = available[p % len(available):] + available[:p % len(available)] if available else []
      for case in cases:
        for name in order:
          warm = ["--warmup", str(min(args.warmup, MAX_WARMUP.get(name, args.warmup)))]
          row = run_impl(name, venvs, files[case], timing + warm, args.timeout, args.smoke)
          record({**row, "case": case, "pass": p})
  record({"event": "machine_after", "peak_gflops_after": common.matmul_peak_gflops(),
          "load_1m_after": os.getloadavg()[0]})
  summary = summarize(rows)
  for s in summary:
    record({"event": "summary", **s})
  results.close()
  text = render(rows)
  command = " ".join(["python -m benchmarks.peers"] + list(argv if argv is not None
                                                            else sys.argv[1:]))
  (out / "table.md").write_text("# fedjax_lite and its peers, side by side\n\n" + text
                                + f"\nCommand: `{command}` (`make bench-peers`).\n")
  plot(summary, out / "peers.png", cases)
  if args.readme:
    update_readme(Path(args.readme), text, "make bench-peers")
  failed = [c["impl"] for c in checks.values() if not c["passed"]]
  if failed:
    print(f"[peers] results check failed for: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


def render(rows: list[dict[str, Any]]) -> str:
  """The table and its note from a run's rows (``results.jsonl``), as the README shows it."""
  header = next(r for r in rows if r["event"] == "machine")
  header = {**header, **next(r for r in rows if r["event"] == "machine_after")}
  cases = {k: tuple(v) for k, v in next(r for r in rows if r["event"] == "cases")["cases"].items()}
  checks = {r["impl"]: r for r in rows if r["event"] == "check"}
  skipped = [f"{LABELS[r['impl']]} ({r['reason']})" for r in rows if r["event"] == "skipped"]
  return table(summarize(rows), checks, header, cases) + (
      "\nNot run: " + "; ".join(skipped) + ".\n" if skipped else "")


if __name__ == "__main__":
  raise SystemExit(main())
