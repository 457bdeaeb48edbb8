"""Spatially varying (local-NPS) noise for whole images (study 2).

CT noise is not stationary across a body section (its magnitude varies ~2x
without a matched bowtie, Pineda et al. 2012). Study 2 measures local NPS in
overlapping patches of repeated phantom scans (6.8 mm, 30% overlap) and
synthesises whole-image noise that follows them: one white-noise field is
filtered patch by patch with sqrt(local NPS) and the filtered patches are
blended with trapezoid windows (Divel & Pelc, IEEE TMI 2020, do the same in the
image domain). The result is scaled to a dose with alpha = sqrt(mAs0/mAs).

Notes
-----
Each patch's filter is the spatial kernel of its local NPS (one period of the
inverse DFT of sqrt(S / dV) on the patch grid), applied by linear (not
circular) convolution over a window twice the patch size, so patch borders see
real neighbouring white noise and no wrap-around. Because neighbouring patches
filter the same white noise, their outputs agree where their NPS agree, and
the blend keeps the variance across seams. The blend divides by the summed
weights, so the weights form a partition of unity on any grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Sequence, Union

import numpy as np

from kernels import _checks
from kernels._xp import fft_module, is_numpy, namespace, to_numpy
from kernels.errors import KernelError
from kernels.estimate import noise_from_repeated_scans
from kernels.keys import as_keys, complex_normals, parallel_rows
from kernels.nps import GridNPS, RadialNPS, grid_variance
from kernels.stationary import nps_noise, real_normals

MIN_SCANS = 2
_CHUNK_ELEMENTS = 1 << 23


def patch_starts(n: int, patch: int, overlap: float) -> np.ndarray:
    """Origins of patches of ``patch`` px covering ``n`` px with the given overlap fraction."""
    stride = max(1, int(round(patch * (1.0 - overlap))))
    count = max(1, math.ceil((n - patch) / stride) + 1)
    return np.round(np.linspace(0, n - patch, count)).astype(int)


def trapezoid(patch: int, overlap: float) -> np.ndarray:
    """1D trapezoid weight: ramps over the overlap at both ends, flat between (all > 0)."""
    ramp = max(1.0, patch * overlap)
    i = np.arange(patch) + 0.5
    return np.clip(np.minimum(i, patch - i) / ramp, 0.0, 1.0)


@dataclass(frozen=True, eq=False)
class LocalNPS:
    """Local NPS on a patch grid over one image geometry.

    ``nps``: ``(Py, Px, py, px)`` full local NPS per patch in FFT order (HU^2 mm^2);
    ``starts_y``/``starts_x``: patch origins (px); ``mean_image``: the object
    (ensemble mean of the scans, HU) when estimated from repeated scans.
    """

    nps: np.ndarray
    starts_y: np.ndarray
    starts_x: np.ndarray
    shape: tuple[int, int]
    spacing: tuple[float, float]
    overlap: float
    mean_image: np.ndarray | None = None
    n_scans: int = 0

    @classmethod
    def from_repeated_scans(
        cls, scans, spacing: float | Sequence[float], *, patch_mm: float = 6.8, overlap: float = 0.3
    ) -> "LocalNPS":
        """Estimate local NPS from R >= 2 repeated scans ``(R, ny, nx)`` of one object (HU)."""
        host = to_numpy(scans).astype(np.float64)
        if host.ndim != 3 or host.shape[0] < MIN_SCANS:
            raise KernelError(f"scans: expected (R, ny, nx) with R >= {MIN_SCANS} repeated scans, got shape {host.shape}")
        _checks.finite_array("scans", host)
        sp = _checks.spacing("spacing", spacing, 2)
        patch_mm = _checks.positive("patch_mm", patch_mm)
        overlap = _checks.fraction("overlap", overlap, high_open=True)
        py, px = (max(2, int(round(patch_mm / d))) for d in sp)
        ny, nx = host.shape[1:]
        if py > ny or px > nx:
            raise KernelError(f"patch_mm: {patch_mm} mm is {py}x{px} px, larger than the image {ny}x{nx}")
        noise = noise_from_repeated_scans(host, np)
        sy, sx = patch_starts(ny, py, overlap), patch_starts(nx, px, overlap)
        nps = np.empty((sy.size, sx.size, py, px))
        norm = sp[0] * sp[1] / (py * px)
        for i, y in enumerate(sy):
            tiles = noise[:, y : y + py]  # (R, py, nx)
            for j, x in enumerate(sx):
                spec = np.fft.fft2(tiles[:, :, x : x + px])
                nps[i, j] = norm * np.mean(spec.real**2 + spec.imag**2, axis=0)
        return cls(nps, sy, sx, (ny, nx), sp, overlap, host.mean(axis=0), host.shape[0])

    @property
    def patch(self) -> tuple[int, int]:
        return self.nps.shape[2], self.nps.shape[3]

    def sigma_map(self) -> np.ndarray:
        """Per-patch pixel sigma (HU), ``(Py, Px)``."""
        py, px = self.patch
        return np.sqrt(self.nps.sum(axis=(2, 3)) / (py * px * self.spacing[0] * self.spacing[1]))

    def transfer_functions(self) -> np.ndarray:
        """Per-patch filters on the convolution window (2 py, 2 px): one-sided spectra, complex64."""
        py, px = self.patch
        dv = self.spacing[0] * self.spacing[1]
        kernels = np.fft.fftshift(np.fft.ifft2(np.sqrt(self.nps / dv)).real, axes=(2, 3))
        window = np.zeros((*self.nps.shape[:2], 2 * py, 2 * px))
        window[:, :, py // 2 : py // 2 + py, px // 2 : px // 2 + px] = kernels
        # Put the kernel centre (index py//2 + py//2 after the shift) at the window origin.
        window = np.roll(window, (-(py // 2 + py // 2), -(px // 2 + px // 2)), axis=(2, 3))
        return np.fft.rfft2(window).astype(np.complex64)


def local_nps_noise(
    keys,
    local: LocalNPS,
    *,
    alpha: float = 1.0,
    xp: str | ModuleType | None = None,
    workers: int | None = None,
):
    """Whole-image spatially varying noise (HU) following ``local``: ``(B, ny, nx)`` float32.

    ``alpha`` scales the noise to a dose: alpha = sqrt(mAs0 / mAs) for quantum noise
    (``DoseModel.factor(mas) ** 0.5`` in general).
    """
    keys = as_keys(keys)
    if not isinstance(local, LocalNPS):
        raise KernelError(f"local: expected a LocalNPS, got {type(local).__name__}")
    alpha = _checks.positive("alpha", alpha)
    xp = namespace(xp)
    ny, nx = local.shape
    py, px = local.patch
    wy, wx = 2 * py, 2 * px
    my, mx = py // 2, px // 2
    field_shape = (ny + wy - py, nx + wx - px)  # white noise padded by the window margins
    per_key = math.ceil(math.prod(field_shape) / 2)  # complex normals = 2 real each
    transfer = xp.asarray(local.transfer_functions()).reshape(-1, wy, wx // 2 + 1)
    grid_y, grid_x = np.meshgrid(local.starts_y, local.starts_x, indexing="ij")
    origins = np.stack([grid_y.ravel(), grid_x.ravel()], axis=1)
    rows = xp.asarray(origins[:, 0, None] + np.arange(wy)[None])  # window rows in the padded field
    cols = xp.asarray(origins[:, 1, None] + np.arange(wx)[None])
    weight = np.outer(trapezoid(py, local.overlap), trapezoid(px, local.overlap))
    total = np.zeros((ny, nx))
    for y, x in origins:
        total[y : y + py, x : x + px] += weight
    weight_x = xp.asarray(weight.astype(np.float32))
    scale = xp.asarray((alpha / total).astype(np.float32))
    fft = fft_module(xp)
    kw = {"workers": 1} if is_numpy(xp) else {}
    out = xp.empty((keys.shape[0], ny, nx), dtype=xp.float32)

    def run(batch_rows: range) -> None:
        step = max(1, _CHUNK_ELEMENTS // (origins.shape[0] * wy * wx))
        for start in range(batch_rows.start, batch_rows.stop, step):
            sub = slice(start, min(start + step, batch_rows.stop))
            z = complex_normals(keys[sub], per_key, xp=xp, workers=1 if is_numpy(xp) else workers)
            b = z.shape[0]
            white = real_normals(z, math.prod(field_shape), xp).reshape(b, *field_shape)
            windows = white[:, rows[:, :, None], cols[:, None, :]]  # (b, P, wy, wx)
            spec = fft.rfft2(windows, **kw)
            spec *= transfer
            tiles = fft.irfft2(spec, s=(wy, wx), overwrite_x=True, **kw)[:, :, my : my + py, mx : mx + px]
            tiles *= weight_x
            acc = xp.zeros((b, ny, nx), dtype=xp.float32)
            for p, (y, x) in enumerate(origins):
                acc[:, y : y + py, x : x + px] += tiles[:, p]
            out[sub] = acc * scale

    if is_numpy(xp):
        parallel_rows(keys.shape[0], run, workers=workers, min_items=per_key)
    else:
        run(range(keys.shape[0]))
    return out


def sigma_map_noise(
    keys,
    nps: Union[RadialNPS, GridNPS],
    sigma_map,
    spacing: float | Sequence[float],
    *,
    alpha: float = 1.0,
    xp: str | ModuleType | None = None,
    workers: int | None = None,
):
    """Spatially varying noise from a sigma map (HU, ``(ny, nx)``) and one NPS shape.

    Stationary noise with the NPS normalised to unit variance on this grid,
    multiplied pixel-wise by ``alpha * sigma_map`` (Divel & Pelc's image-domain
    insertion), for users with no repeated scans.
    """
    xp = namespace(xp)
    smap = to_numpy(sigma_map).astype(np.float64)
    if smap.ndim != 2:
        raise KernelError(f"sigma_map: expected a 2D map (ny, nx), got shape {smap.shape}")
    _checks.finite_array("sigma_map", smap, nonnegative=True)
    sp = _checks.spacing("spacing", spacing, 2)
    alpha = _checks.positive("alpha", alpha)
    variance = grid_variance(nps.on_grid(smap.shape, sp), smap.shape, sp)
    unit = nps.scaled(1.0 / variance)
    noise = nps_noise(keys, unit, smap.shape, sp, xp=xp, workers=workers)
    return noise * xp.asarray((alpha * smap).astype(np.float32))
