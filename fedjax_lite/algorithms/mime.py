"""Mime-Lite with SGD with momentum (SGDm) as the base optimizer.

References:
  Karimireddy, Jaggi, Kale, Mohri, Reddi, Stich, Suresh. "Breaking the
  centralized barrier for cross-device federated learning", NeurIPS 2021.
  (First circulated as "Mime: Mimicking Centralized Stochastic Algorithms in
  Federated Learning", 2020.) https://arxiv.org/abs/2008.03606

Clients mimic centralized SGDm by applying the *server's* momentum ``m``,
kept fixed during local training, instead of building their own. A round:

* the server broadcasts ``{"params": x, "momentum": m}`` (``m`` is zeros
  initially and lives in ``ServerState.extra``);
* client ``i`` runs local SGD from ``y = x``:
  ``y <- y - eta_l ((1 - beta) g(y) + beta m)`` for each minibatch gradient
  ``g(y)``, and computes its full-batch gradient at the server point
  ``grad_i(x)`` (the mean gradient over all its real examples); it sends
  ``{"params": y - x, "grad": grad_i(x)}``;
* the server averages the messages with the aggregator and updates
  ``x <- x + eta_g mean(dy)`` (the server optimizer applied to
  ``-mean(dy)``, :func:`fedjax_lite.server.fedavg` with ``eta_g = 1`` by
  default) and ``m <- (1 - beta) mean(grad) + beta m``.

Both means use the aggregator's weighting, by default the number of examples
(:func:`fedjax_lite.mean_aggregator`); uniform weighting is
``aggregator=fl.mean_aggregator("uniform")``.

Differential privacy: with a DP aggregator (:mod:`fedjax_lite.privacy`) the
whole message ``{"params": dy, "grad": grad_i(x)}`` is clipped jointly and
noised, so the clip bounds the joint message norm, every server update is
post-processing of the noised release, and the privacy accounting stays
valid.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedjax_lite import server as server_lib
from fedjax_lite._validate import check_real, is_concrete
from fedjax_lite.aggregation import Aggregator
from fedjax_lite.algorithm import (
  FederatedAlgorithm,
  ServerState,
  ServerUpdate,
  build_federated_algorithm,
)
from fedjax_lite.algorithms._common import apply_server_optimizer, check_local_sgd
from fedjax_lite.algorithms._common import server_update as common_server_update
from fedjax_lite.algorithms.registry import BuildContext
from fedjax_lite.client import (
  ClientOutput,
  LossFn,
  local_train,
  masked_mean_grad,
  resolve_grad_mode,
)
from fedjax_lite.data import FederatedData


def _check_beta(beta):
  check_real("beta", beta, low=0.0, high=1.0)
  if is_concrete(beta) and float(beta) >= 1.0:
    raise ValueError(f"`beta` (the momentum) must be in [0.0, 1.0); got {beta!r}.")


def build_mime_lite_client_update(
    loss_fn: LossFn,
    *,
    client_lr: float,
    beta: float = 0.9,
    num_epochs: int,
    batch_size: int,
    grad_mode: str = "auto",
):
  """Mime-Lite's client update with an SGDm base optimizer.

  See the module docstring (Karimireddy, Jaggi, Kale, Mohri, Reddi, Stich,
  Suresh, "Breaking the centralized barrier for cross-device federated
  learning", NeurIPS 2021).

  Args:
    loss_fn: ``loss(params, batch) -> scalar``, the mean loss of a batch.
    client_lr: ``eta_l``, the local learning rate (> 0).
    beta: the momentum ``beta`` in ``[0, 1)``.
    num_epochs: local epochs (>= 1).
    batch_size: examples per local step (>= 1).
    grad_mode: see :func:`fedjax_lite.build_client_update`; also used for
      the full-batch gradient.

  Returns:
    ``client_update(broadcast, client_data, key) -> ClientOutput`` where
    ``broadcast = {"params": x, "momentum": m}``; the output's ``delta`` is
    ``{"params": y - x, "grad": grad_i(x)}`` (zeros for an empty client), its
    weight the client's number of examples, its metrics ``train_loss`` and
    its counts ``num_examples``, ``num_steps``.

  Raises:
    TypeError, ValueError: for a non-callable ``loss_fn``, a non-positive
      ``client_lr``, ``num_epochs`` or ``batch_size``, ``beta`` outside
      ``[0, 1)``, or an unknown ``grad_mode``.
  """
  check_local_sgd(loss_fn, client_lr, num_epochs, batch_size, grad_mode)
  _check_beta(beta)
  sgd = optax.sgd(client_lr)

  def client_update(broadcast, client_data: FederatedData, key) -> ClientOutput:
    x, m = broadcast["params"], broadcast["momentum"]
    client_key = jax.random.fold_in(key, client_data.client_ids)
    correction = lambda g, y: jax.tree.map(lambda g, m: (1.0 - beta) * g + beta * m, g, m)
    result = local_train(loss_fn, sgd, x, client_data, client_key, num_epochs=num_epochs,
                         batch_size=batch_size, grad_mode=grad_mode, grad_correction=correction)
    n = client_data.num_examples
    arrays = client_data.arrays
    max_n = next(iter(arrays.values())).shape[0]
    full_grad, _ = masked_mean_grad(loss_fn, x, arrays, jnp.arange(max_n) < n,
                                    resolve_grad_mode(grad_mode, x))
    trained = result.num_steps > 0
    zero_unless = lambda t: jax.tree.map(lambda v: jnp.where(trained, v, 0).astype(v.dtype), t)
    delta = {
        "params": zero_unless(jax.tree.map(jnp.subtract, result.params, x)),
        "grad": zero_unless(full_grad),
    }
    n_f = n.astype(jnp.float32)
    counts = {"num_examples": n_f, "num_steps": result.num_steps.astype(jnp.float32)}
    return ClientOutput(delta, jnp.where(trained, n_f, 0.0), {"train_loss": result.mean_loss},
                        counts=counts)

  return client_update


def mime_lite_server_update(server_optimizer: optax.GradientTransformation,
                            beta: float = 0.9) -> ServerUpdate:
  """Mime-Lite's server step: the model step and the server momentum ``m``.

  Args:
    server_optimizer: optax transformation applied to ``-mean(dy)``.
    beta: the momentum ``beta`` in ``[0, 1)``.

  Returns:
    A :class:`fedjax_lite.ServerUpdate`: ``init`` starts ``m = 0`` in
    ``state.extra``, ``broadcast`` sends ``{"params": x, "momentum": m}``,
    and ``update(state, aggregate, metrics, key) -> (params, opt_state, m)``
    sets ``m = (1 - beta) aggregate["grad"] + beta state.extra``.

  Raises:
    ValueError: for ``beta`` outside ``[0, 1)``.
  """
  _check_beta(beta)

  def server_update(state: ServerState, aggregate, metrics, key):
    del metrics, key
    pseudo_grad = jax.tree.map(jnp.negative, aggregate["params"])
    params, opt_state = apply_server_optimizer(server_optimizer, state, pseudo_grad)
    momentum = jax.tree.map(lambda m, g: ((1.0 - beta) * g + beta * m).astype(m.dtype),
                            state.extra, aggregate["grad"])
    return params, opt_state, momentum

  return common_server_update(
      server_optimizer, server_update, extra_init=lambda p: jax.tree.map(jnp.zeros_like, p),
      broadcast=lambda state: {"params": state.params, "momentum": state.extra})


def mime_lite(
    loss_fn: LossFn,
    *,
    beta: float = 0.9,
    server_optimizer: optax.GradientTransformation | None = None,
    aggregator: Aggregator | None = None,
    **hyperparameters: Any,
) -> FederatedAlgorithm:
  """Mime-Lite with SGDm, as a federated algorithm.

  Karimireddy, Jaggi, Kale, Mohri, Reddi, Stich, Suresh. "Breaking the
  centralized barrier for cross-device federated learning", NeurIPS 2021.
  See the module docstring for the round, the weighting and differential
  privacy. ``state.extra`` holds the server momentum ``m``; clients keep no
  state, so ``algo.init(params)`` needs no population size.

  Args:
    loss_fn: ``loss(params, batch) -> scalar``, the mean loss of a batch.
    beta: momentum in ``[0, 1)``.
    server_optimizer: applied to ``-mean(dy)``; default
      :func:`fedjax_lite.server.fedavg` (``eta_g = 1``).
    aggregator: how messages are averaged; default
      :func:`fedjax_lite.mean_aggregator` (example counts).
    **hyperparameters: the client update's (client_lr, num_epochs, batch_size, grad_mode),
      passed to :func:`build_mime_lite_client_update`.

  Returns:
    A :class:`fedjax_lite.FederatedAlgorithm`.

  Raises:
    TypeError, ValueError: for bad arguments.
  """
  client_update = build_mime_lite_client_update(loss_fn, beta=beta, **hyperparameters)
  if server_optimizer is None:
    server_optimizer = server_lib.fedavg()
  return build_federated_algorithm(
      client_update, mime_lite_server_update(server_optimizer, beta), aggregator=aggregator)


def _build_preset(ctx: BuildContext, mime_beta: float) -> FederatedAlgorithm:
  return mime_lite(ctx.loss_fn, client_lr=ctx.client_lr, beta=mime_beta,
                   num_epochs=ctx.num_epochs, batch_size=ctx.batch_size,
                   server_optimizer=ctx.server_optimizer, aggregator=ctx.aggregator)
