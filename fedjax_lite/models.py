"""Small flax models and the loss helper used by the examples and tests.

The core of fedjax_lite is model-agnostic: any ``loss(params, batch)`` works.
These are conveniences for the common case of a classifier.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import optax


class LogisticRegression(nn.Module):
  """Multinomial logistic regression: one dense layer to ``num_classes`` logits."""

  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


class MLP(nn.Module):
  """A ReLU multilayer perceptron, e.g. ``MLP((200, 200), 10)`` is McMahan et al.'s "2NN"."""

  hidden: Sequence[int]
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


def classification_loss(apply_fn: Callable[[Any, Any], Any], x: str = "x",
                        y: str = "y") -> Callable[[Any, dict[str, Any]], Any]:
  """Mean softmax cross-entropy of ``apply_fn(params, batch[x])`` against integer ``batch[y]``.

  Args:
    apply_fn: ``apply_fn(params, inputs[B, ...]) -> logits[B, C]``, e.g. a
      flax ``module.apply``.
    x: name of the input array in the batch.
    y: name of the integer label array in the batch.

  Returns:
    ``loss(params, batch) -> scalar``.
  """

  def loss(params, batch):
    logits = apply_fn(params, batch[x])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[y]).mean()

  return loss


def accuracy(apply_fn: Callable[[Any, Any], Any], params: Any, inputs: Any, labels: Any,
             mask: Any = None) -> Any:
  """Fraction of correct argmax predictions over the rows where ``mask`` is true."""
  correct = (jnp.argmax(apply_fn(params, inputs), -1) == labels).astype(jnp.float32)
  if mask is None:
    return correct.mean()
  return jnp.sum(jnp.where(mask, correct, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
