"""fedjax_lite's round on a peer workload file, the way its README and ``benchmarks/w1.py`` run it.

``build_client_update`` + ``build_federated_algorithm(chunk_size="auto")`` and
one jitted step that samples the cohort on the device and runs the round.
After the timed rounds, the round's roofline in the same process: its matrix
products alone (:func:`benchmarks.roofline.round_bound`), as ``gemm_sec``.
Run as ``python -m benchmarks.peers.fedjax_lite_peer --data FILE`` in
fedjax_lite's own environment.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import optax

import fedjax_lite as fl
from benchmarks import roofline
from benchmarks.peers import protocol, workloads


def main(argv=None) -> int:
  args = protocol.parse_args(__doc__, argv)
  data = protocol.load(args.data)
  m, params = workloads.model(data["workload"])
  loss = fl.models.classification_loss(m.apply)
  update = fl.build_client_update(loss, optax.sgd(data["lr"]), num_epochs=data["epochs"],
                                  batch_size=data["batch_size"])
  algo = fl.build_federated_algorithm(update, fl.server.fedavg(data["server_lr"]),
                                      chunk_size="auto")
  n = data["num_clients"]
  population = jax.device_put(fl.data.from_arrays(
      {"x": data["x"], "y": data["y"].astype(np.int32)}, np.full(n, data["examples"])))
  info = dict(peer="fedjax_lite", version=f"fedjax_lite {fl.__version__}, jax {jax.__version__}",
              workload=data["workload"], clients_per_round=data["clients_per_round"],
              follows="README quick start; chunk_size='auto'")

  def run():
    state = algo.init(params)
    if args.check:
      for r in range(data["rounds"]):
        state, _ = algo.round(state, population, jax.random.key(r))
      protocol.save_params(args.check, workloads.layers_of(state.params))
      return info

    @jax.jit
    def step(state, population, r):
      sample_key, round_key = fl.round_keys(jax.random.key(args.seed), r)
      cohort = fl.take(population, fl.sample_clients(sample_key, n, data["clients_per_round"]))
      return algo.round(state, cohort, round_key)[0]

    holder = [state]

    def run_round(r):
      holder[0] = step(holder[0], population, np.int32(r))
      return holder[0]

    stats = protocol.timed_rounds(run_round, warmup=args.warmup, rounds=args.rounds,
                                  budget_sec=args.budget_sec, sync=jax.block_until_ready)
    chunk = min(fl.hardware.auto_chunk_size(params, population), data["clients_per_round"])
    bound = roofline.round_bound(
        params, clients=data["clients_per_round"], chunk=chunk, batch=data["batch_size"],
        steps=math.ceil(data["examples"] / data["batch_size"]) * data["epochs"])
    return {**info, **stats, "chunk_size": chunk, "grad_mode": bound["grad_mode"],
            "gemm_sec": bound["gemm_sec"]}

  return protocol.main_guard(run)


if __name__ == "__main__":
  raise SystemExit(main())
