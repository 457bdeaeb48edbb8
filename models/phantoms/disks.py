"""Axial lumbar-disk slices with masks and contours (study 4): 128^2 pixels at 0.8 mm, in HU.

The disk is a kidney-bean shape (an ellipse with a posterior notch) surrounded by
psoas muscles, the spinal canal, facet joints, fat and the aorta. Its boundary
is star-shaped about its centre, so the contour is a radius per angle.

Contours are ``CONTOUR_POINTS`` points at angles 2 pi j / P about the disk
centre, as (x, y) in normalised image coordinates: -1 and 1 are the outer edges
of the first and last pixel (the convention of ``torch.nn.functional.grid_sample``
with ``align_corners=False``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from models.phantoms._draw import paint, sample_rng, soft

SIZE = 128
SPACING = (0.8, 0.8)  # mm (y, x)
CONTOUR_POINTS = 32
_STREAM_DISK = 4


@dataclass(frozen=True)
class DiskSet:
    """``images`` (N, 128, 128) float32 HU, ``masks`` (N, 128, 128) uint8, ``contours`` (N, P, 2) float32
    normalised (x, y), ``spacing`` (y, x) mm."""

    images: np.ndarray
    masks: np.ndarray
    contours: np.ndarray
    spacing: tuple[float, float] = SPACING

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _coords() -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(SIZE) - (SIZE - 1) / 2.0) * SPACING[0]
    return np.meshgrid(c, c, indexing="ij")


_Y, _X = _coords()


def _disk_radius(theta: np.ndarray, a: float, b: float, notch: float, tilt: float) -> np.ndarray:
    """Radius (mm) of the disk boundary at angle ``theta`` (0 = +x, pi/2 = +y = posterior)."""
    th = theta - tilt
    r = a * b / np.sqrt((b * np.cos(th)) ** 2 + (a * np.sin(th)) ** 2)
    dth = np.angle(np.exp(1j * (th - np.pi / 2)))
    return r * (1.0 - notch * np.exp(-(dth / 0.45) ** 2))


def _ellipse(cy, cx, ay, ax):
    return np.sqrt(((_Y - cy) / ay) ** 2 + ((_X - cx) / ax) ** 2)


def disk_slices(n: int, seed: int = 0) -> DiskSet:
    """``n`` disk slices; sample ``i`` depends only on ``(seed, i)``."""
    n = int(n)
    images = np.empty((n, SIZE, SIZE), np.float32)
    masks = np.empty((n, SIZE, SIZE), np.uint8)
    contours = np.empty((n, CONTOUR_POINTS, 2), np.float32)
    half_fov = SIZE * SPACING[0] / 2.0
    angles = 2 * np.pi * np.arange(CONTOUR_POINTS) / CONTOUR_POINTS
    for i in range(n):
        rng = sample_rng(seed, i, _STREAM_DISK)
        img = np.full((SIZE, SIZE), -100.0) + gaussian_filter(rng.normal(0, 40.0, (SIZE, SIZE)), 1.5)
        cy, cx = rng.uniform(-6, 6), rng.uniform(-6, 6)
        a, b = rng.uniform(18, 27), rng.uniform(12, 17)
        notch, tilt = rng.uniform(0.0, 0.3), rng.normal(0, 0.1)
        for side in (-1, 1):  # psoas, facets
            w = soft((1 - _ellipse(cy - 2, cx + side * (a + 14), 14, 11)) * 11, 0.8)
            paint(img, w, 50.0 + rng.normal(0, 5))
            w = soft((1 - _ellipse(cy + b + 24, cx + side * 16, 6, 8)) * 6, 0.6)
            paint(img, w, 900.0)
        paint(img, soft((1 - _ellipse(cy + b + 10, cx, 7, 9)) * 7, 0.6), 10.0)  # canal
        paint(img, soft((1 - _ellipse(cy - b - 14, cx - 10, 8, 8)) * 8, 0.6), 45.0)  # aorta
        dy, dx = _Y - cy, _X - cx
        rho, theta = np.hypot(dy, dx), np.arctan2(dy, dx)
        rad = _disk_radius(theta, a, b, notch, tilt)
        occ = soft(rad - rho, 0.5)
        paint(img, occ, 90.0 + rng.normal(0, 8))
        paint(img, soft(0.55 * rad - rho, 1.5), 55.0)  # nucleus
        img += rng.normal(0, 8.0, img.shape)
        images[i], masks[i] = img, (rad - rho) > 0
        r = _disk_radius(angles, a, b, notch, tilt)
        contours[i, :, 0] = (cx + r * np.cos(angles)) / half_fov
        contours[i, :, 1] = (cy + r * np.sin(angles)) / half_fov
    return DiskSet(images, masks, contours, SPACING)
