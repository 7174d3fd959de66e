"""Client sampling as pure functions of a PRNG key.

A :class:`Sampler` draws a cohort of fixed (padded) shape inside ``jit``:
``sample(key) -> (indices[K], mask[K], overflow)``. Fixed-size sampling fills
all ``K`` slots; Poisson sampling marks the drawn clients in ``mask`` and pads
the rest. The DP accountant must be told which one ran
(:mod:`fedjax_lite.privacy`).
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_lite._validate import check_int, check_rate


def sample_clients(key: Any, num_clients: int, cohort_size: int) -> Any:
  """Samples a cohort uniformly without replacement; pure and jit-safe.

  Every ordered cohort of ``cohort_size`` distinct clients is equally
  likely, and the same key always gives the same cohort. A cohort of at most
  an eighth of the population is drawn by rejection at a cost that grows with
  the cohort (about ``K log K``), not the population: the first ``K``
  distinct values of i.i.d. uniform draws. Larger cohorts take a prefix of a
  random permutation of the population.

  Args:
    key: a PRNG key.
    num_clients: population size ``N`` (a Python int).
    cohort_size: clients per round ``K`` (a Python int, ``1 <= K <= N``).

  Returns:
    ``int32[K]``: distinct positions in ``[0, N)``, in random order.

  Raises:
    ValueError: if ``cohort_size`` is not in ``[1, num_clients]``.
  """
  check_int("num_clients", num_clients, minimum=1)
  check_int("cohort_size", cohort_size, minimum=1)
  if cohort_size > num_clients:
    raise ValueError(
        f"`cohort_size`={cohort_size} is larger than the population ({num_clients} clients); "
        "sampling is without replacement, so use at most num_clients.")
  if cohort_size * _REJECTION_MAX_FRACTION > num_clients:
    return jax.random.choice(key, num_clients, (cohort_size,), replace=False).astype(jnp.int32)
  return _first_distinct_draws(key, num_clients, cohort_size)


# sample_clients draws by rejection when cohort_size <= num_clients / this, and
# by a full random permutation (JAX's sort, whose cost grows with the
# population) otherwise.
_REJECTION_MAX_FRACTION = 8


def _first_distinct_draws(key: Any, num_clients: int, cohort_size: int,
                          num_draws: int | None = None) -> Any:
  """The first ``cohort_size`` distinct values of i.i.d. uniform draws from ``[0, N)``.

  Each new distinct value of an i.i.d. uniform sequence is uniform over the
  values not yet seen, so the first ``K`` distinct draws, in draw order, are
  an exactly uniform ordered sample without replacement. ``M`` draws are
  made at once (about ``K + K^2/N``, enough for ``K`` distinct values except
  with tiny probability); an attempt with fewer than ``K`` distinct values is
  redrawn with a new key, which keeps the sample exact because the event is
  symmetric in the client labels. The cost is a sort of ``M`` draws, so it
  grows with the cohort, not the population.
  """
  m = num_draws or cohort_size + math.ceil(cohort_size * cohort_size / num_clients) + 32

  def attempt(i):
    draws = jax.random.randint(jax.random.fold_in(key, i), (m,), 0, num_clients, jnp.int32)
    order = jnp.argsort(draws, stable=True)  # equal draws keep their draw order
    ordered = draws[order]
    first_in_run = jnp.concatenate([jnp.ones((1,), bool), ordered[1:] != ordered[:-1]])
    first_seen = jnp.zeros((m,), bool).at[order].set(first_in_run)
    (positions,) = jnp.nonzero(first_seen, size=cohort_size, fill_value=0)
    return draws[positions], jnp.sum(first_seen) >= cohort_size

  def redraw(carry):
    i, _, _ = carry
    return (i + 1,) + attempt(i + 1)

  _, indices, _ = jax.lax.while_loop(lambda c: ~c[2], redraw, (0,) + attempt(0))
  return indices


class Sampler(NamedTuple):
  """A cohort sampler with a fixed output shape.

  Attributes:
    sample: ``sample(key) -> (indices int32[K], mask bool[K], overflow
      bool)`` from the round's sampling key; with ``by_round``,
      ``sample(key, round_index)``.
    cohort_size: ``K``, the (padded) number of cohort slots.
    kind: ``"fixed"``, ``"poisson"`` or ``"cyclic"``.
    num_clients: the population size it samples from.
    rate: expected fraction of the population per round.
    by_round: ``sample`` also takes the round index (a schedule such as
      :func:`fedjax_lite.correlated.cyclic_sampler`).
  """

  sample: Callable[..., tuple[Any, Any, Any]]
  cohort_size: int
  kind: str
  num_clients: int
  rate: float
  by_round: bool = False

  def draw(self, key: Any, round_index: Any) -> tuple[Any, Any, Any]:
    """Round ``round_index``'s cohort from its sampling ``key`` (see ``sample``).

    Args:
      key: the round's sampling key.
      round_index: the round.

    Returns:
      ``(indices int32[K], mask bool[K], overflow bool)``.
    """
    return self.sample(key, round_index) if self.by_round else self.sample(key)


def fixed_size_sampler(num_clients: int, cohort_size: int) -> Sampler:
  """Uniform sampling of exactly ``cohort_size`` clients without replacement.

  Args:
    num_clients: population size ``N`` (>= 1).
    cohort_size: clients per round, ``1 <= cohort_size <= N``.

  Returns:
    A :class:`Sampler` whose cohorts have exactly ``cohort_size`` real clients.
  """
  sample_clients(jax.random.key(0), num_clients, cohort_size)  # validates the sizes
  return Sampler(_FixedSample(int(num_clients), int(cohort_size)), int(cohort_size), "fixed",
                 int(num_clients), cohort_size / num_clients)


# The samplers' draw functions are values (equal for equal arguments), so two
# samplers built alike are equal and a compiled round step can be reused.


@dataclasses.dataclass(frozen=True)
class _FixedSample:
  num_clients: int
  cohort_size: int

  def __call__(self, key):
    idx = sample_clients(key, self.num_clients, self.cohort_size)
    return idx, jnp.ones((self.cohort_size,), bool), jnp.bool_(False)


@dataclasses.dataclass(frozen=True)
class _PoissonSample:
  num_clients: int
  rate: float
  bound: int

  def __call__(self, key):
    return poisson_sample(key, self.num_clients, self.rate, self.bound)


def poisson_sampler(num_clients: int, rate: float, overflow_probability: float = 1e-9
                    ) -> Sampler:
  """Poisson sampling: each client takes part independently with probability ``rate``.

  The cohort is padded to :func:`poisson_cohort_bound` slots, so a round
  overflows with probability at most ``overflow_probability``; an overflowing
  round is flagged, never truncated (:func:`fedjax_lite.run_rounds` refuses
  it).

  Args:
    num_clients: population size ``N`` (>= 1).
    rate: each client's probability of taking part, in ``(0, 1]``.
    overflow_probability: the largest allowed probability that a round's draw
      exceeds the padded cohort, in ``(0, 1)``.

  Returns:
    A :class:`Sampler` with :func:`poisson_cohort_bound` slots per cohort
    (unused slots are empty clients).
  """
  bound = poisson_cohort_bound(num_clients, rate, overflow_probability)
  return Sampler(_PoissonSample(int(num_clients), float(rate), bound), bound, "poisson",
                 int(num_clients), float(rate))


def poisson_cohort_bound(num_clients: int, rate: float,
                         overflow_probability: float = 1e-9) -> int:
  """The padded cohort size for Poisson sampling.

  Returns the smallest ``m`` with ``P(Binomial(num_clients, rate) > m) <=
  overflow_probability``. A round whose sample is larger is never truncated:
  :func:`poisson_sample` flags it and :func:`fedjax_lite.run_rounds` refuses it.
  """
  from scipy import stats

  check_int("num_clients", num_clients, minimum=1)
  check_rate(rate)
  if not 0.0 < overflow_probability < 1.0:
    raise ValueError(f"`overflow_probability` must be in (0, 1); got {overflow_probability}.")
  if rate == 1.0:
    return num_clients
  m = int(stats.binom.isf(overflow_probability, num_clients, rate))
  while stats.binom.sf(m, num_clients, rate) > overflow_probability:
    m += 1
  return max(1, min(m, num_clients))


def poisson_sample(key: Any, num_clients: int, rate: float, max_cohort: int
                   ) -> tuple[Any, Any, Any]:
  """Poisson sampling: every client takes part independently with probability ``rate``.

  Pure and jit-safe with a fixed output shape, in work that grows with the
  cohort, not the population: the number of clients drawn is
  ``Binomial(num_clients, rate)``, and the cohort is a uniformly random subset
  of that size (the first ``count`` of a uniform sample without replacement,
  :func:`sample_clients`). That is exactly the distribution of independent
  inclusions: given its size, the set of included clients of a Poisson sample
  is uniform over the subsets of that size.

  Args:
    key: PRNG key.
    num_clients: population size ``N``.
    rate: inclusion probability ``q`` in (0, 1].
    max_cohort: padded cohort size (see :func:`poisson_cohort_bound`),
      ``1 <= max_cohort <= N``.

  Returns:
    ``(indices int32[max_cohort], mask bool[max_cohort], overflow bool)``:
    ``mask`` marks the sampled slots (the first ``count``, in random order);
    ``overflow`` is true when more than ``max_cohort`` clients were drawn (the
    round must then not be used).
  """
  count_key, subset_key = jax.random.split(key)
  count = jax.random.binomial(count_key, float(num_clients), rate).astype(jnp.int32)
  indices = sample_clients(subset_key, num_clients, max_cohort)
  mask = jnp.arange(max_cohort) < count
  return indices, mask, count > max_cohort
