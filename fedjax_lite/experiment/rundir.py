"""A run's output directory: checked before anything runs, created exclusively, locked.

Each run owns its ``--out``: a default name cannot collide (time stamp and a
random suffix, created exclusively), and the process that writes a run holds
an ``fcntl`` lock on ``--out/.lock`` while it lives, so a second run aimed at
a live run's directory is refused (the lock goes with the process, even after
a SIGKILL). ``--overwrite`` says what it removes; ``--resume`` is refused when
the checkpoint is missing but metrics exist, or when ``--rounds`` is below the
rounds already done.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from fedjax_lite.experiment.schema import ConfigError

try:
  import fcntl
except ImportError:  # pragma: no cover - Windows: no run lock
  fcntl = None

RUN_FILES = ("metrics.jsonl", "summary.json", "curves.png", "checkpoint.ckpt", "config.json")
SWEEP_FILES = ("sweep.json", "sweep.png", "checkpoint.ckpt")
LOCK = ".lock"  # held (fcntl) by the process writing a run while it lives
_DEFAULT_OUTS: set[str] = set()  # --out paths this process named itself
_HELD: dict[str, Any] = {}  # out -> the open lock file


def check_output_dir(config: dict[str, Any]) -> Path:
  """Validates the output directory without writing anything.

  Sets ``config["out"]`` to a new ``runs/<dataset>-<algorithm>[-sweep]-<time>-
  <random>`` if it is ``None`` (created exclusively by
  :func:`prepare_output_dir`). Every process of a multi-process run calls it
  before JAX's runtime starts (so before process 0 writes anything).

  Returns:
    The output directory.

  Raises:
    ConfigError: if the path is a file; if a live run holds it; if it exists
      non-empty without ``resume`` or ``overwrite``; or if ``resume`` finds
      nothing to resume, metrics without a checkpoint, or more rounds done
      than ``rounds``.
  """
  sweep = bool(config.get("sweep"))
  if config["out"] is None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kind = "-sweep" if sweep else ""
    config["out"] = str(Path("runs") / f"{config['dataset']}-{config['algorithm']}{kind}-"
                        f"{stamp}-{secrets.token_hex(3)}")
    _DEFAULT_OUTS.add(config["out"])
  out = Path(config["out"])
  if config["resume"] and config["overwrite"]:
    raise ConfigError("--resume and --overwrite contradict each other; pick one.")
  if out.exists() and not out.is_dir():
    raise ConfigError(f"--out {out} exists and is not a directory.")
  holder = _lock_holder(out)
  if holder is not None:
    raise ConfigError(f"--out {out} belongs to a run that is still going ({holder}); wait "
                      "for it to end, or give another --out.")
  nonempty = out.is_dir() and any(p.name != LOCK for p in out.iterdir())
  if config["resume"]:
    _check_resumable(out, config, sweep)
  elif nonempty and not config["overwrite"]:
    raise ConfigError(
        f"--out {out} exists and is not empty; pass --resume to continue that run or "
        "--overwrite to replace it.")
  return out


def _check_resumable(out: Path, config: dict[str, Any], sweep: bool) -> None:
  from fedjax_lite import checkpoint

  saved = "sweep.json" if sweep else "config.json"
  if not (out / saved).is_file():
    other = "config.json" if sweep else "sweep.json"
    hint = ""
    if (out / other).is_file():
      hint = (" (it holds a single run: resume it without --sweep)" if sweep else
              " (it holds a sweep: resume it with the same --sweep options)")
    what = "--resume --sweep" if sweep else "--resume"
    raise ConfigError(f"{what}: {out} holds no {'sweep' if sweep else 'run'} to resume "
                      f"(no {saved}){hint}.")
  ckpt = out / "checkpoint.ckpt"
  if not ckpt.is_file():
    rounds = max((len(_rows(d / "metrics.jsonl")) for d in [out, *_sweep_dirs(out)]),
                 default=0)
    if rounds:
      raise ConfigError(
          f"--resume: {out} has metrics for {rounds} rounds but no checkpoint.ckpt, so the run "
          "cannot continue where it stopped. Restore the checkpoint, or start again with "
          "--overwrite.")
    return
  metadata = checkpoint.read_header(ckpt)["metadata"]  # a damaged file: CheckpointError
  try:
    done = int(metadata.get("round", 0))
  except (AttributeError, TypeError, ValueError):
    raise checkpoint.CheckpointError(f"checkpoint {ckpt} is corrupted: no round in its "
                                     "header.") from None
  if done > config["rounds"]:
    raise ConfigError(f"--resume: {out} has already run {done} rounds; --rounds "
                      f"{config['rounds']} is fewer. Give --rounds {done} or more.")


def _rows(path: Path) -> list[str]:
  try:
    return [line for line in path.read_text().splitlines() if line.strip()]
  except OSError:
    return []


def _lock_holder(out: Path) -> str | None:
  """Who holds ``out``'s lock (``"pid N on HOST"``), or ``None`` if no live run does."""
  path = out / LOCK
  if str(out) in _HELD or not path.is_file() or fcntl is None:
    return None
  try:
    with open(path, "a+") as f:
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        f.seek(0)
        return f.read().strip() or "another process"
      fcntl.flock(f, fcntl.LOCK_UN)
  except OSError:
    return None
  return None


