"""Benchmark populations drawn on the device, for sizes host NumPy is too slow for.

The library's generators (:func:`fedjax_lite.datasets.synthetic_classification`,
:func:`fedjax_lite.datasets.leaf_synthetic`) draw with NumPy on the host, one
client at a time for LEAF: about 0.2 ms a client here, so minutes for a
million clients. These draw the same laws with ``jax.random`` on the default
device, a block of clients at a time inside one compiled program. The values
differ from the host generators' (other random streams); the shapes, dtypes
and laws are the same, which is what a timing needs, and every implementation
of a benchmark runs on the same arrays.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

import fedjax_lite as fl


def _blocks(draw, key, num_clients: int, block: int):
  """``draw(key, block) -> arrays`` for ceil(N / block) blocks, stacked and cut to N clients."""
  num_blocks = math.ceil(num_clients / block)

  @jax.jit
  def run(key):
    out = jax.lax.map(lambda b: draw(jax.random.fold_in(key, b), block), jnp.arange(num_blocks))
    return jax.tree.map(lambda x: x.reshape((num_blocks * block,) + x.shape[2:])[:num_clients],
                        out)

  return run(key)


def _federated(arrays, num_clients: int, examples: int) -> fl.FederatedData:
  return fl.FederatedData(arrays, jnp.full((num_clients,), examples, jnp.int32),
                          jnp.arange(num_clients, dtype=jnp.int32))


def w1_population(num_clients: int, *, examples: int = 64, features: int = 784,
                  classes: int = 10, seed: int = 0, block: int = 512) -> fl.FederatedData:
  """W1's clients: the law of ``synthetic_classification`` (heterogeneity 1, noise 0.5).

  A shared teacher ``W0 ~ N(0, 1)``; client ``i`` labels with ``W0 + E_i``
  (``E_i ~ N(0, 1)``) features ``x ~ N(mu_i, 1)``, ``mu_i ~ N(0, 1)``:
  ``y = argmax(x W_i + 0.5 eps)``.
  """
  teacher_key, key = jax.random.split(jax.random.key(seed))
  w0 = jax.random.normal(teacher_key, (features, classes))

  def draw(k, b):
    ke, km, kx, kn = jax.random.split(k, 4)
    w = w0 + jax.random.normal(ke, (b, features, classes))
    mu = jax.random.normal(km, (b, 1, features))
    x = mu + jax.random.normal(kx, (b, examples, features))
    logits = jnp.einsum("cnf,cfk->cnk", x, w, precision="highest") + 0.5 * jax.random.normal(
        kn, (b, examples, classes))
    return {"x": x, "y": jnp.argmax(logits, -1).astype(jnp.int32)}

  return _federated(_blocks(draw, key, num_clients, min(block, num_clients)), num_clients,
                    examples)


def w2_population(num_clients: int, *, examples: int = 32, features: int = 60,
                  classes: int = 10, alpha: float = 1.0, beta: float = 1.0, seed: int = 0,
                  block: int = 8192) -> fl.FederatedData:
  """W2's clients: LEAF Synthetic(alpha, beta) of Li et al. (FedProx), ``examples`` each.

  Device ``k``: ``u_k ~ N(0, alpha)``, ``B_k ~ N(0, beta)``, ``v_k ~ N(B_k,
  1)``, ``W_k ~ N(u_k, 1)``, ``b_k ~ N(u_k, 1)``; ``x ~ N(v_k, diag(j^-1.2))``
  and ``y = argmax(W_k x + b_k)``.
  """
  key = jax.random.key(seed)
  scale = jnp.arange(1, features + 1, dtype=jnp.float32) ** -0.6  # sqrt(j^-1.2)

  def draw(k, b):
    ku, kb, kv, kw, kbias, kx = jax.random.split(k, 6)
    u = jnp.sqrt(alpha) * jax.random.normal(ku, (b, 1, 1))
    v = jnp.sqrt(beta) * jax.random.normal(kb, (b, 1, 1)) + jax.random.normal(kv, (b, 1, features))
    w = u + jax.random.normal(kw, (b, classes, features))
    bias = u[:, 0] + jax.random.normal(kbias, (b, classes))
    x = v + scale * jax.random.normal(kx, (b, examples, features))
    logits = jnp.einsum("cnf,ckf->cnk", x, w, precision="highest") + bias[:, None, :]
    return {"x": x, "y": jnp.argmax(logits, -1).astype(jnp.int32)}

  return _federated(_blocks(draw, key, num_clients, min(block, num_clients)), num_clients,
                    examples)
