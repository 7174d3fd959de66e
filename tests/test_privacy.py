"""Differential privacy: clipping, noise distributions, sampling, accounting."""

from __future__ import annotations

import json
import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dp_accounting import pld, rdp
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats

import fedjax_lite as fl
from fedjax_lite import cli, privacy
from fedjax_lite.privacy import AdaptiveClipping, DPSpec
from fedjax_lite.sampling import poisson_sample
from tests.conftest import MODELS, make_clients
from tests.reference import reference_client

NUM_COORDS = 20_000


def _zeros():
  return {"a": jnp.zeros((100, 150)), "b": jnp.zeros((5000,))}


def _release_noise(agg, key):
  """The aggregate released for a round in which every client delta is zero."""
  zeros = _zeros()
  state = agg.init(zeros)
  stats_ = {"participants": jnp.float32(10.0)}
  if "centred_unclipped" in jax.eval_shape(
      lambda: agg.per_client(zeros, jnp.float32(1.0), state, jax.random.key(0))[2]):
    stats_["centred_unclipped"] = jnp.float32(0.0)
  mean, _, metrics = agg.finalize(zeros, jnp.float32(10.0), stats_, state, key)
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(mean)]), metrics


@pytest.mark.parametrize("seed", [0, 1])
def test_gaussian_noise_has_the_intended_distribution(seed):
  clip, z, m = 0.7, 1.3, 25.0
  agg = privacy.gaussian_aggregator(clip, z, m)
  sample, metrics = _release_noise(agg, jax.random.key(seed))
  assert sample.size == NUM_COORDS
  std = z * clip / m
  assert stats.kstest(sample, stats.norm(0, std).cdf).pvalue > 1e-3
  # A wrong scale is detected: the test has power.
  assert stats.kstest(sample, stats.norm(0, 1.1 * std).cdf).pvalue < 1e-6
  np.testing.assert_allclose(float(metrics["noise_std"]), std, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_laplace_noise_has_the_intended_distribution(seed):
  clip, z, m = 2.0, 0.8, 40.0
  agg = privacy.laplace_aggregator(clip, z, m)
  sample, _ = _release_noise(agg, jax.random.key(seed))
  scale = z * clip / m
  assert stats.kstest(sample, stats.laplace(0, scale).cdf).pvalue > 1e-3
  assert stats.kstest(sample, stats.norm(0, scale * math.sqrt(2)).cdf).pvalue < 1e-6


def test_adaptive_clipping_raises_delta_noise_to_keep_total_privacy():
  z, m = 1.0, 100.0
  agg = privacy.gaussian_aggregator(1.0, z, m, adaptive=AdaptiveClipping(initial_clip=0.4))
  sample, metrics = _release_noise(agg, jax.random.key(3))
  sigma_b = m / 20
  z_delta = (z**-2 - (2 * sigma_b) ** -2) ** -0.5
  assert z_delta > z
  assert stats.kstest(sample, stats.norm(0, z_delta * 0.4 / m).cdf).pvalue > 1e-3
  np.testing.assert_allclose(float(metrics["clip"]), 0.4)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([1, 2, 15, 16, 17, 257, 4097, 40_000]), st.integers(0, 2**16),
       st.floats(-6, 6))
def test_accurate_sum_is_within_a_few_ulps_of_the_exact_sum(n, seed, log_scale):
  rng = np.random.default_rng(seed)
  x = np.abs(rng.standard_normal(n) * 10.0 ** log_scale).astype(np.float32)
  exact = np.sum(x.astype(np.float64))
  got = float(privacy.accurate_sum(jnp.asarray(x)))
  assert abs(got - exact) <= 4 * np.spacing(np.float32(exact))


pytrees = st.integers(0, 2**16).flatmap(lambda seed: st.tuples(
    st.just(seed), st.floats(1e-3, 10.0), st.sampled_from([1, 2]),
    st.floats(1e-3, 1e3)))


