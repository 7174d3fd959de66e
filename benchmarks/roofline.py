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
round, the round's median seconds, the products' seconds and the fraction;
``--workload w2 --clients 1000`` the same for W2 (one 60x10 product per step
and direction, batch 8: the tiny batched products that bound it).
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


def products_step(ws: list[Any], xb: Any, wgrad: str = "dot", lr: float = 1e-6) -> list[Any]:
  """One local step's products for a chunk of clients, each with its own weights.

  ``ws[i]`` is ``[chunk, in, out]`` and ``xb`` ``[chunk, batch, in]``. The
  forward products, then from the last layer down the weight gradient (the
  output itself standing in for the loss's cotangent) and, past the first
  layer, the input gradient; returns ``ws[i] - lr * weight_gradient``.
  """
  acts = [xb]
  for w in ws:
    acts.append(jnp.einsum("cbi,cio->cbo", acts[-1], w))
  g = acts[-1]
  new = [None] * len(ws)
  for i in range(len(ws) - 1, -1, -1):
    if wgrad == "dot":
      grad = jnp.einsum("cbi,cbo->cio", acts[i], g)
    else:
      grad = jnp.sum(acts[i][:, :, :, None] * g[:, :, None, :], axis=1)
    new[i] = ws[i] - lr * grad
    if i > 0:
      g = jnp.einsum("cbo,cio->cbi", g, ws[i])
  return new


def gemm_seconds(layers: list[tuple[int, int]], *, clients: int, chunk: int, batch: int,
                 steps: int, repeats: int = 5, wgrad: str = "dot") -> float:
  """Best seconds of a round's matrix products alone: ``ceil(clients / chunk)`` chunks.

  Each chunk holds ``chunk`` clients' own weights; each of ``steps`` local steps
  runs every layer's forward product, weight-gradient product and (past the
  first layer) input-gradient product, and updates the weights (so no step can
  be hoisted out of the loop). ``wgrad`` is the weight gradient's form, as the
  round's ``grad_mode`` writes it: ``"dot"`` (``"batch"``: one product over the
  batch) or ``"outer"`` (``"per_example"``: the examples' outer products, summed).
  """
  if wgrad not in ("dot", "outer"):
    raise ValueError(f"`wgrad` must be 'dot' or 'outer'; got {wgrad!r}.")
  key = jax.random.key(0)
  weights = [jax.random.normal(jax.random.fold_in(key, i), (chunk, n_in, n_out)) * 0.01
             for i, (n_in, n_out) in enumerate(layers)]
  x = jax.random.normal(key, (chunk, steps, batch, layers[0][0]))

  def one_step(ws, xb):
    return products_step(ws, xb, wgrad), None

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


def round_bound(params: Any, *, clients: int, chunk: int, batch: int, steps: int,
                repeats: int = 5) -> dict[str, Any]:
  """The bound a round of ``params``'s dense layers runs against, measured now.

  Args:
    params: the model's parameters (their 2-D ``kernel`` leaves are the layers).
    clients: clients per round.
    chunk: clients per chunk, as the round runs them (``auto_chunk_size``).
    batch: examples per local step.
    steps: local steps per client.
    repeats: timed repeats (the best counts).

  Returns:
    ``{"grad_mode", "gemm_sec", "gemm_flops"}``: the weight gradient's form
    (from ``grad_mode="auto"``), the products' seconds and their FLOPs.
  """
  import fedjax_lite as fl

  layers = dense_layers(params)
  mode = fl.client.resolve_grad_mode("auto", params)
  sec = gemm_seconds(layers, clients=clients, chunk=chunk, batch=batch, steps=steps,
                     repeats=repeats, wgrad="dot" if mode == "batch" else "outer")
  return {"grad_mode": mode, "gemm_sec": sec,
          "gemm_flops": gemm_flops(layers, batch) * steps * clients}


def main(argv=None) -> int:
  import fedjax_lite as fl
  from benchmarks import common, w1, w2

  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workload", choices=("w1", "w2"), default="w1")
  p.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args(argv)
  workload, defaults = (w1, w1.W1_DEFAULTS) if args.workload == "w1" else (w2, w2.W2_DEFAULTS)
  peak = common.matmul_peak_gflops()
  for clients in args.clients:
    wargs = argparse.Namespace(**{**defaults, "clients_per_round": clients,
                                  "population": max(defaults["population"], clients)},
                               seed=0, devices=None)
    setup = workload.build(wargs)
    chunk = min(fl.hardware.auto_chunk_size(setup["params"], setup["population"]), clients)
    steps = math.ceil(wargs.examples / wargs.batch_size) * wargs.epochs
    run = common.round_runner(*w2.vectorized_impl(setup, wargs, "auto"), setup["params"])
    round_sec = common.time_rounds(run, warmup=2, rounds=args.rounds)["sec_per_round_median"]
    bound = round_bound(setup["params"], clients=clients, chunk=chunk,
                        batch=wargs.batch_size, steps=steps)
    flops = bound["gemm_flops"]
    common.emit({"benchmark": "roofline", "workload": args.workload, "clients_per_round": clients,
                 "chunk_size": chunk, "grad_mode": bound["grad_mode"], "round_sec": round_sec,
                 "gemm_sec": bound["gemm_sec"],
                 "fraction_of_gemm_bound": bound["gemm_sec"] / round_sec,
                 "round_gemm_gflops": flops / round_sec / 1e9,
                 "gemm_gflops": flops / bound["gemm_sec"] / 1e9, "matmul_peak_gflops": peak})
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
