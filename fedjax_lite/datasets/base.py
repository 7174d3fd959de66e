"""The container every federated dataset builder returns."""

from typing import Any, NamedTuple

import numpy as np

from fedjax_lite.data import FederatedData


class FederatedDataset(NamedTuple):
  """A federated dataset: per-client train and test splits plus metadata.

  Attributes:
    train: per-client training data (arrays ``x`` and ``y``; leading client
      axis ``N``).
    test: per-client held-out data for the same ``N`` clients in the same
      order (a client may have 0 test examples), or ``None``.
    central_test: an un-federated test set ``{"x": [M, ...], "y": [M, ...]}``
      where the source has one (e.g. Fashion-MNIST's 10k test images), else
      ``None``.
    num_classes: number of label classes (vocabulary size for next-character
      prediction).
    client_names: a human-readable name per client (``N`` strings).
    info: free-form metadata (source, sizes, preprocessing), JSON-serializable.
  """

  train: FederatedData
  test: FederatedData | None
  central_test: dict[str, np.ndarray] | None
  num_classes: int
  client_names: tuple[str, ...]
  info: dict[str, Any]
