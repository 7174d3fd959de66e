"""The orchestrators: :func:`run_experiment` and :func:`run_sweep_experiment`."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_lite import presets
from fedjax_lite.experiment.build import _algorithm, _evaluator, build_task, model_size
from fedjax_lite.experiment.clock import (
  build_async,
  build_devices,
  concurrency,
  sampled_cohort,
  uses_clock,
)
from fedjax_lite.experiment.config import ConfigError, _check_cohort, option_errors
from fedjax_lite.experiment.dp import _sweep_dp, build_dp
from fedjax_lite.experiment.outputs import _close, plot_sweep, versions
from fedjax_lite.experiment.recorder import Recorder
from fedjax_lite.experiment.rundir import release_output_dir
from fedjax_lite.experiment.runtime import Interrupted, _load_state, _start, stop_signals
from fedjax_lite.experiment.sweeps import data_seed, experiment_config, sweep_points


def run_experiment(config: dict[str, Any], *, stop_after: int | None = None,
                   log: Callable[[str], None] | None = None,
                   verbose: bool = False) -> dict[str, Any]:
  """Runs (or resumes) the experiment described by a resolved configuration.

  A configuration with a ``sweep`` runs all its experiments together
  (:func:`run_sweep_experiment`).

  Args:
    config: from :func:`resolve_config`.
    stop_after: stop after this many rounds *of this invocation* without the
      final evaluation, as an interruption would (used by tests; a later
      ``resume`` continues).
    log: where to print human-readable lines (default: stderr; only process
      0 of a multi-process run logs).
    verbose: also log every round's metrics row.

  Returns:
    The summary dict (also written to ``summary.json``); for a sweep, the
    contents of ``sweep.json``. Every process of a multi-process run returns
    it (the same up to wall times and the echoed ``process_id``).

  Raises:
    ConfigError: for a bad configuration or output directory, a ``resume``
      whose saved configuration differs in a key that changes the run, more
      ``devices`` than JAX sees, or a multi-process runtime that cannot start.
    fedjax_lite.checkpoint.CheckpointError: for a corrupted checkpoint.
  """
  if config.get("sweep"):
    return run_sweep_experiment(config, stop_after=stop_after, log=log, verbose=verbose)
  return _held(config, "config.json", _run_single, stop_after=stop_after, log=log,
               verbose=verbose)


def _held(config: dict[str, Any], saved: str, body: Callable[..., dict[str, Any]],
          **kwargs: Any) -> dict[str, Any]:
  """``body(config, out, mesh, main, removed, received=, sinks=, **kwargs)`` with ``--out`` held.

  Starts the run (:func:`_start`), lets SIGINT/SIGTERM stop it at a round
  boundary, and whatever happens closes the ``--log`` loggers and releases
  the output directory's lock.
  """
  out, mesh, main, removed = _start(config, saved)
  sinks: list[Any] = []
  try:
    with stop_signals() as received:
      return body(config, out, mesh, main, removed, received=received, sinks=sinks, **kwargs)
  finally:
    _close(sinks)
    release_output_dir(out)


def _run_single(config: dict[str, Any], out: Path, mesh: Any, main: bool, removed: list[str],
                *, stop_after: int | None, log: Callable[[str], None] | None,
                verbose: bool, received: Callable[[], int | None],
                sinks: list[Any]) -> dict[str, Any]:
  """:func:`run_experiment` once its output directory is held.

  ``received()`` says whether a stop signal came; the loggers of ``--log`` are
  appended to ``sinks`` (closed by the caller).
  """
  import jax

  import fedjax_lite as fl

  log = (log or _stderr) if main else _quiet
  if removed:
    log(f"fedjax-lite run: --overwrite removed {', '.join(removed)} from {out}")
  asynchronous = config["algorithm"] in presets.ASYNC_ALGORITHMS
  key = jax.random.key(config["seed"])
  with option_errors():  # what the library refuses, named by option
    task = build_task(config)
    ds = task.dataset
    _check_cohort(config, ds)
    n = ds.train.num_clients
    dp = build_dp(config, n, model_size(task.params))
    devices = build_devices(config, n) if uses_clock(config) else None
    algo = _algorithm(config, task, dp.aggregator if dp else None, mesh=mesh, devices=devices)
    train, cap = _population(config, ds, mesh)
    if asynchronous:
      if isinstance(train, fl.RaggedData):
        raise ConfigError(f"--algorithm {config['algorithm']} steps a stacked population, and "
                          f"--dataset {config['dataset']} is stored ragged; use a synchronous "
                          "algorithm (with --deadline or --over-select for time) on it.")
      fedbuff = build_async(config, algo, devices, n)
      state = fedbuff.init(task.params, train, key)
    else:
      state = algo.init(task.params, num_clients=n)
  # The synchronous server state (params, round) of either kind of state.
  server = (lambda s: s.server) if asynchronous else (lambda s: s)
  if config["resume"] and (out / "checkpoint.ckpt").exists():
    state = _load_state(out / "checkpoint.ckpt", state, mesh)
  start_round = int(server(state).round)
  eval_row = _evaluator(task, mesh, config)
  recorder = Recorder(config, out, [(out, config, dp)],
                      evaluate=lambda i, state: eval_row(server(state).params, server(state)),
                      main=main, checkpoint_meta={"seed": config["seed"]}, received=received,
                      sinks=sinks, log=log, verbose=verbose)
  recorder.start(state, start_round, ds, mesh)
  remaining = _remaining(config, start_round, stop_after)
  steps = "server steps" if asynchronous else "rounds"
  log(f"fedjax-lite run: {_describe_run(config, ds)}, {steps} {start_round}.."
      f"{start_round + remaining} of {config['rounds']} -> {out}")
  started = time.perf_counter()
  completed, interrupted = start_round, None
  record = lambda r, state, m: recorder.round(r, state, [m])
  progress = config["progress"] if main else False
  try:
    if remaining > 0 and asynchronous:
      state, _ = fl.asynchronous.run_async(fedbuff, state, train, num_steps=remaining, key=key,
                                           progress=progress, callback=record)
    elif remaining > 0:
      state, _ = fl.run_rounds(algo, state, train, num_rounds=remaining,
                               sampler=dp.sampler if dp else None,
                               cohort_size=None if dp else sampled_cohort(config),
                               key=key, progress=progress, callback=record,
                               max_examples_per_client=cap)
    completed = int(server(state).round)
  except Interrupted as e:
    interrupted, completed = e, e.rounds
  [summary] = recorder.finish(ds, completed, time.perf_counter() - started)
  if interrupted is not None:
    raise interrupted
  log(f"fedjax-lite run: done, {summary.get('rounds_completed')} rounds -> {out}")
  return summary


def run_sweep_experiment(config: dict[str, Any], *, stop_after: int | None = None,
                         log: Callable[[str], None] | None = None,
                         verbose: bool = False) -> dict[str, Any]:
  """Runs (or resumes) every experiment of a sweep as one vectorized program.

  The experiments (:func:`sweep_points`) share the population (drawn with the
  base configuration's :func:`data_seed`) and are stepped together by
  :func:`fedjax_lite.run_sweep`: each from its own seed's initial parameters
  and PRNG key, with its swept learning rates, noise multiplier or clip as
  traced scalars. Experiment ``s`` equals ``run_experiment`` of the
  configuration in its ``config.json`` (:func:`experiment_config`) up to float
  rounding. Every round, each experiment's metrics are written to its own
  directory (evaluation loops over the experiments on the host with the
  single run's evaluator); the stacked states are checkpointed in ``out``.

  Args:
    config: from :func:`resolve_config`, with a ``sweep``.
    stop_after: as in :func:`run_experiment`.
    log: where to print human-readable lines (default: stderr; only process
      0 of a multi-process run logs).
    verbose: also log every experiment's metrics row of every round.

  Returns:
    The contents of ``sweep.json``: the sweep, the base configuration, and
    under ``experiments`` each experiment's directory, swept values and final
    metrics (returned by every process of a multi-process run).

  Raises:
    ConfigError: for a bad configuration or output directory, a ``resume``
      whose saved configuration (sweep included) differs in a key that
      changes the runs, or a device or process option that cannot be met.
    fedjax_lite.checkpoint.CheckpointError: for a corrupted checkpoint.
    ValueError: if a client delta becomes NaN/Inf in some experiment.
  """
  return _held(config, "sweep.json", _run_sweep, stop_after=stop_after, log=log,
               verbose=verbose)


def _run_sweep(config: dict[str, Any], out: Path, mesh: Any, main: bool, removed: list[str],
               *, stop_after: int | None, log: Callable[[str], None] | None,
               verbose: bool, received: Callable[[], int | None],
               sinks: list[Any]) -> dict[str, Any]:
  """:func:`run_sweep_experiment` once its output directory is held (see :func:`_run_single`)."""
  import jax
  import jax.numpy as jnp

  import fedjax_lite as fl

  log = (log or _stderr) if main else _quiet
  if removed:
    log(f"fedjax-lite run: --overwrite removed {', '.join(removed)} from {out}")
  points = sweep_points(config)
  num = len(points)
  width = max(3, len(str(num - 1)))
  names = [f"{i:0{width}d}_" + ",".join(f"{k}={v}" for k, v in point.items())
           for i, point in enumerate(points)]
  configs = [experiment_config(config, point, out / name) for point, name in zip(points, names,
                                                                                strict=True)]
  swept = config["sweep"]
  hparams = {k: jnp.asarray([c[k] for c in configs], jnp.float32) for k in swept if k != "seed"}
  with option_errors():  # what the library refuses, named by option
    task = build_task(configs[0])
    ds = task.dataset
    _check_cohort(config, ds)
    dps = _sweep_dp(configs, ds.train.num_clients, model_size(task.params))
    devices = build_devices(config, ds.train.num_clients) if uses_clock(config) else None

    def make(h):
      values = h if isinstance(h, dict) else {}
      c = {**configs[0], **values}
      aggregator = None
      if dps[0]:
        z = values["noise_multiplier"] if "noise_multiplier" in values \
            else dps[0].noise_multiplier
        aggregator = dps[0].aggregator_for(c, z)
      return _algorithm(c, task, aggregator, mesh=mesh, devices=devices)

    inits: dict[int, Any] = {}
    for c in configs:
      if c["seed"] not in inits:
        inits[c["seed"]] = task.init_params(c["seed"])
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *[inits[c["seed"]] for c in configs])
    keys = jax.random.key_data(jnp.stack([jax.random.key(c["seed"]) for c in configs]))
    sweep_h = hparams or jnp.zeros((num,))
    train, cap = _population(config, ds, mesh)
    if mesh is not None:
      # Everything the sweep's programs take is placed on the mesh, as a single
      # run's state is by algo.init: replicated, and the population sharded.
      params, sweep_h, keys = fl.replicate((params, sweep_h, keys), mesh)
    states = jax.vmap(lambda h, p: make(h).init(p, num_clients=ds.train.num_clients))(
        sweep_h, params)
  resumed = config["resume"] and (out / "checkpoint.ckpt").exists()
  if resumed:
    states = _load_state(out / "checkpoint.ckpt", states, mesh)
  start_round = int(np.asarray(states.round).flat[0])
  dirs = [out / name for name in names]
  evaluate = _evaluator(task, mesh)
  recorder = Recorder(config, out, list(zip(dirs, configs, dps, strict=True)),
                      evaluate=lambda i, states: evaluate(
                          jax.tree.map(lambda x: x[i], states.params)),
                      main=main, checkpoint_meta={"experiments": num}, received=received,
                      sinks=sinks, log=log, verbose=verbose)
  recorder.start(states, start_round, ds, mesh)
  sweep_info = {"sweep": swept, "num_experiments": num,
                "product": "Cartesian product of the swept keys in this order, the last "
                           "varying fastest",
                "data_seed": data_seed(config), "config": config, "versions": versions(),
                "experiments": [{"index": i, "dir": name, "values": point}
                                for i, (name, point) in enumerate(zip(names, points,
                                                                      strict=True))]}
  if main:
    (out / "sweep.json").write_text(json.dumps(sweep_info, indent=1, default=str))

  remaining = _remaining(config, start_round, stop_after)
  log(f"fedjax-lite run --sweep: {num} experiments ("
      + ", ".join(f"{k}: {len(v)} values" for k, v in swept.items())
      + f") as one vectorized program; {_describe_run(config, ds)}, rounds {start_round}.."
      f"{start_round + remaining} of {config['rounds']} -> {out}")
  started = time.perf_counter()

  def on_round(r, states, row):
    seconds = float(row["seconds"])
    metrics = [{**{k: float(v[i]) for k, v in row.items() if k != "seconds"},
                "seconds": seconds} for i in range(num)]
    return recorder.round(r, states, metrics)

  rounds_completed, interrupted = start_round, None
  try:
    if remaining > 0:
      states, _ = fl.run_sweep(make, sweep_h, params, train, num_rounds=remaining,
                               keys=keys, sampler=dps[0].sampler if dps[0] else None,
                               cohort_size=None if dps[0] else sampled_cohort(config),
                               stacked_params=True, states=states if resumed else None,
                               callback=on_round,
                               progress=config["progress"] if main else False,
                               max_examples_per_client=cap)
      rounds_completed = int(np.asarray(states.round).flat[0])
  except Interrupted as e:
    interrupted, rounds_completed = e, e.rounds
  except ValueError as e:
    # run_sweep refuses a round an experiment did not apply (NaN/Inf clients).
    refused = re.match(r"experiment (\d+) ", str(e))
    if refused is None:
      raise
    raise ValueError(f"{names[int(refused[1])]}: {e} The round was not recorded (the last "
                     "checkpoint is intact); lower that learning rate or leave the value out "
                     "of the sweep.") from None
  wall = time.perf_counter() - started
  summaries = recorder.finish(ds, rounds_completed, wall)
  table = [{**sweep_info["experiments"][i],
            **{k: v for k, v in summary.items() if k not in _NOT_IN_SWEEP_TABLE}}
           for i, summary in enumerate(summaries)]
  sweep_info.update({"rounds_completed": rounds_completed, "rounds": config["rounds"],
                     "finished": rounds_completed >= config["rounds"],
                     "wall_seconds_this_invocation": wall,
                     "experiments": table, "out": str(out)})
  if main:
    (out / "sweep.json").write_text(json.dumps(sweep_info, indent=1, default=str))
  if main and any(recorder.rows):
    plot_sweep(list(zip(names, recorder.rows, strict=True)), out / "sweep.png",
               title=f"{config['dataset']} / {config['model']} / {config['algorithm']}: sweep "
                     f"over {', '.join(swept)}")
  if interrupted is not None:
    raise interrupted
  log(f"fedjax-lite run: done, {len(table)} experiments -> {out}")
  return sweep_info


# Summary entries left out of sweep.json's per-experiment table.
_NOT_IN_SWEEP_TABLE = ("privacy", "out", "rounds", "rounds_completed", "finished",
                       "wall_seconds_this_invocation", "train_seconds_total", "chance_accuracy",
                       "delta")


def _stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _quiet(line: str) -> None:
  del line


def _describe_run(config: dict[str, Any], ds) -> str:
  n = ds.train.num_clients
  if config["algorithm"] in presets.ASYNC_ALGORITHMS:
    cohort = (f"{concurrency(config, n)} clients in flight, a server step every "
              f"{presets.cohort_size(config)} finished")
  else:
    cohort = f"{config['clients_per_round']} clients/round"
    if config["over_select"] is not None:
      cohort += f" (the first to finish of {sampled_cohort(config)} sampled)"
  return (f"{config['dataset']} ({n} clients, {int(np.sum(ds.train.num_examples))} train "
          f"examples), model {config['model']}, {config['algorithm']}, {cohort}")


def _population(config: dict[str, Any], ds: Any, mesh: Any) -> tuple[Any, int | None]:
  """The training population as the round loop takes it, and its per-round cap.

  A ragged population (Shakespeare, LEAF, TFF, Hugging Face) stays on the host:
  each round's cohort is gathered there, capped by ``max_examples_per_client``,
  and sharded over ``mesh`` by the round itself. A stacked one is sharded over
  ``mesh`` whole.
  """
  import fedjax_lite as fl

  if isinstance(ds.train, fl.RaggedData):
    return ds.train, config["max_examples_per_client"]
  return (ds.train if mesh is None else fl.shard_clients(ds.train, mesh)), None


def _remaining(config: dict[str, Any], start_round: int, stop_after: int | None) -> int:
  """The rounds this invocation runs: to ``rounds``, or ``stop_after`` of them."""
  remaining = max(config["rounds"] - start_round, 0)
  return remaining if stop_after is None else min(remaining, stop_after)
