"""Lazy package attributes (PEP 562): a package names what it offers, importing on first use.

``import fedjax_lite`` then costs no JAX import until an attribute that needs
it is read, so ``fedjax-lite --help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable, Mapping
from typing import Any


def attach(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], Any],
                                                             Callable[[], list[str]]]:
  """``(__getattr__, __dir__)`` for ``package`` whose attribute ``name`` lives in ``where[name]``.

  Args:
    package: the package's ``__name__``.
    where: ``{attribute: module}``; a module's own name maps to itself for a
      submodule (``{"privacy": "fedjax_lite.privacy"}``).

  Returns:
    The two module-level functions; the first caches what it imports in the
    package's namespace.
  """

  def __getattr__(name: str) -> Any:  # noqa: N807 - PEP 562's name
    if name not in where:
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    module = importlib.import_module(where[name])
    # A function named like its module (algorithms.fedprox) is the function.
    value = getattr(module, name) if hasattr(module, name) else module
    vars(importlib.import_module(package))[name] = value
    return value

  def __dir__() -> list[str]:  # noqa: N807 - PEP 562's name
    return sorted(set(where) | set(vars(importlib.import_module(package))))

  return __getattr__, __dir__


class FunctionsOverModules(types.ModuleType):
  """A package whose public functions share their modules' names (``algorithms.fedprox``).

  Importing a submodule makes the import system set it as the package's
  attribute; this class keeps the attribute the function of that name
  instead, as an eager ``from .fedprox import fedprox`` would.
  """

  def __setattr__(self, name: str, value: Any) -> None:
    if (isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}"
        and callable(getattr(value, name, None))):
      value = getattr(value, name)
    super().__setattr__(name, value)
