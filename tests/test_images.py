"""IDX reader, Fashion-MNIST loader (on tiny generated files) and the digits loader."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from fedjax_lite.datasets.images import load_digits_dataset, load_fashion_mnist, read_idx

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
          np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
  """Encodes an array as IDX: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data."""
  code = _CODES[array.dtype.type]
  header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, gz=False):
  data = idx_bytes(array)
  path.write_bytes(gzip.compress(data) if gz else data)
  return path


def _row(data, c, k):
  return data.arrays[k][c, : data.num_examples[c]]


# --- read_idx -------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_images_and_labels(tmp_path, gz):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 7).astype(np.uint8)
  suffix = ".gz" if gz else ""
  got_images = read_idx(write_idx(tmp_path / f"img{suffix}", images, gz))
  got_labels = read_idx(write_idx(tmp_path / f"lab{suffix}", labels, gz))
  assert got_images.dtype == np.uint8 and got_images.shape == (7, 5, 3)
  np.testing.assert_array_equal(got_images, images)
  np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_other_types_are_big_endian(tmp_path, dtype):
  array = (np.arange(24).reshape(2, 3, 4) - 11).astype(dtype) * (1.5 if dtype in (
      np.float32, np.float64) else 1)
  array = array.astype(dtype)
  got = read_idx(write_idx(tmp_path / "a.idx", array))
  assert got.dtype == np.dtype(dtype) and got.dtype.isnative
  np.testing.assert_array_equal(got, array)
  # The bytes really are big-endian: 0x0102 as int16 reads back as 258.
  (tmp_path / "b").write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 1, 0x01, 0x02]))
  assert read_idx(tmp_path / "b").tolist() == [258]


def test_read_idx_rejects_bad_magic(tmp_path):
  good = idx_bytes(np.zeros((2, 2), np.uint8))
  for bad in (b"\x01" + good[1:], good[:2] + b"\x07" + good[3:], b"PK\x03\x04" + good[4:]):
    (tmp_path / "bad").write_bytes(bad)
    with pytest.raises(ValueError, match="magic number"):
      read_idx(tmp_path / "bad")


def test_read_idx_rejects_truncated_files(tmp_path):
  good = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
  for cut, match in ((len(good) - 1, "truncated.*12 data bytes, found 11"),
                     (6, "truncated.*header"), (2, "truncated")):
    (tmp_path / "t").write_bytes(good[:cut])
    with pytest.raises(ValueError, match=match):
      read_idx(tmp_path / "t")
  (tmp_path / "t.gz").write_bytes(gzip.compress(good)[:-6])
  with pytest.raises(ValueError, match="truncated"):
    read_idx(tmp_path / "t.gz")
  (tmp_path / "long").write_bytes(good + b"\x00")
  with pytest.raises(ValueError, match="trailing"):
    read_idx(tmp_path / "long")
  with pytest.raises(FileNotFoundError):
    read_idx(tmp_path / "absent")


# --- Fashion-MNIST --------------------------------------------------------------------------


def fake_fashion_mnist(directory, num_train=60, num_test=20, gz_train=True):
  """Tiny IDX files; image i has pixel [0, 0] = i (so rows can be traced) and label i % 10."""
  rng = np.random.default_rng(0)
  for split, n, gz in (("train", num_train, gz_train), ("t10k", num_test, False)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)
    labels = (np.arange(n) % 10).astype(np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images, gz)
    write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", labels, gz)
  return directory


@pytest.mark.parametrize("method", ["dirichlet", "iid", "shards"])
def test_load_fashion_mnist_tiny_directory(tmp_path, method):
  fake_fashion_mnist(tmp_path)
  raw_images = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
  ds = load_fashion_mnist(tmp_path, method=method, num_clients=6, seed=1)
  assert ds.train.arrays["x"].dtype == np.float32 and ds.train.arrays["x"].shape[2:] == (28, 28, 1)
  assert ds.train.arrays["y"].dtype == np.int32 and ds.num_classes == 10
  assert ds.train.num_clients == ds.test.num_clients == 6
  assert 0.0 <= ds.train.arrays["x"].min() and ds.train.arrays["x"].max() <= 1.0
  # Central test = the t10k set, scaled to [0, 1].
  t10k = read_idx(tmp_path / "t10k-images-idx3-ubyte")
  assert ds.central_test["x"].shape == (20, 28, 28, 1)
  np.testing.assert_allclose(ds.central_test["x"][..., 0], t10k / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(ds.central_test["y"], np.arange(20) % 10)
  # Every training image lands in exactly one client's train or test part, unchanged.
  seen = []
  for data in (ds.train, ds.test):
    for c in range(6):
      x, y = _row(data, c, "x"), _row(data, c, "y")
      ids = np.rint(x[:, 0, 0, 0] * 255).astype(int)
      np.testing.assert_allclose(x[..., 0], raw_images[ids] / 255.0, rtol=1e-6)
      np.testing.assert_array_equal(y, ids % 10)
      seen.append(ids)
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(60))
  assert ds.info["method"] == method and ds.info["central_test_examples"] == 20


def test_load_fashion_mnist_max_train_examples_and_plain_files(tmp_path):
  fake_fashion_mnist(tmp_path, gz_train=False)
  ds = load_fashion_mnist(tmp_path, method="iid", num_clients=3, max_train_examples=30)
  assert int(ds.train.num_examples.sum() + ds.test.num_examples.sum()) == 30
  ids = np.rint(ds.train.arrays["x"][:, :, 0, 0, 0] * 255)[ds.train.mask()]
  assert ids.max() < 30


def test_load_fashion_mnist_missing_files_message(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    load_fashion_mnist(tmp_path)
  msg = str(err.value)
  for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"):
    assert name in msg
  assert str(tmp_path) in msg and ".gz" in msg
  assert "apt-get install dataset-fashion-mnist" in msg
  assert "/usr/share/datasets/fashion-mnist" in msg
  assert "path=" in msg
  # With only the test labels missing, only they are named.
  fake_fashion_mnist(tmp_path)
  (tmp_path / "t10k-labels-idx1-ubyte").unlink()
  with pytest.raises(FileNotFoundError, match="missing t10k-labels-idx1-ubyte") as err:
    load_fashion_mnist(tmp_path)
  assert "train-images" not in str(err.value).split("missing")[1].split("On Debian")[0]


def test_load_fashion_mnist_bad_arguments(tmp_path):
  fake_fashion_mnist(tmp_path)
  with pytest.raises(ValueError, match="method"):
    load_fashion_mnist(tmp_path, method="natural")
  with pytest.raises(ValueError, match="max_train_examples"):
    load_fashion_mnist(tmp_path, max_train_examples=0)
  with pytest.raises(ValueError, match="num_clients"):
    load_fashion_mnist(tmp_path, method="iid", num_clients=61)
  write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(19, np.uint8))
  with pytest.raises(ValueError, match="do not match"):
    load_fashion_mnist(tmp_path)


# --- Digits ---------------------------------------------------------------------------------


def test_digits_loader_central_test_and_partition():
  ds = load_digits_dataset(num_clients=20, alpha=0.5, seed=0)
  assert ds.train.arrays["x"].shape[2:] == (8, 8, 1) and ds.train.arrays["x"].dtype == np.float32
  assert ds.num_classes == 10 and ds.train.num_clients == ds.test.num_clients == 20
  central_y = ds.central_test["y"]
  assert ds.central_test["x"].shape == (central_y.size, 8, 8, 1)
  # Stratified 20%: round(0.2 * n_k) per class; everything is used exactly once.
  from sklearn.datasets import load_digits

  full_counts = np.bincount(load_digits().target, minlength=10)
  np.testing.assert_array_equal(np.bincount(central_y, minlength=10),
                                np.floor(0.2 * full_counts + 0.5))
  client_y = np.concatenate([ds.train.arrays["y"][ds.train.mask()],
                             ds.test.arrays["y"][ds.test.mask()]])
  np.testing.assert_array_equal(np.bincount(client_y, minlength=10) + np.bincount(central_y),
                                full_counts)
  for data in (ds.train, ds.test, ds.central_test):
    x = data["x"] if isinstance(data, dict) else data.arrays["x"]
    assert 0.0 <= x.min() and x.max() <= 1.0
  assert ds.info["central_test_examples"] == central_y.size and ds.info["alpha"] == 0.5
  again = load_digits_dataset(num_clients=20, alpha=0.5, seed=0)
  np.testing.assert_array_equal(again.train.arrays["x"], ds.train.arrays["x"])
  other = load_digits_dataset(num_clients=20, alpha=0.5, seed=1)
  assert not np.array_equal(other.central_test["x"], ds.central_test["x"])


def test_digits_loader_shards_and_bad_method():
  ds = load_digits_dataset(method="shards", num_clients=10, shards_per_client=2, seed=0)
  for c in range(10):
    y = np.concatenate([_row(ds.train, c, "y"), _row(ds.test, c, "y")])
    assert np.unique(y).size <= 4
  with pytest.raises(ValueError, match="method"):
    load_digits_dataset(method="natural")
