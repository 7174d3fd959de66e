"""DP-FTRL tree aggregation and banded MF (fedjax_lite.correlated) against NumPy references."""

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize, stats

import fedjax_lite as fl
from fedjax_lite import accounting
from fedjax_lite import correlated as co

pytest.importorskip("jax_privacy")


def _noise_rows(schedule, rounds, dim=40_000):
  like = {"w": jnp.zeros((dim,))}
  state = schedule.init(like, jax.random.key(0))
  step = jax.jit(schedule.next)
  rows = []
  for t in range(rounds):
    y, state = step(state, jax.random.key(100 + t), like)
    rows.append(np.asarray(y["w"], np.float64))
  return np.stack(rows)


def _prefix_nodes(b, r):
  """The tree nodes (tree, level, index) whose noises make round r's prefix noise Z."""
  tree, t = divmod(r, b)
  t += 1
  return [(tree, level, (t >> level) - 1) for level in range(t.bit_length()) if (t >> level) & 1]


def _tree_covariance(b, rounds):
  """Cov of the per-round tree noise, from the dyadic decomposition written out in NumPy."""
  nodes = sorted({n for r in range(rounds) for n in _prefix_nodes(b, r)})
  column = {n: i for i, n in enumerate(nodes)}
  m = np.zeros((rounds, len(nodes)))
  for r in range(rounds):
    m[r, [column[n] for n in _prefix_nodes(b, r)]] = 1
  before = np.array([m[r - 1] if r % b else np.zeros(len(nodes)) for r in range(rounds)])
  w = m - before  # w_r = Z_r - Z_{r-1}, Z restarting with each tree
  return w @ w.T, nodes


@pytest.mark.parametrize("b, rounds", [(8, 8), (4, 10)])
def test_tree_noise_covariance_equals_the_trees(b, rounds):
  got = _noise_rows(co.tree_schedule(b), rounds)
  want, _ = _tree_covariance(b, rounds)
  emp = got @ got.T / got.shape[1]
  # Each entry is a mean of 40,000 products: standard error < 0.03 for variances <= 4.
  np.testing.assert_allclose(emp, want, atol=0.08)


def test_banded_noise_covariance_is_c_inverse_c_inverse_transpose():
  rounds, bands = 10, 4
  coefs = co.optimal_banded_coefs(rounds, bands)
  got = _noise_rows(co.banded_schedule(coefs, 5), rounds)
  c = sum(np.diag(np.full(rounds - j, coefs[j]), -j) for j in range(bands))
  c_inv = np.linalg.inv(c)
  emp = got @ got.T / got.shape[1]
  np.testing.assert_allclose(emp, c_inv @ c_inv.T, atol=0.08)
  assert np.all(np.diff(coefs) <= 1e-7) and coefs[0] > 0
  assert np.linalg.norm(coefs) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("b, rounds", [(10, 100), (7, 30), (16, 16)])
