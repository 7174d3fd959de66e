"""Split labelled arrays into federated clients: IID, Dirichlet label skew, shards, natural keys.

The low-level partitioners return a list of per-client index arrays (``int64``), one per client,
that together form a partition of ``range(num_examples)``: every example belongs to exactly one
client. They are pure NumPy and seeded with ``np.random.default_rng(seed)``, so the same
arguments always give the same clients.

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

from fedjax_lite._validate import check_int
from fedjax_lite.data import FederatedData, from_clients
from fedjax_lite.datasets.base import FederatedDataset

METHODS = ("iid", "dirichlet", "shards", "natural")


# ----------------------------------------------------------------------------------------------
# Argument checks.


def _check_seed(seed: Any) -> int:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"`seed` must be a non-negative int; got {seed!r}.")
  return int(seed)


def _check_labels(labels: Any, name: str = "labels") -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(
        f"`{name}` must be a 1-D array of integer class labels [num_examples]; got shape "
        f"{labels.shape}.")
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"`{name}` must hold integer class labels; got dtype {labels.dtype}. Cast it, e.g. "
        "`labels.astype(np.int32)`.")
  if labels.size and labels.min() < 0:
    raise ValueError(f"`{name}` must be >= 0 (class ids); got min {labels.min()}.")
  return labels.astype(np.int64)


def _check_num_clients(num_clients: Any, num_examples: int) -> int:
  num_clients = check_int("num_clients", num_clients, 1)
  if num_clients > num_examples:
    raise ValueError(
        f"`num_clients`={num_clients} is larger than the number of examples ({num_examples}); "
        "every client needs at least one example, so use at most that many clients.")
  return num_clients


def _equal_sizes(num_examples: int, num_clients: int) -> np.ndarray:
  """Near-equal sizes: ``num_examples // num_clients``, one more for the first remainder."""
  sizes = np.full(num_clients, num_examples // num_clients, dtype=np.int64)
  sizes[: num_examples % num_clients] += 1
  return sizes


# ----------------------------------------------------------------------------------------------
# Low-level partitioners.


def iid_indices(num_examples: int, num_clients: int, seed: int) -> list[np.ndarray]:
  """Shuffles ``range(num_examples)`` and splits it into near-equal parts.

  Client ``c`` gets ``num_examples // num_clients`` examples, plus one for the first
  ``num_examples % num_clients`` clients.

  Args:
    num_examples: the number of examples ``n`` (``>= 1``).
    num_clients: the number of clients ``N``, ``1 <= N <= n``.
    seed: NumPy seed.

  Returns:
    ``N`` disjoint ``int64`` index arrays covering ``range(n)``.

  Raises:
    ValueError: if ``num_examples < 1``, ``num_clients < 1`` or ``num_clients > num_examples``.
  """
  num_examples = check_int("num_examples", num_examples, 1)
  num_clients = _check_num_clients(num_clients, num_examples)
  rng = np.random.default_rng(_check_seed(seed))
  order = rng.permutation(num_examples).astype(np.int64)
  bounds = np.concatenate([[0], np.cumsum(_equal_sizes(num_examples, num_clients))])
  return [order[bounds[c]:bounds[c + 1]] for c in range(num_clients)]


def dirichlet_indices(
    labels: Any,
    num_clients: int,
    alpha: float,
    seed: int,
    min_examples_per_client: int = 0,
) -> list[np.ndarray]:
  """Label-skewed clients of Hsu, Qi and Brown (2019): label mixes ``q_c ~ Dir(alpha * p)``.

  ``p`` is the empirical label prior (the fraction of examples in each class; classes with no
  example are left out). Following Hsu et al., every client has (near-)equal size and its
  examples' labels are drawn i.i.d. from its own categorical ``q_c``. The scheme, exactly:

  1. Client ``c`` draws ``q_c ~ Dir(alpha * p)`` and gets a capacity ``n_c`` of
     ``num_examples // num_clients`` examples (one more for the first
     ``num_examples % num_clients`` clients), so the sizes differ by at most one.
  2. Labels are dealt without replacement: each draw of client ``c`` picks class ``k`` with
     probability ``q_c[k] * a_k / sum_j q_c[j] * a_j``, where ``a_k = 1`` while class ``k`` still
     has unassigned examples and ``0`` once it is used up (if ``q_c`` puts no mass on any
     remaining class, which only happens through floating-point underflow at tiny ``alpha``, the
     client draws in proportion to the remaining class counts). Clients draw in rounds, one
     label per client per round, until every capacity is filled; when several clients in a round
     ask for the last examples of a class, a random order decides who gets them and the others
     draw again from the classes that remain. (Rounds in which no class can run out are drawn
     as one multinomial per client, which has the same distribution.)
  3. Each class's examples are shuffled and handed out in the drawn counts; each client's
     indices are then shuffled.

  So every example is used exactly once, sizes are exactly the capacities, and as long as no
  class runs out a client's label counts are ``Multinomial(n_c, q_c)``. Large ``alpha`` gives
  near-IID clients (``q_c -> p``); small ``alpha`` gives clients dominated by one or a few
  classes (late draws are then forced into the classes left over).

  Args:
    labels: ``int[n]`` class labels (``>= 0``).
    num_clients: number of clients ``N``, ``1 <= N <= n``.
    alpha: Dirichlet concentration, ``> 0``.
    seed: NumPy seed.
    min_examples_per_client: the fewest examples any client may get. Because the sizes are
      fixed at ``n // N`` or ``n // N + 1`` regardless of the draw, this holds for every seed iff
      ``min_examples_per_client <= n // N``; a larger value is an error (a re-draw could never
      meet it).

  Returns:
    ``N`` disjoint ``int64`` index arrays covering ``range(n)``.

  Raises:
    ValueError: for non-1-D or non-integer ``labels``, ``alpha <= 0`` or not finite, a bad
      ``num_clients``, or ``min_examples_per_client > n // N``.
  """
  labels = _check_labels(labels)
  n = labels.shape[0]
  if n == 0:
    raise ValueError("`labels` is empty; there is nothing to partition.")
  num_clients = _check_num_clients(num_clients, n)
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or not (
      np.isfinite(alpha) and alpha > 0):
    raise ValueError(
        f"`alpha` must be a finite number > 0 (small = skewed clients, large = near-IID); got "
        f"{alpha!r}.")
  min_examples_per_client = check_int("min_examples_per_client", min_examples_per_client, 0)
  if min_examples_per_client > n // num_clients:
    raise ValueError(
        f"`min_examples_per_client`={min_examples_per_client} cannot be met: {n} examples over "
        f"{num_clients} clients gives every client {n // num_clients} or {n // num_clients + 1}. "
        "Lower it or use fewer clients.")
  rng = np.random.default_rng(_check_seed(seed))

  classes, class_counts = np.unique(labels, return_counts=True)
  num_k = classes.shape[0]
  prior = class_counts / n
  q = rng.dirichlet(float(alpha) * prior, size=num_clients) if num_k > 1 else np.ones((
      num_clients, 1))
  capacity = _equal_sizes(n, num_clients)
  counts = np.zeros((num_clients, num_k), dtype=np.int64)
  remaining = class_counts.astype(np.int64).copy()

  while True:
    active = np.flatnonzero(capacity > 0)
    if active.size == 0:
      break
    avail = remaining > 0
    w = q[active] * avail
    total = w.sum(axis=1, keepdims=True)
    dead = total[:, 0] <= 0
    if dead.any():
      w[dead] = remaining * avail
      total[dead, 0] = w[dead].sum(axis=1)
    w = w / total
    batch = int(remaining[avail].min()) // active.size
    if batch >= 1:
      # No class can run out within this round: one multinomial per client.
      draws = rng.multinomial(np.minimum(capacity[active], batch), w)
      counts[active] += draws
      capacity[active] -= draws.sum(axis=1)
      remaining -= draws.sum(axis=0)
      continue
    # One label per active client, in a random order; over-asked classes go to the first ones.
    order = rng.permutation(active.size)
    cdf = np.cumsum(w[order], axis=1)
    u = rng.random(active.size)[:, None]
    pick = np.minimum((u >= cdf).sum(axis=1), num_k - 1)
    for j, k in zip(order, pick, strict=True):
      if remaining[k] > 0:
        c = active[j]
        counts[c, k] += 1
        capacity[c] -= 1
        remaining[k] -= 1

  per_client: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
  for k, cls in enumerate(classes):
    idx = rng.permutation(np.flatnonzero(labels == cls)).astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(counts[:, k])])
    for c in range(num_clients):
      per_client[c].append(idx[bounds[c]:bounds[c + 1]])
  return [rng.permutation(np.concatenate(parts)).astype(np.int64) for parts in per_client]


