"""Host-side accounting (fedjax_lite.accounting): its split from the mechanisms, messages that
name library parameters, and PLD epsilons from one cached one-round distribution that equal
dp-accounting's own answers."""

from __future__ import annotations

import ast
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp
from hypothesis import given, settings
from hypothesis import strategies as st

import fedjax_lite as fl
from fedjax_lite import _pld, accounting, cli, experiment, privacy
from fedjax_lite.accounting import DPSpec
from fedjax_lite.experiment import DPSetup

PACKAGE = Path(fl.__file__).resolve().parent
MOVED = ("ACCOUNTANTS", "DPSpec", "MECHANISMS", "PLD_DISCRETIZATION", "SAMPLINGS",
         "adaptive_noise_multiplier", "calibrate_noise", "dp_event", "epsilon",
         "make_accountant", "round_event")
ADD_OR_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE


def test_privacy_reexports_every_accounting_name_unchanged():
  assert fl.accounting is accounting and "accounting" in fl.__all__
  for name in MOVED:
    assert getattr(privacy, name) is getattr(accounting, name), name
    assert getattr(fl.privacy, name) is getattr(accounting, name), name


def test_only_the_accounting_module_imports_dp_accounting():
  importers = set()
  for path in PACKAGE.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      if any(n == "dp_accounting" or n.startswith("dp_accounting.") for n in names):
        importers.add(path.relative_to(PACKAGE).as_posix())
  assert importers == {"accounting.py"}


# ---------------------------------------------------------------------------
# Messages: library parameters, never command-line flags


@pytest.mark.parametrize("spec, accountant, names", [
    (DPSpec("laplace", 1.0, "fixed", 100, 10), "pld", ("sampling='poisson'", "accountant='pld'")),
    (DPSpec("gaussian", 1.0, "fixed", 100, 10), "pld", ("accountant='rdp'", "sampling='poisson'")),
    (DPSpec("laplace", 1.0, "poisson", 100, 10), "rdp", ("accountant='pld'",)),
    (DPSpec("laplace", 1.0, "fixed", 10, 10), "pld", ("accountant='rdp'", "sampling='poisson'")),
])
def test_refusals_name_library_parameters_not_flags(spec, accountant, names):
  for call in (lambda: accounting.make_accountant(spec, accountant),
               lambda: accounting.epsilon(spec, 5, 1e-5, accountant)):
    with pytest.raises(ValueError) as info:
      call()
    message = str(info.value)
    assert all(n in message for n in names), message
    assert "--" not in message, message


def test_the_application_words_library_refusals_as_flags(capsys):
  with pytest.raises(ValueError) as info:
    accounting.make_accountant(DPSpec("laplace", 1.0, "fixed", 100, 10), "rdp")
  assert "use sampling='poisson' with accountant='pld'" in str(info.value)
  assert "use --sampling poisson with --accountant pld" in experiment.flag_message(info.value)
  assert experiment.flag_message(ValueError("use weighting='uniform'")) == \
      "use weighting='uniform'"  # not a command-line flag: left alone
  assert cli.main(["privacy", "epsilon", "--mechanism", "laplace", "--noise-multiplier", "1",
                   "--sampling-rate", "0.1", "--rounds", "5", "--delta", "1e-5",
                   "--accountant", "rdp"]) == 2
  err = capsys.readouterr().err
  assert "use --accountant pld" in err and "accountant='pld'" not in err


# ---------------------------------------------------------------------------
# PLD: one construction of the one-round distribution, dp-accounting's answers


def _direct_pld_epsilon(event, rounds, delta, neighbours=ADD_OR_REMOVE, discretization=1e-4):
  """dp-accounting's own answer: a fresh PLDAccountant composing the whole run."""
  acc = pld.PLDAccountant(neighboring_relation=neighbours,
                          value_discretization_interval=discretization)
  acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
  return acc.get_epsilon(delta)


