"""Lung-nodule cubes (study 1) and nodule-candidate patches (study 3), in HU at 1 mm.

Each cube is 32^3 voxels of lung parenchyma (about -850 HU, smooth texture)
crossed by a few vessels, with a nodule near the centre. Benign nodules are
small, round and smooth (some calcified); malignant ones larger, lobulated,
often spiculated, some with a ground-glass halo.

Notes
-----
The classes overlap by construction, so that a good model reaches an AUC near
0.9 rather than 1.0. Every nodule has a latent aggressiveness ``a``: N(0, 1)
for benign and N(2.5, 1) for malignant nodules, so no classifier of the image
can exceed the AUC of ``a`` itself, Phi(2.5 / sqrt 2) = 0.96. Size, lobulation,
spiculation, calcification and halo are each a *noisy* function of ``a``, so
size alone (the volume) reaches only about 0.85-0.9. The malignancy rating (1-5) is
``a`` plus reader noise, cut at fixed thresholds, like a radiologist's score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from models.phantoms._draw import paint, random_unit, sample_rng, segment_distance, soft

CUBE = 32
SPACING = (1.0, 1.0, 1.0)  # mm, (z, y, x)
PARENCHYMA_HU = -850.0
CLASS_NAMES = ("benign", "malignant")
FPR_CLASS_NAMES = ("not_nodule", "nodule")
#: Latent aggressiveness of malignant nodules (benign ones centre on 0, both unit variance).
MALIGNANT_SHIFT = 2.5
#: Reader thresholds on a + N(0, 0.5) that give ratings 1..5.
RATING_CUTS = (0.0, 0.8, 1.5, 2.3)

_STREAM_NODULES = 1
_STREAM_FPR = 2


@dataclass(frozen=True)
class NoduleSet:
    """Cubes ``images`` (N, 32, 32, 32) float32 HU, ``labels`` (N,) int64 (1 = malignant or nodule),
    ``ratings`` (N,) int64 in 1..5, ``spacing`` (z, y, x) mm, per-sample ``features`` (volume_mm3, ...)."""

    images: np.ndarray
    labels: np.ndarray
    ratings: np.ndarray
    spacing: tuple[float, float, float] = SPACING
    class_names: tuple[str, ...] = CLASS_NAMES
    features: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _grid() -> np.ndarray:
    c = (np.arange(CUBE) - (CUBE - 1) / 2.0) * SPACING[0]
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return np.stack([z, y, x], axis=-1)  # (32, 32, 32, 3) mm


_GRID = _grid()


def _background(rng: np.random.Generator) -> np.ndarray:
    """Parenchyma with soft texture and 2-5 vessels (HU)."""
    img = PARENCHYMA_HU + 25.0 * rng.uniform(-1, 1) + gaussian_filter(rng.normal(0.0, 60.0, (CUBE,) * 3), 1.2)
    for _ in range(int(rng.integers(2, 6))):
        _vessel(img, rng, through=rng.uniform(-14, 14, 3), radius=rng.uniform(0.6, 1.7))
    return img


def _vessel(img: np.ndarray, rng: np.random.Generator, through: np.ndarray, radius: float) -> None:
    d = random_unit(rng, 1)[0]
    dist, _ = segment_distance(_GRID, through - 40 * d, through + 40 * d)
    paint(img, soft(radius - dist, 0.4), 40.0 + rng.normal(0, 10))


def _nodule(img: np.ndarray, rng: np.random.Generator, a: float) -> dict[str, float]:
    """Draw a nodule of aggressiveness ``a`` near the centre; return its features."""
    s = a - MALIGNANT_SHIFT / 2
    centre = rng.uniform(-2.0, 2.0, 3)
    r0 = float(np.clip(4.0 * np.exp(0.16 * s + 0.17 * rng.normal()), 1.8, 10.0))
    lob = float(np.clip(0.10 + 0.05 * s + 0.05 * rng.normal(), 0.0, 0.4))
    p_spic = 1.0 / (1.0 + np.exp(-1.5 * (s - 1.0 + 0.6 * rng.normal())))
    spiculated = rng.random() < p_spic
    calcified = rng.random() < 1.0 / (1.0 + np.exp(2.0 * (s + 1.6)))
    halo = rng.random() < 1.0 / (1.0 + np.exp(-1.5 * (s - 1.6)))

    v = _GRID - centre
    dist = np.linalg.norm(v, axis=-1)
    u = v / np.maximum(dist, 1e-6)[..., None]
    lobes = random_unit(rng, int(rng.integers(3, 7)))
    bumps = np.exp(5.0 * (u @ lobes.T - 1.0)).sum(axis=-1)
    radius = r0 * (1.0 + lob * (bumps - 0.4))
    occ = soft(radius - dist, 0.35)
    if spiculated:
        n = int(rng.integers(4, 13))
        for d in random_unit(rng, n):
            length = r0 * (1.0 + rng.uniform(0.6, 1.5))
            sd, t = segment_distance(_GRID, centre, centre + length * d)
            occ = np.maximum(occ, soft(0.9 * (1.0 - t) + 0.25 - sd, 0.3))
    if halo:
        paint(img, soft(1.45 * radius - dist, 0.8), -550.0 + 50 * rng.normal())
    hu = 40.0 + 20.0 * rng.normal()
    if calcified:
        hu = rng.uniform(180.0, 450.0)
    paint(img, occ, hu)
    volume = float(np.sum(occ) * np.prod(SPACING))
    return {"volume_mm3": volume, "radius_mm": r0, "lobulation": lob, "spiculated": float(spiculated),
            "calcified": float(calcified), "halo": float(halo)}


def nodule_cubes(n: int, seed: int = 0, *, malignant_fraction: float = 0.5) -> NoduleSet:
    """``n`` nodule cubes (32^3, 1 mm, HU); sample ``i`` depends only on ``(seed, i)``.

    Labels: 0 benign, 1 malignant (probability ``malignant_fraction``); ratings 1..5.
    """
    n = int(n)
    images = np.empty((n, CUBE, CUBE, CUBE), np.float32)
    labels = np.empty(n, np.int64)
    ratings = np.empty(n, np.int64)
    feats: dict[str, list[float]] = {}
    for i in range(n):
        rng = sample_rng(seed, i, _STREAM_NODULES)
        label = int(rng.random() < malignant_fraction)
        a = rng.normal(MALIGNANT_SHIFT * label, 1.0)
        img = _background(rng)
        f = _nodule(img, rng, a)
        f["aggressiveness"] = a
        images[i], labels[i] = img, label
        ratings[i] = 1 + int(np.searchsorted(RATING_CUTS, a + rng.normal(0, 0.5)))
        for k, val in f.items():
            feats.setdefault(k, []).append(val)
    return NoduleSet(images, labels, ratings, SPACING, CLASS_NAMES, {k: np.asarray(v) for k, v in feats.items()})


def fpr_candidates(n: int, seed: int = 0, *, nodule_fraction: float = 0.5) -> NoduleSet:
    """Candidate patches for false-positive reduction (study 3): label 1 nodule, 0 look-alike.

    Look-alikes are what a candidate detector also fires on: vessel crossings and
    bifurcations with a thick vessel through the centre, and small elongated
    blobs (scar, partial-volume vessel ends). Ratings are 1 (not used).
    """
    n = int(n)
    images = np.empty((n, CUBE, CUBE, CUBE), np.float32)
    labels = np.empty(n, np.int64)
    for i in range(n):
        rng = sample_rng(seed, i, _STREAM_FPR)
        label = int(rng.random() < nodule_fraction)
        img = _background(rng)
        if label:
            _nodule(img, rng, rng.normal(MALIGNANT_SHIFT * (rng.random() < 0.5), 1.0))
        else:
            for _ in range(int(rng.integers(2, 4))):
                _vessel(img, rng, through=rng.uniform(-2, 2, 3), radius=rng.uniform(1.0, 2.6))
            if rng.random() < 0.5:  # an elongated blob: long axis >> short axes, unlike a nodule
                d = random_unit(rng, 1)[0]
                c = rng.uniform(-2, 2, 3)
                half = rng.uniform(3.0, 6.0)
                sd, _ = segment_distance(_GRID, c - half * d, c + half * d)
                paint(img, soft(rng.uniform(1.2, 2.2) - sd, 0.4), 30.0 + 15 * rng.normal())
        images[i], labels[i] = img, label
    return NoduleSet(images, labels, np.ones(n, np.int64), SPACING, FPR_CLASS_NAMES, {})
