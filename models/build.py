"""Build a reference model: phantom data, k-fold x repeats training, test metrics, ONNX export, metrics JSON.

Output folder layout (``out``)::

    recipe.json                     the recipe and its hash
    metrics.json                    per model: seed, fold, best epoch, val and test metrics, parity; summary
    <name>-r<R>-f<K>.onnx           exported model (metadata: models.export)
    <name>-r<R>-f<K>.pt             plain state dict (load with torch.load(..., weights_only=True))

``metrics.json`` is written last (atomically), so its presence marks a complete build.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from audit.errors import InputError
from models import cache, export, registry, training

METRICS_SCHEMA = "audit-models-build/1"


@dataclass(frozen=True)
class Artifact:
    """One trained and exported model of a build."""

    repeat: int
    fold: int
    seed: int
    onnx: Path
    checkpoint: Path
    weights_sha256: str
    test: dict


@dataclass(frozen=True)
class BuildResult:
    """``out`` folder, the ``recipe`` and its hash, the ``artifacts``, the ``metrics`` JSON as a dict."""

    out: Path
    recipe: registry.Recipe
    recipe_hash: str
    artifacts: list[Artifact]
    metrics: dict

    @property
    def primary(self) -> Path:
        """The ONNX file of repeat 0, fold 0: the model a demo audits."""
        return self.artifacts[0].onnx


def prepare_out(out: str | os.PathLike, label: str = "--out") -> Path:
    """Create ``out`` if needed and check that it is a writable folder; ``InputError`` naming ``label`` otherwise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{label} {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"{label} {out}: cannot write there ({exc.strerror or exc}); expected a writable directory") from None
    return out


def load_checkpoint(name: str, variant: str | None, path: str | os.PathLike) -> torch.nn.Module:
    """The net of ``name``/``variant`` with the weights of a build's ``.pt`` file (weights_only load), eval mode."""
    bp = registry.get(name).blueprint(variant)
    net = bp.make_net()
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except (OSError, RuntimeError, KeyError) as exc:
        raise InputError(f"{path}: not a {name} checkpoint ({str(exc).splitlines()[0]})") from None
    return net.eval()


def build(name: str, variant: str | None = None, *, out: str | os.PathLike, folds: int | None = None,
          repeats: int | None = None, quick: bool = False, seed: int | None = None, epochs: int | None = None,
          samples: int | None = None, progress: bool = False,
          log: Callable[[str], None] | None = None) -> BuildResult:
    """Train ``repeats`` x ``folds`` models of ``name`` on phantom data, export each to ONNX, write metrics.

    Unset options take the model's default recipe (or its CI-sized ``quick``
    recipe). Repeat r trains with ``seed + r``; data and splits stay fixed.
    ``log`` receives one line per trained model. Raises ``ConfigError`` for an
    unknown name, variant or bad option, ``InputError`` for an unusable ``out``,
    ``ParityError`` if an export disagrees with PyTorch.
    """
    entry = registry.get(name)
    recipe = entry.recipe(variant, quick=quick, folds=folds, repeats=repeats, seed=seed, epochs=epochs, samples=samples)
    out = prepare_out(out)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    try:
        _run(recipe, staging, progress=progress, log=log)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_build(out)


def _publish(staging: Path, out: Path) -> None:
    """Move a finished build's files from ``staging`` into ``out``, ``metrics.json`` last.

    Each ``os.replace`` is atomic on one file system, and ``metrics.json`` marks a build complete
    (``load_build``), so a build killed at any moment never leaves a folder that reads as finished
    with half-written files."""
    files = sorted(staging.iterdir(), key=lambda f: f.name == "metrics.json")
    for f in files:
        os.replace(f, out / f.name)


