"""Named algorithms, aggregators and attacks: what ``fedjax-lite run`` builds from its options.

This module maps the flat configuration of :mod:`fedjax_lite.experiment`
(``--algorithm``, ``--aggregator`` and their hyperparameters) to the library's
building blocks, so every choice the command line offers is also one
function call:

* :data:`ALGORITHMS`: the server-optimizer presets of
  :mod:`fedjax_lite.server` (``fedavg``, ``fedavgm``, ``fedadam``,
  ``fedyogi``, ``fedadagrad``: FedAvg's client with that server step) and
  the algorithms of :mod:`fedjax_lite.algorithms` (``fedprox``, ``fedsgd``,
  ``fednova``, ``scaffold``, ``mime_lite``, ``ditto``, ``qffl``), whose server
  step is ``server_optimizer`` (default ``fedavg``, SGD at rate
  ``server_lr``, default 1); and :data:`ASYNC_ALGORITHMS` (``fedbuff``,
  ``fedasync``): FedAvg's client and that server step, driven asynchronously
  by :func:`fedjax_lite.asynchronous.build_fedbuff`.
* :data:`AGGREGATORS`: ``mean``, ``median``, ``trimmed_mean``, ``krum``
  (:mod:`fedjax_lite.robust`), optionally wrapped by norm bounding
  (``norm_bound``) and stochastic quantization (``quantize_bits``,
  :mod:`fedjax_lite.compression`). Under differential privacy the DP
  aggregator is the aggregator (quantization may wrap it); a robust one is
  refused, since DP's sensitivity bound is that of the clipped sum.
* :data:`ATTACKS` (:mod:`fedjax_lite.attacks`) on a fraction of the clients,
  and top-k sparsification with error feedback (``topk_fraction``).
* secure aggregation (``secagg_bits``, :mod:`fedjax_lite.secagg`) of the
  aggregator's messages, the DP aggregator's included.
"""

from __future__ import annotations

from typing import Any

from fedjax_lite.algorithms import PRESETS, registry
from fedjax_lite.experiment.catalog import AGGREGATORS, ATTACKS

SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
CLIENT_ALGORITHMS = tuple(PRESETS)
# FedAvg's client and server step, stepped asynchronously on the virtual clock.
ASYNC_ALGORITHMS = ("fedbuff", "fedasync")
ALGORITHMS = SERVER_OPTIMIZERS + CLIENT_ALGORITHMS + ASYNC_ALGORITHMS
STRAGGLER_MODES = ("drop", "partial")

# Algorithms that keep a state per client (init needs the population size).
STATEFUL = tuple(name for name, p in PRESETS.items() if p.stateful)
# Algorithms whose client messages are model deltas: top-k error feedback and
# attacks wrap their client update.
FEDAVG_CLIENT = SERVER_OPTIMIZERS + tuple(
    name for name, p in PRESETS.items() if p.wraps_client_update)
# Algorithms that honour local-work budgets and stragglers.
LOCAL_WORK = SERVER_OPTIMIZERS + tuple(name for name, p in PRESETS.items() if p.local_work)

def validate(c: dict[str, Any]) -> None:
  """Checks the rules that tie the algorithm, aggregator and attack keys together.

  Each value's type and range are checked where it enters
  (:mod:`fedjax_lite.experiment.options`).

  Raises:
    ValueError: naming the key and the fix.
  """
  algorithm = c["algorithm"]
  if c["server_optimizer"] is not None and algorithm in SERVER_OPTIMIZERS and (
      c["server_optimizer"] != algorithm):
    raise ValueError(
        f"--algorithm {algorithm} is FedAvg with the {algorithm} server step; "
        f"--server-optimizer {c['server_optimizer']} contradicts it. Use --algorithm "
        f"{c['server_optimizer']}, or --server-optimizer with one of "
        f"{', '.join(CLIENT_ALGORITHMS)}.")
  frac = c["topk_fraction"]
  parse_local_work(c["local_work"])
  uses_fedavg_client = algorithm in FEDAVG_CLIENT
  if frac is not None and not uses_fedavg_client:
    raise ValueError(f"--topk-fraction (error feedback) wraps FedAvg's client update; it works "
                     f"with {', '.join(FEDAVG_CLIENT)}, not {algorithm}.")
  if (c["local_work"] != "full" or c["stragglers"] > 0) and algorithm not in LOCAL_WORK:
    raise ValueError(f"--local-work and --stragglers apply to {', '.join(LOCAL_WORK)}, not "
                     f"{algorithm}.")
  if c["stragglers"] > 0 and c["local_work"] != "full":
    raise ValueError("--stragglers sets each straggler's work itself; leave --local-work full.")
  dp = c.get("dp", "none") != "none"
  if dp and not AGGREGATORS[c["aggregator"]].with_dp:
    raise ValueError(
        f"--aggregator {c['aggregator']} with --dp {c['dp']}: the DP guarantee bounds the "
        "sensitivity of the clipped sum, which a median, trimmed mean or Krum does not have; "
        "use --aggregator mean (DP clips every update anyway) or drop --dp.")
  if dp and c["norm_bound"] is not None:
    raise ValueError("--norm-bound with --dp: DP already clips every update to --clip; drop "
                     "--norm-bound.")
  refusal = PRESETS[algorithm].dp_refusal if algorithm in PRESETS else None
  if dp and refusal is not None:
    raise ValueError(f"--algorithm {algorithm} with --dp: {refusal}; not supported.")
  if dp and algorithm in ASYNC_ALGORITHMS:
    raise ValueError(
        f"--algorithm {algorithm} with --dp is refused: which clients take part in a server "
        "step depends on their devices' speeds and on the other clients in flight, not on an "
        "independent sample, so the sampled-Gaussian accounting does not cover it; use a "
        "synchronous algorithm for DP.")
  if c["aggregator"] == "krum":
    f, k = c["num_byzantine"], cohort_size(c)
    flag = "--buffer" if algorithm == "fedbuff" else "--clients-per-round"
    if k < 2 * f + 3:
      raise ValueError(
          f"--aggregator krum tolerates f Byzantine clients only in cohorts of more than 2f + 2 "
          f"(Blanchard et al. 2017); --num-byzantine {f} needs {flag} >= "
          f"{2 * f + 3}, got {k}. Lower --num-byzantine to at most {max((k - 3) // 2, 0)}.")
    if c["multi_krum"] > k - f:
      raise ValueError(f"--multi-krum {c['multi_krum']} averages more clients than the "
                       f"{k - f} a cohort of {k} keeps with --num-byzantine {f}.")
  if c["attack"] != "none" and not c["attack_fraction"] > 0:
    raise ValueError(f"--attack {c['attack']} needs --attack-fraction > 0 (the fraction of "
                     "malicious clients).")
  if c["attack"] == "none" and c["attack_fraction"] > 0:
    raise ValueError("--attack-fraction needs --attack sign_flip, gaussian or scaled.")


