"""FedNova against a plain per-client NumPy loop, and against FedAvg for equal local work.

The reference shares with the library only the documented randomness
conventions (example orders and local-work draws, see tests/test_local_work.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from fedjax_lite import client as fc
from fedjax_lite.algorithms.fednova import fednova, fednova_normalizer
from tests.conftest import MODELS, make_clients
from tests.test_local_work import (
  BATCH,
  EPOCHS,
  KEYS,
  LR,
  SIZES,
  assert_close,
  local_sgd,
  make_spec,
  np32,
  ref_budget,
  tree,
)

SPEC = ("sampled", 1, 7)  # heterogeneous tau_i, capped by each client's full steps


def ref_a(tau, rho):
  return float(sum(sum(rho**j for j in range(k + 1)) for k in range(tau)))


def reference_fednova(params, clients, keys, *, spec, momentum, server_lr):
  """FedNova rounds over one cohort (ids 0..K-1); returns (params, tau_eff per round)."""
  x = np32(params)
  tau_effs = []
  for key in keys:
    client_key, _ = jax.random.split(key)
    normalized, a_s, p_s = [], [], []
    for cid, arrays in enumerate(clients):
      n = len(arrays["y"])
      ck = jax.random.fold_in(client_key, cid)
      steps, _, dropped = ref_budget(spec, ck, n)
      if n == 0 or dropped:
        continue
      w, tau = local_sgd(x, arrays, ck, max_steps=steps, momentum=momentum)
      a = ref_a(tau, momentum)
      normalized.append(tree(lambda u, v, a=a: (np.float64(u) - np.float64(v)) / a, w, x))
      a_s.append(a)
      p_s.append(float(n))
    p = np.array(p_s) / sum(p_s)
    d = tree(lambda *xs: sum(pi * xi for pi, xi in zip(p, xs, strict=True)), *normalized)
    tau_eff = float(np.dot(p, a_s))
    x = np32(tree(lambda xx, dd: xx + server_lr * tau_eff * dd, x, d))
    tau_effs.append(tau_eff)
  return x, tau_effs


@pytest.fixture(scope="module")
def setup():
  clients = make_clients(SIZES, seed=7)
  params, loss = MODELS["linear"]()
  return clients, fl.from_clients(clients), params, loss


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_fednova_matches_reference(setup, momentum):
  clients, cohort, params, loss = setup
  algo = fl.build_federated_algorithm(
      fednova(loss, client_lr=LR, num_epochs=EPOCHS, batch_size=BATCH, momentum=momentum,
              local_work=make_spec(SPEC), server_optimizer=fl.server.fedavg(0.8)), chunk_size=3)
  state = algo.init(params)
  history = []
  for key in KEYS:
    state, metrics = algo.round(state, cohort, key)
    history.append(metrics)
  expected, tau_effs = reference_fednova(params, clients, KEYS, spec=SPEC, momentum=momentum,
                                         server_lr=0.8)
  assert_close(state.params, expected)
  # The round's example-weighted mean of the clients' a_i is tau_eff.
  np.testing.assert_allclose([float(m["fednova_a"]) for m in history], tau_effs, rtol=1e-6)
  steps = np.asarray(history[0]["clients"]["num_steps"])
  assert len(set(steps[steps > 0].tolist())) > 1  # heterogeneous local work


def test_fednova_equals_fedavg_for_equal_local_work(setup):
  _, cohort, params, loss = setup
  # Every client with data has >= 2 steps in 2 epochs, so a_i = 2 for all.
  work = fc.fixed(2)
  nova = fednova(loss, client_lr=LR, num_epochs=EPOCHS, batch_size=BATCH, local_work=work)
  avg = fl.build_federated_algorithm(
      fl.build_client_update(loss, optax.sgd(LR), num_epochs=EPOCHS, batch_size=BATCH,
                             local_work=work), fl.server.fedavg())
  key = KEYS[0]
  a, m = nova.round(nova.init(params), cohort, key)
  b, _ = avg.round(avg.init(params), cohort, key)
  assert_close(a.params, b.params, 1e-6)
  np.testing.assert_array_equal(m["clients"]["fednova_a"], [2.0 * (n > 0) for n in SIZES])
  assert float(m["fednova_a"]) == 2.0


def test_fednova_normalizer_matches_formula():
  normalizer = jax.jit(jax.vmap(lambda t, r: fednova_normalizer(t, r, max_steps=8)))
  taus = np.array([0, 1, 2, 3, 5, 8] * 3)
  rhos = np.repeat([0.0, 0.5, 0.9], 6).astype(np.float32)
  got = normalizer(taus, rhos)  # traced rho
  np.testing.assert_allclose(got, [ref_a(t, float(r)) for t, r in zip(taus, rhos, strict=True)],
                             rtol=1e-6)
  assert float(fednova_normalizer(jnp.float32(5), 0.0, max_steps=8)) == 5.0  # Python 0: tau


def _loss(p, b):
  return jnp.float32(0.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(momentum=1.0), "`momentum` must be in"),
    (dict(momentum=-0.1), "`momentum` must be in"),
    (dict(client_lr=0.0), "`client_lr` must be > 0; got 0.0"),
])
def test_bad_arguments(kwargs, match):
  args = dict(client_lr=0.1, num_epochs=1, batch_size=2) | kwargs
  with pytest.raises(ValueError, match=match):
    fednova(_loss, **args)
