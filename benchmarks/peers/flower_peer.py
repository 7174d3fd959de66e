"""Flower 1.41 (flwr) simulation engine + PyTorch peer: the workload's FedAvg rounds.

Follows Flower's ``examples/quickstart-pytorch`` in its Message-API form
(adap/flower, ``flwr[simulation]>=1.27``; the APIs it uses are unchanged in the
installed flwr 1.41.0): ``pytorchexample/client_app.py``'s ``@app.train()``
loads the received ``ArrayRecord`` into a fresh ``nn.Module``, trains, and
replies with an ``ArrayRecord`` and a ``MetricRecord`` holding
``"num-examples"``; ``pytorchexample/server_app.py``'s ``@app.main()`` runs
``flwr.serverapp.strategy.FedAvg(...).start(grid, initial_arrays, train_config,
num_rounds)``. It runs in-process with ``flwr.simulation.run_simulation``
(deprecated in 1.41 in favour of ``flwr run``, which drives the same Simulation
Runtime and Ray backend from separate SuperLink and simulation processes).

Differences from the example, all to run this benchmark's workload:

* model: ``nn.Sequential`` of the file's dense layers (``weight = kernel.T``),
  ReLU between, ``CrossEntropyLoss``; client optimizer plain
  ``torch.optim.SGD(lr)`` (the example adds ``momentum=0.9``);
* data: client ``partition-id`` ``i`` trains on the file's ``x[i], y[i]`` via
  ``DataLoader(TensorDataset, batch_size, shuffle=True)``; each Ray actor loads
  the file once and caches it (as the example caches its ``FederatedDataset``);
  data path, epochs, batch size and lr travel in the ``train_config``;
* ``FedAvg(fraction_train=clients_per_round / num_clients,
  min_train_nodes=clients_per_round, min_available_nodes=num_clients,
  fraction_evaluate=0.0)`` and no ``evaluate_fn``: exactly
  ``clients_per_round`` clients train per round and nothing is evaluated;
* backend: Ray as in the example, but ``client_resources`` ``num_cpus=1``
  (``--client-cpus``; Flower's default, which the example keeps, is 2). With 2
  CPUs per client this 2-CPU machine gets a single actor whose 2 torch (OpenMP)
  threads, niced by Ray, share the cores with the engine's own busy thread (it
  scans the stored messages for every node every 0.1 s): on an idle machine a
  W1 round took 3.8 s instead of 1.8 s and a W2 round 153 s instead of 16 s.
  With 1 CPU per client, two single-threaded actors train clients side by side.
  Telemetry is off (``FLWR_TELEMETRY_ENABLED=0``, ``RAY_USAGE_STATS_ENABLED=0``):
  there is no network here.

Timing: a :class:`TimedFedAvg` stamps the start of ``configure_train`` and the end
of ``aggregate_train``, so a round is node sampling, message push, every
client's training in the Ray actor(s), reply pull and aggregation. After the
timed rounds pass ``--budget-sec`` (and at least two ran), ``configure_train``
returns no messages, so Flower's remaining rounds are empty and untimed.
``startup_sec`` is ``run_simulation()`` up to the reply to one no-op query
message (Ray init, actor start, ``ClientApp`` import), sent before
``strategy.start``; the first warmup round still includes each actor's load of
the workload file.
"""

from __future__ import annotations

import importlib.metadata
import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import flwr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import (  # noqa: E402
  ArrayRecord,
  ConfigRecord,
  Context,
  Message,
  MessageType,
  MetricRecord,
  RecordDict,
)
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from benchmarks.peers import protocol  # noqa: E402

FOLLOWS = ("Flower quickstart-pytorch example (Message API: ClientApp @app.train, ServerApp "
           "@app.main, serverapp.strategy.FedAvg.start) on flwr 1.41.0, run in-process "
           "with flwr.simulation.run_simulation (Ray backend, client_resources num_cpus=1)")


def make_net(layers) -> nn.Sequential:
  """``nn.Linear`` per ``(kernel [d_in, d_out], bias)`` (``weight = kernel.T``), ReLU between."""
  mods: list[nn.Module] = []
  for i, (kernel, bias) in enumerate(layers):
    lin = nn.Linear(*kernel.shape)
    with torch.no_grad():
      lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(np.asarray(kernel).T)))
      lin.bias.copy_(torch.from_numpy(np.asarray(bias)))
    mods.append(lin)
    if i + 1 < len(layers):
      mods.append(nn.ReLU())
  return nn.Sequential(*mods)


