"""Noise power spectrum (NPS) models: presets, radial tables, full 2D arrays.

Units throughout: frequency in cycles/mm (1/mm), NPS in HU^2 mm^2 (2D), so the
integral of the NPS over the frequency plane is the pixel variance in HU^2.
All models evaluate on the frequency grid of an image (``on_grid``), in the
half-plane layout of a real FFT (``rfftfreq`` on the last axis), which is what
the generators consume.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple, Sequence

import numpy as np

from kernels import _checks
from kernels._xp import namespace, to_numpy
from kernels.errors import KernelError


class NPSTruncationWarning(UserWarning):
    """The image grid's Nyquist frequency cuts off part of the requested noise power."""


class NPSSummary(NamedTuple):
    """What an NPS implies: pixel sigma (HU), mean frequency f_av and peak frequency f_peak (1/mm)."""

    sigma: float
    f_av: float
    f_peak: float


def frequency_axes(shape: Sequence[int], spacing: Sequence[float], *, half: bool = True) -> list[np.ndarray]:
    """Per-axis FFT frequencies (1/mm) for an image grid; the last axis is one-sided if ``half``."""
    axes = [np.fft.fftfreq(n, d) for n, d in zip(shape[:-1], spacing[:-1])]
    n, d = shape[-1], spacing[-1]
    axes.append(np.fft.rfftfreq(n, d) if half else np.fft.fftfreq(n, d))
    return axes


def radial_frequency(shape: Sequence[int], spacing: Sequence[float], xp: ModuleType = np, *, half: bool = True):
    """|f| (1/mm) on the 2D FFT grid of ``shape``/``spacing``, as an ``xp`` float64 array."""
    fy, fx = frequency_axes(shape, spacing, half=half)
    return xp.asarray(np.hypot(fy[:, None], fx[None, :]))