@settings(max_examples=40, deadline=None)
@given(pytrees)
@example((295, 0.001, 1, 353.4175145839361))  # a plain float32 sum overshot by 0.1 ulp here
def test_clipped_norm_never_exceeds_the_bound(case):
  seed, clip, order, scale = case
  rng = np.random.default_rng(seed)
  tree = {"w": jnp.asarray(rng.standard_normal((7, 3)) * scale, jnp.float32),
          "b": [jnp.asarray(rng.standard_normal(4) * scale, jnp.float32)]}
  clipped, norm = privacy.clip_by_global_norm(tree, jnp.float32(clip), order)
  flat = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])
  flat_c = np.concatenate([np.ravel(np.asarray(x, np.float64))
                           for x in jax.tree.leaves(clipped)])
  exact = np.linalg.norm(flat, ord=order)
  np.testing.assert_allclose(float(norm), exact, rtol=1e-5)
  assert np.linalg.norm(flat_c, ord=order) <= clip
  if exact <= clip:
    np.testing.assert_array_equal(flat_c, flat.astype(np.float32))
  else:  # same direction, norm at the bound less clip_scale's documented 1.5e-5 margin
    np.testing.assert_allclose(flat_c, flat * clip / exact, rtol=2.5e-5, atol=1e-12)


def test_dp_round_without_noise_is_the_clipped_sum_over_the_fixed_denominator():
  clients = make_clients((6, 0, 9, 4))
  params, loss = MODELS["linear"]()
  update = fl.build_client_update(loss, optax.sgd(0.5), num_epochs=2, batch_size=3)
  clip, m = 0.05, 7.0
  algo = fl.build_federated_algorithm(update, fl.server.fedavg(),
                                      aggregator=privacy.gaussian_aggregator(clip, 0.0, m))
  key = jax.random.key(4)
  state, metrics = algo.round(algo.init(params), fl.from_clients(clients), key)
  client_key, _ = jax.random.split(key)
  total = jax.tree.map(lambda p: np.zeros(p.shape), params)
  for cid, c in enumerate(clients):
    if len(c["y"]) == 0:
      continue
    d, _ = reference_client(loss, params, c, cid, client_key, lr=0.5, num_epochs=2, batch_size=3)
    norm = np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(d)))
    total = jax.tree.map(lambda t, x, norm=norm: t + x * min(1.0, clip / norm), total, d)
  expected = jax.tree.map(lambda p, t: np.asarray(p) + t / m, params, total)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert float(metrics["aggregator/participants"]) == 3


def test_adaptive_clip_update_rule_and_convergence_to_the_quantile():
  m = 400.0
  gamma, eta = 0.3, 0.2
  agg = privacy.gaussian_aggregator(1.0, 0.5, m, adaptive=AdaptiveClipping(
      target_quantile=gamma, learning_rate=eta, initial_clip=5.0))
  norms = np.linspace(0.01, 1.0, int(m))  # the 0.3-quantile of update norms is ~0.3
  deltas = jnp.asarray(norms)[:, None] * jnp.eye(1, 50)[0]  # client i's delta has norm i
  state = agg.init(deltas[0])
  per_client = jax.jit(jax.vmap(agg.per_client, in_axes=(0, None, None, None)))
  finalize = jax.jit(agg.finalize)
  key = jax.random.key(0)
  for r in range(150):
    _, _, s = per_client(deltas, jnp.float32(1.0), state, key)
    sums = jax.tree.map(lambda x: jnp.sum(x, 0), s)
    k = jax.random.fold_in(key, r)
    old = float(state.clip)
    _, state, metrics = finalize(jax.tree.map(jnp.zeros_like, deltas[0]), 0.0, sums, state, k)
    # The update is exactly C <- C exp(-eta (b - gamma)) with the released b.
    b = float(metrics["unclipped_fraction"])
    np.testing.assert_allclose(float(state.clip), old * math.exp(-eta * (b - gamma)), rtol=1e-5)
    if r == 0:
      # b is the centred count: (sum(1[norm <= C] - 1/2) + noise) / m + 1/2.
      unclipped = np.sum(norms <= old)
      assert float(sums["centred_unclipped"]) == unclipped - m / 2
  assert abs(float(state.clip) - np.quantile(norms, gamma)) < 0.06


