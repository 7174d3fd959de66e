"""Differentiable rounds: ``jax.grad`` through R rounds of ``algo.round``.

The gradient of the central loss after three rounds, with respect to the
client and server learning rates, the DP noise multiplier (the Gaussian noise
is ``z * C * N(0, 1)`` for a fixed key, so it is reparameterized) and the
initial parameters, is compared with central finite differences of the same
objective (float32, step 1% of the value: agreement to a few 1e-4 relative).
The cohorts include an empty client, whose zero delta must not turn the
clipping norm's gradient into NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from tests.conftest import RAGGED_SIZES, linear_model, make_clients

ROUNDS = ([0, 2, 3], [1, 4, 5], [2, 5, 6])  # client 1 is empty
HPARAMS = {"client_lr": 0.1, "server_lr": 0.05, "z": 0.3}


def _objective(kind):
  pop = fl.from_clients(make_clients(RAGGED_SIZES))
  _, loss = linear_model()
  central = {k: np.concatenate([np.asarray(v[i, :n]) for i, n in enumerate(pop.num_examples)])
             for k, v in pop.arrays.items()}

  def objective(h, params):
    update = fl.build_client_update(loss, optax.sgd(h["client_lr"]), num_epochs=2, batch_size=4)
    if kind == "fedadam":
      server, aggregator = fl.server.fedadam(h["server_lr"]), None
    else:
      server = fl.server.fedavg(h["server_lr"] * 10.0)
      aggregator = (fl.privacy.gaussian_aggregator(1.0, h["z"], 3.0) if kind == "dp_fedavg"
                    else None)
    algo = fl.build_federated_algorithm(update, server, aggregator=aggregator)
    state = algo.init(params)
    for r, cohort in enumerate(ROUNDS):
      state, _ = algo.round(state, fl.take(pop, jnp.asarray(cohort)), jax.random.key(r))
    return loss(state.params, central)

  return jax.jit(objective)


@pytest.mark.parametrize("kind", ["fedavg", "fedadam", "dp_fedavg"])
def test_gradients_through_rounds_match_finite_differences(kind):
  objective = _objective(kind)
  params, _ = linear_model()
  h = {k: jnp.float32(v) for k, v in HPARAMS.items()}
  grad_h, grad_p = jax.jit(jax.grad(objective, argnums=(0, 1)))(h, params)
  names = ["client_lr", "server_lr"] + (["z"] if kind == "dp_fedavg" else [])
  for name in names:
    step = 0.01 * HPARAMS[name]
    fd = (objective(dict(h, **{name: h[name] + step}), params)
          - objective(dict(h, **{name: h[name] - step}), params)) / (2 * step)
    assert abs(float(fd)) > 1e-3, (name, fd)  # a derivative worth checking
    np.testing.assert_allclose(float(grad_h[name]), float(fd), rtol=2e-3, err_msg=name)
  if kind != "dp_fedavg":
    assert float(grad_h["z"]) == 0.0  # unused
  # The initial parameters: the directional derivative along a random direction.
  direction = jax.tree.map(lambda x: jax.random.normal(jax.random.key(7), x.shape), params)
  along = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grad_p),
                                                    jax.tree.leaves(direction), strict=True))
  step = 1e-2
  moved = lambda t: jax.tree.map(lambda p, d: p + t * d, params, direction)
  fd = (objective(h, moved(step)) - objective(h, moved(-step))) / (2 * step)
  np.testing.assert_allclose(along, float(fd), rtol=2e-3)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((grad_h, grad_p)))