def shard_indices(
    labels: Any, num_clients: int, shards_per_client: int, seed: int
) -> list[np.ndarray]:
  """The pathological non-IID split of McMahan et al. (2017): a few label-sorted shards each.

  Examples are sorted by label (a stable sort of a seeded shuffle, so examples with the same
  label are in random order), cut into ``S = num_clients * shards_per_client`` contiguous shards
  of near-equal size (``n // S`` or ``n // S + 1``, the longer ones first; exactly ``n / S`` when
  ``S`` divides ``n``), and each client receives ``shards_per_client`` shards chosen by a seeded
  random permutation of the shards.

  What holds for the labels (a shard is a contiguous run of the sorted labels):

  * Always: a client's distinct labels are at most the sum over its shards of the labels in each.
  * If every class has at least ``ceil(n / S) - 1`` examples, no shard spans three labels, so a
    client holds at most ``2 * shards_per_client`` distinct labels.
  * If ``S`` divides ``n`` and every class size is a multiple of the shard size ``n / S``, each
    shard holds one label, so a client holds at most ``shards_per_client`` distinct labels.

  Args:
    labels: ``int[n]`` class labels.
    num_clients: number of clients ``N`` (``>= 1``).
    shards_per_client: shards per client (``>= 1``); ``N * shards_per_client <= n``.
    seed: NumPy seed.

  Returns:
    ``N`` disjoint ``int64`` index arrays covering ``range(n)``, each the concatenation of the
    client's shards.

  Raises:
    ValueError: for bad ``labels``, ``num_clients`` or ``shards_per_client``, or more shards
      than examples.
  """
  labels = _check_labels(labels)
  n = labels.shape[0]
  num_clients = check_int("num_clients", num_clients, 1)
  shards_per_client = check_int("shards_per_client", shards_per_client, 1)
  num_shards = num_clients * shards_per_client
  if num_shards > n:
    raise ValueError(
        f"`num_clients` * `shards_per_client` = {num_clients} * {shards_per_client} = "
        f"{num_shards} shards, more than the {n} examples; every shard needs at least one "
        "example, so lower `shards_per_client` or `num_clients`.")
  rng = np.random.default_rng(_check_seed(seed))
  shuffled = rng.permutation(n)
  order = shuffled[np.argsort(labels[shuffled], kind="stable")].astype(np.int64)
  bounds = np.concatenate([[0], np.cumsum(_equal_sizes(n, num_shards))])
  shards = [order[bounds[s]:bounds[s + 1]] for s in range(num_shards)]
  assignment = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
  return [np.concatenate([shards[s] for s in row]) for row in assignment]


