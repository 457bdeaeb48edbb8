"""Dose reduction on real scans: what each sample was acquired at, its own noise, and the noise a lower dose adds.

``DoseReduction`` is the noise model of ``NoiseSpec(mode="reduce")`` bound to a
source (``NoiseSpec.noise_model(source)`` builds it). At construction it reads
every sample's acquired dose per slice from its series' headers (or
``noise.acquired_mas``) and refuses, naming the series, a source without a dose
or a level at or above the acquired dose, so bad input fails before anything is
written. Per sample it then learns, once, the scan's own noise at D0 from one of
(``noise.scan_noise``):

- ``"estimate"`` (default): the scan itself, uniform soft-tissue ROIs
  (``kernels.estimate_scan_noise``): NPS shape, sigma0 with a CI, per-slice
  sigma0 where a slice has enough ROIs, the ROI positions;
- ``"phantom"``: repeated scans of a phantom of the same protocol
  (``noise.phantom_series``, >= 2 series): NPS and sigma at the phantom's dose,
  carried to the sample's dose by the dose model and to the patient's size by
  ``kernels.size_noise_factor`` (water-equivalent diameters of patient and
  phantom, TG-220); a phantom reconstructed with another ConvolutionKernel is a
  warning, or an error with ``noise.strict_kernel = true``;
- ``"model"``: the ``[noise]`` preset or table at ``sigma_ref``/``mas_ref``
  (scaled to the patient's size when ``noise.reference_diameter_mm`` is given).
- ``"library"``: the texture of the series' ConvolutionKernel/Manufacturer from the kernel library
  (``kernels.library``; rows of ``noise.kernel_table`` first), the level as for ``"model"``. ``"estimate"`` falls
  back to it, with a ``LibraryFallbackWarning`` and the reason in the report, when the scan has too few uniform
  regions and its kernel is in the library.

With ``noise.spatial = "map"`` (the default) the inserted noise follows the scan's own FBP variance map
(``kernels.variance_map``: projection-domain variance propagated from the scan's attenuation), normalised to mean 1
where sigma0 applies (the estimator's ROIs; the patient outline for the other sources), so sigma0 stays exact there
and the noise is higher behind long or dense paths, as in a real lower-dose scan. It stays stationary, stated in
the report, for lesion cubes (resampled crops of whole slices) and when the patient outline touches the image edge.
Levels may also be CTDIvol in mGy (``noise.ctdivol_mgy``), as fractions of each series' CTDIvol tag (or
``noise.acquired_ctdivol_mgy``; a series with neither is refused by name).

and inserts noise of NPS S(D) - S(D0) per slice (``kernels.reduction_noise``).
Levels are fractions of the acquired dose (``noise.fractions``) or absolute mAs
(``noise.levels``: fraction = level / the series' mean acquired mAs, applied per
slice, so a modulated scan keeps its modulation).

Limits, stated: a lesion cube resampled to another spacing receives noise with
the source grid's NPS band-limited to its Nyquist box, not passed through the
resampling; the electronic share ``electronic_fraction`` is at ``mas_ref``
(as in ``kernels.DoseModel``).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.dicom import scan_series
from audit.errors import ConfigError, InputError
from kernels import (
    GridNPS,
    KernelError,
    ScanNoiseEstimate,
    estimate_scan_noise,
    reduction_noise_rows,
    size_noise_factor,
    variance_factor,
    water_equivalent_diameter,
)
from kernels.library import KernelEntry, KernelLibrary
from kernels.scan_noise import body_mask, repeated_scan_noise
from kernels.variance_map import (
    VarianceMap,
    fbp_variance_map,
    region_means,
    relative_added_variance,
)

SCAN_NOISE = ("estimate", "phantom", "model", "library")
SPATIAL = ("map", "stationary")
GAIN_CACHE_BYTES = 256 << 20  # relative sigma maps kept (least recently used dropped first), float32


class KernelMismatchWarning(UserWarning):
    """The phantom series that supplies the NPS was reconstructed with another kernel than the audited series."""


class LibraryFallbackWarning(UserWarning):
    """A scan's own noise could not be measured; its texture comes from the kernel library, its level from the config."""