def _run(recipe: registry.Recipe, out: Path, *, progress: bool, log: Callable[[str], None] | None) -> BuildResult:
    bp = registry.get(recipe.model).blueprint(recipe.variant)
    rhash = cache.recipe_hash(recipe)
    t0, c0 = time.perf_counter(), time.process_time()
    data = bp.make_data(recipe.samples, recipe.data_seed)
    splits = training.make_splits(data.strata, recipe)
    t_data = time.perf_counter() - t0
    _write_json(out / "recipe.json", {"recipe": recipe.to_dict(), "recipe_hash": rhash})
    artifacts, records = [], []
    t_train = t_export = 0.0
    for r in range(recipe.repeats):
        seed = recipe.seed + r
        for split in splits:
            stem = f"{recipe.model}-r{r}-f{split.fold}"
            t1 = time.perf_counter()
            res = training.TRAINERS[bp.trainer](bp, recipe, data, split, seed, progress=progress, log=log,
                                                desc=f"{recipe.model} r{r} f{split.fold}")
            test = training.evaluate(bp, res.net, data, split.test)
            t2 = time.perf_counter()
            wsha = training.weights_sha256(res.net)
            ckpt = out / f"{stem}.pt"
            torch.save(res.net.state_dict(), ckpt)
            md = export.metadata_for(bp, recipe_hash=rhash, weights=wsha, seed=seed, fold=split.fold, repeat=r,
                                     test_metrics=test)
            onnx_path = out / f"{stem}.onnx"
            diff = export.export_onnx(res.net, onnx_path, input_shape=bp.input_shape, output_names=bp.output_names,
                                      metadata=md, parity_inputs=data.x[split.test[: export.PARITY_SAMPLES]])
            t3 = time.perf_counter()
            t_train, t_export = t_train + (t2 - t1), t_export + (t3 - t2)
            artifacts.append(Artifact(r, split.fold, seed, onnx_path, ckpt, wsha, test))
            records.append({
                "repeat": r, "fold": split.fold, "seed": seed, "onnx": onnx_path.name, "checkpoint": ckpt.name,
                "weights_sha256": wsha, "best_epoch": res.best_epoch, "val": res.val_metrics, "test": test,
                "history": res.history, "parity_max_abs_diff": diff, "n_train": int(split.train.size),
                "n_val": int(split.val.size), "n_test": int(split.test.size), "train_s": round(t2 - t1, 2),
            })
            if log is not None:
                log(f"{stem}: {_headline(test)} (best epoch {res.best_epoch}, {t2 - t1:.0f} s)")
    metrics = {
        "schema": METRICS_SCHEMA, "model": recipe.model, "variant": recipe.variant, "task": bp.task.kind,
        "class_names": list(bp.class_names), "recipe": recipe.to_dict(), "recipe_hash": rhash,
        "models": records, "summary": summarize([a.test for a in artifacts]),
        "primary": artifacts[0].onnx.name,
        "timing_s": {"data": round(t_data, 2), "train": round(t_train, 2), "export": round(t_export, 2),
                     "total": round(time.perf_counter() - t0, 2), "cpu": round(time.process_time() - c0, 2)},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    _write_json(out / "metrics.json", metrics)
    return BuildResult(out, recipe, rhash, artifacts, metrics)


def _headline(m: dict) -> str:
    keys = [k for k in ("auc", "macro_f1", "accuracy", "mae", "dice", "contour_mae_mm", "cpm") if k in m]
    return ", ".join(f"{k} {m[k]:.3f}" for k in keys)


def summarize(tests: list[dict]) -> dict:
    """Mean, std, min and max over models of every scalar test metric."""
    out = {}
    for k in tests[0]:
        vals = [t[k] for t in tests if isinstance(t.get(k), (int, float)) and not isinstance(t.get(k), bool)]
        if len(vals) == len(tests) and k != "n":
            v = np.asarray(vals, dtype=np.float64)
            out[k] = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}
    return out


def _write_json(path: Path, obj) -> None:
    """Plain write: builds are written into a private staging folder and published whole (``_publish``)."""
    path.write_text(json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_build(folder: str | os.PathLike) -> BuildResult:
    """A finished build from its folder (``metrics.json`` present); ``InputError`` otherwise."""
    folder = Path(folder)
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}: no readable metrics.json ({exc})") from None
    if metrics.get("schema") != METRICS_SCHEMA:
        raise InputError(f"{folder}/metrics.json: schema {metrics.get('schema')!r}; expected {METRICS_SCHEMA!r}")
    recipe = registry.Recipe.from_dict(metrics["recipe"])
    arts = [Artifact(m["repeat"], m["fold"], m["seed"], folder / m["onnx"], folder / m["checkpoint"],
                     m["weights_sha256"], m["test"]) for m in metrics["models"]]
    missing = [a.onnx.name for a in arts if not a.onnx.is_file()]
    if missing:
        raise InputError(f"{folder}: build is incomplete, missing {missing}")
    return BuildResult(folder, recipe, metrics["recipe_hash"], arts, metrics)


def cached_build(name: str, variant: str | None = None, *, quick: bool = False, folds: int | None = None,
                 repeats: int | None = None, seed: int | None = None, epochs: int | None = None,
                 samples: int | None = None, cache_dir: str | os.PathLike | None = None, progress: bool = False,
                 log: Callable[[str], None] | None = None) -> BuildResult:
    """Like ``build``, but returns the cached build of the same recipe hash if there is one.

    A fresh build goes to a temporary sibling folder first and is renamed into
    place when complete, so a cache entry is never half-written (if two
    processes race, the first rename wins and the other's copy is discarded).
    """
    entry = registry.get(name)
    recipe = entry.recipe(variant, quick=quick, folds=folds, repeats=repeats, seed=seed, epochs=epochs, samples=samples)
    target = cache.build_dir(recipe, None if cache_dir is None else Path(cache_dir))
    if (target / "metrics.json").is_file():
        try:
            found = load_build(target)
            if found.recipe_hash == cache.recipe_hash(recipe):
                return found
        except InputError:
            pass
        shutil.rmtree(target, ignore_errors=True)
    prepare_out(target.parent, f"model cache (${cache.ENV_VAR})")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _run(recipe, tmp, progress=progress, log=log)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "metrics.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return load_build(target)

