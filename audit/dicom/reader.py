"""Read a CT series from DICOM files into HU, with its geometry.

Files are grouped by SeriesInstanceUID and sorted along the slice normal by
ImagePositionPatient (file names and InstanceNumber are not trusted). Headers
are read first without pixel data; the HU volume is then allocated once and
filled slice by slice, so peak memory stays near the size of the HU array.

Geometry, in the order of the array axes ``(z, y, x)`` = (slice, row, column):
``spacing`` (dz, dy, dx) mm; ``origin`` the patient position (x, y, z) mm of
voxel (0, 0, 0); ``direction`` a 3x3 matrix whose rows are the patient-space
unit vectors along the array axes (slice normal, column cosine, row cosine).
So ``patient = origin + (index * spacing) @ direction`` for ``index = (k, j, i)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from audit.dicom.acquisition import Acquisition, acquisition_from_headers
from audit.errors import InputError

#: Positions within this distance (mm) count as equal; spacings within this fraction of dz too.
POSITION_TOL_MM = 0.01
SPACING_RTOL = 0.005
ORIENTATION_TOL = 1e-4
_DIRECTORY_SOP = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (DICOMDIR)


def _pydicom():
    import pydicom  # a core dependency; imported here so `import audit.data` stays light

    return pydicom


class _Grid:
    """Index <-> patient-space mapping shared by a volume and its headers."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    @property
    def orientation(self) -> tuple[float, ...]:
        """ImageOrientationPatient: row cosine (along x / columns), then column cosine (along y / rows)."""
        return tuple(float(v) for v in np.concatenate([self.direction[2], self.direction[1]]))

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix from (k, j, i, 1) to patient (x, y, z, 1) in mm."""
        a = np.eye(4)
        a[:3, :3] = (self.direction * np.asarray(self.spacing)[:, None]).T
        a[:3, 3] = self.origin
        return a

    def index_to_patient(self, kji) -> np.ndarray:
        """Patient (x, y, z) mm of array index (k, j, i) (fractional allowed; (..., 3))."""
        kji = np.asarray(kji, dtype=np.float64)
        return np.asarray(self.origin) + (kji * np.asarray(self.spacing)) @ self.direction

    def patient_to_index(self, xyz) -> np.ndarray:
        """Fractional array index (k, j, i) of patient (x, y, z) mm ((..., 3))."""
        xyz = np.asarray(xyz, dtype=np.float64)
        return ((xyz - np.asarray(self.origin)) @ self.direction.T) / np.asarray(self.spacing)


@dataclass(frozen=True, eq=False)
class CTVolume(_Grid):
    """A CT volume in HU: ``hu`` (nz, ny, nx) float32, geometry in mm (see the module docstring).

    ``files`` are the source files in array order (empty for derived volumes
    such as crops); ``header`` is the first slice's header without pixel data;
    ``acquisition`` what the series states about its acquisition (dose per
    slice, tube, kernel; ``audit.dicom.acquisition``), None for derived volumes.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    series_uid: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    files: tuple[Path, ...] = ()
    header: object = field(default=None, repr=False)
    acquisition: Acquisition | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:  # type: ignore[override]
        return tuple(self.hu.shape)  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class SeriesHeaders(_Grid):
    """A validated, sorted CT series before its pixels are read; ``read`` loads slices on demand.

    Holds per-slice rescale values, the acquisition (per-slice dose and tube
    current) and the first slice's header, not every header, so many series can
    be kept open at once.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    files: tuple[Path, ...]
    slopes: np.ndarray
    intercepts: np.ndarray
    header: object = field(repr=False)
    acquisition: Acquisition | None = field(default=None, repr=False)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """HU of slices ``start:stop`` as (n, ny, nx) float32, allocated once and filled per file."""
        stop = self.shape[0] if stop is None else stop
        if not 0 <= start <= stop <= self.shape[0]:
            raise InputError(f"{self.files[0].parent}: slices {start}:{stop} outside the series' 0:{self.shape[0]}")
        out = np.empty((stop - start, *self.shape[1:]), dtype=np.float32)
        for n, k in enumerate(range(start, stop)):
            out[n] = _slice_hu(self.files[k], self.shape[1:], float(self.slopes[k]), float(self.intercepts[k]))
        return out

    def volume(self) -> CTVolume:
        """The whole series as a ``CTVolume``."""
        return CTVolume(self.read(), self.spacing, self.origin, self.direction, self.series_uid, self.study_uid,
                        self.frame_of_reference_uid, self.files, self.header, self.acquisition)


def read_series(source: str | os.PathLike | Sequence[str | os.PathLike], *, series_uid: str | None = None) -> CTVolume:
    """Read one CT series (a folder, or a list of files) into a ``CTVolume`` of HU (float32).

    HU = stored value * RescaleSlope + RescaleIntercept, per slice. A folder
    holding several series needs ``series_uid``. Refuses (``InputError`` naming
    the file and the field) non-CT files, mixed series, missing tags or pixel
    data, inconsistent spacing or orientation, gaps between slices, and
    compressed transfer syntaxes with no decoder installed.
    """
    return scan_series(source, series_uid=series_uid).volume()


def scan_series(source: str | os.PathLike | Sequence[str | os.PathLike], *, series_uid: str | None = None) -> SeriesHeaders:
    """Validate and sort a CT series from its headers alone (no pixel data read)."""
    groups, where = _headers_by_series(source)
    if series_uid is not None:
        if series_uid not in groups:
            raise InputError(f"{where}: SeriesInstanceUID {series_uid} not found; it holds {sorted(groups)}")
        headers = groups[series_uid]
    elif len(groups) > 1:
        (uid_a, ha), (uid_b, hb) = list(groups.items())[:2]
        raise InputError(
            f"{hb[0][0]}: SeriesInstanceUID {uid_b} differs from {uid_a} of {ha[0][0].name}; "
            f"{where} mixes {len(groups)} series (pass series_uid= to pick one)"
        )
    else:
        headers = next(iter(groups.values()))
    return _validate(headers)


def list_series(source: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> files, for a folder (or list of files) that may hold several series."""
    groups, _ = _headers_by_series(source)
    return {uid: [p for p, _ in hs] for uid, hs in groups.items()}


