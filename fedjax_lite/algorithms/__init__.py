"""Federated algorithms beyond FedAvg, each a :class:`fedjax_lite.FederatedAlgorithm`.

Every module offers its client update builder and a factory returning the
whole algorithm, composed from the round's paired hooks (a
:class:`fedjax_lite.ClientUpdate` with its state, a
:class:`fedjax_lite.ServerUpdate` with its own) so that DP aggregators,
robust aggregators, compression and sharding compose with it. A factory
takes only the algorithm's own hyperparameters; how the round runs is chosen
once, where it is built::

    algo = fl.build_federated_algorithm(fl.algorithms.scaffold(loss, client_lr=0.1,
                                                               num_epochs=1, batch_size=16),
                                        chunk_size=64, mesh=fl.client_mesh())

* :func:`fedprox` (Li et al. 2020); local work and stragglers:
  :func:`fedjax_lite.client.stragglers` and friends
* :func:`fedsgd` (one full-batch gradient per client)
* :func:`fednova` (Wang et al. 2020)
* :func:`scaffold` (Karimireddy et al. 2020), stateful: ``init(params,
  num_clients=N)``
* :func:`mime_lite` (Karimireddy et al. 2021)
* :func:`ditto` (Li et al. 2021), stateful (personal models);
  :func:`evaluate_personal`
* :func:`qffl` (q-FedAvg, Li et al. 2020)

:data:`PRESETS` names them for configurations and the command line
(``fedjax-lite run --algorithm NAME``); see :mod:`fedjax_lite.algorithms.registry`.
"""

import sys
from typing import TYPE_CHECKING

from fedjax_lite import _lazy
from fedjax_lite.algorithms import registry
from fedjax_lite.algorithms.registry import Hyperparameter, Preset

# The named algorithms, in the order the command line lists them. Each builds
# through its module's _build_preset, imported on first use (declaring them
# imports no JAX, so the command line's --help stays fast).
_BUILD = "fedjax_lite.algorithms.{}:_build_preset"

PRESETS: dict[str, Preset] = registry.collect((
    Preset("fedprox", "FedProx (Li et al. 2020)", _BUILD.format("fedprox"),
           (Hyperparameter("mu", float, 0.01, "FedProx's proximal coefficient mu", low=0.0),),
           local_work=True, wraps_client_update=True),
    Preset("fedsgd", "FedSGD (one full-batch gradient per client)", _BUILD.format("fedsgd")),
    Preset("fednova", "FedNova (Wang et al. 2020)", _BUILD.format("fednova"), local_work=True),
    Preset("scaffold", "SCAFFOLD (Karimireddy et al. 2020)", _BUILD.format("scaffold"),
           stateful=True),
    Preset("mime_lite", "Mime-Lite (Karimireddy et al. 2021)", _BUILD.format("mime"),
           (Hyperparameter("mime_beta", float, 0.9, "Mime-Lite's server momentum beta",
                           low=0.0, high=1.0, high_open=True),)),
    Preset("ditto", "Ditto (Li et al. 2021), personal models", _BUILD.format("ditto"),
           (Hyperparameter("ditto_lambda", float, 0.1,
                           "Ditto's lambda pulling personal models to the global one", low=0.0),
            Hyperparameter("personal_lr", float, None,
                           "Ditto's personal-model learning rate (default: the client's)",
                           low=0.0, low_open=True),
            Hyperparameter("personal_epochs", int, 1,
                           "Ditto's local epochs on the personal model", low=1)),
           stateful=True),
    Preset("qffl", "q-FFL via q-FedAvg (Li et al. 2020)", _BUILD.format("qffl"),
           (Hyperparameter("q", float, 1.0, "q-FFL's fairness exponent q", low=0.0),),
           mean_weights="uniform",
           dp_refusal="the q-FFL step divides by a sum of h_k, which DP noise can make 0 or "
           "negative"),
))

# Every function and the module that defines it, imported on first use (PEP 562).
_WHERE = {
    "build_ditto_client_update": "fedjax_lite.algorithms.ditto",
    "build_fednova_client_update": "fedjax_lite.algorithms.fednova",
    "build_fedprox_client_update": "fedjax_lite.algorithms.fedprox",
    "build_fedsgd_client_update": "fedjax_lite.algorithms.fedsgd",
    "build_mime_lite_client_update": "fedjax_lite.algorithms.mime",
    "build_qffl_client_update": "fedjax_lite.algorithms.qffl",
    "build_scaffold_client_update": "fedjax_lite.algorithms.scaffold",
    "ditto": "fedjax_lite.algorithms.ditto",
    "evaluate_personal": "fedjax_lite.algorithms.ditto",
    "fednova": "fedjax_lite.algorithms.fednova",
    "fednova_normalizer": "fedjax_lite.algorithms.fednova",
    "fednova_server_update": "fedjax_lite.algorithms.fednova",
    "fedprox": "fedjax_lite.algorithms.fedprox",
    "fedsgd": "fedjax_lite.algorithms.fedsgd",
    "mime_lite": "fedjax_lite.algorithms.mime",
    "mime_lite_server_update": "fedjax_lite.algorithms.mime",
    "personal_models": "fedjax_lite.algorithms.ditto",
    "qffl": "fedjax_lite.algorithms.qffl",
    "qffl_server_update": "fedjax_lite.algorithms.qffl",
    "scaffold": "fedjax_lite.algorithms.scaffold",
    "scaffold_server_update": "fedjax_lite.algorithms.scaffold",
}
_WHERE.update({name: f"fedjax_lite.algorithms.{name}" for name in ("mime", "registry")})
__getattr__, __dir__ = _lazy.attach(__name__, _WHERE)
# fl.algorithms.fedprox is the function even once its module is imported.
sys.modules[__name__].__class__ = _lazy.FunctionsOverModules

if TYPE_CHECKING:  # what static tools see
  from fedjax_lite.algorithms.ditto import (
      build_ditto_client_update,
      ditto,
      evaluate_personal,
      personal_models,
  )
  from fedjax_lite.algorithms.fednova import (
      build_fednova_client_update,
      fednova,
      fednova_normalizer,
      fednova_server_update,
  )
  from fedjax_lite.algorithms.fedprox import build_fedprox_client_update, fedprox
  from fedjax_lite.algorithms.fedsgd import build_fedsgd_client_update, fedsgd
  from fedjax_lite.algorithms.mime import (
      build_mime_lite_client_update,
      mime_lite,
      mime_lite_server_update,
  )
  from fedjax_lite.algorithms.qffl import build_qffl_client_update, qffl, qffl_server_update
  from fedjax_lite.algorithms.scaffold import (
      build_scaffold_client_update,
      scaffold,
      scaffold_server_update,
  )

__all__ = [
    "PRESETS",
    "build_fednova_client_update",
    "build_fedprox_client_update",
    "build_fedsgd_client_update",
    "fednova",
    "fednova_normalizer",
    "fednova_server_update",
    "fedprox",
    "fedsgd",
    "build_ditto_client_update",
    "build_qffl_client_update",
    "ditto",
    "evaluate_personal",
    "personal_models",
    "qffl",
    "qffl_server_update",
    "build_mime_lite_client_update",
    "build_scaffold_client_update",
    "mime_lite",
    "mime_lite_server_update",
    "scaffold",
    "scaffold_server_update",
    "registry",
]
