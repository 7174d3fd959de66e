"""The W1 and W2 workload files every peer reads, and fedjax_lite's reference for the check.

Runs in fedjax_lite's environment: the data and initial weights come from the
same builders as ``benchmarks/w1.py`` and ``benchmarks/w2.py`` (seeded), so
every implementation trains the same model on the same clients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import fedjax_lite as fl

# name -> (population, examples, features, hidden layers, epochs, batch, lr)
SPECS = {
    "w1": dict(population=1000, examples=64, features=784, hidden=(200, 200), epochs=1,
               batch_size=16, lr=0.1),
    "w2": dict(population=10_000, examples=32, features=60, hidden=(), epochs=5, batch_size=8,
               lr=0.05),
}
CHECK_CLIENTS = 16
CHECK_ROUNDS = 2
CHECK_EPOCHS = 2


def population(workload: str, num_clients: int) -> fl.FederatedData:
  """The workload's first ``num_clients`` clients (W1: synthetic; W2: LEAF Synthetic(1, 1))."""
  s = SPECS[workload]
  if workload == "w1":
    return fl.datasets.synthetic_classification(num_clients, s["examples"],
                                                num_features=s["features"], num_classes=10, seed=0)
  return fl.datasets.leaf_synthetic(num_clients, 1.0, 1.0, examples_per_client=s["examples"],
                                    test_fraction=0.0, seed=0).train


def model(workload: str):
  """The flax model and its initial parameters (seed 0)."""
  s = SPECS[workload]
  m = fl.models.MLP(s["hidden"], 10) if s["hidden"] else fl.models.LogisticRegression(10)
  return m, m.init(jax.random.key(0), jnp.zeros((1, s["features"])))


def layers_of(params) -> list[tuple[np.ndarray, np.ndarray]]:
  """A flax dense stack's ``(kernel, bias)`` pairs, in order."""
  p = params["params"]
  return [(np.asarray(p[f"Dense_{i}"]["kernel"]), np.asarray(p[f"Dense_{i}"]["bias"]))
          for i in range(len(p))]


def write(path: Path, workload: str, clients_per_round: int, *, check: bool = False,
          num_clients: int | None = None) -> dict[str, Any]:
  """Writes a workload file (see :mod:`benchmarks.peers.protocol`) and returns its settings.

  With ``check``: the first :data:`CHECK_CLIENTS` clients, all in every round,
  full-batch local steps (so the order a peer visits examples in cannot
  matter) for :data:`CHECK_EPOCHS` epochs, :data:`CHECK_ROUNDS` rounds.
  """
  s = dict(SPECS[workload])
  if check:
    num_clients = clients_per_round = CHECK_CLIENTS
    s.update(epochs=CHECK_EPOCHS, batch_size=s["examples"])
  pop = population(workload, num_clients or s["population"])
  _, params = model(workload)
  arrays = {"x": np.asarray(pop.arrays["x"], np.float32),
            "y": np.asarray(pop.arrays["y"], np.int64)}
  for i, (k, b) in enumerate(layers_of(params)):
    arrays[f"kernel_{i}"], arrays[f"bias_{i}"] = k, b
  settings = dict(workload=workload, clients_per_round=clients_per_round, epochs=s["epochs"],
                  batch_size=s["batch_size"], lr=s["lr"], server_lr=1.0, rounds=CHECK_ROUNDS)
  np.savez(path, **arrays, **{k: np.asarray(v) for k, v in settings.items()})
  return settings


def reference(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
  """fedjax_lite's parameters after a check file's rounds (every client in every round)."""
  import optax

  from benchmarks.peers import protocol
  data = protocol.load(str(path))
  m, params = model(data["workload"])
  loss = fl.models.classification_loss(m.apply)
  update = fl.build_client_update(loss, optax.sgd(data["lr"]), num_epochs=data["epochs"],
                                  batch_size=data["batch_size"])
  algo = fl.build_federated_algorithm(update, fl.server.fedavg(data["server_lr"]))
  n = data["num_clients"]
  cohort = fl.data.from_arrays({"x": data["x"], "y": data["y"].astype(np.int32)},
                               np.full(n, data["examples"]))
  state = algo.init(params)
  for r in range(data["rounds"]):
    state, _ = algo.round(state, cohort, jax.random.key(r))
  return layers_of(state.params)
