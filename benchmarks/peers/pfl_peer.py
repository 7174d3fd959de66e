"""pfl-research 0.6.0 (Apple's ``pfl``) peer: the workload's FedAvg rounds on pfl's simulator.

Follows pfl-research's CIFAR10 benchmark, ``benchmarks/image_classification/
pytorch/train.py`` with ``benchmarks/dataset/cifar10/numpy.py`` and
``benchmarks/model/pytorch/dnn.py``: a ``FederatedDataset.from_slices`` of
per-user ``(x, y)`` tensors with a ``get_user_sampler`` user sampler, an
``nn.Sequential`` dense stack with ``loss``/``metrics`` methods (mean
cross-entropy; summed loss and accuracy) wrapped in a ``PyTorchModel`` with
``torch.optim.SGD`` as local and central optimizer (central lr =
``server_lr``), ``SimulatedBackend`` with the ``WeightByDatapoints``
postprocessor (the benchmark's ``--weight_by_samples``: FedAvg's
example-weighted mean), ``FederatedAveraging`` with ``NNAlgorithmParams`` and
``NNTrainHyperParams(local_num_epochs, local_learning_rate,
local_batch_size)``, and ``algorithm.run(...)``. No central evaluation, no
validation cohort. Users come from the ``'minimize_reuse'`` sampler over a
seeded permutation of the ids (the sampler pfl's ``FederatedDataset`` docs
recommend): a cohort holds no user twice, and a cohort of all users (the
check) holds each once.

Deviations pfl itself imposes: a user's examples are visited in their stored
order every epoch (``pfl.data.Dataset.iter`` does not shuffle); pfl evaluates
each user before and after local training in iterations where ``iteration %
evaluation_frequency == 0``, which with ``evaluation_frequency`` above the
iteration count is iteration 0 only (a warmup round).

Several processes (``--procs N``, N > 1): as pfl's "Fast distributed
simulations" guide recommends for PyTorch, the script re-launches itself under
``torchrun --standalone --nnodes=1 --nproc_per_node=N``; pfl then initialises
``torch.distributed`` (gloo on CPU) when imported, each process trains its
share of every cohort and the backend all-reduces the summed updates. Only
rank 0 writes the JSON lines, which the launching process passes through.

A round's time is measured from inside ``algorithm.run`` by a
``TrainingProcessCallback``: from the end of the previous central iteration's
callbacks (or ``on_train_begin``) to ``after_central_iteration``, i.e. cohort
sampling, local training, aggregation (all-reduce) and the central update.

Run from the repository root in the pfl environment (see
``benchmarks/peers/requirements/pfl.txt``)::

  python -m benchmarks.peers.pfl_peer --data FILE [--procs 1|2] [--warmup W]
      [--rounds R] [--budget-sec B] [--check OUT.npz]
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import pfl
import torch
from pfl.aggregate.simulate import SimulatedBackend
from pfl.aggregate.weighting import WeightByDatapoints
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.callback.base import TrainingProcessCallback
from pfl.data import FederatedDataset
from pfl.data.sampling import get_user_sampler
from pfl.hyperparam import NNTrainHyperParams
from pfl.internal.ops import pytorch_ops
from pfl.metrics import Metrics, Weighted
from pfl.model.pytorch import PyTorchModel
from torch import nn

from benchmarks.peers import protocol

FOLLOWS = ("pfl-research benchmarks/image_classification/pytorch/train.py (CIFAR10: "
           "dataset/cifar10/numpy.py, model/pytorch/dnn.py) + guides/simulation_distributed "
           "(torchrun)")


class DenseStack(nn.Sequential):
  """The file's dense layers (ReLU between) with the ``loss`` and ``metrics`` pfl calls."""

  def __init__(self, layers):
    mods: list[nn.Module] = []
    for i, (kernel, bias) in enumerate(layers):
      lin = nn.Linear(*kernel.shape)
      with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.T)))
        lin.bias.copy_(torch.from_numpy(bias))
      mods.append(lin)
      if i < len(layers) - 1:
        mods.append(nn.ReLU())
    super().__init__(*mods)

  def loss(self, x, y, eval=False):  # noqa: A002 (pfl's keyword)
    self.eval() if eval else self.train()
    return nn.functional.cross_entropy(self(x), y)

  @torch.no_grad()
  def metrics(self, x, y, eval=True):  # noqa: A002
    self.eval() if eval else self.train()
    logits = self(x)
    loss = nn.functional.cross_entropy(logits, y, reduction="sum").item()
    return {"loss": Weighted(loss, len(x)),
            "accuracy": Weighted((logits.argmax(-1) == y).sum().item(), len(x))}

  def layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(m.weight.detach().cpu().numpy().T, m.bias.detach().cpu().numpy())
            for m in self if isinstance(m, nn.Linear)]