@dataclass(frozen=True)
class SampleDose:
    """One sample's acquired dose per slice (mAs) and where it came from."""

    series: str
    acquired: np.ndarray
    series_mas: float
    source: str
    acquisition: Any = None
    ctdi_vol_mgy: float | None = None
    ctdi_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"series": self.series, "acquired_mas": float(np.mean(self.acquired)), "series_mas": self.series_mas,
                "dose_source": self.source, "modulated": bool(np.ptp(self.acquired) > 0.005 * np.max(self.acquired)),
                "ctdi_vol_mgy": self.ctdi_vol_mgy, "ctdi_source": self.ctdi_source}


@dataclass(frozen=True, eq=False)
class SampleNoise:
    """A sample's own noise at its acquired dose: NPS shape, sigma0 per slice (HU), how it was obtained, its size."""

    nps: Any
    sigma0: np.ndarray
    how: dict[str, Any]
    estimate: ScanNoiseEstimate | None = None
    water_diameter_mm: np.ndarray | None = field(default=None)
    vmap: VarianceMap | None = None
    map_means: np.ndarray | None = None  # (nz, 2): the map's means where sigma0 applies (``region_means``)
    spatial: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.how)
        d["spatial"] = dict(self.spatial)
        d["sigma0"] = float(math.sqrt(float(np.mean(self.sigma0**2))))
        if self.sigma0.size > 1 and np.ptp(self.sigma0) > 0:
            d["slice_sigma0"] = [float(v) for v in self.sigma0]
        if self.estimate is not None:
            d["estimate"] = self.estimate.to_dict()
        if self.water_diameter_mm is not None:
            d["water_diameter_mm"] = [float(v) for v in self.water_diameter_mm]
        return d


@dataclass(frozen=True, eq=False)
class PhantomReference:
    """The NPS source of ``scan_noise = "phantom"``: repeated scans of one phantom."""

    estimate: ScanNoiseEstimate
    mas: float
    water_diameter_mm: float
    kernel: str | None
    where: str

    def to_dict(self) -> dict[str, Any]:
        return {"series": self.where, "mas": self.mas, "water_diameter_mm": self.water_diameter_mm, "kernel": self.kernel,
                "estimate": self.estimate.to_dict()}


def read_phantom(folders: Sequence[str | Path], mas: float | None, roi_mm: float | None) -> PhantomReference:
    """Repeated phantom series (the middle slice of each) -> NPS and sigma at the phantom's dose, its D_w and kernel."""
    series = [scan_series(Path(f)) for f in folders]
    where = ", ".join(str(f) for f in folders)
    if len(series) < 2:
        raise ConfigError(f"noise.phantom_series: expected at least 2 repeated scans, got {len(series)}")
    first = series[0]
    for s in series[1:]:
        if s.shape != first.shape or not np.allclose(s.spacing, first.spacing, rtol=1e-4):
            raise InputError(f"{s.files[0].parent}: grid {s.shape} at {s.spacing} mm differs from the first phantom "
                             f"scan's {first.shape} at {first.spacing} mm")
    k = first.shape[0] // 2
    scans = np.stack([s.read(k, k + 1)[0] for s in series])
    acq = first.acquisition
    dose = mas
    if acq is not None and acq.slice_mas is not None:
        dose = float(acq.slice_mas[k])
    if dose is None:
        raise ConfigError(f"noise.phantom_mas: missing; the phantom series {where} state no dose (ExposureInuAs, Exposure)")
    sp = (first.spacing[1], first.spacing[2])
    try:
        est = repeated_scan_noise(scans, sp, roi_mm=roi_mm, name=f"phantom series {where}")
    except KernelError as exc:
        raise InputError(str(exc)) from None
    dw = float(water_equivalent_diameter(scans.mean(axis=0), sp).diameter_mm[0])
    return PhantomReference(est, float(dose), dw, getattr(acq, "kernel", None), where)


