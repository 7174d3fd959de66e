"""What the hardware decides: the per-platform defaults behind the ``"auto"`` settings.

Four choices of fedjax_lite depend on the machine, not on the mathematics
(each computes the same result up to float rounding):

* ``chunk_size="auto"`` of :func:`fedjax_lite.build_federated_algorithm`: how
  many clients one vmapped chunk holds (:func:`auto_chunk_size`);
* ``grad_mode="auto"`` of :func:`fedjax_lite.build_client_update`: per-example
  or batch gradients (:func:`fedjax_lite.client.resolve_grad_mode`);
* the shuffle of :func:`fedjax_lite.client.shuffle_order`: a pairwise rank or a sort;
* the XLA options the round loops' steps are compiled with (:func:`jit`: on a
  CPU, LLVM's optimization level 1, which compiles faster and ran the
  workloads as fast).

Each is read from :data:`TUNING` for the platform the program is traced for
(``jax.default_backend()``: ``"cpu"``, ``"gpu"``, ``"tpu"``; a mesh's own
devices for the chunk size).

**Chunk size.** On a CPU a chunk aims at a cache-sized working set
(:data:`CPU_CHUNK_BYTES`), measured fastest on x86 servers. On an accelerator
it is sized from the device's memory: :data:`ACCELERATOR_MEMORY_FRACTION` of
what is free when the round is traced (``memory_stats()``: ``bytes_limit -
bytes_in_use``, so the population and anything else already on the device are
left alone), less the cohort's own data, divided by an estimate of one
client's working set: twice the peak of live values when one client's update
is traced (see :func:`jaxpr_bytes`). The other half is left to XLA's own
buffers and to the estimate's error. So a cohort that fits is one vmapped chunk, and a larger one
is processed in as few chunks as fit.

**Gradient mode and shuffle.** The CPU thresholds were measured on a 2-core
x86 CPU (see the comments of :data:`TUNING`). The accelerator rows repeat them
until they are measured: ``make bench-gpu`` times both gradient modes and
both shuffles side by side on the card (the report's "choices" table).
"""

import math
from typing import Any, NamedTuple

import jax
import jax.extend.core as jax_core

from fedjax_lite._types import Params


class Tuning(NamedTuple):
  """One platform's defaults for the ``"auto"`` settings.

  Attributes:
    per_example_max_leaf: ``grad_mode="auto"`` takes per-example gradients
      when no parameter leaf has more elements than this, else batch
      gradients.
    rank_shuffle_max_examples: :func:`fedjax_lite.client.shuffle_order` ranks by
      pairwise comparison up to this many padded examples per client, and
      sorts above it.
    chunk_bytes: the working-set target of one chunk of clients, or ``None``
      to size chunks from the device's free memory (accelerators).
    compiler_options: XLA options the round loops' compiled steps
      (:func:`fedjax_lite.run_rounds`, :func:`fedjax_lite.run_sweep`) are
      compiled with, as ``(name, value)`` pairs.
  """

  per_example_max_leaf: int
  rank_shuffle_max_examples: int
  chunk_bytes: int | None
  compiler_options: tuple[tuple[str, Any], ...] = ()


# Measured on a 2-core x86 CPU: W1's 784-200-200-10 MLP ran best at 8-12
# clients per chunk (3.4 MB each), W2's logistic regression at 250-500 (96 KB
# each) and 2x slower at 1900: about a fast cache's worth (L2 plus a share of
# L3). Logistic regression 60->10 (600-element kernel, batch 8) ran 2x faster
# with per-example gradients; the MLP (batch 16) 3x slower. The pairwise rank
# was about 15x faster than XLA's comparator sort at 32 examples; its memory
# grows with the square, hence the cap.
CPU_CHUNK_BYTES = 32 * 2**20

# LLVM at optimization level 1 instead of 2: on a 2-core x86 CPU the default
# run's first round compiled in 1.33 s instead of 2.02 s and W2's in 2.0 s
# instead of 2.5 s, while W1's and W2's rounds ran as fast (0.125 against
# 0.124 s; 0.036 against 0.037 s): their time is in XLA's matrix kernels, not
# in generated loops.
CPU_COMPILER_OPTIONS = (("xla_backend_optimization_level", 1),)