G, L = dp_accounting.GaussianDpEvent, dp_accounting.LaplaceDpEvent
POISSON = dp_accounting.PoissonSampledDpEvent
# (spec, the round's event written out here, neighbouring relation, one-round PLD cached)
PLD_CASES = {
    "poisson_gaussian": (DPSpec("gaussian", 1.1, "poisson", 1000, 10), POISSON(0.01, G(1.1)),
                         ADD_OR_REMOVE, True),
    # Adaptive clipping's composed pair (clipped sum and count noise) is Gaussian(z) overall.
    "poisson_gaussian_adaptive": (
        DPSpec("gaussian", 1.2, "poisson", 1000, 50, count_noise_std=2.5),
        POISSON(0.05, G(1.2)), ADD_OR_REMOVE, True),
    "poisson_laplace": (DPSpec("laplace", 3.0, "poisson", 1000, 100), POISSON(0.1, L(3.0)),
                        ADD_OR_REMOVE, True),
    "laplace_everyone": (DPSpec("laplace", 3.0, "poisson", 10, 10), L(3.0), ADD_OR_REMOVE, True),
    "local_laplace": (DPSpec("laplace", 3.0, "fixed", 1000, 10, local=True), L(1.5),
                      ADD_OR_REMOVE, True),
    # An unsampled Gaussian: dp-accounting builds the T-fold Gaussian itself, not a
    # self-composition; no one-round distribution to cache.
    "local_gaussian": (DPSpec("gaussian", 8.0, "poisson", 1000, 10, local=True), G(4.0),
                       ADD_OR_REMOVE, False),
    "fixed_everyone_gaussian": (DPSpec("gaussian", 12.0, "fixed", 50, 50), G(6.0), REPLACE_ONE,
                                False),
}


def _count_constructions(monkeypatch):
  """Counts dp-accounting's one-mechanism PLD constructions (the costly step)."""
  module = pld.privacy_loss_distribution
  calls = []
  for name in ("from_gaussian_mechanism", "from_laplace_mechanism"):
    original = getattr(module, name)

    def counted(*args, _original=original, _name=name, **kwargs):
      calls.append(_name)
      return _original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
  accounting._one_round_pld.cache_clear()
  return calls


@pytest.mark.parametrize("case", sorted(PLD_CASES))
def test_pld_epsilon_equals_dp_accounting_for_every_round_count(case, monkeypatch):
  spec, event, neighbours, cached = PLD_CASES[case]
  calls = _count_constructions(monkeypatch)
  rounds = (1, 7, 100)
  ours = [accounting.epsilon(spec, t, 1e-5, "pld") for t in rounds]
  assert len(calls) == (1 if cached else len(rounds)), calls
  expected = [_direct_pld_epsilon(event, t, 1e-5, neighbours) for t in rounds]
  np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=0)
  assert ours[0] < ours[1] < ours[2]


def test_pld_does_not_account_sampling_without_replacement():
  spec = DPSpec("gaussian", 1.5, "fixed", 1000, 50)
  with pytest.raises(ValueError, match="accountant='rdp' or sampling='poisson'"):
    accounting.epsilon(spec, 10, 1e-5, "pld")
  assert isinstance(accounting.round_event(spec, "pld"),
                    dp_accounting.SampledWithoutReplacementDpEvent)


@pytest.mark.parametrize("case", ["poisson_gaussian", "poisson_laplace"])
def test_per_round_epsilons_build_the_one_round_pld_once(case, monkeypatch):
  """What a 1,000-round run does: epsilon(r) after every round (here a sample of r)."""
  spec, event, _, _ = PLD_CASES[case]
  calls = _count_constructions(monkeypatch)
  setup = DPSetup(spec, aggregator=None, sampler=None, delta=1e-5, accountant="pld")
  rounds = [*range(1, 11), 50, 100, 250, 500, 1000]
  eps = [setup.epsilon(r) for r in rounds]
  assert len(calls) == 1, calls
  assert all(a < b for a, b in zip(eps, eps[1:], strict=False))
  for r in (1, 1000):
    np.testing.assert_allclose(eps[rounds.index(r)], _direct_pld_epsilon(event, r, 1e-5),
                               rtol=1e-9, atol=0)


def test_rdp_accounting_is_untouched_by_the_pld_cache(monkeypatch):
  spec = DPSpec("gaussian", 1.1, "poisson", 1000, 10)
  calls = _count_constructions(monkeypatch)
  for t in (1, 7, 100):
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(POISSON(0.01, G(1.1)), t))
    np.testing.assert_allclose(accounting.epsilon(spec, t, 1e-5, "rdp"), acc.get_epsilon(1e-5),
                               rtol=1e-9, atol=0)
  assert calls == [] and accounting._one_round_pld.cache_info().currsize == 0


