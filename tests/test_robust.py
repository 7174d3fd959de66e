"""Robust aggregators (fedjax_lite.robust) and attack simulators (fedjax_lite.attacks).

Every aggregator's ``combine`` is checked against a NumPy reference that sees
only the present clients (weight > 0); absent clients hold NaN garbage, which
must never leak into the result.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedjax_lite as fl
from fedjax_lite import attacks, robust
from tests.conftest import make_clients

KEY = jax.random.key(0)

# (K, present pattern) cases: odd/even counts, none, one, two, all. Most share
# K = 9 so that each jitted combine compiles once.
def _patterns():
  rng = np.random.default_rng(123)
  cases = [(1, [1]), (1, [0]), (4, [0, 1, 1, 0])]
  for m in (0, 1, 2, 3, 4, 5, 6, 8, 9):
    present = np.zeros(9, int)
    present[rng.choice(9, m, replace=False)] = 1
    cases.append((9, present.tolist()))
  return cases


PRESENCE = _patterns()
PRESENCE_9 = [c for c in PRESENCE if c[0] == 9]


def _stacked(k, present, seed=0):
  """Random pytree deltas [K, ...] with NaN in absent slots, and weights float[K]."""
  rng = np.random.default_rng(seed)
  present = np.asarray(present, bool)
  deltas = {"w": rng.standard_normal((k, 3, 2)), "b": rng.standard_normal((k, 4))}
  for x in deltas.values():
    x[~present] = np.nan
  # Present clients get varied positive weights (must not matter), absent 0.
  weights = np.where(present, rng.integers(1, 20, k), 0).astype(np.float32)
  return jax.tree.map(lambda x: x.astype(np.float32), deltas), weights


def _present_only(deltas, weights):
  keep = np.asarray(weights) > 0
  return jax.tree.map(lambda x: np.asarray(x, np.float64)[keep], deltas)


@functools.cache
def _jitted_combine(name, *args):
  builder = getattr(robust, name)
  agg = builder(*args)
  return jax.jit(lambda d, w: agg.combine(d, w, (), (), KEY))


def _median_reference(x):
  return np.zeros(x.shape[1:]) if len(x) == 0 else np.median(x, axis=0)


def _trimmed_reference(x, beta):
  m = len(x)
  if m == 0:
    return np.zeros(x.shape[1:])
  b = math.floor(beta * m)
  return np.sort(x, axis=0)[b:m - b].mean(axis=0)


def _krum_reference(present_tree, f, multi):
  """Returns (aggregate tree, selected positions among the present clients)."""
  leaves = jax.tree.leaves(present_tree)
  m = leaves[0].shape[0]
  if m == 0:
    return jax.tree.map(lambda x: np.zeros(x.shape[1:]), present_tree), []
  flat = np.concatenate([x.reshape(m, -1) for x in leaves], axis=1)
  scores = []
  for i in range(m):
    dists = sorted(float(np.sum((flat[i] - flat[j]) ** 2)) for j in range(m) if j != i)
    n = min(max(m - f - 2, 1), m - 1)
    scores.append(sum(dists[:n]))
  chosen = sorted(np.argsort(scores, kind="stable")[:min(multi, m)].tolist())
  return jax.tree.map(lambda x: x[chosen].mean(axis=0), present_tree), chosen


def _assert_tree_close(actual, expected, atol=1e-5):
  jax.tree.map(lambda a, e: np.testing.assert_allclose(np.asarray(a), e, rtol=1e-5, atol=atol),
               actual, expected)


# --------------------------------------------------------------------------
# Coordinate median


@pytest.mark.parametrize("k,present", PRESENCE)
def test_median_matches_numpy_on_present_clients(k, present):
  deltas, weights = _stacked(k, present)
  out, _, metrics = _jitted_combine("coordinate_median")(deltas, weights)
  expected = jax.tree.map(_median_reference, _present_only(deltas, weights))
  _assert_tree_close(out, expected)
  assert float(metrics["num_present"]) == sum(present)


@pytest.mark.parametrize("values,expected", [([1.0, 5.0, 3.0], 3.0),
                                             ([1.0, 5.0, 3.0, 10.0], 4.0),
                                             ([-2.0, 7.0], 2.5)])
def test_median_odd_and_even_counts(values, expected):
  k = len(values) + 2
  x = np.full((k, 1), np.nan, np.float32)
  x[1:1 + len(values), 0] = values  # absent clients on both sides
  weights = np.zeros(k, np.float32)
  weights[1:1 + len(values)] = 1.0
  out, _, _ = robust.coordinate_median().combine({"x": x}, weights, (), (), KEY)
  assert float(out["x"][0]) == expected


# --------------------------------------------------------------------------
# Trimmed mean


@pytest.mark.parametrize("beta", [0.1, 0.2, 0.3, 0.45])
@pytest.mark.parametrize("k,present", PRESENCE_9)
def test_trimmed_mean_matches_numpy_on_present_clients(k, present, beta):
  deltas, weights = _stacked(k, present, seed=1)
  out, _, metrics = _jitted_combine("trimmed_mean", beta)(deltas, weights)
  expected = jax.tree.map(lambda x: _trimmed_reference(x, beta), _present_only(deltas, weights))
  _assert_tree_close(out, expected)
  assert float(metrics["num_trimmed"]) == 2 * math.floor(beta * sum(present))


@pytest.mark.parametrize("k,present", PRESENCE_9)
def test_trimmed_mean_zero_is_uniform_mean_of_present(k, present):
  deltas, weights = _stacked(k, present, seed=2)
  out, _, _ = _jitted_combine("trimmed_mean", 0.0)(deltas, weights)
  expected = jax.tree.map(
      lambda x: x.mean(axis=0) if len(x) else np.zeros(x.shape[1:]),
      _present_only(deltas, weights))
  _assert_tree_close(out, expected)


def test_trimmed_mean_exact_trim_counts():
  # beta * m exactly an integer in decimal: floor must not lose one to float rounding.
  m = 10
  x = np.arange(m, dtype=np.float32)[:, None] ** 2
  out, _, metrics = robust.trimmed_mean(0.3).combine({"x": x}, np.ones(m, np.float32), (), (),
                                                     KEY)
  assert float(metrics["num_trimmed"]) == 6
  np.testing.assert_allclose(float(out["x"][0]), np.mean(np.arange(3, 7) ** 2), rtol=1e-6)


# --------------------------------------------------------------------------
# Krum


@pytest.mark.parametrize("f,multi", [(0, 1), (1, 2), (2, 3), (1, 20)])
@pytest.mark.parametrize("k,present", PRESENCE_9)
def test_krum_matches_numpy_on_present_clients(k, present, f, multi):
  deltas, weights = _stacked(k, present, seed=3)
  out, _, metrics = _jitted_combine("krum", f, multi)(deltas, weights)
  expected, chosen = _krum_reference(_present_only(deltas, weights), f, multi)
  _assert_tree_close(out, expected)
  positions = np.flatnonzero(weights > 0)[chosen]
  assert isinstance(metrics["selected"], fl.aggregation.PerClient)  # declared, not inferred
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(metrics["selected"].value)), positions)
  assert float(metrics["num_selected"]) == len(chosen)


def test_krum_picks_an_honest_client_when_outliers_are_far():
  rng = np.random.default_rng(4)
  k, f = 9, 3
  honest = 1.0 + 0.1 * rng.standard_normal((k - f, 5))
  outliers = 100.0 + 10.0 * rng.standard_normal((f, 5))
  x = np.concatenate([outliers[:2], honest, outliers[2:]]).astype(np.float32)
  is_honest = np.array([False] * 2 + [True] * (k - f) + [False])
  for multi in (1, 4):
    out, _, metrics = _jitted_combine("krum", f, multi)({"x": x}, np.ones(k, np.float32))
    selected = np.asarray(metrics["selected"].value) > 0
    assert selected.sum() == multi and np.all(is_honest[selected])
    assert np.max(np.abs(np.asarray(out["x"]) - 1.0)) < 0.5


# --------------------------------------------------------------------------
# Order invariance


@pytest.mark.parametrize("name,args", [("coordinate_median", ()), ("trimmed_mean", (0.2,)),
                                       ("krum", (1, 2))])
def test_invariant_to_client_order(name, args):
  deltas, weights = _stacked(9, PRESENCE_9[-2][1], seed=5)
  perm = np.random.default_rng(6).permutation(9)
  combine = _jitted_combine(name, *args)
  out, _, metrics = combine(deltas, weights)
  out_p, _, metrics_p = combine(jax.tree.map(lambda x: x[perm], deltas), weights[perm])
  _assert_tree_close(out_p, jax.tree.map(np.asarray, out), atol=1e-6)
  if "selected" in metrics:
    np.testing.assert_array_equal(np.asarray(metrics_p["selected"].value),
                                  np.asarray(metrics["selected"].value)[perm])


def test_combine_under_vmap_and_traced_beta():
  # Two experiments (e.g. a sweep) with different presence, vmapped; and a traced beta.
  (_, p0), (_, p1) = PRESENCE_9[3], PRESENCE_9[6]
  d0, w0 = _stacked(9, p0, seed=12)
  d1, w1 = _stacked(9, p1, seed=13)
  deltas = jax.tree.map(lambda a, b: np.stack([a, b]), d0, d1)
  weights = np.stack([w0, w1])
  for name, args in (("coordinate_median", ()), ("krum", (1, 2))):
    agg = getattr(robust, name)(*args)
    out, _, _ = jax.jit(jax.vmap(lambda d, w: agg.combine(d, w, (), (), KEY)))(  # noqa: B023
        deltas, weights)
    for i, (d, w) in enumerate([(d0, w0), (d1, w1)]):
      single, _, _ = _jitted_combine(name, *args)(d, w)
      _assert_tree_close(jax.tree.map(lambda x: x[i], out),  # noqa: B023
                         jax.tree.map(np.asarray, single), atol=1e-6)
  betas = np.array([0.1, 0.3], np.float32)
  out, _, metrics = jax.jit(jax.vmap(
      lambda beta, d, w: robust.trimmed_mean(beta).combine(d, w, (), (), KEY)))(
          betas, deltas, weights)
  for i, (d, w) in enumerate([(d0, w0), (d1, w1)]):
    expected = jax.tree.map(lambda x: _trimmed_reference(x, float(betas[i])),  # noqa: B023
                            _present_only(d, w))
    _assert_tree_close(jax.tree.map(lambda x: x[i], out), expected)  # noqa: B023


# --------------------------------------------------------------------------
# Norm bounding


def _clip_reference(tree, max_norm):
  norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))
  scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
  return jax.tree.map(lambda x: np.asarray(x, np.float64) * scale, tree), norm > max_norm


def test_norm_bounding_mean_streams_like_numpy():
  k, max_norm = 6, 2.5
  rng = np.random.default_rng(7)
  deltas = {"w": rng.standard_normal((k, 3, 2)).astype(np.float32),
            "b": rng.standard_normal((k, 4)).astype(np.float32)}
  deltas["w"][2] *= 0.1  # some clients stay within the bound
  deltas["b"][2] *= 0.1
  deltas["w"][4] *= 0.1
  deltas["b"][4] *= 0.1
  weights = np.array([3, 0, 5, 2, 7, 1], np.float32)
  agg = robust.norm_bounding(max_norm=max_norm)
  assert agg.combine is None  # streaming, like its inner mean

  @jax.jit
  def run(deltas, weights):
    state = agg.init(jax.tree.map(lambda x: x[0], deltas))
    d, w, stats = jax.vmap(agg.per_client, in_axes=(0, 0, None, 0))(
        deltas, weights, state, jax.random.split(KEY, k))
    stats = jax.tree.map(lambda x: jnp.sum(x, 0), stats)
    return agg.finalize(fl.weighted_sum(d, w), jnp.sum(w), stats, state, KEY)

  out, _, metrics = run(deltas, weights)
  total, clipped = jax.tree.map(lambda x: np.zeros(x.shape[1:]), deltas), 0
  for i in range(k):
    c, was = _clip_reference(jax.tree.map(lambda x: x[i], deltas), max_norm)  # noqa: B023
    total = jax.tree.map(lambda t, x: t + weights[i] * x, total, c)  # noqa: B023
    clipped += int(was and weights[i] > 0)
  _assert_tree_close(out, jax.tree.map(lambda t: t / weights.sum(), total))
  assert float(metrics["num_clipped"]) == clipped and 0 < clipped < 5
  assert float(metrics["total_weight"]) == weights.sum()


def test_norm_bounding_wraps_a_combine_aggregator():
  k, max_norm = 7, 1.0
  deltas, weights = _stacked(k, [0, 1, 1, 0, 1, 1, 1], seed=8)
  agg = robust.norm_bounding(robust.coordinate_median(), max_norm=max_norm)
  assert agg.combine is not None

  @jax.jit
  def run(deltas, weights):
    present = weights > 0
    zeroed = jax.tree.map(lambda x: jnp.where(present.reshape((-1,) + (1,) * (x.ndim - 1)), x,
                                              0.0), deltas)  # as the round hands them over
    d, w, stats = jax.vmap(agg.per_client, in_axes=(0, 0, None, 0))(
        zeroed, weights, (), jax.random.split(KEY, k))
    return agg.combine(d, w, jax.tree.map(lambda x: jnp.sum(x, 0), stats), (), KEY)

  out, _, metrics = run(deltas, weights)
  present = _present_only(deltas, weights)
  m = len(present["b"])
  clipped = [_clip_reference(jax.tree.map(lambda x: x[i], present), max_norm)  # noqa: B023
             for i in range(m)]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *[c for c, _ in clipped])
  _assert_tree_close(out, jax.tree.map(_median_reference, stacked))
  assert float(metrics["num_clipped"]) == sum(was for _, was in clipped)
  assert float(metrics["num_present"]) == m


# --------------------------------------------------------------------------
# Bad arguments


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="beta"):
    robust.trimmed_mean(0.5)
  with pytest.raises(ValueError, match="beta"):
    robust.trimmed_mean(-0.1)
  with pytest.raises(ValueError, match="num_byzantine"):
    robust.krum(-1)
  with pytest.raises(TypeError, match="num_byzantine"):
    robust.krum(1.5)
  with pytest.raises(ValueError, match="multi"):
    robust.krum(1, multi=0)
  with pytest.raises(ValueError, match="max_norm"):
    robust.norm_bounding(max_norm=0.0)
  with pytest.raises(TypeError, match="inner"):
    robust.norm_bounding("mean", max_norm=1.0)
  with pytest.raises(TypeError, match="combine"):
    robust.coordinate_median().finalize({}, 0.0, (), (), KEY)
  with pytest.raises(ValueError, match="fraction"):
    attacks.sign_flip(lambda p, d, k: None, fraction=1.5)
  with pytest.raises(ValueError, match="std"):
    attacks.gaussian_noise(lambda p, d, k: None, fraction=0.5, std=-1.0)
  with pytest.raises(TypeError, match="client_update"):
    attacks.scaled(None, fraction=0.5, factor=2.0)


# --------------------------------------------------------------------------
# Attacks


def _toy_update(server_params, data, key):
  """Delta = mean of the client's x (+ server params), weight = n."""
  del key
  n = data.num_examples
  mask = fl.example_mask(n, data.arrays["x"].shape[0])
  mean_x = jnp.sum(jnp.where(mask[:, None], data.arrays["x"], 0.0), 0) / jnp.maximum(n, 1)
  nf = n.astype(jnp.float32)
  return fl.ClientOutput({"v": mean_x + server_params["v"]}, nf, {}, counts={"num_examples": nf})