def half_weights(nx: int) -> np.ndarray:
    """How many full-spectrum bins each column of a one-sided (rfft) spectrum stands for."""
    w = np.full(nx // 2 + 1, 2.0)
    w[0] = 1.0
    if nx % 2 == 0:
        w[-1] = 1.0
    return w


def grid_variance(s_half, shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Pixel variance (HU^2) of noise with one-sided NPS ``s_half`` on this grid (sum of S times bin area)."""
    ny, nx = shape
    dfy, dfx = 1.0 / (ny * spacing[0]), 1.0 / (nx * spacing[1])
    s = to_numpy(s_half)
    return float(np.sum(s * half_weights(nx)[None, :]) * dfy * dfx)


def radial_average(s_full, spacing: Sequence[float], *, bin_width: float | None = None):
    """Radial average of a full (unshifted, FFT-order) 2D NPS.

    Bins have width ``bin_width`` (default: the coarser of the two frequency
    steps) and are centred on multiples of it; each bin reports the mean |f| of
    its members, so the frequency axis is honest in 1/mm. Returns
    ``(f, S, counts)`` as NumPy arrays, empty bins dropped.
    """
    s = to_numpy(s_full).astype(np.float64)
    ny, nx = s.shape
    fr = to_numpy(radial_frequency((ny, nx), spacing, half=False)).ravel()
    step = bin_width or max(1.0 / (ny * spacing[0]), 1.0 / (nx * spacing[1]))
    idx = np.floor(fr / step + 0.5).astype(np.int64)
    counts = np.bincount(idx)
    keep = counts > 0
    f = np.bincount(idx, weights=fr)[keep] / counts[keep]
    sr = np.bincount(idx, weights=s.ravel())[keep] / counts[keep]
    return f, sr, counts[keep]


def texture(f, s) -> tuple[float, float]:
    """(f_av, f_peak) of a radial NPS: f_av = sum f S / sum S, f_peak = argmax S."""
    f, s = np.asarray(f, float), np.asarray(s, float)
    total = float(np.sum(s))
    if total <= 0:
        raise KernelError("nps: the spectrum is zero everywhere; f_av and f_peak are undefined")
    return float(np.sum(f * s) / total), float(f[int(np.argmax(s))])


def _box_angle(f: np.ndarray, box: tuple[float, float] | None) -> np.ndarray:
    """Angle (radians) of the circle of radius ``f`` inside the box |fy| <= box[0], |fx| <= box[1]."""
    if box is None:
        return np.full(f.shape, 2 * np.pi)
    r = np.maximum(f, 1e-300)
    quadrant = np.arcsin(np.minimum(1.0, box[0] / r)) - np.arccos(np.minimum(1.0, box[1] / r))
    return 4 * np.clip(quadrant, 0.0, np.pi / 2)


def band_weights(f: np.ndarray, edge: float, d: float) -> np.ndarray:
    """Weights (1, 1/2 or 0) of a grid's frequencies ``f`` (spacing ``d``) in a band |f| <= ``edge`` (1/mm).

    Where the grid reaches past the band, a sample on its edge stands for half a
    cell inside it (both -edge and +edge are sampled); on a grid whose own
    Nyquist frequency is the edge, that sample is the whole periodic cell.
    """
    a, tol = np.abs(np.asarray(f, np.float64)), 1e-9 * edge
    w = np.where(a <= edge + tol, 1.0, 0.0)
    if 0.5 / d > edge + tol:
        w[np.abs(a - edge) <= tol] = 0.5
    return w


def nyquist_box(spacing: Sequence[float]) -> tuple[float, float]:
    """(fy, fx) Nyquist frequencies (1/mm): the square band that an image grid's FFT covers."""
    return 0.5 / spacing[0], 0.5 / spacing[1]


@dataclass(frozen=True, eq=False)
class RadialNPS:
    """An isotropic NPS given as a table S(|f|), linearly interpolated, zero past the last frequency.

    ``freq`` in 1/mm (increasing, from 0), ``values`` in HU^2 mm^2 (>= 0).
    ``grid``: ``((ny, nx), (dy, dx))`` of the image grid the table was measured
    on (radial average of a 2D NPS), else None. Such a table is zero outside that
    grid's Nyquist box (its values past Nyquist only describe the box's corners),
    and its ``variance`` is the one generated on that grid.
    """

    freq: np.ndarray
    values: np.ndarray
    name: str = "table"
    grid: tuple[tuple[int, int], tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        f = np.asarray(to_numpy(self.freq), dtype=np.float64).ravel()
        s = np.asarray(to_numpy(self.values), dtype=np.float64).ravel()
        if f.size != s.size or f.size < 2:
            raise KernelError(f"nps table: expected freq and values of equal length >= 2, got {f.size} and {s.size}")
        _checks.finite_array("nps table freq", f)
        _checks.finite_array("nps table values", s, nonnegative=True)
        if f[0] < 0 or np.any(np.diff(f) <= 0):
            raise KernelError("nps table freq: expected strictly increasing frequencies >= 0 (1/mm)")
        if f[0] > 0:  # extend flat to DC so the table covers the whole plane
            f, s = np.concatenate([[0.0], f]), np.concatenate([[s[0]], s])
        if not np.any(s > 0):
            raise KernelError("nps table values: expected some positive power, got all zeros")
        object.__setattr__(self, "freq", f)
        object.__setattr__(self, "values", s)
        if self.grid is not None:
            if len(self.grid) != 2:
                raise KernelError(f"nps table grid: expected ((ny, nx), (dy, dx)), got {self.grid!r}")
            shape = _checks.shape("nps table grid shape", self.grid[0], (2,))
            object.__setattr__(self, "grid", (shape, _checks.spacing("nps table grid spacing", self.grid[1], 2)))

    def __call__(self, f, xp: ModuleType | None = None):
        """S at radial frequencies ``f`` (1/mm), in the namespace of ``xp`` (NumPy by default).

        Ignores ``grid``'s band (a function of |f| only); ``on_grid`` applies it.
        """
        xp = namespace(xp)
        return xp.interp(xp.asarray(f), xp.asarray(self.freq), xp.asarray(self.values), right=0.0)

    @property
    def cutoff(self) -> float:
        """Highest frequency with power (1/mm)."""
        nz = np.nonzero(self.values > 0)[0]
        return float(self.freq[min(nz[-1] + 1, self.freq.size - 1)])

    @property
    def band(self) -> tuple[float, float] | None:
        """The Nyquist box of ``grid`` outside which S is zero, or None (no limit)."""
        return None if self.grid is None else nyquist_box(self.grid[1])

    def power(self, box: tuple[float, float] | None = None) -> float:
        """Integral of S (HU^2) over the box |fy| <= box[0], |fx| <= box[1] (whole plane if None), within ``band``.

        What a grid with that Nyquist box generates, up to sampling: the
        continuous quantity to compare with the continuous total.
        """
        band = self.band
        if box is not None and band is not None:
            box = (min(box[0], band[0]), min(box[1], band[1]))
        box = box if box is not None else band
        end = self.freq[-1] if box is None else min(self.freq[-1], math.hypot(*box))
        f = np.union1d(np.linspace(0.0, end, 8193), self.freq[self.freq <= end])
        return float(np.trapezoid(f * self(f) * _box_angle(f, box), f))

    def variance(self) -> float:
        """Pixel variance (HU^2): on ``grid`` what drawing on it generates (sum of S times bin area), else the integral of S."""
        if self.grid is None:
            return self.power()
        return grid_variance(self._sample(*self.grid, np, True), *self.grid)

    def summary(self) -> NPSSummary:
        f = np.linspace(0.0, self.freq[-1], 8193)
        f_av, f_peak = texture(f, self(f))
        return NPSSummary(math.sqrt(self.variance()), f_av, f_peak)

    def scaled(self, factor: float) -> "RadialNPS":
        factor = _checks.positive("nps scale factor", factor)
        return RadialNPS(self.freq, self.values * factor, self.name, self.grid)

    def with_sigma(self, sigma: float) -> "RadialNPS":
        """The same shape scaled so that its ``variance`` is ``sigma**2`` (HU)."""
        return self.scaled(_checks.positive("sigma", sigma) ** 2 / self.variance())

    def on_grid(self, shape: Sequence[int], spacing: Sequence[float], xp: ModuleType | None = None, *, half: bool = True):
        """S (HU^2 mm^2) on the 2D FFT grid of an image; warns if the grid's Nyquist box cuts off > 1% of the power."""
        shape = _checks.shape("shape", shape, (2,))
        spacing = _checks.spacing("spacing", spacing, 2)
        lost = 1.0 - self.power(nyquist_box(spacing)) / self.power()
        if lost > 0.01:
            warnings.warn(
                f"nps '{self.name}': {100 * lost:.1f}% of its power lies beyond the Nyquist frequencies "
                f"{'/'.join(f'{f:.3f}' for f in nyquist_box(spacing))} 1/mm of spacing {spacing} mm and is not generated",
                NPSTruncationWarning,
                stacklevel=2,
            )
        return self._sample(shape, spacing, namespace(xp), half)

    def _sample(self, shape, spacing, xp, half):
        s = self(radial_frequency(shape, spacing, xp, half=half), xp)
        band = self.band
        if band is None:
            return s
        fy, fx = frequency_axes(shape, spacing, half=half)
        wy, wx = (band_weights(f, edge, d) for f, edge, d in zip((fy, fx), band, spacing))
        return s if np.all(wy == 1) and np.all(wx == 1) else s * xp.asarray(wy[:, None] * wx[None, :])


@dataclass(frozen=True, eq=False)
class GridNPS:
    """A full 2D NPS array (HU^2 mm^2) in FFT order on the grid of ``spacing`` (mm), e.g. an estimate.

    On another grid it is bilinearly interpolated in frequency, periodically
    (as the NPS of a sampled image is), and zero outside its Nyquist box.
    """

    values: np.ndarray
    spacing: tuple[float, float]
    name: str = "grid"

    def __post_init__(self) -> None:
        s = np.asarray(to_numpy(self.values), dtype=np.float64)
        if s.ndim != 2 or min(s.shape) < 2:
            raise KernelError(f"nps array: expected a 2D array of at least 2x2, got shape {s.shape}")
        _checks.finite_array("nps array", s, nonnegative=True)
        flipped = np.roll(np.flip(s, (0, 1)), (1, 1), (0, 1))  # S(-f)
        if not np.allclose(s, flipped, rtol=1e-6, atol=1e-12 * float(s.max())):
            raise KernelError("nps array: expected point symmetry S(-f) = S(f), as for any real-valued noise")
        object.__setattr__(self, "values", s)
        object.__setattr__(self, "spacing", _checks.spacing("nps array spacing", self.spacing, 2))

    def variance(self) -> float:
        half = self.values[:, : self.values.shape[1] // 2 + 1]
        return grid_variance(half, self.values.shape, self.spacing)

    def radial(self) -> RadialNPS:
        f, s, _ = radial_average(self.values, self.spacing)
        return RadialNPS(f, s, f"{self.name} (radial)", (self.values.shape, self.spacing))

    def summary(self) -> NPSSummary:
        f, s, _ = radial_average(self.values, self.spacing)
        f_av, f_peak = texture(f, s)
        return NPSSummary(math.sqrt(self.variance()), f_av, f_peak)

    def scaled(self, factor: float) -> "GridNPS":
        return GridNPS(self.values * _checks.positive("nps scale factor", factor), self.spacing, self.name)

    def with_sigma(self, sigma: float) -> "GridNPS":
        return self.scaled(_checks.positive("sigma", sigma) ** 2 / self.variance())

    def on_grid(self, shape: Sequence[int], spacing: Sequence[float], xp: ModuleType | None = None, *, half: bool = True):
        shape = _checks.shape("shape", shape, (2,))
        spacing = _checks.spacing("spacing", spacing, 2)
        xp = namespace(xp)
        if tuple(shape) == self.values.shape and np.allclose(spacing, self.spacing):
            s = self.values[:, : shape[1] // 2 + 1] if half else self.values
            return xp.asarray(s)
        fy, fx = frequency_axes(shape, spacing, half=half)
        return xp.asarray(_periodic_bilinear(self.values, self.spacing, fy, fx, spacing))


def _periodic_bilinear(s: np.ndarray, spacing, fy: np.ndarray, fx: np.ndarray, target_spacing) -> np.ndarray:
    """Bilinear interpolation of a full FFT-order NPS ``s`` at frequencies ``fy`` x ``fx`` (1/mm); zero past its Nyquist box.

    The NPS of a sampled image is periodic in frequency (period 1/spacing), so
    cells wrap around: target frequencies between the last sample and +Nyquist
    interpolate towards the -Nyquist side, for odd and even sizes alike.
    """
    weights = []
    for f, n, d, target_d in zip((fy, fx), s.shape, spacing, target_spacing):
        u = np.asarray(f, np.float64) * (n * d)  # fractional FFT index
        i0 = np.floor(u)
        t = u - i0
        i0 = i0.astype(np.int64) % n
        weights.append((i0, (i0 + 1) % n, t, band_weights(f, 0.5 / d, target_d)))
    (y0, y1, ty, by), (x0, x1, tx, bx) = weights
    y0, y1, ty = y0[:, None], y1[:, None], ty[:, None]
    out = (s[y0, x0] * (1 - ty) * (1 - tx) + s[y1, x0] * ty * (1 - tx)
           + s[y0, x1] * (1 - ty) * tx + s[y1, x1] * ty * tx)
    return out * by[:, None] * bx[None, :]


# --- Presets -----------------------------------------------------------------

#: Reconstruction-kernel apodisation windows W at f/f_cutoff = 0, .25, .5, .75, 1
#: (XCIST / gecatsim, ``reconstruction/pyfiles/createHSP.py``), quadratically
#: interpolated; the NPS of filtered back-projection is ~ |f| W(f)^2 (Kijewski &
#: Judy 1987). "sharp" uses XCIST's bone window.
PRESET_WINDOWS: dict[str, tuple[float, ...]] = {
    "soft": (1.0, 0.815, 0.4564, 0.1636, 0.0),
    "standard": (1.0, 0.9338, 0.7441, 0.4425, 0.0531),
    "sharp": (1.0, 1.0485, 1.17, 1.2202, 0.9201),
}

#: Default kernel cutoff (1/mm): the frequency at which the window ends. With it
#: the presets peak at 0.23 (soft), 0.36 (standard) and 0.64 (sharp) 1/mm,
#: within the range reported for clinical body and bone kernels (Solomon et al.
#: 2012; Friedman et al. 2013). Use a pixel spacing of at most 0.5/cutoff mm to
#: keep all of the power below the grid's Nyquist frequency.
DEFAULT_CUTOFF = 0.8


def preset(name: str, sigma: float, *, cutoff: float = DEFAULT_CUTOFF) -> RadialNPS:
    """An FBP-like NPS ``S(f) = c |f| W(f/cutoff)^2`` scaled to pixel sigma ``sigma`` (HU).

    ``name`` is one of ``PRESET_WINDOWS``; ``cutoff`` in 1/mm.
    """
    if name not in PRESET_WINDOWS:
        raise KernelError(f"nps preset: expected one of {sorted(PRESET_WINDOWS)}, got {name!r}")
    cutoff = _checks.positive("cutoff", cutoff)
    from scipy.interpolate import interp1d

    window = interp1d(np.linspace(0.0, 1.0, 5), PRESET_WINDOWS[name], kind="quadratic")
    u = np.linspace(0.0, 1.0, 2049)
    shape = u * np.clip(window(u), 0.0, None) ** 2
    f = u * cutoff
    # Past the cutoff the window ends: one extra point drops the table to zero.
    f, shape = np.append(f, cutoff * (1 + 1e-9)), np.append(shape, 0.0)
    return RadialNPS(f, shape, name).with_sigma(sigma)
