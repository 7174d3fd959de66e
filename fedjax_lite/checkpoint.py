"""Exact, verified checkpoints of a run's state.

A checkpoint file holds one JSON header line (format version, metadata, the
payload's length and SHA-256) followed by the payload: the state pytree
serialized with ``flax.serialization`` (msgpack; float arrays bit for bit).
Files are written to a temporary name and renamed, so a killed process never
leaves a half-written checkpoint under the real name, and loading verifies
length and checksum, so a damaged file raises :class:`CheckpointError`
instead of being loaded.

Everything a fedjax_lite run needs to continue exactly is in the state
(:class:`~fedjax_lite.ServerState`: parameters, server optimizer and
aggregator state, round number); the PRNG stream is a pure function of the
run's seed and the round number (:func:`fedjax_lite.round_keys`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import flax.serialization

FORMAT = "fedjax_lite.checkpoint/1"


class CheckpointError(ValueError):
  """A checkpoint file is missing, truncated, corrupted, or does not fit."""


def save_checkpoint(path: str | os.PathLike, state: Any, metadata: dict[str, Any] | None = None
                    ) -> Path:
  """Atomically writes ``state`` (any pytree of arrays) and JSON ``metadata``.

  Args:
    path: destination file.
    state: the pytree to save (e.g. a ``ServerState``).
    metadata: JSON-serializable extras (round, config hash, ...).

  Returns:
    The path written.
  """
  path = Path(path)
  payload = flax.serialization.to_bytes(state)
  header = {
      "format": FORMAT,
      "metadata": metadata or {},
      "payload_bytes": len(payload),
      "payload_sha256": hashlib.sha256(payload).hexdigest(),
  }
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(json.dumps(header, sort_keys=True).encode() + b"\n")
    f.write(payload)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def read_header(path: str | os.PathLike) -> dict[str, Any]:
  """Reads and validates a checkpoint's header (not the payload).

  Args:
    path: the checkpoint file.

  Returns:
    The header dict: ``format``, ``metadata`` (what :func:`save_checkpoint` was
    given), ``payload_bytes`` and ``payload_sha256``.

  Raises:
    CheckpointError: if the file is missing or its header is unreadable.
  """
  return _read(path)[0]


def load_checkpoint(path: str | os.PathLike, target: Any) -> tuple[Any, dict[str, Any]]:
  """Loads a checkpoint into the structure of ``target``.

  Args:
    path: a file written by :func:`save_checkpoint`.
    target: a pytree with the saved structure (e.g. ``algo.init(params)``);
      its values are replaced.

  Returns:
    ``(state, metadata)``.

  Raises:
    CheckpointError: if the file is missing, truncated, fails its checksum,
      or does not match ``target``'s structure.
  """
  header, payload = _read(path)
  try:
    state = flax.serialization.from_bytes(target, payload)
  except Exception as e:  # flax raises several types for mismatched trees
    raise CheckpointError(
        f"checkpoint {path} does not match this run's model/optimizer state: {e}") from e
  return state, header["metadata"]


def _read(path) -> tuple[dict[str, Any], bytes]:
  path = Path(path)
  if not path.is_file():
    raise CheckpointError(f"no checkpoint at {path}.")
  data = path.read_bytes()
  line, sep, payload = data.partition(b"\n")
  try:
    header = json.loads(line) if sep else None
  except (json.JSONDecodeError, UnicodeDecodeError):
    header = None
  if not isinstance(header, dict) or header.get("format") != FORMAT:
    raise CheckpointError(f"checkpoint {path} is corrupted: unreadable header.")
  if len(payload) != header.get("payload_bytes"):
    raise CheckpointError(
        f"checkpoint {path} is corrupted: payload has {len(payload)} bytes, header says "
        f"{header.get('payload_bytes')} (truncated write?).")
  if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
    raise CheckpointError(f"checkpoint {path} is corrupted: checksum mismatch.")
  return header, payload
