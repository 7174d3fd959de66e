"""Server optimizers against the formulas of Reddi et al. (2021)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from tests.reference import NumpyServer


@pytest.mark.parametrize("kind", ["adam", "yogi", "adagrad"])
def test_adaptive_server_matches_formulas(kind):
  rng = np.random.default_rng(0)
  params = {"a": rng.standard_normal((3, 2)).astype(np.float32), "b": np.zeros(4, np.float32)}
  b1 = 0.0 if kind == "adagrad" else 0.9
  opt = {"adam": fl.server.fedadam, "yogi": fl.server.fedyogi,
         "adagrad": fl.server.fedadagrad}[kind](0.1, tau=1e-2)
  ref = NumpyServer(kind, 0.1, b1=b1, b2=0.99, tau=1e-2)
  state = opt.init(params)
  p_lib, p_ref = params, jax.tree.map(np.float64, params)
  for _ in range(5):
    delta = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), params)
    updates, state = opt.update(jax.tree.map(jnp.negative, delta), state, p_lib)
    p_lib = optax.apply_updates(p_lib, updates)
    p_ref = ref.step(p_ref, delta)
  for a, b in zip(jax.tree.leaves(p_lib), jax.tree.leaves(p_ref), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fedavg_with_unit_lr_replaces_model_by_mean():
  opt = fl.server.fedavg()
  p = {"w": jnp.array([1.0, 2.0])}
  upd, _ = opt.update({"w": -jnp.array([0.5, -1.0])}, opt.init(p), p)
  np.testing.assert_allclose(optax.apply_updates(p, upd)["w"], [1.5, 1.0])


def test_tau_is_outside_the_square_root():
  """First Adagrad step from v=tau^2: update = lr * g / (sqrt(tau^2 + g^2) + tau)."""
  opt = fl.server.fedadagrad(1.0, tau=0.5)
  p = {"w": jnp.zeros(1)}
  upd, _ = opt.update({"w": jnp.array([2.0])}, opt.init(p), p)
  np.testing.assert_allclose(upd["w"], [-2.0 / (np.sqrt(0.25 + 4.0) + 0.5)], rtol=1e-6)


def test_presets_by_name_and_errors():
  for name in fl.server.SERVER_OPTIMIZERS:
    assert hasattr(fl.server.server_optimizer(name), "update")
  with pytest.raises(ValueError, match="unknown server optimizer 'fedsgd2'"):
    fl.server.server_optimizer("fedsgd2")
  with pytest.raises(ValueError, match="`kind`"):
    fl.server.scale_by_adaptive_server("rmsprop")
  with pytest.raises(ValueError, match="`tau` must be > 0"):
    fl.server.fedadam(tau=0.0)
  with pytest.raises(ValueError, match="`b2`"):
    fl.server.fedyogi(b2=1.0)
