"""User-level differential privacy: clipping, noise, sampling and accounting.

Mechanisms are :class:`~fedjax_lite.aggregation.Aggregator`\\ s, so any
algorithm can use them in place of the plain mean:

* :func:`gaussian_aggregator`: clip each client delta to L2 norm ``C`` (one
  global norm over the whole pytree), sum, add ``N(0, (z C)^2)`` per
  coordinate, divide by a fixed denominator (the expected cohort size) —
  DP-FedAvg (McMahan et al. 2018). Optional adaptive clipping (Andrew et al.
  2021).
* :func:`laplace_aggregator`: clip to L1 norm ``C1``, add Laplace noise of
  scale ``z C1`` per coordinate: each round is pure ``(1/z)``-DP under
  add/remove-one-client before sampling.
* ``local=True`` on either: each client noises its own clipped delta before
  aggregation (local DP, accounted per client).

Under DP every client that takes part weighs the same (its clipped delta is
summed as is): example-count weights would give clients unbounded influence,
so they are refused.

The privacy spent is described as a ``dp_accounting`` ``DpEvent``
(:func:`dp_event`) that matches the sampler actually used
(:func:`fedjax_lite.poisson_sampler` or :func:`fedjax_lite.fixed_size_sampler`) and
is evaluated with the RDP or PLD accountant (:func:`epsilon`); no epsilon
formula is written by hand. :func:`calibrate_noise` finds the noise
multiplier for a target epsilon.

References:
  McMahan, Ramage, Talwar, Zhang. "Learning Differentially Private Recurrent
  Language Models", ICLR 2018. https://arxiv.org/abs/1710.06963
  Andrew, Thakkar, McMahan, Ramaswamy. "Differentially Private Learning with
  Adaptive Clipping", NeurIPS 2021. https://arxiv.org/abs/1905.03871
"""

import contextlib
import dataclasses
import logging
import math
from typing import Any, NamedTuple

import dp_accounting
import jax
import jax.numpy as jnp
from dp_accounting import pld, rdp

from fedjax_lite.aggregation import Aggregator
from fedjax_lite.data import _check_int
from fedjax_lite.sampling import _check_rate

MECHANISMS = ("gaussian", "laplace")
SAMPLINGS = ("poisson", "fixed")
ACCOUNTANTS = ("rdp", "pld")

# PLD discretization used by epsilon(): dp-accounting's default (1e-4) is
# pessimistic (it over-, never under-states epsilon) by a few percent for
# small epsilons; 1e-5 is tighter and about 10x slower.
PLD_DISCRETIZATION = 1e-4


# --------------------------------------------------------------------------
# Clipping


def global_norm(tree: Any, ord: int = 2) -> Any:  # noqa: A002 - numpy's name
  """The L1 or L2 norm of a whole pytree flattened into one vector.

  Args:
    tree: pytree of arrays.
    ord: 1 or 2.

  Returns:
    float32 scalar.
  """
  leaves = [jnp.asarray(x, jnp.float32) for x in jax.tree.leaves(tree)]
  if ord == 2:
    return jnp.sqrt(sum(jnp.sum(x * x) for x in leaves))
  if ord == 1:
    return sum(jnp.sum(jnp.abs(x)) for x in leaves)
  raise ValueError(f"`ord` must be 1 or 2; got {ord!r}.")


def clip_scale(norm: Any, clip: Any) -> Any:
  """The factor ``<= 1`` that brings a vector of norm ``norm`` within ``clip``.

  ``1`` when ``norm <= clip``, else ``clip / norm`` shrunk by two float32 ulps
  so that rounding can never leave the scaled norm above ``clip``.

  Args:
    norm: a vector's (or a pytree's global) norm, a float scalar or array.
    clip: the clipping bound (> 0), broadcastable with ``norm``.

  Returns:
    The scale factor, shaped like ``norm``.
  """
  shrink = clip / jnp.maximum(norm, clip) * (1.0 - 2.0 * jnp.finfo(jnp.float32).eps)
  return jnp.where(norm <= clip, 1.0, shrink)


