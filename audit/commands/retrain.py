"""``audit retrain CONFIG.toml [--out DIR]``: adaptive or adversarial retraining of a reference model, round by round."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrain", help="adaptive / adversarial retraining of a reference model, audited every round")
    p.add_argument("config", type=Path, help="retrain config (TOML): [model], [retrain], [attack]")
    p.add_argument("--out", type=Path, default=Path("retrain-out"), help="output folder (default: retrain-out)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal, off under CI)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models.retrain import load_retrain_config, retrain_from_config

    config = load_retrain_config(args.config)
    report = retrain_from_config(config, args.out, progress=args.progress)
    for r in report["rounds"]:
        print(f"round {r['round']}: train SAN {r['train']['san']}/{r['train']['n']}, test SAN {r['test']['san']}/"
              f"{r['test']['n']}, train AUC {r['train']['auc']:.3f}, test AUC {r['test']['auc']:.3f}")
    print(f"reports: {args.out / 'retrain.json'}, {args.out / 'retrain.html'}")
    return 0
