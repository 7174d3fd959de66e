"""W2: many small clients, dispatch-bound.

LEAF Synthetic(1, 1) (Li et al. 2020) with 32 examples per client, logistic
regression 60->10, 1000 of 10,000 clients per round, 5 local epochs of batch
8 at lr 0.05, FedAvg.

Compares, in one run and on the same cohorts and keys:

* ``loop``: a Python loop over clients, each calling a jitted per-client update
  on that client's host-resident arrays (the design of earlier JAX FL
  toolkits), then a jitted weighted sum and server step. This is the baseline.
* ``loop_device``: the same loop with every client's arrays placed on the
  device beforehand (a stronger baseline: no per-call transfer).
* ``vmap_all``: the vectorized round with the whole cohort in one vmap.
* ``vmap_chunked``: the vectorized round in chunks (``--chunk-size``, by default
  ``auto``: :func:`fedjax_lite.hardware.auto_chunk_size`).

They are timed round-robin; after timing, a results check runs the same
rounds through every implementation and asserts the parameters agree (1e-5).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fedjax_lite as fl
from benchmarks import common, roofline
from fedjax_lite.experiment.schema import int_or_word_arg


def build(args) -> dict[str, Any]:
  """LEAF Synthetic(1, 1) clients of ``args.examples`` examples, logistic regression 60->10."""
  population = fl.datasets.leaf_synthetic(args.population, 1.0, 1.0,
                                          examples_per_client=args.examples, test_fraction=0.0,
                                          seed=0).train
  model = fl.models.LogisticRegression(10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 60)))
  loss = fl.models.classification_loss(model.apply)
  update = fl.build_client_update(loss, optax.sgd(args.lr), num_epochs=args.epochs,
                                  batch_size=args.batch_size)
  return dict(population=population, params=params, loss=loss, update=update)


def vectorized_impl(setup, args, chunk_size, aggregator=None):
  devices = getattr(args, "devices", None)
  mesh = None if devices is None else fl.client_mesh(devices)
  algo = fl.build_federated_algorithm(setup["update"], fl.server.fedavg(), chunk_size=chunk_size,
                                      aggregator=aggregator, mesh=mesh)
  if mesh is None:
    population = jax.device_put(setup["population"])
  else:  # each device holds its share of the clients
    population = fl.shard_clients(setup["population"], mesh)
  n = fl.num_real_clients(population)

  @jax.jit
  def step(state, population, r):
    sample_key, round_key = fl.round_keys(jax.random.key(args.seed), r)
    cohort = fl.take(population, fl.sample_clients(sample_key, n, args.clients_per_round))
    return algo.round(state, cohort, round_key)[0]

  return lambda state, r: step(state, population, np.int32(r)), algo.init


def loop_impl(setup, args, on_device):
  """Baseline: one jitted call per client, accumulated on device.

  With ``on_device=False`` each client's arrays are host NumPy arrays handed
  to the jitted update every round, as in toolkits that keep per-client
  datasets in host memory; with ``on_device=True`` they were placed on the
  device once beforehand (a stronger baseline).
  """
  population = setup["population"]
  clients = [jax.tree.map(lambda x, i=i: np.array(x[i]), population)
             for i in range(population.num_clients)]
  if on_device:
    clients = [jax.device_put(c) for c in clients]
  return client_loop(setup["update"], clients.__getitem__, population.num_clients,
                     args.clients_per_round, args.seed)


def client_loop(update, client_at, num_clients: int, clients_per_round: int, seed: int):
  """A Python loop over the round's clients: ``(step, init)`` of plain FedAvg.

  Cohorts and keys are the vectorized round's (``fl.round_keys``,
  ``fl.sample_clients``); ``client_at(i)`` returns client ``i``'s data, and
  each client is one call of the jitted ``update``.
  """
  update = jax.jit(update)
  server = fl.server.fedavg()

  @jax.jit
  def accumulate(total, total_weight, delta, weight):
    return jax.tree.map(lambda t, d: t + weight * d, total, delta), total_weight + weight

  @jax.jit
  def server_step(state, total, total_weight):
    params, opt_state = state
    mean = jax.tree.map(lambda t: t / jnp.maximum(total_weight, 1e-30), total)
    updates, opt_state = server.update(jax.tree.map(jnp.negative, mean), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  sample = jax.jit(lambda r: fl.sample_clients(
      fl.round_keys(jax.random.key(seed), r)[0], num_clients, clients_per_round))

  def step(state, r):
    _, round_key = fl.round_keys(jax.random.key(seed), r)
    client_key, _ = jax.random.split(round_key)
    params = state[0]
    total = jax.tree.map(jnp.zeros_like, params)
    total_weight = jnp.zeros((), jnp.float32)
    for i in np.asarray(sample(np.int32(r))):
      out = update(params, client_at(i), client_key)
      total, total_weight = accumulate(total, total_weight, out.delta, out.weight)
    return server_step(state, total, total_weight)

  return step, lambda params: (params, server.init(params))


def params_of(state):
  return state.params if hasattr(state, "params") else state[0]


W2_DEFAULTS = dict(population=10_000, clients_per_round=1000, examples=32, epochs=5,
                   batch_size=8, lr=0.05, chunk_size="auto")


# ``--chunk-size``: a positive int or ``auto`` (:func:`fedjax_lite.hardware.auto_chunk_size`).
chunk_size_arg = int_or_word_arg("auto", "--chunk-size")


def parse(argv, defaults: dict, doc: str, quick: dict) -> argparse.Namespace:
  """Command-line options of a round-comparison workload (``quick`` overrides --quick)."""
  p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
  for name, value in defaults.items():
    p.add_argument("--" + name.replace("_", "-"), default=value,
                   type=chunk_size_arg if name == "chunk_size" else type(value))
  p.add_argument("--rounds", type=int, default=10, help="timed rounds per implementation")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
  p.add_argument("--devices", type=int, default=None,
                 help="shard the vectorized round's clients over this many devices (use "
                 "`python -m benchmarks --devices N`, which also forces N CPU devices)")
  args = p.parse_args(argv)
  if args.quick:
    for name, value in quick.items():
      setattr(args, name, min(getattr(args, name), value))
  return args


def compare(workload: str, setup: dict[str, Any], args) -> None:
  """Times the loop baselines and the vectorized round, then checks they agree.

  All four are timed round-robin (one round of each in turn) so the shared
  machine's drift hits them alike; ``speedup_vs_baseline`` is relative to
  ``loop``. On one device, ``vmap_chunked``'s row also carries the round's
  roofline (:func:`benchmarks.roofline.round_bound`, measured in the same run):
  its matrix products' seconds alone and their fraction of the round's. The
  results check runs two rounds through every implementation and asserts
  equal parameters (1e-5).
  """
  impls = {
      "loop": loop_impl(setup, args, on_device=False),
      "loop_device": loop_impl(setup, args, on_device=True),
      "vmap_all": vectorized_impl(setup, args, None),
      "vmap_chunked": vectorized_impl(setup, args, args.chunk_size),
  }
  batch = jax.tree.map(lambda x: x[0, : args.batch_size], setup["population"].arrays)
  per_example_loss = lambda p, b: setup["loss"](p, b) * next(iter(b.values())).shape[0]
  flops_example = common.flops_per_example_step(per_example_loss, setup["params"], batch)
  steps_per_epoch = math.ceil(args.examples / args.batch_size)
  flops_round = (flops_example * args.batch_size * steps_per_epoch * args.epochs
                 * args.clients_per_round)
  peak = common.matmul_peak_gflops()
  chunk = args.chunk_size
  if chunk == "auto":
    chunk = fl.hardware.auto_chunk_size(setup["params"], setup["population"])
  chunk = min(chunk, math.ceil(args.clients_per_round / (args.devices or 1)))  # per device

  runners = {name: common.round_runner(step, init, setup["params"])
             for name, (step, init) in impls.items()}
  timings = common.time_interleaved(runners, warmup=args.warmup, rounds=args.rounds)
  # The roofline: the chunked round's matrix products alone, in the same run (one device).
  bound = None
  if (args.devices or 1) == 1:
    bound = roofline.round_bound(setup["params"], clients=args.clients_per_round, chunk=chunk,
                                 batch=args.batch_size, steps=steps_per_epoch * args.epochs)
  for name, stats in timings.items():
    common.emit({
        "workload": workload, "impl": name, "clients_per_round": args.clients_per_round,
        "chunk_size": chunk if name == "vmap_chunked" else None,
        "devices": (args.devices or 1) if name.startswith("vmap") else 1,
        **stats,
        "achieved_gflops": flops_round / stats["sec_per_round_median"] / 1e9,
        "peak_gflops": peak,
        "peak_rss_mib": common.peak_rss_mib(),
        "speedup_vs_baseline": (timings["loop"]["sec_per_round_median"]
                                / stats["sec_per_round_median"]),
        "speedup_vs_loop_device": (timings["loop_device"]["sec_per_round_median"]
                                   / stats["sec_per_round_median"]),
        **({"gemm_bound_sec": bound["gemm_sec"], "grad_mode": bound["grad_mode"],
            "fraction_of_gemm_bound": bound["gemm_sec"] / stats["sec_per_round_median"]}
           if name == "vmap_chunked" and bound else {}),
    })

  finals = {}
  for name, (step, init) in impls.items():
    state = init(setup["params"])
    for r in range(2):
      state = step(state, r)
    finals[name] = jax.device_get(params_of(state))
  for name, final in finals.items():
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(finals["loop"]), strict=True):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=f"{name} != loop")
  common.emit({"workload": workload, "check": "params_match_loop", "impls": sorted(finals),
               "rounds": 2, "atol": 1e-5, "ok": True})


def main(argv=None) -> int:
  args = parse(argv, W2_DEFAULTS, __doc__,
               quick=dict(population=500, clients_per_round=100, rounds=3, warmup=1))
  compare("w2", build(args), args)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