def clip_by_global_norm(tree: Any, clip: Any, ord: int = 2) -> tuple[Any, Any]:  # noqa: A002
  """Scales ``tree`` so its global L``ord`` norm is at most ``clip``.

  Args:
    tree: pytree of arrays (e.g. a client delta).
    clip: positive scalar bound ``C``.
    ord: 1 or 2.

  Returns:
    ``(clipped_tree, norm_before_clipping)``; the clipped tree's norm is
    ``min(norm, clip)`` (up to float rounding, never above ``clip``).
  """
  norm = global_norm(tree, ord)
  scale = clip_scale(norm, clip)
  return jax.tree.map(lambda x: (x * scale).astype(x.dtype), tree), norm


# --------------------------------------------------------------------------
# Aggregators


class AdaptiveClipping(NamedTuple):
  """Hyperparameters of adaptive clipping (Andrew et al. 2021; their defaults).

  Attributes:
    target_quantile: ``gamma``, the fraction of updates to leave unclipped.
    learning_rate: ``eta_C`` of the geometric update
      ``C <- C * exp(-eta_C * (b - gamma))``.
    initial_clip: ``C_0``.
    count_noise_std: ``sigma_b``, the std of the noise on the clipped count;
      ``None`` means ``expected_cohort_size / 20``.
  """

  target_quantile: float = 0.5
  learning_rate: float = 0.2
  initial_clip: float = 0.1
  count_noise_std: float | None = None


class DPState(NamedTuple):
  """State of a DP aggregator: the current clip norm (constant unless adaptive)."""

  clip: Any


def _concrete(x: Any) -> float | None:
  """``float(x)``, or ``None`` when ``x`` is traced (inside jit/vmap)."""
  try:
    return float(x)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def adaptive_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
  """The noise multiplier left for the deltas when the count takes its share.

  The round releases the clipped sum with multiplier ``z_delta`` and the
  centred clipped count (sensitivity 1/2) with noise ``sigma_b``, i.e.
  multiplier ``2 sigma_b``. Two Gaussian mechanisms compose to one with
  ``z^-2 = z_delta^-2 + (2 sigma_b)^-2`` (Andrew et al. 2021), so

      z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2).

  Args:
    noise_multiplier: the round's total multiplier ``z`` (> 0).
    count_noise_std: ``sigma_b``, the noise on the clipped count.

  Returns:
    ``z_delta`` (a Python float).

  Raises:
    ValueError: if ``2 sigma_b <= z`` (the count alone would spend the budget).
  """
  if not noise_multiplier > 0:
    raise ValueError(f"`noise_multiplier` must be > 0; got {noise_multiplier}.")
  if not 2.0 * count_noise_std > noise_multiplier:
    raise ValueError(
        f"adaptive clipping needs 2 * count_noise_std > noise_multiplier; got count_noise_std="
        f"{count_noise_std}, noise_multiplier={noise_multiplier}. Increase the cohort (the "
        "default count_noise_std is expected_cohort_size / 20) or count_noise_std.")
  return (noise_multiplier**-2 - (2.0 * count_noise_std) ** -2) ** -0.5


