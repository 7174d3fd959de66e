"""`fedjax-lite run --devices N` equals the one-device run; the multi-process options.

conftest.py forces 4 CPU devices. The real two-process run is in
tests/test_multiprocess.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import flax.serialization
import jax
import numpy as np
import pytest

import fedjax_lite as fl
from fedjax_lite import cli, experiment

SMALL = {"dataset": "digits", "model": "logreg", "num_clients": 12, "clients_per_round": 4,
         "rounds": 4, "local_epochs": 1, "batch_size": 8, "eval_every": 2,
         "checkpoint_every": 2, "progress": False}
QUIET = {"log": lambda s: None}
DP = {"dp": "gaussian", "noise_multiplier": 0.8, "clip": 0.5, "sampling": "poisson",
      "algorithm": "fedadam"}
TOL = 1e-5


def _config(tmp_path, name, **kw):
  return experiment.resolve_config(None, {**SMALL, "out": str(tmp_path / name), **kw})


def _rows(path):
  return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


def _state(path):
  """The leaves of a checkpoint's state, read without a target structure."""
  payload = (path / "checkpoint.ckpt").read_bytes().partition(b"\n")[2]
  return jax.tree.leaves(flax.serialization.msgpack_restore(payload))


def _assert_same_run(a, b):
  """Two run directories hold the same metrics and final state (up to float rounding)."""
  rows_a, rows_b = _rows(a), _rows(b)
  assert [r.keys() for r in rows_a] == [r.keys() for r in rows_b]
  for x, y in zip(rows_a, rows_b, strict=True):
    for key in x:
      if key != "seconds":
        np.testing.assert_allclose(x[key], y[key], rtol=TOL, atol=TOL, err_msg=key)
  leaves_a, leaves_b = _state(a), _state(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=TOL, atol=TOL)


def _assert_same_summary(a, b):
  assert a.keys() == b.keys()
  for key, value in a.items():
    if isinstance(value, float) and key not in ("wall_seconds_this_invocation",
                                                 "train_seconds_total"):
      np.testing.assert_allclose(value, b[key], rtol=TOL, atol=TOL, err_msg=key)


@pytest.mark.parametrize("extra", [{}, DP], ids=["fedavg", "dp_poisson_fedadam"])
def test_run_on_four_devices_equals_one_device(tmp_path, extra):
  one = experiment.run_experiment(_config(tmp_path, "one", **extra), **QUIET)
  four = experiment.run_experiment(_config(tmp_path, "four", devices=4, **extra), **QUIET)
  _assert_same_run(tmp_path / "one", tmp_path / "four")
  _assert_same_summary(one, four)
  assert four["finished"] and "central_accuracy" in four and "eval_accuracy_p10" in four
  runtime = json.loads((tmp_path / "four" / "config.json").read_text())["runtime"]
  assert runtime == {"platform": "cpu", "processes": 1, "devices": 4}
  assert json.loads((tmp_path / "one" / "config.json").read_text())["runtime"]["devices"] == 1


def test_sweep_on_four_devices_equals_one_device(tmp_path):
  sweep = ["seed=0..1"]
  one = experiment.run_experiment(_config(tmp_path, "one", sweep=sweep), **QUIET)
  four = experiment.run_experiment(_config(tmp_path, "four", sweep=sweep, devices=4), **QUIET)
  assert [e["dir"] for e in four["experiments"]] == ["000_seed=0", "001_seed=1"]
  for a, b in zip(one["experiments"], four["experiments"], strict=True):
    _assert_same_summary(a, b)
    rows_a, rows_b = _rows(tmp_path / "one" / a["dir"]), _rows(tmp_path / "four" / b["dir"])
    for x, y in zip(rows_a, rows_b, strict=True):
      for key in x:
        if key != "seconds":
          np.testing.assert_allclose(x[key], y[key], rtol=TOL, atol=TOL, err_msg=key)
  for x, y in zip(_state(tmp_path / "one"), _state(tmp_path / "four"), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=TOL, atol=TOL)
  # Each experiment's config.json is still its single run's (no process keys).
  saved = json.loads((tmp_path / "four" / "001_seed=1" / "config.json").read_text())
  assert saved["config"]["seed"] == 1 and saved["config"]["coordinator"] is None


def test_resume_may_change_the_devices(tmp_path):
  experiment.run_experiment(_config(tmp_path, "full"), **QUIET)
  experiment.run_experiment(_config(tmp_path, "part", devices=4), stop_after=3, **QUIET)
  resumed = _config(tmp_path, "part", devices=2, resume=True)
  summary = experiment.run_experiment(resumed, **QUIET)
  assert summary["rounds_completed"] == 4
  _assert_same_run(tmp_path / "full", tmp_path / "part")
  saved = json.loads((tmp_path / "part" / "config.json").read_text())["config"]
  # The process options may change too (they only change where the rounds run).
  experiment._check_resume(saved, {**saved, "devices": "all", "coordinator": "10.0.0.1:1234",
                                   "num_processes": 8, "process_id": 3})


