"""Bad configurations and bad command lines: one line naming the option, never a traceback.

Property-based over every option: a TOML value of the wrong type for any key
is refused with a message naming the key, the value and the expected type;
an option the configuration does not use is refused with the reason; and no
refused invocation creates or changes a run directory.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedjax_lite import cli, experiment
from fedjax_lite.experiment import options, schema

KEYS = [k for k, (_, opt) in options.OPTIONS.items() if opt.kind != "sweep"]


def _wrong_values(opt: schema.Opt):
  """Values of a type the option does not accept."""
  candidates = [True, 3, 2.5, "false", "yes", "3", [1], {"a": 1}]
  wrong = []
  for v in candidates:
    if opt.kind is bool and isinstance(v, bool):
      continue
    if opt.kind in (int, schema.INT_OR_AUTO, schema.INT_OR_ALL) and type(v) is int:
      continue
    if opt.kind is float and type(v) in (int, float):
      continue
    if opt.kind is str and isinstance(v, str):
      continue
    wrong.append(v)
  return wrong


def _toml(value) -> str:
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, str):
    return f'"{value}"'
  if isinstance(value, list):
    return "[" + ", ".join(_toml(v) for v in value) + "]"
  if isinstance(value, dict):
    return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
  return repr(value)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_wrongly_typed_toml_value_names_the_key_value_and_type(data, tmp_path):
  key = data.draw(st.sampled_from(KEYS))
  value = data.draw(st.sampled_from(_wrong_values(options.OPTIONS[key][1])))
  section = options.OPTIONS[key][0]
  as_table = data.draw(st.booleans())
  text = (f"[{section}]\n{key} = {_toml(value)}\n" if as_table
          else f"{key} = {_toml(value)}\n")
  path = tmp_path / "c.toml"
  path.write_text(text)
  with pytest.raises(experiment.ConfigError) as e:
    experiment.resolve_config(path, {})
  message = str(e.value)
  assert key in message and str(path) in message and "\n" not in message, message
  assert "must be" in message or "unknown" in message, message


@pytest.mark.parametrize("text, match", [
    ('overwrite = "false"', r"overwrite \(in .*\) must be true or false; got a string 'false'"),
    ('local_dp = "false"', "local_dp .* must be true or false; got a string 'false'"),
    ('resume = "yes"', "resume .* must be true or false; got a string 'yes'"),
    ("rounds = 2.5", r"rounds .* must be an integer; got a number 2\.5"),
    ("rounds = true", "rounds .* must be an integer; got a boolean True"),
    ('client_lr = "0.1"', "client_lr .* must be a number; got a string '0.1'"),
    ("[training]\nmu = 0.1", r"unknown key 'mu' in \[training\] .*; it belongs in \[algorithm\]"),
    ("[nonsense]\nx = 1", "unknown key 'nonsense'"),
])
def test_toml_examples(tmp_path, text, match):
  path = tmp_path / "c.toml"
  path.write_text(text + "\n")
  with pytest.raises(experiment.ConfigError, match=match):
    experiment.resolve_config(path, {})


def test_toml_tables_and_flat_keys_mean_the_same(tmp_path):
  flat, tables = tmp_path / "flat.toml", tmp_path / "tables.toml"
  flat.write_text('rounds = 3\nalgorithm = "fedprox"\nmu = 0.5\ndp = "gaussian"\n'
                  "noise_multiplier = 1.0\n")
  tables.write_text('[training]\nrounds = 3\n[algorithm]\nalgorithm = "fedprox"\nmu = 0.5\n'
                    '[privacy]\ndp = "gaussian"\nnoise_multiplier = 1.0\n')
  a, b = experiment.resolve_config(flat, {}), experiment.resolve_config(tables, {})
  assert a == b and a["mu"] == 0.5 and a["rounds"] == 3
  typed = options.build(a)
  assert typed.algorithm.mu == 0.5 and typed.training.rounds == 3
  assert typed.privacy.noise_multiplier == 1.0 and options.flat(typed) == a


@pytest.mark.parametrize("given, match", [
    ({"mu": 0.5}, "--mu does not apply here: it is fedprox's hyperparameter"),
    ({"clip": 2.0, "adaptive_clip": True}, "--clip does not apply here: it is a "
     "differential-privacy option and --dp is none"),
    ({"dp": "gaussian", "noise_multiplier": 1.0, "target_quantile": 0.3},
     "--target-quantile does not apply here: it is --adaptive-clip's parameter"),
    ({"trim_beta": 0.2}, "--trim-beta does not apply here: --aggregator mean does not read it "
     r"\(it is for --aggregator trimmed_mean\)"),
    ({"aggregator": "krum", "num_byzantine": 100}, "needs --clients-per-round >= 203, got 10"),
    ({"alpha": 0.3, "partition": "iid"}, "--alpha does not apply here"),
    ({"hidden": 32, "model": "logreg"}, "--hidden does not apply here"),
    ({"data_dir": "/x"}, "--data-dir does not apply here: --dataset digits does not read it"),
    ({"attack_scale": 3.0}, "--attack-scale does not apply here: --attack none does not read"),
    ({"dataset": "shakespeare", "model": "char_lstm", "num_clients": 5},
     "--num-clients does not apply here: --dataset shakespeare does not read it"),
    ({"straggler_mode": "partial"}, "--straggler-mode does not apply here: it needs "
     "--stragglers > 0"),
    ({"server_optimizer": "fedadam"}, "--server-optimizer does not apply here"),
    ({"algorithm": "scaffold", "local_work": "fixed:2"}, "--local-work does not apply here"),
])
def test_options_that_do_not_apply_are_refused_with_the_reason(given, match):
  with pytest.raises(experiment.ConfigError, match=match):
    experiment.resolve_config(None, given)


def test_defaults_that_are_not_given_never_count_as_given():
  experiment.resolve_config(None, {"algorithm": "fedprox", "mu": 0.3})
  experiment.resolve_config(None, {"dp": "gaussian", "noise_multiplier": 1.0, "clip": 0.5})


@pytest.mark.parametrize("argv", [
    ["run", "--rounds", "0"],
    ["run", "--rounds", "many"],
    ["run", "--overwrite", "--resume"],
    ["run", "--dataset", "cifar"],
    ["run", "--mu", "0.5"],
    ["run", "--sweep", "mu=0.1,0.2"],
    ["run", "--dp", "gaussian"],
    ["run", "--chunk-size", "-3"],
    ["run", "--config", "/nonexistent/c.toml"],
    ["run", "--nonsense"],
    ["privacy", "epsilon", "--noise-multiplier", "1", "--sampling-rate", "0", "--rounds", "5",
     "--delta", "1e-5"],
    ["privacy", "epsilon", "--noise-multiplier", "1", "--sampling-rate", "0.1", "--rounds",
     "0", "--delta", "1e-5"],
    ["privacy", "epsilon", "--noise-multiplier", "-1", "--sampling-rate", "0.1", "--rounds",
     "5", "--delta", "1e-5"],
    ["privacy", "epsilon", "--noise-multiplier", "1", "--sampling-rate", "0.1", "--rounds",
     "5", "--delta", "2"],
    ["privacy", "epsilon", "--noise-multiplier", "1", "--sampling-rate", "0.1", "--rounds",
     "5", "--delta", "1e-5", "--num-clients", "1000"],
    ["privacy", "epsilon", "--noise-multiplier", "1", "--sampling-rate", "0.15", "--rounds",
     "5", "--delta", "1e-5", "--sampling", "fixed", "--num-clients", "10"],
    ["privacy", "noise", "--target-epsilon", "-1", "--sampling-rate", "0.1", "--rounds", "5",
     "--delta", "1e-5"],
])
def test_bad_invocations_end_with_one_line_and_touch_nothing(argv, tmp_path, capsys):
  out = tmp_path / "out"
  extra = ["--out", str(out)] if argv[0] == "run" else []
  try:
    status = cli.main([*argv, *extra])
  except SystemExit as e:  # argparse's own refusals
    status = e.code
  err = capsys.readouterr().err
  assert status == 2, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in err and "error:" in lines[0], err
  assert not out.exists()


def test_the_privacy_command_answers_valid_questions(capsys):
  assert cli.main(["privacy", "epsilon", "--noise-multiplier", "1", "--sampling-rate", "0.1",
                   "--rounds", "5", "--delta", "1e-5", "--sampling", "fixed",
                   "--num-clients", "100"]) == 0
  assert math.isfinite(__import__("json").loads(capsys.readouterr().out)["epsilon"])


def test_adding_a_toy_algorithm_to_the_cli_is_one_registration(tmp_path):
  """A Preset added to fedjax_lite.algorithms.PRESETS (here before the options are read) is
  an --algorithm with its own flag, default, range check and help text."""
  code = f"""
