"""What a configuration builds: the task, the DP setup, the algorithm and the evaluator."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from fedjax_lite import presets
from fedjax_lite.experiment.config import option_errors
from fedjax_lite.experiment.sweeps import data_seed

# Probability bound of a Poisson draw overflowing the padded cohort (such a
# round is refused, never truncated).
POISSON_OVERFLOW_BOUND = 1e-9

# Snippets per Shakespeare client when max_examples_per_client is not set.
SHAKESPEARE_DEFAULT_CAP = 64


@dataclasses.dataclass
class Task:
  """What a configuration builds: data, model, loss and metric functions.

  ``params`` are initialized from the configuration's ``seed``;
  ``init_params(seed)`` initializes them from another seed (a sweep's).
  """

  dataset: Any
  params: Any
  apply_fn: Callable[..., Any]
  loss: Callable[..., Any]
  metrics: Callable[..., Any]
  init_params: Callable[[int], Any] | None = None


def build_task(c: dict[str, Any]) -> Task:
  """Loads the dataset and initializes the model of a configuration."""
  import jax
  import jax.numpy as jnp

  from fedjax_lite import models
  from fedjax_lite.data import check_labels

  ds = load_dataset(c)
  # Out-of-range labels would train silently (NaN or garbage losses): refuse them here.
  for name, split in (("train", ds.train), ("test", ds.test)):
    if split is not None:
      check_labels(split, ds.num_classes, name=name)
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
  init_params = lambda seed: model.init(jax.random.key(seed), dummy)
  params = init_params(c["seed"])
  if c["model"] == "char_lstm":
    loss, metrics = models.sequence_loss(model.apply), models.sequence_metrics(model.apply)
  else:
    loss = models.classification_loss(model.apply)
    metrics = models.classification_metrics(model.apply)
  return Task(ds, params, model.apply, loss, metrics, init_params)


def load_dataset(c: dict[str, Any]):
  """The :class:`~fedjax_lite.datasets.FederatedDataset` of a configuration.

  Built by the dataset's entry of :data:`fedjax_lite.experiment.catalog.DATASETS`;
  partitions and synthetic data are drawn with :func:`data_seed`.
  """
  from fedjax_lite.experiment.catalog import DATASETS

  return DATASETS[c["dataset"]].make(c)


def _partition_options(c: dict[str, Any]) -> dict[str, Any]:
  return dict(method=c["partition"], num_clients=c["num_clients"], alpha=c["alpha"],
              shards_per_client=c["shards_per_client"], test_fraction=c["test_fraction"],
              seed=data_seed(c))


def digits_dataset(c: dict[str, Any]):
  """``--dataset digits``: scikit-learn's digits, partitioned."""
  from fedjax_lite.datasets import images

  return images.load_digits_dataset(**_partition_options(c))


def fashion_dataset(c: dict[str, Any]):
  """``--dataset fashion_mnist``: the IDX files in ``data_dir``, partitioned."""
  from fedjax_lite.datasets import images

  kwargs = {} if c["data_dir"] is None else {"path": c["data_dir"]}
  return images.load_fashion_mnist(**kwargs, **_partition_options(c))


def shakespeare_dataset(c: dict[str, Any]):
  """``--dataset shakespeare``, capped at ``max_examples_per_client`` snippets per client."""
  from fedjax_lite.datasets import shakespeare

  # Stacked clients are padded to the largest one (HAMLET: 605 snippets), so
  # an uncapped cohort pays for HAMLET on every client: cap by default.
  cap = c["max_examples_per_client"] or SHAKESPEARE_DEFAULT_CAP
  return shakespeare.load_shakespeare(test_fraction=c["test_fraction"],
                                      max_snippets_per_client=cap)


def synthetic_dataset(c: dict[str, Any]):
  """``--dataset synthetic``: LEAF Synthetic(synthetic_alpha, synthetic_beta)."""
  # The package re-exports the function leaf_synthetic under its module's name.
  from fedjax_lite.datasets.leaf_synthetic import leaf_synthetic

  return leaf_synthetic(
      c["num_clients"], c["synthetic_alpha"], c["synthetic_beta"],
      test_fraction=c["test_fraction"], seed=data_seed(c),
      max_examples_per_client=c["max_examples_per_client"])


def _algorithm(config: dict[str, Any], task: Task, aggregator, *, mesh=None):
  """The federated algorithm of a configuration (its learning rates may be traced)."""
  with option_errors():
    return presets.build_algorithm(config, task.loss, _client_optimizer(config),
                                   dp_aggregator=aggregator, mesh=mesh)


def _sweep_dp(configs: list[dict[str, Any]], num_clients: int) -> list[DPSetup | None]:
  """Each experiment's DP accounting (built once per noise multiplier)."""
  cache: dict[Any, DPSetup | None] = {}
  for c in configs:
    if c["noise_multiplier"] not in cache:
      cache[c["noise_multiplier"]] = build_dp(c, num_clients)
  return [cache[c["noise_multiplier"]] for c in configs]


def _evaluator(task: Task, mesh=None, config: dict[str, Any] | None = None
               ) -> Callable[..., dict[str, float]]:
  """``eval_row(params, state=None)``: the evaluation entries of a metrics row.

  On a ``mesh``, the clients' test data is sharded like the training
  population and the central test set (one client) is replicated. With a
  ``config`` and a ``state``: Ditto's personal models are evaluated on their
  clients' test data (``personal_*``), and with ``fine_tune_epochs`` the
  global model fine-tuned on each client's train split (``finetune_*``);
  with ``eval_train``, the global model on the training clients
  (``train_eval_*``).
  """
  import jax

  import fedjax_lite as fl
  from fedjax_lite import evaluation, personalization

  ds = task.dataset
  evaluate = evaluation.build_evaluator(task.metrics)
  central = None if ds.central_test is None else evaluation.as_single_client(ds.central_test)
  test, train = ds.test, ds.train
  if mesh is not None:
    test = None if test is None else fl.shard_clients(test, mesh)
    train = fl.shard_clients(train, mesh)
    central = None if central is None else fl.replicate(central, mesh)
  personal = fine_tune = None
  eval_train = config is not None and config["eval_train"]
  if config is not None and test is not None:
    if config["algorithm"] == "ditto":
      personal = personalization.build_per_client_evaluator(task.metrics)
    if config["fine_tune_epochs"]:
      fine_tune = personalization.build_fine_tune_evaluator(
          task.loss, task.metrics, _client_optimizer(config), batch_size=config["batch_size"],
          num_epochs=config["fine_tune_epochs"])

  def eval_row(params, state=None) -> dict[str, float]:
    row = {}
    if test is not None:
      s = evaluate(params, test)
      row.update({"eval_loss": s["loss"], "eval_accuracy": s["accuracy"]})
      row.update({f"eval_{k}": v for k, v in s.items() if k.startswith("accuracy_")})
    if central is not None:
      s = evaluate(params, central)
      row.update({"central_loss": s["loss"], "central_accuracy": s["accuracy"]})
    if eval_train:
      s = evaluate(params, train)
      row.update({"train_eval_loss": s["loss"], "train_eval_accuracy": s["accuracy"]})
    if state is not None and personal is not None:
      s = fl.algorithms.evaluate_personal(personal, state, test)
      row.update({"personal_eval_loss": s["loss"], "personal_eval_accuracy": s["accuracy"]})
    if state is not None and fine_tune is not None:
      s = fine_tune(params, train, test, jax.random.key(config["seed"]))
      row.update({"finetune_eval_loss": s["loss"], "finetune_eval_accuracy": s["accuracy"]})
    return {k: float(v) for k, v in row.items()}

  return eval_row


@dataclasses.dataclass
class DPSetup:
  """The privacy side of a run: aggregator, sampler and accounting."""

  spec: Any
  aggregator: Any
  sampler: Any
  delta: float
  accountant: str
  _curve: Any = None

  def epsilon(self, rounds: int) -> float:
    # One accounting.EpsilonCurve per run: under PLD it composes each new
    # round onto the distribution of the rounds before (one construction of
    # the one-round distribution, one composition per round).
    if self._curve is None:
      from fedjax_lite import accounting
      self._curve = accounting.EpsilonCurve(self.spec, self.delta, self.accountant)
    return self._curve(rounds)

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
  from fedjax_lite import accounting

  if config["dp"] == "none":
    return None
  k = config["clients_per_round"]
  if config["sampling"] == "poisson":
    sampler = fl.poisson_sampler(num_clients, k / num_clients, POISSON_OVERFLOW_BOUND)
  else:
    sampler = fl.fixed_size_sampler(num_clients, k)
  sigma_b = (k / 20.0) if config["adaptive_clip"] else None
  with option_errors():
    spec = accounting.DPSpec(config["dp"], config["noise_multiplier"] or 1.0,
                             config["sampling"], num_clients, k, count_noise_std=sigma_b,
                             local=config["local_dp"])
    accounting.make_accountant(spec, config["accountant"])  # refuses unsupported combinations
    if config["target_epsilon"] is not None:
      z = accounting.calibrate_noise(spec, config["rounds"], config["target_epsilon"],
                                     config["delta"], config["accountant"])
      spec = dataclasses.replace(spec, noise_multiplier=z)
    aggregator = _dp_aggregator(config, spec.noise_multiplier)
  return DPSetup(spec, aggregator, sampler, config["delta"], config["accountant"])


def _dp_aggregator(config: dict[str, Any], noise_multiplier: Any):
  """The DP aggregator of a configuration.

  ``noise_multiplier`` and ``config["clip"]`` may be traced (a sweep), except
  with adaptive clipping, which needs them concrete.
  """
  from fedjax_lite import privacy

  if config["dp"] == "laplace":
    return privacy.laplace_aggregator(config["clip"], noise_multiplier,
                                      float(config["clients_per_round"]),
                                      local=config["local_dp"])
  adaptive = privacy.AdaptiveClipping(target_quantile=config["target_quantile"],
                                      initial_clip=config["clip"]) \
      if config["adaptive_clip"] else None
  return privacy.gaussian_aggregator(config["clip"], noise_multiplier,
                                     float(config["clients_per_round"]), adaptive=adaptive,
                                     local=config["local_dp"])


def _client_optimizer(config):
  import optax
  return optax.sgd(config["client_lr"])
