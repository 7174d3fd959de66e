"""SCAFFOLD: local SGD corrected by control variates (option II).

References:
  Karimireddy, Kale, Mohri, Reddi, Stich, Suresh. "SCAFFOLD: Stochastic
  Controlled Averaging for Federated Learning", ICML 2020.
  https://arxiv.org/abs/1910.06378

Every client ``i`` of the population keeps a control variate ``c_i`` (a
pytree like the params, zeros initially) in ``ServerState.client_states``;
the server keeps ``c`` (zeros initially) in ``ServerState.extra``. A round
(the paper's Algorithm 1 with option II):

* the server broadcasts ``{"params": x, "control": c}``;
* client ``i`` runs ``K_i`` steps of SGD with learning rate ``eta_l`` from
  ``y = x`` on the corrected gradient ``g(y) - c_i + c``
  (``K_i = num_epochs * ceil(n_i / batch_size)``, its actual step count),
  then sets ``c_i+ = c_i - c + (x - y) / (K_i eta_l)`` and sends the message
  ``{"params": y - x, "control": c_i+ - c_i}``; a client without steps keeps
  ``c_i`` and sends zeros (with weight 0);
* the server averages the messages with the aggregator and updates
  ``x <- x + eta_g mean(dy)`` (the server optimizer applied to
  ``-mean(dy)``; :func:`fedjax_lite.server.fedavg` with ``eta_g = 1`` by
  default) and ``c <- c + (|S| / N) mean(dc)``, ``|S|`` the round's number of
  participating clients and ``N`` the population size.

Both means use the aggregator's weighting, by default the number of examples
(:func:`fedjax_lite.mean_aggregator`). The paper averages uniformly; pass
``aggregator=fl.mean_aggregator("uniform")`` for that, which also keeps
``c`` exactly equal to the mean of all ``N`` client control variates.

Differential privacy: with a DP aggregator (:mod:`fedjax_lite.privacy`) the
*whole message* ``{"params": dy, "control": dc}`` is one vector that is
clipped jointly to the clip norm and noised, so the clip bounds the joint
message norm -- each client's influence on everything the server receives --
and the accounting of :mod:`fedjax_lite.privacy` stays valid. Note that
``dc`` has the scale of a gradient while ``dy`` has that of ``K eta_l``
gradients, so the control part usually dominates the norm. The server's
``|S|`` is the true count of participants, which DP does not protect under
Poisson sampling; pass ``cohort_size=expected_cohort_size`` to use the fixed
denominator instead, so that the server update is post-processing of the
noised release alone.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedjax_lite import server as server_lib
from fedjax_lite._types import Params
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
from fedjax_lite.client import ClientOutput, ClientUpdate, LossFn, local_train
from fedjax_lite.data import FederatedData


def build_scaffold_client_update(
    loss_fn: LossFn,
    *,
    client_lr: float,
    num_epochs: int,
    batch_size: int,
    grad_mode: str = "auto",
):
  """SCAFFOLD's stateful client update (option II control variates).

  See the module docstring for the algorithm (Karimireddy, Kale, Mohri, Reddi,
  Stich, Suresh, "SCAFFOLD: Stochastic Controlled Averaging for Federated
  Learning", ICML 2020).

  Args:
    loss_fn: ``loss(params, batch) -> scalar``, the mean loss of a batch.
    client_lr: ``eta_l``, the local SGD learning rate (> 0).
    num_epochs: local epochs (>= 1).
    batch_size: examples per local step (>= 1).
    grad_mode: see :func:`fedjax_lite.build_client_update`.

  Returns:
    A :class:`fedjax_lite.ClientUpdate` whose ``init(params)`` is ``c_i = 0``
    and whose ``update(broadcast, client_data, key, client_state) ->
    ClientOutput`` takes ``broadcast = {"params": x, "control": c}``,
    ``client_state`` the client's ``c_i`` (a pytree like the params), ``key``
    the round's client key (the client folds in its id). The output's
    ``delta`` is ``{"params": y - x, "control": c_i+ - c_i}``, its ``state``
    ``c_i+``, its weight the client's number of examples, its metrics
    ``train_loss`` and its counts ``num_examples``, ``num_steps``.

  Raises:
    TypeError, ValueError: for a non-callable ``loss_fn``, a non-positive
      ``client_lr``, ``num_epochs`` or ``batch_size``, or an unknown
      ``grad_mode``.
  """
  check_local_sgd(loss_fn, client_lr, num_epochs, batch_size, grad_mode)
  sgd = optax.sgd(client_lr)

  def client_update(broadcast, client_data: FederatedData, key, client_state) -> ClientOutput:
    x, c, c_i = broadcast["params"], broadcast["control"], client_state
    client_key = jax.random.fold_in(key, client_data.client_ids)
    correction = lambda g, y: jax.tree.map(lambda g, ci, c: g - ci + c, g, c_i, c)
    result = local_train(loss_fn, sgd, x, client_data, client_key, num_epochs=num_epochs,
                         batch_size=batch_size, grad_mode=grad_mode, grad_correction=correction)
    steps = result.num_steps
    trained = steps > 0
    denom = jnp.maximum(steps, 1).astype(jnp.float32) * client_lr

    def new_control(ci, c, x, y):
      fresh = ci - c + (x - y) / denom.astype(x.dtype)
      return jnp.where(trained, fresh, ci).astype(ci.dtype)

    c_new = jax.tree.map(new_control, c_i, c, x, result.params)
    delta = {
        "params": jax.tree.map(lambda y, x: jnp.where(trained, y - x, 0).astype(x.dtype),
                               result.params, x),
        "control": jax.tree.map(lambda new, old: new - old, c_new, c_i),
    }
    n_f = client_data.num_examples.astype(jnp.float32)
    return ClientOutput(delta, jnp.where(trained, n_f, 0.0), {"train_loss": result.mean_loss},
                        state=c_new,
                        counts={"num_examples": n_f, "num_steps": steps.astype(jnp.float32)})

  return ClientUpdate(_zeros, client_update)


def _zeros(params: Params) -> Params:
  return jax.tree.map(jnp.zeros_like, params)


def scaffold_server_update(server_optimizer: optax.GradientTransformation,
                           cohort_size: float | None = None) -> ServerUpdate:
  """SCAFFOLD's server step: the model step and the server control variate ``c``.

  Args:
    server_optimizer: optax transformation applied to ``-mean(dy)`` (``eta_g``).
    cohort_size: ``|S|`` in ``c <- c + (|S| / N) mean(dc)``; ``None`` (the
      default) uses the round's number of participating clients
      (``metrics["num_clients"]``), a number uses that fixed value (e.g. the
      DP aggregator's ``expected_cohort_size``).

  Returns:
    A :class:`fedjax_lite.ServerUpdate`: ``init`` starts ``c = 0`` in
    ``state.extra``, ``broadcast`` sends ``{"params": x, "control": c}``, and
    ``update(state, aggregate, metrics, key) -> (params, opt_state, c)``
    takes ``aggregate = {"params": mean dy, "control": mean dc}``; ``N`` is
    the leading dimension of ``state.client_states``.
  """

  def server_update(state: ServerState, aggregate, metrics, key):
    del key
    pseudo_grad = jax.tree.map(jnp.negative, aggregate["params"])
    params, opt_state = apply_server_optimizer(server_optimizer, state, pseudo_grad)
    population = jax.tree.leaves(state.client_states)[0].shape[0]
    size = metrics["num_clients"] if cohort_size is None else cohort_size
    scale = jnp.asarray(size, jnp.float32) / population
    control = jax.tree.map(lambda c, d: (c + scale.astype(c.dtype) * d).astype(c.dtype),
                           state.extra, aggregate["control"])
    return params, opt_state, control

  return common_server_update(
      server_optimizer, server_update, extra_init=_zeros,
      broadcast=lambda state: {"params": state.params, "control": state.extra})


def scaffold(
    loss_fn: LossFn,
    *,
    server_optimizer: optax.GradientTransformation | None = None,
    aggregator: Aggregator | None = None,
    cohort_size: float | None = None,
    **hyperparameters: Any,
) -> FederatedAlgorithm:
  """SCAFFOLD with option II control variates, as a federated algorithm.

  Karimireddy, Kale, Mohri, Reddi, Stich, Suresh. "SCAFFOLD: Stochastic
  Controlled Averaging for Federated Learning", ICML 2020. See the module
  docstring for the round, the weighting and differential privacy.

  The algorithm is stateful: call ``algo.init(params, num_clients=N)`` with
  the population size ``N`` (client ids ``0..N-1``); ``state.client_states``
  then holds every client's ``c_i`` stacked ``[N, ...]`` and ``state.extra``
  the server's ``c``. Clients not in a round's cohort keep their ``c_i``.

  Args:
    loss_fn: ``loss(params, batch) -> scalar``, the mean loss of a batch.
    server_optimizer: applied to ``-mean(dy)``; default
      :func:`fedjax_lite.server.fedavg` (``eta_g = 1``).
    aggregator: how messages are averaged (both parts with the same
      weights); default :func:`fedjax_lite.mean_aggregator` (example counts).
    cohort_size: ``None`` (``|S|`` = the round's participating clients) or a
      fixed ``|S|``; see :func:`scaffold_server_update`.
    **hyperparameters: the client update's (client_lr, num_epochs, batch_size, grad_mode),
      passed to :func:`build_scaffold_client_update`.

  Returns:
    A :class:`fedjax_lite.FederatedAlgorithm`; ``round`` returns the usual
    metrics.

  Raises:
    TypeError, ValueError: for bad arguments (see
      :func:`build_scaffold_client_update` and
      :func:`fedjax_lite.build_federated_algorithm`), or a non-positive
      ``cohort_size``.
  """
  if cohort_size is not None and not (
      isinstance(cohort_size, (int, float)) and not isinstance(cohort_size, bool)
      and cohort_size > 0):
    raise ValueError(f"`cohort_size` must be None or a positive number; got {cohort_size!r}.")
  client_update = build_scaffold_client_update(loss_fn, **hyperparameters)
  if server_optimizer is None:
    server_optimizer = server_lib.fedavg()
  return build_federated_algorithm(
      client_update, scaffold_server_update(server_optimizer, cohort_size),
      aggregator=aggregator)


def _build_preset(ctx: BuildContext) -> FederatedAlgorithm:
  return scaffold(ctx.loss_fn, client_lr=ctx.client_lr, num_epochs=ctx.num_epochs,
                  batch_size=ctx.batch_size, server_optimizer=ctx.server_optimizer,
                  aggregator=ctx.aggregator, cohort_size=ctx.cohort_size if ctx.private else None)
