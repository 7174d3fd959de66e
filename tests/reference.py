"""A plain reference implementation of a federated round, for tests.

No padding, no masks, no vmap, no scan: a Python loop over clients, a Python
loop over epochs and batches of each client's *unpadded* arrays, un-vmapped
``jax.grad`` of the plain batch loss, and NumPy server optimizers written from
the formulas of Reddi et al. (2021), Algorithm 2. It shares only the
documented randomness convention with the library:

* round key ``key`` -> ``client_key, _ = jax.random.split(key)``
* client ``c`` -> ``fold_in(client_key, c)`` -> epoch ``e`` -> ``fold_in(., e)``
* the epoch's order sorts example ``j`` by ``random.bits(epoch_key, (n,))[j]``
  (``random.bits(fold_in(epoch_key, j))`` under legacy, non-partitionable threefry).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def reference_order(epoch_key, n: int) -> np.ndarray:
  if jax.config.jax_threefry_partitionable:
    words = np.asarray(jax.random.bits(epoch_key, (n,)), dtype=np.uint64)
  else:
    words = np.asarray([int(jax.random.bits(jax.random.fold_in(epoch_key, j)))
                        for j in range(n)], dtype=np.uint64)
  return np.argsort(words, kind="stable")


@functools.cache
def _grad(loss_fn):
  return jax.jit(jax.grad(loss_fn))


def reference_client(loss_fn, params, arrays, client_id, key, *, lr, num_epochs, batch_size):
  """Local SGD for one client on its unpadded arrays; returns (delta, n)."""
  n = next(iter(arrays.values())).shape[0]
  p = jax.tree.map(np.asarray, params)
  client_key = jax.random.fold_in(key, client_id)
  grad = _grad(loss_fn)
  for e in range(num_epochs):
    order = reference_order(jax.random.fold_in(client_key, e), n)
    for start in range(0, n, batch_size):
      idx = order[start:start + batch_size]
      batch = {k: v[idx] for k, v in arrays.items()}
      g = grad(p, batch)
      p = jax.tree.map(lambda a, b: np.float32(a) - np.float32(lr) * np.asarray(b), p, g)
  delta = jax.tree.map(lambda a, b: np.float64(a) - np.float64(b), p, params)
  return delta, n


class NumpyServer:
  """Server optimizers from the formulas, in float64 NumPy."""

  def __init__(self, kind, lr, *, momentum=0.0, b1=0.9, b2=0.99, tau=1e-3):
    self.kind, self.lr, self.momentum = kind, lr, momentum
    self.b1, self.b2, self.tau = b1, b2, tau
    self.m = self.v = None

  def step(self, params, mean_delta):
    g = jax.tree.map(lambda d: -np.asarray(d, np.float64), mean_delta)
    if self.m is None:
      self.m = jax.tree.map(np.zeros_like, g)
      self.v = jax.tree.map(lambda x: np.full_like(x, self.tau**2), g)
    if self.kind == "sgd":
      # optax.sgd momentum convention: trace = g + momentum * trace.
      self.m = jax.tree.map(lambda m, g: g + self.momentum * m, self.m, g)
      upd = jax.tree.map(lambda m: -self.lr * m, self.m)
    else:
      self.m = jax.tree.map(lambda m, g: self.b1 * m + (1 - self.b1) * g, self.m, g)
      if self.kind == "adam":
        self.v = jax.tree.map(lambda v, g: self.b2 * v + (1 - self.b2) * g * g, self.v, g)
      elif self.kind == "yogi":
        self.v = jax.tree.map(
            lambda v, g: v - (1 - self.b2) * g * g * np.sign(v - g * g), self.v, g)
      elif self.kind == "adagrad":
        self.v = jax.tree.map(lambda v, g: v + g * g, self.v, g)
      else:
        raise ValueError(self.kind)
      upd = jax.tree.map(lambda m, v: -self.lr * m / (np.sqrt(v) + self.tau), self.m, self.v)
    return jax.tree.map(lambda p, u: np.asarray(p, np.float64) + u, params, upd)


def reference_round(loss_fn, params, clients, client_ids, key, server, *, lr, num_epochs,
                    batch_size, weighting="num_examples"):
  """One round over unpadded ``clients`` (list of dicts); returns new params."""
  client_key, _ = jax.random.split(key)
  total = None
  total_w = 0.0
  for arrays, cid in zip(clients, client_ids, strict=True):
    n = next(iter(arrays.values())).shape[0]
    if n == 0:
      continue
    delta, n = reference_client(loss_fn, params, arrays, cid, client_key, lr=lr,
                                num_epochs=num_epochs, batch_size=batch_size)
    w = float(n) if weighting == "num_examples" else 1.0
    total = jax.tree.map(lambda d: w * d, delta) if total is None else jax.tree.map(
        lambda t, d: t + w * d, total, delta)
    total_w += w
  mean = jax.tree.map(lambda t: t / total_w, total)
  new = server.step(params, mean)
  return jax.tree.map(lambda x: np.asarray(x, np.float32), new)


def as_jnp(tree):
  return jax.tree.map(jnp.asarray, tree)


def linear_softmax_grad(params, batch):
  """The gradient (float64) of the mean softmax cross-entropy of the linear model, by hand."""
  dense = params["params"]["Dense_0"]
  x, y = np.float64(batch["x"]), batch["y"]
  logits = x @ np.float64(dense["kernel"]) + np.float64(dense["bias"])
  prob = np.exp(logits - logits.max(-1, keepdims=True))
  prob /= prob.sum(-1, keepdims=True)
  prob[np.arange(len(y)), y] -= 1.0
  g = prob / len(y)
  return {"params": {"Dense_0": {"kernel": x.T @ g, "bias": g.sum(0)}}}


def logistic_task(sizes, seed: int = 0):
  """Small clients of ``sizes`` examples (4 features, 3 classes) and a logistic regression.

  Returns:
    ``(population, params, loss)``: the stacked clients, initial parameters and the
    classification loss.
  """
  import fedjax_lite as fl

  rng = np.random.default_rng(seed)
  population = fl.from_clients([{"x": rng.normal(size=(n, 4)).astype(np.float32),
                                 "y": rng.integers(0, 3, n).astype(np.int32)} for n in sizes])
  model = fl.models.LogisticRegression(3)
  params = model.init(jax.random.key(0), population.arrays["x"][0, :1])
  return population, params, fl.models.classification_loss(model.apply)
