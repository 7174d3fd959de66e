"""The types shared across the library, defined once (cf. optax's ``base.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Array = Any
"""A JAX or NumPy array."""

Params = Any
"""A pytree of model parameters."""

PRNGKey = Any
"""A ``jax.random`` key."""

Batch = dict[str, Any]
"""A batch: a dict of arrays ``[B, ...]`` named like a client's arrays."""

LossFn = Callable[[Params, Batch], Any]
"""``loss(params, batch) -> scalar``: the mean loss of a batch."""

MetricsFn = Callable[[Params, Batch], tuple[Any, Any, Any]]
"""``metrics(params, batch) -> (loss_sum[B], correct[B], count[B])`` per example."""
