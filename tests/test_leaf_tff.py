"""LEAF JSON and TFF HDF5 loaders on tiny files written here in the real formats, and the
FEMNIST / StackOverflow models."""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_lite import models
from fedjax_lite.datasets.leaf import detect_kind, load_leaf, split_line
from fedjax_lite.datasets.shakespeare_text import ALL_LETTERS
from fedjax_lite.datasets.tff_h5 import StackOverflowTokenizer, load_tff_h5, read_vocab
from fedjax_lite.ragged import RaggedData

# LEAF's character set as printed in models/utils/language_utils.py of TalwalkarLab/leaf.
LEAF_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"


def write_leaf(path, users, hierarchies=False):
  """One LEAF JSON file: ``users = {user: (xs, ys)}`` in order."""
  obj = {"users": list(users), "num_samples": [len(ys) for _, ys in users.values()],
         "user_data": {u: {"x": xs, "y": ys} for u, (xs, ys) in users.items()}}
  if hierarchies:
    obj["hierarchies"] = ["h"] * len(users)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj))
  return path


def rows(data: RaggedData, i: int, name: str) -> np.ndarray:
  return data.arrays[name][data.offsets[i]:data.offsets[i + 1]]


def femnist_user(rng, n):
  xs = [[float(v) for v in rng.random(784).round(3)] for _ in range(n)]
  ys = [int(v) for v in rng.integers(0, 62, n)]
  return xs, ys


# --- LEAF -------------------------------------------------------------------------------


def test_leaf_letters_are_leafs():
  assert ALL_LETTERS == LEAF_LETTERS and len(LEAF_LETTERS) == 80


def test_femnist_values_client_order_and_test_alignment(tmp_path):
  rng = np.random.default_rng(0)
  u = {k: femnist_user(rng, n) for k, n in [("a", 2), ("b", 3), ("c", 1), ("a_test", 1),
                                            ("b_test", 2), ("d_test", 2)]}
  write_leaf(tmp_path / "train" / "0.json", {"b": u["b"], "e": ([], []), "a": u["a"]},
             hierarchies=True)
  write_leaf(tmp_path / "train" / "1.json", {"c": u["c"]})
  write_leaf(tmp_path / "test" / "0.json", {"d": u["d_test"], "a": u["a_test"],
                                            "b": u["b_test"]})
  ds = load_leaf(tmp_path)
  # Train order of first appearance (files sorted by name), then test-only users.
  assert ds.client_names == ("b", "e", "a", "c", "d")
  assert ds.num_classes == 62 and ds.central_test is None
  assert isinstance(ds.train, RaggedData) and isinstance(ds.test, RaggedData)
  np.testing.assert_array_equal(ds.train.num_examples, [3, 0, 2, 1, 0])
  np.testing.assert_array_equal(ds.test.num_examples, [2, 0, 1, 0, 2])
  np.testing.assert_array_equal(ds.train.client_ids, ds.test.client_ids)
  for i, key in enumerate(["b", None, "a", "c", None]):
    if key is None:
      continue
    xs, ys = u[key]
    got = rows(ds.train, i, "x")
    assert got.dtype == np.float32 and got.shape == (len(ys), 28, 28, 1)
    np.testing.assert_array_equal(got, np.asarray(xs, np.float32).reshape(-1, 28, 28, 1))
    np.testing.assert_array_equal(rows(ds.train, i, "y"), ys)
    assert rows(ds.train, i, "y").dtype == np.int32
  for i, key in [(0, "b_test"), (2, "a_test"), (4, "d_test")]:
    xs, ys = u[key]
    np.testing.assert_array_equal(rows(ds.test, i, "x")[..., 0],
                                  np.asarray(xs, np.float32).reshape(-1, 28, 28))
    np.testing.assert_array_equal(rows(ds.test, i, "y"), ys)
  assert ds.info["kind"] == "femnist" and ds.info["num_train_examples"] == 6
  assert ds.info["num_test_examples"] == 5 and ds.info["num_clients_only_in_test"] == 1
  assert ds.info["num_clients_only_in_train"] == 1
  json.dumps(ds.info)
  # A padded cohort gathers as usual.
  cohort = ds.train.gather([2, 0])
  np.testing.assert_array_equal(cohort.arrays["y"][1, :3], u["b"][1])
  # `features` reshapes; a folder of JSON files directly is train only.
  flat = load_leaf(tmp_path / "train", features=(784,))
  assert flat.test is None and flat.train.arrays["x"].shape == (6, 784)


