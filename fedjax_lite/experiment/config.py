"""The configuration of a run: defaults, merging, sweeps, validation and resume checks.

:func:`resolve_config` merges :data:`DEFAULTS`, a TOML file and command-line
overrides and validates the result; :func:`parse_sweep` reads ``--sweep``
specifications; :func:`flag_message` words library errors as the command line
does.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from fedjax_lite import presets
from fedjax_lite.experiment import options
from fedjax_lite.experiment.schema import ConfigError, int_or_word_arg
from fedjax_lite.experiment.sweeps import (
    PROCESS_KEYS,
    parse_sweep,
    sweep_points,
)

# Every option and its default (declared, typed, in fedjax_lite.experiment.options).
DEFAULTS: dict[str, Any] = options.DEFAULTS



# Keys that may change between a run and its --resume (they do not change the
# trajectory of the parameters, the device keys only the float summation order).
RESUMABLE_CHANGES = ("rounds", "eval_every", "checkpoint_every", "out", "resume", "overwrite",
                     "progress", "devices", "coordinator", "num_processes", "process_id",
                     "compile_cache", "log")


DATASETS, MODELS, PARTITIONS = options.DATASETS, options.MODELS, options.PARTITIONS
ALGORITHMS, DP_MECHANISMS = options.ALGORITHMS, options.DP_MECHANISMS


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
  values: dict[str, Any] = {}
  given: dict[str, str] = {}  # key -> where it was given
  sweep_source = "--sweep"
  if config_file is not None:
    path = Path(config_file)
    try:
      loaded = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
      raise ConfigError(f"--config file {path} does not exist.") from e
    except (OSError, UnicodeDecodeError) as e:
      raise ConfigError(f"--config file {path} cannot be read: {e}") from e
    except tomllib.TOMLDecodeError as e:
      raise ConfigError(f"--config file {path} is not valid TOML: {e}") from e
    for name, raw, where in _toml_items(loaded, path):
      for key, value in _path_dataset(name, raw, where, given):
        values[key] = _checked(key, value, where)
        if not given.get(key, "").endswith(_PATH_FORM):
          given[key] = where
      if name == "sweep":
        sweep_source = f"sweep in --config file {path}:"
  for name, raw in (overrides or {}).items():
    if raw is not None:
      if name not in DEFAULTS:
        raise ConfigError(f"unknown option {name!r}.")
      where = "--" + name.replace("_", "-")
      for key, value in _path_dataset(name, raw, where, given):
        values[key] = _checked(key, value, where)
        if not given.get(key, "").endswith(_PATH_FORM):
          given[key] = where
      if name == "sweep":
        sweep_source = "--sweep"
  config = {**DEFAULTS, **values}
  config["sweep"] = parse_sweep(config["sweep"], sweep_source)
  options.check_applicable(options.build(config), given)
  _validate(config)
  return config


def _toml_items(loaded: dict[str, Any], path: Path):
  """``(key, value, where)`` of a TOML file's options: flat keys, or ``[section]`` tables."""
  for key, value in loaded.items():
    name = key.replace("-", "_")
    if name in options.SECTIONS and name != "sweep" and isinstance(value, dict):
      for inner, v in value.items():
        inner_name = inner.replace("-", "_")
        home = options.OPTIONS.get(inner_name, (None,))[0]
        if home != name:
          hint = f"it belongs in [{home}]" if home else f"valid keys: {_section_keys(name)}"
          raise ConfigError(f"unknown key {inner!r} in [{key}] of --config file {path}; {hint}.")
        yield inner_name, v, f"{inner} (in [{key}] of {path})"
    elif name in DEFAULTS:
      yield name, value, f"{key} (in {path})"
    else:
      raise ConfigError(
          f"unknown key {key!r} in --config file {path}; valid keys: {sorted(DEFAULTS)}, or "
          f"tables [{'], ['.join(s for s in options.SECTIONS if s != 'sweep')}].")


def _path_dataset(key: str, value: Any, where: str, given: dict[str, str]):
  """``(key, value)`` pairs of one given option: ``dataset = "KIND:PATH"`` is two of them."""
  from fedjax_lite.experiment.catalog import FROM_PATH

  if key == "data_dir" and given.get("data_dir", "").endswith(_PATH_FORM):
    raise ConfigError(f"{given['data_dir'][:-len(_PATH_FORM)]} and {where} both give the "
                      "path; give it once.")
  if key == "dataset" and isinstance(value, str) and ":" in value:
    kind, path = value.split(":", 1)
    if kind in FROM_PATH:
      if not path:
        raise ConfigError(f"{where} {value!r} names no path; give --dataset {kind}:PATH.")
      if "data_dir" in given:
        raise ConfigError(f"{where} {value!r} and {given['data_dir']} both give the path; "
                          "give it once.")
      yield "dataset", kind
      given["data_dir"] = f"{where} {value!r}{_PATH_FORM}"
      yield "data_dir", path
      return
  yield key, value