def key_indices(keys: Any) -> tuple[list[Any], list[np.ndarray]]:
  """The natural partition: one client per distinct key, in order of first appearance.

  Args:
    keys: ``[n]`` hashable keys (writer ids, user names, ...), one per example.

  Returns:
    ``(names, index_lists)``: the distinct keys as Python objects, in order of first appearance,
    and for each the ``int64`` indices of its examples in increasing order.

  Raises:
    ValueError: if ``keys`` is not 1-D or is empty.
  """
  arr = np.asarray(keys)
  if arr.ndim != 1:
    raise ValueError(f"`keys` must be a 1-D sequence [num_examples]; got shape {arr.shape}.")
  if arr.size == 0:
    raise ValueError("`keys` is empty; give one key per example.")
  try:
    uniq, first, inverse = np.unique(arr, return_index=True, return_inverse=True)
  except TypeError:  # Unorderable objects: fall back to a dict.
    positions: dict[Any, list[int]] = {}
    for i, k in enumerate(arr.tolist()):
      positions.setdefault(k, []).append(i)
    return list(positions), [np.asarray(v, dtype=np.int64) for v in positions.values()]
  rank = np.argsort(first, kind="stable")  # Client j is the rank[j]-th sorted key.
  client_of = np.empty_like(rank)
  client_of[rank] = np.arange(rank.size)
  owner = client_of[inverse.reshape(-1)]
  order = np.argsort(owner, kind="stable").astype(np.int64)
  bounds = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=rank.size))])
  names = uniq[rank].tolist()
  return names, [order[bounds[j]:bounds[j + 1]] for j in range(rank.size)]


def split_indices(
    index_lists: Sequence[Any], test_fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Splits each client's examples at random into a train and a test part.

  Client ``c`` with ``n_c`` examples gets ``floor(test_fraction * n_c + 0.5)`` (round half up)
  test examples, chosen uniformly at random; both parts keep the clients' original order.

  Args:
    index_lists: per-client index arrays.
    test_fraction: the fraction to hold out, in ``[0, 1)``.
    seed: NumPy seed (one stream, used client by client).

  Returns:
    ``(train_lists, test_lists)``, each with one ``int64`` array per client.

  Raises:
    ValueError: if ``test_fraction`` is outside ``[0, 1)`` or an index list is not 1-D integers.
  """
  if isinstance(test_fraction, bool) or not isinstance(
      test_fraction, (int, float, np.number)) or not 0 <= test_fraction < 1:
    raise ValueError(
        f"`test_fraction` must be a number in [0, 1) (e.g. 0.2 holds out 20% per client); got "
        f"{test_fraction!r}.")
  rng = np.random.default_rng(_check_seed(seed))
  train, test = [], []
  for c, idx in enumerate(index_lists):
    idx = _check_index_list(idx, c)
    n_test = int(np.floor(test_fraction * idx.size + 0.5))
    held = np.zeros(idx.size, dtype=bool)
    held[rng.choice(idx.size, size=n_test, replace=False)] = True
    train.append(idx[~held])
    test.append(idx[held])
  return train, test


def _check_index_list(idx: Any, c: int) -> np.ndarray:
  idx = np.asarray(idx)
  if idx.ndim != 1:
    raise ValueError(f"`index_lists[{c}]` must be a 1-D index array; got shape {idx.shape}.")
  if idx.size == 0:
    return idx.astype(np.int64)
  if not np.issubdtype(idx.dtype, np.integer):
    raise ValueError(f"`index_lists[{c}]` must hold integer indices; got dtype {idx.dtype}.")
  return idx.astype(np.int64)


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
    idx = _check_index_list(idx, c)
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
  labels = _check_labels(arrs[labels_key], name=f"arrays[{labels_key!r}]")
  seed = _check_seed(seed)
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
