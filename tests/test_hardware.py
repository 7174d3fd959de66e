"""Per-platform "auto" choices: chunk size from device memory, gradient mode, shuffle."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings

import fedjax_lite as fl
from fedjax_lite import hardware
from tests.conftest import make_clients, mlp_model

MiB = 2**20


def cohort_like(num_clients, max_examples, features):
  return fl.FederatedData({"x": jax.ShapeDtypeStruct((num_clients, max_examples, features),
                                                     jnp.float32)},
                          jax.ShapeDtypeStruct((num_clients,), jnp.int32),
                          jax.ShapeDtypeStruct((num_clients,), jnp.int32))


SMALL = {"w": jax.ShapeDtypeStruct((60, 10), jnp.float32),
         "b": jax.ShapeDtypeStruct((10,), jnp.float32)}  # 2,440 bytes, per-example gradients
MLP = {"w": jax.ShapeDtypeStruct((784, 200), jnp.float32)}  # 627,200 bytes, batch gradients


def test_cpu_chunk_is_the_cache_budget_over_the_shape_estimate():
  cpu = hardware.DeviceMemory("cpu")
  per_client = 4 * 2440 + 32 * 60 * 4 + 32 * 2440  # model copies, data, per-example copies
  assert fl.hardware.auto_chunk_size(SMALL, cohort_like(10, 32, 60), memory=cpu) == (
      hardware.CPU_CHUNK_BYTES // per_client)
  # The CPU ignores the traced estimate and the device's memory.
  assert fl.hardware.auto_chunk_size(SMALL, cohort_like(10, 32, 60), memory=cpu,
                            client_bytes=10**9) == hardware.CPU_CHUNK_BYTES // per_client


def test_accelerator_chunk_is_a_fraction_of_free_memory():
  # 80 GB card, 30 GB in use (the population), a 1 GB cohort set aside.
  gpu = hardware.DeviceMemory("gpu", bytes_limit=80 * 10**9, bytes_in_use=30 * 10**9)
  free = 80 * 10**9 - 30 * 10**9 - 10**9
  per_client = 4 * 627_200 + 64 * 784 * 4  # batch gradients: no per-example copies
  got = fl.hardware.auto_chunk_size(MLP, cohort_like(10, 64, 784), memory=gpu, reserved_bytes=10**9)
  assert got == int(hardware.ACCELERATOR_MEMORY_FRACTION * free) // per_client
  # A traced working set larger than the shape estimate wins; a smaller one does not.
  assert fl.hardware.auto_chunk_size(MLP, cohort_like(10, 64, 784), memory=gpu,
                                     reserved_bytes=10**9, client_bytes=7 * MiB) == int(
                                         0.5 * free) // (2 * 7 * MiB)
  assert got == fl.hardware.auto_chunk_size(MLP, cohort_like(10, 64, 784), memory=gpu,
                                   reserved_bytes=10**9, client_bytes=1000)
  # Full memory still gives one client per chunk; an explicit budget is honoured.
  full = hardware.DeviceMemory("gpu", bytes_limit=10**9, bytes_in_use=10**9)
  assert fl.hardware.auto_chunk_size(MLP, cohort_like(10, 64, 784), memory=full) == 1
  assert fl.hardware.auto_chunk_size(MLP, cohort_like(10, 64, 784), 7 * per_client, memory=gpu) == 7
  # An accelerator that reports no memory gets the documented fallback budget.
  silent = hardware.DeviceMemory("tpu")
  assert fl.hardware.auto_chunk_size(MLP, cohort_like(10, 64, 784), memory=silent) == (
      hardware.ACCELERATOR_FALLBACK_BYTES // per_client)


def test_device_memory_reads_the_default_device():
  mem = hardware.device_memory()
  assert mem.platform == jax.devices()[0].platform == "cpu"
  assert mem.bytes_in_use >= 0


def test_jaxpr_bytes_is_the_peak_of_live_values():
  x = jnp.zeros((100,), jnp.float32)
  # Input (400) held; x*2 (400) dies into the sum (4): peak 400 + 400 + 4.
  assert hardware.jaxpr_bytes(jax.make_jaxpr(lambda x: (x * 2).sum())(x)) == 804
  # A chain keeps only two temporaries live at a time: 400 + 400 + 400.
  chain = lambda x: jnp.sin(jnp.cos(jnp.exp(x)))
  assert hardware.jaxpr_bytes(jax.make_jaxpr(chain)(x)) == 1200

  # A scan's body counts once, not once per iteration.
  def scanned(x):
    return jax.lax.scan(lambda c, _: (c * 2 + 1, None), x, None, length=1000)[0]

  assert hardware.jaxpr_bytes(jax.make_jaxpr(scanned)(x)) < 10 * 400


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_traced_estimate_bounds_the_compiled_round_per_client(model):
  """A chunk sized with the estimate fits: XLA's memory for a chunk of C clients
  is at most C times the per-client estimate (the traced peak, doubled) plus
  the cohort's data."""
  if model == "mlp":
    m = fl.models.MLP((32, 32), 10)
    x = np.random.default_rng(0).standard_normal((8, 16, 40)).astype(np.float32)
  else:  # activations far larger than the parameters
    m = fl.models.CNN(10, features=(8, 16), dense=32)
    x = np.random.default_rng(0).standard_normal((8, 16, 28, 28, 1)).astype(np.float32)
  data = fl.from_arrays({"x": x, "y": np.zeros(x.shape[:2], np.int32)}, np.full(8, 16))
  params = m.init(jax.random.key(0), x[0, :1])
  update = fl.build_client_update(fl.models.classification_loss(m.apply), optax.sgd(0.1),
                                  batch_size=4)
  key = jax.random.key(0)
  first = jax.tree.map(lambda a: a[0], data)
  estimate = hardware.jaxpr_bytes(jax.make_jaxpr(update)(params, first, key))
  algo = fl.build_federated_algorithm(update, fl.server.fedavg(), chunk_size=8)
  stats = jax.jit(algo.round).lower(algo.init(params), data, key).compile().memory_analysis()
  used = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
  per_client = hardware.TRACED_ESTIMATE_FACTOR * estimate
  assert used <= 8 * per_client + hardware.tree_bytes(data) + 4 * hardware.tree_bytes(params)
  # ...and it sees activations that a count of parameter-sized buffers misses.
  if model == "cnn":
    shape_only = hardware._client_bytes_estimate(params, 16, x[0].nbytes + 64, "gpu")
    assert 8 * shape_only < used