def cohort_size(c: dict[str, Any]) -> int:
  """The clients a server step aggregates: ``clients_per_round``, or FedBuff's ``buffer``.

  Args:
    c: the configuration.

  Returns:
    ``buffer`` for ``fedbuff``, 1 for ``fedasync``, else ``clients_per_round``.
  """
  if c["algorithm"] == "fedasync":
    return 1
  if c["algorithm"] == "fedbuff":
    return c["buffer"]
  return c["clients_per_round"]


def parse_local_work(text: str):
  """Parses ``local_work``: ``full``, ``fixed:S``, ``sampled:A-B`` or ``proportional:R``.

  Returns:
    ``None`` (every step of the local epochs) or a
    :class:`fedjax_lite.client.LocalWork`.

  Raises:
    ValueError: for text of another form.
  """
  from fedjax_lite import client

  if text == "full":
    return None
  kind, _, arg = str(text).partition(":")
  try:
    if kind == "fixed":
      return client.fixed(int(arg))
    if kind == "sampled":
      low, _, high = arg.partition("-")
      return client.sampled(int(low), int(high))
    if kind == "proportional":
      return client.proportional(steps_per_example=float(arg))
  except (TypeError, ValueError) as e:
    raise ValueError(f"local_work {text!r}: {e}") from e
  raise ValueError(f"local_work must be full, fixed:STEPS, sampled:MIN-MAX or "
                   f"proportional:STEPS_PER_EXAMPLE; got {text!r}.")


def build_aggregator(c: dict[str, Any], dp_aggregator=None):
  """The aggregator of a configuration (``dp_aggregator`` replaces the mean under DP).

  The named aggregator is built by its entry of
  :data:`fedjax_lite.experiment.catalog.AGGREGATORS`.
  """
  import fedjax_lite as fl
  from fedjax_lite.experiment.catalog import AGGREGATORS

  if dp_aggregator is not None:
    agg = dp_aggregator
  else:
    agg = AGGREGATORS[c["aggregator"]].make(c)
    if c["norm_bound"] is not None:
      agg = fl.robust.norm_bounding(agg, max_norm=c["norm_bound"])
  if c["quantize_bits"] is not None:
    agg = fl.compression.quantization_aggregator(c["quantize_bits"], inner=agg)
  if c.get("secagg_bits") is not None:
    clip = c["secagg_clip"] if c["secagg_clip"] is not None else c["clip"]
    agg = fl.secagg.secure_aggregator(agg, bits=c["secagg_bits"], clip=clip,
                                      num_summands=c["secagg_summands"],
                                      dropout=c["secagg_dropout"],
                                      neighbours=c["secagg_neighbours"])
  return agg


def mean_builder(c: dict[str, Any]):
  """``--aggregator mean``: weighted by example counts, or as the algorithm's preset says."""
  import fedjax_lite as fl

  preset = PRESETS.get(c["algorithm"])
  return fl.mean_aggregator("num_examples" if preset is None else preset.mean_weights)


def median_builder(c: dict[str, Any]):
  """``--aggregator median``."""
  del c
  from fedjax_lite import robust

  return robust.coordinate_median()


def trimmed_mean_builder(c: dict[str, Any]):
  """``--aggregator trimmed_mean --trim-beta B``."""
  from fedjax_lite import robust

  return robust.trimmed_mean(c["trim_beta"])


