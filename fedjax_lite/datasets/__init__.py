"""Federated datasets: generators and loaders returning :class:`FederatedData`."""

from fedjax_lite.datasets.synthetic import synthetic_classification

__all__ = ["synthetic_classification"]
