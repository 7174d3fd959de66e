"""Hugging Face datasets and Flower partitioners -> FederatedDataset, on tiny generated data."""

from __future__ import annotations

import os
import sys

# Flower Datasets reports some calls to its telemetry server unless this is off.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fedjax_lite.data import FederatedData  # noqa: E402
from fedjax_lite.datasets.huggingface import from_flwr_partitioner, from_huggingface  # noqa: E402
from fedjax_lite.ragged import RaggedData  # noqa: E402

datasets = pytest.importorskip(
    "datasets", reason="Hugging Face datasets is an extra: pip install 'fedjax_lite[hf]'")

_NUM_LABELS = 7  # ClassLabel names; the generated labels use only 0..4


def _flwr():
  return pytest.importorskip(
      "flwr_datasets.partitioner",
      reason="Flower Datasets is an extra: pip install 'fedjax_lite[flwr]'")


def make_rows(n=48, seed=0, writers=("w07", "w02", "w11", "w05", "w30"), skew=True):
  """Columns of a small image/tabular dataset, rows of writers in random order."""
  rng = np.random.default_rng(seed)
  p = np.arange(1, len(writers) + 1, dtype=float) if skew else np.ones(len(writers))
  return {
      "writer": [writers[i] for i in rng.choice(len(writers), n, p=p / p.sum())],
      "img": rng.integers(0, 256, (n, 5, 4), dtype=np.uint8),
      "f": rng.standard_normal(n).astype(np.float32),
      "vec": rng.standard_normal((n, 3)).astype(np.float32),
      "label": rng.integers(0, 5, n),
  }


def make_dataset(rows, class_label=True):
  features = datasets.Features({
      "writer": datasets.Value("string"),
      "img": datasets.Image(),
      "f": datasets.Value("float32"),
      "vec": datasets.Sequence(datasets.Value("float32"), length=3),
      "label": (datasets.ClassLabel(num_classes=_NUM_LABELS) if class_label
                else datasets.Value("int64")),
  })
  cols = dict(rows, img=list(rows["img"]), vec=rows["vec"].tolist(),
              label=rows["label"].tolist())
  return datasets.Dataset.from_dict(cols, features=features)


def reference_grouping(writers, order):
  """{client: row numbers} grouped in plain Python, clients in `order`."""
  groups: dict[str, list[int]] = {}
  for i, w in enumerate(writers):
    groups.setdefault(w, []).append(i)
  names = sorted(groups) if order == "sorted" else list(groups)
  return {name: groups[name] for name in names}


def client_rows(data: RaggedData, i: int, key: str) -> np.ndarray:
  return data.arrays[key][data.offsets[i]:data.offsets[i + 1]]


@pytest.fixture(scope="module")
def rows():
  return make_rows()


@pytest.fixture(scope="module")
def ds(rows):
  return make_dataset(rows)


# --- natural partition ----------------------------------------------------------------------


@pytest.mark.parametrize("order", ["sorted", "first"])
def test_natural_partition_equals_python_grouping(rows, ds, order):
  fd = from_huggingface(ds, client_column="writer", features=["f", "vec"], label="label",
                        client_order=order)
  ref = reference_grouping(rows["writer"], order)
  x_all = np.concatenate([rows["f"][:, None], rows["vec"]], axis=1)
  assert isinstance(fd.train, RaggedData) and fd.test is None
  assert fd.client_names == tuple(ref)
  np.testing.assert_array_equal(fd.train.num_examples, [len(r) for r in ref.values()])
  np.testing.assert_array_equal(fd.train.client_ids, np.arange(len(ref)))
  assert fd.train.arrays["x"].dtype == np.float32 and fd.train.arrays["y"].dtype == np.int32
  for i, r in enumerate(ref.values()):
    np.testing.assert_array_equal(client_rows(fd.train, i, "x"), x_all[r])
    np.testing.assert_array_equal(client_rows(fd.train, i, "y"), rows["label"][r])
  assert fd.info["num_clients"] == len(ref) and fd.info["num_train_examples"] == len(ds)


