"""The client engine (fedjax_lite.mapreduce): its invariances, tested once here.

Chunk size, client order and device count must not change what the engine
computes beyond float summation order; chunks with no active client are
skipped; the finiteness test flags exactly the non-finite clients. Every
check is against a NumPy loop over the clients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjax_lite import mapreduce, sharding


def _clients(k, seed=0):
  rng = np.random.default_rng(seed)
  return {"x": rng.standard_normal((k, 3, 2)).astype(np.float32),
          "n": rng.integers(0, 3, size=k).astype(np.int32)}


def _chunk_fn(shared, chunk, valid):
  # Per client: y = shared * sum(x[:n]) ; sums: (sum y, count of valid clients).
  mask = jnp.arange(3)[None, :, None] < chunk["n"][:, None, None]
  y = shared * jnp.sum(jnp.where(mask, chunk["x"], 0.0), axis=1)  # [C, 2]
  y = jnp.where(valid[:, None], y, 0.0)
  return (jnp.sum(y, axis=0), jnp.sum(valid.astype(jnp.float32))), {"y": y, "valid": valid}


def _reference(shared, clients):
  y = np.stack([shared * clients["x"][i, :clients["n"][i]].sum(0)
                for i in range(len(clients["n"]))])
  return y.sum(0), y


def _run(clients, chunk_size, mesh=None, active=None):
  f = jax.jit(lambda s, c, a: mapreduce.map_reduce(_chunk_fn, s, c, active=a,
                                                   chunk_size=chunk_size, mesh=mesh))
  return f(jnp.float32(1.5), clients, active)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 11), chunk=st.one_of(st.none(), st.integers(1, 12)),
       seed=st.integers(0, 1000))
def test_map_reduce_equals_a_loop_for_any_chunk_size(k, chunk, seed):
  clients = _clients(k, seed)
  (total, count), per_client = _run(clients, chunk)
  ref_total, ref_y = _reference(1.5, clients)
  np.testing.assert_allclose(total, ref_total, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(per_client["y"], ref_y, rtol=1e-6, atol=1e-6)
  assert count == k and per_client["valid"].all()  # padded slots are never valid


def test_client_order_and_device_count_do_not_matter():
  clients = _clients(10, seed=3)
  (total, _), per_client = _run(clients, 3)
  perm = np.random.default_rng(0).permutation(10)
  (total_p, _), per_client_p = _run(jax.tree.map(lambda x: x[perm], clients), 4)
  np.testing.assert_allclose(total_p, total, rtol=1e-5)
  np.testing.assert_allclose(per_client_p["y"], per_client["y"][perm], rtol=1e-6)
  for devices in (2, 4):  # 10 clients: padded to 10 and 12
    mesh = sharding.client_mesh(devices)
    (total_m, count_m), per_client_m = _run(clients, 2, mesh=mesh)
    np.testing.assert_allclose(total_m, total, rtol=1e-5)
    np.testing.assert_allclose(per_client_m["y"], per_client["y"], rtol=1e-6)
    assert count_m == 10  # the mesh's padding clients are invalid


def test_inactive_chunks_are_skipped():
  clients = _clients(6, seed=1)
  active = np.array([False, False, True, False, False, False])
  calls = []

  def chunk_fn(shared, chunk, valid):
    calls.append(1)  # traced once per branch, not per chunk
    return _chunk_fn(shared, chunk, valid)

  f = jax.jit(lambda c, a: mapreduce.map_reduce(chunk_fn, jnp.float32(1.0), c, active=a,
                                                chunk_size=2))
  (_, count), per_client = f(clients, active)
  # Only the chunk holding client 2 ran: 2 valid clients counted, zeros elsewhere.
  assert count == 2
  np.testing.assert_array_equal(per_client["valid"], [False, False, True, True, False, False])
  _, ref_y = _reference(1.0, clients)
  np.testing.assert_allclose(per_client["y"][2:4], ref_y[2:4], rtol=1e-6)
  assert not np.asarray(per_client["y"])[[0, 1, 4, 5]].any()


def test_map_clients_matches_vmap_and_is_differentiable():
  clients = _clients(7, seed=2)
  fn = lambda s, c: s * jnp.sum(c["x"] ** 2)
  out = jax.jit(lambda s, c: mapreduce.map_clients(fn, s, c, chunk_size=3))(2.0, clients)
  np.testing.assert_allclose(out, jax.vmap(fn, (None, 0))(2.0, clients), rtol=1e-6)
  g = jax.grad(lambda s: mapreduce.map_clients(fn, s, clients, chunk_size=3).sum())(2.0)
  np.testing.assert_allclose(g, np.sum(clients["x"] ** 2), rtol=1e-5)


@pytest.mark.parametrize("bad", [[], [3], [0, 5]])
def test_finite_clients_flags_exactly_the_nonfinite(bad):
  x = np.ones((6, 4), np.float32)
  w = np.ones((6,), np.float32)
  for i in bad:
    x[i, i % 4] = np.nan if i % 2 else np.inf
  finite = jax.jit(lambda t: mapreduce.finite_clients(lambda f: f, t))((x, w))
  expected = np.ones(6, bool)
  expected[bad] = False
  np.testing.assert_array_equal(finite, expected)
  assert bool(mapreduce.all_finite((x, w))) == (not bad)


def test_chunk_size_is_checked():
  with pytest.raises(ValueError, match="chunk_size"):
    mapreduce.map_reduce(_chunk_fn, 1.0, _clients(2), chunk_size=0)
  with pytest.raises(TypeError, match="chunk_size"):
    mapreduce.map_reduce(_chunk_fn, 1.0, _clients(2), chunk_size="big")
