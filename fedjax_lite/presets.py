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
  ``server_lr``, default 1).
* :data:`AGGREGATORS`: ``mean``, ``median``, ``trimmed_mean``, ``krum``
  (:mod:`fedjax_lite.robust`), optionally wrapped by norm bounding
  (``norm_bound``) and stochastic quantization (``quantize_bits``,
  :mod:`fedjax_lite.compression`). Under differential privacy the DP
  aggregator is the aggregator (quantization may wrap it); a robust one is
  refused, since DP's sensitivity bound is that of the clipped sum.
* :data:`ATTACKS` (:mod:`fedjax_lite.attacks`) on a fraction of the clients,
  and top-k sparsification with error feedback (``topk_fraction``).
"""

from __future__ import annotations

from typing import Any

SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
CLIENT_ALGORITHMS = ("fedprox", "fedsgd", "fednova", "scaffold", "mime_lite", "ditto", "qffl")
ALGORITHMS = SERVER_OPTIMIZERS + CLIENT_ALGORITHMS
AGGREGATORS = ("mean", "median", "trimmed_mean", "krum")
ATTACKS = ("none", "sign_flip", "gaussian", "scaled")
STRAGGLER_MODES = ("drop", "partial")

# Algorithms that keep a state per client (init needs the population size).
STATEFUL = ("scaffold", "ditto")
# Algorithms whose client update is FedAvg's (build_client_update): top-k
# error feedback and local-work options apply to them.
FEDAVG_CLIENT = SERVER_OPTIMIZERS + ("fedprox",)

DEFAULTS: dict[str, Any] = {
    "server_optimizer": None,
    "mu": 0.01,
    "q": 1.0,
    "ditto_lambda": 0.1,
    "personal_lr": None,
    "personal_epochs": 1,
    "mime_beta": 0.9,
    "local_work": "full",
    "stragglers": 0.0,
    "straggler_mode": "drop",
    "aggregator": "mean",
    "trim_beta": 0.1,
    "num_byzantine": 1,
    "multi_krum": 1,
    "norm_bound": None,
    "quantize_bits": None,
    "topk_fraction": None,
    "attack": "none",
    "attack_fraction": 0.0,
    "attack_scale": 1.0,
    "attack_seed": 0,
}


def validate(c: dict[str, Any]) -> None:
  """Checks the algorithm, aggregator and attack keys of a configuration.

  Raises:
    ValueError: naming the key and the fix.
  """
  for key, valid in (("algorithm", ALGORITHMS), ("aggregator", AGGREGATORS),
                     ("attack", ATTACKS), ("straggler_mode", STRAGGLER_MODES)):
    if c[key] not in valid:
      raise ValueError(f"unknown {key} {c[key]!r}; choose one of: {', '.join(valid)}.")
  algorithm = c["algorithm"]
  if c["server_optimizer"] is not None:
    if c["server_optimizer"] not in SERVER_OPTIMIZERS:
      raise ValueError(f"unknown server_optimizer {c['server_optimizer']!r}; choose one of: "
                       f"{', '.join(SERVER_OPTIMIZERS)}.")
    if algorithm in SERVER_OPTIMIZERS and c["server_optimizer"] != algorithm:
      raise ValueError(
          f"--algorithm {algorithm} is FedAvg with the {algorithm} server step; "
          f"--server-optimizer {c['server_optimizer']} contradicts it. Use --algorithm "
          f"{c['server_optimizer']}, or --server-optimizer with one of "
          f"{', '.join(CLIENT_ALGORITHMS)}.")
  for key, low in (("mu", 0.0), ("ditto_lambda", 0.0), ("q", 0.0), ("stragglers", 0.0),
                   ("attack_fraction", 0.0), ("trim_beta", 0.0), ("mime_beta", 0.0)):
    v = c[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < low:
      raise ValueError(f"{key} must be a number >= {low}; got {v!r}.")
  for key, high in (("stragglers", 1.0), ("attack_fraction", 1.0)):
    if c[key] > high:
      raise ValueError(f"{key} must be in [0, {high}]; got {c[key]!r}.")
  if not c["trim_beta"] < 0.5:
    raise ValueError(f"trim_beta must be in [0, 0.5); got {c['trim_beta']!r}.")
  if not c["mime_beta"] < 1:
    raise ValueError(f"mime_beta must be in [0, 1); got {c['mime_beta']!r}.")
  for key in ("num_byzantine", "attack_seed", "personal_epochs", "multi_krum"):
    v = c[key]
    minimum = 0 if key in ("num_byzantine", "attack_seed") else 1
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
      raise ValueError(f"{key} must be an integer >= {minimum}; got {v!r}.")
  for key in ("norm_bound", "personal_lr"):
    v = c[key]
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
      raise ValueError(f"{key} must be > 0; got {v!r}.")
  bits = c["quantize_bits"]
  if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int)
                           or not 1 <= bits <= 32):
    raise ValueError(f"quantize_bits must be an integer in 1..32; got {bits!r}.")
  frac = c["topk_fraction"]
  if frac is not None and (isinstance(frac, bool) or not isinstance(frac, (int, float))
                           or not 0 < frac <= 1):
    raise ValueError(f"topk_fraction must be in (0, 1]; got {frac!r}.")
  parse_local_work(c["local_work"])
  uses_fedavg_client = algorithm in FEDAVG_CLIENT
  if frac is not None and not uses_fedavg_client:
    raise ValueError(f"--topk-fraction (error feedback) wraps FedAvg's client update; it works "
                     f"with {', '.join(FEDAVG_CLIENT)}, not {algorithm}.")
  if (c["local_work"] != "full" or c["stragglers"] > 0) and algorithm not in (
      FEDAVG_CLIENT + ("fednova",)):
    raise ValueError(f"--local-work and --stragglers apply to {', '.join(FEDAVG_CLIENT)} and "
                     f"fednova, not {algorithm}.")
  if c["stragglers"] > 0 and c["local_work"] != "full":
    raise ValueError("--stragglers sets each straggler's work itself; leave --local-work full.")
  dp = c.get("dp", "none") != "none"
  if dp and c["aggregator"] != "mean":
    raise ValueError(
        f"--aggregator {c['aggregator']} with --dp {c['dp']}: the DP guarantee bounds the "
        "sensitivity of the clipped sum, which a median, trimmed mean or Krum does not have; "
        "use --aggregator mean (DP clips every update anyway) or drop --dp.")
  if dp and c["norm_bound"] is not None:
    raise ValueError("--norm-bound with --dp: DP already clips every update to --clip; drop "
                     "--norm-bound.")
  if dp and algorithm == "qffl":
    raise ValueError("--algorithm qffl with --dp: the q-FFL step divides by a sum of h_k, "
                     "which DP noise can make 0 or negative; not supported.")
  if c["attack"] != "none" and not c["attack_fraction"] > 0:
    raise ValueError(f"--attack {c['attack']} needs --attack-fraction > 0 (the fraction of "
                     "malicious clients).")
  if c["attack"] == "none" and c["attack_fraction"] > 0:
    raise ValueError("--attack-fraction needs --attack sign_flip, gaussian or scaled.")


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
  """The aggregator of a configuration (``dp_aggregator`` replaces the mean under DP)."""
  import fedjax_lite as fl

  if dp_aggregator is not None:
    agg = dp_aggregator
  else:
    name = c["aggregator"]
    if name == "mean":
      agg = fl.mean_aggregator("uniform" if c["algorithm"] == "qffl" else "num_examples")
    elif name == "median":
      agg = fl.robust.coordinate_median()
    elif name == "trimmed_mean":
      agg = fl.robust.trimmed_mean(c["trim_beta"])
    else:
      agg = fl.robust.krum(c["num_byzantine"], multi=c["multi_krum"])
    if c["norm_bound"] is not None:
      agg = fl.robust.norm_bounding(agg, max_norm=c["norm_bound"])
  if c["quantize_bits"] is not None:
    agg = fl.compression.quantization_aggregator(c["quantize_bits"], inner=agg)
  return agg


def _attack(c: dict[str, Any], update):
  from fedjax_lite import attacks

  frac, seed, scale = c["attack_fraction"], c["attack_seed"], c["attack_scale"]
  if c["attack"] == "sign_flip":
    return attacks.sign_flip(update, frac, seed=seed, scale=scale)
  if c["attack"] == "gaussian":
    return attacks.gaussian_noise(update, frac, std=scale, seed=seed)
  if c["attack"] == "scaled":
    return attacks.scaled(update, frac, factor=scale, seed=seed)
  return update


def build_algorithm(c: dict[str, Any], loss_fn, client_optimizer, *, dp_aggregator=None,
                    mesh=None):
  """The :class:`fedjax_lite.FederatedAlgorithm` of a configuration.

  Args:
    c: a configuration with the keys of :data:`DEFAULTS` and
      :data:`fedjax_lite.experiment.DEFAULTS`; learning rates may be traced
      (a sweep).
    loss_fn: ``loss(params, batch)``.
    client_optimizer: the client's optax optimizer (SGD at ``client_lr``).
    dp_aggregator: the DP aggregator, if the run is private.
    mesh: the client mesh, or ``None``.

  Returns:
    The algorithm; stateful ones (:data:`STATEFUL`) need ``init(params,
    num_clients=N)``.
  """
  import fedjax_lite as fl

  algo = _algorithm(c, loss_fn, client_optimizer, dp_aggregator)
  return fl.build_federated_algorithm(algo, chunk_size=c["chunk_size"], mesh=mesh)


def _algorithm(c: dict[str, Any], loss_fn, client_optimizer, dp_aggregator):
  """What the configuration's algorithm computes (run with the default execution)."""
  import fedjax_lite as fl
  from fedjax_lite import algorithms, server

  algorithm = c["algorithm"]
  aggregator = build_aggregator(c, dp_aggregator)
  server_kwargs = {} if c["server_lr"] is None else {"learning_rate": c["server_lr"]}
  opt_name = algorithm if algorithm in SERVER_OPTIMIZERS else (c["server_optimizer"] or "fedavg")
  server_opt = server.server_optimizer(opt_name, **server_kwargs)
  common = dict(aggregator=aggregator)
  shape = dict(num_epochs=c["local_epochs"], batch_size=c["batch_size"])
  attacked = c["attack"] != "none"

  if algorithm in FEDAVG_CLIENT:
    local_work = parse_local_work(c["local_work"])
    if c["stragglers"] > 0:
      local_work = fl.client.stragglers(c["stragglers"], c["straggler_mode"])
    update = fl.build_client_update(
        loss_fn, client_optimizer, proximal_mu=c["mu"] if algorithm == "fedprox" else 0.0,
        local_work=local_work, **shape)
    update = _attack(c, update)
    if c["topk_fraction"] is not None:
      update = fl.compression.with_error_feedback(update, fraction=c["topk_fraction"])
    return fl.build_federated_algorithm(update, server_opt, **common)
  if attacked:
    raise ValueError(f"--attack wraps FedAvg's client update here; it works with "
                     f"{', '.join(FEDAVG_CLIENT)}, not {algorithm} (in the library, wrap any "
                     "client update with fedjax_lite.attacks).")
  lr = c["client_lr"]
  if algorithm == "fedsgd":
    return algorithms.fedsgd(loss_fn, server_optimizer=server_opt, **common)
  if algorithm == "fednova":
    local_work = parse_local_work(c["local_work"])
    if c["stragglers"] > 0:
      local_work = fl.client.stragglers(c["stragglers"], c["straggler_mode"])
    return algorithms.fednova(loss_fn, client_lr=lr, local_work=local_work,
                              server_optimizer=server_opt, **shape, **common)
  if algorithm == "scaffold":
    dp = dp_aggregator is not None
    return algorithms.scaffold(loss_fn, client_lr=lr, server_optimizer=server_opt,
                               cohort_size=c["clients_per_round"] if dp else None,
                               **shape, **common)
  if algorithm == "mime_lite":
    return algorithms.mime_lite(loss_fn, client_lr=lr, beta=c["mime_beta"],
                                server_optimizer=server_opt, **shape, **common)
  if algorithm == "ditto":
    return algorithms.ditto(loss_fn, client_lr=lr, personal_lr=c["personal_lr"] or lr,
                            lam=c["ditto_lambda"], personal_epochs=c["personal_epochs"],
                            server_optimizer=server_opt, **shape, **common)
  return algorithms.qffl(loss_fn, q=c["q"], client_lr=lr, server_optimizer=server_opt,
                         **shape, **common)
