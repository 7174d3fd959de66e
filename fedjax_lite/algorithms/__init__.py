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

from fedjax_lite.algorithms import registry
from fedjax_lite.algorithms.ditto import PRESET as _DITTO
from fedjax_lite.algorithms.ditto import (
    build_ditto_client_update,
    ditto,
    evaluate_personal,
    personal_models,
)
from fedjax_lite.algorithms.fednova import PRESET as _FEDNOVA
from fedjax_lite.algorithms.fednova import (
    build_fednova_client_update,
    fednova,
    fednova_normalizer,
    fednova_server_update,
)
from fedjax_lite.algorithms.fedprox import PRESET as _FEDPROX
from fedjax_lite.algorithms.fedprox import build_fedprox_client_update, fedprox
from fedjax_lite.algorithms.fedsgd import PRESET as _FEDSGD
from fedjax_lite.algorithms.fedsgd import build_fedsgd_client_update, fedsgd
from fedjax_lite.algorithms.mime import PRESET as _MIME_LITE
from fedjax_lite.algorithms.mime import (
    build_mime_lite_client_update,
    mime_lite,
    mime_lite_server_update,
)
from fedjax_lite.algorithms.qffl import PRESET as _QFFL
from fedjax_lite.algorithms.qffl import build_qffl_client_update, qffl, qffl_server_update
from fedjax_lite.algorithms.scaffold import PRESET as _SCAFFOLD
from fedjax_lite.algorithms.scaffold import (
    build_scaffold_client_update,
    scaffold,
    scaffold_server_update,
)

# The named algorithms, in the order the command line lists them.
PRESETS: dict[str, registry.Preset] = registry.collect(
    (_FEDPROX, _FEDSGD, _FEDNOVA, _SCAFFOLD, _MIME_LITE, _DITTO, _QFFL))

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
