"""TensorFlow Federated's HDF5 client data: federated EMNIST, CIFAR-100 and StackOverflow.

TFF ships its simulation datasets (``tff.simulation.datasets.emnist``, ``cifar100``,
``stackoverflow``) as HDF5 files read by its ``HDF5ClientData``: a group ``examples`` with one
subgroup per client id, each holding one dataset per feature, all with the client's number of
examples as their first axis::

  examples/<client_id>/pixels   float32[n, 28, 28]   EMNIST (fed_emnist_*.h5)
  examples/<client_id>/label    int[n]               EMNIST (62 classes; 10 in *digitsonly*)
  examples/<client_id>/image    uint8[n, 32, 32, 3]  CIFAR-100 (fed_cifar100_*.h5)
  examples/<client_id>/label    int[n]               CIFAR-100 fine label (100 classes)
  examples/<client_id>/coarse_label  int[n]          CIFAR-100 coarse label (20 classes)
  examples/<client_id>/tokens   bytes[n]             StackOverflow (stackoverflow_*.h5): one
                                                     sentence per example, words separated
                                                     by spaces; also title, tags, type,
                                                     creation_date, score (unused here)

:func:`load_tff_h5` reads a train file and an optional test file with ``h5py`` into
:class:`~fedjax_lite.RaggedData` splits without padding. Clients are the train file's client
ids in sorted order (the order of TFF's ``client_ids``), followed by the ids found only in the
test file, sorted, with 0 train examples; the test split holds the same clients in the same
order, a client absent from the test file with 0 test examples. (TFF's EMNIST train and test
files have the same clients; CIFAR-100's have disjoint ones, so every client then has
examples in one split only.) ``client_names`` are the ids; ``client_ids`` are ``0..N-1``.
Each client's datasets are read one at a time into arrays allocated once for the whole
split.

Outputs: EMNIST ``x = float32[28, 28, 1]`` (pixels as stored, with a channel axis),
``y = int32``; CIFAR-100 ``x = uint8[32, 32, 3]`` as stored (scale it in the model),
``y = int32`` from ``label`` or ``coarse_label``.

StackOverflow next-word prediction follows TFF's preprocessing
(``tff.simulation.baselines.stackoverflow``, ``word_prediction_preprocessing.py``; the task
of Reddi et al., 2021). With a vocabulary of the ``V`` most frequent words (``vocab``: TFF's
word-count file, or one word per line, or a list; 10,000 words by default) the token ids are:
pad ``0``, vocabulary word ``j`` (0-based) ``j + 1``, out-of-vocabulary ``V + 1`` (one
bucket), beginning of sentence ``V + 2``, end of sentence ``V + 3``; ``V + 4`` ids in all
(``num_classes``). A sentence (an example's ``tokens``) becomes:

1. ``words = sentence.split(" ")`` (as ``tf.strings.split(sentence, sep=" ")``: consecutive
   spaces give empty words, which are out of vocabulary);
2. ``ids = [bos] + [id(w) for w in words[:L]]``, then ``+ [eos]`` only if ``len(words) < L``
   (a sentence of ``L`` words or more is truncated and has no end token);
3. padded with ``0`` to ``L + 1`` ids; ``x = ids[:L]``, ``y = ids[1:]``;

with ``L = sequence_length = 20``. Positions where ``y == 0`` are padding: train and evaluate
with :func:`fedjax_lite.models.sequence_loss` and
:func:`fedjax_lite.models.sequence_metrics` (``pad_id=0``), which leave them out of the loss
and the accuracy. (TFF's baselines also report accuracies that further leave out the OOV
and EOS targets; here only padding is excluded.) TFF shuffles, repeats and caps each client's
examples per round; here the examples are kept in stored order, and a per-round cap is
:meth:`fedjax_lite.RaggedData.gather`'s ``max_examples_per_client``.

References:
  * S. Reddi, Z. Charles, M. Zaheer, Z. Garrett, K. Rush, J. Konecny, S. Kumar,
    H. B. McMahan. "Adaptive Federated Optimization." ICLR 2021.
    https://arxiv.org/abs/2003.00295
  * TensorFlow Federated, ``tff.simulation.datasets`` and
    ``tff.simulation.baselines.stackoverflow`` (https://github.com/tensorflow/federated).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fedjax_lite._optional import require
from fedjax_lite._validate import check_choice, check_int
from fedjax_lite.datasets.base import FederatedDataset, check_split_labels
from fedjax_lite.ragged import RaggedData

__all__ = [
    "KINDS",
    "STACKOVERFLOW_SEQUENCE_LENGTH",
    "STACKOVERFLOW_VOCAB_SIZE",
    "SpecialTokens",
    "StackOverflowTokenizer",
    "load_tff_h5",
    "read_tff_h5",
    "read_vocab",
    "tff_client_ids",
]

#: The values of ``load_tff_h5(kind=...)``.
KINDS = ("auto", "emnist", "cifar100", "stackoverflow")
STACKOVERFLOW_SEQUENCE_LENGTH = 20
STACKOVERFLOW_VOCAB_SIZE = 10000
_CIFAR_LABELS = {"label": 100, "coarse_label": 20}
_INSTALL = "pip install 'fedjax_lite[tff]' or h5py"


def _h5py():
  return require("h5py", "Reading TFF's HDF5 datasets", _INSTALL)


# --- StackOverflow tokens ---------------------------------------------------------------


class SpecialTokens(NamedTuple):
  """The special token ids of TFF's StackOverflow word prediction (one OOV bucket)."""

  pad: int
  oov: int
  bos: int
  eos: int


