"""Benchmarks of fedjax_lite: each prints one JSON line per configuration."""