def test_example_weighting_is_refused_under_dp():
  with pytest.raises(ValueError, match="unbounded influence"):
    privacy.gaussian_aggregator(1.0, 1.0, 10, weighting="num_examples")
  with pytest.raises(ValueError, match="unbounded influence"):
    privacy.laplace_aggregator(1.0, 1.0, 10, weighting="num_examples")


def test_local_dp_noises_each_report():
  agg = privacy.gaussian_aggregator(1.0, 2.0, 4.0, local=True)
  zeros = _zeros()
  state = agg.init(zeros)
  keys = jax.random.split(jax.random.key(0), 4)
  out, w, _ = jax.vmap(agg.per_client, in_axes=(None, None, None, 0))(zeros, jnp.float32(1.0),
                                                                      state, keys)
  first = np.ravel(np.asarray(out["b"][0]))
  assert stats.kstest(first, stats.norm(0, 2.0).cdf).pvalue > 1e-3
  assert not np.array_equal(np.asarray(out["b"][0]), np.asarray(out["b"][1]))
  np.testing.assert_array_equal(w, [1, 1, 1, 1])
  # A non-participating slot sends nothing.
  out0, w0, _ = agg.per_client(zeros, jnp.float32(0.0), state, keys[0])
  assert not np.asarray(out0["b"]).any() and float(w0) == 0.0


# ---------------------------------------------------------------------------
# Accounting


@pytest.mark.parametrize("q, z, rounds, delta", [
    (0.01, 1.1, 100, 1e-5), (0.1, 2.0, 50, 1e-6), (1.0, 5.0, 20, 1e-5), (0.05, 0.8, 1, 1e-4)])
def test_gaussian_poisson_epsilon_matches_dp_accounting(q, z, rounds, delta):
  n = 1000
  spec = DPSpec("gaussian", z, "poisson", n, q * n)
  inner = dp_accounting.GaussianDpEvent(z)
  event = inner if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, inner)
  for name, acc in (("rdp", rdp.RdpAccountant()),
                    ("pld", pld.PLDAccountant(value_discretization_interval=1e-4))):
    acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    expected = acc.get_epsilon(delta)
    np.testing.assert_allclose(privacy.epsilon(spec, rounds, delta, name), expected, rtol=1e-9)
  assert privacy.epsilon(spec, 0, delta) == 0.0


def test_fixed_size_sampling_uses_replace_one_with_half_the_multiplier():
  spec = DPSpec("gaussian", 1.5, "fixed", 1000, 50)
  acc = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  acc.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.SampledWithoutReplacementDpEvent(1000, 50, dp_accounting.GaussianDpEvent(0.75)),
      30))
  np.testing.assert_allclose(privacy.epsilon(spec, 30, 1e-5), acc.get_epsilon(1e-5), rtol=1e-9)
  with pytest.raises(ValueError, match="PLD accountant does not support fixed-size"):
    privacy.epsilon(spec, 30, 1e-5, "pld")


def test_laplace_accounting():
  spec = DPSpec("laplace", 3.0, "poisson", 1000, 100)
  acc = pld.PLDAccountant(value_discretization_interval=1e-4)
  acc.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.LaplaceDpEvent(3.0)), 20))
  np.testing.assert_allclose(privacy.epsilon(spec, 20, 1e-5, "pld"), acc.get_epsilon(1e-5))
  with pytest.raises(ValueError, match="RDP accountant does not support Poisson-subsampled"):
    privacy.epsilon(spec, 20, 1e-5, "rdp")
  # Without sampling, a round is pure (1/z)-DP: T rounds at most T/z.
  full = DPSpec("laplace", 3.0, "poisson", 10, 10)
  assert privacy.epsilon(full, 6, 1e-5, "pld") <= 6 / 3.0 + 1e-6
  assert privacy.epsilon(full, 6, 1e-5, "rdp") <= 6 / 3.0 + 1e-3


