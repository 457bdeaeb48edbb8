"""``audit retrain CONFIG.toml [--out DIR]``: adaptive or adversarial retraining of a reference model, round by round."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.config import load_retrain_config
from audit.pipelines.retrain import retrain_from_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrain", help="adaptive / adversarial retraining of a reference model, audited every round")
    p.add_argument("config", type=Path, help="retrain config (TOML): [model], [retrain], [attack]")
    p.add_argument("--out", type=Path, default=Path("retrain-out"), help="output folder (default: retrain-out)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal, off under CI)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_retrain_config(args.config)
    report = retrain_from_config(config, args.out, progress=args.progress)
    for r in report["rounds"]:
        scores = ", ".join(f"{split} {key} {r[split][key]:.3f}" for split in ("train", "test")
                           for key in ("auc", "macro_f1", "mae", "dice") if key in r[split])
        sar = ", ".join(f"{b['level']:g} mAs {b['SAR_overall']:.4f}" for b in r.get("audit", []))
        print(f"round {r['round']}: attack SAN train {r['train']['san']}/{r['train']['n']}, test {r['test']['san']}/"
              f"{r['test']['n']}; {scores}" + (f"; noise SAR {sar}" if sar else ""))
    print(f"reports: {args.out / 'retrain.json'}, {args.out / 'retrain.html'}"
          + (f", {args.out / report['audit_report']}" if report.get("audit_report") else ""))
    return 0