def test_shakespeare_encodes_with_leafs_letters(tmp_path):
  known = "Hi! " * 20  # 80 characters
  # LEAF's index of H, i, !, space is 32, 61, 2, 1; the package's ids are one more.
  expected = [33, 62, 3, 2] * 20
  rng = np.random.default_rng(1)
  other = "".join(rng.choice(list(LEAF_LETTERS), 79)) + "$"  # '$' is outside the set
  write_leaf(tmp_path / "train" / "all_data_0.json",
             {"THE_TEMPEST_ARIEL": ([known, other], ["$", "}"])}, hierarchies=True)
  write_leaf(tmp_path / "test" / "all_data_0.json", {"THE_TEMPEST_ARIEL": ([other], ["a"])})
  ds = load_leaf(tmp_path)
  assert ds.info["kind"] == "shakespeare" and ds.num_classes == 82
  x, y = ds.train.arrays["x"], ds.train.arrays["y"]
  assert x.shape == (2, 80) and x.dtype == np.int32 and y.shape == (2,) and y.dtype == np.int32
  assert x[0].tolist() == expected
  ref = [LEAF_LETTERS.find(c) + 1 if c in LEAF_LETTERS else 81 for c in other]
  assert x[1].tolist() == ref and ref[-1] == 81
  assert y.tolist() == [81, 80]  # '$' is OOV; '}' is LEAF's last letter (index 79)
  assert ds.test.arrays["y"].tolist() == [LEAF_LETTERS.index("a") + 1]


def test_synthetic_vectors_and_default_num_classes(tmp_path):
  rng = np.random.default_rng(2)
  users = {f"f_{i:05d}": ([[float(v) for v in rng.standard_normal(5)] for _ in range(n)],
                          [int(v) for v in rng.integers(0, 4, n)])
           for i, n in enumerate([3, 1, 4])}
  users["f_00001"][1][0] = 6  # the largest label sets num_classes
  write_leaf(tmp_path / "train" / "mytrain.json", users)
  ds = load_leaf(tmp_path)
  assert ds.info["kind"] == "synthetic" and ds.num_classes == 7 and ds.test is None
  for i, (xs, ys) in enumerate(users.values()):
    np.testing.assert_array_equal(rows(ds.train, i, "x"), np.asarray(xs, np.float32))
    np.testing.assert_array_equal(rows(ds.train, i, "y"), ys)
  with pytest.raises(ValueError, match="num_classes"):
    load_leaf(tmp_path, num_classes=5)


def tweet(text):
  return ["1467810369", "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", "someone", text]


def test_sent140_words_and_vocabularies(tmp_path):
  assert split_line("good day. it's ok!") == ["good", "day", ".", "it's", "ok", "!"]
  write_leaf(tmp_path / "train" / "t.json",
             {"u1": ([tweet("good day. good"), tweet("bad   day")], [1, 0]),
              "u2": ([tweet("good!")], [1])})
  write_leaf(tmp_path / "test" / "t.json",
             {"u2": ([tweet("bad movie, ok good day bad good")], [0])})
  ds = load_leaf(tmp_path, max_words=6)
  # Train counts: good 3, day 2, then 1 each in alphabetical order: "!", ".", "bad".
  assert ds.info["kind"] == "sent140" and ds.num_classes == 2
  assert ds.info["vocab"] == ["good", "day", "!", ".", "bad"]
  assert ds.info["oov_id"] == 6 and ds.info["vocab_size"] == 7
  x = ds.train.arrays["x"]
  assert x.dtype == np.int32 and x.shape == (3, 6)
  assert x.tolist() == [[1, 2, 4, 1, 0, 0], [5, 2, 0, 0, 0, 0], [1, 3, 0, 0, 0, 0]]
  assert ds.train.arrays["y"].tolist() == [1, 0, 1]
  # "," is not in the train vocabulary; the 8 words are cut to 6.
  assert ds.test.arrays["x"].tolist() == [[5, 6, 6, 6, 1, 2]]
  np.testing.assert_array_equal(ds.test.num_examples, [0, 1])
  given = load_leaf(tmp_path, vocab={"day": 0, "good": 1}, max_words=4)
  assert given.train.arrays["x"].tolist() == [[2, 1, 3, 2], [3, 1, 0, 0], [2, 3, 0, 0]]
  capped = load_leaf(tmp_path, max_vocab_size=2)
  assert capped.info["vocab"] == ["good", "day"] and capped.train.arrays["x"].shape == (3, 25)