def gaussian_aggregator(
    clip: float,
    noise_multiplier: float,
    expected_cohort_size: float,
    *,
    adaptive: AdaptiveClipping | None = None,
    local: bool = False,
    weighting: str = "uniform",
) -> Aggregator:
  """DP-FedAvg's Gaussian aggregator (optionally adaptive or local).

  Central (default): each participating client's delta (a client with weight
  > 0) is clipped to global L2 norm ``C``; the clipped deltas are summed,
  ``N(0, (z_delta * C)^2)`` is added to every coordinate once per round, and
  the result is divided by ``expected_cohort_size``. ``z_delta = z`` for a
  fixed clip, or :func:`adaptive_noise_multiplier` with adaptive clipping,
  which also releases the centred count ``sum_i (1[norm_i <= C] - 1/2) +
  N(0, sigma_b^2)`` and moves ``C`` geometrically toward the
  ``target_quantile`` of update norms.

  Local (``local=True``): each client adds ``N(0, (z C)^2)`` to its own
  clipped delta; the server averages the noisy reports with the same fixed
  denominator and adds nothing.

  Args:
    clip: the L2 clip norm ``C`` (> 0); ignored with ``adaptive`` (which
      starts from ``adaptive.initial_clip``).
    noise_multiplier: ``z`` (>= 0): noise std over L2 sensitivity.
    expected_cohort_size: the fixed denominator: ``q * N`` under Poisson
      sampling, the cohort size under fixed-size sampling.
    adaptive: :class:`AdaptiveClipping` hyperparameters, or ``None``.
    local: local instead of central noise.
    weighting: must be ``"uniform"``; DP needs a bound on every client's
      influence, which example-count weights do not have.

  Returns:
    An :class:`~fedjax_lite.aggregation.Aggregator` with state
    :class:`DPState`; finalize metrics: ``clip``, ``noise_std`` (of the
    released average), ``participants``, and with adaptive clipping
    ``unclipped_fraction`` (the noised estimate ``b``).

  Raises:
    ValueError: for non-positive ``clip`` or ``expected_cohort_size``,
      negative ``noise_multiplier``, adaptive with local or with a count
      noise too small for ``z``, or non-uniform ``weighting``.
  """
  return _dp_aggregator("gaussian", clip, noise_multiplier, expected_cohort_size,
                        adaptive=adaptive, local=local, weighting=weighting)


def laplace_aggregator(
    clip: float,
    noise_multiplier: float,
    expected_cohort_size: float,
    *,
    local: bool = False,
    weighting: str = "uniform",
) -> Aggregator:
  """The Laplace mechanism on L1-clipped client deltas.

  Each participating client's delta is clipped to global L1 norm ``C1``; the
  sum gets Laplace noise of scale ``b = z * C1`` per coordinate (so each round
  is pure ``(1/z)``-DP under add/remove-one-client, before any amplification
  by sampling) and is divided by ``expected_cohort_size``. With
  ``local=True`` every client adds that noise to its own clipped delta.

  Args:
    clip: the L1 clip norm ``C1`` (> 0).
    noise_multiplier: ``z`` (>= 0): Laplace scale over L1 sensitivity.
    expected_cohort_size: the fixed denominator.
    local: local instead of central noise.
    weighting: must be ``"uniform"`` (see :func:`gaussian_aggregator`).

  Returns:
    An :class:`~fedjax_lite.aggregation.Aggregator` (state :class:`DPState`).
  """
  return _dp_aggregator("laplace", clip, noise_multiplier, expected_cohort_size,
                        adaptive=None, local=local, weighting=weighting)


