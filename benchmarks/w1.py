"""W1: the "2NN" FedAvg workload, compute-bound.

1000 synthetic clients of 64 examples (784 float32 features, 10 classes, a
random linear teacher per client plus noise), the 784-200-200-10 ReLU MLP of
McMahan et al. (2017), 100 clients per round, 1 local epoch of batch 16 (4
SGD steps at lr 0.1), FedAvg. Same implementations, baselines and results
check as W2 (see ``benchmarks/w2.py``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

import fedjax_lite as fl
from benchmarks import w2

W1_DEFAULTS = dict(population=1000, clients_per_round=100, examples=64, epochs=1,
                   batch_size=16, lr=0.1, chunk_size="auto")


def build(args) -> dict[str, Any]:
  population = fl.datasets.synthetic_classification(
      args.population, args.examples, num_features=784, num_classes=10, seed=0)
  model = fl.models.MLP((200, 200), 10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 784)))
  loss = fl.models.classification_loss(model.apply)
  update = fl.build_client_update(loss, optax.sgd(args.lr), num_epochs=args.epochs,
                                  batch_size=args.batch_size)
  return dict(population=population, params=params, loss=loss, update=update)


def main(argv=None) -> int:
  args = w2.parse(argv, W1_DEFAULTS, __doc__,
                  quick=dict(population=100, clients_per_round=10, rounds=3, warmup=1))
  w2.compare("w1", build(args), args)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
