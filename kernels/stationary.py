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

import functools
import math
import threading
from collections import OrderedDict
from types import ModuleType
from typing import Any, Sequence, Union

import numpy as np

from kernels import _checks
from kernels._xp import fft_module, is_numpy, namespace
from kernels.errors import KernelError
from kernels.keys import NoiseKey, as_keys, box_muller, complex_normals, parallel_rows, uniforms
from kernels.nps import GridNPS, RadialNPS

NPS = Union[RadialNPS, GridNPS]
try:  # scipy.fft's own c2r, the one scipy.fft.irfftn calls, for its out= (private: without it, irfftn and a copy)
    from scipy.fft._pocketfft.pypocketfft import c2r as _C2R
except ImportError:  # pragma: no cover - a SciPy that moved it
    _C2R = None
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
    xp : ``"numpy"`` (default) or ``"cupy"``; on CuPy the keyed uniforms, the
        normals and the FFT all run on the device (``kernels.keys``: same uniform bits).
    workers : host threads (default: all CPUs of this process).

    This is the reference path; ``noise_plan`` gives the same bits with the
    filter computed once and buffers reused (and fuses the add + HU window).
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
    """Make the self-conjugate planes (fx = 0 and Nyquist) of a one-sided spectrum Hermitian, in place.

    A c2r transform needs Z(-f) = conj Z(f) there; (Z + conj Z(-f)) / sqrt 2 keeps E|Z|^2 = 1.
    Both planes at once through a strided view: four calls per chunk, one small copy (Z(-f)).
    """
    planes = z[..., :: nx // 2] if nx % 2 == 0 else z[..., :1]  # fx = 0 and fx = Nyquist (the last column)
    mirrored = planes
    for axis in range(1, fft_ndim):  # Z(-f): index j -> -j mod n along every axis but the last (a copy)
        mirrored = xp.take(mirrored, _negated(z.shape[axis], xp), axis=axis)
    xp.conj(mirrored, out=mirrored)
    xp.add(planes, mirrored, out=mirrored)
    xp.multiply(mirrored, xp.float32(1 / math.sqrt(2)), out=planes)
    return z


@functools.lru_cache(maxsize=64)
def _negated_host(n: int) -> np.ndarray:
    """Indices -j mod n, j < n (read-only: shared)."""
    idx = (-np.arange(n)) % n
    idx.flags.writeable = False
    return idx


def _negated(n: int, xp):
    """Indices -j mod n in ``xp`` (cached on the host)."""
    return _negated_host(n) if is_numpy(xp) else xp.asarray(_negated_host(n))


def _shape_noise(z, amp, shape, fft_shape, method, xp, out=None):
    """Complex normals (b, per_key) -> noise (b, *shape), float32.

    ``out``: a C-contiguous float32 ``(b, *shape)`` array the inverse FFT may write into (NumPy, spectral: no
    fresh output per chunk); the noise is returned either way, in ``out`` or in a new array.
    """
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
        if out is not None and _C2R is not None and is_numpy(xp) and z.flags.c_contiguous:
            # What scipy.fft.irfftn(z, s, axes, workers=1) runs (norm "backward" = 2), written straight into out.
            _C2R(z, list(range(1, fft_ndim + 1)), fft_shape[-1], False, 2, out.reshape(-1, *fft_shape), 1)
            return out
        n = fft.irfftn(z, s=fft_shape, axes=axes, overwrite_x=True, **kw)
    else:
        white = real_normals(z, math.prod(shape), xp).reshape(-1, *fft_shape)
        spec = fft.rfftn(white, axes=axes, **kw)
        spec *= amp * xp.float32(1 / math.sqrt(math.prod(fft_shape)))
        n = fft.irfftn(spec, s=fft_shape, axes=axes, overwrite_x=True, **kw)
    return n.reshape(b, *shape).astype(xp.float32, copy=False)


# --- The lean path: filter once, buffers once, add + window + clip fused --------------------------------------------

_PLAN_CACHE_SIZE = 32
_PLANS: "OrderedDict[tuple, NoisePlan]" = OrderedDict()
_PLANS_LOCK = threading.Lock()
#: Complex spectrum per host chunk: five 256^2 slices, eleven 32^3 cubes. Fewer, larger chunks spread each chunk's
#: dozen calls (Hermitian planes, filter, FFT set-up, add, window, clip) over more images while normals, spectrum and
#: image still stay near the cache (1.5 MiB measured best of 0.5 .. 2 MiB on the 2-core CI machine, both shapes).
_HOST_CHUNK_BYTES = 3 << 19
#: Complex spectrum per device chunk: large launches, bounded memory.
_DEVICE_CHUNK_BYTES = 1 << 28


_SCRATCH = threading.local()


def _device_of(xp: ModuleType) -> int | None:
    """The current CUDA device's ordinal for CuPy (its arrays live there), None for NumPy."""
    return None if is_numpy(xp) else int(xp.cuda.Device().id)


def _fingerprint(nps: Any) -> tuple:
    """A value key of an NPS (or z profile): equal models share a cached filter even as fresh objects."""
    if isinstance(nps, RadialNPS):
        return ("radial", nps.freq.tobytes(), nps.values.tobytes(), nps.grid)
    if isinstance(nps, GridNPS):
        return ("grid", nps.values.shape, nps.values.tobytes(), nps.spacing)
    if nps is None or isinstance(nps, (int, float)):
        return ("value", None if nps is None else float(nps))
    raise KernelError(f"nps: expected a RadialNPS or GridNPS, got {type(nps).__name__}")


def noise_plan(
    nps: NPS,
    shape: Sequence[int],
    spacing: float | Sequence[float],
    *,
    z_nps: float | RadialNPS | None = None,
    method: str = "spectral",
    xp: str | ModuleType | None = None,
) -> "NoisePlan":
    """The ``NoisePlan`` for these arguments, cached by value (the last 32): per dose, shape, spacing and ``xp``.

    A campaign calls it per batch (``DoseModel.nps_at(level)`` makes a fresh but
    equal NPS each time); the filter is computed on the first call only.
    """
    shape = _checks.shape("shape", shape, (2, 3))
    spacing = _checks.spacing("spacing", spacing, len(shape))
    xp = namespace(xp)
    key = (_fingerprint(nps), tuple(shape), tuple(spacing), _fingerprint(z_nps), method, xp.__name__, _device_of(xp))
    with _PLANS_LOCK:
        plan = _PLANS.get(key)
        if plan is not None:
            _PLANS.move_to_end(key)
            return plan
    plan = NoisePlan(nps, shape, spacing, z_nps=z_nps, method=method, xp=xp)
    with _PLANS_LOCK:
        _PLANS[key] = plan
        while len(_PLANS) > _PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
    return plan


class NoisePlan:
    """Stationary NPS noise for one (NPS, shape, spacing, z profile, method, ``xp``), prepared once.

    ``noise(keys)`` is bit-identical to ``nps_noise(keys, ...)`` with the same
    arguments, and ``noisy_into(out, clean, keys, window=(lo, hi))`` to the
    campaign's ``clip((clean + noise - lo) / (hi - lo), 0, 1)`` (float32
    ``clean``), but leaner: the sqrt-NPS filter is computed at construction, the
    normals' buffers are allocated once per thread, the host works in chunks of
    a few images that stay near the cache (normals -> filter -> inverse FFT ->
    add -> window -> clip), the inverse FFT writes into ``out`` and the add,
    window and clip run there in place.

    On CuPy (``xp="cupy"``) the same code runs on the device: keyed uniforms by
    the array Philox (same bits as the host), Box-Muller, cuFFT, add, window and
    clip, so only keys go in and the model input stays on the GPU. Device noise
    equals host noise to float32 rounding (CUDA's log/sin/cos and cuFFT round
    differently from NumPy's and pocketfft's: about 1e-6 of the noise's scale).

    The NPSTruncationWarning of a filter that loses power past Nyquist is
    issued once, when the plan is made.
    """

    def __init__(self, nps: NPS, shape: Sequence[int], spacing: float | Sequence[float], *,
                 z_nps: float | RadialNPS | None = None, method: str = "spectral",
                 xp: str | ModuleType | None = None, array_code: bool = False) -> None:
        shape = _checks.shape("shape", shape, (2, 3))
        spacing = _checks.spacing("spacing", spacing, len(shape))
        if method not in METHODS:
            raise KernelError(f"method: expected one of {METHODS}, got {method!r}")
        if z_nps is not None and len(shape) != 3:
            raise KernelError("z_nps: only applies to 3D shapes (nz, ny, nx)")
        self.xp = xp = namespace(xp)
        self.shape, self.spacing, self.method = tuple(shape), tuple(spacing), method
        self.amp, self.fft_shape = _amplitude(nps, shape, spacing, z_nps, xp)
        #: The spectral filter as the host multiplies it: ``z *= amp`` casts amp to complex64 on every call; cast once,
        #: the product is the same (the same complex64 loop). Elsewhere (spatial, CuPy) the float32 amplitude itself.
        self.filter = self.amp.astype(np.complex64) if is_numpy(xp) and method == "spectral" else self.amp
        self.per_key = (math.prod(shape[:-1]) * (shape[-1] // 2 + 1) if method == "spectral"
                        else math.ceil(math.prod(shape) / 2))
        #: Draw the uniforms with the array Philox even on NumPy: the device's code path, run on the host (tests).
        self.array_code = bool(array_code) or not is_numpy(xp)
        budget = _DEVICE_CHUNK_BYTES if not is_numpy(xp) else _HOST_CHUNK_BYTES
        self.chunk = max(1, budget // (8 * self.per_key))

    def noise(self, keys: NoiseKey | Sequence[Sequence[int]] | np.ndarray, *, out: Any = None,
              workers: int | None = 1):
        """Noise (HU), float32 ``(B, *shape)``: the bits of ``nps_noise`` with the same arguments.

        ``out``: a C-contiguous float32 ``xp`` array of B * prod(shape) elements
        to write into (any shape, e.g. with a channel axis), else a new one.
        ``workers``: host threads (None: all CPUs); the campaign keeps 1.
        """
        return self._run(as_keys(keys), out, None, None, True, workers)

    def noisy_into(self, out: Any, clean: Any, keys: NoiseKey | Sequence[Sequence[int]] | np.ndarray, *,
                   window: tuple[float, float] | None = None, clip: bool = True, workers: int | None = 1):
        """``out`` <- the noisy image ``clean + noise`` (HU), or with ``window=(lo, hi)`` the model input
        ``clip((clean + noise - lo) * float32(1 / (hi - lo)), 0, 1)`` (``clip=False``: no clip); returns ``out``.

        ``clean``: ``(B, *shape)`` HU images, one per key (a host array is copied
        to the device on CuPy: keep a block's images on the device and pass
        slices). ``out``: a C-contiguous float32 ``xp`` array of B * prod(shape)
        elements, e.g. the engine's ``(B, 1, *shape)`` input buffer. For float32
        ``clean`` the bits equal ``Preprocess(window, clip)(clean + nps_noise(...))``;
        other dtypes are computed as that expression does (promoted) and then
        stored as float32.
        """
        keys = as_keys(keys)
        xp = self.xp
        clean = xp.asarray(clean)
        if tuple(clean.shape) != (keys.shape[0], *self.shape):
            raise KernelError(f"clean: expected shape {(keys.shape[0], *self.shape)} (one image per key), got {tuple(clean.shape)}")
        if window is not None:
            lo, hi = float(window[0]), float(window[1])
            if not hi > lo:
                raise KernelError(f"window: expected (lo, hi) with hi > lo, got {window!r}")
            window = (lo, hi)
        if clean.dtype != xp.float32:  # the promoted expression, exactly as the campaign computed it
            noisy = clean + self._run(keys, None, None, None, True, workers)
            if window is not None:
                noisy = (noisy - xp.float32(window[0])) * xp.float32(1.0 / (window[1] - window[0]))
                noisy = xp.clip(noisy, 0.0, 1.0) if clip else noisy
            dst = self._target(out, keys.shape[0])
            dst[...] = noisy.astype(xp.float32, copy=False)
            return out
        return self._run(keys, out, clean, window, clip, workers)

    def _target(self, out: Any, b: int):
        """``out`` viewed as ``(B, *shape)``, or a new array."""
        xp = self.xp
        if out is None:
            return xp.empty((b, *self.shape), dtype=xp.float32)
        if not isinstance(out, xp.ndarray):
            raise KernelError(f"out: expected a {xp.__name__} array, got {type(out).__module__}.{type(out).__name__}")
        size = b * math.prod(self.shape)
        if out.dtype != xp.float32 or out.size != size or not out.flags.c_contiguous:
            raise KernelError(f"out: expected a C-contiguous float32 array of {size} elements ({b} x {self.shape}), "
                              f"got {out.dtype} {tuple(out.shape)}")
        return out.reshape((b, *self.shape))

    def _scratch(self, rows: int):
        """A ``(rows, per_key)`` complex64 view of this thread's buffer (one per thread and device, shared by all
        plans, allocated once and grown when needed: many dose levels do not multiply device memory)."""
        xp, n = self.xp, rows * self.per_key
        buffers = _SCRATCH.__dict__.setdefault("buffers", {})
        where = (xp.__name__, _device_of(xp))
        flat = buffers.get(where)
        if flat is None or flat.size < n:
            flat = buffers[where] = xp.empty(n, dtype=xp.complex64)
        return flat[:n].reshape(rows, self.per_key)

    def _run(self, keys: np.ndarray, out: Any, clean: Any, window, clip: bool, workers: int | None):
        xp = self.xp
        b = keys.shape[0]
        dst = self._target(out, b)
        result = dst if out is None else out
        scale = None if window is None else (xp.float32(window[0]), xp.float32(1.0 / (window[1] - window[0])))

        def run(rows: range) -> None:
            for start in range(rows.start, rows.stop, self.chunk):
                sub = slice(start, min(start + self.chunk, rows.stop))
                z = self._scratch(sub.stop - sub.start)
                if self.array_code:
                    z = box_muller(uniforms(keys[sub], 2 * self.per_key, xp=xp, array_code=True), xp=xp, out=z)
                else:
                    complex_normals(keys[sub], self.per_key, xp=xp, workers=1, out=z)
                d = dst[sub]
                n = _shape_noise(z, self.filter, self.shape, self.fft_shape, self.method, xp, out=d)  # d itself or new
                if clean is None:
                    if n is not d:
                        d[...] = n
                    continue
                xp.add(n, clean[sub], out=d)
                if scale is not None:
                    d -= scale[0]
                    d *= scale[1]
                    if clip:
                        xp.clip(d, 0.0, 1.0, out=d)

        if is_numpy(xp):
            parallel_rows(b, run, workers=workers, min_items=self.per_key)
        else:
            run(range(b))
        return result