def test_adaptive_event_equals_the_requested_multiplier():
  plain = DPSpec("gaussian", 1.2, "poisson", 1000, 50)
  adaptive = DPSpec("gaussian", 1.2, "poisson", 1000, 50, count_noise_std=2.5)
  assert isinstance(privacy.round_event(adaptive).event, dp_accounting.ComposedDpEvent)
  for acc in ("rdp", "pld"):
    np.testing.assert_allclose(privacy.epsilon(adaptive, 40, 1e-5, acc),
                               privacy.epsilon(plain, 40, 1e-5, acc), rtol=1e-6)


@pytest.mark.parametrize("accountant, mechanism", [("rdp", "gaussian"), ("pld", "laplace")])
def test_calibration_round_trips(accountant, mechanism):
  spec = DPSpec(mechanism, 1.0, "poisson", 2000, 100)
  z = privacy.calibrate_noise(spec, 100, 2.0, 1e-5, accountant)
  import dataclasses
  eps = privacy.epsilon(dataclasses.replace(spec, noise_multiplier=z), 100, 1e-5, accountant)
  assert abs(eps - 2.0) / 2.0 < 0.01


def test_local_dp_event_is_per_client_without_amplification():
  spec = DPSpec("gaussian", 4.0, "poisson", 1000, 10, local=True)
  acc = rdp.RdpAccountant()
  acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 25))
  np.testing.assert_allclose(privacy.epsilon(spec, 25, 1e-5), acc.get_epsilon(1e-5))


