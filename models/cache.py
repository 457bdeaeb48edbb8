"""Built artifacts cached by the hash of their recipe, so ``audit demo`` does not retrain every time.

Location: ``$AUDIT_CACHE_DIR`` if set, else ``~/.cache/ct-robustness-audit``;
builds live in ``<root>/models/<name>-<variant>-<hash[:16]>/``. The hash covers
the recipe, the source code that decides a build's weights and files
(``FINGERPRINT_SOURCES``) and the torch version, so a change to the phantoms,
nets, training or export invalidates old builds.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from models.registry import Recipe

ENV_VAR = "AUDIT_CACHE_DIR"
_PACKAGE = Path(__file__).resolve().parent
#: Sources (relative to the package) whose text is part of every recipe hash.
FINGERPRINT_SOURCES = ("phantoms", "nets", "augment.py", "tasks.py", "training.py", "registry.py", "export.py",
                       "build.py", "metrics.py")


def cache_root() -> Path:
    """The cache directory (not created here)."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ct-robustness-audit"


def code_fingerprint() -> str:
    """SHA-256 of the ``FINGERPRINT_SOURCES`` Python files (sorted by path)."""
    h = hashlib.sha256()
    files = []
    for name in FINGERPRINT_SOURCES:
        p = _PACKAGE / name
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    for p in sorted(files):
        h.update(str(p.relative_to(_PACKAGE)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def recipe_hash(recipe: Recipe) -> str:
    """The hex SHA-256 naming a build: recipe fields, code fingerprint, torch version."""
    payload = {"recipe": recipe.to_dict(), "code": code_fingerprint(), "torch": torch.__version__.split("+")[0]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def build_dir(recipe: Recipe, root: Path | None = None) -> Path:
    """Where the build of ``recipe`` is (or would be) cached."""
    root = cache_root() if root is None else Path(root)
    return root / "models" / f"{recipe.model}-{recipe.variant}-{recipe_hash(recipe)[:16]}"
