"""``audit attack CONFIG.toml [--out DIR]``: gradient attacks on a deployed model; the deployed artifact decides."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.config import load_attack_config
from audit.pipelines.attack import run_attack_config, summary_lines


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attack", help="gradient attacks (PGD, NPS-projected ascent, ...) on a deployed ONNX model")
    p.add_argument("config", type=Path, help="attack config (TOML): [model], [data], [attack], optional [noise]")
    p.add_argument("--out", type=Path, default=Path("attack-out"), help="output folder (default: attack-out)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal, off under CI)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_attack_config(args.config)
    report = run_attack_config(config, args.out, progress=args.progress)
    for line in summary_lines(report):
        print(line)
    for line in ood_lines(report):
        print(line)
    print(f"reports: {args.out / 'attack.json'}, {args.out / 'attack.html'}")
    return 0


def ood_lines(report: dict) -> list[str]:
    """One line per run of a model with an OOD output: the detector's AUROC of clean against attacked inputs."""
    lines = []
    for b in report["runs"]:
        o = (b.get("summary") or {}).get("ood")
        if not o:
            continue
        if o.get("auroc") is None:
            lines.append(f"{b['label']}: OOD AUROC undefined ({o.get('note', '')})")
            continue
        won = (o.get("successful") or {}).get("auroc")
        lo, hi = (f"{v:.3f}" if v is not None else "-" for v in o["ci"])
        lines.append(f"{b['label']}: OOD AUROC clean vs attacked {o['auroc']:.3f} [{lo}, {hi}]"
                     + (f", successful candidates only {won:.3f}" if won is not None else ""))
    return lines
