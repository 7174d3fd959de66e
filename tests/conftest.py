"""Shared fixtures: small ragged populations and models."""

from __future__ import annotations

import os
import shutil
import tempfile

# Several CPU devices for sharding tests; must be set before jax is imported.
# The suite compiles hundreds of small programs, and XLA's CPU backend spends
# most of their time in LLVM's optimizer: level 0 compiles about 30% faster and
# computes the same thing (the tests compare programs built with the same flags,
# or against references at float tolerance). Set XLA_FLAGS yourself to test the
# optimized backend, e.g. XLA_FLAGS=--xla_force_host_platform_device_count=4.
# Runs in the tests do not write JAX's persistent compilation cache (one test turns it on).
os.environ.setdefault("FEDJAX_LITE_COMPILE_CACHE", "0")
# But the suite itself shares one JAX compilation cache, fresh for each session, between its
# tests, its xdist workers and the processes they start: many tests build the same small
# programs (the default run's round, the notebooks' models), and XLA compiles each once.
# (The test of the main job's cache gives its runs a cache directory of their own.)
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = os.path.join(tempfile.gettempdir(), f"fedjax-lite-tests-{os.getpid()}")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fedjax_lite import models  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
  """The process that made the session's compilation cache removes it (xdist: the controller)."""
  del session, exitstatus
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


RAGGED_SIZES = (5, 0, 13, 1, 8, 21, 3)


def make_clients(sizes, num_features=6, num_classes=3, seed=0):
  """Unpadded per-client arrays: a list of {'x': [n, F], 'y': [n]}."""
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((num_features, num_classes))
  clients = []
  for n in sizes:
    x = rng.standard_normal((n, num_features)).astype(np.float32)
    y = np.argmax(x @ w + 0.5 * rng.standard_normal((n, num_classes)), -1).astype(np.int32)
    clients.append({"x": x, "y": y})
  return clients


@pytest.fixture
def ragged_clients():
  return make_clients(RAGGED_SIZES)


def linear_model(num_features=6, num_classes=3, seed=0):
  model = models.LogisticRegression(num_classes)
  params = model.init(jax.random.key(seed), jnp.zeros((1, num_features)))
  return params, models.classification_loss(model.apply)


def mlp_model(num_features=6, num_classes=3, hidden=(8,), seed=0):
  model = models.MLP(hidden, num_classes)
  params = model.init(jax.random.key(seed), jnp.zeros((1, num_features)))
  return params, models.classification_loss(model.apply)


MODELS = {"linear": linear_model, "mlp": mlp_model}
