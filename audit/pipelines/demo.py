"""``audit demo``: the main job on the embedded defaults.

Audits the reference NoduleNet3D shipped in the package (``models.shipped``:
its default recipe trained on one fold, built by the project's own recipe) on
an audit set of phantom nodule cubes that training never saw, at
10/50/100/200/500 mAs with K draws per sample and dose (study 1), noise from
the ``standard`` preset scaled to 25 HU at 100 mAs on the 1 mm grid.
``quick``: fewer samples and K = 10. ``train``: rebuild the model from its
recipe first (cached; with ``quick`` the CI-sized recipe) instead of auditing
the shipped file. A finished demo in the same folder is reused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from audit.artifact import open_path
from audit.campaign.noise import NoiseSpec
from audit.campaign.run import RunOptions, fingerprint, run_campaign, thread_layout
from audit.data import phantom_source
from audit.io import progress_enabled
from audit.pipelines.run import write_reports
from models.build import cached_build
from models.shipped import shipped_build

#: Demo sizes: (audit samples, draws K) for the default and the quick demo: K = 50 as in study 1; the default
#: demo (30,000 inferences) stays within 300 CPU-seconds on 2 cores with the shipped model.
DEFAULT_SIZE = (120, 50)
QUICK_SIZE = (48, 10)
AUDIT_SET_SEED = 1000  # the reference build trains on data seed 0
LEVELS = (10.0, 50.0, 100.0, 200.0, 500.0)
DEMO_FOLDS = 1  # the default demo trains the default recipe on one fold


def run_demo(out: Path, *, quick: bool = False, train: bool = False, progress: bool | None = None,
             log: Callable[[str], None] = print) -> tuple[dict[str, Any], Any]:
    """Audit the shipped reference model (or, with ``train``, one built from its recipe) into ``out``;
    returns (report, campaign statistics)."""
    if train:
        log(f"building or reusing the reference nodule3d model ({'quick' if quick else 'default'} recipe) ...")
        build = cached_build("nodule3d", quick=quick, folds=None if quick else DEMO_FOLDS,
                             progress=progress_enabled(progress), log=log)
    else:
        build = shipped_build("nodule3d")
        log(f"auditing the shipped reference nodule3d model (recipe {build.recipe_hash[:12]}; --train rebuilds it)")
    return audit_reference(out, build.primary, quick=quick, progress=progress, log=log,
                           build={"folder": str(build.out), "recipe_hash": build.recipe_hash, "shipped": not train,
                                  "test_metrics": build.artifacts[0].test})


def audit_reference(out: Path, onnx_path: Path, *, quick: bool = False, progress: bool | None = None,
                    log: Callable[[str], None] = print, build: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
    """The demo's audit of the nodule model at ``onnx_path``: the demo's data, noise and sizes."""
    n, k = QUICK_SIZE if quick else DEFAULT_SIZE
    # the campaign's layout, as ``audit run`` gives a model without thread options
    model = open_path(onnx_path, "nodule3d", **thread_layout().engine_options())
    source = phantom_source("nodules", n, AUDIT_SET_SEED)
    noise = NoiseSpec(kind="nps", levels=LEVELS, draws=k, seed=0, preset="standard", sigma_ref=25.0,
                      mas_ref=100.0).resolved(source)  # phantoms: the whole noise of each dose is added
    options = RunOptions(batch_size=64, shard_samples=32, progress=progress)
    marker = out / "campaign.json"
    resume = marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint([model], source, noise, options)
    if marker.is_file() and not resume:
        shutil.rmtree(out / "records", ignore_errors=True)
        marker.unlink()
    log(f"auditing {n} cubes x {len(LEVELS)} doses x K = {k} draws with {model.engine.describe()['providers']} ...")
    stats = run_campaign([model], source, noise, out, options, resume=resume)
    report = write_reports(out, [model], source, noise, stats, build=build)
    return report, stats
