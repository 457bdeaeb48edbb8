"""``audit demo [--out DIR] [--quick]``: the main job on the embedded defaults.

Builds (or reuses from the cache) the reference NoduleNet3D (its default
recipe trained on one fold, so the first run stays near 10 minutes on 2
cores; ``audit models build nodule3d`` gives the full k-fold build), draws an audit
set of phantom nodule cubes that training never saw, and audits the model at
10/50/100/200/500 mAs with K = 50 draws per sample and dose (study 1), noise
from the ``standard`` preset scaled to 25 HU at 100 mAs on the 1 mm grid.
``--quick`` uses the CI-sized model recipe, fewer samples and K = 10.
A finished demo in the same --out is reused; delete the folder to start over.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

#: Demo sizes: (audit samples, draws K) for the default and the quick demo.
DEFAULT_SIZE = (120, 50)
QUICK_SIZE = (48, 10)
AUDIT_SET_SEED = 1000  # the reference build trains on data seed 0
LEVELS = (10.0, 50.0, 100.0, 200.0, 500.0)
DEMO_FOLDS = 1  # the default demo trains the default recipe on one fold


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build or reuse the reference nodule model and audit it (the main job)")
    p.add_argument("--out", type=Path, default=Path("audit-demo"), help="output folder (default: audit-demo)")
    p.add_argument("--quick", action="store_true", help="CI-sized model and audit (a few minutes on 2 cores)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from audit.campaign import AuditedModel, RunOptions, fingerprint, run_campaign
    from audit.engines import load_engine
    from audit.heads import head_from, preprocess_from
    from audit.data import ArraySource
    from audit.noise_spec import NoiseSpec
    from audit.runner import summary_table, write_reports
    from models.build import cached_build
    from models.phantoms.nodules import nodule_cubes

    n, k = QUICK_SIZE if args.quick else DEFAULT_SIZE
    print(f"building or reusing the reference nodule3d model ({'quick' if args.quick else 'default'} recipe) ...", flush=True)
    build = cached_build("nodule3d", quick=args.quick, folds=None if args.quick else DEMO_FOLDS, progress=args.progress,
                         log=lambda s: print(s, flush=True))
    engine = load_engine(build.primary)
    model = AuditedModel("nodule3d", engine, head_from(engine.metadata), preprocess_from(engine.metadata))
    cubes = nodule_cubes(n, AUDIT_SET_SEED)
    source = ArraySource(cubes.images, tuple(cubes.spacing), cubes.labels, name=f"phantom nodules (n={n}, seed={AUDIT_SET_SEED})",
                         class_names=tuple(cubes.class_names))
    noise = NoiseSpec(kind="nps", levels=LEVELS, draws=k, seed=0, preset="standard", sigma_ref=25.0, mas_ref=100.0)
    options = RunOptions(batch_size=64, shard_samples=32, progress=args.progress)
    marker = args.out / "campaign.json"
    resume = marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint([model], source, noise, options)
    if marker.is_file() and not resume:
        shutil.rmtree(args.out / "records", ignore_errors=True)
        marker.unlink()
    print(f"auditing {n} cubes x {len(LEVELS)} doses x K = {k} draws with {engine.describe()['providers']} ...", flush=True)
    stats = run_campaign([model], source, noise, args.out, options, resume=resume)
    report = write_reports(args.out, [model], source, noise, stats,
                           extra={"build": {"folder": str(build.out), "recipe_hash": build.recipe_hash}})
    print(summary_table(report))
    print(f"{stats.inferences} inferences in {stats.seconds:.1f} s; reports: {args.out / 'report.json'}, "
          f"{args.out / 'report.html'}, {args.out / 'junit.xml'}")
    return 0
