"""A real two-process run (jax.distributed, CPU gloo collectives, 127.0.0.1) equals one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests import multiprocess_worker as worker

WORKER = Path(worker.__file__)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_processes(num_processes: int, out: Path, timeout: float = 240.0) -> None:
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), str(num_processes), str(port),
                             str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for i in range(num_processes)]
  try:
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:  # never leave a process behind, whatever happened
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, (p, text) in enumerate(zip(procs, outputs, strict=True)):
    assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{text[-3000:]}"


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
  out = tmp_path / "two.npz"
  _run_processes(2, out)
  got = np.load(out)

  population, params, build = worker.setup()
  state, history = worker.run(build(None), population, params)
  want = [np.asarray(x) for x in jax.tree.leaves(state.params)]
  assert len(want) == len([k for k in got.files if k.startswith("arr_")])
  for i, w in enumerate(want):
    np.testing.assert_allclose(got[f"arr_{i}"], w, atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(got["num_examples"], [h["num_examples"] for h in history])
  np.testing.assert_allclose(got["train_loss"], [h["train_loss"] for h in history], rtol=1e-5)
