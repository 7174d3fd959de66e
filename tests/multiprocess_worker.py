"""One process of a real multi-process run (started by tests/test_multiprocess.py).

``python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT`` joins a
``jax.distributed`` run on 127.0.0.1:PORT with two CPU devices per process,
trains the :func:`setup` experiment on a mesh over all processes' devices and,
in process 0, saves the final parameters and round metrics to ``OUT`` (.npz).
"""

from __future__ import annotations

import os
import sys

ROUNDS = 3


def setup():
  """The shared experiment: population, params, and an algorithm builder (mesh -> algorithm)."""
  import optax

  import fedjax_lite as fl
  from tests.conftest import MODELS, make_clients

  params, loss = MODELS["mlp"]()
  population = fl.from_clients(make_clients((5, 0, 13, 1, 8, 21, 3, 7, 2, 9, 4)))
  update = fl.build_client_update(loss, optax.sgd(0.1), num_epochs=2, batch_size=4)

  def build(mesh):
    agg = fl.privacy.gaussian_aggregator(0.5, 1.0, expected_cohort_size=6)
    return fl.build_federated_algorithm(update, fl.server.fedadam(0.05, tau=1e-2),
                                        aggregator=agg, mesh=mesh, chunk_size=2)

  return population, params, build


def run(algo, population, params):
  import jax

  import fedjax_lite as fl
  return fl.run_rounds(algo, algo.init(params), population, num_rounds=ROUNDS,
                       key=jax.random.key(11), cohort_size=6, progress=False)


def main(argv):
  process_id, num_processes, port, out = int(argv[0]), int(argv[1]), int(argv[2]), argv[3]
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax
  import numpy as np

  import fedjax_lite as fl
  fl.initialize_distributed(f"127.0.0.1:{port}", num_processes, process_id,
                            initialization_timeout=60)
  assert jax.process_count() == num_processes and jax.device_count() == 2 * num_processes
  population, params, build = setup()
  mesh = fl.client_mesh()
  state, history = run(build(mesh), fl.shard_clients(population, mesh), params)
  leaves = [np.asarray(x) for x in jax.tree.leaves(state.params)]
  if process_id == 0:
    np.savez(out, *leaves, train_loss=np.array([h["train_loss"] for h in history]),
             num_examples=np.array([h["num_examples"] for h in history]))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv[1:])
