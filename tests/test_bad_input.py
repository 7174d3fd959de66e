"""Bad input gets a clear error naming the argument; NaN never reaches the model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from tests.conftest import MODELS, make_clients


def _setup(nonfinite="raise", lr=0.1):
  params, loss = MODELS["linear"]()
  update = fl.build_client_update(loss, optax.sgd(lr), num_epochs=1, batch_size=4)
  return params, fl.build_federated_algorithm(update, fl.server.fedavg(), nonfinite=nonfinite,
                                              chunk_size=2)


def _poisoned_population():
  clients = make_clients((4, 6, 5, 3))
  clients[2]["x"][1, 0] = np.nan
  return fl.from_clients(clients, client_ids=[10, 11, 12, 13])


def test_nan_client_raise_policy_keeps_state_and_names_client():
  params, algo = _setup("raise")
  data = _poisoned_population()
  state, metrics = algo.round(algo.init(params), data, jax.random.key(0))
  assert float(metrics["num_nonfinite_clients"]) == 1 and float(metrics["applied"]) == 0
  np.testing.assert_array_equal(metrics["clients"]["nonfinite"], [False, False, True, False])
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)
  assert int(state.round) == 0
  with pytest.raises(ValueError, match=r"NaN/Inf .*client ids \[12\].*nonfinite='drop'"):
    fl.raise_if_nonfinite(metrics, data.client_ids)
  with pytest.raises(ValueError, match=r"NaN/Inf for 1 client\(s\) in round 0"):
    fl.run_rounds(algo, algo.init(params), data, num_rounds=1, cohort_size=4,
                  key=jax.random.key(0), progress=False)


def test_nan_client_drop_policy_equals_round_without_it():
  params, algo = _setup("drop")
  data = _poisoned_population()
  key = jax.random.key(0)
  state, metrics = algo.round(algo.init(params), data, key)
  assert float(metrics["num_nonfinite_clients"]) == 1 and float(metrics["applied"]) == 1
  assert float(metrics["num_clients"]) == 3 and float(metrics["num_examples"]) == 13
  assert np.isfinite(float(metrics["train_loss"]))
  without, _ = algo.round(algo.init(params), data.take(jnp.array([0, 1, 3])), key)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(without.params), strict=True):
    assert np.isfinite(np.asarray(a)).all()
    np.testing.assert_allclose(a, b, atol=1e-6)
  # run_rounds continues under "drop".
  _, hist = fl.run_rounds(algo, algo.init(params), data, num_rounds=2, cohort_size=4,
                          key=jax.random.key(0), progress=False)
  assert all(h["num_nonfinite_clients"] == 1 for h in hist)


def test_diverging_client_is_caught_as_inf():
  """Least squares with a huge step size overflows to Inf; that client is excluded."""
  params = {"w": jnp.ones((6,))}
  loss = lambda p, b: jnp.mean((b["x"] @ p["w"]) ** 2)
  update = fl.build_client_update(loss, optax.sgd(1e6), num_epochs=10, batch_size=2)
  algo = fl.build_federated_algorithm(update, fl.server.fedavg(), nonfinite="drop")
  clients = make_clients((8, 8))
  clients[1]["x"][:] = 0.0  # this client's gradient is zero: it stays finite
  _, metrics = algo.round(algo.init(params), fl.from_clients(clients), jax.random.key(0))
  np.testing.assert_array_equal(metrics["clients"]["nonfinite"], [True, False])


def test_cohort_larger_than_population():
  params, algo = _setup()
  with pytest.raises(ValueError, match="`cohort_size`=9 is larger than the population"):
    fl.run_rounds(algo, algo.init(params), fl.from_clients(make_clients((1, 2))), num_rounds=1,
                  cohort_size=9, key=jax.random.key(0))
  with pytest.raises(ValueError, match="`cohort_size`"):
    fl.sample_clients(jax.random.key(0), 3, 4)


def test_mismatched_leading_axes_in_cohort():
  params, algo = _setup()
  data = fl.from_clients(make_clients((2, 3)))
  bad = fl.FederatedData({"x": data.arrays["x"][:1], "y": data.arrays["y"]}, data.num_examples,
                         data.client_ids)
  with pytest.raises(ValueError, match=r"`cohort.arrays\['x'\]` has shape"):
    algo.round(algo.init(params), bad, jax.random.key(0))
  with pytest.raises(TypeError, match="`cohort` must be a FederatedData"):
    algo.round(algo.init(params), data.arrays, jax.random.key(0))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(chunk_size=0), ValueError, "`chunk_size` must be >= 1"),
        (dict(nonfinite="ignore"), ValueError, "`nonfinite` must be one of"),
    ],
)
def test_algorithm_arguments(kwargs, exc, match):
  params, loss = MODELS["linear"]()
  update = fl.build_client_update(loss, optax.sgd(0.1), batch_size=2)
  with pytest.raises(exc, match=match):
    fl.build_federated_algorithm(update, fl.server.fedavg(), **kwargs)
  with pytest.raises(TypeError, match="`server_optimizer`"):
    fl.build_federated_algorithm(update, 1.0)
  with pytest.raises(ValueError, match="`weighting`"):
    fl.mean_aggregator("median")


def test_run_rounds_arguments():
  params, algo = _setup()
  data = fl.from_clients(make_clients((2, 3)))
  with pytest.raises(ValueError, match="`num_rounds` must be >= 0"):
    fl.run_rounds(algo, algo.init(params), data, num_rounds=-1, cohort_size=1,
                  key=jax.random.key(0))


@pytest.mark.parametrize("chunk_size", [1, 2, 4])
def test_nonfinite_clients_are_found_whatever_the_chunking(chunk_size):
  """Opposite infinities in one chunk sum to NaN, a zero-weight NaN still poisons the sum."""
  def client_update(params, client, key):
    del params, key
    return fl.ClientOutput({"w": client.arrays["x"][0]}, client.arrays["x"][1, 0],
                           {"num_examples": jnp.float32(1.0)})

  x = np.array([[[np.inf, 1.0], [1.0, 0.0]],      # +Inf delta, weight 1
                [[-np.inf, 1.0], [1.0, 0.0]],     # -Inf delta in the same entry
                [[1.0, 2.0], [1.0, 0.0]],         # finite
                [[np.nan, 0.0], [0.0, 0.0]]],     # NaN delta with weight 0
               np.float32)
  data = fl.FederatedData({"x": jnp.asarray(x)}, jnp.full((4,), 2, jnp.int32),
                          jnp.arange(4, dtype=jnp.int32))
  algo = fl.build_federated_algorithm(client_update, fl.server.fedavg(), nonfinite="drop",
                                      chunk_size=chunk_size)
  state, metrics = algo.round(algo.init({"w": jnp.zeros((2,))}), data, jax.random.key(0))
  np.testing.assert_array_equal(metrics["clients"]["nonfinite"], [True, True, False, True])
  np.testing.assert_array_equal(state.params["w"], [1.0, 2.0])  # the finite client alone
