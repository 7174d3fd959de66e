"""Partitioners: each is a partition, seeded, and has the label statistics it documents."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjax_lite.datasets.partition import (
    dirichlet_indices,
    iid_indices,
    key_indices,
    partition,
    partition_dataset,
    shard_indices,
    split_indices,
)


def assert_is_partition(index_lists, n):
  for idx in index_lists:
    assert idx.dtype == np.int64 and idx.ndim == 1
  allidx = np.concatenate(index_lists) if index_lists else np.zeros(0, np.int64)
  assert allidx.size == n, "some example is missing or repeated"
  np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


def label_hist(labels, idx, num_classes):
  return np.bincount(labels[idx], minlength=num_classes) / max(idx.size, 1)


def mean_tv_to_prior(labels, index_lists, num_classes):
  prior = np.bincount(labels, minlength=num_classes) / labels.size
  return float(np.mean([
      0.5 * np.abs(label_hist(labels, idx, num_classes) - prior).sum() for idx in index_lists]))


def random_labels(n, num_classes, seed):
  return np.random.default_rng(seed).integers(0, num_classes, n)


# --- Every partitioner is a partition -------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 150), frac=st.floats(0, 1), num_classes=st.integers(1, 7),
       alpha=st.sampled_from([1e-3, 0.1, 1.0, 30.0]), spc=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1))
def test_every_partitioner_is_a_partition(n, frac, num_classes, alpha, spc, seed):
  labels = random_labels(n, num_classes, seed)
  num_clients = max(1, int(frac * n))
  iid = iid_indices(n, num_clients, seed)
  assert_is_partition(iid, n)
  assert len(iid) == num_clients
  assert {i.size for i in iid} <= {n // num_clients, -(-n // num_clients)}

  dirich = dirichlet_indices(labels, num_clients, alpha, seed)
  assert_is_partition(dirich, n)
  # Documented: sizes are n // N, plus one for the first n % N clients.
  sizes = np.array([i.size for i in dirich])
  expected = np.full(num_clients, n // num_clients)
  expected[: n % num_clients] += 1
  np.testing.assert_array_equal(sizes, expected)

  spc = min(spc, n)
  shard_clients = max(1, n // spc // 2)
  shards = shard_indices(labels, shard_clients, spc, seed)
  assert_is_partition(shards, n)
  assert len(shards) == shard_clients

  keys = np.random.default_rng(seed + 1).integers(0, 5, n)
  names, by_key = key_indices(keys)
  assert_is_partition(by_key, n)
  assert len(names) == len(np.unique(keys))


@pytest.mark.parametrize("fn", [
    lambda y, s: iid_indices(y.size, 7, s),
    lambda y, s: dirichlet_indices(y, 7, 0.5, s),
    lambda y, s: shard_indices(y, 7, 2, s),
])
def test_seeded_reproducible_and_seed_sensitive(fn):
  labels = random_labels(300, 5, 0)
  a, b, c = fn(labels, 3), fn(labels, 3), fn(labels, 4)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)
  assert any(x.shape != y.shape or np.any(x != y) for x, y in zip(a, c, strict=True))


# --- IID ------------------------------------------------------------------------------------


def test_iid_clients_follow_the_global_label_mix():
  labels = np.random.default_rng(1).choice(4, size=20000, p=[0.1, 0.2, 0.3, 0.4])
  clients = iid_indices(labels.size, 4, seed=0)
  prior = np.bincount(labels) / labels.size
  for idx in clients:
    assert np.abs(label_hist(labels, idx, 4) - prior).max() < 0.025


# --- Dirichlet ------------------------------------------------------------------------------


def test_dirichlet_converges_to_prior_as_alpha_grows():
  labels = np.random.default_rng(2).integers(0, 10, 20000)
  tv = [mean_tv_to_prior(labels, dirichlet_indices(labels, 20, a, seed=5), 10)
        for a in (0.05, 1.0, 100.0)]
  assert tv[0] > tv[1] > tv[2], tv
  # Dir(100 p) has per-class sd ~0.03 here, plus multinomial noise of 1000 draws.
  assert tv[2] < 0.15, tv
  assert tv[0] > 0.6, tv


def test_dirichlet_small_alpha_gives_skewed_clients():
  labels = np.random.default_rng(3).integers(0, 10, 10000)
  clients = dirichlet_indices(labels, 20, alpha=0.05, seed=0)
  top_share = [label_hist(labels, idx, 10).max() for idx in clients]
  num_labels = [np.unique(labels[idx]).size for idx in clients]
  assert np.mean(top_share) > 0.6
  assert np.median(num_labels) <= 5
  iid_top = [label_hist(labels, idx, 10).max() for idx in iid_indices(10000, 20, 0)]
  assert np.mean(iid_top) < 0.15


def test_dirichlet_centres_on_the_prior_not_on_uniform():
  # q_c ~ Dir(alpha * p): with a skewed prior, near-IID clients inherit the skew.
  labels = np.random.default_rng(4).choice(3, size=30000, p=[0.8, 0.15, 0.05])
  clients = dirichlet_indices(labels, 10, alpha=1000.0, seed=1)
  shares = np.array([label_hist(labels, idx, 3) for idx in clients])
  np.testing.assert_allclose(shares.mean(0), [0.8, 0.15, 0.05], atol=0.01)
  assert np.abs(shares - [0.8, 0.15, 0.05]).max() < 0.05


def test_dirichlet_spread_matches_dir_alpha_p():
  # Var(q_ck) = p_k (1 - p_k) / (alpha + 1) for q_c ~ Dir(alpha p); the observed share adds
  # multinomial noise p_k (1 - p_k) / n_c. (Running out of a class perturbs this only slightly
  # because the average demand equals the supply.)
  prior = np.array([0.8, 0.15, 0.05])
  labels = np.random.default_rng(6).choice(3, size=60000, p=prior)
  alpha, num_clients = 10.0, 400
  shares = np.array([label_hist(labels, idx, 3)
                     for idx in dirichlet_indices(labels, num_clients, alpha, seed=2)])
  p = np.bincount(labels) / labels.size
  predicted = p * (1 - p) * (1 / (alpha + 1) + 1 / (labels.size / num_clients))
  np.testing.assert_allclose(shares.var(axis=0) / predicted, 1.0, atol=0.3)


def test_dirichlet_single_class_and_tiny_alpha():
  assert_is_partition(dirichlet_indices(np.zeros(10, int), 3, 0.5, 0), 10)
  labels = random_labels(500, 10, 0)
  assert_is_partition(dirichlet_indices(labels, 50, 1e-9, 0), 500)


def test_dirichlet_min_examples_per_client():
  labels = random_labels(103, 4, 0)
  clients = dirichlet_indices(labels, 10, 0.1, 0, min_examples_per_client=10)
  assert min(i.size for i in clients) >= 10
  with pytest.raises(ValueError, match="min_examples_per_client"):
    dirichlet_indices(labels, 10, 0.1, 0, min_examples_per_client=11)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_dirichlet_rejects_bad_alpha(alpha):
  with pytest.raises(ValueError, match="alpha"):
    dirichlet_indices(random_labels(20, 3, 0), 2, alpha, 0)


# --- Shards ---------------------------------------------------------------------------------


def test_shards_each_client_gets_exactly_its_shards():
  # 15 labels with 4 examples each: every shard is one whole label, so the shards a client got
  # are readable from its labels.
  num_clients, spc, shard = 5, 3, 4
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(15), shard))
  clients = shard_indices(labels, num_clients, spc, seed=1)
  assert_is_partition(clients, labels.size)
  for idx in clients:
    got, counts = np.unique(labels[idx], return_counts=True)
    assert got.size == spc
    assert np.all(counts == shard)


def test_shards_are_dealt_at_random():
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(12), 5))
  label_sets = [
      {frozenset(np.unique(labels[idx]).tolist()) for idx in shard_indices(labels, 6, 2, seed)}
      for seed in range(3)]
  assert label_sets[0] != label_sets[1] or label_sets[0] != label_sets[2]
  consecutive = {frozenset({2 * c, 2 * c + 1}) for c in range(6)}
  assert any(s != consecutive for s in label_sets)


def test_shards_at_most_spc_labels_when_classes_are_multiples_of_the_shard():
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(4), [30, 60, 90, 60]))
  for seed in range(5):
    clients = shard_indices(labels, 8, 2, seed)  # 16 shards of 15.
    for idx in clients:
      assert idx.size == 30
      assert np.unique(labels[idx]).size <= 2


@settings(max_examples=40, deadline=None)
@given(num_clients=st.integers(1, 8), spc=st.integers(1, 3), shard=st.integers(2, 6),
       extra=st.integers(0, 5), num_classes=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_shards_at_most_twice_spc_labels(num_clients, spc, shard, extra, num_classes, seed):
  rng = np.random.default_rng(seed)
  num_shards = num_clients * spc
  n = num_shards * shard + min(extra, num_shards - 1)
  # Class sizes of at least shard >= ceil(n / S) - 1 keep every shard within two labels.
  num_classes = max(1, min(num_classes, n // shard))
  base = np.full(num_classes, shard)
  sizes = base + rng.multinomial(n - base.sum(), np.ones(num_classes) / num_classes)
  assert sizes.sum() == n
  labels = rng.permutation(np.repeat(np.arange(num_classes), sizes))
  clients = shard_indices(labels, num_clients, spc, seed)
  assert_is_partition(clients, labels.size)
  lo, hi = labels.size // num_shards, -(-labels.size // num_shards)
  for idx in clients:
    assert spc * lo <= idx.size <= spc * hi
    assert np.unique(labels[idx]).size <= 2 * spc


def test_shards_can_straddle_a_label_boundary():
  # Classes of 3 and 7 cut into 2 shards of 5: one shard holds both labels, so one client has
  # 2 labels although shards_per_client = 1. The spc bound needs class sizes that are multiples
  # of the shard size.
  labels = np.array([0] * 3 + [1] * 7)
  for seed in range(3):
    counts = sorted(np.unique(labels[idx]).size for idx in shard_indices(labels, 2, 1, seed))
    assert counts == [1, 2]


def test_shards_bad_arguments():
  labels = random_labels(10, 2, 0)
  with pytest.raises(ValueError, match="shards_per_client"):
    shard_indices(labels, 4, 3, 0)
  with pytest.raises(ValueError, match="shards_per_client"):
    shard_indices(labels, 2, 0, 0)
  with pytest.raises(ValueError, match="num_clients"):
    shard_indices(labels, 0, 1, 0)
  with pytest.raises(ValueError, match="labels"):
    shard_indices(labels.reshape(5, 2), 2, 1, 0)
  with pytest.raises(ValueError, match="integer"):
    shard_indices(labels.astype(float), 2, 1, 0)


# --- Natural keys ---------------------------------------------------------------------------


def test_keys_one_client_per_key_in_first_appearance_order():
  names, lists = key_indices(["b", "a", "b", "c", "a", "b"])
  assert names == ["b", "a", "c"]
  assert [x.tolist() for x in lists] == [[0, 2, 5], [1, 4], [3]]
  names, lists = key_indices(np.array([7, 3, 7, 1]))
  assert names == [7, 3, 1] and [x.tolist() for x in lists] == [[0, 2], [1], [3]]
  # Unorderable keys fall back to a dict, same semantics.
  names, lists = key_indices(np.array([None, 1, None], dtype=object))
  assert names == [None, 1] and [x.tolist() for x in lists] == [[0, 2], [1]]


def test_keys_bad_arguments():
  with pytest.raises(ValueError, match="keys"):
    key_indices([])
  with pytest.raises(ValueError, match="keys"):
    key_indices(np.zeros((2, 2)))


# --- Train/test split -----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
       fraction=st.floats(0, 0.99), seed=st.integers(0, 1000))
def test_split_sizes_and_disjointness(sizes, fraction, seed):
  starts = np.concatenate([[0], np.cumsum(sizes)])
  lists = [np.arange(starts[i], starts[i + 1]) * 3 for i in range(len(sizes))]
  train, test = split_indices(lists, fraction, seed)
  for idx, tr, te in zip(lists, train, test, strict=True):
    assert te.size == int(np.floor(fraction * idx.size + 0.5))
    assert tr.size + te.size == idx.size
    assert np.intersect1d(tr, te).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), idx)
    # Both parts keep the original order.
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)


def test_split_is_seeded_and_rejects_bad_fraction():
  lists = [np.arange(50), np.arange(50, 90)]
  a, b, c = (split_indices(lists, 0.3, s)[1] for s in (0, 0, 1))
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])
  # Round half up: 2.5 -> 3 and 1.5 -> 2 test examples.
  _, test = split_indices([np.arange(5), np.arange(5, 8)], 0.5, 0)
  assert [t.size for t in test] == [3, 2]
  for bad in (1.0, -0.1, 2):
    with pytest.raises(ValueError, match="test_fraction"):
      split_indices(lists, bad, 0)


# --- partition / partition_dataset ----------------------------------------------------------


def _arrays(n=120, num_classes=4, seed=0):
  rng = np.random.default_rng(seed)
  return {
      "x": rng.standard_normal((n, 3, 2)).astype(np.float32),
      "y": rng.integers(0, num_classes, n).astype(np.int32),
      "id": np.arange(n, dtype=np.int64),
  }


def test_partition_gathers_exact_rows_and_checks_indices():
  arrays = _arrays(20)
  lists = [np.array([3, 1, 4]), np.array([], dtype=np.int64), np.array([19])]
  data = partition(arrays, lists, max_examples=5)
  assert data.max_examples == 5
  np.testing.assert_array_equal(data.num_examples, [3, 0, 1])
  for c, idx in enumerate(lists):
    for k in arrays:
      np.testing.assert_array_equal(data.arrays[k][c, : idx.size], arrays[k][idx])
      assert not data.arrays[k][c, idx.size:].any()
  with pytest.raises(ValueError, match=r"index_lists\[1\].*outside \[0, 20\)"):
    partition(arrays, [np.array([0]), np.array([20])])
  with pytest.raises(ValueError, match=r"index_lists\[0\].*outside"):
    partition(arrays, [np.array([-1])])
  with pytest.raises(ValueError, match="leading"):
    partition({"x": np.zeros(3), "y": np.zeros(4)}, [np.array([0])])
  with pytest.raises(ValueError, match="index_lists"):
    partition(arrays, [])


def _rows(data, c):
  return {k: v[c, : data.num_examples[c]] for k, v in data.arrays.items()}


@pytest.mark.parametrize("method,kwargs", [
    ("iid", {}),
    ("dirichlet", {"alpha": 0.3}),
    ("shards", {"shards_per_client": 2}),
])
def test_partition_dataset_train_test_are_the_original_rows(method, kwargs):
  arrays = _arrays()
  ds = partition_dataset(arrays, method=method, num_clients=6, seed=3, test_fraction=0.25,
                         name="toy", **kwargs)
  assert ds.train.num_clients == ds.test.num_clients == 6
  assert ds.client_names == tuple(f"client_{c:04d}" for c in range(6))
  assert ds.num_classes == int(arrays["y"].max()) + 1 and ds.central_test is None
  seen = []
  for c in range(6):
    tr, te = _rows(ds.train, c), _rows(ds.test, c)
    total = tr["id"].size + te["id"].size
    assert te["id"].size == int(np.floor(0.25 * total + 0.5))
    for part in (tr, te):
      for k in ("x", "y"):
        np.testing.assert_array_equal(part[k], arrays[k][part["id"]])
    seen += [tr["id"], te["id"]]
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(120))
  info = ds.info
  assert info["method"] == method and info["name"] == "toy" and info["num_clients"] == 6
  assert info["train_examples"] + info["test_examples"] == 120
  assert info["train_examples"] == int(ds.train.num_examples.sum())
  for k, v in kwargs.items():
    assert info[k] == v
  # Reproducible.
  again = partition_dataset(arrays, method=method, num_clients=6, seed=3, test_fraction=0.25,
                            **kwargs)
  np.testing.assert_array_equal(again.train.arrays["id"], ds.train.arrays["id"])
  np.testing.assert_array_equal(again.test.arrays["id"], ds.test.arrays["id"])


def test_partition_dataset_shards_pair_train_and_test_of_the_same_client():
  # One label per shard: a client's train and test labels come from the same 2 shards.
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(12), 10)).astype(np.int32)
  arrays = {"x": labels[:, None].astype(np.float32), "y": labels}
  ds = partition_dataset(arrays, method="shards", num_clients=6, shards_per_client=2, seed=0)
  for c in range(6):
    tr, te = _rows(ds.train, c)["y"], _rows(ds.test, c)["y"]
    assert te.size == 4 and tr.size == 16
    assert set(te) <= set(tr) and len(set(tr)) == 2


def test_partition_dataset_natural_names_order_and_central_test():
  arrays = _arrays(12)
  keys = np.array(["w9", "w2", "w9", "w5", "w2", "w9", "w5", "w5", "w2", "w9", "w9", "w2"])
  central = {"x": np.zeros((3, 3, 2), np.float32), "y": np.array([0, 6, 1], np.int32),
             "id": np.arange(3)}
  ds = partition_dataset(arrays, method="natural", keys=keys, test_fraction=0.4,
                         central_test=central)
  assert ds.client_names == ("w9", "w2", "w5")
  assert ds.num_classes == 7  # The central test set's labels count.
  assert ds.central_test["y"].tolist() == [0, 6, 1]
  for c, name in enumerate(ds.client_names):
    ids = np.concatenate([_rows(ds.train, c)["id"], _rows(ds.test, c)["id"]])
    np.testing.assert_array_equal(np.sort(ids), np.flatnonzero(keys == name))
  assert ds.test.num_examples.tolist() == [2, 2, 1]  # round(0.4 * [5, 4, 3]).
  with pytest.raises(ValueError, match="num_clients"):
    partition_dataset(arrays, method="natural", keys=keys, num_clients=2)


def test_partition_dataset_without_test_split():
  ds = partition_dataset(_arrays(), method="iid", num_clients=5, seed=0, test_fraction=0.0)
  assert ds.test is None and int(ds.train.num_examples.sum()) == 120


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "random", "num_clients": 2}, r"method.*'iid', 'dirichlet', 'shards', 'natural'"),
    ({"method": "dirichlet", "num_clients": 2}, "alpha"),
    ({"method": "shards", "num_clients": 2}, "shards_per_client"),
    ({"method": "natural"}, "keys"),
    ({"method": "iid"}, "num_clients"),
    ({"method": "iid", "num_clients": 121}, "num_clients"),
    ({"method": "iid", "num_clients": 0}, "num_clients"),
    ({"method": "shards", "num_clients": 7, "shards_per_client": 20}, "shards_per_client"),
    ({"method": "dirichlet", "num_clients": 2, "alpha": -1}, "alpha"),
    ({"method": "iid", "num_clients": 2, "labels_key": "label"}, "labels_key"),
    ({"method": "natural", "keys": np.zeros(5)}, "keys"),
    ({"method": "iid", "num_clients": 2, "test_fraction": 1.0}, "test_fraction"),
    ({"method": "iid", "num_clients": 2, "num_classes": 2}, "num_classes"),
])
def test_partition_dataset_errors_name_the_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    partition_dataset(_arrays(), **kwargs)


def test_partition_dataset_rejects_bad_labels():
  arrays = _arrays()
  with pytest.raises(ValueError, match=r"arrays\['y'\].*1-D"):
    partition_dataset(dict(arrays, y=arrays["y"].reshape(60, 2), x=arrays["x"][:60],
                           id=arrays["id"][:60]), method="iid", num_clients=2)
  with pytest.raises(ValueError, match="leading"):
    partition_dataset(dict(arrays, y=arrays["y"][:-1]), method="iid", num_clients=2)
