"""LEAF / FedProx Synthetic(alpha, beta): shapes, size law, the documented model, heterogeneity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedjax_lite.datasets.leaf_synthetic import leaf_synthetic, leaf_synthetic_params


def _rows(data, c):
  return {k: v[c, : data.num_examples[c]] for k, v in data.arrays.items()}


def _client_xy(ds, c):
  tr, te = _rows(ds.train, c), _rows(ds.test, c)
  return np.concatenate([tr["x"], te["x"]]), np.concatenate([tr["y"], te["y"]])


def test_shapes_dtypes_and_split():
  ds = leaf_synthetic(num_clients=8, alpha=0.5, beta=0.5, seed=1)
  sizes = np.asarray(ds.info["examples_per_client"])
  assert ds.train.arrays["x"].dtype == np.float32 and ds.train.arrays["y"].dtype == np.int32
  assert ds.train.arrays["x"].shape[::2] == (8, 60) and ds.train.arrays["y"].shape[0] == 8
  assert ds.num_classes == 10 and ds.central_test is None
  assert ds.client_names == tuple(f"client_{c:04d}" for c in range(8))
  np.testing.assert_array_equal(ds.train.num_examples + ds.test.num_examples, sizes)
  np.testing.assert_array_equal(ds.test.num_examples, np.floor(0.2 * sizes + 0.5))
  assert ds.train.max_examples == int(ds.train.num_examples.max())
  assert 0 <= ds.train.arrays["y"].min() and ds.train.arrays["y"].max() < 10
  assert ds.info["alpha"] == 0.5 and ds.info["beta"] == 0.5 and not ds.info["iid"]
  small = leaf_synthetic(num_clients=3, num_features=5, num_classes=4, examples_per_client=7,
                         test_fraction=0.0)
  assert small.test is None and small.train.arrays["x"].shape == (3, 7, 5)
  assert small.num_classes == 4


def test_size_law_lognormal_4_2_plus_50():
  # n_k = int(LogNormal(4, 2)) + 50, so n_k >= 50 and P(n_k - 50 >= t) ~ 1 - Phi((log t - 4) / 2).
  sizes = leaf_synthetic_params(3000, seed=0)["sizes"]
  assert sizes.dtype == np.int64 and sizes.min() >= 50
  s = sizes - 50
  for z in (-1.0, 0.0, 1.0):
    t = math.exp(4.0 + 2.0 * z)
    expected = 0.5 * math.erfc(z / math.sqrt(2))
    assert abs(np.mean(s >= t) - expected) < 0.04, (z, np.mean(s >= t), expected)
  ds = leaf_synthetic(num_clients=5, seed=0)
  np.testing.assert_array_equal(ds.info["examples_per_client"],
                                leaf_synthetic_params(5, seed=0)["sizes"])


def test_size_overrides_and_truncation():
  ds = leaf_synthetic(num_clients=4, examples_per_client=32, seed=0)
  assert ds.info["examples_per_client"] == [32] * 4
  np.testing.assert_array_equal(ds.train.num_examples, [26] * 4)  # 32 - round(6.4).
  ds = leaf_synthetic(num_clients=3, examples_per_client=[0, 5, 12], seed=0)
  np.testing.assert_array_equal(ds.train.num_examples + ds.test.num_examples, [0, 5, 12])
  law = leaf_synthetic_params(20, seed=2)["sizes"]
  ds = leaf_synthetic(num_clients=20, max_examples_per_client=60, seed=2)
  np.testing.assert_array_equal(ds.info["examples_per_client"], np.minimum(law, 60))


def test_reproducible_seed_sensitive_and_prefix_stable():
  a = leaf_synthetic(num_clients=5, seed=3)
  b = leaf_synthetic(num_clients=5, seed=3)
  c = leaf_synthetic(num_clients=5, seed=4)
  for k in ("x", "y"):
    np.testing.assert_array_equal(a.train.arrays[k], b.train.arrays[k])
    np.testing.assert_array_equal(a.test.arrays[k], b.test.arrays[k])
  assert a.info["examples_per_client"] != c.info["examples_per_client"]
  # Device k's model and data come from its own stream: the first 5 of 8 devices are the same.
  big = leaf_synthetic(num_clients=8, seed=3)
  for c_ in range(5):
    for k in ("x", "y"):
      np.testing.assert_array_equal(_rows(big.train, c_)[k], _rows(a.train, c_)[k])


@pytest.mark.parametrize("iid", [False, True])
def test_labels_are_argmax_of_the_devices_softmax_model(iid):
  ds = leaf_synthetic(num_clients=6, alpha=1.0, beta=1.0, iid=iid, seed=5,
                      max_examples_per_client=300)
  p = leaf_synthetic_params(6, 1.0, 1.0, iid=iid, seed=5)
  np.testing.assert_allclose(p["sigma"], np.arange(1, 61) ** -1.2)
  for c in range(6):
    x, y = _client_xy(ds, c)
    np.testing.assert_array_equal(y, np.argmax(x.astype(np.float64) @ p["W"][c].T + p["b"][c], -1))
    # The features are N(v_k, diag(j^-1.2)): check mean and variance of the whitened features.
    z = (x - p["v"][c]) / np.sqrt(p["sigma"])
    assert abs(z.mean()) < 0.05 and abs(z.var() - 1.0) < 0.06


def test_alpha_and_beta_are_variances_of_the_device_offsets():
  # mean_j W_k[i, j] = u_k + N(0, 1/600), u_k ~ N(0, alpha); mean_j v_k[j] = B_k + N(0, 1/60).
  p = leaf_synthetic_params(600, alpha=4.0, beta=0.25, seed=0)
  var_u = p["W"].mean(axis=(1, 2)).var()
  var_b = p["v"].mean(axis=1).var()
  assert 3.3 < var_u < 4.8, var_u  # A standard deviation of 4 would give ~16.
  assert 0.2 < var_b < 0.34, var_b  # One of 0.25 would give ~0.08.
  # b_k shares the offset u_k of W_k.
  assert np.corrcoef(p["W"].mean(axis=(1, 2)), p["b"].mean(axis=1))[0, 1] > 0.9
  zero = leaf_synthetic_params(600, alpha=0.0, beta=0.0, seed=0)
  assert zero["W"].mean(axis=(1, 2)).var() < 0.01 and zero["v"].mean(axis=1).var() < 0.04


def test_alpha_shifts_every_logit_alike_so_labels_do_not_depend_on_it():
  # u_k adds u_k * (sum(x) + 1) to every class's logit: a documented property of the model.
  a = leaf_synthetic(num_clients=6, alpha=0.0, beta=1.0, seed=0)
  b = leaf_synthetic(num_clients=6, alpha=9.0, beta=1.0, seed=0)
  for k in ("x", "y"):
    np.testing.assert_array_equal(a.train.arrays[k], b.train.arrays[k])
  pa = leaf_synthetic_params(6, alpha=0.0, seed=0)
  pb = leaf_synthetic_params(6, alpha=9.0, seed=0)
  shift = (pb["W"] - pa["W"]).reshape(6, -1)
  np.testing.assert_allclose(shift, shift[:, :1] * np.ones_like(shift), atol=1e-9)
  assert np.abs(shift[:, 0]).max() > 0.5


def test_feature_heterogeneity_across_devices_grows_with_beta():
  spread = []
  for beta in (0.0, 1.0, 4.0):
    ds = leaf_synthetic(num_clients=40, alpha=1.0, beta=beta, examples_per_client=50, seed=7)
    client_means = np.stack([_client_xy(ds, c)[0].mean() for c in range(40)])
    spread.append(float(client_means.var()))
  assert spread[0] < spread[1] < spread[2], spread
  assert spread[0] < 0.1 and 0.5 < spread[1] < 1.8 and spread[2] > 2.0, spread


def test_iid_variant_shares_one_model_and_feature_law():
  p = leaf_synthetic_params(5, alpha=3.0, beta=3.0, iid=True, seed=1)
  for k in ("W", "b", "v"):
    assert np.all(p[k] == p[k][:1])
  non_iid = leaf_synthetic_params(5, alpha=3.0, beta=3.0, seed=1)
  assert not np.all(non_iid["W"] == non_iid["W"][:1])
  ds = leaf_synthetic(num_clients=5, iid=True, examples_per_client=400, seed=1)
  hists = np.stack([np.bincount(_client_xy(ds, c)[1], minlength=10) / 400 for c in range(5)])
  # Same distribution on every device: label histograms agree up to sampling noise.
  assert np.abs(hists - hists.mean(0)).max() < 0.08


@pytest.mark.parametrize("kwargs,match", [
    ({"alpha": -1.0}, "alpha"),
    ({"beta": float("nan")}, "beta"),
    ({"examples_per_client": [1, 2]}, "examples_per_client"),
    ({"examples_per_client": -3}, "examples_per_client"),
    ({"examples_per_client": 0}, "examples_per_client"),
    ({"max_examples_per_client": 0}, "max_examples_per_client"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"num_clients": 0}, "num_clients"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    leaf_synthetic(**{"num_clients": 3, **kwargs})