def _dp_aggregator(mechanism, clip, noise_multiplier, expected_cohort_size, *, adaptive, local,
                   weighting) -> Aggregator:
  if weighting != "uniform":
    raise ValueError(
        f"`weighting`={weighting!r} is not allowed under DP: example-count weights give a "
        "client with many examples unbounded influence, so no sensitivity (and no epsilon) "
        "can be stated. Use weighting='uniform' (each participating client's clipped delta "
        "counts once).")
  # noise_multiplier (and clip) may be traced, e.g. in a vectorized sweep over
  # noise levels (fedjax_lite.run_sweep); they are checked when concrete.
  z_value = _concrete(noise_multiplier)
  if z_value is not None and not z_value >= 0:
    raise ValueError(f"`noise_multiplier` must be >= 0; got {noise_multiplier}.")
  if not expected_cohort_size > 0:
    raise ValueError(f"`expected_cohort_size` must be > 0; got {expected_cohort_size}.")
  if adaptive is not None:
    if local:
      raise ValueError("adaptive clipping is a central mechanism; it cannot be combined with "
                       "local=True.")
    if not 0.0 < adaptive.target_quantile < 1.0:
      raise ValueError(f"`target_quantile` must be in (0, 1); got {adaptive.target_quantile}.")
    if not adaptive.learning_rate > 0 or not adaptive.initial_clip > 0:
      raise ValueError("adaptive `learning_rate` and `initial_clip` must be > 0.")
    sigma_b = (expected_cohort_size / 20.0 if adaptive.count_noise_std is None
               else adaptive.count_noise_std)
    z_delta = adaptive_noise_multiplier(noise_multiplier, sigma_b)
    clip = adaptive.initial_clip
  else:
    sigma_b = None
    z_delta = noise_multiplier
  clip_value = _concrete(clip)
  if clip_value is not None and not clip_value > 0:
    raise ValueError(f"`clip` must be > 0; got {clip}.")
  ord_ = 2 if mechanism == "gaussian" else 1
  denom = float(expected_cohort_size)

  def noise(key, like, std_or_scale):
    if mechanism == "gaussian":
      return jax.random.normal(key, like.shape, jnp.float32) * std_or_scale
    return jax.random.laplace(key, like.shape, jnp.float32) * std_or_scale

  def tree_noise(key, tree, scale):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))[:len(leaves)]
    noisy = [(x + noise(k, x, scale)).astype(x.dtype) for k, x in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, noisy)

  def init(params):
    del params
    return DPState(jnp.asarray(clip, jnp.float32))

  def per_client(delta, weight, state, key):
    participating = weight > 0
    norm = global_norm(delta, ord_)
    scale = clip_scale(norm, state.clip)
    stats = {"participants": participating.astype(jnp.float32)}
    if adaptive is not None:
      stats["centred_unclipped"] = jnp.where(
          participating, (norm <= state.clip).astype(jnp.float32) - 0.5, 0.0)
    if local:
      clipped = jax.tree.map(lambda x: (x * scale).astype(x.dtype), delta)
      noisy = tree_noise(key, clipped, z_delta * state.clip)
      noisy = jax.tree.map(lambda x: jnp.where(participating, x, 0).astype(x.dtype), noisy)
      return noisy, participating.astype(jnp.float32), stats
    # Central: the clip factor becomes the client's weight in the round's
    # weighted sum, sum_i w_i * delta_i = sum of clipped deltas, so the
    # clipped delta is never materialized.
    return delta, jnp.where(participating, scale, 0.0).astype(jnp.float32), stats

  def finalize(total, total_weight, stats, state, key):
    del total_weight
    delta_key, count_key = jax.random.split(key)
    scale = z_delta * state.clip
    if not local and z_value != 0:  # noise unless the multiplier is a concrete 0
      total = tree_noise(delta_key, total, scale)
    mean = jax.tree.map(lambda s: (s / denom).astype(s.dtype), total)
    metrics = {"clip": state.clip, "participants": stats["participants"],
               "noise_std": (scale * (math.sqrt(2.0) if mechanism == "laplace" else 1.0)
                             * (1.0 if not local else jnp.sqrt(stats["participants"]))) / denom}
    new_state = state
    if adaptive is not None:
      b = (stats["centred_unclipped"] + sigma_b * jax.random.normal(count_key, ())) / denom + 0.5
      new_clip = state.clip * jnp.exp(-adaptive.learning_rate * (b - adaptive.target_quantile))
      new_state = DPState(new_clip.astype(jnp.float32))
      metrics["unclipped_fraction"] = b
    return mean, new_state, metrics

  return Aggregator(init, per_client, finalize)


# --------------------------------------------------------------------------
# Accounting


