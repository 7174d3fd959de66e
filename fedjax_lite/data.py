"""Federated data in stacked form: a leading client axis, padded and counted.

A population of ``N`` clients is stored as a :class:`FederatedData`: every
array carries a leading client axis and a second, padded example axis,
``[N, max_examples, ...]``, and ``num_examples[i]`` says how many of client
``i``'s rows are real. Rows past ``num_examples[i]`` are zeros and are masked
out of every loss, gradient, metric and weight by the primitives of this
package, so a ragged population (one client with 1 example, another with
thousands, some with none) gives exactly the result of handling each client
on its own.

Because the container is a plain pytree of arrays, it can live on device, be
passed into ``jax.jit``-compiled functions, and a cohort can be gathered from
it inside the compiled program with :func:`take`.
"""

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_lite._types import Array
from fedjax_lite._validate import check_int


class FederatedData(NamedTuple):
  """A population (or cohort) of clients, stacked and padded; or one client's slice.

  Attributes:
    arrays: dict ``name -> array`` of shape ``[N, max_examples, ...]``. Row
      ``j`` of client ``i`` is real iff ``j < num_examples[i]``; padded rows
      are zeros.
    num_examples: ``int32[N]``, the number of real examples per client.
    client_ids: ``int32[N]``, a stable integer id per client. Per-client
      randomness is derived from it (``jax.random.fold_in(key, client_id)``),
      so results do not depend on where a client sits in a cohort.

  A single client's slice (``jax.tree.map(lambda x: x[i], data)``, or what
  ``jax.vmap`` / ``jax.lax.map`` over a population hands each client) has the
  same structure without the leading axis: arrays ``[max_examples, ...]``,
  scalar ``num_examples`` and ``client_ids``; that is what a client update
  receives.

  The properties read the rank of ``num_examples`` to tell these apart, so
  they mean the same thing on a population and on a slice:

  * ``num_examples.ndim == 1``, a population or cohort: ``num_clients`` is
    ``N``, ``max_examples`` is axis 1 of the arrays, ``mask()`` is
    ``bool[N, max_examples]``.
  * ``num_examples.ndim == 0``, a single client (``is_single_client``):
    ``num_clients`` is 1, ``max_examples`` is axis 0 of the arrays, ``mask()``
    is ``bool[max_examples]``.
  * ``num_examples.ndim == k >= 2``, clients stacked under ``k - 1`` outer
    axes (e.g. ``[S, N]`` for ``S`` stacked populations; the package itself
    never builds one: :func:`fedjax_lite.run_sweep` shares one population
    between its experiments): the client axis is the last of the leading
    axes, so ``num_clients`` is ``num_examples.shape[-1]`` (outer axes are not
    counted, as under a ``jax.vmap`` over them), ``max_examples`` is axis
    ``k`` of the arrays, and ``mask()`` is ``bool[*num_examples.shape,
    max_examples]``.
  """

  arrays: dict[str, Array]
  num_examples: Array
  client_ids: Array

  @property
  def is_single_client(self) -> bool:
    """True for one client's slice (scalar ``num_examples``), False for a population (static)."""
    return np.ndim(self.num_examples) == 0

  @property
  def num_clients(self) -> int:
    """The number of clients on the client axis (static): 1 for a single client's slice."""
    shape = np.shape(self.num_examples)
    return int(shape[-1]) if shape else 1

  @property
  def max_examples(self) -> int:
    """The padded length of the example axis, the axis after the client axes (static).

    Raises:
      ValueError: if there are no arrays, or an array has no example axis.
    """
    if not self.arrays:
      raise ValueError("`arrays` is empty, so there is no example axis; give at least one "
                       "array [N, max_examples, ...].")
    axis = np.ndim(self.num_examples)
    name, x = next(iter(self.arrays.items()))
    if np.ndim(x) <= axis:
      raise ValueError(
          f"`arrays[{name!r}]` has shape {tuple(np.shape(x))}, so it has no example axis after "
          f"the client axes {tuple(np.shape(self.num_examples))} of `num_examples`; each array "
          "must be [*num_examples.shape, max_examples, ...].")
    return int(np.shape(x)[axis])

  def mask(self) -> Array:
    """``bool[*num_examples.shape, max_examples]``: True on real rows, False on padding.

    ``bool[N, max_examples]`` for a population, ``bool[max_examples]`` for a
    single client's slice.
    """
    return example_mask(self.num_examples, self.max_examples)

  def take(self, indices: Array) -> "FederatedData":
    """Gathers the clients at ``indices`` (see :func:`take`)."""
    return take(self, indices)


