"""Vectorized evaluation against a plain per-client, per-example loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from fedjax_lite import evaluation, models
from tests.conftest import MODELS, RAGGED_SIZES, make_clients


def _reference(metrics_fn, params, clients):
  per = []
  for c in clients:
    ls = cs = ns = 0.0
    for j in range(len(c["y"])):
      one = {k: v[j:j + 1] for k, v in c.items()}
      loss, correct, count = (float(np.asarray(t)[0]) for t in metrics_fn(params, one))
      ls, cs, ns = ls + loss, cs + correct, ns + count
    per.append((ls, cs, ns))
  return np.asarray(per)


@pytest.mark.parametrize("batch_size, client_chunk", [(64, 16), (3, 2), (1, 5)])
def test_classification_matches_reference_loop(batch_size, client_chunk):
  clients = make_clients(RAGGED_SIZES)
  params, _ = MODELS["mlp"]()
  model = models.MLP((8,), 3)
  metrics = models.classification_metrics(model.apply)
  got = evaluation.build_evaluator(metrics, batch_size=batch_size,
                                   client_chunk=client_chunk)(params, fl.from_clients(clients))
  ref = _reference(metrics, params, clients)
  total = ref.sum(0)
  np.testing.assert_allclose(got["loss"], total[0] / total[2], rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"], total[1] / total[2], rtol=1e-6)
  assert got["num_examples"] == sum(RAGGED_SIZES)
  has = ref[:, 2] > 0
  acc = ref[has, 1] / ref[has, 2]
  assert got["num_clients"] == has.sum()
  np.testing.assert_allclose(got["accuracy_mean"], acc.mean(), rtol=1e-6)
  np.testing.assert_allclose(got["accuracy_worst"], acc.min(), rtol=1e-6)
  for q in (10, 50, 90):
    np.testing.assert_allclose(got[f"accuracy_p{q}"], np.percentile(acc, q), rtol=1e-6)
  assert np.isnan(got["clients"]["accuracy"][1])  # the empty client
  np.testing.assert_allclose(np.asarray(got["clients"]["accuracy"])[has], acc, rtol=1e-6)


def test_sequence_metrics_mask_padding_tokens():
  vocab = 7
  model = models.CharLSTM(vocab, embed=3, hidden=5, layers=1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))
  rng = np.random.default_rng(0)
  clients = []
  for n in (2, 0, 3):
    x = rng.integers(1, vocab, (n, 6)).astype(np.int32)
    y = rng.integers(1, vocab, (n, 6)).astype(np.int32)
    if n:
      y[-1, 4:] = 0  # padded tail of the last snippet
    clients.append({"x": x, "y": y})
  metrics = models.sequence_metrics(model.apply)
  got = evaluation.build_evaluator(metrics, batch_size=2)(params, fl.from_clients(clients))
  ref = _reference(metrics, params, clients).sum(0)
  assert got["num_examples"] == ref[2] == 2 * 6 + 3 * 6 - 2 * 2
  np.testing.assert_allclose(got["accuracy"], ref[1] / ref[2], rtol=1e-6)
  # Token loss by hand for one sequence with padding.
  logits = model.apply(params, clients[0]["x"][1:2])[0]
  t = clients[0]["y"][1]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, t)
  loss_sum, _, count = metrics(params, {"x": clients[0]["x"][1:2], "y": clients[0]["y"][1:2]})
  np.testing.assert_allclose(loss_sum[0], float(ce[:4].sum()), rtol=1e-5)
  assert float(count[0]) == 4.0
  # The training loss ignores padding too: changing logits targets at padded
  # positions cannot matter because they are excluded.
  loss = models.sequence_loss(model.apply)
  np.testing.assert_allclose(loss(params, {"x": clients[0]["x"][1:2], "y": t[None]}),
                             float(ce[:4].mean()), rtol=1e-5)


def test_central_test_as_single_client():
  params, _ = MODELS["linear"]()
  model = models.LogisticRegression(3)
  metrics = models.classification_metrics(model.apply)
  c = make_clients((9,))[0]
  got = evaluation.build_evaluator(metrics)(params, evaluation.as_single_client(c))
  logits = model.apply(params, c["x"])
  np.testing.assert_allclose(got["accuracy"], np.mean(np.argmax(logits, -1) == c["y"]))
  assert got["num_clients"] == 1 and got["accuracy_worst"] == got["accuracy"]
