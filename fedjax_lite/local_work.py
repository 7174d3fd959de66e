"""Heterogeneous local work: how many local steps each client takes in a round.

A :class:`LocalWork` gives every client a per-round step budget, drawn from
its own key (so it does not depend on the cohort's order or chunking):
:func:`fixed` steps, :func:`sampled` uniformly between two bounds,
:func:`proportional` to its data, or :func:`stragglers` (a fraction of the
clients do only part of the work, or drop out). :func:`local_work_budget`
turns it into the step cap that :func:`fedjax_lite.local_train` honours.

References:
  Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in
  Heterogeneous Networks", MLSys 2020 (stragglers: drop vs partial work).
  Wang, Liu, Liang, Joshi, Poor, "Tackling the Objective Inconsistency
  Problem in Heterogeneous Federated Optimization", NeurIPS 2020.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_lite._types import PRNGKey
from fedjax_lite._validate import check_int, check_real

# The data folded into the client's key for its local-work draws: far above
# any epoch index (epochs use fold_in(client_key, e)), so the draws are
# independent of the example orders.
LOCAL_WORK_FOLD = 0x7F4C5700

STRAGGLER_MODES = ("drop", "partial")
STRAGGLER_UNITS = ("steps", "epochs")


class LocalWork(NamedTuple):
  """A per-client, per-round budget of local steps (heterogeneous local work).

  Given to :func:`build_client_update` (``local_work=``), it caps each
  client's optimizer steps in a round through :func:`local_train`'s
  ``max_steps``, inside the one vmapped program. Build one with
  :func:`fixed`, :func:`sampled`, :func:`proportional` or
  :func:`stragglers`, or write your own ``budget``.

  Attributes:
    budget: ``budget(key, num_examples, steps_per_epoch, num_epochs) ->
      (max_steps, straggler)``, pure and jit-safe: ``key`` is the client's
      work key ``fold_in(fold_in(round_client_key, client_id),
      LOCAL_WORK_FOLD)``, ``num_examples`` and ``steps_per_epoch =
      ceil(num_examples / batch_size)`` int32 scalars, ``num_epochs`` the
      static local epochs; it returns the int step budget (clipped to
      ``[0, num_epochs * steps_per_epoch]`` by the caller) and a bool, whether
      the client is a straggler this round.
    drop_stragglers: drop the clients flagged as stragglers (zero delta,
      weight 0, no steps) instead of aggregating their partial work.
    by_client: ``budget`` also takes the client's id as a fifth argument
      (e.g. a deadline on the client's own device,
      :func:`fedjax_lite.timing.deadline_work`).
  """

  budget: Callable[..., tuple[Any, Any]]
  drop_stragglers: bool = False
  by_client: bool = False


class WorkBudget(NamedTuple):
  """One client's local work in one round (see :func:`local_work_budget`).

  Attributes:
    max_steps: int32 scalar, the step budget (0 for a dropped client); at most
      the client's full ``num_epochs * ceil(n / batch_size)`` steps.
    straggler: bool scalar, the client (with data) is a straggler.
    dropped: bool scalar, the client (with data) is dropped this round.
  """

  max_steps: Any
  straggler: Any
  dropped: Any


def fixed(steps: int) -> LocalWork:
  """Every client takes ``steps`` local steps (or all its steps, if fewer).

  Args:
    steps: steps per client per round (>= 1); a client with fewer steps in
      its ``num_epochs`` epochs takes all of them.

  Returns:
    A :class:`LocalWork`.

  Raises:
    TypeError, ValueError: for a non-int or non-positive ``steps``.
  """
  steps = check_int("steps", steps, minimum=1)

  def budget(key, num_examples, steps_per_epoch, num_epochs):
    del key, num_examples, steps_per_epoch, num_epochs
    return jnp.int32(steps), jnp.bool_(False)

  return LocalWork(budget)


def sampled(min_steps: int, max_steps: int) -> LocalWork:
  """Each client draws its steps uniformly from ``[min_steps, max_steps]`` each round.

  The draw is ``jax.random.randint(work_key, (), min_steps, max_steps + 1)``
  with the client's work key (see :class:`LocalWork`), capped at the
  client's full ``num_epochs * ceil(n / batch_size)`` steps.

  Args:
    min_steps: smallest budget (>= 1).
    max_steps: largest budget (>= ``min_steps``).

  Returns:
    A :class:`LocalWork`.

  Raises:
    TypeError, ValueError: for non-int bounds, ``min_steps < 1`` or
      ``max_steps < min_steps``.
  """
  min_steps = check_int("min_steps", min_steps, minimum=1)
  max_steps = check_int("max_steps", max_steps, minimum=min_steps)

  def budget(key, num_examples, steps_per_epoch, num_epochs):
    del num_examples, steps_per_epoch, num_epochs
    return jax.random.randint(key, (), min_steps, max_steps + 1), jnp.bool_(False)

  return LocalWork(budget)


def proportional(*, steps_per_example: float | None = None,
                 fraction: float | None = None) -> LocalWork:
  """A budget proportional to the client's data (or to its full local work).

  Exactly one of:

  * ``steps_per_example``: ``ceil(steps_per_example * n)`` steps for a
    client with ``n`` examples;
  * ``fraction``: ``ceil(fraction * full)`` steps, ``full = num_epochs *
    ceil(n / batch_size)``.

  Both are computed in float32 and rounded up after a relative ``1e-6``
  slack (so float rounding cannot turn ``0.3 * 10`` into 4), at least 1 step
  for a client with data and at most ``full``. No randomness.

  Args:
    steps_per_example: steps per example (> 0).
    fraction: fraction of the full local work, in ``(0, 1]``.

  Returns:
    A :class:`LocalWork`.

  Raises:
    ValueError: unless exactly one argument is given, or if it is out of range.
  """
  if (steps_per_example is None) == (fraction is None):
    raise ValueError("give exactly one of `steps_per_example` and `fraction`; got "
                     f"steps_per_example={steps_per_example!r}, fraction={fraction!r}.")
  if fraction is not None:
    check_real("fraction", fraction, low=0.0, high=1.0, low_open=True)
  else:
    check_real("steps_per_example", steps_per_example, low=0.0, low_open=True)

  def budget(key, num_examples, steps_per_epoch, num_epochs):
    del key
    if fraction is not None:
      x = jnp.asarray(fraction, jnp.float32) * (steps_per_epoch * num_epochs).astype(jnp.float32)
    else:
      x = jnp.asarray(steps_per_example, jnp.float32) * num_examples.astype(jnp.float32)
    steps = jnp.ceil(x * jnp.float32(1.0 - 1e-6)).astype(jnp.int32)
    return jnp.maximum(steps, 1), jnp.bool_(False)

  return LocalWork(budget)


def stragglers(fraction: float, mode: str = "drop", *, unit: str = "steps") -> LocalWork:
  """Stragglers as in the experiments of the FedProx paper.

  Each round, each client is a straggler with probability ``fraction``. A
  straggler has time for only part of its work: a uniformly random number of
  steps in ``[1, full]`` (``full = num_epochs * ceil(n / batch_size)``), or
  with ``unit="epochs"`` a uniformly random number of whole epochs in ``[1,
  num_epochs]`` (as the paper's code does). Other clients do their full work.

  * ``mode="drop"``: stragglers are dropped (zero delta, weight 0, no steps),
    what FedAvg does in the paper;
  * ``mode="partial"``: their partial work is aggregated like any other
    client's (FedProx).

  Randomness: with the client's work key ``w`` (see :class:`LocalWork`),
  ``k_flag, k_steps = jax.random.split(w)``; the client is a straggler iff
  ``jax.random.uniform(k_flag) < fraction``, and its partial budget is
  ``jax.random.randint(k_steps, (), 1, full + 1)`` (steps) or
  ``jax.random.randint(k_steps, (), 1, num_epochs + 1) * ceil(n /
  batch_size)`` (epochs). Both modes draw the same stragglers for the same
  round key, and nothing depends on the chunking or the cohort order. (The
  paper picks an exact share of each round's cohort instead; per-client
  draws keep clients independent.)

  References:
    Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in
    Heterogeneous Networks", MLSys 2020. https://arxiv.org/abs/1812.06127

  Args:
    fraction: probability that a client straggles in a round, in ``[0, 1]``.
    mode: ``"drop"`` or ``"partial"``.
    unit: ``"steps"`` or ``"epochs"``: the granularity of a straggler's work.

  Returns:
    A :class:`LocalWork`; the client update then reports the per-client
    metrics ``num_stragglers`` and ``num_dropped_stragglers`` (0 or 1,
    summed by the round).

  Raises:
    ValueError: for ``fraction`` outside ``[0, 1]``, an unknown ``mode`` or
      ``unit``.
  """
  check_real("fraction", fraction, low=0.0, high=1.0)
  if mode not in STRAGGLER_MODES:
    raise ValueError(f"`mode` must be one of {STRAGGLER_MODES}; got {mode!r}.")
  if unit not in STRAGGLER_UNITS:
    raise ValueError(f"`unit` must be one of {STRAGGLER_UNITS}; got {unit!r}.")

  def budget(key, num_examples, steps_per_epoch, num_epochs):
    del num_examples
    k_flag, k_steps = jax.random.split(key)
    straggler = jax.random.uniform(k_flag) < fraction
    full = steps_per_epoch * num_epochs
    if unit == "steps":
      partial = jax.random.randint(k_steps, (), 1, jnp.maximum(full, 1) + 1)
    else:
      partial = jax.random.randint(k_steps, (), 1, num_epochs + 1) * steps_per_epoch
    return jnp.where(straggler, partial, full), straggler

  return LocalWork(budget, drop_stragglers=mode == "drop")


def local_work_budget(local_work: LocalWork | None, client_key: PRNGKey, num_examples: Any, *,
                      num_epochs: int, batch_size: int, client_id: Any = None) -> WorkBudget:
  """One client's step budget for a round; pure and jit-safe.

  Args:
    local_work: a :class:`LocalWork`, or ``None`` (every step of the epochs).
    client_key: the client's key ``fold_in(round_client_key, client_id)``;
      the budget draws from ``fold_in(client_key, LOCAL_WORK_FOLD)``.
    num_examples: int scalar, the client's real examples.
    num_epochs: static local epochs.
    batch_size: static examples per step.
    client_id: the client's id, for a ``local_work`` with ``by_client``.

  Returns:
    A :class:`WorkBudget`; ``straggler`` and ``dropped`` are false for a
    client without data.
  """
  n = jnp.asarray(num_examples, jnp.int32)
  per_epoch = (n + batch_size - 1) // batch_size
  full = per_epoch * num_epochs
  if local_work is None:
    return WorkBudget(full, jnp.bool_(False), jnp.bool_(False))
  work_key = jax.random.fold_in(client_key, LOCAL_WORK_FOLD)
  if local_work.by_client:
    steps, straggler = local_work.budget(work_key, n, per_epoch, num_epochs, client_id)
  else:
    steps, straggler = local_work.budget(work_key, n, per_epoch, num_epochs)
  straggler = jnp.asarray(straggler, bool) & (n > 0)
  dropped = straggler & jnp.bool_(local_work.drop_stragglers)
  steps = jnp.clip(jnp.asarray(steps, jnp.int32), 0, full)
  return WorkBudget(jnp.where(dropped, 0, steps), straggler, dropped)


def check_local_work(local_work: Any) -> None:
  """Checks a ``local_work`` argument.

  Args:
    local_work: ``None`` or a :class:`LocalWork`.

  Returns:
    None.

  Raises:
    TypeError: for anything else, naming the constructors.
  """
  if local_work is not None and not isinstance(local_work, LocalWork):
    raise TypeError(
        "`local_work` must be None or a fedjax_lite.client.LocalWork (e.g. "
        f"fedjax_lite.client.stragglers(0.5)); got {local_work!r}.")
