"""Dose reduction on a scan that already carries the noise of its acquired dose D0.

A real scan acquired at D0 holds noise of NPS S(D0). Simulating a lower dose
D < D0 means *adding* independent noise of NPS S(D) - S(D0), so that the total
has NPS S(D); adding the whole S(D) (right for noise-free phantoms) overshoots.
Under the dose model of ``kernels.dose`` (shape kept at every dose; variance
(1 - e) m/D + e (m/D)^2 times the variance at the reference dose m, e the
electronic share of the variance at m):

    S(D) - S(D0) = S(D0) * (v(D) / v(D0) - 1),   v(D) = (1 - e) m/D + e (m/D)^2

For pure quantum noise (e = 0) the factor is D0/D - 1 whatever m. D >= D0
cannot be simulated (noise cannot be removed) and is refused.

Per-slice dose (tube current modulation): ``acquired`` and ``dose`` may be
arrays, one value per slice of a volume; each slice then receives its own
factor, and ``sigma0`` (the scan's own pixel sigma, per slice or one value)
sets the variance the factor multiplies. With ``z_nps`` (correlated slices) the
per-slice scaling is applied after the 3D draw, which keeps each slice's
variance exact and the z-correlation approximate where the dose changes fast.

Draws are keyed like all noise (``kernels.keys``): the same key gives the same
white noise as ``nps_noise``; only the filter differs.
"""

from __future__ import annotations

import math
import threading
import weakref
from types import ModuleType
from typing import Sequence, Union

import numpy as np

from kernels import _checks
from kernels._xp import fft_module, is_numpy, namespace, to_numpy
from kernels.errors import KernelError
from kernels.keys import NoiseKey, as_keys, complex_normals, parallel_rows
from kernels.nps import GridNPS, RadialNPS, grid_variance
from kernels.stationary import _amplitude, _hermitian, nps_noise

NPS = Union[RadialNPS, GridNPS]


def _doses(name: str, value, n: int | None) -> np.ndarray:
    a = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise KernelError(f"{name}: expected positive finite doses, got {np.asarray(value).tolist()!r}")
    if n is not None and a.size not in (1, n):
        raise KernelError(f"{name}: expected one dose or one per slice ({n}), got {a.size}")
    return a


def added_variance_factor(dose, acquired, *, mas_ref: float | None = None, electronic_fraction: float = 0.0,
                          name: str = "scan") -> np.ndarray:
    """(sigma^2(D) - sigma^2(D0)) / sigma^2(D0) per slice: v(D)/v(D0) - 1 (see the module docstring).

    ``dose`` D and ``acquired`` D0 in the same unit (e.g. mAs), scalars or one
    per slice. ``mas_ref``: the dose at which ``electronic_fraction`` is the
    electronic share of the variance (default: the mean acquired dose). Raises
    ``KernelError`` naming ``name`` and its acquired dose if any D >= D0.
    """
    d0 = _doses("acquired dose", acquired, None)
    d = _doses("dose", dose, d0.size if d0.size > 1 else None)
    d, d0 = np.broadcast_arrays(d, d0)
    above = np.flatnonzero(d >= d0 * (1 - 1e-12))
    if above.size:
        k = int(above[0])
        where = f" (slice {k})" if d0.size > 1 else ""
        raise KernelError(
            f"{name}: dose {d[k]:.6g} is at or above the acquired dose {d0[k]:.6g}{where}; a dose reduction can only "
            "lower the dose (noise already in the scan cannot be removed)")
    ref = float(np.mean(d0)) if mas_ref is None else _checks.positive("mas_ref", mas_ref)
    e = _checks.fraction("electronic_fraction", electronic_fraction, high_open=True)
    return _v(d, ref, e) / _v(d0, ref, e) - 1.0


def _v(d: np.ndarray, ref: float, e: float) -> np.ndarray:
    """The dose model's variance factor (``kernels.dose.variance_factor``) over an array of doses."""
    r = ref / d
    return (1.0 - e) * r + e * r * r


