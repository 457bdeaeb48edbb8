"""``audit demo [--out DIR] [--quick]``: the main job on the embedded defaults (see ``audit.pipelines.demo``)."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from audit.pipelines.demo import run_demo
from audit.pipelines.run import summary_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build or reuse the reference nodule model and audit it (the main job)")
    p.add_argument("--out", type=Path, default=Path("audit-demo"), help="output folder (default: audit-demo)")
    p.add_argument("--quick", action="store_true", help="a smaller audit (48 cubes, K = 10; seconds)")
    p.add_argument("--train", action="store_true",
                   help="rebuild the model from its recipe (cached) instead of auditing the shipped file")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report, stats = run_demo(args.out, quick=args.quick, train=args.train, progress=args.progress,
                             log=partial(print, flush=True))
    print(summary_table(report))
    done = (f"{stats.inferences} inferences in {stats.seconds:.1f} s" if stats.inferences else
            f"the finished audit in {args.out} was reused (delete the folder to run it again)")
    print(f"{done}; reports: {args.out / 'report.json'}, {args.out / 'report.html'}, {args.out / 'junit.xml'}")
    return 0
