"""FedProx: local training with a proximal term, tolerant of partial local work.

References:
  Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in
  Heterogeneous Networks", MLSys 2020. https://arxiv.org/abs/1812.06127

Each selected client ``k`` approximately minimizes ``h_k(w) = F_k(w) + mu/2
||w - w_t||^2`` from the server model ``w_t`` with local (minibatch) SGD --
every step's gradient gets ``+ mu (w - w_t)`` -- for as many steps as its
local work allows, and the server averages the clients' models (weighted by
their numbers of examples, the paper's ``p_k``). ``mu = 0`` is FedAvg.

Systems heterogeneity (the paper's stragglers) is a :class:`LocalWork`
(:func:`fedjax_lite.client.stragglers`, ``fixed``, ``sampled``,
``proportional``): FedProx aggregates the stragglers' partial work
(``stragglers(f, mode="partial")``), where the paper's FedAvg baseline drops
them (``mode="drop"``).
"""

from __future__ import annotations

from typing import Any

import optax

from fedjax_lite import server as server_lib
from fedjax_lite._validate import check_real
from fedjax_lite.aggregation import Aggregator
from fedjax_lite.algorithm import FederatedAlgorithm, build_federated_algorithm
from fedjax_lite.algorithms.registry import BuildContext
from fedjax_lite.client import ClientUpdateFn, LocalWork, LossFn, build_client_update


def client_optimizer_from(client_lr: float | None,
                          client_optimizer: optax.GradientTransformation | None
                          ) -> optax.GradientTransformation:
  """The local optimizer from exactly one of ``client_lr`` (plain SGD) or ``client_optimizer``.

  Raises:
    ValueError: unless exactly one is given, or for a non-positive ``client_lr``.
  """
  if (client_lr is None) == (client_optimizer is None):
    raise ValueError("give exactly one of `client_lr` (local SGD) and `client_optimizer` (an "
                     f"optax transformation); got client_lr={client_lr!r}, "
                     f"client_optimizer={client_optimizer!r}.")
  if client_optimizer is not None:
    return client_optimizer
  check_real("client_lr", client_lr, low=0.0, low_open=True)
  return optax.sgd(client_lr)


def build_fedprox_client_update(
    loss_fn: LossFn,
    *,
    mu: float,
    num_epochs: int,
    batch_size: int,
    client_lr: float | None = None,
    client_optimizer: optax.GradientTransformation | None = None,
    local_work: LocalWork | None = None,
    grad_mode: str = "auto",
) -> ClientUpdateFn:
  """FedProx's client update: local training on ``F_k(w) + mu/2 ||w - w_t||^2``.

  Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in
  Heterogeneous Networks", MLSys 2020. It is
  :func:`fedjax_lite.build_client_update` with ``proximal_mu=mu``.

  Args:
    loss_fn: ``loss(params, batch) -> scalar``, the mean loss of a batch.
    mu: the proximal coefficient (>= 0; may be traced, e.g. swept).
    num_epochs: local epochs (>= 1).
    batch_size: examples per local step (>= 1).
    client_lr: local SGD learning rate (> 0); or
    client_optimizer: any optax local optimizer instead.
    local_work: optional per-client step budget (stragglers, ...).
    grad_mode: see :func:`fedjax_lite.build_client_update`.

  Returns:
    ``client_update(server_params, client_data, key) -> ClientOutput``.

  Raises:
    TypeError, ValueError: for a negative ``mu``, not exactly one of
      ``client_lr`` and ``client_optimizer``, or the errors of
      :func:`fedjax_lite.build_client_update`.
  """
  check_real("mu", mu, low=0.0, hint=" mu = 0 is FedAvg.")
  optimizer = client_optimizer_from(client_lr, client_optimizer)
  return build_client_update(loss_fn, optimizer, num_epochs=num_epochs, batch_size=batch_size,
                             grad_mode=grad_mode, proximal_mu=mu, local_work=local_work)


def fedprox(
    loss_fn: LossFn,
    *,
    server_optimizer: optax.GradientTransformation | None = None,
    aggregator: Aggregator | None = None,
    **hyperparameters: Any,
) -> FederatedAlgorithm:
  """FedProx as a federated algorithm.

  Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in
  Heterogeneous Networks", MLSys 2020. See the module docstring.

  Args:
    loss_fn: ``loss(params, batch) -> scalar``, the mean loss of a batch.
    server_optimizer: applied to ``-mean delta``; default
      :func:`fedjax_lite.server.fedavg` (learning rate 1: the new model is the
      weighted mean of the client models, as in the paper).
    aggregator: default :func:`fedjax_lite.mean_aggregator` (example counts,
      the paper's ``p_k``); DP, robust and compressing aggregators compose.
    **hyperparameters: the client update's (mu, num_epochs, batch_size, client_lr,
      client_optimizer, local_work, grad_mode), passed to :func:`build_fedprox_client_update`.

  Returns:
    A :class:`fedjax_lite.FederatedAlgorithm` (stateless: ``init(params)``).

  Raises:
    TypeError, ValueError: for bad arguments, naming them.
  """
  client_update = build_fedprox_client_update(loss_fn, **hyperparameters)
  if server_optimizer is None:
    server_optimizer = server_lib.fedavg()
  return build_federated_algorithm(client_update, server_optimizer, aggregator=aggregator)


def _build_preset(ctx: BuildContext, mu: float) -> FederatedAlgorithm:
  return fedprox(ctx.loss_fn, mu=mu, num_epochs=ctx.num_epochs, batch_size=ctx.batch_size,
                 client_optimizer=ctx.client_optimizer, server_optimizer=ctx.server_optimizer,
                 aggregator=ctx.aggregator, local_work=ctx.local_work)
