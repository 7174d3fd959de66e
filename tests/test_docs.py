"""The API reference builds from the docstrings without a warning, and every public
function and class documents itself."""

from __future__ import annotations

import inspect
import warnings

import fedjax_lite as fl


def _public_modules():
  """fedjax_lite and the submodules it exports."""
  return [fl] + [getattr(fl, n) for n in fl.__all__ if inspect.ismodule(getattr(fl, n))]


def test_api_reference_builds_without_warnings(tmp_path):
  import pdoc  # a dev dependency (pyproject [dev]), installed by `make test`
  pdoc.render.configure(docformat="google")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pdoc.pdoc("fedjax_lite", output_directory=tmp_path)
  from_pdoc = [str(w.message) for w in caught if "pdoc" in w.filename]
  assert not from_pdoc, from_pdoc
  for name in ("fedjax_lite.html", "fedjax_lite/algorithms.html", "fedjax_lite/privacy.html"):
    assert (tmp_path / name).stat().st_size > 1000, name


def test_every_public_callable_has_a_docstring():
  missing = []
  for module in _public_modules():
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for name in names:
      obj = getattr(module, name)
      if inspect.ismodule(obj) or not callable(obj):
        continue
      if getattr(obj, "__module__", "").startswith("fedjax_lite") and not inspect.getdoc(obj):
        missing.append(f"{module.__name__}.{name}")
  assert not missing, f"public callables without a docstring: {missing}"


def test_public_functions_document_args_and_returns():
  """Google-style sections: ``Args:`` when a function takes arguments, ``Returns:`` always."""
  missing = set()
  for module in _public_modules():
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for name in names:
      obj = getattr(module, name)
      if not inspect.isfunction(obj) or not obj.__module__.startswith("fedjax_lite"):
        continue
      doc = inspect.getdoc(obj) or ""
      if inspect.signature(obj).parameters and "Args:" not in doc:
        missing.add(f"{obj.__module__}.{name}: no Args section")
      if "Returns:" not in doc:
        missing.add(f"{obj.__module__}.{name}: no Returns section")
  assert not missing, sorted(missing)
