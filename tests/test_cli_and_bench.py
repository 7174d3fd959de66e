"""The command line and the benchmark script, at small sizes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedjax_lite import cli


def test_run_writes_history_and_summary(tmp_path, capsys):
  rc = cli.main(["run", "--rounds", "4", "--num-clients", "40", "--clients-per-round", "8",
                 "--mean-examples", "10", "--features", "5", "--classes", "3", "--chunk-size",
                 "3", "--output", str(tmp_path), "--json"])
  assert rc == 0
  lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
  rounds = [x for x in lines if "round" in x]
  assert [r["round"] for r in rounds] == [0.0, 1.0, 2.0, 3.0]
  assert all(r["num_clients"] <= 8 and r["num_nonfinite_clients"] == 0 for r in rounds)
  summary = json.loads((tmp_path / "summary.json").read_text())
  history = json.loads((tmp_path / "history.json").read_text())
  assert summary["rounds"] == 4 and len(history) == 4
  assert 0.0 <= summary["final_accuracy"] <= 1.0
  assert summary == lines[-1]["summary"]


def test_run_rejects_unknown_arguments():
  with pytest.raises(SystemExit):
    cli.main(["run", "--no-such-flag"])
  with pytest.raises(SystemExit):
    cli.main(["run", "--server", "fedmagic"])


def test_client_sizes_are_ragged_with_empty_clients():
  sizes = cli.client_sizes(2000, 32, seed=0)
  assert sizes.min() == 0 and sizes.max() > 64 and 20 < sizes.mean() < 45


@pytest.mark.slow
def test_benchmark_quick_prints_json_and_checks_results():
  out = subprocess.run([sys.executable, "-m", "benchmarks", "--workload", "w2", "--quick"],
                       capture_output=True, text=True, timeout=600, check=True).stdout
  rows = [json.loads(x) for x in out.splitlines()]
  impls = {r["impl"]: r for r in rows if "impl" in r}
  assert set(impls) == {"loop", "loop_device", "vmap_all", "vmap_chunked"}
  for r in impls.values():
    for field in ("sec_per_round_median", "sec_per_round_min", "sec_per_round_max",
                  "compile_sec", "achieved_gflops", "peak_gflops", "peak_rss_mib",
                  "speedup_vs_baseline"):
      assert r[field] > 0, (r["impl"], field)
    assert r["sec_per_round_min"] <= r["sec_per_round_median"] <= r["sec_per_round_max"]
  assert impls["loop"]["speedup_vs_baseline"] == 1.0
  assert rows[-1] == {"workload": "w2", "check": "params_match_loop",
                      "impls": sorted(impls), "rounds": 2, "atol": 1e-5, "ok": True}
