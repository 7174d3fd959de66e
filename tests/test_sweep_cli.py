"""`fedjax-lite run --sweep`: each experiment equals its single run; outputs, resume, errors."""

from __future__ import annotations

import json

import flax.serialization
import jax
import numpy as np
import pytest

from fedjax_lite import cli, experiment

SMALL = {"dataset": "digits", "model": "logreg", "num_clients": 12, "clients_per_round": 4,
         "rounds": 4, "local_epochs": 1, "batch_size": 8, "eval_every": 2,
         "checkpoint_every": 2, "progress": False}
QUIET = {"log": lambda s: None}


def _config(tmp_path, name="sweep", **kw):
  return experiment.resolve_config(None, {**SMALL, "out": str(tmp_path / name), **kw})


def _rows(path):
  return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


def _ckpt_leaves(path):
  """The leaves of a checkpoint's state, read without a target structure."""
  payload = (path / "checkpoint.ckpt").read_bytes().partition(b"\n")[2]
  return jax.tree.leaves(flax.serialization.msgpack_restore(payload))


def _assert_single_runs_match(tmp_path, sweep_out, summary, indices):
  """Re-runs experiments one by one from their config.json and compares everything."""
  stacked = _ckpt_leaves(sweep_out)
  for i in indices:
    entry = summary["experiments"][i]
    saved = json.loads((sweep_out / entry["dir"] / "config.json").read_text())
    single = {**saved["config"], "out": str(tmp_path / f"single{i}")}
    assert single["sweep"] is None and single["data_seed"] == summary["data_seed"]
    assert {k: single[k] for k in entry["values"]} == entry["values"]
    got = experiment.run_experiment(single, **QUIET)
    sweep_rows, single_rows = _rows(sweep_out / entry["dir"]), _rows(tmp_path / f"single{i}")
    assert [r.keys() for r in sweep_rows] == [r.keys() for r in single_rows]
    for a, b in zip(sweep_rows, single_rows, strict=True):
      for key in a:
        if key != "seconds":
          np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5, err_msg=key)
    for key in ("final_train_loss", "eval_accuracy", "central_accuracy", "epsilon"):
      if key in got:
        np.testing.assert_allclose(entry[key], got[key], rtol=1e-5, atol=1e-5, err_msg=key)
    mine = _ckpt_leaves(tmp_path / f"single{i}")
    assert len(mine) == len(stacked)
    for x, y in zip(stacked, mine, strict=True):
      np.testing.assert_allclose(np.asarray(x)[i], np.asarray(y), rtol=1e-5, atol=1e-5)


def test_seed_sweep_writes_outputs_and_equals_single_runs(tmp_path):
  config = _config(tmp_path, sweep=["seed=1..3"])
  summary = experiment.run_experiment(config, **QUIET)
  out = tmp_path / "sweep"
  dirs = ["000_seed=1", "001_seed=2", "002_seed=3"]
  assert [e["dir"] for e in summary["experiments"]] == dirs
  assert json.loads((out / "sweep.json").read_text()) == summary
  assert summary["sweep"] == {"seed": [1, 2, 3]} and summary["finished"]
  assert summary["data_seed"] == 0  # the base seed: one population for all experiments
  for name in dirs:
    for f in ("config.json", "metrics.jsonl", "summary.json", "curves.png"):
      assert (out / name / f).is_file(), (name, f)
    assert not (out / name / "checkpoint.ckpt").exists()  # one stacked checkpoint in out
  assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
  assert (out / "checkpoint.ckpt").is_file()
  for e in summary["experiments"]:
    assert {"final_train_loss", "eval_accuracy", "central_accuracy"} <= set(e)
  losses = [e["final_train_loss"] for e in summary["experiments"]]
  assert len(set(losses)) == 3  # the seeds give different runs
  _assert_single_runs_match(tmp_path, out, summary, [0, 2])


def test_learning_rate_product_sweep_equals_single_runs(tmp_path):
  config = _config(tmp_path, algorithm="fedavgm",
                   sweep=["client_lr=0.02,0.2", "server-lr=0.5,1"])
  summary = experiment.run_experiment(config, **QUIET)
  assert [e["values"] for e in summary["experiments"]] == [
      {"client_lr": 0.02, "server_lr": 0.5}, {"client_lr": 0.02, "server_lr": 1.0},
      {"client_lr": 0.2, "server_lr": 0.5}, {"client_lr": 0.2, "server_lr": 1.0}]
  assert summary["experiments"][3]["dir"] == "003_client_lr=0.2,server_lr=1.0"
  _assert_single_runs_match(tmp_path, tmp_path / "sweep", summary, [0, 3])


