"""Client sampling as pure functions of a PRNG key."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fedjax_lite.data import _check_int


def sample_clients(key: Any, num_clients: int, cohort_size: int) -> Any:
  """Samples a cohort uniformly without replacement; pure and jit-safe.

  Every subset of ``cohort_size`` clients is equally likely, and the same key
  always gives the same cohort.

  Args:
    key: a PRNG key.
    num_clients: population size ``N`` (a Python int).
    cohort_size: clients per round ``K`` (a Python int, ``1 <= K <= N``).

  Returns:
    ``int32[K]``: distinct positions in ``[0, N)``, in random order.

  Raises:
    ValueError: if ``cohort_size`` is not in ``[1, num_clients]``.
  """
  _check_int("num_clients", num_clients, minimum=1)
  _check_int("cohort_size", cohort_size, minimum=1)
  if cohort_size > num_clients:
    raise ValueError(
        f"`cohort_size`={cohort_size} is larger than the population ({num_clients} clients); "
        "sampling is without replacement, so use at most num_clients.")
  return jax.random.choice(key, num_clients, (cohort_size,), replace=False).astype(jnp.int32)