# Marks a data_dir given by --dataset KIND:PATH (in `given`).
_PATH_FORM = " (its path)"


def _section_keys(section: str) -> str:
  return ", ".join(k for k, (s, _) in options.OPTIONS.items() if s == section)


def _checked(key: str, value: Any, where: str) -> Any:
  """The value, checked against its option's declaration (a sweep is parsed later)."""
  opt = options.OPTIONS[key][1]
  if opt.kind == "sweep":
    return value
  return opt.check(key, value, where)


def chunk_size_arg(text: str) -> int | str:
  """Parses ``--chunk-size``: a positive integer or ``auto``."""
  return int_or_word_arg("auto", "--chunk-size")(text)


def devices_arg(text: str) -> int | str:
  """Parses ``--devices``: a positive integer or ``all``."""
  return int_or_word_arg("all", "--devices")(text)


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
  """Checks every value against its declaration, then the rules that tie options together."""
  for key, (_, opt) in options.OPTIONS.items():
    if opt.kind != "sweep":
      opt.check(key, c[key])
  if c["dp"] == "none":
    if c["noise_multiplier"] is not None or c["target_epsilon"] is not None:
      raise ConfigError("noise_multiplier/target_epsilon need --dp gaussian or --dp laplace.")
  else:
    if (c["noise_multiplier"] is None) == (c["target_epsilon"] is None):
      raise ConfigError(f"--dp {c['dp']} needs exactly one of --noise-multiplier and "
                        "--target-epsilon.")
    if c["adaptive_clip"] and c["dp"] != "gaussian":
      raise ConfigError("--adaptive-clip needs --dp gaussian (Andrew et al.'s method).")
  with option_errors():
    presets.validate(c)
  _validate_timing(c)
  _validate_secure_and_correlated(c)
  for sink in log_sinks(c):
    from fedjax_lite import loggers

    if sink not in loggers.KINDS:
      raise ConfigError(f"unknown --log sink {sink!r}; choose from: {', '.join(loggers.KINDS)}.")
    hint = loggers.available(sink)
    if hint is not None:
      raise ConfigError(f"--log {sink} needs a package that is not installed: {hint}.")
  from fedjax_lite.experiment.catalog import FROM_PATH

  if c["dataset"] in FROM_PATH:
    if c["data_dir"] is None:
      raise ConfigError(f"--dataset {c['dataset']} reads files: give --dataset "
                        f"{c['dataset']}:PATH (or --data-dir PATH).")
    if c["dataset"] == "hf" and c["client_column"] is None:
      raise ConfigError("--dataset hf needs --client-column NAME (the column naming each "
                        "example's client, e.g. writer_id).")
    return  # the model is checked against the data once it is read
  if c["model"] in ("femnist_cnn", "next_word_lstm"):
    raise ConfigError(f"model {c['model']!r} is for --dataset leaf (FEMNIST) or tff "
                      "(StackOverflow) data.")
  if c["model"] == "char_lstm" and c["dataset"] != "shakespeare":
    raise ConfigError("model 'char_lstm' needs dataset 'shakespeare'.")
  if c["dataset"] == "shakespeare" and c["model"] != "char_lstm":
    raise ConfigError("dataset 'shakespeare' needs model 'char_lstm'.")
  if c["model"] == "cnn" and c["dataset"] not in ("digits", "fashion_mnist"):
    raise ConfigError("model 'cnn' needs an image dataset (digits or fashion_mnist).")


def _validate_secure_and_correlated(c: dict[str, Any]) -> None:
  """The rules of secure aggregation and of the correlated-noise mechanisms."""
  from fedjax_lite.experiment.catalog import AGGREGATORS

  if c["dp"] in options.CORRELATED:
    for flag, on in (("--adaptive-clip", c["adaptive_clip"]), ("--local-dp", c["local_dp"])):
      if on:
        raise ConfigError(f"{flag} with --dp {c['dp']}: the correlated-noise mechanisms are "
                          "central with a fixed clip; drop it.")
  if c["secagg_bits"] is None:
    return
  if c["dp"] == "none" and c["secagg_clip"] is None:
    raise ConfigError("--secagg-bits without --dp needs --secagg-clip R: the bound of each "
                      "coordinate of a client's weighted update (its examples times its "
                      "delta), which sets the encoding's scale.")
  if c["quantize_bits"] is not None:
    raise ConfigError("--quantize-bits with --secagg-bits: secure aggregation already encodes "
                      "every update in --secagg-bits bits; drop --quantize-bits.")
  if AGGREGATORS[c["aggregator"]].with_dp is False:
    raise ConfigError(f"--aggregator {c['aggregator']} with --secagg-bits: secure aggregation "
                      "reveals only the sum of the updates, and a median, trimmed mean or Krum "
                      "needs each of them; use --aggregator mean.")
  if c["adaptive_clip"]:
    raise ConfigError("--adaptive-clip with --secagg-bits: the clip then changes every round, "
                      "and so does the encoding's effect on the sensitivity; use a fixed --clip.")


