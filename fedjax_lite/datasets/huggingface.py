"""Federated datasets from Hugging Face ``datasets`` and Flower Datasets' partitioners.

Two builders turn a Hugging Face :class:`datasets.Dataset` into a :class:`FederatedDataset`
whose splits are :class:`~fedjax_lite.ragged.RaggedData` (stored without padding; real
federated data is heavy-tailed):

* :func:`from_huggingface`: the natural partition, one client per distinct value of a column
  (FEMNIST's ``writer_id`` in ``flwrlabs/femnist`` on the Hub, a speaker, a user id, ...).
  Rows are grouped with one stable ``np.argsort`` of the client column and read through
  Arrow, with no per-row Python loop (images are decoded by ``datasets`` itself).
* :func:`from_flwr_partitioner`: client ``i`` is partition ``i`` of a Flower Datasets
  partitioner (``IidPartitioner``, ``DirichletPartitioner``, ``ShardPartitioner``, ...),
  used unchanged, so a simulation here sees exactly the clients a Flower run sees.

Columns become arrays the same way in both: ``x`` from ``features`` (an ``Image`` column is
decoded to ``float32`` in ``[0, 1]`` with a trailing channel axis; numbers and fixed-length
numeric lists or arrays become ``float32``) and ``y`` from ``label`` (``int32``).

Both need optional packages, imported only when called: ``pip install 'fedjax_lite[hf]'``
(``datasets``) and ``pip install 'fedjax_lite[flwr]'`` (``flwr-datasets``).

Example (FEMNIST, 3597 writers, 62 classes)::

  import datasets
  ds = datasets.load_dataset("flwrlabs/femnist", split="train")
  fd = from_huggingface(ds, client_column="writer_id", features="image", label="character")

References:
  * S. Caldas, S. M. K. Duddu, P. Wu, T. Li, J. Konečný, H. B. McMahan, V. Smith,
    A. Talwalkar. "LEAF: A Benchmark for Federated Settings." arXiv:1812.01097, 2018.
    https://arxiv.org/abs/1812.01097
  * Q. Lhoest et al. "Datasets: A Community Library for Natural Language Processing." EMNLP
    2021 (demos). https://huggingface.co/docs/datasets
  * D. J. Beutel et al. "Flower: A Friendly Federated Learning Research Framework."
    arXiv:2007.14390, 2020. https://flower.ai/docs/datasets/
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedjax_lite._optional import require
from fedjax_lite._validate import check_choice, check_int
from fedjax_lite.datasets.base import FederatedDataset
from fedjax_lite.ragged import RaggedData

__all__ = ["from_flwr_partitioner", "from_huggingface"]

_CLIENT_ORDERS = ("sorted", "first")


# ----------------------------------------------------------------------------------------------
# Optional imports.


def _require_datasets() -> Any:
  return require("datasets", "Hugging Face datasets support", "pip install 'fedjax_lite[hf]'")


def _require_flwr() -> Any:
  require("flwr_datasets.partitioner", "Flower partitioner support",
          "pip install 'fedjax_lite[flwr]'")
  return require("flwr_datasets", "Flower partitioner support", "pip install 'fedjax_lite[flwr]'")


# ----------------------------------------------------------------------------------------------
# Columns -> arrays.


def _feature_names(features: Any) -> list[str]:
  if isinstance(features, str):
    return [features]
  if (isinstance(features, Sequence) and features
      and all(isinstance(f, str) for f in features)):
    return list(features)
  raise ValueError(f"`features` must be a column name or a non-empty list of column names; "
                   f"got {features!r}.")


def _check_columns(ds: Any, where: str, **columns: Any) -> None:
  """Raises ValueError naming the first argument whose column ``ds`` lacks."""
  available = list(ds.column_names)
  for arg, names in columns.items():
    for name in [names] if isinstance(names, str) else names:
      if name not in available:
        raise ValueError(f"`{arg}`={name!r} is not a column of {where}; available columns: "
                         f"{available}.")


def _source(ds: Any, columns: list[str]) -> tuple[Any, np.ndarray | None]:
  """``(pyarrow table holding the columns, row of each dataset row or None for all in order)``.

  ``datasets`` keeps ``select``/``shuffle``/``shard`` results as the original table plus an
  indices mapping, and applies it row by row in Python when formatting; the mapping is read
  here instead, so rows are gathered with NumPy.
  """
  if not hasattr(ds, "_indices"):  # not the layout above: let datasets apply any mapping
    return ds.select_columns(columns).with_format("arrow")[:], None
  mapping = ds._indices
  if mapping is None:
    return ds.data.table, None
  return ds.data.table, mapping.column(0).to_numpy().astype(np.int64)


def _chunk_to_numpy(arr: Any, arg: str, name: str, where: str) -> np.ndarray:
  """A numeric (nested, fixed-shape) Arrow array as NumPy, zero-copy where Arrow allows."""
  import pyarrow as pa  # noqa: PLC0415 - installed with datasets
  import pyarrow.compute as pc  # noqa: PLC0415

  n = len(arr)
  if isinstance(arr, pa.ExtensionArray):  # datasets' ArrayXD: nested lists underneath
    arr = arr.storage
  shape = []
  while (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)
         or pa.types.is_fixed_size_list(arr.type)):
    if arr.null_count:
      raise ValueError(f"`{arg}`={name!r} of {where} has missing values; drop or fill those "
                       "rows first (dataset.filter or dataset.map).")
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    if lengths.size and np.any(lengths != lengths[0]):
      raise ValueError(f"`{arg}`={name!r} of {where} has rows of different shapes; pad, crop "
                       "or resize them to one shape first (dataset.map).")
    shape.append(int(lengths[0]) if lengths.size else 0)
    arr = arr.flatten()
  if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)
          or pa.types.is_boolean(arr.type)):
    hint = ("; turn them into numbers first (e.g. tokenize with dataset.map)"
            if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) else "")
    raise ValueError(f"`{arg}`={name!r} of {where} holds {arr.type} values, not numbers{hint}.")
  if arr.null_count:
    raise ValueError(f"`{arg}`={name!r} of {where} has {arr.null_count} missing values; drop "
                     "or fill those rows first (dataset.filter or dataset.map).")
  return arr.to_numpy(zero_copy_only=False).reshape((n, *shape))


def _gather(views: list[np.ndarray], rows: np.ndarray | None) -> np.ndarray:
  """Rows ``rows`` of the concatenation of ``views``, without concatenating them first."""
  if rows is None:
    return views[0] if len(views) == 1 else np.concatenate(views)
  if len(views) == 1:
    return views[0][rows]
  starts = np.cumsum([0] + [len(v) for v in views])
  chunk = np.searchsorted(starts, rows, side="right") - 1
  out = np.empty((rows.size, *views[0].shape[1:]), views[0].dtype)
  for k, view in enumerate(views):
    hit = chunk == k
    if hit.any():
      out[hit] = view[rows[hit] - starts[k]]
  return out


def _decode_images(col: Any, feature: Any, name: str, where: str) -> np.ndarray:
  """An ``Image`` column decoded by ``datasets`` (one PIL decode per row) and stacked."""
  images = [None if v is None else np.asarray(feature.decode_example(v))
            for v in col.to_pylist()]
  if any(im is None for im in images):
    raise ValueError(f"`features`={name!r} of {where} has missing images; drop those rows "
                     "first (dataset.filter).")
  if not images:
    return np.zeros((0,), np.uint8)
  if len({im.shape for im in images}) > 1:
    raise ValueError(f"`features`={name!r} of {where} has images of different shapes "
                     f"({sorted({im.shape for im in images})[:3]}, ...); resize them to one "
                     "shape first (dataset.map).")
  return np.stack(images)


def _read(ds: Any, name: str, rows: np.ndarray | None, arg: str, where: str,
          cache: dict | None = None) -> np.ndarray:
  """Column ``name`` of ``ds`` at ``rows`` (default all, in order) in its own dtype.

  Images are decoded (``uint8`` mostly); strings come back as a NumPy ``str`` array for
  ``arg="client_column"`` and are refused otherwise. ``cache`` keeps the NumPy views of each
  Arrow column it has read, for partitions that share one table.
  """
  import pyarrow as pa  # noqa: PLC0415 - installed with datasets

  table, mapping = _source(ds, [name])
  if mapping is not None:
    rows = mapping if rows is None else mapping[rows]
  col = table.column(name)
  feature = ds.features[name]
  if isinstance(feature, _require_datasets().Image):
    if arg != "features":
      raise ValueError(f"`{arg}`={name!r} of {where} is an image column; give a column of "
                       "ids or labels.")
    if rows is not None:
      col = col.take(pa.array(rows))
    return _decode_images(col, feature, name, where)
  if arg == "client_column" and (pa.types.is_string(col.type)
                                 or pa.types.is_large_string(col.type)):
    if col.null_count:
      raise ValueError(f"`client_column`={name!r} of {where} has {col.null_count} missing "
                       "ids; drop or fill those rows first (dataset.filter).")
    if rows is not None:
      col = col.take(pa.array(rows))
    return col.to_numpy().astype(str)
  # Partitions of one dataset hold copies of its table sharing the same Arrow buffers.
  key = None if cache is None else (name, *(
      (c.offset, len(c), *(b.address if b is not None else 0 for b in c.buffers()))
      for c in col.chunks))
  if key is not None and key in cache:
    views = cache[key][1]
  else:
    chunks = [c for c in col.chunks if len(c)] or [col.combine_chunks()]  # keep an empty one
    views = [_chunk_to_numpy(c, arg, name, where) for c in chunks]
    if key is not None:
      cache[key] = (col, views)  # keeps the buffers alive, so their addresses are not reused
  return _gather(views, rows)


def _client_values(ds: Any, name: str, where: str) -> np.ndarray:
  values = _read(ds, name, None, "client_column", where)
  if values.ndim != 1 or values.dtype.kind not in "iuUb":
    raise ValueError(f"`client_column`={name!r} of {where} must hold one id per row (a "
                     f"string or an integer); got {values.dtype} of shape {values.shape[1:]}.")
  return values


def _labels(ds: Any, name: str, where: str, cache: dict | None = None) -> np.ndarray:
  if getattr(ds.features[name], "dtype", None) in ("string", "large_string"):
    raise ValueError(f"`label`={name!r} of {where} holds strings; encode them as class ids "
                     "first (dataset.class_encode_column).")
  y = _read(ds, name, None, "label", where, cache)
  if y.ndim != 1 or y.dtype.kind not in "iu":
    raise ValueError(f"`label`={name!r} of {where} must hold one integer class id per row; "
                     f"got {y.dtype} of shape {y.shape[1:]}.")
  if y.size and y.min() < 0:
    raise ValueError(f"`label`={name!r} of {where} must be >= 0; got min {y.min()}.")
  return y.astype(np.int64, copy=False)


def _image_to_float(x: np.ndarray, name: str) -> np.ndarray:
  if x.ndim == 3:  # [n, height, width]: one channel
    x = x[..., None]
  if x.ndim != 4:
    raise ValueError(f"`features` image column {name!r} decoded to shape {x.shape}; expected "
                     "[n, height, width] or [n, height, width, channels].")
  if x.dtype == np.uint8:
    return x.astype(np.float32) / np.float32(255)
  if x.dtype == np.uint16:
    return x.astype(np.float32) / np.float32(65535)
  return x.astype(np.float32)


def _x(ds: Any, names: list[str], single: bool, where: str, rows: np.ndarray | None = None,
       like: np.ndarray | None = None, cache: dict | None = None) -> np.ndarray:
  """``features`` of ``ds`` at ``rows`` as float32; ``like``: the shape of an empty split."""
  n = ds.num_rows if rows is None else rows.size
  if n == 0 and like is not None:
    return np.zeros((0, *like.shape[1:]), np.float32)
  image = _require_datasets().Image
  if single:
    x = _read(ds, names[0], rows, "features", where, cache)
    if isinstance(ds.features[names[0]], image):
      return _image_to_float(x, names[0])
    return x.astype(np.float32)
  parts = []
  for name in names:
    if isinstance(ds.features[name], image):
      raise ValueError(f"`features` column {name!r} is an image; give it alone "
                       "(features=name), not in a list of columns.")
    parts.append(
        _read(ds, name, rows, "features", where, cache).reshape(n, -1).astype(np.float32))
  return np.concatenate(parts, axis=1)


def _class_count(ds: Any, label: str, labels: Sequence[np.ndarray],
                 num_classes: int | None) -> int:
  datasets = _require_datasets()
  top = max((int(y.max()) for y in labels if y.size), default=-1)
  if num_classes is None:
    feature = ds.features[label]
    num_classes = feature.num_classes if isinstance(feature, datasets.ClassLabel) else top + 1
    return max(int(num_classes), top + 1, 1)
  check_int("num_classes", num_classes, 1)
  if top >= num_classes:
    raise ValueError(f"`num_classes`={num_classes} but the labels reach {top}; give at least "
                     f"{top + 1} or leave it None to infer it.")
  return int(num_classes)


def _split(x: np.ndarray, y: np.ndarray, counts: np.ndarray, ragged: bool) -> Any:
  data = RaggedData.from_arrays({"x": x, "y": y.astype(np.int32)}, counts.astype(np.int64))
  return data if ragged else data.to_stacked()


# ----------------------------------------------------------------------------------------------
# Hugging Face datasets: natural partition.


def _as_dataset(dataset: Any, test: Any) -> tuple[Any, Any, str]:
  """Resolves paths and DatasetDicts into ``(train, test_or_None, source)``."""
  datasets = _require_datasets()
  source = "datasets.Dataset"
  if isinstance(dataset, (str, os.PathLike)):
    path = os.fspath(dataset)
    if not os.path.isdir(path):
      raise FileNotFoundError(f"`dataset`={path!r} is not a directory written by "
                              "Dataset.save_to_disk; for a Hub dataset load it first, e.g. "
                              "datasets.load_dataset('flwrlabs/femnist', split='train').")
    dataset, source = datasets.load_from_disk(path), path
  if isinstance(dataset, datasets.DatasetDict):
    if "train" not in dataset:
      raise ValueError(f"`dataset` is a DatasetDict without a 'train' split (it has "
                       f"{list(dataset)}); pass the split to federate, e.g. dataset[name].")
    if test is None and "test" in dataset:
      test = dataset["test"]
    dataset = dataset["train"]
  if isinstance(test, (str, os.PathLike)):
    test = datasets.load_from_disk(os.fspath(test))
  for arg, ds in (("dataset", dataset), ("test", test)):
    if ds is not None and not isinstance(ds, datasets.Dataset):
      raise TypeError(f"`{arg}` must be a datasets.Dataset (map-style; not streaming), a "
                      f"DatasetDict or a save_to_disk path; got {type(ds).__name__}.")
  name = getattr(dataset.info, "dataset_name", None)
  if source == "datasets.Dataset" and name:
    source = str(name)
  return dataset, test, source


def _client_codes(values: np.ndarray, order: str) -> tuple[np.ndarray, np.ndarray]:
  """``(unique values in client order, code of each row)`` for the client column."""
  uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
  if order == "sorted":
    return uniq, inverse.reshape(-1)
  rank = np.argsort(first, kind="stable")  # client k is uniq[rank[k]]
  code_of_sorted = np.empty_like(rank)
  code_of_sorted[rank] = np.arange(rank.size)
  return uniq[rank], code_of_sorted[inverse.reshape(-1)]


def _lookup(clients: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Each value's position in ``clients`` (``-1`` for a value not there)."""
  if (clients.dtype.kind in "US") != (values.dtype.kind in "US"):
    raise ValueError(f"`client_column` holds {clients.dtype} ids in `dataset` but "
                     f"{values.dtype} ids in `test`; the splits must share their client ids.")
  sorter = np.argsort(clients, kind="stable")
  pos = np.searchsorted(clients, values, sorter=sorter)
  pos = np.minimum(pos, clients.size - 1)
  found = sorter[pos]
  return np.where(clients[found] == values, found, -1)