SIZES = (5, 0, 4, 1, 8, 6, 3, 7, 2, 9, 4, 5)


def _reference_malicious(ids, fraction, seed):
  base = jax.random.key(seed)
  return np.array([float(jax.random.uniform(jax.random.fold_in(base, np.int32(i)))) < fraction
                   for i in ids])


def test_is_malicious_follows_its_definition():
  ids = np.arange(-1, 40)
  for fraction, seed in [(0.3, 0), (0.5, 7)]:
    np.testing.assert_array_equal(np.asarray(attacks.is_malicious(ids, fraction, seed)),
                                  _reference_malicious(ids, fraction, seed))
  assert not np.any(np.asarray(attacks.is_malicious(ids, 0.0)))
  assert np.all(np.asarray(attacks.is_malicious(ids, 1.0)))
  grid = attacks.is_malicious(ids.reshape(1, -1), 0.3)
  assert grid.shape == (1, len(ids))


@pytest.mark.parametrize("attack", ["sign_flip", "scaled"])
def test_attack_corrupts_exactly_the_malicious_clients_in_any_order(attack):
  fraction, seed = 0.4, 3
  pop = fl.from_clients(make_clients(SIZES, num_features=4), max_examples=9)
  params = {"v": jnp.full((4,), 0.5)}
  if attack == "sign_flip":
    wrapped, factor = attacks.sign_flip(_toy_update, fraction, seed=seed, scale=3.0), -3.0
  else:
    wrapped, factor = attacks.scaled(_toy_update, fraction, factor=5.0, seed=seed), 5.0
  honest_fn = jax.jit(jax.vmap(_toy_update, in_axes=(None, 0, None)))
  attacked_fn = jax.jit(jax.vmap(wrapped, in_axes=(None, 0, None)))
  bad = _reference_malicious(np.arange(len(SIZES)), fraction, seed) & (np.array(SIZES) > 0)
  assert 0 < bad.sum() < len(SIZES)
  for perm in (np.arange(len(SIZES)), np.random.default_rng(9).permutation(len(SIZES))):
    cohort = fl.take(pop, jnp.asarray(perm))
    honest = honest_fn(params, cohort, KEY)
    out = attacked_fn(params, cohort, KEY)
    expected = np.where(bad[perm][:, None], factor, 1.0) * np.asarray(honest.delta["v"])
    np.testing.assert_allclose(np.asarray(out.delta["v"]), expected, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.counts["num_malicious"]), bad[perm])
    np.testing.assert_array_equal(np.asarray(out.weight), np.asarray(honest.weight))


