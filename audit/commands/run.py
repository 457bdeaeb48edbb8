"""``audit run CONFIG.toml [--out DIR] [--resume] [--yes]``: a campaign from a config file, then its reports."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.campaign.run import MAX_RUN_INFERENCES
from audit.config import load_config
from audit.pipelines.run import run_config, summary_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="audit the models of a config file (TOML) and write the reports")
    p.add_argument("config", type=Path, help="audit config (TOML); see README for every key")
    p.add_argument("--out", type=Path, default=Path("audit-out"), help="output folder (default: audit-out)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run in --out, reusing finished shards")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal, off under CI)")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="spread sample blocks over the nodes of a Ray cluster: 'auto' (default; joins RAY_ADDRESS or "
                        "starts a local instance) or a cluster address host:port; no shared filesystem needed; "
                        "needs the ray extra")
    p.add_argument("--ray-actors", type=int, default=None, help="most sample blocks in flight at once (default: the usable nodes' CPUs, plus one "
                        "queued per node)")
    p.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs per block task (1 = one GPU each)")
    p.add_argument("--policy", type=Path, default=None,
                   help="gate policy (TOML): its verdict heads the report; exit 1 if a rule is violated")
    p.add_argument("--yes", action="store_true",
                   help=f"run a campaign above --max-inferences (default {MAX_RUN_INFERENCES:,}); without it such a "
                        "run is refused (exit 2) before anything is written")
    p.add_argument("--max-inferences", type=_count, default=MAX_RUN_INFERENCES, metavar="N",
                   help="the size above which a fresh run needs --yes (its size is printed before it starts)")
    p.set_defaults(func=run)


def _count(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of inferences >= 1, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    report = run_config(config, args.out, resume=args.resume, progress=args.progress, ray=args.ray,
                        ray_actors=args.ray_actors, ray_gpus=args.ray_gpus, policy=args.policy, yes=args.yes,
                        max_inferences=args.max_inferences, log=lambda line: print(line, flush=True))
    print(summary_table(report))
    print(f"reports: {args.out / 'report.json'}, {args.out / 'report.html'}, {args.out / 'junit.xml'}")
    verdict = report["summary"]["verdict"]
    if verdict is not None:
        print(f"gate ({args.policy}): {verdict}")
    return 1 if verdict == "fail" else 0
