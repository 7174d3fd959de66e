"""Every algorithm, aggregator and attack the command line offers builds and runs.

The algorithms' numerics are tested against plain references in their own
test files; here each named configuration is built through
:mod:`fedjax_lite.presets` (what ``fedjax-lite run`` does), run for two
sampled rounds on a tiny population, and checked to train (finite, changed
parameters, its own metrics present); the configuration errors name the fix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from fedjax_lite import algorithms, cli, experiment, presets
from fedjax_lite.algorithms import registry
from tests.conftest import linear_model, make_clients

SIZES = (5, 0, 13, 1, 8, 21, 3, 7, 2, 9, 6, 4)


def _config(**overrides):
  return {**experiment.DEFAULTS, "clients_per_round": 6, "local_epochs": 1, "batch_size": 4,
          "client_lr": 0.1, "chunk_size": 3, **overrides}


def _run(config, dp_aggregator=None, mesh=None):
  params, loss = linear_model()
  pop = fl.from_clients(make_clients(SIZES), max_examples=24)
  algo = presets.build_algorithm(config, loss, optax.sgd(config["client_lr"]),
                                 dp_aggregator=dp_aggregator, mesh=mesh)
  state = algo.init(params, num_clients=len(SIZES))
  if mesh is not None:
    pop = fl.shard_clients(pop, mesh)
  state, history = fl.run_rounds(algo, state, pop, num_rounds=2, cohort_size=6,
                                 key=jax.random.key(0), progress=False)
  moved = sum(float(jnp.sum(jnp.abs(a - b))) for a, b in
              zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
  assert moved > 0, "the model did not change"
  return state, history


# Every registered algorithm runs with its default hyperparameters (so a new
# one is covered here without an edit), plus the variations below.
CASES = {name: {"algorithm": name} for name in algorithms.PRESETS} | {
    "fedavg": {},
    "fedadam": {"algorithm": "fedadam"},
    "fedprox": {"algorithm": "fedprox", "mu": 0.5},
    "fedprox_stragglers": {"algorithm": "fedprox", "stragglers": 0.5,
                           "straggler_mode": "partial"},
    "fedavg_drop_stragglers": {"stragglers": 0.5, "straggler_mode": "drop"},
    "fedavg_sampled_work": {"local_work": "sampled:1-3"},
    "fedsgd": {"algorithm": "fedsgd"},
    "fednova": {"algorithm": "fednova", "local_work": "proportional:0.3"},
    "scaffold": {"algorithm": "scaffold"},
    "mime_lite": {"algorithm": "mime_lite", "server_optimizer": "fedavgm"},
    "ditto": {"algorithm": "ditto", "ditto_lambda": 0.5},
    "qffl": {"algorithm": "qffl", "q": 1.0},
    "median_sign_flip": {"aggregator": "median", "attack": "sign_flip",
                         "attack_fraction": 0.3, "attack_scale": 3.0},
    "krum_norm_bound_quantized": {"aggregator": "krum", "num_byzantine": 1, "norm_bound": 1.0,
                                  "quantize_bits": 4},
    "trimmed_mean_gaussian_attack": {"aggregator": "trimmed_mean", "trim_beta": 0.2,
                                     "attack": "gaussian", "attack_fraction": 0.2},
    "topk_error_feedback": {"topk_fraction": 0.3},
}

EXPECTED_METRIC = {
    "fedprox_stragglers": "num_steps", "fedavg_drop_stragglers": "num_dropped_stragglers",
    "median_sign_flip": "num_malicious", "krum_norm_bound_quantized": "aggregator/bits_sent",
    "topk_error_feedback": "num_bits_sent", "ditto": "num_personal_steps",
}


# Run on one and on four devices by the test below (and checked like the rest).
SHARDED = ("fednova", "mime_lite", "ditto", "qffl", "fedsgd", "topk_error_feedback",
           "fedprox_stragglers")


def _check(name, config, state, history):
  if name in EXPECTED_METRIC:
    assert EXPECTED_METRIC[name] in history[-1], sorted(history[-1])
  if config["algorithm"] in presets.STATEFUL or config["topk_fraction"]:
    assert jax.tree.leaves(state.client_states)[0].shape[0] == len(SIZES)


@pytest.mark.parametrize("name", [n for n in CASES if n not in SHARDED])
def test_every_named_configuration_trains(name):
  config = _config(**CASES[name])
  experiment._validate_run(config)
  state, history = _run(config)
  _check(name, config, state, history)


@pytest.mark.parametrize("algorithm", ["fedprox", "scaffold"])
def test_dp_composes_with_fedprox_and_scaffold(algorithm):
  config = _config(algorithm=algorithm, dp="gaussian", noise_multiplier=0.5, mu=0.1)
  dp = fl.privacy.gaussian_aggregator(1.0, 0.5, expected_cohort_size=6)
  _, history = _run(config, dp_aggregator=dp)
  assert history[-1]["aggregator/noise_std"] == pytest.approx(0.5 * 1.0 / 6, rel=1e-5)


def test_robust_aggregation_composes_with_sharding():
  config = _config(aggregator="trimmed_mean", trim_beta=0.2, attack="sign_flip",
                   attack_fraction=0.3)
  one, _ = _run(config)
  four, _ = _run(config, mesh=fl.client_mesh(4))
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides,match", [
    ({"algorithm": "fedlol"}, "unknown algorithm 'fedlol'; choose one of: fedavg"),
    ({"aggregator": "mode"}, "unknown aggregator 'mode'"),
    ({"aggregator": "median", "dp": "gaussian", "noise_multiplier": 1.0},
     "sensitivity of the clipped sum"),
    ({"algorithm": "qffl", "dp": "gaussian", "noise_multiplier": 1.0}, "divides by a sum"),
    ({"algorithm": "scaffold", "topk_fraction": 0.1}, "wraps FedAvg's client update"),
    ({"algorithm": "fedadam", "server_optimizer": "fedyogi"}, "contradicts it"),
    ({"algorithm": "fedprox", "server_optimizer": "sgd"}, "unknown server_optimizer"),
    ({"attack": "sign_flip"}, "needs --attack-fraction > 0"),
    ({"attack_fraction": 0.2}, "needs --attack sign_flip"),
    ({"local_work": "some:3"}, "full, fixed:STEPS"),
    ({"local_work": "sampled:5-2"}, "local_work 'sampled:5-2'"),
    ({"stragglers": 1.5}, "stragglers must be in"),
    ({"stragglers": 0.5, "local_work": "fixed:2"}, "leave --local-work full"),
    ({"algorithm": "ditto", "stragglers": 0.5}, "not ditto"),
    ({"trim_beta": 0.5}, "trim_beta must be in"),
    ({"quantize_bits": 0}, "quantize_bits must be in \\[1, 32\\]"),
    ({"mu": -1.0}, "mu must be >= 0; got -1.0"),
])
def test_configuration_errors_name_the_fix(overrides, match):
  with pytest.raises(experiment.ConfigError, match=match):
    experiment._validate_run(_config(**overrides))


def test_attack_on_other_algorithms_is_refused_with_the_library_route():
  config = _config(algorithm="scaffold", attack="sign_flip", attack_fraction=0.2)
  with pytest.raises(experiment.ConfigError, match="fedjax_lite.attacks"):
    experiment._algorithm(config, experiment.Task(None, None, None, linear_model()[1], None),
                          None)


def test_cli_ditto_run_reports_personal_and_fine_tuned_accuracy(tmp_path):
  config = experiment.resolve_config(None, {
      "algorithm": "ditto", "model": "logreg", "rounds": 2, "eval_every": 2,
      "clients_per_round": 5, "num_clients": 20, "fine_tune_epochs": 1, "eval_train": True,
      "out": str(tmp_path / "run"), "progress": False})
  summary = experiment.run_experiment(config, log=lambda line: None)
  for key in ("personal_eval_accuracy", "finetune_eval_accuracy", "train_eval_loss",
              "eval_accuracy"):
    assert 0 <= summary[key] <= max(1.0, summary[key]), key
  assert summary["personal_eval_accuracy"] != summary["eval_accuracy"]


@pytest.mark.parametrize("name", SHARDED)
def test_algorithms_on_four_devices_equal_one_device(name):
  config = _config(**CASES[name])
  experiment._validate_run(config)
  one, history = _run(config)
  _check(name, config, one, history)
  four, _ = _run(config, mesh=fl.client_mesh(4))
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_stateful_run_resumes_exactly(tmp_path):
  """A resumed SCAFFOLD run (client control variates in the checkpoint) equals the
  uninterrupted one bit for bit."""
  base = {"algorithm": "scaffold", "model": "logreg", "rounds": 4, "checkpoint_every": 2,
          "eval_every": 4, "num_clients": 20, "clients_per_round": 5, "progress": False}
  whole = experiment.run_experiment(experiment.resolve_config(
      None, {**base, "out": str(tmp_path / "whole")}), log=lambda line: None)
  experiment.run_experiment(experiment.resolve_config(
      None, {**base, "out": str(tmp_path / "cut")}), stop_after=2, log=lambda line: None)
  resumed = experiment.run_experiment(experiment.resolve_config(
      None, {**base, "out": str(tmp_path / "cut"), "resume": True}), log=lambda line: None)
  for key in ("final_train_loss", "eval_loss", "central_loss"):
    assert resumed[key] == whole[key], key


def test_the_registry_is_the_one_place_an_algorithm_is_named():
  """presets, its defaults and checks, and the command line's flags come from
  fedjax_lite.algorithms.PRESETS: adding an algorithm touches its module, the
  package __init__ and its test."""
  parser = cli.argparse.ArgumentParser()
  cli._run_parser(parser.add_subparsers())
  flags = {a.dest: a for a in parser._subparsers._group_actions[0].choices["run"]._actions}
  for name, preset in algorithms.PRESETS.items():
    assert name in presets.ALGORITHMS and name in experiment.ALGORITHMS
    assert (name in presets.STATEFUL) == preset.stateful
    for h in preset.hyperparameters:
      assert experiment.DEFAULTS[h.key] == h.default
      assert flags[h.key].type is h.kind and h.help in flags[h.key].help
      if h.low is not None:  # the registry's range is what the configuration checks
        below = h.low - (0 if h.low_open else 1)
        with pytest.raises(experiment.ConfigError, match=f"{h.key} must be"):
          experiment._validate_run(_config(algorithm=name, **{h.key: h.kind(below)}))


def test_registry_refuses_ambiguous_names_and_checks_domains():
  h = registry.Hyperparameter("beta", float, 0.5, "a rate", low=0.0, high=1.0, high_open=True)
  h.check(0.0)
  for bad, error in ((1.0, ValueError), (-0.1, ValueError), ("0.5", TypeError),
                     (True, TypeError), (None, TypeError)):
    with pytest.raises(error, match="`beta` must be"):
      h.check(bad)
  steps = registry.Hyperparameter("steps", int, 1, "steps", low=1)
  with pytest.raises(TypeError, match="`steps` must be an int"):
    steps.check(1.5)
  a = registry.Preset("a", "A", build=lambda ctx, beta: None, hyperparameters=(h,))
  b = registry.Preset("b", "B", build=lambda ctx, beta: None, hyperparameters=(h,))
  assert list(registry.collect([a])) == ["a"]
  with pytest.raises(ValueError, match="two presets are named 'a'"):
    registry.collect([a, a])
  with pytest.raises(ValueError, match="key 'beta' of 'b' is already 'a'"):
    registry.collect([a, b])
  with pytest.raises(TypeError, match="kind must be int or float"):
    registry.Hyperparameter("name", str, "x", "a string")
