"""The main job with secure aggregation and the correlated-noise mechanisms.

Epsilon in every row is the library's accounting of what ran (the cyclic
turns, the strategy, secure aggregation's rounding); an interrupted run
resumed equals the uninterrupted one (the noise schedule's state is in the
checkpoint); bad combinations end with one line naming the option.
"""

from __future__ import annotations

import json
import math

import pytest

from fedjax_lite import accounting, cli, experiment, secagg

pytest.importorskip("jax_privacy")

SMALL = {"dataset": "digits", "model": "logreg", "num_clients": 12, "clients_per_round": 3,
         "rounds": 6, "local_epochs": 1, "batch_size": 8, "eval_every": 3,
         "checkpoint_every": 2, "progress": False}


def _rows(out):
  return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _run(tmp_path, name, settings, **kw):
  config = experiment.resolve_config(None, {**settings, "out": str(tmp_path / name)})
  return experiment.run_experiment(config, log=lambda s: None, **kw)


def test_bandmf_run_accounts_its_strategy_and_resumes_exactly(tmp_path):
  settings = {**SMALL, "dp": "bandmf", "noise_multiplier": 0.8, "bands": 3}
  summary = _run(tmp_path, "full", settings)
  rows = _rows(tmp_path / "full")
  privacy = json.loads((tmp_path / "full" / "config.json").read_text())["privacy"]
  assert privacy["group_rounds"] == 4 and len(privacy["coefs"]) == 3
  spec = accounting.CorrelatedSpec("bandmf", 0.8, 4, tuple(privacy["coefs"]))
  for row in rows:
    assert row["epsilon"] == pytest.approx(
        accounting.correlated_epsilon(spec, row["round"] + 1, 1e-5))
    assert row["clients"] == 3
  assert summary["epsilon"] == rows[-1]["epsilon"]
  _run(tmp_path, "part", settings, stop_after=3)
  _run(tmp_path, "part", {**settings, "resume": True})
  strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
  assert strip(_rows(tmp_path / "part")) == strip(rows)


def test_secure_aggregation_with_central_dp_accounts_the_rounding(tmp_path):
  settings = {**SMALL, "dp": "ftrl-tree", "noise_multiplier": 1.0, "secagg_bits": 12,
              "secagg_dropout": 0.3}
  _run(tmp_path, "run", settings)
  rows = _rows(tmp_path / "run")
  privacy = json.loads((tmp_path / "run" / "config.json").read_text())["privacy"]
  d = 64 * 10 + 10
  s = secagg.SecAggConfig(12, 1.0, None, 0.0, None).scale(privacy["padded_cohort"])
  scale = 1.0 + math.sqrt(d) / s
  assert privacy["secagg_sensitivity_scale"] == pytest.approx(scale)
  assert privacy["noise_multiplier"] == pytest.approx(1.0 / scale)
  assert privacy["aggregator_noise_multiplier"] == pytest.approx(1.0)
  spec = accounting.CorrelatedSpec("tree", 1.0 / scale, 4)
  assert rows[-1]["epsilon"] == pytest.approx(accounting.correlated_epsilon(spec, 6, 1e-5))
  assert all(r["secagg_bits_per_client"] == d * 12 + 32 and r["num_overflow"] == 0
             for r in rows)
  assert sum(r["num_secagg_dropped"] for r in rows) > 0


def test_secure_aggregation_without_dp(tmp_path):
  _run(tmp_path, "run", {**SMALL, "secagg_bits": 16, "secagg_clip": 50.0})
  rows = _rows(tmp_path / "run")
  assert all("epsilon" not in r and r["secagg_clipped_fraction"] == 0 for r in rows)
  assert rows[-1]["eval_accuracy"] > 0.3


@pytest.mark.parametrize("argv, message", [
    (["--secagg-bits", "8"], "--secagg-bits without --dp needs --secagg-clip"),
    (["--secagg-bits", "8", "--secagg-clip", "1", "--quantize-bits", "4"],
     "--quantize-bits with --secagg-bits"),
    (["--secagg-bits", "8", "--secagg-clip", "1", "--aggregator", "median"],
     "--aggregator median with --secagg-bits"),
    (["--secagg-dropout", "0.1"], "--secagg-dropout does not apply here: it needs --secagg-bits"),
    (["--dp", "gaussian", "--noise-multiplier", "1", "--secagg-bits", "8",
      "--secagg-summands", "1"], "--secagg-summands 1 with --dp gaussian"),
    (["--dp", "ftrl-tree", "--noise-multiplier", "1", "--sampling", "poisson"],
     "--sampling does not apply here: --dp ftrl-tree takes the clients in fixed turns"),
    (["--dp", "bandmf", "--noise-multiplier", "1", "--bands", "9"], "--bands 9 exceeds the 4"),
    (["--dp", "ftrl-tree", "--noise-multiplier", "1", "--accountant", "pld"],
     "--accountant pld does not support tree aggregation"),
    (["--dp", "bandmf", "--noise-multiplier", "1", "--adaptive-clip"],
     "--adaptive-clip needs --dp gaussian"),
    (["--dp", "bandmf", "--noise-multiplier", "1", "--local-dp"], "--local-dp with --dp bandmf"),
    (["--bands", "3"], "--bands does not apply here"),
])
def test_bad_privacy_options_are_one_line(tmp_path, capsys, argv, message):
  status = cli.main(["run", "--rounds", "2", "--num-clients", "12", "--clients-per-round", "3",
                     "--json", "-q", "--no-progress", *argv, "--out", str(tmp_path / "run")])
  out, err = capsys.readouterr()
  assert status != 0 and out == ""
  assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
  assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_missing_optional_package_is_one_line_naming_its_extra(tmp_path, capsys,
                                                                 monkeypatch):
  import importlib

  from fedjax_lite import _optional

  real = importlib.import_module

  def without_jax_privacy(name, *args):
    if name.startswith("jax_privacy"):
      raise ImportError(f"No module named {name!r}")
    return real(name, *args)

  monkeypatch.setattr(_optional.importlib, "import_module", without_jax_privacy)
  status = cli.main(["run", "--rounds", "7", "--num-clients", "12", "--clients-per-round", "3",
                     "--dp", "bandmf", "--bands", "3", "--noise-multiplier", "1", "--json",
                     "-q", "--no-progress", "--out", str(tmp_path / "run")])
  err = capsys.readouterr().err
  assert status == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
  assert "needs jax_privacy, which is not installed: pip install 'fedjax_lite[mf]'" in err
