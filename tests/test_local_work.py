"""FedProx, heterogeneous local work (stragglers) and FedSGD against plain NumPy loops.

The references compute the linear model's cross-entropy gradient by hand in
NumPy and share with the library only the documented randomness conventions:
the per-epoch example order (tests.reference.reference_order) and the local
work draws from ``fold_in(client_key, 0x7F4C5700)`` (fedjax_lite.client).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_lite as fl
from fedjax_lite import client as fc
from fedjax_lite.algorithms.fedprox import build_fedprox_client_update, fedprox
from fedjax_lite.algorithms.fedsgd import build_fedsgd_client_update, fedsgd
from tests.conftest import MODELS, make_clients
from tests.reference import linear_softmax_grad as linear_grad
from tests.reference import reference_order

LR, EPOCHS, BATCH, MU = 0.1, 2, 4, 0.5
SIZES = (5, 0, 13, 1, 8, 21, 3, 20)
WORK_FOLD = 0x7F4C5700  # documented in fedjax_lite.client
TOL = 1e-5


# ----------------------------------------------------------------------------
# Plain references (shared with tests/test_fednova.py).


def tree(fn, *trees):
  return jax.tree.map(fn, *trees)


def np32(t):
  return tree(lambda x: np.asarray(x, np.float32), t)


def local_sgd(x, arrays, client_key, *, lr=LR, num_epochs=EPOCHS, batch_size=BATCH, mu=0.0,
              max_steps=None, momentum=0.0):
  """Local (momentum) SGD with the proximal term on unpadded arrays: (w, steps)."""
  n = len(arrays["y"])
  w, m, steps = np32(x), tree(np.zeros_like, np32(x)), 0
  for e in range(num_epochs):
    order = reference_order(jax.random.fold_in(client_key, e), n)
    for start in range(0, n, batch_size):
      if max_steps is not None and steps >= max_steps:
        break
      idx = order[start:start + batch_size]
      g = linear_grad(w, {k: v[idx] for k, v in arrays.items()})
      g = tree(lambda g, w, s: g + mu * (np.float64(w) - np.float64(s)), g, w, x)
      m = tree(lambda m, g: g + momentum * m, m, g)
      w = np32(tree(lambda w, m: w - lr * m, w, m))
      steps += 1
  return w, steps


def full_steps(n, num_epochs=EPOCHS, batch_size=BATCH):
  return num_epochs * math.ceil(n / batch_size)


def work_key(client_key):
  return jax.random.fold_in(client_key, WORK_FOLD)


def ref_budget(spec, client_key, n, num_epochs=EPOCHS, batch_size=BATCH):
  """(steps, straggler, dropped) of one client from the documented draws."""
  full = full_steps(n, num_epochs, batch_size)
  if n == 0:
    return 0, False, False
  kind, *args = spec
  wk = work_key(client_key)
  if kind == "fixed":
    return min(args[0], full), False, False
  if kind == "sampled":
    return min(int(jax.random.randint(wk, (), args[0], args[1] + 1)), full), False, False
  if kind == "per_example":
    return min(max(1, math.ceil(round(args[0] * n, 6))), full), False, False
  if kind == "fraction":
    return min(max(1, math.ceil(round(args[0] * full, 6))), full), False, False
  fraction, mode = args
  k_flag, k_steps = jax.random.split(wk)
  straggler = bool(jax.random.uniform(k_flag) < fraction)
  partial = int(jax.random.randint(k_steps, (), 1, full + 1))
  if not straggler:
    return full, False, False
  return (0, True, True) if mode == "drop" else (partial, True, False)


def make_spec(spec):
  kind, *args = spec
  if kind == "fixed":
    return fc.fixed(*args)
  if kind == "sampled":
    return fc.sampled(*args)
  if kind == "per_example":
    return fc.proportional(steps_per_example=args[0])
  if kind == "fraction":
    return fc.proportional(fraction=args[0])
  return fc.stragglers(*args)


def reference_fedprox(params, clients, ids, keys, *, mu=MU, spec=None, server_lr=1.0):
  """FedProx (or FedAvg for mu=0) rounds over one cohort; returns (params, dropped per round)."""
  x = np32(params)
  dropped_counts = []
  for key in keys:
    client_key, _ = jax.random.split(key)
    total, total_w, dropped_count = None, 0.0, 0
    for arrays, cid in zip(clients, ids, strict=True):
      n = len(arrays["y"])
      ck = jax.random.fold_in(client_key, cid)
      steps, _, dropped = (None, False, False) if spec is None else ref_budget(spec, ck, n)
      dropped_count += dropped
      if n == 0 or dropped:
        continue
      w, _ = local_sgd(x, arrays, ck, mu=mu, max_steps=steps)
      d = tree(lambda a, b: n * (np.float64(a) - np.float64(b)), w, x)
      total = d if total is None else tree(np.add, total, d)
      total_w += n
    x = np32(tree(lambda p, t: p + server_lr * t / total_w, x, total))
    dropped_counts.append(dropped_count)
  return x, dropped_counts


def assert_close(a, b, tol=TOL):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=tol, rtol=tol)


@pytest.fixture(scope="module")
def setup():
  clients = make_clients(SIZES, seed=7)
  params, loss = MODELS["linear"]()
  return clients, fl.from_clients(clients), params, loss


KEYS = tuple(jax.random.key(40 + r) for r in range(3))


def run(algo, params, cohort, keys):
  state = algo.init(params)
  history = []
  for key in keys:
    state, metrics = algo.round(state, cohort, key)
    history.append(metrics)
  return state, history


# ----------------------------------------------------------------------------
# FedProx.


@pytest.mark.parametrize("spec", [None, ("stragglers", 0.5, "drop")], ids=["full", "drop"])
def test_fedprox_matches_reference(setup, spec):
  clients, cohort, params, loss = setup
  work = None if spec is None else make_spec(spec)
  algo = fl.build_federated_algorithm(
      fedprox(loss, client_lr=LR, num_epochs=EPOCHS, batch_size=BATCH, mu=MU, local_work=work,
              server_optimizer=fl.server.fedavg(0.9)), chunk_size=3)
  state, history = run(algo, params, cohort, KEYS)
  expected, dropped = reference_fedprox(params, clients, range(len(SIZES)), KEYS, spec=spec,
                                        server_lr=0.9)
  assert_close(state.params, expected)
  got_dropped = [float(m["num_dropped_stragglers"]) for m in history] if spec else [0, 0, 0]
  assert got_dropped == dropped
  if spec is not None and spec[2] == "drop":
    assert sum(dropped) > 0  # the keys do draw stragglers
    for m, d in zip(history, dropped, strict=True):
      assert float(m["num_clients"]) == sum(n > 0 for n in SIZES) - d


def test_fedprox_mu_zero_is_fedavg_exactly(setup):
  _, cohort, params, loss = setup
  prox = fedprox(loss, client_lr=LR, num_epochs=EPOCHS, batch_size=BATCH, mu=0.0)
  avg = fl.build_federated_algorithm(
      fl.build_client_update(loss, optax.sgd(LR), num_epochs=EPOCHS, batch_size=BATCH),
      fl.server.fedavg())
  a, _ = run(prox, params, cohort, KEYS[:1])
  b, _ = run(avg, params, cohort, KEYS[:1])
  for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
    np.testing.assert_array_equal(u, v)


def test_proximal_term_pulls_towards_server_and_mu_can_be_traced(setup):
  """A traced mu (as in run_sweep) equals Python mus; a larger mu gives a smaller delta."""
  clients, cohort, params, loss = setup
  one = jax.tree.map(lambda x: x[5], cohort)  # 21 examples
  key = jax.random.key(3)
  sgd = optax.sgd(LR)

  def delta(mu):
    update = fl.build_client_update(loss, sgd, num_epochs=EPOCHS, batch_size=BATCH,
                                    proximal_mu=mu)
    return update(params, one, key).delta

  mus = jnp.array([0.0, 1.0, 5.0])
  swept = jax.jit(jax.vmap(delta))(mus)
  norms = []
  for i, mu in enumerate([0.0, 1.0, 5.0]):
    ref, _ = local_sgd(params, clients[5], jax.random.fold_in(key, 5), mu=mu)
    assert_close(tree(lambda d: d[i], swept), tree(np.subtract, ref, np32(params)))
    norms.append(math.sqrt(sum(float(np.sum(np.asarray(d[i]) ** 2))
                               for d in jax.tree.leaves(swept))))
  assert norms[0] > norms[1] > norms[2] > 0


# ----------------------------------------------------------------------------
# Local work.


@pytest.mark.parametrize("spec", [("fixed", 3), ("sampled", 2, 6), ("per_example", 0.25),
                                  ("fraction", 0.3), ("stragglers", 0.5, "partial")],
                         ids=["fixed", "sampled", "per_example", "fraction", "stragglers"])
def test_local_work_budgets_and_truncated_deltas(setup, spec):
  clients, cohort, params, loss = setup
  update = fl.build_client_update(loss, optax.sgd(LR), num_epochs=EPOCHS, batch_size=BATCH,
                                  local_work=make_spec(spec))
  key = jax.random.key(17)
  out = jax.jit(jax.vmap(update, in_axes=(None, 0, None)))(params, cohort, key)
  expected_steps = []
  for cid, arrays in enumerate(clients):
    n = len(arrays["y"])
    ck = jax.random.fold_in(key, cid)
    steps, _, _ = ref_budget(spec, ck, n)
    expected_steps.append(steps)
    w, taken = local_sgd(params, arrays, ck, max_steps=steps)
    assert taken == steps
    assert_close(tree(lambda d, cid=cid: d[cid], out.delta), tree(np.subtract, w, np32(params)))
  np.testing.assert_array_equal(out.counts["num_steps"], expected_steps)
  np.testing.assert_array_equal(out.weight, [float(n) for n in SIZES])
  # Heterogeneous and truncated: some client does less than its full work.
  assert any(s < full_steps(n) for s, n in zip(expected_steps, SIZES, strict=True))
  if spec[0] == "fraction":  # 0.3 * 10 full steps is 3, not 4
    assert expected_steps[SIZES.index(20)] == 3
  if spec[0] == "per_example":  # 0.25 * 8 examples is 2 steps
    assert expected_steps[SIZES.index(8)] == 2


def test_stragglers_drop_and_partial_draw_the_same_clients(setup):
  clients, cohort, params, loss = setup
  key = jax.random.key(5)
  outs = {}
  for mode in ("drop", "partial"):
    update = fl.build_client_update(loss, optax.sgd(LR), num_epochs=EPOCHS, batch_size=BATCH,
                                    local_work=fc.stragglers(0.5, mode))
    outs[mode] = jax.jit(jax.vmap(update, in_axes=(None, 0, None)))(params, cohort, key)
  drawn = [ref_budget(("stragglers", 0.5, "partial"), jax.random.fold_in(key, cid), n)
           for cid, n in enumerate(SIZES)]
  straggler = np.array([s for _, s, _ in drawn])
  assert 0 < straggler.sum() < sum(n > 0 for n in SIZES)  # both kinds occur
  n = np.array(SIZES, np.float32)
  drop, partial = outs["drop"], outs["partial"]
  np.testing.assert_array_equal(drop.weight, np.where(straggler, 0.0, n))
  np.testing.assert_array_equal(drop.counts["num_dropped_stragglers"], straggler)
  np.testing.assert_array_equal(drop.counts["num_stragglers"], straggler)
  np.testing.assert_array_equal(drop.counts["num_examples"], np.where(straggler, 0.0, n))
  np.testing.assert_array_equal(drop.counts["num_steps"],
                                [0 if s else full_steps(k) for k, s in zip(SIZES, straggler,
                                                                           strict=True)])
  np.testing.assert_array_equal(partial.weight, n)
  np.testing.assert_array_equal(partial.counts["num_stragglers"], straggler)
  np.testing.assert_array_equal(partial.counts["num_dropped_stragglers"], 0.0)
  np.testing.assert_array_equal(partial.counts["num_steps"], [s for s, _, _ in drawn])
  for d_drop, d_partial in zip(jax.tree.leaves(drop.delta), jax.tree.leaves(partial.delta),
                               strict=True):
    d_drop, d_partial = np.asarray(d_drop), np.asarray(d_partial)
    for cid in range(len(SIZES)):
      if straggler[cid]:
        assert not d_drop[cid].any() and d_partial[cid].any()
      else:  # non-stragglers do their full work in both modes
        np.testing.assert_array_equal(d_drop[cid], d_partial[cid])


def test_stragglers_in_whole_epochs(setup):
  _, cohort, params, loss = setup
  key = jax.random.key(8)
  update = fl.build_client_update(loss, optax.sgd(LR), num_epochs=3, batch_size=BATCH,
                                  local_work=fc.stragglers(1.0, "partial", unit="epochs"))
  out = jax.jit(jax.vmap(update, in_axes=(None, 0, None)))(params, cohort, key)
  np.testing.assert_array_equal(out.counts["num_stragglers"], [float(n > 0) for n in SIZES])
  expected = []
  for cid, n in enumerate(SIZES):
    _, k_steps = jax.random.split(work_key(jax.random.fold_in(key, cid)))
    epochs = int(jax.random.randint(k_steps, (), 1, 4)) if n else 0
    expected.append(epochs * math.ceil(n / BATCH))
  np.testing.assert_array_equal(out.counts["num_steps"], expected)
  assert len({s // max(math.ceil(n / BATCH), 1) for s, n in zip(expected, SIZES, strict=True)
              if n}) > 1  # clients drew different numbers of epochs


def test_results_do_not_depend_on_chunking_or_cohort_order(setup):
  _, cohort, params, loss = setup
  work = fc.stragglers(0.5, "partial")
  kw = dict(client_lr=LR, num_epochs=EPOCHS, batch_size=BATCH, mu=0.1, local_work=work)
  perm = np.array([6, 2, 7, 0, 4, 1, 5, 3])
  shuffled = jax.tree.map(lambda x: np.asarray(x)[perm], cohort)
  key = jax.random.key(21)
  base, m_base = fl.build_federated_algorithm(fedprox(loss, **kw), chunk_size=None).round(
      fedprox(loss, **kw).init(params), cohort, key)
  algo2 = fl.build_federated_algorithm(fedprox(loss, **kw), chunk_size=2)
  for data, order in [(cohort, np.arange(8)), (shuffled, perm)]:
    state, m = algo2.round(algo2.init(params), data, key)
    assert_close(state.params, base.params, 1e-6)
    for name in ("num_steps", "num_stragglers", "train_loss"):
      np.testing.assert_allclose(m["clients"][name], np.asarray(m_base["clients"][name])[order],
                                 rtol=1e-6)
  assert float(m_base["num_stragglers"]) > 0


# ----------------------------------------------------------------------------
# FedSGD.


def test_fedsgd_is_centralized_full_batch_gradient_descent(setup):
  clients, cohort, params, loss = setup
  eta = 0.7
  algo = fl.build_federated_algorithm(fedsgd(loss, learning_rate=eta), chunk_size=3)
  state, history = run(algo, params, cohort, KEYS)
  union = {k: np.concatenate([c[k] for c in clients]) for k in ("x", "y")}
  x = tree(np.float64, params)
  for _ in KEYS:
    x = tree(lambda p, g: p - eta * g, x, linear_grad(x, union))
  assert_close(state.params, x)
  assert float(history[0]["num_steps"]) == sum(n > 0 for n in SIZES)
  np.testing.assert_allclose(history[0]["train_loss"], loss(params, union), rtol=1e-5)


def test_fedsgd_client_update_grad_modes(setup):
  clients, cohort, _, _ = setup
  _, loss = MODELS["mlp"]()
  mlp_params, _ = MODELS["mlp"]()
  one = jax.tree.map(lambda x: x[2], cohort)
  expected = jax.grad(loss)(mlp_params, clients[2])
  for mode in ("batch", "per_example"):
    update = jax.jit(build_fedsgd_client_update(loss, grad_mode=mode))
    out = update(mlp_params, one, jax.random.key(0))
    assert_close(out.delta, tree(np.negative, expected))
    assert float(out.weight) == SIZES[2]
  empty = jax.tree.map(lambda x: x[1], cohort)
  out = update(mlp_params, empty, jax.random.key(0))
  assert all(not np.asarray(d).any() for d in jax.tree.leaves(out.delta))
  assert float(out.weight) == 0.0 and float(out.counts["num_steps"]) == 0.0


# ----------------------------------------------------------------------------
# Bad arguments.


def _loss(p, b):
  return jnp.float32(0.0)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: fedprox(_loss, client_lr=0.1, num_epochs=1, batch_size=2, mu=-0.1), ValueError,
     "`mu` must be >= 0; got -0.1"),
    (lambda: fl.build_client_update(_loss, optax.sgd(0.1), batch_size=2, proximal_mu=-1.0),
     ValueError, "`proximal_mu` must be >= 0"),
    (lambda: fedprox(_loss, num_epochs=1, batch_size=2, mu=0.1), ValueError,
     "exactly one of `client_lr`"),
    (lambda: fedprox(_loss, client_lr=0.1, client_optimizer=optax.sgd(0.1), num_epochs=1,
                     batch_size=2, mu=0.1), ValueError, "exactly one of `client_lr`"),
    (lambda: fedprox(_loss, client_lr=-0.1, num_epochs=1, batch_size=2, mu=0.1), ValueError,
     "`client_lr` must be > 0; got -0.1"),
    (lambda: fc.stragglers(1.5), ValueError, "`fraction` must be in"),
    (lambda: fc.stragglers(-0.1), ValueError, "`fraction` must be in"),
    (lambda: fc.stragglers(0.5, mode="skip"), ValueError, "`mode` must be one of"),
    (lambda: fc.stragglers(0.5, unit="minutes"), ValueError, "`unit` must be one of"),
    (lambda: fc.fixed(0), ValueError, "`steps` must be >= 1"),
    (lambda: fc.sampled(3, 2), ValueError, "`max_steps` must be >= 3"),
    (lambda: fc.sampled(0, 2), ValueError, "`min_steps` must be >= 1"),
    (lambda: fc.proportional(), ValueError, "exactly one of `steps_per_example`"),
    (lambda: fc.proportional(fraction=0.0), ValueError, "`fraction` must be in"),
    (lambda: fc.proportional(steps_per_example=-1.0), ValueError, "`steps_per_example`"),
    (lambda: fl.build_client_update(_loss, optax.sgd(0.1), batch_size=2, local_work=3),
     TypeError, "`local_work` must be None or"),
    (lambda: fedsgd(_loss), ValueError, "exactly one of `learning_rate`"),
    (lambda: fedsgd(_loss, learning_rate=0.0), ValueError, "`learning_rate` must be > 0"),
    (lambda: build_fedprox_client_update(_loss, mu="big", client_lr=0.1, num_epochs=1,
                                         batch_size=2), TypeError, "`mu` must be a number"),
])
def test_bad_arguments(make, exc, match):
  with pytest.raises(exc, match=match):
    make()
