"""The noise a scan already carries, measured on the scan itself, and the patient's size.

``estimate_scan_noise``: automatic uniform-region NPS estimation on one scan
(no repeats). Candidate ROIs (``roi_px`` pixels or ``roi_mm`` square, half-overlapping) are kept
where the locally smoothed image stays in a soft-tissue HU range (no air, lung
or bone inside), where a plane fit explains almost nothing (no edge or
gradient: the ROI variance after removing the mean is at most ``max_trend``
times that after removing a plane), and where the variance is not an outlier
(at most ``max_ratio`` times the median of the kept ROIs of its slice, or of all
slices where a slice has fewer than 3, iterated): structure only adds variance,
so the noise floor is the bulk of the distribution; per slice, because a
modulated tube current changes the noise from slice to slice. The
kept ROIs are mean-detrended (a polynomial detrend removes real low-frequency
noise power; ``shared/NPS_FACTS.md``) and their NPS averaged (ICRU 87 eq.
11.1) under a Hann taper (Welch: less leakage into the low-power bins of a small
ROI than a square window), scaled to integrate to sigma0^2. sigma0^2 is the
mean ROI variance (untapered); its confidence interval is a t
interval over the ROI variances with the number of independent ROIs taken as
the covered area over one ROI's area (overlapping ROIs are not independent).

``water_equivalent_diameter``: AAPM Report 220 (TG-220, 2014), eq. 3:
D_w = 2 sqrt((mean HU / 1000 + 1) A / pi) over the patient region of each
axial slice (pixels above ``threshold`` HU, the largest connected region with
its holes filled, so lungs inside the body count). A region touching the image
edge is flagged ``truncated`` (the field of view cuts the patient; D_w is then
an underestimate, TG-220 sec. 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage, signal, stats

from kernels import _checks
from kernels._xp import to_numpy
from kernels.errors import KernelError
from kernels.estimate import NPSEstimate, detrend, extract_rois, noise_from_repeated_scans
from kernels.nps import GridNPS, NPSSummary

#: Soft tissue (fat to enhanced parenchyma) in HU: the smoothed image must stay inside this range in a kept ROI.
SOFT_TISSUE_HU = (-150.0, 250.0)


@dataclass(frozen=True, eq=False)
class ScanNoiseEstimate:
    """The noise of one scan measured in its uniform regions.

    ``nps``: the averaged ROI NPS (HU^2 mm^2 on the ROI grid); ``sigma`` (HU) =
    sqrt(mean ROI variance), ``ci`` its confidence interval at ``confidence``;
    ``rois``: (n, 3) int (slice, row, column) of each kept ROI's top-left corner,
    ``roi_size`` pixels square; ``slice_sigma``: per-slice sigma (NaN where a
    slice has fewer than 2 kept ROIs); ``candidates``: ROIs examined;
    ``n_independent``: covered area / ROI area (the CI's sample size).
    """

    nps: NPSEstimate
    sigma: float
    ci: tuple[float, float]
    confidence: float
    rois: np.ndarray
    roi_size: int
    slice_sigma: np.ndarray
    candidates: int
    n_independent: float

    @property
    def n_rois(self) -> int:
        return int(self.rois.shape[0])

    def grid_nps(self, name: str = "scan estimate") -> GridNPS:
        return GridNPS(self.nps.nps, self.nps.spacing, name)

    def summary(self) -> NPSSummary:
        return self.nps.summary()

    def to_dict(self) -> dict[str, Any]:
        s = self.summary()
        return {"method": "uniform-region NPS on the scan itself (mean-detrended ROIs)", "sigma": self.sigma,
                "ci": list(self.ci), "confidence": self.confidence, "f_av": s.f_av, "f_peak": s.f_peak,
                "n_rois": self.n_rois, "n_independent": self.n_independent, "candidates": self.candidates,
                "roi_size_px": self.roi_size, "roi_mm": [self.roi_size * d for d in self.nps.spacing],
                "rois": self.rois.tolist(),
                "slice_sigma": [None if not math.isfinite(v) else float(v) for v in self.slice_sigma]}


def _roi_pixels(roi_px: int, roi_mm: float | None, sp: tuple[float, float], ny: int, nx: int) -> int:
    """ROI side in pixels: ``roi_mm`` converted if given, else ``roi_px``; at least 8, at most half the image."""
    if roi_mm is not None:
        roi_px = int(round(_checks.positive("roi_mm", roi_mm) / min(sp)))
    if isinstance(roi_px, bool) or not isinstance(roi_px, (int, np.integer)) or roi_px < 2:
        raise KernelError(f"roi_px: expected an integer >= 2 (pixels), got {roi_px!r}")
    if min(ny, nx) < 16:
        raise KernelError(f"images: {ny}x{nx} pixels are too small for noise ROIs (need at least 16x16)")
    return max(8, min(int(roi_px), ny // 2, nx // 2))


def _as_stack(images, spacing) -> tuple[np.ndarray, tuple[float, float]]:
    a = np.asarray(to_numpy(images), dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise KernelError(f"images: expected (ny, nx) or (nz, ny, nx), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise KernelError("images: expected finite values, found NaN or inf")
    sp = [spacing] * 2 if np.isscalar(spacing) else list(spacing)
    if len(sp) not in (2, 3):
        raise KernelError(f"spacing: expected (dy, dx) or (dz, dy, dx) mm, got {spacing!r}")
    return a, _checks.spacing("spacing", sp[-2:], 2)  # type: ignore[return-value]


def estimate_scan_noise(
    images,
    spacing: float | Sequence[float],
    *,
    roi_px: int = 32,
    roi_mm: float | None = None,
    hu_range: tuple[float, float] = SOFT_TISSUE_HU,
    max_trend: float = 1.15,
    max_ratio: float = 1.5,
    min_rois: int = 4,
    confidence: float = 0.95,
    name: str = "scan",
) -> ScanNoiseEstimate:
    """Estimate the scan's own noise (NPS, sigma0 with a CI, the ROIs used) from its uniform regions.

    ``images``: one slice ``(ny, nx)`` or a volume ``(nz, ny, nx)`` in HU;
    ``spacing``: mm, ``(dy, dx)`` (or ``(dz, dy, dx)``). ROIs are ``roi_px``
    pixels square (32: 22 mm at 0.7 mm pixels), or ``roi_mm`` mm if given, at
    most half the image. Raises ``KernelError`` naming ``name`` when fewer than
    ``min_rois`` uniform ROIs are found.
    """
    stack, sp = _as_stack(images, spacing)
    nz, ny, nx = stack.shape
    roi = _roi_pixels(roi_px, roi_mm, sp, ny, nx)
    lo, hi = float(hu_range[0]), float(hu_range[1])
    stride = max(1, roi // 2)
    ys = np.arange(0, ny - roi + 1, stride)
    xs = np.arange(0, nx - roi + 1, stride)
    pos, var, ok, lowpass = [], [], [], []
    for k in range(nz):
        img = stack[k]
        smooth = ndimage.gaussian_filter(img, sigma=max(1.0, roi / 8))
        rois = extract_rois(img, roi, stride=stride)  # (len(ys) * len(xs), roi, roi), row-major over (y, x)
        srois = extract_rois(smooth, roi, stride=stride)
        inside = (srois.min(axis=(1, 2)) >= lo) & (srois.max(axis=(1, 2)) <= hi)
        v_mean = detrend(rois, "mean").var(axis=(1, 2))
        v_plane = detrend(rois, "poly1").var(axis=(1, 2))
        flat = v_mean <= max_trend * np.maximum(v_plane, 1e-30)
        # Share of the ROI variance that survives smoothing: about constant for noise, larger where structure is.
        q = detrend(srois, "mean").var(axis=(1, 2)) / np.maximum(v_mean, 1e-30)
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        pos.append(np.stack([np.full(yy.size, k), yy.ravel(), xx.ravel()], axis=1))
        var.append(v_mean)
        lowpass.append(q)
        ok.append(inside & flat & (v_mean > 0))
    pos_a, var_a, ok_a, q_a = np.concatenate(pos), np.concatenate(var), np.concatenate(ok), np.concatenate(lowpass)
    candidates = int(pos_a.shape[0])
    keep = ok_a.copy()
    slice_of = pos_a[:, 0]
    for _ in range(5):  # structure only adds variance: drop the high tail around the robust noise floor
        if keep.sum() < min_rois:
            break
        # The floor per slice where a slice has enough ROIs (a modulated tube current changes the noise per slice).
        med = np.full(var_a.shape, float(np.median(var_a[keep])))
        for k in range(nz):
            in_k = keep & (slice_of == k)
            if in_k.sum() >= 3:
                med[slice_of == k] = float(np.median(var_a[in_k]))
        med_q = float(np.median(q_a[keep]))
        new = keep & (var_a <= max_ratio * med) & (q_a <= max_ratio * med_q)
        if np.array_equal(new, keep):
            break
        keep = new
    if keep.sum() < min_rois:
        raise KernelError(
            f"{name}: found {int(keep.sum())} uniform soft-tissue ROIs of {roi * sp[1]:.1f} mm (need {min_rois}) among "
            f"{candidates}; the scan's own noise cannot be measured here (give the noise from a phantom series or a table)")
    sel = pos_a[keep]
    v = var_a[keep]
    mean_v = float(np.mean(v))
    est = _tapered_nps(np.stack([stack[k, y : y + roi, x : x + roi] for k, y, x in sel]), sp, mean_v)
    covered = np.zeros(stack.shape, dtype=bool)
    for k, y, x in sel:
        covered[k, y : y + roi, x : x + roi] = True
    n_ind = max(1.0, float(covered.sum()) / (roi * roi))
    conf = _checks.fraction("confidence", confidence, low_open=True, high_open=True)
    if v.size > 1 and n_ind > 1:
        half = float(stats.t.ppf(0.5 + conf / 2, n_ind - 1)) * float(np.std(v, ddof=1)) / math.sqrt(n_ind)
    else:
        half = mean_v
    ci = (math.sqrt(max(mean_v - half, 0.0)), math.sqrt(mean_v + half))
    slice_sigma = np.full(nz, np.nan)
    for k in range(nz):
        vk = var_a[keep & (pos_a[:, 0] == k)]
        if vk.size >= 2:
            slice_sigma[k] = math.sqrt(float(np.mean(vk)))
    return ScanNoiseEstimate(est, math.sqrt(mean_v), ci, conf, sel.astype(np.int64), roi, slice_sigma, candidates, n_ind)


TAPER_ALPHA = 0.5


def _taper(n: int) -> np.ndarray:
    """A Tukey window of ``n`` samples (cosine edges over ``TAPER_ALPHA`` of the ROI, flat in between)."""
    return signal.windows.tukey(n, TAPER_ALPHA, sym=False) if TAPER_ALPHA > 0 else np.ones(n)


def _tapered_nps(rois: np.ndarray, sp: tuple[float, float], variance: float) -> NPSEstimate:
    """NPS shape from ROIs ``(n, r, r)`` under a separable Hann taper (Welch), scaled so its integral is ``variance``.

    A square (untapered) ROI leaks power through the sidelobes of its sinc^2 window into bins where the NPS is
    small (near DC of a ramp-like FBP NPS, near the kernel's cut-off), and a noise drawn from that estimate on a
    larger image keeps the leak: on 32-pixel ROIs of FBP-like noise the box estimate is 15-20% high in the first
    and last bins above 5% of the peak, the Hann-tapered one within 2% in mid band and 5-10% there. The weighted
    mean is removed first (mean detrending only; a polynomial removes true low-frequency power).
    """
    n, ry, rx = rois.shape
    w = np.outer(_taper(ry), _taper(rx))
    centred = rois - (rois * w).sum(axis=(1, 2), keepdims=True) / w.sum()
    power = np.mean(np.abs(np.fft.fft2(centred * w)) ** 2, axis=0) * (sp[0] * sp[1] / float(np.sum(w**2)))
    # Removing the mean empties the DC bin; drawn on a finer grid, that zero would pull down every frequency below
    # the ROI's first bin. Fill it with the mean of its four nearest bins (the NPS of FBP noise is not 0 at DC).
    power[0, 0] = (power[0, 1] + power[0, -1] + power[1, 0] + power[-1, 0]) / 4.0
    total = float(power.sum()) / (ry * rx * sp[0] * sp[1])
    if total > 0:
        power *= variance / total
    return NPSEstimate(power, sp, int(n))


@dataclass(frozen=True, eq=False)
class WaterDiameter:
    """Per-slice water-equivalent diameter (mm, AAPM TG-220), patient area (mm^2), mean HU and FOV truncation."""

    diameter_mm: np.ndarray
    area_mm2: np.ndarray
    mean_hu: np.ndarray
    truncated: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        d = self.diameter_mm
        return {"method": "AAPM TG-220 water-equivalent diameter, D_w = 2 sqrt((mean HU/1000 + 1) A / pi)",
                "diameter_mm": [float(v) for v in d], "mean_mm": float(np.mean(d)) if d.size else None,
                "truncated": bool(np.any(self.truncated))}


def body_mask(image: np.ndarray, threshold: float = -500.0) -> np.ndarray:
    """The patient region of one axial slice (HU): pixels above ``threshold``, the largest connected region, holes
    filled (TG-220's outline; lungs inside the body count). All False when nothing is above the threshold."""
    labels, n = ndimage.label(np.asarray(image) > threshold)
    if n == 0:
        return np.zeros(np.shape(image), dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == (1 + int(np.argmax(sizes))))


def water_equivalent_diameter(images, spacing: float | Sequence[float], *, threshold: float = -500.0) -> WaterDiameter:
    """D_w per axial slice (TG-220, see the module docstring); ``images`` ``(ny, nx)`` or ``(nz, ny, nx)`` HU."""
    stack, sp = _as_stack(images, spacing)
    nz = stack.shape[0]
    d, area, mean, trunc = np.zeros(nz), np.zeros(nz), np.zeros(nz), np.zeros(nz, dtype=bool)
    for k in range(nz):
        body = body_mask(stack[k], threshold)
        if not body.any():
            continue
        a = float(body.sum()) * sp[0] * sp[1]
        m = float(stack[k][body].mean())
        area[k], mean[k] = a, m
        d[k] = 2.0 * math.sqrt(max(m / 1000.0 + 1.0, 0.0) * a / math.pi)
        trunc[k] = bool(body[0].any() or body[-1].any() or body[:, 0].any() or body[:, -1].any())
    return WaterDiameter(d, area, mean, trunc)


def repeated_scan_noise(
    scans,
    spacing: float | Sequence[float],
    *,
    roi_px: int = 32,
    roi_mm: float | None = None,
    hu_range: tuple[float, float] = SOFT_TISSUE_HU,
    min_rois: int = 2,
    confidence: float = 0.95,
    name: str = "phantom",
) -> ScanNoiseEstimate:
    """The noise of R >= 2 repeated scans of one phantom ``(R, ny, nx)``, in its uniform (soft-tissue/water) region.

    The ensemble mean is removed (with the R/(R-1) correction; ``noise_from_repeated_scans``), which takes the
    phantom and its trends (cupping) out without touching the noise spectrum, so the ROIs are not detrended. ROIs
    (half-overlapping) are kept where the smoothed mean image stays within ``hu_range``. ``sigma``: root mean ROI
    variance; the CI is a t interval over the per-position variances with (covered area / ROI area) x (R - 1)
    independent samples. ``slice_sigma`` holds one value (the phantom slice).
    """
    stack, sp = _as_stack(scans, spacing)
    r, ny, nx = stack.shape
    if r < 2:
        raise KernelError(f"{name}: expected at least 2 repeated scans, got {r}")
    noise = noise_from_repeated_scans(stack)
    mean = stack.mean(axis=0)
    roi = _roi_pixels(roi_px, roi_mm, sp, ny, nx)
    stride = max(1, roi // 2)
    smooth = ndimage.gaussian_filter(mean, sigma=max(1.0, roi / 8))
    srois = extract_rois(smooth, roi, stride=stride)
    inside = (srois.min(axis=(1, 2)) >= hu_range[0]) & (srois.max(axis=(1, 2)) <= hu_range[1])
    ys, xs = np.arange(0, ny - roi + 1, stride), np.arange(0, nx - roi + 1, stride)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    pos = np.stack([np.zeros(yy.size, np.int64), yy.ravel(), xx.ravel()], axis=1)[inside]
    if pos.shape[0] < min_rois:
        raise KernelError(f"{name}: found {pos.shape[0]} uniform ROIs of {roi * sp[1]:.1f} mm in the phantom's "
                          f"{hu_range[0]:g}..{hu_range[1]:g} HU region (need {min_rois})")
    rois = np.stack([noise[:, y : y + roi, x : x + roi] for _, y, x in pos], axis=1)  # (R, n, roi, roi)
    v = np.mean(rois**2, axis=(0, 2, 3))  # per position, over the realizations (the noise has zero mean)
    mean_v = float(np.mean(v))
    est = _tapered_nps(rois.reshape(-1, roi, roi), sp, mean_v)
    covered = np.zeros((ny, nx), dtype=bool)
    for _, y, x in pos:
        covered[y : y + roi, x : x + roi] = True
    n_ind = max(1.0, float(covered.sum()) / (roi * roi)) * (r - 1)
    conf = _checks.fraction("confidence", confidence, low_open=True, high_open=True)
    spread = float(np.std(rois.var(axis=(2, 3)).ravel(), ddof=1)) if rois.shape[0] * rois.shape[1] > 1 else mean_v
    half = float(stats.t.ppf(0.5 + conf / 2, max(n_ind - 1, 1))) * spread / math.sqrt(n_ind)
    ci = (math.sqrt(max(mean_v - half, 0.0)), math.sqrt(mean_v + half))
    return ScanNoiseEstimate(est, math.sqrt(mean_v), ci, conf, pos, roi, np.array([math.sqrt(mean_v)]), int(inside.size),
                             n_ind)
