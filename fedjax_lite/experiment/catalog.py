"""The named aggregators, attacks and data sets of ``fedjax-lite run``: one registration each.

A :class:`Choice` names one value of the ``aggregator``, ``attack`` or
``dataset`` option, says which options it reads (the others of its section
are refused when given) and how it is built: ``build`` is an import path
``"module:function"``, imported on first use, so reading the catalog imports
no JAX. The option's valid values, the applicability of the options it reads
and the builder the application calls all come from here: adding an
aggregator to the command line is its builder and one ``Choice``. (The
algorithms' registry is :data:`fedjax_lite.algorithms.PRESETS`.)
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Choice:
  """One named value of an option, and how to build it.

  Attributes:
    name: the value (``--aggregator krum``).
    summary: one line for ``--help`` and errors.
    build: ``"module:function"``; the function takes the flat configuration
      (and, for an attack, the client update to wrap).
    reads: the options (of its section) this choice uses.
    with_dp: whether it may run under ``--dp`` (aggregators: DP bounds the
      sensitivity of the clipped sum, which a robust aggregator does not
      have).
  """

  name: str
  summary: str
  build: str
  reads: tuple[str, ...] = ()
  with_dp: bool = True

  def make(self, *args: Any) -> Any:
    """Imports and calls :attr:`build` with ``args``.

    Args:
      *args: the configuration (and, for an attack, the update).

    Returns:
      What the builder returns.
    """
    module, _, attr = self.build.partition(":")
    return getattr(importlib.import_module(module), attr)(*args)


def collect(choices: Iterable[Choice]) -> dict[str, Choice]:
  """``{name: choice}``, refusing a repeated name.

  Args:
    choices: the :class:`Choice` s, in the order ``--help`` lists them.

  Returns:
    The dict.

  Raises:
    ValueError: for two choices with one name.
  """
  out: dict[str, Choice] = {}
  for c in choices:
    if c.name in out:
      raise ValueError(f"two choices are named {c.name!r}.")
    out[c.name] = c
  return out


_P = "fedjax_lite.presets:"
AGGREGATORS: dict[str, Choice] = collect((
    Choice("mean", "the weighted mean (example counts; uniform for qffl)", _P + "mean_builder"),
    Choice("median", "coordinate-wise median (Yin et al. 2018)", _P + "median_builder",
           with_dp=False),
    Choice("trimmed_mean", "coordinate-wise trimmed mean (Yin et al. 2018)",
           _P + "trimmed_mean_builder", ("trim_beta",), with_dp=False),
    Choice("krum", "Krum / Multi-Krum (Blanchard et al. 2017)", _P + "krum_builder",
           ("num_byzantine", "multi_krum"), with_dp=False),
))

_ATTACK_OPTIONS = ("attack_fraction", "attack_scale", "attack_seed")
ATTACKS: dict[str, Choice] = collect((
    Choice("none", "honest clients", _P + "no_attack"),
    Choice("sign_flip", "malicious clients send -scale x delta", _P + "sign_flip_attack",
           _ATTACK_OPTIONS),
    Choice("gaussian", "malicious clients send N(0, scale^2) noise", _P + "gaussian_attack",
           _ATTACK_OPTIONS),
    Choice("scaled", "malicious clients send scale x delta (boosting)", _P + "scaled_attack",
           _ATTACK_OPTIONS),
))

_B = "fedjax_lite.experiment.build:"
_PARTITIONED = ("num_clients", "partition", "alpha", "shards_per_client")
DATASETS: dict[str, Choice] = collect((
    Choice("digits", "scikit-learn's 8x8 digits, partitioned", _B + "digits_dataset",
           _PARTITIONED),
    Choice("fashion_mnist", "Fashion-MNIST from IDX files, partitioned", _B + "fashion_dataset",
           (*_PARTITIONED, "data_dir")),
    Choice("shakespeare", "federated Shakespeare, one client per speaking role, uncapped",
           _B + "shakespeare_dataset", ("max_examples_per_client",)),
    Choice("leaf", "LEAF's JSON files (FEMNIST, Shakespeare, Sent140, CelebA, Synthetic)",
           _B + "leaf_dataset", ("data_dir", "max_examples_per_client")),
    Choice("tff", "TFF's HDF5 client data (EMNIST, CIFAR-100, StackOverflow)",
           _B + "tff_dataset", ("data_dir", "vocab_file", "max_examples_per_client")),
    Choice("hf", "a Hugging Face dataset saved to disk, one client per --client-column value",
           _B + "hf_dataset", ("data_dir", "client_column", "feature_column", "label_column",
                               "max_examples_per_client")),
    Choice("synthetic", "LEAF Synthetic(alpha, beta)", _B + "synthetic_dataset",
           ("num_clients", "synthetic_alpha", "synthetic_beta", "max_examples_per_client")),
))


def reads(catalog: dict[str, Choice], key: str) -> tuple[str, ...]:
  """The names of the choices that read option ``key``.

  Args:
    catalog: one of :data:`AGGREGATORS`, :data:`ATTACKS`, :data:`DATASETS`.
    key: an option.

  Returns:
    The names, in catalog order.
  """
  return tuple(name for name, c in catalog.items() if key in c.reads)


# Data sets read from a path: ``--dataset KIND:PATH`` is ``--dataset KIND --data-dir PATH``.
FROM_PATH = ("leaf", "tff", "hf")