def test_shuffled_and_multi_chunk_datasets_read_their_own_row_order(rows, ds):
  # A shuffle is an indices mapping over the table, a concatenation a table of several chunks.
  perm = np.random.default_rng(3).permutation(len(ds))
  mixed = datasets.concatenate_datasets([ds.select(range(20)), ds.select(range(20, len(ds)))])
  where = {v: i for i, v in enumerate(rows["f"].tolist())}  # "f" is unique per row
  for data in (ds.select(perm), mixed.shuffle(seed=0)):
    order = np.asarray([where[v] for v in data.with_format("numpy")[:]["f"].tolist()])
    assert not np.array_equal(order, np.arange(len(ds)))
    fd = from_huggingface(data, client_column="writer", features="vec", label="label",
                          client_order="first")
    ref = reference_grouping([rows["writer"][i] for i in order], "first")
    assert fd.client_names == tuple(ref)
    for i, r in enumerate(ref.values()):
      np.testing.assert_array_equal(client_rows(fd.train, i, "x"), rows["vec"][order[r]])
      np.testing.assert_array_equal(client_rows(fd.train, i, "y"), rows["label"][order[r]])


def test_image_feature_is_scaled_with_a_channel_axis(rows, ds):
  fd = from_huggingface(ds, client_column="writer", features="img", label="label")
  ref = reference_grouping(rows["writer"], "sorted")
  x = fd.train.arrays["x"]
  assert x.dtype == np.float32 and x.shape == (len(ds), 5, 4, 1)
  assert 0.0 <= x.min() and x.max() <= 1.0
  for i, r in enumerate(ref.values()):
    np.testing.assert_allclose(client_rows(fd.train, i, "x")[..., 0], rows["img"][r] / 255.0,
                               rtol=1e-6)


def test_rgb_images_keep_their_channels():
  rng = np.random.default_rng(1)
  imgs = rng.integers(0, 256, (4, 3, 2, 3), dtype=np.uint8)
  ds = datasets.Dataset.from_dict(
      {"img": list(imgs), "c": [1, 0, 1, 0], "y": [0, 1, 1, 0]},
      features=datasets.Features({"img": datasets.Image(), "c": datasets.Value("int64"),
                                  "y": datasets.Value("int64")}))
  fd = from_huggingface(ds, client_column="c", features="img", label="y")
  assert fd.client_names == ("0", "1")
  np.testing.assert_allclose(fd.train.arrays["x"], imgs[[1, 3, 0, 2]] / 255.0, rtol=1e-6)


def test_arrays_and_numbers_become_float32_unscaled():
  grid = np.arange(2 * 6, dtype=np.uint8).reshape(2, 2, 3) * 20
  ds = datasets.Dataset.from_dict(
      {"grid": grid.tolist(), "flag": [True, False], "c": ["b", "a"], "y": [1, 0]},
      features=datasets.Features({"grid": datasets.Array2D((2, 3), "uint8"),
                                  "flag": datasets.Value("bool"), "c": datasets.Value("string"),
                                  "y": datasets.Value("int32")}))
  fd = from_huggingface(ds, client_column="c", features="grid", label="y")
  assert fd.train.arrays["x"].dtype == np.float32
  np.testing.assert_array_equal(fd.train.arrays["x"], grid[::-1])  # clients "a", "b"
  fd = from_huggingface(ds, client_column="c", features=["flag", "grid"], label="y")
  np.testing.assert_array_equal(fd.train.arrays["x"][:, 0], [0.0, 1.0])
  np.testing.assert_array_equal(fd.train.arrays["x"][:, 1:], grid[::-1].reshape(2, -1))


def test_num_classes_from_class_label_else_max_plus_one(rows, ds):
  fd = from_huggingface(ds, client_column="writer", features="f", label="label")
  assert fd.num_classes == _NUM_LABELS
  plain = make_dataset(rows, class_label=False)
  fd = from_huggingface(plain, client_column="writer", features="f", label="label")
  assert fd.num_classes == int(rows["label"].max()) + 1
  assert from_huggingface(plain, client_column="writer", features="f", label="label",
                          num_classes=10).num_classes == 10
  with pytest.raises(ValueError, match="`num_classes`=2 but the labels reach 4"):
    from_huggingface(plain, client_column="writer", features="f", label="label", num_classes=2)


def test_test_split_is_aligned_to_the_train_clients(rows, ds):
  test_rows = make_rows(n=20, seed=5, writers=("w11", "w07", "zz_unknown", "w11"))
  test_ds = make_dataset(test_rows)
  fd = from_huggingface(ds, client_column="writer", features=["vec"], label="label",
                        test=test_ds)
  names = list(reference_grouping(rows["writer"], "sorted"))
  ref = reference_grouping(test_rows["writer"], "sorted")
  assert isinstance(fd.test, RaggedData) and fd.test.num_clients == len(names)
  np.testing.assert_array_equal(fd.test.client_ids, fd.train.client_ids)
  for i, name in enumerate(names):
    r = ref.get(name, [])
    assert fd.test.num_examples[i] == len(r)  # 0 for w02, w05, w30
    np.testing.assert_array_equal(client_rows(fd.test, i, "x"), test_rows["vec"][r])
    np.testing.assert_array_equal(client_rows(fd.test, i, "y"), test_rows["label"][r])
  assert fd.info["test_examples_dropped"] == len(ref["zz_unknown"])
  assert fd.info["num_test_examples"] == 20 - len(ref["zz_unknown"])
  empty = from_huggingface(ds, client_column="writer", features=["vec"], label="label",
                           test=test_ds.select([]))
  assert empty.test.total_examples == 0 and empty.test.arrays["x"].shape == (0, 3)
  np.testing.assert_array_equal(empty.test.num_examples, np.zeros(len(names)))