def example_mask(num_examples: Array, max_examples: int) -> Array:
  """Returns the padding mask ``arange(max_examples) < num_examples[..., None]``.

  Args:
    num_examples: integer array of any shape ``S``.
    max_examples: the padded length (a Python int).

  Returns:
    ``bool[*S, max_examples]``.
  """
  return jnp.arange(max_examples) < jnp.asarray(num_examples)[..., None]


def take(data: FederatedData, indices: Array) -> FederatedData:
  """Selects a cohort of clients by index; pure and jit-safe.

  Args:
    data: the population, leading axis ``N``.
    indices: ``int[K]`` positions in ``[0, N)`` (for example from
      :func:`fedjax_lite.sample_clients`). Inside ``jax.jit`` indices are not
      bounds-checked; out-of-range values are clamped by XLA.

  Returns:
    A :class:`FederatedData` with leading axis ``K``.
  """
  indices = jnp.asarray(indices)
  return jax.tree.map(lambda x: jnp.take(x, indices, axis=0, mode="clip"), data)


def from_clients(
    clients: Sequence[Mapping[str, Any]] | Mapping[Any, Mapping[str, Any]],
    *,
    max_examples: int | None = None,
    client_ids: Sequence[int] | None = None,
) -> FederatedData:
  """Builds a stacked, padded population from per-client NumPy arrays.

  Args:
    clients: either a list of per-client dicts ``{name: array[n_i, ...]}`` or a
      dict ``{client_key: {name: array[n_i, ...]}}``. Every client must have
      the same array names, and per name the same trailing shape and dtype;
      ``n_i`` may differ between clients and may be zero. For a dict, client
      ``i`` of the result is the ``i``-th key in iteration order.
    max_examples: padded length of the example axis. Defaults to the largest
      ``n_i`` (at least 1). Must be ``>= max(n_i)``.
    client_ids: optional integer id per client (default ``0..N-1``). Ids seed
      per-client randomness and must be unique.

  Returns:
    A :class:`FederatedData` holding NumPy arrays (``jax.device_put`` it, or
    pass it to a jitted function, to move it to a device).

  Raises:
    ValueError: for no clients, mismatched names, shapes or example counts
      within a client, ``max_examples`` too small, or bad ``client_ids``.
    TypeError: if a client is not a mapping of arrays.
  """
  if isinstance(clients, Mapping):
    clients = list(clients.values())
  else:
    clients = list(clients)
  if not clients:
    raise ValueError("`clients` is empty: a population needs at least one client.")
  for i, c in enumerate(clients):
    if not isinstance(c, Mapping):
      raise TypeError(
          f"`clients[{i}]` is a {type(c).__name__}; each client must be a dict "
          "{name: array[num_examples, ...]}.")
  names = sorted(clients[0])
  if not names:
    raise ValueError("`clients[0]` has no arrays; give at least one, e.g. {'x': ..., 'y': ...}.")
  counts = []
  columns: dict[str, list[np.ndarray]] = {k: [] for k in names}
  for i, c in enumerate(clients):
    if sorted(c) != names:
      raise ValueError(
          f"`clients[{i}]` has arrays {sorted(c)} but `clients[0]` has {names}; "
          "every client needs the same names.")
    arrs = {k: np.asarray(c[k]) for k in names}
    lengths = {k: (a.shape[0] if a.ndim else None) for k, a in arrs.items()}
    if len(set(lengths.values())) != 1 or None in lengths.values():
      raise ValueError(
          f"`clients[{i}]` arrays disagree on their leading (example) axis: {lengths}. "
          "Each array must be [num_examples, ...] with the same num_examples.")
    counts.append(next(iter(lengths.values())))
    for k in names:
      ref = columns[k][0] if columns[k] else None
      a = arrs[k]
      if ref is not None and (a.shape[1:] != ref.shape[1:] or a.dtype != ref.dtype):
        raise ValueError(
            f"`clients[{i}]['{k}']` has per-example shape {a.shape[1:]} and dtype {a.dtype}, "
            f"but `clients[0]['{k}']` has {ref.shape[1:]} and {ref.dtype}.")
      columns[k].append(a)
  longest = max(counts)
  if max_examples is None:
    max_examples = max(longest, 1)
  check_int("max_examples", max_examples, minimum=1)
  if max_examples < longest:
    raise ValueError(
        f"`max_examples`={max_examples} is smaller than the largest client ({longest} examples); "
        "raise it or leave it None.")
  arrays = {}
  for k in names:
    first = columns[k][0]
    out = np.zeros((len(clients), max_examples) + first.shape[1:], dtype=first.dtype)
    for i, a in enumerate(columns[k]):
      out[i, : a.shape[0]] = a
    arrays[k] = out
  if client_ids is None:
    ids = np.arange(len(clients), dtype=np.int32)
  else:
    ids = np.asarray(client_ids)
    if ids.shape != (len(clients),) or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(
          f"`client_ids` must be {len(clients)} integers (one per client); got shape "
          f"{ids.shape}, dtype {ids.dtype}.")
    if len(np.unique(ids)) != len(ids):
      raise ValueError("`client_ids` must be unique: they seed each client's randomness.")
    ids = ids.astype(np.int32)
  return FederatedData(arrays, np.asarray(counts, np.int32), ids)


