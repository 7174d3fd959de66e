"""Qualitative results of the algorithms' papers, reproduced on small settings.

``python -m benchmarks.paper_results [--quick] [--only NAME] [--out DIR]``
runs each comparison through :func:`fedjax_lite.experiment.run_experiment`
(so every line is also a ``fedjax-lite run`` command, printed with it) and
prints one JSON line per run, then a Markdown table per comparison:

* ``fedprox_stragglers``: Li et al. 2020 (FedProx), Fig. 1's setting scaled
  down: LEAF Synthetic(1, 1), 30 clients, 10 per round, 20 local epochs of
  batch 10 at lr 0.01, logistic regression, 90% stragglers each round.
  FedAvg drops the stragglers; FedProx (mu = 1) aggregates their partial
  work. Reported: the global model's training loss (over all training
  clients) at the end and its largest value over the second half of the run
  (stability).
* ``scaffold_label_skew``: Karimireddy et al. 2020 (SCAFFOLD): digits split
  into shards of one label each, 2 shards per client (strong label skew),
  MLP, the same rounds for FedAvg and SCAFFOLD; the global training loss.
* ``robust_sign_flip``: 20% of clients send their update sign-flipped and
  scaled by 4; the plain mean against coordinate median, trimmed mean
  (beta 0.2) and Krum (f = 2), and FedAvg without attackers; central test
  accuracy.
* ``quantization``: 8-bit (and 2-bit) stochastic quantization of every
  update against uncompressed FedAvg (the default ``make run`` job); central
  test accuracy and bits sent.

``--quick`` runs every configuration for a few rounds only (for the tests: it
checks that they run, not the papers' claims).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedjax_lite import experiment

SYNTHETIC = dict(dataset="synthetic", synthetic_alpha=1.0, synthetic_beta=1.0, num_clients=30,
                 clients_per_round=10, model="logreg", local_epochs=20, batch_size=10,
                 client_lr=0.01, rounds=100, eval_every=5, eval_train=True)
LABEL_SKEW = dict(dataset="digits", partition="shards", shards_per_client=2, num_clients=50,
                  clients_per_round=10, model="mlp", local_epochs=5, batch_size=10,
                  client_lr=0.05, rounds=60, eval_every=5, eval_train=True)
ATTACK = dict(dataset="digits", partition="iid", num_clients=50, clients_per_round=20,
              model="logreg", local_epochs=2, batch_size=10, client_lr=0.05, rounds=60,
              eval_every=10, attack="sign_flip", attack_fraction=0.2, attack_scale=4.0)

COMPARISONS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "fedprox_stragglers": [
        ("FedAvg (stragglers dropped)", dict(SYNTHETIC, algorithm="fedavg", stragglers=0.9,
                                             straggler_mode="drop")),
        ("FedProx mu=0 (partial work)", dict(SYNTHETIC, algorithm="fedprox", mu=0.0,
                                             stragglers=0.9, straggler_mode="partial")),
        ("FedProx mu=1 (partial work)", dict(SYNTHETIC, algorithm="fedprox", mu=1.0,
                                             stragglers=0.9, straggler_mode="partial")),
    ],
    "scaffold_label_skew": [
        ("FedAvg", dict(LABEL_SKEW, algorithm="fedavg")),
        ("SCAFFOLD", dict(LABEL_SKEW, algorithm="scaffold")),
    ],
    "robust_sign_flip": [
        ("mean, no attackers", dict(ATTACK, attack="none", attack_fraction=0.0)),
        ("mean", dict(ATTACK, aggregator="mean")),
        ("coordinate median", dict(ATTACK, aggregator="median")),
        ("trimmed mean (beta 0.2)", dict(ATTACK, aggregator="trimmed_mean", trim_beta=0.2)),
        ("Krum (f=2)", dict(ATTACK, aggregator="krum", num_byzantine=2)),
    ],
    "quantization": [
        ("FedAvg, 32-bit", dict()),
        ("FedAvg, 8-bit quantized", dict(quantize_bits=8)),
        ("FedAvg, 2-bit quantized", dict(quantize_bits=2)),
    ],
}

REPORTED = ("final_train_loss", "train_eval_loss", "max_train_eval_loss_second_half",
            "eval_accuracy", "central_accuracy", "bits_sent_per_round")


def command(overrides: dict[str, Any]) -> str:
  """The ``fedjax-lite run`` command of a configuration."""
  parts = ["fedjax-lite run"]
  for key, value in overrides.items():
    flag = "--" + key.replace("_", "-")
    parts.append(flag if value is True else f"{flag} {value}")
  return " ".join(parts)


def run_one(comparison: str, label: str, overrides: dict[str, Any], out: Path,
            quick: bool) -> dict[str, Any]:
  config = dict(overrides)
  if quick:
    config.update(rounds=2, eval_every=1)
  config.update(out=str(out), overwrite=True, progress=False)
  resolved = experiment.resolve_config(None, config)
  summary = experiment.run_experiment(resolved, log=lambda line: None)
  rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if "train_eval_loss" in r]
  half = [r["train_eval_loss"] for r in evals if r["round"] >= resolved["rounds"] // 2]
  bits = [r["bits_sent"] for r in rows if "bits_sent" in r]
  result = {"comparison": comparison, "run": label, "command": command(overrides),
            "rounds": resolved["rounds"],
            **{k: summary.get(k) for k in REPORTED if k in summary},
            "max_train_eval_loss_second_half": max(half) if half else None,
            "bits_sent_per_round": bits[-1] if bits else None,
            "bits_uncompressed_per_round":
                rows[-1].get("bits_uncompressed") if bits else None}
  return {k: v for k, v in result.items() if v is not None}


def table(results: list[dict[str, Any]]) -> str:
  columns = [c for c in REPORTED if any(c in r for r in results)]
  lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for r in results:
    cells = [f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
    lines.append(f"| {r['run']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="a few rounds each (a smoke test)")
  p.add_argument("--only", action="append", choices=sorted(COMPARISONS),
                 help="run only this comparison (repeatable)")
  p.add_argument("--out", type=Path, default=None, help="keep the runs here")
  p.add_argument("--markdown", action="store_true", help="print a Markdown table per comparison")
  args = p.parse_args(argv)
  names = args.only or list(COMPARISONS)
  with tempfile.TemporaryDirectory() as tmp:
    root = args.out or Path(tmp)
    for name in names:
      results = []
      for i, (label, overrides) in enumerate(COMPARISONS[name]):
        result = run_one(name, label, overrides, root / f"{name}-{i}", args.quick)
        print(json.dumps(result), flush=True)
        results.append(result)
      if args.markdown:
        print(f"\n### {name}\n\n{table(results)}\n", file=sys.stderr, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
