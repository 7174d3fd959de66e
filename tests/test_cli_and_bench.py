"""The command line and the benchmark script, at small sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedjax_lite import cli


def test_cli_reports_config_errors(tmp_path, capsys):
  assert cli.main(["run", "--dataset", "mnist3d", "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert "unknown dataset 'mnist3d'" in err and "digits" in err and "shakespeare" in err
  with pytest.raises(SystemExit):
    cli.main(["run", "--no-such-flag"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  """``--all --quick --report DIR`` run once: (DIR, its JSON rows by workload).

  The per-workload tests below check that run's lines, so the suite runs every
  workload once (each workload's own ``--workload`` path is the same code).
  """
  out = tmp_path_factory.mktemp("report")
  subprocess.run([sys.executable, "-m", "benchmarks", "--all", "--report", str(out),
                  "--quick"], capture_output=True, text=True, timeout=900, check=True)
  rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
  by_workload: dict[str, list[dict]] = {}
  for r in rows:
    by_workload.setdefault(r["workload"], []).append(r)
  return out, by_workload


def check_round_rows(rows, workload, devices):
  impls = {r["impl"]: r for r in rows if "impl" in r}
  assert set(impls) == {"loop", "loop_device", "vmap_all", "vmap_chunked"}
  for r in impls.values():
    for field in ("sec_per_round_median", "sec_per_round_min", "sec_per_round_max",
                  "compile_sec", "achieved_gflops", "peak_gflops", "peak_rss_mib",
                  "speedup_vs_baseline"):
      assert r[field] > 0, (r["impl"], field)
    assert r["sec_per_round_min"] <= r["sec_per_round_median"] <= r["sec_per_round_max"]
  assert impls["loop"]["speedup_vs_baseline"] == 1.0
  assert impls["vmap_chunked"]["devices"] == devices  # the results check covers sharding
  if devices == 1:  # the roofline, measured in the same run
    chunked = impls["vmap_chunked"]
    assert chunked["gemm_bound_sec"] > 0
    assert chunked["fraction_of_gemm_bound"] == pytest.approx(
        chunked["gemm_bound_sec"] / chunked["sec_per_round_median"])
    assert chunked["grad_mode"] == ("batch" if workload == "w1" else "per_example")
  else:
    assert "gemm_bound_sec" not in impls["vmap_chunked"]
  assert rows[-1] == {"workload": workload, "check": "params_match_loop",
                      "impls": sorted(impls), "rounds": 2, "atol": 1e-5, "ok": True}


@pytest.mark.slow
@pytest.mark.parametrize("workload", ["w1", "w2"])
def test_round_benchmarks_print_json_and_check_results(report, workload):
  check_round_rows(report[1][workload], workload, 1)


@pytest.mark.slow
def test_round_benchmark_sharded_over_devices_checks_results():
  out = subprocess.run([sys.executable, "-m", "benchmarks", "--workload", "w2", "--quick",
                        "--devices", "3"], capture_output=True, text=True, timeout=600,
                       check=True).stdout
  check_round_rows([json.loads(x) for x in out.splitlines()], "w2", 3)


@pytest.mark.slow
def test_dp_benchmark_prints_overheads(report):
  rows = report[1]["w4"]  # --quick: the W2 shape only
  assert {(r["shape"], r["impl"]) for r in rows} == {
      ("w2", i) for i in ("no_dp", "gaussian", "laplace")}
  for r in rows:
    assert r["sec_per_round_median"] > 0 and r["overhead_vs_no_dp"] > 0
    assert r["achieved_gflops"] > 0 and r["peak_gflops"] > 0
    if r["impl"] == "no_dp":
      assert r["overhead_vs_no_dp"] == 1.0


@pytest.mark.slow
def test_sweep_benchmark_checks_results(report):
  rows = report[1]["w5"]
  impls = {r["impl"]: r for r in rows if "impl" in r}
  assert set(impls) == {"sequential", "run_sweep"}
  assert all(r["sec_per_round_all_experiments"] > 0 for r in impls.values())
  assert rows[-1] == {"workload": "w5", "check": "sweep_matches_sequential", "ok": True,
                      "atol": 1e-4, "experiments": 4}


@pytest.mark.slow
def test_scale_benchmark_runs_each_size_in_its_own_process(report):
  rows = report[1]["w3"]
  assert [r["clients_per_round"] for r in rows] == [10, 100]
  for r in rows:
    assert r["sec_per_client"] > 0 and r["peak_rss_mib"] >= r["rss_after_data_mib"] > 0
    assert r["population_data_mib"] > 0 and r["chunk_model_state_mib"] > 0


@pytest.mark.slow
def test_all_workloads_report(report):
  out, by_workload = report
  assert set(by_workload) == {"w1", "w2", "w3", "w4", "w5"}
  checks = [r for rows in by_workload.values() for r in rows if "check" in r]
  assert len(checks) == 3 and all(c["ok"] for c in checks)  # w1, w2, w5
  md = (out / "report.md").read_text()
  for w in ("W1", "W2", "W3", "W4", "W5"):
    assert f"## {w}" in md
  assert md.count("passed") == 3
  for png in ("scaling.png", "memory.png"):
    assert (out / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_installed_console_script_works_from_any_directory(tmp_path):
  script = Path(sys.executable).parent / "fedjax-lite"
  assert script.exists(), "the package's console script is not installed"
  out = subprocess.run([str(script), "privacy", "epsilon", "--noise-multiplier", "1.0",
                        "--sampling-rate", "0.1", "--rounds", "10", "--delta", "1e-5"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
  assert json.loads(out.stdout)["epsilon"] > 0
  out = subprocess.run([str(script), "--version"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, check=True)
  assert out.stdout.startswith("fedjax-lite ")


@pytest.mark.slow
def test_profile_reports_ops_and_product_rates():
  out = subprocess.run([sys.executable, "-m", "benchmarks.profile", "--workload", "w1",
                        "--quick", "--top", "5"],
                       capture_output=True, text=True, timeout=600, check=True).stdout
  rows = [json.loads(x) for x in out.splitlines()]
  ops = [r for r in rows if "op" in r]
  assert 1 <= len(ops) <= 5 and all(r["ms_per_round"] > 0 for r in ops)
  assert ops == sorted(ops, key=lambda r: -r["ms_per_round"])
  rates = rows[-1]["rates"]
  assert rows[-1]["round_ms"] > 0 and rows[-1]["chunk_size"] >= 1
  assert all(v > 0 for v in rates.values()) and set(rates) >= {"single_gflops", "peak_gflops"}


@pytest.mark.slow
def test_paper_results_script_runs_its_commands():
  out = subprocess.run([sys.executable, "-m", "benchmarks.paper_results", "--quick", "--only",
                        "quantization"], capture_output=True, text=True, timeout=600,
                       check=True).stdout
  rows = [json.loads(x) for x in out.splitlines()]
  assert [r["run"] for r in rows] == ["FedAvg, 32-bit", "FedAvg, 8-bit quantized",
                                      "FedAvg, 2-bit quantized"]
  assert rows[1]["command"] == "fedjax-lite run --quantize-bits 8"
  assert rows[1]["bits_sent_per_round"] * 4 == pytest.approx(
      rows[1]["bits_uncompressed_per_round"], rel=1e-2)  # 8 of 32 bits, plus the scales
  assert all(r["rounds"] == 2 and 0 <= r["central_accuracy"] <= 1 for r in rows)


def test_accounting_benchmark_compares_three_methods_that_agree():
  out = subprocess.run([sys.executable, "-m", "benchmarks.accounting", "--rounds", "30",
                        "--direct-samples", "3"],
                       capture_output=True, text=True, timeout=300, check=True).stdout
  rows = {r["method"]: r for r in map(json.loads, out.splitlines())}
  assert set(rows) == {"curve", "dp_accounting_compose", "direct"}
  assert rows["direct"]["estimated"] is True and rows["curve"]["fft_floor_s"] > 0
  assert all(r["seconds"] > 0 and r["max_rel_diff_vs_direct"] < 1e-9 for r in rows.values())


def test_roofline_counts_the_rounds_matrix_products():
  import jax
  import jax.numpy as jnp
  import numpy as np

  import fedjax_lite as fl
  from benchmarks import roofline

  params = fl.models.MLP((5, 4), 3).init(jax.random.key(0), jnp.zeros((1, 6)))
  layers = roofline.dense_layers(params)
  assert layers == [(6, 5), (5, 4), (4, 3)]
  # Forward and weight gradient at every layer, input gradient past the first.
  assert roofline.gemm_flops(layers, 2) == 2 * 2 * (2 * 6 * 5 + 3 * 5 * 4 + 3 * 4 * 3)
  for wgrad in ("dot", "outer"):
    assert roofline.gemm_seconds(layers, clients=5, chunk=2, batch=2, steps=3, repeats=1,
                                 wgrad=wgrad) > 0
  with pytest.raises(ValueError, match="wgrad"):
    roofline.gemm_seconds(layers, clients=5, chunk=2, batch=2, steps=3, wgrad="batch")
  # One step's products against a NumPy loop over the chunk's clients.
  rng = np.random.default_rng(0)
  ws = [rng.normal(size=(2, i, o)).astype(np.float32) for i, o in layers]
  xb = rng.normal(size=(2, 3, 6)).astype(np.float32)
  expected = []
  for c in range(2):
    acts = [xb[c]]
    for w in ws:
      acts.append(acts[-1] @ w[c])
    g, new = acts[-1], [None] * len(ws)
    for i in reversed(range(len(ws))):
      new[i] = ws[i][c] - 0.5 * acts[i].T @ g
      g = g @ ws[i][c].T
    expected.append(new)
  for wgrad in ("dot", "outer"):
    got = roofline.products_step([jnp.asarray(w) for w in ws], jnp.asarray(xb), wgrad, lr=0.5)
    for i, w in enumerate(got):
      np.testing.assert_allclose(w, np.stack([e[i] for e in expected]), rtol=1e-4, atol=1e-3)


def test_cold_start_times_tracing_and_both_compilations():
  import jax
  import jax.numpy as jnp
  import optax

  import fedjax_lite as fl
  from benchmarks import cold_start

  population = fl.datasets.synthetic_classification(6, 4, num_features=3, num_classes=2, seed=0)
  model = fl.models.LogisticRegression(2)
  params = model.init(jax.random.key(0), jnp.zeros((1, 3)))
  update = fl.build_client_update(fl.models.classification_loss(model.apply), optax.sgd(0.1),
                                  batch_size=2)
  row = cold_start.step_seconds(fl.build_federated_algorithm(update, fl.server.fedavg()),
                                population, 3, params)
  assert set(row) == {"trace_lower_sec", "compile_sec", "compile_sec_xla_defaults"}
  assert all(v > 0 for v in row.values())
