"""Personalized evaluation: local fine-tuning and per-client models.

Two vectorized evaluators complement :func:`fedjax_lite.evaluation.build_evaluator`
(one global model for every client):

* :func:`build_fine_tune_evaluator`: every client fine-tunes its own copy of
  the global model on its *train* split with :func:`fedjax_lite.local_train`
  and is evaluated on its *test* split -- the "FedAvg + local fine-tuning"
  personalization baseline (e.g. Wang, Mathews, Kiddon, Eichner, Beaufays,
  Ramage, "Federated Evaluation of On-device Personalization", 2019,
  https://arxiv.org/abs/1910.10252). The metrics before fine-tuning are
  reported alongside, from the same program.
* :func:`build_per_client_evaluator`: client ``i`` is evaluated with its own
  parameters ``client_params[i]`` (Ditto's personal models, see
  :func:`fedjax_lite.algorithms.ditto.evaluate_personal`).

Both stream clients in chunks of ``client_chunk`` under ``vmap`` (as
:func:`fedjax_lite.evaluation.client_sums` does) and summarize with
:func:`fedjax_lite.evaluation.summarize`: pooled loss and accuracy plus the
distribution of per-client accuracy, clients with an empty test split left
out of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from fedjax_lite import mapreduce
from fedjax_lite._types import Params, PRNGKey
from fedjax_lite._validate import check_int
from fedjax_lite.client import GRAD_MODES, LossFn, local_train
from fedjax_lite.data import FederatedData
from fedjax_lite.evaluation import MetricsFn, client_sums, summarize
from fedjax_lite.sharding import num_real_clients


def one_client_sums(metrics_fn: MetricsFn, params: Params, client: FederatedData, *,
                    batch_size: int = 64) -> dict[str, Any]:
  """Sums of ``(loss_sum, correct, count)`` over one client's real examples; pure.

  Args:
    metrics_fn: per-example ``metrics(params, batch) -> (loss_sum[B],
      correct[B], count[B])``.
    params: the client's model parameters.
    client: one client's slice of a :class:`FederatedData` (arrays
      ``[max_examples, ...]``, scalar ``num_examples``).
    batch_size: examples per evaluation batch.

  Returns:
    dict of float32 scalars ``loss_sum``, ``correct``, ``count`` (0 for an
    empty client).
  """
  one = jax.tree.map(lambda x: jnp.asarray(x)[None], client)
  sums = client_sums(metrics_fn, params, one, batch_size=batch_size, client_chunk=1)
  return jax.tree.map(lambda x: x[0], sums)


def _replicated(out: Any, data: FederatedData) -> Any:
  """Gathers outputs computed from data sharded over a mesh to every device."""
  sharding = getattr(data.num_examples, "sharding", None)
  if isinstance(sharding, NamedSharding):
    return jax.jit(lambda x: x, out_shardings=NamedSharding(sharding.mesh, PartitionSpec()))(out)
  return out


def _check_ids_match(a: FederatedData, b: FederatedData, a_name: str, b_name: str) -> None:
  if a.num_clients != b.num_clients:
    raise ValueError(
        f"`{a_name}` has {a.num_clients} clients but `{b_name}` has {b.num_clients}; both must "
        "hold the same clients in the same order (e.g. the two splits of one population).")
  same = jax.jit(lambda x, y: jnp.array_equal(x, y))(a.client_ids, b.client_ids)
  if not bool(same):
    raise ValueError(
        f"`{a_name}.client_ids` and `{b_name}.client_ids` differ; both splits must hold the same "
        "clients in the same order.")


def build_per_client_evaluator(
    metrics_fn: MetricsFn, *, batch_size: int = 64, client_chunk: int = 16,
) -> Callable[[Params, FederatedData], dict[str, Any]]:
  """Returns ``evaluate(client_params, data)``: client ``i`` evaluated with its own model.

  Args:
    metrics_fn: per-example ``(loss_sum, correct, count)`` function, e.g.
      :func:`fedjax_lite.models.classification_metrics`.
    batch_size: examples per evaluation batch within a client.
    client_chunk: clients per ``vmap`` chunk.

  Returns:
    ``evaluate(client_params, data) -> summary``: ``client_params`` is a
    pytree whose leaves are stacked ``[N, ...]`` in the order of ``data``'s
    ``N`` clients (arrays ``[N, max_examples, ...]``). One jitted program per
    shape; the summary is :func:`fedjax_lite.evaluation.summarize`'s (pooled
    ``loss``/``accuracy``, the per-client accuracy distribution over clients
    with test data, and per-client lists under ``clients``). Padding clients
    of sharded data (:func:`fedjax_lite.shard_clients`) are left out.

  Raises:
    TypeError, ValueError: for a non-int or non-positive ``batch_size`` or
      ``client_chunk``; ``evaluate`` raises ``ValueError`` if the leading
      axis of ``client_params`` is not ``N``.
  """
  check_int("batch_size", batch_size, minimum=1)
  check_int("client_chunk", client_chunk, minimum=1)

  @jax.jit
  def sums(client_params, data):
    return mapreduce.map_clients(
        lambda _, pc: one_client_sums(metrics_fn, pc[0], pc[1], batch_size=batch_size),
        None, (client_params, data), chunk_size=client_chunk)

  def evaluate(client_params, data: FederatedData) -> dict[str, Any]:
    leading = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(client_params)}
    if leading != {data.num_clients}:
      raise ValueError(
          f"`client_params` leaves must be stacked [N, ...] with N = {data.num_clients} (one "
          "model per client of `data`, in its order); got leading axes "
          f"{sorted(map(str, leading))}.")
    out = _replicated(sums(client_params, data), data)
    n = num_real_clients(data)
    return summarize({k: v[:n] for k, v in out.items()})

  return evaluate


def build_fine_tune_evaluator(
    loss_fn: LossFn,
    metrics_fn: MetricsFn,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    num_epochs: int | None = None,
    num_steps: int | None = None,
    eval_batch_size: int = 64,
    client_chunk: int = 16,
    grad_mode: str = "auto",
) -> Callable[[Params, FederatedData, FederatedData, PRNGKey], dict[str, Any]]:
  """Evaluation after local fine-tuning of the global model on each client.

  For every client ``i``: start from the global ``params``, train on the
  client's train split with :func:`fedjax_lite.local_train` (``optimizer``
  from a fresh state, minibatches of ``batch_size`` in the per-epoch
  shuffled order of :mod:`fedjax_lite.client`, client key
  ``fold_in(key, client_id)``), then evaluate the fine-tuned model on the
  same client's test split. Clients run vectorized, ``client_chunk`` at a
  time under ``vmap``, all in one jitted program.

  Either ``num_epochs`` epochs over each client's train split, or exactly
  ``num_steps`` optimizer steps per client (cycling through as many shuffled
  epochs as that takes; the static loop length is set from the smallest
  non-empty client, so each call reads the train split's counts on the host).

  A client with an empty train split is evaluated with the global model
  unchanged; a client with an empty test split is left out of the metrics.

  Args:
    loss_fn: ``loss(params, batch) -> scalar`` (mean over its batch).
    metrics_fn: per-example ``(loss_sum, correct, count)`` function, e.g.
      :func:`fedjax_lite.models.classification_metrics`.
    optimizer: the fine-tuning optax optimizer, e.g. ``optax.sgd(0.05)``.
    batch_size: fine-tuning examples per step.
    num_epochs: fine-tuning epochs (give this or ``num_steps``).
    num_steps: fine-tuning steps per client (give this or ``num_epochs``).
    eval_batch_size: examples per evaluation batch.
    client_chunk: clients per ``vmap`` chunk.
    grad_mode: see :func:`fedjax_lite.build_client_update`.

  Returns:
    ``evaluate(params, train, test, key) -> summary``. ``train`` and ``test``
    are :class:`FederatedData` with the same ``N`` clients in the same order
    (arrays ``[N, max_train, ...]`` and ``[N, max_test, ...]``). ``summary``
    is :func:`fedjax_lite.evaluation.summarize` of the fine-tuned models
    (``loss``, ``accuracy``, ``num_examples``, ``num_clients``,
    ``accuracy_mean``/``_p10``/``_p50``/``_p90``/``_worst``, per-client lists
    under ``clients``), plus ``before``: the same summary for the global
    model, and ``num_fine_tuned_clients``: clients with both train and test
    data.

  Raises:
    TypeError, ValueError: for a bad ``loss_fn``, ``optimizer``, integer
      argument or ``grad_mode``, or unless exactly one of ``num_epochs`` and
      ``num_steps`` is given. ``evaluate`` raises ``ValueError`` when
      ``train`` and ``test`` do not hold the same clients in the same order.
  """
  if not callable(loss_fn):
    raise TypeError(f"`loss_fn` must be callable loss(params, batch); got {loss_fn!r}.")
  if not callable(metrics_fn):
    raise TypeError(f"`metrics_fn` must be callable metrics(params, batch); got {metrics_fn!r}.")
  if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
    raise TypeError(
        "`optimizer` must be an optax.GradientTransformation (e.g. optax.sgd(0.05)); got "
        f"{optimizer!r}.")
  if (num_epochs is None) == (num_steps is None):
    raise ValueError("give exactly one of `num_epochs` and `num_steps` for fine-tuning.")
  if num_epochs is not None:
    check_int("num_epochs", num_epochs, minimum=1)
  if num_steps is not None:
    check_int("num_steps", num_steps, minimum=1)
  check_int("batch_size", batch_size, minimum=1)
  check_int("eval_batch_size", eval_batch_size, minimum=1)
  check_int("client_chunk", client_chunk, minimum=1)
  if grad_mode not in GRAD_MODES:
    raise ValueError(f"`grad_mode` must be one of {GRAD_MODES}; got {grad_mode!r}.")

  def per_client(params, train_c, test_c, key, epochs):
    client_key = jax.random.fold_in(key, train_c.client_ids)
    tuned = local_train(loss_fn, optimizer, params, train_c, client_key, num_epochs=epochs,
                        batch_size=batch_size, grad_mode=grad_mode, max_steps=num_steps)
    before = one_client_sums(metrics_fn, params, test_c, batch_size=eval_batch_size)
    after = one_client_sums(metrics_fn, tuned.params, test_c, batch_size=eval_batch_size)
    return before, after, tuned.num_steps

  def run(params, train, test, key, epochs):
    return jax.lax.map(lambda c: per_client(params, c[0], c[1], key, epochs), (train, test),
                       batch_size=min(client_chunk, train.num_clients))

  compiled = jax.jit(run, static_argnames="epochs")

  def epochs_for(train: FederatedData) -> int:
    if num_epochs is not None:
      return num_epochs
    # The client with the fewest steps per epoch needs the most epochs.
    counts = np.asarray(jax.device_get(_replicated(train.num_examples, train)))
    has = counts[counts > 0]
    fewest = math.ceil(int(has.min()) / batch_size) if has.size else 1
    return math.ceil(num_steps / fewest)

  def evaluate(params, train: FederatedData, test: FederatedData, key) -> dict[str, Any]:
    _check_ids_match(train, test, "train", "test")
    before, after, steps = _replicated(compiled(params, train, test, key, epochs_for(train)),
                                       train)
    n = num_real_clients(train)
    out = summarize({k: v[:n] for k, v in after.items()})
    out["before"] = summarize({k: v[:n] for k, v in before.items()})
    tuned = (np.asarray(jax.device_get(steps))[:n] > 0) & (
        np.asarray(jax.device_get(after["count"]))[:n] > 0)
    out["num_fine_tuned_clients"] = float(tuned.sum())
    return out

  return evaluate
