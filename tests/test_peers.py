"""The peer harness (``python -m benchmarks.peers``): its smoke run, its table and the README's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.peers import __main__ as peers
from benchmarks.peers import protocol

ROOT = Path(__file__).resolve().parents[1]


def _rows(times: dict[tuple[str, int], float]) -> list[dict]:
  rows = [{"event": "machine", "cpus": 2, "cpu": "cpu", "date": "2026-12-07", "commit": "abc",
           "load_1m_before": 0.5, "passes": 2, "peak_gflops_before": 200.0},
          {"event": "check", "impl": "fedjax_lite", "max_abs_diff": {"w1": 0.0},
           "passed": True, "errors": []},
          {"event": "check", "impl": "fedjax", "max_abs_diff": {"w1": 3e-8}, "passed": True,
           "errors": []},
          {"event": "skipped", "impl": "flower", "reason": "no environment"},
          {"event": "cases", "cases": {"w1-100": ["w1", 100]}}]
  for (impl, p), sec in times.items():
    rows.append({"event": "done", "impl": impl, "case": "w1-100", "pass": p,
                 "sec_per_round_median": sec})
    if impl == "fedjax_lite":
      rows[-1]["gemm_sec"] = 0.9 * sec
  rows.append({"event": "error", "impl": "pfl_2proc", "case": "w1-100", "pass": 0,
               "error": "boom"})
  rows.append({"event": "machine_after", "peak_gflops_after": 190.0, "load_1m_after": 1.0})
  return rows


def test_summary_ratio_is_the_median_of_same_pass_ratios():
  # Pass 0: 0.1 vs 0.3 (3x); pass 1: 0.2 vs 0.3 (1.5x): median 2.25, not 0.3 / 0.15.
  rows = _rows({("fedjax_lite", 0): 0.1, ("fedjax", 0): 0.3, ("fedjax_lite", 1): 0.2,
                ("fedjax", 1): 0.3})
  by = {s["impl"]: s for s in peers.summarize(rows)}
  assert by["fedjax"]["ratio"] == pytest.approx(2.25)
  assert (by["fedjax"]["sec_min"], by["fedjax"]["sec_max"]) == (0.3, 0.3)
  assert (by["fedjax_lite"]["sec_min"], by["fedjax_lite"]["sec_max"]) == (0.1, 0.2)
  assert by["pfl_2proc"] == {"case": "w1-100", "impl": "pfl_2proc", "error": "boom"}
  # The roofline row: fedjax_lite's products alone, as a fraction of its round in each pass.
  assert by["roofline"]["ratio"] == pytest.approx(0.9)
  assert by["roofline"]["sec_min"] == pytest.approx(0.09)
  text = peers.render(rows)
  assert "| fedjax_lite's matrix products alone (roofline) | 0.09-0.18 s (0.90x) | - |" in text
  assert "The roofline row:" in text
  assert "| FedJAX 0.0.17 | 0.3 s (2.2x) | max diff 3e-08 |" in text
  assert "| fedjax_lite (chunked vmap) | 0.1-0.2 s | max diff 0e+00 |" in text
  assert "| pfl-research, 2 processes | failed | - |" in text
  assert "Not run: Flower simulation (no environment)." in text


def test_readme_update_replaces_only_between_markers(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text("a\n<!-- peers:begin -->\nold\n<!-- peers:end -->\nb\n")
  peers.update_readme(readme, "new table\n", "make bench-peers")
  assert readme.read_text() == ("a\n<!-- peers:begin -->\nnew table\n\nCommand: "
                                "`make bench-peers`.\n<!-- peers:end -->\nb\n")
  readme.write_text("no markers\n")
  with pytest.raises(SystemExit, match="markers"):
    peers.update_readme(readme, "t", "c")


def test_committed_readme_table_is_the_committed_runs():
  """The README's peer table is what ``make bench-peers`` renders from its results.jsonl."""
  rows = [json.loads(x) for x in
          (ROOT / "docs/benchmarks/peers/results.jsonl").read_text().splitlines()]
  readme = (ROOT / "README.md").read_text()
  block = readme.split("<!-- peers:begin -->\n", 1)[1].split("<!-- peers:end -->", 1)[0]
  assert block == peers.render(rows) + "\nCommand: `make bench-peers`.\n"
  assert all(r["passed"] for r in rows if r["event"] == "check")


def test_protocol_round_trips_a_workload_file(tmp_path):
  from benchmarks.peers import workloads
  settings = workloads.write(tmp_path / "w.npz", "w2", 5, num_clients=7)
  data = protocol.load(str(tmp_path / "w.npz"))
  assert (data["num_clients"], data["examples"], data["clients_per_round"]) == (7, 32, 5)
  assert [k.shape for k, _ in data["layers"]] == [(60, 10)]
  assert settings["epochs"] == data["epochs"] == 5 and data["lr"] == pytest.approx(0.05)
  ids = protocol.cohort(np.random.default_rng(0), 7, 5)
  assert len(set(ids.tolist())) == 5 and ids.max() < 7


@pytest.mark.slow
def test_smoke_run_checks_and_times_every_installed_implementation(tmp_path):
  """fedjax_lite always; a peer only where its environment is installed (never in CI)."""
  venvs = ROOT / ".peers"
  out = tmp_path / "out"
  subprocess.run([sys.executable, "-m", "benchmarks.peers", "--smoke", "--out", str(out),
                  "--venvs", str(venvs)], cwd=ROOT, check=True, capture_output=True, text=True,
                 timeout=900)
  rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
  installed = [name for name, (env, _, _) in peers.IMPLS.items()
               if env is None or (venvs / env / "bin" / "python").exists()]
  checks = {r["impl"]: r for r in rows if r["event"] == "check"}
  assert set(checks) == set(installed) and all(c["passed"] for c in checks.values())
  assert checks["fedjax_lite"]["max_abs_diff"] == {"w2": 0.0}
  timed = {r["impl"]: r for r in rows if r["event"] == "done"}
  assert set(timed) == set(installed)
  assert all(r["sec_per_round_median"] > 0 and r["rounds_timed"] == 2 for r in timed.values())
  assert timed["fedjax_lite"]["gemm_sec"] > 0  # the roofline, in the same run
  skipped = {r["impl"] for r in rows if r["event"] == "skipped"}
  assert skipped == set(peers.IMPLS) - set(installed)
  assert "fedjax_lite (chunked vmap)" in (out / "table.md").read_text()
  assert (out / "peers.png").read_bytes()[:4] == b"\x89PNG"