def test_celeba_reads_resized_images_or_says_what_is_missing(tmp_path):
  from PIL import Image

  rng = np.random.default_rng(3)
  img_dir = tmp_path / "img_align_celeba"
  img_dir.mkdir()
  names = ["000001.jpg", "000002.jpg"]
  for name in names:
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(img_dir / name,
                                                                               format="PNG")
  write_leaf(tmp_path / "train" / "c.json", {"5": (names, [0, 1])})
  with pytest.raises(ValueError, match="images="):
    load_leaf(tmp_path)
  ds = load_leaf(tmp_path, images=img_dir, image_size=8)
  assert ds.info["kind"] == "celeba" and ds.num_classes == 2
  x = ds.train.arrays["x"]
  assert x.shape == (2, 8, 8, 3) and x.dtype == np.uint8
  for i, name in enumerate(names):
    with Image.open(img_dir / name) as img:
      np.testing.assert_array_equal(x[i], np.asarray(img.resize((8, 8)).convert("RGB")))
  (img_dir / names[1]).unlink()
  with pytest.raises(FileNotFoundError, match="000002.jpg"):
    load_leaf(tmp_path, images=img_dir)


def test_detect_kind():
  assert detect_kind([0.5] * 784, 3) == "femnist"
  assert detect_kind([0.5] * 60, 3) == "synthetic"
  assert detect_kind("x" * 80, "y") == "shakespeare"
  assert detect_kind(tweet("hi"), 1) == "sent140"
  assert detect_kind("000001.jpg", 1) == "celeba"
  with pytest.raises(ValueError, match="kind="):
    detect_kind({"a": 1}, 1)


def test_leaf_bad_inputs_give_one_clear_value_error(tmp_path):
  with pytest.raises(ValueError, match="not an existing folder"):
    load_leaf(tmp_path / "missing")
  with pytest.raises(ValueError, match="neither a train/ subfolder nor"):
    load_leaf(tmp_path)
  (tmp_path / "train").mkdir()
  (tmp_path / "train" / "a.json").write_text(json.dumps({"users": ["u"], "num_samples": [1]}))
  with pytest.raises(ValueError, match=r"needs the keys \['users', 'num_samples', 'user_data'\]"):
    load_leaf(tmp_path)
  (tmp_path / "train" / "a.json").write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    load_leaf(tmp_path)
  xs, ys = femnist_user(np.random.default_rng(4), 2)
  path = write_leaf(tmp_path / "train" / "a.json", {"u": (xs, ys)})
  obj = json.loads(path.read_text())
  obj["num_samples"] = [3]
  path.write_text(json.dumps(obj))
  with pytest.raises(ValueError, match="num_samples 3 but 2 examples"):
    load_leaf(tmp_path)
  obj["num_samples"] = [2]
  obj["user_data"]["u"] = {"x": xs, "label": ys}
  path.write_text(json.dumps(obj))
  with pytest.raises(ValueError, match="needs the keys 'x' and 'y'"):
    load_leaf(tmp_path)
  write_leaf(path, {"u": (xs, [70, 1])})
  with pytest.raises(ValueError, match=r"span \[1, 70\] but `num_classes`=62"):
    load_leaf(tmp_path)
  with pytest.raises(ValueError, match="`kind` must be one of"):
    load_leaf(tmp_path, kind="mnist")
  write_leaf(path, {"u": (xs, ys)})
  with pytest.raises(ValueError, match="`features`"):
    load_leaf(tmp_path, features=(27, 27, 1))
  with pytest.raises(ValueError, match="Shakespeare examples"):
    load_leaf(tmp_path, kind="shakespeare")


