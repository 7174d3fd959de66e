"""Server optimizers: optax transformations fed the negated mean delta.

The server treats ``-aggregate_delta`` as a pseudo-gradient and applies any
``optax.GradientTransformation`` to it (Reddi et al. 2021, "Adaptive
Federated Optimization", https://arxiv.org/abs/2003.00295). The presets here
name the standard choices:

=============  ===============================================================
``fedavg``     SGD with server learning rate (1.0 recovers McMahan et al. 2017)
``fedavgm``    SGD with heavy-ball momentum (Hsu et al. 2019)
``fedadam``    Reddi et al. Algorithm 2, Adam variant
``fedyogi``    Reddi et al. Algorithm 2, Yogi variant
``fedadagrad`` Reddi et al. Algorithm 2, Adagrad variant
=============  ===============================================================

The adaptive presets follow the paper's conventions exactly, which differ
from ``optax.adam``/``optax.yogi``/``optax.adagrad``: no bias correction, the
adaptivity ``tau`` is added *outside* the square root
(``x += lr * m / (sqrt(v) + tau)``), and the second moment starts at
``v_{-1} = tau**2`` (the paper requires ``v_{-1} >= tau**2``).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class AdaptiveServerState(NamedTuple):
  """State of :func:`scale_by_adaptive_server`: first and second moments."""

  m: Any
  v: Any


ADAPTIVE_KINDS = ("adam", "yogi", "adagrad")


def scale_by_adaptive_server(
    kind: str,
    *,
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
    initial_accumulator: float | None = None,
) -> optax.GradientTransformation:
  """Reddi et al. (2021) Algorithm 2 moment scaling, before the learning rate.

  With pseudo-gradient ``g = -Delta``::

      m = b1 * m + (1 - b1) * g
      adam:    v = b2 * v + (1 - b2) * g**2
      yogi:    v = v - (1 - b2) * g**2 * sign(v - g**2)
      adagrad: v = v + g**2
      update = m / (sqrt(v) + tau)

  References:
    Reddi, Charles, Zaheer, Garrett, Rush, Konecny, Kumar, McMahan.
    "Adaptive Federated Optimization", ICLR 2021. https://arxiv.org/abs/2003.00295

  Args:
    kind: ``"adam"``, ``"yogi"`` or ``"adagrad"``.
    b1: first-moment decay (the paper's beta_1; 0 disables momentum).
    b2: second-moment decay (beta_2; unused by adagrad).
    tau: adaptivity; the paper's default is 1e-3.
    initial_accumulator: ``v_{-1}``; defaults to ``tau**2``.

  Returns:
    An ``optax.GradientTransformation`` (chain it with a learning rate).

  Raises:
    ValueError: for an unknown ``kind`` or out-of-range hyperparameters.
  """
  if kind not in ADAPTIVE_KINDS:
    raise ValueError(f"`kind` must be one of {ADAPTIVE_KINDS}; got {kind!r}.")
  if not 0.0 <= b1 < 1.0:
    raise ValueError(f"`b1` must be in [0, 1); got {b1}.")
  if not 0.0 <= b2 < 1.0:
    raise ValueError(f"`b2` must be in [0, 1); got {b2}.")
  if not tau > 0.0:
    raise ValueError(f"`tau` must be > 0; got {tau}.")
  v0 = tau**2 if initial_accumulator is None else initial_accumulator
  if not v0 >= 0.0:
    raise ValueError(f"`initial_accumulator` must be >= 0; got {v0}.")

  def init(params):
    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(lambda p: jnp.full_like(p, v0), params)
    return AdaptiveServerState(m, v)

  def second_moment(v, g):
    g2 = g * g
    if kind == "adam":
      return b2 * v + (1.0 - b2) * g2
    if kind == "yogi":
      return v - (1.0 - b2) * g2 * jnp.sign(v - g2)
    return v + g2

  def update(updates, state, params=None):
    del params
    m = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.m, updates)
    v = jax.tree.map(second_moment, state.v, updates)
    out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + tau), m, v)
    return out, AdaptiveServerState(m, v)

  return optax.GradientTransformation(init, update)


def fedavg(learning_rate: float = 1.0) -> optax.GradientTransformation:
  """FedAvg's server: ``x += learning_rate * mean_delta`` (McMahan et al. 2017).

  Args:
    learning_rate: server learning rate; 1.0 replaces the model by the mean of
      the client models.

  Returns:
    An optax ``GradientTransformation`` for the server: fed the pseudo-gradient
    ``-mean_delta`` (a pytree like the params), it returns the server's update.
  """
  return optax.sgd(learning_rate)


def fedavgm(learning_rate: float = 1.0, momentum: float = 0.9) -> optax.GradientTransformation:
  """FedAvgM: server SGD with heavy-ball momentum on the pseudo-gradient.

  References:
    Hsu, Qi, Brown. "Measuring the Effects of Non-Identical Data Distribution
    for Federated Visual Classification", 2019. https://arxiv.org/abs/1909.06335

  Args:
    learning_rate: server learning rate.
    momentum: momentum coefficient (``optax.sgd`` convention).

  Returns:
    An optax ``GradientTransformation`` for the server: fed the pseudo-gradient
    ``-mean_delta`` (a pytree like the params), it returns the server's update.
  """
  return optax.sgd(learning_rate, momentum=momentum)


def fedadam(learning_rate: float = 1e-2, b1: float = 0.9, b2: float = 0.99,
            tau: float = 1e-3) -> optax.GradientTransformation:
  """FedAdam (Reddi et al. 2021); see :func:`scale_by_adaptive_server`.

  Args:
    learning_rate: server learning rate ``eta``.
    b1: first-moment decay ``beta_1``.
    b2: second-moment decay ``beta_2``.
    tau: adaptivity ``tau`` (added outside the square root; ``v_{-1} = tau^2``).

  Returns:
    An optax ``GradientTransformation`` for the server: fed the pseudo-gradient
    ``-mean_delta`` (a pytree like the params), it returns the server's update.
  """
  return _adaptive("adam", learning_rate, b1=b1, b2=b2, tau=tau)


def fedyogi(learning_rate: float = 1e-2, b1: float = 0.9, b2: float = 0.99,
            tau: float = 1e-3) -> optax.GradientTransformation:
  """FedYogi (Reddi et al. 2021): FedAdam with Yogi's additive second moment.

  Args:
    learning_rate, b1, b2, tau: as :func:`fedadam`.

  Returns:
    As :func:`fedadam` (see :func:`scale_by_adaptive_server`).
  """
  return _adaptive("yogi", learning_rate, b1=b1, b2=b2, tau=tau)


def fedadagrad(learning_rate: float = 1e-2, b1: float = 0.0,
               tau: float = 1e-3) -> optax.GradientTransformation:
  """FedAdagrad (Reddi et al. 2021); see :func:`scale_by_adaptive_server`.

  ``b1`` defaults to 0 (no server momentum, like Adagrad in optax and TFF);
  set ``b1=0.9`` for the momentum form of the paper's Algorithm 2.

  Args:
    learning_rate, tau: as :func:`fedadam`.
    b1: first-moment decay ``beta_1`` (0: none).

  Returns:
    As :func:`fedadam`.
  """
  return _adaptive("adagrad", learning_rate, b1=b1, tau=tau)


def _adaptive(rule: str, learning_rate: float, **moments: float) -> optax.GradientTransformation:
  return optax.chain(scale_by_adaptive_server(rule, **moments),
                     optax.scale_by_learning_rate(learning_rate))


SERVER_OPTIMIZERS = {
    "fedavg": fedavg,
    "fedavgm": fedavgm,
    "fedadam": fedadam,
    "fedyogi": fedyogi,
    "fedadagrad": fedadagrad,
}


def server_optimizer(name: str, **kwargs) -> optax.GradientTransformation:
  """Looks a preset up by name (``"fedavg"``, ``"fedadam"``, ...).

  Args:
    name: one of ``fedavg``, ``fedavgm``, ``fedadam``, ``fedyogi``, ``fedadagrad``.
    **kwargs: that preset's arguments (e.g. ``learning_rate=0.01``).

  Returns:
    The preset's optax ``GradientTransformation``.

  Raises:
    ValueError: for an unknown name.
  """
  if name not in SERVER_OPTIMIZERS:
    raise ValueError(
        f"unknown server optimizer {name!r}; choose one of {sorted(SERVER_OPTIMIZERS)}.")
  return SERVER_OPTIMIZERS[name](**kwargs)