TUNING: dict[str, Tuning] = {
    "cpu": Tuning(per_example_max_leaf=4096, rank_shuffle_max_examples=128,
                  chunk_bytes=CPU_CHUNK_BYTES, compiler_options=CPU_COMPILER_OPTIONS),
}
# Any other platform (gpu, tpu, ...): chunks sized from device memory; the
# gradient and shuffle thresholds are the CPU's until measured on the card.
ACCELERATOR_TUNING = Tuning(per_example_max_leaf=4096, rank_shuffle_max_examples=128,
                            chunk_bytes=None)

# The share of an accelerator's free memory (at trace time) that the chunks of
# a round may take; the rest is headroom for XLA's buffers and the estimate.
ACCELERATOR_MEMORY_FRACTION = 0.5

# The traced estimate (jaxpr_bytes of one client's update) is multiplied by
# this: XLA adds layout copies and convolution workspaces that a jaxpr does not
# show (measured on a CPU: a small CNN's vmapped round took 1.46x the estimate
# per client; an MLP's and a logistic regression's, 0.3x and 0.14x).
TRACED_ESTIMATE_FACTOR = 2

# Budget when an accelerator does not report its memory (``memory_stats()``
# is None on some plugins).
ACCELERATOR_FALLBACK_BYTES = 2**30


def current_platform() -> str:
  """The platform programs are traced for now: ``jax.default_backend()``.

  Returns:
    ``"cpu"``, ``"gpu"``, ``"tpu"``, ...
  """
  return jax.default_backend()


def jit(fun: Any, **kwargs: Any) -> Any:
  """``jax.jit(fun, **kwargs)`` with the platform's :attr:`Tuning.compiler_options`.

  For top-level programs only (JAX refuses options on a nested jit): the
  round loops' steps use it; ``algorithm.round`` stays a plain ``jax.jit``
  so it can be called inside other programs.

  Args:
    fun: the function.
    **kwargs: more ``jax.jit`` arguments.

  Returns:
    The jitted function.
  """
  options = dict(tuning().compiler_options)
  return jax.jit(fun, compiler_options=options or None, **kwargs)


def tuning(platform: str | None = None) -> Tuning:
  """The :class:`Tuning` of ``platform``.

  Args:
    platform: a platform name; ``None``: :func:`current_platform`.

  Returns:
    ``TUNING[platform]``, or :data:`ACCELERATOR_TUNING` for a platform not in
    :data:`TUNING`.
  """
  return TUNING.get(platform or current_platform(), ACCELERATOR_TUNING)


class DeviceMemory(NamedTuple):
  """What a device says about its memory (see :func:`device_memory`).

  Attributes:
    platform: the device's platform, e.g. ``"cpu"`` or ``"gpu"``.
    bytes_limit: the memory the device's allocator may use, or ``None`` when
      the device does not report it (CPUs).
    bytes_in_use: bytes held by live buffers now.
  """

  platform: str
  bytes_limit: int | None = None
  bytes_in_use: int = 0


def device_memory(device: Any = None) -> DeviceMemory:
  """Reads a device's platform and memory figures (``device.memory_stats()``).

  Args:
    device: a ``jax.Device``; ``None``: the first device of the default
      backend.

  Returns:
    A :class:`DeviceMemory`; ``bytes_limit`` is ``None`` when the device
    reports no memory statistics.
  """
  device = jax.devices()[0] if device is None else device
  stats = memory_stats(device)
  limit = stats.get("bytes_limit")
  return DeviceMemory(device.platform, None if limit is None else int(limit),
                      int(stats.get("bytes_in_use", 0)))


def memory_stats(device: Any) -> dict[str, Any]:
  """``device.memory_stats()``, or ``{}`` where the backend has none.

  Args:
    device: a ``jax.Device``.

  Returns:
    The statistics dict (``bytes_limit``, ``bytes_in_use``,
    ``peak_bytes_in_use``, ...); empty on a backend that returns ``None`` or
    raises.
  """
  try:
    return device.memory_stats() or {}
  except Exception:  # some backends raise instead of returning None
    return {}


