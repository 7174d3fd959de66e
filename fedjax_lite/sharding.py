"""Scaling out: the client axis sharded over devices and hosts with JAX's own runtime.

fedjax_lite does not have a distributed engine of its own. A round built with
``build_federated_algorithm(..., mesh=mesh)`` runs its clients under
``jax.shard_map``: each device takes its slice of the cohort through the same
chunked, vmapped client loop as on one device, the per-device sums are
combined with one ``psum``, and the aggregator's finalize step (DP noise
included) and the server step run replicated, with the same keys as on one
device. Multi-host runs use JAX's multi-controller runtime: every process runs
the same program after :func:`initialize_distributed`, and the mesh spans the
devices of all processes.

Helpers:

* :func:`client_mesh`: a one-axis mesh over all (global) devices.
* :func:`pad_clients`: pads a population or cohort with empty padding clients
  (0 examples, client id ``-1``) to a multiple of the device count.
* :func:`shard_clients`: pads and places a population sharded over the mesh,
  so each device holds only its clients (memory scales with the devices);
  it works in multi-process runs, where each process places its own shards.
* :func:`replicate`: places a pytree (e.g. the initial params) on every device.
* :func:`num_real_clients`: the population size without trailing padding,
  which is what samplers draw from.
* :func:`initialize_distributed`: ``jax.distributed.initialize`` plus CPU
  collectives (gloo), for multi-process runs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fedjax_lite._validate import check_int
from fedjax_lite.data import FederatedData

CLIENT_AXIS = "clients"
PADDING_CLIENT_ID = -1


def client_mesh(num_devices: int | None = None, axis: str = CLIENT_AXIS) -> Mesh:
  """A one-axis device mesh for sharding clients.

  Args:
    num_devices: how many of ``jax.devices()`` (all processes' devices, in
      JAX's order) to use; default all.
    axis: the mesh axis name (pass the same name to
      :func:`fedjax_lite.build_federated_algorithm` as ``client_axis``).

  Returns:
    A ``jax.sharding.Mesh`` of shape ``(num_devices,)``.
  """
  devices = jax.devices()
  if num_devices is None:
    num_devices = len(devices)
  check_int("num_devices", num_devices, minimum=1)
  if num_devices > len(devices):
    raise ValueError(
        f"`num_devices`={num_devices} but JAX sees {len(devices)} device(s). On a CPU, set "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} before importing jax.")
  return Mesh(np.array(devices[:num_devices]), (axis,))


def _axis_size(mesh: Mesh, axis: str) -> int:
  if axis not in mesh.shape:
    raise ValueError(f"the mesh has axes {tuple(mesh.shape)}; there is no client axis {axis!r}. "
                     "Pass client_axis= the name of the axis to shard clients over.")
  return mesh.shape[axis]


def pad_clients(data: FederatedData, multiple: int) -> FederatedData:
  """Appends empty padding clients so the client count is a multiple of ``multiple``.

  Padding clients have no examples (so zero weight and a zero delta in every
  round, and no evaluation count) and client id ``-1``. Works on NumPy and
  JAX arrays and inside ``jax.jit``.

  Args:
    data: a population or cohort with ``N`` clients.
    multiple: e.g. the number of devices on the client axis.

  Returns:
    The data with ``ceil(N / multiple) * multiple`` clients; the first ``N``
    are unchanged.
  """
  check_int("multiple", multiple, minimum=1)
  pad = -data.num_clients % multiple
  if not pad:
    return data
  xp = jnp if isinstance(data.num_examples, jax.Array) else np

  def extend(x, value=0):
    return xp.concatenate([x, xp.full((pad,) + x.shape[1:], value, x.dtype)], axis=0)

  return FederatedData({k: extend(v) for k, v in data.arrays.items()},
                       extend(data.num_examples), extend(data.client_ids, PADDING_CLIENT_ID))


def shard_clients(data: FederatedData, mesh: Mesh, axis: str = CLIENT_AXIS) -> FederatedData:
  """Pads a population (:func:`pad_clients`) and shards its client axis over ``mesh``.

  Each device then holds ``ceil(N / D)`` clients. In a multi-process run every
  process passes the same (host) data and places only its own devices'
  shards. Sample from :func:`num_real_clients` clients (``run_rounds`` and
  ``run_sweep`` do), never from the padding.

  Args:
    data: the population, host (NumPy) or device arrays.
    mesh: e.g. :func:`client_mesh`.
    axis: the mesh axis to shard clients over.

  Returns:
    The padded population as global ``jax.Array`` s sharded ``P(axis)``.
  """
  data = pad_clients(jax.tree.map(np.asarray, data), _axis_size(mesh, axis))

  def place(x):
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(place, data)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of ``tree`` (e.g. params or a server state) on all devices of ``mesh``.

  In a multi-process run every process must pass the same values.

  Args:
    tree: a pytree of arrays.
    mesh: the device mesh (e.g. :func:`client_mesh`).

  Returns:
    ``tree`` with every leaf a fully replicated ``jax.Array`` on ``mesh``.
  """
  sharding = NamedSharding(mesh, PartitionSpec())

  def place(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(place, tree)


def num_real_clients(data: FederatedData) -> int:
  """The number of clients before trailing padding (client id ``-1``) added by :func:`pad_clients`.

  Args:
    data: a population or cohort (leading client axis ``N``).

  Returns:
    The count of real clients (``N`` when there is no padding).

  Raises:
    ValueError: if padding clients are not all at the end.
  """
  ids = data.client_ids
  if isinstance(ids, jax.Array) and not ids.is_fully_addressable:
    count, first_pad = jax.jit(_padding_stats)(ids)
  else:
    count, first_pad = _padding_stats(jnp.asarray(ids))
  count, first_pad = int(count), int(first_pad)
  if count and first_pad != data.num_clients - count:
    raise ValueError("client id -1 marks padding clients, which must come after every real "
                     "client; give real clients non-negative ids.")
  return data.num_clients - count


def _padding_stats(ids):
  pad = ids == PADDING_CLIENT_ID
  first = jnp.argmax(pad) if ids.shape[0] else 0
  return jnp.sum(pad), jnp.where(jnp.any(pad), first, ids.shape[0])


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int,
                           **kwargs: Any) -> None:
  """Starts JAX's multi-controller runtime for a multi-process run.

  Calls ``jax.distributed.initialize`` (which must come before any other JAX
  computation) and, so that CPU-only runs can communicate, selects the gloo
  CPU collectives. On GPU clusters under SLURM or Open MPI and on Cloud TPU,
  ``jax.distributed.initialize()`` with no arguments detects everything itself;
  this helper is for explicit addresses (and tests).

  Args:
    coordinator_address: ``"host:port"`` of process 0.
    num_processes: total processes.
    process_id: this process's index, ``0 <= process_id < num_processes``.
    **kwargs: passed on to ``jax.distributed.initialize`` (e.g.
      ``local_device_ids``, ``initialization_timeout``).

  Returns:
    None. Afterwards ``jax.devices()`` lists every process's devices.
  """
  check_int("num_processes", num_processes, minimum=1)
  check_int("process_id", process_id, minimum=0)
  if process_id >= num_processes:
    raise ValueError(f"`process_id`={process_id} must be below `num_processes`={num_processes}.")
  if ":" not in coordinator_address:
    raise ValueError(f"`coordinator_address` must be 'host:port'; got {coordinator_address!r}.")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                             process_id=process_id, **kwargs)
