"""Named algorithms: how a configuration builds each one, declared in one place.

``fedjax_lite.algorithms.PRESETS`` holds one :class:`Preset` per algorithm:
its name, its own hyperparameters (:class:`Hyperparameter`: configuration
key, type, default, range, help) and ``build(context, **hyperparameters)``,
which makes the :class:`fedjax_lite.FederatedAlgorithm` from what every
algorithm shares (:class:`BuildContext`: loss, local learning rate, epochs,
batch size, server optimizer, aggregator, ...). ``build`` may be an import
path (``"fedjax_lite.algorithms.fedprox:_build_preset"``), imported on first
use, so that reading the presets imports no JAX. :mod:`fedjax_lite.presets`
and the command line read everything from there (options, defaults, checks,
which wrappers apply), so adding an algorithm touches its module, the
package ``__init__`` and its test.

Example (a declaration in ``fedjax_lite/algorithms/__init__.py``)::

    Preset("fedprox", "FedProx (Li et al. 2020)",
           "fedjax_lite.algorithms.fedprox:_build_preset",
           (Hyperparameter("mu", float, 0.01, "FedProx's proximal coefficient mu", low=0.0),),
           local_work=True, wraps_client_update=True)
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from fedjax_lite._validate import check_int, check_real

if TYPE_CHECKING:  # annotations only: declaring presets imports no JAX
  import optax

  from fedjax_lite.aggregation import Aggregator
  from fedjax_lite.client import LocalWork, LossFn


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
  """One hyperparameter of a named algorithm, as a configuration key.

  Attributes:
    key: the configuration key (``--key-with-dashes`` on the command line);
      unique across all presets.
    kind: ``float`` or ``int``.
    default: its default value; ``None`` means "derived" (``help`` says from
      what) and is passed to ``build`` as ``None``.
    help: one line for ``--help``.
    low: smallest allowed value (``None``: unbounded).
    low_open: whether ``low`` itself is excluded.
    high: largest allowed value (``None``: unbounded).
    high_open: whether ``high`` itself is excluded.
  """

  key: str
  kind: type
  default: Any
  help: str
  low: float | None = None
  low_open: bool = False
  high: float | None = None
  high_open: bool = False

  def __post_init__(self):
    if self.kind not in (int, float):
      raise TypeError(f"Hyperparameter {self.key!r}: kind must be int or float; got "
                      f"{self.kind!r}.")

  def check(self, value: Any) -> None:
    """Raises ``TypeError``/``ValueError`` naming :attr:`key` for a value outside its domain.

    Args:
      value: the configured value (``None`` is accepted only where the
        default is ``None``).
    """
    if value is None and self.default is None:
      return
    if self.kind is int:
      check_int(self.key, value, minimum=-sys.maxsize)
    check_real(self.key, value, low=-math.inf if self.low is None else self.low,
               high=math.inf if self.high is None else self.high, low_open=self.low_open,
               high_open=self.high_open)


@dataclasses.dataclass(frozen=True)
class BuildContext:
  """What every named algorithm is built from, apart from its own hyperparameters.

  Attributes:
    loss_fn: ``loss(params, batch) -> scalar``.
    client_optimizer: the local optax optimizer (SGD at ``client_lr``).
    client_lr: the local learning rate (may be traced, e.g. swept).
    num_epochs: local epochs per round.
    batch_size: examples per local step.
    server_optimizer: the server's optax transformation.
    aggregator: the aggregator (``None``: the preset's default mean).
    local_work: a :class:`fedjax_lite.client.LocalWork` (only given to presets
      declaring ``local_work=True``), else ``None``.
    private: whether a DP aggregator is in use.
    cohort_size: clients per round (expected, under Poisson sampling).
  """

  loss_fn: LossFn
  client_optimizer: optax.GradientTransformation
  client_lr: Any
  num_epochs: int
  batch_size: int
  server_optimizer: optax.GradientTransformation
  aggregator: Aggregator | None = None
  local_work: LocalWork | None = None
  private: bool = False
  cohort_size: int | None = None


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named algorithm: how a configuration builds it, and which options apply to it.

  Attributes:
    name: the ``algorithm`` value that selects it.
    summary: one line (the algorithm and its paper).
    build: ``build(context, **hyperparameters) -> FederatedAlgorithm`` with
      the default execution (the caller chooses ``chunk_size`` and ``mesh``),
      or its import path ``"package.module:function"``, imported on first
      use (so that declaring a preset imports no JAX).
    hyperparameters: its own :class:`Hyperparameter` s, passed to ``build``
      by key.
    stateful: it keeps a state per client (``init(params, num_clients=N)``).
    local_work: it honours ``context.local_work`` (local-work budgets and
      stragglers apply).
    wraps_client_update: its client messages are model deltas, so attacks
      and error feedback may wrap its client update.
    mean_weights: the mean aggregator's weighting when none is configured
      (``"num_examples"`` or ``"uniform"``).
    dp_refusal: why it cannot run with a DP aggregator, or ``None``.
  """

  name: str
  summary: str
  build: Callable[..., Any] | str
  hyperparameters: tuple[Hyperparameter, ...] = ()
  stateful: bool = False
  local_work: bool = False
  wraps_client_update: bool = False
  mean_weights: str = "num_examples"
  dp_refusal: str | None = None

  def make(self, context: BuildContext, **hyperparameters: Any) -> Any:
    """``build(context, **hyperparameters)``, importing ``build`` if it is a path.

    Args:
      context: the :class:`BuildContext`.
      **hyperparameters: the preset's own, by key.

    Returns:
      The :class:`fedjax_lite.FederatedAlgorithm`.
    """
    build = self.build
    if isinstance(build, str):
      module, _, attr = build.partition(":")
      build = getattr(importlib.import_module(module), attr)
    return build(context, **hyperparameters)

  def defaults(self) -> dict[str, Any]:
    """``{key: default}`` of its hyperparameters."""
    return {h.key: h.default for h in self.hyperparameters}


def collect(presets: Iterable[Preset]) -> dict[str, Preset]:
  """``{name: preset}``, refusing repeated names or hyperparameter keys.

  Args:
    presets: the :class:`Preset` s, in the order the command line lists them.

  Returns:
    A dict in the same order.

  Raises:
    ValueError: for two presets with one name, or two hyperparameters with
      one key (configuration keys are flat).
  """
  by_name: dict[str, Preset] = {}
  keys: dict[str, str] = {}
  for preset in presets:
    if preset.name in by_name:
      raise ValueError(f"two presets are named {preset.name!r}.")
    for h in preset.hyperparameters:
      if h.key in keys:
        raise ValueError(f"hyperparameter key {h.key!r} of {preset.name!r} is already "
                         f"{keys[h.key]!r}'s; configuration keys must be unique.")
      keys[h.key] = preset.name
    by_name[preset.name] = preset
  return by_name