def test_gaussian_noise_replaces_malicious_deltas_independently_of_order():
  fraction, std = 0.5, 2.0
  sizes = (3, 0, 2, 4, 1, 5, 2, 3)
  pop = fl.from_clients(make_clients(sizes, num_features=4), max_examples=5)
  dim = 2000
  params = {"v": jnp.zeros((4,)), "big": jnp.zeros((dim,))}

  def update(server_params, data, key):
    out = _toy_update({"v": server_params["v"]}, data, key)
    return out._replace(delta=dict(out.delta, big=jnp.zeros((dim,))))

  fn = jax.jit(jax.vmap(attacks.gaussian_noise(update, fraction, std, seed=1),
                        in_axes=(None, 0, None)))
  bad = _reference_malicious(np.arange(len(sizes)), fraction, 1) & (np.array(sizes) > 0)
  assert 0 < bad.sum() < len(sizes)
  perm = np.random.default_rng(10).permutation(len(sizes))
  out = fn(params, pop, KEY)
  out_p = fn(params, fl.take(pop, jnp.asarray(perm)), KEY)
  big = np.asarray(out.delta["big"])
  np.testing.assert_array_equal(big[~bad], 0.0)
  for row in big[bad]:
    assert abs(row.std() - std) < 0.15 * std and abs(row.mean()) < 0.2
  assert not np.allclose(big[bad][0], big[bad][1])  # a key per client
  np.testing.assert_allclose(np.asarray(out_p.delta["big"]), big[perm], rtol=0, atol=0)
  other_round = np.asarray(fn(params, pop, jax.random.key(1)).delta["big"])
  assert not np.allclose(other_round[bad], big[bad])  # fresh noise each round


