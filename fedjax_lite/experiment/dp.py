"""The privacy side of a run: DP aggregator, sampler and accounting, secure aggregation too.

:func:`build_dp` turns the privacy options into a :class:`DPSetup` (sampled
Gaussian or Laplace, accounted by :mod:`fedjax_lite.accounting`) or a
:class:`CorrelatedSetup` (DP-FTRL tree aggregation or banded matrix
factorization with clients in fixed turns, :mod:`fedjax_lite.correlated`).
With secure aggregation (``secagg_bits``), the server's noise is added to a
sum of stochastically rounded updates, each moved by up to ``sqrt(d) / s``
(L1: ``d / s``) by the rounding (:func:`fedjax_lite.secagg.rounding_sensitivity`);
the accounting then uses the multiplier over that larger sensitivity,
``z C / (C + sqrt(d) / s)``, and a target epsilon is calibrated on it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from fedjax_lite.experiment.config import ConfigError, option_errors

# Probability bound of a Poisson draw overflowing the padded cohort (such a
# round is refused, never truncated).
POISSON_OVERFLOW_BOUND = 1e-9
CORRELATED = ("ftrl-tree", "bandmf")


def _sweep_dp(configs: list[dict[str, Any]], num_clients: int, model_size: int
              ) -> list[Any]:
  """Each experiment's DP accounting (built once per noise multiplier)."""
  cache: dict[Any, Any] = {}
  for c in configs:
    if c["noise_multiplier"] not in cache:
      cache[c["noise_multiplier"]] = build_dp(c, num_clients, model_size)
  return [cache[c["noise_multiplier"]] for c in configs]




@dataclasses.dataclass
class DPSetup:
  """The privacy side of a sampled-DP run: aggregator, sampler and accounting.

  ``spec.noise_multiplier`` is the one accounted; ``noise_multiplier`` the
  aggregator's, larger by ``sensitivity_scale`` (``1 + sqrt(d) / (s C)``)
  under secure aggregation.
  """

  spec: Any
  aggregator: Any
  sampler: Any
  delta: float
  accountant: str
  noise_multiplier: float = 0.0
  sensitivity_scale: float = 1.0
  _curve: Any = None

  def epsilon(self, rounds: int) -> float:
    # One accounting.EpsilonCurve per run: under PLD it composes each new
    # round onto the distribution of the rounds before (one construction of
    # the one-round distribution, one composition per round).
    if self._curve is None:
      from fedjax_lite import accounting
      self._curve = accounting.EpsilonCurve(self.spec, self.delta, self.accountant)
    return self._curve(rounds)

  def aggregator_for(self, config: dict[str, Any], noise_multiplier: Any):
    """The aggregator at another (possibly traced) multiplier: a sweep's experiment."""
    return _dp_aggregator(config, noise_multiplier)

  def describe(self) -> dict[str, Any]:
    out = {**dataclasses.asdict(self.spec), "delta": self.delta, "accountant": self.accountant,
           "padded_cohort": self.sampler.cohort_size, "sampling_rate": self.spec.rate,
           "aggregator_noise_multiplier": self.noise_multiplier,
           "secagg_sensitivity_scale": self.sensitivity_scale}
    if self.sampler.kind == "poisson":
      out["overflow_probability_bound"] = POISSON_OVERFLOW_BOUND
    return out


