"""The W1/W2 round in plain PyTorch: a loop over clients, or ``torch.func.vmap`` over the cohort.

* ``--impl loop`` follows PyTorch's "Training a Classifier" tutorial for each
  client (an ``nn.Module``, a shuffled ``DataLoader``, ``torch.optim.SGD``,
  ``loss.backward()``), loading the global weights before and accumulating the
  example-weighted delta after: how most FL research code is written.
* ``--impl vmap`` follows the ``torch.func`` "Model ensembling" tutorial:
  ``torch.func.functional_call`` of the same module with stacked per-client
  parameters, ``torch.func.grad`` for each local step and ``torch.func.vmap``
  over the cohort, under ``torch.compile`` (``--no-compile`` to skip it). Each
  client's examples are reshuffled every epoch (``argsort`` of uniform draws).

Run as ``python -m benchmarks.peers.pytorch_peer --data FILE --impl loop|vmap``
from the repository root, in an environment with PyTorch (see
``benchmarks/peers/requirements/pytorch.txt``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from benchmarks.peers import protocol


def build_module(layers) -> nn.Sequential:
  """``nn.Linear`` layers holding the file's ``(kernel, bias)`` pairs, ReLU between."""
  mods: list[nn.Module] = []
  for i, (kernel, bias) in enumerate(layers):
    lin = nn.Linear(*kernel.shape)
    with torch.no_grad():
      lin.weight.copy_(torch.from_numpy(kernel.T.copy()))
      lin.bias.copy_(torch.from_numpy(bias))
    mods.append(lin)
    if i < len(layers) - 1:
      mods.append(nn.ReLU())
  return nn.Sequential(*mods)


def layers_of(module: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
  return [(m.weight.detach().numpy().T, m.bias.detach().numpy())
          for m in module if isinstance(m, nn.Linear)]


class LoopFedAvg:
  """FedAvg as a Python loop over the cohort's clients."""

  def __init__(self, data, generator: torch.Generator):
    self.data, self.gen = data, generator
    self.global_model = build_module(data["layers"])
    self.local = build_module(data["layers"])
    self.datasets = [torch.utils.data.TensorDataset(torch.from_numpy(data["x"][i]),
                                                    torch.from_numpy(data["y"][i]))
                     for i in range(data["num_clients"])]

  def round(self, ids) -> None:
    d = self.data
    total = [torch.zeros_like(p) for p in self.global_model.parameters()]
    weight = 0.0
    for i in ids:
      self.local.load_state_dict(self.global_model.state_dict())
      opt = torch.optim.SGD(self.local.parameters(), lr=d["lr"])
      loader = torch.utils.data.DataLoader(self.datasets[i], batch_size=d["batch_size"],
                                           shuffle=True, generator=self.gen)
      for _ in range(d["epochs"]):
        for xb, yb in loader:
          opt.zero_grad(set_to_none=True)
          nn.functional.cross_entropy(self.local(xb), yb).backward()
          opt.step()
      n = float(len(self.datasets[i]))
      with torch.no_grad():
        pairs = zip(self.local.parameters(), self.global_model.parameters(), strict=True)
        for t, (p, g) in zip(total, pairs, strict=True):
          t.add_(p - g, alpha=n)
      weight += n
    with torch.no_grad():
      for t, g in zip(total, self.global_model.parameters(), strict=True):
        g.add_(t, alpha=d["server_lr"] / weight)

  def layers(self):
    return layers_of(self.global_model)


class VmapFedAvg:
  """FedAvg with ``torch.func.vmap`` of a functional client update over the stacked cohort."""

  def __init__(self, data, generator: torch.Generator, compile_round: bool):
    from torch.func import functional_call, grad, vmap
    self.data, self.gen = data, generator
    self.module = build_module(data["layers"])
    self.params = {k: v.detach().clone() for k, v in self.module.named_parameters()}
    self.x = torch.from_numpy(data["x"])
    self.y = torch.from_numpy(data["y"])
    lr, epochs, batch = data["lr"], data["epochs"], data["batch_size"]
    module = self.module
    steps = data["examples"] // batch

    def loss(p, xb, yb):
      return nn.functional.cross_entropy(functional_call(module, p, (xb,)), yb)

    def client(p0, xc, yc, orders):  # orders: [epochs, n]
      p = p0
      for e in range(epochs):
        for s in range(steps):
          idx = orders[e, s * batch:(s + 1) * batch]
          g = grad(loss)(p, xc[idx], yc[idx])
          p = {k: p[k] - lr * g[k] for k in p}
      return {k: p[k] - p0[k] for k in p}

    def round_fn(params, x, y, orders):
      deltas = vmap(client, in_dims=(None, 0, 0, 0))(params, x, y, orders)
      # Every client holds the same number of examples: the weighted mean is the mean.
      return {k: params[k] + data["server_lr"] * deltas[k].mean(0) for k in params}

    self.round_fn = torch.compile(round_fn) if compile_round else round_fn

  def round(self, ids) -> None:
    d = self.data
    ids_t = torch.from_numpy(np.asarray(ids))
    orders = torch.argsort(torch.rand(len(ids), d["epochs"], d["examples"], generator=self.gen),
                           dim=-1)
    with torch.no_grad():
      self.params = self.round_fn(self.params, self.x.index_select(0, ids_t),
                                  self.y.index_select(0, ids_t), orders)

  def layers(self):
    n = len(self.data["layers"])
    names = [k for k in self.params if k.endswith("weight")]
    assert len(names) == n
    return [(self.params[w].numpy().T, self.params[w[:-len("weight")] + "bias"].numpy())
            for w in names]


def main(argv=None) -> int:
  def extra(p):
    p.add_argument("--impl", choices=("loop", "vmap"), default="loop")
    p.add_argument("--no-compile", action="store_true",
                   help="vmap without torch.compile")

  args = protocol.parse_args(__doc__, argv, extra)
  data = protocol.load(args.data)
  torch.manual_seed(args.seed)
  gen = torch.Generator().manual_seed(args.seed)
  impl = (LoopFedAvg(data, gen) if args.impl == "loop"
          else VmapFedAvg(data, gen, compile_round=not args.no_compile))
  name = "pytorch_loop" if args.impl == "loop" else (
      "torch_vmap" if args.no_compile else "torch_vmap_compile")
  info = dict(peer=name, version=f"torch {torch.__version__}", workload=data["workload"],
              clients_per_round=data["clients_per_round"], threads=torch.get_num_threads(),
              follows=("PyTorch tutorial 'Training a Classifier', per client"
                       if args.impl == "loop" else "torch.func tutorial 'Model ensembling'"))

  def run():
    if args.check:
      every = np.arange(data["num_clients"])
      for _ in range(data["rounds"]):
        impl.round(every)
      protocol.save_params(args.check, impl.layers())
      return info
    rng = np.random.default_rng(args.seed)
    stats = protocol.timed_rounds(
        lambda r: impl.round(protocol.cohort(rng, data["num_clients"], data["clients_per_round"])),
        warmup=args.warmup, rounds=args.rounds, budget_sec=args.budget_sec)
    return {**info, **stats}

  return protocol.main_guard(run)


if __name__ == "__main__":
  raise SystemExit(main())
