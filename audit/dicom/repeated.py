"""Repeated scans of one object from DICOM series: the phantom arm of study 2 from real files.

R series of the same phantom at the same table positions give R realisations
of the scanner's noise on one slice; ``kernels.estimate_nps(..., repeated=True)``
and ``kernels.LocalNPS.from_repeated_scans`` take them as an (R, ny, nx) stack.
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from audit.dicom.reader import POSITION_TOL_MM, SeriesHeaders, list_series, scan_series
from audit.errors import InputError


@dataclass(frozen=True)
class RepeatedScans:
    """R repeated scans ``(R, ny, nx)`` HU of one phantom, with spacing (mm) and a name."""

    scans: np.ndarray
    spacing: tuple[float, float]
    name: str


def read_repeated_scans(
    folders: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    slice_index: int | None = None,
    name: str | None = None,
):
    """One slice (HU) from each of R >= 2 repeated scans: a ``RepeatedScans``.

    ``folders``: one folder per series, or a single folder holding the R series.
    The series must share their grid (shape, spacing, orientation and slice
    positions within 0.01 mm); ``slice_index`` picks the slice (default: the
    middle one). Returns ``scans`` (R, ny, nx) float32 HU, ``spacing`` (dy, dx)
    mm and ``name``, ready for ``audit.pipelines.scan_arm.scan_arm`` or the kernels'
    NPS estimators.
    """
    series = _open_all(folders)
    if len(series) < 2:
        raise InputError(f"{_where(folders)}: found {len(series)} series; repeated scans need at least 2")
    first = series[0]
    for s in series[1:]:
        _same_grid(first, s)
    nz = first.shape[0]
    k = nz // 2 if slice_index is None else int(slice_index)
    if not 0 <= k < nz:
        raise InputError(f"{first.files[0].parent}: slice_index {slice_index} outside the series' {nz} slices")
    scans = np.empty((len(series), *first.shape[1:]), dtype=np.float32)
    for r, s in enumerate(series):
        scans[r] = s.read(k, k + 1)[0]
    label = name or str(first.header.get("SeriesDescription", "") or first.files[0].parent.name)
    return RepeatedScans(scans, (first.spacing[1], first.spacing[2]), label)


def _where(folders) -> str:
    return str(folders) if isinstance(folders, (str, os.PathLike)) else ", ".join(str(f) for f in folders)


def _open_all(folders) -> list[SeriesHeaders]:
    if isinstance(folders, (str, os.PathLike)):
        groups = list_series(folders)
        # Series order: by the first file's name, so the order is stable across runs.
        return [scan_series(files) for _, files in sorted(groups.items(), key=lambda kv: str(kv[1][0]))]
    return [scan_series(Path(f)) for f in folders]


def _same_grid(a: SeriesHeaders, b: SeriesHeaders) -> None:
    where = b.files[0].parent
    if a.shape != b.shape:
        raise InputError(f"{where}: series shape {b.shape} differs from the first scan's {a.shape} ({a.files[0].parent})")
    if not np.allclose(a.spacing, b.spacing, rtol=1e-4, atol=1e-5):
        raise InputError(f"{where}: spacing {b.spacing} mm differs from the first scan's {a.spacing}")
    if not np.allclose(a.direction, b.direction, atol=1e-4):
        raise InputError(f"{where}: ImageOrientationPatient {b.orientation} differs from the first scan's {a.orientation}")
    shift = float(np.linalg.norm(np.asarray(a.origin) - np.asarray(b.origin)))
    if shift > POSITION_TOL_MM:
        raise InputError(f"{where}: ImagePositionPatient of the first slice is {shift:.3f} mm from the first scan's; "
                         "repeated scans must share table positions")
