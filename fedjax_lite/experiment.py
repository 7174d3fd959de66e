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
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "model": "mlp",
    "algorithm": "fedavg",
    "rounds": 150,
    "clients_per_round": 10,
    "local_epochs": 2,
    "batch_size": 8,
    "client_lr": 0.05,
    "server_lr": None,
    "seed": 0,
    "eval_every": 10,
    "checkpoint_every": 10,
    "out": None,
    "resume": False,
    "overwrite": False,
    "num_clients": 50,
    "partition": "dirichlet",
    "alpha": 0.5,
    "shards_per_client": 2,
    "test_fraction": 0.2,
    "synthetic_alpha": 1.0,
    "synthetic_beta": 1.0,
    "data_dir": None,
    "max_examples_per_client": None,
    "hidden": None,
    "chunk_size": 256,
    "progress": None,
    # Differential privacy (fedjax_lite.privacy).
    "dp": "none",
    "clip": 1.0,
    "noise_multiplier": None,
    "target_epsilon": None,
    "delta": 1e-5,
    "sampling": "fixed",
    "accountant": "rdp",
    "adaptive_clip": False,
    "target_quantile": 0.5,
    "local_dp": False,
}

# Probability bound of a Poisson draw overflowing the padded cohort (such a
# round is refused, never truncated).
POISSON_OVERFLOW_BOUND = 1e-9

# Snippets per Shakespeare client when max_examples_per_client is not set.
SHAKESPEARE_DEFAULT_CAP = 64

# Keys that may change between a run and its --resume (they do not change the
# trajectory of the parameters).
RESUMABLE_CHANGES = ("rounds", "eval_every", "checkpoint_every", "out", "resume", "overwrite",
                     "progress")

DATASETS = ("digits", "fashion_mnist", "shakespeare", "synthetic")
MODELS = ("logreg", "mlp", "2nn", "cnn", "char_lstm")
ALGORITHMS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
PARTITIONS = ("iid", "dirichlet", "shards")
DP_MECHANISMS = ("none", "gaussian", "laplace")


class ConfigError(ValueError):
  """An invalid configuration (unknown name or key, bad value, bad output dir)."""


