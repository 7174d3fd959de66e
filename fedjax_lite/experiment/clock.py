"""What a run on the virtual clock builds: devices, cohort sizes and FedBuff.

A configuration runs on the clock (:func:`uses_clock`) with ``--virtual-clock``,
``--deadline``, ``--over-select`` or ``--algorithm fedbuff/fedasync``; its
clients' devices come from :func:`build_devices`, and the asynchronous
algorithms are stepped by :func:`build_async`'s
:class:`fedjax_lite.asynchronous.AsyncAlgorithm`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedjax_lite import presets
from fedjax_lite.experiment.config import ConfigError, option_errors


def sampled_cohort(config: dict[str, Any]) -> int:
  """Clients sampled per round: ``clients_per_round``, over-selected by ``over_select``.

  Args:
    config: the configuration.

  Returns:
    ``ceil(over_select * clients_per_round)``, or ``clients_per_round``.
  """
  k = config["clients_per_round"]
  if config["over_select"] is None:
    return k
  return math.ceil(round(config["over_select"] * k, 9))


def uses_clock(config: dict[str, Any]) -> bool:
  """Whether a configuration runs on the virtual clock (see :func:`options.uses_clock`)."""
  from fedjax_lite.experiment import options

  return options.uses_clock(options.build(config))


def build_devices(config: dict[str, Any], num_clients: int):
  """The clients' :class:`fedjax_lite.timing.Devices` of a configuration.

  Log-normal speeds (``device_median``, ``device_sigma``, seeded by
  ``device_seed`` or ``seed``), or ``device_trace``'s measured ones.

  Raises:
    ConfigError: for a trace file that is missing, unreadable, or not one
      positive number per client.
  """
  from fedjax_lite import timing

  seed = config["seed"] if config["device_seed"] is None else config["device_seed"]
  common = dict(overhead=config["device_overhead"], availability=config["availability"])
  if config["device_trace"] is None:
    with option_errors():
      return timing.lognormal_devices(num_clients, median_seconds_per_example=config[
          "device_median"], sigma=config["device_sigma"], seed=seed, **common)
  path = config["device_trace"]
  try:
    speeds = np.load(path) if str(path).endswith(".npy") else np.loadtxt(path, ndmin=1)
  except FileNotFoundError:
    raise ConfigError(f"--device-trace {path} does not exist.") from None
  except (OSError, ValueError) as e:
    raise ConfigError(f"--device-trace {path} cannot be read as numbers: {e}") from None
  if np.shape(speeds) != (num_clients,):
    raise ConfigError(f"--device-trace {path} has {np.size(speeds)} entries of shape "
                      f"{np.shape(speeds)}; give one seconds-per-example value per client "
                      f"({num_clients}, in client-id order).")
  try:
    return timing.device_trace(speeds, **common)
  except ValueError as e:
    raise ConfigError(f"--device-trace {path}: {e}") from None


def build_async(config: dict[str, Any], algorithm: Any, devices: Any, num_clients: int):
  """FedBuff / FedAsync of a configuration (:func:`fedjax_lite.asynchronous.build_fedbuff`)."""
  from fedjax_lite import asynchronous

  a = config["staleness_a"]
  staleness = {
      "polynomial": lambda: asynchronous.polynomial_staleness(0.5 if a is None else a),
      "constant": asynchronous.constant_staleness,
      "hinge": lambda: asynchronous.hinge_staleness(10.0 if a is None else a,
                                                    config["staleness_b"]),
  }[config["staleness"]]()
  buffer = presets.cohort_size(config)
  with option_errors():
    return asynchronous.build_fedbuff(
        algorithm, devices, concurrency=concurrency(config, num_clients), buffer=buffer,
        staleness=staleness, max_staleness=config["max_staleness"],
        num_epochs=config["local_epochs"])


def concurrency(config: dict[str, Any], num_clients: int) -> int:
  """FedBuff's clients in flight: ``concurrency``, default ``min(4 x buffer, N)``."""
  if config["concurrency"] is not None:
    return config["concurrency"]
  return min(4 * presets.cohort_size(config), num_clients)
