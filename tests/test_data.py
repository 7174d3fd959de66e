"""Stacked federated data: building, padding, gathering; label checks and NaN losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedjax_lite as fl
from fedjax_lite import models
from fedjax_lite.client import build_client_update, local_train, masked_mean_grad
from fedjax_lite.data import FederatedData, check_labels
from tests.conftest import RAGGED_SIZES, linear_model, make_clients


def test_from_clients_list_pads_with_zeros_and_counts():
  clients = make_clients(RAGGED_SIZES)
  data = fl.from_clients(clients)
  assert data.num_clients == len(RAGGED_SIZES)
  assert data.max_examples == max(RAGGED_SIZES)
  np.testing.assert_array_equal(data.num_examples, RAGGED_SIZES)
  np.testing.assert_array_equal(data.client_ids, np.arange(len(RAGGED_SIZES)))
  for i, c in enumerate(clients):
    n = RAGGED_SIZES[i]
    np.testing.assert_array_equal(data.arrays["x"][i, :n], c["x"])
    np.testing.assert_array_equal(data.arrays["y"][i, :n], c["y"])
    assert not data.arrays["x"][i, n:].any() and not data.arrays["y"][i, n:].any()
  assert data.arrays["x"].dtype == np.float32 and data.arrays["y"].dtype == np.int32
  np.testing.assert_array_equal(data.mask().sum(1), RAGGED_SIZES)


def test_from_clients_dict_keeps_key_order_and_max_examples():
  clients = make_clients((2, 4, 0))
  data = fl.from_clients({"bob": clients[0], "alice": clients[1], "eve": clients[2]},
                         max_examples=10, client_ids=[7, 3, 9])
  assert data.max_examples == 10
  np.testing.assert_array_equal(data.num_examples, [2, 4, 0])
  np.testing.assert_array_equal(data.client_ids, [7, 3, 9])
  np.testing.assert_array_equal(data.arrays["x"][1, :4], clients[1]["x"])


def test_all_empty_clients_still_have_one_padded_row():
  data = fl.from_clients([{"x": np.zeros((0, 3), np.float32)}] * 2)
  assert data.max_examples == 1 and data.num_examples.tolist() == [0, 0]


def test_take_inside_jit_matches_numpy_indexing():
  data = fl.from_clients(make_clients(RAGGED_SIZES))
  idx = np.array([4, 0, 2, 2])
  got = jax.jit(fl.take)(jax.device_put(data), jnp.asarray(idx))
  for name in data.arrays:
    np.testing.assert_array_equal(got.arrays[name], data.arrays[name][idx])
  np.testing.assert_array_equal(got.num_examples, data.num_examples[idx])
  np.testing.assert_array_equal(got.client_ids, data.client_ids[idx])
  np.testing.assert_array_equal(data.take(idx).num_examples, data.num_examples[idx])


def test_from_arrays_zeroes_stale_padding():
  x = np.ones((2, 4, 3), np.float32)
  data = fl.from_arrays({"x": x}, [1, 3])
  np.testing.assert_array_equal(data.arrays["x"].sum((1, 2)), [3.0, 9.0])


def test_example_mask():
  m = fl.example_mask(jnp.array([0, 2, 3]), 3)
  np.testing.assert_array_equal(m, [[0, 0, 0], [1, 1, 0], [1, 1, 1]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(clients=[]), "`clients` is empty"),
        (dict(clients=[{"x": np.zeros((2, 3))}, {"z": np.zeros((2, 3))}]), "same names"),
        (dict(clients=[{"x": np.zeros((2, 3)), "y": np.zeros(3)}]), "leading \\(example\\) axis"),
        (dict(clients=[{"x": np.zeros((2, 3))}, {"x": np.zeros((2, 4))}]), "per-example shape"),
        (dict(clients=[{"x": np.zeros((5, 3))}], max_examples=2), "`max_examples`=2"),
        (dict(clients=[{"x": np.zeros((1, 3))}] * 2, client_ids=[1, 1]), "unique"),
        (dict(clients=[{"x": np.zeros((1, 3))}] * 2, client_ids=[1]), "`client_ids`"),
    ],
)
def test_from_clients_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    fl.from_clients(**kwargs)


def test_from_clients_type_error_names_argument():
  with pytest.raises(TypeError, match=r"`clients\[0\]`"):
    fl.from_clients([np.zeros(3)])


@pytest.mark.parametrize(
    "arrays, counts, match",
    [
        ({"x": np.zeros((2, 4)), "y": np.zeros((3, 4))}, [1, 1], "leading"),
        ({"x": np.zeros((2, 4))}, [1, -1], ">= 0"),
        ({"x": np.zeros((2, 4))}, [1.5, 2], "integers"),
        ({"x": np.zeros((2, 4))}, [1, 5], "exceeds"),
        ({"x": np.zeros((2, 4))}, [1, 2, 3], "shape \\[2\\]"),
    ],
)
def test_from_arrays_errors(arrays, counts, match):
  with pytest.raises(ValueError, match=match):
    fl.from_arrays(arrays, counts)


def test_public_api_names_all_exist():
  missing = [name for name in fl.__all__ if not hasattr(fl, name)]
  assert not missing
  for module in (fl.privacy, fl.evaluation, fl.checkpoint, fl.datasets, fl.server, fl.models):
    assert module.__doc__


# --- labels: check_labels on the host, NaN losses in the compiled program ---

def _hand_built(labels_per_client, max_examples, padding_value, client_ids=None):
  """A population whose padded label rows hold ``padding_value`` (from_* would zero them)."""
  n = len(labels_per_client)
  y = np.full((n, max_examples), padding_value, np.int64)
  for i, labels in enumerate(labels_per_client):
    y[i, :len(labels)] = labels
  ids = np.arange(n, dtype=np.int32) if client_ids is None else np.asarray(client_ids, np.int32)
  counts = np.array([len(labels) for labels in labels_per_client], np.int32)
  return FederatedData({"y": y, "x": np.zeros((n, max_examples, 2), np.float32)}, counts, ids)


def test_check_labels_message_names_value_client_array_and_fix():
  data = _hand_built([[1, 2], [12, 0, 3], [4]], 4, 0, client_ids=[7, 3, 9])
  with pytest.raises(ValueError) as info:
    check_labels(data, 10)
  message = str(info.value)
  assert message == ("labels must be in [0, 10): client 3 has label 12 in data.arrays['y']; "
                     "remap the labels into 0..9 or set num_classes to at least 13.")
  assert "\n" not in message
  with pytest.raises(ValueError, match=r"client 9 has label -1 in train.arrays\['y'\]; remap "
                                       r"the labels into 0..9\.$"):
    check_labels(_hand_built([[0], [1], [-1]], 2, 0, client_ids=[1, 2, 9]), 10, name="train")
  with pytest.raises(ValueError, match=r"client 0 has labels 5, 6 .*\(and 1 other client\)"):
    check_labels(_hand_built([[5, 6, 0], [1], [7]], 3, 0), 5)


def test_check_labels_ignores_padding_and_accepts_edges():
  # Padded rows hold out-of-range values; only real rows count.
  data = _hand_built([[0, 9], [], [5, 5, 5]], 5, 99)
  check_labels(data, 10)
  check_labels(_hand_built([[0, 9], [3]], 4, -7), 10)
  with pytest.raises(ValueError, match="client 0 has label 9"):
    check_labels(data, 9)  # 9 is out of [0, 9)


def test_check_labels_on_a_single_client_and_on_sequences():
  data = _hand_built([[1, 2], [3, 11]], 3, 50, client_ids=[4, 6])
  check_labels(jax.tree.map(lambda x: x[0], data), 10)
  with pytest.raises(ValueError, match="client 6 has label 11"):
    check_labels(jax.tree.map(lambda x: x[1], data), 10)
  # Next-token targets [N, M, T]: every entry of a real row counts.
  y = np.zeros((2, 3, 4), np.int32)
  y[1, 1, 2] = 80
  y[0, 2] = 1000  # a padded row of client 0 (1 real row)
  seqs = FederatedData({"y": y}, np.array([1, 2], np.int32), np.array([0, 1], np.int32))
  with pytest.raises(ValueError, match=r"client 1 has label 80 in data.arrays\['y'\]"):
    check_labels(seqs, 80)
  check_labels(seqs, 81)


@pytest.mark.parametrize(
    "data, kwargs, error, match",
    [
        (_hand_built([[1]], 1, 0)._replace(arrays={"y": np.ones((1, 1), np.float32)}), {},
         ValueError, r"data.arrays\['y'\] has dtype float32, but labels must be integers"),
        (_hand_built([[1]], 1, 0)._replace(arrays={"y": np.ones((1, 1), bool)}), {},
         ValueError, "has dtype bool"),
        (_hand_built([[1]], 1, 0), {"key": "label"}, ValueError,
         r"data.arrays\['label'\] does not exist: data has arrays \['x', 'y'\]"),
        (_hand_built([[1]], 1, 0)._replace(num_examples=np.ones(3, np.int32)), {}, ValueError,
         "does not start with the client axes"),
        (_hand_built([[1]], 1, 0), {"num_classes": 2.0}, TypeError, "`num_classes` must be an int"),
        (_hand_built([[1]], 1, 0), {"num_classes": 0}, ValueError, "`num_classes` must be >= 1"),
    ],
)
def test_check_labels_errors(data, kwargs, error, match):
  with pytest.raises(error, match=match):
    check_labels(data, **{"num_classes": 10, **kwargs})


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 6), min_size=1, max_size=6),
       num_classes=st.integers(1, 12), low=st.integers(-3, 0), high_extra=st.integers(0, 3),
       extra=st.integers(0, 3), padding=st.integers(-100, 100), seed=st.integers(0, 2**16))
def test_check_labels_matches_numpy_reference(sizes, num_classes, low, high_extra, extra, padding,
                                              seed):
  rng = np.random.default_rng(seed)
  labels = [rng.integers(low, num_classes + high_extra, n) for n in sizes]
  ids = rng.permutation(100)[:len(sizes)]
  data = _hand_built(labels, max(max(sizes), 1) + extra, padding, client_ids=ids)
  bad = [i for i, ys in enumerate(labels) if any(v < 0 or v >= num_classes for v in ys)]
  if not bad:
    check_labels(data, num_classes)
    return
  with pytest.raises(ValueError) as info:
    check_labels(data, num_classes)
  first = bad[0]
  values = sorted({int(v) for v in labels[first] if v < 0 or v >= num_classes})
  shown = ", ".join(map(str, values[:5])) + (", ..." if len(values) > 5 else "")
  assert str(info.value).startswith(
      f"labels must be in [0, {num_classes}): client {ids[first]} has label"
      f"{'s' if len(values) > 1 else ''} {shown} in data.arrays['y']")
  assert (f"(and {len(bad) - 1} other client" in str(info.value)) == (len(bad) > 1)


def _optax_ce(logits, labels):
  return np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


@settings(max_examples=40, deadline=None)
# Shapes from a small set (each new shape is a compile); labels and logits vary freely.
@given(batch=st.sampled_from([(1,), (5,), (2, 3), (5, 5)]),
       num_classes=st.sampled_from([1, 2, 3, 12]), seed=st.integers(0, 2**16))
def test_cross_entropy_nan_exactly_where_labels_are_out_of_range(batch, num_classes, seed):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.standard_normal(batch + (num_classes,)), jnp.float32)
  labels = rng.integers(-num_classes - 2, 2 * num_classes + 2, batch).astype(np.int32)
  valid = (labels >= 0) & (labels < num_classes)
  got = np.asarray(jax.jit(models.cross_entropy)(logits, labels))
  assert got.shape == batch
  np.testing.assert_array_equal(np.isnan(got), ~valid)
  in_range = np.where(valid, labels, 0)
  np.testing.assert_array_equal(got[valid], _optax_ce(logits, in_range)[valid])
  # An independent reference for the in-range values: -log softmax.
  ref = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), in_range[..., None], -1)[..., 0]
  np.testing.assert_allclose(got[valid], ref[valid], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_classes", [1, 2, 3, 10, 62])
@pytest.mark.parametrize("bad", [-1, -5, "C", "C+3", 2**30])
def test_classification_loss_is_nan_for_an_out_of_range_label(num_classes, bad):
  bad = {"C": num_classes, "C+3": num_classes + 3}.get(bad, bad)
  params, _ = linear_model(num_features=4, num_classes=num_classes)
  apply_fn = models.LogisticRegression(num_classes).apply
  loss = jax.jit(models.classification_loss(apply_fn))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 4)), jnp.float32)
  y = np.zeros(5, np.int32)
  assert np.isfinite(loss(params, {"x": x, "y": y}))
  np.testing.assert_allclose(
      loss(params, {"x": x, "y": y}), _optax_ce(apply_fn(params, x), y).mean(), rtol=1e-6)
  y[3] = bad
  assert np.isnan(loss(params, {"x": x, "y": y}))
  loss_b, correct, count = models.classification_metrics(apply_fn)(params, {"x": x, "y": y})
  np.testing.assert_array_equal(np.isnan(loss_b), np.arange(5) == 3)
  assert correct[3] == 0 and count.sum() == 5


def test_sequence_loss_is_nan_for_an_out_of_range_target_but_ignores_padding():
  vocab = 5
  logits = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, vocab)), jnp.float32)
  apply_fn = lambda params, tokens: logits
  targets = np.array([[1, 4, 0], [2, 0, 0]], np.int32)
  loss = models.sequence_loss(apply_fn)
  ref = _optax_ce(logits, targets)
  expected = np.mean([(ref[0, 0] + ref[0, 1]) / 2, ref[1, 0]])
  np.testing.assert_allclose(loss(None, {"x": targets, "y": targets}), expected, rtol=1e-6)
  for bad in (vocab, -1):
    assert np.isnan(loss(None, {"x": targets, "y": np.where(targets == 4, bad, targets)}))
  # A pad_id outside the vocabulary is excluded, not NaN.
  padded = np.where(targets == 0, -1, targets)
  np.testing.assert_allclose(models.sequence_loss(apply_fn, pad_id=-1)(
      None, {"x": padded, "y": padded}), expected, rtol=1e-6)


def _old_classification_loss(apply_fn):
  """classification_loss before out-of-range labels became NaN."""
  return lambda params, batch: optax.softmax_cross_entropy_with_integer_labels(
      apply_fn(params, batch["x"]), batch["y"]).mean()


@pytest.mark.parametrize("mode", ["batch", "per_example"])
def test_valid_ragged_population_trains_exactly_as_before_and_bad_padding_is_harmless(mode):
  params, new_loss = linear_model()
  old_loss = _old_classification_loss(models.LogisticRegression(3).apply)
  data = fl.from_clients(make_clients((5, 0, 9, 1)), max_examples=11)
  # The same population with out-of-range labels in every padded row.
  poisoned = data._replace(arrays={**data.arrays, "y": np.where(
      np.asarray(data.mask()), data.arrays["y"], np.int32(-7))})
  opt = optax.sgd(0.1)

  def train(loss_fn, d):
    def one(c):
      grads, total = masked_mean_grad(loss_fn, params, c.arrays, c.mask(), mode)
      out = local_train(loss_fn, opt, params, c, jax.random.key(0), num_epochs=2, batch_size=4,
                        grad_mode=mode)
      return grads, total, out.params, out.loss_sum
    return jax.device_get(jax.jit(jax.vmap(one))(d))

  before = train(old_loss, data)
  for got in (train(new_loss, data), train(new_loss, poisoned)):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(before), strict=True):
      np.testing.assert_array_equal(a, b)
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(before))


def test_a_real_out_of_range_label_makes_the_client_loss_nan():
  params, loss = linear_model()
  clients = make_clients((4, 6, 3))
  clients[1]["y"][2] = -1  # a negative label wraps around to a class in optax
  clients[2]["y"][0] = 3  # num_classes is 3
  data = fl.from_clients(clients)
  update = jax.jit(jax.vmap(build_client_update(loss, optax.sgd(0.1), batch_size=2),
                            in_axes=(None, 0, None)))
  out = update(params, data, jax.random.key(0))
  train_loss = np.asarray(out.metrics["train_loss"])
  assert np.isfinite(train_loss[0]) and np.isnan(train_loss[1:]).all()


def test_run_refuses_out_of_range_labels_before_training(tmp_path, monkeypatch, capsys):
  from fedjax_lite import cli, experiment
  from fedjax_lite.datasets import images
  ds = images.load_digits_dataset(num_clients=4, seed=0)
  y = np.array(ds.train.arrays["y"])
  y[2, 0] = 12
  bad = ds._replace(train=ds.train._replace(arrays={**ds.train.arrays, "y": y}))
  monkeypatch.setattr(experiment.build, "load_dataset", lambda c: bad)
  out = tmp_path / "o"
  args = ["run", "--dataset", "digits", "--num-clients", "4", "--clients-per-round", "2",
          "--rounds", "1", "--out", str(out)]
  assert cli.main(args) == 2
  err = capsys.readouterr().err.strip()
  assert err == ("fedjax-lite run: error: labels must be in [0, 10): client 2 has label 12 in "
                 "train.arrays['y']; remap the labels into 0..9 or set num_classes to at least 13.")
  assert not (out / "metrics.jsonl").exists()
  y_test = np.array(ds.test.arrays["y"])
  y_test[1, 0] = -1
  bad_test = ds._replace(test=ds.test._replace(arrays={**ds.test.arrays, "y": y_test}))
  monkeypatch.setattr(experiment.build, "load_dataset", lambda c: bad_test)
  with pytest.raises(ValueError, match=r"client 1 has label -1 in test.arrays\['y'\]"):
    experiment.build_task(experiment.resolve_config(None, {"dataset": "digits",
                                                           "num_clients": 4}))
