"""Reference artifacts shipped inside the package, so the main job audits a real model at once.

``models/artifacts/<name>/`` holds what ``audit models build`` wrote for the
model's shipped recipe (``SHIPPED_RECIPES``): ``metrics.json`` (recipe, its
hash, per-model test metrics), ``recipe.json`` and the ONNX file (the torch
state dict is left out: the ONNX file is the artifact under audit). The recipe
hash covers the code that decides the weights, so ``tests/models/test_shipped.py``
fails CI when a change to that code leaves a shipped artifact stale; rebuild
with ``python -m models.shipped nodule3d`` (about 10 CPU-minutes) and commit.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from models import cache, registry
from models.build import BuildResult, build, load_build

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
#: Model name -> the recipe options of its shipped build (the default recipe trained on one fold).
SHIPPED_RECIPES: dict[str, dict] = {"nodule3d": {"folds": 1}}


def shipped_recipe(name: str) -> registry.Recipe:
    return registry.get(name).recipe(None, **SHIPPED_RECIPES[name])


def shipped_build(name: str) -> BuildResult:
    """The shipped build of ``name`` (``InputError`` if it is missing or incomplete)."""
    return load_build(ARTIFACTS / name)


def rebuild(name: str) -> BuildResult:
    """Train the shipped recipe of ``name`` from scratch and replace ``models/artifacts/<name>``."""
    tmp = ARTIFACTS / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    result = build(name, None, out=tmp, log=print, **SHIPPED_RECIPES[name])
    assert result.recipe_hash == cache.recipe_hash(shipped_recipe(name))
    for a in result.artifacts:
        a.checkpoint.unlink(missing_ok=True)
    shutil.rmtree(ARTIFACTS / name, ignore_errors=True)
    tmp.rename(ARTIFACTS / name)
    return shipped_build(name)


if __name__ == "__main__":  # pragma: no cover - the maintainer's rebuild command
    for model in sys.argv[1:] or list(SHIPPED_RECIPES):
        print(rebuild(model).out)