class DoseReduction:
    """The reduce-mode noise model of a spec over a source (see the module docstring)."""

    def __init__(self, spec: Any, source: Any) -> None:
        self.spec = spec
        self.source = source
        self.library = KernelLibrary.builtin().with_rows(KernelEntry(*row, source=f"{spec.kernel_table} (user table)")
                                                         for row in spec.kernel_rows)
        self.doses = [self._dose(i) for i in range(len(source))]
        self._check_levels()
        self.phantom = None
        if spec.scan_noise == "phantom":
            self.phantom = read_phantom(spec.phantom_series, spec.phantom_mas, spec.roi_mm)
            self._check_kernels()
        self._noise: dict[int, SampleNoise] = {}
        self._grids: dict[tuple, GridNPS] = {}
        self._gains: dict[tuple, np.ndarray | None] = {}
        self._lock = threading.Lock()

    # -- doses ---------------------------------------------------------------------------------------

    def _name(self, i: int) -> str:
        name = getattr(self.source, "series_name", None)
        if callable(name):
            return str(name(i))
        ids = getattr(self.source, "ids", None)
        return str(ids[i]) if ids else f"sample {i}"

    def _dose(self, i: int) -> SampleDose:
        getter = getattr(self.source, "acquisition", None)
        acq = getter(i) if callable(getter) else None
        name = self._name(i)
        configured = self.spec.acquired_mas
        ctdi = getattr(acq, "ctdi_vol_mgy", None)
        ctdi_kw = ({"ctdi_vol_mgy": float(ctdi), "ctdi_source": "CTDIvol"} if ctdi is not None and ctdi > 0 else
                   {"ctdi_vol_mgy": self.spec.acquired_ctdivol_mgy, "ctdi_source": "noise.acquired_ctdivol_mgy"}
                   if self.spec.acquired_ctdivol_mgy is not None else {})
        if acq is not None and acq.slice_mas is not None:
            d0 = np.asarray(acq.slice_mas, dtype=np.float64)
            if np.any(d0 <= 0):
                raise InputError(f"{name}: {acq.dose_tag} states a dose of {float(d0.min()):g} mAs; expected > 0")
            return SampleDose(name, d0, float(acq.exposure_mas), str(acq.dose_tag), acq, **ctdi_kw)
        if configured is None:
            what = "states no dose (ExposureInuAs, Exposure)" if acq is not None else "is an array file with no dose"
            raise InputError(f"{name}: {what} and noise.acquired_mas is not set; dose reduction (noise.mode "
                             f"'{self.spec.mode}') needs the acquired dose (set noise.acquired_mas, or mode = 'add' "
                             "for noise-free inputs)")
        n = self._n_slices(i)
        current = None if acq is None else acq.slice_tube_current_ma
        if current is not None and acq.tube_current_ma and len(current) == n and np.ptp(current) > 0:
            d0 = configured * np.asarray(current, dtype=np.float64) / float(acq.tube_current_ma)
            how = "noise.acquired_mas, distributed over slices by XRayTubeCurrent"
        else:
            d0 = np.full(n, float(configured))
            how = "noise.acquired_mas"
        return SampleDose(name, d0, float(configured), how, acq, **ctdi_kw)

    def _n_slices(self, i: int) -> int:
        shape = tuple(self.source.shape)
        return int(shape[0]) if len(shape) == 3 else 1

    def _check_levels(self) -> None:
        if self.spec.fractions:
            return  # fractions are checked in (0, 1) by the spec
        if self.spec.ctdivol_mgy:
            for dose in self.doses:
                if dose.ctdi_vol_mgy is None:
                    raise InputError(f"{dose.series}: states no CTDIvol and noise.acquired_ctdivol_mgy is not set; "
                                     "levels in noise.ctdivol_mgy are relative to the acquired CTDIvol (set "
                                     "noise.acquired_ctdivol_mgy, or give noise.fractions)")
                for level in self.spec.ctdivol_mgy:
                    if level >= dose.ctdi_vol_mgy:
                        raise ConfigError(
                            f"noise.ctdivol_mgy: {level:g} mGy is at or above the acquired CTDIvol "
                            f"{dose.ctdi_vol_mgy:g} mGy of {dose.series}; a dose reduction can only lower the dose")
            return
        for dose in self.doses:
            for level in self.spec.levels:
                if level >= dose.series_mas:
                    raise ConfigError(
                        f"noise.levels: {level:g} mAs is at or above the acquired dose {dose.series_mas:g} mAs of "
                        f"{dose.series}; a dose reduction can only lower the dose (give noise.fractions, or lower levels)")

    def _check_kernels(self) -> None:
        ph = self.phantom.kernel
        for dose in self.doses:
            k = getattr(dose.acquisition, "kernel", None)
            if ph is None or k is None or ph == k:
                continue
            msg = (f"{dose.series}: ConvolutionKernel {k!r} differs from the phantom series' {ph!r} "
                   f"({self.phantom.where}); the NPS shape may not match")
            if self.spec.strict_kernel:
                raise InputError(msg + " (noise.strict_kernel = true)")
            warnings.warn(msg, KernelMismatchWarning, stacklevel=3)

    def fraction(self, i: int, level: float) -> float:
        """Level as a fraction of sample ``i``'s acquired dose (series mean; CTDIvol levels: of its acquired CTDIvol)."""
        if self.spec.fractions:
            return float(level)
        if self.spec.ctdivol_mgy:
            return float(level) / float(self.doses[i].ctdi_vol_mgy)
        return float(level) / self.doses[i].series_mas

    def target_dose(self, i: int, level: float) -> np.ndarray:
        """Per-slice target dose (mAs) of sample ``i`` at ``level``."""
        return self.fraction(i, level) * self.doses[i].acquired

    # -- the scan's own noise -----------------------------------------------------------------------

    def scan_noise(self, i: int, hu: np.ndarray | None = None, spacing: Sequence[float] | None = None) -> SampleNoise:
        """Sample ``i``'s own noise (computed once; ``hu``, its image, is loaded from the source if not given)."""
        with self._lock:
            if i in self._noise:
                return self._noise[i]
        if hu is None:
            hu = self.source.load([i])[0]
        spacing = tuple(self.source.spacing if spacing is None else spacing)
        noise = self._measure(i, np.asarray(hu), spacing)
        with self._lock:
            self._noise.setdefault(i, noise)
            return self._noise[i]

    def prepare(self) -> None:
        """Measure every sample's own noise now (each sample loaded once), so a sample without uniform regions fails
        before the campaign writes anything."""
        for i in range(len(self.source)):
            self.scan_noise(i)

    def _context(self, i: int, hu: np.ndarray, spacing: Sequence[float]):
        """(whole slices, (dy, dx), index of each sample slice into them, whether the sample is its own context)."""
        getter = getattr(self.source, "context", None)
        ctx = getter(i) if callable(getter) else None
        if ctx is not None:
            return (*ctx, False)
        stack = hu if hu.ndim == 3 else hu[None]
        return stack, (spacing[-2], spacing[-1]), np.arange(stack.shape[0]), True

    def _measure(self, i: int, hu: np.ndarray, spacing: Sequence[float]) -> SampleNoise:
        spec, dose = self.spec, self.doses[i]
        images, sp2, index, own_grid = self._context(i, hu, spacing)
        dw = water_equivalent_diameter(images, sp2)
        dw_sample = dw.diameter_mm[index]
        e = spec.electronic_fraction
        if spec.scan_noise == "estimate":
            try:
                est = estimate_scan_noise(images, sp2, roi_mm=spec.roi_mm, name=dose.series)
            except KernelError as exc:
                entry = self._library_entry(dose)
                if entry is None:
                    kernel = getattr(dose.acquisition, "kernel", None)
                    raise InputError(f"{exc}; no kernel-library entry for ConvolutionKernel "
                                     f"{'(not stated)' if kernel is None else repr(kernel)}") from None
                warnings.warn(f"{dose.series}: the scan's own noise cannot be measured ({exc}); its texture comes from "
                              f"the kernel library ({entry.window}, f_peak {entry.f_peak:g} 1/mm), its level from "
                              f"noise.sigma_ref {spec.sigma_ref:g} HU at noise.mas_ref {spec.mas_ref:g} mAs",
                              LibraryFallbackWarning, stacklevel=3)
                return self._modelled(i, hu, spacing, images, sp2, index, own_grid, dw, entry, str(exc))
            per_slice = np.where(np.isfinite(est.slice_sigma), est.slice_sigma, est.sigma)[index]
            how = {"source": "estimate", "method": "uniform soft-tissue ROIs of the scan itself"}
            region = np.zeros(images.shape, dtype=bool)  # where sigma0 was measured: the ROIs of slices with their own
            r = est.roi_size
            for k, y, x in est.rois:
                if np.isfinite(est.slice_sigma[k]):
                    region[k, y : y + r, x : x + r] = True
            if not region.any():
                for k, y, x in est.rois:
                    region[k, y : y + r, x : x + r] = True
            noise = SampleNoise(est.grid_nps(), per_slice, how, est, dw_sample)
            return self._with_map(noise, images, sp2, own_grid, dw, region, "the estimator's uniform ROIs")
        if spec.scan_noise == "phantom":
            ph = self.phantom
            ref = spec.mas_ref  # e is the electronic share at mas_ref: v(D0) / v(D_phantom), both relative to it
            dose_ratio = np.array([variance_factor(d, ref, e) / variance_factor(ph.mas, ref, e) for d in dose.acquired])
            size = size_noise_factor(np.maximum(dw_sample, 1.0), ph.water_diameter_mm)
            sigma0 = ph.estimate.sigma * np.sqrt(dose_ratio) * size
            how = {"source": "phantom", "phantom": ph.to_dict(),
                   "law": "sigma0 = sigma_phantom sqrt(v(D0)/v(D_phantom)) exp(0.02/mm (D_w - D_w,phantom) / 2)"}
            noise = SampleNoise(ph.estimate.grid_nps("phantom estimate"), sigma0, how, None, dw_sample)
            return self._with_map(noise, images, sp2, own_grid, dw, None, "the patient outline")
        entry = None
        if spec.scan_noise == "library":
            entry = self._library_entry(dose)
            if entry is None:
                kernel = getattr(dose.acquisition, "kernel", None)
                raise InputError(f"{dose.series}: no kernel-library entry for ConvolutionKernel "
                                 f"{'(not stated)' if kernel is None else repr(kernel)} (manufacturer "
                                 f"{getattr(dose.acquisition, 'manufacturer', None)!r}); add a row to noise.kernel_table")
        return self._modelled(i, hu, spacing, images, sp2, index, own_grid, dw, entry, None)

    def _library_entry(self, dose: SampleDose) -> KernelEntry | None:
        acq = dose.acquisition
        return self.library.lookup(getattr(acq, "manufacturer", None), getattr(acq, "kernel", None))

    def _modelled(self, i, hu, spacing, images, sp2, index, own_grid, dw, entry, fallback) -> SampleNoise:
        """The scan's noise at sigma_ref/mas_ref (dose and, if asked, size scaled) with the preset/table's texture, or
        with a kernel-library texture (``entry``; ``fallback``: why the scan's own estimate was not usable)."""
        spec, dose = self.spec, self.doses[i]
        e = spec.electronic_fraction
        dw_sample = dw.diameter_mm[index]
        dose_ratio = np.array([variance_factor(d, spec.mas_ref, e) for d in dose.acquired])
        sigma0 = spec.sigma_ref * np.sqrt(dose_ratio)
        if entry is None:
            nps = spec.dose_model(hu.shape, spacing).nps
            how = {"source": "model", "preset": None if spec.table else spec.preset, "table": spec.table,
                   "sigma_ref": spec.sigma_ref, "mas_ref": spec.mas_ref}
        else:
            nps = entry.nps()
            how = {"source": "library", "kernel": getattr(dose.acquisition, "kernel", None),
                   "manufacturer": getattr(dose.acquisition, "manufacturer", None), "entry": entry.to_dict(),
                   "sigma_ref": spec.sigma_ref, "mas_ref": spec.mas_ref,
                   "level": "noise.sigma_ref at noise.mas_ref (configured, not measured)"}
            if fallback is not None:
                how["fallback"] = f"the uniform-region estimate was not usable: {fallback}"
        if spec.reference_diameter_mm is not None:
            sigma0 = sigma0 * size_noise_factor(np.maximum(dw_sample, 1.0), spec.reference_diameter_mm)
            how["law"] = "sigma0 = sigma_ref sqrt(v(D0)/v(mas_ref)) exp(0.02/mm (D_w - reference_diameter_mm) / 2)"
        else:
            how["law"] = "sigma0 = sigma_ref sqrt(v(D0)/v(mas_ref)); no size scaling (noise.reference_diameter_mm unset)"
        noise = SampleNoise(nps, sigma0, how, None, dw_sample)
        return self._with_map(noise, images, sp2, own_grid, dw, None, "the patient outline")

    def _with_map(self, noise: SampleNoise, images: np.ndarray, sp2, own_grid: bool, dw, region, over: str) -> SampleNoise:
        """``noise`` with the scan's FBP variance map (``spec.spatial = "map"``), normalised over ``region`` (default:
        the patient outline per slice), or the reason it stays stationary."""
        if self.spec.spatial != "map":
            spatial = {"mode": "stationary", "reason": "noise.spatial = 'stationary'"}
        elif not own_grid:
            spatial = {"mode": "stationary", "reason": "lesion cube: the map is per whole slice and the cube is "
                                                       "resampled; the cube receives stationary noise"}
        elif bool(np.any(dw.truncated)) or not np.all(dw.diameter_mm > 0):
            spatial = {"mode": "stationary", "reason": "the patient outline touches the image edge (or no patient "
                                                       "was found): the projections of the scan are not all in it"}
        else:
            if region is None:
                region = np.stack([body_mask(img) for img in images])
            vmap = fbp_variance_map(images, sp2)
            means = region_means(vmap, region)
            rel = relative_added_variance(vmap, means, 1.0, 2.0)  # quantum part: what the map looks like
            body = np.stack([body_mask(img) for img in images])
            sig = np.sqrt(rel[body]) if body.any() else np.ones(1)
            spatial = {"mode": "map", **vmap.to_dict(), "normalised_over": over,
                       "relative_sigma_in_patient": [float(np.percentile(sig, 5)), float(np.percentile(sig, 95))]}
            return dataclasses.replace(noise, vmap=vmap, map_means=means, spatial=spatial)
        return dataclasses.replace(noise, spatial=spatial)

    # -- noise ---------------------------------------------------------------------------------------

    def sample(self, keys: np.ndarray, level: float, hu: np.ndarray, spacing: Sequence[float], *,
               workers: int = 1) -> np.ndarray:
        """Noise (HU) taking each image of ``hu`` (B, *shape) from its acquired dose to ``level``; keys (B, 4)."""
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1, 4)
        shape = tuple(hu.shape[1:])
        ids = keys[:, 1].astype(np.int64)
        # A one-slice volume (a single-slice series) is drawn as the 2D image it is.
        flat = len(shape) == 3 and shape[0] == 1
        draw_shape, draw_spacing = (shape[1:], tuple(spacing)[1:]) if flat else (shape, tuple(spacing))
        nps, d, d0, s0, names, gains = [], [], [], [], [], []
        for r, sid in enumerate(ids):
            i = int(sid)
            if not 0 <= i < len(self.doses):
                raise InputError(f"noise: sample {i} is not in the source ({len(self.doses)} samples)")
            own = self.scan_noise(i, hu[r], spacing)
            acquired = self.doses[i].acquired
            sigma0 = own.sigma0
            if len(draw_shape) == 2:
                acquired, sigma0 = acquired[:1], sigma0[:1]
            nps.append(self._on_grid(i, own, draw_shape, draw_spacing))
            d.append(self.fraction(i, level) * acquired)
            d0.append(acquired)
            s0.append(sigma0)
            names.append(self.doses[i].series)
            gains.append(self._gain(i, level, own, draw_shape))
        z = self.spec.z_fwhm_mm if len(draw_shape) == 3 else None
        noise = reduction_noise_rows(keys, nps, draw_shape, draw_spacing, d, d0, sigma0=s0, mas_ref=self.spec.mas_ref,
                                     electronic_fraction=self.spec.electronic_fraction, z_nps=z, method=self.spec.method,
                                     names=names, gains=gains, workers=workers)
        return noise.reshape(keys.shape[0], *shape)

    def _gain(self, i: int, level: float, own: SampleNoise, shape: Sequence[int]) -> np.ndarray | None:
        """Sample ``i``'s relative sigma map at ``level`` (sqrt of the added-variance map, mean square 1 where sigma0
        applies), shaped like the draw; None when its noise is stationary. Kept while they fit ``GAIN_CACHE_BYTES``
        (a campaign draws a block of samples level by level: with quantum noise only one map per sample serves all)."""
        if own.vmap is None:
            return None
        e = self.spec.electronic_fraction
        key = (i, self.spec.level_key(level) if e > 0 else None)  # quantum only: the map does not depend on the dose
        with self._lock:
            if key in self._gains:
                gain = self._gains.pop(key)
                self._gains[key] = gain  # most recently used last
                return gain
        d0 = self.doses[i].acquired
        rel = relative_added_variance(own.vmap, own.map_means, self.fraction(i, level) * d0, d0,
                                      mas_ref=self.spec.mas_ref, electronic_fraction=e)
        gain = (np.sqrt(rel).reshape(shape) if len(shape) == 3 else np.sqrt(rel[0])).astype(np.float32, copy=False)
        with self._lock:
            while self._gains and sum(g.nbytes for g in self._gains.values()) + gain.nbytes > GAIN_CACHE_BYTES:
                self._gains.pop(next(iter(self._gains)))
            self._gains[key] = gain
        return gain

    def _on_grid(self, i: int, own: SampleNoise, shape: Sequence[int], spacing: Sequence[float]) -> GridNPS:
        """Sample ``i``'s NPS resampled once onto the grid it is drawn on (later draws only slice it)."""
        key = (i, tuple(shape[-2:]), tuple(float(v) for v in spacing[-2:]))
        with self._lock:
            cached = self._grids.get(key)
        if cached is None:
            grid = key[1], key[2]
            cached = GridNPS(np.asarray(own.nps.on_grid(*grid, half=False)), grid[1], getattr(own.nps, "name", "scan"))
            with self._lock:
                self._grids[key] = cached
        return cached

    def roi_slice(self, i: int):
        """The slice of sample ``i`` (its whole source slices for a lesion cube) on which the noise estimator kept the
        most ROIs: (HU (ny, nx), (n, 2) top-left (row, column) of its ROIs, ROI side (px), slice index, (dy, dx) mm),
        or None when the sample's noise was not estimated on the scan itself."""
        est = self.scan_noise(i).estimate
        if est is None or not est.n_rois:
            return None
        images, sp2, _, _ = self._context(i, np.asarray(self.source.load([i])[0]), tuple(self.source.spacing))
        k = int(np.bincount(est.rois[:, 0]).argmax())
        return images[k], est.rois[est.rois[:, 0] == k][:, 1:], est.roi_size, k, sp2

    def predicted_sigma(self, i: int, level: float) -> np.ndarray:
        """Pixel sigma (HU) per slice of sample ``i`` after reduction to ``level`` (its own noise measured first)."""
        own = self.scan_noise(i)
        d0 = self.doses[i].acquired
        e, ref = self.spec.electronic_fraction, self.spec.mas_ref
        ratio = np.array([variance_factor(a, ref, e) / variance_factor(b, ref, e)
                          for a, b in zip(self.fraction(i, level) * d0, d0)])
        return own.sigma0 * np.sqrt(ratio)

    def to_dict(self) -> dict[str, Any]:
        """The reduction block for report.json: per series its acquisition, per sample its dose, noise source and size
        (every sample's own noise is measured now if this model has not seen it yet: the report states each one's)."""
        self.prepare()
        series: dict[str, Any] = {}
        for dose in self.doses:
            if dose.series not in series:
                acq = dose.acquisition
                series[dose.series] = {"acquisition": None if acq is None else acq.to_dict(),
                                       "acquired_mas": dose.series_mas, "dose_source": dose.source}
        samples = []
        for i, dose in enumerate(self.doses):
            row = dose.to_dict()
            row["sample"] = i
            row["levels"] = [{"level": float(lv), "fraction": self.fraction(i, lv), "percent": 100 * self.fraction(i, lv),
                              "mas": float(np.mean(self.target_dose(i, lv))),
                              "ctdi_vol_mgy": (None if row["ctdi_vol_mgy"] is None
                                               else self.fraction(i, lv) * row["ctdi_vol_mgy"])}
                             for lv in self.spec.levels]
            row["scan_noise"] = self._noise[i].to_dict()
            samples.append(row)
        return {"mode": "reduce", "scan_noise": self.spec.scan_noise,
                "rule": "inserted NPS = S(D) - S(D0) = S(D0) (v(D)/v(D0) - 1), "
                        "v(D) = (1 - e) mas_ref/D + e (mas_ref/D)^2, per slice",
                "phantom": None if self.phantom is None else self.phantom.to_dict(),
                "series": series, "samples": samples}
