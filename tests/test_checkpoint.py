"""Checkpoints round-trip exactly and refuse damaged files."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from fedjax_lite.checkpoint import CheckpointError, load_checkpoint, read_header, save_checkpoint
from tests.conftest import MODELS, make_clients


def _state():
  params, loss = MODELS["mlp"]()
  update = fl.build_client_update(loss, optax.sgd(0.1), batch_size=4)
  algo = fl.build_federated_algorithm(update, fl.server.fedadam(0.01))
  state, _ = algo.round(algo.init(params), fl.from_clients(make_clients((5, 3))),
                        jax.random.key(0))
  return algo, params, state


def test_round_trip_is_bit_exact(tmp_path):
  algo, params, state = _state()
  path = save_checkpoint(tmp_path / "c.ckpt", state, {"round": 1, "note": "x"})
  loaded, meta = load_checkpoint(path, algo.init(params))
  assert meta == {"round": 1, "note": "x"} and read_header(path)["metadata"] == meta
  assert jax.tree.structure(loaded) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(state), strict=True):
    assert np.asarray(a).dtype == np.asarray(b).dtype
    assert np.array_equal(np.asarray(a), np.asarray(b))
  assert not (tmp_path / "c.ckpt.tmp").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "header", "empty"])
def test_damaged_checkpoint_is_refused(tmp_path, damage):
  algo, params, state = _state()
  path = save_checkpoint(tmp_path / "c.ckpt", state)
  data = bytearray(path.read_bytes())
  if damage == "truncate":
    data = data[:-10]
  elif damage == "flip":
    data[-5] ^= 0xFF
  elif damage == "header":
    data[:10] = b"garbage!!!"
  else:
    data = b""
  path.write_bytes(bytes(data))
  with pytest.raises(CheckpointError, match="corrupted"):
    load_checkpoint(path, algo.init(params))


def test_missing_and_mismatched_checkpoints(tmp_path):
  algo, params, state = _state()
  with pytest.raises(CheckpointError, match="no checkpoint"):
    load_checkpoint(tmp_path / "none.ckpt", state)
  path = save_checkpoint(tmp_path / "c.ckpt", state)
  with pytest.raises(CheckpointError, match="does not match"):
    load_checkpoint(path, {"w": jnp.zeros(3)})