def tree_bytes(tree: Any) -> int:
  """Bytes of a pytree of arrays (or ``ShapeDtypeStruct``s); only shapes are read.

  Args:
    tree: any pytree whose leaves have ``shape`` and ``dtype``.

  Returns:
    The sum over leaves of ``size * itemsize``.
  """
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def jaxpr_bytes(closed_jaxpr: Any) -> int:
  """The peak bytes of live values of a traced function: an estimate of its working set.

  A linear scan over the jaxpr's equations in program order: the inputs are
  held throughout, each value is live from the equation that makes it to its
  last use, and an equation with a body (a scan's or while loop's iteration, a
  branch, a nested jit) adds that body's own peak while it runs. XLA fuses
  most element-wise intermediates away, so a compiled program usually needs
  less; unlike a count of parameter-sized buffers, this sees activations (a
  convolution's feature maps), which can dwarf a model's parameters.

  Args:
    closed_jaxpr: e.g. ``jax.make_jaxpr(fn)(*args)``.

  Returns:
    Bytes.
  """
  jaxpr = getattr(closed_jaxpr, "jaxpr", closed_jaxpr)
  return _peak_live_bytes(jaxpr)


def _var_bytes(v) -> int:
  aval = getattr(v, "aval", None)
  try:
    return math.prod(aval.shape) * aval.dtype.itemsize
  except (AttributeError, TypeError):  # tokens, extended dtypes (PRNG keys): negligible
    return 0


def _is_var(v) -> bool:
  return isinstance(v, jax_core.Var)


