"""The main job: configure, train, evaluate, checkpoint and report a federated run.

:func:`run_experiment` is what ``fedjax-lite run`` calls. A run is described
by a flat configuration (:data:`DEFAULTS`; a TOML file and command-line flags
override it) and writes to its output directory:

* ``config.json``: the resolved configuration, library versions and seed;
* ``metrics.jsonl``: one JSON object per round (``round``, ``train_loss``,
  ``clients``, ``examples``, ``seconds``; on evaluation rounds ``eval_loss``,
  ``eval_accuracy``, the per-client accuracy percentiles, and the central
  test set's ``central_loss``/``central_accuracy`` where the dataset has one);
* ``summary.json``: final metrics, rounds, wall time;
* ``curves.png``: loss and accuracy against rounds;
* ``checkpoint.ckpt``: the latest state (every ``checkpoint_every`` rounds
  and at the end). ``--resume`` continues from it and reproduces exactly the
  parameters of an uninterrupted run.

``seed`` drives the model initialization and the client sampling, and the
data partition (or generation) unless ``data_seed`` is set.

Sweeps (``--sweep KEY=VALUES``, repeatable, or ``sweep`` in the TOML file as a
list ``["seed=0..15"]`` or a table ``{client_lr = [0.01, 0.1]}``) run ``S``
experiments as one vectorized program (:func:`fedjax_lite.run_sweep`).
``VALUES`` is an inclusive integer range ``a..b`` or a comma list; several
keys form their Cartesian product (the last key varying fastest). The
sweepable keys are :data:`SWEEPABLE`: ``seed``, ``client_lr``, ``server_lr``,
and under ``--dp`` ``noise_multiplier`` and ``clip`` (not with
``--adaptive-clip``, whose clip and noise split are computed on the host; a
noise sweep also excludes ``--target-epsilon``). All experiments share one
population: ``data_seed`` is pinned to the base configuration's
``data_seed``, or its ``seed``. Experiment ``s`` equals the single run of
the configuration in its ``config.json`` (up to float rounding). ``--out
DIR`` then holds one subdirectory per experiment (``000_seed=0/``, ...) with
the single-run files above (``seconds`` being the wall time of the round of
all experiments), plus:

* ``sweep.json``: the sweep, the base configuration and a table of every
  experiment's final metrics;
* ``sweep.png``: train loss and eval accuracy of every experiment against
  rounds;
* ``checkpoint.ckpt``: the stacked states of all experiments; ``--resume``
  (with the same ``--sweep``) continues the sweep exactly.

Scaling out (:mod:`fedjax_lite.sharding`): ``devices`` (``--devices N`` or
``all``) shards the client axis over a one-axis mesh of ``N`` devices: the
training population and the clients' test data are padded with empty clients
and sharded (:func:`fedjax_lite.shard_clients`), the central test set and the
state are replicated, and the round runs with ``mesh=``. Sampling, keys and
DP noise are those of the single-device run, so results equal it up to float
summation order; single runs and sweeps alike. ``coordinator``,
``num_processes`` and ``process_id`` (``--coordinator HOST:PORT
--num-processes N --process-id I``, all three; or ``--coordinator auto``,
where ``jax.distributed.initialize()`` detects SLURM, Open MPI or Cloud TPU
and reads ``JAX_COORDINATOR_ADDRESS``) start JAX's multi-process runtime
before anything else, and the mesh then spans every process's devices
(``devices`` defaults to all of them). Every process runs the same
configuration and computes the same rounds; only process 0 writes the
outputs and logs, and every process returns the same summary (up to wall
times, and a sweep's echo of the configuration holds each process's own
``process_id``). ``--resume`` makes every process load the checkpoint from
``--out``, so a multi-host resume needs ``--out`` on a shared filesystem.
These four keys may change on ``--resume``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import re
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_lite import presets

DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "model": "mlp",
    "algorithm": "fedavg",
    "rounds": 150,
    "clients_per_round": 10,
    "local_epochs": 2,
    "batch_size": 8,
    "client_lr": 0.05,
    "server_lr": None,
    "seed": 0,
    "data_seed": None,
    "eval_every": 10,
    "checkpoint_every": 10,
    "out": None,
    "resume": False,
    "overwrite": False,
    "num_clients": 50,
    "partition": "dirichlet",
    "alpha": 0.5,
    "shards_per_client": 2,
    "test_fraction": 0.2,
    "synthetic_alpha": 1.0,
    "synthetic_beta": 1.0,
    "data_dir": None,
    "max_examples_per_client": None,
    "hidden": None,
    "chunk_size": "auto",
    "progress": None,
    # Differential privacy (fedjax_lite.privacy).
    "dp": "none",
    "clip": 1.0,
    "noise_multiplier": None,
    "target_epsilon": None,
    "delta": 1e-5,
    "sampling": "fixed",
    "accountant": "rdp",
    "adaptive_clip": False,
    "target_quantile": 0.5,
    "local_dp": False,
    # Vectorized sweep: {key: [values]} (see the module docstring).
    "sweep": None,
    # Scaling out (see the module docstring): devices on the client axis, and
    # JAX's multi-process runtime.
    "devices": None,
    "coordinator": None,
    "num_processes": None,
    "process_id": None,
    # Algorithms beyond FedAvg, robust/compressed aggregation, attacks, local
    # work (fedjax_lite.presets).
    **presets.DEFAULTS,
    # Evaluation after local fine-tuning (epochs on each client's train split;
    # 0: off).
    "fine_tune_epochs": 0,
    # Also evaluate the global model on the training clients (train_eval_*:
    # the federated objective the algorithms minimize).
    "eval_train": False,
}

# Keys a sweep may vary: they change neither the population nor the shapes of
# the compiled round, and the round takes them as traced scalars.
SWEEPABLE = ("seed", "client_lr", "server_lr", "noise_multiplier", "clip")

# Probability bound of a Poisson draw overflowing the padded cohort (such a
# round is refused, never truncated).
POISSON_OVERFLOW_BOUND = 1e-9

# Snippets per Shakespeare client when max_examples_per_client is not set.
SHAKESPEARE_DEFAULT_CAP = 64

# Keys that may change between a run and its --resume (they do not change the
# trajectory of the parameters, the device keys only the float summation order).
RESUMABLE_CHANGES = ("rounds", "eval_every", "checkpoint_every", "out", "resume", "overwrite",
                     "progress", "devices", "coordinator", "num_processes", "process_id")

# The keys that start JAX's multi-process runtime.
PROCESS_KEYS = ("coordinator", "num_processes", "process_id")

DATASETS = ("digits", "fashion_mnist", "shakespeare", "synthetic")
MODELS = ("logreg", "mlp", "2nn", "cnn", "char_lstm")
ALGORITHMS = presets.ALGORITHMS
PARTITIONS = ("iid", "dirichlet", "shards")
DP_MECHANISMS = ("none", "gaussian", "laplace")


class ConfigError(ValueError):
  """An invalid configuration (unknown name or key, bad value, bad output dir)."""


def resolve_config(config_file: str | os.PathLike | None = None,
                   overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """Merges :data:`DEFAULTS`, a TOML file and explicit overrides, and validates.

  Args:
    config_file: optional TOML file whose top-level keys mirror the options
      (``clients_per_round`` or ``clients-per-round``).
    overrides: values given on the command line (``None`` values are ignored);
      ``sweep`` is a list of ``"KEY=VALUES"`` strings (or a ``{key: values}``
      dict) and replaces the file's ``sweep``.

  Returns:
    The resolved configuration dict; ``sweep`` is ``None`` or the parsed
    sweep ``{key: [values, ...]}`` (see :func:`parse_sweep`).

  Raises:
    ConfigError: for an unknown key, an unknown dataset/model/algorithm/
      partition name (listing the valid ones), an out-of-range value, or a
      bad or unsupported sweep.
  """
  config = dict(DEFAULTS)
  sweep_source = "--sweep"
  if config_file is not None:
    path = Path(config_file)
    try:
      loaded = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
      raise ConfigError(f"--config file {path} does not exist.") from e
    except tomllib.TOMLDecodeError as e:
      raise ConfigError(f"--config file {path} is not valid TOML: {e}") from e
    for key, value in loaded.items():
      name = key.replace("-", "_")
      if name not in DEFAULTS:
        raise ConfigError(
            f"unknown key {key!r} in --config file {path}; valid keys: {sorted(DEFAULTS)}.")
      config[name] = value
      if name == "sweep":
        sweep_source = f"sweep in --config file {path}:"
  for key, value in (overrides or {}).items():
    if value is not None:
      if key not in DEFAULTS:
        raise ConfigError(f"unknown option {key!r}.")
      config[key] = value
      if key == "sweep":
        sweep_source = "--sweep"
  config["sweep"] = parse_sweep(config["sweep"], sweep_source)
  _validate(config)
  return config


_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_SWEEP_EXAMPLE = "e.g. --sweep seed=0..15 or --sweep client_lr=0.01,0.03,0.1"


def parse_sweep(spec: Any, source: str = "--sweep") -> dict[str, list] | None:
  """Parses a sweep specification into ``{key: [values, ...]}``.

  Args:
    spec: ``None``; a list of ``"KEY=VALUES"`` strings (``--sweep`` flags or a
      TOML list), where ``VALUES`` is an inclusive integer range ``a..b`` or a
      comma list ``v1,v2,...``; or a ``{key: VALUES}`` dict whose values are
      such strings, lists of numbers or single numbers (a TOML table). An
      already parsed sweep is returned unchanged.
    source: how the user gave it, for error messages.

  Returns:
    ``None`` for no sweep, else ``{key: values}`` in the given key order, with
    ``seed`` values as ints and the others as floats.

  Raises:
    ConfigError: naming the argument and the fix, for bad syntax, an empty
      range, an unknown, unsweepable or repeated key, or a bad value.
  """
  if spec is None or (isinstance(spec, (list, tuple, dict)) and not spec):
    return None
  if isinstance(spec, str):
    spec = [spec]
  if isinstance(spec, dict):
    items = [(str(k), v, f"{source} {k} = {v!r}") for k, v in spec.items()]
  elif isinstance(spec, (list, tuple)):
    items = []
    for item in spec:
      if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"{source} {item!r}: write KEY=VALUES, {_SWEEP_EXAMPLE}.")
      key, _, values = item.partition("=")
      items.append((key.strip(), values.strip(), f"{source} {item}"))
  else:
    raise ConfigError(f"{source} must be a list of KEY=VALUES strings or a table of key = "
                      f"values; got {spec!r}.")
  sweep: dict[str, list] = {}
  for key, values, where in items:
    name = key.replace("-", "_")
    if name not in SWEEPABLE:
      what = "is not an option" if name not in DEFAULTS else "cannot be swept"
      raise ConfigError(f"{where}: {key!r} {what}; sweepable keys: {', '.join(SWEEPABLE)}.")
    if name in sweep:
      raise ConfigError(f"{where}: {name!r} is swept twice; give all its values in one "
                        f"KEY=VALUES, e.g. {name}=0..3 or {name}=0.1,0.3.")
    sweep[name] = _sweep_values(name, values, where)
  return sweep


def _sweep_values(key: str, values: Any, where: str) -> list:
  if isinstance(values, str):
    text = values.replace(" ", "")
    if ".." in text:
      m = _RANGE.match(text)
      if not m:
        raise ConfigError(f"{where}: a range a..b takes two integers (inclusive, e.g. "
                          f"{key}=0..15); list other values with commas.")
      a, b = int(m.group(1)), int(m.group(2))
      if b < a:
        raise ConfigError(f"{where}: the range {a}..{b} is empty; write a..b with a <= b "
                          f"(both included), e.g. {key}={b}..{a}.")
      values = list(range(a, b + 1))
    else:
      parts = text.split(",")
      if not all(parts):
        raise ConfigError(f"{where}: empty value; write a comma list or a range, "
                          f"{_SWEEP_EXAMPLE}.")
      values = [_number(v, where) for v in parts]
  elif isinstance(values, (int, float)) and not isinstance(values, bool):
    values = [values]
  elif not isinstance(values, (list, tuple)) or not values:
    raise ConfigError(f"{where}: give a list of values, {_SWEEP_EXAMPLE}.")
  out = []
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      raise ConfigError(f"{where}: {v!r} is not a number.")
    if key == "seed":
      if not isinstance(v, int) or v < 0:
        raise ConfigError(f"{where}: seeds must be non-negative integers; got {v!r}.")
    elif not v > 0:
      raise ConfigError(f"{where}: {key} must be > 0; got {v!r}.")
    else:
      v = float(v)
    if v in out:
      raise ConfigError(f"{where}: {v!r} is listed twice; list each value once.")
    out.append(v)
  return out


def _number(text: str, where: str) -> int | float:
  try:
    return int(text)
  except ValueError:
    pass
  try:
    return float(text)
  except ValueError:
    raise ConfigError(f"{where}: {text!r} is not a number; {_SWEEP_EXAMPLE}.") from None


def sweep_points(config: dict[str, Any]) -> list[dict[str, Any]]:
  """The experiments of a sweep: one ``{key: value}`` per point of the product.

  The product runs over the keys in the order given, the last varying fastest.
  """
  sweep = config["sweep"] or {}
  return [dict(zip(sweep, values, strict=True)) for values in itertools.product(*sweep.values())]


def data_seed(config: dict[str, Any]) -> int:
  """The seed of the data partition/generation: ``data_seed``, else ``seed``."""
  return config["seed"] if config.get("data_seed") is None else config["data_seed"]


def experiment_config(config: dict[str, Any], point: dict[str, Any],
                      out: str | os.PathLike | None = None) -> dict[str, Any]:
  """The single-run configuration of one experiment of a sweep.

  Running it alone (``run_experiment``) gives the experiment's results: the
  swept values are set, ``data_seed`` is pinned to the sweep's, and
  ``sweep``/``resume``/``overwrite`` and the multi-process keys
  (:data:`PROCESS_KEYS`) are cleared.
  """
  return {**config, **point, "data_seed": data_seed(config), "sweep": None, "resume": False,
          "overwrite": False, "out": None if out is None else str(out),
          **dict.fromkeys(PROCESS_KEYS)}


def chunk_size_arg(text: str) -> int | str:
  """Parses ``--chunk-size``: a positive integer or ``auto``."""
  if text == "auto":
    return text
  try:
    return int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"--chunk-size must be a positive integer or 'auto'; got {text!r}.") from None


def devices_arg(text: str) -> int | str:
  """Parses ``--devices``: a positive integer or ``all``."""
  if text == "all":
    return text
  try:
    return int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"--devices must be a positive integer or 'all'; got {text!r}.") from None


def _validate_devices(c: dict[str, Any]) -> None:
  """Checks ``devices`` and the multi-process keys (what needs no JAX)."""
  devices = c["devices"]
  if devices != "all" and devices is not None and (
      isinstance(devices, bool) or not isinstance(devices, int) or devices < 1):
    raise ConfigError(f"devices must be a positive integer or 'all'; got {devices!r} (e.g. "
                      "--devices 4, or --devices all for every device JAX sees).")
  coordinator, num, pid = (c[k] for k in PROCESS_KEYS)
  for flag, value, minimum in (("--num-processes", num, 1), ("--process-id", pid, 0)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < minimum):
      raise ConfigError(f"{flag} must be an integer >= {minimum}; got {value!r}.")
  if coordinator is None:
    if num is not None or pid is not None:
      raise ConfigError(
          "--num-processes and --process-id need --coordinator HOST:PORT (the address of "
          "process 0 and a free port, the same for every process), or --coordinator auto on "
          "SLURM, Open MPI or Cloud TPU.")
    return
  if not isinstance(coordinator, str):
    raise ConfigError(f"coordinator must be a string 'HOST:PORT' or 'auto'; got {coordinator!r}.")
  if coordinator != "auto":
    host, sep, port = coordinator.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
      raise ConfigError(
          f"--coordinator {coordinator!r} is not HOST:PORT; give process 0's address and a free "
          "port, e.g. --coordinator 127.0.0.1:12345 on one machine or --coordinator "
          "10.0.0.1:12345 across hosts (or --coordinator auto on SLURM, Open MPI or Cloud TPU).")
    missing = [flag for flag, value in (("--num-processes", num), ("--process-id", pid))
               if value is None]
    if missing:
      raise ConfigError(
          f"--coordinator {coordinator} needs {' and '.join(missing)} too: start every process "
          "with the same --coordinator and --num-processes N and its own --process-id 0..N-1 "
          "(or use --coordinator auto where the cluster sets them).")
  if num is not None and pid is not None and pid >= num:
    raise ConfigError(f"--process-id {pid} must be below --num-processes {num} (the processes "
                      f"are numbered 0..{num - 1}).")


def _validate(c: dict[str, Any]) -> None:
  _validate_devices(c)
  if not c.get("sweep"):
    _validate_run(c)
    return
  swept = c["sweep"]
  for key in ("noise_multiplier", "clip"):
    if key in swept and c["dp"] == "none":
      raise ConfigError(f"--sweep {key} needs --dp gaussian or --dp laplace ({key} is a DP "
                        "option).")
    if key in swept and c["adaptive_clip"]:
      raise ConfigError(
          f"--sweep {key} cannot be combined with --adaptive-clip: adaptive clipping computes "
          "its initial clip and the noise split on the host, so they cannot vary inside one "
          f"vectorized program. Sweep seed or the learning rates, or run each {key} "
          "separately.")
  if "noise_multiplier" in swept and c["target_epsilon"] is not None:
    raise ConfigError("--sweep noise_multiplier contradicts --target-epsilon (which calibrates "
                      "one noise multiplier for every experiment); drop one of them.")
  for point in sweep_points(c):
    _validate_run({**c, **point})


def _validate_run(c: dict[str, Any]) -> None:
  for key, valid in (("dataset", DATASETS), ("model", MODELS), ("partition", PARTITIONS),
                     ("dp", DP_MECHANISMS), ("sampling", ("fixed", "poisson")),
                     ("accountant", ("rdp", "pld"))):
    if c[key] not in valid:
      raise ConfigError(f"unknown {key} {c[key]!r}; choose one of: {', '.join(valid)}.")
  chunk = c["chunk_size"]
  if chunk != "auto" and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
    raise ConfigError(f"chunk_size must be a positive integer or 'auto'; got {chunk!r}.")
  for key in ("rounds", "clients_per_round", "local_epochs", "batch_size", "num_clients"):
    if not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 1:
      raise ConfigError(f"{key} must be a positive integer; got {c[key]!r}.")
  for key in ("eval_every", "checkpoint_every", "seed", "data_seed"):
    if key == "data_seed" and c.get(key) is None:
      continue
    if not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 0:
      raise ConfigError(f"{key} must be a non-negative integer; got {c[key]!r}.")
  for key in ("client_lr", "alpha"):
    if not isinstance(c[key], (int, float)) or not c[key] > 0:
      raise ConfigError(f"{key} must be > 0; got {c[key]!r}.")
  if c["server_lr"] is not None and not c["server_lr"] > 0:
    raise ConfigError(f"server_lr must be > 0; got {c['server_lr']!r}.")
  if c["dp"] == "none":
    if c["noise_multiplier"] is not None or c["target_epsilon"] is not None:
      raise ConfigError("noise_multiplier/target_epsilon need --dp gaussian or --dp laplace.")
  else:
    if (c["noise_multiplier"] is None) == (c["target_epsilon"] is None):
      raise ConfigError(f"--dp {c['dp']} needs exactly one of --noise-multiplier and "
                        "--target-epsilon.")
    if c["noise_multiplier"] is not None and not c["noise_multiplier"] > 0:
      raise ConfigError(f"noise_multiplier must be > 0; got {c['noise_multiplier']!r}.")
    if c["target_epsilon"] is not None and not c["target_epsilon"] > 0:
      raise ConfigError(f"target_epsilon must be > 0; got {c['target_epsilon']!r}.")
    if not isinstance(c["clip"], (int, float)) or not c["clip"] > 0:
      raise ConfigError(f"clip must be > 0; got {c['clip']!r}.")
    if not isinstance(c["delta"], (int, float)) or not 0 < c["delta"] < 1:
      raise ConfigError(f"delta must be in (0, 1); got {c['delta']!r}.")
    if c["adaptive_clip"] and c["dp"] != "gaussian":
      raise ConfigError("--adaptive-clip needs --dp gaussian (Andrew et al.'s method).")
    if not 0 < c["target_quantile"] < 1:
      raise ConfigError(f"target_quantile must be in (0, 1); got {c['target_quantile']!r}.")
  try:
    presets.validate(c)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  ft = c["fine_tune_epochs"]
  if isinstance(ft, bool) or not isinstance(ft, int) or ft < 0:
    raise ConfigError(f"fine_tune_epochs must be a non-negative integer; got {ft!r}.")
  if c["model"] == "char_lstm" and c["dataset"] != "shakespeare":
    raise ConfigError("model 'char_lstm' needs dataset 'shakespeare'.")
  if c["dataset"] == "shakespeare" and c["model"] != "char_lstm":
    raise ConfigError("dataset 'shakespeare' needs model 'char_lstm'.")
  if c["model"] == "cnn" and c["dataset"] not in ("digits", "fashion_mnist"):
    raise ConfigError("model 'cnn' needs an image dataset (digits or fashion_mnist).")


RUN_FILES = ("metrics.jsonl", "summary.json", "curves.png", "checkpoint.ckpt", "config.json")
SWEEP_FILES = ("sweep.json", "sweep.png", "checkpoint.ckpt")


def check_output_dir(config: dict[str, Any]) -> Path:
  """Validates the output directory without writing anything.

  Sets ``config["out"]`` to ``runs/<dataset>-<algorithm>[-sweep]-<time>`` if
  it is ``None``. Every process of a multi-process run calls it before JAX's
  runtime starts (so before process 0 writes anything).

  Returns:
    The output directory.

  Raises:
    ConfigError: if the path is a file, or exists non-empty without ``resume``
      or ``overwrite``, or ``resume`` finds nothing to resume (a sweep is
      resumed with its ``--sweep`` options, a single run without).
  """
  sweep = bool(config.get("sweep"))
  if config["out"] is None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kind = "-sweep" if sweep else ""
    config["out"] = str(Path("runs") / f"{config['dataset']}-{config['algorithm']}{kind}-{stamp}")
  out = Path(config["out"])
  if config["resume"] and config["overwrite"]:
    raise ConfigError("--resume and --overwrite contradict each other; pick one.")
  nonempty = out.is_dir() and any(out.iterdir())
  if out.exists() and not out.is_dir():
    raise ConfigError(f"--out {out} exists and is not a directory.")
  if config["resume"]:
    if sweep and not (out / "sweep.json").is_file():
      hint = " (it holds a single run: resume it without --sweep)" \
          if (out / "config.json").is_file() else ""
      raise ConfigError(f"--resume --sweep: {out} holds no sweep to resume (no sweep.json)"
                        f"{hint}.")
    if not sweep and not (out / "config.json").is_file():
      hint = " (it holds a sweep: resume it with the same --sweep options)" \
          if (out / "sweep.json").is_file() else ""
      raise ConfigError(f"--resume: {out} holds no run to resume (no config.json){hint}.")
  elif nonempty and not config["overwrite"]:
    raise ConfigError(
        f"--out {out} exists and is not empty; pass --resume to continue that run or "
        "--overwrite to replace it.")
  return out


def prepare_output_dir(config: dict[str, Any]) -> Path:
  """Validates (:func:`check_output_dir`) and creates the output directory before any training.

  With ``overwrite``, the outputs of an earlier run or sweep in it are deleted.

  Raises:
    ConfigError: as :func:`check_output_dir`, or if the directory is not
      writable.
  """
  out = check_output_dir(config)
  try:
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".write-test"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ConfigError(f"--out {out} is not writable: {e}") from e
  if config["overwrite"]:
    for sub in _sweep_dirs(out):
      for name in RUN_FILES:
        (sub / name).unlink(missing_ok=True)
      with contextlib.suppress(OSError):
        sub.rmdir()  # only if nothing else is in it
    for name in RUN_FILES + SWEEP_FILES:
      (out / name).unlink(missing_ok=True)
  return out


def _sweep_dirs(out: Path) -> list[Path]:
  """The experiment directories named in ``out/sweep.json`` (none if unreadable)."""
  try:
    names = [e["dir"] for e in json.loads((out / "sweep.json").read_text())["experiments"]]
  except (OSError, ValueError, KeyError, TypeError):
    return []
  return [out / n for n in names if isinstance(n, str) and n and Path(n).name == n
          and (out / n).is_dir()]


@dataclasses.dataclass
class Task:
  """What a configuration builds: data, model, loss and metric functions.

  ``params`` are initialized from the configuration's ``seed``;
  ``init_params(seed)`` initializes them from another seed (a sweep's).
  """

  dataset: Any
  params: Any
  apply_fn: Callable[..., Any]
  loss: Callable[..., Any]
  metrics: Callable[..., Any]
  init_params: Callable[[int], Any] | None = None


def build_task(c: dict[str, Any]) -> Task:
  """Loads the dataset and initializes the model of a configuration."""
  import jax
  import jax.numpy as jnp

  from fedjax_lite import models
  from fedjax_lite.data import check_labels

  ds = load_dataset(c)
  # Out-of-range labels would train silently (NaN or garbage losses): refuse them here.
  for name, split in (("train", ds.train), ("test", ds.test)):
    if split is not None:
      check_labels(split, ds.num_classes, name=name)
  x = ds.train.arrays["x"]
  if c["model"] == "char_lstm":
    model = models.CharLSTM(ds.num_classes, hidden=c["hidden"] or 256)
    dummy = jnp.zeros((1,) + x.shape[2:], jnp.int32)
  else:
    width = c["hidden"] or 200
    model = {
        "logreg": lambda: models.LogisticRegression(ds.num_classes),
        "mlp": lambda: models.MLP((width,), ds.num_classes),
        "2nn": lambda: models.MLP((width, width), ds.num_classes),
        "cnn": lambda: models.CNN(ds.num_classes),
    }[c["model"]]()
    dummy = jnp.zeros((1,) + x.shape[2:], x.dtype)
  init_params = lambda seed: model.init(jax.random.key(seed), dummy)
  params = init_params(c["seed"])
  if c["model"] == "char_lstm":
    loss, metrics = models.sequence_loss(model.apply), models.sequence_metrics(model.apply)
  else:
    loss = models.classification_loss(model.apply)
    metrics = models.classification_metrics(model.apply)
  return Task(ds, params, model.apply, loss, metrics, init_params)


def load_dataset(c: dict[str, Any]):
  """The :class:`~fedjax_lite.datasets.FederatedDataset` of a configuration.

  Partitions and synthetic data are drawn with :func:`data_seed`.
  """
  # The package re-exports the function leaf_synthetic under its module's name.
  from fedjax_lite.datasets import images, shakespeare
  from fedjax_lite.datasets.leaf_synthetic import leaf_synthetic

  part = dict(method=c["partition"], num_clients=c["num_clients"], alpha=c["alpha"],
              shards_per_client=c["shards_per_client"], test_fraction=c["test_fraction"],
              seed=data_seed(c))
  if c["dataset"] == "digits":
    return images.load_digits_dataset(**part)
  if c["dataset"] == "fashion_mnist":
    kwargs = {} if c["data_dir"] is None else {"path": c["data_dir"]}
    return images.load_fashion_mnist(**kwargs, **part)
  if c["dataset"] == "shakespeare":
    # Stacked clients are padded to the largest one (HAMLET: 605 snippets), so
    # an uncapped cohort pays for HAMLET on every client: cap by default.
    cap = c["max_examples_per_client"] or SHAKESPEARE_DEFAULT_CAP
    return shakespeare.load_shakespeare(test_fraction=c["test_fraction"],
                                        max_snippets_per_client=cap)
  return leaf_synthetic(
      c["num_clients"], c["synthetic_alpha"], c["synthetic_beta"],
      test_fraction=c["test_fraction"], seed=data_seed(c),
      max_examples_per_client=c["max_examples_per_client"])


def versions() -> dict[str, str]:
  import flax
  import jax
  import jaxlib
  import optax

  import fedjax_lite
  return {"fedjax_lite": fedjax_lite.__version__, "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "numpy": np.__version__, "python": platform.python_version()}


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


def _start(config: dict[str, Any], saved: str) -> tuple[Path, Any, bool]:
  """Checks ``--out``, starts the multi-process runtime, builds the mesh, creates ``--out``.

  Every process checks the output directory (and a resume's saved
  configuration, in ``out / saved``) before the runtime starts, which waits
  for all of them, so none sees process 0's files; then process 0 alone
  creates the directory and tells the others whether it could.

  Returns:
    ``(out, mesh, main)``: the output directory, the client mesh (``None``
    without one), and whether this process writes (process 0).
  """
  out = check_output_dir(config)
  if config["resume"]:
    _check_resume(json.loads((out / saved).read_text())["config"], config)
  start_distributed(config)
  import jax

  mesh = _client_mesh(config)
  main = jax.process_index() == 0
  error = None
  if main:
    try:
      prepare_output_dir(config)
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
  return out, mesh, main


def run_experiment(config: dict[str, Any], *, stop_after: int | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Runs (or resumes) the experiment described by a resolved configuration.

  A configuration with a ``sweep`` runs all its experiments together
  (:func:`run_sweep_experiment`).

  Args:
    config: from :func:`resolve_config`.
    stop_after: stop after this many rounds *of this invocation* without the
      final evaluation, as an interruption would (used by tests; a later
      ``resume`` continues).
    log: where to print human-readable lines (default: stderr; only process
      0 of a multi-process run logs).

  Returns:
    The summary dict (also written to ``summary.json``); for a sweep, the
    contents of ``sweep.json``. Every process of a multi-process run returns
    it (the same up to wall times and the echoed ``process_id``).

  Raises:
    ConfigError: for a bad configuration or output directory, a ``resume``
      whose saved configuration differs in a key that changes the run, more
      ``devices`` than JAX sees, or a multi-process runtime that cannot start.
    fedjax_lite.checkpoint.CheckpointError: for a corrupted checkpoint.
  """
  if config.get("sweep"):
    return run_sweep_experiment(config, stop_after=stop_after, log=log)
  out, mesh, main = _start(config, "config.json")
  import jax

  import fedjax_lite as fl
  from fedjax_lite import checkpoint

  log = (log or _stderr) if main else _quiet
  task = build_task(config)
  ds = task.dataset
  _check_cohort(config, ds)
  dp = build_dp(config, ds.train.num_clients)
  algo = _algorithm(config, task, dp.aggregator if dp else None, mesh=mesh)
  state = algo.init(task.params, num_clients=ds.train.num_clients)
  train = ds.train if mesh is None else fl.shard_clients(ds.train, mesh)
  ckpt_path = out / "checkpoint.ckpt"
  metrics_path = out / "metrics.jsonl"
  rows: list[dict[str, Any]] = []
  if config["resume"]:
    if ckpt_path.exists():
      state = _load_state(ckpt_path, state, mesh)
    rows = _resume_rows(metrics_path, int(state.round), write=main)
  if main:
    _write_run_config(out, config, ds, dp, mesh)
  eval_row = _evaluator(task, mesh, config)

  start_round = int(state.round)
  remaining = config["rounds"] - start_round
  if stop_after is not None:
    remaining = min(remaining, stop_after)
  log(f"fedjax-lite run: {_describe_run(config, ds)}, rounds {start_round}.."
      f"{start_round + max(remaining, 0)} of {config['rounds']} -> {out}")
  started = time.perf_counter()
  last_eval: dict[str, float] = {}

  def on_round(r, state, m):
    # Every process evaluates (a computation over all devices); process 0 writes.
    nonlocal last_eval
    row = _round_row(config, dp, r, m)
    if _due(config, "eval_every", r):
      last_eval = eval_row(state.params, state)
      row.update(last_eval)
    rows.append(row)
    if main:
      _append_row(metrics_path, row)
      if _due(config, "checkpoint_every", r):
        checkpoint.save_checkpoint(ckpt_path, state, {"round": r + 1, "seed": config["seed"]})
    return {"acc": f"{last_eval['eval_accuracy']:.3f}"} if "eval_accuracy" in last_eval else None

  if remaining > 0:
    state, _ = fl.run_rounds(algo, state, train, num_rounds=remaining,
                             sampler=dp.sampler if dp else None,
                             cohort_size=None if dp else config["clients_per_round"],
                             key=jax.random.key(config["seed"]),
                             progress=config["progress"] if main else False,
                             callback=on_round)
  summary = _finish_run(config, out, ds, dp, int(state.round), time.perf_counter() - started,
                        rows, write=main)
  log(json.dumps({"summary": summary}))
  return summary


def run_sweep_experiment(config: dict[str, Any], *, stop_after: int | None = None,
                         log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Runs (or resumes) every experiment of a sweep as one vectorized program.

  The experiments (:func:`sweep_points`) share the population (drawn with the
  base configuration's :func:`data_seed`) and are stepped together by
  :func:`fedjax_lite.run_sweep`: each from its own seed's initial parameters
  and PRNG key, with its swept learning rates, noise multiplier or clip as
  traced scalars. Experiment ``s`` equals ``run_experiment`` of the
  configuration in its ``config.json`` (:func:`experiment_config`) up to float
  rounding. Every round, each experiment's metrics are written to its own
  directory (evaluation loops over the experiments on the host with the
  single run's evaluator); the stacked states are checkpointed in ``out``.

  Args:
    config: from :func:`resolve_config`, with a ``sweep``.
    stop_after: as in :func:`run_experiment`.
    log: where to print human-readable lines (default: stderr; only process
      0 of a multi-process run logs).

  Returns:
    The contents of ``sweep.json``: the sweep, the base configuration, and
    under ``experiments`` each experiment's directory, swept values and final
    metrics (returned by every process of a multi-process run).

  Raises:
    ConfigError: for a bad configuration or output directory, a ``resume``
      whose saved configuration (sweep included) differs in a key that
      changes the runs, or a device or process option that cannot be met.
    fedjax_lite.checkpoint.CheckpointError: for a corrupted checkpoint.
    ValueError: if a client delta becomes NaN/Inf in some experiment.
  """
  import jax
  import jax.numpy as jnp

  import fedjax_lite as fl
  from fedjax_lite import checkpoint

  out, mesh, main = _start(config, "sweep.json")
  log = (log or _stderr) if main else _quiet
  points = sweep_points(config)
  num = len(points)
  width = max(3, len(str(num - 1)))
  names = [f"{i:0{width}d}_" + ",".join(f"{k}={v}" for k, v in point.items())
           for i, point in enumerate(points)]
  configs = [experiment_config(config, point, out / name) for point, name in zip(points, names,
                                                                                strict=True)]
  task = build_task(configs[0])
  ds = task.dataset
  _check_cohort(config, ds)
  dps = _sweep_dp(configs, ds.train.num_clients)
  swept = config["sweep"]
  hparams = {k: jnp.asarray([c[k] for c in configs], jnp.float32) for k in swept if k != "seed"}

  def make(h):
    values = h if isinstance(h, dict) else {}
    c = {**configs[0], **values}
    aggregator = None
    if dps[0]:
      z = values["noise_multiplier"] if "noise_multiplier" in values \
          else dps[0].spec.noise_multiplier
      aggregator = _dp_aggregator(c, z)
    return _algorithm(c, task, aggregator, mesh=mesh)

  inits: dict[int, Any] = {}
  for c in configs:
    if c["seed"] not in inits:
      inits[c["seed"]] = task.init_params(c["seed"])
  params = jax.tree.map(lambda *xs: jnp.stack(xs), *[inits[c["seed"]] for c in configs])
  keys = jax.random.key_data(jnp.stack([jax.random.key(c["seed"]) for c in configs]))
  sweep_h = hparams or jnp.zeros((num,))
  train = ds.train
  if mesh is not None:
    # Everything the sweep's programs take is placed on the mesh, as a single
    # run's state is by algo.init: replicated, and the population sharded.
    params, sweep_h, keys = fl.replicate((params, sweep_h, keys), mesh)
    train = fl.shard_clients(ds.train, mesh)
  ckpt_path = out / "checkpoint.ckpt"
  states = None
  if config["resume"] and ckpt_path.exists():
    target = jax.vmap(lambda h, p: make(h).init(p, num_clients=ds.train.num_clients))(
        sweep_h, params)
    states = _load_state(ckpt_path, target, mesh)
  start_round = 0 if states is None else int(np.asarray(states.round).flat[0])
  dirs = [out / name for name in names]
  rows: list[list[dict[str, Any]]] = [[] for _ in dirs]
  for i, (d, c, dp) in enumerate(zip(dirs, configs, dps, strict=True)):
    if main:
      d.mkdir(exist_ok=True)
    if config["resume"]:
      rows[i] = _resume_rows(d / "metrics.jsonl", start_round, write=main)
    if main:
      _write_run_config(d, c, ds, dp, mesh)
  sweep_info = {"sweep": swept, "num_experiments": num,
                "product": "Cartesian product of the swept keys in this order, the last "
                           "varying fastest",
                "data_seed": data_seed(config), "config": config, "versions": versions(),
                "experiments": [{"index": i, "dir": name, "values": point}
                                for i, (name, point) in enumerate(zip(names, points,
                                                                      strict=True))]}
  if main:
    (out / "sweep.json").write_text(json.dumps(sweep_info, indent=1, default=str))
  evaluate = _evaluator(task, mesh)

  remaining = config["rounds"] - start_round
  if stop_after is not None:
    remaining = min(remaining, stop_after)
  log(f"fedjax-lite run --sweep: {num} experiments ("
      + ", ".join(f"{k}: {len(v)} values" for k, v in swept.items())
      + f") as one vectorized program; {_describe_run(config, ds)}, rounds {start_round}.."
      f"{start_round + max(remaining, 0)} of {config['rounds']} -> {out}")
  started = time.perf_counter()
  last_acc: list[float] = []

  def on_round(r, states, row):
    nonlocal last_acc
    evaluated = _due(config, "eval_every", r)
    accs = []
    for i in range(num):
      m = {k: float(v[i]) for k, v in row.items() if k != "seconds"}
      m["seconds"] = float(row["seconds"])
      out_row = _round_row(configs[i], dps[i], r, m)
      if evaluated:
        out_row.update(evaluate(jax.tree.map(lambda x: x[i], states.params)))
        accs.append(out_row.get("eval_accuracy", float("nan")))
      rows[i].append(out_row)
      if main:
        _append_row(dirs[i] / "metrics.jsonl", out_row)
    if evaluated:
      last_acc = accs
    if main and _due(config, "checkpoint_every", r):
      checkpoint.save_checkpoint(ckpt_path, states, {"round": r + 1, "experiments": num})
    return {"acc": f"{np.nanmin(last_acc):.3f}..{np.nanmax(last_acc):.3f}"} if last_acc else None

  if remaining > 0:
    try:
      states, _ = fl.run_sweep(make, sweep_h, params, train, num_rounds=remaining,
                               keys=keys, sampler=dps[0].sampler if dps[0] else None,
                               cohort_size=None if dps[0] else config["clients_per_round"],
                               stacked_params=True, states=states, callback=on_round,
                               progress=config["progress"] if main else False)
    except ValueError as e:
      # run_sweep refuses a round an experiment did not apply (NaN/Inf clients).
      refused = re.match(r"experiment (\d+) ", str(e))
      if refused is None:
        raise
      raise ValueError(f"{names[int(refused[1])]}: {e} The round was not recorded (the last "
                       "checkpoint is intact); lower that learning rate or leave the value out "
                       "of the sweep.") from None
  rounds_completed = start_round if states is None else int(np.asarray(states.round).flat[0])
  wall = time.perf_counter() - started
  table = []
  for i, (d, c, dp) in enumerate(zip(dirs, configs, dps, strict=True)):
    summary = _finish_run(c, d, ds, dp, rounds_completed, wall, rows[i], write=main)
    table.append({**sweep_info["experiments"][i],
                  **{k: v for k, v in summary.items() if k not in _NOT_IN_SWEEP_TABLE}})
  sweep_info.update({"rounds_completed": rounds_completed, "rounds": config["rounds"],
                     "finished": rounds_completed >= config["rounds"],
                     "wall_seconds_this_invocation": wall, "experiments": table,
                     "out": str(out)})
  curves = list(zip(names, rows, strict=True))
  if main:
    (out / "sweep.json").write_text(json.dumps(sweep_info, indent=1, default=str))
  if main and any(rows):
    plot_sweep(curves, out / "sweep.png", title=f"{config['dataset']} / {config['model']} / "
               f"{config['algorithm']}: sweep over {', '.join(swept)}")
  log(json.dumps({"sweep": [{k: e.get(k) for k in ("dir", "final_train_loss", "eval_accuracy",
                                                    "epsilon") if k in e} for e in table]}))
  return sweep_info


# Summary entries left out of sweep.json's per-experiment table.
_NOT_IN_SWEEP_TABLE = ("privacy", "out", "rounds", "rounds_completed", "finished",
                       "wall_seconds_this_invocation", "train_seconds_total", "chance_accuracy",
                       "delta")


def _stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _quiet(line: str) -> None:
  del line


def _load_state(path: Path, target: Any, mesh) -> Any:
  """The checkpointed state in ``target``'s structure; replicated on ``mesh`` if given."""
  import fedjax_lite as fl
  from fedjax_lite import checkpoint

  state, _ = checkpoint.load_checkpoint(path, target)
  return state if mesh is None else fl.replicate(state, mesh)


def _check_resume(saved: dict[str, Any], config: dict[str, Any]) -> None:
  changed = sorted(k for k in DEFAULTS if k not in RESUMABLE_CHANGES
                   and saved.get(k) != config.get(k))
  if config["target_epsilon"] is not None and saved.get("rounds") != config["rounds"]:
    changed.append("rounds (the noise was calibrated for the run's total rounds)")
  if changed:
    raise ConfigError(
        f"--resume: the configuration differs from the saved run in {changed}; only "
        f"{list(RESUMABLE_CHANGES)} may change.")


def _check_cohort(config: dict[str, Any], ds) -> None:
  if config["clients_per_round"] > ds.train.num_clients:
    raise ConfigError(
        f"clients_per_round={config['clients_per_round']} exceeds the dataset's "
        f"{ds.train.num_clients} clients.")


def _describe_run(config: dict[str, Any], ds) -> str:
  return (f"{config['dataset']} ({ds.train.num_clients} clients, "
          f"{int(np.sum(ds.train.num_examples))} train examples), model {config['model']}, "
          f"{config['algorithm']}, {config['clients_per_round']} clients/round")


def _algorithm(config: dict[str, Any], task: Task, aggregator, *, mesh=None):
  """The federated algorithm of a configuration (its learning rates may be traced)."""
  try:
    return presets.build_algorithm(config, task.loss, _client_optimizer(config),
                                   dp_aggregator=aggregator, mesh=mesh)
  except ValueError as e:
    raise ConfigError(str(e)) from e


def _sweep_dp(configs: list[dict[str, Any]], num_clients: int) -> list[DPSetup | None]:
  """Each experiment's DP accounting (built once per noise multiplier)."""
  cache: dict[Any, DPSetup | None] = {}
  for c in configs:
    if c["noise_multiplier"] not in cache:
      cache[c["noise_multiplier"]] = build_dp(c, num_clients)
  return [cache[c["noise_multiplier"]] for c in configs]


def _write_run_config(out: Path, config: dict[str, Any], ds, dp, mesh=None) -> None:
  import jax

  runtime = {"platform": jax.default_backend(), "processes": jax.process_count(),
             "devices": 1 if mesh is None else int(mesh.size)}
  (out / "config.json").write_text(json.dumps(
      {"config": config, "versions": versions(), "seed": config["seed"],
       "dataset_info": ds.info, "num_clients": ds.train.num_clients,
       "privacy": dp.describe() if dp else None, "runtime": runtime}, indent=1, default=str))


def _evaluator(task: Task, mesh=None, config: dict[str, Any] | None = None
               ) -> Callable[..., dict[str, float]]:
  """``eval_row(params, state=None)``: the evaluation entries of a metrics row.

  On a ``mesh``, the clients' test data is sharded like the training
  population and the central test set (one client) is replicated. With a
  ``config`` and a ``state``: Ditto's personal models are evaluated on their
  clients' test data (``personal_*``), and with ``fine_tune_epochs`` the
  global model fine-tuned on each client's train split (``finetune_*``);
  with ``eval_train``, the global model on the training clients
  (``train_eval_*``).
  """
  import jax

  import fedjax_lite as fl
  from fedjax_lite import evaluation, personalization

  ds = task.dataset
  evaluate = evaluation.build_evaluator(task.metrics)
  central = None if ds.central_test is None else evaluation.as_single_client(ds.central_test)
  test, train = ds.test, ds.train
  if mesh is not None:
    test = None if test is None else fl.shard_clients(test, mesh)
    train = fl.shard_clients(train, mesh)
    central = None if central is None else fl.replicate(central, mesh)
  personal = fine_tune = None
  eval_train = config is not None and config["eval_train"]
  if config is not None and test is not None:
    if config["algorithm"] == "ditto":
      personal = personalization.build_per_client_evaluator(task.metrics)
    if config["fine_tune_epochs"]:
      fine_tune = personalization.build_fine_tune_evaluator(
          task.loss, task.metrics, _client_optimizer(config), batch_size=config["batch_size"],
          num_epochs=config["fine_tune_epochs"])

  def eval_row(params, state=None) -> dict[str, float]:
    row = {}
    if test is not None:
      s = evaluate(params, test)
      row.update({"eval_loss": s["loss"], "eval_accuracy": s["accuracy"]})
      row.update({f"eval_{k}": v for k, v in s.items() if k.startswith("accuracy_")})
    if central is not None:
      s = evaluate(params, central)
      row.update({"central_loss": s["loss"], "central_accuracy": s["accuracy"]})
    if eval_train:
      s = evaluate(params, train)
      row.update({"train_eval_loss": s["loss"], "train_eval_accuracy": s["accuracy"]})
    if state is not None and personal is not None:
      s = fl.algorithms.evaluate_personal(personal, state, test)
      row.update({"personal_eval_loss": s["loss"], "personal_eval_accuracy": s["accuracy"]})
    if state is not None and fine_tune is not None:
      s = fine_tune(params, train, test, jax.random.key(config["seed"]))
      row.update({"finetune_eval_loss": s["loss"], "finetune_eval_accuracy": s["accuracy"]})
    return {k: float(v) for k, v in row.items()}

  return eval_row


def _due(config: dict[str, Any], every: str, r: int) -> bool:
  """Whether round ``r`` (0-based) is the last one or a multiple of ``config[every]``."""
  return r + 1 == config["rounds"] or bool(config[every] and (r + 1) % config[every] == 0)


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
  return row


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


@dataclasses.dataclass
class DPSetup:
  """The privacy side of a run: aggregator, sampler and accounting."""

  spec: Any
  aggregator: Any
  sampler: Any
  delta: float
  accountant: str
  _curve: Any = None

  def epsilon(self, rounds: int) -> float:
    # One accounting.EpsilonCurve per run: under PLD it composes each new
    # round onto the distribution of the rounds before (one construction of
    # the one-round distribution, one composition per round).
    if self._curve is None:
      from fedjax_lite import accounting
      self._curve = accounting.EpsilonCurve(self.spec, self.delta, self.accountant)
    return self._curve(rounds)

  def describe(self) -> dict[str, Any]:
    out = {**dataclasses.asdict(self.spec), "delta": self.delta, "accountant": self.accountant,
           "padded_cohort": self.sampler.cohort_size, "sampling_rate": self.spec.rate}
    if self.sampler.kind == "poisson":
      out["overflow_probability_bound"] = POISSON_OVERFLOW_BOUND
    return out


def build_dp(config: dict[str, Any], num_clients: int) -> DPSetup | None:
  """The DP aggregator, sampler and accounting a configuration asks for.

  The noise multiplier is calibrated here for ``target_epsilon`` (over all
  ``rounds``); the accounting event matches the sampler (Poisson at rate
  ``clients_per_round / N``, or fixed-size).

  Raises:
    ConfigError: for a combination the accountant cannot account or an
      unreachable target epsilon.
  """
  import fedjax_lite as fl
  from fedjax_lite import accounting

  if config["dp"] == "none":
    return None
  k = config["clients_per_round"]
  if config["sampling"] == "poisson":
    sampler = fl.poisson_sampler(num_clients, k / num_clients, POISSON_OVERFLOW_BOUND)
  else:
    sampler = fl.fixed_size_sampler(num_clients, k)
  sigma_b = (k / 20.0) if config["adaptive_clip"] else None
  try:
    spec = accounting.DPSpec(config["dp"], config["noise_multiplier"] or 1.0,
                             config["sampling"], num_clients, k, count_noise_std=sigma_b,
                             local=config["local_dp"])
    accounting.make_accountant(spec, config["accountant"])  # refuses unsupported combinations
    if config["target_epsilon"] is not None:
      z = accounting.calibrate_noise(spec, config["rounds"], config["target_epsilon"],
                                     config["delta"], config["accountant"])
      spec = dataclasses.replace(spec, noise_multiplier=z)
    aggregator = _dp_aggregator(config, spec.noise_multiplier)
  except ValueError as e:
    raise ConfigError(flag_message(e)) from e
  return DPSetup(spec, aggregator, sampler, config["delta"], config["accountant"])


# The library's parameters whose values the command line sets with a flag of
# the same name: its messages say sampling='poisson', the CLI says --sampling poisson.
_LIBRARY_PARAMETER_FLAGS = ("sampling", "accountant")
_LIBRARY_PARAMETER = re.compile(r"\b(" + "|".join(_LIBRARY_PARAMETER_FLAGS) + r")='([^']*)'")


def flag_message(error: Exception) -> str:
  """A library error's message in command-line terms.

  The library names its parameters (``accountant='pld'``); the command line
  sets them with flags (``--accountant pld``).

  Args:
    error: an exception raised by the library.

  Returns:
    Its message with every ``name='value'`` of a parameter the command line
    sets written as ``--name value``.
  """
  return _LIBRARY_PARAMETER.sub(lambda m: f"--{m[1]} {m[2]}", str(error))


def _dp_aggregator(config: dict[str, Any], noise_multiplier: Any):
  """The DP aggregator of a configuration.

  ``noise_multiplier`` and ``config["clip"]`` may be traced (a sweep), except
  with adaptive clipping, which needs them concrete.
  """
  from fedjax_lite import privacy

  if config["dp"] == "laplace":
    return privacy.laplace_aggregator(config["clip"], noise_multiplier,
                                      float(config["clients_per_round"]),
                                      local=config["local_dp"])
  adaptive = privacy.AdaptiveClipping(target_quantile=config["target_quantile"],
                                      initial_clip=config["clip"]) \
      if config["adaptive_clip"] else None
  return privacy.gaussian_aggregator(config["clip"], noise_multiplier,
                                     float(config["clients_per_round"]), adaptive=adaptive,
                                     local=config["local_dp"])


def _client_optimizer(config):
  import optax
  return optax.sgd(config["client_lr"])


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
  """Writes ``curves.png``: train/eval loss and eval accuracy against rounds."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
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
  ax_loss.set_xlabel("round")
  ax_loss.set_ylabel("loss")
  ax_acc.set_xlabel("round")
  ax_acc.set_ylabel("accuracy")
  ax_acc.set_ylim(0, 1)
  for ax, where in ((ax_loss, "best"), (ax_acc, "lower right")):
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
