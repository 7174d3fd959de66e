"""The documentation stays true to the code: the API reference builds from the docstrings
without a warning, every public function and class documents itself, the README's example
runs as written, and every citation key the README names has its BibTeX entry."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import warnings
from pathlib import Path

import fedjax_lite as fl

ROOT = Path(__file__).resolve().parent.parent


def _public_objects():
  """``(module, name, obj)`` for every public name of fedjax_lite and its exported modules."""
  modules = [fl] + [getattr(fl, n) for n in fl.__all__ if inspect.ismodule(getattr(fl, n))]
  for module in modules:
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for name in names:
      yield module, name, getattr(module, name)


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
  for module, name, obj in _public_objects():
    if inspect.ismodule(obj) or not callable(obj):
      continue
    if getattr(obj, "__module__", "").startswith("fedjax_lite") and not inspect.getdoc(obj):
      missing.append(f"{module.__name__}.{name}")
  assert not missing, f"public callables without a docstring: {missing}"


def test_public_functions_document_args_and_returns():
  """Google-style sections: ``Args:`` when a function takes arguments, ``Returns:`` always."""
  missing = set()
  for _, name, obj in _public_objects():
    if not inspect.isfunction(obj) or not obj.__module__.startswith("fedjax_lite"):
      continue
    doc = inspect.getdoc(obj) or ""
    if inspect.signature(obj).parameters and "Args:" not in doc:
      missing.add(f"{obj.__module__}.{name}: no Args section")
    if "Returns:" not in doc:
      missing.add(f"{obj.__module__}.{name}: no Returns section")
  assert not missing, sorted(missing)


def _readme_section(title: str) -> str:
  text = (ROOT / "README.md").read_text()
  start = text.index(f"\n## {title}\n")
  end = text.find("\n## ", start + 1)
  return text[start:end if end >= 0 else None]


def test_readme_example_runs_as_written():
  """The "A round in 15 lines" block: executed verbatim, it trains and prints an accuracy."""
  blocks = re.findall(r"```python\n(.*?)```", _readme_section("A round in 15 lines"), re.S)
  assert len(blocks) == 1, "expected one python block in the README's example section"
  code = blocks[0]
  lines = [ln for ln in code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
  assert len(lines) <= 15, f"the README promises 15 lines of code; the example has {len(lines)}"
  namespace, out = {}, io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
  assert len(namespace["history"]) == 100 and int(namespace["state"].round) == 100
  assert float(out.getvalue().split()[-1]) > 0.8  # the README says "about 0.95"; chance 0.1


def test_every_citation_key_in_the_readme_is_in_references_bib():
  bib = (ROOT / "docs" / "references.bib").read_text()
  entries = dict(re.findall(r"@\w+\{(\w+),(.*?)\n\}", bib, re.S))
  assert len(entries) == bib.count("\n@"), "an entry of docs/references.bib did not parse"
  for key, body in entries.items():
    for field in ("title", "author", "year"):
      assert re.search(rf"^\s*{field}\s*=", body, re.M), f"{key}: no {field}"
  cited = set(re.findall(r"`([a-z]+\d{4}[a-z]+)`", _readme_section("How to cite")))
  assert len(cited) >= 15, cited
  unknown = cited - set(entries)
  assert not unknown, f"cited in the README but not in docs/references.bib: {sorted(unknown)}"