def _validate_timing(c: dict[str, Any]) -> None:
  """The rules that tie the virtual clock's options to the rest."""
  selective = [flag for flag, on in (
      ("--deadline", c["deadline"] is not None), ("--over-select", c["over_select"] is not None),
      ("--availability < 1", c["availability"] < 1)) if on]
  if c["dp"] != "none" and selective:
    raise ConfigError(
        f"--dp {c['dp']} with {' and '.join(selective)} is refused: which sampled clients "
        "contribute would then depend on their devices (and, over-selecting, on the other "
        "clients sampled), which the sampled-mechanism accounting does not cover. Drop "
        f"{selective[0].split()[0]}, or --dp.")
  if (c["local_work"] != "full" or c["stragglers"] > 0) and (
      c["virtual_clock"] or c["deadline"] is not None or c["over_select"] is not None):
    raise ConfigError("--local-work and --stragglers set local work apart from the devices, "
                      "and the virtual clock times a client by its examples x local epochs; "
                      "drop them (--deadline with --partial-work cuts late clients' work).")
  if c["partial_work"]:
    if c["algorithm"] not in presets.LOCAL_WORK:
      raise ConfigError(f"--partial-work cuts local work at the deadline; it works with "
                        f"{', '.join(presets.LOCAL_WORK)}, not {c['algorithm']}.")
    if c["local_work"] != "full" or c["stragglers"] > 0:
      raise ConfigError("--partial-work sets each late client's work from its device; leave "
                        "--local-work full and --stragglers 0.")
  if c["algorithm"] == "fedbuff" and c["concurrency"] is not None and (
      c["buffer"] > c["concurrency"]):
    raise ConfigError(f"--buffer {c['buffer']} exceeds --concurrency {c['concurrency']}: the "
                      "server waits for --buffer of the clients in flight; raise "
                      "--concurrency.")
  if c.get("sweep") and c["algorithm"] in presets.ASYNC_ALGORITHMS:
    raise ConfigError(f"--sweep with --algorithm {c['algorithm']} is not supported: a sweep "
                      "vectorizes synchronous rounds; run each experiment on its own.")


def log_sinks(config: dict[str, Any]) -> list[str]:
  """The ``log`` option's sinks (``"tensorboard,wandb"`` -> two names; ``""`` -> none)."""
  return [part.strip() for part in str(config.get("log") or "").split(",") if part.strip()]


def _check_resume(saved: dict[str, Any], config: dict[str, Any]) -> None:
  # A key the saved run does not have is an option added since: the run used its default.
  changed = sorted(k for k in DEFAULTS if k not in RESUMABLE_CHANGES
                   and saved.get(k, DEFAULTS[k]) != config.get(k))
  if config["target_epsilon"] is not None and saved.get("rounds") != config["rounds"]:
    changed.append("rounds (the noise was calibrated for the run's total rounds)")
  if changed:
    raise ConfigError(
        f"--resume: the configuration differs from the saved run in {changed}; only "
        f"{list(RESUMABLE_CHANGES)} may change.")


def _check_cohort(config: dict[str, Any], ds) -> None:
  """Refuses a cohort (or FedBuff's clients in flight) larger than the population."""
  from fedjax_lite.experiment.clock import concurrency, sampled_cohort

  n = ds.train.num_clients
  if config["algorithm"] in presets.ASYNC_ALGORITHMS:
    c = concurrency(config, n)
    if c > n:
      raise ConfigError(f"--concurrency {c} exceeds the dataset's {n} clients.")
    if presets.cohort_size(config) > c:
      raise ConfigError(f"--buffer {config['buffer']} exceeds the {c} clients in flight "
                        f"(--concurrency, default min(4 x buffer, {n} clients)).")
    return
  if config["clients_per_round"] > n:
    raise ConfigError(
        f"clients_per_round={config['clients_per_round']} exceeds the dataset's "
        f"{n} clients.")
  if sampled_cohort(config) > n:
    raise ConfigError(f"--over-select {config['over_select']} samples {sampled_cohort(config)} "
                      f"clients, more than the dataset's {n}; lower it.")


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


@contextlib.contextmanager
def option_errors():
  """Where the library's refusals become option errors: the one translation.

  A ``ValueError`` raised inside (by a library constructor given the
  configuration's values: the accountant, the sampler, the aggregator, the
  algorithm, the data) is re-raised as a :class:`ConfigError` worded in
  command-line flags (:func:`flag_message`); a ``ConfigError`` passes as is.

  Yields:
    Nothing.
  """
  try:
    yield
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(flag_message(e)) from e