def resolve_config(config_file: str | os.PathLike | None = None,
                   overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """Merges :data:`DEFAULTS`, a TOML file and explicit overrides, and validates.

  Args:
    config_file: optional TOML file whose top-level keys mirror the options
      (``clients_per_round`` or ``clients-per-round``).
    overrides: values given on the command line (``None`` values are ignored).

  Returns:
    The resolved configuration dict.

  Raises:
    ConfigError: for an unknown key, an unknown dataset/model/algorithm/
      partition name (listing the valid ones), or an out-of-range value.
  """
  config = dict(DEFAULTS)
  if config_file is not None:
    path = Path(config_file)
    try:
      loaded = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
      raise ConfigError(f"--config file {path} does not exist.") from e
    except tomllib.TOMLDecodeError as e:
      raise ConfigError(f"--config file {path} is not valid TOML: {e}") from e
    for key, value in loaded.items():
      name = key.replace("-", "_")
      if name not in DEFAULTS:
        raise ConfigError(
            f"unknown key {key!r} in --config file {path}; valid keys: {sorted(DEFAULTS)}.")
      config[name] = value
  for key, value in (overrides or {}).items():
    if value is not None:
      if key not in DEFAULTS:
        raise ConfigError(f"unknown option {key!r}.")
      config[key] = value
  _validate(config)
  return config


def _validate(c: dict[str, Any]) -> None:
  for key, valid in (("dataset", DATASETS), ("model", MODELS), ("algorithm", ALGORITHMS),
                     ("partition", PARTITIONS), ("dp", DP_MECHANISMS),
                     ("sampling", ("fixed", "poisson")), ("accountant", ("rdp", "pld"))):
    if c[key] not in valid:
      raise ConfigError(f"unknown {key} {c[key]!r}; choose one of: {', '.join(valid)}.")
  for key in ("rounds", "clients_per_round", "local_epochs", "batch_size", "num_clients"):
    if not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 1:
      raise ConfigError(f"{key} must be a positive integer; got {c[key]!r}.")
  for key in ("eval_every", "checkpoint_every", "seed"):
    if not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 0:
      raise ConfigError(f"{key} must be a non-negative integer; got {c[key]!r}.")
  for key in ("client_lr", "alpha"):
    if not isinstance(c[key], (int, float)) or not c[key] > 0:
      raise ConfigError(f"{key} must be > 0; got {c[key]!r}.")
  if c["server_lr"] is not None and not c["server_lr"] > 0:
    raise ConfigError(f"server_lr must be > 0; got {c['server_lr']!r}.")
  if c["dp"] == "none":
    if c["noise_multiplier"] is not None or c["target_epsilon"] is not None:
      raise ConfigError("noise_multiplier/target_epsilon need --dp gaussian or --dp laplace.")
  else:
    if (c["noise_multiplier"] is None) == (c["target_epsilon"] is None):
      raise ConfigError(f"--dp {c['dp']} needs exactly one of --noise-multiplier and "
                        "--target-epsilon.")
    if c["noise_multiplier"] is not None and not c["noise_multiplier"] > 0:
      raise ConfigError(f"noise_multiplier must be > 0; got {c['noise_multiplier']!r}.")
    if c["target_epsilon"] is not None and not c["target_epsilon"] > 0:
      raise ConfigError(f"target_epsilon must be > 0; got {c['target_epsilon']!r}.")
    if not isinstance(c["clip"], (int, float)) or not c["clip"] > 0:
      raise ConfigError(f"clip must be > 0; got {c['clip']!r}.")
    if not isinstance(c["delta"], (int, float)) or not 0 < c["delta"] < 1:
      raise ConfigError(f"delta must be in (0, 1); got {c['delta']!r}.")
    if c["adaptive_clip"] and c["dp"] != "gaussian":
      raise ConfigError("--adaptive-clip needs --dp gaussian (Andrew et al.'s method).")
    if not 0 < c["target_quantile"] < 1:
      raise ConfigError(f"target_quantile must be in (0, 1); got {c['target_quantile']!r}.")
  if c["model"] == "char_lstm" and c["dataset"] != "shakespeare":
    raise ConfigError("model 'char_lstm' needs dataset 'shakespeare'.")
  if c["dataset"] == "shakespeare" and c["model"] != "char_lstm":
    raise ConfigError("dataset 'shakespeare' needs model 'char_lstm'.")
  if c["model"] == "cnn" and c["dataset"] not in ("digits", "fashion_mnist"):
    raise ConfigError("model 'cnn' needs an image dataset (digits or fashion_mnist).")


def prepare_output_dir(config: dict[str, Any]) -> Path:
  """Creates/validates the output directory before any training.

  Raises:
    ConfigError: if the directory is not writable, or exists non-empty without
      ``resume`` or ``overwrite``, or ``resume`` finds nothing to resume.
  """
  if config["out"] is None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    config["out"] = str(Path("runs") / f"{config['dataset']}-{config['algorithm']}-{stamp}")
  out = Path(config["out"])
  if config["resume"] and config["overwrite"]:
    raise ConfigError("--resume and --overwrite contradict each other; pick one.")
  nonempty = out.is_dir() and any(out.iterdir())
  if out.exists() and not out.is_dir():
    raise ConfigError(f"--out {out} exists and is not a directory.")
  if config["resume"]:
    if not (out / "config.json").is_file():
      raise ConfigError(f"--resume: {out} holds no run to resume (no config.json).")
  elif nonempty and not config["overwrite"]:
    raise ConfigError(
        f"--out {out} exists and is not empty; pass --resume to continue that run or "
        "--overwrite to replace it.")
  try:
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".write-test"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ConfigError(f"--out {out} is not writable: {e}") from e
  if config["overwrite"]:
    for name in ("metrics.jsonl", "summary.json", "curves.png", "checkpoint.ckpt",
                 "config.json"):
      (out / name).unlink(missing_ok=True)
  return out


@dataclasses.dataclass
class Task:
  """What a configuration builds: data, model, loss and metric functions."""

  dataset: Any
  params: Any
  apply_fn: Callable[..., Any]
  loss: Callable[..., Any]
  metrics: Callable[..., Any]


def build_task(c: dict[str, Any]) -> Task:
  """Loads the dataset and initializes the model of a configuration."""
  import jax
  import jax.numpy as jnp

  from fedjax_lite import models

  ds = load_dataset(c)
  x = ds.train.arrays["x"]
  if c["model"] == "char_lstm":
    model = models.CharLSTM(ds.num_classes, hidden=c["hidden"] or 256)
    dummy = jnp.zeros((1,) + x.shape[2:], jnp.int32)
  else:
    width = c["hidden"] or 200
    model = {
        "logreg": lambda: models.LogisticRegression(ds.num_classes),
        "mlp": lambda: models.MLP((width,), ds.num_classes),
        "2nn": lambda: models.MLP((width, width), ds.num_classes),
        "cnn": lambda: models.CNN(ds.num_classes),
    }[c["model"]]()
    dummy = jnp.zeros((1,) + x.shape[2:], x.dtype)
  params = model.init(jax.random.key(c["seed"]), dummy)
  if c["model"] == "char_lstm":
    loss, metrics = models.sequence_loss(model.apply), models.sequence_metrics(model.apply)
  else:
    loss = models.classification_loss(model.apply)
    metrics = models.classification_metrics(model.apply)
  return Task(ds, params, model.apply, loss, metrics)


def load_dataset(c: dict[str, Any]):
  """The :class:`~fedjax_lite.datasets.FederatedDataset` of a configuration."""
  from fedjax_lite.datasets import images, leaf_synthetic, shakespeare

  part = dict(method=c["partition"], num_clients=c["num_clients"], alpha=c["alpha"],
              shards_per_client=c["shards_per_client"], test_fraction=c["test_fraction"],
              seed=c["seed"])
  if c["dataset"] == "digits":
    return images.load_digits_dataset(**part)
  if c["dataset"] == "fashion_mnist":
    kwargs = {} if c["data_dir"] is None else {"path": c["data_dir"]}
    return images.load_fashion_mnist(**kwargs, **part)
  if c["dataset"] == "shakespeare":
    # Stacked clients are padded to the largest one (HAMLET: 605 snippets), so
    # an uncapped cohort pays for HAMLET on every client: cap by default.
    cap = c["max_examples_per_client"] or SHAKESPEARE_DEFAULT_CAP
    return shakespeare.load_shakespeare(test_fraction=c["test_fraction"],
                                        max_snippets_per_client=cap)
  return leaf_synthetic.leaf_synthetic(
      c["num_clients"], c["synthetic_alpha"], c["synthetic_beta"],
      test_fraction=c["test_fraction"], seed=c["seed"],
      max_examples_per_client=c["max_examples_per_client"])


def versions() -> dict[str, str]:
  import flax
  import jax
  import jaxlib
  import optax

  import fedjax_lite
  return {"fedjax_lite": fedjax_lite.__version__, "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "numpy": np.__version__, "python": platform.python_version()}


def run_experiment(config: dict[str, Any], *, stop_after: int | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Runs (or resumes) the experiment described by a resolved configuration.

  Args:
    config: from :func:`resolve_config`.
    stop_after: stop after this many rounds *of this invocation* without the
      final evaluation, as an interruption would (used by tests; a later
      ``resume`` continues).
    log: where to print human-readable lines (default: stderr).

  Returns:
    The summary dict (also written to ``summary.json``).

  Raises:
    ConfigError: for a bad configuration or output directory, or a ``resume``
      whose saved configuration differs in a key that changes the run.
    fedjax_lite.checkpoint.CheckpointError: for a corrupted checkpoint.
  """
  import jax

  import fedjax_lite as fl
  from fedjax_lite import checkpoint, evaluation

  log = log or (lambda s: print(s, file=sys.stderr, flush=True))
  out = prepare_output_dir(config)
  if config["resume"]:
    saved = json.loads((out / "config.json").read_text())["config"]
    changed = sorted(k for k in DEFAULTS if k not in RESUMABLE_CHANGES
                     and saved.get(k) != config.get(k))
    if config["target_epsilon"] is not None and saved.get("rounds") != config["rounds"]:
      changed.append("rounds (the noise was calibrated for the run's total rounds)")
    if changed:
      raise ConfigError(
          f"--resume: the configuration differs from the saved run in {changed}; only "
          f"{list(RESUMABLE_CHANGES)} may change.")

  task = build_task(config)
  ds = task.dataset
  update = fl.build_client_update(task.loss, _client_optimizer(config),
                                  num_epochs=config["local_epochs"],
                                  batch_size=config["batch_size"])
  server_kwargs = {} if config["server_lr"] is None else {"learning_rate": config["server_lr"]}
  if config["clients_per_round"] > ds.train.num_clients:
    raise ConfigError(
        f"clients_per_round={config['clients_per_round']} exceeds the dataset's "
        f"{ds.train.num_clients} clients.")
  dp = build_dp(config, ds.train.num_clients)
  algo = fl.build_federated_algorithm(
      update, fl.server.server_optimizer(config["algorithm"], **server_kwargs),
      aggregator=dp.aggregator if dp else None, chunk_size=config["chunk_size"])
  state = algo.init(task.params)
  ckpt_path = out / "checkpoint.ckpt"
  metrics_path = out / "metrics.jsonl"
  if config["resume"]:
    if ckpt_path.exists():
      state, _ = checkpoint.load_checkpoint(ckpt_path, state)
    _truncate_metrics(metrics_path, int(state.round))
  (out / "config.json").write_text(json.dumps(
      {"config": config, "versions": versions(), "seed": config["seed"],
       "dataset_info": ds.info, "num_clients": ds.train.num_clients,
       "privacy": dp.describe() if dp else None}, indent=1, default=str))

  evaluate = evaluation.build_evaluator(task.metrics)
  central = None if ds.central_test is None else evaluation.as_single_client(ds.central_test)

  def eval_row(params) -> dict[str, float]:
    row = {}
    if ds.test is not None:
      s = evaluate(params, ds.test)
      row.update({"eval_loss": s["loss"], "eval_accuracy": s["accuracy"]})
      row.update({f"eval_{k}": v for k, v in s.items() if k.startswith("accuracy_")})
    if central is not None:
      s = evaluate(params, central)
      row.update({"central_loss": s["loss"], "central_accuracy": s["accuracy"]})
    return row

  start_round = int(state.round)
  remaining = config["rounds"] - start_round
  if stop_after is not None:
    remaining = min(remaining, stop_after)
  log(f"fedjax-lite run: {config['dataset']} ({ds.train.num_clients} clients, "
      f"{int(np.sum(ds.train.num_examples))} train examples), model {config['model']}, "
      f"{config['algorithm']}, rounds {start_round}..{start_round + max(remaining, 0)} of "
      f"{config['rounds']}, {config['clients_per_round']} clients/round -> {out}")
  started = time.perf_counter()
  last_eval: dict[str, float] = {}

  def on_round(r, state, m):
    nonlocal last_eval
    row = {"round": r, "train_loss": m["train_loss"], "clients": int(m["num_clients"]),
           "examples": int(m["num_examples"]), "seconds": m["seconds"]}
    if dp:
      row["epsilon"] = dp.epsilon(r + 1)
      row.update({k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("aggregator/")})
    final = r + 1 == config["rounds"]
    if final or (config["eval_every"] and (r + 1) % config["eval_every"] == 0):
      last_eval = eval_row(state.params)
      row.update(last_eval)
    with open(metrics_path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if final or (config["checkpoint_every"] and (r + 1) % config["checkpoint_every"] == 0):
      checkpoint.save_checkpoint(ckpt_path, state, {"round": r + 1, "seed": config["seed"]})
    return {"acc": f"{last_eval['eval_accuracy']:.3f}"} if "eval_accuracy" in last_eval else None

  if remaining > 0:
    state, _ = fl.run_rounds(algo, state, ds.train, num_rounds=remaining,
                             sampler=dp.sampler if dp else None,
                             cohort_size=None if dp else config["clients_per_round"],
                             key=jax.random.key(config["seed"]), progress=config["progress"],
                             callback=on_round)
  wall = time.perf_counter() - started
  rows = [json.loads(line) for line in metrics_path.read_text().splitlines()] \
      if metrics_path.exists() else []
  finished = int(state.round) >= config["rounds"]
  evals = [r for r in rows if "eval_accuracy" in r]
  summary = {
      "rounds_completed": int(state.round),
      "rounds": config["rounds"],
      "finished": finished,
      "wall_seconds_this_invocation": wall,
      "train_seconds_total": float(sum(r["seconds"] for r in rows)),
      "final_train_loss": rows[-1]["train_loss"] if rows else None,
      **({k: v for k, v in evals[-1].items() if k.startswith(("eval_", "central_"))}
         if evals else {}),
      "best_eval_accuracy": max((r["eval_accuracy"] for r in evals), default=None),
      "chance_accuracy": 1.0 / ds.num_classes,
      **({"epsilon": dp.epsilon(int(state.round)), "delta": config["delta"],
          "privacy": dp.describe()} if dp else {}),
      "out": str(out),
  }
  (out / "summary.json").write_text(json.dumps(summary, indent=1))
  if rows:
    plot_curves(rows, out / "curves.png", title=f"{config['dataset']} / {config['model']} / "
                f"{config['algorithm']}")
  log(json.dumps({"summary": summary}))
  return summary


@dataclasses.dataclass
class DPSetup:
  """The privacy side of a run: aggregator, sampler and accounting."""

  spec: Any
  aggregator: Any
  sampler: Any
  delta: float
  accountant: str
  _cache: dict = dataclasses.field(default_factory=dict)

  def epsilon(self, rounds: int) -> float:
    if rounds not in self._cache:
      from fedjax_lite import privacy
      self._cache[rounds] = privacy.epsilon(self.spec, rounds, self.delta, self.accountant)
    return self._cache[rounds]

  def describe(self) -> dict[str, Any]:
    out = {**dataclasses.asdict(self.spec), "delta": self.delta, "accountant": self.accountant,
           "padded_cohort": self.sampler.cohort_size, "sampling_rate": self.spec.rate}
    if self.sampler.kind == "poisson":
      out["overflow_probability_bound"] = POISSON_OVERFLOW_BOUND
    return out


def build_dp(config: dict[str, Any], num_clients: int) -> DPSetup | None:
  """The DP aggregator, sampler and accounting a configuration asks for.

  The noise multiplier is calibrated here for ``target_epsilon`` (over all
  ``rounds``); the accounting event matches the sampler (Poisson at rate
  ``clients_per_round / N``, or fixed-size).

  Raises:
    ConfigError: for a combination the accountant cannot account or an
      unreachable target epsilon.
  """
  import fedjax_lite as fl
  from fedjax_lite import privacy

  if config["dp"] == "none":
    return None
  k = config["clients_per_round"]
  if config["sampling"] == "poisson":
    sampler = fl.poisson_sampler(num_clients, k / num_clients, POISSON_OVERFLOW_BOUND)
  else:
    sampler = fl.fixed_size_sampler(num_clients, k)
  adaptive = privacy.AdaptiveClipping(target_quantile=config["target_quantile"],
                                      initial_clip=config["clip"]) \
      if config["adaptive_clip"] else None
  sigma_b = (k / 20.0) if adaptive else None
  try:
    spec = privacy.DPSpec(config["dp"], config["noise_multiplier"] or 1.0, config["sampling"],
                          num_clients, k, count_noise_std=sigma_b, local=config["local_dp"])
    privacy.make_accountant(spec, config["accountant"])  # refuses unsupported combinations
    if config["target_epsilon"] is not None:
      z = privacy.calibrate_noise(spec, config["rounds"], config["target_epsilon"],
                                  config["delta"], config["accountant"])
      spec = dataclasses.replace(spec, noise_multiplier=z)
    make = privacy.gaussian_aggregator if config["dp"] == "gaussian" \
        else privacy.laplace_aggregator
    kwargs = {"adaptive": adaptive} if config["dp"] == "gaussian" else {}
    aggregator = make(config["clip"], spec.noise_multiplier, float(k), local=config["local_dp"],
                      **kwargs)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  return DPSetup(spec, aggregator, sampler, config["delta"], config["accountant"])


def _client_optimizer(config):
  import optax
  return optax.sgd(config["client_lr"])


def _truncate_metrics(path: Path, upto_round: int) -> None:
  """Drops metrics of rounds at or after ``upto_round`` (not in the checkpoint)."""
  if not path.exists():
    return
  keep = []
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:  # a line cut short when the process was killed
      continue
    if row["round"] < upto_round:
      keep.append(line)
  path.write_text("".join(line + "\n" for line in keep))


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
  """Writes ``curves.png``: train/eval loss and eval accuracy against rounds."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  rounds = [r["round"] + 1 for r in rows]
  ax_loss.plot(rounds, [r["train_loss"] for r in rows], label="train loss (cohort)", lw=1)
  ev = [r for r in rows if "eval_loss" in r]
  if ev:
    ax_loss.plot([r["round"] + 1 for r in ev], [r["eval_loss"] for r in ev], "o-",
                 label="eval loss (clients' test data)")
    er = [r["round"] + 1 for r in ev]
    ax_acc.plot(er, [r["eval_accuracy"] for r in ev], "o-", label="eval accuracy (pooled)")
    if "eval_accuracy_p10" in ev[0]:
      ax_acc.fill_between(er, [r["eval_accuracy_p10"] for r in ev],
                          [r["eval_accuracy_p90"] for r in ev], alpha=0.25,
                          label="per-client accuracy, 10th-90th pct")
    if "central_accuracy" in ev[0]:
      ax_acc.plot(er, [r["central_accuracy"] for r in ev], "s--", label="central test accuracy")
  ax_loss.set_xlabel("round")
  ax_loss.set_ylabel("loss")
  ax_loss.legend()
  ax_acc.set_xlabel("round")
  ax_acc.set_ylabel("accuracy")
  ax_acc.set_ylim(0, 1)
  ax_acc.legend(loc="lower right")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
