"""Client updates as pure functions over one (padded) client's data.

:func:`build_client_update` turns a per-batch loss and an optax optimizer into
``client_update(server_params, client_data, key) -> (delta, weight, metrics)``,
a pure function of one client that ``jax.vmap`` maps over a stacked cohort.

Randomness is defined per client and per example so that it never depends on
padding, chunking or cohort order:

* client key: ``fold_in(key, client_id)``
* epoch key: ``fold_in(client_key, epoch)``
* the epoch's order of the client's ``n`` real examples: ascending by the
  32-bit word ``random.bits(epoch_key, (n,))[j]`` of each example ``j`` (ties
  keep index order), see :func:`shuffle_order`.

Each epoch then walks that order in batches of ``batch_size`` (the last batch
of an epoch may be partial), taking one optimizer step per batch: exactly
``ceil(n / batch_size)`` steps per epoch. Padded batch rows and padded steps
change nothing.

The per-step building blocks (the shuffle, per-example or batch masked
gradients) live in :mod:`fedjax_lite.steps` and are re-exported here.

Heterogeneous local work (:mod:`fedjax_lite.local_work`: :class:`LocalWork`
from ``fixed``, ``sampled``, ``proportional``, ``stragglers``, also reachable
as ``fedjax_lite.client.stragglers`` etc.) caps a client's steps per round.
Its randomness comes from the work key ``fold_in(client_key,
LOCAL_WORK_FOLD)`` (a constant no epoch index reaches), so it too depends
only on the round key and the client id.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_lite._types import LossFn, Params, PRNGKey
from fedjax_lite._validate import check_int, check_real, is_concrete
from fedjax_lite.data import FederatedData
from fedjax_lite.local_work import (  # noqa: F401  (re-exported: fl.client.stragglers, ...)
  LOCAL_WORK_FOLD,
  STRAGGLER_MODES,
  STRAGGLER_UNITS,
  LocalWork,
  WorkBudget,
  check_local_work,
  fixed,
  local_work_budget,
  proportional,
  sampled,
  stragglers,
)
from fedjax_lite.steps import (  # noqa: F401  (re-exported: fl.client.shuffle_order, ...)
  GRAD_MODES,
  SHUFFLE_METHODS,
  check_loss_fn,
  masked_mean_grad,
  per_example_losses,
  resolve_grad_mode,
  shuffle_order,
)


class ClientOutput(NamedTuple):
  """What one client sends back.

  Attributes:
    delta: pytree like the params: ``local_params - server_params`` (or the
      algorithm's message).
    weight: float32 scalar: the client's weight in the aggregate, normally
      its number of examples (0 for an empty client). Aggregators may
      replace it (uniform, capped, ...).
    metrics: dict of float32 scalars that are *means* over the client's
      examples, e.g. ``train_loss`` (see :attr:`LocalResult.mean_loss`). The
      round averages each over the cohort weighted by the client's
      ``counts["num_examples"]``.
    state: the client's new persistent state (SCAFFOLD's control variate,
      Ditto's personal model, an error-feedback residual); ``()`` for a
      stateless client update. The round scatters it back into the
      population's store (see :class:`ClientUpdate`).
    counts: dict of float32 scalars that are *counts*, summed over the
      cohort: ``num_examples`` (the examples that took part; the weight of
      ``metrics``), ``num_steps``, ... ``None`` is ``{"num_examples": n}``
      with ``n`` the client's data count.

  A client whose delta, weight, state, metrics or counts hold NaN/Inf is
  non-finite and handled by the round's ``nonfinite`` policy.
  """

  delta: Params
  weight: Any
  metrics: dict[str, Any]
  state: Any = ()
  counts: dict[str, Any] | None = None


class ClientUpdate(NamedTuple):
  """A client update paired with its state's initializer, in the optax style.

  Attributes:
    init: ``init(params) -> one client's initial state`` (a pytree; ``()``
      for a stateless update). A non-empty state makes the algorithm keep one
      per client: ``algo.init(params, num_clients=N)`` stores ``N`` copies
      stacked ``[N, ...]`` in ``ServerState.client_states``, indexed by
      client id; each round gathers the cohort's, and writes back
      ``ClientOutput.state`` for the clients that had data and finite
      outputs.
    update: ``update(broadcast, client_data, key, client_state) ->
      ClientOutput``: ``broadcast`` is what the server sends (its params, or
      the :class:`fedjax_lite.ServerUpdate`'s ``broadcast``), ``client_data``
      one client's slice of a :class:`FederatedData`, ``key`` the round's
      client key (fold in ``client_data.client_ids`` for per-client
      randomness).

  A plain function ``client_update(params, client_data, key) ->
  ClientOutput`` (what :func:`build_client_update` returns) is accepted
  wherever a ``ClientUpdate`` is, as a stateless update
  (:func:`as_client_update`).
  """

  init: Callable[[Params], Any]
  update: Callable[[Any, FederatedData, PRNGKey, Any], ClientOutput]


ClientUpdateFn = Callable[[Params, FederatedData, PRNGKey], ClientOutput]
"""A stateless client update as a plain function (e.g. from :func:`build_client_update`)."""


def output_counts(out: ClientOutput, num_examples: Any) -> dict[str, Any]:
  """``out.counts`` with its default filled in: ``num_examples`` is the client's data count.

  Args:
    out: a :class:`ClientOutput` (one client's, or a chunk's under ``vmap``).
    num_examples: the client's (or chunk's) ``FederatedData.num_examples``.

  Returns:
    A new dict: ``{"num_examples": float32 num_examples, **(out.counts or {})}``.
  """
  return {"num_examples": jnp.asarray(num_examples).astype(jnp.float32), **(out.counts or {})}


def _no_state(params: Params) -> tuple:
  del params
  return ()


def as_client_update(client_update: Any) -> ClientUpdate:
  """A :class:`ClientUpdate` as is; a plain ``f(params, data, key)`` as a stateless one.

  Args:
    client_update: a :class:`ClientUpdate`, or a callable
      ``client_update(broadcast, client_data, key) -> ClientOutput``.

  Returns:
    A :class:`ClientUpdate` (for a plain function: ``init`` returns ``()``
    and ``update`` ignores the state).

  Raises:
    TypeError: for anything else.
  """
  if isinstance(client_update, ClientUpdate):
    return client_update
  if not callable(client_update):
    raise TypeError(
        "`client_update` must be a fedjax_lite.ClientUpdate(init, update) or a function "
        f"client_update(params, client_data, key) -> ClientOutput; got {client_update!r}.")
  return ClientUpdate(_no_state, lambda broadcast, data, key, state: client_update(
      broadcast, data, key))


class LocalResult(NamedTuple):
  """The outcome of :func:`local_train` on one client.

  Attributes:
    params: the parameters after local training.
    loss_sum: float32 scalar, the sum of the losses of every real example
      visited (over all steps taken).
    num_steps: int32 scalar, optimizer steps taken.
    num_examples_visited: int32 scalar, real examples in those steps.
  """

  params: Params
  loss_sum: Any
  num_steps: Any
  num_examples_visited: Any

  @property
  def mean_loss(self) -> Any:
    """float32 scalar: the mean loss over every real example visited (0 if none).

    The one definition of a client's ``train_loss``.
    """
    visited = self.num_examples_visited.astype(jnp.float32)
    return self.loss_sum / jnp.maximum(visited, 1.0)


def local_train(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    params: Params,
    client_data: FederatedData,
    key: PRNGKey,
    *,
    num_epochs: int,
    batch_size: int,
    grad_mode: str = "auto",
    grad_correction: Callable[[Params, Params], Params] | None = None,
    max_steps: Any = None,
) -> LocalResult:
  """Minibatch training of one (padded) client from ``params``; pure.

  The shared local loop of every client-side algorithm: ``num_epochs``
  epochs over the client's real examples in a per-epoch shuffled order (keys
  as in the module docstring, from ``key`` which must already be the
  *client's* key), one optimizer step per batch, padded batches and steps
  changing nothing.

  Args:
    loss_fn: ``loss(params, batch) -> scalar`` (mean over its batch).
    optimizer: optax optimizer; its state starts fresh.
    params: the starting parameters.
    client_data: one client's slice of a :class:`FederatedData`.
    key: the client's PRNG key (e.g. ``fold_in(round_key, client_id)``).
    num_epochs: local epochs (static, >= 1).
    batch_size: examples per step (static, >= 1).
    grad_mode: see :func:`masked_mean_grad` and :func:`build_client_update`.
    grad_correction: optional ``correction(grads, params) -> grads`` applied
      to every step's gradient before the optimizer (FedProx's proximal term
      ``+ mu (params - server_params)``, SCAFFOLD's ``- c_i + c``, Mime's
      momentum mix); it may close over per-client values (it runs inside the
      vmapped client function).
    max_steps: optional int scalar (may be traced, per client): steps past it
      are skipped, as for an empty batch (heterogeneous local work,
      stragglers). ``None``: every step of the epochs.

  Returns:
    A :class:`LocalResult`.
  """
  arrays = client_data.arrays
  n = client_data.num_examples
  max_n = next(iter(arrays.values())).shape[0]
  check_loss_fn(loss_fn, params, arrays)
  steps_per_epoch = math.ceil(max_n / batch_size)
  padded_len = steps_per_epoch * batch_size
  mode = resolve_grad_mode(grad_mode, params)

  # Every epoch's order up front (one batched draw instead of one per epoch),
  # cut into [num_epochs * steps_per_epoch, batch_size] batch indices.
  # Positions past the client's count are padding, masked in each step.
  orders = jax.vmap(lambda e: shuffle_order(jax.random.fold_in(key, e), n, max_n))(
      jnp.arange(num_epochs))
  orders = jnp.pad(orders, ((0, 0), (0, padded_len - max_n)))
  batch_indices = orders.reshape(num_epochs * steps_per_epoch, batch_size)
  positions = jnp.tile(jnp.arange(padded_len).reshape(steps_per_epoch, batch_size),
                       (num_epochs, 1))
  # The index of each step among the client's real steps (padded steps of an
  # epoch are not counted), for max_steps.
  real_per_epoch = (n + batch_size - 1) // batch_size
  step_number = (jnp.arange(num_epochs)[:, None] * real_per_epoch
                 + jnp.arange(steps_per_epoch)[None, :]).reshape(-1)

  def step(carry, xs):
    params, opt_state, loss_sum, steps, visited = carry
    idx, pos, number = xs
    mask = pos < n
    active = pos[0] < n  # the batch holds at least one real example
    if max_steps is not None:
      active = active & (number < max_steps)
    batch = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), arrays)
    grads, total = masked_mean_grad(loss_fn, params, batch, mask, mode)
    if grad_correction is not None:
      grads = grad_correction(grads, params)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jnp.where(active, new, old)
    params = jax.tree.map(keep, new_params, params)
    opt_state = jax.tree.map(keep, new_opt_state, opt_state)
    return (params, opt_state, loss_sum + jnp.where(active, total, 0.0),
            steps + active.astype(jnp.int32),
            visited + jnp.where(active, jnp.sum(mask), 0).astype(jnp.int32)), None

  zero = jnp.zeros((), jnp.int32)
  init = (params, optimizer.init(params), jnp.zeros((), jnp.float32), zero, zero)
  # The first step starts from the given parameters, which (for the server's
  # parameters) every client shares: taken outside the scan, under jax.vmap its
  # forward and input-gradient products stay shared-weight products.
  carry, _ = step(init, (batch_indices[0], positions[0], step_number[0]))
  (params, _, loss_sum, steps, visited), _ = jax.lax.scan(
      step, carry, (batch_indices[1:], positions[1:], step_number[1:]))
  return LocalResult(params, loss_sum, steps, visited)


def build_client_update(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    num_epochs: int = 1,
    batch_size: int,
    grad_mode: str = "auto",
    proximal_mu: float = 0.0,
    local_work: LocalWork | None = None,
) -> ClientUpdateFn:
  """Builds a pure local-training function for one client.

  The client starts from the server parameters with a fresh optimizer state,
  runs ``num_epochs`` epochs of minibatch training over its real examples in
  a per-epoch shuffled order (see the module docstring for how keys are
  derived), and returns the difference to the server parameters.

  Padding is exact: the gradient of a batch is that of the mean loss over
  its real rows only, steps whose batch has no real row leave parameters and
  optimizer state untouched, and an empty client returns a zero delta with
  weight 0.

  With ``proximal_mu > 0`` the local objective is FedProx's ``F_i(w) +
  mu/2 ||w - w_server||^2``: every step's gradient gets ``+ mu (w -
  w_server)`` (Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated
  Optimization in Heterogeneous Networks", MLSys 2020). With ``local_work``
  each client's steps are capped by its per-round budget (see
  :class:`LocalWork`); a dropped straggler returns a zero delta with weight 0.

  Args:
    loss_fn: ``loss(params, batch) -> scalar``: the mean loss of a batch, a
      dict of arrays ``[B, ...]`` named like the client's arrays. It is
      evaluated one example at a time (see :func:`per_example_losses`), so it
      must not mix examples (no batch norm).
    optimizer: an optax client optimizer, e.g. ``optax.sgd(0.1)``.
    num_epochs: local epochs (>= 1).
    batch_size: examples per local step (>= 1).
    grad_mode: how a step's masked mean gradient is computed, see
      :func:`masked_mean_grad`: ``"batch"``, ``"per_example"``, or ``"auto"``
      (``"per_example"`` when no parameter leaf has more elements than the
      platform's threshold, 4096 on a CPU, see :mod:`fedjax_lite.hardware`;
      else ``"batch"``). All give the same update up to float rounding.
    proximal_mu: FedProx's ``mu`` (>= 0; may be a traced scalar, e.g. in
      :func:`fedjax_lite.run_sweep`). A Python ``0`` adds nothing (plain
      local training, bit for bit).
    local_work: optional :class:`LocalWork` (:func:`fixed`, :func:`sampled`,
      :func:`proportional`, :func:`stragglers`); ``None``: every step of the
      ``num_epochs`` epochs.

  Returns:
    ``client_update(server_params, client_data, key) -> ClientOutput`` where
    ``client_data`` is one client's slice of a :class:`FederatedData` (arrays
    ``[max_examples, ...]``, scalar ``num_examples`` and ``client_ids``) and
    ``key`` is the round's PRNG key (the client folds in its own id). Pure and
    safe under ``jax.jit`` and ``jax.vmap``. Its ``metrics`` hold
    ``train_loss`` (:attr:`LocalResult.mean_loss`), its ``counts``
    ``num_examples`` and ``num_steps``; with ``local_work`` also
    ``num_stragglers`` and ``num_dropped_stragglers`` (0 or 1 per client),
    and a dropped straggler counts ``num_examples`` 0 (it did not take part,
    so the round's ``num_clients`` and ``num_examples`` leave it out).

  Raises:
    TypeError, ValueError: for a non-int or non-positive ``num_epochs`` or
      ``batch_size``, an ``optimizer`` that is not an optax transformation,
      an unknown ``grad_mode``, a negative ``proximal_mu`` or a
      ``local_work`` that is not a :class:`LocalWork`.
  """
  check_int("batch_size", batch_size, minimum=1)
  check_int("num_epochs", num_epochs, minimum=1)
  if grad_mode not in GRAD_MODES:
    raise ValueError(f"`grad_mode` must be one of {GRAD_MODES}; got {grad_mode!r}.")
  if not callable(loss_fn):
    raise TypeError(f"`loss_fn` must be callable loss(params, batch); got {loss_fn!r}.")
  if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
    raise TypeError(
        "`optimizer` must be an optax.GradientTransformation (e.g. optax.sgd(0.1)); got "
        f"{optimizer!r}.")
  check_real("proximal_mu", proximal_mu, low=0.0, hint=" Use 0 for no proximal term.")
  check_local_work(local_work)
  proximal = not (is_concrete(proximal_mu) and float(proximal_mu) == 0.0)

  def client_update(server_params, client_data: FederatedData, key) -> ClientOutput:
    n = client_data.num_examples
    client_key = jax.random.fold_in(key, client_data.client_ids)
    correction = None
    if proximal:
      def correction(grads, params):
        return jax.tree.map(lambda g, w, s: g + (proximal_mu * (w - s)).astype(g.dtype),
                            grads, params, server_params)
    work = None
    if local_work is not None:
      work = local_work_budget(local_work, client_key, n, num_epochs=num_epochs,
                               batch_size=batch_size, client_id=client_data.client_ids)
    result = local_train(loss_fn, optimizer, server_params, client_data, client_key,
                         num_epochs=num_epochs, batch_size=batch_size, grad_mode=grad_mode,
                         grad_correction=correction,
                         max_steps=None if work is None else work.max_steps)
    delta = jax.tree.map(jnp.subtract, result.params, server_params)
    n_f = n.astype(jnp.float32)
    metrics = {"train_loss": result.mean_loss}
    counts = {"num_examples": n_f, "num_steps": result.num_steps.astype(jnp.float32)}
    if work is None:
      return ClientOutput(delta, n_f, metrics, counts=counts)
    kept = ~work.dropped
    delta = jax.tree.map(lambda d: jnp.where(kept, d, 0).astype(d.dtype), delta)
    n_f = jnp.where(kept, n_f, 0.0)
    counts.update(num_examples=n_f, num_stragglers=work.straggler.astype(jnp.float32),
                  num_dropped_stragglers=work.dropped.astype(jnp.float32))
    return ClientOutput(delta, n_f, metrics, counts=counts)

  return client_update
