"""Small image classification sets, partitioned into clients: scikit-learn digits, Fashion-MNIST.

Nothing is downloaded: the digits ship with scikit-learn, and Fashion-MNIST is read from IDX files
already on disk (on Debian/Ubuntu, ``sudo apt-get install dataset-fashion-mnist`` puts them under
``/usr/share/datasets/fashion-mnist/``).

References:
  * E. Alpaydin, C. Kaynak. "Optical Recognition of Handwritten Digits." UCI Machine Learning
    Repository, 1998. https://doi.org/10.24432/C50P49 (the 8x8 digits of
    ``sklearn.datasets.load_digits``).
  * H. Xiao, K. Rasul, R. Vollgraf. "Fashion-MNIST: a Novel Image Dataset for Benchmarking
    Machine Learning Algorithms." arXiv:1708.07747, 2017. https://arxiv.org/abs/1708.07747
  * Y. LeCun, C. Cortes, C. J. C. Burges. The MNIST database and its IDX file format.
    http://yann.lecun.com/exdb/mnist/
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Any

import numpy as np

from fedjax_lite._validate import check_int
from fedjax_lite.datasets.base import FederatedDataset
from fedjax_lite.datasets.partition import partition_dataset

# IDX type codes -> big-endian NumPy dtypes.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_GZIP_MAGIC = b"\x1f\x8b"
_PARTITION_METHODS = ("iid", "dirichlet", "shards")


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (the MNIST format), plain or gzip-compressed.

  Layout: two zero bytes, a type byte (``0x08`` ubyte, ``0x09`` sbyte, ``0x0B`` int16, ``0x0C``
  int32, ``0x0D`` float32, ``0x0E`` float64), a byte with the number of dimensions ``d``, then
  ``d`` big-endian ``uint32`` sizes, then the data, big-endian, in row-major order. A file is
  treated as gzip when it starts with the gzip magic bytes (whatever its name).

  Args:
    path: the file.

  Returns:
    An array of shape ``[dim_0, ..., dim_{d-1}]`` in the native byte order (``uint8``, ``int8``,
    ``int16``, ``int32``, ``float32`` or ``float64``).

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: for a bad magic number, an unknown type code, a truncated file (header or data),
      trailing bytes after the data, or a corrupt gzip stream.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == _GZIP_MAGIC:
    try:
      raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
      raise ValueError(f"{path}: truncated or corrupt gzip stream ({e}).") from e
  if len(raw) < 4:
    raise ValueError(
        f"{path}: truncated IDX file: {len(raw)} bytes, shorter than the 4-byte magic number.")
  if raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
    raise ValueError(
        f"{path}: not an IDX file: bad magic number {raw[:4].hex()} (expected 0000 then a type "
        f"code in {[hex(k) for k in IDX_DTYPES]} then the number of dimensions).")
  dtype = IDX_DTYPES[raw[2]]
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(
        f"{path}: truncated IDX file: the header needs {header} bytes for {ndim} dimensions, the "
        f"file has {len(raw)}.")
  shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  got = len(raw) - header
  if got < expected:
    raise ValueError(
        f"{path}: truncated IDX file: shape {shape} of {dtype.name} needs {expected} data bytes, "
        f"found {got}.")
  if got > expected:
    raise ValueError(
        f"{path}: {got - expected} unexpected trailing bytes after the data of shape {shape}.")
  data = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
  return data.reshape(shape).astype(dtype.newbyteorder("="))


def _stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """A boolean mask holding out ``round(fraction * n_k)`` random examples of every class."""
  rng = np.random.default_rng(seed)
  held = np.zeros(labels.shape[0], dtype=bool)
  for k in np.unique(labels):
    idx = np.flatnonzero(labels == k)
    n_held = int(np.floor(fraction * idx.size + 0.5))
    held[rng.choice(idx, size=n_held, replace=False)] = True
  return held


def _check_method(method: str) -> None:
  if method not in _PARTITION_METHODS:
    raise ValueError(
        f"`method`={method!r} is not available for this dataset (it has no natural client key); "
        f"use one of {list(_PARTITION_METHODS)}.")


def _method_params(method: str, alpha: float, shards_per_client: int) -> dict[str, Any]:
  if method == "dirichlet":
    return {"alpha": alpha}
  if method == "shards":
    return {"shards_per_client": shards_per_client}
  return {}


def load_digits_dataset(
    *,
    method: str = "dirichlet",
    num_clients: int = 50,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> FederatedDataset:
  """The 1797 8x8 handwritten digits of scikit-learn, partitioned into clients.

  Pixels (0..16) are scaled to ``[0, 1]``. A seeded, stratified 20% of the images (per class,
  ``round(0.2 * n_k)`` chosen at random) is held out as ``central_test``; the rest is
  partitioned with :func:`~fedjax_lite.datasets.partition.partition_dataset`.

  Args:
    method: ``"dirichlet"``, ``"iid"`` or ``"shards"``.
    num_clients: number of clients.
    alpha: Dirichlet concentration (``method="dirichlet"``).
    shards_per_client: shards per client (``method="shards"``).
    test_fraction: per-client held-out fraction in ``[0, 1)``.
    seed: NumPy seed for the hold-out, the partition and the per-client split.

  Returns:
    A :class:`FederatedDataset` with ``x: float32[N, max_n, 8, 8, 1]``, ``y: int32[N, max_n]``,
    ``central_test = {"x": float32[M, 8, 8, 1], "y": int32[M]}`` and ``num_classes=10``.

  Raises:
    ImportError: if scikit-learn is not installed.
    ValueError: for an unknown ``method`` or a bad partition argument.
  """
  _check_method(method)
  try:
    from sklearn.datasets import load_digits
  except ImportError as e:  # pragma: no cover - depends on the environment.
    raise ImportError(
        "load_digits_dataset needs scikit-learn (it ships the digits): pip install scikit-learn"
    ) from e
  digits = load_digits()
  x = (np.asarray(digits.images, np.float32) / 16.0)[..., None]
  y = np.asarray(digits.target, np.int32)
  check_int("seed", seed, 0)
  holdout_seed, part_seed = (int(s) for s in np.random.SeedSequence(int(seed)).generate_state(2))
  held = _stratified_holdout(y, 0.2, holdout_seed)
  ds = partition_dataset(
      {"x": x[~held], "y": y[~held]}, method=method, num_clients=num_clients, seed=part_seed,
      test_fraction=test_fraction, central_test={"x": x[held], "y": y[held]}, num_classes=10,
      name="digits", **_method_params(method, alpha, shards_per_client))
  info = dict(ds.info, seed=int(seed), source="sklearn.datasets.load_digits (UCI optdigits)",
              central_test_fraction=0.2)
  return ds._replace(info=info)


def _find_idx(directory: str, name: str) -> str | None:
  for candidate in (name, name + ".gz"):
    full = os.path.join(directory, candidate)
    if os.path.isfile(full):
      return full
  return None


def load_fashion_mnist(
    path: str | os.PathLike = FASHION_MNIST_DIR,
    *,
    method: str = "dirichlet",
    num_clients: int = 100,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_train_examples: int | None = None,
) -> FederatedDataset:
  """Fashion-MNIST from local IDX files: the train set partitioned, t10k as ``central_test``.

  Args:
    path: a directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
      ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or with ``.gz``.
    method: ``"dirichlet"``, ``"iid"`` or ``"shards"``.
    num_clients: number of clients.
    alpha: Dirichlet concentration (``method="dirichlet"``).
    shards_per_client: shards per client (``method="shards"``).
    test_fraction: per-client held-out fraction in ``[0, 1)``.
    seed: NumPy seed for the partition and the per-client split.
    max_train_examples: keep only the first this many training images (they are in the
      file's order) before partitioning; ``None`` keeps all.

  Returns:
    A :class:`FederatedDataset` with ``x: float32[N, max_n, 28, 28, 1]`` in ``[0, 1]``,
    ``y: int32[N, max_n]``, ``central_test = {"x": float32[M, 28, 28, 1], "y": int32[M]}`` and
    ``num_classes=10``.

  Raises:
    FileNotFoundError: if any of the four files is missing (the message says where it looked
      and how to get them).
    ValueError: for malformed files, image/label count mismatches, labels outside ``0..9``, an
      unknown ``method`` or a bad partition argument.
  """
  _check_method(method)
  directory = os.fspath(path)
  found = {name: _find_idx(directory, name) for name in FASHION_MNIST_FILES}
  missing = [name for name, p in found.items() if p is None]
  if missing:
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found in {directory!r}: missing "
        f"{', '.join(f'{m} (or {m}.gz)' for m in missing)}. On Debian/Ubuntu install them with "
        f"`sudo apt-get install dataset-fashion-mnist` (they go to {FASHION_MNIST_DIR}/), or pass "
        "`path=` a directory holding the four IDX files from "
        "https://github.com/zalandoresearch/fashion-mnist.")
  splits = {}
  for split in ("train", "t10k"):
    images = read_idx(found[f"{split}-images-idx3-ubyte"])
    labels = read_idx(found[f"{split}-labels-idx1-ubyte"])
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
      raise ValueError(
          f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match "
          "(expected [n, height, width] images and [n] labels).")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
      raise ValueError(f"{directory}: {split} labels must be in 0..9; got {labels.min()}.."
                       f"{labels.max()}.")
    x = images.astype(np.float32)
    if images.dtype == np.uint8:
      x /= 255.0
    splits[split] = (x[..., None], labels.astype(np.int32))
  x, y = splits["train"]
  if max_train_examples is not None:
    if isinstance(max_train_examples, bool) or not isinstance(
        max_train_examples, (int, np.integer)) or max_train_examples < 1:
      raise ValueError(f"`max_train_examples` must be an int >= 1 or None; got "
                       f"{max_train_examples!r}.")
    x, y = x[:max_train_examples], y[:max_train_examples]
  ds = partition_dataset(
      {"x": x, "y": y}, method=method, num_clients=num_clients, seed=seed,
      test_fraction=test_fraction, central_test={"x": splits["t10k"][0], "y": splits["t10k"][1]},
      num_classes=10, name="fashion_mnist", **_method_params(method, alpha, shards_per_client))
  info = dict(ds.info, source=directory, max_train_examples=max_train_examples)
  return ds._replace(info=info)
