"""SCAFFOLD and Mime-Lite against plain NumPy per-client reference loops.

The references use the linear model's cross-entropy gradient written by hand in
NumPy and share only the documented randomness convention (the per-epoch example
order of tests.reference.reference_order) with the library.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedjax_lite as fl
from fedjax_lite import privacy
from fedjax_lite.algorithms.mime import mime_lite
from fedjax_lite.algorithms.scaffold import build_scaffold_client_update, scaffold
from tests.conftest import MODELS, make_clients
from tests.reference import linear_softmax_grad, reference_order

LR, EPOCHS, BATCH, BETA = 0.1, 2, 4, 0.9
# A population of 9 ragged clients, cohorts of 5 (not a multiple of 4
# devices): clients 4 and 8 take part in one round each (their states then
# persist untouched), client 1 (empty) only in round 3, client 7 never.
SIZES = (5, 0, 13, 1, 8, 21, 3, 7, 4)
COHORTS = ([0, 2, 3, 4, 5], [6, 2, 8, 0, 3], [5, 6, 1, 3, 2])
KEYS = tuple(jax.random.key(300 + r) for r in range(3))
TOL = 1e-5


def _tree(fn, *trees):
  return jax.tree.map(fn, *trees)


def _np32(tree):
  return _tree(lambda x: np.asarray(x, np.float32), tree)


def _zeros(tree):
  return _tree(lambda x: np.zeros(np.shape(x), np.float32), tree)


def _grad(params, batch):
  return _tree(np.float32, linear_softmax_grad(params, batch))


def _local_sgd(x, arrays, cid, client_key, correction):
  """Plain local SGD on one client's unpadded arrays: returns (y, steps)."""
  n = len(arrays["y"])
  y = _np32(x)
  key = jax.random.fold_in(client_key, cid)
  steps = 0
  for e in range(EPOCHS):
    order = reference_order(jax.random.fold_in(key, e), n)
    for start in range(0, n, BATCH):
      idx = order[start:start + BATCH]
      g = _grad(y, {k: v[idx] for k, v in arrays.items()})
      y = _tree(lambda p, d: p - np.float32(LR) * d, y, correction(g))
      steps += 1
  return y, steps


def _mean(msgs, weights, denom=None):
  denom = sum(weights) if denom is None else denom
  return _tree(lambda *xs: sum(w * np.float64(x) for w, x in zip(weights, xs, strict=True))
               / denom, *msgs)


def _norm(*trees):
  return math.sqrt(sum(np.sum(np.float64(x) ** 2) for t in trees for x in jax.tree.leaves(t)))


def reference_scaffold(params, clients, *, weighting="num_examples", clip=None,
                       denom=None):
  """SCAFFOLD (option II) over COHORTS; control variates kept per client in a dict.

  ``clip``/``denom``: the messages' joint L2 clip and the fixed denominator
  of a noiseless DP aggregator (each client weighs 1, sum / denom).
  """
  x, c, states = _np32(params), _zeros(params), {}
  for cohort, key in zip(COHORTS, KEYS, strict=True):
    client_key, _ = jax.random.split(key)
    dys, dcs, weights = [], [], []
    for cid in cohort:
      arrays = clients[cid]
      n = len(arrays["y"])
      if n == 0:
        continue
      ci = states.get(cid, _zeros(params))
      y, k = _local_sgd(x, arrays, cid, client_key,
                        lambda g, ci=ci: _tree(lambda g, a, b: g - a + b, g, ci, c))
      ci_new = _tree(lambda a, b, p, q, k=k: a - b + (p - q) / np.float32(k * LR), ci, c, x, y)
      dy, dc = _tree(np.subtract, y, x), _tree(np.subtract, ci_new, ci)
      w = float(n) if weighting == "num_examples" else 1.0
      if clip is not None:
        w = min(1.0, clip / _norm(dy, dc))
      states[cid] = ci_new
      dys.append(dy)
      dcs.append(dc)
      weights.append(w)
    scale = len(weights) / len(clients) if denom is None else denom / len(clients)
    x = _np32(_tree(lambda p, d: p + d, x, _mean(dys, weights, denom)))
    c = _np32(_tree(lambda a, d: a + scale * d, c, _mean(dcs, weights, denom)))
  return x, c, states


def reference_mime(params, clients):
  """Mime-Lite with SGDm over COHORTS, example-weighted means."""
  x, m = _np32(params), _zeros(params)
  for cohort, key in zip(COHORTS, KEYS, strict=True):
    client_key, _ = jax.random.split(key)
    dys, grads, weights = [], [], []
    for cid in cohort:
      arrays = clients[cid]
      n = len(arrays["y"])
      if n == 0:
        continue
      y, _ = _local_sgd(x, arrays, cid, client_key,
                        lambda g: _tree(lambda g, b: (1 - BETA) * g + BETA * b, g, m))
      dys.append(_tree(np.subtract, y, x))
      grads.append(_grad(x, arrays))
      weights.append(float(n))
    x = _np32(_tree(lambda p, d: p + d, x, _mean(dys, weights)))
    m = _np32(_tree(lambda a, g: BETA * a + (1 - BETA) * g, m, _mean(grads, weights)))
  return x, m