def layers_of(state_dict) -> list[tuple[np.ndarray, np.ndarray]]:
  """``[(kernel [d_in, d_out], bias), ...]`` from an ``nn.Sequential`` state dict."""
  idx = sorted({int(k.split(".")[0]) for k in state_dict})
  return [(state_dict[f"{i}.weight"].numpy().T, state_dict[f"{i}.bias"].numpy()) for i in idx]


# --- ClientApp (runs in the Ray actors) ------------------------------------

_CACHE: dict[str, Any] = {}  # per actor process: path -> (x, y, layer shapes)


def _client_data(path: str, seed: int):
  """The workload file's ``x``, ``y`` as tensors and the layer shapes, loaded once per process."""
  if path not in _CACHE:
    torch.manual_seed(seed)
    data = protocol.load(path)
    _CACHE[path] = (torch.from_numpy(data["x"]), torch.from_numpy(data["y"]),
                    [(k.shape, b.shape) for k, b in data["layers"]])
  return _CACHE[path]


def train_fn(net: nn.Module, loader: DataLoader, epochs: int, lr: float) -> float:
  """The example's ``task.train`` with plain SGD: ``epochs`` passes of SGD(lr), mean batch loss."""
  criterion = nn.CrossEntropyLoss()
  optimizer = torch.optim.SGD(net.parameters(), lr=lr)
  net.train()
  running_loss = 0.0
  for _ in range(epochs):
    for x, y in loader:
      optimizer.zero_grad()
      loss = criterion(net(x), y)
      loss.backward()
      optimizer.step()
      running_loss += loss.item()
  return running_loss / (epochs * len(loader))


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
  """Trains the received model on this node's client and replies with it and ``num-examples``."""
  cfg = msg.content["config"]
  x, y, shapes = _client_data(str(cfg["data"]), int(cfg["seed"]))
  net = make_net([(np.zeros(k, np.float32), np.zeros(b, np.float32)) for k, b in shapes])
  net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
  i = int(context.node_config["partition-id"])
  dataset = TensorDataset(x[i], y[i])
  loader = DataLoader(dataset, batch_size=int(cfg["batch-size"]), shuffle=True)
  loss = train_fn(net, loader, int(cfg["local-epochs"]), float(cfg["lr"]))
  metrics = MetricRecord({"train_loss": loss, "num-examples": len(dataset)})
  content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics})
  return Message(content=content, reply_to=msg)


@client_app.query()
def query(msg: Message, context: Context) -> Message:
  """No-op reply, used once to bring the simulation up before the rounds."""
  return Message(content=RecordDict(), reply_to=msg)


# --- ServerApp (runs in a thread of this process) --------------------------

class TimedFedAvg(FedAvg):
  """FedAvg that times each round from ``configure_train`` to the end of ``aggregate_train``.

  Emits ``{"event": "round"}`` lines as :func:`protocol.timed_rounds` does and
  empties the rounds after the budget (see the module docstring).
  """

  def __init__(self, *, warmup: int, budget_sec: float, expected: int, emit: bool,
               **kwargs: Any) -> None:
    super().__init__(**kwargs)
    self.warmup, self.budget_sec, self.expected, self.emit = warmup, budget_sec, expected, emit
    self.first: float | None = None
    self.times: list[float] = []
    self.timed_start: float | None = None
    self.stopped = False
    self._t0 = 0.0

  def configure_train(self, server_round, arrays, config, grid):
    self._t0 = time.perf_counter()
    if self.stopped:
      return []
    if server_round - 1 == self.warmup:
      self.timed_start = self._t0
    return super().configure_train(server_round, arrays, config, grid)

  def aggregate_train(self, server_round, replies):
    if self.stopped:
      return None, None
    replies = list(replies)
    bad = [m for m in replies if m.has_error()]
    if bad or len(replies) != self.expected:
      raise RuntimeError(f"round {server_round}: {len(replies)} replies for {self.expected} "
                         f"clients, {len(bad)} errors"
                         + (f", first: {bad[0].error.reason}" if bad else ""))
    out = super().aggregate_train(server_round, replies)
    sec = time.perf_counter() - self._t0
    r = server_round - 1
    if r < self.warmup:
      self.first = sec if self.first is None else self.first
    else:
      self.times.append(sec)
      if len(self.times) >= 2 and time.perf_counter() - self.timed_start > self.budget_sec:
        self.stopped = True
    if self.emit:
      protocol.emit(event="round", round=r, warmup=r < self.warmup, seconds=sec)
    return out