def test_attacks_pass_through_stateful_client_updates():
  sizes = (2, 3, 0, 4, 1, 2)
  pop = fl.from_clients(make_clients(sizes, num_features=4), max_examples=4)

  def update(broadcast, data, key, state):
    out = _toy_update(broadcast, data, key)
    return out._replace(state=state + 1.0)

  init = lambda params: jnp.zeros(())
  stateful = fl.ClientUpdate(init, update)
  attacked = attacks.sign_flip(stateful, 1.0)
  assert isinstance(attacked, fl.ClientUpdate) and attacked.init is init
  fn = jax.jit(jax.vmap(attacked.update, in_axes=(None, 0, None, 0)))
  out = fn({"v": jnp.zeros(4)}, pop, KEY, jnp.arange(6.0))
  honest = jax.vmap(update, in_axes=(None, 0, None, 0))({"v": jnp.zeros(4)}, pop, KEY,
                                                        jnp.arange(6.0))
  np.testing.assert_allclose(np.asarray(out.state), np.arange(6.0) + 1.0)
  np.testing.assert_allclose(np.asarray(out.delta["v"]), -np.asarray(honest.delta["v"]))
  np.testing.assert_array_equal(np.asarray(out.counts["num_malicious"]),
                                np.array(sizes) > 0)


