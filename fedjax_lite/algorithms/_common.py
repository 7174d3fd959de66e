"""Argument checks and the server step shared by the algorithms in this package.

Private: the public entry points are the algorithm constructors.
"""

from __future__ import annotations

from typing import Any

import optax

from fedjax_lite._validate import check_int, check_real
from fedjax_lite.algorithm import ServerState, ServerUpdate
from fedjax_lite.client import GRAD_MODES


def check_loss_and_grad_mode(loss_fn: Any, grad_mode: Any) -> None:
  """Raises for a non-callable ``loss_fn`` or an unknown ``grad_mode``."""
  if not callable(loss_fn):
    raise TypeError(f"`loss_fn` must be callable loss(params, batch); got {loss_fn!r}.")
  if grad_mode not in GRAD_MODES:
    raise ValueError(f"`grad_mode` must be one of {GRAD_MODES}; got {grad_mode!r}.")


def check_local_sgd(loss_fn: Any, client_lr: Any, num_epochs: Any, batch_size: Any,
                    grad_mode: Any) -> None:
  """Checks the arguments of a local-SGD client update (learning rate > 0, ints >= 1)."""
  check_loss_and_grad_mode(loss_fn, grad_mode)
  check_real("client_lr", client_lr, low=0.0, low_open=True)
  check_int("num_epochs", num_epochs, minimum=1)
  check_int("batch_size", batch_size, minimum=1)


def server_update(server_optimizer: optax.GradientTransformation, update: Any, *,
                  extra_init: Any = None, broadcast: Any = None) -> ServerUpdate:
  """A :class:`fedjax_lite.ServerUpdate` whose ``opt_state`` is ``server_optimizer``'s.

  Args:
    server_optimizer: the server's optax transformation (its ``init`` makes
      ``opt_state``).
    update: ``update(state, aggregate, metrics, key) -> (params, opt_state,
      extra)``.
    extra_init: optional ``extra_init(params) -> extra`` (default ``()``).
    broadcast: optional ``broadcast(state) -> what clients receive``.

  Returns:
    The paired :class:`fedjax_lite.ServerUpdate`.
  """

  def init(params):
    return server_optimizer.init(params), (() if extra_init is None else extra_init(params))

  return ServerUpdate(init, update, broadcast)


def apply_server_optimizer(server_optimizer: optax.GradientTransformation, state: ServerState,
                           pseudo_grad: Any) -> tuple[Any, Any]:
  """One optax step of the server model on ``pseudo_grad``.

  Args:
    server_optimizer: the server's optax transformation.
    state: the round's :class:`fedjax_lite.ServerState` (its ``params`` and
      ``opt_state`` are used).
    pseudo_grad: a pytree like ``state.params`` (e.g. minus the mean delta).

  Returns:
    ``(params, opt_state)`` after the step.
  """
  updates, opt_state = server_optimizer.update(pseudo_grad, state.opt_state, state.params)
  return optax.apply_updates(state.params, updates), opt_state
