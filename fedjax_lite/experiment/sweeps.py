"""Sweeps: ``--sweep KEY=VALUES`` parsed into experiments, each with its own configuration."""

from __future__ import annotations

import itertools
import os
import re
from typing import Any

from fedjax_lite.experiment import options
from fedjax_lite.experiment.schema import ConfigError

DEFAULTS = options.DEFAULTS
# The keys that start JAX's multi-process runtime (cleared in an experiment's configuration).
PROCESS_KEYS = ("coordinator", "num_processes", "process_id")

# Keys a sweep may vary: they change neither the population nor the shapes of
# the compiled round, and the round takes them as traced scalars.
SWEEPABLE = ("seed", "client_lr", "server_lr", "noise_multiplier", "clip")


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
