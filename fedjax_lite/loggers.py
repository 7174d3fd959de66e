"""Round metrics to TensorBoard or Weights & Biases, as ``run_rounds`` callbacks.

Each logger is a callable ``logger(round, state, metrics)``, the callback
:func:`fedjax_lite.run_rounds` and :func:`fedjax_lite.run_sweep` take, and also
has ``log(row, step)`` for a dict of numbers (what ``fedjax-lite run --log``
uses for its ``metrics.jsonl`` rows, evaluations included) and ``close()``.
Only scalar numbers are logged; arrays and strings are skipped. The packages
are optional: ``pip install 'fedjax-lite[log]'`` (tensorboardX) or
``pip install wandb``; without them, creating a logger raises ``ImportError``
with that command.

Example::

    tb = fl.loggers.TensorBoard("runs/tb")
    state, history = fl.run_rounds(algo, state, data, num_rounds=100, cohort_size=10,
                                   key=key, callback=tb)
    tb.close()
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedjax_lite._optional import require

KINDS = ("tensorboard", "wandb")


def _scalars(row: Mapping[str, Any]) -> dict[str, float]:
  out = {}
  for key, value in row.items():
    try:
      v = float(value) if isinstance(value, numbers.Real) or getattr(value, "ndim", 1) == 0 \
          else None
    except (TypeError, ValueError):
      v = None
    if v is not None and not isinstance(value, bool) and math.isfinite(v):
      out[key] = v
  return out


class TensorBoard:
  """Writes scalars to TensorBoard event files (with tensorboardX).

  Args:
    logdir: the event files' directory (created).
  """

  def __init__(self, logdir: str | Path):
    SummaryWriter = require("tensorboardX", "TensorBoard logging",  # noqa: N806
                            "pip install 'fedjax-lite[log]' (or pip install tensorboardX)."
                            ).SummaryWriter
    self.logdir = Path(logdir)
    self._writer = SummaryWriter(logdir=str(self.logdir))

  def log(self, row: Mapping[str, Any], step: int) -> None:
    """Logs the row's scalar numbers at ``step``.

    Args:
      row: ``{name: value}``; non-scalars are skipped.
      step: the round (x axis).
    """
    for key, value in _scalars(row).items():
      self._writer.add_scalar(key, value, step)
    self._writer.flush()

  def __call__(self, r: int, state: Any, metrics: Mapping[str, Any]) -> None:
    """The ``run_rounds`` callback: logs round ``r``'s metrics."""
    del state
    self.log(metrics, r)

  def close(self) -> None:
    """Flushes and closes the event file."""
    self._writer.close()


class WandB:
  """Logs scalars to a Weights & Biases run (``WANDB_MODE=offline`` keeps it local).

  Args:
    directory: where wandb keeps its files.
    config: the run's configuration, recorded with it.
    name: the run's display name.
    project: the W&B project (default ``"fedjax-lite"``).
  """

  def __init__(self, directory: str | Path, config: Mapping[str, Any] | None = None,
               name: str | None = None, project: str = "fedjax-lite"):
    wandb = require("wandb", "W&B logging", "pip install wandb.")
    Path(directory).mkdir(parents=True, exist_ok=True)
    self._run = wandb.init(project=project, dir=str(directory), name=name,
                           config=dict(config or {}), reinit="create_new")

  def log(self, row: Mapping[str, Any], step: int) -> None:
    """Logs the row's scalar numbers at ``step`` (see :meth:`TensorBoard.log`)."""
    self._run.log(_scalars(row), step=step)

  def __call__(self, r: int, state: Any, metrics: Mapping[str, Any]) -> None:
    """The ``run_rounds`` callback: logs round ``r``'s metrics."""
    del state
    self.log(metrics, r)

  def close(self) -> None:
    """Finishes the W&B run."""
    self._run.finish()


def available(kind: str) -> str | None:
  """``None`` if logger ``kind`` can be used here, else the install command it needs.

  Args:
    kind: one of :data:`KINDS`.

  Returns:
    ``None`` or a one-line hint.
  """
  import importlib.util  # noqa: PLC0415

  module = {"tensorboard": "tensorboardX", "wandb": "wandb"}[kind]
  if importlib.util.find_spec(module) is not None:
    return None
  return ("pip install 'fedjax-lite[log]'" if kind == "tensorboard" else "pip install wandb")
