"""The main job: configure, train, evaluate, checkpoint and report a federated run.

:func:`run_experiment` is what ``fedjax-lite run`` calls. A run is described
by a flat configuration (:data:`DEFAULTS`; a TOML file and command-line flags
override it) and writes to its output directory:

* ``config.json``: the resolved configuration, library versions and seed;
* ``metrics.jsonl``: one JSON object per round (``round``, ``train_loss``,
  ``clients``, ``examples``, ``seconds``; on evaluation rounds ``eval_loss``,
  ``eval_accuracy``, the per-client accuracy percentiles, and the central
  test set's ``central_loss``/``central_accuracy`` where the dataset has one);
* ``summary.json``: final metrics, rounds, wall time;
* ``curves.png``: loss and accuracy against rounds;
* ``checkpoint.ckpt``: the latest state (every ``checkpoint_every`` rounds
  and at the end). ``--resume`` continues from it and reproduces exactly the
  parameters of an uninterrupted run.

``seed`` drives the model initialization and the client sampling, and the
data partition (or generation) unless ``data_seed`` is set.

Sweeps (``--sweep KEY=VALUES``, repeatable, or ``sweep`` in the TOML file as a
list ``["seed=0..15"]`` or a table ``{client_lr = [0.01, 0.1]}``) run ``S``
experiments as one vectorized program (:func:`fedjax_lite.run_sweep`).
``VALUES`` is an inclusive integer range ``a..b`` or a comma list; several
keys form their Cartesian product (the last key varying fastest). The
sweepable keys are :data:`SWEEPABLE`: ``seed``, ``client_lr``, ``server_lr``,
and under ``--dp`` ``noise_multiplier`` and ``clip`` (not with
``--adaptive-clip``, whose clip and noise split are computed on the host; a
noise sweep also excludes ``--target-epsilon``). All experiments share one
population: ``data_seed`` is pinned to the base configuration's
``data_seed``, or its ``seed``. Experiment ``s`` equals the single run of
the configuration in its ``config.json`` (up to float rounding). ``--out
DIR`` then holds one subdirectory per experiment (``000_seed=0/``, ...) with
the single-run files above (``seconds`` being the wall time of the round of
all experiments), plus:

* ``sweep.json``: the sweep, the base configuration and a table of every
  experiment's final metrics;
* ``sweep.png``: train loss and eval accuracy of every experiment against
  rounds;
* ``checkpoint.ckpt``: the stacked states of all experiments; ``--resume``
  (with the same ``--sweep``) continues the sweep exactly.

Scaling out (:mod:`fedjax_lite.sharding`): ``devices`` (``--devices N`` or
``all``) shards the client axis over a one-axis mesh of ``N`` devices: the
training population and the clients' test data are padded with empty clients
and sharded (:func:`fedjax_lite.shard_clients`), the central test set and the
state are replicated, and the round runs with ``mesh=``. Sampling, keys and
DP noise are those of the single-device run, so results equal it up to float
summation order; single runs and sweeps alike. ``coordinator``,
``num_processes`` and ``process_id`` (``--coordinator HOST:PORT
--num-processes N --process-id I``, all three; or ``--coordinator auto``,
where ``jax.distributed.initialize()`` detects SLURM, Open MPI or Cloud TPU
and reads ``JAX_COORDINATOR_ADDRESS``) start JAX's multi-process runtime
before anything else, and the mesh then spans every process's devices
(``devices`` defaults to all of them). Every process runs the same
configuration and computes the same rounds; only process 0 writes the
outputs and logs, and every process returns the same summary (up to wall
times, and a sweep's echo of the configuration holds each process's own
``process_id``). ``--resume`` makes every process load the checkpoint from
``--out``, so a multi-host resume needs ``--out`` on a shared filesystem.
These four keys may change on ``--resume``.
"""

from typing import TYPE_CHECKING

from fedjax_lite import _lazy

