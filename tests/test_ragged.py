"""RaggedData: the unpadded population store, its gathering, and rounds on it.

References: the stacked FederatedData (the padded form every other test
checks against loops), NumPy slicing of the per-client arrays, and the
Binomial distribution for the samplers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import fedjax_lite as fl
from fedjax_lite import ragged as rg
from fedjax_lite.training import _cohort_step


def _clients(sizes, seed=0, features=3):
  rng = np.random.default_rng(seed)
  return [{"x": rng.normal(size=(int(n), features)).astype(np.float32),
           "y": rng.integers(0, 3, int(n)).astype(np.int32)} for n in sizes]


SIZES = [5, 0, 17, 3, 40, 1, 9, 2, 12, 7, 0, 25]


@pytest.fixture(scope="module")
def populations():
  clients = _clients(SIZES)
  return clients, fl.from_clients(clients), fl.RaggedData.from_clients(clients)


@pytest.fixture(scope="module")
def task(populations):
  _, stacked, _ = populations
  model = fl.models.LogisticRegression(3)
  params = model.init(jax.random.key(0), stacked.arrays["x"][0, :1])
  loss = fl.models.classification_loss(model.apply)
  update = fl.build_client_update(loss, optax.sgd(0.1), num_epochs=2, batch_size=4)
  return model, params, fl.build_federated_algorithm(update, fl.server.fedadam(1e-2))


def test_store_holds_each_clients_rows_without_padding(populations):
  clients, stacked, ragged = populations
  assert ragged.num_clients == len(SIZES)
  np.testing.assert_array_equal(ragged.num_examples, SIZES)
  assert ragged.max_examples == max(SIZES) and ragged.total_examples == sum(SIZES)
  for i, c in enumerate(clients):
    lo, hi = ragged.offsets[i], ragged.offsets[i + 1]
    np.testing.assert_array_equal(ragged.arrays["x"][lo:hi], c["x"])
  raw = sum(c["x"].nbytes + c["y"].nbytes for c in clients)
  assert ragged.nbytes == raw + 8 * (len(SIZES) + 1) + 4 * len(SIZES)
  back = fl.RaggedData.from_stacked(stacked)
  for name in ("x", "y"):
    np.testing.assert_array_equal(back.arrays[name], ragged.arrays[name])
  restacked = ragged.to_stacked()
  for name in ("x", "y"):
    np.testing.assert_array_equal(restacked.arrays[name], stacked.arrays[name])
  np.testing.assert_array_equal(restacked.num_examples, stacked.num_examples)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 20), min_size=1, max_size=12), data=st.data())
def test_gather_equals_take_of_the_padded_population(sizes, data):
  clients = _clients(sizes, seed=len(sizes))
  stacked, ragged = fl.from_clients(clients), fl.RaggedData.from_clients(clients)
  k = data.draw(st.integers(1, len(sizes)))
  idx = np.asarray(data.draw(st.lists(st.integers(0, len(sizes) - 1), min_size=k, max_size=k)))
  mask = np.asarray(data.draw(st.lists(st.booleans(), min_size=k, max_size=k)))
  cohort = ragged.gather(idx, mask)
  length = cohort.max_examples
  kept = np.where(mask, np.asarray(sizes)[idx], 0)
  assert length == rg.bucket_length(int(kept.max()))
  np.testing.assert_array_equal(cohort.num_examples, kept)
  np.testing.assert_array_equal(cohort.client_ids, idx)
  ref = stacked.take(idx)
  for name in ("x", "y"):
    got = np.asarray(cohort.arrays[name])
    want = np.zeros_like(got)
    m = min(length, stacked.max_examples)
    want[:, :m] = np.asarray(ref.arrays[name])[:, :m]
    want[~mask] = 0
    np.testing.assert_array_equal(got, want)


# Every bucket up to 2^21: the powers of two and 3 * 2^k.
BUCKETS = sorted({1 << k for k in range(22)} | {3 << k for k in range(20)})


@given(st.integers(0, 1 << 20))
def test_bucket_is_the_smallest_power_of_two_or_midpoint_that_holds(n):
  want = next(b for b in BUCKETS if b >= max(n, 1))
  assert rg.bucket_length(n) == want
  assert rg.num_buckets(n) == BUCKETS.index(want) + 1
  if n >= 3:
    assert want < 1.5 * n


@pytest.mark.parametrize("kind", ["fixed", "poisson"])
def test_rounds_on_ragged_equal_rounds_on_the_padded_population(populations, task, kind):
  _, stacked, ragged = populations
  _, params, algo = task
  n = len(SIZES)
  sampler = fl.fixed_size_sampler(n, 4) if kind == "fixed" else fl.poisson_sampler(n, 0.3)
  a, ha = fl.run_rounds(algo, algo.init(params), stacked, num_rounds=4, sampler=sampler,
                        key=jax.random.key(3))
  b, hb = fl.run_rounds(algo, algo.init(params), ragged, num_rounds=4, sampler=sampler,
                        key=jax.random.key(3))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6), a.params,
               b.params)
  assert [h["num_examples"] for h in ha] == [h["num_examples"] for h in hb]
  assert [h["sampled_clients"] for h in ha] == [h["sampled_clients"] for h in hb]
  # One program per bucket met, at most log2(largest) + 1 of them.
  assert _cohort_step(algo)._cache_size() <= rg.num_buckets(max(SIZES))


def test_sweep_on_ragged_equals_sweep_on_the_padded_population(populations, task):
  _, stacked, ragged = populations
  _, params, algo = task
  keys = jax.random.split(jax.random.key(5), 3)
  hp = {"lr": jnp.asarray([0.05, 0.1, 0.2])}
  make = lambda h: fl.build_federated_algorithm(
      fl.build_client_update(fl.models.classification_loss(task[0].apply), optax.sgd(h["lr"]),
                             batch_size=4), fl.server.fedavg())
  a, ha = fl.run_sweep(make, hp, params, stacked, num_rounds=3, keys=keys, cohort_size=5)
  b, hb = fl.run_sweep(make, hp, params, ragged, num_rounds=3, keys=keys, cohort_size=5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6), a.params,
               b.params)
  for ra, rb in zip(ha, hb, strict=True):
    np.testing.assert_array_equal(ra["num_examples"], rb["num_examples"])


def test_evaluator_gives_the_same_per_client_results(populations, task, monkeypatch):
  _, stacked, ragged = populations
  model, params, _ = task
  monkeypatch.setattr(fl.evaluation, "RAGGED_BLOCK", 5)  # several blocks, a partial last one
  evaluate = fl.evaluation.build_evaluator(fl.models.classification_metrics(model.apply))
  want, got = evaluate(params, stacked), evaluate(params, ragged)
  for key in want:
    if key == "clients":
      for name in want[key]:
        np.testing.assert_allclose(got[key][name], want[key][name], rtol=1e-6)
    else:
      np.testing.assert_allclose(got[key], want[key], rtol=1e-6)


def test_cap_keeps_a_uniform_random_subset_per_client_and_round():
  sizes = [30, 4, 12]
  clients = _clients(sizes, features=1)
  for i, c in enumerate(clients):  # row values identify (client, example)
    c["x"] = (1000 * i + np.arange(sizes[i], dtype=np.float32))[:, None]
  ragged = fl.RaggedData.from_clients(clients)
  cap = 5
  hits = np.zeros(30)
  trials = 3000
  for t in range(trials):
    cohort = ragged.gather([0, 1, 2], max_examples_per_client=cap, seed=[t, 7])
    np.testing.assert_array_equal(cohort.num_examples, [5, 4, 5])
    rows = np.asarray(cohort.arrays["x"])[..., 0]
    np.testing.assert_array_equal(rows[1, :4], 1000 + np.arange(4))  # under the cap: all
    first = rows[0, :5].astype(int)
    assert len(set(first)) == 5 and np.all(np.diff(first) > 0)  # distinct, in stored order
    assert set(rows[2, :5].astype(int) - 2000) <= set(range(12))
    hits[first] += 1
  # Every example of client 0 is kept with probability cap / n = 1/6.
  expected = trials * cap / 30
  chi2 = ((hits - expected) ** 2 / expected).sum()
  assert stats.chi2.sf(chi2, 29) > 1e-4
  again = ragged.gather([0], max_examples_per_client=cap, seed=[11, 7])
  same = ragged.gather([0], max_examples_per_client=cap, seed=[11, 7])
  other = ragged.gather([0], max_examples_per_client=cap, seed=[12, 7])
  np.testing.assert_array_equal(again.arrays["x"], same.arrays["x"])
  assert not np.array_equal(again.arrays["x"], other.arrays["x"])


def test_run_rounds_applies_the_cap(populations, task):
  _, _, ragged = populations
  _, params, algo = task
  _, history = fl.run_rounds(algo, algo.init(params), ragged, num_rounds=4, cohort_size=12,
                             key=jax.random.key(0), max_examples_per_client=6)
  assert all(h["num_examples"] == sum(min(n, 6) for n in SIZES) for h in history)


def test_saved_population_loads_memory_mapped(populations, tmp_path):
  _, _, ragged = populations
  ragged.save(tmp_path / "pop")
  loaded = fl.RaggedData.load(tmp_path / "pop")
  assert isinstance(loaded.arrays["x"], np.memmap)
  for name in ("x", "y"):
    np.testing.assert_array_equal(loaded.arrays[name], ragged.arrays[name])
  np.testing.assert_array_equal(loaded.offsets, ragged.offsets)
  with pytest.raises(FileExistsError, match="already holds"):
    ragged.save(tmp_path / "pop")
  with pytest.raises(ValueError, match="does not hold a saved RaggedData"):
    fl.RaggedData.load(tmp_path)


@pytest.mark.parametrize("call, match", [
    (lambda: fl.RaggedData.from_arrays({"x": np.zeros((5, 2))}, [2, 2]), "sums to 4"),
    (lambda: fl.RaggedData.from_arrays({"x": np.zeros((4, 2))}, [5, -1]), ">= 0"),
    (lambda: fl.RaggedData.from_arrays({"x": np.zeros((4, 2)), "y": np.zeros(3)}, [4]),
     "leading"),
    (lambda: fl.RaggedData.from_arrays({"x": np.zeros((4, 2))}, [2, 2], [1, 1]), "unique"),
    (lambda: fl.RaggedData.from_arrays({"x": np.zeros((4, 2))}, [2.0, 2.0]), "integer"),
    (lambda: fl.RaggedData.from_clients([]), "empty"),
    (lambda: fl.RaggedData.from_clients([{"x": np.zeros(2)}, {"y": np.zeros(2)}]), "same names"),
])
def test_bad_construction_is_one_clear_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_bad_gather_and_run_arguments(populations, task):
  _, stacked, ragged = populations
  _, params, algo = task
  with pytest.raises(ValueError, match=r"`indices` must be in \[0, 12\)"):
    ragged.gather([12])
  with pytest.raises(ValueError, match="cannot hold"):
    ragged.gather([4], length=8)
  with pytest.raises(ValueError, match="seed"):
    ragged.gather([4], max_examples_per_client=3)
  with pytest.raises(ValueError, match="for a FederatedData, cap"):
    fl.run_rounds(algo, algo.init(params), stacked, num_rounds=1, cohort_size=2,
                  key=jax.random.key(0), max_examples_per_client=3)
  with pytest.raises(TypeError, match="FederatedData or a RaggedData"):
    fl.run_rounds(algo, algo.init(params), {"x": 1}, num_rounds=1, cohort_size=2,
                  key=jax.random.key(0))


# -- samplers whose cost grows with the cohort -----------------------------------------------


def test_poisson_cohort_sizes_and_inclusions_follow_independent_inclusion():
  n, q, draws = 40, 0.25, 4000
  sampler = fl.poisson_sampler(n, q)
  keys = jax.random.split(jax.random.key(0), draws)
  idx, mask, overflow = jax.vmap(sampler.sample)(keys)
  idx, mask = np.asarray(idx), np.asarray(mask)
  assert not np.asarray(overflow).any()
  sizes = mask.sum(1)
  # Cohort sizes: Binomial(n, q) (chi-square over the bins with enough mass).
  observed = np.bincount(sizes, minlength=n + 1)
  expected = draws * stats.binom.pmf(np.arange(n + 1), n, q)
  keep = expected >= 5
  rest_o, rest_e = observed[~keep].sum(), expected[~keep].sum()
  chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
  chi2 += (rest_o - rest_e) ** 2 / rest_e
  assert stats.chi2.sf(chi2, keep.sum()) > 1e-4
  # Every client included with probability q, and the drawn clients distinct.
  counts = np.zeros(n)
  for row, m in zip(idx, mask, strict=True):
    chosen = row[m]
    assert len(set(chosen.tolist())) == len(chosen)
    counts[chosen] += 1
  z = (counts - draws * q) / np.sqrt(draws * q * (1 - q))
  assert np.abs(z).max() < 4.5


def test_poisson_sampling_of_a_large_population_has_the_binomial_mean():
  n, q = 1_000_000, 0.001
  sampler = fl.poisson_sampler(n, q)
  sizes = np.asarray(jax.vmap(lambda k: sampler.sample(k)[1].sum())(
      jax.random.split(jax.random.key(1), 200)))
  sd = np.sqrt(n * q * (1 - q))
  assert abs(sizes.mean() - n * q) < 5 * sd / np.sqrt(200)
  assert 0.7 < sizes.std() / sd < 1.3


def test_fixed_size_sampling_includes_every_client_with_probability_k_over_n():
  n, k, draws = 200, 5, 1200
  idx = np.asarray(jax.vmap(lambda key: fl.sample_clients(key, n, k))(
      jax.random.split(jax.random.key(2), draws)))
  assert all(len(set(r.tolist())) == k for r in idx)
  counts = np.bincount(idx.ravel(), minlength=n)
  # 30 expected hits per client: a chi-square test of uniformity.
  chi2 = ((counts - draws * k / n) ** 2 / (draws * k / n)).sum()
  assert stats.chi2.sf(chi2, n - 1) > 1e-4


def test_w6_population_is_heavy_tailed_and_holds_only_its_bytes():
  from benchmarks import w6

  row = w6.run(1500, 20, rounds=2, warmup=1, compare=1)
  assert 17 <= row["median_client"] <= 23 and 35 < row["mean_client"] < 70
  assert row["memory_ratio"] < 1.01  # offsets and ids: 12 bytes a client
  assert row["sample_sec"] > 0 and row["gather_sec"] > 0
  assert row["rounds_timed"] + row["rounds_compiling"] == 2
  for largest, bucket in row["cohort_largest_and_bucket"]:
    assert largest <= bucket < 1.5 * largest + 2


def test_sharded_round_on_ragged_equals_one_device_on_stacked(populations, task):
  _, stacked, ragged = populations
  _, params, _ = task
  model = fl.models.LogisticRegression(3)
  update = fl.build_client_update(fl.models.classification_loss(model.apply), optax.sgd(0.1),
                                  batch_size=4)
  one = fl.build_federated_algorithm(update, fl.server.fedadam(1e-2))
  many = fl.build_federated_algorithm(update, fl.server.fedadam(1e-2), mesh=fl.client_mesh(4))
  a, _ = fl.run_rounds(one, one.init(params), stacked, num_rounds=3, cohort_size=6,
                       key=jax.random.key(1))
  b, _ = fl.run_rounds(many, many.init(params), ragged, num_rounds=3, cohort_size=6,
                       key=jax.random.key(1))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6), a.params,
               b.params)


def test_device_resident_store_gathers_and_trains_the_same(populations, task):
  _, stacked, ragged = populations
  _, params, algo = task
  on_device = ragged.to_device()
  assert on_device.on_device and not ragged.on_device
  idx, mask = np.array([4, 0, 2, 11, 4]), np.array([True, True, False, True, True])
  host, dev = ragged.gather(idx, mask), on_device.gather(idx, mask)
  for name in ("x", "y"):
    np.testing.assert_array_equal(np.asarray(dev.arrays[name]), host.arrays[name])
  capped = dict(max_examples_per_client=3, seed=[5, 1])
  np.testing.assert_array_equal(np.asarray(on_device.gather(idx, **capped).arrays["x"]),
                                ragged.gather(idx, **capped).arrays["x"])
  a, _ = fl.run_rounds(algo, algo.init(params), stacked, num_rounds=3, cohort_size=5,
                       key=jax.random.key(4))
  b, _ = fl.run_rounds(algo, algo.init(params), on_device, num_rounds=3, cohort_size=5,
                       key=jax.random.key(4))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6), a.params,
               b.params)