def make_server_app(data: dict[str, Any], path: str, *, clients_per_round: int, rounds: int,
                    warmup: int, budget_sec: float, seed: int, emit: bool,
                    out: dict[str, Any]) -> ServerApp:
  """The ServerApp: one no-op query (startup), then ``FedAvg.start`` for ``warmup + rounds``."""
  app = ServerApp()

  @app.main()
  def main(grid: Grid, context: Context) -> None:
    n = data["num_clients"]
    while len(nodes := list(grid.get_node_ids())) < n:  # nodes register as the engine starts
      time.sleep(0.05)
    replies = list(grid.send_and_receive(
        [Message(RecordDict(), dst_node_id=nodes[0], message_type=MessageType.QUERY)]))
    if len(replies) != 1 or replies[0].has_error():
      raise RuntimeError(f"startup query failed: {replies}")
    out["ready"] = time.perf_counter()
    strategy = TimedFedAvg(
        warmup=warmup, budget_sec=budget_sec, expected=clients_per_round, emit=emit,
        fraction_train=clients_per_round / n, fraction_evaluate=0.0,
        min_train_nodes=clients_per_round, min_available_nodes=n)
    arrays = ArrayRecord(make_net(data["layers"]).state_dict())
    config = ConfigRecord({"lr": data["lr"], "local-epochs": data["epochs"],
                           "batch-size": data["batch_size"], "data": path, "seed": seed})
    out["result"] = strategy.start(grid=grid, initial_arrays=arrays, train_config=config,
                                   num_rounds=warmup + rounds)
    out["strategy"] = strategy

  return app


def simulate(path: str, *, clients_per_round: int | None, rounds: int, warmup: int,
             budget_sec: float, seed: int, emit: bool, client_cpus: float = 1.0
             ) -> dict[str, Any]:
  """Runs the workload's FedAvg in Flower's simulation; returns timings and final layers."""
  data = protocol.load(path)
  if data["server_lr"] != 1.0:
    raise ValueError(f"server_lr={data['server_lr']}: Flower's FedAvg is server_lr 1.0 only")
  cpr = clients_per_round or data["clients_per_round"]
  random.seed(seed)  # FedAvg samples nodes with the `random` module
  out: dict[str, Any] = {}
  server_app = make_server_app(data, os.path.abspath(path), clients_per_round=cpr,
                               rounds=rounds, warmup=warmup, budget_sec=budget_sec, seed=seed,
                               emit=emit, out=out)
  t = time.perf_counter()
  # The ClientApp is taken from the module by its import name, so Ray pickles it by
  # reference and each actor imports this module (and keeps its data cache).
  from benchmarks.peers import flower_peer
  backend_config = {"client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0}}
  run_simulation(server_app=server_app, client_app=flower_peer.client_app,
                 num_supernodes=data["num_clients"], backend_config=backend_config)
  if "result" not in out:
    raise RuntimeError("simulation ended without a result")
  strategy: TimedFedAvg = out["strategy"]
  res = {"workload": data["workload"], "clients_per_round": cpr,
         "startup_sec": out["ready"] - t,
         "layers": layers_of(out["result"].arrays.to_torch_state_dict())}
  if strategy.times:
    times = strategy.times
    res.update(first_round_sec=strategy.first, sec_per_round_median=statistics.median(times),
               sec_per_round_min=min(times), sec_per_round_max=max(times),
               rounds_timed=len(times))
  res["versions"] = {"flwr": flwr.__version__, "torch": torch.__version__,
                     "ray": importlib.metadata.version("ray")}
  res["client_cpus"] = client_cpus
  return res


def main(argv=None) -> int:
  args = protocol.parse_args(__doc__, argv, extra=lambda p: p.add_argument(
      "--client-cpus", type=float, default=1.0,
      help="Ray client_resources num_cpus per ClientApp (Flower's default: 2)"))

  def run() -> dict[str, Any]:
    head = {"peer": "flower", "version": flwr.__version__, "follows": FOLLOWS}
    if args.check:
      data = protocol.load(args.data)
      res = simulate(args.data, clients_per_round=data["num_clients"], rounds=data["rounds"],
                     warmup=0, budget_sec=float("inf"), seed=args.seed, emit=False,
                     client_cpus=args.client_cpus)
      protocol.save_params(args.check, res["layers"])
      row = {**head, "workload": res["workload"], "check": args.check,
             "rounds": data["rounds"], "clients_per_round": res["clients_per_round"]}
      return row
    res = simulate(args.data, clients_per_round=None, rounds=args.rounds, warmup=args.warmup,
                   budget_sec=args.budget_sec, seed=args.seed, emit=True,
                   client_cpus=args.client_cpus)
    keys = ("workload", "clients_per_round", "first_round_sec", "sec_per_round_median",
            "sec_per_round_min", "sec_per_round_max", "rounds_timed", "startup_sec")
    return {**head, **{k: res[k] for k in keys}, "versions": res["versions"],
            "client_cpus": res["client_cpus"]}

  return protocol.main_guard(run)


if __name__ == "__main__":
  raise SystemExit(main())
