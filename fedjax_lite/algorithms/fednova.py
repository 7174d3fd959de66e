"""FedNova: normalized averaging for clients with heterogeneous local work.

References:
  Wang, Liu, Liang, Joshi, Poor. "Tackling the Objective Inconsistency
  Problem in Heterogeneous Federated Optimization", NeurIPS 2020.
  https://arxiv.org/abs/2007.07481

When clients take different numbers of local steps ``tau_i``, FedAvg's
average of their model changes over-weights the clients that worked more, and
it converges to a stationary point of a mismatched objective. FedNova
normalizes each client's change by its amount of work first. Client ``i`` runs
``tau_i`` steps of local SGD with learning rate ``eta`` (optionally with
momentum ``rho``: ``m = g + rho m``, ``w -= eta m``) from the server model
``x``; its cumulative change is ``delta_i = -eta G_i a_i`` with

    a_i = ||a_i||_1 = sum_{k=0}^{tau_i - 1} (1 - rho^{k+1}) / (1 - rho)

(``a_i = tau_i`` without momentum). It sends the message ``{"delta": delta_i
/ a_i, "a": a_i}`` with weight ``p_i`` (its number of examples), and the
server, with ``d = sum_i p_i delta_i / a_i`` and ``tau_eff = sum_i p_i a_i``
(``p_i`` normalized: both are the aggregator's weighted means), takes the
step

    x <- x + server_lr * tau_eff * d

(the server optimizer applied to ``-tau_eff d``; ``fedavg(server_lr)``
gives exactly this). When every client has the same ``a_i`` this is FedAvg.

The local work ``tau_i`` comes from a :class:`fedjax_lite.client.LocalWork`
(``sampled``, ``proportional``, ``stragglers``, ...) or, without one, from the
clients' data sizes (``num_epochs * ceil(n_i / batch_size)`` steps).

Differential privacy and other wrapping aggregators see the whole message
``{"delta", "a"}`` as one vector (``a`` is clipped and noised with it), so
``tau_eff`` is released privately too; with a fixed local work
(:func:`fedjax_lite.client.fixed`) every ``a_i`` is the same public number.
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
from fedjax_lite.algorithms._common import apply_server_optimizer
from fedjax_lite.algorithms._common import server_update as common_server_update
from fedjax_lite.algorithms.registry import BuildContext
from fedjax_lite.client import (
  ClientOutput,
  ClientUpdateFn,
  LocalWork,
  LossFn,
  build_client_update,
)
from fedjax_lite.data import FederatedData


def fednova_normalizer(num_steps: Any, momentum: Any = 0.0, *, max_steps: int) -> Any:
  """FedNova's ``a = sum_{k=0}^{tau-1} (1 - rho^{k+1}) / (1 - rho)``; jit-safe.

  Args:
    num_steps: int or float scalar ``tau`` (may be traced), ``0 <= tau <=
      max_steps``.
    momentum: ``rho`` in ``[0, 1)`` (may be traced); 0 gives ``a = tau``.
    max_steps: static upper bound on ``tau``.

  Returns:
    float32 scalar ``a`` (0 for ``tau = 0``).
  """
  tau = jnp.asarray(num_steps).astype(jnp.int32)
  if is_concrete(momentum) and float(momentum) == 0.0:
    return tau.astype(jnp.float32)
  rho = jnp.asarray(momentum, jnp.float32)
  k = jnp.arange(max_steps, dtype=jnp.float32)
  # (1 - rho^{k+1}) / (1 - rho) = sum_{j<=k} rho^j, summed as a cumulative sum
  # (no cancellation for rho near 1).
  coeff = jnp.cumsum(rho ** k)
  return jnp.sum(jnp.where(jnp.arange(max_steps) < tau, coeff, 0.0))


def build_fednova_client_update(
    loss_fn: LossFn,
    *,
    client_lr: float,
    num_epochs: int,
    batch_size: int,
    momentum: float = 0.0,
    local_work: LocalWork | None = None,
    grad_mode: str = "auto",
) -> ClientUpdateFn:
  """FedNova's client update: local SGD, the change normalized by its work ``a_i``.

  Wang, Liu, Liang, Joshi, Poor. "Tackling the Objective Inconsistency Problem
  in Heterogeneous Federated Optimization", NeurIPS 2020. See the module
  docstring.

  Args:
    loss_fn: ``loss(params, batch) -> scalar``, the mean loss of a batch.
    client_lr: ``eta``, the local SGD learning rate (> 0).
    num_epochs: local epochs (>= 1): the most a client can work.
    batch_size: examples per local step (>= 1).
    momentum: local momentum ``rho`` in ``[0, 1)`` (optax.sgd convention).
    local_work: optional :class:`fedjax_lite.client.LocalWork` giving each
      client's ``tau_i`` (default: all its steps).
    grad_mode: see :func:`fedjax_lite.build_client_update`.

  Returns:
    ``client_update(server_params, client_data, key) -> ClientOutput`` whose
    ``delta`` is ``{"delta": (y - x) / a_i, "a": a_i}`` (zeros for a client
    without steps), weight ``n_i`` (0 for an empty or dropped client) and
    metrics those of :func:`fedjax_lite.build_client_update` plus
    ``fednova_a`` (``a_i``; the round's example-weighted mean of it is
    ``tau_eff``).

  Raises:
    TypeError, ValueError: for a non-positive ``client_lr``, ``momentum``
      outside ``[0, 1)``, or the errors of
      :func:`fedjax_lite.build_client_update`.
  """
  check_real("client_lr", client_lr, low=0.0, low_open=True)
  check_real("momentum", momentum, low=0.0, high=1.0)
  if is_concrete(momentum) and float(momentum) >= 1.0:
    raise ValueError(f"`momentum` must be in [0.0, 1.0); got {momentum!r}.")
  no_momentum = is_concrete(momentum) and float(momentum) == 0.0
  optimizer = optax.sgd(client_lr, momentum=None if no_momentum else momentum)
  local = build_client_update(loss_fn, optimizer, num_epochs=num_epochs, batch_size=batch_size,
                              grad_mode=grad_mode, local_work=local_work)

  def client_update(server_params, client_data: FederatedData, key) -> ClientOutput:
    out = local(server_params, client_data, key)
    max_n = next(iter(client_data.arrays.values())).shape[0]
    max_steps = num_epochs * -(-max_n // batch_size)
    a = fednova_normalizer(out.counts["num_steps"], momentum, max_steps=max_steps)
    inv = jnp.where(a > 0, 1.0 / jnp.maximum(a, 1e-30), 0.0)
    message = {"delta": jax.tree.map(lambda d: (d * inv).astype(d.dtype), out.delta), "a": a}
    return ClientOutput(message, out.weight, {**out.metrics, "fednova_a": a},
                        counts=out.counts)

  return client_update


def fednova_server_update(server_optimizer: optax.GradientTransformation) -> ServerUpdate:
  """FedNova's server step, for ``build_federated_algorithm(client_update, server_update)``.

  Args:
    server_optimizer: optax transformation applied to ``-tau_eff * d``
      (``fedavg(server_lr)``: ``x + server_lr tau_eff d``).

  Returns:
    A :class:`fedjax_lite.ServerUpdate` whose ``update(state, aggregate,
    metrics, key)`` takes ``aggregate = {"delta": d, "a": tau_eff}`` (the
    weighted means of the clients' messages).
  """

  def server_update(state: ServerState, aggregate, metrics, key):
    del metrics, key
    tau_eff = aggregate["a"]
    pseudo_grad = jax.tree.map(lambda d: -(tau_eff.astype(d.dtype) * d), aggregate["delta"])
    params, opt_state = apply_server_optimizer(server_optimizer, state, pseudo_grad)
    return params, opt_state, state.extra

  return common_server_update(server_optimizer, server_update)


def fednova(
    loss_fn: LossFn,
    *,
    server_optimizer: optax.GradientTransformation | None = None,
    aggregator: Aggregator | None = None,
    **hyperparameters: Any,
) -> FederatedAlgorithm:
  """FedNova (Wang et al., NeurIPS 2020) as a federated algorithm; see the module docstring.

  Args:
    loss_fn: ``loss(params, batch) -> scalar``, the mean loss of a batch.
    server_optimizer: applied to ``-tau_eff d``; default
      :func:`fedjax_lite.server.fedavg` (``server_lr = 1``).
    aggregator: default :func:`fedjax_lite.mean_aggregator` (``p_i`` = example
      counts); ``mean_aggregator("uniform")`` for ``p_i = 1 / m``.
    **hyperparameters: the client update's (client_lr, num_epochs, batch_size, momentum,
      local_work, grad_mode), passed to :func:`build_fednova_client_update`.

  Returns:
    A :class:`fedjax_lite.FederatedAlgorithm` (stateless: ``init(params)``);
    its metrics include ``fednova_a`` (``tau_eff`` for example-count
    weights).

  Raises:
    TypeError, ValueError: for bad arguments, naming them.
  """
  client_update = build_fednova_client_update(loss_fn, **hyperparameters)
  if server_optimizer is None:
    server_optimizer = server_lib.fedavg()
  return build_federated_algorithm(
      client_update, fednova_server_update(server_optimizer), aggregator=aggregator)


def _build_preset(ctx: BuildContext) -> FederatedAlgorithm:
  return fednova(ctx.loss_fn, client_lr=ctx.client_lr, num_epochs=ctx.num_epochs,
                 batch_size=ctx.batch_size, local_work=ctx.local_work,
                 server_optimizer=ctx.server_optimizer, aggregator=ctx.aggregator)
