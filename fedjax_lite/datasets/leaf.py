"""LEAF's JSON datasets as they are: FEMNIST, Shakespeare, Sent140, CelebA and Synthetic.

LEAF (Caldas et al., 2018) writes every dataset in one JSON layout. A data folder holds
``train/`` and ``test/`` subfolders, each with one or more ``*.json`` files (LEAF's
``data/<name>/data/{train,test}``), and every file is an object with

* ``"users"``: the user ids, a list of strings;
* ``"num_samples"``: each user's number of examples, in the same order;
* ``"user_data"``: ``{user: {"x": [...], "y": [...]}}``, one entry per example in each list;
* optionally ``"hierarchies"`` (e.g. FEMNIST's writers' groups), which is ignored here.

:func:`load_leaf` reads such a folder (or a folder that directly holds ``*.json`` files, taken
as the train split with no test split) into :class:`~fedjax_lite.RaggedData` splits without
padding. Files are read one at a time, in sorted file-name order, and each user's lists are
turned into NumPy arrays at once, so the Python objects of only one file are alive at a time.

Clients. A client is a user. Clients are ordered by their first appearance in the train files
(file by file, in each file's ``"users"`` order); users that appear only in the test files
follow, in their order of appearance there, with 0 train examples. The test split holds the
same clients in the same order, a train user missing from the test files with 0 test examples
(LEAF's by-user split, ``--t user``, gives disjoint train and test users: every client then has
examples in only one split). A user listed in several files of a split has its examples
concatenated in file order. ``client_names`` are the user ids; ``client_ids`` are ``0..N-1``
in both splits.

Encodings (``x``, ``y`` per example; detected from the data, or set with ``kind=``):

* ``"femnist"``: ``x`` is 784 floats (a 28x28 image, row-major) -> ``float32[28, 28, 1]``
  (``features`` changes the shape); ``y`` is the class in ``[0, 62)`` -> ``int32``.
* ``"shakespeare"``: ``x`` is a string of 80 characters and ``y`` the next character. Both are
  encoded with LEAF's 80-character set (``ALL_LETTERS`` of LEAF's
  ``models/utils/language_utils.py``, :data:`fedjax_lite.datasets.shakespeare.ALL_LETTERS`) in
  the package's ids, as :func:`fedjax_lite.datasets.load_shakespeare` does: pad ``0``, LEAF's
  character ``i`` (LEAF's own index, ``ALL_LETTERS.find(c)``) is id ``i + 1``, and any other
  character is the OOV id 81; ``num_classes`` is 82. ``x`` is ``int32[80]`` (the length of
  the strings in the data) and ``y`` an ``int32`` scalar: the task is LEAF's, predicting the
  one next character from the last position (e.g. the last step of
  :class:`fedjax_lite.models.CharLSTM`'s logits).
* ``"sent140"``: ``x`` is a tweet record ``[id, date, query, user, text]`` (the text is
  ``x[4]``); ``y`` is the sentiment, 0 or 1. The text is split into words as LEAF's
  ``split_line`` does (runs of word characters and apostrophes, and each of ``. , ! ? ;`` as a
  word of its own), and the first ``max_words`` words (25, LEAF's ``max_words``) are mapped to
  ids: pad ``0``, vocabulary word ``j`` (0-based) is ``j + 1``, any other word is the OOV id
  ``V + 1`` for a vocabulary of ``V`` words; a shorter tweet is padded with ``0`` (LEAF pads
  with its unknown-word id; a pad id lets a model mask it). ``x`` is ``int32[max_words]``. The
  vocabulary is ``vocab`` (a list of words, or LEAF's ``{word: index}`` dict, e.g. the GloVe
  vocabulary of ``models/sent140/get_embs.py``: word ``w`` is then id ``vocab[w] + 1``), or by
  default built from the train split: every word of the train tweets, most frequent first
  (ties in alphabetical order), at most ``max_vocab_size`` of them. ``info["vocab"]`` lists
  the words in id order (id ``j + 1`` is ``info["vocab"][j]``).
* ``"celeba"``: ``x`` is an image file name in CelebA's ``img_align_celeba`` folder, ``y`` the
  0/1 label. Images are read from the folder ``images`` with Pillow, resized to
  ``image_size x image_size`` (84, LEAF's ``IMAGE_SIZE``) with Pillow's default filter and
  converted to RGB, as LEAF's CelebA model does: ``x`` is ``uint8[84, 84, 3]``. Without
  ``images`` the names cannot be loaded and a ValueError says so.
* ``"synthetic"``: ``x`` is a float vector (60 features in LEAF's Synthetic) ->
  ``float32[d]`` (or ``features``); ``y`` an integer class. ``num_classes`` defaults to the
  largest label plus one.

Detection (``kind="auto"``) looks at the first example of the train files: a string ``x``
ending in an image suffix is CelebA, a string ``x`` with a string ``y`` is Shakespeare, a list
whose fifth entry is a string is Sent140, a list of 784 numbers FEMNIST and any other list of
numbers Synthetic (so Synthetic data with 784 features needs ``kind="synthetic"``).

Reference:
  S. Caldas, S. M. K. Duddu, P. Wu, T. Li, J. Konecny, H. B. McMahan, V. Smith, A. Talwalkar.
  "LEAF: A Benchmark for Federated Settings." arXiv:1812.01097, 2018.
  https://arxiv.org/abs/1812.01097 (data format and models: https://github.com/TalwalkarLab/leaf)
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_lite._validate import check_choice, check_int
from fedjax_lite.datasets.base import FederatedDataset, check_split_labels
from fedjax_lite.datasets.shakespeare_text import OOV_ID, PAD_ID, VOCAB_SIZE, encode
from fedjax_lite.ragged import RaggedData

__all__ = [
    "CELEBA_IMAGE_SIZE",
    "FEMNIST_NUM_CLASSES",
    "KINDS",
    "SENT140_MAX_WORDS",
    "detect_kind",
    "leaf_files",
    "load_leaf",
    "split_line",
]

#: The values of ``load_leaf(kind=...)``.
KINDS = ("auto", "femnist", "shakespeare", "sent140", "celeba", "synthetic")
FEMNIST_NUM_CLASSES = 62
FEMNIST_PIXELS = 784
SENT140_MAX_WORDS = 25
CELEBA_IMAGE_SIZE = 84
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_REQUIRED_KEYS = ("users", "num_samples", "user_data")
# LEAF's split_line: runs of word characters or apostrophes, or one of . , ! ? ; on its own.
_WORD = re.compile(r"[\w']+|[.,!?;]")


def split_line(text: str) -> list[str]:
  """Splits a tweet into words as LEAF's Sent140 code does.

  Args:
    text: the tweet.

  Returns:
    The runs of word characters and apostrophes, and each ``.``, ``,``, ``!``, ``?`` and ``;``
    as a word of its own, in order; other characters (spaces, other punctuation) are dropped.
  """
  return _WORD.findall(text)


# --- Files ------------------------------------------------------------------------------


def leaf_files(directory: str | os.PathLike[str]) -> dict[str, list[Path] | None]:
  """Finds the JSON files of a LEAF data folder.

  Args:
    directory: a folder with ``train/`` (and usually ``test/``) subfolders of ``*.json``
      files, or a folder that directly holds ``*.json`` files (train only).

  Returns:
    ``{"train": [paths], "test": [paths] or None}``, each list sorted by file name.

  Raises:
    ValueError: if the folder does not exist, or holds no JSON files where they should be.
  """
  root = Path(directory)
  if not root.is_dir():
    raise ValueError(f"`directory`={os.fspath(directory)!r} is not an existing folder; give "
                     "LEAF's data folder (the one holding train/ and test/).")
  train_dir, test_dir = root / "train", root / "test"
  if train_dir.is_dir():
    train = sorted(train_dir.glob("*.json"))
    if not train:
      raise ValueError(f"{train_dir} holds no *.json files; run LEAF's preprocessing first, or "
                       "give the folder that holds the JSON files.")
    test = None
    if test_dir.is_dir():
      test = sorted(test_dir.glob("*.json"))
      if not test:
        raise ValueError(f"{test_dir} holds no *.json files; remove the empty folder to load "
                         "train only, or fill it.")
    return {"train": train, "test": test}
  direct = sorted(root.glob("*.json"))
  if not direct:
    raise ValueError(f"{root} holds neither a train/ subfolder nor *.json files; give LEAF's "
                     "data folder (e.g. leaf/data/femnist/data).")
  return {"train": direct, "test": None}


def _read_file(path: Path) -> dict[str, Any]:
  try:
    with open(path, "rb") as f:
      obj = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); LEAF files are JSON objects.") from e
  if not isinstance(obj, dict) or any(k not in obj for k in _REQUIRED_KEYS):
    got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"{path} is not a LEAF data file: it needs the keys {list(_REQUIRED_KEYS)}; "
                     f"got {got}.")
  users, counts, data = obj["users"], obj["num_samples"], obj["user_data"]
  if not isinstance(users, list) or not isinstance(counts, list) or len(users) != len(counts):
    raise ValueError(f"{path}: 'users' and 'num_samples' must be lists of the same length; got "
                     f"{type(users).__name__} and {type(counts).__name__}.")
  if not isinstance(data, dict):
    raise ValueError(f"{path}: 'user_data' must be an object {{user: {{'x': [...], 'y': "
                     f"[...]}}}}; got {type(data).__name__}.")
  return obj


def _users(path: Path, obj: Mapping[str, Any]) -> Iterator[tuple[str, list, list]]:
  """Yields ``(user, xs, ys)`` in the file's ``users`` order, checked against ``num_samples``."""
  data = obj["user_data"]
  for user, n in zip(obj["users"], obj["num_samples"], strict=True):
    record = data.get(user)
    if record is None:
      raise ValueError(f"{path}: user {user!r} is in 'users' but not in 'user_data'.")
    if not isinstance(record, dict) or "x" not in record or "y" not in record:
      got = sorted(record) if isinstance(record, dict) else type(record).__name__
      raise ValueError(f"{path}: user_data[{user!r}] needs the keys 'x' and 'y'; got {got}.")
    xs, ys = record["x"], record["y"]
    if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
      raise ValueError(f"{path}: user_data[{user!r}] 'x' and 'y' must be lists of one entry per "
                       "example, of the same length.")
    if n != len(ys):
      raise ValueError(f"{path}: user {user!r} has num_samples {n} but {len(ys)} examples.")
    yield str(user), xs, ys


