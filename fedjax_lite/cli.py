"""The ``fedjax-lite`` command line.

``fedjax-lite run`` trains a federated model and prints per-round metrics
(until the real-data main job lands it uses the seeded synthetic population).
``fedjax-lite bench`` runs the benchmarks in ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SERVERS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
MODELS = ("linear", "mlp")


def _run_parser(sub) -> argparse.ArgumentParser:
  p = sub.add_parser("run", help="train a federated model and print per-round metrics",
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--rounds", type=int, default=50)
  p.add_argument("--num-clients", type=int, default=500, help="population size")
  p.add_argument("--clients-per-round", type=int, default=50)
  p.add_argument("--mean-examples", type=int, default=32,
                 help="mean examples per client; sizes are log-normal (ragged), some clients empty")
  p.add_argument("--features", type=int, default=60)
  p.add_argument("--classes", type=int, default=10)
  p.add_argument("--model", choices=MODELS, default="linear")
  p.add_argument("--server", choices=SERVERS, default="fedavg", help="server optimizer")
  p.add_argument("--server-lr", type=float, default=None,
                 help="server learning rate (default: the preset's)")
  p.add_argument("--client-lr", type=float, default=0.05)
  p.add_argument("--epochs", type=int, default=2, help="local epochs")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--chunk-size", type=int, default=256, help="clients per vmapped chunk")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--output", type=Path, default=None,
                 help="directory for history.json and summary.json")
  p.add_argument("--json", action="store_true", help="print one JSON line per round")
  return p


def client_sizes(num_clients: int, mean: int, seed: int) -> np.ndarray:
  """Ragged log-normal client sizes with mean about ``mean``; about 2% are empty."""
  rng = np.random.default_rng(seed + 1)
  sizes = rng.lognormal(mean=np.log(max(mean, 1)) - 0.5, sigma=1.0, size=num_clients)
  sizes = np.minimum(np.round(sizes), 20 * mean).astype(np.int64)
  sizes[rng.random(num_clients) < 0.02] = 0
  return sizes


def cmd_run(args) -> int:
  import jax
  import jax.numpy as jnp
  import optax

  import fedjax_lite as fl

  sizes = client_sizes(args.num_clients, args.mean_examples, args.seed)
  population = fl.datasets.synthetic_classification(
      args.num_clients, sizes, num_features=args.features, num_classes=args.classes,
      seed=args.seed)
  if args.model == "linear":
    model = fl.models.LogisticRegression(args.classes)
  else:
    model = fl.models.MLP((200, 200), args.classes)
  params = model.init(jax.random.key(args.seed), jnp.zeros((1, args.features)))
  loss = fl.models.classification_loss(model.apply)
  update = fl.build_client_update(loss, optax.sgd(args.client_lr), num_epochs=args.epochs,
                                  batch_size=args.batch_size)
  server_kwargs = {} if args.server_lr is None else {"learning_rate": args.server_lr}
  algo = fl.build_federated_algorithm(update, fl.server.server_optimizer(args.server,
                                                                         **server_kwargs),
                                      chunk_size=args.chunk_size)

  @jax.jit
  def evaluate(params, data):
    """Example-weighted accuracy over every client's (padded) data."""
    logits = jax.vmap(lambda x: model.apply(params, x))(data.arrays["x"])
    correct = (jnp.argmax(logits, -1) == data.arrays["y"]) & data.mask()
    return jnp.sum(correct) / jnp.maximum(jnp.sum(data.num_examples), 1)

  print(f"fedjax-lite run: {args.num_clients} clients ({int(sizes.sum())} examples, "
        f"{int((sizes == 0).sum())} empty), {args.clients_per_round} per round, "
        f"{args.model} model, {args.server} server, {args.rounds} rounds, seed {args.seed}",
        file=sys.stderr)
  start = time.perf_counter()
  acc0 = float(evaluate(params, population))

  def log(r, state, row):
    if args.json:
      print(json.dumps(row), flush=True)
    elif not sys.stderr.isatty():
      print(f"round {r:4d}  train_loss {row['train_loss']:.4f}  clients {int(row['num_clients'])}"
            f"  examples {int(row['num_examples'])}  {row['seconds'] * 1e3:.1f} ms", flush=True)

  state, history = fl.run_rounds(algo, algo.init(params), population, num_rounds=args.rounds,
                                 cohort_size=args.clients_per_round,
                                 key=jax.random.key(args.seed), callback=log)
  acc = float(evaluate(state.params, population))
  steady = [h["seconds"] for h in history[1:]] or [history[0]["seconds"]]
  summary = {
      "rounds": args.rounds,
      "final_train_loss": history[-1]["train_loss"] if history else None,
      "initial_accuracy": acc0,
      "final_accuracy": acc,
      "median_round_seconds": float(np.median(steady)),
      "first_round_seconds_with_compile": history[0]["seconds"] if history else None,
      "total_seconds": time.perf_counter() - start,
  }
  print(json.dumps({"summary": summary}))
  if args.output is not None:
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "history.json").write_text(json.dumps(history, indent=1))
    (args.output / "summary.json").write_text(json.dumps(summary, indent=1))
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="fedjax-lite", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  _run_parser(sub)
  sub.add_parser("bench", help="run benchmarks (see `fedjax-lite bench --help`)", add_help=False)
  args, rest = parser.parse_known_args(argv)
  if args.command == "bench":
    from benchmarks.__main__ import main as bench_main
    return bench_main(rest)
  if rest:
    parser.error(f"unrecognized arguments: {' '.join(rest)}")
  return cmd_run(args)


if __name__ == "__main__":
  raise SystemExit(main())
