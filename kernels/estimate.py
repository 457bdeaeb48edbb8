"""NPS estimation from noise realizations or repeated scans (ICRU 87, AAPM TG-233).

NPS(fx, fy) = dx dy / (Nx Ny) * mean over ROIs of |DFT2[ROI - trend]|^2, in
HU^2 mm^2. By Parseval, the sum of the NPS times the bin area equals the mean
variance of the detrended ROIs, a check of the normalisation.

Detrending trap (see ``shared/NPS_FACTS.md``): a 2nd-order polynomial detrend
on a 64x64 ROI removes most of the power in the lowest rings. With repeated
scans of one object, remove the ensemble mean instead (``repeated=True``), which
takes the object and its trends out without touching the noise spectrum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Sequence

import numpy as np

from kernels import _checks
from kernels._xp import array_namespace, to_numpy
from kernels.errors import KernelError
from kernels.nps import GridNPS, NPSSummary, RadialNPS, radial_average, texture

DETRENDS = (None, "mean", "poly1", "poly2")


def noise_from_repeated_scans(scans, xp: ModuleType | None = None):
    """Noise realizations of R repeated scans of one object: (scan - ensemble mean) * sqrt(R/(R-1)).

    The factor undoes the variance the ensemble mean takes with it, so each
    realization has the variance of one scan's noise. ``scans``: ``(R, ...)``, R >= 2.
    """
    xp = array_namespace(scans, xp=xp)
    scans = xp.asarray(scans, dtype=xp.float64)
    if scans.ndim < 2 or scans.shape[0] < 2:
        raise KernelError(f"scans: expected at least 2 repeated scans stacked on axis 0, got shape {tuple(scans.shape)}")
    r = scans.shape[0]
    return (scans - scans.mean(axis=0, keepdims=True)) * math.sqrt(r / (r - 1))


def extract_rois(images, size: int | Sequence[int], *, stride: int | Sequence[int] | None = None, xp=None):
    """Square or rectangular ROIs on a regular grid over each image: ``(n_images * n_rois, ry, rx)``.

    ``stride`` defaults to ``size`` (adjacent, non-overlapping ROIs).
    """
    xp = array_namespace(images, xp=xp)
    images = xp.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise KernelError(f"images: expected (n, ny, nx) or (ny, nx), got shape {tuple(images.shape)}")
    ry, rx = (size, size) if np.isscalar(size) else tuple(size)
    sy, sx = (ry, rx) if stride is None else ((stride, stride) if np.isscalar(stride) else tuple(stride))
    ny, nx = images.shape[1:]
    if not (2 <= ry <= ny and 2 <= rx <= nx):
        raise KernelError(f"roi: expected a size between 2 and the image size {(ny, nx)}, got {(ry, rx)}")
    if sy < 1 or sx < 1:
        raise KernelError(f"stride: expected >= 1 pixel, got {(sy, sx)}")
    tiles = [images[:, y : y + ry, x : x + rx] for y in range(0, ny - ry + 1, sy) for x in range(0, nx - rx + 1, sx)]
    return xp.stack(tiles, axis=1).reshape(-1, ry, rx)


def detrend(rois, method: str | None = "mean", xp=None):
    """Remove nothing, the mean, or a 1st/2nd-order 2D polynomial fit from each ROI ``(n, ry, rx)``."""
    if method not in DETRENDS:
        raise KernelError(f"detrend: expected one of {DETRENDS}, got {method!r}")
    xp = array_namespace(rois, xp=xp)
    if method is None:
        return rois
    if method == "mean":
        return rois - rois.mean(axis=(-2, -1), keepdims=True)
    n, ry, rx = rois.shape
    y, x = np.meshgrid(np.linspace(-1, 1, ry), np.linspace(-1, 1, rx), indexing="ij")
    terms = [np.ones_like(x), x, y] + ([x * x, x * y, y * y] if method == "poly2" else [])
    design = np.stack([t.ravel() for t in terms], axis=1)
    projector = xp.asarray(design @ np.linalg.pinv(design))  # fitted = flat @ projector.T
    flat = rois.reshape(n, -1)
    return (flat - flat @ projector.T).reshape(n, ry, rx)


@dataclass(frozen=True, eq=False)
class NPSEstimate:
    """A measured 2D NPS: ``nps`` full grid in FFT order (HU^2 mm^2), from ``n_rois`` ROIs."""

    nps: np.ndarray
    spacing: tuple[float, float]
    n_rois: int

    @property
    def freq_axes(self) -> tuple[np.ndarray, np.ndarray]:
        """(fy, fx) in 1/mm, FFT order (``np.fft.fftshift`` both for display)."""
        return tuple(np.fft.fftfreq(n, d) for n, d in zip(self.nps.shape, self.spacing))  # type: ignore[return-value]

    def variance(self) -> float:
        ny, nx = self.nps.shape
        return float(self.nps.sum() / (ny * nx * self.spacing[0] * self.spacing[1]))

    def radial(self, bin_width: float | None = None):
        """(f, S, counts) radial average, see ``kernels.nps.radial_average``."""
        return radial_average(self.nps, self.spacing, bin_width=bin_width)

    def summary(self) -> NPSSummary:
        f, s, _ = self.radial()
        f_av, f_peak = texture(f, s)
        return NPSSummary(math.sqrt(self.variance()), f_av, f_peak)

    def as_grid(self) -> GridNPS:
        return GridNPS(self.nps, self.spacing, "estimated")

    def as_radial(self) -> RadialNPS:
        """The radial average as a table tied to this grid: its variance is the one drawn on it."""
        f, s, _ = self.radial()
        return RadialNPS(f, s, "estimated (radial)", (self.nps.shape, self.spacing))


def estimate_nps(
    images,
    spacing: float | Sequence[float],
    *,
    roi: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    detrend_method: str | None = "mean",
    repeated: bool = False,
    xp=None,
) -> NPSEstimate:
    """Estimate the 2D NPS of ``images`` ``(n, ny, nx)``.

    ``repeated=True``: the images are repeated scans of one object; their
    ensemble mean is removed (with the N/(N-1) correction) before the ROIs are
    taken, and ``detrend_method`` then defaults to no further detrending.
    ``roi``: ROI size in pixels (default: the whole image); ``stride``: ROI step.
    """
    xp = array_namespace(images, xp=xp)
    images = xp.asarray(images, dtype=xp.float64)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise KernelError(f"images: expected (n, ny, nx), got shape {tuple(images.shape)}")
    if not bool(xp.all(xp.isfinite(images))):
        raise KernelError("images: expected finite values, found NaN or inf")
    sp = _checks.spacing("spacing", spacing, 2)
    if repeated:
        images = noise_from_repeated_scans(images, xp)
        if detrend_method == "mean":
            detrend_method = None
    rois = extract_rois(images, roi if roi is not None else images.shape[1:], stride=stride, xp=xp)
    rois = detrend(rois, detrend_method, xp)
    ry, rx = rois.shape[1:]
    power = xp.mean(xp.abs(xp.fft.fft2(rois)) ** 2, axis=0)
    nps = to_numpy(power) * (sp[0] * sp[1] / (ry * rx))
    return NPSEstimate(nps, sp, int(rois.shape[0]))