import sys
from fedjax_lite import algorithms
from fedjax_lite.algorithms import registry

def build(ctx, toy_scale):
  import fedjax_lite as fl
  update = fl.build_client_update(ctx.loss_fn, ctx.client_optimizer, num_epochs=1,
                                  batch_size=ctx.batch_size)
  return fl.build_federated_algorithm(update, fl.server.fedavg(toy_scale),
                                      aggregator=ctx.aggregator)

algorithms.PRESETS["toy"] = registry.Preset(
    "toy", "a toy: FedAvg with a scaled server step", build,
    (registry.Hyperparameter("toy_scale", float, 1.0, "the toy's server scale", low=0.0),))

from fedjax_lite import cli
assert cli.main(["run", "--algorithm", "toy", "--toy-scale", "-1",
                 "--out", {str(tmp_path / 'a')!r}]) == 2
sys.exit(cli.main(["run", "--algorithm", "toy", "--toy-scale", "0.5", "--model", "logreg",
                   "--rounds", "2", "--out", {str(tmp_path / 'b')!r}, "-q", "--json"]))
"""
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, cwd=Path(__file__).parent.parent)
  assert done.returncode == 0, done.stderr
  assert "--toy-scale must be >= 0; got -1.0" in done.stderr
  assert '"rounds_completed": 2' in done.stdout


def test_every_catalog_and_preset_builder_resolves():
  """The registrations name their builders by import path; each must exist and be callable."""
  import importlib

  from fedjax_lite.algorithms import PRESETS
  from fedjax_lite.experiment import catalog

  paths = [c.build for cat in (catalog.AGGREGATORS, catalog.ATTACKS, catalog.DATASETS)
           for c in cat.values()] + [p.build for p in PRESETS.values()]
  for path in paths:
    module, _, attr = path.partition(":")
    assert callable(getattr(importlib.import_module(module), attr)), path
  for cat in (catalog.AGGREGATORS, catalog.ATTACKS, catalog.DATASETS):
    for choice in cat.values():
      assert set(choice.reads) <= set(options.OPTIONS), choice
  with pytest.raises(ValueError, match="two choices are named 'mean'"):
    catalog.collect([catalog.AGGREGATORS["mean"]] * 2)
