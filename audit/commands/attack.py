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
    print(f"reports: {args.out / 'attack.json'}, {args.out / 'attack.html'}")
    return 0