@pytest.mark.parametrize("call, match", [
    (lambda: privacy.gaussian_aggregator(0.0, 1.0, 10), "`clip` must be > 0"),
    (lambda: privacy.gaussian_aggregator(-1.0, 1.0, 10), "`clip` must be > 0"),
    (lambda: privacy.laplace_aggregator(1.0, -0.5, 10), "`noise_multiplier` must be >= 0"),
    (lambda: privacy.gaussian_aggregator(1.0, 1.0, 0), "`expected_cohort_size` must be > 0"),
    (lambda: privacy.gaussian_aggregator(1.0, 5.0, 40, adaptive=AdaptiveClipping()),
     "2 \\* count_noise_std > noise_multiplier"),
    (lambda: privacy.epsilon(DPSpec("gaussian", 1.0, "poisson", 100, 10), 5, 1.5), "`delta`"),
    (lambda: privacy.epsilon(DPSpec("gaussian", 1.0, "poisson", 100, 10), 5, 0.0), "`delta`"),
    (lambda: DPSpec("gaussian", 1.0, "poisson", 100, 0), "sampling rate `q`"),
    (lambda: DPSpec("gaussian", 1.0, "poisson", 100, 150), "sampling rate `q`"),
    (lambda: DPSpec("gaussian", 0.0, "poisson", 100, 10), "`noise_multiplier` must be > 0"),
    (lambda: DPSpec("cauchy", 1.0, "poisson", 100, 10), "unknown mechanism 'cauchy'"),
    (lambda: DPSpec("gaussian", 1.0, "bernoulli", 100, 10), "unknown sampling"),
    (lambda: privacy.epsilon(DPSpec("gaussian", 1.0, "poisson", 100, 10), 5, 1e-5, "moments"),
     "unknown accountant 'moments'"),
    (lambda: privacy.calibrate_noise(DPSpec("gaussian", 1.0, "fixed", 100, 100), 1000, 1e-4,
                                     1e-5, max_noise_multiplier=5.0), "unreachable"),
    (lambda: privacy.epsilon(DPSpec("laplace", 1.0, "fixed", 100, 10), 5, 1e-5),
     "no dp-accounting accountant supports fixed-size sampling with the Laplace"),
])
def test_bad_privacy_input_is_named(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ---------------------------------------------------------------------------
# Sampling


def test_poisson_sampler_inclusion_rate_and_binomial_cohort_sizes():
  n, q, draws = 300, 0.1, 4000
  sampler = fl.poisson_sampler(n, q)
  keys = jax.random.split(jax.random.key(0), draws)
  idx, mask, overflow = jax.jit(jax.vmap(sampler.sample))(keys)
  idx, mask = np.asarray(idx), np.asarray(mask)
  assert not np.asarray(overflow).any()
  sizes = mask.sum(1)
  # Inclusion rate per client.
  hits = np.zeros(n)
  for i, m_ in zip(idx, mask, strict=True):
    hits[i[m_]] += 1
    assert len(set(i[m_].tolist())) == m_.sum()  # no client twice
  rates = hits / draws
  assert abs(rates.mean() - q) < 0.003
  assert np.all(np.abs(rates - q) < 6 * math.sqrt(q * (1 - q) / draws))
  # Cohort sizes follow Binomial(n, q): chi-square over pooled bins.
  edges = [0, 22, 25, 28, 30, 32, 35, 38, n + 1]
  observed = np.histogram(sizes, bins=edges)[0]
  cdf = stats.binom.cdf(np.asarray(edges[1:]) - 1, n, q)
  expected = np.diff(np.concatenate([[0.0], cdf])) * draws
  assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3
  assert sampler.cohort_size >= sizes.max()
  assert stats.binom.sf(sampler.cohort_size, n, q) <= 1e-9


def test_poisson_overflow_is_refused_never_truncated():
  data = fl.datasets.synthetic_classification(40, 5, num_features=6, num_classes=3, seed=0)
  params, loss = MODELS["linear"]()
  update = fl.build_client_update(loss, optax.sgd(0.1), batch_size=5)
  algo = fl.build_federated_algorithm(update, fl.server.fedavg())
  tiny = fl.Sampler(lambda key: poisson_sample(key, 40, 0.5, 2), 2, "poisson", 40, 0.5)
  with pytest.raises(ValueError, match="overflowed the padded cohort of 2 slots"):
    fl.run_rounds(algo, algo.init(params), data, num_rounds=1, key=jax.random.key(0),
                  sampler=tiny, progress=False)


def test_run_rounds_with_poisson_sampling_trains_only_sampled_clients():
  data = fl.datasets.synthetic_classification(60, 8, num_features=6, num_classes=3, seed=0)
  params, loss = MODELS["linear"]()
  update = fl.build_client_update(loss, optax.sgd(0.1), batch_size=4)
  algo = fl.build_federated_algorithm(update, fl.server.fedavg(), chunk_size=4)
  sampler = fl.poisson_sampler(60, 0.2)
  _, hist = fl.run_rounds(algo, algo.init(params), data, num_rounds=5, key=jax.random.key(1),
                          sampler=sampler, progress=False)
  for h in hist:
    assert h["num_clients"] == h["sampled_clients"] and h["num_examples"] == 8 * h["num_clients"]
    assert h["sampling_overflow"] == 0
  assert len({h["num_clients"] for h in hist}) > 1  # the cohort size varies


# ---------------------------------------------------------------------------
# Command line


def test_privacy_cli_prints_one_json_object(capsys):
  assert cli.main(["privacy", "epsilon", "--noise-multiplier", "1.1", "--sampling-rate", "0.01",
                   "--rounds", "100", "--delta", "1e-5"]) == 0
  out = json.loads(capsys.readouterr().out)
  acc = rdp.RdpAccountant()
  acc.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1)), 100))
  np.testing.assert_allclose(out["epsilon"], acc.get_epsilon(1e-5))
  assert out["noise_multiplier"] == 1.1 and out["rounds"] == 100
  assert cli.main(["privacy", "noise", "--target-epsilon", str(out["epsilon"]),
                   "--sampling-rate", "0.01", "--rounds", "100", "--delta", "1e-5"]) == 0
  back = json.loads(capsys.readouterr().out)
  assert abs(back["noise_multiplier"] - 1.1) < 0.01
  assert cli.main(["privacy", "epsilon", "--noise-multiplier", "1", "--sampling-rate", "0.1",
                   "--rounds", "5", "--delta", "1e-5", "--sampling", "fixed"]) == 2
  assert "--num-clients" in capsys.readouterr().err
