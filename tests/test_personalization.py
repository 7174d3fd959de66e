"""Fine-tuning evaluation and Ditto against plain per-client reference loops."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from fedjax_lite import models, personalization
from fedjax_lite.algorithms.ditto import ditto, evaluate_personal
from tests.conftest import RAGGED_SIZES, make_clients, mlp_model
from tests.reference import reference_order

TEST_SIZES = (3, 2, 0, 4, 1, 5, 2)  # client 1: no train data; client 2: no test data
APPLY = models.MLP((8,), 3).apply
METRICS = models.classification_metrics(APPLY)
BATCH = 4


def _forward(params, x):
  """The 6-8-3 MLP of ``mlp_model`` in float64 NumPy: (pre-activation, hidden, logits)."""
  layers = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  pre = x @ layers["Dense_0"]["kernel"] + layers["Dense_0"]["bias"]
  hidden = np.maximum(pre, 0.0)
  return pre, hidden, hidden @ layers["Dense_1"]["kernel"] + layers["Dense_1"]["bias"]


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def mlp_grad(params, batch):
  """Gradient of the mean softmax cross-entropy of the MLP, by hand in NumPy."""
  x, y = np.asarray(batch["x"], np.float64), batch["y"]
  pre, hidden, logits = _forward(params, x)
  d_logits = _softmax(logits)
  d_logits[np.arange(len(y)), y] -= 1.0
  d_logits /= len(y)
  w2 = np.asarray(params["params"]["Dense_1"]["kernel"], np.float64)
  d_pre = (d_logits @ w2.T) * (pre > 0)
  return {"params": {
      "Dense_0": {"kernel": x.T @ d_pre, "bias": d_pre.sum(0)},
      "Dense_1": {"kernel": hidden.T @ d_logits, "bias": d_logits.sum(0)},
  }}


def ref_sgd(start, arrays, key, *, lr, batch_size, num_epochs=None, max_steps=None, pull=None):
  """Plain minibatch SGD on unpadded arrays (float64); ``pull=(lam, w)`` adds ``lam (p - w)``."""
  n = len(arrays["y"])
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), start)
  steps = 0
  epochs = range(num_epochs) if num_epochs is not None else itertools.count()
  for e in epochs if n else ():
    order = reference_order(jax.random.fold_in(key, e), n)
    for s in range(0, n, batch_size):
      if max_steps is not None and steps == max_steps:
        return p
      idx = order[s:s + batch_size]
      g = mlp_grad(p, {k: v[idx] for k, v in arrays.items()})
      if pull is not None:
        lam, w = pull
        g = jax.tree.map(lambda g, p, w: g + lam * (p - np.asarray(w, np.float64)), g, p, w)
      p = jax.tree.map(lambda p, g: p - lr * g, p, g)
      steps += 1
  return p


def ref_metrics(params, arrays):
  """(loss_sum, correct, count) of one client, from the NumPy MLP."""
  if len(arrays["y"]) == 0:
    return 0.0, 0.0, 0.0
  logits = _forward(params, np.asarray(arrays["x"], np.float64))[2]
  ce = -np.log(_softmax(logits)[np.arange(len(logits)), arrays["y"]])
  return ce.sum(), float((logits.argmax(-1) == arrays["y"]).sum()), float(len(ce))


def check_summary(got, per_client):
  """Compares an evaluator summary with reference (loss_sum, correct, count) per client."""
  ref = np.asarray(per_client)
  total = ref.sum(0)
  np.testing.assert_allclose(got["loss"], total[0] / total[2], rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"], total[1] / total[2], rtol=1e-6)
  has = ref[:, 2] > 0
  assert got["num_clients"] == has.sum() and got["num_examples"] == total[2]
  acc, loss = ref[has, 1] / ref[has, 2], ref[has, 0] / ref[has, 2]
  np.testing.assert_allclose(np.asarray(got["clients"]["loss"])[has], loss, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got["clients"]["accuracy"])[has], acc, rtol=1e-6)
  assert np.all(np.isnan(np.asarray(got["clients"]["accuracy"])[~has]))
  np.testing.assert_allclose(got["accuracy_worst"], acc.min(), rtol=1e-6)
  np.testing.assert_allclose(got["accuracy_p50"], np.percentile(acc, 50), rtol=1e-6)


@pytest.mark.parametrize("num_epochs, num_steps", [(2, None), (None, 5)])
def test_fine_tune_matches_reference_loop(num_epochs, num_steps):
  train = make_clients(RAGGED_SIZES, seed=1)
  test = make_clients(TEST_SIZES, seed=2)
  params, loss = mlp_model()
  lr = 0.3
  evaluate = personalization.build_fine_tune_evaluator(
      loss, METRICS, optax.sgd(lr), batch_size=BATCH, num_epochs=num_epochs,
      num_steps=num_steps, eval_batch_size=3, client_chunk=3)
  key = jax.random.key(5)
  got = evaluate(params, fl.from_clients(train), fl.from_clients(test), key)

  before, after = [], []
  for cid, (tr, te) in enumerate(zip(train, test, strict=True)):
    tuned = ref_sgd(params, tr, jax.random.fold_in(key, cid), lr=lr, batch_size=BATCH,
                    num_epochs=num_epochs, max_steps=num_steps)
    before.append(ref_metrics(params, te))
    after.append(ref_metrics(tuned, te))
  check_summary(got, after)
  check_summary(got["before"], before)
  # Fine-tuning changed every client with train and test data...
  gain = np.asarray(got["clients"]["loss"]) - np.asarray(got["before"]["clients"]["loss"])
  tuned = (np.asarray(RAGGED_SIZES) > 0) & (np.asarray(TEST_SIZES) > 0)
  assert np.all(np.abs(gain[tuned]) > 1e-4)
  assert got["num_fine_tuned_clients"] == tuned.sum()
  # ...and the client without train data is evaluated with the global model.
  assert got["clients"]["loss"][1] == got["before"]["clients"]["loss"][1]


def test_fine_tune_rejects_mismatched_splits_and_bad_arguments():
  params, loss = mlp_model()
  evaluate = personalization.build_fine_tune_evaluator(loss, METRICS, optax.sgd(0.1),
                                                       batch_size=2, num_epochs=1)
  train = fl.from_clients(make_clients((2, 3, 1)))
  with pytest.raises(ValueError, match="client_ids"):
    evaluate(params, train, fl.from_clients(make_clients((1, 1, 1)), client_ids=[0, 2, 1]),
             jax.random.key(0))
  with pytest.raises(ValueError, match="same clients"):
    evaluate(params, train, fl.from_clients(make_clients((1, 1))), jax.random.key(0))
  with pytest.raises(ValueError, match="exactly one of `num_epochs` and `num_steps`"):
    personalization.build_fine_tune_evaluator(loss, METRICS, optax.sgd(0.1), batch_size=2)
  with pytest.raises(ValueError, match="exactly one"):
    personalization.build_fine_tune_evaluator(loss, METRICS, optax.sgd(0.1), batch_size=2,
                                              num_epochs=1, num_steps=2)
  with pytest.raises(TypeError, match="optimizer"):
    personalization.build_fine_tune_evaluator(loss, METRICS, 0.1, batch_size=2, num_epochs=1)


COHORTS = ([0, 2, 5], [5, 1, 3], [2, 6, 5])  # client 4 is never sampled; client 1 is empty


def test_ditto_matches_reference_loop():
  # Two personal epochs capped at 3 steps: clients with one batch per epoch
  # take 2 steps, larger ones 3.
  personal_epochs, personal_steps = 2, 3
  clients = make_clients(RAGGED_SIZES)
  params, loss = mlp_model()
  lr, plr, lam, epochs = 0.2, 0.15, 0.7, 1
  algo = fl.build_federated_algorithm(
      ditto(loss, client_lr=lr, personal_lr=plr, lam=lam, num_epochs=epochs, batch_size=BATCH,
            personal_epochs=personal_epochs, personal_steps=personal_steps), chunk_size=2)
  data = fl.from_clients(clients)
  state = algo.init(params, num_clients=len(clients))
  keys = [jax.random.key(40 + r) for r in range(3)]
  for key, cohort in zip(keys, COHORTS, strict=True):
    state, metrics = algo.round(state, data.take(jnp.asarray(cohort)), key)

  w = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  personal = [w] * len(clients)
  for key, cohort in zip(keys, COHORTS, strict=True):
    client_key, _ = jax.random.split(key)
    total, total_n = jax.tree.map(np.zeros_like, w), 0
    for cid in cohort:
      ck = jax.random.fold_in(client_key, cid)
      # Global part: FedAvg's local SGD from w, example-weighted mean delta.
      local = ref_sgd(w, clients[cid], ck, lr=lr, batch_size=BATCH, num_epochs=epochs)
      n = len(clients[cid]["y"])
      total = jax.tree.map(lambda t, a, b, n=n: t + n * (a - b), total, local, w)
      total_n += n
      personal[cid] = ref_sgd(personal[cid], clients[cid], jax.random.fold_in(ck, 2**31 - 1),
                              lr=plr, batch_size=BATCH, num_epochs=personal_epochs,
                              max_steps=personal_steps, pull=(lam, w))
    w = jax.tree.map(lambda w, t: w + t / total_n, w, total)

  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(w), strict=True):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-5)
  for cid in range(len(clients)):
    got = jax.tree.map(lambda x, i=cid: np.asarray(x[i]), state.client_states)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(personal[cid]), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # Never-sampled (4) and empty (1) clients keep the initial model exactly;
  # the others moved, and away from the global model.
  for cid in (1, 4):
    for a, b in zip(jax.tree.leaves(state.client_states), jax.tree.leaves(params), strict=True):
      np.testing.assert_array_equal(np.asarray(a[cid]), np.asarray(b))
  for cid in (0, 2, 3, 5, 6):
    moved = max(float(np.abs(np.asarray(a[cid]) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(state.client_states), jax.tree.leaves(w),
                                strict=True))
    assert moved > 1e-3
  # The last cohort: clients 2 (13 examples), 6 (3) and 5 (21).
  np.testing.assert_array_equal(metrics["clients"]["num_personal_steps"], [3, 2, 3])

  # Each client's personal model on its own test split.
  test = make_clients(TEST_SIZES, seed=3)
  evaluator = personalization.build_per_client_evaluator(METRICS, batch_size=2, client_chunk=3)
  order = [6, 0, 4, 2, 3]
  got = evaluate_personal(evaluator, state, fl.from_clients([test[c] for c in order],
                                                                  client_ids=order))
  check_summary(got, [ref_metrics(personal[c], test[c]) for c in order])


def test_ditto_bad_arguments():
  _, loss = mlp_model()
  common = dict(client_lr=0.1, personal_lr=0.1, num_epochs=1, batch_size=2)
  with pytest.raises(ValueError, match="`lam`"):
    ditto(loss, lam=-1.0, **common)
  with pytest.raises(ValueError, match="`personal_lr`"):
    ditto(loss, lam=0.1, **dict(common, personal_lr=0.0))
  algo = ditto(loss, lam=0.1, **common)
  with pytest.raises(ValueError, match="num_clients"):
    algo.init(mlp_model()[0])
  state = algo.init(mlp_model()[0], num_clients=2)
  evaluator = personalization.build_per_client_evaluator(METRICS)
  with pytest.raises(ValueError, match="client_ids"):
    evaluate_personal(evaluator, state, fl.from_clients(make_clients((1, 2, 3))))
