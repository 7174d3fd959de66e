"""Argument checks shared across the library, defined once (cf. jax_privacy's ``_validate``).

Each raises ``TypeError``/``ValueError`` with one line that names the
argument (as the caller's parameter name) and what is expected. Checks of
values that may be traced (inside ``jit``/``vmap``/``grad``) pass tracers
through unchecked.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def is_concrete(value: Any) -> bool:
  """Whether ``value`` is a concrete value (not a tracer of ``jit``/``vmap``/``grad``).

  Args:
    value: any value or pytree.

  Returns:
    False if any leaf is a tracer.
  """
  import jax  # noqa: PLC0415 - not at import time: the command line's --help needs no JAX

  return not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(value))


def concrete_float(value: Any) -> float | None:
  """``float(value)``, or ``None`` when it is traced (inside ``jit``/``vmap``).

  Args:
    value: a number, array scalar or tracer.

  Returns:
    A Python float, or None.
  """
  import jax  # noqa: PLC0415 - see is_concrete

  try:
    return float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def check_int(name: str, value: Any, minimum: int) -> int:
  """Checks that ``value`` is a Python/NumPy int ``>= minimum``.

  Args:
    name: the argument's name, for the message.
    value: the value to check (``bool`` is refused).
    minimum: the smallest allowed value.

  Returns:
    ``value`` as a Python int.

  Raises:
    TypeError: for a non-int; ValueError: below ``minimum``.
  """
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"`{name}` must be an int; got {type(value).__name__} {value!r}.")
  if value < minimum:
    raise ValueError(f"`{name}` must be >= {minimum}; got {value}.")
  return int(value)


def check_real(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
               low_open: bool = False, high_open: bool = False, hint: str = "") -> None:
  """Checks a (possibly traced) real number in ``[low, high]`` (open ends on request).

  Args:
    name: the argument's name, for the message.
    value: the value; a tracer passes unchecked.
    low: the lower bound (default: none).
    high: the upper bound (default: none).
    low_open: exclude ``low`` itself.
    high_open: exclude ``high`` itself.
    hint: appended to the message.

  Returns:
    None.

  Raises:
    TypeError: for a non-number; ValueError: out of range.
  """
  if not is_concrete(value):
    return
  if isinstance(value, (bool, str, bytes)):
    raise TypeError(f"`{name}` must be a number; got {type(value).__name__} {value!r}.")
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise TypeError(f"`{name}` must be a number; got {type(value).__name__} {value!r}.") from None
  if not (v > low if low_open else v >= low) or not (v < high if high_open else v <= high):
    if not math.isfinite(high):
      domain = f"{'>' if low_open else '>='} {low:g}"
    elif not math.isfinite(low):
      domain = f"{'<' if high_open else '<='} {high:g}"
    else:
      domain = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise ValueError(f"`{name}` must be {domain}; got {value!r}.{hint}")


def check_rate(rate: Any, name: str = "q") -> None:
  """Checks a sampling rate in ``(0, 1]``.

  Args:
    rate: the rate.
    name: the argument's name, for the message.

  Returns:
    None.

  Raises:
    ValueError: outside ``(0, 1]``.
  """
  if isinstance(rate, bool) or not (isinstance(rate, (int, float)) and 0.0 < rate <= 1.0):
    raise ValueError(f"sampling rate `{name}` must be in (0, 1]; got {rate!r}.")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
  """Checks that ``value`` is one of ``choices``.

  Args:
    name: the argument's name, for the message.
    value: the value.
    choices: the allowed strings.

  Returns:
    ``value``.

  Raises:
    ValueError: for anything else.
  """
  if not (isinstance(value, str) and value in choices):
    raise ValueError(f"`{name}` must be one of {choices}; got {value!r}.")
  return value


def check_class_labels(labels: Any, name: str = "labels") -> np.ndarray:
  """Checks host-side class labels: a 1-D integer array of values ``>= 0``.

  Args:
    labels: the labels ``[num_examples]``.
    name: the argument's name, for the message.

  Returns:
    ``labels`` as an ``int64`` NumPy array.

  Raises:
    ValueError: for another rank, a non-integer dtype or a negative label.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(
        f"`{name}` must be a 1-D array of integer class labels [num_examples]; got shape "
        f"{labels.shape}.")
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"`{name}` must hold integer class labels; got dtype {labels.dtype}. Cast it, e.g. "
        "`labels.astype(np.int32)`.")
  if labels.size and labels.min() < 0:
    raise ValueError(f"`{name}` must be >= 0 (class ids); got min {labels.min()}.")
  return labels.astype(np.int64)
