"""Seeded synthetic classification populations (no downloads)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedjax_lite.data import FederatedData, from_arrays


def synthetic_classification(
    num_clients: int,
    examples_per_client: int | Sequence[int],
    *,
    num_features: int = 60,
    num_classes: int = 10,
    heterogeneity: float = 1.0,
    noise: float = 0.5,
    seed: int = 0,
    dtype=np.float32,
) -> FederatedData:
  """Clients labelled by a per-client random linear teacher plus noise.

  A global teacher ``W0 ~ N(0, 1)`` is shared; client ``i`` uses
  ``W0 + heterogeneity * E_i`` with ``E_i ~ N(0, 1)``, draws features
  ``x ~ N(mu_i, 1)`` with a client-specific mean ``mu_i ~ N(0, heterogeneity)``
  and labels ``argmax(x @ W_i + noise * eps)``. This is the shape of the W1/W2
  benchmark data (a stand-in until LEAF Synthetic(alpha, beta) is used).

  Args:
    num_clients: number of clients ``N``.
    examples_per_client: one int for all clients, or one count per client
      (zeros allowed).
    num_features: feature dimension.
    num_classes: number of classes.
    heterogeneity: scale of per-client differences (0 gives IID clients).
    noise: label noise scale.
    seed: NumPy seed; the same seed gives the same population.
    dtype: feature dtype.

  Returns:
    A :class:`FederatedData` with ``x: [N, max_n, num_features]`` and
    ``y: int32[N, max_n]``.
  """
  rng = np.random.default_rng(seed)
  counts = np.broadcast_to(np.asarray(examples_per_client), (num_clients,)).astype(np.int64)
  max_n = max(int(counts.max()), 1)
  w0 = rng.standard_normal((num_features, num_classes))
  w = w0 + heterogeneity * rng.standard_normal((num_clients, num_features, num_classes))
  mu = np.sqrt(heterogeneity) * rng.standard_normal((num_clients, 1, num_features))
  x = (mu + rng.standard_normal((num_clients, max_n, num_features))).astype(dtype)
  logits = np.einsum("cnf,cfk->cnk", x, w) + noise * rng.standard_normal(
      (num_clients, max_n, num_classes))
  y = np.argmax(logits, axis=-1).astype(np.int32)
  return from_arrays({"x": x, "y": y}, counts)
