"""A checksummed, atomically written ``.npz`` cache for prepared datasets.

A loader that parses source files once (e.g. :func:`fedjax_lite.datasets.load_shakespeare`)
keys its result by everything it depends on (options, a format version, each source file's
size and mtime), stores the arrays with a SHA-256 checksum in ``<folder>/<prefix>-v<version>-
<key>.npz`` and, on the next call, verifies and reuses them. A corrupted file is reported
with a warning, deleted and rebuilt; a cache that cannot be written gives a warning and the
data anyway. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cached", "default_cache_dir"]


def default_cache_dir() -> Path:
  """``$FEDJAX_LITE_CACHE``, else ``$XDG_CACHE_HOME/fedjax_lite``, else ``~/.cache/fedjax_lite``.

  Returns:
    The folder (not created).
  """
  if os.environ.get("FEDJAX_LITE_CACHE"):
    return Path(os.environ["FEDJAX_LITE_CACHE"]).expanduser()
  if os.environ.get("XDG_CACHE_HOME"):
    return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fedjax_lite"
  return Path.home() / ".cache" / "fedjax_lite"


def _checksum(payload: Mapping[str, np.ndarray], names: Sequence[str], meta: str) -> str:
  h = hashlib.sha256()
  for k in names:
    a = np.ascontiguousarray(payload[k])
    h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  h.update(meta.encode())
  return h.hexdigest()


def _read(path: Path, key: str, names: Sequence[str]) -> tuple[dict[str, np.ndarray], dict]:
  """Reads and verifies a cache file; raises on any defect."""
  with np.load(path, allow_pickle=False) as f:
    missing = [k for k in (*names, "meta", "checksum") if k not in f.files]
    if missing:
      raise KeyError(f"missing arrays {missing}")
    payload = {k: f[k] for k in names}
    meta = str(f["meta"][()])
    checksum = str(f["checksum"][()])
  if _checksum(payload, names, meta) != checksum:
    raise ValueError("checksum mismatch")
  info = json.loads(meta)
  if info.get("cache_key") != key:
    raise ValueError("cache key mismatch")
  return payload, info


def _write(path: Path, payload: Mapping[str, np.ndarray], names: Sequence[str],
           meta: str) -> None:
  """Writes atomically: a temp file in the same folder, then ``os.replace``."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez_compressed(f, **payload, meta=np.array(meta),
                          checksum=np.array(_checksum(payload, names, meta)))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def cached(
    what: str,
    *,
    prefix: str,
    version: int,
    key_material: Any,
    names: Sequence[str],
    build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]],
    check: Callable[[dict[str, np.ndarray]], None] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """The arrays ``build()`` makes, reused from the cache when a verified copy exists.

  Args:
    what: the dataset's name, for warnings (e.g. ``"Shakespeare"``).
    prefix: the file name's prefix.
    version: the format version (bump it when parsing or layout changes: old files are then
      ignored).
    key_material: JSON-serializable; everything the arrays depend on.
    names: the arrays ``build`` returns (stored and checksummed in this order).
    build: ``() -> (arrays, info)``; ``info`` is JSON-serializable metadata returned with
      the arrays (``cache_key`` is added to it).
    check: optional extra verification of read arrays (raises on a defect).
    cache_dir: the folder; default :func:`default_cache_dir`.

  Returns:
    ``(arrays, info)``.
  """
  key = hashlib.sha256(json.dumps({"version": version, "key": key_material},
                                  sort_keys=True).encode()).hexdigest()
  folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
  path = folder / f"{prefix}-v{version}-{key[:20]}.npz"
  if path.exists():
    try:
      payload, info = _read(path, key, names)
      if check is not None:
        check(payload)
      return payload, info
    except Exception as e:  # any defect at all means: rebuild
      warnings.warn(
          f"fedjax_lite: the {what} cache file {path} is corrupted "
          f"({type(e).__name__}: {e}); deleting it and rebuilding.",
          RuntimeWarning, stacklevel=3)
      try:
        path.unlink(missing_ok=True)
      except OSError:  # the rebuilt file replaces it below, or a warning says why not
        pass
  payload, info = build()
  info = {**info, "cache_key": key}
  try:
    _write(path, payload, names, json.dumps(info, sort_keys=True))
  except OSError as e:
    warnings.warn(
        f"fedjax_lite: could not write the {what} cache file {path} ({e}); "
        "continuing without a cache.", RuntimeWarning, stacklevel=3)
  return payload, info