@dataclasses.dataclass(frozen=True)
class DPSpec:
  """What one round of a DP run does, for accounting.

  Attributes:
    mechanism: ``"gaussian"`` or ``"laplace"``.
    noise_multiplier: ``z`` requested (for adaptive clipping, the total
      multiplier of the round; the deltas get :func:`adaptive_noise_multiplier`).
    sampling: ``"poisson"`` (rate ``num_sampled / num_clients``) or
      ``"fixed"`` (exactly ``num_sampled`` clients without replacement).
    num_clients: population size ``N``.
    num_sampled: expected (Poisson) or exact (fixed) cohort size.
    count_noise_std: ``sigma_b`` of adaptive clipping, else ``None``.
    local: local DP (accounted per client, over all rounds, no amplification).
  """

  mechanism: str
  noise_multiplier: float
  sampling: str
  num_clients: int
  num_sampled: float
  count_noise_std: float | None = None
  local: bool = False

  def __post_init__(self):
    if self.mechanism not in MECHANISMS:
      raise ValueError(f"unknown mechanism {self.mechanism!r}; choose one of {MECHANISMS}.")
    if self.sampling not in SAMPLINGS:
      raise ValueError(f"unknown sampling {self.sampling!r}; choose one of {SAMPLINGS}.")
    if not self.noise_multiplier > 0:
      raise ValueError(f"`noise_multiplier` must be > 0 to state an epsilon; got "
                       f"{self.noise_multiplier}.")
    _check_rate(self.rate)
    if self.count_noise_std is not None and self.mechanism != "gaussian":
      raise ValueError("adaptive clipping is only defined for the Gaussian mechanism.")

  @property
  def rate(self) -> float:
    return float(self.num_sampled) / float(self.num_clients)


def round_event(spec: DPSpec, accountant: str = "rdp") -> dp_accounting.DpEvent:
  """The ``DpEvent`` of one round.

  * central Gaussian, Poisson: ``PoissonSampled(q, Gaussian(z))``; with
    adaptive clipping the inner event is
    ``Composed([Gaussian(z_delta), Gaussian(2 sigma_b)])`` (equal to
    ``Gaussian(z)`` by construction);
  * central Gaussian, fixed size: ``SampledWithoutReplacement(N, m,
    Gaussian(z / 2))`` — replacing one client moves the clipped sum by up to
    ``2C`` (adaptive: the count's multiplier is ``sigma_b``, its sensitivity
    being 1 under replacement);
  * Laplace, Poisson: ``PoissonSampled(q, Laplace(z))``; fixed size with
    ``m = N``: ``Laplace(z / 2)``; fixed size with ``m < N`` has no accountant;
  * local DP: ``Gaussian(z / 2)`` or ``Laplace(z / 2)`` per client report
    (any two inputs of one client differ by up to ``2C``), no sampling
    amplification.

  The PLD accountant of dp-accounting 0.6 takes no composed event inside a
  sampled one; for it the adaptive pair is given as the single Gaussian it
  equals (``z^-2 = z_delta^-2 + (2 sigma_b)^-2``), which is exact for
  Gaussian mechanisms on the same data.

  Args:
    spec: the run's :class:`DPSpec` (mechanism, noise multiplier, sampling,
      population and cohort sizes, local or central).
    accountant: ``"rdp"`` or ``"pld"``.

  Returns:
    The ``dp_accounting.DpEvent`` of one round.
  """
  z = spec.noise_multiplier
  base = dp_accounting.GaussianDpEvent if spec.mechanism == "gaussian" \
      else dp_accounting.LaplaceDpEvent
  if spec.local:
    return base(z / 2.0)
  if spec.sampling == "poisson":
    if spec.count_noise_std is not None and accountant == "pld":
      inner = dp_accounting.GaussianDpEvent(_effective(
          [adaptive_noise_multiplier(z, spec.count_noise_std), 2.0 * spec.count_noise_std]))
    elif spec.count_noise_std is not None:
      z_delta = adaptive_noise_multiplier(z, spec.count_noise_std)
      inner = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z_delta),
                                             dp_accounting.GaussianDpEvent(
                                                 2.0 * spec.count_noise_std)])
    else:
      inner = base(z)
    if spec.rate == 1.0:
      return inner
    return dp_accounting.PoissonSampledDpEvent(spec.rate, inner)
  # Fixed-size sampling, neighbouring = replace one client.
  if spec.count_noise_std is not None:
    z_delta = adaptive_noise_multiplier(z, spec.count_noise_std)
    inner = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z_delta / 2.0),
                                           dp_accounting.GaussianDpEvent(spec.count_noise_std)])
  else:
    inner = base(z / 2.0)
  if int(spec.num_sampled) == spec.num_clients:
    return inner
  return dp_accounting.SampledWithoutReplacementDpEvent(spec.num_clients, int(spec.num_sampled),
                                                        inner)


