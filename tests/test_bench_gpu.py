"""The accelerator suite (``make bench-gpu``), run at ``--quick`` sizes on this machine.

The suite's figures need a GPU; this smoke test checks that the one command
runs end to end anywhere, writes its three files, carries every section the
report promises, and that its results checks (fedjax_lite, and PyTorch where it
is installed, against a plain JAX loop in float32) pass.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("gpu")
  # --torch on runs the PyTorch rows on the CPU where PyTorch is installed.
  cmd = [sys.executable, "-m", "benchmarks", "--suite", "gpu", "--quick", "--report", str(out),
         "--torch", "on" if HAS_TORCH else "auto", "--no-torch-compile"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
  return proc, out, rows


@pytest.mark.slow
def test_quick_suite_runs_every_section_and_its_checks_pass(quick_run):
  proc, out, rows = quick_run
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not [r for r in rows if "error" in r]
  assert (out / "scaling.png").stat().st_size > 10_000
  sections = {r["section"] for r in rows}
  assert {"env", "peak", "w1", "w2", "w2_million", "check", "choice", "target"} <= sections

  env = next(r for r in rows if r["section"] == "env")
  for field in ("platform", "device", "jax", "jaxlib", "python", "torch"):
    assert field in env
  peaks = {r["kind"] for r in rows if r["section"] == "peak"}
  assert peaks == {"matmul_fp32", "matmul_tf32", "matmul_bf16", "copy"}

  def impls(section):
    return {(r["impl"], r["clients_per_round"]) for r in rows
            if r["section"] == section and "impl" in r}

  w1 = impls("w1")
  assert {("fedjax_lite", 4), ("fedjax_lite", 8), ("jax_loop", 4),
          ("fedjax_lite[grad_mode=per_example]", 8)} <= w1
  assert {("fedjax_lite", 16), ("fedjax_lite", 32), ("jax_loop", 16),
          ("fedjax_lite[grad_mode=batch]", 32)} <= impls("w2")
  assert impls("w2_million") == {("fedjax_lite", 16), ("fedjax_lite", 128)}
  timed = [r for r in rows if "sec_per_round_median" in r]
  for r in timed:
    assert r["sec_per_round_min"] <= r["sec_per_round_median"] <= r["sec_per_round_max"]
    assert r["clients_per_sec"] > 0 and r["compile_sec"] > 0
  for r in timed:
    if r["impl"].startswith("fedjax_lite"):
      # chunk_size="auto" on the CPU: the whole quick cohort fits one chunk.
      assert r["chunk_size"] == r["clients_per_round"] and r["num_chunks"] == 1

  checks = [r for r in rows if r["section"] == "check"]
  assert checks and all(r["ok"] for r in checks), checks
  assert {(r["workload"], r["precision"]) for r in checks if r["impl"] == "fedjax_lite"} == {
      ("w1", "float32"), ("w1", "default"), ("w2", "float32"), ("w2", "default")}
  # The accelerator targets are judged only on an accelerator at full size.
  assert next(r for r in rows if r["section"] == "target") == {
      "section": "target", "evaluated": False, "reason": "--quick sizes"}
  choices = {(r["choice"], r.get("workload")) for r in rows if r["section"] == "choice"}
  assert {("grad_mode", "w1"), ("grad_mode", "w2"), ("shuffle", None)} <= choices

  report = (out / "report.md").read_text()
  assert "`--quick` sizes" in report and env["device"] in report
  for heading in ("## The device", "## W1", "## W2", "## Results checks",
                  "population of 1,000,000"):
    assert heading in report

  torch_impls = {"torch_loop", "torch_vmap"}
  if HAS_TORCH:
    assert {(i, k) for i in torch_impls for k in (4, 8)} <= w1
    assert {r["impl"] for r in checks} >= torch_impls
  else:
    skipped = next(r for r in rows if r["section"] == "skipped")
    assert torch_impls <= set(skipped["impls"])
    assert skipped["reason"] == "PyTorch is not installed (pip install torch)"
    assert "Not run: torch_loop" in report and not {i for i, _ in w1} & torch_impls


def test_bad_arguments_get_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "benchmarks", "--suite", "gpu", "--quick",
                         "--torch", "maybe", "--report", str(tmp_path)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "--torch" in proc.stderr and "Traceback" not in proc.stderr
