"""fedjax_lite: vectorized federated learning simulation in JAX.

Public API (everything here is a pure function or a NamedTuple of them):

* data: :class:`FederatedData`, :func:`from_clients`, :func:`from_arrays`,
  :func:`take`, :func:`example_mask`; :class:`RaggedData`, a population stored
  without padding and gathered per round (:mod:`fedjax_lite.ragged`)
* clients: :func:`build_client_update`, :class:`ClientOutput`,
  :class:`ClientUpdate` (an update with a state per client), :func:`local_train`,
  :class:`LocalWork` (:mod:`fedjax_lite.local_work`: heterogeneous local work,
  stragglers); the building blocks (``masked_mean_grad``, ``shuffle_order``,
  ...) stay in :mod:`fedjax_lite.client`
* aggregation: :class:`Aggregator`, :func:`mean_aggregator`,
  :func:`weighted_mean`, :func:`uniform_mean`, :func:`weighted_sum`
* server optimizers: :mod:`fedjax_lite.server` (``fedavg``, ``fedavgm``,
  ``fedadam``, ``fedyogi``, ``fedadagrad``)
* the round: :class:`FederatedAlgorithm`, :class:`ServerState`,
  :class:`ServerUpdate` (a server step with a state of its own),
  :func:`build_federated_algorithm` (also where ``chunk_size``, ``mesh`` and
  ``nonfinite`` are chosen), :func:`sample_clients`, :func:`run_rounds`,
  :func:`run_sweep` (many simulations as one program); the client engine:
  :mod:`fedjax_lite.mapreduce`
* scaling out: :func:`client_mesh`, :func:`shard_clients`, :func:`pad_clients`,
  :func:`replicate`, :func:`num_real_clients`, :func:`initialize_distributed`
  (:mod:`fedjax_lite.sharding`; pass ``mesh=`` to the round)
* algorithms beyond FedAvg: :mod:`fedjax_lite.algorithms` (SCAFFOLD,
  Mime-Lite, ...)
* robust aggregation and attack simulators: :mod:`fedjax_lite.robust`
  (median, trimmed mean, Krum, norm bounding), :mod:`fedjax_lite.attacks`
* personalization: :mod:`fedjax_lite.personalization` (local fine-tuning
  evaluation, per-client models)
* compression: :mod:`fedjax_lite.compression` (stochastic quantization,
  top-k with error feedback)
* differential privacy: :mod:`fedjax_lite.privacy` (clipping, Gaussian and
  Laplace aggregators) and :mod:`fedjax_lite.accounting` (the epsilon a run
  spends, noise calibration; host-side, with dp-accounting)
* the ``"auto"`` settings per platform (chunk size from device memory on an
  accelerator, gradient mode, shuffle) and :func:`estimate_memory` (a round's
  memory from shapes): :mod:`fedjax_lite.hardware`
* data sets, models, evaluation, checkpoints: :mod:`fedjax_lite.datasets`,
  :mod:`fedjax_lite.models`, :mod:`fedjax_lite.evaluation`,
  :mod:`fedjax_lite.checkpoint`
"""

from typing import TYPE_CHECKING

from fedjax_lite import _lazy

