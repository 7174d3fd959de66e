"""Optional dependencies: imported where used, with one clear line when missing."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, purpose: str, install: str) -> ModuleType:
  """Imports ``module``, or says what needs it and how to install it.

  Args:
    module: the import name (``"h5py"``, ``"flwr_datasets.partitioner"``).
    purpose: what needs it, for the message (``"Reading TFF's HDF5 files"``).
    install: the command that installs it (``"pip install 'fedjax_lite[tff]'"``).

  Returns:
    The module.

  Raises:
    ImportError: ``"<purpose> needs <package>, which is not installed: <install>"``.
  """
  try:
    return importlib.import_module(module)
  except ImportError:
    package = module.split(".")[0]
    raise ImportError(f"{purpose} needs {package}, which is not installed: {install}") from None


def jax_privacy_toeplitz() -> ModuleType:
  """jax-privacy's banded Toeplitz strategies and their sensitivity (the ``mf`` extra).

  Returns:
    ``jax_privacy.matrix_factorization.toeplitz``.

  Raises:
    ImportError: naming the extra to install.
  """
  return require("jax_privacy.matrix_factorization.toeplitz",
                 "Banded matrix factorization (its strategy and sensitivity)",
                 "pip install 'fedjax_lite[mf]'")
