"""A population stored without padding, gathered into a padded cohort per round.

:class:`~fedjax_lite.FederatedData` pads every client to the largest one,
``[N, max_examples, ...]``. Real federated datasets are heavy-tailed (a median
client of tens of examples, a few of tens of thousands), so that padding can
be hundreds of times the data. :class:`RaggedData` keeps each array flat,
``[total_examples, ...]``, with client ``i``'s rows at
``offsets[i]:offsets[i + 1]``: its memory is the raw bytes plus 12 bytes per
client, and its arrays may be NumPy arrays in host memory or memory-mapped
``.npy`` files (:meth:`RaggedData.save`, :meth:`RaggedData.load`) for data
larger than RAM.

A round's cohort is gathered on the host into the padded
:class:`~fedjax_lite.FederatedData` the round takes (:meth:`RaggedData.gather`).
Its padded length is a **bucket**: the smallest of 1, 2, 3, 4, 6, 8, 12, 16,
24, ... (powers of two and their midpoints, :func:`bucket_length`) that holds
the cohort's largest client, so a cohort is padded to less than 3/2 of its
largest client and a run compiles at most :func:`num_buckets` round programs,
whatever its cohorts.
Padding never changes a result (padded rows are masked everywhere, and a
client's shuffle does not depend on the padded length), so a round on the
gathered cohort equals the round on the fully padded population.
:func:`fedjax_lite.run_rounds`, :func:`fedjax_lite.run_sweep` and
:func:`fedjax_lite.evaluation.build_evaluator` accept either form; a ragged
population is gathered while the previous round computes.

An optional per-round cap, ``max_examples_per_client``, keeps a uniformly
random subset of the examples of every larger client, drawn afresh each round
from the round's key and the client's id (as TFF's and pfl-research's
per-user caps do), instead of truncating the data once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_lite._validate import check_int
from fedjax_lite.data import FederatedData

# The format of a saved population (RaggedData.save): its version and file names.
_FORMAT = "fedjax_lite.RaggedData"
_VERSION = 1
_META = "ragged.json"


def bucket_length(num_examples: int, *, minimum: int = 1) -> int:
  """The padded length of a cohort whose largest client has ``num_examples``.

  Buckets come two per octave: the powers of two and the midpoints ``3 *
  2^(k-1)`` between them (1, 2, 3, 4, 6, 8, 12, 16, 24, ...). A cohort is
  then padded to less than 3/2 of its largest client, and a run compiles at
  most about ``2 log2(largest client)`` round programs.

  Args:
    num_examples: the largest client's example count (``>= 0``).
    minimum: the smallest bucket (``>= 1``).

  Returns:
    The smallest bucket that is ``>= max(num_examples, minimum, 1)``.
  """
  check_int("num_examples", num_examples, minimum=0)
  check_int("minimum", minimum, minimum=1)
  n = max(num_examples, minimum, 1)
  power = 1 << (n - 1).bit_length()  # the smallest power of two >= n
  midpoint = 3 * power // 4
  return midpoint if power >= 4 and midpoint >= n else power


@dataclasses.dataclass(frozen=True, eq=False)
class RaggedData:
  """A population of clients stored flat, without padding.

  Build one with :meth:`from_clients`, :meth:`from_arrays`,
  :meth:`from_stacked` or :meth:`load`; the constructor checks nothing.

  Attributes:
    arrays: ``{name: array[total_examples, ...]}``, every client's rows one
      after another (NumPy arrays or memory-mapped ``.npy`` files).
    offsets: ``int64[N + 1]``, non-decreasing from 0 to ``total_examples``:
      client ``i`` owns rows ``offsets[i]:offsets[i + 1]``.
    client_ids: ``int32[N]``, unique non-negative ids (they seed each client's
      randomness, as in :class:`~fedjax_lite.FederatedData`).
  """

  arrays: dict[str, np.ndarray]
  offsets: np.ndarray
  client_ids: np.ndarray

  # -- construction --------------------------------------------------------

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, Any], num_examples: Any,
                  client_ids: Any = None) -> RaggedData:
    """Wraps flat arrays and per-client counts, checking them.

    Args:
      arrays: ``{name: array[total_examples, ...]}`` with the clients' rows in
        client order (NumPy arrays or memory maps; they are not copied).
      num_examples: ``int[N]`` counts summing to ``total_examples``; zeros
        allowed.
      client_ids: optional ``int[N]`` unique non-negative ids (default
        ``0..N-1``).

    Returns:
      The :class:`RaggedData`.

    Raises:
      ValueError: for no arrays, arrays of different lengths, counts that are
        not non-negative integers summing to that length, or bad ids.
    """
    if not arrays:
      raise ValueError("`arrays` is empty; give at least one array [total_examples, ...].")
    arrs = {k: v if isinstance(v, np.ndarray) else np.asarray(v) for k, v in arrays.items()}
    lengths = {k: (a.shape[0] if a.ndim else None) for k, a in arrs.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
      raise ValueError(f"`arrays` must share their leading (example) axis; got lengths {lengths}.")
    counts = np.asarray(num_examples)
    if counts.ndim != 1 or counts.size == 0 or not np.issubdtype(counts.dtype, np.integer):
      raise ValueError(f"`num_examples` must be a non-empty 1-D integer array (one count per "
                       f"client); got shape {counts.shape}, dtype {counts.dtype}.")
    if np.any(counts < 0):
      raise ValueError(f"`num_examples` must be >= 0; got min {counts.min()}.")
    total = next(iter(lengths.values()))
    if int(counts.sum()) != total:
      raise ValueError(f"`num_examples` sums to {int(counts.sum())} but the arrays have {total} "
                       "rows; the counts must cover every row exactly once.")
    offsets = np.zeros(counts.size + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return cls(arrs, offsets, _client_ids(client_ids, counts.size))

  @classmethod
  def from_clients(cls, clients: Sequence[Mapping[str, Any]] | Mapping[Any, Mapping[str, Any]],
                   *, client_ids: Sequence[int] | None = None) -> RaggedData:
    """Concatenates per-client arrays (as :func:`fedjax_lite.from_clients` takes them).

    Args:
      clients: a list of ``{name: array[n_i, ...]}``, or a dict of them
        (client ``i`` is the ``i``-th key). Every client has the same names,
        and per name the same trailing shape and dtype; ``n_i`` may be 0.
      client_ids: optional unique non-negative ids (default ``0..N-1``).

    Returns:
      The :class:`RaggedData`.

    Raises:
      ValueError: for no clients or mismatched names, shapes or lengths.
      TypeError: if a client is not a mapping of arrays.
    """
    if isinstance(clients, Mapping):
      clients = list(clients.values())
    clients = list(clients)
    if not clients:
      raise ValueError("`clients` is empty: a population needs at least one client.")
    for i, c in enumerate(clients):
      if not isinstance(c, Mapping):
        raise TypeError(f"`clients[{i}]` is a {type(c).__name__}; each client must be a dict "
                        "{name: array[num_examples, ...]}.")
    names = sorted(clients[0])
    if not names:
      raise ValueError("`clients[0]` has no arrays; give at least one, e.g. {'x': ..., 'y': ...}.")
    columns: dict[str, list[np.ndarray]] = {k: [] for k in names}
    counts = []
    for i, c in enumerate(clients):
      if sorted(c) != names:
        raise ValueError(f"`clients[{i}]` has arrays {sorted(c)} but `clients[0]` has {names}; "
                         "every client needs the same names.")
      arrs = {k: np.asarray(c[k]) for k in names}
      lengths = {k: (a.shape[0] if a.ndim else None) for k, a in arrs.items()}
      if None in lengths.values() or len(set(lengths.values())) != 1:
        raise ValueError(f"`clients[{i}]` arrays disagree on their leading (example) axis: "
                         f"{lengths}.")
      counts.append(next(iter(lengths.values())))
      for k in names:
        ref = columns[k][0] if columns[k] else arrs[k]
        if arrs[k].shape[1:] != ref.shape[1:] or arrs[k].dtype != ref.dtype:
          raise ValueError(f"`clients[{i}]['{k}']` has per-example shape {arrs[k].shape[1:]} and "
                           f"dtype {arrs[k].dtype}, but `clients[0]['{k}']` has "
                           f"{ref.shape[1:]} and {ref.dtype}.")
        columns[k].append(arrs[k])
    flat = {k: np.concatenate(v) for k, v in columns.items()}
    return cls.from_arrays(flat, np.asarray(counts, np.int64), client_ids)

  @classmethod
  def from_stacked(cls, data: FederatedData) -> RaggedData:
    """The unpadded form of a stacked population (its real rows only).

    Args:
      data: a :class:`~fedjax_lite.FederatedData` with a client axis.

    Returns:
      The :class:`RaggedData` holding the same clients, ids and rows.
    """
    counts = np.asarray(data.num_examples, np.int64)
    if counts.ndim != 1:
      raise ValueError(f"`data` must be a population (num_examples [N]); got num_examples of "
                       f"shape {counts.shape}.")
    mask = np.arange(data.max_examples) < counts[:, None]
    flat = {k: np.asarray(v)[mask] for k, v in data.arrays.items()}
    return cls.from_arrays(flat, counts, np.asarray(data.client_ids))

  # -- what it holds -------------------------------------------------------

  @property
  def num_clients(self) -> int:
    """``N``, the number of clients."""
    return int(self.offsets.shape[0] - 1)

  @property
  def num_examples(self) -> np.ndarray:
    """``int32[N]``: each client's example count."""
    return np.diff(self.offsets).astype(np.int32)

  @property
  def max_examples(self) -> int:
    """The largest client's example count."""
    return int(np.max(np.diff(self.offsets))) if self.num_clients else 0

  @property
  def total_examples(self) -> int:
    """The number of rows over all clients."""
    return int(self.offsets[-1])

  @property
  def nbytes(self) -> int:
    """Bytes held: the arrays' rows plus the offsets and ids."""
    return int(sum(a.nbytes for a in self.arrays.values()) + self.offsets.nbytes
               + self.client_ids.nbytes)

  def __repr__(self) -> str:
    shapes = ", ".join(f"{k}: {a.dtype}{list(a.shape[1:])}" for k, a in self.arrays.items())
    return (f"RaggedData({self.num_clients} clients, {self.total_examples} examples, largest "
            f"{self.max_examples}; {shapes})")

  # -- gathering -----------------------------------------------------------

  def gather(self, indices: Any, mask: Any = None, *, length: int | None = None,
             max_examples_per_client: int | None = None,
             seed: Any = None) -> FederatedData:
    """The clients at ``indices`` as a padded :class:`~fedjax_lite.FederatedData`.

    Args:
      indices: ``int[K]`` positions in ``[0, N)`` (e.g. a sampler's draw).
      mask: optional ``bool[K]``; a ``False`` slot becomes an empty client
        (count 0; its id is still the client's, as in
        :func:`fedjax_lite.sampled_round`).
      length: the padded length; default :func:`bucket_length` of the largest
        (capped) client of the cohort. Must hold it.
      max_examples_per_client: optional cap: a larger client keeps a uniform
        random subset of this many examples (in their stored order), drawn
        from ``seed`` and its client id.
      seed: with a cap, a sequence of non-negative integers (e.g. the round's
        key data); the same seed and client give the same subset.

    Returns:
      Host (NumPy) arrays ``[K, length, ...]``, counts and ids.

    Raises:
      ValueError: for out-of-range indices, a ``length`` too small, or a cap
        without a seed.
    """
    idx = np.asarray(indices, np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= self.num_clients):
      raise ValueError(f"`indices` must be in [0, {self.num_clients}); got min {idx.min()}, "
                       f"max {idx.max()}.")
    starts = self.offsets[idx]
    counts = self.kept_counts(idx, mask)
    ids = self.client_ids[idx]
    kept = self.kept_counts(idx, mask, max_examples_per_client)
    over = np.flatnonzero(kept < counts)
    if over.size and seed is None:
      raise ValueError("`max_examples_per_client` subsamples with a `seed`; give one (e.g. the "
                       "round's key data).")
    longest = int(kept.max()) if kept.size else 0
    if length is None:
      length = bucket_length(longest)
    elif length < longest:
      raise ValueError(f"`length`={length} cannot hold the cohort's largest client ({longest} "
                       "examples); leave it None for the bucket.")
    # The real rows only, O(real rows): slot k's j-th row is flat row src, written
    # at dest = k * length + j of the padded output.
    first = np.cumsum(kept) - kept
    j = np.arange(int(kept.sum())) - np.repeat(first, kept)
    src = np.repeat(starts, kept) + j
    dest = np.repeat(np.arange(idx.size) * length, kept) + j
    base = [int(s) for s in np.asarray(seed, np.uint64).reshape(-1)] if over.size else []
    for k in over:
      rng = np.random.default_rng([*base, int(ids[k])])
      chosen = np.sort(rng.choice(int(counts[k]), max_examples_per_client, replace=False))
      src[first[k]:first[k] + max_examples_per_client] = starts[k] + chosen
    if self.on_device:
      # Only the row numbers travel: [K, length], -1 on padding.
      rows = np.full(idx.size * length, -1, np.int32)
      rows[dest] = src
      rows = rows.reshape(idx.size, length)
      out = {name: _take_rows(a, rows) for name, a in self.arrays.items()}
      return FederatedData(out, kept.astype(np.int32), ids.astype(np.int32))
    out = {}
    for name, a in self.arrays.items():
      # np.zeros maps zero pages lazily: only the real rows are written.
      x = np.zeros((idx.size * length,) + a.shape[1:], a.dtype)
      if src.size:
        x[dest] = a[src]
      out[name] = x.reshape((idx.size, length) + a.shape[1:])
    return FederatedData(out, kept.astype(np.int32), ids.astype(np.int32))

  @property
  def on_device(self) -> bool:
    """Whether the arrays are JAX arrays on a device (:meth:`to_device`)."""
    import jax

    return any(isinstance(a, jax.Array) for a in self.arrays.values())

  def to_device(self, device: Any = None) -> RaggedData:
    """The same population with its arrays on a device (when they fit there).

    Gathering a cohort then sends only its row numbers (``int32[K,
    bucket]``) to the device and takes the rows there; the offsets and ids
    stay on the host.

    Args:
      device: a ``jax.Device`` or sharding (default: the default device).

    Returns:
      The device-resident :class:`RaggedData`.
    """
    import jax

    arrays = {k: jax.device_put(np.asarray(a), device) for k, a in self.arrays.items()}
    return dataclasses.replace(self, arrays=arrays)

  def kept_counts(self, indices: Any, mask: Any = None,
                  max_examples_per_client: int | None = None) -> np.ndarray:
    """The example counts a cohort gathers (see :meth:`gather`): 0 on masked slots, capped.

    Args:
      indices: ``int[K]`` positions in ``[0, N)``.
      mask: optional ``bool[K]`` (False: an empty slot).
      max_examples_per_client: optional cap.

    Returns:
      ``int64[K]``.
    """
    idx = np.asarray(indices, np.int64).reshape(-1)
    counts = self.offsets[idx + 1] - self.offsets[idx]
    if mask is not None:
      counts = np.where(np.asarray(mask, bool).reshape(-1), counts, 0)
    if max_examples_per_client is not None:
      check_int("max_examples_per_client", max_examples_per_client, minimum=1)
      counts = np.minimum(counts, max_examples_per_client)
    return counts

  def to_stacked(self, max_examples: int | None = None) -> FederatedData:
    """The whole population, padded (for small populations).

    Args:
      max_examples: the padded length (default: the largest client, at least 1).

    Returns:
      The equivalent :class:`~fedjax_lite.FederatedData`.
    """
    length = max(self.max_examples, 1) if max_examples is None else max_examples
    return self.gather(np.arange(self.num_clients), length=length)

  # -- files ---------------------------------------------------------------

  def save(self, directory: str | Path) -> Path:
    """Writes the population as ``.npy`` files plus ``ragged.json`` in ``directory``.

    Args:
      directory: a new or empty directory.

    Returns:
      The directory.

    Raises:
      FileExistsError: if it already holds a saved population.
    """
    directory = Path(directory)
    if (directory / _META).exists():
      raise FileExistsError(f"{directory} already holds a population ({_META}); choose a new "
                            "directory or delete it first.")
    directory.mkdir(parents=True, exist_ok=True)
    names = {}
    for i, (name, a) in enumerate(self.arrays.items()):
      names[name] = f"array{i}.npy"
      np.save(directory / names[name], np.asarray(a))
    np.save(directory / "offsets.npy", self.offsets)
    np.save(directory / "client_ids.npy", self.client_ids)
    (directory / _META).write_text(json.dumps({"format": _FORMAT, "version": _VERSION,
                                               "arrays": names}, indent=1))
    return directory

  @classmethod
  def load(cls, directory: str | Path, *, mmap: bool = True) -> RaggedData:
    """Reads a population written by :meth:`save`.

    Args:
      directory: the directory.
      mmap: memory-map the arrays (rows are read when gathered) instead of
        reading them into memory.

    Returns:
      The :class:`RaggedData`, checked.

    Raises:
      ValueError: if the directory does not hold a saved population.
    """
    directory = Path(directory)
    try:
      meta = json.loads((directory / _META).read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"{directory} does not hold a saved RaggedData ({_META}: {e}).") from e
    if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
      raise ValueError(f"{directory / _META} is not a {_FORMAT} version {_VERSION} file.")
    mode = "r" if mmap else None
    arrays = {name: np.load(directory / f, mmap_mode=mode) for name, f in meta["arrays"].items()}
    offsets = np.load(directory / "offsets.npy")
    return cls.from_arrays(arrays, np.diff(offsets), np.load(directory / "client_ids.npy"))