def _sub_jaxprs(value):
  if isinstance(value, jax_core.Jaxpr):
    yield value
  elif isinstance(value, jax_core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def _peak_live_bytes(jaxpr) -> int:
  last_use = {}
  for i, eqn in enumerate(jaxpr.eqns):
    for v in eqn.invars:
      if _is_var(v):
        last_use[v] = i
  for v in jaxpr.outvars:
    if _is_var(v):
      last_use[v] = len(jaxpr.eqns)
  held = set(jaxpr.invars) | set(jaxpr.constvars)
  live = sum(_var_bytes(v) for v in held)
  peak = live
  for i, eqn in enumerate(jaxpr.eqns):
    body = max((_peak_live_bytes(sub) for param in eqn.params.values()
                for sub in _sub_jaxprs(param)), default=0)
    made = sum(_var_bytes(v) for v in eqn.outvars)
    peak = max(peak, live + body + made)
    live += made
    dying = {v for v in (*eqn.invars, *eqn.outvars)
             if _is_var(v) and v not in held and last_use.get(v, i) == i}
    live -= sum(_var_bytes(v) for v in dying)
  return peak


def _client_bytes_estimate(params: Params, example_axis: int, data_bytes: int,
                           platform: str) -> int:
  """Shape-only estimate of one client's working set (see :func:`auto_chunk_size`)."""
  leaves = jax.tree.leaves(params)
  model = tree_bytes(params)
  per_client = 4 * model + data_bytes
  if max((math.prod(x.shape) for x in leaves), default=0) <= tuning(platform).per_example_max_leaf:
    per_client += example_axis * model
  return per_client


def _client_data_bytes(arrays: Any) -> int:
  """One client's padded data: the bytes of each array past its leading client axis."""
  return sum(math.prod(x.shape[1:]) * x.dtype.itemsize for x in arrays)


def auto_chunk_size(params: Params, cohort: Any, budget_bytes: int | None = None, *,
                    memory: DeviceMemory | None = None, client_bytes: int | None = None,
                    reserved_bytes: int = 0) -> int:
  """Clients per vmapped chunk for this platform (see the module docstring).

  A client's working set is estimated from shapes as four model copies (its
  parameters, gradient, optimizer state and delta) plus its padded data, plus
  one model copy per padded example for models small enough for per-example
  gradients (see :func:`fedjax_lite.client.masked_mean_grad`); on an accelerator the
  larger of that and :data:`TRACED_ESTIMATE_FACTOR` times ``client_bytes``
  (the round passes :func:`jaxpr_bytes` of one client's update). Only shapes
  are read, so it works on tracers.

  Args:
    params: the model parameters (arrays or ``ShapeDtypeStruct``s).
    cohort: the cohort, a :class:`fedjax_lite.FederatedData` (only its arrays'
      shapes are read; any other pytree with a leading client axis counts as
      data of one example per client).
    budget_bytes: the working-set target of one chunk. ``None`` (the
      default): the platform's: :data:`CPU_CHUNK_BYTES` on a CPU;
      :data:`ACCELERATOR_MEMORY_FRACTION` of the device's free memory less
      ``reserved_bytes`` on an accelerator (:data:`ACCELERATOR_FALLBACK_BYTES`
      if it reports none).
    memory: the device's :class:`DeviceMemory`; ``None``: read now from the
      default device (:func:`device_memory`). Give one to plan for another
      device, or in tests.
    client_bytes: a known working set of one client, used on accelerators
      when larger than the shape estimate.
    reserved_bytes: bytes the round needs besides its chunks (the gathered
      cohort; a stacked aggregator's per-client deltas), taken off the free
      memory of an accelerator.

  Returns:
    A chunk size ``>= 1`` (callers cap it at the cohort size).
  """
  memory = device_memory() if memory is None else memory
  if isinstance(getattr(cohort, "arrays", None), dict):
    arrays = list(cohort.arrays.values())
    example_axis = arrays[0].shape[1] if arrays else 1
  else:  # any pytree with a leading client axis
    arrays, example_axis = jax.tree.leaves(cohort), 1
  data = _client_data_bytes(arrays)
  per_client = _client_bytes_estimate(params, example_axis, data, memory.platform)
  chunk_bytes = tuning(memory.platform).chunk_bytes
  if chunk_bytes is None:  # an accelerator: a memory budget
    per_client = max(per_client, TRACED_ESTIMATE_FACTOR * (client_bytes or 0))
  if budget_bytes is None:
    if chunk_bytes is not None:
      budget_bytes = chunk_bytes
    elif memory.bytes_limit is None:
      budget_bytes = ACCELERATOR_FALLBACK_BYTES
    else:
      free = memory.bytes_limit - memory.bytes_in_use - reserved_bytes
      budget_bytes = int(ACCELERATOR_MEMORY_FRACTION * max(free, 0))
  return max(1, int(budget_bytes) // max(per_client, 1))


class MemoryEstimate(NamedTuple):
  """Predicted memory of one compiled round of :func:`fedjax_lite.run_rounds` (bytes).

  Attributes:
    arguments: what the round takes: the server state and the device-resident
      population.
    temporary: what it allocates while it runs: the gathered cohort and one
      chunk of clients' working sets.
    output: the new server state.
    total: ``arguments + temporary + output``, the sum XLA's
      ``memory_analysis()`` reports (donating the state may reuse some).
    chunk_size: the clients per chunk the estimate assumed.
  """

  arguments: int
  temporary: int
  output: int
  total: int
  chunk_size: int = 0


# Model copies one client of a chunk holds while it trains, besides its data: its
# parameters, their gradient and its new parameters or delta (XLA fuses the rest).
# Fitted on W1 (an MLP, batch gradients) and W2 (logistic regression, per-example
# gradients) on a CPU; benchmarks/memory_model.py checks it on W1-W3.
CLIENT_MODEL_COPIES = 3


def estimate_memory(state: Any, population: Any, cohort_size: int,
                    chunk_size: int | None = None) -> MemoryEstimate:
  """The memory one round of :func:`fedjax_lite.run_rounds` needs, from shapes alone.

  The round gathers its cohort from the population (``cohort_size`` clients'
  data) and trains it chunk by chunk; a chunk of ``C`` clients holds each
  client's data and :data:`CLIENT_MODEL_COPIES` copies of the model. Only
  shapes are read (arrays or ``ShapeDtypeStruct``s).

  Args:
    state: the server state (e.g. ``algorithm.init(params)``); ``state.params``
      is the model.
    population: the :class:`~fedjax_lite.FederatedData` on the device.
    cohort_size: the round's cohort slots.
    chunk_size: clients per chunk (default: :func:`auto_chunk_size`, as the
      round chooses it, capped at the cohort).

  Returns:
    The :class:`MemoryEstimate`.
  """
  params = state.params
  model = tree_bytes(params)
  data = _client_data_bytes(population.arrays.values())
  if chunk_size is None:
    cohort = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((cohort_size,) + tuple(x.shape[1:]), x.dtype),
        population)
    chunk_size = auto_chunk_size(params, cohort)
  chunk = min(int(chunk_size), int(cohort_size))
  state_bytes = tree_bytes(state)
  arguments = state_bytes + tree_bytes(population)
  # Each cohort slot also gathers its example count and id (8 bytes).
  temporary = cohort_size * (data + 8) + chunk * (data + CLIENT_MODEL_COPIES * model)
  return MemoryEstimate(arguments, temporary, state_bytes,
                        arguments + temporary + state_bytes, chunk)
