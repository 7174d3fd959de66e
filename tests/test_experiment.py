"""The main job: configuration, outputs, resume, and its errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from fedjax_lite import experiment
from fedjax_lite.checkpoint import CheckpointError, load_checkpoint

SMALL = {"dataset": "digits", "model": "logreg", "num_clients": 12, "clients_per_round": 4,
         "rounds": 6, "local_epochs": 1, "batch_size": 8, "eval_every": 2,
         "checkpoint_every": 2, "progress": False}


def _config(tmp_path, name="run", **kw):
  return experiment.resolve_config(None, {**SMALL, "out": str(tmp_path / name), **kw})


def _params(out, config):
  task = experiment.build_task(config)
  import fedjax_lite as fl
  algo = fl.build_federated_algorithm(
      fl.build_client_update(task.loss, experiment._client_optimizer(config), batch_size=8),
      fl.server.fedavg())
  state, _ = load_checkpoint(out / "checkpoint.ckpt", algo.init(task.params))
  return state


def test_run_writes_every_output(tmp_path):
  summary = experiment.run_experiment(_config(tmp_path), log=lambda s: None)
  out = tmp_path / "run"
  saved = json.loads((out / "config.json").read_text())
  assert saved["config"]["rounds"] == 6 and saved["seed"] == 0
  assert {"jax", "flax", "optax", "fedjax_lite"} <= set(saved["versions"])
  rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in rows] == list(range(6))
  for r in rows:
    assert {"round", "train_loss", "clients", "examples", "seconds"} <= set(r)
    assert r["clients"] == 4 and r["examples"] > 0
  evals = [r for r in rows if "eval_accuracy" in r]
  assert [r["round"] for r in evals] == [1, 3, 5]
  for key in ("eval_loss", "eval_accuracy_p10", "eval_accuracy_p50", "eval_accuracy_p90",
              "eval_accuracy_worst", "central_accuracy"):
    assert key in evals[-1]
  assert evals[-1]["eval_accuracy_worst"] <= evals[-1]["eval_accuracy_p50"]
  assert json.loads((out / "summary.json").read_text()) == summary
  assert summary["finished"] and summary["rounds_completed"] == 6
  assert summary["eval_accuracy"] > 2 * summary["chance_accuracy"]  # digits learns fast
  assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
  assert (out / "checkpoint.ckpt").exists()


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
  full_cfg = _config(tmp_path, "full")
  experiment.run_experiment(full_cfg, log=lambda s: None)
  part_cfg = _config(tmp_path, "part")
  experiment.run_experiment(part_cfg, stop_after=3, log=lambda s: None)  # checkpoint at 2
  # The "killed" run wrote round 2's metrics past its last checkpoint.
  resumed = experiment.resolve_config(None, {**SMALL, "out": str(tmp_path / "part"),
                                             "resume": True})
  experiment.run_experiment(resumed, log=lambda s: None)
  a, b = _params(tmp_path / "full", full_cfg), _params(tmp_path / "part", resumed)
  assert int(a.round) == int(b.round) == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert np.array_equal(np.asarray(x), np.asarray(y))
  rows = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in rows] == list(range(6))
  full_rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text()
               .splitlines()]
  assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in full_rows]


# A SIGKILLed (and a SIGTERMed) `fedjax-lite run` resumed to the uninterrupted run bit for
# bit: tests/test_run_safety.py.


def test_config_file_and_flag_precedence(tmp_path):
  cfg = tmp_path / "c.toml"
  cfg.write_text('dataset = "digits"\nclients-per-round = 7\nclient_lr = 0.2\n')
  c = experiment.resolve_config(cfg, {"client_lr": 0.3, "rounds": None})
  assert c["clients_per_round"] == 7 and c["client_lr"] == 0.3
  assert c["rounds"] == experiment.DEFAULTS["rounds"]
  cfg.write_text("clients_per_rnd = 3\n")
  with pytest.raises(experiment.ConfigError, match="unknown key 'clients_per_rnd'"):
    experiment.resolve_config(cfg, {})
  cfg.write_text("rounds = [\n")
  with pytest.raises(experiment.ConfigError, match="not valid TOML"):
    experiment.resolve_config(cfg, {})


@pytest.mark.parametrize("key, value, match", [
    ("dataset", "cifar", "unknown dataset 'cifar'; choose one of: digits, fashion_mnist"),
    ("model", "resnet", "unknown model 'resnet'; choose one of: logreg"),
    ("algorithm", "fedsgd9", "unknown algorithm 'fedsgd9'; choose one of: fedavg"),
    ("partition", "zipf", "unknown partition 'zipf'"),
    ("rounds", 0, "rounds must be >= 1; got 0"),
    ("client_lr", -1.0, "--client-lr must be > 0; got -1.0"),
    ("model", "char_lstm", "needs dataset 'shakespeare'"),
])
def test_invalid_values_are_named(key, value, match):
  with pytest.raises(experiment.ConfigError, match=match):
    experiment.resolve_config(None, {key: value})


def test_output_directory_errors_come_before_training(tmp_path):
  (tmp_path / "busy").mkdir()
  (tmp_path / "busy" / "x").write_text("data")
  with pytest.raises(experiment.ConfigError, match="not empty; pass --resume .* --overwrite"):
    experiment.run_experiment(_config(tmp_path, "busy"), log=lambda s: None)
  (tmp_path / "afile").write_text("x")
  with pytest.raises(experiment.ConfigError, match="not a directory|not writable"):
    experiment.run_experiment(_config(tmp_path, "afile/sub"), log=lambda s: None)
  with pytest.raises(experiment.ConfigError, match="no run to resume"):
    experiment.run_experiment(_config(tmp_path, "fresh", resume=True), log=lambda s: None)
  # --overwrite replaces the old outputs.
  summary = experiment.run_experiment(_config(tmp_path, "busy", overwrite=True, rounds=2),
                                      log=lambda s: None)
  assert summary["rounds_completed"] == 2


def test_resume_refuses_changed_configuration_and_corrupted_checkpoint(tmp_path):
  experiment.run_experiment(_config(tmp_path, rounds=2), log=lambda s: None)
  changed = r"differs from the saved run in \['client_lr'\]"
  with pytest.raises(experiment.ConfigError, match=changed):
    experiment.run_experiment(_config(tmp_path, resume=True, client_lr=0.5), log=lambda s: None)
  ckpt = tmp_path / "run" / "checkpoint.ckpt"
  data = bytearray(ckpt.read_bytes())
  data[-3] ^= 0x55
  ckpt.write_bytes(bytes(data))
  with pytest.raises(CheckpointError, match="corrupted"):
    experiment.run_experiment(_config(tmp_path, resume=True, rounds=4), log=lambda s: None)


@pytest.mark.parametrize("dp_args", [
    {"dp": "gaussian", "noise_multiplier": 0.8, "clip": 0.5, "sampling": "poisson"},
    {"dp": "gaussian", "target_epsilon": 20.0, "clip": 0.5, "adaptive_clip": True,
     "num_clients": 100, "clients_per_round": 40},
    {"dp": "laplace", "noise_multiplier": 2.0, "clip": 1.0, "sampling": "poisson",
     "accountant": "pld"},
])
def test_dp_run_reports_epsilon_every_round(tmp_path, dp_args):
  from fedjax_lite import privacy
  config = _config(tmp_path, rounds=4, eval_every=0, **dp_args)
  summary = experiment.run_experiment(config, log=lambda s: None)
  rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  eps = [r["epsilon"] for r in rows]
  assert all(0 < a < b for a, b in zip(eps, eps[1:], strict=False))
  assert all("clip" in r and "noise_std" in r for r in rows)
  spec = privacy.DPSpec(**{k: v for k, v in summary["privacy"].items()
                           if k in ("mechanism", "noise_multiplier", "sampling", "num_clients",
                                    "num_sampled", "count_noise_std", "local")})
  expected = privacy.epsilon(spec, 4, 1e-5, summary["privacy"]["accountant"])
  np.testing.assert_allclose(summary["epsilon"], expected, rtol=1e-9)
  np.testing.assert_allclose(eps[-1], expected, rtol=1e-9)
  if "target_epsilon" in dp_args:
    # Calibrated over all rounds of the run.
    assert abs(summary["epsilon"] - 20.0) / 20.0 < 0.01
  if dp_args.get("adaptive_clip"):
    assert rows[-1]["clip"] != rows[0]["clip"] and "unclipped_fraction" in rows[0]


@pytest.mark.parametrize("overrides, match", [
    ({"dp": "gaussian"}, "exactly one of --noise-multiplier and --target-epsilon"),
    ({"noise_multiplier": 1.0}, "--noise-multiplier does not apply here: it is a "
                               "differential-privacy option and --dp is none"),
    ({"dp": "laplace", "noise_multiplier": 1.0, "adaptive_clip": True}, "needs --dp gaussian"),
    ({"dp": "gaussian", "noise_multiplier": 1.0, "clip": 0.0}, "clip must be > 0"),
    ({"dp": "gaussian", "noise_multiplier": 1.0, "delta": 1.0}, "delta must be in"),
    ({"dp": "gaussian", "noise_multiplier": 1.0, "accountant": "zcdp"}, "unknown accountant"),
    ({"dp": "shuffle"}, "unknown dp 'shuffle'"),
])
def test_dp_configuration_errors(overrides, match):
  with pytest.raises(experiment.ConfigError, match=match):
    experiment.resolve_config(None, overrides)


def test_dp_unsupported_accounting_is_refused_before_training(tmp_path):
  config = _config(tmp_path, dp="laplace", noise_multiplier=1.0, sampling="poisson",
                   accountant="rdp")
  with pytest.raises(experiment.ConfigError, match="use --accountant pld"):
    experiment.run_experiment(config, log=lambda s: None)
  assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_resume_keeps_rounds_fixed_when_noise_was_calibrated(tmp_path):
  config = _config(tmp_path, rounds=2, dp="gaussian", target_epsilon=50.0, clip=0.5,
                   num_clients=40, clients_per_round=20)
  experiment.run_experiment(config, log=lambda s: None)
  more = _config(tmp_path, rounds=3, dp="gaussian", target_epsilon=50.0, clip=0.5,
                 num_clients=40, clients_per_round=20, resume=True)
  with pytest.raises(experiment.ConfigError, match="calibrated for the run's total rounds"):
    experiment.run_experiment(more, log=lambda s: None)


def test_resume_of_a_run_saved_before_an_option_existed(tmp_path):
  # A run saved by an earlier version has no entry for options added since; it ran with
  # their defaults, so resuming it with the defaults is not a change.
  experiment.run_experiment(_config(tmp_path, rounds=2), log=lambda s: None)
  saved_path = tmp_path / "run" / "config.json"
  saved = json.loads(saved_path.read_text())
  for key in ("secagg_dropout", "virtual_clock", "staleness", "bands"):
    del saved["config"][key]
  saved_path.write_text(json.dumps(saved))
  summary = experiment.run_experiment(_config(tmp_path, resume=True, rounds=3),
                                      log=lambda s: None)
  assert summary["rounds_completed"] == 3
  with pytest.raises(experiment.ConfigError,
                     match=r"\['secagg_bits', 'secagg_clip', 'secagg_dropout'\]"):
    experiment.run_experiment(_config(tmp_path, resume=True, rounds=4, secagg_bits=8,
                                      secagg_clip=1.0, secagg_dropout=0.5),
                              log=lambda s: None)
