"""What a CT series states about its acquisition: dose, tube, reconstruction, per series and per slice.

Read from the headers the reader has already parsed (no extra file access).
Every value is exactly what the files state, converted to a number where the
tag is numeric; a tag that is absent, empty or not a number is ``None`` and is
named in ``missing`` (or ``malformed``), never guessed or derived from other
tags. In particular the dose per slice is ``ExposureInuAs / 1000`` (mAs) where
present, else ``Exposure`` (mAs), else unknown: XRayTubeCurrent x ExposureTime
is *not* substituted, because vendors define Exposure differently (effective
mAs divided by pitch, per rotation, per image), and the two disagree in real
files (pydicom's ``693_J2KI.dcm``: Exposure 85 mAs, 170 mA x 2.0 s).

Series values: a tag that is the same on every slice is reported once; a
per-slice tag that varies (tube current modulation) is kept per slice, in the
array order of the volume (sorted along the slice normal), and the series value
is the mean over slices (``exposure_mas``, ``tube_current_ma``), as stated in
``notes``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

#: Series-level tags (DICOM keyword -> Acquisition field); read from the first slice, checked on all.
SERIES_TAGS = {
    "KVP": "kvp",
    "ConvolutionKernel": "kernel",
    "Manufacturer": "manufacturer",
    "ManufacturerModelName": "model_name",
    "SliceThickness": "slice_thickness_mm",
    "SpiralPitchFactor": "pitch",
    "ReconstructionDiameter": "reconstruction_diameter_mm",
}
#: Per-slice tags (DICOM keyword -> per-slice field).
SLICE_TAGS = {
    "ExposureInuAs": "exposure_uas",
    "Exposure": "exposure",
    "XRayTubeCurrent": "tube_current_ma",
    "ExposureTime": "exposure_time_ms",
    "CTDIvol": "ctdi_vol_mgy",
}
_TEXT = ("kernel", "manufacturer", "model_name")


def _number(value: Any) -> float | None:
    """A DICOM numeric value (DS, IS, US, FD, or a 1-element multi-value) as float, or None if absent/not a number."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if len(value) != 1:
            return None
        value = value[0]
    if isinstance(value, (bytes, str)) and not str(value).strip():
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":  # ConvolutionKernel may be multi-valued
        value = "\\".join(str(v) for v in value)
    s = str(value).strip()
    return s or None


