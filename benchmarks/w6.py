"""W6: a heavy-tailed population of 1,000,000 clients, stored ragged.

Client sizes are log-normal with median 20 and mean about 50 examples
(``sigma = sqrt(2 ln 2.5)``; the largest of a million is about 15,000); 20
float32 features, 10 classes labelled by a fixed random linear teacher;
logistic regression, FedAvg, 1,000 clients per round, 1 local epoch of batch
16. The population is a :class:`fedjax_lite.RaggedData` (a stacked one would
pad every client to the largest: about 300 times the data).

One JSON line with:

* ``population_bytes`` against ``raw_bytes`` (the examples' own bytes), and
  the process's resident memory growth while building it;
* ``sec_per_round_median`` of :func:`fedjax_lite.run_rounds` on the ragged
  population (sampling and gathering included, the next cohort gathered
  while the round computes) over the rounds that met an already compiled
  bucket, ``rounds_compiling`` (the others: each compiles one program) and
  ``programs_compiled`` (one per bucket met);
* ``sample_sec`` (drawing 1,000 of 1,000,000 clients, read back on the
  host) and ``gather_sec`` (one cohort into its bucket), and their share of
  the round;
* ``stacked_round_sec``: the same cohorts' rounds on a stacked population of
  exactly those clients padded to their largest (no bucket), and
  ``ragged_round_sec``: the round alone on the bucketed cohort, timed
  round-robin with it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

SIGMA = math.sqrt(2 * math.log(2.5))  # mean / median = exp(sigma^2 / 2) = 2.5


def heavy_tailed_population(num_clients: int, *, median: float = 20.0, features: int = 20,
                            classes: int = 10, seed: int = 0):
  """The W6 population, built in blocks so no temporary is larger than a block."""
  import fedjax_lite as fl

  rng = np.random.default_rng(seed)
  sizes = np.maximum(1, np.rint(rng.lognormal(math.log(median), SIGMA, num_clients))).astype(
      np.int64)
  total = int(sizes.sum())
  x = np.empty((total, features), np.float32)
  y = np.empty((total,), np.int32)
  teacher = rng.normal(size=(features, classes)).astype(np.float32)
  block = 1 << 20
  for start in range(0, total, block):
    stop = min(start + block, total)
    rng.standard_normal(size=(stop - start, features), dtype=np.float32, out=x[start:stop])
    logits = x[start:stop] @ teacher + rng.gumbel(size=(stop - start, classes)).astype(
        np.float32)
    y[start:stop] = logits.argmax(1)
  return fl.RaggedData.from_arrays({"x": x, "y": y}, sizes)


def run(num_clients: int, cohort: int, rounds: int, warmup: int, compare: int,
        on_device: bool = False) -> dict:
  import jax
  import optax

  import fedjax_lite as fl
  from benchmarks import common
  from fedjax_lite.training import _cohort_step

  rss0 = common.peak_rss_mib()
  t = time.perf_counter()
  pop = heavy_tailed_population(num_clients)
  build_sec = time.perf_counter() - t
  rss1 = common.peak_rss_mib()
  raw = sum(a.nbytes for a in pop.arrays.values())
  if on_device:  # the store on the device: a cohort's gather sends only its row numbers
    pop = pop.to_device()

  model = fl.models.LogisticRegression(10)
  params = model.init(jax.random.key(0), np.zeros((1, 20), np.float32))
  update = fl.build_client_update(fl.models.classification_loss(model.apply), optax.sgd(0.05),
                                  num_epochs=1, batch_size=16)
  algo = fl.build_federated_algorithm(update, fl.server.fedavg())
  key = jax.random.key(0)
  state = algo.init(params)
  state, _ = fl.run_rounds(algo, state, pop, num_rounds=warmup, cohort_size=cohort, key=key,
                           progress=False)
  # A round that meets a new bucket compiles its program (a second or two):
  # those rounds are counted apart, the others timed.
  compiled = [_cohort_step(algo)._cache_size()]
  state, hist = fl.run_rounds(
      algo, state, pop, num_rounds=rounds, cohort_size=cohort, key=key, progress=False,
      callback=lambda r, s, m: compiled.append(_cohort_step(algo)._cache_size()))
  warm = [h["seconds"] for h, a, b in zip(hist, compiled[:-1], compiled[1:], strict=True) if a == b]
  round_sec = statistics.median(warm) if warm else float("nan")

  # Sampling alone (jitted draw, read back) and gathering alone, on the host.
  sampler = fl.fixed_size_sampler(num_clients, cohort)
  draw = jax.jit(sampler.sample)
  jax.device_get(draw(key))
  sample_times, gather_times, cohorts = [], [], []
  for r in range(20):
    k = jax.random.fold_in(key, r)
    t = time.perf_counter()
    idx, mask, _ = jax.device_get(draw(k))
    sample_times.append(time.perf_counter() - t)
    t = time.perf_counter()
    jax.block_until_ready(pop.gather(idx, mask))
    gather_times.append(time.perf_counter() - t)
    cohorts.append(idx)
  sample_sec, gather_sec = statistics.median(sample_times), statistics.median(gather_times)

  # The same cohorts' round: bucketed (as run_rounds runs it) against a stacked
  # population of exactly those clients, padded to their largest; round-robin.
  step = jax.jit(lambda s, c, k: algo.round(s, c, k)[0])
  ragged_t, stacked_t, lengths = [], [], []
  for idx in cohorts[:compare]:
    bucketed = jax.device_put(pop.gather(idx))
    longest = int(pop.num_examples[idx].max())
    stacked = jax.device_put(pop.gather(idx, length=longest))
    lengths.append((longest, bucketed.max_examples))
    for data, times in ((bucketed, ragged_t), (stacked, stacked_t)):
      jax.block_until_ready(step(state, data, key))  # compile for this shape
      t = time.perf_counter()
      jax.block_until_ready(step(state, data, key))
      times.append(time.perf_counter() - t)
  ragged_round, stacked_round = statistics.median(ragged_t), statistics.median(stacked_t)
  return {
      "workload": "w6", "impl": "ragged_on_device" if on_device else "ragged",
      "population": num_clients,
      "clients_per_round": cohort, "total_examples": pop.total_examples,
      "median_client": float(np.median(pop.num_examples)),
      "mean_client": float(pop.num_examples.mean()), "largest_client": pop.max_examples,
      "raw_bytes": raw, "population_bytes": pop.nbytes,
      "memory_ratio": pop.nbytes / raw, "rss_growth_ratio": (rss1 - rss0) * 2**20 / raw,
      "build_sec": build_sec,
      "stacked_population_bytes_would_be": num_clients * pop.max_examples * (20 * 4 + 4),
      "sec_per_round_median": round_sec, "rounds_timed": len(warm),
      "rounds_compiling": rounds - len(warm),
      "sec_per_round_all_median": statistics.median(h["seconds"] for h in hist),
      "programs_compiled": _cohort_step(algo)._cache_size(),
      "sample_sec": sample_sec, "gather_sec": gather_sec,
      "sample_gather_share": (sample_sec + gather_sec) / round_sec,
      "ragged_round_sec": ragged_round, "stacked_round_sec": stacked_round,
      "ragged_over_stacked": ragged_round / stacked_round,
      "run_rounds_over_stacked": round_sec / stacked_round,
      "cohort_largest_and_bucket": lengths,
  }


def main(argv=None) -> int:
  from benchmarks import common

  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--clients", type=int, default=1_000_000, help="population size")
  p.add_argument("--clients-per-round", type=int, default=1000)
  p.add_argument("--rounds", type=int, default=20, help="timed rounds")
  p.add_argument("--warmup", type=int, default=10, help="rounds run first (compiling buckets)")
  p.add_argument("--compare", type=int, default=5, help="cohorts timed bucketed and stacked")
  p.add_argument("--on-device", action="store_true",
                 help="keep the population on the device (RaggedData.to_device)")
  p.add_argument("--quick", action="store_true", help="10,000 clients, 100 per round")
  args = p.parse_args(argv)
  if args.quick:
    args.clients, args.clients_per_round, args.rounds, args.warmup, args.compare = (
        10_000, 100, 2, 1, 2)
  common.emit(run(args.clients, args.clients_per_round, args.rounds, args.warmup, args.compare,
                  args.on_device))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
