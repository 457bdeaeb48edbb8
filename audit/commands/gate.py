"""``audit gate REPORT.json --policy POLICY.toml [--baseline OLD.json] [--junit gate.xml]``: exit 0 pass, 1 violated."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.gate import evaluate, load_policy, load_report, table, write_junit
from audit.track import DEFAULT_EXPERIMENT, TrackSpec, log_audit, require_mlflow


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gate", help="check a report against a policy (exit 1 if any rule is violated)")
    p.add_argument("report", type=Path)
    p.add_argument("--policy", type=Path, required=True, help="policy file (TOML) of [[rule]] tables; see README")
    p.add_argument("--baseline", type=Path, help="an earlier report.json for no_regression rules")
    p.add_argument("--junit", type=Path, default=None, help="also write JUnit XML with one test case per rule here")
    p.add_argument("--mlflow", metavar="URI", default=None,
                   help="also log the report and the verdict (tag audit.gate) as an MLflow run (extra: track)")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    p.add_argument("--run-name", default=None, help="MLflow run name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = load_report(args.report)
    rules = load_policy(args.policy)
    if args.mlflow is not None:
        require_mlflow()
    baseline = load_report(args.baseline) if args.baseline else None
    outcomes = evaluate(report, rules, baseline)
    print(table(outcomes))
    if args.junit is not None:
        write_junit(args.junit, outcomes)
    failed = sum(not o.passed for o in outcomes)
    print(f"gate: {'FAILED' if failed else 'passed'} ({failed} of {len(outcomes)} checks violated)")
    if args.mlflow is not None:
        run_id = log_audit(TrackSpec(args.mlflow, args.experiment, args.run_name), report, [args.report, args.report.parent / "report.html"],
                           verdict="fail" if failed else "pass")
        print(f"mlflow: logged run {run_id} to experiment {args.experiment!r}")
    return 1 if failed else 0
