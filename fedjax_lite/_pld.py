"""Privacy-loss PMFs composed with NumPy: dp-accounting's arithmetic without its loops.

Private to :mod:`fedjax_lite.accounting` (its :class:`~fedjax_lite.accounting.EpsilonCurve`).
dp-accounting's ``DensePLDPmf.compose`` and ``get_epsilon_for_delta`` walk the
support in Python; here the same sums are NumPy cumulative sums (added in the
same order), and the one-round PMF's spectrum is reused across rounds.
"""

import math
from typing import Any

import numpy as np
from scipy import fft as sp_fft


def pmfs_of(distribution: Any) -> tuple["DensePMF", ...]:
  """A ``PrivacyLossDistribution``'s PMFs (remove, and add unless symmetric).

  Args:
    distribution: a dp-accounting ``PrivacyLossDistribution`` (pessimistic).

  Returns:
    Its PMFs as :class:`DensePMF`; the epsilon is the largest of theirs.
  """
  pmfs = [distribution._pmf_remove]  # noqa: SLF001 - dp-accounting's own fields
  if not distribution._symmetric:  # noqa: SLF001
    pmfs.append(distribution._pmf_add)  # noqa: SLF001
  return tuple(DensePMF.from_pmf(p) for p in pmfs)


# dp-accounting's truncation of a composed PMF's tails (``compose``'s default).
_TAIL_MASS_TRUNCATION = 1e-15


class DensePMF:
  """One of a PLD's dense privacy-loss PMFs, composed with NumPy only.

  The same arithmetic as dp-accounting's ``DensePLDPmf.compose`` and
  ``get_epsilon_for_delta`` (pessimistic rounding, tails truncated at 1e-15
  with the lower tail's mass moved onto the first kept loss and the upper
  tail's to infinity), with their Python loops over the support replaced by
  cumulative sums: NumPy's ``cumsum`` adds in the same order as those loops,
  so the truncation points are the same and epsilon agrees to float rounding.
  """

  def __init__(self, discretization: float, lower: int, probs: np.ndarray,
               infinity_mass: float):
    self.discretization, self.lower, self.probs = discretization, lower, probs
    self.infinity_mass = infinity_mass

  @classmethod
  def from_pmf(cls, pmf: Any) -> "DensePMF":
    dense = pmf.to_dense_pmf()
    if not dense._pessimistic_estimate:  # noqa: SLF001 - dp-accounting's own fields
      raise ValueError("only pessimistic PLDs are composed here")
    return cls(dense._discretization, dense._lower_loss, np.asarray(dense._probs, np.float64),  # noqa: SLF001
               float(dense._infinity_mass))  # noqa: SLF001

  def spectrum(self, size: int) -> np.ndarray:
    """``rfft(probs, size)``, kept for the sizes asked (the one-round PMF is asked every round)."""
    cache = self.__dict__.setdefault("_spectra", {})
    if size not in cache:
      cache.clear()  # sizes only grow along a curve
      cache[size] = sp_fft.rfft(self.probs, size)
    return cache[size]

  def compose(self, other: "DensePMF") -> "DensePMF":
    full = self.probs.size + other.probs.size - 1
    size = fft_size(full)
    probs = sp_fft.irfft(sp_fft.rfft(self.probs, size) * other.spectrum(size), size)[:full]
    infinity = (self.infinity_mass + other.infinity_mass
                - self.infinity_mass * other.infinity_mass)
    half = _TAIL_MASS_TRUNCATION / 2
    left = _prefix_to_truncate(probs, half)
    right = max(probs.size - _prefix_to_truncate(probs[::-1], half), left + 1)
    left_mass, right_mass = np.sum(probs[:left]), np.sum(probs[right:])
    kept = probs[left:right].copy()
    kept[0] += left_mass
    return DensePMF(self.discretization, self.lower + other.lower + left, kept,
                     infinity + right_mass)

  def epsilon(self, delta: float) -> float:
    """The smallest epsilon whose hockey-stick divergence is at most ``delta``."""
    if self.infinity_mass > delta:
      return math.inf
    probs = self.probs[::-1]
    upper_loss = (self.lower + probs.size - 1) * self.discretization
    losses = upper_loss - self.discretization * np.arange(probs.size)
    # State before visiting loss k: mass_upper[k], mass_lower[k].
    mass_upper = np.concatenate([[self.infinity_mass],
                                 self.infinity_mass + np.cumsum(probs)])
    mass_lower = np.concatenate([[0.0], np.cumsum(np.exp(-losses) * probs)])
    with np.errstate(divide="ignore", invalid="ignore"):
      ok = (mass_upper[:-1] > delta) & (mass_lower[:-1] > 0)
      stop = ok & (np.log(np.where(ok, mass_upper[:-1] - delta, 1.0)
                          / np.where(ok, mass_lower[:-1], 1.0)) >= losses)
    tiny = (mass_upper[1:] >= delta) & (mass_lower[1:] == 0)  # exp(-loss) underflowed
    k_stop = int(np.argmax(stop)) if stop.any() else probs.size
    if tiny[:k_stop].any():
      return max(0.0, float(losses[int(np.argmax(tiny[:k_stop]))]))
    upper, lower = float(mass_upper[k_stop]), float(mass_lower[k_stop])
    if upper <= lower + delta:
      return 0.0
    return math.log((upper - delta) / lower)


def fft_size(n: int) -> int:
  """A fast FFT length >= ``n`` from a few per octave, so that spectra can be reused.

  Args:
    n: the least length.

  Returns:
    The length (an int).
  """
  step = max(1, 1 << max(0, n.bit_length() - 4))
  return sp_fft.next_fast_len(-(-n // step) * step, real=True)


def _prefix_to_truncate(probs: np.ndarray, threshold: float) -> int:
  """The longest prefix of ``probs`` whose running sum stays ``<= threshold``."""
  over = np.cumsum(probs) > threshold
  return int(np.argmax(over)) if over.any() else probs.size
