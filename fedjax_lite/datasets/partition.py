"""Split labelled arrays into federated clients: IID, Dirichlet label skew, shards, natural keys.

The low-level partitioners (defined in :mod:`fedjax_lite.datasets.indices`, re-exported here)
return a list of per-client index arrays (``int64``), one per client, that together form a
partition of ``range(num_examples)``: every example belongs to exactly one client. They are
pure NumPy and seeded with ``np.random.default_rng(seed)``, so the same arguments always give
the same clients.

* :func:`iid_indices`: a random, near-equal split.
* :func:`dirichlet_indices`: label skew of Hsu, Qi and Brown (2019), each client's label mix
  drawn from ``Dir(alpha * p)``.
* :func:`shard_indices`: the pathological non-IID split of McMahan et al. (2017): sort by label,
  cut into shards, give each client a few shards.
* :func:`key_indices`: a natural partition, one client per distinct key (writer, speaker, ...).

:func:`split_indices` splits each client into train and test parts, :func:`partition` turns index
lists into a padded :class:`~fedjax_lite.data.FederatedData`, and :func:`partition_dataset` does it
all and returns a :class:`~fedjax_lite.datasets.base.FederatedDataset`.

References:
  * T.-M. H. Hsu, H. Qi, M. Brown. "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification." arXiv:1909.06335, 2019. https://arxiv.org/abs/1909.06335
  * H. B. McMahan, E. Moore, D. Ramage, S. Hampson, B. Agüera y Arcas. "Communication-Efficient
    Learning of Deep Networks from Decentralized Data." AISTATS 2017.
    https://arxiv.org/abs/1602.05629
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedjax_lite._validate import check_class_labels, check_int
from fedjax_lite.data import FederatedData, from_clients
from fedjax_lite.datasets.base import FederatedDataset
from fedjax_lite.datasets.indices import (
    check_index_list,
    dirichlet_indices,
    iid_indices,
    key_indices,
    shard_indices,
    split_indices,
)

__all__ = ["METHODS", "dirichlet_indices", "iid_indices", "key_indices", "partition",
           "partition_dataset", "shard_indices", "split_indices"]

METHODS = ("iid", "dirichlet", "shards", "natural")


# ----------------------------------------------------------------------------------------------
# High-level builders.


def _check_arrays(arrays: Any) -> tuple[dict[str, np.ndarray], int]:
  if not isinstance(arrays, Mapping) or not arrays:
    raise ValueError(
        "`arrays` must be a non-empty dict {name: array[num_examples, ...]}, e.g. "
        "{'x': x, 'y': y}.")
  arrs = {str(k): np.asarray(v) for k, v in arrays.items()}
  lengths = {k: (a.shape[0] if a.ndim else None) for k, a in arrs.items()}
  if None in lengths.values() or len(set(lengths.values())) != 1:
    raise ValueError(
        f"`arrays` must share their leading (example) axis; got leading sizes {lengths}.")
  return arrs, next(iter(lengths.values()))


def partition(
    arrays: Mapping[str, Any],
    index_lists: Sequence[Any],
    *,
    max_examples: int | None = None,
) -> FederatedData:
  """Gathers per-client rows of ``arrays`` into a padded :class:`FederatedData`.

  Args:
    arrays: dict ``name -> array[n, ...]``; all share the leading axis ``n``.
    index_lists: one index array per client, values in ``[0, n)``. Client ``c``'s rows are
      ``arrays[name][index_lists[c]]`` in that order; lists may be empty or overlap.
    max_examples: padded length (default: the largest client, at least 1).

  Returns:
    A :class:`FederatedData` with arrays ``[N, max_examples, ...]`` and client ids ``0..N-1``.

  Raises:
    ValueError: for empty or mismatched ``arrays``, no clients, non-integer or out-of-range
      indices, or a too-small ``max_examples``.
  """
  arrs, n = _check_arrays(arrays)
  if len(index_lists) == 0:
    raise ValueError("`index_lists` is empty; give at least one client's index array.")
  clients = []
  for c, idx in enumerate(index_lists):
    idx = check_index_list(idx, c)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
      bad = idx[(idx < 0) | (idx >= n)]
      raise ValueError(
          f"`index_lists[{c}]` has indices outside [0, {n}) (the leading size of `arrays`): "
          f"e.g. {bad[:5].tolist()}.")
    clients.append({k: a[idx] for k, a in arrs.items()})
  return from_clients(clients, max_examples=max_examples)


def partition_dataset(
    arrays: Mapping[str, Any],
    *,
    method: str,
    num_clients: int | None = None,
    seed: int = 0,
    alpha: float | None = None,
    shards_per_client: int | None = None,
    keys: Any = None,
    labels_key: str = "y",
    test_fraction: float = 0.2,
    central_test: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    name: str = "",
) -> FederatedDataset:
  """Partitions labelled arrays into clients and splits each client into train and test.

  The clients come from :func:`iid_indices`, :func:`dirichlet_indices`, :func:`shard_indices`
  or :func:`key_indices`; each client's examples are then split with :func:`split_indices`.
  The partition and the split use independent streams derived from ``seed``.

  Args:
    arrays: dict ``name -> array[n, ...]`` sharing the leading axis, with integer labels
      ``arrays[labels_key]`` of shape ``[n]``.
    method: one of ``"iid"``, ``"dirichlet"`` (needs ``alpha``), ``"shards"`` (needs
      ``shards_per_client``) or ``"natural"`` (needs ``keys``).
    num_clients: number of clients; required except for ``"natural"``, where it is the number of
      distinct keys (if given it must match).
    seed: NumPy seed for the partition and the split.
    alpha: Dirichlet concentration for ``"dirichlet"`` (see :func:`dirichlet_indices`).
    shards_per_client: shards per client for ``"shards"`` (see :func:`shard_indices`).
    keys: ``[n]`` client keys for ``"natural"`` (see :func:`key_indices`).
    labels_key: the name of the label array in ``arrays``.
    test_fraction: per-client held-out fraction in ``[0, 1)``; ``0`` gives ``test=None``.
    central_test: optional un-federated test set ``{name: array[M, ...]}``, passed through.
    num_classes: number of classes (default: ``1 + `` the largest label in ``arrays`` and
      ``central_test``).
    name: a dataset name recorded in ``info``.

  Returns:
    A :class:`FederatedDataset` whose ``train`` and ``test`` hold the same clients in the same
    order (client ``c``'s train rows are ``arrays[k][train_lists[c]]``; the two padded lengths
    may differ), with ``client_names`` ``"client_0000", ...`` (the keys, as strings, for
    ``"natural"``) and ``info`` recording the method, its parameters and the sizes.

  Raises:
    ValueError: for an unknown ``method``, a missing parameter of the method, a missing or
      malformed label array, or any bad argument of the partitioner.
  """
  if method not in METHODS:
    raise ValueError(f"`method`={method!r} is unknown; use one of {list(METHODS)}.")
  arrs, n = _check_arrays(arrays)
  if labels_key not in arrs:
    raise ValueError(
        f"`labels_key`={labels_key!r} is not in `arrays` (names {sorted(arrs)}); pass the name of "
        "the label array.")
  labels = check_class_labels(arrs[labels_key], name=f"arrays[{labels_key!r}]")
  seed = check_int("seed", seed, 0)
  part_seed, split_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
  params: dict[str, Any] = {}
  if method != "natural" and num_clients is None:
    raise ValueError(f"method={method!r} needs `num_clients` (the number of clients to make).")
  if method == "iid":
    index_lists = iid_indices(n, num_clients, part_seed)
    names = [f"client_{c:04d}" for c in range(len(index_lists))]
  elif method == "dirichlet":
    if alpha is None:
      raise ValueError(
          "method='dirichlet' needs `alpha` (the Dirichlet concentration, e.g. 0.5; small = "
          "skewed, large = near-IID).")
    index_lists = dirichlet_indices(labels, num_clients, alpha, part_seed)
    params["alpha"] = float(alpha)
    names = [f"client_{c:04d}" for c in range(len(index_lists))]
  elif method == "shards":
    if shards_per_client is None:
      raise ValueError("method='shards' needs `shards_per_client` (e.g. 2, as in McMahan et al.).")
    index_lists = shard_indices(labels, num_clients, shards_per_client, part_seed)
    params["shards_per_client"] = int(shards_per_client)
    names = [f"client_{c:04d}" for c in range(len(index_lists))]
  else:
    if keys is None:
      raise ValueError("method='natural' needs `keys` (one client key per example, shape [n]).")
    key_arr = np.asarray(keys)
    if key_arr.shape != (n,):
      raise ValueError(
          f"`keys` must have shape [{n}] (one key per example of `arrays`); got {key_arr.shape}.")
    key_names, index_lists = key_indices(key_arr)
    if num_clients is not None and num_clients != len(index_lists):
      raise ValueError(
          f"`num_clients`={num_clients} but `keys` has {len(index_lists)} distinct values; with "
          "method='natural' leave `num_clients` None (the keys decide the clients).")
    names = [str(k) for k in key_names]

  train_lists, test_lists = split_indices(index_lists, test_fraction, split_seed)
  train = partition(arrs, train_lists)
  test = partition(arrs, test_lists) if test_fraction > 0 else None

  central = None
  if central_test is not None:
    central, _ = _check_arrays(central_test)
  if num_classes is None:
    top = int(labels.max()) if labels.size else -1
    if central is not None and labels_key in central and central[labels_key].size:
      top = max(top, int(np.max(central[labels_key])))
    num_classes = top + 1
  num_classes = check_int("num_classes", num_classes, 1)
  if labels.size and labels.max() >= num_classes:
    raise ValueError(
        f"`num_classes`={num_classes} but the labels go up to {labels.max()}; raise it or leave "
        "it None.")

  train_sizes = np.asarray([i.size for i in train_lists])
  test_sizes = np.asarray([i.size for i in test_lists])
  info = {
      "name": name,
      "method": method,
      "num_clients": len(index_lists),
      "seed": seed,
      **params,
      "labels_key": labels_key,
      "test_fraction": float(test_fraction),
      "num_examples": int(n),
      "train_examples": int(train_sizes.sum()),
      "test_examples": int(test_sizes.sum()),
      "train_examples_per_client": {
          "min": int(train_sizes.min()), "max": int(train_sizes.max()),
          "mean": float(train_sizes.mean())},
      "central_test_examples": None if central is None else int(
          next(iter(central.values())).shape[0]),
  }
  return FederatedDataset(train, test, central, num_classes, tuple(names), info)
