"""FedSGD: one full-batch gradient per client, averaged by the server.

References:
  McMahan, Moore, Ramage, Hampson, Aguera y Arcas. "Communication-Efficient
  Learning of Deep Networks from Decentralized Data", AISTATS 2017.
  https://arxiv.org/abs/1602.05629

Each client computes the gradient ``g_k`` of its mean loss over all its real
examples at the server model and sends ``delta_k = -g_k`` with weight
``n_k``. The example-weighted mean ``-sum_k n_k g_k / sum_k n_k`` is minus the
gradient of the mean loss over the union of the cohort's examples, so with
server SGD (learning rate ``eta``) a round is exactly one step of centralized
full-batch gradient descent on the cohort's data: ``x <- x - eta grad
F_S(x)``. Any server optimizer (momentum, Adam) or aggregator (DP: clipped,
noised gradients) composes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedjax_lite import server as server_lib
from fedjax_lite._validate import check_real
from fedjax_lite.aggregation import Aggregator
from fedjax_lite.algorithm import FederatedAlgorithm, build_federated_algorithm
from fedjax_lite.algorithms._common import check_loss_and_grad_mode
from fedjax_lite.algorithms.registry import BuildContext
from fedjax_lite.client import (
  ClientOutput,
  ClientUpdateFn,
  LossFn,
  check_loss_fn,
  masked_mean_grad,
  resolve_grad_mode,
)
from fedjax_lite.data import FederatedData


def build_fedsgd_client_update(loss_fn: LossFn, *, grad_mode: str = "auto") -> ClientUpdateFn:
  """FedSGD's client update: minus the full-batch gradient of the client's mean loss.

  McMahan, Moore, Ramage, Hampson, Aguera y Arcas. "Communication-Efficient
  Learning of Deep Networks from Decentralized Data", AISTATS 2017.

  Args:
    loss_fn: ``loss(params, batch) -> scalar``, the mean loss of a batch
      (evaluated one example at a time, see
      :func:`fedjax_lite.client.per_example_losses`).
    grad_mode: see :func:`fedjax_lite.client.masked_mean_grad` (``"auto"`` as in
      :func:`fedjax_lite.build_client_update`). ``"per_example"`` holds one
      gradient per padded example: for large clients and models use
      ``"batch"``.

  Returns:
    ``client_update(server_params, client_data, key) -> ClientOutput`` with
    ``delta = -grad`` (the gradient of the mean loss over the client's
    ``n`` real examples; zeros for an empty client), weight ``n`` and metrics
    ``train_loss`` (the mean loss at the server model), ``num_examples`` and
    ``num_steps`` (1, or 0 for an empty client). ``key`` is unused.

  Raises:
    TypeError, ValueError: for a non-callable ``loss_fn`` or an unknown
      ``grad_mode``.
  """
  check_loss_and_grad_mode(loss_fn, grad_mode)

  def client_update(server_params, client_data: FederatedData, key) -> ClientOutput:
    del key
    arrays = client_data.arrays
    n = client_data.num_examples
    max_n = next(iter(arrays.values())).shape[0]
    check_loss_fn(loss_fn, server_params, arrays)
    mask = jnp.arange(max_n) < n
    grads, loss_sum = masked_mean_grad(loss_fn, server_params, arrays, mask,
                                       resolve_grad_mode(grad_mode, server_params))
    delta = jax.tree.map(jnp.negative, grads)
    n_f = n.astype(jnp.float32)
    counts = {"num_examples": n_f, "num_steps": (n > 0).astype(jnp.float32)}
    return ClientOutput(delta, n_f, {"train_loss": loss_sum / jnp.maximum(n_f, 1.0)},
                        counts=counts)

  return client_update


def fedsgd(
    loss_fn: LossFn,
    *,
    learning_rate: float | None = None,
    server_optimizer: optax.GradientTransformation | None = None,
    aggregator: Aggregator | None = None,
    grad_mode: str = "auto",
) -> FederatedAlgorithm:
  """FedSGD as a federated algorithm: full-batch gradient descent on the cohort's data.

  McMahan, Moore, Ramage, Hampson, Aguera y Arcas. "Communication-Efficient
  Learning of Deep Networks from Decentralized Data", AISTATS 2017. See the
  module docstring.

  Args:
    loss_fn: ``loss(params, batch) -> scalar``, the mean loss of a batch.
    learning_rate: the server SGD learning rate ``eta`` (> 0), i.e.
      ``server_optimizer=fedjax_lite.server.fedavg(learning_rate)``; or
    server_optimizer: any optax transformation, fed the (aggregated)
      gradient as its gradient.
    aggregator: default :func:`fedjax_lite.mean_aggregator` (example counts:
      the gradient of the mean over all the cohort's examples).
    grad_mode: see :func:`build_fedsgd_client_update`.

  Returns:
    A :class:`fedjax_lite.FederatedAlgorithm` (stateless: ``init(params)``).

  Raises:
    TypeError, ValueError: unless exactly one of ``learning_rate`` and
      ``server_optimizer`` is given, for a non-positive ``learning_rate``, or
      for the errors of :func:`build_fedsgd_client_update`.
  """
  if (learning_rate is None) == (server_optimizer is None):
    raise ValueError("give exactly one of `learning_rate` (server SGD) and `server_optimizer`; "
                     f"got learning_rate={learning_rate!r}, "
                     f"server_optimizer={server_optimizer!r}.")
  if server_optimizer is None:
    check_real("learning_rate", learning_rate, low=0.0, low_open=True)
    server_optimizer = server_lib.fedavg(learning_rate)
  client_update = build_fedsgd_client_update(loss_fn, grad_mode=grad_mode)
  return build_federated_algorithm(client_update, server_optimizer, aggregator=aggregator)


def _build_preset(ctx: BuildContext) -> FederatedAlgorithm:
  return fedsgd(ctx.loss_fn, server_optimizer=ctx.server_optimizer, aggregator=ctx.aggregator)