# --- TFF HDF5 ---------------------------------------------------------------------------


@pytest.fixture
def h5py():
  return pytest.importorskip("h5py", reason="h5py is needed for TFF's HDF5 files: pip install "
                                            "'fedjax_lite[tff]' or h5py")


def write_h5(h5py, path, clients):
  """A TFF ClientData file: ``clients = {id: {feature: array}}``."""
  with h5py.File(path, "w") as f:
    group = f.create_group("examples")
    for cid, feats in clients.items():
      sub = group.create_group(cid)
      for name, value in feats.items():
        if isinstance(value, list):  # strings, stored as TFF does (variable-length)
          sub.create_dataset(name, data=np.array(value, dtype=object),
                             dtype=h5py.string_dtype())
        else:
          sub.create_dataset(name, data=value)
  return path


def test_emnist_h5_values_order_and_test_alignment(tmp_path, h5py):
  rng = np.random.default_rng(5)

  def client(n):
    return {"label": rng.integers(0, 62, n).astype(np.int32),
            "pixels": rng.random((n, 28, 28)).astype(np.float32)}

  train = {"f0002_07": client(3), "f0001_41": client(2), "f0010_00": client(1)}
  test = {"f0001_41": client(1), "f0003_00": client(2)}
  tr = write_h5(h5py, tmp_path / "fed_emnist_train.h5", train)
  te = write_h5(h5py, tmp_path / "fed_emnist_test.h5", test)
  ds = load_tff_h5(tr, te)
  assert ds.client_names == ("f0001_41", "f0002_07", "f0010_00", "f0003_00")
  assert ds.info["kind"] == "emnist" and ds.num_classes == 62
  np.testing.assert_array_equal(ds.train.num_examples, [2, 3, 1, 0])
  np.testing.assert_array_equal(ds.test.num_examples, [1, 0, 0, 2])
  for i, cid in enumerate(ds.client_names[:3]):
    got = rows(ds.train, i, "x")
    assert got.shape == (train[cid]["label"].size, 28, 28, 1) and got.dtype == np.float32
    np.testing.assert_array_equal(got, train[cid]["pixels"][..., None])
    np.testing.assert_array_equal(rows(ds.train, i, "y"), train[cid]["label"])
  np.testing.assert_array_equal(rows(ds.test, 3, "x")[..., 0], test["f0003_00"]["pixels"])
  np.testing.assert_array_equal(rows(ds.test, 0, "y"), test["f0001_41"]["label"])
  json.dumps(ds.info)
  assert load_tff_h5(tr, max_clients=2).client_names == ("f0001_41", "f0002_07")
  digits = write_h5(h5py, tmp_path / "fed_emnist_digitsonly_train.h5",
                    {"a": {"label": np.array([3, 9]), "pixels": np.zeros((2, 28, 28), "f4")}})
  assert load_tff_h5(digits).num_classes == 10