def _effective(multipliers):
  return sum(m**-2 for m in multipliers) ** -0.5


def dp_event(spec: DPSpec, rounds: int, accountant: str = "rdp") -> dp_accounting.DpEvent:
  """``SelfComposed(round_event(spec, accountant), rounds)``.

  Args:
    spec: the run's :class:`DPSpec` (mechanism, noise multiplier, sampling,
      population and cohort sizes, local or central).
    rounds: rounds run.
    accountant: ``"rdp"`` or ``"pld"``.

  Returns:
    The ``dp_accounting.DpEvent`` of the whole run.
  """
  _check_int("rounds", rounds, minimum=0)
  return dp_accounting.SelfComposedDpEvent(round_event(spec, accountant), rounds)


def make_accountant(spec: DPSpec, accountant: str = "rdp") -> dp_accounting.PrivacyAccountant:
  """A fresh RDP or PLD accountant with the neighbouring relation ``spec`` needs.

  Args:
    spec: the run's :class:`DPSpec` (mechanism, noise multiplier, sampling,
      population and cohort sizes, local or central).
    accountant: ``"rdp"`` or ``"pld"``.

  Returns:
    A ``dp_accounting.PrivacyAccountant`` with nothing composed yet.

  Raises:
    ValueError: for an unknown accountant, or a combination dp-accounting
      cannot account (named, with what to use instead).
  """
  if accountant not in ACCOUNTANTS:
    raise ValueError(f"unknown accountant {accountant!r}; choose one of {ACCOUNTANTS}.")
  relation = dp_accounting.NeighboringRelation
  fixed = spec.sampling == "fixed" and not spec.local
  if fixed and int(spec.num_sampled) < spec.num_clients:
    if spec.mechanism == "laplace":
      raise ValueError(
          "no dp-accounting accountant supports fixed-size sampling with the Laplace "
          "mechanism; use --sampling poisson with --accountant pld.")
    if accountant == "pld":
      raise ValueError(
          "the PLD accountant does not support fixed-size sampling without replacement "
          "(dp-accounting 0.6); use --accountant rdp or --sampling poisson.")
  if (spec.mechanism == "laplace" and not spec.local and spec.sampling == "poisson"
      and spec.rate < 1.0 and accountant == "rdp"):
    raise ValueError(
        "the RDP accountant does not support Poisson-subsampled Laplace; use --accountant pld.")
  if fixed and spec.mechanism == "laplace" and accountant == "pld":
    raise ValueError("the PLD accountant supports Laplace only under add/remove-one; use "
                     "--accountant rdp or --sampling poisson.")
  neighbours = relation.REPLACE_ONE if fixed else relation.ADD_OR_REMOVE_ONE
  if accountant == "rdp":
    return rdp.RdpAccountant(neighboring_relation=neighbours)
  return pld.PLDAccountant(neighboring_relation=neighbours,
                           value_discretization_interval=PLD_DISCRETIZATION)


