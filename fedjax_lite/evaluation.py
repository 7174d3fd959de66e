"""Vectorized evaluation over every client in one jitted program.

Per-example metric functions return ``(loss_sum, correct, count)`` for each
example (see :func:`fedjax_lite.models.classification_metrics` and
:func:`~fedjax_lite.models.sequence_metrics`). :func:`evaluate_clients`
reduces them over each client's real examples (padding masked exactly),
streaming clients in chunks and each client's examples in batches so memory
is bounded by ``client_chunk * batch_size`` examples, and returns:

* the example-weighted (pooled) loss and accuracy over all clients,
* per-client loss, accuracy and counts, and
* the distribution of per-client accuracy over clients with data: mean,
  10th/50th/90th percentiles and the worst client — the fairness view FL
  papers report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from fedjax_lite import mapreduce
from fedjax_lite._types import MetricsFn
from fedjax_lite._validate import check_int
from fedjax_lite.data import FederatedData, from_arrays
from fedjax_lite.ragged import RaggedData
from fedjax_lite.sharding import num_real_clients

PERCENTILES = (10, 50, 90)


def client_sums(metrics_fn: MetricsFn, params: Any, data: FederatedData, *,
                batch_size: int = 64, client_chunk: int = 16) -> dict[str, Any]:
  """Per-client sums of loss, correct predictions and counts; pure and jit-safe.

  Args:
    metrics_fn: ``metrics(params, batch) -> (loss_sum[B], correct[B],
      count[B])`` per example.
    params: model parameters.
    data: ``N`` clients, arrays ``[N, max_examples, ...]``.
    batch_size: examples per evaluation batch within a client.
    client_chunk: clients evaluated together under ``vmap``.

  Returns:
    dict of float32 ``[N]`` arrays ``loss_sum``, ``correct``, ``count``
    (padded examples contribute exactly 0).
  """
  max_n = data.max_examples
  batch_size = min(batch_size, max_n)
  steps = math.ceil(max_n / batch_size)
  padded = steps * batch_size

  def one_client(client: FederatedData):
    arrays = jax.tree.map(
        lambda x: jnp.pad(x, [(0, padded - max_n)] + [(0, 0)] * (x.ndim - 1)), client.arrays)
    mask = jnp.arange(padded) < client.num_examples

    def step(carry, s):
      batch = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, s * batch_size, batch_size),
                           arrays)
      m = jax.lax.dynamic_slice_in_dim(mask, s * batch_size, batch_size)
      loss, correct, count = metrics_fn(params, batch)
      zero = lambda v: jnp.sum(jnp.where(m, v, 0.0).astype(jnp.float32))
      return (carry[0] + zero(loss), carry[1] + zero(correct), carry[2] + zero(count)), None

    init = (jnp.zeros((), jnp.float32),) * 3
    (loss, correct, count), _ = jax.lax.scan(step, init, jnp.arange(steps))
    return {"loss_sum": loss, "correct": correct, "count": count}

  return mapreduce.map_clients(lambda _, client: one_client(client), None, data,
                               chunk_size=client_chunk)


def summarize(sums: dict[str, Any]) -> dict[str, Any]:
  """Turns per-client sums (NumPy or JAX) into pooled and distributional metrics.

  Args:
    sums: ``loss_sum``, ``correct`` and ``count`` arrays ``[N]``.

  Returns:
    dict of Python floats: ``loss`` and ``accuracy`` (example-weighted over all
    clients), ``num_examples``, ``num_clients`` (clients with data), and the
    per-client accuracy distribution ``accuracy_mean``, ``accuracy_p10``,
    ``accuracy_p50``, ``accuracy_p90``, ``accuracy_worst``; plus ``clients``:
    per-client ``accuracy`` and ``loss`` lists (NaN for clients without data).
  """
  loss_sum, correct, count = (np.asarray(jax.device_get(sums[k]), np.float64)
                              for k in ("loss_sum", "correct", "count"))
  total = count.sum()
  has = count > 0
  with np.errstate(invalid="ignore", divide="ignore"):
    acc = np.where(has, correct / count, np.nan)
    loss = np.where(has, loss_sum / count, np.nan)
  out: dict[str, Any] = {
      "loss": float(loss_sum.sum() / total) if total else float("nan"),
      "accuracy": float(correct.sum() / total) if total else float("nan"),
      "num_examples": float(total),
      "num_clients": float(has.sum()),
  }
  if has.any():
    out["accuracy_mean"] = float(acc[has].mean())
    for q, v in zip(PERCENTILES, np.percentile(acc[has], PERCENTILES), strict=True):
      out[f"accuracy_p{q}"] = float(v)
    out["accuracy_worst"] = float(acc[has].min())
  out["clients"] = {"accuracy": acc.tolist(), "loss": loss.tolist()}
  return out


def build_evaluator(metrics_fn: MetricsFn, *, batch_size: int = 64,
                    client_chunk: int = 16) -> Callable[[Any, FederatedData], dict[str, Any]]:
  """Returns ``evaluate(params, data) -> summary`` compiled once per data shape.

  Args:
    metrics_fn: per-example ``(loss_sum, correct, count)`` function.
    batch_size: examples per evaluation batch within a client.
    client_chunk: clients per ``vmap`` chunk.

  Returns:
    ``evaluate(params, data)``: runs :func:`client_sums` in one jitted program
    and returns :func:`summarize` of it. ``data`` may be sharded over a mesh
    (:func:`fedjax_lite.shard_clients`); its padding clients are left out.
    ``data`` may also be a :class:`~fedjax_lite.RaggedData`: its clients are
    evaluated in blocks of ``RAGGED_BLOCK`` clients of similar size, each
    gathered into its bucket (one program per bucket), with the same
    per-client results as its stacked form.
  """
  check_int("batch_size", batch_size, minimum=1)
  check_int("client_chunk", client_chunk, minimum=1)
  sums = jax.jit(lambda p, d: client_sums(metrics_fn, p, d, batch_size=batch_size,
                                          client_chunk=client_chunk))

  def evaluate(params, data):
    if isinstance(data, RaggedData):
      return summarize(_ragged_sums(lambda d: sums(params, d), data))
    # Data sharded over a mesh (fedjax_lite.shard_clients) is partitioned by
    # jit; the per-client sums are gathered to every process (they are small)
    # and the padding clients dropped.
    sharding = getattr(data.num_examples, "sharding", None)
    out = sums(params, data)
    if isinstance(sharding, NamedSharding):
      out = jax.jit(lambda x: x, out_shardings=NamedSharding(sharding.mesh, PartitionSpec()))(out)
    n = num_real_clients(data)
    return summarize({k: v[:n] for k, v in out.items()})

  return evaluate


# Clients per block when a RaggedData is evaluated.
RAGGED_BLOCK = 256


def _ragged_sums(sums: Callable[[FederatedData], dict[str, Any]],
                 data: RaggedData) -> dict[str, np.ndarray]:
  """Per-client sums of a ragged population, in its client order, block by block.

  Clients are taken in order of size, so each block's bucket fits its own
  largest client; a last, partial block is filled with empty slots.
  """
  n = data.num_clients
  order = np.argsort(data.num_examples, kind="stable")
  block = min(RAGGED_BLOCK, n)
  parts = []
  for start in range(0, n, block):
    idx = order[start:start + block]
    real = np.ones(block, bool)
    real[idx.size:] = False
    padded = np.concatenate([idx, np.full(block - idx.size, idx[0])])
    out = jax.device_get(sums(data.gather(padded, real)))
    parts.append({k: np.asarray(v)[:idx.size] for k, v in out.items()})
  stacked = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  inverse = np.empty(n, np.int64)
  inverse[order] = np.arange(n)
  return {k: v[inverse] for k, v in stacked.items()}


def as_single_client(arrays: dict[str, Any]) -> FederatedData:
  """Wraps a central (un-federated) dataset ``{name: [M, ...]}`` as one client.

  Args:
    arrays: a dict of arrays with ``M`` examples each.

  Returns:
    A :class:`~fedjax_lite.FederatedData` with one client of ``M`` examples
    (leaves ``[1, M, ...]``), for the evaluator.
  """
  n = next(iter(arrays.values())).shape[0]
  return from_arrays({k: np.asarray(v)[None] for k, v in arrays.items()}, [n])
