"""What a configuration builds: the task, the DP setup, the algorithm and the evaluator."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from fedjax_lite import presets
from fedjax_lite.experiment.config import ConfigError, option_errors
from fedjax_lite.experiment.sweeps import data_seed


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
  """Loads the dataset and initializes the model of a configuration.

  Raises:
    ConfigError: when the model does not fit the data (images, vectors or
      token sequences).
  """
  import jax

  from fedjax_lite import models
  from fedjax_lite.data import check_labels
  from fedjax_lite.datasets.base import check_split_labels
  from fedjax_lite.ragged import RaggedData

  ds = load_dataset(c)
  # Out-of-range labels would train silently (NaN or garbage losses): refuse them here.
  for name, split in (("train", ds.train), ("test", ds.test)):
    if isinstance(split, RaggedData):
      check_split_labels(split, ds.num_classes, name)
    elif split is not None:
      check_labels(split, ds.num_classes, name=name)
  x, y = ds.train.arrays["x"], ds.train.arrays["y"]
  example_x, example_y = ((x.shape[1:], y.shape[1:]) if isinstance(ds.train, RaggedData)
                          else (x.shape[2:], y.shape[2:]))
  tokens = np.issubdtype(x.dtype, np.integer)
  sequence_models = ("char_lstm", "next_word_lstm")
  if tokens != (c["model"] in sequence_models):
    kind = "token sequences" if tokens else f"{x.dtype} inputs of shape {tuple(example_x)}"
    fits = "char_lstm or next_word_lstm" if tokens else "logreg, mlp, 2nn, cnn or femnist_cnn"
    raise ConfigError(f"--model {c['model']} does not fit this data ({kind}); use {fits}.")
  dummy = np.zeros((1,) + tuple(example_x), x.dtype)
  if c["model"] == "char_lstm":
    model = models.CharLSTM(ds.num_classes, hidden=c["hidden"] or 256)
  elif c["model"] == "next_word_lstm":
    model = models.NextWordLSTM(vocab_size=ds.num_classes - 4, hidden=c["hidden"] or 670)
  else:
    width = c["hidden"] or 200
    model = {
        "logreg": lambda: models.LogisticRegression(ds.num_classes),
        "mlp": lambda: models.MLP((width,), ds.num_classes),
        "2nn": lambda: models.MLP((width, width), ds.num_classes),
        "cnn": lambda: models.CNN(ds.num_classes),
        "femnist_cnn": lambda: models.femnist_cnn(ds.num_classes),
    }[c["model"]]()
  init_params = lambda seed: model.init(jax.random.key(seed), dummy)
  params = init_params(c["seed"])
  apply = model.apply
  if tokens and not example_y:
    # One target per sequence (LEAF Shakespeare: the next character): the logits
    # of the last position.
    apply = lambda p, inputs: model.apply(p, inputs)[:, -1]
  if tokens and example_y:
    loss, metrics = models.sequence_loss(apply), models.sequence_metrics(apply)
  else:
    loss, metrics = models.classification_loss(apply), models.classification_metrics(apply)
  return Task(ds, params, apply, loss, metrics, init_params)


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
  """``--dataset shakespeare``: every client's snippets, stored ragged.

  ``max_examples_per_client`` is applied per round (a random subset of each
  larger client), not here.
  """
  from fedjax_lite.datasets import shakespeare

  return _ragged(shakespeare.load_shakespeare(test_fraction=c["test_fraction"]))


def leaf_dataset(c: dict[str, Any]):
  """``--dataset leaf:DIR``: LEAF's JSON files."""
  from fedjax_lite.datasets.leaf import load_leaf

  return load_leaf(c["data_dir"])


def tff_dataset(c: dict[str, Any]):
  """``--dataset tff:TRAIN.h5``: TFF's HDF5 client data (``*_test.h5`` beside it, if present)."""
  from pathlib import Path

  from fedjax_lite.datasets.tff_h5 import load_tff_h5

  train = Path(c["data_dir"])
  test = train.with_name(train.name.replace("train", "test"))
  return load_tff_h5(train, test if test != train and test.exists() else None,
                     vocab=c["vocab_file"])


def hf_dataset(c: dict[str, Any]):
  """``--dataset hf:DIR``: a Hugging Face dataset saved with ``save_to_disk``."""
  from fedjax_lite.datasets.huggingface import from_huggingface

  return from_huggingface(c["data_dir"], client_column=c["client_column"],
                          features=c["feature_column"], label=c["label_column"])


def _ragged(ds):
  """``ds`` with its client splits stored ragged."""
  from fedjax_lite.ragged import RaggedData

  return ds._replace(train=RaggedData.from_stacked(ds.train),
                     test=None if ds.test is None else RaggedData.from_stacked(ds.test))


def synthetic_dataset(c: dict[str, Any]):
  """``--dataset synthetic``: LEAF Synthetic(synthetic_alpha, synthetic_beta)."""
  # The package re-exports the function leaf_synthetic under its module's name.
  from fedjax_lite.datasets.leaf_synthetic import leaf_synthetic

  return leaf_synthetic(
      c["num_clients"], c["synthetic_alpha"], c["synthetic_beta"],
      test_fraction=c["test_fraction"], seed=data_seed(c),
      max_examples_per_client=c["max_examples_per_client"])


def _algorithm(config: dict[str, Any], task: Task, aggregator, *, mesh=None, devices=None):
  """The federated algorithm of a configuration (its learning rates may be traced).

  With ``devices`` (a run on the virtual clock) a synchronous algorithm's
  rounds are timed (:func:`fedjax_lite.timing.timed`: availability,
  ``deadline``, ``over_select``'s keep count, ``partial_work``); an
  asynchronous one is returned as the algorithm
  :func:`fedjax_lite.experiment.clock.build_async` steps.
  """
  from fedjax_lite import timing

  with option_errors():
    local_work = None
    if config["partial_work"]:
      local_work = timing.deadline_work(devices, config["deadline"],
                                        batch_size=config["batch_size"], mode="partial")
    algo = presets.build_algorithm(config, task.loss, _client_optimizer(config),
                                   dp_aggregator=aggregator, mesh=mesh, local_work=local_work)
    if devices is None or config["algorithm"] in presets.ASYNC_ALGORITHMS:
      return algo
    keep = config["clients_per_round"] if config["over_select"] is not None else None
    return timing.timed(algo, devices, deadline=config["deadline"], keep=keep,
                        partial=config["partial_work"], num_epochs=config["local_epochs"])


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
  if config is not None and (config["algorithm"] == "ditto" or config["fine_tune_epochs"]):
    # The per-client evaluators take stacked clients.
    test = test.to_stacked() if isinstance(test, fl.RaggedData) else test
    train = train.to_stacked() if isinstance(train, fl.RaggedData) else train
  if mesh is not None:  # a ragged split is evaluated from the host, block by block
    test = test if test is None or isinstance(test, fl.RaggedData) else fl.shard_clients(
        test, mesh)
    train = train if isinstance(train, fl.RaggedData) else fl.shard_clients(train, mesh)
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


def model_size(params: Any) -> int:
  """The model's number of parameters (a client update's coordinates)."""
  import jax

  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def _client_optimizer(config):
  import optax
  return optax.sgd(config["client_lr"])