def krum_builder(c: dict[str, Any]):
  """``--aggregator krum --num-byzantine F --multi-krum M``."""
  from fedjax_lite import robust

  return robust.krum(c["num_byzantine"], multi=c["multi_krum"])


def no_attack(c: dict[str, Any], update):
  """``--attack none``: the update as it is."""
  del c
  return update


def sign_flip_attack(c: dict[str, Any], update):
  """``--attack sign_flip``: a fraction of clients send ``-scale x delta``."""
  from fedjax_lite import attacks

  return attacks.sign_flip(update, c["attack_fraction"], seed=c["attack_seed"],
                           scale=c["attack_scale"])


def gaussian_attack(c: dict[str, Any], update):
  """``--attack gaussian``: a fraction of clients send noise of std ``scale``."""
  from fedjax_lite import attacks

  return attacks.gaussian_noise(update, c["attack_fraction"], std=c["attack_scale"],
                                seed=c["attack_seed"])


def scaled_attack(c: dict[str, Any], update):
  """``--attack scaled``: a fraction of clients send ``scale x delta``."""
  from fedjax_lite import attacks

  return attacks.scaled(update, c["attack_fraction"], factor=c["attack_scale"],
                        seed=c["attack_seed"])


def _attack(c: dict[str, Any], update):

  return ATTACKS[c["attack"]].make(c, update)


def build_algorithm(c: dict[str, Any], loss_fn, client_optimizer, *, dp_aggregator=None,
                    mesh=None, local_work=None):
  """The :class:`fedjax_lite.FederatedAlgorithm` of a configuration.

  Args:
    c: a configuration with the keys of :data:`fedjax_lite.experiment.DEFAULTS`; learning
      rates may be traced (a sweep).
    loss_fn: ``loss(params, batch)``.
    client_optimizer: the client's optax optimizer (SGD at ``client_lr``).
    dp_aggregator: the DP aggregator, if the run is private.
    mesh: the client mesh, or ``None``.
    local_work: a :class:`fedjax_lite.LocalWork` instead of the one
      ``local_work``/``stragglers`` describe (e.g. a round deadline's,
      :func:`fedjax_lite.timing.deadline_work`).

  Returns:
    The algorithm (for :data:`ASYNC_ALGORITHMS`, the synchronous one that
    :func:`fedjax_lite.asynchronous.build_fedbuff` steps); stateful ones
    (:data:`STATEFUL`) need ``init(params, num_clients=N)``.
  """
  import fedjax_lite as fl

  algo = _algorithm(c, loss_fn, client_optimizer, dp_aggregator, local_work)
  return fl.build_federated_algorithm(algo, chunk_size=c["chunk_size"], mesh=mesh)


def _algorithm(c: dict[str, Any], loss_fn, client_optimizer, dp_aggregator, local_work=None):
  """What the configuration's algorithm computes (run with the default execution)."""
  import fedjax_lite as fl
  from fedjax_lite import server

  algorithm = c["algorithm"]
  server_kwargs = {} if c["server_lr"] is None else {"learning_rate": c["server_lr"]}
  opt_name = algorithm if algorithm in SERVER_OPTIMIZERS else (c["server_optimizer"] or "fedavg")
  if algorithm in LOCAL_WORK and local_work is None:
    local_work = parse_local_work(c["local_work"])
    if c["stragglers"] > 0:
      local_work = fl.client.stragglers(c["stragglers"], c["straggler_mode"])
  context = registry.BuildContext(
      loss_fn=loss_fn, client_optimizer=client_optimizer, client_lr=c["client_lr"],
      num_epochs=c["local_epochs"], batch_size=c["batch_size"],
      server_optimizer=server.server_optimizer(opt_name, **server_kwargs),
      aggregator=build_aggregator(c, dp_aggregator), local_work=local_work,
      private=dp_aggregator is not None, cohort_size=cohort_size(c))
  if algorithm in SERVER_OPTIMIZERS + ASYNC_ALGORITHMS:
    update = fl.build_client_update(loss_fn, client_optimizer, num_epochs=context.num_epochs,
                                    batch_size=context.batch_size, local_work=local_work)
    spec = fl.build_federated_algorithm(update, context.server_optimizer,
                                        aggregator=context.aggregator).spec
  else:
    preset = PRESETS[algorithm]
    spec = preset.make(context, **{h.key: c[h.key] for h in preset.hyperparameters}).spec
  if c["attack"] == "none" and c["topk_fraction"] is None:
    return fl.build_federated_algorithm(spec)
  if algorithm not in FEDAVG_CLIENT:
    raise ValueError(f"--attack and --topk-fraction wrap a client update whose messages are "
                     f"model deltas, as FedAvg's; they work with {', '.join(FEDAVG_CLIENT)}, "
                     f"not {algorithm} (in the library, wrap any client update with "
                     "fedjax_lite.attacks).")
  update = _attack(c, spec.client_update)
  if c["topk_fraction"] is not None:
    update = fl.compression.with_error_feedback(update, fraction=c["topk_fraction"])
  return fl.build_federated_algorithm(spec._replace(client_update=update))
