"""``audit report OUT``: render report.html again from OUT/report.json and the figure files beside it."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.report.build import read_report
from audit.report.html import render_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render report.html again from an output folder (report.json and its figures)")
    p.add_argument("out", type=Path, help="output folder of audit run or audit demo")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    read_report(args.out / "report.json")  # checked with types first: a spoilt report is one line naming the key
    print(f"wrote {render_report(args.out)}")
    return 0
