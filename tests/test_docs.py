"""The documentation stays true to the code: the API reference builds from the docstrings
without a warning, every public function and class documents itself, the README's example
runs as written, and every citation key the README names has its BibTeX entry. The README
stays short, the guide in docs/ builds (with the API reference) into HTML, every relative
link of the README and the guide points at a file of the repository, and neither mentions
files outside it."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

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


def test_contributing_worked_example_is_an_algorithm():
  """CONTRIBUTING's worked example runs as written; at beta=0 it is FedAvg exactly."""
  import jax
  import jax.numpy as jnp
  import optax

  from tests.conftest import RAGGED_SIZES, linear_model, make_clients

  text = (ROOT / "CONTRIBUTING.md").read_text()
  section = text[text.index("### A worked example"):text.index("## Adding an aggregator")]
  (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
  namespace: dict = {}
  exec(compile(code, "CONTRIBUTING.md", "exec"), namespace)  # noqa: S102 - the docs' own code
  params, loss = linear_model()
  pop = fl.from_clients(make_clients(RAGGED_SIZES))
  kw = dict(client_lr=0.1, num_epochs=1, batch_size=4)
  fedavg = fl.build_federated_algorithm(fl.build_client_update(loss, optax.sgd(0.1),
                                                               batch_size=4), fl.server.fedavg())
  for beta, same in ((0.0, True), (0.9, False)):
    algo = fl.build_federated_algorithm(namespace["lookahead_fedavg"](loss, beta=beta, **kw),
                                        chunk_size=3)
    a, b = algo.init(params), fedavg.init(params)
    for r in range(3):
      cohort, key = fl.take(pop, jnp.asarray([r, r + 2, r + 4])), jax.random.key(r)
      a, b = algo.round(a, cohort, key)[0], fedavg.round(b, cohort, key)[0]
    close = all(np.allclose(x, y, atol=1e-6) for x, y in zip(
        jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True))
    assert close == same, beta
  # Its PRESET joins the registry and builds the same algorithm from a configuration.
  preset = namespace["PRESET"]
  assert "lookahead_fedavg" in fl.algorithms.registry.collect(
      [*fl.algorithms.PRESETS.values(), preset])
  ctx = fl.algorithms.registry.BuildContext(
      loss_fn=loss, client_optimizer=optax.sgd(0.1), client_lr=0.1, num_epochs=1, batch_size=4,
      server_optimizer=fl.server.fedavg())
  built = preset.make(ctx, **preset.defaults())
  direct = namespace["lookahead_fedavg"](loss, beta=0.9, **kw)
  cohort, key = fl.take(pop, jnp.asarray([0, 2, 4])), jax.random.key(0)
  for x, y in zip(jax.tree.leaves(built.round(built.init(params), cohort, key)[0]),
                  jax.tree.leaves(direct.round(direct.init(params), cohort, key)[0]), strict=True):
    np.testing.assert_array_equal(x, y)


def test_every_lazily_loaded_name_resolves():
  """fedjax_lite, fedjax_lite.experiment and fedjax_lite.algorithms load their names on first
  use (PEP 562): each name must come from the module they say, and __all__ must be loadable."""
  import fedjax_lite.algorithms as algorithms
  import fedjax_lite.experiment as experiment

  for package in (fl, experiment, algorithms):
    for name in package._WHERE:
      assert getattr(package, name) is not None, (package.__name__, name)
    for name in package.__all__:
      assert hasattr(package, name), (package.__name__, name)
  assert callable(algorithms.fedprox) and callable(algorithms.ditto)  # not their modules


# --- The README and the guide (docs/*.md) ---

README_MAX_LINES = 250
# Files outside the repository, or not shipped with it, that user documentation must not name.
NOT_IN_THE_REPOSITORY = ("../shared", "ARCHITECTURE-REVIEW", "WORKLOADS.md", "STYLE.md")
_FENCED = re.compile(r"^```.*?^```", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _guide_pages() -> list[Path]:
  pages = sorted((ROOT / "docs").glob("*.md"))
  assert {"index.md", "main-job.md", "performance.md"} <= {p.name for p in pages}, pages
  return pages


def _user_docs() -> list[Path]:
  """The README and every Markdown file under docs/ (the guide and the benchmark report)."""
  return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _relative_links(path: Path) -> list[str]:
  """The relative link targets of a Markdown file (code blocks and spans left out)."""
  text = _CODE_SPAN.sub("", _FENCED.sub("", path.read_text(encoding="utf-8")))
  links = [link for link in _LINK.findall(text) if not link.startswith("#")]
  return [link for link in links if not _SCHEME.match(link)]


def test_readme_is_short():
  lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
  assert len(lines) < README_MAX_LINES, (
      f"README.md has {len(lines)} lines; keep it under {README_MAX_LINES} and move details "
      "to a page under docs/")


def test_relative_links_point_at_files_of_the_repository():
  """Every relative link of the README and the guide names a file (or folder) that exists in
  the repository; ``#anchors`` are not checked here (see the built HTML below)."""
  broken, counted = [], {}
  for path in [ROOT / "README.md", *_guide_pages()]:
    links = _relative_links(path)
    counted[path.name] = len(links)
    for link in links:
      target = (path.parent / link.split("#", 1)[0]).resolve()
      if not target.exists() or not target.is_relative_to(ROOT):
        broken.append(f"{path.relative_to(ROOT)}: {link}")
  assert not broken, f"links to no file of the repository: {broken}"
  # The README links every guide page, and the links were found at all.
  readme_links = {link.split("#", 1)[0] for link in _relative_links(ROOT / "README.md")}
  missing = {f"docs/{p.name}" for p in _guide_pages()} - readme_links
  assert not missing, f"guide pages the README's Documentation section does not link: {missing}"
  assert counted["index.md"] >= len(_guide_pages()) - 1, counted


def test_user_docs_name_no_file_outside_the_repository():
  found = [f"{path.relative_to(ROOT)}: {name}" for path in _user_docs()
           for name in NOT_IN_THE_REPOSITORY if name in path.read_text(encoding="utf-8")]
  assert not found, f"the README and docs/ must not mention these: {found}"


def test_docs_build_writes_the_pages_and_the_api_reference(tmp_path):
  """``python docs/build.py OUT`` (what ``make docs`` runs): an HTML file per guide page,
  the index linking every page and the API reference, pdoc's API reference, page-to-page
  links rewritten to HTML, and every in-page anchor present."""
  out = tmp_path / "site"
  result = subprocess.run([sys.executable, str(ROOT / "docs" / "build.py"), str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  names = [p.stem for p in _guide_pages()]
  html = {name: (out / f"{name}.html").read_text(encoding="utf-8") for name in names}
  api = out / "api" / "fedjax_lite.html"
  assert api.stat().st_size > 1000 and (out / "api" / "fedjax_lite" / "privacy.html").is_file()
  index_links = set(re.findall(r'href="([^"#]+)', html["index"]))
  assert {f"{n}.html" for n in names if n != "index"} <= index_links, index_links
  assert "api/fedjax_lite.html" in index_links
  ids = {name: set(re.findall(r'\sid="([^"]+)"', text)) for name, text in html.items()}
  problems = []
  for name, text in html.items():
    assert "<h1" in text and "```" not in text, f"{name}.html: the Markdown was not rendered"
    for href in re.findall(r'href="([^"]+)"', text):
      page, _, anchor = href.partition("#")
      if re.fullmatch(r"[\w-]+\.md", page) and page[:-3] in ids:
        problems.append(f"{name}.html: {href} (not rewritten to .html)")
      target = name if not page else page[:-5] if page.endswith(".html") else None
      if anchor and target in ids and anchor not in ids[target]:
        problems.append(f"{name}.html: {href} (no such anchor)")
      if page and not _SCHEME.match(page) and not (out / page).exists():
        problems.append(f"{name}.html: {href} (no such file from the output directory)")
  assert not problems, problems