def reduction_nps(nps0: NPS, dose: float, acquired: float, *, mas_ref: float | None = None,
                  electronic_fraction: float = 0.0, name: str = "scan") -> NPS:
    """The NPS to insert, S(D) - S(D0), for one dose pair (``nps0`` = S(D0), the scan's own NPS)."""
    factor = float(added_variance_factor(dose, acquired, mas_ref=mas_ref, electronic_fraction=electronic_fraction,
                                         name=name)[0])
    return nps0.scaled(factor)


def reduction_noise(
    keys: NoiseKey | Sequence[Sequence[int]] | np.ndarray,
    nps0: NPS,
    shape: Sequence[int],
    spacing: float | Sequence[float],
    dose,
    acquired,
    *,
    sigma0=None,
    mas_ref: float | None = None,
    electronic_fraction: float = 0.0,
    z_nps: float | RadialNPS | None = None,
    method: str = "spectral",
    name: str = "scan",
    gain=None,
    xp: str | ModuleType | None = None,
    workers: int | None = None,
):
    """Noise (HU) that takes a scan from its acquired dose to ``dose``: float32 ``(B, *shape)``, one image per key.

    ``nps0``: the scan's own NPS at ``acquired`` (its shape; also its level when
    ``sigma0`` is None). ``sigma0``: the scan's own pixel sigma (HU), one value
    or one per slice; if given, ``nps0`` is rescaled so that its variance on
    this grid is ``sigma0**2`` per slice. ``dose``, ``acquired``: one value or
    one per slice (volumes ``(nz, ny, nx)``). The inserted variance is
    ``sigma0**2 * added_variance_factor(...)`` per slice. ``gain``: a relative standard-deviation map (``shape``,
    or ``(ny, nx)`` for every slice; e.g. the square root of ``kernels.variance_map.relative_added_variance``, mean
    square 1 where sigma0 was measured) that multiplies the stationary draw pixel by pixel (Divel & Pelc's
    image-domain insertion): the texture stays the NPS's, the level follows the map.
    """
    shape = _checks.shape("shape", shape, (2, 3))
    sp = _checks.spacing("spacing", spacing, len(shape))
    b = as_keys(keys).shape[0]
    return reduction_noise_rows(keys, [nps0] * b, shape, sp, [dose] * b, [acquired] * b,
                                sigma0=None if sigma0 is None else [sigma0] * b, mas_ref=mas_ref,
                                electronic_fraction=electronic_fraction, z_nps=z_nps, method=method, names=[name] * b,
                                gains=None if gain is None else [gain] * b, xp=xp, workers=workers)


def sigma_after(sigma0, dose, acquired, *, mas_ref: float | None = None, electronic_fraction: float = 0.0,
                name: str = "scan") -> np.ndarray:
    """Predicted pixel sigma (HU) after reduction: sigma0 * sqrt(v(D)/v(D0)), per slice."""
    f = added_variance_factor(dose, acquired, mas_ref=mas_ref, electronic_fraction=electronic_fraction, name=name)
    return np.asarray(sigma0, dtype=np.float64) * np.sqrt(1.0 + f)


def size_noise_factor(diameter_mm, reference_mm: float, *, mu_per_mm: float = 0.02) -> np.ndarray:
    """Pixel-sigma ratio of a patient of water-equivalent diameter D to a phantom of D_ref at equal dose.

    sigma ~ exp(mu_w (D - D_ref) / 2): quantum noise variance goes as 1/N and the
    photons N behind a water path of length D as exp(-mu_w D) (Beer-Lambert, the
    central ray of a water cylinder), so sigma^2 ratio exp(mu_w (D - D_ref)).
    mu_w = 0.02 /mm is the effective attenuation of water at typical CT energies
    (about 0.019-0.021 /mm for 100-140 kVp beams). A stated law, not a fit: the
    bowtie, beam hardening and the reconstruction soften it in real scanners.
    """
    d = np.asarray(diameter_mm, dtype=np.float64)
    ref = _checks.positive("reference diameter (mm)", reference_mm)
    mu = _checks.positive("mu_per_mm", mu_per_mm)
    if not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise KernelError(f"diameter_mm: expected positive water-equivalent diameters (mm), got {d.tolist()!r}")
    return np.exp(mu * (d - ref) / 2.0)



