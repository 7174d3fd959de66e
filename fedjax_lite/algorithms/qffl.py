"""q-FFL trained with q-FedAvg: fairer accuracy across clients by reweighting high losses.

References:
  Li, Sanjabi, Beirami, Smith. "Fair Resource Allocation in Federated
  Learning", ICLR 2020. https://arxiv.org/abs/1905.10497

q-FFL minimizes ``sum_k p_k F_k(w)^(q+1) / (q+1)``: ``q = 0`` is the usual
federated objective, larger ``q`` weighs clients with high loss more and
makes the loss (and accuracy) distribution over clients more uniform.
q-FedAvg (the paper's Algorithm 2) solves it with local SGD and a step size
from an estimated Lipschitz constant ``L = 1 / client_lr``. A round:

* the server broadcasts ``w``;
* each sampled client ``k`` computes ``F_k = F_k(w)``, its mean loss at
  ``w`` over all its examples, runs ``num_epochs`` epochs of local SGD
  (learning rate ``client_lr``, FedAvg's client loop and keys) from ``w`` to
  ``w_k``, and sends ``{"Delta": F_k^q L (w - w_k), "h": q F_k^(q-1)
  ||L (w - w_k)||^2 + L F_k^q}``;
* the server sets ``w <- w - sum_k Delta_k / sum_k h_k`` over the
  participating clients.

The sums are taken as the ratio of the aggregator's two means (uniform
weights by default, which is the paper's ratio of sums); the step
``sum Delta / sum h`` is fed to the server optimizer as a pseudo-gradient
(:func:`fedjax_lite.server.fedavg` with learning rate 1 by default, i.e.
exactly the update above). ``F_k`` is taken as ``F_k + eps`` (``eps =
1e-10`` as in the authors' code) so that ``F_k^(q-1)`` is finite for a
client with zero loss.

With ``q = 0``: ``Delta_k = L (w - w_k)`` and ``h_k = L``, so ``w <- w -
mean_k (w - w_k)``: FedAvg with uniform client weights.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedjax_lite import server as server_lib
from fedjax_lite._types import Params
from fedjax_lite._validate import check_real
from fedjax_lite.aggregation import Aggregator, mean_aggregator
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
  check_loss_fn,
  local_train,
  per_example_losses,
)
from fedjax_lite.data import FederatedData


def mean_loss(loss_fn: LossFn, params: Params, client_data: FederatedData, *,
              batch_size: int) -> Any:
  """One client's mean loss over its real examples at ``params``; pure and jit-safe.

  Args:
    loss_fn: ``loss(params, batch) -> scalar`` (mean over its batch),
      evaluated one example at a time (:func:`fedjax_lite.client.per_example_losses`).
    params: model parameters.
    client_data: one client's slice of a :class:`FederatedData`.
    batch_size: examples evaluated together (memory bound only).

  Returns:
    float32 scalar, 0 for an empty client.
  """
  arrays = client_data.arrays
  n = client_data.num_examples
  max_n = next(iter(arrays.values())).shape[0]
  check_loss_fn(loss_fn, params, arrays)
  size = min(batch_size, max_n)
  steps = math.ceil(max_n / size)
  padded = {k: jnp.pad(x, [(0, steps * size - max_n)] + [(0, 0)] * (x.ndim - 1))
            for k, x in arrays.items()}

  def step(total, s):
    batch = {k: jax.lax.dynamic_slice_in_dim(x, s * size, size) for k, x in padded.items()}
    real = s * size + jnp.arange(size) < n
    losses = per_example_losses(loss_fn, params, batch)
    return total + jnp.sum(jnp.where(real, losses, 0.0).astype(jnp.float32)), None

  total, _ = jax.lax.scan(step, jnp.zeros((), jnp.float32), jnp.arange(steps))
  return total / jnp.maximum(n, 1).astype(jnp.float32)


def _check_args(loss_fn, q, client_lr, num_epochs, batch_size, eps, grad_mode):
  check_local_sgd(loss_fn, client_lr, num_epochs, batch_size, grad_mode)
  check_real("q", q, low=0.0, hint=" q = 0 is FedAvg; e.g. 1 or 5.")
  check_real("eps", eps, low=0.0)


def build_qffl_client_update(
    loss_fn: LossFn,
    *,
    q: float,
    client_lr: float,
    num_epochs: int,
    batch_size: int,
    eps: float = 1e-10,
    grad_mode: str = "auto",
):
  """q-FedAvg's client update (Li, Sanjabi, Beirami, Smith, ICLR 2020, Algorithm 2).

  See the module docstring.

  Args:
    loss_fn: ``loss(params, batch) -> scalar``, the mean loss of a batch.
    q: fairness parameter ``q >= 0`` (0 is FedAvg with uniform weights).
    client_lr: local SGD learning rate; ``L = 1 / client_lr``.
    num_epochs: local epochs (>= 1).
    batch_size: examples per local step and per loss-evaluation batch (>= 1).
    eps: added to ``F_k`` before taking powers.
    grad_mode: see :func:`fedjax_lite.build_client_update`.

  Returns:
    ``client_update(w, client_data, key) -> ClientOutput`` whose ``delta`` is
    the message ``{"Delta": pytree like w, "h": float32 scalar}``, weight the
    number of examples (the default aggregator makes it uniform), metrics
    ``train_loss`` (as FedAvg) and ``loss_at_server`` (``F_k(w)``), and
    counts ``num_examples``, ``num_steps``.

  Raises:
    TypeError, ValueError: for a non-callable ``loss_fn``, a negative ``q``
      or ``eps``, a non-positive ``client_lr``, bad integer arguments or an
      unknown ``grad_mode``.
  """
  _check_args(loss_fn, q, client_lr, num_epochs, batch_size, eps, grad_mode)
  sgd = optax.sgd(client_lr)
  lipschitz = 1.0 / client_lr

  def client_update(w, client_data: FederatedData, key) -> ClientOutput:
    client_key = jax.random.fold_in(key, client_data.client_ids)
    loss = mean_loss(loss_fn, w, client_data, batch_size=batch_size)
    result = local_train(loss_fn, sgd, w, client_data, client_key, num_epochs=num_epochs,
                         batch_size=batch_size, grad_mode=grad_mode)
    dw = jax.tree.map(lambda a, b: (lipschitz * (a - b)).astype(a.dtype), w, result.params)
    f = loss + eps
    f_q = f**q
    sq_norm = sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(dw))
    h = lipschitz * f_q
    if q != 0:
      h = h + q * f ** (q - 1) * sq_norm
    message = {"Delta": jax.tree.map(lambda d: (f_q * d).astype(d.dtype), dw),
               "h": h.astype(jnp.float32)}
    n_f = client_data.num_examples.astype(jnp.float32)
    metrics = {"train_loss": result.mean_loss, "loss_at_server": loss}
    counts = {"num_examples": n_f, "num_steps": result.num_steps.astype(jnp.float32)}
    return ClientOutput(message, n_f, metrics, counts=counts)

  return client_update


def qffl_server_update(server_optimizer: optax.GradientTransformation) -> ServerUpdate:
  """q-FedAvg's server step, for ``build_federated_algorithm(client_update, server_update)``.

  Args:
    server_optimizer: optax transformation fed the pseudo-gradient ``sum
      Delta / sum h`` (``fedjax_lite.server.fedavg(1.0)`` gives the paper's
      ``w <- w - sum Delta / sum h``).

  Returns:
    A :class:`fedjax_lite.ServerUpdate` whose ``update(state, aggregate,
    metrics, key)`` takes ``aggregate = {"Delta": mean Delta, "h": mean h}`` (the
    same weights in both means, so their ratio is the ratio of sums). A
    round with ``h = 0`` (no participating client) leaves the params alone.
  """

  def server_update(state: ServerState, aggregate, metrics, key):
    del metrics, key
    h = aggregate["h"]
    ok = h > 0
    safe = jnp.where(ok, h, 1.0)
    step = jax.tree.map(lambda d: jnp.where(ok, d / safe.astype(d.dtype), 0).astype(d.dtype),
                        aggregate["Delta"])
    params, opt_state = apply_server_optimizer(server_optimizer, state, step)
    return params, opt_state, state.extra

  return common_server_update(server_optimizer, server_update)


def qffl(
    loss_fn: LossFn,
    *,
    server_optimizer: optax.GradientTransformation | None = None,
    aggregator: Aggregator | None = None,
    **hyperparameters: Any,
) -> FederatedAlgorithm:
  """q-FFL via q-FedAvg as a federated algorithm.

  Li, Sanjabi, Beirami, Smith. "Fair Resource Allocation in Federated
  Learning", ICLR 2020 (Algorithm 2). See the module docstring for the round.

  Args:
    loss_fn: ``loss(params, batch) -> scalar``, the mean loss of a batch.
    server_optimizer: see :func:`qffl_server_update`; default
      :func:`fedjax_lite.server.fedavg` (learning rate 1, the paper's step).
    aggregator: default ``fedjax_lite.mean_aggregator("uniform")`` (the
      paper's plain sums). It sees the whole message ``{"Delta", "h"}``; a
      DP aggregator clips and noises it jointly. An example-weighted
      aggregator turns the step into ``sum n_k Delta_k / sum n_k h_k``.
    **hyperparameters: the client update's (q, client_lr, num_epochs, batch_size, eps,
      grad_mode), passed to :func:`build_qffl_client_update`.

  Returns:
    A :class:`fedjax_lite.FederatedAlgorithm` (stateless: ``algo.init(params)``);
    round metrics are FedAvg's plus ``loss_at_server`` (example-weighted
    mean of ``F_k(w)``).

  Raises:
    TypeError, ValueError: as :func:`build_qffl_client_update` and
      :func:`fedjax_lite.build_federated_algorithm`.
  """
  update = build_qffl_client_update(loss_fn, **hyperparameters)
  if server_optimizer is None:
    server_optimizer = server_lib.fedavg(1.0)
  if aggregator is None:
    aggregator = mean_aggregator("uniform")
  return build_federated_algorithm(
      update, qffl_server_update(server_optimizer), aggregator=aggregator)


def _build_preset(ctx: BuildContext, q: float) -> FederatedAlgorithm:
  return qffl(ctx.loss_fn, q=q, client_lr=ctx.client_lr, num_epochs=ctx.num_epochs,
              batch_size=ctx.batch_size, server_optimizer=ctx.server_optimizer,
              aggregator=ctx.aggregator)
