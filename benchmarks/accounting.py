"""Per-round epsilon of a long PLD-accounted run, three ways, side by side.

``python -m benchmarks.accounting [--rounds 1000] [--noise 1.0] [--rate 0.01]`` prints one
JSON line per method:

* ``curve``: :class:`fedjax_lite.accounting.EpsilonCurve` (one composition of the cached
  one-round PMFs per round, NumPy cumulative sums for truncation and epsilon);
* ``dp_accounting_compose``: the same incremental composition with dp-accounting's own
  ``PrivacyLossDistribution.compose`` and ``get_epsilon_for_delta`` (Python loops over the
  support);
* ``direct``: ``accounting.epsilon(spec, r, ...)`` from scratch for every round, i.e.
  dp-accounting's ``self_compose(r)``; timed on ``--direct-samples`` evenly spaced rounds and
  reported both as measured and as the per-round mean times ``--rounds`` (an estimate, marked
  ``estimated``).

Each line carries the largest relative difference from ``direct`` on the sampled rounds, and
``fft_floor_s``: the time of ``--rounds`` bare multiply-and-inverse-FFT steps on the final
distribution's grid, the least work any exact per-round method on this grid does.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from dp_accounting import pld
from scipy import fft as sp_fft

from fedjax_lite import _pld, accounting


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=1000)
  p.add_argument("--noise", type=float, default=1.0, help="noise multiplier")
  p.add_argument("--rate", type=float, default=0.01, help="Poisson sampling rate")
  p.add_argument("--delta", type=float, default=1e-5)
  p.add_argument("--direct-samples", type=int, default=5)
  args = p.parse_args(argv)
  population = 100_000
  spec = accounting.DPSpec("gaussian", args.noise, "poisson", population, args.rate * population)
  rounds = list(range(1, args.rounds + 1))
  sampled = sorted({int(r) for r in np.linspace(1, args.rounds, args.direct_samples)})

  start = time.perf_counter()
  direct = {r: accounting.epsilon(spec, r, args.delta, "pld") for r in sampled}
  direct_s = time.perf_counter() - start

  accounting.epsilon(spec, 1, args.delta, "pld")  # the one-round PLD is cached for all below
  start = time.perf_counter()
  curve = accounting.EpsilonCurve(spec, args.delta, "pld")
  new = {r: curve(r) for r in rounds}
  curve_s = time.perf_counter() - start

  one = accounting._one_round_pld(spec, accounting.PLD_DISCRETIZATION)
  start = time.perf_counter()
  with accounting._quiet_absl():
    composed = pld.privacy_loss_distribution.identity(
        value_discretization_interval=accounting.PLD_DISCRETIZATION)
    old = {}
    for r in rounds:
      composed = composed.compose(one)
      old[r] = composed.get_epsilon_for_delta(args.delta)
  old_s = time.perf_counter() - start

  final = _pld.pmfs_of(one.self_compose(args.rounds))[0].probs.size
  size = _pld.fft_size(final)
  spectrum = sp_fft.rfft(
      accounting._one_round_pmfs(spec, accounting.PLD_DISCRETIZATION)[0].probs, size)
  acc = spectrum.copy()
  start = time.perf_counter()
  for _ in rounds:
    acc *= spectrum
    sp_fft.irfft(acc, size)
  floor_s = time.perf_counter() - start

  def diff(values):
    return max(abs(values[r] - direct[r]) / direct[r] for r in sampled)

  common = dict(rounds=args.rounds, noise_multiplier=args.noise, sampling_rate=args.rate,
                delta=args.delta, final_epsilon=new[args.rounds], fft_floor_s=floor_s,
                fft_size=size)
  for method, seconds, values, extra in (
      ("curve", curve_s, new, {}),
      ("dp_accounting_compose", old_s, old, {}),
      ("direct", direct_s / len(sampled) * args.rounds, direct,
       {"estimated": True, "measured_rounds": sampled, "measured_s": direct_s})):
    print(json.dumps({"benchmark": "accounting", "method": method, "seconds": seconds,
                      "max_rel_diff_vs_direct": diff(values), **extra, **common}), flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
