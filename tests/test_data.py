"""Stacked federated data: building, padding, gathering."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedjax_lite as fl
from tests.conftest import RAGGED_SIZES, make_clients


def test_from_clients_list_pads_with_zeros_and_counts():
  clients = make_clients(RAGGED_SIZES)
  data = fl.from_clients(clients)
  assert data.num_clients == len(RAGGED_SIZES)
  assert data.max_examples == max(RAGGED_SIZES)
  np.testing.assert_array_equal(data.num_examples, RAGGED_SIZES)
  np.testing.assert_array_equal(data.client_ids, np.arange(len(RAGGED_SIZES)))
  for i, c in enumerate(clients):
    n = RAGGED_SIZES[i]
    np.testing.assert_array_equal(data.arrays["x"][i, :n], c["x"])
    np.testing.assert_array_equal(data.arrays["y"][i, :n], c["y"])
    assert not data.arrays["x"][i, n:].any() and not data.arrays["y"][i, n:].any()
  assert data.arrays["x"].dtype == np.float32 and data.arrays["y"].dtype == np.int32
  np.testing.assert_array_equal(data.mask().sum(1), RAGGED_SIZES)


def test_from_clients_dict_keeps_key_order_and_max_examples():
  clients = make_clients((2, 4, 0))
  data = fl.from_clients({"bob": clients[0], "alice": clients[1], "eve": clients[2]},
                         max_examples=10, client_ids=[7, 3, 9])
  assert data.max_examples == 10
  np.testing.assert_array_equal(data.num_examples, [2, 4, 0])
  np.testing.assert_array_equal(data.client_ids, [7, 3, 9])
  np.testing.assert_array_equal(data.arrays["x"][1, :4], clients[1]["x"])


def test_all_empty_clients_still_have_one_padded_row():
  data = fl.from_clients([{"x": np.zeros((0, 3), np.float32)}] * 2)
  assert data.max_examples == 1 and data.num_examples.tolist() == [0, 0]


def test_take_inside_jit_matches_numpy_indexing():
  data = fl.from_clients(make_clients(RAGGED_SIZES))
  idx = np.array([4, 0, 2, 2])
  got = jax.jit(fl.take)(jax.device_put(data), jnp.asarray(idx))
  for name in data.arrays:
    np.testing.assert_array_equal(got.arrays[name], data.arrays[name][idx])
  np.testing.assert_array_equal(got.num_examples, data.num_examples[idx])
  np.testing.assert_array_equal(got.client_ids, data.client_ids[idx])
  np.testing.assert_array_equal(data.take(idx).num_examples, data.num_examples[idx])


def test_from_arrays_zeroes_stale_padding():
  x = np.ones((2, 4, 3), np.float32)
  data = fl.from_arrays({"x": x}, [1, 3])
  np.testing.assert_array_equal(data.arrays["x"].sum((1, 2)), [3.0, 9.0])


def test_example_mask():
  m = fl.example_mask(jnp.array([0, 2, 3]), 3)
  np.testing.assert_array_equal(m, [[0, 0, 0], [1, 1, 0], [1, 1, 1]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(clients=[]), "`clients` is empty"),
        (dict(clients=[{"x": np.zeros((2, 3))}, {"z": np.zeros((2, 3))}]), "same names"),
        (dict(clients=[{"x": np.zeros((2, 3)), "y": np.zeros(3)}]), "leading \\(example\\) axis"),
        (dict(clients=[{"x": np.zeros((2, 3))}, {"x": np.zeros((2, 4))}]), "per-example shape"),
        (dict(clients=[{"x": np.zeros((5, 3))}], max_examples=2), "`max_examples`=2"),
        (dict(clients=[{"x": np.zeros((1, 3))}] * 2, client_ids=[1, 1]), "unique"),
        (dict(clients=[{"x": np.zeros((1, 3))}] * 2, client_ids=[1]), "`client_ids`"),
    ],
)
def test_from_clients_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    fl.from_clients(**kwargs)


def test_from_clients_type_error_names_argument():
  with pytest.raises(TypeError, match=r"`clients\[0\]`"):
    fl.from_clients([np.zeros(3)])


@pytest.mark.parametrize(
    "arrays, counts, match",
    [
        ({"x": np.zeros((2, 4)), "y": np.zeros((3, 4))}, [1, 1], "leading"),
        ({"x": np.zeros((2, 4))}, [1, -1], ">= 0"),
        ({"x": np.zeros((2, 4))}, [1.5, 2], "integers"),
        ({"x": np.zeros((2, 4))}, [1, 5], "exceeds"),
        ({"x": np.zeros((2, 4))}, [1, 2, 3], "shape \\[2\\]"),
    ],
)
def test_from_arrays_errors(arrays, counts, match):
  with pytest.raises(ValueError, match=match):
    fl.from_arrays(arrays, counts)


def test_public_api_names_all_exist():
  missing = [name for name in fl.__all__ if not hasattr(fl, name)]
  assert not missing
  for module in (fl.privacy, fl.evaluation, fl.checkpoint, fl.datasets, fl.server, fl.models):
    assert module.__doc__