@pytest.mark.parametrize("case", ["poisson_gaussian", "poisson_laplace", "local_gaussian"])
def test_epsilon_curve_equals_the_direct_answer_for_every_round(case, monkeypatch):
  """The curve composes one new round per call, and agrees with epsilon() and dp-accounting."""
  spec, event, neighbours, cached = PLD_CASES[case]
  calls = _count_constructions(monkeypatch)
  composed = []
  original = _pld.DensePMF.compose

  def counting_compose(self, other):
    composed.append(1)
    return original(self, other)

  monkeypatch.setattr(_pld.DensePMF, "compose", counting_compose)
  curve = accounting.EpsilonCurve(spec, 1e-5, "pld")
  rounds = [*range(1, 13), 20, 15, 12]  # one at a time, a jump, back (a resume), a repeat
  eps = [curve(r) for r in rounds]
  if cached:
    assert len(calls) == 1
    # remove, and add unless symmetric
    pmfs = len(accounting._one_round_pmfs(spec, accounting.PLD_DISCRETIZATION))
    assert len(composed) == (12 + 1 + 1) * pmfs  # one per new round count, none for a repeat
  expected = {r: _direct_pld_epsilon(event, r, 1e-5, neighbours) for r in set(rounds)}
  np.testing.assert_allclose(eps, [expected[r] for r in rounds], rtol=1e-9, atol=0)
  assert all(a < b for a, b in zip(eps[:13], eps[1:13], strict=False))


def test_epsilon_curve_over_a_long_run_on_a_coarser_grid():
  """200 rounds one at a time on the 1e-3 grid: every sampled round equals a fresh
  PLDAccountant on that grid, and is an upper bound of the default grid's epsilon."""
  spec, event, neighbours, _ = PLD_CASES["poisson_gaussian"]
  coarse = accounting.EpsilonCurve(spec, 1e-5, "pld", discretization=1e-3)
  eps = [coarse(r) for r in range(1, 201)]
  for r in (1, 57, 200):
    assert eps[r - 1] == pytest.approx(
        _direct_pld_epsilon(event, r, 1e-5, neighbours, discretization=1e-3), rel=1e-9)
    fine = accounting.epsilon(spec, r, 1e-5, "pld")
    assert fine <= eps[r - 1] <= fine * 1.01
  assert accounting.epsilon(spec, 200, 1e-5, "pld", discretization=1e-3) == pytest.approx(
      eps[-1], rel=1e-9)
  with pytest.raises(ValueError, match="`discretization` must be > 0"):
    accounting.EpsilonCurve(spec, 1e-5, "pld", discretization=0.0)


def test_epsilon_curve_refuses_what_epsilon_refuses():
  with pytest.raises(ValueError, match="accountant='rdp' or sampling='poisson'"):
    accounting.EpsilonCurve(DPSpec("gaussian", 1.5, "fixed", 1000, 50), 1e-5, "pld")
  with pytest.raises(ValueError, match="delta"):
    accounting.EpsilonCurve(DPSpec("gaussian", 1.5, "poisson", 1000, 50), 2.0, "rdp")


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 400), lower=st.integers(-300, 300), seed=st.integers(0, 2**31 - 1),
       infinity=st.sampled_from([0.0, 1e-16, 1e-9, 3e-6]), tails=st.booleans(),
       delta=st.sampled_from([1e-8, 1e-5, 1e-2]))
def test_vectorized_pmf_arithmetic_equals_dp_accountings_loops(size, lower, seed, infinity,
                                                               tails, delta):
  """_DensePMF's epsilon search and composition (cumulative sums) against dp-accounting's
  DensePLDPmf (Python loops over the support) on random PMFs, with tiny tails to truncate."""
  from dp_accounting.pld import pld_pmf

  rng = np.random.default_rng(seed)
  probs = rng.random(size) ** 4
  if tails:  # masses below the 1e-15 truncation at both ends
    probs[: size // 4] *= 1e-18
    probs[size - size // 4:] *= 1e-18
  probs *= (1 - infinity) / probs.sum()
  theirs = pld_pmf.DensePLDPmf(1e-2, lower, probs.copy(), infinity, True)
  ours = _pld.DensePMF.from_pmf(theirs)
  assert ours.epsilon(delta) == pytest.approx(theirs.get_epsilon_for_delta(delta), rel=1e-9,
                                              abs=1e-12)
  other_probs = rng.random(7)
  other_probs /= other_probs.sum()
  other = pld_pmf.DensePLDPmf(1e-2, -3, other_probs, 0.0, True)
  a = ours.compose(_pld.DensePMF.from_pmf(other))
  b = theirs.compose(other, tail_mass_truncation=1e-15)
  assert a.lower == b._lower_loss and a.probs.size == b._probs.size
  np.testing.assert_allclose(a.probs, b._probs, rtol=1e-9, atol=1e-15)  # FFT rounding
  assert a.infinity_mass == pytest.approx(b._infinity_mass, rel=1e-9, abs=1e-15)
