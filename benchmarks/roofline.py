"""The CPU roofline of a round: its matrix products alone, at the round's own shapes.

A dense model's local training is, per client and step, the forward products
``x @ W`` of every layer and the backward ones ``x^T @ g`` (the weight
gradient) and ``g @ W^T`` (the input gradient, not needed at the first layer).
:func:`gemm_seconds` times exactly those products for a chunk of clients with
their own weights (vmapped, as the round runs them), for all the chunks and
local steps of a round, with nothing else: no loss, activation, shuffle,
gather, mask or reduction. The round's time over that time is how close it
runs to the bound its matrix products set on this machine.

``python -m benchmarks.roofline`` prints, for W1 at 100 and 1,000 clients per
round, the round's median seconds, the products' seconds and the fraction.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def dense_layers(params: Any) -> list[tuple[int, int]]:
  """``(in, out)`` of every dense kernel of ``params``, in order (2-D leaves named kernel)."""
  shapes = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if np.ndim(leaf) == 2 and "kernel" in jax.tree_util.keystr(path):
      shapes.append(tuple(np.shape(leaf)))
  return shapes


def gemm_flops(layers: list[tuple[int, int]], batch: int) -> int:
  """FLOPs of one client's local step: forward, weight and (past the first layer) input grads."""
  total = 0
  for i, (n_in, n_out) in enumerate(layers):
    products = 3 if i > 0 else 2
    total += products * 2 * batch * n_in * n_out
  return total


def gemm_seconds(layers: list[tuple[int, int]], *, clients: int, chunk: int, batch: int,
                 steps: int, repeats: int = 5) -> float:
  """Best seconds of a round's matrix products alone: ``ceil(clients / chunk)`` chunks.

  Each chunk holds ``chunk`` clients' own weights; each of ``steps`` local steps
  runs every layer's forward product, weight-gradient product and (past the
  first layer) input-gradient product, and updates the weights (so no step can
  be hoisted out of the loop).
  """
  key = jax.random.key(0)
  weights = [jax.random.normal(jax.random.fold_in(key, i), (chunk, n_in, n_out)) * 0.01
             for i, (n_in, n_out) in enumerate(layers)]
  x = jax.random.normal(key, (chunk, steps, batch, layers[0][0]))

  def one_step(ws, xb):
    acts = [xb]
    for w in ws:
      acts.append(jnp.einsum("cbi,cio->cbo", acts[-1], w))
    g = acts[-1]
    new = [None] * len(ws)
    for i in range(len(ws) - 1, -1, -1):
      new[i] = ws[i] - 1e-6 * jnp.einsum("cbi,cbo->cio", acts[i], g)
      if i > 0:
        g = jnp.einsum("cbo,cio->cbi", g, ws[i])
    return new, None

  @jax.jit
  def chunk_steps(ws, x):
    ws, _ = jax.lax.scan(one_step, ws, jnp.swapaxes(x, 0, 1))
    return sum(jnp.sum(w) for w in ws)

  jax.block_until_ready(chunk_steps(weights, x))
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(chunk_steps(weights, x))
    best = min(best, time.perf_counter() - t)
  return best * math.ceil(clients / chunk)


def main(argv=None) -> int:
  import fedjax_lite as fl
  from benchmarks import common, w1, w2

  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args(argv)
  peak = common.matmul_peak_gflops()
  for clients in args.clients:
    wargs = argparse.Namespace(**{**w1.W1_DEFAULTS, "clients_per_round": clients,
                                  "population": max(1000, clients)}, seed=0, devices=None)
    setup = w1.build(wargs)
    chunk = min(fl.hardware.auto_chunk_size(setup["params"], setup["population"]), clients)
    layers = dense_layers(setup["params"])
    steps = math.ceil(wargs.examples / wargs.batch_size) * wargs.epochs
    run = common.round_runner(*w2.vectorized_impl(setup, wargs, "auto"), setup["params"])
    round_sec = common.time_rounds(run, warmup=2, rounds=args.rounds)["sec_per_round_median"]
    bound = gemm_seconds(layers, clients=clients, chunk=chunk, batch=wargs.batch_size,
                         steps=steps)
    flops = gemm_flops(layers, wargs.batch_size) * steps * clients
    common.emit({"benchmark": "roofline", "workload": "w1", "clients_per_round": clients,
                 "chunk_size": chunk, "round_sec": round_sec, "gemm_sec": bound,
                 "fraction_of_gemm_bound": bound / round_sec,
                 "round_gemm_gflops": flops / round_sec / 1e9,
                 "gemm_gflops": flops / bound / 1e9, "matmul_peak_gflops": peak})
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
