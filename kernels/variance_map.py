"""Where in a scan the noise is high: a relative FBP noise-variance map computed from the scan itself.

CT noise is not stationary: a pixel behind long or dense paths (the spine, the
shoulders, the long axis of an elliptical body) is reconstructed from rays that
carried few photons, and its variance is higher (Pineda et al. 2012 measured
about 2x across a body section). Dose reduction that inserts stationary noise
gets the level right where sigma0 was measured and wrong elsewhere.

The map propagates projection-domain variance through filtered back-projection
(FBP), from the scan's own attenuation:

1. attenuation from HU: mu = mu_water (1 + HU / 1000), clipped at 0 (air);
   ``mu_water`` = 0.02 /mm (water at a typical 120 kVp effective energy; the
   same constant as ``kernels.reduce.size_noise_factor``);
2. line integrals p(theta, t) by a pixel-driven parallel-beam projector over
   ``n_angles`` views of 180 degrees, on the image downsampled to at most
   ``max_px`` pixels a side (the map is smooth; its cost is then independent
   of the image size);
3. per-ray variance of the log signal: 1/N + s_e^2/N^2 with N = N0 exp(-p):
   a quantum part proportional to exp(p) and an electronic part proportional
   to exp(2 p);
4. FBP variance: Var(x) = sum over views and detector bins of h^2(x.theta - t)
   Var(p(theta, t)) (h the filter kernel). h^2 of a ramp-type filter is
   concentrated within a couple of bins, so where the per-ray variance varies
   slowly across t this is sum_theta Var(p(theta, x.theta)) times the constant
   sum h^2: the *unfiltered* back-projection of the variance sinogram. Constant
   factors (N0, the filter, the view count) cancel in a relative map.

The two parts are returned unnormalised; ``relative_added_variance`` turns them
into the map of what a dose reduction adds, normalised to mean 1 over the
region where the scan's sigma0 was measured, so that the stationary sigma0
stays exact there and elsewhere the variance follows the physics.

Approximations, stated: parallel beam (a fan beam changes the weights of
views, not the principle), no bowtie filter and no angular tube current
modulation (both flatten the real map: on such scanners this map overstates
the contrast between centre and periphery), mono-energetic attenuation (no beam
hardening), the per-ray variance smooth over the filter's width (exact in the
limit; at sharp body edges the map is smoothed over about two bins).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse

from kernels import _checks
from kernels._xp import to_numpy
from kernels.errors import KernelError

#: Effective linear attenuation of water (1/mm) at a typical CT beam (about 0.019-0.021 for 100-140 kVp).
MU_WATER = 0.02
#: Views of the map's projector over 180 degrees, and the largest side (pixels) it works on.
MAP_ANGLES = 90
MAP_MAX_PX = 64


@dataclass(frozen=True, eq=False)
class VarianceMap:
    """Unnormalised FBP variance maps of a scan on the projector's (downsampled) grid, ``(nz, ly, lx)``: ``quantum``
    = BP[exp(p)], ``electronic`` = BP[exp(2 p)] (see the module docstring); ``shape``: the scan's ``(ny, nx)``;
    ``factor``: the downsampling factor. ``full(which, k)`` upsamples slice k to the scan's grid (bilinear)."""

    quantum: np.ndarray
    electronic: np.ndarray
    shape: tuple[int, int]
    factor: int
    mu_water: float
    n_angles: int

    def full(self, which: str, k: int) -> np.ndarray:
        """Slice ``k`` of the ``"quantum"`` or ``"electronic"`` map on the scan's grid ``(ny, nx)``."""
        low = getattr(self, which)[k]
        f = self.factor
        if f == 1:
            return low
        ny, nx = self.shape
        pad_y, pad_x = ((-ny) % f) // 2, ((-nx) % f) // 2
        cy = (np.arange(ny) + pad_y - (f - 1) / 2) / f  # full-resolution pixel centres on the low-resolution grid
        cx = (np.arange(nx) + pad_x - (f - 1) / 2) / f
        return ndimage.map_coordinates(low.astype(np.float64), np.meshgrid(cy, cx, indexing="ij"), order=1, mode="nearest")

    def to_dict(self) -> dict:
        return {"method": "FBP variance propagation: back-projection of exp(line integral) (quantum) and exp(2 line "
                          "integral) (electronic) of the scan's attenuation, parallel beam",
                "mu_water_per_mm": self.mu_water, "n_angles": self.n_angles, "downsampling": self.factor}


