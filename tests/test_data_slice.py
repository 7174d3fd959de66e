"""FederatedData's properties on a population, one client's slice, and stacked populations.

The reference for every property is computed with NumPy from the unpadded
per-client arrays the population was built from, never from the properties.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedjax_lite as fl
from fedjax_lite.data import FederatedData
from tests.conftest import RAGGED_SIZES


def _clients(sizes, feature_shape, seed=0):
  rng = np.random.default_rng(seed)
  return [{"x": rng.standard_normal((n,) + tuple(feature_shape)).astype(np.float32),
           "y": rng.integers(0, 10, n).astype(np.int32)} for n in sizes]


def _reference_mask(n, max_examples):
  """The mask of a client with ``n`` real rows, written out row by row."""
  return np.array([True] * n + [False] * (max_examples - n))


def _check_slice(one, client, max_examples):
  """``one`` is a single client's slice of a population built from ``client``."""
  n = len(client["y"])
  assert one.is_single_client
  assert one.num_clients == 1
  assert one.max_examples == max_examples
  mask = np.asarray(one.mask())
  assert mask.shape == (max_examples,) and mask.dtype == bool
  np.testing.assert_array_equal(mask, _reference_mask(n, max_examples))
  # The mask selects exactly the client's rows.
  np.testing.assert_array_equal(np.asarray(one.arrays["x"])[mask], client["x"])


def _check_population(data, clients, max_examples):
  assert not data.is_single_client
  assert data.num_clients == len(clients)
  assert data.max_examples == max_examples
  np.testing.assert_array_equal(
      np.asarray(data.mask()),
      np.stack([_reference_mask(len(c["y"]), max_examples) for c in clients]))


def test_slice_of_digits_like_population_reads_the_example_axis():
  # Digits: x is [N, max_n, 8, 8, 1]; the old max_examples read shape[1] of a
  # slice, i.e. the image height 8, not the padded length.
  clients = _clients(RAGGED_SIZES, (8, 8, 1))
  data = fl.from_clients(clients)
  m = max(RAGGED_SIZES)
  assert m != 8
  _check_population(data, clients, m)
  for i, c in enumerate(clients):
    _check_slice(jax.tree.map(lambda x, i=i: x[i], data), c, m)


def test_slice_of_the_digits_dataset():
  from fedjax_lite.datasets import images
  train = images.load_digits_dataset(num_clients=12, seed=0).train
  m = train.arrays["x"].shape[1]
  for i in (0, 5, 11):
    one = jax.tree.map(lambda x, i=i: x[i], train)
    assert one.max_examples == m and one.num_clients == 1
    np.testing.assert_array_equal(one.mask(), np.arange(m) < int(train.num_examples[i]))


def test_properties_under_vmap_lax_map_and_jit_match_numpy():
  clients = _clients(RAGGED_SIZES, (3,))
  data = jax.device_put(fl.from_clients(clients, max_examples=24))
  seen = []

  def per_client(one: FederatedData):
    seen.append((one.is_single_client, one.num_clients, one.max_examples))
    return one.mask()

  reference = np.stack([_reference_mask(n, 24) for n in RAGGED_SIZES])
  np.testing.assert_array_equal(jax.vmap(per_client)(data), reference)
  np.testing.assert_array_equal(jax.jit(jax.vmap(per_client))(data), reference)
  np.testing.assert_array_equal(jax.lax.map(per_client, data, batch_size=3), reference)
  assert seen and set(seen) == {(True, 1, 24)}
  # The population itself, inside jit.
  shapes = []
  jax.jit(lambda d: shapes.append((d.num_clients, d.max_examples, d.mask().shape)))(data)
  assert shapes == [(len(RAGGED_SIZES), 24, (len(RAGGED_SIZES), 24))]


def test_slice_with_python_int_count():
  one = FederatedData({"x": np.zeros((5, 5))}, 2, 7)
  assert one.is_single_client and one.num_clients == 1 and one.max_examples == 5
  np.testing.assert_array_equal(one.mask(), _reference_mask(2, 5))


def test_stacked_populations_count_the_inner_client_axis():
  a = fl.from_clients(_clients((3, 0, 5), (2,)), max_examples=6)
  b = fl.from_clients(_clients((6, 1, 2), (2,), seed=1), max_examples=6)
  stacked = jax.tree.map(lambda *xs: np.stack(xs), a, b)
  assert stacked.num_examples.shape == (2, 3)
  assert not stacked.is_single_client
  assert stacked.num_clients == 3 and stacked.max_examples == 6
  mask = np.asarray(stacked.mask())
  assert mask.shape == (2, 3, 6)
  np.testing.assert_array_equal(mask[0], [_reference_mask(n, 6) for n in (3, 0, 5)])
  np.testing.assert_array_equal(mask[1], [_reference_mask(n, 6) for n in (6, 1, 2)])
  # vmapping over the outer axis sees each population as it is.
  inner = jax.vmap(lambda d: (d.mask(), d.num_clients * jnp.ones(())))(stacked)
  np.testing.assert_array_equal(inner[0], mask)
  np.testing.assert_array_equal(inner[1], [3, 3])


@pytest.mark.parametrize(
    "data, match",
    [
        (FederatedData({}, np.zeros(2, np.int32), np.arange(2)), r"`arrays` is empty"),
        (FederatedData({"x": np.zeros(2)}, np.zeros(2, np.int32), np.arange(2)),
         r"`arrays\['x'\]` has shape \(2,\).*no example axis"),
        (FederatedData({"x": np.zeros(())}, 1, 0), r"`arrays\['x'\]` has shape \(\)"),
    ],
)
def test_max_examples_errors_name_the_array(data, match):
  with pytest.raises(ValueError, match=match):
    _ = data.max_examples
  with pytest.raises(ValueError, match=match):
    data.mask()


_feature_shapes = st.lists(st.integers(1, 9), min_size=0, max_size=3).map(tuple)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 12), min_size=1, max_size=6), feature_shape=_feature_shapes,
       extra=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_properties_match_numpy_for_random_ragged_populations(sizes, feature_shape, extra, seed):
  clients = _clients(sizes, feature_shape, seed)
  m = max(max(sizes), 1) + extra
  data = fl.from_clients(clients, max_examples=m)
  _check_population(data, clients, m)
  for i, c in enumerate(clients):
    _check_slice(jax.tree.map(lambda x, i=i: x[i], data), c, m)
  got = jax.vmap(lambda one: (one.mask(), jnp.full((), one.max_examples),
                              jnp.full((), one.num_clients)))(data)
  np.testing.assert_array_equal(got[0], [_reference_mask(len(c["y"]), m) for c in clients])
  np.testing.assert_array_equal(got[1], [m] * len(sizes))
  np.testing.assert_array_equal(got[2], [1] * len(sizes))
