"""The one recorder of a run's rounds, shared by single runs and sweeps.

A single run is recorded as one experiment, a sweep as ``S``; either way the
:class:`Recorder` keeps, per experiment, the metrics rows (in memory and in
its ``metrics.jsonl``), evaluates on the rounds ``eval_every`` asks for,
feeds the ``--log`` loggers, checkpoints the (stacked) state every
``checkpoint_every`` rounds, at the end and when a stop signal came, and
finally writes each experiment's ``summary.json`` from the same rows, so the
summary always agrees with ``metrics.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_lite.experiment.dp import DPSetup
from fedjax_lite.experiment.outputs import (
    _append_row,
    _finish_run,
    _open_sinks,
    _resume_rows,
    _round_row,
    _write_run_config,
)
from fedjax_lite.experiment.runtime import Interrupted


class Recorder:
  """Rows, evaluations, loggers and checkpoints of one or more experiments.

  Args:
    config: the run's resolved configuration (its ``rounds``, ``eval_every``
      and ``checkpoint_every`` set the cadence).
    out: the run's output directory (holding ``checkpoint.ckpt``).
    experiments: per experiment, ``(directory, configuration, DP setup)``;
      a single run is ``[(out, config, dp)]``.
    evaluate: ``evaluate(i, state) -> {name: value}``, the evaluation entries
      of experiment ``i`` given the (stacked) state.
    main: whether this process writes (process 0 of a multi-process run);
      every process records and evaluates.
    checkpoint_meta: saved with every checkpoint besides its ``round``.
    received: ``received() -> signum | None``, whether a stop signal came.
    sinks: the list the loggers of ``--log`` are appended to (the caller
      closes them).
    log: where progress lines go.
    verbose: also log every row.
  """

  def __init__(self, config: dict[str, Any], out: Path,
               experiments: Sequence[tuple[Path, dict[str, Any], DPSetup | None]], *,
               evaluate: Callable[[int, Any], dict[str, float]], main: bool,
               checkpoint_meta: dict[str, Any], received: Callable[[], int | None],
               sinks: list[Any], log: Callable[[str], None], verbose: bool = False):
    self.config, self.out, self.main = config, out, main
    self.experiments = list(experiments)
    self.evaluate, self.received, self.log, self.verbose = evaluate, received, log, verbose
    self.checkpoint_meta = checkpoint_meta
    self.checkpoint_path = out / "checkpoint.ckpt"
    self.rows: list[list[dict[str, Any]]] = [[] for _ in self.experiments]
    self.sinks: list[list[Any]] = [[] for _ in self.experiments]
    self._all_sinks = sinks
    self._last_accuracy: list[float] = []

  def start(self, state: Any, start_round: int, ds: Any, mesh: Any = None) -> None:
    """Opens every experiment's files at ``start_round`` (before the first round).

    On ``--resume`` the rows already in the checkpoint are read back (and
    ``metrics.jsonl`` cut to them); each ``config.json`` is written, the
    loggers opened, and a round-``start_round`` checkpoint saved when there is
    none yet (from then on, a missing checkpoint means a deleted one).
    """
    from fedjax_lite import checkpoint

    for i, (d, c, dp) in enumerate(self.experiments):
      if self.main:
        d.mkdir(exist_ok=True)
      if self.config["resume"]:
        self.rows[i] = _resume_rows(d / "metrics.jsonl", start_round, write=self.main)
      if self.main:
        _write_run_config(d, c, ds, dp, mesh)
        self.sinks[i] = _open_sinks(c, d)
        self._all_sinks.extend(self.sinks[i])
    if self.main and not self.checkpoint_path.exists():
      checkpoint.save_checkpoint(self.checkpoint_path, state,
                                 {"round": start_round, **self.checkpoint_meta})

  def round(self, r: int, state: Any, metrics: Sequence[dict[str, float]]) -> dict[str, str] | None:
    """Records round ``r`` (0-based) given each experiment's training metrics.

    Args:
      r: the round just run.
      state: the (stacked) state after it.
      metrics: per experiment, the round's metrics (``train_loss``,
        ``num_clients``, ``num_examples``, ``seconds``, the aggregator's...).

    Returns:
      The progress bar's postfix (the latest eval accuracy, or its range over
      the experiments), or ``None`` before the first evaluation.

    Raises:
      Interrupted: after checkpointing, when a stop signal came.
    """
    evaluated = self.due("eval_every", r)
    accuracies = []
    for i, ((d, c, dp), m) in enumerate(zip(self.experiments, metrics, strict=True)):
      if "round_time" in m and "virtual_time" not in m:
        # A synchronous round on the virtual clock: the time since the run began.
        before = self.rows[i][-1]["virtual_time"] if self.rows[i] else 0.0
        m = {**m, "virtual_time": before + float(m["round_time"])}
      row = _round_row(c, dp, r, m)
      if evaluated:
        row.update(self.evaluate(i, state))
        accuracies.append(row.get("eval_accuracy", float("nan")))
      self.rows[i].append(row)
      if self.verbose:
        self.log(json.dumps(row if len(self.experiments) == 1 else {"experiment": i, **row}))
      for sink in self.sinks[i]:
        sink.log(row, r)
      if self.main:
        _append_row(d / "metrics.jsonl", row)
    if evaluated:
      self._last_accuracy = accuracies
    signum = self.received()
    if self.main and (self.due("checkpoint_every", r) or signum is not None):
      from fedjax_lite import checkpoint
      checkpoint.save_checkpoint(self.checkpoint_path, state,
                                 {"round": r + 1, **self.checkpoint_meta})
    if signum is not None:
      raise Interrupted(signum, r + 1, self.out)
    acc = [a for a in self._last_accuracy if not np.isnan(a)]
    if not acc:
      return None
    if len(self.experiments) == 1:
      return {"acc": f"{acc[0]:.3f}"}
    return {"acc": f"{min(acc):.3f}..{max(acc):.3f}"}

  def finish(self, ds: Any, rounds_completed: int, wall: float) -> list[dict[str, Any]]:
    """Each experiment's summary from its rows (written by the main process).

    Args:
      ds: the run's dataset (for the chance accuracy).
      rounds_completed: rounds the (stacked) state has done.
      wall: this invocation's wall time in seconds.

    Returns:
      The summaries, one per experiment.
    """
    return [_finish_run(c, d, ds, dp, rounds_completed, wall, rows, write=self.main)
            for (d, c, dp), rows in zip(self.experiments, self.rows, strict=True)]

  def due(self, every: str, r: int) -> bool:
    """Whether round ``r`` (0-based) is the last one or a multiple of ``config[every]``."""
    return _due(self.config, every, r)


def _due(config: dict[str, Any], every: str, r: int) -> bool:
  """Whether round ``r`` (0-based) is the last one or a multiple of ``config[every]``."""
  return r + 1 == config["rounds"] or bool(config[every] and (r + 1) % config[every] == 0)
