"""Stationary NPS-shaped noise for batches of 2D slices or 3D volumes.

Each draw filters complex white noise with sqrt(NPS): the noise n of one image
has E[(prod spacing / prod shape) |DFT(n)|^2] = S(f), the NPS asked for (the
estimator of ICRU 87 / AAPM TG-233 recovers it). The white noise is drawn
directly in the frequency domain (``method="spectral"``, the default), which
saves the forward FFT a spatial draw needs; ``method="spatial"`` draws real
white noise, transforms and filters it (same statistics, other bits; kept for
comparison, see ``bench/noise.py``). FFT-based noise is periodic over the image:
correlations wrap from one edge to the opposite one.

Volumes are noised slice by slice by default, each slice an independent 2D
draw (study 1). With ``z_nps`` the slices are correlated: the 3D NPS is
S2(fx, fy) P(fz) with P normalised to unit integral, so each slice still has
the 2D NPS S2 (a slice's 2D NPS is the 3D NPS integrated over fz).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Sequence, Union

import numpy as np

from kernels import _checks
from kernels._xp import fft_module, is_numpy, namespace
from kernels.errors import KernelError
from kernels.keys import NoiseKey, as_keys, complex_normals, parallel_rows
from kernels.nps import GridNPS, RadialNPS

NPS = Union[RadialNPS, GridNPS]
METHODS = ("spectral", "spatial")
_CHUNK_UNIFORMS = 1 << 22  # host working set per thread step (16 MiB of float32)


def nps_noise(
    keys: NoiseKey | Sequence[Sequence[int]] | np.ndarray,
    nps: NPS,
    shape: Sequence[int],
    spacing: float | Sequence[float],
    *,
    z_nps: float | RadialNPS | None = None,
    method: str = "spectral",
    xp: str | ModuleType | None = None,
    workers: int | None = None,
):
    """Draw NPS-shaped noise in HU, one image per key: float32 array ``(B, *shape)``.

    Parameters
    ----------
    keys : one ``NoiseKey`` or ``(B, 4)`` integers ``(seed, sample_id, level, k)``.
    nps : the 2D NPS in HU^2 mm^2 (already scaled to the dose, e.g. ``DoseModel.nps_at``).
    shape : ``(ny, nx)`` or ``(nz, ny, nx)`` pixels.
    spacing : mm per pixel, scalar or one per axis (``(dz, dy, dx)`` for volumes).
    z_nps : volumes only. ``None``: independent slices. A float: the FWHM (mm) of a
        Gaussian slice-sensitivity profile, P(fz) ~ exp(-(2 pi s fz)^2) with
        s = FWHM / 2.3548. A ``RadialNPS``: P(|fz|) from a table (any scale).
    method : ``"spectral"`` or ``"spatial"`` (see module notes).
    xp : ``"numpy"`` (default) or ``"cupy"``; the white noise is drawn on the host
        either way (``kernels.keys``) and shaped in ``xp``.
    workers : host threads (default: all CPUs of this process).
    """
    keys = as_keys(keys)
    shape = _checks.shape("shape", shape, (2, 3))
    spacing = _checks.spacing("spacing", spacing, len(shape))
    if method not in METHODS:
        raise KernelError(f"method: expected one of {METHODS}, got {method!r}")
    if z_nps is not None and len(shape) != 3:
        raise KernelError("z_nps: only applies to 3D shapes (nz, ny, nx)")
    xp = namespace(xp)
    amp, fft_shape = _amplitude(nps, shape, spacing, z_nps, xp)
    # Complex normals per key: one per one-sided spectrum bin, or two real normals each.
    per_key = math.prod(shape[:-1]) * (shape[-1] // 2 + 1) if method == "spectral" else math.ceil(math.prod(shape) / 2)
    out = xp.empty((keys.shape[0], *shape), dtype=xp.float32)

    def run(rows: range) -> None:
        step = max(1, _CHUNK_UNIFORMS // per_key)
        for start in range(rows.start, rows.stop, step):
            sub = slice(start, min(start + step, rows.stop))
            z = complex_normals(keys[sub], per_key, xp=xp, workers=1 if is_numpy(xp) else workers)
            out[sub] = _shape_noise(z, amp, shape, fft_shape, method, xp)

    if is_numpy(xp):
        parallel_rows(keys.shape[0], run, workers=workers, min_items=per_key)
    else:
        run(range(keys.shape[0]))
    return out


def _amplitude(nps: NPS, shape, spacing, z_nps, xp):
    """sqrt(N S / dV) on the one-sided FFT grid, and the shape the FFT runs over."""
    if not isinstance(nps, (RadialNPS, GridNPS)):
        raise KernelError(f"nps: expected a RadialNPS or GridNPS, got {type(nps).__name__}")
    s2 = nps.on_grid(shape[-2:], spacing[-2:], xp)
    if z_nps is None:
        fft_shape = tuple(shape[-2:])
        dv = spacing[-2] * spacing[-1]
        s = s2
    else:
        nz, dz = shape[0], spacing[0]
        fz = np.abs(np.fft.fftfreq(nz, dz))
        if isinstance(z_nps, RadialNPS):
            p = np.asarray(z_nps(fz))
        else:
            sd = _checks.positive("z_nps (slice FWHM, mm)", z_nps) / (2 * math.sqrt(2 * math.log(2)))
            p = np.exp(-((2 * np.pi * sd * fz) ** 2))
        if not np.any(p > 0):
            raise KernelError("z_nps: the z profile has no power on this grid")
        p = p / (np.sum(p) / (nz * dz))  # unit integral over fz
        fft_shape = tuple(shape)
        dv = math.prod(spacing)
        s = xp.asarray(p)[:, None, None] * s2[None]
    n = math.prod(fft_shape)
    return xp.sqrt(s * (n / dv)).astype(xp.float32), fft_shape


def real_normals(z, n: int, xp):
    """Standard normals from complex ones ``(b, m)``: the first ``n`` of the interleaved parts, times sqrt 2."""
    return z.view(xp.float32).reshape(z.shape[0], -1)[:, :n] * xp.float32(math.sqrt(2))


def _hermitian(z, fft_ndim: int, nx: int, xp):
    """Make the self-conjugate planes (fx = 0 and Nyquist) of a one-sided spectrum Hermitian.

    A c2r transform needs Z(-f) = conj Z(f) there; (Z + conj Z(-f)) / sqrt 2 keeps E|Z|^2 = 1.
    """
    axes = tuple(range(1, fft_ndim))
    cols = [0] + ([nx // 2] if nx % 2 == 0 else [])
    for c in cols:
        p = z[..., c]
        mirrored = xp.roll(xp.flip(p, axis=axes), 1, axis=axes)
        z[..., c] = (p + xp.conj(mirrored)) * xp.float32(1 / math.sqrt(2))
    return z


def _shape_noise(z, amp, shape, fft_shape, method, xp):
    """Complex normals (b, per_key) -> noise (b, *shape), float32."""
    fft = fft_module(xp)
    b = z.shape[0]
    fft_ndim = len(fft_shape)
    axes = tuple(range(-fft_ndim, 0))
    half = (*fft_shape[:-1], fft_shape[-1] // 2 + 1)
    kw = {"workers": 1} if is_numpy(xp) else {}
    if method == "spectral":
        z = z.reshape(-1, *half)
        z = _hermitian(z, fft_ndim, fft_shape[-1], xp)
        z *= amp
        n = fft.irfftn(z, s=fft_shape, axes=axes, overwrite_x=True, **kw)
    else:
        white = real_normals(z, math.prod(shape), xp).reshape(-1, *fft_shape)
        spec = fft.rfftn(white, axes=axes, **kw)
        spec *= amp * xp.float32(1 / math.sqrt(math.prod(fft_shape)))
        n = fft.irfftn(spec, s=fft_shape, axes=axes, overwrite_x=True, **kw)
    return n.reshape(b, *shape).astype(xp.float32, copy=False)
