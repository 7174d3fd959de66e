"""TensorBoard and W&B logging: as run_rounds callbacks and as `fedjax-lite run --log`.

The TensorBoard event files are read back record by record (TFRecord framing,
tensorboardX's Event protobuf); the W&B run is offline (WANDB_MODE=offline).
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import jax
import optax
import pytest

import fedjax_lite as fl
from fedjax_lite import cli, loggers
from tests.conftest import linear_model, make_clients

pytest.importorskip("tensorboardX")


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
  from tensorboardX.proto import event_pb2

  found: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    at = 0
    while at < len(data):
      (length,) = struct.unpack("<Q", data[at:at + 8])
      record = data[at + 12:at + 12 + length]
      at += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        found.setdefault(value.tag, []).append((event.step, value.simple_value))
  return found


def test_tensorboard_callback_logs_every_rounds_scalars(tmp_path):
  params, loss = linear_model()
  pop = fl.from_clients(make_clients([5, 3, 8, 2, 6, 4]))
  algo = fl.build_federated_algorithm(
      fl.build_client_update(loss, optax.sgd(0.1), batch_size=2), fl.server.fedavg())
  tb = loggers.TensorBoard(tmp_path / "tb")
  _, history = fl.run_rounds(algo, algo.init(params), pop, num_rounds=3, cohort_size=3,
                             key=jax.random.key(0), callback=tb, progress=False)
  tb.close()
  logged = _scalars(tmp_path / "tb")
  assert [step for step, _ in logged["train_loss"]] == [0, 1, 2]
  assert [v for _, v in logged["train_loss"]] == pytest.approx(
      [float(h["train_loss"]) for h in history], rel=1e-6)


def test_run_log_tensorboard_matches_metrics_jsonl(tmp_path):
  out = tmp_path / "run"
  assert cli.main(["run", "--model", "logreg", "--rounds", "3", "--eval-every", "2",
                   "--clients-per-round", "5", "--out", str(out), "--log", "tensorboard",
                   "-q"]) == 0
  rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
  logged = _scalars(out / "tensorboard")
  assert logged["train_loss"] == [(r["round"], pytest.approx(r["train_loss"], rel=1e-6))
                                  for r in rows]
  evals = [(r["round"], r["eval_accuracy"]) for r in rows if "eval_accuracy" in r]
  assert logged["eval_accuracy"] == [(s, pytest.approx(v, rel=1e-6)) for s, v in evals]


def test_run_log_refuses_unknown_sinks(tmp_path, capsys):
  assert cli.main(["run", "--log", "csv", "--out", str(tmp_path / "x")]) == 2
  assert "unknown --log sink 'csv'; choose from: tensorboard, wandb" in capsys.readouterr().err


def _wandb_history(directory: Path) -> list[dict]:
  """The history records of an offline W&B run, read from its .wandb file (a 7-byte header,
  then LevelDB-log framing in 32 KiB blocks: crc, length, type, data; wandb's Record protobuf)."""
  from wandb.proto import wandb_internal_pb2

  (path,) = directory.glob("wandb/offline-run-*/run-*.wandb")
  data, at, pending, rows = path.read_bytes(), 7, b"", []
  while at + 7 <= len(data):
    if 32768 - at % 32768 < 7:  # a block's zero-padded tail
      at += 32768 - at % 32768
      continue
    _, length, kind = struct.unpack("<IHB", data[at:at + 7])
    pending += data[at + 7:at + 7 + length]
    at += 7 + length
    if kind in (1, 4):  # a full record, or the last piece of one
      record = wandb_internal_pb2.Record.FromString(pending)
      pending = b""
      if record.WhichOneof("record_type") == "history":
        items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                 for i in record.history.item}
        rows.append({k: v for k, v in items.items() if not k.startswith("_")})
  return rows


def test_wandb_offline_run(tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  sink = loggers.WandB(tmp_path / "w", config={"rounds": 2}, name="t")
  for r in range(2):
    sink.log({"train_loss": 1.0 / (r + 1), "note": "skipped", "clients": 3}, r)
  sink.close()
  expected = [{"train_loss": 1.0, "clients": 3}, {"train_loss": 0.5, "clients": 3}]
  deadline = time.monotonic() + 30  # wandb's service may still be writing the file
  while (history := _wandb_history(tmp_path / "w")) != expected and time.monotonic() < deadline:
    time.sleep(0.2)
  assert history == expected