def from_arrays(
    arrays: Mapping[str, Any],
    num_examples: Any,
    client_ids: Any = None,
) -> FederatedData:
  """Wraps already-stacked arrays, validating shapes and counts.

  Args:
    arrays: dict ``name -> array[N, max_examples, ...]``.
    num_examples: integer ``[N]`` counts, each in ``[0, max_examples]``.
    client_ids: optional ``int[N]`` unique ids (default ``0..N-1``).

  Returns:
    A :class:`FederatedData`. Rows past each client's count are zeroed, so
    stale values in padding can never leak into a computation.

  Raises:
    ValueError: for mismatched leading axes, counts that are negative,
      non-integer, or larger than ``max_examples``.
  """
  if not arrays:
    raise ValueError("`arrays` is empty; give at least one array [N, max_examples, ...].")
  arrs = {k: np.asarray(v) for k, v in arrays.items()}
  shapes = {k: a.shape[:2] for k, a in arrs.items()}
  if any(a.ndim < 2 for a in arrs.values()) or len(set(shapes.values())) != 1:
    raise ValueError(
        "`arrays` must share their leading [num_clients, max_examples] axes; got "
        f"{ {k: a.shape for k, a in arrs.items()} }.")
  n, m = next(iter(shapes.values()))
  counts = validate_counts(num_examples, n, m)
  mask = np.arange(m) < counts[:, None]
  arrs = {
      k: np.where(mask.reshape(mask.shape + (1,) * (a.ndim - 2)), a, np.zeros((), a.dtype))
      for k, a in arrs.items()
  }
  if client_ids is None:
    ids = np.arange(n, dtype=np.int32)
  else:
    ids = np.asarray(client_ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer) or len(np.unique(ids)) != n:
      raise ValueError(f"`client_ids` must be {n} unique integers; got {ids!r}.")
    ids = ids.astype(np.int32)
  return FederatedData(arrs, counts, ids)


def validate_counts(num_examples: Any, num_clients: int, max_examples: int) -> np.ndarray:
  """Checks per-client example counts on the host and returns them as int32.

  Raises:
    ValueError: if ``num_examples`` is not ``[num_clients]`` non-negative
      integers no larger than ``max_examples``.
  """
  counts = np.asarray(num_examples)
  if counts.shape != (num_clients,):
    raise ValueError(
        f"`num_examples` must have shape [{num_clients}] (one count per client, matching the "
        f"leading axis of the arrays); got {counts.shape}.")
  if not np.issubdtype(counts.dtype, np.integer):
    if np.issubdtype(counts.dtype, np.floating) and np.all(np.isfinite(counts)) and np.all(
        counts == np.round(counts)):
      counts = counts.astype(np.int64)
    else:
      raise ValueError(f"`num_examples` must hold integers; got dtype {counts.dtype}.")
  if np.any(counts < 0):
    raise ValueError(f"`num_examples` must be >= 0; got min {counts.min()}.")
  if np.any(counts > max_examples):
    raise ValueError(
        f"`num_examples` exceeds the padded length {max_examples} (max {counts.max()}).")
  return counts.astype(np.int32)


