"""Federated algorithms beyond FedAvg, each a :class:`fedjax_lite.FederatedAlgorithm`.

Every module offers its client update builder and a factory returning the
whole algorithm, composed from the round's extension points (stateful client
updates, broadcast, server update) so that DP aggregators, robust
aggregators, compression and sharding compose with it.
"""
