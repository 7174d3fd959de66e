"""Vectorized sweeps equal the runs done one by one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from tests.conftest import MODELS


def _setup():
  data = fl.datasets.synthetic_classification(40, np.arange(40) % 7 + 1, num_features=6,
                                              num_classes=3, seed=2)
  params, loss = MODELS["mlp"]()
  return data, params, loss


def _make(loss, lr_default=0.1, server=None):
  def make(h):
    lr = h["client_lr"] if isinstance(h, dict) else lr_default
    update = fl.build_client_update(loss, optax.sgd(lr), num_epochs=2, batch_size=3)
    return fl.build_federated_algorithm(update, server or fl.server.fedadam(0.05),
                                        chunk_size=4)
  return make


def _assert_close(a, b, tol=2e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_seed_sweep_equals_sequential_runs():
  data, params, loss = _setup()
  make = _make(loss)
  keys = jax.vmap(jax.random.key)(jnp.arange(3))
  states, hist = fl.run_sweep(make, None, params, data, num_rounds=3, keys=keys, cohort_size=8)
  assert hist[0]["train_loss"].shape == (3,)
  for s in range(3):
    algo = make(None)
    ref, ref_hist = fl.run_rounds(algo, algo.init(params), data, num_rounds=3, cohort_size=8,
                                  key=jax.random.key(s), progress=False)
    _assert_close(jax.tree.map(lambda x, s=s: x[s], states), ref)
    np.testing.assert_allclose([h["train_loss"][s] for h in hist],
                               [h["train_loss"] for h in ref_hist], rtol=1e-5)
  # Different seeds really differ.
  assert not np.allclose(np.asarray(jax.tree.leaves(states.params)[0][0]),
                         np.asarray(jax.tree.leaves(states.params)[0][1]))


def test_learning_rate_sweep_equals_sequential_runs():
  data, params, loss = _setup()
  lrs = jnp.array([0.03, 0.1, 0.3])
  states, _ = fl.run_sweep(_make(loss), {"client_lr": lrs}, params, data, num_rounds=2,
                           keys=jnp.stack([jax.random.key(7)] * 3), cohort_size=8)
  for i, lr in enumerate([0.03, 0.1, 0.3]):
    algo = _make(loss, lr_default=lr)(None)
    ref, _ = fl.run_rounds(algo, algo.init(params), data, num_rounds=2, cohort_size=8,
                           key=jax.random.key(7), progress=False)
    _assert_close(jax.tree.map(lambda x, i=i: x[i], states), ref)


def test_dp_noise_sweep_runs_with_traced_noise_multiplier():
  data, params, loss = _setup()

  def make(h):
    update = fl.build_client_update(loss, optax.sgd(0.1), batch_size=3)
    agg = fl.privacy.gaussian_aggregator(0.5, h["z"], 8.0)
    return fl.build_federated_algorithm(update, fl.server.fedavg(), aggregator=agg)

  zs = jnp.array([0.0, 1.0])
  states, hist = fl.run_sweep(make, {"z": zs}, params, data, num_rounds=2,
                              keys=jnp.stack([jax.random.key(1)] * 2), cohort_size=8)
  np.testing.assert_allclose(hist[-1]["aggregator/noise_std"], [0.0, 0.5 / 8.0], rtol=1e-6)
  algo = make({"z": 0.0})
  ref, _ = fl.run_rounds(algo, algo.init(params), data, num_rounds=2, cohort_size=8,
                         key=jax.random.key(1), progress=False)
  _assert_close(jax.tree.map(lambda x: x[0], states), ref)


def test_per_experiment_params_resume_and_callback():
  data, _, _ = _setup()
  params, loss = MODELS["linear"]()
  make = _make(loss)
  inits = [MODELS["linear"](seed=s)[0] for s in (3, 4)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *inits)
  keys = jax.vmap(jax.random.key)(jnp.array([3, 4]))
  seen = []
  states, hist = fl.run_sweep(make, None, stacked, data, num_rounds=3, keys=keys,
                              cohort_size=8, stacked_params=True,
                              callback=lambda r, st, row: seen.append((r, int(st.round[0]))))
  assert seen == [(0, 1), (1, 2), (2, 3)]
  algo = make(None)
  ref, _ = fl.run_rounds(algo, algo.init(inits[1]), data, num_rounds=3, cohort_size=8,
                         key=keys[1], progress=False)
  _assert_close(jax.tree.map(lambda x: x[1], states), ref)  # its own params, its own key
  # Stopping after 2 rounds and continuing from those states gives the same 3 rounds.
  part, _ = fl.run_sweep(make, None, stacked, data, num_rounds=2, keys=keys, cohort_size=8,
                         stacked_params=True)
  saved = jax.tree.map(np.asarray, part)
  resumed, more = fl.run_sweep(make, None, None, data, num_rounds=1, keys=keys, cohort_size=8,
                               states=saved)
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(states), strict=True):
    assert np.array_equal(np.asarray(x), np.asarray(y))
  np.testing.assert_array_equal(more[0]["train_loss"], hist[2]["train_loss"])
  assert np.asarray(saved.round).tolist() == [2, 2]  # the caller's states are not donated
  with pytest.raises(ValueError, match="one set of params per experiment"):
    fl.run_sweep(make, None, params, data, num_rounds=1, keys=keys, cohort_size=8,
                 stacked_params=True)
  skewed = saved._replace(round=np.array([2, 1], np.int32))
  with pytest.raises(ValueError, match="different rounds"):
    fl.run_sweep(make, None, None, data, num_rounds=1, keys=keys, cohort_size=8, states=skewed)


def test_sweep_argument_errors():
  data, params, loss = _setup()
  with pytest.raises(ValueError, match="one hyperparameter per experiment"):
    fl.run_sweep(_make(loss), {"client_lr": jnp.ones(2)}, params, data, num_rounds=1,
                 keys=jax.random.split(jax.random.key(0), 3), cohort_size=4)
  with pytest.raises(ValueError, match="exactly one of `cohort_size`"):
    fl.run_sweep(_make(loss), None, params, data, num_rounds=1,
                 keys=jax.random.split(jax.random.key(0), 3))


def test_stacked_populations_sweep_equals_runs_on_each():
  """One population per experiment (e.g. a partition seed each): each equals its own run."""
  params, loss = MODELS["mlp"]()
  pops = [fl.datasets.synthetic_classification(40, (np.arange(40) + s) % 7 + 1, num_features=6,
                                               num_classes=3, seed=10 + s) for s in range(3)]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *pops)  # [3, 40, 7, ...]: same shapes
  make = _make(loss)
  keys = jnp.stack([jax.random.key(5)] * 3)
  states, hist = fl.run_sweep(make, None, params, stacked, num_rounds=2, keys=keys,
                              cohort_size=8, stacked_population=True)
  for s in range(3):
    algo = make(None)
    ref, ref_hist = fl.run_rounds(algo, algo.init(params), pops[s], num_rounds=2, cohort_size=8,
                                  key=jax.random.key(5), progress=False)
    _assert_close(jax.tree.map(lambda x, s=s: x[s], states), ref)
    np.testing.assert_allclose([h["train_loss"][s] for h in hist],
                               [h["train_loss"] for h in ref_hist], rtol=1e-5)
  with pytest.raises(ValueError, match="population"):
    fl.run_sweep(make, None, params, stacked, num_rounds=1, keys=keys[:2], cohort_size=8,
                 stacked_population=True)


def test_sweep_refuses_a_nonfinite_round_like_run_rounds():
  data, params, loss = _setup()

  def make(h):
    update = fl.build_client_update(loss, optax.sgd(h), num_epochs=2, batch_size=3)
    return fl.build_federated_algorithm(update, fl.server.fedavg(), chunk_size=4)

  lrs = jnp.array([0.1, jnp.nan])  # the second experiment's clients go NaN
  seen = []
  with pytest.raises(ValueError, match=r"experiment 1 .*is NaN/Inf for 8 client\(s\) in round 0"):
    fl.run_sweep(make, lrs, params, data, num_rounds=2, keys=jnp.stack([jax.random.key(0)] * 2),
                 cohort_size=8, callback=lambda r, s, row: seen.append(r))
  assert seen == []  # the refused round was never handed on
  algo = make(jnp.nan)
  with pytest.raises(ValueError, match="is NaN/Inf for 8 client"):
    fl.run_rounds(algo, algo.init(params), data, num_rounds=1, cohort_size=8,
                  key=jax.random.key(0), progress=False)