def check_labels(data: FederatedData, num_classes: int, key: str = "y", *,
                 name: str = "data") -> None:
  """Checks on the host that every real label is an integer in ``[0, num_classes)``.

  An out-of-range label does not fail inside a compiled loss: optax's
  integer-label cross entropy gives NaN for some and finite garbage for
  others (a negative label wraps around). Call this on concrete data before
  training (``fedjax-lite run`` does, for the train and test splits). Only
  real rows are checked; padded rows (past ``num_examples``) may hold any
  value.

  Args:
    data: a population (``num_examples`` ``[N]``, labels ``[N, max_examples,
      ...]``) or a single client's slice (scalar ``num_examples``, labels
      ``[max_examples, ...]``), with concrete (not traced) arrays. Labels may
      have trailing axes (e.g. ``[N, max_examples, T]`` next-token targets);
      every entry of a real row is checked.
    num_classes: the number of classes (``>= 1``), the model's logits width.
    key: the name of the label array in ``data.arrays``.
    name: what to call ``data`` in the error message (e.g. ``"train"``).

  Returns:
    None; it raises on the first problem.

  Raises:
    ValueError: if ``data.arrays`` has no ``key``, the labels are not of an
      integer dtype, their leading axes do not match ``num_examples``, or a
      real label is outside ``[0, num_classes)`` (the message names a client
      id, its offending labels and the fix).
    TypeError: if ``num_classes`` is not an int.
  """
  num_classes = check_int("num_classes", num_classes, minimum=1)
  if not isinstance(data, FederatedData):
    raise TypeError(f"`{name}` must be a FederatedData (see fedjax_lite.from_clients); got "
                    f"{type(data).__name__}.")
  where = f"{name}.arrays[{key!r}]"
  if key not in data.arrays:
    raise ValueError(f"{where} does not exist: {name} has arrays {sorted(data.arrays)}; pass "
                     "the name of the label array as `key`.")
  labels = np.asarray(jax.device_get(data.arrays[key]))
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"{where} has dtype {labels.dtype}, but labels must be integers in [0, {num_classes}); "
        "cast them, e.g. y.astype(np.int32).")
  counts = np.asarray(jax.device_get(data.num_examples))
  lead = counts.shape
  if labels.ndim <= len(lead) or labels.shape[:len(lead)] != lead:
    raise ValueError(
        f"{where} has shape {labels.shape}, which does not start with the client axes {lead} "
        f"of {name}.num_examples and an example axis; labels must be "
        "[*num_examples.shape, max_examples, ...].")
  real = np.arange(labels.shape[len(lead)]) < counts[..., None]
  real = real.reshape(real.shape + (1,) * (labels.ndim - real.ndim))
  bad = real & ((labels < 0) | (labels >= num_classes))
  if not bad.any():
    return
  # The first offending client (in stacking order), for the message.
  per_client = bad.reshape(lead + (-1,)).any(-1)
  first = np.unravel_index(np.flatnonzero(per_client)[0], lead) if lead else ()
  ids = np.asarray(jax.device_get(data.client_ids))
  who = (f"client {int(ids[first])}" if np.shape(ids) == lead
         else f"the client at index {tuple(int(i) for i in first)}")
  values = np.unique(labels[first][bad[first]])
  shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
  others = int(per_client.sum()) - 1
  also = f" (and {others} other client{'s' if others != 1 else ''})" if others else ""
  lowest, highest = int(labels[bad].min()), int(labels[bad].max())
  fix = f"remap the labels into 0..{num_classes - 1}"
  if lowest >= 0:
    fix += f" or set num_classes to at least {highest + 1}"
  raise ValueError(
      f"labels must be in [0, {num_classes}): {who} has "
      f"label{'s' if len(values) > 1 else ''} {shown} in {where}{also}; {fix}.")