def read_vocab(source: str | os.PathLike[str] | Iterable[str],
               vocab_size: int = STACKOVERFLOW_VOCAB_SIZE) -> list[str]:
  """Reads a word vocabulary, most frequent first, keeping the first ``vocab_size`` words.

  Args:
    source: a text file with one entry per line, either ``word`` or ``word count`` (TFF's
      ``stackoverflow.word_count`` file, already sorted by decreasing count; the counts are
      not used), blank lines skipped; or the words themselves (a list).
    vocab_size: how many words to keep (TFF's default 10,000).

  Returns:
    The words, in order (word ``j`` gets token id ``j + 1``).

  Raises:
    ValueError: for a missing file, a line of another form, a repeated word or no word.
  """
  check_int("vocab_size", vocab_size, minimum=1)
  if isinstance(source, (str, os.PathLike)):
    path = Path(source)
    if not path.is_file():
      raise ValueError(f"`vocab`={os.fspath(source)!r} is not an existing file; give TFF's "
                       "word-count file or a file with one word per line.")
    words = []
    with open(path, encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        parts = line.split()
        if not parts:
          continue
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
          raise ValueError(f"{path}:{lineno}: expected 'word' or 'word count'; got "
                           f"{line.rstrip()!r}.")
        words.append(parts[0])
        if len(words) == vocab_size:
          break
    where = os.fspath(path)
  else:
    words = [str(w) for w in source][:vocab_size]
    where = "`vocab`"
  if not words:
    raise ValueError(f"{where} holds no word; give a vocabulary of at least one word.")
  if len(set(words)) != len(words):
    raise ValueError(f"{where} repeats words among its first {len(words)}; give each once.")
  return words


class StackOverflowTokenizer:
  """Maps StackOverflow sentences to TFF's next-word-prediction ids (module docstring).

  Attributes:
    vocab: the ``V`` words; word ``j`` is id ``j + 1``.
    sequence_length: ``L``, the length of ``x`` and ``y``.
    special: the :class:`SpecialTokens` (``0``, ``V + 1``, ``V + 2``, ``V + 3``).
    vocab_size: ``V + 4``, the number of token ids (the model's outputs).
  """

  def __init__(self, vocab: Sequence[str],
               sequence_length: int = STACKOVERFLOW_SEQUENCE_LENGTH):
    """Builds the word-to-id table.

    Args:
      vocab: the words, most frequent first (see :func:`read_vocab`).
      sequence_length: ``L`` (TFF's default 20).

    Raises:
      ValueError: for an empty vocabulary or repeated words.
    """
    self.vocab = tuple(read_vocab(list(vocab), max(len(vocab), 1)))
    self.sequence_length = check_int("sequence_length", sequence_length, minimum=1)
    v = len(self.vocab)
    self.special = SpecialTokens(pad=0, oov=v + 1, bos=v + 2, eos=v + 3)
    self.vocab_size = v + 4
    self._ids = {w: i + 1 for i, w in enumerate(self.vocab)}

  def ids(self, sentence: str | bytes) -> np.ndarray:
    """The ``L + 1`` ids of one sentence: bos, words, eos (if it fits), padding.

    Args:
      sentence: words separated by single spaces (bytes are decoded as UTF-8).

    Returns:
      ``int32[L + 1]``.
    """
    if isinstance(sentence, bytes):
      sentence = sentence.decode("utf-8")
    length = self.sequence_length
    words = sentence.split(" ")
    ids = [self.special.bos] + [self._ids.get(w, self.special.oov) for w in words[:length]]
    if len(words) < length:
      ids.append(self.special.eos)
    out = np.zeros(length + 1, np.int32)
    out[: len(ids)] = ids
    return out

  def __call__(self, sentences: Iterable[str | bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Encodes sentences into next-word examples.

    Args:
      sentences: ``n`` sentences (str or UTF-8 bytes).

    Returns:
      ``(x, y)``, each ``int32[n, L]``: ``x = ids[:, :-1]`` and ``y = ids[:, 1:]`` of
      :meth:`ids`.
    """
    rows = [self.ids(s) for s in sentences]
    ids = np.stack(rows) if rows else np.zeros((0, self.sequence_length + 1), np.int32)
    return ids[:, :-1], ids[:, 1:]


# --- Files ------------------------------------------------------------------------------


def _open(path: str | os.PathLike[str]):
  h5py = _h5py()
  p = Path(path)
  if not p.is_file():
    raise ValueError(f"{os.fspath(path)!r} is not an existing file; give a TFF HDF5 file such "
                     "as fed_emnist_train.h5.")
  try:
    f = h5py.File(p, "r")
  except OSError as e:
    raise ValueError(f"{p} is not an HDF5 file ({e}).") from e
  group = f.get("examples")
  if not isinstance(group, h5py.Group):
    keys = sorted(f.keys())
    f.close()
    raise ValueError(f"{p} is not TFF client data: it needs a group 'examples' of "
                     f"per-client groups; got top-level keys {keys}.")
  return f, group


def tff_client_ids(path: str | os.PathLike[str]) -> list[str]:
  """The client ids of a TFF HDF5 file, sorted (as TFF's ``client_ids``).

  Args:
    path: the file.

  Returns:
    The ids, the names of the groups under ``examples``.

  Raises:
    ImportError: without h5py. ValueError: for a file that is not TFF client data.
  """
  f, group = _open(path)
  with f:
    return sorted(group.keys())


def _detect(path: Path, group: Any) -> str:
  for cid in sorted(group.keys()):
    names = set(group[cid].keys())
    if "tokens" in names:
      return "stackoverflow"
    if "pixels" in names:
      return "emnist"
    if "image" in names:
      return "cifar100"
    raise ValueError(f"{path}: client {cid!r} has datasets {sorted(names)}, none of TFF's EMNIST "
                     "('pixels'), CIFAR-100 ('image') or StackOverflow ('tokens'); pass `kind=`.")
  raise ValueError(f"{path} has no client under 'examples'; nothing to load.")


def _features(kind: str, label: str) -> tuple[str, str]:
  """The (x, y) dataset names of a kind; StackOverflow's y comes from its tokens."""
  return {"emnist": ("pixels", "label"), "cifar100": ("image", label),
          "stackoverflow": ("tokens", "tokens")}[kind]


def read_tff_h5(
    path: str | os.PathLike[str],
    *,
    kind: str = "auto",
    clients: Sequence[str] | None = None,
    tokenizer: StackOverflowTokenizer | None = None,
    label: str = "label",
) -> tuple[RaggedData, tuple[str, ...], str]:
  """Reads one split of a TFF HDF5 file into a :class:`~fedjax_lite.RaggedData`.

  Args:
    path: the file (e.g. ``fed_emnist_train.h5``).
    kind: ``"auto"`` (from the first client's datasets), ``"emnist"``, ``"cifar100"`` or
      ``"stackoverflow"``.
    clients: the client ids to read, in this order; an id absent from the file gets 0
      examples. Default: all of the file's, sorted.
    tokenizer: StackOverflow only (required there): the word-to-id mapping.
    label: CIFAR-100 only: ``"label"`` (100 classes) or ``"coarse_label"`` (20).

  Returns:
    ``(data, client_names, kind)``: arrays ``x`` and ``y`` as described in the module
    docstring, one client per id.

  Raises:
    ImportError: without h5py.
    ValueError: for a missing or non-TFF file, an unknown ``kind``, a client lacking a
      dataset or with datasets of different lengths, examples of mixed shapes, or
      StackOverflow without a tokenizer.
  """
  check_choice("kind", kind, KINDS)
  check_choice("label", label, tuple(_CIFAR_LABELS))
  f, group = _open(path)
  with f:
    p = Path(path)
    if kind == "auto":
      kind = _detect(p, group)
    if kind == "stackoverflow" and tokenizer is None:
      raise ValueError("StackOverflow needs a vocabulary: pass `vocab=` (TFF's word-count file, "
                       "a file of one word per line, or a list of words).")
    names = tuple(sorted(group.keys())) if clients is None else tuple(clients)
    x_name, y_name = _features(kind, label)
    counts = np.zeros(len(names), np.int64)
    first = None
    for i, cid in enumerate(names):
      sub = group.get(cid)
      if sub is None:
        continue
      for feature in dict.fromkeys((x_name, y_name)):
        if feature not in sub:
          raise ValueError(f"{p}: client {cid!r} has datasets {sorted(sub.keys())} but "
                           f"{kind} needs {feature!r}; pass the right `kind`.")
      n = sub[x_name].shape[0]
      if sub[y_name].shape[0] != n:
        raise ValueError(f"{p}: client {cid!r} has {n} {x_name!r} but "
                         f"{sub[y_name].shape[0]} {y_name!r}; the file is inconsistent.")
      counts[i] = n
      if first is None:
        first = sub[x_name]
    if first is None:  # none of the requested clients is here: 0 examples, shapes from another
      others = sorted(group.keys())
      if not others:
        raise ValueError(f"{p} has no client under 'examples'; nothing to load.")
      sub = group[others[0]]
      if x_name not in sub:
        raise ValueError(f"{p}: client {others[0]!r} has datasets {sorted(sub.keys())} but "
                         f"{kind} needs {x_name!r}; pass the right `kind`.")
      first = sub[x_name]
    total = int(counts.sum())
    if kind == "stackoverflow":
      x_shape, x_dtype = (tokenizer.sequence_length,), np.dtype(np.int32)
    elif kind == "emnist":
      x_shape, x_dtype = (*first.shape[1:], 1), np.dtype(np.float32)
    else:
      x_shape, x_dtype = first.shape[1:], first.dtype
    x = np.empty((total, *x_shape), x_dtype)
    y = np.empty((total, *x_shape) if kind == "stackoverflow" else (total,), np.int32)
    pos = 0
    for cid, n in zip(names, counts.tolist(), strict=True):
      if not n:
        continue
      sub = group[cid]
      if kind == "stackoverflow":
        x[pos:pos + n], y[pos:pos + n] = tokenizer(sub["tokens"][()].tolist())
      else:
        xs = sub[x_name][()]
        want = x_shape[:-1] if kind == "emnist" else x_shape
        if xs.shape[1:] != want:
          raise ValueError(f"{p}: client {cid!r} has {x_name!r} of per-example shape "
                           f"{xs.shape[1:]} but earlier clients {want}.")
        x[pos:pos + n] = xs.reshape((n, *x_shape))
        ys = sub[y_name][()]
        if not np.issubdtype(ys.dtype, np.integer):
          raise ValueError(f"{p}: client {cid!r} has {y_name!r} of dtype {ys.dtype}; labels "
                           "must be integers.")
        y[pos:pos + n] = ys
      pos += n
  return RaggedData.from_arrays({"x": x, "y": y}, counts), names, kind


def load_tff_h5(
    train_path: str | os.PathLike[str],
    test_path: str | os.PathLike[str] | None = None,
    *,
    kind: str = "auto",
    vocab: str | os.PathLike[str] | Sequence[str] | Mapping[str, Any] | None = None,
    vocab_size: int = STACKOVERFLOW_VOCAB_SIZE,
    sequence_length: int = STACKOVERFLOW_SEQUENCE_LENGTH,
    num_classes: int | None = None,
    label: str = "label",
    max_clients: int | None = None,
) -> FederatedDataset:
  """Loads TFF's federated EMNIST, CIFAR-100 or StackOverflow from its HDF5 files.

  See the module docstring for the layout, the client order and the StackOverflow rule.

  Args:
    train_path: the train file (e.g. ``fed_emnist_train.h5``, ``fed_cifar100_train.h5``,
      ``stackoverflow_train.h5``).
    test_path: optional test file of the same dataset (``test`` is ``None`` without it).
    kind: ``"auto"`` (from the train file's datasets), ``"emnist"``, ``"cifar100"`` or
      ``"stackoverflow"``.
    vocab: StackOverflow only, required: a file (TFF's ``word count`` lines or one word per
      line) or a list of words, most frequent first (a dict's keys in order also work).
    vocab_size: StackOverflow only: how many of ``vocab``'s words to keep (TFF's 10,000).
    sequence_length: StackOverflow only: ``L`` (TFF's 20).
    num_classes: the number of classes (default: 62 for EMNIST, 10 when the train file's name
      contains ``digitsonly``; 100 or 20 for CIFAR-100; ``V + 4`` token ids for
      StackOverflow).
    label: CIFAR-100 only: ``"label"`` (fine, 100 classes) or ``"coarse_label"`` (20).
    max_clients: keep only the first ``K`` clients of the order above (e.g. to try
      StackOverflow's 342k clients on a laptop).

  Returns:
    A :class:`FederatedDataset` with :class:`~fedjax_lite.RaggedData` ``train`` and ``test``
    (arrays ``x`` and ``y``), ``central_test=None``, ``num_classes``, ``client_names`` (TFF's
    client ids) and ``info`` (files, kind, client and example counts; StackOverflow's token
    ids).

  Raises:
    ImportError: if h5py is not installed.
    ValueError: for a missing or non-TFF file, train and test of different kinds, a missing
      StackOverflow vocabulary, or labels outside ``[0, num_classes)``.
  """
  check_choice("kind", kind, KINDS)
  check_choice("label", label, tuple(_CIFAR_LABELS))
  if num_classes is not None:
    check_int("num_classes", num_classes, minimum=1)
  if max_clients is not None:
    check_int("max_clients", max_clients, minimum=1)
  train_ids = tff_client_ids(train_path)
  test_ids = [] if test_path is None else tff_client_ids(test_path)
  if kind == "auto":
    f, group = _open(train_path)
    with f:
      kind = _detect(Path(train_path), group)
  tokenizer = None
  if kind == "stackoverflow":
    if vocab is None:
      raise ValueError("StackOverflow needs a vocabulary: pass `vocab=` (TFF's word-count file, "
                       "a file of one word per line, or a list of words).")
    words = read_vocab(list(vocab) if isinstance(vocab, Mapping) else vocab, vocab_size)
    tokenizer = StackOverflowTokenizer(words, sequence_length)
  elif vocab is not None:
    raise ValueError(f"`vocab` is for StackOverflow's words; the data are {kind}, leave it None.")
  known = set(train_ids)
  names = list(train_ids) + [c for c in test_ids if c not in known]
  if max_clients is not None:
    names = names[:max_clients]
  train, _, _ = read_tff_h5(train_path, kind=kind, clients=names, tokenizer=tokenizer,
                            label=label)
  test = None
  if test_path is not None:
    test, _, _ = read_tff_h5(test_path, kind=kind, clients=names, tokenizer=tokenizer,
                             label=label)
  if num_classes is None:
    if kind == "emnist":
      num_classes = 10 if "digitsonly" in Path(train_path).name.lower() else 62
    elif kind == "cifar100":
      num_classes = _CIFAR_LABELS[label]
    else:
      num_classes = tokenizer.vocab_size
  check_split_labels(train, num_classes, "train")
  check_split_labels(test, num_classes, "test")
  has_train = train.num_examples > 0
  has_test = np.zeros_like(has_train) if test is None else test.num_examples > 0
  info: dict[str, Any] = {
      "name": "tff_h5",
      "kind": kind,
      "source": {"train": os.fspath(train_path),
                 "test": None if test_path is None else os.fspath(test_path)},
      "num_clients": len(names),
      "num_train_examples": train.total_examples,
      "num_test_examples": 0 if test is None else test.total_examples,
      "num_clients_only_in_train": int(np.sum(has_train & ~has_test)),
      "num_clients_only_in_test": int(np.sum(has_test & ~has_train)),
      "x_shape": list(train.arrays["x"].shape[1:]),
      "x_dtype": str(train.arrays["x"].dtype),
  }
  if kind == "cifar100":
    info["label"] = label
  if tokenizer is not None:
    info.update(num_words=len(tokenizer.vocab), vocab_size=tokenizer.vocab_size,
                sequence_length=tokenizer.sequence_length, pad_id=tokenizer.special.pad,
                oov_id=tokenizer.special.oov, bos_id=tokenizer.special.bos,
                eos_id=tokenizer.special.eos,
                padding="y == 0 marks padding; sequence_loss/sequence_metrics (pad_id=0) "
                        "leave it out")
  return FederatedDataset(train=train, test=test, central_test=None, num_classes=int(num_classes),
                          client_names=tuple(names), info=info)
