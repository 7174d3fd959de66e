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
