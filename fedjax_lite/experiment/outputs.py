"""The files a run writes to its output directory.

``config.json``, the rows of
``metrics.jsonl`` (and cutting them back on ``--resume``), ``summary.json``
and the plots ``curves.png`` and ``sweep.png``.
"""

from __future__ import annotations

import contextlib
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_lite.experiment.config import log_sinks
from fedjax_lite.experiment.dp import DPSetup


def versions() -> dict[str, str]:
  import flax
  import jax
  import jaxlib
  import optax

  import fedjax_lite
  return {"fedjax_lite": fedjax_lite.__version__, "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "numpy": np.__version__, "python": platform.python_version()}


def _write_run_config(out: Path, config: dict[str, Any], ds, dp, mesh=None) -> None:
  import jax

  runtime = {"platform": jax.default_backend(), "processes": jax.process_count(),
             "devices": 1 if mesh is None else int(mesh.size)}
  (out / "config.json").write_text(json.dumps(
      {"config": config, "versions": versions(), "seed": config["seed"],
       "dataset_info": ds.info, "num_clients": ds.train.num_clients,
       "privacy": dp.describe() if dp else None, "runtime": runtime}, indent=1, default=str))


def _round_row(config: dict[str, Any], dp: DPSetup | None, r: int,
               m: dict[str, float]) -> dict[str, Any]:
  """The metrics.jsonl row of round ``r`` from its training metrics ``m``."""
  row = {"round": r, "train_loss": m.get("train_loss", float("nan")),
         "clients": int(m["num_clients"]), "examples": int(m["num_examples"]),
         "seconds": m["seconds"]}
  if dp:
    row["epsilon"] = dp.epsilon(r + 1)
  # The aggregator's metrics (DP noise, bits sent, clipped or selected
  # clients) and the algorithm's counts (stragglers dropped, malicious
  # clients, bits sent with error feedback).
  row.update({k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("aggregator/")})
  row.update({k: v for k, v in m.items()
              if k.startswith("num_") and k not in ("num_clients", "num_examples",
                                                     "num_nonfinite_clients")})
  row.update({k: m[k] for k in TIME_METRICS if k in m})
  return row


# The virtual clock's metrics of a row: a synchronous round's duration and the
# time since the run's start (virtual seconds), FedBuff's staleness and
# clients in flight.
TIME_METRICS = ("round_time", "virtual_time", "staleness_mean", "staleness_max",
                "clients_in_flight")


def _append_row(path: Path, row: dict[str, Any]) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")


_EVAL_PREFIXES = ("eval_", "central_", "train_eval_", "personal_", "finetune_")


def _finish_run(config: dict[str, Any], out: Path, ds, dp: DPSetup | None,
                rounds_completed: int, wall: float, rows: list[dict[str, Any]], *,
                write: bool = True) -> dict[str, Any]:
  """The summary of a run from its metrics ``rows``; with ``write``, also its files.

  The files are ``summary.json`` and ``curves.png``; in a multi-process run
  only process 0 writes them, and every process returns the same summary.
  """
  evals = [r for r in rows if "eval_accuracy" in r]
  summary = {
      "rounds_completed": rounds_completed,
      "rounds": config["rounds"],
      "finished": rounds_completed >= config["rounds"],
      "wall_seconds_this_invocation": wall,
      "train_seconds_total": float(sum(r["seconds"] for r in rows)),
      "final_train_loss": rows[-1]["train_loss"] if rows else None,
      **({k: v for k, v in evals[-1].items() if k.startswith(_EVAL_PREFIXES)}
         if evals else {}),
      "best_eval_accuracy": max((r["eval_accuracy"] for r in evals), default=None),
      "chance_accuracy": 1.0 / ds.num_classes,
      **({"virtual_time_total": rows[-1]["virtual_time"]}
         if rows and "virtual_time" in rows[-1] else {}),
      **({"epsilon": dp.epsilon(rounds_completed), "delta": config["delta"],
          "privacy": dp.describe()} if dp else {}),
      "out": str(out),
  }
  if not write:
    return summary
  (out / "summary.json").write_text(json.dumps(summary, indent=1))
  if rows:
    plot_curves(rows, out / "curves.png", title=f"{config['dataset']} / {config['model']} / "
                f"{config['algorithm']}")
  return summary


def _resume_rows(path: Path, upto_round: int, *, write: bool = True) -> list[dict[str, Any]]:
  """The metrics rows of rounds before ``upto_round`` (those in the checkpoint).

  With ``write``, the file is cut to them (the rows at or after
  ``upto_round`` are not in the checkpoint and will be computed again).
  """
  if not path.exists():
    return []
  keep, rows = [], []
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:  # a line cut short when the process was killed
      continue
    if row["round"] < upto_round:
      keep.append(line)
      rows.append(row)
  if write:
    path.write_text("".join(line + "\n" for line in keep))
  return rows


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
  """Writes ``curves.png``: train/eval loss and eval accuracy against rounds.

  A run on the virtual clock (rows with ``virtual_time``) gets a third panel:
  eval accuracy against virtual seconds.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  timed = "virtual_time" in rows[0]
  fig, axes = plt.subplots(1, 3 if timed else 2, figsize=(15 if timed else 10, 4))
  ax_loss, ax_acc = axes[:2]
  rounds = [r["round"] + 1 for r in rows]
  ax_loss.plot(rounds, [r["train_loss"] for r in rows], label="train loss (cohort)", lw=1)
  ev = [r for r in rows if "eval_loss" in r]
  if ev:
    ax_loss.plot([r["round"] + 1 for r in ev], [r["eval_loss"] for r in ev], "o-",
                 label="eval loss (clients' test data)")
    er = [r["round"] + 1 for r in ev]
    ax_acc.plot(er, [r["eval_accuracy"] for r in ev], "o-", label="eval accuracy (pooled)")
    if "eval_accuracy_p10" in ev[0]:
      ax_acc.fill_between(er, [r["eval_accuracy_p10"] for r in ev],
                          [r["eval_accuracy_p90"] for r in ev], alpha=0.25,
                          label="per-client accuracy, 10th-90th pct")
    if "central_accuracy" in ev[0]:
      ax_acc.plot(er, [r["central_accuracy"] for r in ev], "s--", label="central test accuracy")
  step = "server step" if "staleness_mean" in rows[0] else "round"
  ax_loss.set_xlabel(step)
  ax_loss.set_ylabel("loss")
  ax_acc.set_xlabel(step)
  ax_acc.set_ylabel("accuracy")
  ax_acc.set_ylim(0, 1)
  panels = [(ax_loss, "best"), (ax_acc, "lower right")]
  if timed:  # accuracy (or, before an evaluation, train loss) against virtual time
    ax_time = axes[2]
    if ev:
      ax_time.plot([r["virtual_time"] for r in ev], [r["eval_accuracy"] for r in ev], "o-",
                   label="eval accuracy (pooled)")
      ax_time.set_ylabel("accuracy")
      ax_time.set_ylim(0, 1)
    else:
      ax_time.plot([r["virtual_time"] for r in rows], [r["train_loss"] for r in rows], lw=1,
                   label="train loss (cohort)")
      ax_time.set_ylabel("loss")
    ax_time.set_xlabel("virtual time (s)")
    panels.append((ax_time, "lower right" if ev else "best"))
  for ax, where in panels:
    if ax.get_legend_handles_labels()[0]:  # no evaluation yet: no accuracy curve
      ax.legend(loc=where)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_sweep(curves: list[tuple[str, list[dict[str, Any]]]], path: Path,
               title: str = "") -> None:
  """Writes ``sweep.png``: every experiment's train loss and eval accuracy against rounds.

  Args:
    curves: ``(label, metrics rows)`` per experiment.
    path: the PNG to write.
    title: the figure's title.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  for label, rows in curves:
    line, = ax_loss.plot([r["round"] + 1 for r in rows], [r["train_loss"] for r in rows],
                         lw=1, label=label)
    ev = [r for r in rows if "eval_accuracy" in r]
    ax_acc.plot([r["round"] + 1 for r in ev], [r["eval_accuracy"] for r in ev], "o-", ms=3,
                color=line.get_color(), label=label)
  ax_loss.set_xlabel("round")
  ax_loss.set_ylabel("train loss (cohort)")
  ax_acc.set_xlabel("round")
  ax_acc.set_ylabel("eval accuracy (pooled)")
  ax_acc.set_ylim(0, 1)
  if len(curves) <= 16:
    ax_acc.legend(loc="lower right", fontsize="x-small", ncol=2 if len(curves) > 8 else 1)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _open_sinks(config: dict[str, Any], out: Path) -> list[Any]:
  """The loggers ``--log`` asks for, writing under ``out``."""
  from fedjax_lite import loggers

  sinks = []
  for sink in log_sinks(config):
    if sink == "tensorboard":
      sinks.append(loggers.TensorBoard(out / "tensorboard"))
    else:
      sinks.append(loggers.WandB(out, config=config, name=out.name))
  return sinks


def _close(sinks: list[Any]) -> None:
  for sink in sinks:
    with contextlib.suppress(Exception):  # a logger's failure must not hide the run's
      sink.close()
