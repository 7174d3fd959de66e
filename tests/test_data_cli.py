"""The main job on the field's formats: --dataset leaf:PATH, tff:PATH, hf:PATH.

Each reads small files written here in the real layout; a run trains on the
ragged population with the per-round cap, and bad combinations end with one
line naming the option.
"""

import json

import numpy as np
import pytest

from fedjax_lite import cli, experiment


def _leaf_femnist(root, users=6, n=5, seed=0):
  rng = np.random.default_rng(seed)
  for split, extra in (("train", 4), ("test", 1)):
    (root / split).mkdir(parents=True)
    names = [f"f{i:04d}" for i in range(users)]
    data = {u: {"x": rng.random((n + i + extra, 784)).round(3).tolist(),
                "y": rng.integers(0, 62, n + i + extra).tolist()} for i, u in enumerate(names)}
    (root / split / "part.json").write_text(json.dumps(
        {"users": names, "num_samples": [len(data[u]["y"]) for u in names], "user_data": data}))
  return root


def _run(argv, capsys):
  status = cli.main(["run", "--rounds", "2", "--clients-per-round", "3", "--json", "-q",
                     "--no-progress", *argv])
  out, err = capsys.readouterr()
  return status, out, err


@pytest.mark.parametrize("devices", [1, 2])
def test_leaf_run_trains_on_the_ragged_population_with_the_per_round_cap(tmp_path, capsys,
                                                                          devices):
  data = _leaf_femnist(tmp_path / "femnist")
  status, out, err = _run(["--dataset", f"leaf:{data}", "--model", "logreg",
                           "--max-examples-per-client", "4", "--devices", str(devices),
                           "--out", str(tmp_path / "run")], capsys)
  assert status == 0, err
  summary = json.loads(out)
  assert summary["rounds_completed"] == 2 and summary["chance_accuracy"] == pytest.approx(1 / 62)
  rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert all(r["examples"] == 3 * 4 for r in rows)  # every client holds more than the cap
  saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
  assert saved["dataset"] == "leaf" and saved["data_dir"] == str(data)


def test_tff_h5_run(tmp_path, capsys):
  h5py = pytest.importorskip("h5py", reason="the tff extra (h5py) is not installed")
  rng = np.random.default_rng(1)
  for split, sizes in (("train", (6, 3, 9, 4)), ("test", (2, 1, 2, 1))):
    with h5py.File(tmp_path / f"fed_emnist_{split}.h5", "w") as f:
      for i, n in enumerate(sizes):
        g = f.create_group(f"examples/c{i}")
        g["pixels"] = rng.random((n, 28, 28)).astype(np.float32)
        g["label"] = rng.integers(0, 62, n).astype(np.int32)
  status, out, err = _run(["--dataset", f"tff:{tmp_path / 'fed_emnist_train.h5'}",
                           "--model", "logreg", "--out", str(tmp_path / "run")], capsys)
  assert status == 0, err
  assert json.loads(out)["eval_accuracy"] >= 0  # the test file beside it was read


def test_hf_saved_dataset_run(tmp_path, capsys):
  datasets = pytest.importorskip("datasets", reason="the hf extra (datasets) is not installed")
  rng = np.random.default_rng(2)
  n = 60
  ds = datasets.Dataset.from_dict({"writer": rng.integers(0, 8, n).astype(str).tolist(),
                                   "vec": rng.random((n, 5)).astype(np.float32).tolist(),
                                   "label": rng.integers(0, 3, n).tolist()})
  ds.save_to_disk(str(tmp_path / "hf"))
  status, out, err = _run(["--dataset", f"hf:{tmp_path / 'hf'}", "--client-column", "writer",
                           "--feature-column", "vec", "--model", "logreg",
                           "--out", str(tmp_path / "run")], capsys)
  assert status == 0, err
  assert json.loads(out)["rounds_completed"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "leaf"], "--dataset leaf reads files: give --dataset leaf:PATH"),
    (["--dataset", "leaf:"], "names no path"),
    (["--dataset", "leaf:/a", "--data-dir", "/b"], "both give the path"),
    (["--dataset", "hf:/a"], "--dataset hf needs --client-column"),
    (["--dataset", "digits", "--client-column", "w"],
     "--client-column does not apply here: --dataset digits does not read it"),
    (["--dataset", "digits", "--model", "femnist_cnn"], "is for --dataset leaf"),
    (["--dataset", "leaf:/nonexistent-dir", "--model", "logreg"], "nonexistent-dir"),
])
def test_bad_data_options_are_one_line(tmp_path, capsys, argv, message):
  status, out, err = _run([*argv, "--out", str(tmp_path / "run")], capsys)
  assert status != 0 and out == ""
  assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
  assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_model_that_does_not_fit_the_data_is_named(tmp_path, capsys):
  data = _leaf_femnist(tmp_path / "femnist", users=3)
  status, _, err = _run(["--dataset", f"leaf:{data}", "--model", "char_lstm",
                         "--out", str(tmp_path / "run")], capsys)
  assert status != 0 and "--model char_lstm does not fit this data" in err


def test_dataset_path_form_equals_data_dir_form(tmp_path):
  a = experiment.resolve_config(None, {"dataset": "leaf:/x/y"})
  b = experiment.resolve_config(None, {"dataset": "leaf", "data_dir": "/x/y"})
  assert a == b and a["dataset"] == "leaf" and a["data_dir"] == "/x/y"
