"""The main job on the virtual clock: FedBuff/FedAsync, deadlines, over-selection.

A run's results equal the library's own FedBuff (or timed rounds) built from
the same options; an interrupted run resumed equals the uninterrupted one;
bad combinations end with one line naming the option.
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

import fedjax_lite as fl
from fedjax_lite import asynchronous, cli, experiment, timing
from fedjax_lite.checkpoint import load_checkpoint

SMALL = {"dataset": "digits", "model": "logreg", "num_clients": 12, "rounds": 6,
         "local_epochs": 1, "batch_size": 8, "eval_every": 3, "checkpoint_every": 2,
         "progress": False}
ASYNC = {**SMALL, "algorithm": "fedbuff", "buffer": 3, "concurrency": 8, "device_sigma": 1.5,
         "staleness": "hinge", "staleness_b": 1, "max_staleness": 6}
SYNC = {**SMALL, "clients_per_round": 4, "deadline": 0.5, "over_select": 1.5,
        "device_median": 0.02, "device_overhead": 0.1}


def _rows(out):
  return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _run(tmp_path, name, settings, **kw):
  config = experiment.resolve_config(None, {**settings, "out": str(tmp_path / name)})
  return config, experiment.run_experiment(config, log=lambda s: None, **kw)


def _reference_parts(out, config):
  """The run's rows, and the task, population and client update to rebuild it with."""
  task = experiment.build_task(config)
  update = fl.build_client_update(task.loss, experiment._client_optimizer(config),
                                  batch_size=8)
  return _rows(out), task, task.dataset.train, update


def test_fedbuff_run_equals_the_library_and_resumes_exactly(tmp_path):
  config, summary = _run(tmp_path, "full", ASYNC)
  rows, task, train, update = _reference_parts(tmp_path / "full", config)
  devices = timing.lognormal_devices(train.num_clients, median_seconds_per_example=0.01,
                                     sigma=1.5, seed=0)
  fedbuff = asynchronous.build_fedbuff(
      fl.build_federated_algorithm(update, fl.server.fedavg()), devices, concurrency=8,
      buffer=3, staleness=asynchronous.hinge_staleness(10.0, 1), max_staleness=6)
  key = jax.random.key(0)
  want, history = asynchronous.run_async(fedbuff, fedbuff.init(task.params, train, key), train,
                                         num_steps=6, key=key, progress=False)
  saved, _ = load_checkpoint(tmp_path / "full" / "checkpoint.ckpt", want)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               saved.server.params, want.server.params)
  for row, h in zip(rows, history, strict=True):
    assert row["virtual_time"] == pytest.approx(h["virtual_time"])
    assert row["staleness_max"] == h["staleness_max"] and row["clients_in_flight"] == 8
    assert row["clients"] == 3
  assert summary["virtual_time_total"] == rows[-1]["virtual_time"]
  assert max(r["staleness_max"] for r in rows) > 0

  _run(tmp_path, "part", ASYNC, stop_after=3)
  config = experiment.resolve_config(None, {**ASYNC, "out": str(tmp_path / "part"),
                                            "resume": True})
  experiment.run_experiment(config, log=lambda s: None)
  resumed, _ = load_checkpoint(tmp_path / "part" / "checkpoint.ckpt", want)
  jax.tree.map(np.testing.assert_array_equal, resumed, saved)
  strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
  assert strip(_rows(tmp_path / "part")) == strip(rows)


def test_deadline_and_over_selection_run_equals_timed_rounds_and_resumes_exactly(tmp_path):
  config, _ = _run(tmp_path, "full", SYNC)
  rows, task, train, update = _reference_parts(tmp_path / "full", config)
  devices = timing.lognormal_devices(train.num_clients, median_seconds_per_example=0.02,
                                     sigma=1.0, seed=0, overhead=0.1)
  algo = timing.timed(fl.build_federated_algorithm(update, fl.server.fedavg()), devices,
                      deadline=0.5, keep=4)
  want, history = fl.run_rounds(algo, algo.init(task.params), train, num_rounds=6,
                                cohort_size=math.ceil(1.5 * 4), key=jax.random.key(0),
                                progress=False)
  saved, _ = load_checkpoint(tmp_path / "full" / "checkpoint.ckpt", want)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               saved.params, want.params)
  assert [r["round_time"] for r in rows] == pytest.approx([h["round_time"] for h in history])
  np.testing.assert_allclose([r["virtual_time"] for r in rows],
                             np.cumsum([h["round_time"] for h in history]), rtol=1e-6)
  assert any(r["num_late"] > 0 for r in rows) and all(r["clients"] <= 4 for r in rows)

  _run(tmp_path, "part", SYNC, stop_after=4)
  config = experiment.resolve_config(None, {**SYNC, "out": str(tmp_path / "part"),
                                            "resume": True})
  experiment.run_experiment(config, log=lambda s: None)
  strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
  assert strip(_rows(tmp_path / "part")) == strip(rows)


