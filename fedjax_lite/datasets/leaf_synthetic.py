"""LEAF / FedProx Synthetic(alpha, beta): per-device softmax-regression teachers.

The generative model of Li et al. (2020), Section 5.1 and Appendix C.1, for device ``k``
(``N(mean, variance)``; ``F = 60`` features and ``C = 10`` classes by default)::

  u_k ~ N(0, alpha),   W_k[i, j] ~ N(u_k, 1),   b_k[i] ~ N(u_k, 1)       (W_k: [C, F])
  B_k ~ N(0, beta),    v_k[j] ~ N(B_k, 1)                                  (v_k: [F])
  x ~ N(v_k, Sigma),   Sigma = diag(j^-1.2), j = 1..F
  y = argmax(softmax(W_k x + b_k)) = argmax(W_k x + b_k)

``alpha`` controls how much the devices' models differ and ``beta`` how much their feature
distributions differ; Synthetic(0, 0), (0.5, 0.5) and (1, 1) are the paper's settings. Note a
property of the model as defined: ``u_k`` shifts every entry of ``W_k`` and ``b_k`` by the same
amount, which adds ``u_k * (sum_j x_j + 1)`` to every class's logit alike, so the argmax labels
do not depend on ``u_k``; ``alpha`` changes the model parameters (and any model whose logits are
not shift-invariant) but not the generated data. With the per-device streams used here, the
same seed gives the same ``x`` and ``y`` for every ``alpha``. In
Synthetic-IID every device shares one ``W, b`` with ``N(0, 1)`` entries and one feature mean
``v ~ N(0, 1)`` (per feature), so all devices draw from the same distribution.

Number of examples per device (a heavy-tailed, power-law-like law as in LEAF): we implemented
``n_k = int(s_k) + 50`` with ``s_k ~ LogNormal(mu=4, sigma=2)`` (the log of ``s_k`` is
``N(4, 2^2)``), which is the law of the FedProx repository's generator
(https://github.com/litian96/FedProx, ``data/synthetic_*``). Note that the repository's
generator passes ``alpha`` and ``beta`` to NumPy as standard deviations; here, as in the paper's
text, they are variances (the two agree for ``alpha = beta = 1`` and ``0``).

Reference:
  T. Li, A. K. Sahu, M. Zaheer, M. Sanjabi, A. Talwalkar, V. Smith. "Federated Optimization in
  Heterogeneous Networks." MLSys 2020. https://arxiv.org/abs/1812.06127
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedjax_lite._validate import check_int
from fedjax_lite.datasets.base import FederatedDataset
from fedjax_lite.datasets.partition import partition, split_indices

SIZE_LOGNORMAL_MEAN = 4.0
SIZE_LOGNORMAL_SIGMA = 2.0
SIZE_FLOOR = 50
COVARIANCE_EXPONENT = -1.2


def _check_variance(name: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
      np.isfinite(value) and value >= 0):
    raise ValueError(f"`{name}` is a variance and must be a finite number >= 0; got {value!r}.")
  return float(value)


def _streams(seed: int, num_clients: int):
  """Independent streams: shared IID model, per-client model, per-client data, split."""
  check_int("seed", seed, 0)
  shared, models, data, split = np.random.SeedSequence(int(seed)).spawn(4)
  return shared, models.spawn(num_clients), data.spawn(num_clients), split


def leaf_synthetic_params(
    num_clients: int = 30,
    alpha: float = 1.0,
    beta: float = 1.0,
    *,
    iid: bool = False,
    num_features: int = 60,
    num_classes: int = 10,
    seed: int = 0,
) -> dict[str, np.ndarray]:
  """The per-device model of :func:`leaf_synthetic` (same arguments, same seed, same values).

  Device ``k``'s parameters come from its own seeded stream, so they do not depend on the other
  devices or on the number of examples: the first ``m`` devices of a population of ``N > m`` are
  those of a population of ``m``.

  Args:
    num_clients: number of devices ``N``.
    alpha: variance of the model mean ``u_k`` (ignored when ``iid``).
    beta: variance of the feature-mean centre ``B_k`` (ignored when ``iid``).
    iid: Synthetic-IID: one shared ``W, b, v`` for every device.
    num_features: feature dimension ``F``.
    num_classes: number of classes ``C``.
    seed: NumPy seed.

  Returns:
    A dict with ``"W"``: ``float64[N, C, F]``, ``"b"``: ``float64[N, C]``, ``"v"`` (feature
    means): ``float64[N, F]``, ``"sigma"`` (feature variances ``j^-1.2``): ``float64[F]``, and
    ``"sizes"``: ``int64[N]`` drawn from the size law (before any override or truncation).

  Raises:
    ValueError: for negative or non-finite ``alpha``/``beta`` or bad sizes or seed.
  """
  num_clients = check_int("num_clients", num_clients, 1)
  alpha = _check_variance("alpha", alpha)
  beta = _check_variance("beta", beta)
  f = check_int("num_features", num_features, 1)
  c = check_int("num_classes", num_classes, 2)
  shared_ss, model_ss, _, _ = _streams(seed, num_clients)
  w = np.empty((num_clients, c, f))
  b = np.empty((num_clients, c))
  v = np.empty((num_clients, f))
  sizes = np.empty(num_clients, dtype=np.int64)
  for k in range(num_clients):
    rng = np.random.default_rng(model_ss[k])
    sizes[k] = int(rng.lognormal(SIZE_LOGNORMAL_MEAN, SIZE_LOGNORMAL_SIGMA)) + SIZE_FLOOR
    u_k = rng.normal(0.0, np.sqrt(alpha))
    w[k] = rng.normal(u_k, 1.0, size=(c, f))
    b[k] = rng.normal(u_k, 1.0, size=c)
    big_b = rng.normal(0.0, np.sqrt(beta))
    v[k] = rng.normal(big_b, 1.0, size=f)
  if iid:
    rng = np.random.default_rng(shared_ss)
    w[:] = rng.normal(0.0, 1.0, size=(c, f))
    b[:] = rng.normal(0.0, 1.0, size=c)
    v[:] = rng.normal(0.0, 1.0, size=f)
  sigma = np.arange(1, f + 1, dtype=np.float64) ** COVARIANCE_EXPONENT
  return {"W": w, "b": b, "v": v, "sigma": sigma, "sizes": sizes}


def leaf_synthetic(
    num_clients: int = 30,
    alpha: float = 1.0,
    beta: float = 1.0,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    examples_per_client: int | Sequence[int] | None = None,
    max_examples_per_client: int | None = None,
    **model_options: Any,
) -> FederatedDataset:
  """Synthetic(alpha, beta) of FedProx / LEAF (see the module docstring for the exact model).

  Device ``k`` gets ``n_k`` examples (the lognormal size law, or ``examples_per_client``, capped
  at ``max_examples_per_client``); ``x ~ N(v_k, diag(j^-1.2))`` is drawn in float64, cast to
  float32, and labelled ``y = argmax(W_k x + b_k)`` from the float32 features. Each device's
  examples are then split at random into train and test with
  :func:`~fedjax_lite.datasets.partition.split_indices`.

  Args:
    num_clients, alpha, beta: as :func:`leaf_synthetic_params`.
    test_fraction: per-device held-out fraction in ``[0, 1)`` (``0`` gives ``test=None``).
    seed: NumPy seed; the model of device ``k`` is :func:`leaf_synthetic_params`'s.
    examples_per_client: one count for every device, or ``N`` counts (``>= 0``), replacing the
      size law (e.g. 32 for a fixed-size benchmark).
    max_examples_per_client: caps every device's count (``>= 1``), e.g. to bound the padding
      the heavy-tailed law would cause.
    **model_options: ``iid``, ``num_features`` (``F``), ``num_classes`` (``C``): as
      :func:`leaf_synthetic_params`.

  Returns:
    A :class:`FederatedDataset` with ``train``/``test`` arrays ``x: float32[N, max_n, F]`` and
    ``y: int32[N, max_n]``, ``central_test=None``, ``num_classes=C``, client names
    ``"client_0000", ...``, and ``info`` holding the parameters and sizes.

  Raises:
    ValueError: for negative variances, bad counts, sizes or ``test_fraction``.
  """
  params = leaf_synthetic_params(num_clients, alpha, beta, seed=seed, **model_options)
  iid = bool(model_options.get("iid", False))
  num_features, num_classes = params["sigma"].shape[0], params["b"].shape[-1]
  _, _, data_ss, split_ss = _streams(seed, num_clients)
  if examples_per_client is None:
    sizes = params["sizes"].copy()
  else:
    given = np.asarray(examples_per_client)
    if given.ndim > 1 or (given.ndim == 1 and given.shape[0] != num_clients) or (
        given.size and not np.issubdtype(given.dtype, np.integer)):
      raise ValueError(
          f"`examples_per_client` must be an int or {num_clients} ints (one per client); got "
          f"{examples_per_client!r}.")
    sizes = np.broadcast_to(given, (num_clients,)).astype(np.int64)
    if sizes.min() < 0:
      raise ValueError(f"`examples_per_client` must be >= 0; got min {sizes.min()}.")
  if max_examples_per_client is not None:
    cap = check_int("max_examples_per_client", max_examples_per_client, 1)
    sizes = np.minimum(sizes, cap)
  if sizes.sum() == 0:
    raise ValueError("every client has 0 examples; raise `examples_per_client`.")

  xs, ys = [], []
  scale = np.sqrt(params["sigma"])
  for k in range(num_clients):
    rng = np.random.default_rng(data_ss[k])
    x = (params["v"][k] + scale * rng.standard_normal((sizes[k], num_features))).astype(
        np.float32)
    logits = x.astype(np.float64) @ params["W"][k].T + params["b"][k]
    xs.append(x)
    ys.append(np.argmax(logits, axis=-1).astype(np.int32))
  arrays = {"x": np.concatenate(xs), "y": np.concatenate(ys)}
  bounds = np.concatenate([[0], np.cumsum(sizes)])
  index_lists = [np.arange(bounds[k], bounds[k + 1], dtype=np.int64) for k in range(num_clients)]
  split_seed = int(split_ss.generate_state(1)[0])
  train_lists, test_lists = split_indices(index_lists, test_fraction, split_seed)
  train = partition(arrays, train_lists)
  test = partition(arrays, test_lists) if test_fraction > 0 else None
  info = {
      "name": "leaf_synthetic_iid" if iid else f"leaf_synthetic({alpha:g},{beta:g})",
      "source": "Li et al., Federated Optimization in Heterogeneous Networks (FedProx), "
                "arXiv:1812.06127",
      "alpha": float(alpha),
      "beta": float(beta),
      "iid": bool(iid),
      "num_features": int(num_features),
      "num_classes": int(num_classes),
      "seed": int(seed),
      "test_fraction": float(test_fraction),
      "size_law": (
          f"int(LogNormal({SIZE_LOGNORMAL_MEAN:g}, {SIZE_LOGNORMAL_SIGMA:g})) + {SIZE_FLOOR}"
          if examples_per_client is None else "examples_per_client"),
      "max_examples_per_client": max_examples_per_client,
      "examples_per_client": sizes.tolist(),
      "train_examples": int(sum(i.size for i in train_lists)),
      "test_examples": int(sum(i.size for i in test_lists)),
  }
  names = tuple(f"client_{k:04d}" for k in range(num_clients))
  return FederatedDataset(train, test, None, int(num_classes), names, info)