def test_max_clients_keeps_the_first_clients_of_both_splits(rows, ds):
  fd = from_huggingface(ds, client_column="writer", features="f", label="label", test=ds,
                        max_clients=2)
  ref = reference_grouping(rows["writer"], "sorted")
  assert fd.client_names == tuple(ref)[:2]
  counts = [len(r) for r in ref.values()][:2]
  np.testing.assert_array_equal(fd.train.num_examples, counts)
  np.testing.assert_array_equal(fd.test.num_examples, counts)
  assert fd.info["num_clients_available"] == len(ref)


def test_stacked_output_equals_the_ragged_one(ds):
  kw = dict(client_column="writer", features="vec", label="label")
  stacked = from_huggingface(ds, ragged=False, **kw).train
  assert isinstance(stacked, FederatedData)
  expected = from_huggingface(ds, **kw).train.to_stacked()
  for k in ("x", "y"):
    np.testing.assert_array_equal(stacked.arrays[k], expected.arrays[k])
  np.testing.assert_array_equal(stacked.num_examples, expected.num_examples)


def test_saved_to_disk_paths_load(tmp_path, ds):
  kw = dict(client_column="writer", features="img", label="label")
  expected = from_huggingface(ds, **kw)
  ds.save_to_disk(str(tmp_path / "single"))
  got = from_huggingface(tmp_path / "single", **kw)
  assert got.client_names == expected.client_names and got.info["source"].endswith("single")
  np.testing.assert_array_equal(got.train.arrays["x"], expected.train.arrays["x"])
  np.testing.assert_array_equal(got.train.offsets, expected.train.offsets)
  # A DatasetDict: its "train" split is federated and its "test" split aligned.
  datasets.DatasetDict({"train": ds, "test": ds.select(range(10))}).save_to_disk(
      str(tmp_path / "dict"))
  got = from_huggingface(str(tmp_path / "dict"), **kw)
  assert got.test is not None and got.test.total_examples == 10
  np.testing.assert_array_equal(got.train.arrays["y"], expected.train.arrays["y"])
  with pytest.raises(FileNotFoundError, match="save_to_disk"):
    from_huggingface(str(tmp_path / "missing"), **kw)


@pytest.mark.parametrize("arg", ["client_column", "features", "label"])
def test_unknown_column_names_the_column_and_lists_the_available(ds, arg):
  kw = dict(client_column="writer", features="f", label="label")
  kw[arg] = "nope" if arg != "features" else ["f", "nope"]
  with pytest.raises(ValueError) as err:
    from_huggingface(ds, **kw)
  msg = str(err.value)
  assert f"`{arg}`='nope' is not a column" in msg and "\n" not in msg
  assert "available columns: ['writer', 'img', 'f', 'vec', 'label']" in msg


def test_bad_columns_are_refused_clearly(ds):
  strings = datasets.Dataset.from_dict({"c": [0, 1], "t": ["ab", "cd"], "y": ["a", "b"],
                                        "r": [[1.0], [1.0, 2.0]]})
  with pytest.raises(ValueError, match="`features`='t' of `dataset` holds string values"):
    from_huggingface(strings, client_column="c", features="t", label="c")
  with pytest.raises(ValueError, match="rows of different shapes"):
    from_huggingface(strings, client_column="c", features="r", label="c")
  with pytest.raises(ValueError, match="class_encode_column"):
    from_huggingface(strings, client_column="c", features="c", label="y")
  with pytest.raises(ValueError, match="`client_order`"):
    from_huggingface(ds, client_column="writer", features="f", label="label",
                     client_order="random")


def test_missing_extras_raise_one_clear_import_error(monkeypatch, ds):
  monkeypatch.setitem(sys.modules, "datasets", None)
  with pytest.raises(ImportError, match=r"pip install 'fedjax_lite\[hf\]'"):
    from_huggingface(ds, client_column="writer", features="f", label="label")
  monkeypatch.setitem(sys.modules, "flwr_datasets", None)
  with pytest.raises(ImportError, match=r"pip install 'fedjax_lite\[flwr\]'"):
    from_flwr_partitioner(object(), features="f", label="label")