def _grouped(codes: np.ndarray, num_clients: int) -> tuple[np.ndarray, np.ndarray]:
  """``(rows of clients 0..num_clients-1 grouped by client, each client's count)``."""
  keep = (codes >= 0) & (codes < num_clients)
  counts = np.bincount(codes[keep], minlength=num_clients).astype(np.int64)
  rows = np.argsort(np.where(keep, codes, num_clients), kind="stable")[:int(counts.sum())]
  return rows, counts


def from_huggingface(
    dataset: Any,
    *,
    client_column: str,
    features: str | Sequence[str],
    label: str,
    test: Any = None,
    num_classes: int | None = None,
    max_clients: int | None = None,
    client_order: str = "sorted",
    ragged: bool = True,
) -> FederatedDataset:
  """A naturally federated dataset: one client per distinct value of ``client_column``.

  Rows are grouped with one stable ``np.argsort`` of the client ids, so each client keeps its
  rows in dataset order. Columns are read from the dataset's Arrow table as NumPy arrays
  (zero-copy where Arrow allows) and gathered with NumPy, never row by row in Python; only
  ``Image`` columns are decoded per row, by ``datasets``.

  Args:
    dataset: a :class:`datasets.Dataset` (map-style); a :class:`datasets.DatasetDict` with a
      ``"train"`` split (and, optionally, a ``"test"`` split used as ``test``); or the path of
      either, written by ``save_to_disk``. Hub datasets are loaded first, e.g.
      ``datasets.load_dataset("flwrlabs/femnist", split="train")``.
    client_column: the column naming each row's client (strings or integers, no missing
      values), e.g. ``"writer_id"``.
    features: the column of ``x``, or a list of columns. One column keeps its shape: an
      ``Image`` column becomes ``float32[n, height, width, channels]`` scaled to ``[0, 1]``
      (``uint8`` / 255, ``uint16`` / 65535; a grayscale image gets a channel axis of 1); any
      other numeric column (a number, a fixed-length list, an ``ArrayXD``) becomes ``float32``
      unscaled. A list of numeric columns becomes ``float32[n, d]``, each column flattened and
      concatenated in the list's order.
    label: the column of ``y``, integer class ids ``>= 0`` (a ``ClassLabel`` or an integer
      column); it becomes ``int32``.
    test: optional held-out rows with the same columns (a ``Dataset`` or a ``save_to_disk``
      path; default: the ``"test"`` split of a ``DatasetDict``). They are grouped by the same
      clients in the same order: a client absent from ``test`` has 0 test examples, and test
      rows of clients not in ``dataset`` (or beyond ``max_clients``) are dropped (counted in
      ``info["test_examples_dropped"]``).
    num_classes: the number of classes; default: the ``ClassLabel``'s number of names if
      ``label`` is one, else the largest label (of both splits) plus one.
    max_clients: keep only the first this many clients (in ``client_order``); ``None`` keeps
      all. Only their rows are read.
    client_order: ``"sorted"`` (clients in sorted id order: the same whatever the row order)
      or ``"first"`` (in order of each client's first row).
    ragged: return :class:`~fedjax_lite.ragged.RaggedData` splits (no padding); ``False``
      returns padded :class:`~fedjax_lite.FederatedData` (for small populations).

  Returns:
    A :class:`FederatedDataset` with ``x: float32`` and ``y: int32`` train (and test) splits
    over the same clients, ids ``0..N-1``, ``client_names`` the client ids as strings,
    ``central_test=None`` and metadata in ``info``.

  Raises:
    ImportError: if ``datasets`` is not installed.
    FileNotFoundError: for a path that is not a saved dataset directory.
    TypeError: for a ``dataset`` or ``test`` that is not a map-style ``Dataset``.
    ValueError: for a column not in the dataset (the message lists those available),
      missing client ids or labels, non-integer or negative labels, string or ragged
      ``features``, or a bad ``num_classes``, ``max_clients`` or ``client_order``.
  """
  _require_datasets()
  check_choice("client_order", client_order, _CLIENT_ORDERS)
  names = _feature_names(features)
  train, test, source = _as_dataset(dataset, test)
  _check_columns(train, "`dataset`", client_column=client_column, features=names, label=label)
  if test is not None:
    _check_columns(test, "`test`", client_column=client_column, features=names, label=label)
  if train.num_rows == 0:
    raise ValueError("`dataset` has no rows; a federated dataset needs at least one client.")

  clients, codes = _client_codes(_client_values(train, client_column, "`dataset`"), client_order)
  n = clients.size
  if max_clients is not None:
    n = min(n, check_int("max_clients", max_clients, 1))
  all_labels = [_labels(train, label, "`dataset`")]
  rows, counts = _grouped(codes, n)
  single = isinstance(features, str)
  x = _x(train, names, single, "`dataset`", rows=rows)
  y = all_labels[0][rows]
  info: dict[str, Any] = {}
  test_split = None
  if test is not None:
    test_codes = _lookup(clients, _client_values(test, client_column, "`test`"))
    all_labels.append(_labels(test, label, "`test`"))
    test_rows, test_counts = _grouped(test_codes, n)
    test_x = _x(test, names, single, "`test`", rows=test_rows, like=x)
    test_split = _split(test_x, all_labels[1][test_rows], test_counts, ragged)
    info["num_test_examples"] = int(test_counts.sum())
    info["test_examples_dropped"] = int(test.num_rows - test_counts.sum())
  k = _class_count(train, label, all_labels, num_classes)
  info = {
      "source": source,
      "partition": "natural",
      "client_column": client_column,
      "features": list(names),
      "label": label,
      "client_order": client_order,
      "num_clients": int(n),
      "num_clients_available": int(clients.size),
      "num_train_examples": int(counts.sum()),
      "x_shape": list(x.shape[1:]),
      **info,
  }
  return FederatedDataset(
      train=_split(x, y, counts, ragged), test=test_split, central_test=None, num_classes=k,
      client_names=tuple(str(c) for c in clients[:n].tolist()), info=info)