# -- headers -----------------------------------------------------------------------------------


def _candidate_files(source) -> tuple[list[Path], bool, str]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR")
            if not files:
                raise InputError(f"{path}: no files in the folder; expected the DICOM files of one CT series")
            return files, True, str(path)
        if path.is_file():
            return [path], False, str(path)
        raise InputError(f"{path}: no such file or folder")
    files = [Path(p) for p in source]
    if not files:
        raise InputError("DICOM series: expected a folder or at least one file, got an empty list")
    for p in files:
        if not p.is_file():
            raise InputError(f"{p}: no such file")
    return files, False, str(files[0].parent)


def _headers_by_series(source) -> tuple[dict[str, list[tuple[Path, object]]], str]:
    pydicom = _pydicom()
    files, skip_non_dicom, where = _candidate_files(source)
    groups: dict[str, list[tuple[Path, object]]] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            if skip_non_dicom:
                continue  # a README or a thumbnail beside the series
            raise InputError(f"{path}: not a DICOM file (no 'DICM' preamble or file meta)") from None
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{path}: cannot read the DICOM header ({type(exc).__name__}: {exc})") from None
        if str(getattr(ds, "SOPClassUID", "")) == _DIRECTORY_SOP:
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise InputError(f"{path}: SeriesInstanceUID missing; cannot tell which series the file belongs to")
        groups.setdefault(uid, []).append((path, ds))
    if not groups:
        raise InputError(f"{where}: no DICOM files found; expected the files of one CT series")
    return groups, where


def _required(ds, path: Path, name: str):
    value = ds.get(name)
    if value is None or (not isinstance(value, (int, float)) and len(value) == 0):
        raise InputError(f"{path}: {name} missing; required to place the slice and read HU")
    return value