def _take_rows(array: Any, rows: np.ndarray) -> Any:
  """``array[rows]`` with zeros where ``rows`` is -1, on ``array``'s device (jitted)."""
  global _TAKE
  if _TAKE is None:
    import jax
    import jax.numpy as jnp

    def take(a, r):
      x = jnp.take(a, jnp.maximum(r, 0), axis=0)
      real = (r >= 0).reshape(r.shape + (1,) * (a.ndim - 1))
      return jnp.where(real, x, jnp.zeros((), a.dtype))

    _TAKE = jax.jit(take)
  return _TAKE(array, rows)


_TAKE = None


def _client_ids(client_ids: Any, n: int) -> np.ndarray:
  if client_ids is None:
    return np.arange(n, dtype=np.int32)
  ids = np.asarray(client_ids)
  if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"`client_ids` must be {n} integers (one per client); got shape "
                     f"{ids.shape}, dtype {ids.dtype}.")
  if n and ids.min() < 0:
    raise ValueError("`client_ids` must be >= 0 (-1 marks padding clients).")
  if len(np.unique(ids)) != n:
    raise ValueError("`client_ids` must be unique: they seed each client's randomness.")
  return ids.astype(np.int32)


def num_buckets(max_examples: int) -> int:
  """How many buckets a population whose largest client has ``max_examples`` can use.

  Args:
    max_examples: the largest client's example count.

  Returns:
    The number of buckets up to ``bucket_length(max_examples)``: the most
    round programs a run on it compiles.
  """
  top = bucket_length(max_examples)
  count, b = 0, 1
  while b <= top:
    count, b = count + 1, bucket_length(b + 1)
  return count