@dataclasses.dataclass
class CorrelatedSetup(DPSetup):
  """The privacy side of a DP-FTRL or banded-MF run (:mod:`fedjax_lite.correlated`).

  ``spec`` is an :class:`fedjax_lite.accounting.CorrelatedSpec`; ``schedule``
  the noise schedule the aggregator follows.
  """

  schedule: Any = None
  _epsilons: dict[int, float] = dataclasses.field(default_factory=dict)

  def aggregator_for(self, config: dict[str, Any], noise_multiplier: Any):
    """The aggregator at another (possibly traced) multiplier: a sweep's experiment."""
    from fedjax_lite import correlated

    return correlated.correlated_gaussian_aggregator(
        config["clip"], noise_multiplier, float(config["clients_per_round"]), self.schedule,
        noise_seed=config["seed"])

  def epsilon(self, rounds: int) -> float:
    from fedjax_lite import accounting

    if rounds not in self._epsilons:
      self._epsilons[rounds] = accounting.correlated_epsilon(self.spec, rounds, self.delta,
                                                             self.accountant)
    return self._epsilons[rounds]

  def describe(self) -> dict[str, Any]:
    out = {**dataclasses.asdict(self.spec), "delta": self.delta, "accountant": self.accountant,
           "mechanism": {"tree": "ftrl-tree", "bandmf": "bandmf"}[self.spec.schedule],
           "participation": f"clients in {self.spec.group_rounds} fixed groups taking turns "
                            "(each client once every group_rounds rounds)",
           "padded_cohort": self.sampler.cohort_size,
           "aggregator_noise_multiplier": self.noise_multiplier,
           "secagg_sensitivity_scale": self.sensitivity_scale}
    if out.get("coefs") is not None:
      out["coefs"] = [float(c) for c in out["coefs"]]
    return out


def secagg_sensitivity_scale(config: dict[str, Any], cohort_slots: int, model_size: int
                             ) -> float:
  """``(C + rounding) / C``: how much secure aggregation's rounding enlarges the sensitivity.

  Args:
    config: the configuration (``clip``, the ``secagg_*`` options, ``dp``).
    cohort_slots: the cohort's padded size (sets the encoding's scale).
    model_size: the update's number of coordinates ``d``.

  Returns:
    1 without secure aggregation or with local DP (each client's noise then
    comes before the encoding, which is post-processing).

  Raises:
    ConfigError: when the integer range could wrap around (a wrapped sum has
      no sensitivity bound).
  """
  from fedjax_lite import secagg

  if config["secagg_bits"] is None or config["local_dp"]:
    return 1.0
  if config["secagg_summands"] is not None and config["secagg_summands"] < cohort_slots:
    raise ConfigError(
        f"--secagg-summands {config['secagg_summands']} with --dp {config['dp']}: a sum of "
        f"the {cohort_slots} cohort slots could wrap around, and a wrapped sum has no "
        "sensitivity bound; leave --secagg-summands at its default (the cohort).")
  encoding = secagg.SecAggConfig(config["secagg_bits"], _secagg_clip(config),
                                 config["secagg_summands"], 0.0, None)
  rounding = secagg.rounding_sensitivity(encoding, cohort_slots, model_size)
  if config["dp"] == "laplace":  # L1: every coordinate moves by < 1/s
    rounding = rounding * math.sqrt(model_size)
  return (config["clip"] + rounding) / config["clip"]


def _secagg_clip(config: dict[str, Any]) -> float:
  """``secagg_clip``, or under DP the clip norm (a clipped update's coordinates are within it)."""
  return config["secagg_clip"] if config["secagg_clip"] is not None else config["clip"]


def build_dp(config: dict[str, Any], num_clients: int, model_size: int | None = None
             ) -> DPSetup | CorrelatedSetup | None:
  """The DP aggregator, sampler and accounting a configuration asks for.

  The noise multiplier is calibrated here for ``target_epsilon`` (over all
  ``rounds``); the accounting event matches the sampler (Poisson at rate
  ``clients_per_round / N``, fixed-size, or for ``ftrl-tree`` and ``bandmf``
  the cyclic turns of :func:`fedjax_lite.correlated.cyclic_sampler`).

  Args:
    config: the configuration.
    num_clients: the population's size.
    model_size: the model's number of parameters (needed with secure
      aggregation, whose rounding enlarges the sensitivity).

  Raises:
    ConfigError: for a combination the accountant cannot account or an
      unreachable target epsilon.
  """
  import fedjax_lite as fl
  from fedjax_lite import accounting

  if config["dp"] == "none":
    return None
  if config["dp"] in CORRELATED:
    return _correlated_dp(config, num_clients, model_size)
  k = config["clients_per_round"]
  if config["sampling"] == "poisson":
    sampler = fl.poisson_sampler(num_clients, k / num_clients, POISSON_OVERFLOW_BOUND)
  else:
    sampler = fl.fixed_size_sampler(num_clients, k)
  scale = secagg_sensitivity_scale(config, sampler.cohort_size, model_size or 0)
  sigma_b = (k / 20.0) if config["adaptive_clip"] else None
  with option_errors():
    given = config["noise_multiplier"]
    spec = accounting.DPSpec(config["dp"], (given or 1.0) / scale, config["sampling"],
                             num_clients, k, count_noise_std=sigma_b, local=config["local_dp"])
    accounting.make_accountant(spec, config["accountant"])  # refuses unsupported combinations
    if config["target_epsilon"] is not None:
      z = accounting.calibrate_noise(spec, config["rounds"], config["target_epsilon"],
                                     config["delta"], config["accountant"])
      spec = dataclasses.replace(spec, noise_multiplier=z)
    z_aggregator = spec.noise_multiplier * scale
    aggregator = _dp_aggregator(config, z_aggregator)
  return DPSetup(spec, aggregator, sampler, config["delta"], config["accountant"],
                 z_aggregator, scale)