def reduction_noise_rows(
    keys: Sequence[Sequence[int]] | np.ndarray,
    nps0: Sequence[NPS],
    shape: Sequence[int],
    spacing: float | Sequence[float],
    dose: Sequence,
    acquired: Sequence,
    *,
    sigma0: Sequence | None = None,
    mas_ref: float | None = None,
    electronic_fraction: float = 0.0,
    z_nps: float | RadialNPS | None = None,
    method: str = "spectral",
    names: Sequence[str] | None = None,
    gains: Sequence | None = None,
    xp: str | ModuleType | None = None,
    workers: int | None = None,
):
    """``reduction_noise`` for a batch whose rows are different scans: row b uses ``nps0[b]``, ``dose[b]``,
    ``acquired[b]``, ``sigma0[b]`` (each a value or one per slice), ``gains[b]`` (a relative sigma map or None) and
    ``names[b]`` in errors.

    Bit-identical, row by row, to ``reduction_noise`` of that row's key and parameters (spectral method), but the
    white noise of all rows is drawn and transformed in one threaded pass, so a batch of many scans costs what one
    ``nps_noise`` call of the same size costs (plus one amplitude per distinct NPS object).
    """
    keys = as_keys(keys)
    b = keys.shape[0]
    shape = _checks.shape("shape", shape, (2, 3))
    sp = _checks.spacing("spacing", spacing, len(shape))
    if (not (len(nps0) == len(dose) == len(acquired) == b) or (sigma0 is not None and len(sigma0) != b)
            or (gains is not None and len(gains) != b)):
        raise KernelError(f"rows: expected one nps0, dose, acquired (and sigma0, gain) per key ({b})")
    names = list(names) if names is not None else ["scan"] * b
    if method not in ("spectral", "spatial"):
        raise KernelError(f"method: expected 'spectral' or 'spatial', got {method!r}")
    xp_ = namespace(xp)
    nz = shape[0] if len(shape) == 3 else None
    amps, post, var0s, cache, memo = [], [], {}, {}, {}
    for r in range(b):
        nid = id(nps0[r])
        if nid not in var0s:
            cache[nid], var0s[nid] = _prepared(nps0[r], shape, sp, z_nps, xp_)
            if not var0s[nid] > 0:
                raise KernelError(f"{names[r]}: the scan's NPS has no power on this grid")
        mkey = (nid, id(dose[r]), id(acquired[r]), None if sigma0 is None else id(sigma0[r]))
        if mkey not in memo:
            factor = added_variance_factor(dose[r], acquired[r], mas_ref=mas_ref,
                                           electronic_fraction=electronic_fraction, name=names[r])
            if factor.size > 1 and (nz is None or factor.size != nz):
                raise KernelError(f"{names[r]}: expected one dose or one per slice ({nz or 1}), got {factor.size}")
            if sigma0 is None:
                per_slice = factor
            else:
                s0 = np.atleast_1d(np.asarray(sigma0[r], dtype=np.float64)).ravel()
                if s0.size not in (1, nz or 1) or not np.all(np.isfinite(s0)) or np.any(s0 < 0):
                    raise KernelError(f"sigma0: expected one non-negative sigma (HU) or one per slice, got {s0.size} values")
                per_slice = factor * s0**2 / var0s[nid]
            root = np.sqrt(per_slice)
            memo[mkey] = (float(root[0]), None) if np.all(root == root[0]) else (1.0, root)
        gain, slices = memo[mkey]
        amps.append((nid, gain))
        post.append(slices)
    scales = _row_scales(post, gains, shape, xp_)
    if method == "spatial":  # the spatial draw: white noise in space, filtered per row (kept for comparison)
        out = xp_.concatenate([nps_noise(keys[r : r + 1], nps0[r], shape, sp, z_nps=z_nps, method="spatial", xp=xp_,
                                         workers=workers) * xp_.float32(amps[r][1]) for r in range(b)])
        _apply_scales(out, scales, range(b))
        return out
    fft_shape = next(iter(cache.values()))[1]
    half = (*fft_shape[:-1], fft_shape[-1] // 2 + 1)
    per_key = math.prod(shape[:-1]) * (shape[-1] // 2 + 1)
    scaled: dict = {}
    for nid, gain in amps:  # one amplitude per (NPS, level): sqrt(S) times the row's gain, in float32
        if (nid, gain) not in scaled:
            scaled[(nid, gain)] = cache[nid][0] * xp_.float32(gain)
    amp = xp_.stack([scaled[a] for a in amps])  # (b, *half)
    out = xp_.empty((b, *shape), dtype=xp_.float32)
    reps = per_key // math.prod(half)  # slices drawn as independent 2D images share one 2D amplitude

    def run(rows: range) -> None:
        step = max(1, (1 << 22) // per_key)
        for start in range(rows.start, rows.stop, step):
            sub = slice(start, min(start + step, rows.stop))
            n = sub.stop - sub.start
            z = complex_normals(keys[sub], per_key, xp=xp_, workers=1 if is_numpy(xp_) else workers)
            z = _hermitian(z.reshape(-1, *half), len(fft_shape), fft_shape[-1], xp_)
            z = z.reshape(n, reps, *half)
            z *= amp[sub][:, None]
            axes = tuple(range(-len(fft_shape), 0))
            kw = {"workers": 1} if is_numpy(xp_) else {}
            noise = fft_module(xp_).irfftn(z.reshape(-1, *half), s=fft_shape, axes=axes, overwrite_x=True, **kw)
            out[sub] = noise.reshape(n, *shape).astype(xp_.float32, copy=False)
            _apply_scales(out, scales, range(sub.start, sub.stop))  # in the worker: parallel, while the rows are hot

    if is_numpy(xp_):
        parallel_rows(b, run, workers=workers, min_items=per_key)
    else:
        run(range(b))
    return out


_PREPARED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_PREPARED_LOCK = threading.Lock()


def _prepared(nps: NPS, shape, spacing, z_nps, xp):
    """(sqrt-NPS amplitude and FFT shape, variance on the 2D grid) of an NPS on a grid, memoised per NPS object.

    NPS objects are frozen, so a campaign drawing one scan's noise batch after batch resamples it once.
    """
    grid = tuple(shape[-2:]), tuple(spacing[-2:])
    value = None
    memo = z_nps is None or isinstance(z_nps, (int, float))  # a z-NPS table is an object: not memoised
    memo_key = (tuple(shape), tuple(spacing), z_nps, xp.__name__) if memo else None
    if memo:
        with _PREPARED_LOCK:
            value = _PREPARED.get(nps, {}).get(memo_key)
    if value is None:
        value = (_amplitude(nps, shape, spacing, z_nps, xp), grid_variance(nps.on_grid(*grid), *grid))
        if memo:
            with _PREPARED_LOCK:
                _PREPARED.setdefault(nps, {})[memo_key] = value
    return value


def _row_scales(post, gains, shape, xp) -> list:
    """Per row, what multiplies its draw: per-slice gains (tube current modulation, ``(nz, 1, 1)``) and a per-pixel
    gain map (spatially varying noise), as ``xp`` float32 arrays (one copy per distinct map), or None."""
    maps: dict = {}
    out = []
    for r, m in enumerate(post):
        g = gains[r] if gains is not None else None
        if g is not None and id(g) not in maps:
            a = np.asarray(to_numpy(g), dtype=np.float32)
            if a.shape not in (tuple(shape), tuple(shape[-2:])) or not np.all(np.isfinite(a)) or np.any(a < 0):
                raise KernelError(f"gain: expected a finite non-negative map of shape {tuple(shape)} or "
                                  f"{tuple(shape[-2:])}, got shape {a.shape}")
            maps[id(g)] = xp.asarray(a)
        out.append((None if m is None else xp.asarray(m, dtype=xp.float32)[:, None, None],
                    None if g is None else maps[id(g)]))
    return out


def _apply_scales(out, scales, rows: range) -> None:
    for r in rows:
        slices, gain = scales[r]
        if slices is not None:
            out[r] *= slices
        if gain is not None:
            out[r] *= gain
