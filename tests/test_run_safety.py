"""No run is lost: exclusive output directories, a live run's lock, refused resumes, signals.

Runs here are tiny (logistic regression on digits, 5 clients per round); the
processes that are signalled run the installed ``fedjax-lite`` command.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedjax_lite import cli, experiment

SCRIPT = str(Path(sys.executable).parent / "fedjax-lite")
ARGS = ["--model", "logreg", "--clients-per-round", "5", "--eval-every", "0",
        "--checkpoint-every", "7", "--no-progress"]
LONG = 1500  # rounds of the signalled runs (a few seconds: they are stopped well before)


def _rows(out: Path) -> list[dict]:
  return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _without_time(rows: list[dict]) -> list[dict]:
  return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _start(out: Path, rounds: int, cwd: Path | None = None) -> subprocess.Popen:
  return subprocess.Popen([SCRIPT, "run", *ARGS, "--rounds", str(rounds), "--out", str(out)],
                          cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(out: Path, proc: subprocess.Popen, at_least: int) -> None:
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline and proc.poll() is None:
    path = out / "metrics.jsonl"
    if path.exists() and len(path.read_text().splitlines()) >= at_least:
      return
    time.sleep(0.05)
  raise AssertionError(f"no {at_least} rows in time: {proc.poll()} {proc.stderr.read()}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The reference: LONG rounds in one go, in this process."""
  out = tmp_path_factory.mktemp("whole") / "run"
  assert cli.main(["run", *ARGS, "--rounds", str(LONG), "--out", str(out), "-q"]) == 0
  return out


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_stopped_run_resumes_to_the_uninterrupted_run_bit_for_bit(how, tmp_path,
                                                                    uninterrupted):
  out = tmp_path / "run"
  proc = _start(out, LONG)
  _wait_for_rows(out, proc, random.Random(how).randint(3, 40))
  proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
  _, err = proc.communicate(timeout=120)
  if how == "sigterm":  # stops at a round boundary, says how to continue, exit 128 + 15
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "stopped by SIGTERM after round" in last and "--resume" in last, last
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == len(_rows(out)) and not summary["finished"]
  else:
    assert proc.returncode == -signal.SIGKILL
  resumed = subprocess.run([SCRIPT, "run", *ARGS, "--rounds", str(LONG), "--out", str(out),
                            "--resume", "-q"], capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr
  assert (out / "checkpoint.ckpt").read_bytes() == (uninterrupted / "checkpoint.ckpt").read_bytes()
  assert _without_time(_rows(out)) == _without_time(_rows(uninterrupted))
  summary = json.loads((out / "summary.json").read_text())
  assert summary["rounds_completed"] == len(_rows(out)) == LONG and summary["finished"]
  assert not (out / ".lock").exists()


def test_two_concurrent_default_runs_get_two_complete_directories(tmp_path):
  procs = [_start_default(tmp_path) for _ in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
  dirs = sorted((tmp_path / "runs").iterdir())
  assert len(dirs) == 2, dirs
  for d in dirs:
    assert len(_rows(d)) == 3
    assert json.loads((d / "summary.json").read_text())["rounds_completed"] == 3
    assert json.loads((d / "config.json").read_text())["config"]["out"] == str(
        Path("runs") / d.name)


def _start_default(cwd: Path) -> subprocess.Popen:
  return subprocess.Popen([SCRIPT, "run", *ARGS, "--rounds", "3"], cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_live_runs_directory_is_refused(tmp_path, uninterrupted):
  # Another process holds the lock, as a live run does.
  out = tmp_path / "live"
  out.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", (
      "import fcntl, sys, time\n"
      f"f = open({str(out / '.lock')!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
      "f.write('pid 4242 on elsewhere'); f.flush(); print('held', flush=True); time.sleep(60)")],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    for extra in ({}, {"resume": True}, {"overwrite": True}):
      with pytest.raises(experiment.ConfigError, match="belongs to a run that is still going "
                         r"\(pid 4242 on elsewhere\)"):
        experiment.check_output_dir({**experiment.DEFAULTS, "out": str(out), **extra})
  finally:
    holder.kill()
    holder.wait()
  # Once that process is gone, the directory is free again (a stale .lock is ignored).
  experiment.check_output_dir({**experiment.DEFAULTS, "out": str(out)})


def _copy(src: Path, dst: Path) -> Path:
  dst.mkdir()
  for f in src.iterdir():
    (dst / f.name).write_bytes(f.read_bytes())
  return dst


def test_resume_refuses_what_would_lose_or_repeat_rounds(tmp_path, uninterrupted, capsys):
  run = _copy(uninterrupted, tmp_path / "run")
  base = ["run", *ARGS, "--out", str(run), "--resume", "-q"]
  assert cli.main([*base, "--rounds", "10"]) == 2
  assert f"has already run {LONG} rounds; --rounds 10 is fewer" in capsys.readouterr().err
  (run / "checkpoint.ckpt").unlink()
  assert cli.main([*base, "--rounds", str(LONG)]) == 2
  err = capsys.readouterr().err
  assert f"has metrics for {LONG} rounds but no checkpoint.ckpt" in err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
  assert len(_rows(run)) == LONG  # nothing was touched


def test_overwrite_says_what_it_removes(tmp_path, uninterrupted, capsys):
  run = _copy(uninterrupted, tmp_path / "run")
  assert cli.main(["run", *ARGS, "--rounds", "2", "--out", str(run), "--overwrite"]) == 0
  err = capsys.readouterr().err
  assert "--overwrite removed metrics.jsonl, summary.json, curves.png, checkpoint.ckpt, " \
         f"config.json from {run}" in err
  assert len(_rows(run)) == 2


def test_results_go_to_stdout_and_logs_to_stderr(tmp_path, capsys):
  assert cli.main(["run", *ARGS, "--rounds", "2", "--out", str(tmp_path / "r"), "--json"]) == 0
  out, err = capsys.readouterr()
  summary = json.loads(out)
  assert summary["rounds_completed"] == 2 and summary["out"] == str(tmp_path / "r")
  assert "fedjax-lite run: done" in err and "{" not in err


def test_help_and_version_answer_without_jax():
  code = ("import sys, time\nt = time.perf_counter()\nfrom fedjax_lite import cli\n"
          "try:\n  cli.main(['run', '--help'])\nexcept SystemExit:\n  pass\n"
          "print('jax' in sys.modules, time.perf_counter() - t, file=sys.stderr)")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=60, env={**os.environ, "PYTHONWARNINGS": "ignore"})
  loaded, seconds = done.stderr.split()
  assert loaded == "False", "--help imported JAX"
  assert float(seconds) < 1.0, seconds
  text = done.stdout
  for group in ("data:", "model:", "training:", "algorithm:", "differential privacy:",
                "scale-out", "output:", "examples:"):
    assert group in text, group
  assert "``" not in text and ":func:" not in text  # plain text, no reST
  version = subprocess.run([SCRIPT, "--version"], capture_output=True, text=True, timeout=60)
  assert version.returncode == 0 and version.stdout.startswith("fedjax-lite ")


def test_a_second_run_compiles_from_the_persistent_cache(tmp_path):
  env = {**os.environ, "FEDJAX_LITE_COMPILE_CACHE": "1",
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache")}
  summaries = []
  for name in ("first", "second"):
    done = subprocess.run([SCRIPT, "run", *ARGS, "--rounds", "2", "--out", str(tmp_path / name),
                           "--json", "-q"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summaries.append(json.loads(done.stdout))
    entries = len(list((tmp_path / "cache").iterdir()))
    if name == "first":
      assert entries > 0, "nothing was cached"
      first_entries = entries
  assert entries == first_entries  # the second run compiled nothing new
  keep = ("final_train_loss", "eval_loss", "central_loss")
  assert [{k: s[k] for k in keep} for s in summaries] == [{k: summaries[0][k] for k in keep}] * 2
