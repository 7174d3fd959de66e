"""The start of a run: JAX's multi-process runtime, the client mesh and ``--out``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_lite.experiment.config import PROCESS_KEYS, ConfigError, _check_resume
from fedjax_lite.experiment.rundir import check_output_dir, prepare_output_dir


def start_distributed(config: dict[str, Any]) -> bool:
  """Starts JAX's multi-process runtime if the configuration names a coordinator.

  It must come before any JAX computation; :func:`run_experiment` calls it
  first. ``coordinator = "auto"`` calls ``jax.distributed.initialize()``,
  which detects SLURM, Open MPI and Cloud TPU and reads
  ``JAX_COORDINATOR_ADDRESS`` (``num_processes``/``process_id``, when given,
  override what it detects); ``"HOST:PORT"`` calls
  :func:`fedjax_lite.initialize_distributed`. Both select the gloo CPU
  collectives, so processes on CPUs can communicate. A runtime this process
  has already started is used as it is.

  Args:
    config: a resolved configuration.

  Returns:
    Whether the configuration asks for the multi-process runtime.

  Raises:
    ConfigError: if the runtime cannot start, naming the flags and the fix.
  """
  coordinator, num, pid = (config.get(k) for k in PROCESS_KEYS)
  if coordinator is None:
    return False
  import jax

  import fedjax_lite as fl

  if jax.distributed.is_initialized():
    return True
  given = " ".join(f"--{k.replace('_', '-')} {v}"
                   for k, v in zip(PROCESS_KEYS, (coordinator, num, pid), strict=True)
                   if v is not None)
  try:
    if coordinator == "auto":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(num_processes=num, process_id=pid)
    else:
      fl.initialize_distributed(coordinator, num, pid)
  except (RuntimeError, ValueError, TypeError) as e:
    if coordinator == "auto":
      fix = ("--coordinator auto needs a cluster JAX can detect (SLURM, Open MPI, Cloud TPU, or "
             "JAX_COORDINATOR_ADDRESS with --num-processes and --process-id); elsewhere give "
             "--coordinator HOST:PORT --num-processes N --process-id I.")
    else:
      fix = ("Start every process with the same --coordinator and --num-processes and its own "
             "--process-id within the initialization timeout (300 s), with the port free on "
             "process 0's host and reachable from the others.")
    raise ConfigError(f"could not start JAX's multi-process runtime ({given}): {e} {fix}") from e
  return True


def _client_mesh(config: dict[str, Any]):
  """The mesh of the client axis the configuration asks for, or ``None`` (one device)."""
  import jax

  import fedjax_lite as fl

  devices = config["devices"]
  processes = jax.process_count()
  if devices is None and processes == 1 and config["coordinator"] is None:
    return None
  available = jax.device_count()
  n = available if devices in (None, "all") else devices
  if n > available:
    raise ConfigError(
        f"--devices {n}, but JAX sees {available} {jax.default_backend()} device(s). On a CPU, "
        f"set XLA_FLAGS=--xla_force_host_platform_device_count={n} in the environment before "
        f"starting (per process in a multi-process run); otherwise pass --devices {available} "
        "or --devices all.")
  if processes > 1 and n != available:
    raise ConfigError(
        f"--devices {n} in a run of {processes} processes: the mesh spans every process's "
        f"devices ({available} in all); drop --devices or pass --devices all.")
  return fl.client_mesh(n)


def enable_compilation_cache(directory: str | Path | None = None) -> Path:
  """Turns on JAX's persistent compilation cache for every program compiled from here on.

  Args:
    directory: where; default ``$JAX_COMPILATION_CACHE_DIR``, else
      ``jax-compile/`` under :func:`fedjax_lite.datasets.cache.default_cache_dir`.

  Returns:
    The directory.
  """
  import jax

  from fedjax_lite.datasets.cache import default_cache_dir

  path = Path(directory or os.environ.get("JAX_COMPILATION_CACHE_DIR")
              or default_cache_dir() / "jax-compile")
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return path


def _start(config: dict[str, Any], saved: str) -> tuple[Path, Any, bool, list[str]]:
  """Checks ``--out``, starts the multi-process runtime, builds the mesh, creates ``--out``.

  Every process checks the output directory (and a resume's saved
  configuration, in ``out / saved``) before the runtime starts, which waits
  for all of them, so none sees process 0's files; then process 0 alone
  creates the directory and tells the others whether it could.

  Returns:
    ``(out, mesh, main, removed)``: the output directory, the client mesh
    (``None`` without one), whether this process writes (process 0, which
    then holds the directory's lock), and the files ``--overwrite`` removed.
  """
  out = check_output_dir(config)
  if config["resume"]:
    _check_resume(json.loads((out / saved).read_text())["config"], config)
  start_distributed(config)
  if config.get("compile_cache", True) and os.environ.get("FEDJAX_LITE_COMPILE_CACHE") != "0":
    enable_compilation_cache()
  import jax

  mesh = _client_mesh(config)
  main = jax.process_index() == 0
  error, removed = None, []
  if main:
    try:
      out, removed = prepare_output_dir(config)
    except ConfigError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed and error is None:
      raise ConfigError(f"process 0 could not prepare --out {out} (its own error says why); "
                        "give every process the same, writable --out.")
  if error is not None:
    raise error
  return out, mesh, main, removed


def _load_state(path: Path, target: Any, mesh) -> Any:
  """The checkpointed state in ``target``'s structure; replicated on ``mesh`` if given."""
  import fedjax_lite as fl
  from fedjax_lite import checkpoint

  state, _ = checkpoint.load_checkpoint(path, target)
  return state if mesh is None else fl.replicate(state, mesh)


class Interrupted(Exception):  # noqa: N818 - it is not an error: the run stopped as asked
  """A run stopped at a round boundary after SIGINT or SIGTERM (its checkpoint is saved).

  Attributes:
    signum: the signal.
    rounds: the rounds completed (and checkpointed).
    out: the run's output directory.
  """

  def __init__(self, signum: int, rounds: int, out: Path):
    super().__init__(f"stopped by {signal.Signals(signum).name} after round {rounds}")
    self.signum, self.rounds, self.out = signum, rounds, out

  @property
  def exit_status(self) -> int:
    """``128 + signum``: 130 after Ctrl-C, 143 after SIGTERM."""
    return 128 + self.signum


@contextlib.contextmanager
def stop_signals():
  """While active, SIGINT and SIGTERM ask the run to stop at the next round boundary.

  Yields ``received() -> signum | None``. A second Ctrl-C stops at once
  (``KeyboardInterrupt``). Only in the main thread of a single-process run
  (elsewhere the default handlers stay and ``received`` is always ``None``).
  """
  import jax

  if threading.current_thread() is not threading.main_thread() or jax.process_count() > 1:
    yield lambda: None
    return
  received: list[int] = []

  def handler(signum, frame):
    del frame
    if received and signum == signal.SIGINT:
      raise KeyboardInterrupt
    received.append(signum)

  previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield lambda: received[0] if received else None
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
