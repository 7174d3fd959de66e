"""Per-client index lists of labelled examples: IID, Dirichlet label skew, shards, natural keys.

Every function returns a list of per-client index arrays (``int64``), one per client, that
together form a partition of ``range(num_examples)``: every example belongs to exactly one
client. They are pure NumPy and seeded with ``np.random.default_rng(seed)``, so the same
arguments always give the same clients. :mod:`fedjax_lite.datasets.partition` turns them into
a :class:`~fedjax_lite.data.FederatedData` and re-exports them.

* :func:`iid_indices`: a random, near-equal split.
* :func:`dirichlet_indices`: label skew of Hsu, Qi and Brown (2019), each client's label mix
  drawn from ``Dir(alpha * p)``.
* :func:`shard_indices`: the pathological non-IID split of McMahan et al. (2017): sort by label,
  cut into shards, give each client a few shards.
* :func:`key_indices`: a natural partition, one client per distinct key (writer, speaker, ...).
* :func:`split_indices`: each client's train and test parts.

References:
  * T.-M. H. Hsu, H. Qi, M. Brown. "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification." arXiv:1909.06335, 2019. https://arxiv.org/abs/1909.06335
  * H. B. McMahan, E. Moore, D. Ramage, S. Hampson, B. Agüera y Arcas. "Communication-Efficient
    Learning of Deep Networks from Decentralized Data." AISTATS 2017.
    https://arxiv.org/abs/1602.05629
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedjax_lite._validate import check_class_labels, check_int

# ----------------------------------------------------------------------------------------------
# Argument checks.


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
  rng = np.random.default_rng(check_int("seed", seed, 0))
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
  labels = check_class_labels(labels)
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
  rng = np.random.default_rng(check_int("seed", seed, 0))

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
  labels = check_class_labels(labels)
  n = labels.shape[0]
  num_clients = check_int("num_clients", num_clients, 1)
  shards_per_client = check_int("shards_per_client", shards_per_client, 1)
  num_shards = num_clients * shards_per_client
  if num_shards > n:
    raise ValueError(
        f"`num_clients` * `shards_per_client` = {num_clients} * {shards_per_client} = "
        f"{num_shards} shards, more than the {n} examples; every shard needs at least one "
        "example, so lower `shards_per_client` or `num_clients`.")
  rng = np.random.default_rng(check_int("seed", seed, 0))
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
  rng = np.random.default_rng(check_int("seed", seed, 0))
  train, test = [], []
  for c, idx in enumerate(index_lists):
    idx = check_index_list(idx, c)
    n_test = int(np.floor(test_fraction * idx.size + 0.5))
    held = np.zeros(idx.size, dtype=bool)
    held[rng.choice(idx.size, size=n_test, replace=False)] = True
    train.append(idx[~held])
    test.append(idx[held])
  return train, test


def check_index_list(idx: Any, c: int) -> np.ndarray:
  """Checks client ``c``'s index array (1-D, integer; may be empty).

  Args:
    idx: the index array.
    c: the client's position, for the message.

  Returns:
    ``idx`` as an ``int64`` NumPy array.

  Raises:
    ValueError: for another rank or a non-integer dtype.
  """
  idx = np.asarray(idx)
  if idx.ndim != 1:
    raise ValueError(f"`index_lists[{c}]` must be a 1-D index array; got shape {idx.shape}.")
  if idx.size == 0:
    return idx.astype(np.int64)
  if not np.issubdtype(idx.dtype, np.integer):
    raise ValueError(f"`index_lists[{c}]` must hold integer indices; got dtype {idx.dtype}.")
  return idx.astype(np.int64)