def test_tree_epsilon_is_the_gaussian_of_the_nodes_a_client_is_in(b, rounds):
  # The accounted RDP is a * depth / (2 z^2) per tree; the mechanism run puts a
  # client in at most depth nodes per tree (counted here from the decomposition),
  # so it is a Gaussian mechanism at z / sqrt(total depth).
  z, delta = 1.3, 1e-5
  _, nodes = _tree_covariance(b, rounds)
  depth = 0
  for tree in range(-(-rounds // b)):
    size = min(b, rounds - tree * b)
    # Each leaf's nodes: those (of this tree, used by some prefix) whose interval holds it.
    most = max(sum(1 for (t_, lv, j) in nodes if t_ == tree and j * 2**lv <= leaf
                   < (j + 1) * 2**lv) for leaf in range(size))
    assert most <= size.bit_length()  # what dp-accounting assumes (ceil(log2(size + 1)))
    depth += size.bit_length()
  got = accounting.correlated_epsilon(accounting.CorrelatedSpec("tree", z, b), rounds, delta)
  acc = dp_accounting.rdp.RdpAccountant()
  acc.compose(dp_accounting.GaussianDpEvent(z / np.sqrt(depth)))
  assert got == pytest.approx(acc.get_epsilon(delta), rel=1e-9)


def _analytic_gaussian_epsilon(mu, delta):
  """Balle & Wang (2018): the exact epsilon of a Gaussian mechanism with mu = sensitivity/sigma."""
  def excess(eps):
    return (stats.norm.cdf(mu / 2 - eps / mu) - np.exp(eps) * stats.norm.cdf(-mu / 2 - eps / mu)
            - delta)
  return optimize.brentq(excess, 0.0, 500.0)


@pytest.mark.parametrize("rounds, bands, b", [(24, 4, 6), (20, 5, 5), (12, 1, 3)])
def test_bandmf_sensitivity_and_epsilon_against_dense_c_and_the_analytic_gaussian(rounds, bands,
                                                                                b):
  coefs = co.optimal_banded_coefs(rounds, bands)
  c = sum(np.diag(np.full(rounds - j, coefs[j]), -j) for j in range(bands))
  # A client's turns are rounds i, i + b, i + 2b, ...: the worst over its first turn i.
  want = max(np.linalg.norm(c[:, i::b].sum(axis=1)) for i in range(b))
  got = accounting.bandmf_sensitivity(coefs, b, rounds)
  assert got == pytest.approx(want, rel=1e-5)
  z, delta = 2.0, 1e-6
  spec = accounting.CorrelatedSpec("bandmf", z, b, tuple(coefs))
  exact = _analytic_gaussian_epsilon(want / z, delta)
  assert accounting.correlated_epsilon(spec, rounds, delta, "pld") == pytest.approx(exact, rel=2e-2)
  assert accounting.correlated_epsilon(spec, rounds, delta, "rdp") >= exact
  calibrated = accounting.calibrate_correlated(spec, rounds, 4.0, delta, "pld")
  at = accounting.CorrelatedSpec("bandmf", calibrated, b, tuple(coefs))
  assert accounting.correlated_epsilon(at, rounds, delta, "pld") == pytest.approx(4.0, rel=1e-2)


def test_cyclic_sampler_gives_each_client_one_turn_every_b_rounds():
  n, k = 23, 5
  sampler = co.cyclic_sampler(n, k, seed=3)
  b = co.num_groups(n, k)
  assert b == 4 and sampler.kind == "cyclic" and sampler.cohort_size == 6
  seen = {i: [] for i in range(n)}
  for r in range(12):
    ids, mask, overflow = sampler.sample(jax.random.key(r), r)
    assert not bool(overflow)
    for i in np.asarray(ids)[np.asarray(mask)]:
      seen[int(i)].append(r)
  assert all(len(rs) == 3 and np.all(np.diff(rs) == b) for rs in seen.values())


def test_a_correlated_run_trains_and_the_aggregator_adds_the_scheduled_noise():
  rng = np.random.default_rng(0)
  population = fl.from_clients([{"x": rng.normal(size=(6, 4)).astype(np.float32),
                                 "y": rng.integers(0, 3, 6).astype(np.int32)} for _ in range(12)])
  model = fl.models.LogisticRegression(3)
  params = model.init(jax.random.key(0), population.arrays["x"][0, :1])
  update = fl.build_client_update(fl.models.classification_loss(model.apply), optax.sgd(0.1),
                                  batch_size=3)
  sampler = co.cyclic_sampler(12, 4)
  for schedule in (co.tree_schedule(3), co.banded_schedule(co.optimal_banded_coefs(6, 3), 3)):
    agg = co.correlated_gaussian_aggregator(0.5, 0.7, 4, schedule, noise_seed=1)
    # The aggregator releases (sum + 0.7 * 0.5 * noise_t) / 4, noise_t the schedule's.
    state, mirror = agg.init(params), schedule.init(params, jax.random.key(1))
    total = jax.tree.map(lambda x: jnp.ones_like(x) * 3.0, params)
    finalize, follow = jax.jit(agg.finalize), jax.jit(schedule.next)
    for t in range(5):
      key = jax.random.key(10 + t)
      out, state, metrics = finalize(total, 4.0, {"participants": 4.0}, state, key)
      noise, mirror = follow(mirror, key, params)
      jax.tree.map(lambda o, n: np.testing.assert_allclose(o, (3.0 + 0.35 * n) / 4, rtol=1e-5,
                                                           atol=1e-6), out, noise)
      assert float(metrics["noise_std"]) == pytest.approx(0.35 / 4)
    algo = fl.build_federated_algorithm(update, fl.server.fedavg(), aggregator=agg)
    final, history = fl.run_rounds(algo, algo.init(params), population, num_rounds=6,
                                   sampler=sampler, key=jax.random.key(2), progress=False)
    assert all(h["num_clients"] == 4 for h in history)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(final.params))


def test_refusals():
  with pytest.raises(ValueError, match="exceed `group_rounds`"):
    co.banded_schedule(np.ones(5), 3)
  with pytest.raises(ValueError, match="pld"):
    accounting.make_correlated_accountant(accounting.CorrelatedSpec("tree", 1.0, 4), "pld")
  with pytest.raises(ValueError, match="cohort_size"):
    co.cyclic_sampler(3, 4)
