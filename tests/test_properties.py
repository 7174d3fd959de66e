"""Property tests: random client sizes, chunk sizes and cohort orders."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedjax_lite as fl
from tests.conftest import MODELS, make_clients
from tests.reference import NumpyServer, reference_round

PARAMS, LOSS = MODELS["linear"]()
UPDATE = fl.build_client_update(LOSS, optax.sgd(0.1), num_epochs=2, batch_size=3)
MAX_N = 16


@st.composite
def cohorts(draw):
  sizes = draw(st.lists(st.integers(0, MAX_N), min_size=1, max_size=7))
  chunk = draw(st.integers(1, len(sizes) + 1))
  perm = draw(st.permutations(range(len(sizes))))
  seed = draw(st.integers(0, 2**20))
  return sizes, chunk, list(perm), seed


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts())
def test_round_invariant_to_sizes_chunks_and_order(case):
  sizes, chunk, perm, seed = case
  clients = make_clients(sizes, seed=seed)
  data = fl.from_clients(clients, max_examples=MAX_N)
  key = jax.random.key(seed)
  whole = fl.build_federated_algorithm(UPDATE, fl.server.fedavg())
  chunked = fl.build_federated_algorithm(UPDATE, fl.server.fedavg(), chunk_size=chunk)
  base, m_base = whole.round(whole.init(PARAMS), data, key)
  got, m_got = chunked.round(chunked.init(PARAMS), data.take(np.asarray(perm)), key)
  for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(base.params), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(m_got["train_loss"], m_base["train_loss"], rtol=1e-5, atol=1e-6)
  assert float(m_got["num_examples"]) == sum(sizes)
  assert float(m_got["num_clients"]) == sum(n > 0 for n in sizes)
  # Against the plain loop (unpadded, unchunked, in the original order).
  if sum(sizes):
    ref = reference_round(LOSS, jax.tree.map(np.asarray, PARAMS), clients, range(len(sizes)), key,
                          NumpyServer("sgd", 1.0), lr=0.1, num_epochs=2, batch_size=3)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(ref), strict=True):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  else:  # nobody trained: FedAvg leaves the model as it was
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(PARAMS), strict=True):
      np.testing.assert_array_equal(a, b)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 50), st.data())
def test_sample_clients_is_a_uniform_subset(num_clients, data):
  k = data.draw(st.integers(1, num_clients))
  seed = data.draw(st.integers(0, 2**20))
  idx = np.asarray(fl.sample_clients(jax.random.key(seed), num_clients, k))
  assert idx.shape == (k,) and len(set(idx.tolist())) == k
  assert idx.min() >= 0 and idx.max() < num_clients
  np.testing.assert_array_equal(idx, fl.sample_clients(jax.random.key(seed), num_clients, k))


def test_sample_clients_marginals_are_uniform():
  n, k, trials = 10, 3, 4000
  keys = jax.random.split(jax.random.key(0), trials)
  idx = jax.vmap(lambda key: fl.sample_clients(key, n, k))(keys)
  counts = np.bincount(np.asarray(idx).ravel(), minlength=n)
  expected = trials * k / n
  # Binomial std ~ sqrt(1200 * 0.7) ~ 29; allow 5 sigma.
  assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected * (1 - k / n)))


@pytest.mark.parametrize("num_draws", [None, 2])
def test_rejection_sampler_gives_every_ordered_pair_equally_often(num_draws):
  """Chi-square test of the cohort-scaled sampler over all 56 ordered pairs of 8 clients.

  ``num_draws=2`` leaves no spare draws, so about one attempt in eight has a
  repeat and is redrawn: the redraw path must keep the sample uniform too.
  """
  from scipy import stats

  from fedjax_lite.sampling import _first_distinct_draws

  n, trials = 8, 28_000
  keys = jax.random.split(jax.random.key(1), trials)
  pairs = np.asarray(jax.jit(jax.vmap(lambda k: _first_distinct_draws(k, n, 2, num_draws)))(keys))
  assert np.all(pairs[:, 0] != pairs[:, 1]) and pairs.min() >= 0 and pairs.max() < n
  counts = np.bincount(pairs[:, 0] * n + pairs[:, 1], minlength=n * n).reshape(n, n)
  assert np.all(np.diag(counts) == 0)
  observed = counts[~np.eye(n, dtype=bool)]
  assert stats.chisquare(observed).pvalue > 1e-4


def test_sample_clients_uses_both_methods_consistently():
  """Cohorts up to N/8 come from the rejection sampler, larger ones from a permutation."""
  from fedjax_lite.sampling import _first_distinct_draws

  key = jax.random.key(3)
  small = fl.sample_clients(key, 800, 100)
  np.testing.assert_array_equal(small, _first_distinct_draws(key, 800, 100))
  large = np.asarray(fl.sample_clients(key, 800, 101))
  assert len(set(large.tolist())) == 101
