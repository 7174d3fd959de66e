"""Stacked means against NumPy."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import fedjax_lite as fl


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=12), st.integers(0, 2**16))
def test_weighted_and_uniform_means_match_numpy(counts, seed):
  rng = np.random.default_rng(seed)
  k = len(counts)
  tree = {"a": rng.standard_normal((k, 3, 2)).astype(np.float32),
          "b": rng.standard_normal((k,)).astype(np.float32)}
  w = np.asarray(counts, np.float32)
  got = fl.weighted_mean(tree, jnp.asarray(w))
  uni = fl.uniform_mean(tree, jnp.asarray(w > 0))
  for name, x in tree.items():
    if w.sum() == 0:
      assert not np.asarray(got[name]).any() and not np.asarray(uni[name]).any()
      continue
    exp = np.tensordot(w.astype(np.float64), x.astype(np.float64), axes=1) / w.sum()
    np.testing.assert_allclose(got[name], exp, rtol=1e-5, atol=1e-6)
    exp_u = x[w > 0].astype(np.float64).mean(0)
    np.testing.assert_allclose(uni[name], exp_u, rtol=1e-5, atol=1e-6)