class _Files:
  """Reads files one at a time, keeping the one read last (to reuse it once)."""

  def __init__(self) -> None:
    self._path: Path | None = None
    self._obj: dict[str, Any] | None = None

  def read(self, path: Path) -> dict[str, Any]:
    if path != self._path:
      self._path, self._obj = None, None  # let the previous file go before reading the next
      self._obj = _read_file(path)
      self._path = path
    return self._obj

  def clear(self) -> None:
    self._path, self._obj = None, None


# --- Detection --------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def detect_kind(x: Any, y: Any) -> str:
  """Tells which LEAF dataset an example ``(x, y)`` comes from (see the module docstring).

  Args:
    x: one example's ``x`` as stored in LEAF's JSON.
    y: its ``y``.

  Returns:
    One of ``"femnist"``, ``"shakespeare"``, ``"sent140"``, ``"celeba"``, ``"synthetic"``.

  Raises:
    ValueError: if the example matches none of them.
  """
  if isinstance(x, str):
    if x.lower().endswith(_IMAGE_SUFFIXES):
      return "celeba"
    if isinstance(y, str):
      return "shakespeare"
  elif isinstance(x, list):
    if len(x) > 4 and isinstance(x[4], str):
      return "sent140"
    if x and all(_is_number(v) for v in x):
      return "femnist" if len(x) == FEMNIST_PIXELS else "synthetic"
  raise ValueError(f"Cannot tell which LEAF dataset holds the example x={str(x)[:60]!r}, "
                   f"y={str(y)[:20]!r}; pass `kind=` one of {KINDS[1:]}.")


