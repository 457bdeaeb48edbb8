"""``audit fast-gate CONFIG.toml --policy POLICY.toml``: the sequential gate (stops drawing once decided)."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.config import load_config
from audit.errors import ConfigError
from audit.gate import load_policy, load_report, table, write_junit
from audit.pipelines.fast_gate import as_outcomes, run_fast_gate


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fast-gate", help="gate a model by drawing in rounds until every rule is decided (exit 1 if violated)")
    p.add_argument("config", type=Path, help="audit config (TOML), as for audit run")
    p.add_argument("--policy", type=Path, required=True)
    p.add_argument("--baseline", type=Path, help="an earlier report.json for no_regression rules")
    p.add_argument("--out", type=Path, default=Path("audit-gate"))
    p.add_argument("--rounds", type=int, default=10, help="draws come in this many rounds (default 10)")
    p.add_argument("--error", type=float, default=0.05, help="bound on a wrong early verdict per rule (default 0.05)")
    p.add_argument("--junit", type=Path, default=None, help="JUnit XML (default: OUT/gate-junit.xml)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1 or not 0 < args.error < 1:
        raise ConfigError(f"--rounds must be >= 1 and --error in (0, 1), got {args.rounds} and {args.error}")
    config = load_config(args.config)
    rules = load_policy(args.policy)
    baseline = load_report(args.baseline) if args.baseline else None
    result = run_fast_gate(config, rules, args.out, rounds=args.rounds, error=args.error, baseline=baseline)
    outcomes = as_outcomes(result)
    print(table(outcomes))
    write_junit(args.junit or args.out / "gate-junit.xml", outcomes)
    print(f"fast gate: {'passed' if result['passed'] else 'FAILED'} with {result['inferences']} of "
          f"{result['full_inferences']} inferences ({result['inference_ratio']:.1f}x fewer); {args.out / 'gate.json'}")
    return 0 if result["passed"] else 1
