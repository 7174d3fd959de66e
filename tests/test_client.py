"""The pure client update: shuffling, masking, params pytrees."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import fedjax_lite as fl
from tests.conftest import MODELS, make_clients
from tests.reference import reference_client, reference_order


@pytest.mark.parametrize("n, max_n", [(0, 1), (1, 1), (5, 5), (5, 12), (30, 64), (100, 128),
                                      (100, 129), (200, 300)])
def test_shuffle_order_is_padding_independent_permutation(n, max_n):
  key = jax.random.key(11)
  order = np.asarray(jax.jit(fl.client.shuffle_order, static_argnums=2)(key, n, max_n))
  assert sorted(order.tolist()) == list(range(max_n))
  assert sorted(order[:n].tolist()) == list(range(n))
  np.testing.assert_array_equal(order[:n], reference_order(key, n))


def test_client_update_matches_reference_and_metrics():
  clients = make_clients((11,), seed=4)
  params, loss = MODELS["mlp"]()
  update = fl.build_client_update(loss, optax.sgd(0.2), num_epochs=3, batch_size=4)
  data = fl.from_clients(clients, max_examples=16, client_ids=[42])
  one = jax.tree.map(lambda x: x[0], data)
  key = jax.random.key(9)
  out = jax.jit(update)(params, one, key)
  ref, n = reference_client(loss, params, clients[0], 42, key, lr=0.2, num_epochs=3, batch_size=4)
  for a, b in zip(jax.tree.leaves(out.delta), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
  assert float(out.weight) == n == 11
  assert float(out.counts["num_steps"]) == 3 * 3  # ceil(11 / 4) per epoch
  assert float(out.counts["num_examples"]) == 11
  assert 0 < float(out.metrics["train_loss"]) < 5


def test_empty_client_returns_zero_delta_and_weight():
  params, loss = MODELS["mlp"]()
  update = fl.build_client_update(loss, optax.adam(0.1), num_epochs=2, batch_size=3)
  data = fl.from_clients(make_clients((0, 4)), max_examples=6)
  out = jax.vmap(update, in_axes=(None, 0, None))(params, data, jax.random.key(0))
  for d in jax.tree.leaves(out.delta):
    assert not np.asarray(d[0]).any() and np.asarray(d[1]).any()
  np.testing.assert_array_equal(out.weight, [0.0, 4.0])
  np.testing.assert_array_equal(out.counts["num_steps"], [0.0, 4.0])
  assert float(out.metrics["train_loss"][0]) == 0.0


def test_padded_rows_do_not_leak_even_with_huge_values():
  """Padding is masked by count, so garbage beyond num_examples cannot matter."""
  params, loss = MODELS["linear"]()
  update = fl.build_client_update(loss, optax.sgd(0.1), num_epochs=2, batch_size=4)
  clean = fl.from_clients(make_clients((5,)), max_examples=8)
  x = np.array(clean.arrays["x"])
  x[0, 5:] = 1e6
  dirty = fl.FederatedData({"x": x, "y": clean.arrays["y"]}, clean.num_examples, clean.client_ids)
  key = jax.random.key(1)
  a = update(params, jax.tree.map(lambda v: v[0], clean), key)
  b = update(params, jax.tree.map(lambda v: v[0], dirty), key)
  for u, v in zip(jax.tree.leaves(a.delta), jax.tree.leaves(b.delta), strict=True):
    np.testing.assert_array_equal(u, v)


def test_optimizer_state_starts_fresh_each_call():
  params, loss = MODELS["linear"]()
  update = jax.jit(fl.build_client_update(loss, optax.adam(0.05), num_epochs=1, batch_size=2))
  client = jax.tree.map(lambda v: v[0], fl.from_clients(make_clients((6,))))
  a = update(params, client, jax.random.key(0))
  b = update(params, client, jax.random.key(0))
  for u, v in zip(jax.tree.leaves(a.delta), jax.tree.leaves(b.delta), strict=True):
    np.testing.assert_array_equal(u, v)


def _plain_dict_model():
  params = {"w": jnp.zeros((6, 3)), "b": jnp.zeros((3,))}

  def loss(p, batch):
    logits = batch["x"] @ p["w"] + p["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

  return params, loss


def _nnx_model():
  model = nnx.Linear(6, 3, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)

  def loss(p, batch):
    logits = nnx.merge(graphdef, p)(batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

  return params, loss


@pytest.mark.parametrize("make", [_plain_dict_model, _nnx_model, MODELS["linear"]],
                         ids=["dict", "nnx", "linen"])
def test_any_params_pytree(make):
  params, loss = make()
  clients = make_clients((5, 0, 9))
  update = fl.build_client_update(loss, optax.sgd(0.3), num_epochs=2, batch_size=4)
  algo = fl.build_federated_algorithm(update, fl.server.fedavg())
  state, metrics = algo.round(algo.init(params), fl.from_clients(clients), jax.random.key(2))
  assert jax.tree.structure(state.params) == jax.tree.structure(params)
  key = jax.random.key(2)
  client_key, _ = jax.random.split(key)
  total = None
  for cid, c in enumerate(clients):
    if len(c["y"]) == 0:
      continue
    d, n = reference_client(loss, params, c, cid, client_key, lr=0.3, num_epochs=2, batch_size=4)
    total = jax.tree.map(lambda x: n * x, d) if total is None else jax.tree.map(
        lambda t, x: t + n * x, total, d)
  expected = jax.tree.map(lambda p, t: np.asarray(p) + t / 14.0, params, total)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert float(metrics["num_examples"]) == 14


def test_loss_must_be_scalar():
  params = {"w": jnp.zeros((6, 3))}
  update = fl.build_client_update(lambda p, b: b["x"] @ p["w"], optax.sgd(0.1), batch_size=2)
  client = jax.tree.map(lambda v: v[0], fl.from_clients(make_clients((3,))))
  with pytest.raises(ValueError, match="`loss_fn` must return a floating scalar"):
    update(params, client, jax.random.key(0))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(batch_size=0), ValueError, "`batch_size` must be >= 1"),
        (dict(batch_size=2.5), TypeError, "`batch_size` must be an int"),
        (dict(batch_size=2, num_epochs=0), ValueError, "`num_epochs` must be >= 1"),
    ],
)
def test_bad_hyperparameters(kwargs, exc, match):
  with pytest.raises(exc, match=match):
    fl.build_client_update(lambda p, b: 0.0, optax.sgd(0.1), **kwargs)


def test_bad_optimizer():
  with pytest.raises(TypeError, match="`optimizer`"):
    fl.build_client_update(lambda p, b: 0.0, 0.1, batch_size=2)


def test_shuffle_order_padding_independent_under_legacy_threefry():
  before = jax.config.jax_threefry_partitionable
  jax.config.update("jax_threefry_partitionable", False)
  try:
    key = jax.random.key(4)
    for n, max_n in [(7, 7), (7, 20), (40, 200)]:
      order = np.asarray(fl.client.shuffle_order(key, n, max_n))
      np.testing.assert_array_equal(order[:n], reference_order(key, n))
  finally:
    jax.config.update("jax_threefry_partitionable", before)


@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_grad_modes_agree_with_each_other_and_with_autodiff(model):
  params, loss = MODELS[model]()
  client = make_clients((7,), seed=3)[0]
  batch = {k: np.concatenate([v, np.zeros_like(v[:3])]) for k, v in client.items()}  # 3 padded
  mask = jnp.arange(10) < 7
  g_batch, l_batch = fl.client.masked_mean_grad(loss, params, batch, mask, "batch")
  g_pe, l_pe = fl.client.masked_mean_grad(loss, params, batch, mask, "per_example")
  g_ref = jax.grad(loss)(params, client)  # plain mean over the real rows
  for a, b, c in zip(jax.tree.leaves(g_batch), jax.tree.leaves(g_pe), jax.tree.leaves(g_ref),
                     strict=True):
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, c, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(l_batch, 7 * loss(params, client), rtol=1e-5)
  np.testing.assert_allclose(l_pe, l_batch, rtol=1e-6)


@pytest.mark.parametrize("grad_mode", ["batch", "per_example"])
def test_client_update_grad_modes_match_reference(grad_mode):
  clients = make_clients((9,), seed=5)
  params, loss = MODELS["mlp"]()
  update = fl.build_client_update(loss, optax.sgd(0.2), num_epochs=2, batch_size=4,
                                  grad_mode=grad_mode)
  one = jax.tree.map(lambda x: x[0], fl.from_clients(clients, max_examples=12, client_ids=[3]))
  out = jax.jit(update)(params, one, jax.random.key(1))
  ref, _ = reference_client(loss, params, clients[0], 3, jax.random.key(1), lr=0.2, num_epochs=2,
                            batch_size=4)
  for a, b in zip(jax.tree.leaves(out.delta), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_auto_grad_mode_picks_by_largest_leaf():
  assert fl.client.resolve_grad_mode("auto", {"w": jnp.zeros((60, 10))}) == "per_example"
  assert fl.client.resolve_grad_mode("auto", {"w": jnp.zeros((784, 200))}) == "batch"
  with pytest.raises(ValueError, match="`grad_mode` must be one of"):
    fl.build_client_update(lambda p, b: 0.0, optax.sgd(0.1), batch_size=2, grad_mode="fast")
