"""FedJAX 0.0.17 peer: the workload's FedAvg rounds with ``fedjax.algorithms.fed_avg``.

Follows FedJAX's own recipe from the "Federated Learning Algorithms" tutorial
(``docs/notebooks/algorithms_tutorial.ipynb``) and ``examples/emnist_fed_avg.py``
at FedJAX 0.0.17: a ``fedjax.InMemoryFederatedData``, a haiku model built like
``fedjax.models.emnist.create_dense_model`` through
``fedjax.create_model_from_haiku`` (softmax cross-entropy via
``fedjax.metrics.unreduced_cross_entropy_loss``), ``fedjax.model_grad``,
``fed_avg.federated_averaging`` with ``fedjax.optimizers.sgd`` on client and
server and ``fedjax.ShuffleRepeatBatchHParams(batch_size, num_epochs)``, a
``fedjax.client_samplers.UniformGetClientSampler`` per round and
``algorithm.apply(state, clients)``, on FedJAX's default (jit)
``for_each_client`` backend.

Run from the repository root in the FedJAX environment::

  python -m benchmarks.peers.fedjax_peer --data FILE [--warmup W] [--rounds R]
      [--budget-sec B] [--check OUT.npz]
"""

from __future__ import annotations

from importlib import metadata

import fedjax
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from fedjax.algorithms import fed_avg

from benchmarks.peers import protocol

FOLLOWS = ("FedJAX 0.0.17 'Federated Learning Algorithms' tutorial "
           "(docs/notebooks/algorithms_tutorial.ipynb) + examples/emnist_fed_avg.py")


def federated_data(data) -> fedjax.InMemoryFederatedData:
  """The workload's clients as in-memory federated data (client ids are bytes, as in FedJAX)."""
  x, y = data["x"], data["y"].astype(np.int32)
  return fedjax.InMemoryFederatedData(
      {f"{i:06d}".encode(): {"x": x[i], "y": y[i]} for i in range(x.shape[0])})


def create_model(layers) -> fedjax.Model:
  """A haiku dense stack (ReLU between layers) with softmax cross-entropy, as a fedjax.Model."""
  sizes = [kernel.shape[1] for kernel, _ in layers]

  def forward_pass(batch):
    h = batch["x"]
    for i, size in enumerate(sizes):
      if i:
        h = jax.nn.relu(h)
      h = hk.Linear(size, name=f"dense_{i}")(h)
    return h

  sample_batch = {"x": np.zeros((1, layers[0][0].shape[0]), np.float32),
                  "y": np.zeros((1,), np.int32)}
  return fedjax.create_model_from_haiku(
      transformed_forward_pass=hk.transform(forward_pass),
      sample_batch=sample_batch,
      train_loss=lambda b, p: fedjax.metrics.unreduced_cross_entropy_loss(b["y"], p),
      eval_metrics={"loss": fedjax.metrics.CrossEntropyLoss(),
                    "accuracy": fedjax.metrics.Accuracy()})


def to_haiku(model: fedjax.Model, layers) -> hk.Params:
  """The file's ``(kernel, bias)`` layers as the model's haiku params tree (shapes checked)."""
  params = {f"dense_{i}": {"w": jnp.asarray(kernel), "b": jnp.asarray(bias)}
            for i, (kernel, bias) in enumerate(layers)}
  expect = jax.tree_util.tree_map(lambda a: a.shape, model.init(jax.random.PRNGKey(0)))
  got = jax.tree_util.tree_map(lambda a: a.shape, params)
  if expect != got:
    raise ValueError(f"params tree {got} does not match the model's {expect}")
  return params


def from_haiku(params: hk.Params, num_layers: int):
  """The haiku params tree as the file's ``(kernel, bias)`` layers."""
  return [(np.asarray(params[f"dense_{i}"]["w"]), np.asarray(params[f"dense_{i}"]["b"]))
          for i in range(num_layers)]


def main() -> dict:
  """Times the workload's rounds, or with ``--check`` runs every client for the file's rounds."""
  args = protocol.parse_args(__doc__)
  data = protocol.load(args.data)
  layers = data["layers"]
  check = args.check is not None
  per_round = data["num_clients"] if check else data["clients_per_round"]

  train_fd = federated_data(data)
  model = create_model(layers)
  algorithm = fed_avg.federated_averaging(
      fedjax.model_grad(model),
      fedjax.optimizers.sgd(learning_rate=data["lr"]),
      fedjax.optimizers.sgd(learning_rate=data["server_lr"]),
      fedjax.ShuffleRepeatBatchHParams(batch_size=data["batch_size"], num_epochs=data["epochs"]))
  sampler = fedjax.client_samplers.UniformGetClientSampler(
      train_fd, num_clients=per_round, seed=args.seed)
  state = algorithm.init(to_haiku(model, layers))

  def run_round(r: int):
    """One FedJAX round: sample the cohort, ``algorithm.apply``; returns the server params."""
    nonlocal state
    sampler.set_round_num(r)
    state, _ = algorithm.apply(state, sampler.sample())
    return state.params

  row = {"peer": "fedjax",
         "version": ", ".join(f"{p} {metadata.version(p)}"
                               for p in ("fedjax", "jax", "jaxlib", "dm-haiku")),
         "follows": FOLLOWS, "workload": data["workload"], "clients_per_round": per_round,
         "backend": type(fedjax.get_for_each_client_backend()).__name__,
         "device": str(jax.devices()[0])}
  if check:
    for r in range(data["rounds"]):
      jax.block_until_ready(run_round(r))
    protocol.save_params(args.check, from_haiku(state.params, len(layers)))
    return {**row, "check": args.check, "rounds": data["rounds"]}
  stats = protocol.timed_rounds(run_round, warmup=args.warmup, rounds=args.rounds,
                                budget_sec=args.budget_sec, sync=jax.block_until_ready)
  return {**row, **stats}


if __name__ == "__main__":
  raise SystemExit(protocol.main_guard(main))