# --------------------------------------------------------------------------
# End to end: robust aggregation under a sign-flipping attack

E2E_CLIENTS, E2E_FRACTION, E2E_SCALE = 10, 0.25, 20.0
E2E_SEED = next(s for s in range(100)
                if 2 <= _reference_malicious(range(E2E_CLIENTS), E2E_FRACTION, s).sum() <= 3)
E2E_BAD = _reference_malicious(range(E2E_CLIENTS), E2E_FRACTION, E2E_SEED)
W_TRUE, B_TRUE = np.array([1.0, -2.0, 0.5], np.float32), np.float32(0.3)


def _e2e_population():
  rng = np.random.default_rng(11)
  clients = []
  for _ in range(E2E_CLIENTS):
    x = rng.standard_normal((12, 3)).astype(np.float32)
    clients.append({"x": x, "y": x @ W_TRUE + B_TRUE + 0.1 * rng.standard_normal(12).astype(
        np.float32)})
  return fl.from_clients(clients, max_examples=12)


def _mse(params, x, y, mask):
  r = x @ params["w"] + params["b"] - y
  return jnp.sum(jnp.where(mask, r * r, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _linear_update(params, data, key):
  """One full-batch gradient step of least squares on a tiny linear model."""
  del key
  n = data.num_examples
  mask = fl.example_mask(n, data.arrays["x"].shape[0])
  loss, grads = jax.value_and_grad(_mse)(params, data.arrays["x"], data.arrays["y"], mask)
  nf = n.astype(jnp.float32)
  return fl.ClientOutput(jax.tree.map(lambda g: -0.2 * g, grads), nf,
                         {"num_examples": nf, "train_loss": loss})


ATTACKED = attacks.sign_flip(_linear_update, E2E_FRACTION, seed=E2E_SEED, scale=E2E_SCALE)
E2E_AGGREGATORS = {"mean": lambda: None, "median": robust.coordinate_median,
                   "trimmed_mean": lambda: robust.trimmed_mean(0.3),
                   "krum": lambda: robust.krum(int(E2E_BAD.sum()), multi=3)}


@functools.cache
def _e2e_algorithm(name, mesh_devices=None):
  mesh = None if mesh_devices is None else fl.client_mesh(mesh_devices)
  return fl.build_federated_algorithm(
      ATTACKED, fl.server.fedavg(), aggregator=E2E_AGGREGATORS[name](),
      chunk_size=None if mesh is None else 2, mesh=mesh)


def _run(algo, cohort, rounds=4):
  state = algo.init({"w": jnp.zeros(3), "b": jnp.zeros(())})
  for r in range(rounds):
    state, metrics = algo.round(state, cohort, jax.random.key(r))
  return jax.tree.map(np.asarray, state.params), metrics


def _distance(a, b):
  return float(np.sqrt(sum(np.sum((np.asarray(x) - np.asarray(y)) ** 2)
                           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))))


def _population_loss(params, pop):
  mask = np.asarray(fl.example_mask(pop.num_examples, pop.arrays["x"].shape[1]))
  x, y = np.asarray(pop.arrays["x"])[mask], np.asarray(pop.arrays["y"])[mask]
  return float(np.mean((x @ params["w"] + params["b"] - y) ** 2))


def test_robust_aggregators_resist_sign_flipping_end_to_end():
  pop = _e2e_population()
  start = {"w": np.zeros(3), "b": np.zeros(())}
  # Honest-only FedAvg: the same program with the attackers' data removed.
  honest_only = pop._replace(num_examples=jnp.where(jnp.asarray(E2E_BAD), 0, pop.num_examples))
  honest, honest_metrics = _run(_e2e_algorithm("mean"), honest_only)
  assert float(honest_metrics["num_malicious"]) == 0
  attacked, metrics = _run(_e2e_algorithm("mean"), pop)
  assert float(metrics["num_malicious"]) == E2E_BAD.sum()

  initial_loss, honest_loss = _population_loss(start, pop), _population_loss(honest, pop)
  honest_move = _distance(honest, start)
  assert honest_loss < 0.5 * initial_loss
  # The plain mean is dragged the wrong way and its loss blows up.
  assert _population_loss(attacked, pop) > 10 * initial_loss
  assert np.dot(attacked["w"], honest["w"]) < 0
  for name in ("median", "trimmed_mean", "krum"):
    params, metrics = _run(_e2e_algorithm(name), pop)
    assert float(metrics["aggregator/num_present"]) == E2E_CLIENTS, name
    assert _distance(params, honest) < 0.3 * honest_move, name
    assert _population_loss(params, pop) < 0.5 * initial_loss, name
  # Krum selected only honest clients (wherever the round reports the selection).
  selected = metrics.get("aggregator/selected", metrics["clients"].get("aggregator/selected"))
  assert float(np.sum(selected)) == 3 and not np.any(np.asarray(selected)[E2E_BAD])


def test_robust_round_sharded_equals_unsharded():
  pop = _e2e_population()
  one, one_metrics = _run(_e2e_algorithm("trimmed_mean"), pop)
  many, many_metrics = _run(_e2e_algorithm("trimmed_mean", mesh_devices=4), pop)
  _assert_tree_close(many, one)
  for name in ("aggregator/num_present", "aggregator/num_trimmed", "num_malicious",
               "num_clients"):
    assert float(many_metrics[name]) == float(one_metrics[name]), name


def test_krum_selection_is_reported_per_client_and_run_rounds_works():
  # Needs the round to route [K]-shaped aggregator metrics into metrics["clients"]
  # (run_rounds converts every other metric to a float).
  pop = _e2e_population()
  algo = _e2e_algorithm("krum")
  state = algo.init({"w": jnp.zeros(3), "b": jnp.zeros(())})
  _, metrics = algo.round(state, pop, jax.random.key(0))
  selected = np.asarray(metrics["clients"]["aggregator/selected"])
  assert selected.shape == (E2E_CLIENTS,) and selected.sum() == 3
  assert all(np.ndim(v) == 0 for k, v in metrics.items() if k != "clients")
  _, history = fl.run_rounds(algo, state, pop, num_rounds=1, key=jax.random.key(0),
                             cohort_size=E2E_CLIENTS, progress=False)
  assert history[0]["aggregator/num_selected"] == 3.0