@functools.cache
def _setup():
  clients = make_clients(SIZES)
  params, loss = MODELS["linear"]()
  return clients, fl.from_clients(clients), params, loss


def _run(algo, params, data, stateful=True):
  state = algo.init(params, num_clients=data.num_clients) if stateful else algo.init(params)
  for cohort, key in zip(COHORTS, KEYS, strict=True):
    state, metrics = algo.round(state, data.take(jnp.asarray(cohort)), key)
    fl.raise_if_nonfinite(metrics)
  return state, metrics


def _close(a, b, tol=TOL):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _client_state(state, cid):
  return _tree(lambda s: np.asarray(s[cid]), state.client_states)


def _moved(a, b):
  return max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@functools.cache
def _scaffold_run(weighting="num_examples", chunk_size=2, sharded=False):
  _, data, params, loss = _setup()
  algo = fl.build_federated_algorithm(
      scaffold(loss, client_lr=LR, num_epochs=EPOCHS, batch_size=BATCH,
               aggregator=fl.mean_aggregator(weighting)),
      chunk_size=chunk_size, mesh=fl.client_mesh(4) if sharded else None)
  return _run(algo, params, data)


def _check_states_against(state, ref_states, params, num_clients):
  for cid in range(num_clients):
    _close(_client_state(state, cid), ref_states.get(cid, _zeros(params)))


@pytest.mark.parametrize("weighting,chunk_size", [("num_examples", 2), ("uniform", 3)])
def test_scaffold_matches_reference_loop(weighting, chunk_size):
  clients, data, params, loss = _setup()
  state, metrics = _scaffold_run(weighting, chunk_size)
  ref_x, ref_c, ref_states = reference_scaffold(params, clients, weighting=weighting)
  _close(state.params, ref_x)
  _close(state.extra, ref_c)
  _check_states_against(state, ref_states, params, len(clients))
  # Not vacuous: params, c and a persisted client state moved; untouched
  # (never sampled, or empty) clients are still zero.
  assert _moved(state.params, params) > 100 * TOL
  assert _moved(state.extra, _zeros(params)) > 100 * TOL
  assert _moved(_client_state(state, 4), _zeros(params)) > 100 * TOL  # from round 1 only
  assert _moved(_client_state(state, 7), _zeros(params)) == 0.0
  assert _moved(_client_state(state, 1), _zeros(params)) == 0.0
  assert int(state.round) == 3
  assert float(metrics["num_clients"]) == 4.0  # client 1 of round 3 is empty
  if weighting == "uniform":
    # Uniform weighting keeps c equal to the mean of all N client controls.
    _close(state.extra, _tree(lambda s: np.mean(np.asarray(s, np.float64), axis=0),
                              state.client_states))


def test_scaffold_is_independent_of_chunk_size():
  base, _ = _scaffold_run()
  whole, _ = _scaffold_run(chunk_size=None)
  _close((whole.params, whole.extra, whole.client_states),
         (base.params, base.extra, base.client_states))


def test_scaffold_sharded_over_four_devices_equals_unsharded():
  base, _ = _scaffold_run()
  sharded, metrics = _scaffold_run(sharded=True)
  _close((sharded.params, sharded.extra, sharded.client_states),
         (base.params, base.extra, base.client_states))
  assert float(metrics["num_clients"]) == 4.0


def test_mime_lite_matches_reference_loop():
  clients, data, params, loss = _setup()
  ref_x, ref_m = reference_mime(params, clients)
  algo = fl.build_federated_algorithm(
      mime_lite(loss, client_lr=LR, beta=BETA, num_epochs=EPOCHS, batch_size=BATCH), chunk_size=3)
  state, _ = _run(algo, params, data, stateful=False)
  _close(state.params, ref_x)
  _close(state.extra, ref_m)
  assert _moved(state.params, params) > 100 * TOL
  assert _moved(state.extra, _zeros(params)) > 100 * TOL
  assert state.client_states == ()


DP_CLIP, DP_DENOM = 0.3, 5.0


@functools.cache
def _scaffold_dp(noise_multiplier):
  """SCAFFOLD with a Gaussian aggregator of the cohort size as fixed denominator."""
  _, _, _, loss = _setup()
  return fl.build_federated_algorithm(
      scaffold(loss, client_lr=LR, num_epochs=EPOCHS, batch_size=BATCH,
               aggregator=privacy.gaussian_aggregator(DP_CLIP, noise_multiplier, DP_DENOM),
               cohort_size=DP_DENOM), chunk_size=2)