def test_dp_noise_and_clip_sweep_equals_single_runs(tmp_path):
  config = _config(tmp_path, dataset="synthetic", num_clients=20, clients_per_round=5,
                   dp="gaussian", sampling="fixed", eval_every=0, rounds=3,
                   sweep={"noise_multiplier": [0.5, 2.0], "clip": "0.3,1"})
  summary = experiment.run_experiment(config, **QUIET)
  eps = [e["epsilon"] for e in summary["experiments"]]
  assert eps[0] == eps[1] > eps[2] == eps[3] > 0  # more noise, less epsilon; clip is free
  rows = _rows(tmp_path / "sweep" / summary["experiments"][3]["dir"])
  np.testing.assert_allclose(rows[-1]["clip"], 1.0)
  _assert_single_runs_match(tmp_path, tmp_path / "sweep", summary, [0, 3])


def test_adaptive_clipping_seed_sweep_equals_single_runs(tmp_path):
  # Adaptive clipping cannot take a traced clip or noise multiplier (refused below), but a
  # sweep over seeds or learning rates keeps them concrete.
  config = _config(tmp_path, dp="gaussian", noise_multiplier=0.3, adaptive_clip=True,
                   rounds=3, eval_every=0, sweep=["seed=0,1"])
  summary = experiment.run_experiment(config, **QUIET)
  rows = _rows(tmp_path / "sweep" / summary["experiments"][1]["dir"])
  assert rows[-1]["clip"] != rows[0]["clip"] and "unclipped_fraction" in rows[0]
  _assert_single_runs_match(tmp_path, tmp_path / "sweep", summary, [1])


def test_sweep_resume_equals_uninterrupted(tmp_path):
  sweep = ["seed=0..1"]
  full = experiment.run_experiment(_config(tmp_path, "full", sweep=sweep), **QUIET)
  experiment.run_experiment(_config(tmp_path, "part", sweep=sweep), stop_after=3,
                            **QUIET)  # checkpoint at round 2, round 2's metrics past it
  part = tmp_path / "part"
  assert json.loads((part / "checkpoint.ckpt").read_bytes().partition(b"\n")[0])[
      "metadata"]["round"] == 2
  resumed = experiment.run_experiment(_config(tmp_path, "part", sweep=sweep, resume=True),
                                      **QUIET)
  a = (tmp_path / "full" / "checkpoint.ckpt").read_bytes().partition(b"\n")[2]
  b = (part / "checkpoint.ckpt").read_bytes().partition(b"\n")[2]
  assert a == b  # the stacked states, bit for bit
  for e, f in zip(resumed["experiments"], full["experiments"], strict=True):
    rows, full_rows = _rows(part / e["dir"]), _rows(tmp_path / "full" / f["dir"])
    assert [r["round"] for r in rows] == list(range(4))
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in full_rows]
    assert e["eval_accuracy"] == f["eval_accuracy"]
  # Resume rules: the same sweep, and a sweep is not resumed as a single run.
  with pytest.raises(experiment.ConfigError, match=r"differs from the saved run in \['sweep'\]"):
    experiment.run_experiment(_config(tmp_path, "part", sweep=["seed=0..2"], resume=True),
                              **QUIET)
  with pytest.raises(experiment.ConfigError, match="holds a sweep: resume it with the same"):
    experiment.run_experiment(_config(tmp_path, "part", resume=True), **QUIET)
  with pytest.raises(experiment.ConfigError, match="holds no sweep to resume"):
    experiment.run_experiment(_config(tmp_path, "part/000_seed=0", sweep=sweep, resume=True),
                              **QUIET)


