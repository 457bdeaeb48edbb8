"""Reference models from the studies, the phantom data they train on, training and ONNX export.

Public API::

    models.list_models()                         -> [(name, variants, description)]
    models.build(name, variant=None, *, out, folds=None, repeats=None, quick=False, seed=None,
                 epochs=None, samples=None)       -> BuildResult (artifacts, metrics, primary ONNX path)
    models.cached_build(name, variant=None, *, quick=False, ...) -> BuildResult from the recipe-hash cache
    models.read_metadata(onnx_path)              -> ModelCard (task, classes, threshold, HU window, spacing)
    models.load_checkpoint(name, variant, pt_path) -> torch module (weights_only load)

See ``models.registry`` for names and recipes, ``models.export`` for the ONNX
metadata keys, ``models.cache`` for the cache location.
"""

from __future__ import annotations

from models.build import Artifact, BuildResult, build, cached_build, load_build, load_checkpoint
from models.export import ModelCard, ParityError, read_metadata
from models.registry import REGISTRY, Recipe


def list_models() -> list[tuple[str, tuple[str, ...], str]]:
    """(name, variants, description) of every registered model."""
    return [(e.name, e.variants, e.description) for e in REGISTRY.values()]


__all__ = [
    "Artifact", "BuildResult", "ModelCard", "ParityError", "REGISTRY", "Recipe", "build", "cached_build",
    "list_models", "load_build", "load_checkpoint", "read_metadata",
]
