"""Simulated Byzantine clients: wrappers that corrupt some clients' updates.

Each attack takes the client update it wraps first (a plain
``client_update(server_params, data, key)`` or a
:class:`fedjax_lite.ClientUpdate`, and returns one of the same kind) and
replaces the delta of the *malicious* clients. Which clients are malicious is
fixed for the whole run and decided per client id::

    malicious(client_id) = uniform(fold_in(key(seed), client_id)) < fraction

so it does not depend on the round, the cohort's order, chunking or sharding
(see :func:`is_malicious`). Only clients with at least one example are
corrupted (an empty client's zero delta stays zero), and each client reports
the count ``num_malicious`` (1 for a corrupted client, else 0), which the
round sums. The malicious clients keep their weight and their metrics.

Use them with the robust aggregators of :mod:`fedjax_lite.robust` to measure
robustness, e.g.::

    update = attacks.sign_flip(fl.build_client_update(loss, opt, batch_size=8),
                               fraction=0.2, scale=10.0)
    algo = fl.build_federated_algorithm(update, fl.server.fedavg(),
                                        aggregator=robust.coordinate_median())
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fedjax_lite._validate import check_int, check_real
from fedjax_lite.client import ClientOutput, ClientUpdate, output_counts

# Folded into the round's client key to derive the attack's noise keys, so they
# differ from the honest update's per-client key fold_in(key, client_id).
_NOISE_TAG = 0x0A77AC


def _check_fraction(fraction: Any) -> float:
  if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not (
      0.0 <= fraction <= 1.0):
    raise ValueError(f"`fraction` (of malicious clients) must be a number in [0, 1]; got "
                     f"{fraction!r}.")
  return float(fraction)


def _check_client_update(client_update: Any) -> None:
  if not (isinstance(client_update, ClientUpdate) or callable(client_update)):
    raise TypeError("`client_update` must be a fedjax_lite.ClientUpdate or a function "
                    "client_update(server_params, data, key) (e.g. from fl.build_client_update); "
                    f"got {client_update!r}.")


def is_malicious(client_ids: Any, fraction: float, seed: int = 0) -> Any:
  """Whether each client is malicious: ``uniform(fold_in(key(seed), id)) < fraction``.

  A pure function of the client id, so the malicious set is the same in every
  round and for any cohort order, chunking or sharding; about ``fraction`` of
  a population's clients are malicious (exactly none for 0, all for 1).

  Args:
    client_ids: int array of any shape (e.g. ``FederatedData.client_ids``).
    fraction: the probability that a client is malicious, in ``[0, 1]``.
    seed: selects the malicious set.

  Returns:
    ``bool`` array shaped like ``client_ids``.

  Raises:
    ValueError, TypeError: for a ``fraction`` outside ``[0, 1]`` or a non-int
      ``seed``.
  """
  fraction = _check_fraction(fraction)
  seed = check_int("seed", seed, 0)
  return _malicious(client_ids, fraction, seed)


def _malicious(client_ids: Any, fraction: float, seed: int) -> Any:
  ids = jnp.asarray(client_ids, jnp.int32)
  base = jax.random.key(seed)
  u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(base, i)))(ids.reshape(-1))
  return (u < fraction).reshape(ids.shape)


AnyClientUpdate = ClientUpdate | Callable[..., ClientOutput]


def _corrupt(client_update: AnyClientUpdate, fraction: float, seed: int,
             corrupt: Callable[[Any, Any, Any], Any]) -> AnyClientUpdate:
  """Wraps ``client_update``; malicious clients' deltas become ``corrupt(delta, data, key)``.

  A :class:`fedjax_lite.ClientUpdate` comes back as one (same ``init``), a
  plain function as a plain function. Checks the arguments every attack takes.
  """
  _check_client_update(client_update)
  fraction, seed = _check_fraction(fraction), check_int("seed", seed, 0)

  def attack(out: ClientOutput, data: Any, key: Any) -> ClientOutput:
    bad = _malicious(data.client_ids, fraction, seed) & (data.num_examples > 0)
    bad_delta = corrupt(out.delta, data, key)
    delta = jax.tree.map(lambda new, old: jnp.where(bad, new, old).astype(old.dtype),
                         bad_delta, out.delta)
    counts = {**output_counts(out, data.num_examples), "num_malicious": bad.astype(jnp.float32)}
    return out._replace(delta=delta, counts=counts)

  if isinstance(client_update, ClientUpdate):
    inner = client_update
    return ClientUpdate(inner.init, lambda broadcast, data, key, state: attack(
        inner.update(broadcast, data, key, state), data, key))
  return lambda broadcast, data, key: attack(client_update(broadcast, data, key), data, key)


def sign_flip(client_update: AnyClientUpdate, fraction: float, seed: int = 0,
              scale: float = 1.0) -> AnyClientUpdate:
  """Malicious clients send ``-scale * delta`` (the sign-flipping attack).

  References:
    Li, Xu, Chen, Giannakis, Ling. "RSA: Byzantine-Robust Stochastic
    Aggregation Methods for Distributed Learning from Heterogeneous Datasets",
    AAAI 2019. https://arxiv.org/abs/1811.03761

  Args:
    client_update: the honest client update: a :class:`fedjax_lite.ClientUpdate`
      or a plain stateless function.
    fraction: probability that a client is malicious (see
      :func:`is_malicious`), in ``[0, 1]``.
    seed: selects the malicious set.
    scale: the flipped delta's magnitude factor (``1.0``: plain sign flip;
      large values also make the attack large).

  Returns:
    A client update of the same kind; its counts gain ``num_malicious``.

  Raises:
    TypeError, ValueError: for a non-callable ``client_update``, a bad
      ``fraction`` or ``seed``.
  """
  return _corrupt(client_update, fraction, seed,
                  lambda delta, data, key: jax.tree.map(lambda d: -scale * d, delta))


def gaussian_noise(client_update: AnyClientUpdate, fraction: float, std: float,
                   seed: int = 0) -> AnyClientUpdate:
  """Malicious clients send ``N(0, std^2)`` noise (per coordinate) instead of their delta.

  The noise key is ``fold_in(fold_in(key, TAG), client_id)`` for the round's
  client key ``key`` (a fixed tag keeps it apart from the honest update's
  ``fold_in(key, client_id)``), split over the delta's leaves: fresh every
  round, independent of cohort order and chunking.

  References:
    Blanchard, El Mhamdi, Guerraoui, Stainer. "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017
    (Gaussian Byzantine vectors). https://papers.nips.cc/paper/6617

  Args:
    client_update, fraction, seed: as :func:`sign_flip`.
    std: the noise's standard deviation (>= 0).

  Returns:
    As :func:`sign_flip`.

  Raises:
    TypeError, ValueError: as :func:`sign_flip`, or for a negative ``std``.
  """
  check_real("std", std, low=0.0)

  def noise(delta, data, key):
    client_key = jax.random.fold_in(jax.random.fold_in(key, _NOISE_TAG), data.client_ids)
    leaves, treedef = jax.tree.flatten(delta)
    keys = jax.random.split(client_key, max(len(leaves), 1))
    noisy = [std * jax.random.normal(k, jnp.shape(x), _float_dtype(x))
             for k, x in zip(keys, leaves, strict=False)]
    return jax.tree.unflatten(treedef, noisy)

  return _corrupt(client_update, fraction, seed, noise)


def scaled(client_update: AnyClientUpdate, fraction: float, factor: float,
           seed: int = 0) -> AnyClientUpdate:
  """Malicious clients send ``factor * delta`` (boosting / model replacement).

  References:
    Bagdasaryan, Veit, Hua, Estrin, Shmatikov. "How To Backdoor Federated
    Learning", AISTATS 2020. https://arxiv.org/abs/1807.00459
    Bhagoji, Chakraborty, Mittal, Calo. "Analyzing Federated Learning through
    an Adversarial Lens", ICML 2019. https://arxiv.org/abs/1811.12470

  Args:
    client_update, fraction, seed: as :func:`sign_flip`.
    factor: the boost applied to the malicious clients' deltas.

  Returns:
    As :func:`sign_flip`.

  Raises:
    TypeError, ValueError: as :func:`sign_flip`.
  """
  return _corrupt(client_update, fraction, seed,
                  lambda delta, data, key: jax.tree.map(lambda d: factor * d, delta))


def _float_dtype(x: Any) -> Any:
  dtype = jnp.result_type(x)
  return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32