def _correlated_dp(config: dict[str, Any], num_clients: int, model_size: int | None
                   ) -> CorrelatedSetup:
  """:func:`build_dp` for ``ftrl-tree`` and ``bandmf``."""
  from fedjax_lite import accounting, correlated

  k, rounds = config["clients_per_round"], config["rounds"]
  b = correlated.num_groups(num_clients, k)
  sampler = correlated.cyclic_sampler(num_clients, k, seed=config["seed"])
  with option_errors():
    if config["dp"] == "ftrl-tree":
      schedule = correlated.tree_schedule(b)
    else:
      bands = config["bands"] if config["bands"] is not None else b
      if bands > b:
        raise ConfigError(f"--bands {bands} exceeds the {b} rounds between a client's turns "
                          f"(num_clients {num_clients} // clients_per_round {k}); a client "
                          "would take part twice within a band. Use --bands <= "
                          f"{b}.")
      schedule = correlated.banded_schedule(
          correlated.optimal_banded_coefs(rounds, min(bands, rounds)), b)
    name = "tree" if config["dp"] == "ftrl-tree" else "bandmf"
    coefs = None if schedule.coefs is None else tuple(float(c) for c in schedule.coefs)
    scale = secagg_sensitivity_scale(config, sampler.cohort_size, model_size or 0)
    spec = accounting.CorrelatedSpec(name, (config["noise_multiplier"] or 1.0) / scale, b,
                                     coefs)
    accounting.make_correlated_accountant(spec, config["accountant"])  # refuses pld + tree
    if config["target_epsilon"] is not None:
      z = accounting.calibrate_correlated(spec, rounds, config["target_epsilon"],
                                          config["delta"], config["accountant"])
      spec = dataclasses.replace(spec, noise_multiplier=z)
    z_aggregator = spec.noise_multiplier * scale
  setup = CorrelatedSetup(spec, None, sampler, config["delta"], config["accountant"],
                          noise_multiplier=z_aggregator, sensitivity_scale=scale,
                          schedule=schedule)
  setup.aggregator = setup.aggregator_for(config, z_aggregator)
  return setup


def _dp_aggregator(config: dict[str, Any], noise_multiplier: Any):
  """The DP aggregator of a configuration.

  ``noise_multiplier`` and ``config["clip"]`` may be traced (a sweep), except
  with adaptive clipping, which needs them concrete.
  """
  from fedjax_lite import privacy

  if config["dp"] == "laplace":
    return privacy.laplace_aggregator(config["clip"], noise_multiplier,
                                      float(config["clients_per_round"]),
                                      local=config["local_dp"])
  adaptive = privacy.AdaptiveClipping(target_quantile=config["target_quantile"],
                                      initial_clip=config["clip"]) \
      if config["adaptive_clip"] else None
  return privacy.gaussian_aggregator(config["clip"], noise_multiplier,
                                     float(config["clients_per_round"]), adaptive=adaptive,
                                     local=config["local_dp"])