def _run_dp(noise_multiplier, clip=DP_CLIP):
  _, data, params, _ = _setup()
  algo = _scaffold_dp(noise_multiplier)
  state = algo.init(params, num_clients=data.num_clients)
  # The clip norm is the DP aggregator's state (DPState), so one compiled
  # round serves every clip.
  state = state._replace(aggregator_state=privacy.DPState(jnp.float32(clip)))
  for cohort, key in zip(COHORTS, KEYS, strict=True):
    state, metrics = algo.round(state, data.take(jnp.asarray(cohort)), key)
    fl.raise_if_nonfinite(metrics)
  return state, metrics


@pytest.mark.parametrize("clip", [DP_CLIP, 1e6])
def test_scaffold_dp_without_noise_clips_the_joint_message(clip):
  # Each client's whole message {dy, dc} is scaled by min(1, C / ||(dy, dc)||),
  # the sum divided by the fixed denominator, and c moved by (m / N) times
  # that; client controls stay unclipped. With a clip that never binds this
  # is uniform SCAFFOLD at the fixed denominator m.
  clients, _, params, loss = _setup()
  state, metrics = _run_dp(0.0, clip)
  ref_x, ref_c, ref_states = reference_scaffold(params, clients, clip=clip, denom=DP_DENOM)
  _close(state.params, ref_x)
  _close(state.extra, ref_c)
  _check_states_against(state, ref_states, params, len(clients))
  assert float(metrics["aggregator/participants"]) == 4.0
  if clip == DP_CLIP:  # the clip binds: without it the result differs
    unclipped_x, _, _ = reference_scaffold(params, clients, clip=1e9, denom=DP_DENOM)
    assert _moved(unclipped_x, ref_x) > 100 * TOL
  else:  # the same as the uniform-weighting reference, but for the denominator
    ref_u = reference_scaffold(params, clients, weighting="uniform", denom=DP_DENOM)
    _close((state.params, state.extra), ref_u[:2])


def test_scaffold_with_dp_noise_runs_and_reports_epsilon():
  _, _, params, _ = _setup()
  z = 0.8
  state, metrics = _run_dp(z)
  leaves = jax.tree.leaves((state.params, state.extra, state.client_states))
  assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
  assert _moved(state.params, params) > 100 * TOL
  # Noise was added: the noiseless run differs.
  noiseless, _ = _run_dp(0.0)
  assert _moved(state.extra, noiseless.extra) > 100 * TOL
  assert _moved(state.params, noiseless.params) > 100 * TOL
  np.testing.assert_allclose(float(metrics["aggregator/noise_std"]), z * DP_CLIP / DP_DENOM,
                             rtol=1e-6)
  spec = privacy.DPSpec("gaussian", z, "fixed", num_clients=len(SIZES), num_sampled=5)
  eps = privacy.epsilon(spec, rounds=3, delta=1e-5)
  assert 0.0 < eps < math.inf


def test_scaffold_client_without_steps_keeps_its_state_and_sends_zeros():
  clients, data, params, loss = _setup()
  update = jax.jit(build_scaffold_client_update(loss, client_lr=LR, num_epochs=EPOCHS,
                                                batch_size=BATCH).update)
  c = _tree(lambda p: jnp.full(p.shape, 0.5, p.dtype), params)
  c_i = _tree(lambda p: jnp.full(p.shape, -0.25, p.dtype), params)
  client = lambda cid: jax.tree.map(lambda x: x[cid], data)
  empty = update({"params": params, "control": c}, client(1), KEYS[0], c_i)
  assert float(empty.weight) == 0.0
  _close(empty.state, c_i, 0.0)
  _close(empty.delta, _zeros({"params": params, "control": params}), 0.0)
  # A client with data moves both (the same compiled function).
  busy = update({"params": params, "control": c}, client(2), KEYS[0], c_i)
  assert float(busy.weight) == SIZES[2]
  assert _moved(busy.state, c_i) > 100 * TOL
  _close(busy.delta["control"], _tree(jnp.subtract, busy.state, c_i))


def test_bad_arguments_raise():
  params, loss = MODELS["linear"]()
  algo = scaffold(loss, client_lr=LR, num_epochs=1, batch_size=2)
  with pytest.raises(ValueError, match="num_clients"):
    algo.init(params)
  with pytest.raises(ValueError, match="client_lr"):
    scaffold(loss, client_lr=0.0, num_epochs=1, batch_size=2)
  with pytest.raises(ValueError, match="cohort_size"):
    scaffold(loss, client_lr=LR, num_epochs=1, batch_size=2, cohort_size=-1)
  with pytest.raises(ValueError, match="beta"):
    mime_lite(loss, client_lr=LR, beta=1.0, num_epochs=1, batch_size=2)
  with pytest.raises(ValueError, match="batch_size"):
    mime_lite(loss, client_lr=LR, num_epochs=1, batch_size=0)
