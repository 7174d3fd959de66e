"""The client engine: a chunked ``vmap``-in-``scan`` map-reduce over a client axis.

Every computation that runs something per client (the round's client updates,
evaluation, per-client personalized evaluation) goes through
:func:`map_reduce`, which knows nothing about federated algorithms (in the
spirit of drjax's ``map_fn``/``reduce_sum``, Rush et al., 2024):

* the ``K`` clients are cut into chunks of ``chunk_size``; each chunk is
  gathered from the client arrays inside the program (no padded copy of the
  whole axis), the slots past the last client are marked invalid;
* ``chunk_fn(shared, chunk, valid)`` runs on one chunk (typically a
  ``jax.vmap`` over it) and returns ``(sums, per_client)``: the sums are
  accumulated across chunks in a ``lax.scan`` carry (so memory holds one
  chunk's intermediates, not ``K``), the per-client values are stacked
  ``[K, ...]``;
* a chunk with no active client (e.g. the unused slots of a Poisson-sampled
  cohort) is skipped outright;
* with a ``mesh``, the client axis is padded to a multiple of the mesh axis
  and each device runs its share under ``jax.shard_map``; one ``psum``
  combines the sums and one ``all_gather`` the per-client values, so the
  result is the single-device one up to float summation order.

``chunk_size="auto"`` is sized per platform by :mod:`fedjax_lite.hardware`.
The engine also offers the cheap finiteness test the round uses
(:func:`finite_clients`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from fedjax_lite import hardware
from fedjax_lite._validate import check_int
from fedjax_lite.data import FederatedData
from fedjax_lite.sharding import CLIENT_AXIS

_log = logging.getLogger(__name__)

ChunkFn = Callable[[Any, Any, Any], tuple[Any, Any]]


def check_chunk_size(chunk_size: Any) -> None:
  """Checks a ``chunk_size`` argument.

  Args:
    chunk_size: an int >= 1, ``"auto"`` or ``None``.

  Returns:
    None.

  Raises:
    TypeError, ValueError: for anything else.
  """
  if chunk_size is not None and not (isinstance(chunk_size, str) and chunk_size == "auto"):
    check_int("chunk_size", chunk_size, minimum=1)


def num_clients(clients: Any) -> int:
  """The size of the leading (client) axis shared by every leaf of ``clients``.

  Args:
    clients: a pytree of arrays with a common leading axis.

  Returns:
    That axis's size.

  Raises:
    ValueError: if the leaves disagree.
  """
  sizes = {jnp.shape(x)[0] for x in jax.tree.leaves(clients) if jnp.ndim(x)}
  if len(sizes) != 1:
    raise ValueError(f"the client pytree's leaves must share one leading axis; got {sizes}.")
  return sizes.pop()


def resolve_chunk_size(chunk_size: int | str | None, chunk_fn: ChunkFn, shared: Any,
                       clients: Any, *, model: Any = None, device: Any = None) -> int:
  """The number of clients per chunk for ``chunk_size`` (``int``, ``None`` or ``"auto"``).

  Args:
    chunk_size: clients per chunk; ``None`` is all of them; ``"auto"`` asks
      :func:`fedjax_lite.hardware.auto_chunk_size` (on a CPU a cache-sized
      working set; on an accelerator, a fraction of the free device memory
      over the traced memory of ``chunk_fn`` on one client, with the client
      arrays and ``K`` copies of the per-client outputs set aside).
    chunk_fn, shared, clients: as for :func:`map_reduce`.
    model: the pytree whose size stands for one client's model copy in the
      CPU estimate (default ``shared``).
    device: the device whose memory counts (default: the default device).

  Returns:
    An int in ``[1, K]``.
  """
  k = num_clients(clients)
  if chunk_size is None:
    return k
  if chunk_size != "auto":
    return min(chunk_size, k)
  model = shared if model is None else model
  # The data estimate reads a FederatedData's padded example axis where there is one.
  data = next((x for x in jax.tree.leaves(clients, is_leaf=_is_data) if _is_data(x)), clients)
  memory = hardware.device_memory(device)
  if hardware.tuning(memory.platform).chunk_bytes is not None:
    chunk = hardware.auto_chunk_size(model, data, memory=memory)
  else:
    one = jax.tree.map(lambda x: x[:1], clients)
    valid = jnp.ones((1,), bool)
    jaxpr = jax.make_jaxpr(chunk_fn)(shared, one, valid)
    per_client = jax.eval_shape(chunk_fn, shared, one, valid)[1]
    reserved = hardware.tree_bytes(clients) + k * hardware.tree_bytes(per_client)
    chunk = hardware.auto_chunk_size(model, data, memory=memory,
                                     client_bytes=hardware.jaxpr_bytes(jaxpr),
                                     reserved_bytes=reserved)
  chunk = min(chunk, k)
  # At trace time only: what "auto" chose, for benchmarks and debugging.
  _log.debug("chunk_size='auto': %d of %d clients per chunk (%d chunks)", chunk, k,
             math.ceil(k / chunk))
  return chunk


def map_reduce(chunk_fn: ChunkFn, shared: Any, clients: Any, *, active: Any = None,
               chunk_size: int | str | None = None, mesh: Mesh | None = None,
               axis: str = CLIENT_AXIS, model: Any = None) -> tuple[Any, Any]:
  """Runs ``chunk_fn`` over ``clients`` chunk by chunk; sums and per-client outputs.

  Pure and ``jit``-safe (call it inside ``jax.jit``); differentiable.

  Args:
    chunk_fn: ``chunk_fn(shared, chunk, valid) -> (sums, per_client)``:
      ``chunk`` is ``clients`` restricted to ``C`` slots (leading axis ``C``),
      ``valid`` is ``bool[C]`` (False on slots past the last client, and on
      padding added for a mesh, whose leaves repeat a real client's or are
      zeros); ``sums`` is any pytree (summed over chunks), ``per_client`` a
      pytree of ``[C, ...]`` arrays. Its output shapes must not depend on the
      values of ``valid``.
    shared: what every client sees (e.g. the broadcast parameters).
    clients: a pytree whose leaves share the leading client axis ``K`` (e.g.
      a :class:`fedjax_lite.FederatedData` cohort and its client states).
    active: optional ``bool[K]``: a chunk whose slots are all inactive or
      invalid is skipped (its per-client outputs are zeros and it adds
      nothing to the sums). Default: no chunk is skipped (and no test runs).
    chunk_size: clients per chunk, ``None`` (one chunk) or ``"auto"`` (see
      :func:`resolve_chunk_size`; with a mesh, per device).
    mesh: optional device mesh whose ``axis`` the clients are sharded over;
      ``shared`` is replicated.
    axis: the mesh axis name.
    model: see :func:`resolve_chunk_size`.

  Returns:
    ``(sums, per_client)``: ``chunk_fn``'s sums added over all chunks, and its
    per-client outputs stacked ``[K, ...]`` in client order.
  """
  check_chunk_size(chunk_size)
  k = num_clients(clients)
  skip = active is not None
  active = jnp.ones((k,), bool) if active is None else jnp.asarray(active, bool)
  if mesh is None:
    return _local(chunk_fn, shared, clients, active, jnp.ones((k,), bool), chunk_size, model,
                  None, skip)
  if axis not in mesh.shape:
    raise ValueError(f"`mesh` has axes {tuple(mesh.shape)}; `axis`={axis!r} is not one of them.")
  devices = mesh.shape[axis]
  pad = -k % devices
  padded, padded_active, valid = jax.tree.map(
      lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)),
      (clients, active, jnp.ones((k,), bool)))
  device = mesh.devices.flat[0]

  def local(shared, part, part_active, part_valid):
    sums, per_client = _local(chunk_fn, shared, part, part_active, part_valid, chunk_size,
                              model, device, True)
    return jax.lax.psum(sums, axis), jax.lax.all_gather(per_client, axis, tiled=True)

  replicated, sharded = PartitionSpec(), PartitionSpec(axis)
  # check_vma=False: the chunk loop's lax.cond/scan mix per-device and
  # replicated values, which is fine here (the outputs are replicated by the
  # psum and all_gather) but which the varying-axes checker rejects.
  sums, per_client = jax.shard_map(
      local, mesh=mesh, in_specs=(replicated, sharded, sharded, sharded),
      out_specs=(replicated, replicated), check_vma=False)(shared, padded, padded_active, valid)
  return sums, jax.tree.map(lambda x: x[:k], per_client)


def map_clients(fn: Callable[[Any, Any], Any], shared: Any, clients: Any, *,
                chunk_size: int | str | None = None, mesh: Mesh | None = None,
                axis: str = CLIENT_AXIS) -> Any:
  """``fn(shared, client)`` for every client, ``vmap``ped in chunks; outputs ``[K, ...]``.

  Args:
    fn: one client's function; ``client`` is one slot of ``clients``.
    shared, clients, chunk_size, mesh, axis: as for :func:`map_reduce`.

  Returns:
    ``fn``'s outputs stacked over the ``K`` clients.
  """
  def chunk_fn(shared, chunk, valid):
    del valid
    return (), jax.vmap(fn, in_axes=(None, 0))(shared, chunk)

  return map_reduce(chunk_fn, shared, clients, chunk_size=chunk_size, mesh=mesh, axis=axis)[1]


def _is_data(x: Any) -> bool:
  return isinstance(x, FederatedData)


def _local(chunk_fn, shared, clients, active, valid, chunk_size, model, device, skip):
  k = num_clients(clients)
  chunk = resolve_chunk_size(chunk_size, chunk_fn, shared, clients, model=model, device=device)
  num_chunks = math.ceil(k / chunk)

  def chunk_of(i):
    # Clients i*chunk .. i*chunk+chunk-1, gathered from the client axis;
    # slots past its end repeat its last client and are marked invalid.
    idx = i * chunk + jnp.arange(chunk)
    clamped = jnp.minimum(idx, k - 1)
    part, part_active, part_valid = jax.tree.map(
        lambda x: jnp.take(x, clamped, axis=0, mode="clip"), (clients, active, valid))
    part_valid = part_valid & (idx < k)
    return part, part_active & part_valid, part_valid

  sums_shape, outputs_shape = jax.eval_shape(
      lambda c: chunk_fn(shared, c[0], c[2]), chunk_of(0))
  zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)

  def run_chunk(carry, chunk_in):
    part, _, part_valid = chunk_in
    sums, outputs = chunk_fn(shared, part, part_valid)
    return jax.tree.map(jnp.add, carry, sums), outputs

  def skip_chunk(carry, chunk_in):
    del chunk_in
    return carry, zeros(outputs_shape)

  def chunk_step(carry, i):
    chunk_in = chunk_of(i)
    if not skip:
      return run_chunk(carry, chunk_in)
    return jax.lax.cond(jnp.any(chunk_in[1]), run_chunk, skip_chunk, carry, chunk_in)

  if num_chunks == 1:  # no scan
    sums, per_client = chunk_step(zeros(sums_shape), 0)
    return sums, jax.tree.map(lambda x: x[:k], per_client)
  sums, per_client = jax.lax.scan(chunk_step, zeros(sums_shape), jnp.arange(num_chunks))
  return sums, jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:k], per_client)


def all_finite(tree: Any) -> Any:
  """Whether every entry of every leaf of ``tree`` is finite.

  ``0 * x`` is exactly 0 for every finite ``x`` and NaN for NaN/Inf, so one
  float sum flags any non-finite entry (on XLA:CPU about 3x faster than a
  boolean ``all(isfinite(x))``).

  Args:
    tree: a pytree of arrays.

  Returns:
    A ``bool`` scalar (True for an empty tree).
  """
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.bool_(True)
  return jnp.isfinite(sum(jnp.sum(jnp.asarray(x, jnp.float32) * 0.0) for x in leaves))


def finite_clients(fn: Callable[[Any], Any], tree: Any) -> Any:
  """``fn(finite)`` with ``finite: bool[C]`` flagging the clients whose ``tree`` is finite.

  The common case costs one pass: if the sum over clients of ``tree`` (a
  product with ones, fast on every backend) is finite, every client is, and
  ``fn`` gets a constant all-True mask (so masking by it folds away); only
  a chunk that fails this test pays the per-client check.

  Args:
    fn: ``fn(finite) -> out``, traced for both cases (its outputs must have
      the same structure).
    tree: a pytree of ``[C, ...]`` arrays (e.g. the chunk's deltas, weights,
      losses and new client states).

  Returns:
    ``fn``'s output.
  """
  leaves = jax.tree.leaves(tree)
  c = jnp.shape(leaves[0])[0]
  every = jnp.ones((c,), bool)
  ones = every.astype(jnp.float32)
  summed = [jnp.tensordot(ones, jnp.asarray(x, jnp.float32), axes=1) if jnp.ndim(x) > 1
            else x for x in leaves]
  return jax.lax.cond(all_finite(summed), lambda: fn(every),
                      lambda: fn(jax.vmap(all_finite)(tree)))
