"""The accelerator suite: ``python -m benchmarks --suite gpu --report DIR [--quick]``.

``make bench-gpu`` runs it at full size and writes ``docs/benchmarks/gpu/``.
Everything runs in one process and one time window, on the default device:

* **the card**: float32, TF32 and bf16 matrix-product rates (one large GEMM
  each: JAX's ``HIGHEST``, ``DEFAULT`` and bfloat16 inputs) and the
  device-to-device copy bandwidth (bytes read plus written);
* **W1** (the 2NN MLP 784-200-200-10, 64 examples per client, 1 epoch of
  batch 16, FedAvg) at 100, 1,000 and 10,000 clients per round: fedjax_lite's
  round; at 100 and 1,000 also a JAX loop over clients, a plain PyTorch loop
  and ``torch.func.vmap`` (eager and under ``torch.compile``), timed
  round-robin on the same card;
* **W2** (LEAF Synthetic(1, 1), logistic regression 60->10, 32 examples, 5
  epochs of batch 8) at 1,000, 10,000 and 100,000 clients per round (a JAX
  loop too at 1,000), and a population of 1,000,000 such clients with 10,000
  and all 1,000,000 per round;
* **the choices behind the "auto" settings**: both gradient modes on W1 and
  W2, and both shuffles (pairwise rank, sort) at 32 to 256 examples per client;
* **results checks**: parameters after two rounds, every implementation
  against the JAX loop, in float32 (relative error at most 1e-5); the timed
  default precision (TF32 on such GPUs) against that, at most 1e-3.

Each row reports seconds per round (median, min and max of the timed rounds),
clients per second, achieved GFLOP/s (XLA's count of one example's forward and
backward pass, times examples, steps and clients) with its fraction of the
measured TF32 peak, compile seconds (lowering and compiling fedjax_lite's
round; the first call for the others), XLA's memory for the compiled round,
and the device's peak memory so far. Populations are drawn on the device
(:mod:`benchmarks.device_data`). ``--quick`` runs tiny sizes, as a smoke test
on any machine. PyTorch is imported only when a CUDA device is there for it
(``--torch on`` forces it, ``off`` skips it); rows that do not run say why.
Results stream to ``DIR/results.jsonl`` as they come; ``report.md`` and
``scaling.png`` are rewritten after every section.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NamedTuple

FULL = dict(w1=(100, 1_000, 10_000), w2=(1_000, 10_000, 100_000), million=1_000_000,
            million_cohorts=(10_000, 1_000_000), torch=(100, 1_000), jax_loop_w1=(100, 1_000),
            shuffle_clients=10_000, gemm=8192, copy_mib=2048, rounds=10, budget_sec=3.0)
QUICK = dict(w1=(4, 8), w2=(16, 32), million=128, million_cohorts=(16, 128),
             torch=(4, 8), jax_loop_w1=(4,), shuffle_clients=16, gemm=256, copy_mib=16,
             rounds=2, budget_sec=0.5)
W1 = dict(examples=64, epochs=1, batch_size=16, lr=0.1)
W2 = dict(examples=32, epochs=5, batch_size=8, lr=0.05)
CHECK_TOL = 1e-5  # float32: max over leaves of ||a - b|| / ||b|| after two rounds
TF32_TOL = 1e-3  # the timed default precision against float32
TARGETS = (  # (name, workload, impl, clients per round, field, bound, "max" or "min")
    ("W1 at 1,000 clients: seconds per round", "w1", "fedjax_lite", 1_000,
     "sec_per_round_median", 0.010, "max"),
    ("W1 at 1,000 clients: speed-up over the PyTorch loop", "w1", "fedjax_lite", 1_000,
     "speedup_vs_torch_loop", 10.0, "min"),
    ("W1 at 1,000 clients: speed-up over torch.func.vmap (best of eager, compiled)", "w1",
     "fedjax_lite", 1_000, "speedup_vs_torch_vmap", 2.0, "min"),
    ("W1 at 1,000 clients: fraction of the TF32 matmul peak", "w1", "fedjax_lite", 1_000,
     "fraction_of_tf32_peak", 0.25, "min"),
    ("W2 at 100,000 clients: seconds per round", "w2", "fedjax_lite", 100_000,
     "sec_per_round_median", 0.100, "max"),
    ("1,000,000 clients per round: seconds per round", "w2_million", "fedjax_lite", 1_000_000,
     "sec_per_round_median", 1.0, "max"),
)
MiB = 2**20


class Impl(NamedTuple):
  """One implementation at one size: ``step(state, r) -> state`` from ``init()``."""

  init: Any
  step: Any
  params: Any  # state -> params pytree (NumPy, flax layout)
  compile_sec: float | None = None  # measured apart from the first round, if known
  info: dict | None = None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="benchmarks --suite gpu", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--report", type=Path, required=True,
                 help="output directory (results.jsonl, report.md, scaling.png)")
  p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
  p.add_argument("--torch", choices=("auto", "on", "off"), default="auto",
                 help="PyTorch rows: auto (on a CUDA device only), on, off")
  p.add_argument("--no-torch-compile", action="store_true",
                 help="skip torch.compile (eager torch.func.vmap still runs)")
  p.add_argument("--rounds", type=int, default=None, help="timed rounds per implementation")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  # JAX must not take most of the card up front when PyTorch shares it.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  suite = Suite(args)
  ok = suite.run()
  print(f"wrote {args.report}/results.jsonl, report.md, scaling.png", file=sys.stderr)
  return 0 if ok else 1


class Suite:
  """The suite's state: sizes, rows so far, the card's peaks and PyTorch's availability."""

  def __init__(self, args):
    import jax

    from benchmarks import torch_w1

    self.args = args
    self.sizes = dict(QUICK if args.quick else FULL)
    if args.rounds is not None:
      self.sizes["rounds"] = args.rounds
    self.out = args.report
    self.out.mkdir(parents=True, exist_ok=True)
    self.results = open(self.out / "results.jsonl", "w")
    self.rows: list[dict] = []
    self.device = jax.devices()[0]
    self.accelerator = self.device.platform != "cpu"
    self.torch_ok, self.torch_why = torch_w1.availability(args.torch)
    self.tf32_peak = None
    self.failed = False

  def emit(self, row: dict) -> None:
    self.rows.append(row)
    line = json.dumps(row, default=_json_default)
    print(line, flush=True)
    self.results.write(line + "\n")
    self.results.flush()

  def run(self) -> bool:
    sections = [("env", self.environment), ("peak", self.peaks), ("w1", self.w1),
                ("w2", self.w2), ("w2_million", self.million), ("choice", self.shuffles),
                ("target", self.targets)]
    for name, section in sections:
      t = time.perf_counter()
      try:
        section()
      except Exception as e:  # keep the rest of a lease's run; report the failure
        self.failed = True
        self.emit({"section": name, "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc(limit=8)})
      print(f"[{name}: {time.perf_counter() - t:.1f} s]", file=sys.stderr, flush=True)
      gc.collect()
      write_report(self.rows, self.out, self.args.quick)
    self.results.close()
    return not self.failed and all(r.get("ok", True) for r in self.rows
                                   if r.get("section") == "check")

  # -- the machine ------------------------------------------------------------------------

  def environment(self) -> None:
    import jax
    import jaxlib

    from fedjax_lite import hardware

    row = {"section": "env", "date": datetime.datetime.now(datetime.UTC).isoformat(
        timespec="seconds"), "platform": self.device.platform,
        "device": self.device.device_kind, "num_devices": jax.device_count(),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "quick": self.args.quick,
        "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")}
    stats = hardware.memory_stats(self.device)
    if stats.get("bytes_limit"):
      row["device_memory_limit_gib"] = stats["bytes_limit"] / 2**30
    if shutil.which("nvidia-smi"):
      q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
      if q.returncode == 0 and q.stdout.strip():
        name, driver, total = [x.strip() for x in q.stdout.strip().splitlines()[0].split(",")]
        row.update(gpu_name=name, driver=driver, gpu_memory=total)
    if self.torch_ok:
      import torch
      row.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    else:
      row["torch"] = None
      self.emit({"section": "skipped", "impls": ["torch_loop", "torch_vmap",
                                                 "torch_vmap_compiled"],
                 "reason": self.torch_why})
    self.emit(row)

  def peaks(self) -> None:
    import jax
    import jax.numpy as jnp

    n = self.sizes["gemm"]
    ka, kb = jax.random.split(jax.random.key(1))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    for kind, precision, dtype in (("fp32", "highest", jnp.float32),
                                   ("tf32", "default", jnp.float32),
                                   ("bf16", "default", jnp.bfloat16)):
      f = jax.jit(lambda x, y, p=precision: jnp.dot(x, y, precision=p,
                                                    preferred_element_type=jnp.float32))
      x, y = a.astype(dtype), b.astype(dtype)
      sec = _median_time(lambda: f(x, y), repeats=10)
      gflops = 2 * n**3 / sec / 1e9
      if kind == "tf32":
        self.tf32_peak = gflops
      self.emit({"section": "peak", "kind": f"matmul_{kind}", "n": n, "sec": sec,
                 "gflops": gflops})
    size = self.sizes["copy_mib"] * MiB // 4
    x = jax.random.normal(ka, (size,), jnp.float32)
    f = jax.jit(lambda v: v + 1.0)
    sec = _median_time(lambda: f(x), repeats=10)
    self.emit({"section": "peak", "kind": "copy", "mib": self.sizes["copy_mib"], "sec": sec,
               "gb_per_sec": 2 * size * 4 / sec / 1e9})

  # -- workloads ---------------------------------------------------------------------------

  def w1(self) -> None:
    import jax
    import jax.numpy as jnp

    import fedjax_lite as fl
    from benchmarks import device_data

    sizes = self.sizes
    population = device_data.w1_population(max(sizes["w1"]), examples=W1["examples"],
                                           seed=self.args.seed)
    model = fl.models.MLP((200, 200), 10)
    setup = Setup("w1", population, model.init(jax.random.key(0), jnp.zeros((1, 784))),
                  fl.models.classification_loss(model.apply), W1)
    torch_runner = self._torch_setup(setup) if self.torch_ok else None
    for k in sizes["w1"]:
      impls = {"fedjax_lite": self.fedjax(setup, k)}
      if k == sizes["w1"][1]:
        impls["fedjax_lite[grad_mode=per_example]"] = self.fedjax(setup, k, "per_example")
      if k in sizes["jax_loop_w1"]:
        impls["jax_loop"] = self.jax_loop(setup, k)
      if torch_runner is not None and k in sizes["torch"]:
        impls.update(self._torch_impls(setup, torch_runner, k))
      self.time_size(setup, k, impls)
      if k == sizes["w1"][0]:
        self.check(setup, k, torch_runner, impls["fedjax_lite"])
    self.grad_mode_choice("w1", sizes["w1"][1], "batch", "per_example")

  def w2(self) -> None:
    import jax
    import jax.numpy as jnp

    import fedjax_lite as fl
    from benchmarks import device_data

    sizes = self.sizes
    population = device_data.w2_population(max(sizes["w2"]), examples=W2["examples"],
                                           seed=self.args.seed)
    model = fl.models.LogisticRegression(10)
    setup = Setup("w2", population, model.init(jax.random.key(0), jnp.zeros((1, 60))),
                  fl.models.classification_loss(model.apply), W2)
    for k in sizes["w2"]:
      impls = {"fedjax_lite": self.fedjax(setup, k)}
      if k == sizes["w2"][0]:
        impls["jax_loop"] = self.jax_loop(setup, k)
      if k == sizes["w2"][-1]:
        impls["fedjax_lite[grad_mode=batch]"] = self.fedjax(setup, k, "batch")
      self.time_size(setup, k, impls)
      if k == sizes["w2"][0]:
        self.check(setup, k, None, impls["fedjax_lite"])
    self.grad_mode_choice("w2", sizes["w2"][-1], "per_example", "batch")

  def million(self) -> None:
    import jax
    import jax.numpy as jnp

    import fedjax_lite as fl
    from benchmarks import device_data

    t = time.perf_counter()
    population = device_data.w2_population(self.sizes["million"], examples=W2["examples"],
                                           seed=self.args.seed + 1)
    jax.block_until_ready(population)
    self.emit({"section": "w2_million", "population": self.sizes["million"],
               "population_mib": fl.hardware.tree_bytes(population) / MiB,
               "generate_sec": time.perf_counter() - t, **_device_memory(self.device)})
    model = fl.models.LogisticRegression(10)
    setup = Setup("w2_million", population, model.init(jax.random.key(0), jnp.zeros((1, 60))),
                  fl.models.classification_loss(model.apply), W2)
    for k in self.sizes["million_cohorts"]:
      self.time_size(setup, k, {"fedjax_lite": self.fedjax(setup, k)})

  # -- implementations ---------------------------------------------------------------------

  def fedjax(self, setup: Setup, k: int, grad_mode: str = "auto") -> Impl:
    """fedjax_lite's round (chunk_size "auto"), sampling and gathering inside the program."""
    import jax
    import numpy as np
    import optax

    import fedjax_lite as fl

    w = setup.workload
    update = fl.build_client_update(setup.loss, optax.sgd(w["lr"]), num_epochs=w["epochs"],
                                    batch_size=w["batch_size"], grad_mode=grad_mode)
    algo = fl.build_federated_algorithm(update, fl.server.fedavg())
    population, n, seed = setup.population, setup.population.num_clients, self.args.seed

    def step(state, population, r):
      sample_key, round_key = fl.round_keys(jax.random.key(seed), r)
      cohort = fl.take(population, fl.sample_clients(sample_key, n, k))
      return algo.round(state, cohort, round_key)[0]

    state0 = algo.init(setup.params)
    with _chunk_log() as chunks:
      t = time.perf_counter()
      compiled = jax.jit(step).lower(state0, population, np.int32(0)).compile()
      compile_sec = time.perf_counter() - t
    info = {"grad_mode": fl.client.resolve_grad_mode(grad_mode, setup.params)}
    if chunks:
      info.update(chunk_size=chunks[-1][0], num_chunks=chunks[-1][2])
    mem = compiled.memory_analysis()
    if mem is not None:
      info["xla_memory_mib"] = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                                + mem.output_size_in_bytes) / MiB
    return Impl(lambda: state0, lambda s, r: compiled(s, population, np.int32(r)),
                lambda s: jax.device_get(s.params), compile_sec, info)

  def jax_loop(self, setup: Setup, k: int) -> Impl:
    """A Python loop over clients, one jitted client update each (the reference)."""
    import jax
    import optax

    import fedjax_lite as fl
    from benchmarks import w2

    w = setup.workload
    update = fl.build_client_update(setup.loss, optax.sgd(w["lr"]), num_epochs=w["epochs"],
                                    batch_size=w["batch_size"])
    gather = jax.jit(lambda pop, i: jax.tree.map(lambda x: x[i], pop))
    step, init = w2.client_loop(update, lambda i: gather(setup.population, i),
                                setup.population.num_clients, k, self.args.seed)
    return Impl(lambda: init(setup.params), step, lambda s: jax.device_get(s[0]))

  def _torch_setup(self, setup: Setup):
    import torch

    from benchmarks import torch_w1

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t = torch_w1.TorchW1(setup.params, setup.population.arrays["x"],
                         setup.population.arrays["y"], lr=setup.workload["lr"], device=device)
    t.set_tf32(True)  # JAX's default precision on TF32-capable GPUs
    return t

  def _torch_impls(self, setup: Setup, t, k: int) -> dict[str, Impl]:
    """PyTorch loop and torch.func.vmap (eager, compiled) on the JAX rounds' cohorts and orders."""
    from benchmarks import torch_w1

    planner = setup.planner(k, self.args.seed)
    plans = {}
    for r in range(self.sizes["rounds"] + 2):  # every round's plan, before any timing
      ids, orders = planner(r)
      plans[r] = (ids, torch_w1.to_torch(ids, t.device).long(),
                  torch_w1.to_torch(orders, t.device).long())
    plan = plans.__getitem__
    to_flax = lambda s: torch_w1.as_jax_layout(t.to_numpy(s))

    def run(fn):
      def step(s, r):
        out = fn(s, r)
        t.synchronize()
        return out
      return step

    impls = {
        "torch_loop": Impl(t.initial, run(lambda s, r: t.loop_round(s, plan(r)[0], plan(r)[2])),
                           to_flax),
        "torch_vmap": Impl(t.initial, run(lambda s, r: t.vmap_round(s, *plan(r)[1:])), to_flax),
    }
    if not self.args.no_torch_compile:
      impls["torch_vmap_compiled"] = Impl(
          t.initial, run(lambda s, r: t.vmap_round(s, *plan(r)[1:], compiled=True)), to_flax)
    return impls

  # -- timing, checks, choices -----------------------------------------------------------------

  def time_size(self, setup: Setup, k: int, impls: dict[str, Impl]) -> None:
    """Times every implementation at ``k`` clients per round, round-robin, and emits rows."""
    from benchmarks import common

    runners, failed = {}, []
    for name, impl in impls.items():
      holder = {"state": impl.init()}

      def run_round(r, impl=impl, holder=holder):
        holder["state"] = impl.step(holder["state"], r)
        _block(holder["state"])

      runners[name] = run_round
    try:
      timings = common.time_interleaved(runners, warmup=2, rounds=self.sizes["rounds"],
                                        budget_sec=self.sizes["budget_sec"])
    except Exception:
      # One implementation failing (e.g. torch.compile) must not cost the others: time
      # each alone, note the failure.
      timings = {}
      for name, runner in runners.items():
        try:
          timings.update(common.time_interleaved({name: runner}, warmup=2,
                                                 rounds=self.sizes["rounds"],
                                                 budget_sec=self.sizes["budget_sec"]))
        except Exception as e:
          failed.append(name)
          self.emit({"section": setup.name, "impl": name, "clients_per_round": k,
                     "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
    flops = setup.flops_per_round(k)
    torch_vmap = [timings[n]["sec_per_round_median"] for n in ("torch_vmap",
                                                               "torch_vmap_compiled")
                  if n in timings]
    for name, stats in timings.items():
      impl = impls[name]
      sec = stats["sec_per_round_median"]
      row = {"section": setup.name, "impl": name, "clients_per_round": k,
             "population": setup.population.num_clients, **stats,
             "clients_per_sec": k / sec, "achieved_gflops": flops / sec / 1e9}
      if impl.compile_sec is not None:
        row["first_round_sec"] = row["compile_sec"]
        row["compile_sec"] = impl.compile_sec
      if self.tf32_peak:
        row["fraction_of_tf32_peak"] = flops / sec / 1e9 / self.tf32_peak
      if "torch_loop" in timings:
        row["speedup_vs_torch_loop"] = timings["torch_loop"]["sec_per_round_median"] / sec
      if torch_vmap:
        row["speedup_vs_torch_vmap"] = min(torch_vmap) / sec
      if "jax_loop" in timings:
        row["speedup_vs_jax_loop"] = timings["jax_loop"]["sec_per_round_median"] / sec
      row.update(impl.info or {})
      row.update(_device_memory(self.device))
      if name.startswith("torch") and self.torch_ok:
        import torch
        if torch.cuda.is_available():
          row["torch_peak_mib"] = torch.cuda.max_memory_allocated() / MiB
      self.emit(row)
    if self.torch_ok and any(n.startswith("torch") for n in impls):
      import torch
      if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

  def check(self, setup: Setup, k: int, torch_runner, timed: Impl) -> None:
    """Parameters after two rounds: every implementation against the JAX loop.

    In float32 (JAX's ``HIGHEST`` precision, PyTorch without TF32) each must be
    within :data:`CHECK_TOL`; the timed default precision (TF32 on such GPUs;
    ``timed``, the program just timed, so not compiled again) within
    :data:`TF32_TOL` of the float32 loop, and compiled PyTorch within it of
    eager PyTorch.
    """
    import jax

    def two_rounds(impl):
      state = impl.init()
      for r in range(2):
        state = impl.step(state, r)
      return impl.params(state)

    results = {}
    with jax.default_matmul_precision("highest"):
      results["jax_loop"] = two_rounds(self.jax_loop(setup, k))
      results["fedjax_lite"] = two_rounds(self.fedjax(setup, k))
    if torch_runner is not None:
      torch_runner.set_tf32(False)
      try:
        impls = self._torch_impls(setup, torch_runner, k)
        for name in ("torch_loop", "torch_vmap"):
          results[name] = two_rounds(impls[name])
      finally:
        torch_runner.set_tf32(True)
    reference = results.pop("jax_loop")
    for name, params in results.items():
      err = _rel_error(params, reference)
      self.emit({"section": "check", "workload": setup.name, "clients_per_round": k,
                 "impl": name, "reference": "jax_loop float32", "precision": "float32",
                 "rounds": 2, "rel_error": err, "tol": CHECK_TOL, "ok": err <= CHECK_TOL})
    default = two_rounds(timed)
    err = _rel_error(default, reference)
    self.emit({"section": "check", "workload": setup.name, "clients_per_round": k,
               "impl": "fedjax_lite", "reference": "jax_loop float32", "precision": "default",
               "rounds": 2, "rel_error": err, "tol": TF32_TOL, "ok": err <= TF32_TOL})
    if torch_runner is not None and not self.args.no_torch_compile:
      impls = self._torch_impls(setup, torch_runner, k)
      try:
        compiled = two_rounds(impls["torch_vmap_compiled"])
      except Exception as e:
        self.emit({"section": "check", "workload": setup.name, "impl": "torch_vmap_compiled",
                   "skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
      else:
        err = _rel_error(compiled, two_rounds(impls["torch_vmap"]))
        self.emit({"section": "check", "workload": setup.name, "clients_per_round": k,
                   "impl": "torch_vmap_compiled", "reference": "torch_vmap (eager)",
                   "precision": "default", "rounds": 2, "rel_error": err, "tol": TF32_TOL,
                   "ok": err <= TF32_TOL})

  def grad_mode_choice(self, workload: str, k: int, auto: str, other: str) -> None:
    rows = {r["impl"]: r for r in self.rows if r.get("section") == workload
            and r.get("clients_per_round") == k and "sec_per_round_median" in r}
    alt = f"fedjax_lite[grad_mode={other}]"
    if "fedjax_lite" not in rows or alt not in rows:
      return
    a, b = rows["fedjax_lite"]["sec_per_round_median"], rows[alt]["sec_per_round_median"]
    self.emit({"section": "choice", "choice": "grad_mode", "workload": workload,
               "clients_per_round": k, "auto": auto, "alternative": other, "auto_sec": a,
               "alternative_sec": b, "faster": auto if a <= b else other})

  def shuffles(self) -> None:
    """Both shuffle methods on K clients x 5 epochs, at 32 to 256 examples per client."""
    import jax
    import jax.numpy as jnp

    import fedjax_lite as fl
    from fedjax_lite import hardware

    k = self.sizes["shuffle_clients"]
    limit = hardware.tuning().rank_shuffle_max_examples
    for n in (32, 64, 128, 256):
      secs = {}
      for method in ("rank", "sort"):
        @jax.jit
        def orders(key, method=method, n=n):
          def client(i):
            ck = jax.random.fold_in(key, i)
            return jax.vmap(lambda e: fl.client.shuffle_order(jax.random.fold_in(ck, e), n, n,
                                                       method=method))(jnp.arange(5))
          return jax.vmap(client)(jnp.arange(k))

        secs[method] = _median_time(lambda: orders(jax.random.key(0)), repeats=5)
      auto = "rank" if n <= limit else "sort"
      self.emit({"section": "choice", "choice": "shuffle", "max_examples": n, "clients": k,
                 "epochs": 5, "rank_sec": secs["rank"], "sort_sec": secs["sort"], "auto": auto,
                 "faster": min(secs, key=secs.get)})

  def targets(self) -> None:
    if self.args.quick or not self.accelerator:
      self.emit({"section": "target", "evaluated": False,
                 "reason": "--quick sizes" if self.args.quick else "not an accelerator"})
      return
    for name, workload, impl, k, field, bound, kind in TARGETS:
      rows = [r for r in self.rows if r.get("section") == workload and r.get("impl") == impl
              and r.get("clients_per_round") == k and field in r]
      value = rows[-1][field] if rows else None
      met = None if value is None else (value <= bound if kind == "max" else value >= bound)
      self.emit({"section": "target", "name": name, "field": field, "value": value,
                 "bound": bound, "kind": kind, "met": met})


class Setup:
  """A workload's population, params, loss and local-training settings."""

  def __init__(self, name, population, params, loss, workload):
    self.name, self.population, self.params, self.loss = name, population, params, loss
    self.workload = workload
    self._flops_example = None

  def flops_per_round(self, k: int) -> float:
    """XLA's FLOP count of one example's gradient, times examples, steps and ``k`` clients."""
    import jax

    from benchmarks import common

    w = self.workload
    if self._flops_example is None:
      batch = jax.tree.map(lambda x: x[0, : w["batch_size"]], self.population.arrays)
      per_example_loss = lambda p, b: self.loss(p, b) * next(iter(b.values())).shape[0]
      self._flops_example = common.flops_per_example_step(per_example_loss, self.params, batch)
    steps = math.ceil(w["examples"] / w["batch_size"]) * w["epochs"]
    return self._flops_example * w["batch_size"] * steps * k

  def planner(self, k: int, seed: int):
    """``plan(r) -> (ids [k], orders [k, steps, batch])``: round ``r``'s cohort and batches.

    Derived as fedjax_lite's round derives them (``fl.round_keys``, the client
    key ``fold_in(split(round_key)[0], id)``, epoch ``e``'s order
    ``shuffle_order(fold_in(client_key, e), n, n)``); every W1 client holds
    ``n = examples``, a multiple of the batch size.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    import fedjax_lite as fl

    w, n = self.workload, self.population.num_clients
    examples, b = w["examples"], w["batch_size"]

    @jax.jit
    def plan(r):
      sample_key, round_key = fl.round_keys(jax.random.key(seed), r)
      ids = fl.sample_clients(sample_key, n, k)
      client_key = jax.random.split(round_key)[0]

      def one(i):
        ck = jax.random.fold_in(client_key, i)
        epochs = jax.vmap(lambda e: fl.client.shuffle_order(jax.random.fold_in(ck, e), examples,
                                                     examples))(jnp.arange(w["epochs"]))
        return epochs.reshape(-1, b)

      return ids, jax.vmap(one)(ids)

    return lambda r: tuple(np.asarray(x) for x in plan(np.int32(r)))


# -- helpers ----------------------------------------------------------------------------------


def _json_default(x):
  try:
    return x.item()
  except AttributeError:
    return str(x)


def _block(tree) -> None:
  import jax
  jax.block_until_ready(tree)


def _median_time(fn, repeats: int) -> float:
  _block(fn())
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    _block(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _device_memory(device) -> dict:
  """The device's memory in use and its peak so far (MiB), or the process's peak RSS."""
  from benchmarks import common
  from fedjax_lite import hardware

  stats = hardware.memory_stats(device)
  if "peak_bytes_in_use" in stats:
    return {"device_in_use_mib": stats.get("bytes_in_use", 0) / MiB,
            "device_peak_mib": stats["peak_bytes_in_use"] / MiB}
  return {"peak_rss_mib": common.peak_rss_mib()}


def _rel_error(a, b) -> float:
  """Max over leaves of ``||a - b|| / ||b||`` (float64)."""
  import jax
  import numpy as np

  errs = jax.tree.map(lambda x, y: float(np.linalg.norm(np.asarray(x, np.float64) - y)
                                         / max(np.linalg.norm(np.asarray(y, np.float64)), 1e-30)),
                      a, b)
  return max(jax.tree.leaves(errs))


@contextlib.contextmanager
def _chunk_log():
  """Collects ``(chunk, clients, chunks)`` from the round's trace-time debug log."""
  found: list[tuple[int, int, int]] = []

  class Handler(logging.Handler):
    def emit(self, record):
      if record.msg.startswith("chunk_size='auto'"):
        found.append(tuple(record.args))

  logger = logging.getLogger("fedjax_lite.mapreduce")
  handler, level = Handler(), logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.DEBUG)
  try:
    yield found
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)


# -- the report -------------------------------------------------------------------------------

ROUND_COLUMNS = (("impl", "implementation"), ("clients_per_round", "clients/round"),
                 ("sec_per_round_median", "s/round (median)"), ("sec_per_round_min", "min"),
                 ("sec_per_round_max", "max"), ("rounds_timed", "rounds"),
                 ("clients_per_sec", "clients/s"), ("achieved_gflops", "GFLOP/s"),
                 ("fraction_of_tf32_peak", "of TF32 peak"), ("compile_sec", "compile s"),
                 ("chunk_size", "chunk"), ("num_chunks", "chunks"),
                 ("xla_memory_mib", "XLA MiB"), ("device_peak_mib", "device peak MiB"),
                 ("torch_peak_mib", "torch peak MiB"), ("peak_rss_mib", "peak RSS MiB"))
SECTIONS = (("w1", "W1: 2NN MLP, 64 examples, 1 epoch of batch 16"),
            ("w2", "W2: LEAF Synthetic(1, 1), logistic regression, 5 epochs of batch 8"),
            ("w2_million", "W2 clients, a population of 1,000,000"))


def _fmt(v) -> str:
  if isinstance(v, bool) or v is None:
    return "" if v is None else ("yes" if v else "NO")
  if isinstance(v, float):
    return f"{v:.3g}" if abs(v) < 1e5 else f"{v:,.0f}"
  if isinstance(v, int):
    return f"{v:,}"
  return str(v)


def _table(rows: list[dict], columns) -> list[str]:
  present = [(k, h) for k, h in columns if any(k in r for r in rows)]
  lines = ["| " + " | ".join(h for _, h in present) + " |", "|" + "---|" * len(present)]
  lines += ["| " + " | ".join(_fmt(r.get(k)) for k, _ in present) + " |" for r in rows]
  return lines + [""]


def write_report(rows: list[dict], out: Path, quick: bool) -> None:
  """``report.md`` and ``scaling.png`` from the rows so far."""
  env = next((r for r in rows if r.get("section") == "env" and "platform" in r), {})
  lines = ["# fedjax_lite on an accelerator", ""]
  if quick:
    lines += ["`--quick` sizes: a smoke test of the suite, not its figures.", ""]
  lines += ["Command: `make bench-gpu` (`python -m benchmarks --suite gpu --report "
            "docs/benchmarks/gpu`). All rows come from one process in one time window; ratios "
            "compare implementations timed round-robin on the same device.", ""]
  if env:
    keys = ("date", "platform", "device", "gpu_name", "driver", "gpu_memory",
            "device_memory_limit_gib", "jax", "jaxlib", "torch", "torch_cuda", "python",
            "cpu_count", "xla_python_client_preallocate")
    lines += ["| | |", "|---|---|"] + [f"| {k} | {_fmt(env[k])} |" for k in keys if k in env]
    lines += [""]
  for r in rows:
    if r.get("section") == "skipped":
      lines += [f"Not run: {', '.join(r['impls'])}: {r['reason']}.", ""]
  peaks = [r for r in rows if r.get("section") == "peak"]
  if peaks:
    lines += ["## The device", ""]
    lines += _table(peaks, (("kind", "measurement"), ("n", "n"), ("mib", "MiB"),
                            ("sec", "s"), ("gflops", "GFLOP/s"), ("gb_per_sec", "GB/s")))
  for section, title in SECTIONS:
    data = [r for r in rows if r.get("section") == section and "sec_per_round_median" in r]
    extra = [r for r in rows if r.get("section") == section and "population_mib" in r]
    errors = [r for r in rows if r.get("section") == section and "error" in r]
    if not (data or extra or errors):
      continue
    lines += [f"## {title}", ""]
    for r in extra:
      lines += [f"Population: {r['population']:,} clients, {r['population_mib']:.0f} MiB, drawn "
                f"on the device in {r['generate_sec']:.1f} s.", ""]
    lines += _table(data, ROUND_COLUMNS) if data else []
    lines += [f"**Error** ({r.get('impl', section)}): `{r['error']}`" for r in errors] + [""]
  checks = [r for r in rows if r.get("section") == "check"]
  if checks:
    lines += ["## Results checks", "",
              "Parameters after two rounds from the same start, cohorts and batch orders.", ""]
    lines += _table(checks, (("workload", "workload"), ("clients_per_round", "clients/round"),
                             ("impl", "implementation"), ("precision", "precision"),
                             ("reference", "against"), ("rel_error", "relative error"),
                             ("tol", "tolerance"), ("ok", "ok"), ("skipped", "skipped")))
  choices = [r for r in rows if r.get("section") == "choice"]
  if choices:
    lines += ["## The choices behind \"auto\"", ""]
    lines += _table([r for r in choices if r["choice"] == "grad_mode"],
                    (("workload", "workload"), ("clients_per_round", "clients/round"),
                     ("auto", "auto picks"), ("auto_sec", "s/round"),
                     ("alternative", "other mode"), ("alternative_sec", "s/round"),
                     ("faster", "faster")))
    lines += _table([r for r in choices if r["choice"] == "shuffle"],
                    (("max_examples", "examples/client"), ("clients", "clients"),
                     ("epochs", "epochs"), ("rank_sec", "rank s"), ("sort_sec", "sort s"),
                     ("auto", "auto picks"), ("faster", "faster")))
  targets = [r for r in rows if r.get("section") == "target"]
  if targets:
    lines += ["## Targets", ""]
    if targets[0].get("evaluated") is False:
      lines += [f"Not evaluated: {targets[0]['reason']}.", ""]
    else:
      lines += _table(targets, (("name", "target"), ("value", "measured"), ("kind", ""),
                                ("bound", "bound"), ("met", "met")))
  for r in rows:
    if r.get("section") in ("env", "peak", "choice", "target") and "error" in r:
      lines += [f"**Error** in {r['section']}: `{r['error']}`", ""]
  (out / "report.md").write_text("\n".join(lines))
  _plot(rows, out)


def _plot(rows: list[dict], out: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  data = [r for r in rows if "sec_per_round_median" in r and r.get("section") in
          ("w1", "w2", "w2_million")]
  if not data:
    return
  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  for row_axes, workloads, title in ((axes[0], ("w1",), "W1 (MLP)"),
                                     (axes[1], ("w2", "w2_million"), "W2 (logistic regression)")):
    lines: dict[str, list[dict]] = {}
    for r in data:
      if r["section"] in workloads:
        label = r["impl"] + (" (1M population)" if r["section"] == "w2_million" else "")
        lines.setdefault(label, []).append(r)
    for label, rs in sorted(lines.items()):
      rs = sorted(rs, key=lambda r: r["clients_per_round"])
      k = [r["clients_per_round"] for r in rs]
      row_axes[0].loglog(k, [r["sec_per_round_median"] for r in rs], "o-", label=label)
      row_axes[1].loglog(k, [r["clients_per_sec"] for r in rs], "o-", label=label)
    row_axes[0].set(xlabel="clients per round", ylabel="seconds per round", title=title)
    row_axes[1].set(xlabel="clients per round", ylabel="clients per second", title=title)
    if lines:
      row_axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "scaling.png", dpi=90)
  plt.close(fig)


if __name__ == "__main__":
  raise SystemExit(main())