@dataclass(frozen=True)
class Acquisition:
    """A CT series' acquisition as its files state it (see the module docstring). Units: mAs, mA, ms, mGy, kV, mm.

    ``slice_mas`` (mAs, the dose per slice in array order) is None when no slice
    states ExposureInuAs or Exposure; ``slice_tube_current_ma`` likewise for
    XRayTubeCurrent. ``dose_tag`` names the tag the dose came from.
    ``missing``: tags absent (or empty) on every slice; ``malformed``: tags present but
    not a number; ``notes``: how series values were formed.
    """

    series_uid: str = ""
    exposure_mas: float | None = None
    tube_current_ma: float | None = None
    exposure_time_ms: float | None = None
    ctdi_vol_mgy: float | None = None
    kvp: float | None = None
    kernel: str | None = None
    manufacturer: str | None = None
    model_name: str | None = None
    slice_thickness_mm: float | None = None
    pitch: float | None = None
    reconstruction_diameter_mm: float | None = None
    slice_mas: tuple[float, ...] | None = None
    slice_tube_current_ma: tuple[float, ...] | None = None
    dose_tag: str | None = None
    missing: tuple[str, ...] = ()
    malformed: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def n_slices(self) -> int:
        for v in (self.slice_mas, self.slice_tube_current_ma):
            if v is not None:
                return len(v)
        return 0

    @property
    def modulated(self) -> bool:
        """Whether the tube current (or the dose) varies between slices (by more than 0.5%)."""
        for v in (self.slice_mas, self.slice_tube_current_ma):
            if v is not None and len(v) > 1 and (max(v) - min(v)) > 0.005 * max(abs(max(v)), 1e-12):
                return True
        return False

    @property
    def has_dose(self) -> bool:
        return self.slice_mas is not None

    def take(self, slices: Sequence[int]) -> "Acquisition":
        """The same series' acquisition restricted to ``slices`` (array indices; e.g. the slices behind a lesion cube).

        Series values (the series' mean dose, the tube, the kernel) are kept: they describe the acquisition.
        """
        idx = [int(k) for k in slices]

        def sub(v: tuple[float, ...] | None) -> tuple[float, ...] | None:
            return None if v is None else tuple(v[k] for k in idx)

        return dataclasses.replace(self, slice_mas=sub(self.slice_mas), slice_tube_current_ma=sub(self.slice_tube_current_ma))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; per-slice lists only when they vary (else the series value says it all)."""
        d = {k: getattr(self, k) for k in ("series_uid", "exposure_mas", "tube_current_ma", "exposure_time_ms",
                                            "ctdi_vol_mgy", "kvp", "kernel", "manufacturer", "model_name",
                                            "slice_thickness_mm", "pitch", "reconstruction_diameter_mm", "dose_tag")}
        d["modulated"] = self.modulated
        d["slice_mas"] = list(self.slice_mas) if self.slice_mas is not None and self.modulated else None
        d["slice_tube_current_ma"] = (list(self.slice_tube_current_ma)
                                      if self.slice_tube_current_ma is not None and self.modulated else None)
        d["missing"], d["malformed"], d["notes"] = list(self.missing), list(self.malformed), list(self.notes)
        return d


def acquisition_from_headers(headers: Sequence[Any], series_uid: str = "") -> Acquisition:
    """The ``Acquisition`` of a series from its pydicom headers, given in array (slice) order."""
    headers = list(headers)
    missing: list[str] = []
    malformed: list[str] = []
    notes: list[str] = []
    values: dict[str, Any] = {}
    for tag, name in SERIES_TAGS.items():
        raw = [ds.get(tag) for ds in headers]
        present = [r for r in raw if r is not None and _text(r) is not None]
        if not present:
            missing.append(tag)
            values[name] = None
            continue
        if name in _TEXT:
            vals = [_text(r) for r in present]
            values[name] = vals[0]
        else:
            vals = [_number(r) for r in present]
            if any(v is None for v in vals):
                malformed.append(tag)
                values[name] = None
                continue
            values[name] = vals[0]
        if len(set(vals)) > 1:
            notes.append(f"{tag} differs between slices ({_span(vals)}); the first slice's value is reported")
        if len(present) < len(headers):
            notes.append(f"{tag} is stated on {len(present)} of {len(headers)} slices")

    per_slice: dict[str, tuple[float, ...] | None] = {}
    for tag, name in SLICE_TAGS.items():
        raw = [ds.get(tag) for ds in headers]
        if all(r is None or _text(r) is None for r in raw):
            missing.append(tag)
            per_slice[name] = None
            continue
        vals = [_number(r) for r in raw]
        if any(r is not None and _text(r) is not None and _number(r) is None for r in raw):
            malformed.append(tag)
            per_slice[name] = None
            continue
        if any(v is None for v in vals):
            notes.append(f"{tag} is stated on {sum(v is not None for v in vals)} of {len(vals)} slices; not used")
            per_slice[name] = None
            continue
        per_slice[name] = tuple(float(v) for v in vals)  # type: ignore[arg-type]

    slice_mas, dose_tag = None, None
    if per_slice["exposure_uas"] is not None:
        slice_mas, dose_tag = tuple(v / 1000.0 for v in per_slice["exposure_uas"]), "ExposureInuAs"
    elif per_slice["exposure"] is not None:
        slice_mas, dose_tag = per_slice["exposure"], "Exposure"

    def series_value(vals: tuple[float, ...] | None, tag: str) -> float | None:
        if vals is None:
            return None
        if max(vals) - min(vals) > 1e-9 * max(abs(max(vals)), 1.0):
            notes.append(f"{tag} varies per slice ({_span(vals)}); the series value is the mean over {len(vals)} slices")
        return float(np.mean(vals))

    exposure = series_value(slice_mas, dose_tag or "Exposure")
    current = series_value(per_slice["tube_current_ma"], "XRayTubeCurrent")
    time_ms = series_value(per_slice["exposure_time_ms"], "ExposureTime")
    ctdi = series_value(per_slice["ctdi_vol_mgy"], "CTDIvol")
    if slice_mas is None:
        notes.append("no dose tag (ExposureInuAs, Exposure): the acquired dose is unknown; "
                     "XRayTubeCurrent x ExposureTime is not substituted (vendors define Exposure differently)")
    return Acquisition(
        series_uid=series_uid, exposure_mas=exposure, tube_current_ma=current, exposure_time_ms=time_ms, ctdi_vol_mgy=ctdi,
        slice_mas=slice_mas, slice_tube_current_ma=per_slice["tube_current_ma"], dose_tag=dose_tag,
        missing=tuple(missing), malformed=tuple(malformed), notes=tuple(notes), **values)


def _span(vals: Iterable[Any]) -> str:
    vals = list(vals)
    try:
        return f"{min(vals):g} to {max(vals):g}"
    except (TypeError, ValueError):
        return ", ".join(sorted({str(v) for v in vals}))
