"""``audit gate REPORT.json --policy POLICY.toml [--baseline OLD.json] [--junit gate.xml]``: exit 0 pass, 1 violated."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.gate import evaluate, load_policy, load_report, table, write_junit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gate", help="check a report against a policy (exit 1 if any rule is violated)")
    p.add_argument("report", type=Path)
    p.add_argument("--policy", type=Path, required=True, help="policy file (TOML) of [[rule]] tables; see README")
    p.add_argument("--baseline", type=Path, help="an earlier report.json for no_regression rules")
    p.add_argument("--junit", type=Path, default=None, help="also write JUnit XML with one test case per rule here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = load_report(args.report)
    rules = load_policy(args.policy)
    baseline = load_report(args.baseline) if args.baseline else None
    outcomes = evaluate(report, rules, baseline)
    print(table(outcomes))
    if args.junit is not None:
        write_junit(args.junit, outcomes)
    failed = sum(not o.passed for o in outcomes)
    print(f"gate: {'FAILED' if failed else 'passed'} ({failed} of {len(outcomes)} checks violated)")
    return 1 if failed else 0