def test_cifar100_h5_fine_and_coarse_labels(tmp_path, h5py):
  rng = np.random.default_rng(6)
  clients = {str(i): {"coarse_label": rng.integers(0, 20, n), "image": rng.integers(
      0, 256, (n, 32, 32, 3), dtype=np.uint8), "label": rng.integers(0, 100, n)}
      for i, n in enumerate([2, 3])}
  path = write_h5(h5py, tmp_path / "fed_cifar100_train.h5", clients)
  ds = load_tff_h5(path)
  assert ds.info["kind"] == "cifar100" and ds.num_classes == 100 and ds.test is None
  x = ds.train.arrays["x"]
  assert x.dtype == np.uint8 and x.shape == (5, 32, 32, 3)
  np.testing.assert_array_equal(x, np.concatenate([clients["0"]["image"],
                                                   clients["1"]["image"]]))
  np.testing.assert_array_equal(ds.train.arrays["y"], np.concatenate(
      [clients["0"]["label"], clients["1"]["label"]]))
  coarse = load_tff_h5(path, label="coarse_label")
  assert coarse.num_classes == 20
  np.testing.assert_array_equal(rows(coarse.train, 1, "y"), clients["1"]["coarse_label"])
  # TFF's CIFAR-100 test clients are not train clients: each client has one split only.
  test = write_h5(h5py, tmp_path / "fed_cifar100_test.h5", {"9": clients["0"]})
  both = load_tff_h5(path, test)
  assert both.client_names == ("0", "1", "9")
  np.testing.assert_array_equal(both.test.num_examples, [0, 0, 2])
  assert both.info["num_clients_only_in_test"] == 1
  first_two = load_tff_h5(path, test, max_clients=2)
  assert first_two.test.total_examples == 0
  assert first_two.test.arrays["x"].shape == (0, 32, 32, 3)


def test_stackoverflow_tokenization_by_hand(tmp_path, h5py):
  vocab_file = tmp_path / "stackoverflow.word_count"
  vocab_file.write_text("the 1000\nto 900\nhow 800\npython 700\n")
  words = read_vocab(vocab_file, vocab_size=3)
  assert words == ["the", "to", "how"]
  plain = tmp_path / "vocab.txt"
  plain.write_text("the\nto\n\nhow\n")
  assert read_vocab(plain) == ["the", "to", "how"]
  # V = 3: pad 0, the 1, to 2, how 3, oov 4, bos 5, eos 6.
  tok = StackOverflowTokenizer(words)
  assert tuple(tok.special) == (0, 4, 5, 6) and tok.vocab_size == 7
  short = "how to use the python"
  expected = [5, 3, 2, 4, 1, 4, 6] + [0] * 14  # bos, 5 words, eos, padding to 21
  assert tok.ids(short).tolist() == expected
  long = " ".join(["the", "to"] * 11)  # 22 words: cut to 20, no eos
  assert tok.ids(long.encode()).tolist() == [5] + [1, 2] * 10
  assert tok.ids("how  to").tolist() == [5, 3, 4, 2, 6] + [0] * 16  # "" between two spaces
  clients = {"00000001": {"tokens": [short, long], "title": ["t1", "t2"], "tags": ["a|b", "c"]},
             "00000002": {"tokens": ["to the"], "title": ["t3"], "tags": ["d"]}}
  train = write_h5(h5py, tmp_path / "stackoverflow_train.h5", clients)
  test = write_h5(h5py, tmp_path / "stackoverflow_test.h5",
                  {"00000002": {"tokens": ["python"], "title": ["t"], "tags": ["e"]}})
  ds = load_tff_h5(train, test, vocab=vocab_file, vocab_size=3)
  assert ds.info["kind"] == "stackoverflow" and ds.num_classes == 7
  assert ds.info["bos_id"] == 5 and ds.info["eos_id"] == 6 and ds.info["oov_id"] == 4
  x, y = ds.train.arrays["x"], ds.train.arrays["y"]
  assert x.shape == y.shape == (3, 20) and x.dtype == y.dtype == np.int32
  assert x[0].tolist() == expected[:-1] and y[0].tolist() == expected[1:]
  assert x[1].tolist() == [5] + [1, 2] * 9 + [1] and y[1].tolist() == [1, 2] * 10
  assert x[2].tolist() == [5, 2, 1, 6] + [0] * 16 and y[2].tolist() == [2, 1, 6] + [0] * 17
  assert ds.test.arrays["x"].tolist() == [[5, 4, 6] + [0] * 17]
  np.testing.assert_array_equal(ds.test.num_examples, [0, 1])
  # A shorter sequence length and a word list work too.
  ds5 = load_tff_h5(train, vocab=["the", "to", "how"], sequence_length=5)
  assert ds5.train.arrays["x"][0].tolist() == [5, 3, 2, 4, 1]
  assert ds5.train.arrays["y"][0].tolist() == [3, 2, 4, 1, 4]

  # sequence_metrics counts exactly the non-padding targets of the loaded batch.
  model = models.NextWordLSTM(vocab_size=3, embed=4, hidden=5, dense=3)
  batch = {k: jnp.asarray(v) for k, v in ds.train.arrays.items()}
  params = model.init(jax.random.key(0), batch["x"])
  _, _, count = models.sequence_metrics(model.apply)(params, batch)
  assert count.tolist() == [6, 20, 3]