def _floats(ds, path: Path, name: str, n: int) -> np.ndarray:
    value = _required(ds, path, name)
    try:
        arr = np.array([float(v) for v in (value if n > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {name} is {value!r}; expected {n} number(s)") from None
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: {name} is {list(arr)}; expected {n} finite number(s)")
    return arr


def _check_decodable(ds, path: Path) -> None:
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if ts is None:
        raise InputError(f"{path}: TransferSyntaxUID missing from the file meta; cannot decode the pixel data")
    if not ts.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise InputError(f"{path}: TransferSyntaxUID {ts.name} ({ts}) is not supported by pydicom") from None
    if not decoder.is_available:
        options = " | ".join(d.split(" - requires ")[-1] for d in decoder.missing_dependencies) or "a pydicom pixel plugin"
        raise InputError(
            f"{path}: TransferSyntaxUID {ts.name} ({ts}) is compressed and no decoder is installed; "
            f"pip install one of: {options}"
        )


def _validate(headers: list[tuple[Path, object]]) -> SeriesHeaders:
    n = len(headers)
    first_path, first = headers[0]
    for path, ds in headers:  # checked per series, so a picked series may sit beside an SR or an MR
        modality = str(ds.get("Modality", "") or "")
        if modality != "CT":
            raise InputError(f"{path}: Modality is {modality or 'missing'!r}; expected 'CT'")
    rows = np.empty(n, np.int64)
    cols = np.empty(n, np.int64)
    pixel = np.empty((n, 2))
    iop = np.empty((n, 6))
    ipp = np.empty((n, 3))
    slopes = np.empty(n)
    intercepts = np.empty(n)
    for m, (path, ds) in enumerate(headers):
        _check_decodable(ds, path)
        frames = ds.get("NumberOfFrames")
        if frames is not None and str(frames).strip() not in ("", "1"):
            raise InputError(f"{path}: NumberOfFrames is {frames}; multi-frame (Enhanced CT) files are not supported")
        spp = ds.get("SamplesPerPixel", 1)
        if int(spp) != 1:
            raise InputError(f"{path}: SamplesPerPixel is {spp}; expected 1 (greyscale CT)")
        rows[m] = int(_required(ds, path, "Rows"))
        cols[m] = int(_required(ds, path, "Columns"))
        pixel[m] = _floats(ds, path, "PixelSpacing", 2)
        iop[m] = _floats(ds, path, "ImageOrientationPatient", 6)
        ipp[m] = _floats(ds, path, "ImagePositionPatient", 3)
        slopes[m] = _floats(ds, path, "RescaleSlope", 1)[0]
        intercepts[m] = _floats(ds, path, "RescaleIntercept", 1)[0]
        if slopes[m] == 0:
            raise InputError(f"{path}: RescaleSlope is 0; expected a non-zero factor to HU")

    def first_differing(values: np.ndarray, tol: float, what: str) -> None:
        bad = np.flatnonzero(np.abs(values - values[0]).reshape(n, -1).max(axis=1) > tol)
        if bad.size:
            m = int(bad[0])
            got = values[m].tolist() if values.ndim > 1 else values[m]
            want = values[0].tolist() if values.ndim > 1 else values[0]
            raise InputError(f"{headers[m][0]}: {what} is {got}, inconsistent with {want} in {first_path.name}")

    first_differing(rows, 0, "Rows")
    first_differing(cols, 0, "Columns")
    first_differing(pixel, max(1e-5, 1e-4 * float(pixel[0].min())), "PixelSpacing")
    first_differing(iop, ORIENTATION_TOL, "ImageOrientationPatient")
    if np.any(pixel[0] <= 0):
        raise InputError(f"{first_path}: PixelSpacing is {pixel[0].tolist()}; expected two positive values (mm)")
    row_dir, col_dir = iop[0, :3], iop[0, 3:]
    if abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3 or abs(row_dir @ col_dir) > 1e-3:
        raise InputError(f"{first_path}: ImageOrientationPatient {iop[0].tolist()} is not two orthonormal direction cosines")
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir - (col_dir @ row_dir) * row_dir
    col_dir /= np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)

    along = ipp @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    paths = [headers[int(m)][0] for m in order]
    off_axis = np.linalg.norm((ipp[order] - ipp[order[0]]) - np.outer(along - along[0], normal), axis=1)
    if off_axis.max() > POSITION_TOL_MM:
        m = int(np.argmax(off_axis))
        raise InputError(
            f"{paths[m]}: ImagePositionPatient is {off_axis[m]:.3f} mm off the slice normal through {paths[0].name}; "
            "expected slices stacked along the normal (gantry tilt and sheared stacks are not supported)"
        )
    if n > 1:
        steps = np.diff(along)
        dup = np.flatnonzero(steps <= POSITION_TOL_MM)
        if dup.size:
            m = int(dup[0])
            raise InputError(
                f"{paths[m + 1]}: ImagePositionPatient {ipp[order[m + 1]].tolist()} repeats that of {paths[m].name}; "
                "expected one slice per position (two acquisitions in one series?)"
            )
        dz = float(np.min(steps)) if n == 2 else float(np.median(steps))
        tol = max(POSITION_TOL_MM, SPACING_RTOL * dz)
        bad = np.flatnonzero(np.abs(steps - dz) > tol)
        if bad.size:
            m = int(bad[0])
            ratio = steps[m] / dz
            if ratio > 1.5 and abs(ratio - round(ratio)) * dz <= tol:
                raise InputError(
                    f"{paths[m + 1]}: ImagePositionPatient is {steps[m]:.3f} mm from {paths[m].name}, a gap of "
                    f"{round(ratio) - 1} missing slice(s) in a series {dz:.3f} mm apart"
                )
            raise InputError(
                f"{paths[m + 1]}: ImagePositionPatient is {steps[m]:.3f} mm from {paths[m].name}; inconsistent with "
                f"the series' slice spacing of {dz:.3f} mm"
            )
        dz = float((along[-1] - along[0]) / (n - 1))
    else:
        ds = headers[0][1]
        value = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
        if value in (None, "") or float(value) <= 0:
            raise InputError(f"{first_path}: SliceThickness missing; a single-slice series needs it for the z spacing")
        dz = float(value)

    header = headers[int(order[0])][1]
    return SeriesHeaders(
        shape=(n, int(rows[0]), int(cols[0])),
        spacing=(dz, float(pixel[0, 0]), float(pixel[0, 1])),
        origin=tuple(float(v) for v in ipp[order[0]]),  # type: ignore[arg-type]
        direction=np.stack([normal, col_dir, row_dir]),
        series_uid=str(header.SeriesInstanceUID),
        study_uid=str(header.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(header.get("FrameOfReferenceUID", "")),
        files=tuple(paths),
        slopes=slopes[order],
        intercepts=intercepts[order],
        header=header,
        acquisition=acquisition_from_headers([headers[int(m)][1] for m in order], str(header.SeriesInstanceUID)),
    )


# -- pixels ------------------------------------------------------------------------------------


def _slice_hu(path: Path, shape: Iterable[int], slope: float, intercept: float) -> np.ndarray:
    """HU of one file's pixels: stored * slope + intercept (float64 arithmetic, returned as float64)."""
    pydicom = _pydicom()
    shape = tuple(shape)
    try:
        ds = pydicom.dcmread(path)
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: cannot read the file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds:
        raise InputError(f"{path}: PixelData missing; expected the slice's pixels")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises ValueError, RuntimeError or plugin errors for bad pixel data
        raise InputError(f"{path}: PixelData cannot be decoded ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if stored.shape != shape:
        raise InputError(f"{path}: PixelData has shape {stored.shape}; expected Rows x Columns {shape}")
    return stored * slope + intercept
