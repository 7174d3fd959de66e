"""The container every federated dataset builder returns."""

from typing import Any, NamedTuple

import numpy as np

from fedjax_lite.data import FederatedData
from fedjax_lite.ragged import RaggedData


class FederatedDataset(NamedTuple):
  """A federated dataset: per-client train and test splits plus metadata.

  Attributes:
    train: per-client training data (arrays ``x`` and ``y``): stacked and
      padded (:class:`~fedjax_lite.FederatedData`, leading client axis ``N``),
      or unpadded (:class:`~fedjax_lite.RaggedData`, for heavy-tailed data).
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

  train: FederatedData | RaggedData
  test: FederatedData | RaggedData | None
  central_test: dict[str, np.ndarray] | None
  num_classes: int
  client_names: tuple[str, ...]
  info: dict[str, Any]


def check_split_labels(data: RaggedData | None, num_classes: int, split: str) -> None:
  """Refuses a loaded split whose labels ``y`` fall outside ``[0, num_classes)``.

  Args:
    data: the split (``None`` or empty: nothing to check).
    num_classes: the number of classes.
    split: its name, for the message.

  Raises:
    ValueError: naming the labels' span and the fix.
  """
  if data is None or data.total_examples == 0:
    return
  y = data.arrays["y"]
  lo, hi = int(y.min()), int(y.max())
  if lo < 0 or hi >= num_classes:
    raise ValueError(f"{split} labels span [{lo}, {hi}] but `num_classes`={num_classes}; pass "
                     "`num_classes` larger than the largest label (or check `kind`).")