def test_a_device_trace_file_sets_every_speed(tmp_path):
  trace = tmp_path / "speeds.txt"
  np.savetxt(trace, np.linspace(0.001, 0.05, 12))
  _, summary = _run(tmp_path, "run", {**SMALL, "clients_per_round": 4, "rounds": 2,
                                      "virtual_clock": True, "device_trace": str(trace)})
  rows = _rows(tmp_path / "run")
  assert all(r["round_time"] > 0 and r["num_late"] == 0 for r in rows)
  assert summary["virtual_time_total"] == pytest.approx(sum(r["round_time"] for r in rows))


@pytest.mark.parametrize("argv, message", [
    (["--dp", "gaussian", "--noise-multiplier", "1", "--deadline", "1"],
     "--dp gaussian with --deadline is refused"),
    (["--dp", "gaussian", "--noise-multiplier", "1", "--over-select", "1.2"],
     "--dp gaussian with --over-select is refused"),
    (["--algorithm", "fedbuff", "--dp", "gaussian", "--noise-multiplier", "1"],
     "--algorithm fedbuff with --dp is refused"),
    (["--algorithm", "fedbuff", "--sweep", "seed=0,1"], "--sweep with --algorithm fedbuff"),
    (["--device-sigma", "2"], "--device-sigma does not apply here"),
    (["--algorithm", "fedasync", "--buffer", "3"], "--buffer does not apply here"),
    (["--algorithm", "fedbuff", "--clients-per-round", "3"],
     "--clients-per-round does not apply here"),
    (["--partial-work"], "--partial-work does not apply here: it needs --deadline"),
    (["--deadline", "1", "--stragglers", "0.5"], "--local-work and --stragglers set local work"),
    (["--virtual-clock", "--local-work", "fixed:3"],
     "--local-work and --stragglers set local work"),
    (["--algorithm", "fedbuff", "--concurrency", "100"], "--concurrency 100 exceeds"),
    (["--algorithm", "fedbuff", "--buffer", "5", "--concurrency", "4"],
     "--buffer 5 exceeds --concurrency 4"),
    (["--over-select", "9"], "--over-select 9.0 samples 90 clients"),
    (["--deadline", "1", "--partial-work", "--algorithm", "fedsgd"],
     "--partial-work cuts local work"),
    (["--virtual-clock", "--device-trace", "/nonexistent.npy"],
     "--device-trace /nonexistent.npy does not exist"),
])
def test_bad_timing_options_are_one_line(tmp_path, capsys, argv, message):
  status = cli.main(["run", "--rounds", "2", "--num-clients", "12", "--json", "-q",
                     "--no-progress", *argv, "--out", str(tmp_path / "run")])
  out, err = capsys.readouterr()
  assert status != 0 and out == ""
  assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
  assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_trace_of_the_wrong_length_is_named(tmp_path, capsys):
  trace = tmp_path / "speeds.npy"
  np.save(trace, np.ones(5))
  status = cli.main(["run", "--rounds", "1", "--num-clients", "12", "--json", "-q",
                     "--no-progress", "--virtual-clock", "--device-trace", str(trace),
                     "--out", str(tmp_path / "run")])
  err = capsys.readouterr().err
  assert status != 0 and "has 5 entries" in err and "one seconds-per-example value per client (12" \
      in err and len(err.strip().splitlines()) == 1


def test_a_sweep_on_the_virtual_clock_equals_its_single_runs(tmp_path):
  settings = {**SYNC, "rounds": 3, "eval_every": 0}
  config = experiment.resolve_config(None, {**settings, "out": str(tmp_path / "sweep"),
                                            "sweep": ["client_lr=0.05,0.2"]})
  info = experiment.run_experiment(config, log=lambda s: None)
  _run(tmp_path, "single", {**settings, "client_lr": 0.2})
  swept = _rows(tmp_path / "sweep" / info["experiments"][1]["dir"])
  single = _rows(tmp_path / "single")
  for a, b in zip(swept, single, strict=True):
    for k in ("round_time", "virtual_time", "train_loss", "num_late", "clients"):
      assert a[k] == pytest.approx(b[k], rel=1e-5), k
