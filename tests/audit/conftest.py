"""Fixtures for the audit tests: a planted ONNX model and data on disk, as a user would have them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.audit.planted import planted_model

SHAPE = (48, 48)
REGION = (slice(16, 32), slice(16, 32))
SPACING = 0.5


def write_manifest(folder: Path, images: np.ndarray, labels: np.ndarray, spacing=(SPACING, SPACING)) -> Path:
    """One .npz per image (HU + spacing) and a CSV manifest pointing at them."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,label,id"]
    for i, (img, lab) in enumerate(zip(images, labels)):
        np.savez(folder / f"case{i:03d}.npz", hu=img, spacing=np.array(spacing))
        rows.append(f"case{i:03d}.npz,{int(lab)},case{i:03d}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def planted_images(n: int, spread_hu: float, seed: int = 0) -> np.ndarray:
    """Flat images whose region mean is spread around the threshold 0 HU, plus texture outside the region."""
    rng = np.random.default_rng(seed)
    imgs = rng.normal(0.0, 30.0, (n, *SHAPE)).astype(np.float32)
    imgs[(slice(None), *REGION)] = rng.normal(0.0, spread_hu, (n, 1, 1)).astype(np.float32)
    return imgs


@pytest.fixture
def planted(tmp_path) -> Path:
    return planted_model(tmp_path / "planted.onnx", SHAPE, REGION, threshold_hu=0.0)


def write_config(path: Path, model: Path, manifest: Path, *, noise: str, run: str = "batch_size = 64\nshard_samples = 8") -> Path:
    path.write_text(f'[model]\npath = "{model}"\nname = "planted"\n\n[data]\nmanifest = "{manifest}"\n\n'
                    f"[noise]\n{noise}\n\n[run]\n{run}\n")
    return path