def prepare_output_dir(config: dict[str, Any]) -> tuple[Path, list[str]]:
  """Validates (:func:`check_output_dir`), creates and locks the output directory.

  A directory this process named itself is created exclusively (a new name
  if another run took it). The lock (``.lock``, held until
  :func:`release_output_dir` or the process's end) makes another run aimed at
  it fail. With ``overwrite``, the outputs of the earlier run or sweep in it
  are deleted; with ``resume``, the summary and plot of the interrupted
  invocation are (they are written again at the end, so ``summary.json``
  always describes ``metrics.jsonl``).

  Returns:
    ``(out, removed)``: the directory and the files removed from it.

  Raises:
    ConfigError: as :func:`check_output_dir`, or if the directory is not
      writable.
  """
  out = check_output_dir(config)
  try:
    if config["out"] in _DEFAULT_OUTS:
      out = _create_fresh(out, config)
    else:
      out.mkdir(parents=True, exist_ok=True)
    _lock(out)
  except OSError as e:
    raise ConfigError(f"--out {out} is not writable: {e}") from e
  removed: list[str] = []
  if config["overwrite"]:
    for sub in _sweep_dirs(out):
      for name in RUN_FILES:
        if (sub / name).exists():
          removed.append(f"{sub.name}/{name}")
          (sub / name).unlink()
      with contextlib.suppress(OSError):
        sub.rmdir()  # only if nothing else is in it
    names = RUN_FILES + SWEEP_FILES
  elif config["resume"]:
    names = ("summary.json", "curves.png", "sweep.png")
  else:
    names = ()
  for name in dict.fromkeys(names):
    if (out / name).exists():
      (out / name).unlink()
      if config["overwrite"]:
        removed.append(name)
  return out, removed


def _create_fresh(out: Path, config: dict[str, Any]) -> Path:
  out.parent.mkdir(parents=True, exist_ok=True)
  for _ in range(100):
    try:
      out.mkdir()
      return out
    except FileExistsError:
      out = out.with_name(f"{out.name.rsplit('-', 1)[0]}-{secrets.token_hex(3)}")
      config["out"] = str(out)
      _DEFAULT_OUTS.add(config["out"])
  raise OSError(f"could not create a new directory next to {out}")


def _lock(out: Path) -> None:
  if fcntl is None or str(out) in _HELD:
    return
  f = open(out / LOCK, "a+")  # noqa: SIM115 - held open while the run lives
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    raise ConfigError(f"--out {out} belongs to a run that is still going ({holder}); wait "
                      "for it to end, or give another --out.") from None
  f.seek(0)
  f.truncate()
  f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
  f.flush()
  _HELD[str(out)] = f


def release_output_dir(out: str | Path) -> None:
  """Releases the lock :func:`prepare_output_dir` took (and removes ``.lock``).

  Args:
    out: the output directory.
  """
  f = _HELD.pop(str(out), None)
  if f is not None:
    with contextlib.suppress(OSError):
      (Path(out) / LOCK).unlink()
    f.close()


def _sweep_dirs(out: Path) -> list[Path]:
  """The experiment directories named in ``out/sweep.json`` (none if unreadable)."""
  try:
    names = [e["dir"] for e in json.loads((out / "sweep.json").read_text())["experiments"]]
  except (OSError, ValueError, KeyError, TypeError):
    return []
  return [out / n for n in names if isinstance(n, str) and n and Path(n).name == n
          and (out / n).is_dir()]