def _detect(files: Sequence[Path], reader: _Files) -> str:
  for path in files:
    for _, xs, ys in _users(path, reader.read(path)):
      if xs:
        return detect_kind(xs[0], ys[0])
  raise ValueError(f"The train files {[p.name for p in files]} hold no example; pass `kind=` "
                   "or give a folder with data.")


# --- Encoders: one user's lists -> (x array, y array) -----------------------------------


def _int_labels(ys: list, where: str) -> np.ndarray:
  y = np.asarray(ys)
  if y.ndim != 1 or y.dtype == object or not (
      np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
    if y.ndim == 1 and np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
      return y.astype(np.int64)
    raise ValueError(f"{where}: labels 'y' must be integers; got {str(ys[:3])[:60]}.")
  return y.astype(np.int64)


def _float_vectors(xs: list, where: str, width: int | None) -> np.ndarray:
  try:
    x = np.asarray(xs, np.float32)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: every 'x' must be a list of numbers of one length ({e}).") from e
  if x.ndim != 2 or (width is not None and x.shape[1] != width):
    want = f"{width} numbers" if width is not None else "numbers of one length"
    raise ValueError(f"{where}: every 'x' must be a list of {want}; got array shape {x.shape}.")
  return x


class _Encoder:
  """Turns one user's ``xs, ys`` into arrays for one kind of dataset."""

  def __init__(self, kind: str, features: tuple[int, ...] | None, word_ids: dict[str, int],
               max_words: int, images: Path | None, image_size: int):
    self.kind = kind
    self.features = features
    self.word_ids = word_ids
    self.oov_word = len(word_ids) + 1
    self.max_words = max_words
    self.images = images
    self.image_size = image_size
    self.seq_len: int | None = None

  def __call__(self, xs: list, ys: list, where: str) -> tuple[np.ndarray, np.ndarray]:
    return getattr(self, f"_{self.kind}")(xs, ys, where)

  def _reshape(self, x: np.ndarray, where: str) -> np.ndarray:
    if self.features is None:
      return x
    if math.prod(self.features) != x.shape[1]:
      raise ValueError(f"`features`={self.features} holds {math.prod(self.features)} values but "
                       f"{where} has {x.shape[1]} per example; give a shape of that size.")
    return x.reshape((x.shape[0], *self.features))

  def _femnist(self, xs, ys, where):
    x = _float_vectors(xs, where, FEMNIST_PIXELS)
    if self.features is None:
      return x.reshape(-1, 28, 28, 1), _int_labels(ys, where)
    return self._reshape(x, where), _int_labels(ys, where)

  def _synthetic(self, xs, ys, where):
    return self._reshape(_float_vectors(xs, where, None), where), _int_labels(ys, where)

  def _shakespeare(self, xs, ys, where):
    if not all(isinstance(s, str) for s in xs) or not all(
        isinstance(c, str) and len(c) == 1 for c in ys):
      raise ValueError(f"{where}: Shakespeare examples need a string 'x' and a one-character "
                       "string 'y'.")
    if self.seq_len is None:
      self.seq_len = len(xs[0])
    if any(len(s) != self.seq_len for s in xs):
      raise ValueError(f"{where}: every Shakespeare 'x' must have {self.seq_len} characters "
                       "(the length of the first one).")
    x = encode("".join(xs)).astype(np.int32).reshape(len(xs), self.seq_len)
    return x, encode("".join(ys)).astype(np.int64)

  def _sent140(self, xs, ys, where):
    x = np.zeros((len(xs), self.max_words), np.int32)
    for i, record in enumerate(xs):
      words = split_line(_tweet_text(record, where))[: self.max_words]
      x[i, : len(words)] = [self.word_ids.get(w, self.oov_word) for w in words]
    return x, _int_labels(ys, where)

  def _celeba(self, xs, ys, where):
    if self.images is None:
      raise ValueError("CelebA examples are image file names; pass `images=` the folder that "
                       "holds them (CelebA's img_align_celeba).")
    from PIL import Image  # noqa: PLC0415 - only CelebA needs Pillow

    s = self.image_size
    x = np.empty((len(xs), s, s, 3), np.uint8)
    for i, name in enumerate(xs):
      if not isinstance(name, str):
        raise ValueError(f"{where}: CelebA 'x' must be image file names; got {name!r}.")
      path = self.images / name
      if not path.is_file():
        raise FileNotFoundError(f"CelebA image {name!r} ({where}) is not in `images`="
                                f"{os.fspath(self.images)!r}.")
      with Image.open(path) as img:
        x[i] = np.asarray(img.resize((s, s)).convert("RGB"))
    return x, _int_labels(ys, where)


def _tweet_text(record: Any, where: str) -> str:
  if not isinstance(record, list) or len(record) < 5 or not isinstance(record[4], str):
    raise ValueError(f"{where}: Sent140 'x' must be records [id, date, query, user, text]; got "
                     f"{str(record)[:60]!r}.")
  return record[4]


def _word_ids(vocab: Mapping[str, int] | Sequence[str]) -> dict[str, int]:
  """``{word: id}`` with ids ``1..V`` from a list of words or a ``{word: 0-based index}``."""
  if isinstance(vocab, str):
    raise TypeError("`vocab` must be a list of words or a {word: index} dict; got a str.")
  if isinstance(vocab, Mapping):
    indices = sorted(vocab.values())
    if indices != list(range(len(vocab))):
      raise ValueError("`vocab` as a dict must map its words to the indices 0..len(vocab)-1, "
                       "each once (LEAF's word-to-index dict).")
    return {str(w): int(i) + 1 for w, i in vocab.items()}
  words = [str(w) for w in vocab]
  if len(set(words)) != len(words):
    raise ValueError("`vocab` has repeated words; give each word once.")
  return {w: i + 1 for i, w in enumerate(words)}


def _train_vocab(files: Sequence[Path], reader: _Files, max_vocab_size: int | None) -> list[str]:
  counts: collections.Counter[str] = collections.Counter()
  for path in files:
    for user, xs, _ in _users(path, reader.read(path)):
      where = f"{path.name}, user {user!r}"
      for record in xs:
        counts.update(split_line(_tweet_text(record, where)))
  words = sorted(counts, key=lambda w: (-counts[w], w))
  return words if max_vocab_size is None else words[:max_vocab_size]


# --- Assembly ---------------------------------------------------------------------------


class _Split:
  """One split's per-user arrays, in order of first appearance."""

  def __init__(self) -> None:
    self.parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    self.spec: tuple[tuple[int, ...], np.dtype] | None = None

  def add(self, user: str, x: np.ndarray | None, y: np.ndarray | None, where: str) -> None:
    parts = self.parts.setdefault(user, [])
    if x is None:
      return
    spec = (x.shape[1:], x.dtype)
    if self.spec is None:
      self.spec = spec
    elif spec != self.spec:
      raise ValueError(f"{where}: examples of shape {spec[0]} but earlier ones have "
                       f"{self.spec[0]}; every example of a dataset needs one shape.")
    parts.append((x, y))

  def count(self, user: str) -> int:
    return sum(y.shape[0] for _, y in self.parts.get(user, ()))

  def assemble(self, names: Sequence[str], spec: tuple[tuple[int, ...], np.dtype]) -> RaggedData:
    counts = np.asarray([self.count(u) for u in names], np.int64)
    total = int(counts.sum())
    x = np.empty((total, *spec[0]), spec[1])
    y = np.empty((total,), np.int32)
    pos = 0
    for u in names:
      for xa, ya in self.parts.pop(u, ()):  # free each user's arrays once copied
        n = ya.shape[0]
        x[pos:pos + n] = xa
        y[pos:pos + n] = ya
        pos += n
    return RaggedData.from_arrays({"x": x, "y": y}, counts)


def _read_split(files: Sequence[Path], reader: _Files,
                encode_user: Callable[[list, list, str], tuple[np.ndarray, np.ndarray]]) -> _Split:
  split = _Split()
  for path in files:
    for user, xs, ys in _users(path, reader.read(path)):
      where = f"{path.name}, user {user!r}"
      if xs:
        split.add(user, *encode_user(xs, ys, where), where)
      else:
        split.add(user, None, None, where)
    reader.clear()
  return split


def _check_features(features: Any, kind: str) -> tuple[int, ...] | None:
  if features is None:
    return None
  if kind not in ("femnist", "synthetic"):
    raise ValueError(f"`features` reshapes numeric vectors (femnist, synthetic); {kind} "
                     "examples have a fixed shape, leave it None.")
  try:
    shape = tuple(int(d) for d in features)
  except TypeError as e:
    raise TypeError(f"`features` must be a tuple of ints, e.g. (28, 28, 1); got "
                    f"{features!r}.") from e
  if not shape or min(shape) < 1:
    raise ValueError(f"`features` must be a non-empty tuple of positive ints; got {features!r}.")
  return shape


# --- Loader -----------------------------------------------------------------------------


def load_leaf(
    directory: str | os.PathLike[str],
    *,
    features: Sequence[int] | None = None,
    num_classes: int | None = None,
    kind: str = "auto",
    vocab: Mapping[str, int] | Sequence[str] | None = None,
    max_words: int = SENT140_MAX_WORDS,
    max_vocab_size: int | None = None,
    images: str | os.PathLike[str] | None = None,
    image_size: int = CELEBA_IMAGE_SIZE,
) -> FederatedDataset:
  """Loads a LEAF dataset from its JSON files, one client per user, without padding.

  See the module docstring for the layout, the client order and each dataset's encoding.

  Args:
    directory: LEAF's data folder with ``train/`` and ``test/`` subfolders of ``*.json``
      files (e.g. ``leaf/data/femnist/data``), or a folder directly holding ``*.json`` files
      (loaded as the train split; ``test`` is then ``None``).
    features: for FEMNIST and Synthetic, the shape of one example's ``x`` (default
      ``(28, 28, 1)`` for FEMNIST, ``(d,)`` for Synthetic); its size must be the vector's.
    num_classes: the number of classes (default: 62 for FEMNIST, 82 token ids for
      Shakespeare, 2 for Sent140 and CelebA, the largest label plus one for Synthetic).
    kind: ``"auto"`` (detect from the data), ``"femnist"``, ``"shakespeare"``, ``"sent140"``,
      ``"celeba"`` or ``"synthetic"``.
    vocab: Sent140 only: a list of words (word ``j`` is id ``j + 1``) or LEAF's
      ``{word: index}`` dict (id ``index + 1``); default: built from the train tweets.
    max_words: Sent140 only: words kept per tweet, the length of ``x``.
    max_vocab_size: Sent140 only, with ``vocab=None``: keep the most frequent words only.
    images: CelebA only: the folder holding the image files named in the data.
    image_size: CelebA only: the side of the square RGB images.

  Returns:
    A :class:`FederatedDataset` whose ``train`` and ``test`` are
    :class:`~fedjax_lite.RaggedData` with arrays ``x`` and ``y`` (``int32`` labels) for the same
    ``N`` clients in the same order (``test`` is ``None`` without test files),
    ``central_test=None``, ``num_classes``, ``client_names`` (the user ids) and ``info``: the
    source folder, the kind, the files read, the client and example counts and, for text,
    the vocabulary's ids (``vocab_size``, ``pad_id``, ``oov_id``; Sent140's ``vocab``).

  Raises:
    ValueError: for a missing folder or one without JSON files, a file that is not LEAF JSON
      (missing keys, counts that disagree), examples of mixed shapes, an unknown ``kind`` or
      data it cannot tell, labels outside ``[0, num_classes)``, or CelebA without ``images``.
    FileNotFoundError: for a CelebA image missing from ``images``.
    TypeError: for options of the wrong type.
  """
  check_choice("kind", kind, KINDS)
  files = leaf_files(directory)
  check_int("max_words", max_words, minimum=1)
  check_int("image_size", image_size, minimum=1)
  if max_vocab_size is not None:
    check_int("max_vocab_size", max_vocab_size, minimum=1)
  if num_classes is not None:
    check_int("num_classes", num_classes, minimum=1)
  reader = _Files()
  if kind == "auto":
    kind = _detect(files["train"], reader)
  shape = _check_features(features, kind)
  if vocab is not None and kind != "sent140":
    raise ValueError(f"`vocab` is for Sent140's words; the data are {kind}, leave it None.")
  images_dir = None if images is None else Path(images)
  if images_dir is not None and not images_dir.is_dir():
    raise ValueError(f"`images`={os.fspath(images)!r} is not an existing folder; give the "
                     "folder of CelebA's image files.")

  info: dict[str, Any] = {"name": "leaf", "kind": kind, "source": os.fspath(directory)}
  word_ids: dict[str, int] = {}
  if kind == "sent140":
    if vocab is None:
      words = _train_vocab(files["train"], reader, max_vocab_size)
      word_ids = {w: i + 1 for i, w in enumerate(words)}
      info["vocab_source"] = "train"
    else:
      word_ids = _word_ids(vocab)
      words = sorted(word_ids, key=word_ids.__getitem__)
      info["vocab_source"] = "given"
    info.update(vocab=words, vocab_size=len(words) + 2, pad_id=0, oov_id=len(words) + 1,
                max_words=int(max_words))
  encode_user = _Encoder(kind, shape, word_ids, max_words, images_dir, image_size)

  train = _read_split(files["train"], reader, encode_user)
  test = None if files["test"] is None else _read_split(files["test"], reader, encode_user)
  names = list(train.parts)
  names += [u for u in (test.parts if test is not None else ()) if u not in train.parts]
  spec = train.spec or (test.spec if test is not None else None)
  if spec is None:
    raise ValueError(f"{os.fspath(directory)!r} holds users but no example; nothing to load.")
  if test is not None and test.spec is not None and test.spec != spec:
    raise ValueError(f"test examples have shape {test.spec[0]} but train ones {spec[0]}; the "
                     "two splits must come from one dataset.")
  test_counts = [0 if test is None else test.count(u) for u in names]
  train_counts = [train.count(u) for u in names]
  train_only = sum(1 for a, b in zip(train_counts, test_counts, strict=True) if a and not b)
  test_only = sum(1 for a, b in zip(train_counts, test_counts, strict=True) if b and not a)
  train_data = train.assemble(names, spec)
  test_data = None if test is None else test.assemble(names, spec)

  if num_classes is None:
    if kind == "synthetic":
      highest = [int(d.arrays["y"].max()) for d in (train_data, test_data)
                 if d is not None and d.total_examples]
      num_classes = max(highest) + 1
    else:
      num_classes = {"femnist": FEMNIST_NUM_CLASSES, "shakespeare": VOCAB_SIZE,
                     "sent140": 2, "celeba": 2}[kind]
  check_split_labels(train_data, num_classes, "train")
  check_split_labels(test_data, num_classes, "test")
  if kind == "shakespeare":
    info.update(vocab_size=VOCAB_SIZE, pad_id=PAD_ID, oov_id=OOV_ID,
                sequence_length=int(spec[0][0]))
  if kind == "celeba":
    info.update(images=os.fspath(images_dir), image_size=int(image_size))
  info.update(
      files={s: None if fs is None else [p.name for p in fs] for s, fs in files.items()},
      num_clients=len(names),
      num_train_examples=train_data.total_examples,
      num_test_examples=0 if test_data is None else test_data.total_examples,
      num_clients_only_in_train=train_only,
      num_clients_only_in_test=test_only,
      x_shape=list(spec[0]),
      x_dtype=str(spec[1]),
  )
  return FederatedDataset(train=train_data, test=test_data, central_test=None,
                          num_classes=int(num_classes), client_names=tuple(names), info=info)