def test_config_file_sweep_forms_and_data_seed(tmp_path):
  toml = tmp_path / "c.toml"
  toml.write_text('sweep = ["seed=0..2", "client_lr=0.01,0.1"]\n')
  listed = experiment.resolve_config(toml, {})
  toml.write_text('[sweep]\nseed = "0..2"\nclient-lr = [0.01, 0.1]\n')
  table = experiment.resolve_config(toml, {})
  assert listed["sweep"] == table["sweep"] == {"seed": [0, 1, 2], "client_lr": [0.01, 0.1]}
  points = experiment.sweep_points(table)
  assert len(points) == 6 and points[:2] == [{"seed": 0, "client_lr": 0.01},
                                             {"seed": 0, "client_lr": 0.1}]
  # Flags replace the file's sweep.
  assert experiment.resolve_config(toml, {"sweep": ["seed=5"]})["sweep"] == {"seed": [5]}
  # The resolved sweep resolves to itself (a saved config compares equal on --resume).
  assert experiment.resolve_config(None, {"sweep": table["sweep"]})["sweep"] == table["sweep"]
  # data_seed: pinned to the base seed in a seed sweep unless given.
  base = experiment.resolve_config(None, {"seed": 7, "sweep": ["seed=1,2"]})
  assert experiment.experiment_config(base, {"seed": 2})["data_seed"] == 7
  base = experiment.resolve_config(None, {"seed": 7, "data_seed": 3, "sweep": ["seed=1,2"]})
  assert experiment.experiment_config(base, {"seed": 2})["data_seed"] == 3
  # The data partition follows data_seed, the rest follows seed.
  cfg = experiment.resolve_config(None, SMALL)
  a = experiment.load_dataset({**cfg, "seed": 5, "data_seed": 1})
  b = experiment.load_dataset({**cfg, "seed": 1})
  c = experiment.load_dataset({**cfg, "seed": 5})
  np.testing.assert_array_equal(a.train.arrays["y"], b.train.arrays["y"])
  assert not np.array_equal(a.train.arrays["y"], c.train.arrays["y"])


@pytest.mark.parametrize("sweep, extra, match", [
    (["seed"], {}, "--sweep 'seed': write KEY=VALUES, e.g. --sweep seed=0..15"),
    (["seed=3..1"], {}, r"--sweep seed=3..1: the range 3..1 is empty; write a..b with a <= b"),
    (["client_lr=0.1..0.3"], {}, "a range a..b takes two integers"),
    (["client_lr=0.1,,0.3"], {}, "empty value"),
    (["client_lr=0.1,fast"], {}, "'fast' is not a number"),
    (["client_lr=-0.1"], {}, "client_lr must be > 0"),
    (["seed=1.5"], {}, "seeds must be non-negative integers"),
    (["seed=1,1"], {}, "1 is listed twice"),
    (["batch_size=8,16"], {},
     "'batch_size' cannot be swept; sweepable keys: seed, client_lr, server_lr, "
     "noise_multiplier, clip"),
    (["lr=0.1"], {}, "'lr' is not an option; sweepable keys: seed"),
    (["seed=0..3", "client_lr=0.1", "seed=5"], {},
     "--sweep seed=5: 'seed' is swept twice; give all its values in one KEY=VALUES"),
    (["noise_multiplier=0.5,1"], {}, "--sweep noise_multiplier needs --dp gaussian"),
    (["clip=0.5,1"], {}, "--sweep clip needs --dp gaussian"),
    (["noise_multiplier=0.5,1"], {"dp": "gaussian", "target_epsilon": 5.0},
     "contradicts --target-epsilon"),
    (["noise_multiplier=0.5,1"], {"dp": "gaussian", "adaptive_clip": True},
     "cannot be combined with --adaptive-clip"),
    (["clip=0.5,1"], {"dp": "gaussian", "noise_multiplier": 1.0, "adaptive_clip": True},
     "cannot be combined with --adaptive-clip"),
    (["seed=0..1"], {"dp": "gaussian"}, "exactly one of --noise-multiplier"),
])
def test_sweep_errors_name_the_argument_and_the_fix(sweep, extra, match):
  with pytest.raises(experiment.ConfigError, match=match):
    experiment.resolve_config(None, {"sweep": sweep, **extra})


def test_cli_sweep_runs_and_reports_errors(tmp_path, capsys):
  args = ["run", "--dataset", "digits", "--model", "logreg", "--num-clients", "12",
          "--clients-per-round", "4", "--local-epochs", "1", "--rounds", "2", "--no-progress"]
  out = tmp_path / "cli"
  assert cli.main([*args, "--sweep", "seed=0,4", "--sweep", "client-lr=0.1", "--data-seed",
                   "2", "--out", str(out)]) == 0
  summary = json.loads((out / "sweep.json").read_text())
  assert [e["dir"] for e in summary["experiments"]] == ["000_seed=0,client_lr=0.1",
                                                        "001_seed=4,client_lr=0.1"]
  assert summary["data_seed"] == 2
  single = json.loads((out / "001_seed=4,client_lr=0.1" / "config.json").read_text())
  assert single["config"]["seed"] == 4 and single["config"]["data_seed"] == 2
  assert single["config"]["client_lr"] == 0.1 and single["seed"] == 4
  capsys.readouterr()
  assert cli.main([*args, "--sweep", "seed=9..0", "--out", str(tmp_path / "bad")]) == 2
  assert "the range 9..0 is empty" in capsys.readouterr().err
  assert not (tmp_path / "bad").exists()
