"""Ditto: a global model trained by FedAvg plus a regularized personal model per client.

References:
  Li, Hu, Beirami, Smith. "Ditto: Fair and Robust Federated Learning Through
  Personalization", ICML 2021. https://arxiv.org/abs/2012.04221

Every client ``k`` of the population keeps a personal model ``v_k`` (a pytree
like the params, initially the initial global model) in
``ServerState.client_states``. A round (the paper's Algorithm 1):

* the server broadcasts the global model ``w``;
* each sampled client ``k`` runs plain local SGD from ``w`` (learning rate
  ``client_lr``, ``num_epochs`` epochs, exactly FedAvg's client update with
  the same keys) to ``w_k`` and sends ``w_k - w``;
* it also updates its personal model with SGD (learning rate
  ``personal_lr``) on ``h_k(v; w) = F_k(v) + lam / 2 ||v - w||^2``, i.e.
  steps ``v <- v - personal_lr (grad F_k(v) + lam (v - w))`` with ``w`` the
  global model received this round, for ``personal_epochs`` epochs or
  ``personal_steps`` steps, and keeps the result as its new state;
* the server averages the deltas with the aggregator and applies the server
  optimizer (``w <- w + mean delta`` with :func:`fedjax_lite.server.fedavg`).

``lam = 0`` gives purely local models; large ``lam`` pulls the personal models
to the global one. Clients not sampled in a round keep their personal model.

The personal steps use their own randomness stream: key
``fold_in(client_key, PERSONAL_STREAM)`` with ``client_key = fold_in(key,
client_id)``, then ``fold_in(., epoch)`` per epoch as in
:func:`fedjax_lite.local_train`; the global part uses ``client_key`` itself,
so the global model equals FedAvg's run with the same keys.

Only the global delta is aggregated, so DP, robust and compressing
aggregators apply to it unchanged; the personal models never leave the
clients (in a real deployment they live on the devices; here they are stored
in the server state for simulation).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedjax_lite import server as server_lib
from fedjax_lite._types import Params
from fedjax_lite._validate import check_int, check_real
from fedjax_lite.aggregation import Aggregator
from fedjax_lite.algorithm import FederatedAlgorithm, ServerState, build_federated_algorithm
from fedjax_lite.algorithms._common import check_local_sgd
from fedjax_lite.algorithms.registry import BuildContext
from fedjax_lite.client import ClientOutput, ClientUpdate, LossFn, local_train
from fedjax_lite.data import FederatedData

# fold_in(client_key, PERSONAL_STREAM) seeds the personal steps; epochs of the
# global part use fold_in(client_key, e) for e < num_epochs, far below this.
PERSONAL_STREAM = 2**31 - 1


def build_ditto_client_update(
    loss_fn: LossFn,
    *,
    client_lr: float,
    personal_lr: float,
    lam: float,
    num_epochs: int,
    batch_size: int,
    personal_epochs: int | None = None,
    personal_steps: int | None = None,
    grad_mode: str = "auto",
):
  """Ditto's stateful client update: a FedAvg delta plus a personal-model step.

  See the module docstring (Li, Hu, Beirami, Smith, "Ditto: Fair and Robust
  Federated Learning Through Personalization", ICML 2021, Algorithm 1).

  Args:
    loss_fn: ``loss(params, batch) -> scalar``, the mean loss of a batch.
    client_lr: learning rate of the global model's local SGD (> 0).
    personal_lr: learning rate of the personal model's SGD (> 0).
    lam: ``lambda >= 0``, the strength of the pull ``lam / 2 ||v - w||^2``
      of the personal model towards the global one.
    num_epochs: local epochs for the global model (>= 1).
    batch_size: examples per step, for both models (>= 1).
    personal_epochs: epochs of personal training. Defaults to
      ``num_epochs`` when ``personal_steps`` is not given either.
    personal_steps: if given, the personal model takes exactly this many
      steps (fewer only if ``personal_epochs`` runs out first), cycling
      through shuffled epochs. Without ``personal_epochs`` the static loop
      then spans ``personal_steps`` epochs (enough for a client whose data
      fits one batch), i.e. ``personal_steps * ceil(max_examples /
      batch_size)`` masked iterations; give ``personal_epochs`` too to bound
      that for large clients.
    grad_mode: see :func:`fedjax_lite.build_client_update`.

  Returns:
    A :class:`fedjax_lite.ClientUpdate` whose ``init(w)`` starts the personal
    model at ``w`` and whose ``update(w, client_data, key, v) ->
    ClientOutput`` takes ``w`` the global params, ``v`` the client's personal
    model, ``key`` the round's client key. ``delta`` is ``w_k - w``,
    ``weight`` the number of examples, ``state`` the new personal model,
    ``metrics`` ``train_loss`` (of the global part, as FedAvg) and
    ``personal_train_loss`` (mean loss ``F_k`` over the examples of the
    personal steps, without the proximal term), and ``counts``
    ``num_examples``, ``num_steps`` and ``num_personal_steps``.

  Raises:
    TypeError, ValueError: for a non-callable ``loss_fn``, non-positive
      learning rates, a negative ``lam``, bad integer arguments, or an
      unknown ``grad_mode``.
  """
  check_local_sgd(loss_fn, client_lr, num_epochs, batch_size, grad_mode)
  check_real("personal_lr", personal_lr, low=0.0, low_open=True)
  check_real("lam", lam, low=0.0, hint=" e.g. 0.1.")
  if personal_epochs is not None:
    check_int("personal_epochs", personal_epochs, minimum=1)
  if personal_steps is not None:
    check_int("personal_steps", personal_steps, minimum=1)
  if personal_epochs is None:
    personal_epochs = num_epochs if personal_steps is None else personal_steps
  global_sgd, personal_sgd = optax.sgd(client_lr), optax.sgd(personal_lr)

  def client_update(w, client_data: FederatedData, key, v) -> ClientOutput:
    client_key = jax.random.fold_in(key, client_data.client_ids)
    glob = local_train(loss_fn, global_sgd, w, client_data, client_key, num_epochs=num_epochs,
                       batch_size=batch_size, grad_mode=grad_mode)
    delta = jax.tree.map(jnp.subtract, glob.params, w)

    def proximal(grads, params):
      return jax.tree.map(lambda g, p, w0: g + jnp.asarray(lam, g.dtype) * (p - w0), grads,
                          params, w)

    personal = local_train(loss_fn, personal_sgd, v, client_data,
                           jax.random.fold_in(client_key, PERSONAL_STREAM),
                           num_epochs=personal_epochs, batch_size=batch_size,
                           grad_mode=grad_mode, grad_correction=proximal,
                           max_steps=personal_steps)
    n_f = client_data.num_examples.astype(jnp.float32)
    metrics = {"train_loss": glob.mean_loss, "personal_train_loss": personal.mean_loss}
    counts = {"num_examples": n_f, "num_steps": glob.num_steps.astype(jnp.float32),
              "num_personal_steps": personal.num_steps.astype(jnp.float32)}
    return ClientOutput(delta, n_f, metrics, state=personal.params, counts=counts)

  return ClientUpdate(lambda params: params, client_update)


def ditto(
    loss_fn: LossFn,
    *,
    server_optimizer: optax.GradientTransformation | None = None,
    aggregator: Aggregator | None = None,
    **hyperparameters: Any,
) -> FederatedAlgorithm:
  """Ditto as a federated algorithm (global FedAvg model + per-client personal models).

  Li, Hu, Beirami, Smith. "Ditto: Fair and Robust Federated Learning Through
  Personalization", ICML 2021. See the module docstring for the round.

  The algorithm is stateful: call ``algo.init(params, num_clients=N)`` with
  the population size ``N`` (client ids ``0..N-1``); ``state.client_states``
  then holds every client's personal model stacked ``[N, ...]``, initialized
  to ``params``. Evaluate them with :func:`evaluate_personal`.

  Args:
    loss_fn: ``loss(params, batch) -> scalar``, the mean loss of a batch.
    server_optimizer: optax transformation applied to ``-mean delta``;
      default :func:`fedjax_lite.server.fedavg` (learning rate 1).
    aggregator: default :func:`fedjax_lite.mean_aggregator` (weighted by
      examples); ``fl.mean_aggregator("uniform")`` for the paper's plain mean.
    **hyperparameters: the client update's (client_lr, personal_lr, lam, num_epochs, batch_size,
      personal_epochs, personal_steps, grad_mode), passed to :func:`build_ditto_client_update`.

  Returns:
    A stateful :class:`fedjax_lite.FederatedAlgorithm`; round metrics are
    FedAvg's plus ``personal_train_loss`` and ``num_personal_steps``.

  Raises:
    TypeError, ValueError: as :func:`build_ditto_client_update` and
      :func:`fedjax_lite.build_federated_algorithm`.
  """
  update = build_ditto_client_update(loss_fn, **hyperparameters)
  if server_optimizer is None:
    server_optimizer = server_lib.fedavg(1.0)
  return build_federated_algorithm(
      update, server_optimizer, aggregator=aggregator)


def personal_models(state: ServerState, client_ids: Any) -> Params:
  """The personal models of ``client_ids`` (``int[K]``), stacked ``[K, ...]``; jit-safe.

  Ids outside ``0..N-1`` (e.g. the ``-1`` of padding clients) are clipped;
  callers drop those clients.

  Args:
    state: a Ditto run's :class:`~fedjax_lite.ServerState` (personal models in
      ``client_states``, leading axis ``N``).
    client_ids: ``int[K]`` population indices.

  Returns:
    The ``K`` personal models, each leaf ``[K, ...]``.
  """
  population = jax.tree.leaves(state.client_states)[0].shape[0]
  ids = jnp.clip(jnp.asarray(client_ids), 0, population - 1)
  return jax.tree.map(lambda x: jnp.take(x, ids, axis=0), state.client_states)


def evaluate_personal(evaluator, state: ServerState, test: FederatedData) -> dict[str, Any]:
  """Evaluates each client's personal model on its own test split.

  Args:
    evaluator: from :func:`fedjax_lite.personalization.build_per_client_evaluator`.
    state: a Ditto :class:`fedjax_lite.ServerState` (personal models in
      ``state.client_states``, ``[N, ...]``).
    test: the clients to evaluate (any subset of the population, any order);
      client ``test.client_ids[j]`` is evaluated with its personal model.
      Padding clients (id ``-1``) of sharded data are left out.

  Returns:
    The evaluator's summary (pooled ``loss``/``accuracy``, the per-client
    accuracy distribution over clients with test data, per-client lists under
    ``clients``, in ``test``'s order).

  Raises:
    ValueError: if ``state`` has no client states or a test client id is not
      a client of the population (``0..N-1``).
  """
  leaves = jax.tree.leaves(state.client_states)
  if not leaves:
    raise ValueError("`state` has no client states; pass the state of a Ditto algorithm "
                     "(fedjax_lite.algorithms.ditto.ditto), initialized with num_clients=N.")
  population = leaves[0].shape[0]
  ids = jnp.asarray(test.client_ids)
  bad = jax.jit(lambda i: jnp.sum((i < -1) | (i >= population)))(ids)
  if int(bad):
    raise ValueError(
        f"`test.client_ids` must be ids of the population's {population} clients "
        f"(0..{population - 1}); {int(bad)} are not.")
  return evaluator(personal_models(state, ids), test)


def _build_preset(ctx: BuildContext, ditto_lambda: float, personal_lr: float | None,
                  personal_epochs: int) -> FederatedAlgorithm:
  return ditto(ctx.loss_fn, client_lr=ctx.client_lr,
               personal_lr=ctx.client_lr if personal_lr is None else personal_lr,
               lam=ditto_lambda, personal_epochs=personal_epochs, num_epochs=ctx.num_epochs,
               batch_size=ctx.batch_size, server_optimizer=ctx.server_optimizer,
               aggregator=ctx.aggregator)