# Every name and the module that defines it, imported on first use (PEP 562), so
# the command line reads the options without importing JAX.
_WHERE = {
    "Interrupted": "fedjax_lite.experiment.runtime",
    "ALGORITHMS": "fedjax_lite.experiment.config",
    "ConfigError": "fedjax_lite.experiment.config",
    "DATASETS": "fedjax_lite.experiment.config",
    "DEFAULTS": "fedjax_lite.experiment.config",
    "DPSetup": "fedjax_lite.experiment.dp",
    "DP_MECHANISMS": "fedjax_lite.experiment.config",
    "MODELS": "fedjax_lite.experiment.config",
    "PARTITIONS": "fedjax_lite.experiment.config",
    "POISSON_OVERFLOW_BOUND": "fedjax_lite.experiment.dp",
    "PROCESS_KEYS": "fedjax_lite.experiment.sweeps",
    "RESUMABLE_CHANGES": "fedjax_lite.experiment.config",
    "Recorder": "fedjax_lite.experiment.recorder",
    "RUN_FILES": "fedjax_lite.experiment.rundir",
    "SWEEPABLE": "fedjax_lite.experiment.sweeps",
    "SWEEP_FILES": "fedjax_lite.experiment.rundir",
    "Task": "fedjax_lite.experiment.build",
    "_algorithm": "fedjax_lite.experiment.build",
    "_check_resume": "fedjax_lite.experiment.config",
    "_client_optimizer": "fedjax_lite.experiment.build",
    "_due": "fedjax_lite.experiment.recorder",
    "_validate_run": "fedjax_lite.experiment.config",
    "build_dp": "fedjax_lite.experiment.dp",
    "build_task": "fedjax_lite.experiment.build",
    "check_output_dir": "fedjax_lite.experiment.rundir",
    "chunk_size_arg": "fedjax_lite.experiment.config",
    "data_seed": "fedjax_lite.experiment.sweeps",
    "devices_arg": "fedjax_lite.experiment.config",
    "experiment_config": "fedjax_lite.experiment.sweeps",
    "flag_message": "fedjax_lite.experiment.config",
    "load_dataset": "fedjax_lite.experiment.build",
    "option_errors": "fedjax_lite.experiment.config",
    "parse_sweep": "fedjax_lite.experiment.sweeps",
    "plot_curves": "fedjax_lite.experiment.outputs",
    "plot_sweep": "fedjax_lite.experiment.outputs",
    "prepare_output_dir": "fedjax_lite.experiment.rundir",
    "resolve_config": "fedjax_lite.experiment.config",
    "run_experiment": "fedjax_lite.experiment.run",
    "run_sweep_experiment": "fedjax_lite.experiment.run",
    "start_distributed": "fedjax_lite.experiment.runtime",
    "sweep_points": "fedjax_lite.experiment.sweeps",
    "versions": "fedjax_lite.experiment.outputs",
}
_WHERE.update({name: f"fedjax_lite.experiment.{name}" for name in (
    "build", "clock", "config", "dp", "options", "outputs", "recorder", "run", "rundir",
    "runtime", "schema", "sweeps")})
__getattr__, __dir__ = _lazy.attach(__name__, _WHERE)

if TYPE_CHECKING:  # what static tools see
  from fedjax_lite.experiment.build import (
    Task,
    build_task,
    load_dataset,
  )
  from fedjax_lite.experiment.build import _algorithm as _algorithm
  from fedjax_lite.experiment.build import _client_optimizer as _client_optimizer
  from fedjax_lite.experiment.config import (
    ALGORITHMS,
    DATASETS,
    DEFAULTS,
    DP_MECHANISMS,
    MODELS,
    PARTITIONS,
    RESUMABLE_CHANGES,
    ConfigError,
    chunk_size_arg,
    devices_arg,
    flag_message,
    option_errors,
    resolve_config,
  )
  from fedjax_lite.experiment.config import _check_resume as _check_resume
  from fedjax_lite.experiment.config import _validate_run as _validate_run
  from fedjax_lite.experiment.dp import POISSON_OVERFLOW_BOUND, DPSetup, build_dp
  from fedjax_lite.experiment.outputs import plot_curves, plot_sweep, versions
  from fedjax_lite.experiment.recorder import Recorder
  from fedjax_lite.experiment.recorder import _due as _due
  from fedjax_lite.experiment.run import run_experiment, run_sweep_experiment
  from fedjax_lite.experiment.rundir import (
    RUN_FILES,
    SWEEP_FILES,
    check_output_dir,
    prepare_output_dir,
  )
  from fedjax_lite.experiment.runtime import Interrupted, start_distributed
  from fedjax_lite.experiment.sweeps import (
    PROCESS_KEYS,
    SWEEPABLE,
    data_seed,
    experiment_config,
    parse_sweep,
    sweep_points,
  )

__all__ = [
    "Interrupted",
    # Configuration (config.py).
    "DEFAULTS", "SWEEPABLE", "RESUMABLE_CHANGES", "PROCESS_KEYS", "DATASETS", "MODELS",
    "ALGORITHMS", "PARTITIONS", "DP_MECHANISMS", "ConfigError", "resolve_config",
    "parse_sweep", "sweep_points", "data_seed", "experiment_config", "chunk_size_arg",
    "devices_arg", "flag_message", "option_errors",
    # What a configuration builds (build.py).
    "POISSON_OVERFLOW_BOUND", "Task", "build_task", "load_dataset",
    "DPSetup", "build_dp",
    # Output files (outputs.py).
    "RUN_FILES", "SWEEP_FILES", "check_output_dir", "prepare_output_dir", "versions",
    "plot_curves", "plot_sweep",
    # The multi-process runtime (runtime.py).
    "start_distributed",
    # The one recorder of rows, evaluations and checkpoints (recorder.py).
    "Recorder",
    # The orchestrators (run.py).
    "run_experiment", "run_sweep_experiment",
]
