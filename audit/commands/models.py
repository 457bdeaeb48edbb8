"""``audit models``: list the reference models; build one (train on phantoms, report metrics, export ONNX).

    audit models list
    audit models build NAME [--variant V] [--folds K] [--repeats R] [--seed S] [--epochs E]
                            [--samples N] [--quick] --out DIR

``build`` prints one line per trained model and a summary, and writes
``metrics.json``, ``recipe.json``, the ONNX files and the state dicts to DIR.
"""

from __future__ import annotations

import argparse
import sys

from audit.io import progress_enabled
from models.build import build
from models.registry import REGISTRY


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="reference models: list, build (train, export ONNX)",
                              description="Reference models from the studies, trained on synthetic phantoms.")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    lp = sub.add_parser("list", help="list the models and their variants")
    lp.set_defaults(func=_list)

    bp = sub.add_parser("build", help="train on phantom data, report metrics, export ONNX")
    bp.add_argument("name", help="model name (see 'audit models list')")
    bp.add_argument("--variant", help="model variant (default: the first listed)")
    bp.add_argument("--folds", type=int, help="cross-validation folds K (1: one train/validation split)")
    bp.add_argument("--repeats", type=int, help="train R times with seeds seed..seed+R-1 (same data and splits)")
    bp.add_argument("--seed", type=int, help="training seed of the first repeat (default 0)")
    bp.add_argument("--epochs", type=int, help="epochs per model (default: the recipe's)")
    bp.add_argument("--samples", type=int, help="phantom samples in all, test split included (default: the recipe's)")
    bp.add_argument("--quick", action="store_true", help="the CI-sized recipe (smaller data, fewer epochs)")
    bp.add_argument("--out", required=True, help="output directory (created if missing)")
    bp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bars (default: on a terminal, off under CI; one line per epoch otherwise)")
    bp.set_defaults(func=_build)


def _list(args: argparse.Namespace) -> int:
    for e in REGISTRY.values():
        print(f"{e.name:<12} {e.description}")
        print(f"{'':<12} variants: {', '.join(e.variants)}")
        d, q = e.default, e.quick
        print(f"{'':<12} recipe: {_recipe(d)}; --quick: {_recipe(q)}")
    return 0


def _recipe(r: dict) -> str:
    return f"{r['samples']} samples, {r['epochs']} epochs, {r['folds']} fold{'s' * (r['folds'] != 1)}"


def _build(args: argparse.Namespace) -> int:
    def log(line: str) -> None:
        print(line, flush=True)

    result = build(args.name, args.variant, out=args.out, folds=args.folds, repeats=args.repeats, quick=args.quick,
                   seed=args.seed, epochs=args.epochs, samples=args.samples,
                   progress=progress_enabled(args.progress), log=log)
    summary = result.metrics["summary"]
    parts = [f"{k} {v['mean']:.3f} (min {v['min']:.3f})" for k, v in summary.items()
             if k in ("auc", "macro_f1", "accuracy", "mae", "dice", "contour_mae_mm")]
    n = len(result.artifacts)
    print(f"{result.recipe.model}/{result.recipe.variant}: {n} model{'s' * (n != 1)}, test {', '.join(parts)}; "
          f"{result.metrics['timing_s']['total']:.0f} s")
    print(f"wrote {result.out / 'metrics.json'} and {n} ONNX file{'s' * (n != 1)}", file=sys.stderr)
    return 0