# --- Flower partitioners --------------------------------------------------------------------


def _assert_same_as_flower(fd, reference, features, label):
  """Client i holds exactly partition i of `reference` (an identical, separate partitioner)."""
  assert fd.train.num_clients == reference.num_partitions
  for i in range(reference.num_partitions):
    part = reference.load_partition(i).with_format("numpy")[:]
    assert fd.train.num_examples[i] == len(part[label])
    np.testing.assert_array_equal(client_rows(fd.train, i, "y"), part[label])
    x = np.concatenate([np.asarray(part[f], np.float32).reshape(len(part[label]), -1)
                        for f in features], axis=1)
    np.testing.assert_array_equal(client_rows(fd.train, i, "x"), x)


def test_flower_iid_partitioner_gives_flowers_partitions(ds):
  flwr = _flwr()
  partitioner = flwr.IidPartitioner(num_partitions=5)
  partitioner.dataset = ds
  fd = from_flwr_partitioner(partitioner, features=["f", "vec"], label="label")
  reference = flwr.IidPartitioner(num_partitions=5)
  reference.dataset = ds
  _assert_same_as_flower(fd, reference, ["f", "vec"], "label")
  assert fd.num_classes == _NUM_LABELS and fd.client_names == ("0", "1", "2", "3", "4")
  assert fd.info["partition"] == "IidPartitioner"


def test_flower_dirichlet_partitioner_gives_flowers_partitions(ds):
  flwr = _flwr()

  def make():
    p = flwr.DirichletPartitioner(num_partitions=4, partition_by="label", alpha=0.5,
                                  min_partition_size=1, self_balancing=False, seed=7)
    p.dataset = ds
    return p

  fd = from_flwr_partitioner(make(), features=["vec"], label="label")
  _assert_same_as_flower(fd, make(), ["vec"], "label")
  img = from_flwr_partitioner(make(), features="img", label="label", max_clients=2)
  reference = make()
  for i in range(2):
    expected = reference.load_partition(i).with_format("numpy")[:]["img"] / 255.0
    np.testing.assert_allclose(client_rows(img.train, i, "x")[..., 0], expected, rtol=1e-6)


def test_flower_test_partitioner_and_errors(ds):
  flwr = _flwr()
  train, test = flwr.IidPartitioner(num_partitions=3), flwr.IidPartitioner(num_partitions=3)
  train.dataset, test.dataset = ds, ds.select(range(9))
  fd = from_flwr_partitioner(train, features="f", label="label", test=test)
  np.testing.assert_array_equal(fd.test.num_examples, [3, 3, 3])
  np.testing.assert_array_equal(fd.test.arrays["y"], np.asarray(ds["label"][:9]))
  with pytest.raises(ValueError, match="has no dataset yet"):
    from_flwr_partitioner(flwr.IidPartitioner(num_partitions=2), features="f", label="label")
  with pytest.raises(ValueError, match=r"`label`='nope' is not a column .* available columns"):
    from_flwr_partitioner(train, features="f", label="nope")
  with pytest.raises(TypeError, match="Partitioner"):
    from_flwr_partitioner(ds, features="f", label="label")


def test_flower_federated_dataset_splits(tmp_path, ds):
  flwr = _flwr()
  from flwr_datasets import FederatedDataset as FlowerDataset

  plain = ds.select_columns(["vec", "label"])
  plain.to_parquet(str(tmp_path / "train.parquet"))
  plain.select(range(12)).to_parquet(str(tmp_path / "test.parquet"))
  # A local "parquet" dataset: nothing is downloaded.
  fds = FlowerDataset(
      dataset="parquet", data_files={"train": str(tmp_path / "train.parquet"),
                                     "test": str(tmp_path / "test.parquet")},
      partitioners={"train": flwr.IidPartitioner(num_partitions=4),
                    "test": flwr.IidPartitioner(num_partitions=4)},
      shuffle=False, cache_dir=str(tmp_path / "cache"))
  with pytest.raises(ValueError, match="name one with `split=`"):
    from_flwr_partitioner(fds, features="vec", label="label")
  fd = from_flwr_partitioner(fds, split="train", test="test", features="vec", label="label")
  _assert_same_as_flower(fd, fds.partitioners["train"], ["vec"], "label")
  np.testing.assert_array_equal(fd.test.num_examples, [3, 3, 3, 3])
  assert fd.info["split"] == "train" and fd.info["test_split"] == "test"
