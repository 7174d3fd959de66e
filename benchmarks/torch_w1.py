"""The W1 round in PyTorch, for a same-card comparison (imported only where PyTorch runs).

Two implementations of exactly the round fedjax_lite runs for W1 (the
784-200-200-10 ReLU MLP, plain SGD on the mean softmax cross-entropy of each
batch, FedAvg weighted by example counts, server learning rate 1):

* ``torch_loop``: the plain PyTorch loop over the cohort's clients that most
  FL code is written as: load the global weights into an ``nn.Module``, one
  ``torch.optim.SGD`` step per batch, accumulate the weighted delta.
* ``torch_vmap``: ``torch.func.vmap`` of a functional client update over the
  stacked cohort, optionally under ``torch.compile``.

Both get the same initial weights, cohorts and batch orders as the JAX
implementations (the orders that :func:`fedjax_lite.shuffle_order` gives each
client, computed by JAX outside the timed region), so after the same rounds
their parameters agree with the JAX loop's to float tolerance. Weights use
flax's layout (``x @ kernel + bias``), so no transposes are needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LAYERS = ("Dense_0", "Dense_1", "Dense_2")


def availability(mode: str) -> tuple[bool, str]:
  """Whether the PyTorch rows run: ``mode`` is ``auto``, ``on`` or ``off``.

  Returns:
    ``(run, reason)``; ``reason`` says why not when ``run`` is False.
  """
  if mode == "off":
    return False, "--torch off"
  try:
    import torch
  except ImportError:
    return False, "PyTorch is not installed (pip install torch)"
  if mode == "auto" and not torch.cuda.is_available():
    return False, ("no CUDA device for PyTorch: its rows run on a GPU only (--torch on runs them "
                   "on the CPU)")
  return True, ""


def to_torch(x, device) -> Any:
  import torch
  return torch.as_tensor(np.asarray(x), device=device)


class TorchW1:
  """W1 rounds in PyTorch on ``device`` over a stacked population ``x [N, n, 784]``, ``y [N, n]``.

  Args:
    jax_params: the flax MLP's initial params (``{"params": {"Dense_i": ...}}``).
    x, y: the population's arrays (NumPy or JAX).
    lr: client learning rate.
    device: a ``torch.device``.
  """

  def __init__(self, jax_params, x, y, *, lr: float, device):
    import torch
    self.torch = torch
    self.device = device
    self.lr = lr
    self.x = to_torch(x, device)
    self.y = to_torch(y, device).long()
    self.init = {}
    for i, layer in enumerate(LAYERS):
      self.init[f"w{i}"] = to_torch(jax_params["params"][layer]["kernel"], device)
      self.init[f"b{i}"] = to_torch(jax_params["params"][layer]["bias"], device)
    self.module = self._module()
    self._compiled = None

  def _module(self):
    nn = self.torch.nn
    module = nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                           nn.Linear(200, 10)).to(self.device)
    return module

  def initial(self) -> dict[str, Any]:
    return {k: v.clone() for k, v in self.init.items()}

  def _load(self, params):
    with self.torch.no_grad():
      for i, linear in enumerate(self.module[::2]):
        linear.weight.copy_(params[f"w{i}"].T)
        linear.bias.copy_(params[f"b{i}"])

  def loop_round(self, params, ids, orders):
    """One round, a Python loop over clients.

    Args:
      params: the global params (dict of tensors).
      ids: the cohort's client ids, a host NumPy array ``[K]``.
      orders: ``int64[K, steps, batch]`` on the device, each client's batches.
    """
    torch = self.torch
    f = torch.nn.functional
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    total_weight = 0.0
    for c in range(ids.shape[0]):
      i = int(ids[c])
      self._load(params)
      opt = torch.optim.SGD(self.module.parameters(), lr=self.lr)
      xc, yc = self.x[i], self.y[i]
      for idx in orders[c]:
        opt.zero_grad(set_to_none=True)
        f.cross_entropy(self.module(xc[idx]), yc[idx]).backward()
        opt.step()
      n = float(xc.shape[0])
      with torch.no_grad():
        for j, linear in enumerate(self.module[::2]):
          total[f"w{j}"].add_(linear.weight.T - params[f"w{j}"], alpha=n)
          total[f"b{j}"].add_(linear.bias - params[f"b{j}"], alpha=n)
      total_weight += n
    return {k: params[k] + total[k] / total_weight for k in params}

  def _vmap_round(self, params, x, y, orders):
    torch = self.torch
    from torch.func import grad, vmap

    def loss(p, xb, yb):
      h = torch.relu(xb @ p["w0"] + p["b0"])
      h = torch.relu(h @ p["w1"] + p["b1"])
      return torch.nn.functional.cross_entropy(h @ p["w2"] + p["b2"], yb)

    def client(p0, xc, yc, order):
      p = p0
      for s in range(order.shape[0]):
        idx = order[s]
        g = grad(loss)(p, xc[idx], yc[idx])
        p = {k: p[k] - self.lr * g[k] for k in p}
      return {k: p[k] - p0[k] for k in p}

    deltas = vmap(client, in_dims=(None, 0, 0, 0))(params, x, y, orders)
    # Every W1 client holds the same number of examples: the example-weighted
    # mean is the plain mean.
    return {k: params[k] + deltas[k].mean(0) for k in params}

  def vmap_round(self, params, ids, orders, compiled: bool = False):
    """One round as ``torch.func.vmap`` over the stacked cohort (``torch.compile``d if asked).

    ``ids`` is an ``int64[K]`` tensor on the device, ``orders`` as in :meth:`loop_round`.
    """
    x, y = self.x.index_select(0, ids), self.y.index_select(0, ids)
    if not compiled:
      return self._vmap_round(params, x, y, orders)
    if self._compiled is None:
      self._compiled = self.torch.compile(self._vmap_round)
    return self._compiled(params, x, y, orders)

  def synchronize(self):
    if self.device.type == "cuda":
      self.torch.cuda.synchronize()

  def set_tf32(self, enabled: bool):
    """TF32 matrix products (JAX's default precision on such GPUs) on or off."""
    self.torch.backends.cuda.matmul.allow_tf32 = enabled
    self.torch.backends.cudnn.allow_tf32 = enabled

  def to_numpy(self, params) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in params.items()}


def as_jax_layout(params: dict[str, np.ndarray]) -> dict:
  """PyTorch-side params in the flax MLP's tree (to compare with JAX's)."""
  return {"params": {layer: {"bias": params[f"b{i}"], "kernel": params[f"w{i}"]}
                     for i, layer in enumerate(LAYERS)}}