def test_round_sizes_chunks_from_accelerator_memory(monkeypatch):
  """The round asks the device for its memory: a cohort that fits is one chunk, a
  tight device splits it, and the result does not depend on it."""
  params, loss = mlp_model()
  data = fl.from_clients(make_clients((5, 0, 13, 1, 8, 21, 3, 9, 4, 12)))
  update = fl.build_client_update(loss, optax.sgd(0.1), batch_size=4, num_epochs=2)
  key = jax.random.key(3)
  reference = fl.build_federated_algorithm(update, fl.server.fedavg(), chunk_size=None)
  expected = reference.round(reference.init(params), data, key)[0].params
  chosen = []
  real = hardware.auto_chunk_size

  def spy(*args, **kwargs):
    chosen.append((kwargs["memory"], kwargs.get("client_bytes"), real(*args, **kwargs)))
    return chosen[-1][2]

  monkeypatch.setattr(hardware, "auto_chunk_size", spy)
  for limit in (10**12, 20_000):
    monkeypatch.setattr(hardware, "device_memory",
                        lambda device=None, limit=limit: hardware.DeviceMemory("gpu", limit, 0))
    algo = fl.build_federated_algorithm(update, fl.server.fedavg())
    got = algo.round(algo.init(params), data, key)[0].params
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got,
                 expected)
  (big, traced, one_chunk), (_, _, small_chunk) = chosen
  assert big.platform == "gpu" and traced > 0
  assert one_chunk >= data.num_clients  # the whole cohort in one vmapped chunk
  assert 1 <= small_chunk < data.num_clients and math.ceil(data.num_clients / small_chunk) > 1


def test_grad_mode_and_shuffle_follow_the_platform_table(monkeypatch):
  small, large = {"w": jnp.zeros((60, 10))}, {"w": jnp.zeros((784, 200))}
  assert fl.client.resolve_grad_mode("auto", small, "cpu") == "per_example"
  assert fl.client.resolve_grad_mode("auto", large, "cpu") == "batch"
  assert fl.client.resolve_grad_mode("batch", small, "cpu") == "batch"
  monkeypatch.setitem(hardware.TUNING, "gpu", hardware.Tuning(
      per_example_max_leaf=0, rank_shuffle_max_examples=0, chunk_bytes=None))
  assert fl.client.resolve_grad_mode("auto", small, "gpu") == "batch"
  assert hardware.tuning("gpu").rank_shuffle_max_examples == 0
  assert hardware.tuning("some_new_chip") == hardware.ACCELERATOR_TUNING


@settings(max_examples=25, deadline=None)
# Padded lengths from a small set (each is a compile); every real length up to it.
@given(max_examples=st.sampled_from([1, 8, 33, 70]), n=st.integers(0, 70),
       seed=st.integers(0, 2**31 - 1))
def test_shuffle_methods_give_the_same_permutation(max_examples, n, seed):
  key = jax.random.key(seed)
  n = min(n, max_examples)
  rank = fl.client.shuffle_order(key, n, max_examples, method="rank")
  sort = fl.client.shuffle_order(key, n, max_examples, method="sort")
  np.testing.assert_array_equal(rank, sort)
  assert sorted(np.asarray(rank).tolist()) == list(range(max_examples))
  with pytest.raises(ValueError, match="`method` must be one of"):
    fl.client.shuffle_order(key, n, max_examples, method="bogus")


def test_estimate_memory_matches_xlas_analysis_of_the_round():
  # benchmarks/memory_model.py checks W1-W3; here a W2-shaped round at small size.
  import optax

  from fedjax_lite import training

  population = fl.datasets.synthetic_classification(400, 16, num_features=20, num_classes=5,
                                                    seed=0)
  model = fl.models.LogisticRegression(5)
  params = model.init(jax.random.key(0), jnp.zeros((1, 20)))
  update = fl.build_client_update(fl.models.classification_loss(model.apply), optax.sgd(0.1),
                                  batch_size=8)
  algo = fl.build_federated_algorithm(update, fl.server.fedavg())
  state = algo.init(params)
  population = jax.device_put(population)
  step = training._round_step(algo, fl.fixed_size_sampler(400, 300))
  analysis = step.lower(state, population, jax.random.key(0), np.int32(0)).compile() \
      .memory_analysis()
  predicted = hardware.estimate_memory(state, population, 300)
  assert 0.8 <= predicted.temporary / analysis.temp_size_in_bytes <= 1.25
  assert predicted.arguments == hardware.tree_bytes(state) + hardware.tree_bytes(population)
  assert predicted.total == predicted.arguments + predicted.temporary + predicted.output