def epsilon(spec: DPSpec, rounds: int, delta: float, accountant: str = "rdp") -> float:
  """Epsilon spent after ``rounds`` rounds, at ``delta``, with dp-accounting.

  Args:
    spec: the run's :class:`DPSpec` (mechanism, noise multiplier, sampling,
      population and cohort sizes, local or central).
    rounds: rounds run.
    delta: the target delta, in ``(0, 1)``.
    accountant: ``"rdp"`` or ``"pld"``.

  Returns:
    The epsilon (a Python float) that :func:`dp_event` spends at ``delta``.

  Raises:
    ValueError: for ``delta`` outside (0, 1) or an unsupported combination.
  """
  _check_delta(delta)
  if rounds == 0:
    return 0.0
  acc = make_accountant(spec, accountant)
  with _quiet_absl():
    acc.compose(dp_event(spec, rounds, accountant))
    return float(acc.get_epsilon(delta))


def calibrate_noise(spec: DPSpec, rounds: int, target_epsilon: float, delta: float,
                    accountant: str = "rdp", max_noise_multiplier: float = 1000.0) -> float:
  """The smallest noise multiplier whose epsilon after ``rounds`` is ``target_epsilon``.

  Uses ``dp_accounting.calibrate_dp_mechanism`` on :func:`dp_event` with
  ``spec``'s noise multiplier replaced.

  Args:
    spec: the run's :class:`DPSpec` (mechanism, noise multiplier, sampling,
      population and cohort sizes, local or central).
    rounds: rounds the run will take.
    target_epsilon: the epsilon to reach after ``rounds`` (> 0).
    delta: the target delta, in ``(0, 1)``.
    accountant: ``"rdp"`` or ``"pld"``.
    max_noise_multiplier: the largest multiplier searched.

  Returns:
    The noise multiplier (a Python float).

  Raises:
    ValueError: for a non-positive target, ``delta`` outside (0, 1), or a
      target that needs more than ``max_noise_multiplier``.
  """
  _check_delta(delta)
  _check_int("rounds", rounds, minimum=1)
  if not target_epsilon > 0:
    raise ValueError(f"`target_epsilon` must be > 0; got {target_epsilon}.")
  # Adaptive clipping needs z < 2 sigma_b: bound the search there.
  upper = max_noise_multiplier
  if spec.count_noise_std is not None:
    upper = min(upper, 2.0 * spec.count_noise_std * (1 - 1e-9))
  make = lambda z: dp_event(dataclasses.replace(spec, noise_multiplier=z), rounds, accountant)
  fresh = lambda: make_accountant(spec, accountant)
  with _quiet_absl():
    top = fresh()
    top.compose(make(upper))
    if top.get_epsilon(delta) > target_epsilon:
      raise ValueError(
          f"target_epsilon={target_epsilon} is unreachable: even noise_multiplier={upper:g} "
          f"spends {top.get_epsilon(delta):.4g} after {rounds} rounds at delta={delta}. Sample "
          "fewer clients per round, run fewer rounds, or raise the target.")
    # PLD's discretized distributions explode for tiny multipliers; such
    # targets are beyond any meaningful privacy anyway.
    lower = 0.1 if accountant == "pld" else 1e-2
    bottom = fresh()
    bottom.compose(make(lower))
    if bottom.get_epsilon(delta) <= target_epsilon:
      raise ValueError(
          f"target_epsilon={target_epsilon} is so large that even noise_multiplier={lower} "
          f"spends only {bottom.get_epsilon(delta):.4g}; state a smaller target.")
    return float(dp_accounting.calibrate_dp_mechanism(
        fresh, make, target_epsilon, delta,
        dp_accounting.ExplicitBracketInterval(lower, upper), tol=1e-4 * target_epsilon))


@contextlib.contextmanager
def _quiet_absl():
  """dp-accounting logs an absl warning for every RDP order whose series does
  not converge (those orders are then excluded, which is safe); keep them off
  the user's terminal."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _check_delta(delta):
  if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
    raise ValueError(f"`delta` must be in (0, 1); got {delta!r}.")
