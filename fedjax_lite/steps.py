"""The per-step building blocks of local training, on one (padded) client.

* :func:`shuffle_order`: an epoch's order of a client's real examples, from
  per-example random words (so it does not depend on padding), by pairwise
  rank or by sort per platform (:mod:`fedjax_lite.hardware`);
* :func:`per_example_losses` and :func:`masked_mean_grad`: the gradient of
  the mean loss over a batch's real rows, per example (``vmap`` of ``grad``)
  or as one batch gradient of a masked loss, picked by
  :func:`resolve_grad_mode`;
* :func:`check_loss_fn`: the loss contract, checked at trace time.

:func:`fedjax_lite.local_train` composes them; they are re-exported by
:mod:`fedjax_lite.client`.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

from fedjax_lite import hardware
from fedjax_lite._types import Batch, LossFn, Params, PRNGKey

SHUFFLE_METHODS = ("auto", "rank", "sort")


def shuffle_order(key: PRNGKey, num_examples: Any, max_examples: int,
                  method: str = "auto") -> Any:
  """One epoch's order of a padded client's examples; pure and jit-safe.

  Real example ``j`` gets the sort key ``random.bits(key, (n,))[j]`` (with
  ``jax_threefry_partitionable``, JAX's default, whose draws of different
  lengths agree on their common prefix; under the legacy setting it is
  ``random.bits(fold_in(key, j))``); padded rows sort after all real ones;
  ties keep index order. The result
  depends only on ``key`` and ``num_examples``, never on ``max_examples``:
  the first ``num_examples`` entries equal the order computed for the same
  client unpadded.

  Args:
    key: the epoch's PRNG key.
    num_examples: int scalar, the client's number of real examples.
    max_examples: static padded length.
    method: how the keys are ordered, a speed choice only (every method
      returns the same permutation): ``"rank"`` (a stable rank by pairwise
      comparison, memory ``O(max_examples^2)``), ``"sort"`` (XLA's stable
      sort), or ``"auto"``: ``"rank"`` up to the platform's
      ``rank_shuffle_max_examples`` (:mod:`fedjax_lite.hardware`), else
      ``"sort"``.

  Returns:
    ``int32[max_examples]``, a permutation of ``0..max_examples-1`` whose
    first ``num_examples`` entries index the real rows.
  """
  if method not in SHUFFLE_METHODS:
    raise ValueError(f"`method` must be one of {SHUFFLE_METHODS}; got {method!r}.")
  if method == "auto":
    rank = max_examples <= hardware.tuning().rank_shuffle_max_examples
    method = "rank" if rank else "sort"
  idx = jnp.arange(max_examples, dtype=jnp.int32)
  if jax.config.jax_threefry_partitionable:
    # Element j of a partitionable threefry draw depends only on (key, j), so
    # this equals random.bits(key, (num_examples,)) on the real rows.
    bits = jax.random.bits(key, (max_examples,))
  else:  # legacy threefry: draws of different lengths share no prefix
    bits = jax.vmap(lambda j: jax.random.bits(jax.random.fold_in(key, j)))(idx)
  bits = jnp.where(idx < num_examples, bits, jnp.array(0xFFFFFFFF, jnp.uint32))
  if method == "sort":
    return jnp.argsort(bits, stable=True).astype(jnp.int32)
  # A stable rank by pairwise comparison gives the same permutation; for small
  # clients it is far cheaper than XLA's comparator sort on a CPU.
  before = (bits[:, None] < bits[None, :]) | (
      (bits[:, None] == bits[None, :]) & (idx[:, None] < idx[None, :]))
  rank = jnp.sum(before, axis=0, dtype=jnp.int32)  # rank[j] = position of example j
  return jnp.sum(jnp.where(rank[None, :] == idx[:, None], idx[None, :], 0), axis=1,
                 dtype=jnp.int32)


def per_example_losses(loss_fn: LossFn, params: Params, batch: Batch) -> Any:
  """Evaluates a batch loss on each example alone.

  ``loss_fn`` is called on batches of one example (``x[j:j+1]``) under
  ``jax.vmap``, so for any loss that is a mean over its batch this returns the
  per-example losses, which lets padding be masked exactly.

  Args:
    loss_fn: ``loss(params, batch) -> scalar``.
    params: model parameters.
    batch: dict of arrays ``[B, ...]``.

  Returns:
    ``float[B]`` per-example losses.
  """
  one = jax.tree.map(lambda x: x[:, None], batch)
  return jax.vmap(loss_fn, in_axes=(None, 0))(params, one)


GRAD_MODES = ("auto", "batch", "per_example")


def masked_mean_grad(loss_fn: LossFn, params: Params, batch: Batch, mask: Any,
                     mode: str = "batch") -> tuple[Params, Any]:
  """Gradient of the mean loss over the rows of ``batch`` where ``mask`` is true.

  Both modes compute the same quantity (up to float summation order):

  * ``"batch"``: ``grad(sum_j mask_j * loss_j / max(sum_j mask_j, 1))``, one
    backward pass through the batch (weight gradients are matrix products).
  * ``"per_example"``: ``sum_j mask_j * grad(loss_j) / max(sum_j mask_j, 1)``,
    per-example gradients (``vmap`` of ``grad``) reduced with the mask. For
    small models this avoids XLA's batched tiny matrix products and is much
    faster on CPU; for large layers it is slower.

  Args:
    loss_fn: ``loss(params, batch) -> scalar`` (mean over its batch).
    params: model parameters.
    batch: dict of arrays ``[B, ...]``.
    mask: ``bool[B]``, true on real rows.
    mode: ``"batch"`` or ``"per_example"``.

  Returns:
    ``(grads, loss_sum)``: grads like ``params`` and the sum of the losses of
    the real rows.
  """
  count = jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
  if mode == "batch":
    def masked_loss(p):
      losses = jnp.where(mask, per_example_losses(loss_fn, p, batch), 0.0)
      total = jnp.sum(losses)
      return total / count, total

    return jax.grad(masked_loss, has_aux=True)(params)
  if mode != "per_example":
    raise ValueError(f"`mode` must be 'batch' or 'per_example'; got {mode!r}.")
  # Each example's loss is scaled by its mask weight before differentiation,
  # so padded rows get an exactly-zero cotangent (as in "batch" mode) and the
  # reduction over examples is a plain sum XLA fuses with the outer products.
  weights = mask.astype(jnp.float32) / count
  one = jax.tree.map(lambda x: x[:, None], batch)

  def weighted(p, example, w):
    loss = loss_fn(p, example)
    return w * loss, loss

  grads, losses = jax.vmap(jax.grad(weighted, has_aux=True), in_axes=(None, 0, 0))(
      params, one, weights)
  grads = jax.tree.map(lambda g: jnp.sum(g, axis=0), grads)
  return grads, jnp.sum(jnp.where(mask, losses, 0.0))


def resolve_grad_mode(grad_mode: str, params: Params, platform: str | None = None) -> str:
  """Returns the concrete mode ``"auto"`` stands for, given the params and platform.

  Args:
    grad_mode: ``"auto"``, ``"batch"`` or ``"per_example"``.
    params: the model's params (their size decides ``"auto"``).
    platform: the platform whose threshold applies
      (``per_example_max_leaf`` of :func:`fedjax_lite.hardware.tuning`);
      ``None``: the platform programs are traced for now.

  Returns:
    ``"batch"`` or ``"per_example"``: ``"auto"`` is ``"per_example"`` when no
    parameter leaf has more elements than the platform's threshold (4096 on a
    CPU).
  """
  if grad_mode not in GRAD_MODES:
    raise ValueError(f"`grad_mode` must be one of {GRAD_MODES}; got {grad_mode!r}.")
  if grad_mode != "auto":
    return grad_mode
  largest = max((math.prod(x.shape) for x in jax.tree.leaves(params)), default=0)
  return "per_example" if largest <= hardware.tuning(platform).per_example_max_leaf else "batch"


def check_loss_fn(loss_fn: LossFn, params: Params, batch: Batch) -> None:
  """Raises a clear error if ``loss_fn`` does not return a real scalar.

  Args:
    loss_fn: ``loss(params, batch) -> scalar``.
    params: the model's params.
    batch: an example batch (leaves ``[B, ...]``); only its shapes are used
      (``jax.eval_shape`` on a batch of one).

  Returns:
    None when ``loss_fn`` returns a floating scalar.

  Raises:
    ValueError: naming what ``loss_fn`` returned and how to reduce it.
  """
  one = jax.tree.map(lambda x: jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype), batch)
  out = jax.eval_shape(loss_fn, params, one)
  if not hasattr(out, "shape") or out.shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(
        "`loss_fn` must return a floating scalar (the mean loss over its batch); it returned "
        f"{out}. Reduce per-example losses with .mean().")