class RoundTimer(TrainingProcessCallback):
  """Times each central iteration and stops pfl's loop once ``budget_sec`` is spent.

  Emits (on rank 0) and summarises like :func:`protocol.timed_rounds`; the stop
  decision is rank 0's, shared by an all-reduce so that every worker stops at
  the same iteration.
  """

  def __init__(self, warmup: int, budget_sec: float, emit: bool):
    self.warmup, self.budget_sec, self.emit = warmup, budget_sec, emit
    self.first: float | None = None
    self.times: list[float] = []
    self.start = self.t0 = time.perf_counter()

  def on_train_begin(self, *, model) -> Metrics:
    self.t0 = time.perf_counter()
    return Metrics()

  def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
    sec = time.perf_counter() - self.t0
    warm = central_iteration < self.warmup
    if warm:
      self.first = sec if self.first is None else self.first
    else:
      if not self.times:
        self.start = self.t0
      self.times.append(sec)
    if self.emit:
      protocol.emit(event="round", round=central_iteration, warmup=warm, seconds=sec)
    stop = (self.emit and len(self.times) >= 2
            and time.perf_counter() - self.start > self.budget_sec)
    dist = pytorch_ops.distributed
    if dist is not None and dist.world_size > 1:
      stop = bool(dist.all_reduce([torch.tensor([float(stop)])])[0].item() > 0)
    self.t0 = time.perf_counter()
    return stop, Metrics()

  def stats(self) -> dict:
    t = self.times
    return {"first_round_sec": self.first, "sec_per_round_median": statistics.median(t),
            "sec_per_round_min": min(t), "sec_per_round_max": max(t), "rounds_timed": len(t)}


def run(args, rank: int) -> dict:
  """Builds the pfl simulation and runs it (timed, or the check's rounds with every client)."""
  data = protocol.load(args.data)
  check = args.check is not None
  n = data["num_clients"]
  per_round = n if check else data["clients_per_round"]
  iterations = data["rounds"] if check else args.warmup + args.rounds
  torch.manual_seed(args.seed)
  np.random.seed(args.seed)  # pfl's datasets and backend seed their random states from NumPy's

  x = pytorch_ops.to_tensor(data["x"])
  y = pytorch_ops.to_tensor(data["y"], "int64")
  users = [(x[i], y[i]) for i in range(n)]
  order = [int(i) for i in np.random.default_rng(args.seed).permutation(n)]
  train = FederatedDataset.from_slices(users, get_user_sampler("minimize_reuse", order))

  module = DenseStack(data["layers"]).to(pytorch_ops.get_default_device())
  params = [p for p in module.parameters() if p.requires_grad]
  model = PyTorchModel(model=module, local_optimizer_create=torch.optim.SGD,
                       central_optimizer=torch.optim.SGD(params, data["server_lr"]))
  backend = SimulatedBackend(training_data=train, val_data=train,
                             postprocessors=[WeightByDatapoints()])
  algorithm = FederatedAveraging()
  algorithm_params = NNAlgorithmParams(central_num_iterations=iterations,
                                       evaluation_frequency=iterations + 1,
                                       train_cohort_size=per_round, val_cohort_size=None)
  train_params = NNTrainHyperParams(local_num_epochs=data["epochs"],
                                    local_learning_rate=data["lr"],
                                    local_batch_size=data["batch_size"])
  timer = None if check else RoundTimer(args.warmup, args.budget_sec, emit=rank == 0)
  algorithm.run(algorithm_params=algorithm_params, backend=backend, model=model,
                model_train_params=train_params, callbacks=[timer] if timer else [],
                send_metrics_to_platform=False)

  dist = pytorch_ops.distributed
  row = {"peer": "pfl", "procs": dist.world_size if dist is not None else 1,
         "version": f"pfl {pfl.__version__}, torch {torch.__version__}", "follows": FOLLOWS,
         "workload": data["workload"], "clients_per_round": per_round,
         "backend": type(backend).__name__, "threads": torch.get_num_threads(),
         "launcher": "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "python"}
  if check:
    if rank == 0:
      protocol.save_params(args.check, module.layers())
    return {**row, "check": args.check, "rounds": data["rounds"]}
  return {**row, **timer.stats()}


def _die_with_parent() -> None:
  """In the launched child: SIGTERM once the launching process dies (Linux ``PR_SET_PDEATHSIG``).

  torchrun passes it on to its workers, so none outlives a launcher killed on a timeout.
  """
  try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
  except (OSError, AttributeError):
    pass


def relaunch(procs: int, argv: list[str]) -> int:
  """Runs this module under ``torchrun`` with ``procs`` processes, passing rank 0's lines on."""
  cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
         f"--nproc_per_node={procs}", "-m", "benchmarks.peers.pfl_peer", *argv]
  ended = False
  with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                        preexec_fn=_die_with_parent) as proc:
    for line in proc.stdout:
      sys.stdout.write(line)
      sys.stdout.flush()
      try:
        ended |= json.loads(line).get("event") in ("done", "error")
      except (ValueError, AttributeError):
        pass
    rc = proc.wait()
  if rc and not ended:
    protocol.emit(event="error", error=f"torchrun with {procs} processes exited with status {rc}")
  return rc


def main(argv: list[str] | None = None) -> int:
  def extra(p):
    p.add_argument("--procs", type=int, default=1,
                   help="worker processes; above 1, re-launched under torchrun")

  argv = sys.argv[1:] if argv is None else argv
  args = protocol.parse_args(__doc__, argv, extra)
  if args.procs > 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
    return relaunch(args.procs, argv)
  rank = pytorch_ops.distributed.global_rank if pytorch_ops.distributed is not None else 0
  if rank == 0:
    return protocol.main_guard(lambda: run(args, rank))
  run(args, rank)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