class CohortFeed:
  """Each round's cohort of a :class:`RaggedData`, sampled and gathered one round ahead.

  What :func:`fedjax_lite.run_rounds` and :func:`fedjax_lite.run_sweep` use
  for a ragged population. Round ``r``'s cohort is drawn by the sampler with
  the first key of :func:`fedjax_lite.round_keys` (so exactly the clients a
  stacked population's round would take), gathered on the host into its
  bucket and put on the device. :meth:`sample` (a small jitted draw, read
  back at once) is called before the previous round is dispatched and
  :meth:`gather` while it computes, so the host's gathering overlaps the
  device's round.

  Args:
    population: the ragged population.
    sampler: the :class:`~fedjax_lite.Sampler` (of ``population.num_clients``).
    keys: the run's PRNG key, or ``S`` keys (a sweep: one cohort each, padded
      to one bucket and stacked on a leading axis).
    max_examples_per_client: optional per-round cap (see
      :meth:`RaggedData.gather`), drawn from the round's sampling key.
  """

  def __init__(self, population: RaggedData, sampler: Any, keys: Any, *,
               max_examples_per_client: int | None = None):
    import jax

    from fedjax_lite.training import round_keys

    self.population, self.cap = population, max_examples_per_client
    self.stacked = np.ndim(keys) == 1

    def draw(key, r):
      sample_key = round_keys(key, r)[0]
      return (*sampler.draw(sample_key, r), jax.random.key_data(sample_key))

    self._draw = jax.jit(jax.vmap(draw, in_axes=(0, None)) if self.stacked else draw)
    self._keys = keys
    self._drawn: dict[int, tuple] = {}
    self._ready: dict[int, tuple] = {}

  def sample(self, r: int) -> None:
    """Draws round ``r``'s cohort(s) (indices, masks, overflow flags) on the device."""
    import jax

    self._drawn[r] = jax.device_get(self._draw(self._keys, np.int32(r)))

  def gather(self, r: int) -> None:
    """Gathers round ``r``'s drawn cohort(s) on the host and puts them on the device."""
    import jax

    if r not in self._drawn:
      self.sample(r)
    indices, mask, overflow, seeds = self._drawn.pop(r)
    if not self.stacked:
      cohort = self.population.gather(indices, mask, max_examples_per_client=self.cap,
                                      seed=seeds)
    else:
      length = bucket_length(int(self.population.kept_counts(indices, mask, self.cap).max()))
      parts = [self.population.gather(i, m, length=length, max_examples_per_client=self.cap,
                                      seed=s)
               for i, m, s in zip(indices, mask, seeds, strict=True)]
      cohort = jax.tree.map(lambda *xs: np.stack(xs), *parts)
    self._ready[r] = (jax.device_put(cohort), mask, overflow)

  def take(self, r: int) -> tuple[FederatedData, np.ndarray, np.ndarray]:
    """Round ``r``'s ``(cohort, mask, overflow)``, gathering it now if it is not ready."""
    if r not in self._ready:
      self.gather(r)
    return self._ready.pop(r)