def test_tff_bad_inputs_give_one_clear_value_error(tmp_path, h5py):
  with pytest.raises(ValueError, match="not an existing file"):
    load_tff_h5(tmp_path / "missing.h5")
  (tmp_path / "junk.h5").write_bytes(b"not hdf5")
  with pytest.raises(ValueError, match="not an HDF5 file"):
    load_tff_h5(tmp_path / "junk.h5")
  with h5py.File(tmp_path / "other.h5", "w") as f:
    f.create_dataset("data", data=np.zeros(3))
  with pytest.raises(ValueError, match=r"needs a group 'examples'.*\['data'\]"):
    load_tff_h5(tmp_path / "other.h5")
  so = write_h5(h5py, tmp_path / "so.h5", {"1": {"tokens": ["a b"]}})
  with pytest.raises(ValueError, match="needs a vocabulary: pass `vocab=`"):
    load_tff_h5(so)
  bad_vocab = tmp_path / "bad.txt"
  bad_vocab.write_text("the 10\nto many words\n")
  with pytest.raises(ValueError, match=r"bad.txt:2: expected 'word' or 'word count'"):
    load_tff_h5(so, vocab=bad_vocab)
  odd = write_h5(h5py, tmp_path / "odd.h5", {"1": {"feature": np.zeros(2)}})
  with pytest.raises(ValueError, match="none of TFF's EMNIST"):
    load_tff_h5(odd)
  em = write_h5(h5py, tmp_path / "em.h5", {"1": {"label": np.array([1, 2, 3]),
                                                  "pixels": np.zeros((2, 28, 28), "f4")}})
  with pytest.raises(ValueError, match="has 2 'pixels' but 3 'label'"):
    load_tff_h5(em)
  with pytest.raises(ValueError, match="needs 'image'"):
    load_tff_h5(em, kind="cifar100")


def test_missing_h5py_says_how_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "h5py", None)
  with pytest.raises(ImportError, match=r"pip install 'fedjax_lite\[tff\]' or h5py"):
    load_tff_h5(tmp_path / "x.h5")


# --- Models -----------------------------------------------------------------------------


def num_params(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_femnist_cnn_shape_and_parameter_count():
  small = models.femnist_cnn(num_classes=5, dense=16)
  x = jnp.zeros((2, 28, 28, 1))
  params = small.init(jax.random.key(0), x)
  assert small.apply(params, x).shape == (2, 5)
  assert small.apply(params, x[..., 0]).shape == (2, 5)  # [B, 28, 28] gets a channel
  full = jax.eval_shape(models.femnist_cnn(62).init, jax.random.key(0), x)
  conv1 = 5 * 5 * 1 * 32 + 32
  conv2 = 5 * 5 * 32 * 64 + 64
  dense = 7 * 7 * 64 * 2048 + 2048
  out = 2048 * 62 + 62
  assert num_params(full) == conv1 + conv2 + dense + out == 6_603_710


def test_next_word_lstm_shape_and_parameter_count():
  small = models.NextWordLSTM(vocab_size=7, embed=4, hidden=5, dense=3)
  tokens = jnp.zeros((2, 20), jnp.int32)
  params = small.init(jax.random.key(0), tokens)
  assert small.apply(params, tokens).shape == (2, 20, 11)
  full = jax.eval_shape(models.NextWordLSTM().init, jax.random.key(0), tokens)
  v, e, h, d = 10_004, 96, 670, 96
  lstm = 4 * (e * h + h * h + h)
  assert num_params(full) == v * e + lstm + (h * d + d) + (d * v + v) == 4_050_748