# ----------------------------------------------------------------------------------------------
# Flower Datasets partitioners.


def _resolve_partitioner(obj: Any, split: str | None, arg: str) -> tuple[Any, str | None]:
  """A ``Partitioner`` with its dataset, from a partitioner or a Flower FederatedDataset."""
  flwr_datasets = _require_flwr()
  if isinstance(obj, flwr_datasets.FederatedDataset):
    partitioners = obj.partitioners  # prepares (downloads) the dataset and assigns the splits
    if split is None:
      if len(partitioners) != 1:
        raise ValueError(f"`{arg}` has partitioners for splits {list(partitioners)}; name one "
                         "with `split=`.")
      split = next(iter(partitioners))
    if split not in partitioners:
      raise ValueError(f"`split`={split!r} has no partitioner in `{arg}`; partitioned splits: "
                       f"{list(partitioners)}.")
    return partitioners[split], split
  if not isinstance(obj, flwr_datasets.partitioner.Partitioner):
    raise TypeError(f"`{arg}` must be a flwr_datasets.partitioner.Partitioner (or a "
                    f"flwr_datasets.FederatedDataset); got {type(obj).__name__}.")
  if not obj.is_dataset_assigned():
    raise ValueError(f"`{arg}` has no dataset yet; assign one first: "
                     f"{arg}.dataset = datasets.Dataset(...).")
  return obj, split


