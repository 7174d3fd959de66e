"""Flax models and loss/metric helpers for the standard FL benchmarks.

The core of fedjax_lite is model-agnostic: any ``loss(params, batch)`` works.
These are conveniences for the models FL papers use:

* :class:`LogisticRegression` (multinomial),
* :class:`MLP` (``MLP((200, 200), 10)`` is McMahan et al.'s "2NN"),
* :class:`CNN` (McMahan et al. 2017's CNN for 28x28 images),
* :class:`CharLSTM` (LEAF / TFF's Shakespeare next-character model).

Loss builders return ``loss(params, batch) -> scalar``; metric builders return
``metrics(params, batch) -> (loss_sum[B], correct[B], count[B])`` per example,
which :mod:`fedjax_lite.evaluation` reduces over examples and clients.
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


class CNN(nn.Module):
  """The CNN of McMahan et al. (2017) for 28x28 images.

  Two 5x5 convolutions (32 then 64 channels, "same" padding, ReLU) each
  followed by 2x2 max pooling, a 512-unit ReLU dense layer, and a dense
  output layer (logits).

  References:
    McMahan, Moore, Ramage, Hampson, Aguera y Arcas. "Communication-Efficient
    Learning of Deep Networks from Decentralized Data", AISTATS 2017.
    https://arxiv.org/abs/1602.05629

  Attributes:
    num_classes: number of output classes.
    features: channels of the two convolutions.
    dense: width of the hidden dense layer.
  """

  num_classes: int
  features: Sequence[int] = (32, 64)
  dense: int = 512

  @nn.compact
  def __call__(self, x):
    if x.ndim == 3:
      x = x[..., None]
    for f in self.features:
      x = nn.relu(nn.Conv(f, (5, 5), padding="SAME")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.dense)(x))
    return nn.Dense(self.num_classes)(x)


class CharLSTM(nn.Module):
  """Next-character model: embedding, stacked LSTMs, dense logits per position.

  The LEAF / TFF Shakespeare model is ``CharLSTM(vocab_size, embed=8,
  hidden=256, layers=2)``.

  References:
    Caldas et al. "LEAF: A Benchmark for Federated Settings", 2018.
    https://arxiv.org/abs/1812.01097

  Attributes:
    vocab_size: number of tokens (logits per position).
    embed: embedding width.
    hidden: LSTM width.
    layers: number of stacked LSTM layers.
  """

  vocab_size: int
  embed: int = 8
  hidden: int = 256
  layers: int = 2

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab_size, self.embed)(tokens)
    for _ in range(self.layers):
      x = nn.RNN(nn.OptimizedLSTMCell(self.hidden))(x)
    return nn.Dense(self.vocab_size)(x)


def cross_entropy(logits: Any, labels: Any) -> Any:
  """Softmax cross-entropy against integer labels; NaN where a label is out of range.

  Equal to ``optax.softmax_cross_entropy_with_integer_labels`` wherever
  ``0 <= labels < C``. Elsewhere optax gives NaN for some labels and finite
  garbage for others (a negative label wraps around to a class); this gives
  NaN, so a bad label surfaces as a non-finite client loss (for the round's
  non-finite policy to catch) instead of training silently. Such an example's
  gradient is exactly zero, as is that of a row masked out by
  ``jnp.where`` (the package's padding), so the NaN never reaches a padded
  row's or a valid row's gradient. Check labels before training with
  :func:`fedjax_lite.data.check_labels`.

  Args:
    logits: ``float[..., C]``.
    labels: ``int[...]``, the class of each row.

  Returns:
    ``float[...]`` per-row losses.
  """
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  valid = (labels >= 0) & (labels < logits.shape[-1])
  return jnp.where(valid, ce, jnp.nan)


def classification_loss(apply_fn: Callable[[Any, Any], Any], x: str = "x",
                        y: str = "y") -> Callable[[Any, dict[str, Any]], Any]:
  """Mean softmax cross-entropy of ``apply_fn(params, batch[x])`` against integer ``batch[y]``.

  A label outside ``[0, C)`` makes its example's loss, and so the mean, NaN
  (see :func:`cross_entropy`).

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
    return cross_entropy(logits, batch[y]).mean()

  return loss


def accuracy(apply_fn: Callable[[Any, Any], Any], params: Any, inputs: Any, labels: Any,
             mask: Any = None) -> Any:
  """Fraction of correct argmax predictions over the rows where ``mask`` is true.

  Args:
    apply_fn: ``apply_fn(params, inputs) -> logits[B, C]``.
    params: the model's params.
    inputs: a batch ``[B, ...]``.
    labels: ``int[B]``.
    mask: optional ``bool[B]`` of rows to count (default: all).

  Returns:
    A float32 scalar in ``[0, 1]`` (0 when no row counts).
  """
  correct = (jnp.argmax(apply_fn(params, inputs), -1) == labels).astype(jnp.float32)
  if mask is None:
    return correct.mean()
  return jnp.sum(jnp.where(mask, correct, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def classification_metrics(apply_fn: Callable[[Any, Any], Any], x: str = "x", y: str = "y"):
  """Per-example ``(loss, correct, count=1)`` for a classifier.

  An example whose label is outside ``[0, C)`` has a NaN loss (see
  :func:`cross_entropy`) and is never correct.

  Args:
    apply_fn: ``apply_fn(params, inputs[B, ...]) -> logits[B, C]``.
    x: name of the input array.
    y: name of the integer label array.

  Returns:
    ``metrics(params, batch) -> (loss[B], correct[B], ones[B])`` (float32).
  """

  def metrics(params, batch):
    logits = apply_fn(params, batch[x])
    loss = cross_entropy(logits, batch[y])
    correct = (jnp.argmax(logits, -1) == batch[y]).astype(jnp.float32)
    return loss.astype(jnp.float32), correct, jnp.ones_like(correct)

  return metrics


def sequence_loss(apply_fn: Callable[[Any, Any], Any], pad_id: int = 0, x: str = "x",
                  y: str = "y") -> Callable[[Any, dict[str, Any]], Any]:
  """Mean over the batch of each sequence's mean token cross-entropy.

  Positions whose target is ``pad_id`` are excluded (a sequence of only
  padding contributes 0).

  Args:
    apply_fn: ``apply_fn(params, tokens[B, T]) -> logits[B, T, V]``.
    pad_id: the padding token id.
    x: name of the input token array.
    y: name of the target token array.

  Returns:
    ``loss(params, batch) -> scalar``.
  """

  def loss(params, batch):
    token_loss, _, count = _sequence_terms(apply_fn, params, batch, pad_id, x, y)
    return jnp.mean(jnp.sum(token_loss, -1) / jnp.maximum(count, 1.0))

  return loss


def sequence_metrics(apply_fn: Callable[[Any, Any], Any], pad_id: int = 0, x: str = "x",
                     y: str = "y"):
  """Per-sequence ``(summed token loss, correct tokens, real tokens)``.

  Evaluation reduces these to token-weighted loss and accuracy (padding
  positions excluded), as LEAF and TFF report for Shakespeare.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits[B, T, V]``.
    pad_id: the token id of padding (not counted).
    x: the batch's input key.
    y: the batch's target key (``int[B, T]``).

  Returns:
    ``metrics(params, batch) -> (loss_sum[B], correct[B], count[B])``.
  """

  def metrics(params, batch):
    token_loss, correct, count = _sequence_terms(apply_fn, params, batch, pad_id, x, y)
    return jnp.sum(token_loss, -1), jnp.sum(correct, -1), count

  return metrics


def _sequence_terms(apply_fn, params, batch, pad_id, x, y):
  logits = apply_fn(params, batch[x])
  targets = batch[y]
  real = targets != pad_id
  token_loss = jnp.where(real, cross_entropy(logits, targets), 0.0).astype(jnp.float32)
  correct = ((jnp.argmax(logits, -1) == targets) & real).astype(jnp.float32)
  return token_loss, correct, jnp.sum(real, -1).astype(jnp.float32)


def femnist_cnn(num_classes: int = 62, *, dense: int = 2048) -> CNN:
  """LEAF's FEMNIST CNN (Caldas et al., 2018) for 28x28 grayscale images.

  :class:`CNN` with LEAF's widths: two 5x5 convolutions (32 then 64
  channels, "same" padding, ReLU) each followed by 2x2 max pooling with
  stride 2, a 2048-unit ReLU dense layer and a dense output layer (logits),
  as in LEAF's ``models/femnist/cnn.py``. For 28x28x1 inputs and ``C``
  classes it has ``(25*1*32 + 32) + (25*32*64 + 64) + (7*7*64*2048 + 2048) +
  (2048*C + C)`` parameters (6,603,710 for FEMNIST's 62 classes).

  References:
    Caldas, Duddu, Wu, Li, Konecny, McMahan, Smith, Talwalkar. "LEAF: A Benchmark for
    Federated Settings", 2018. https://arxiv.org/abs/1812.01097

  Args:
    num_classes: number of output classes (62 for FEMNIST).
    dense: width of the hidden dense layer.

  Returns:
    The flax module.
  """
  return CNN(num_classes, features=(32, 64), dense=dense)


class NextWordLSTM(nn.Module):
  """The StackOverflow next-word model of Reddi et al. (2021).

  Token embedding (96), one LSTM layer (670 units), a dense projection (96, linear) and dense
  logits over all ``vocab_size + num_oov_buckets + 3`` token ids (the words, the OOV
  bucket(s), pad, beginning and end of sentence: 10,004 for the 10,000-word vocabulary of
  :func:`fedjax_lite.datasets.tff_h5.load_tff_h5`), at every position. With the defaults it
  has 4,050,748 parameters, the count Reddi et al. report. Train it with
  :func:`sequence_loss` / :func:`sequence_metrics` (``pad_id=0``).

  References:
    Reddi, Charles, Zaheer, Garrett, Rush, Konecny, Kumar, McMahan. "Adaptive Federated
    Optimization", ICLR 2021. https://arxiv.org/abs/2003.00295

  Attributes:
    vocab_size: number of vocabulary words ``V``.
    num_oov_buckets: out-of-vocabulary ids (TFF's default 1).
    embed: embedding width.
    hidden: LSTM width.
    dense: width of the projection before the logits.
  """

  vocab_size: int = 10000
  num_oov_buckets: int = 1
  embed: int = 96
  hidden: int = 670
  dense: int = 96

  @property
  def num_tokens(self) -> int:
    """All token ids: the words, the OOV buckets, pad, BOS and EOS."""
    return self.vocab_size + self.num_oov_buckets + 3

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.num_tokens, self.embed)(tokens)
    x = nn.RNN(nn.OptimizedLSTMCell(self.hidden))(x)
    x = nn.Dense(self.dense)(x)
    return nn.Dense(self.num_tokens)(x)