def test_cli_devices_all_and_too_many_devices(tmp_path, capsys):
  args = ["run", "--dataset", "digits", "--model", "logreg", "--num-clients", "12",
          "--clients-per-round", "4", "--local-epochs", "1", "--rounds", "2", "--no-progress"]
  assert cli.main([*args, "--devices", "all", "--out", str(tmp_path / "all")]) == 0
  runtime = json.loads((tmp_path / "all" / "config.json").read_text())["runtime"]
  assert runtime["devices"] == jax.device_count() == 4
  capsys.readouterr()
  assert cli.main([*args, "--devices", "8", "--out", str(tmp_path / "eight")]) == 2
  err = capsys.readouterr().err
  assert "--devices 8, but JAX sees 4 cpu device(s)" in err
  assert "XLA_FLAGS=--xla_force_host_platform_device_count=8" in err
  assert "--devices all" in err
  assert not (tmp_path / "eight").exists()  # refused before anything was written
  with pytest.raises(SystemExit):
    cli.main([*args, "--devices", "two"])
  assert "--devices must be a positive integer or 'all'; got 'two'" in capsys.readouterr().err


_ADDR = {"coordinator": "127.0.0.1:12345"}


@pytest.mark.parametrize("overrides, match", [
    (_ADDR, "--coordinator 127.0.0.1:12345 needs --num-processes and --process-id too"),
    ({**_ADDR, "num_processes": 2}, "needs --process-id too: start every process"),
    ({**_ADDR, "process_id": 0}, "needs --num-processes too"),
    ({"num_processes": 2, "process_id": 0}, "need --coordinator HOST:PORT"),
    ({"process_id": 1}, "need --coordinator HOST:PORT .* or --coordinator auto"),
    ({**_ADDR, "num_processes": 2, "process_id": 2},
     r"--process-id 2 must be below --num-processes 2 \(the processes are numbered 0..1\)"),
    ({"coordinator": "auto", "num_processes": 2, "process_id": 5}, "must be below"),
    ({**_ADDR, "num_processes": 0, "process_id": 0}, "--num-processes must be >= 1; got 0"),
    ({**_ADDR, "num_processes": 2, "process_id": -1}, "--process-id must be >= 0; got -1"),
    ({"coordinator": "localhost", "num_processes": 2, "process_id": 0},
     "--coordinator 'localhost' is not HOST:PORT; .* e.g. --coordinator 127.0.0.1:12345"),
    ({"coordinator": "10.0.0.1:http", "num_processes": 2, "process_id": 0}, "is not HOST:PORT"),
    ({"coordinator": "10.0.0.1:70000", "num_processes": 2, "process_id": 0}, "is not HOST:PORT"),
    ({"coordinator": ":12345", "num_processes": 2, "process_id": 0}, "is not HOST:PORT"),
    ({"devices": 0}, "devices must be a positive integer or 'all'; got 0"),
    ({"devices": "two"}, "devices must be a positive integer or 'all'"),
])
def test_process_option_errors_name_the_flag_and_the_fix(overrides, match):
  with pytest.raises(experiment.ConfigError, match=match):
    experiment.resolve_config(None, overrides)


def test_process_options_reach_jax_distributed(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(fl, "initialize_distributed", lambda *a, **k: calls.append(("fl", a, k)))
  monkeypatch.setattr(jax.distributed, "initialize", lambda **k: calls.append(("jax", k)))
  monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(("config", a)))
  assert not experiment.start_distributed(experiment.resolve_config(None, {}))
  assert calls == []

  explicit = {"coordinator": "10.0.0.1:12345", "num_processes": 4, "process_id": 3}
  assert experiment.start_distributed(experiment.resolve_config(None, explicit))
  assert calls == [("fl", ("10.0.0.1:12345", 4, 3), {})]
  calls.clear()
  # auto: jax.distributed.initialize() detects the cluster; given values override it.
  assert experiment.start_distributed(experiment.resolve_config(None, {"coordinator": "auto"}))
  assert calls == [("config", ("jax_cpu_collectives_implementation", "gloo")),
                   ("jax", {"num_processes": None, "process_id": None})]
  calls.clear()
  config = experiment.resolve_config(None, {"coordinator": "auto", "num_processes": 2,
                                            "process_id": 1})
  experiment.start_distributed(config)
  assert calls[-1] == ("jax", {"num_processes": 2, "process_id": 1})

  def no_cluster(**kwargs):
    raise ValueError("coordinator_address should be defined.")

  monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
  with pytest.raises(experiment.ConfigError, match=r"\(--coordinator auto\): coordinator_address "
                     "should be defined. --coordinator auto needs a cluster JAX can detect"):
    experiment.start_distributed(experiment.resolve_config(None, {"coordinator": "auto"}))

  def timeout(*args):
    raise RuntimeError("Barrier timed out")

  monkeypatch.setattr(fl, "initialize_distributed", timeout)
  with pytest.raises(experiment.ConfigError, match="--coordinator 10.0.0.1:12345 --num-processes "
                     "4 --process-id 3\\): Barrier timed out Start every process with the same"):
    experiment.start_distributed(experiment.resolve_config(None, explicit))


def test_cli_reaches_the_runtime_start_before_any_jax_computation(tmp_path):
  """jax.distributed.initialize must come first: nothing before it may start a JAX backend."""
  script = textwrap.dedent(f"""
      from jax._src import xla_bridge
      from fedjax_lite import cli, experiment

      def probe(config):
        print("backend started:", xla_bridge.backends_are_initialized())
        raise experiment.ConfigError("stop here")

      experiment.runtime.start_distributed = probe
      flags = ["--coordinator", "127.0.0.1:12345", "--num-processes", "2", "--process-id", "0"]
      assert cli.main(["run", *flags, "--out", {str(tmp_path / "a")!r}]) == 2
      assert cli.main(["run", *flags, "--sweep", "seed=0..1", "--out",
                       {str(tmp_path / "b")!r}]) == 2
  """)
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  assert done.stdout.split("\n")[:2] == ["backend started: False"] * 2
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
