"""Small drawing helpers shared by the phantoms: soft-edged shapes on mm grids."""

from __future__ import annotations

import numpy as np


def sample_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The generator of sample ``index`` of data set ``stream`` under ``seed`` (independent of set size)."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


def soft(signed_mm: np.ndarray, edge_mm: float) -> np.ndarray:
    """Occupancy in [0, 1] from a signed distance (mm, positive inside): a logistic partial-volume edge."""
    return 1.0 / (1.0 + np.exp(-np.clip(signed_mm / edge_mm, -30.0, 30.0)))


def paint(img: np.ndarray, weight: np.ndarray, hu: float | np.ndarray) -> None:
    """Blend ``hu`` into ``img`` in place with occupancy ``weight`` (later shapes lie on top)."""
    img *= 1.0 - weight
    img += weight * hu


def segment_distance(pts: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) of points ``(..., d)`` to segment a-b, and the position t in [0, 1] along it."""
    ab = b - a
    t = np.clip(((pts - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    closest = a + t[..., None] * ab
    return np.linalg.norm(pts - closest, axis=-1), t


def random_unit(rng: np.random.Generator, n: int, dim: int = 3) -> np.ndarray:
    v = rng.normal(size=(n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)