def _partitions(partitioner: Any, num_clients: int, names: list[str], single: bool,
                label: str, where: str,
                like: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(x, y, counts)`` of partitions ``0..num_clients-1``, one after another."""
  cache: dict = {}
  xs, ys, counts = [], [], []
  for i in range(num_clients):
    part = partitioner.load_partition(i)
    counts.append(part.num_rows)
    if part.num_rows:
      xs.append(_x(part, names, single, where, cache=cache))
      ys.append(_labels(part, label, where, cache))
  counts = np.asarray(counts, np.int64)
  if not xs:
    if like is None:
      raise ValueError(f"every partition of {where} is empty; nothing to federate.")
    return np.zeros((0, *like.shape[1:]), np.float32), np.zeros(0, np.int64), counts
  return np.concatenate(xs), np.concatenate(ys), counts


def from_flwr_partitioner(
    partitioner: Any,
    *,
    features: str | Sequence[str],
    label: str,
    test: Any = None,
    split: str | None = None,
    num_classes: int | None = None,
    max_clients: int | None = None,
    ragged: bool = True,
) -> FederatedDataset:
  """Client ``i`` = partition ``i`` of a Flower Datasets partitioner, used unchanged.

  Each client holds exactly the rows, in the same order, that
  ``partitioner.load_partition(i)`` returns, so Flower's ``IidPartitioner``,
  ``DirichletPartitioner``, ``ShardPartitioner``, ``NaturalIdPartitioner``, ... give the
  same clients here as in Flower. (For a natural partition, :func:`from_huggingface` reads
  the data without a call per client.)

  Args:
    partitioner: a ``flwr_datasets.partitioner.Partitioner`` whose ``dataset`` is assigned
      (``partitioner.dataset = ds``), or a ``flwr_datasets.FederatedDataset`` (its
      partitioner of ``split`` is used; this prepares, i.e. downloads, its dataset).
    features: the column of ``x``, or a list of columns, converted as in
      :func:`from_huggingface` (images to ``float32`` in ``[0, 1]`` with a channel axis).
    label: the column of ``y`` (integer class ids ``>= 0``).
    test: optional test partitions: a ``Partitioner`` with a dataset assigned, or, when
      ``partitioner`` is a ``FederatedDataset``, the name of another partitioned split.
      Client ``i``'s test rows are its partition ``i``; it needs at least as many partitions
      as the clients kept.
    split: with a ``FederatedDataset``, the partitioned split to federate (default: its
      only one).
    num_classes: the number of classes; default: the ``ClassLabel``'s number of names if
      ``label`` is one, else the largest label (of both splits) plus one.
    max_clients: keep only partitions ``0..max_clients-1``; ``None`` keeps all.
    ragged: return :class:`~fedjax_lite.ragged.RaggedData` splits; ``False`` returns padded
      :class:`~fedjax_lite.FederatedData`.

  Returns:
    A :class:`FederatedDataset` with ``num_partitions`` (or ``max_clients``) clients, ids
    ``0..N-1``, ``client_names`` ``("0", "1", ...)``, ``central_test=None``.

  Raises:
    ImportError: if ``flwr-datasets`` (or ``datasets``) is not installed.
    TypeError: for an object that is not a partitioner.
    ValueError: for a partitioner without a dataset, an unknown split, a test partitioner
      with too few partitions, or a bad column, label or ``num_classes`` (as in
      :func:`from_huggingface`).
  """
  names = _feature_names(features)
  part, split = _resolve_partitioner(partitioner, split, "partitioner")
  _check_columns(part.dataset, "the partitioner's dataset", features=names, label=label)
  n = int(part.num_partitions)
  if max_clients is not None:
    n = min(n, check_int("max_clients", max_clients, 1))
  single = isinstance(features, str)
  x, y, counts = _partitions(part, n, names, single, label, "the partitioner's dataset")
  labels = [y]
  info: dict[str, Any] = {}
  test_split = None
  if test is not None:
    if isinstance(test, str) and isinstance(partitioner, _require_flwr().FederatedDataset):
      test_part, test_name = _resolve_partitioner(partitioner, test, "partitioner")
    else:
      test_part, test_name = _resolve_partitioner(test, None, "test")
    if int(test_part.num_partitions) < n:
      raise ValueError(f"`test` has {test_part.num_partitions} partitions but there are {n} "
                       "clients; give it at least as many (or set `max_clients`).")
    _check_columns(test_part.dataset, "the test partitioner's dataset", features=names,
                   label=label)
    test_x, test_y, test_counts = _partitions(test_part, n, names, single, label,
                                              "the test partitioner's dataset", like=x)
    labels.append(test_y)
    test_split = _split(test_x, labels[1], test_counts, ragged)
    info["num_test_examples"] = int(test_counts.sum())
    info["test_partitioner"] = type(test_part).__name__
    if test_name is not None:
      info["test_split"] = test_name
  k = _class_count(part.dataset, label, labels, num_classes)
  info = {
      "source": "flwr_datasets",
      "partition": type(part).__name__,
      "split": split,
      "features": list(names),
      "label": label,
      "num_partitions": int(part.num_partitions),
      "num_clients": int(n),
      "num_train_examples": int(counts.sum()),
      "x_shape": list(x.shape[1:]),
      **info,
  }
  return FederatedDataset(
      train=_split(x, labels[0], counts, ragged), test=test_split, central_test=None,
      num_classes=k, client_names=tuple(str(i) for i in range(n)), info=info)
