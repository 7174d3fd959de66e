"""Where a vectorized round's time goes: the evidence for the bounds in docs/performance.md.

``python -m benchmarks.profile --workload w1|w2 [--chunk-size N|auto] [--quick]`` traces
a few steady-state rounds with ``jax.profiler`` and prints one JSON line per XLA
operation (the top ``--top`` by time): milliseconds per round, calls per round
and share of the round. The last line (``"rates"``) measures, in the same run,
the float32 throughput of the products a W1 client step is made of:

* ``single_gflops``: one client's 16x784 . 784x200 product (what the loop runs);
* ``batched_distinct_gflops``: ``chunk`` clients' products, each with its own
  weights (what the vectorized round runs after the first local step);
* ``batched_wgrad_sgd_gflops``: the weight gradient plus SGD update, batched;
* ``shared_gflops``: the same products with one shared weight matrix (the
  first local step);
* ``peak_gflops``: a 2048x2048 matmul.

The trace is read with ``jax._src.lib._profile_data`` (the reader JAX's own
profiler tests use); it is not public API, so a JAX without it gets a clear
error.
"""

from __future__ import annotations

import argparse
import collections
import glob
import tempfile
import time

import jax
import jax.numpy as jnp

import fedjax_lite as fl
from benchmarks import common, w1, w2


def op_times(trace_dir: str, rounds: int) -> tuple[dict[str, float], dict[str, int], float]:
  """Per-operation milliseconds and calls per round from a ``jax.profiler`` trace."""
  try:
    from jax._src.lib import _profile_data
  except ImportError as e:  # pragma: no cover - depends on the installed jaxlib
    raise SystemExit(f"this jaxlib has no profile reader ({e}); use TensorBoard/XProf on "
                     f"the trace in {trace_dir} instead.") from None
  (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
  data = _profile_data.ProfileData.from_file(path)
  total: collections.Counter = collections.Counter()
  calls: collections.Counter = collections.Counter()
  wall = 0.0
  for plane in data.planes:
    for line in plane.lines:
      if "XLA" not in line.name and "Eigen" not in line.name:
        continue
      for ev in line.events:
        if ev.name == "ThunkExecutor::Execute (wait for completion)":
          wall += ev.duration_ns
        elif not ev.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
          total[ev.name] += ev.duration_ns
          calls[ev.name] += 1
  ms = {k: v / rounds / 1e6 for k, v in total.items()}
  return ms, {k: v // rounds for k, v in calls.items()}, wall / rounds / 1e6


def product_rates(chunk: int, repeats: int = 30) -> dict[str, float]:
  """Measured float32 throughput of W1's per-client products (see the module docstring)."""
  def best(f, *args):
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      jax.block_until_ready(f(*args))
      times.append(time.perf_counter() - t)
    return min(times)

  k = jax.random.key(0)
  x = jax.random.normal(k, (chunk, 16, 784))
  w = jax.random.normal(k, (chunk, 784, 200))
  dh = jax.random.normal(k, (chunk, 16, 200))
  flops = chunk * 16 * 784 * 200 * 2
  fwd = jax.jit(lambda x, w: jnp.einsum("cbi,cio->cbo", x, w))
  wgrad = jax.jit(lambda x, dh, w: w - 0.1 * jnp.einsum("cbi,cbo->cio", x, dh))
  shared = jax.jit(lambda x, w: x.reshape(-1, 784) @ w)
  single = jax.jit(lambda x, w: x @ w)
  return {
      "single_gflops": 16 * 784 * 200 * 2 / best(single, x[0], w[0]) / 1e9,
      "batched_distinct_gflops": flops / best(fwd, x, w) / 1e9,
      "batched_wgrad_sgd_gflops": flops / best(wgrad, x, dh, w) / 1e9,
      "shared_gflops": flops / best(shared, x, w[0]) / 1e9,
      "peak_gflops": common.matmul_peak_gflops(),
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workload", choices=("w1", "w2"), default="w1")
  p.add_argument("--chunk-size", type=w2.chunk_size_arg, default="auto")
  p.add_argument("--rounds", type=int, default=5, help="traced rounds")
  p.add_argument("--top", type=int, default=15)
  p.add_argument("--quick", action="store_true")
  args = p.parse_args(argv)
  defaults = dict(w1.W1_DEFAULTS if args.workload == "w1" else w2.W2_DEFAULTS, seed=0)
  if args.quick:
    defaults.update(population=100, clients_per_round=20)
    args.rounds = 2
  ns = argparse.Namespace(**defaults)
  setup = (w1 if args.workload == "w1" else w2).build(ns)
  step, init = w2.vectorized_impl(setup, ns, args.chunk_size)
  state = init(setup["params"])
  for r in range(3):  # compile and warm up
    state = step(state, r)
  jax.block_until_ready(state)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for r in range(3, 3 + args.rounds):
        state = step(state, r)
      jax.block_until_ready(state)
    ms, calls, wall = op_times(trace_dir, args.rounds)
  for name, t in sorted(ms.items(), key=lambda kv: -kv[1])[:args.top]:
    common.emit({"workload": args.workload, "op": name, "ms_per_round": t,
                 "calls_per_round": calls[name], "share_of_round": t / wall if wall else None})
  chunk = args.chunk_size
  if chunk == "auto":
    chunk = fl.hardware.auto_chunk_size(setup["params"], setup["population"])
  chunk = min(chunk, ns.clients_per_round)
  common.emit({"workload": args.workload, "round_ms": wall, "chunk_size": chunk,
               "rates": product_rates(chunk, repeats=5 if args.quick else 30)})
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