def _downsample(img: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return img
    ny, nx = img.shape
    py, px = (-ny) % f, (-nx) % f
    padded = np.pad(img, ((py // 2, py - py // 2), (px // 2, px - px // 2)), constant_values=-1000.0)  # air
    return padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).mean(axis=(1, 3))


@functools.lru_cache(maxsize=4)
def _projector(shape: tuple[int, int], sp: tuple[float, float], n_angles: int) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """The pixel-driven parallel-beam projector (views x bins, pixels) with linear weights, detector pitch = the
    finer pixel side, and its transpose, the (unfiltered) back-projector. Memoised per geometry."""
    ny, nx = shape
    y = (np.arange(ny) - (ny - 1) / 2) * sp[0]
    x = (np.arange(nx) - (nx - 1) / 2) * sp[1]
    dt = min(sp)
    n_det = math.ceil(math.hypot(ny * sp[0], nx * sp[1]) / dt) + 3
    theta = np.arange(n_angles) * (np.pi / n_angles)
    t = (np.cos(theta)[:, None, None] * x[None, None, :] + np.sin(theta)[:, None, None] * y[None, :, None])
    u = (t / dt + (n_det - 1) / 2).reshape(n_angles, -1)
    i0 = np.floor(u).astype(np.int64)
    w = u - i0
    row0 = np.arange(n_angles)[:, None] * (n_det + 1) + i0
    cols = np.broadcast_to(np.arange(ny * nx)[None], row0.shape)
    rows = np.concatenate([row0.ravel(), row0.ravel() + 1])
    vals = np.concatenate([(1 - w).ravel(), w.ravel()]) * (sp[0] * sp[1] / dt)  # area in the strip / strip width
    proj = sparse.csr_matrix((vals, (rows, np.concatenate([cols.ravel(), cols.ravel()]))),
                             shape=(n_angles * (n_det + 1), ny * nx))
    return proj, proj.T.tocsr()


def fbp_variance_map(images, spacing: float | Sequence[float], *, mu_water: float = MU_WATER,
                     n_angles: int = MAP_ANGLES, max_px: int = MAP_MAX_PX) -> VarianceMap:
    """The quantum and electronic FBP variance maps (relative) of each slice of ``images`` (HU, ``(ny, nx)`` or
    ``(nz, ny, nx)``; ``spacing`` (dy, dx) or (dz, dy, dx) mm), computed on the host (once per scan)."""
    a = np.asarray(to_numpy(images), dtype=np.float64)
    stack = a[None] if a.ndim == 2 else a
    if stack.ndim != 3 or not np.all(np.isfinite(stack)):
        raise KernelError(f"images: expected finite (ny, nx) or (nz, ny, nx) HU, got shape {a.shape}")
    sp = [spacing] * 2 if np.isscalar(spacing) else list(spacing)
    sp2 = _checks.spacing("spacing", sp[-2:], 2)
    mu_water = _checks.positive("mu_water", mu_water)
    if not isinstance(n_angles, int) or n_angles < 8 or not isinstance(max_px, int) or max_px < 16:
        raise KernelError(f"n_angles, max_px: expected integers >= 8 and >= 16, got {n_angles!r}, {max_px!r}")
    nz, ny, nx = stack.shape
    f = max(1, math.ceil(max(ny, nx) / max_px))
    low_sp = (sp2[0] * f, sp2[1] * f)
    low_shape = _downsample(stack[0], f).shape
    proj, back = _projector(tuple(low_shape), low_sp, n_angles)
    quantum, electronic = np.empty((nz, *low_shape)), np.empty((nz, *low_shape))
    for k in range(nz):
        mu = np.clip(mu_water * (1.0 + _downsample(stack[k], f) / 1000.0), 0.0, None).ravel()
        p = np.minimum(proj @ mu, 30.0)  # line integrals (attenuation x mm); past ~20 no photon arrives anyway
        # Per-ray variance of the log signal, up to constants: exp(p) (quantum), exp(2 p) (electronic); back-projected.
        bp = back @ np.stack([np.exp(p), np.exp(2 * p)], axis=1)
        quantum[k], electronic[k] = bp[:, 0].reshape(low_shape), bp[:, 1].reshape(low_shape)
    return VarianceMap(quantum.astype(np.float32), electronic.astype(np.float32), (ny, nx), f, mu_water, n_angles)


def region_means(vmap: VarianceMap, region: np.ndarray) -> np.ndarray:
    """Per slice, the means ``(nz, 2)`` of the quantum and electronic maps over ``region`` (bool ``(nz, ny, nx)``:
    where the scan's sigma0 applies); a slice without region pixels gets the means over the region of all slices
    (its sigma0 is then the scan-wide one). Computed once per scan: what ``relative_added_variance`` normalises by."""
    reg = np.asarray(region, dtype=bool)
    nz = vmap.quantum.shape[0]
    if reg.shape != (nz, *vmap.shape):
        raise KernelError(f"region: expected the map's shape {(nz, *vmap.shape)}, got {reg.shape}")
    if not reg.any():
        raise KernelError("region: expected some pixels where the scan's sigma0 applies, got none")
    sums = np.zeros((nz, 2))
    counts = reg.sum(axis=(1, 2))
    for k in np.flatnonzero(counts):
        sums[k] = vmap.full("quantum", k)[reg[k]].sum(), vmap.full("electronic", k)[reg[k]].sum()
    means = sums / np.maximum(counts, 1)[:, None]
    means[counts == 0] = sums.sum(axis=0) / counts.sum()
    return means


def relative_added_variance(vmap: VarianceMap, region: np.ndarray, dose, acquired, *, mas_ref: float | None = None,
                            electronic_fraction: float = 0.0) -> np.ndarray:
    """Relative map ``(nz, ny, nx)`` (float32) of the variance a reduction from ``acquired`` to ``dose`` adds: mean 1
    over ``region`` (bool ``(nz, ny, nx)``: where the scan's sigma0 was measured, or its ``region_means``) on each
    slice that has region pixels, else over the region of all slices (where a slice's sigma0 is the scan-wide one).

    With quantum map a and electronic map b (each normalised so), r = mas_ref / D, e the electronic share of the
    variance at mas_ref in the region: m = [(1 - e) a (r - r0) + e b (r^2 - r0^2)] / [(1 - e)(r - r0) + e (r^2 - r0^2)],
    per slice (doses may be one per slice). With e = 0 it is a, whatever the doses.
    """
    region = np.asarray(region)
    means = region if region.dtype != bool else region_means(vmap, region)
    nz = vmap.quantum.shape[0]
    if means.shape != (nz, 2) or not np.all(means > 0):
        raise KernelError(f"region means: expected positive (quantum, electronic) means per slice ({nz}, 2), got "
                          f"shape {means.shape}")
    d0 = np.broadcast_to(np.atleast_1d(np.asarray(acquired, np.float64)), (nz,))
    d = np.broadcast_to(np.atleast_1d(np.asarray(dose, np.float64)), (nz,))
    ref = float(np.mean(d0)) if mas_ref is None else _checks.positive("mas_ref", mas_ref)
    e = _checks.fraction("electronic_fraction", electronic_fraction, high_open=True)
    out = np.empty((nz, *vmap.shape), dtype=np.float32)
    for k in range(nz):
        a = vmap.full("quantum", k) / means[k, 0]
        r, r0 = ref / d[k], ref / d0[k]
        wq, we = (1 - e) * (r - r0), e * (r * r - r0 * r0)
        out[k] = a if we == 0 else (wq * a + we * vmap.full("electronic", k) / means[k, 1]) / (wq + we)
    return out
