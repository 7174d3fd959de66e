"""q-FFL / q-FedAvg against a NumPy reference, its q = 0 limit, and its fairness effect."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from fedjax_lite.algorithms.qffl import qffl
from tests.conftest import RAGGED_SIZES, make_clients, mlp_model
from tests.test_personalization import ref_metrics, ref_sgd

COHORTS = ([0, 1, 2, 5], [3, 4, 6, 0], [5, 2, 1, 4])  # client 1 is empty
BATCH = 4


def _leaves_close(a, b, tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_matches_numpy_reference_for_three_rounds():
  clients = make_clients(RAGGED_SIZES)
  params, loss = mlp_model()
  q, lr, epochs = 1.5, 0.2, 2
  algo = fl.build_federated_algorithm(
      qffl(loss, q=q, client_lr=lr, num_epochs=epochs, batch_size=BATCH), chunk_size=3)
  data = fl.from_clients(clients)
  state = algo.init(params)
  keys = [jax.random.key(70 + r) for r in range(3)]
  for key, cohort in zip(keys, COHORTS, strict=True):
    state, metrics = algo.round(state, data.take(jnp.asarray(cohort)), key)

  big_l = 1.0 / lr
  w = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  for key, cohort in zip(keys, COHORTS, strict=True):
    client_key, _ = jax.random.split(key)
    sum_delta, sum_h = jax.tree.map(np.zeros_like, w), 0.0
    losses = []
    for cid in cohort:
      c = clients[cid]
      if len(c["y"]) == 0:
        continue
      loss_sum, _, count = ref_metrics(w, c)
      f = loss_sum / count + 1e-10
      losses.append(f)
      local = ref_sgd(w, c, jax.random.fold_in(client_key, cid), lr=lr, batch_size=BATCH,
                      num_epochs=epochs)
      dw = jax.tree.map(lambda a, b: big_l * (a - b), w, local)
      sq = sum(float(np.sum(x * x)) for x in jax.tree.leaves(dw))
      sum_delta = jax.tree.map(lambda s, d, f=f: s + f**q * d, sum_delta, dw)
      sum_h += q * f ** (q - 1) * sq + big_l * f**q
    w = jax.tree.map(lambda w, s: w - s / sum_h, w, sum_delta)

  _leaves_close(state.params, w, 1e-5)
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True))
  assert moved > 1e-3
  # The last round's F_k(w), per client in cohort order (0 for the empty client).
  np.testing.assert_allclose(np.asarray(metrics["clients"]["loss_at_server"])[[0, 1, 3]],
                             np.asarray(losses), rtol=1e-5)
  assert float(metrics["clients"]["loss_at_server"][2]) == 0.0
  assert float(metrics["num_clients"]) == 3


def test_q_zero_is_uniform_fedavg():
  clients = make_clients(RAGGED_SIZES)
  params, loss = mlp_model()
  data = fl.from_clients(clients)
  lr, epochs = 0.2, 1
  algos = {
      "qffl": qffl(loss, q=0.0, client_lr=lr, num_epochs=epochs, batch_size=BATCH),
      "fedavg": fl.build_federated_algorithm(
          fl.build_client_update(loss, optax.sgd(lr), num_epochs=epochs, batch_size=BATCH),
          fl.server.fedavg(1.0), aggregator=fl.mean_aggregator("uniform")),
  }
  final = {}
  for name, algo in algos.items():
    state = algo.init(params)
    for r in range(3):
      state, _ = algo.round(state, data, jax.random.key(r))
    final[name] = state.params
  _leaves_close(final["qffl"], final["fedavg"], 1e-5)
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
      jax.tree.leaves(final["qffl"]), jax.tree.leaves(params), strict=True))
  assert moved > 1e-3


# Five clients with a scalar model and F_k(w) = mean_j (w - x_kj)^2: four near
# 0, one at 3. Full-batch local steps make q-FedAvg's fixed point the exact
# q-FFL optimum, where sum_k F_k^q F_k' = 0.
TOY_MEANS = (0.0, 0.1, -0.1, 0.05, 3.0)
TOY_OFFSETS = (-0.4, 0.0, 0.4)


def _toy_loss(params, batch):
  return jnp.mean((params["w"][0] - batch["x"]) ** 2)


def _toy_losses(w):
  return np.array([np.mean((w - (m + np.asarray(TOY_OFFSETS))) ** 2) for m in TOY_MEANS])


def _qffl_optimum(q):
  """Root of sum_k F_k(w)^q F_k'(w) on [min mean, max mean] by bisection."""
  def grad(w):
    return np.sum(_toy_losses(w) ** q * 2 * (w - np.asarray(TOY_MEANS)))
  lo, hi = min(TOY_MEANS), max(TOY_MEANS)
  for _ in range(100):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if grad(mid) < 0 else (lo, mid)
  return 0.5 * (lo + hi)


def test_positive_q_evens_out_client_losses():
  clients = [{"x": np.asarray([m + o for o in TOY_OFFSETS], np.float32)} for m in TOY_MEANS]
  data = fl.from_clients(clients)
  params = {"w": jnp.zeros((1,), jnp.float32)}
  final = {}
  for q in (0.0, 2.0):
    algo = qffl(_toy_loss, q=q, client_lr=0.1, num_epochs=1, batch_size=3)
    state = algo.init(params)
    for r in range(60):
      state, _ = algo.round(state, data, jax.random.key(r))
    final[q] = float(state.params["w"][0])
  # Each run converges to its objective's optimum: the uniform mean of the
  # client means for q = 0, the q-FFL optimum (pulled towards the far client)
  # for q = 2.
  np.testing.assert_allclose(final[0.0], np.mean(TOY_MEANS), atol=1e-4)
  np.testing.assert_allclose(final[2.0], _qffl_optimum(2.0), atol=1e-4)
  fair, plain = _toy_losses(final[2.0]), _toy_losses(final[0.0])
  assert fair.var() < 0.2 * plain.var()
  assert fair.max() < plain.max()
  assert fair.mean() > plain.mean()  # the price of fairness: a higher average loss


def test_bad_arguments():
  _, loss = mlp_model()
  with pytest.raises(ValueError, match="`q`"):
    qffl(loss, q=-1.0, client_lr=0.1, num_epochs=1, batch_size=2)
  with pytest.raises(ValueError, match="`client_lr`"):
    qffl(loss, q=1.0, client_lr=0.0, num_epochs=1, batch_size=2)
  with pytest.raises(TypeError, match="`batch_size`"):
    qffl(loss, q=1.0, client_lr=0.1, num_epochs=1, batch_size=2.0)