# Every public name and the module that defines it, imported on first use
# (PEP 562): `import fedjax_lite` does not import JAX until a name needs it.
_WHERE = {
    "Aggregator": "fedjax_lite.aggregation",
    "ClientOutput": "fedjax_lite.client",
    "ClientUpdate": "fedjax_lite.client",
    "FederatedAlgorithm": "fedjax_lite.algorithm",
    "FederatedData": "fedjax_lite.data",
    "LocalWork": "fedjax_lite.local_work",
    "RaggedData": "fedjax_lite.ragged",
    "Sampler": "fedjax_lite.sampling",
    "ServerState": "fedjax_lite.algorithm",
    "ServerUpdate": "fedjax_lite.algorithm",
    "accounting": "fedjax_lite.accounting",
    "algorithms": "fedjax_lite.algorithms",
    "attacks": "fedjax_lite.attacks",
    "build_client_update": "fedjax_lite.client",
    "build_federated_algorithm": "fedjax_lite.algorithm",
    "checkpoint": "fedjax_lite.checkpoint",
    "client": "fedjax_lite.client",
    "client_mesh": "fedjax_lite.sharding",
    "compression": "fedjax_lite.compression",
    "datasets": "fedjax_lite.datasets",
    "estimate_memory": "fedjax_lite.hardware",
    "evaluation": "fedjax_lite.evaluation",
    "example_mask": "fedjax_lite.data",
    "fixed_size_sampler": "fedjax_lite.sampling",
    "from_arrays": "fedjax_lite.data",
    "from_clients": "fedjax_lite.data",
    "hardware": "fedjax_lite.hardware",
    "initialize_distributed": "fedjax_lite.sharding",
    "local_train": "fedjax_lite.client",
    "local_work": "fedjax_lite.local_work",
    "mapreduce": "fedjax_lite.mapreduce",
    "mean_aggregator": "fedjax_lite.aggregation",
    "models": "fedjax_lite.models",
    "num_real_clients": "fedjax_lite.sharding",
    "pad_clients": "fedjax_lite.sharding",
    "personalization": "fedjax_lite.personalization",
    "poisson_sampler": "fedjax_lite.sampling",
    "privacy": "fedjax_lite.privacy",
    "raise_if_nonfinite": "fedjax_lite.algorithm",
    "replicate": "fedjax_lite.sharding",
    "robust": "fedjax_lite.robust",
    "round_keys": "fedjax_lite.training",
    "run_rounds": "fedjax_lite.training",
    "run_sweep": "fedjax_lite.training",
    "sample_clients": "fedjax_lite.sampling",
    "sampled_round": "fedjax_lite.training",
    "server": "fedjax_lite.server",
    "shard_clients": "fedjax_lite.sharding",
    "sharding": "fedjax_lite.sharding",
    "take": "fedjax_lite.data",
    "uniform_mean": "fedjax_lite.aggregation",
    "weighted_mean": "fedjax_lite.aggregation",
    "weighted_sum": "fedjax_lite.aggregation",
}
# The rest of the package's modules, importable as attributes too.
_WHERE.update({name: f"fedjax_lite.{name}" for name in (
    "aggregation", "algorithm", "asynchronous", "correlated", "data", "experiment", "loggers",
    "presets",
    "ragged", "sampling", "secagg", "timing", "training")})
__getattr__, __dir__ = _lazy.attach(__name__, _WHERE)

if TYPE_CHECKING:  # what static tools see
  from fedjax_lite import (
      accounting,
      algorithms,
      attacks,
      checkpoint,
      client,
      compression,
      datasets,
      evaluation,
      hardware,
      local_work,
      mapreduce,
      models,
      personalization,
      privacy,
      robust,
      server,
      sharding,
  )
  from fedjax_lite.aggregation import (
      Aggregator,
      mean_aggregator,
      uniform_mean,
      weighted_mean,
      weighted_sum,
  )
  from fedjax_lite.algorithm import (
      FederatedAlgorithm,
      ServerState,
      ServerUpdate,
      build_federated_algorithm,
      raise_if_nonfinite,
  )
  from fedjax_lite.client import (
      ClientOutput,
      ClientUpdate,
      build_client_update,
      local_train,
  )
  from fedjax_lite.data import FederatedData, example_mask, from_arrays, from_clients, take
  from fedjax_lite.hardware import estimate_memory
  from fedjax_lite.local_work import LocalWork
  from fedjax_lite.ragged import RaggedData
  from fedjax_lite.sampling import (
      Sampler,
      fixed_size_sampler,
      poisson_sampler,
      sample_clients,
  )
  from fedjax_lite.sharding import (
      client_mesh,
      initialize_distributed,
      num_real_clients,
      pad_clients,
      replicate,
      shard_clients,
  )
  from fedjax_lite.training import round_keys, run_rounds, run_sweep, sampled_round

__version__ = "0.1.0"

__all__ = [
    "Aggregator",
    "accounting",
    "algorithms",
    "attacks",
    "compression",
    "personalization",
    "robust",
    "ClientOutput",
    "ClientUpdate",
    "FederatedAlgorithm",
    "FederatedData",
    "RaggedData",
    "ServerState",
    "ServerUpdate",
    "build_client_update",
    "client_mesh",
    "initialize_distributed",
    "num_real_clients",
    "pad_clients",
    "replicate",
    "shard_clients",
    "sharding",
    "build_federated_algorithm",
    "checkpoint",
    "client",
    "datasets",
    "estimate_memory",
    "evaluation",
    "example_mask",
    "hardware",
    "local_work",
    "LocalWork",
    "mapreduce",
    "from_arrays",
    "from_clients",
    "local_train",
    "mean_aggregator",
    "models",
    "raise_if_nonfinite",
    "round_keys",
    "run_rounds",
    "run_sweep",
    "sampled_round",
    "Sampler",
    "fixed_size_sampler",
    "poisson_sampler",
    "privacy",
    "sample_clients",
    "server",
    "take",
    "uniform_mean",
    "weighted_mean",
    "weighted_sum",
]
