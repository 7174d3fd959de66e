"""The run's options as typed, frozen sections: one declaration per option.

Every option of ``fedjax-lite run`` is a field of one section dataclass
(:class:`DataConfig`, :class:`ModelConfig`, ...; :class:`Config` holds them
all). A field's metadata (:class:`Opt`) says its type, its domain, its help
text and when it applies; from that single declaration come the defaults, the
command-line flags and their ``--help`` groups, the strict checks of values
from flags and TOML files (``overwrite = "false"`` is an error naming the key,
the value and the expected type, never a truthy string), and the refusal of
an option that the chosen dataset, model, algorithm, aggregator or mechanism
does not use.

Option names are unique across sections, so the flat keys of earlier
versions (``clients_per_round = 10`` at the top of a TOML file, or
``--clients-per-round 10``) and TOML tables (``[training]
clients_per_round = 10``) both map onto the same field. The algorithms' own
hyperparameters come from :data:`fedjax_lite.algorithms.PRESETS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fedjax_lite import presets
from fedjax_lite.algorithms import PRESETS
from fedjax_lite.experiment import catalog
from fedjax_lite.experiment.schema import (
    INT_OR_ALL,
    INT_OR_AUTO,
    ConfigError,
    Opt,
    option,
    when,
)

DATASETS = tuple(catalog.DATASETS)
MODELS = ("logreg", "mlp", "2nn", "cnn", "femnist_cnn", "char_lstm", "next_word_lstm")
_WIDE_MODELS = ("mlp", "2nn", "char_lstm", "next_word_lstm")
PARTITIONS = ("iid", "dirichlet", "shards")
DP_MECHANISMS = ("none", "gaussian", "laplace", "ftrl-tree", "bandmf")
# Mechanisms with noise correlated across rounds and clients in fixed turns (fl.correlated).
CORRELATED = ("ftrl-tree", "bandmf")
ALGORITHMS = presets.ALGORITHMS
AGGREGATORS = tuple(catalog.AGGREGATORS)
ATTACKS = tuple(catalog.ATTACKS)

def _read_by(what: str, key: str, extra: Any = None, why: str = "") -> Any:
  """An ``applies`` rule: the chosen dataset/aggregator/attack reads ``key`` (and ``extra``)."""
  names = {"dataset": catalog.DATASETS, "aggregator": catalog.AGGREGATORS,
           "attack": catalog.ATTACKS}[what]
  users = catalog.reads(names, key)

  def applies(c: Any) -> str | None:
    chosen = {"dataset": c.data.dataset, "aggregator": c.aggregation.aggregator,
              "attack": c.attack.attack}[what]
    if chosen not in users:
      return f"--{what} {chosen} does not read it (it is for --{what} {' or '.join(users)})"
    if extra is not None and not extra(c):
      return why
    return None

  return applies
_ASYNC = presets.ASYNC_ALGORITHMS
_SYNC = when(lambda c: c.algorithm.algorithm not in _ASYNC,
             "fedbuff and fedasync keep --concurrency clients in flight and step the server "
             "every --buffer finishers (fedasync: every one)")


def _sampled(c: Any) -> str | None:
  """``--sampling`` applies to synchronous rounds whose cohorts are drawn at random."""
  if c.privacy.dp in CORRELATED:
    return (f"--dp {c.privacy.dp} takes the clients in fixed turns (each once every "
            "num_clients // clients_per_round rounds), not sampled")
  return _SYNC(c)


def uses_clock(c: Any) -> bool:
  """Whether a configuration runs on the virtual clock (:mod:`fedjax_lite.timing`).

  Args:
    c: a :class:`Config`.

  Returns:
    True for ``--virtual-clock``, ``--deadline``, ``--over-select`` and the
    asynchronous algorithms.
  """
  t = c.timing
  return (t.virtual_clock or t.deadline is not None or t.over_select is not None
          or c.algorithm.algorithm in _ASYNC)


_CLOCK = when(uses_clock, "it describes the clients' devices, which only a run on the virtual "
              "clock uses (--virtual-clock, --deadline, --over-select or --algorithm "
              "fedbuff/fedasync)")
_DP = when(lambda c: c.privacy.dp != "none", "it is a differential-privacy option and --dp is "
            "none")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
  """The data set and how it is split into clients."""

  dataset: str = option("digits", "the data set (leaf, tff and hf read your files: "
                        "--dataset leaf:PATH)", choices=DATASETS)
  num_clients: int = option(50, "clients to partition the data into", low=1,
                            applies=_read_by("dataset", "num_clients"))
  partition: str = option("dirichlet", "how examples are split into clients",
                          choices=PARTITIONS, applies=_read_by("dataset", "partition"))
  alpha: float = option(0.5, "Dirichlet concentration of --partition dirichlet", low=0.0,
                        low_open=True, applies=_read_by(
                            "dataset", "alpha", lambda c: c.data.partition == "dirichlet",
                            "it is --partition dirichlet's concentration"))
  shards_per_client: int = option(2, "shards per client of --partition shards", low=1,
                                  applies=_read_by(
                                      "dataset", "shards_per_client",
                                      lambda c: c.data.partition == "shards",
                                      "it is --partition shards' count"))
  test_fraction: float = option(0.2, "per-client held-out fraction", low=0.0, high=1.0,
                                high_open=True)
  synthetic_alpha: float = option(1.0, "LEAF Synthetic(alpha, beta): alpha", low=0.0,
                                  applies=_read_by("dataset", "synthetic_alpha"))
  synthetic_beta: float = option(1.0, "LEAF Synthetic(alpha, beta): beta", low=0.0,
                                 applies=_read_by("dataset", "synthetic_beta"))
  data_dir: str | None = option(
      None, "where the data is: Fashion-MNIST's IDX directory, a LEAF data directory, a TFF "
      "train .h5 file, a Hugging Face save_to_disk directory (or --dataset leaf:PATH, tff:PATH, "
      "hf:PATH)", kind=str, optional=True, metavar="PATH",
      applies=_read_by("dataset", "data_dir"))
  vocab_file: str | None = option(
      None, "vocabulary file of TFF StackOverflow (one word per line, or TFF's 'word count')",
      kind=str, optional=True, metavar="FILE", applies=_read_by("dataset", "vocab_file"))
  client_column: str | None = option(
      None, "--dataset hf: the column naming each example's client (e.g. writer_id)", kind=str,
      optional=True, metavar="NAME", applies=_read_by("dataset", "client_column"))
  feature_column: str = option("image", "--dataset hf: the input column", metavar="NAME",
                               applies=_read_by("dataset", "feature_column"))
  label_column: str = option("label", "--dataset hf: the label column", metavar="NAME",
                             applies=_read_by("dataset", "label_column"))
  max_examples_per_client: int | None = option(
      None, "cap every client at this many examples (Shakespeare, LEAF, TFF, hf: a random "
      "subset each round; synthetic: generated smaller)",
      kind=int, optional=True, low=1, applies=_read_by("dataset", "max_examples_per_client"))
  data_seed: int | None = option(None, "seed of the partition or generation (default: --seed)",
                                 kind=int, optional=True, low=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """The model."""

  model: str = option("mlp", "the model", choices=MODELS)
  hidden: int | None = option(None, "hidden width of mlp, 2nn, char_lstm and next_word_lstm",
                              kind=int, optional=True, low=1, applies=when(
                                  lambda c: c.model.model in _WIDE_MODELS,
                                  "logreg and the CNNs have no --hidden width"))




@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingConfig:
  """Rounds, cohorts and local training."""

  rounds: int = option(150, "total rounds", low=1)
  clients_per_round: int = option(10, "cohort size (expected size under Poisson sampling)",
                                  low=1, applies=_SYNC)
  sampling: str = option("fixed", "client sampling: a fixed-size cohort, or each client with "
                         "probability K/N", choices=("fixed", "poisson"), applies=_sampled)
  local_epochs: int = option(2, "local epochs per round", low=1)
  batch_size: int = option(8, "local batch size", low=1)
  client_lr: float = option(0.05, "client SGD learning rate", low=0.0, low_open=True)
  server_lr: float | None = option(None, "server learning rate (default: the algorithm's)",
                                   kind=float, optional=True, low=0.0, low_open=True)
  seed: int = option(0, "seed of model init and client sampling (and of the data unless "
                     "--data-seed)", low=0)
  chunk_size: Any = option("auto", "clients per vmapped chunk, or auto", kind=INT_OR_AUTO,
                           low=1, metavar="N|auto")
  local_work: str = option("full", "local steps per client: full, fixed:S, sampled:MIN-MAX or "
                           "proportional:R", metavar="SPEC", applies=when(
                               lambda c: c.algorithm.algorithm in presets.LOCAL_WORK,
                               "the algorithm runs its own local steps"))
  stragglers: float = option(0.0, "fraction of clients per round that straggle", low=0.0,
                             high=1.0, applies=when(
                                 lambda c: c.algorithm.algorithm in presets.LOCAL_WORK,
                                 "the algorithm runs its own local steps"))
  straggler_mode: str = option("drop", "drop stragglers (FedAvg) or aggregate their partial "
                               "work (FedProx)", choices=presets.STRAGGLER_MODES, applies=when(
                                   lambda c: c.training.stragglers > 0,
                                   "it needs --stragglers > 0"))


def _hyperparameter(preset_name: str, h: Any) -> tuple[str, Any, Any]:
  kind = h.kind
  return (h.key, kind | None if h.default is None else kind, option(
      h.default, f"{preset_name}: {h.help}", kind=kind, optional=h.default is None, low=h.low,
      high=h.high, low_open=h.low_open, high_open=h.high_open, applies=when(
          lambda c, name=preset_name: c.algorithm.algorithm == name,
          f"it is {preset_name}'s hyperparameter")))


# The algorithm section: the name, the server step, and every registered
# algorithm's own hyperparameters (fedjax_lite.algorithms.PRESETS).
AlgorithmConfig = dataclasses.make_dataclass(
    "AlgorithmConfig",
    [("algorithm", str, option("fedavg", "the algorithm (the first five are FedAvg with that "
                               "server optimizer)", choices=ALGORITHMS)),
     ("server_optimizer", str | None, option(
         None, "server step of the algorithms beyond FedAvg (default fedavg: SGD at "
         "--server-lr, default 1)", kind=str, optional=True, choices=presets.SERVER_OPTIMIZERS,
         applies=when(lambda c: c.algorithm.algorithm not in presets.SERVER_OPTIMIZERS,
                       "--algorithm fedavg..fedadagrad already names the server step")))]
    + [_hyperparameter(name, h) for name, p in PRESETS.items() for h in p.hyperparameters],
    frozen=True, kw_only=True)
AlgorithmConfig.__module__ = __name__
AlgorithmConfig.__doc__ = "The algorithm, its server step and its own hyperparameters."



@dataclasses.dataclass(frozen=True, kw_only=True)
class AggregationConfig:
  """How the server combines the clients' updates."""

  aggregator: str = option("mean", "mean, or a robust aggregator (not with --dp)",
                           choices=AGGREGATORS)
  trim_beta: float = option(0.1, "trimmed mean: fraction trimmed at each end", low=0.0,
                            high=0.5, high_open=True,
                            applies=_read_by("aggregator", "trim_beta"))
  num_byzantine: int = option(1, "Krum: assumed number of Byzantine clients f", low=0,
                              applies=_read_by("aggregator", "num_byzantine"))
  multi_krum: int = option(1, "Krum: average the m best-scored clients (1 = Krum)", low=1,
                           applies=_read_by("aggregator", "multi_krum"))
  norm_bound: float | None = option(None, "clip every update to this L2 norm before "
                                    "aggregating", kind=float, optional=True, low=0.0,
                                    low_open=True)
  quantize_bits: int | None = option(None, "stochastic quantization of updates to this many "
                                     "bits", kind=int, optional=True, low=1, high=32)
  topk_fraction: float | None = option(
      None, "top-k sparsification with error feedback: fraction of coordinates sent",
      kind=float, optional=True, low=0.0, low_open=True, high=1.0, applies=when(
          lambda c: c.algorithm.algorithm in presets.FEDAVG_CLIENT,
          "error feedback wraps a client update whose messages are model deltas"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackConfig:
  """Simulated malicious clients."""

  attack: str = option("none", "the malicious clients' attack", choices=ATTACKS)
  attack_fraction: float = option(0.0, "fraction of clients that are malicious", low=0.0,
                                  high=1.0, applies=_read_by("attack", "attack_fraction"))
  attack_scale: float = option(1.0, "sign_flip/scaled: factor; gaussian: noise std",
                               applies=_read_by("attack", "attack_scale"))
  attack_seed: int = option(0, "seed choosing the malicious clients", low=0,
                            applies=_read_by("attack", "attack_seed"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
  """Differential privacy and its accounting."""

  dp: str = option("none", "differential privacy mechanism (ftrl-tree, bandmf: noise correlated "
                   "across rounds, clients in fixed turns)", choices=DP_MECHANISMS)
  clip: float = option(1.0, "clip norm C (L2 for gaussian, L1 for laplace; initial C if "
                       "adaptive)", low=0.0, low_open=True, applies=_DP)
  noise_multiplier: float | None = option(None, "noise std (gaussian) or scale (laplace) over "
                                          "the sensitivity", kind=float, optional=True,
                                          low=0.0, low_open=True, applies=_DP)
  target_epsilon: float | None = option(None, "calibrate the noise multiplier to this epsilon",
                                        kind=float, optional=True, low=0.0, low_open=True,
                                        applies=_DP)
  delta: float = option(1e-5, "delta of the (epsilon, delta) guarantee", low=0.0,
                        low_open=True, high=1.0, high_open=True, applies=_DP)
  accountant: str = option("rdp", "privacy accountant", choices=("rdp", "pld"), applies=_DP)
  bands: int | None = option(None, "bandmf: bands of the Toeplitz strategy (default and most: "
                             "num_clients // clients_per_round)", kind=int, optional=True, low=1,
                             applies=when(lambda c: c.privacy.dp == "bandmf",
                                          "it is --dp bandmf's"))
  adaptive_clip: bool = option(False, "adaptive clipping (Andrew et al. 2021), gaussian only",
                               applies=_DP)
  target_quantile: float = option(0.5, "adaptive clipping's target quantile", low=0.0,
                                  low_open=True, high=1.0, high_open=True, applies=when(
                                      lambda c: c.privacy.adaptive_clip,
                                      "it is --adaptive-clip's parameter"))
  local_dp: bool = option(False, "noise each client's update (local DP) instead of the sum",
                          applies=_DP)


_SECAGG = when(lambda c: c.secagg.secagg_bits is not None, "it needs --secagg-bits")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecAggConfig:
  """Secure aggregation, simulated (fixed-point encoding, masks, dropouts)."""

  secagg_bits: int | None = option(None, "sum the updates by secure aggregation in a ring of "
                                   "this many bits", kind=int, optional=True, low=2, high=32)
  secagg_clip: float | None = option(
      None, "per-coordinate bound of a client's weighted update (default with --dp: --clip; "
      "needed without)", kind=float, optional=True, low=0.0, low_open=True, applies=_SECAGG)
  secagg_dropout: float = option(0.0, "probability that a client drops out after masking",
                                 low=0.0, high=1.0, high_open=True, applies=_SECAGG)
  secagg_summands: int | None = option(
      None, "clients the integer range is sized for (default: the cohort, so no sum wraps "
      "around); fewer buy resolution at the risk of overflow", kind=int, optional=True, low=1,
      applies=_SECAGG)
  secagg_neighbours: int | None = option(
      None, "masking-graph degree (default 2 ceil(log2 cohort))", kind=int, optional=True,
      low=2, applies=_SECAGG)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TimingConfig:
  """Virtual time: devices, deadlines, over-selection and asynchronous aggregation."""

  virtual_clock: bool = option(False, "time every round on simulated devices and report "
                               "round_time and virtual_time (implied by --deadline, "
                               "--over-select, fedbuff and fedasync)")
  device_median: float = option(0.01, "the median device's seconds per example (log-normal "
                                "speeds)", low=0.0, low_open=True, applies=when(
                                    lambda c: uses_clock(c) and c.timing.device_trace is None,
                                    "it is the log-normal devices' median; --device-trace "
                                    "gives every speed"))
  device_sigma: float = option(1.0, "spread of log speed across devices (log-normal)",
                               low=0.0, applies=when(
                                   lambda c: uses_clock(c) and c.timing.device_trace is None,
                                   "it is the log-normal devices' spread; --device-trace "
                                   "gives every speed"))
  device_trace: str | None = option(
      None, "measured seconds per example, one per client in client-id order (.npy, or text "
      "with one number per line)", kind=str, optional=True, metavar="FILE", applies=_CLOCK)
  device_overhead: float = option(0.0, "seconds every round costs a client besides training "
                                  "(download, upload)", low=0.0, applies=_CLOCK)
  availability: float = option(1.0, "probability that a sampled client is available in a "
                               "round", low=0.0, low_open=True, high=1.0, applies=_CLOCK)
  device_seed: int | None = option(None, "seed of the devices' speeds and availability "
                                   "(default: --seed)", kind=int, optional=True, low=0,
                                   applies=_CLOCK)
  deadline: float | None = option(None, "round deadline in virtual seconds: later clients are "
                                  "dropped (or with --partial-work keep what they finished)",
                                  kind=float, optional=True, low=0.0, low_open=True,
                                  applies=_SYNC)
  partial_work: bool = option(False, "clients that miss --deadline contribute the steps they "
                              "finished by then", applies=when(
                                  lambda c: c.timing.deadline is not None,
                                  "it needs --deadline"))
  over_select: float | None = option(
      None, "sample ceil(F * --clients-per-round) clients and aggregate the "
      "--clients-per-round that finish first (Bonawitz et al. 2019)", kind=float,
      optional=True, low=1.0, metavar="F", applies=_SYNC)
  concurrency: int | None = option(
      None, "fedbuff/fedasync: clients in flight (default: 4 x --buffer, at most the "
      "population)", kind=int, optional=True, low=1, applies=when(
          lambda c: c.algorithm.algorithm in _ASYNC, "it is fedbuff's and fedasync's"))
  buffer: int = option(10, "fedbuff: finished clients per server step", low=1, applies=when(
      lambda c: c.algorithm.algorithm == "fedbuff", "it is fedbuff's (fedasync steps on every "
      "finisher)"))
  staleness: str = option("polynomial", "fedbuff/fedasync: weight of a delta s versions old: "
                          "polynomial (1+s)^-a, constant, or hinge", choices=(
                              "polynomial", "constant", "hinge"), applies=when(
                                  lambda c: c.algorithm.algorithm in _ASYNC,
                                  "it is fedbuff's and fedasync's"))
  staleness_a: float | None = option(
      None, "the staleness function's a: polynomial's exponent (default 0.5, FedBuff's "
      "1/sqrt(1+s)), hinge's slope (default 10)", kind=float, optional=True, low=0.0,
      applies=when(lambda c: c.algorithm.algorithm in _ASYNC
                   and c.timing.staleness != "constant",
                   "it is --staleness polynomial's or hinge's parameter"))
  staleness_b: int = option(4, "hinge: staleness up to which deltas keep full weight", low=0,
                            applies=when(lambda c: c.algorithm.algorithm in _ASYNC
                                         and c.timing.staleness == "hinge",
                                         "it is --staleness hinge's parameter"))
  max_staleness: int | None = option(
      None, "fedbuff/fedasync: model versions kept (default max(8, 4 x concurrency / buffer)); "
      "an older update is dropped and counted in num_too_stale", kind=int, optional=True,
      low=1, applies=when(lambda c: c.algorithm.algorithm in _ASYNC,
                          "it is fedbuff's and fedasync's"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
  """Evaluation during and after training."""

  eval_every: int = option(10, "evaluate every N rounds (0: only at the end)", low=0)
  fine_tune_epochs: int = option(0, "also evaluate after this many local epochs of "
                                 "fine-tuning on each client (0: off)", low=0)
  eval_train: bool = option(False, "also evaluate the global model on the training clients")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputConfig:
  """Where results go."""

  out: str | None = option(None, "output directory (default: a new runs/<dataset>-<algorithm>-"
                           "<time> directory)", kind=str, optional=True, metavar="DIR")
  resume: bool = option(False, "continue the run in --out from its checkpoint")
  overwrite: bool = option(False, "replace the outputs of a finished run in --out")
  checkpoint_every: int = option(10, "checkpoint every N rounds (0: only at the end)", low=0)
  progress: bool | None = option(None, "progress bar (default: when stderr is a terminal)",
                                 kind=bool, optional=True)
  log: str = option("", "also log every round's metrics to tensorboard (event files in "
                    "--out/tensorboard) and/or wandb, comma-separated", metavar="SINKS")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
  """Scaling out over devices and processes."""

  devices: Any = option(None, "shard the clients over N devices, or all", kind=INT_OR_ALL,
                        optional=True, low=1, metavar="N|all")
  coordinator: str | None = option(None, "HOST:PORT of process 0 of a multi-process run, or "
                                   "auto", kind=str, optional=True, metavar="HOST:PORT")
  num_processes: int | None = option(None, "processes of a multi-process run", kind=int,
                                     optional=True, low=1)
  process_id: int | None = option(None, "this process's index, 0..N-1", kind=int,
                                  optional=True, low=0)
  compile_cache: bool = option(True, "keep compiled programs in JAX's persistent cache (under "
                               "the user's cache directory, or $JAX_COMPILATION_CACHE_DIR; "
                               "FEDJAX_LITE_COMPILE_CACHE=0 turns it off), so a repeated run "
                               "compiles from it")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepConfig:
  """Many experiments as one vectorized program."""

  sweep: Any = option(None, "KEY=VALUES: one experiment per value", kind="sweep",
                      optional=True)


SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "training": TrainingConfig,
    "algorithm": AlgorithmConfig, "aggregation": AggregationConfig, "attack": AttackConfig,
    "privacy": PrivacyConfig, "secagg": SecAggConfig, "timing": TimingConfig,
    "evaluation": EvaluationConfig,
    "output": OutputConfig, "runtime": RuntimeConfig, "sweep": SweepConfig,
}

Config = dataclasses.make_dataclass(
    "Config", [(name, cls, dataclasses.field(default_factory=cls))
               for name, cls in SECTIONS.items()],
    frozen=True, kw_only=True)
Config.__module__ = __name__
Config.__doc__ = "A run's whole configuration: one frozen section per concern."

# Every option: its flat key -> (section, Opt).
OPTIONS: dict[str, tuple[str, Opt]] = {}
for _section, _cls in SECTIONS.items():
  for _f in dataclasses.fields(_cls):
    if _f.name in OPTIONS:  # pragma: no cover - a declaration error
      raise ValueError(f"option {_f.name!r} is declared twice")
    OPTIONS[_f.name] = (_section, _f.metadata["opt"])
del _section, _cls, _f

DEFAULTS: dict[str, Any] = {key: getattr(getattr(Config(), section), key)
                            for key, (section, _) in OPTIONS.items()}


def build(values: Mapping[str, Any]) -> Any:
  """The :class:`Config` of flat ``{key: value}`` (missing keys keep their defaults).

  Args:
    values: checked values by flat key.

  Returns:
    The frozen :class:`Config`.
  """
  by_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
  for key, value in values.items():
    by_section[OPTIONS[key][0]][key] = value
  return Config(**{name: SECTIONS[name](**kw) for name, kw in by_section.items()})


def flat(config: Any) -> dict[str, Any]:
  """``{key: value}`` of every option of a :class:`Config`.

  Args:
    config: a :class:`Config`.

  Returns:
    The flat dict (the keys of :data:`DEFAULTS`).
  """
  return {key: getattr(getattr(config, section), key) for key, (section, _) in OPTIONS.items()}


def check_applicable(config: Any, given: Mapping[str, str]) -> None:
  """Refuses an option that was given but that this configuration does not use.

  Args:
    config: the :class:`Config`.
    given: ``{key: where it was given}`` (``--flag``, or the key and its TOML
      file) for the options set explicitly.

  Raises:
    ConfigError: naming the first such option and why it does not apply.
  """
  for key, (_, opt) in OPTIONS.items():
    if key in given and opt.applies is not None:
      reason = opt.applies(config)
      if reason is not None:
        raise ConfigError(f"{given[key]} does not apply here: {reason}; drop it.")
