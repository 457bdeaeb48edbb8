"""Write HU volumes as derived DICOM CT series, so a radiologist can review flipped cases in a viewer.

Pixels are stored as signed 16-bit integers with RescaleSlope 1 and
RescaleIntercept 0: the viewer's HU is the stored integer exactly, and the
only loss is rounding to whole HU (at most 0.5 HU). Every series gets new
Study/Series/SOP Instance UIDs and ImageType DERIVED\\SECONDARY. A series is
written into a hidden temporary folder and renamed into place, so on any
failure nothing half-written remains. Every series says it is not for
diagnostic use (StudyDescription and ImageComments, the fields viewers show),
references its source series (and, for a whole series, each source slice in
SourceImageSequence), and its files are 0600: they carry the source's patient
identity.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.dicom.reader import CTVolume, SeriesHeaders
from audit.errors import InputError
from audit.io import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, atomic_dir

INT16 = (-32768, 32767)
_LO_MAX = 64  # characters in a DICOM LO value (SeriesDescription)
NOT_DIAGNOSTIC = "NOT FOR DIAGNOSTIC USE"
STUDY_DESCRIPTION = f"{NOT_DIAGNOSTIC} - ct-robustness-audit"
_PATIENT_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge")


@dataclass(frozen=True)
class WrittenSeries:
    """A series on disk: its UIDs, folder and files (in slice order)."""

    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    folder: Path
    files: tuple[Path, ...]
    description: str


def write_series(
    hu,
    spacing: Sequence[float],
    folder: str | os.PathLike,
    *,
    reference: CTVolume | SeriesHeaders | Any | None = None,
    description: str = "",
    derivation: str = "",
    origin: Sequence[float] | None = None,
    direction=None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    window: tuple[float, float] = (40.0, 400.0),
    overwrite: bool = False,
) -> WrittenSeries:
    """Write ``hu`` ((nz, ny, nx) or (ny, nx), HU) as a derived CT series in ``folder`` (created atomically).

    ``spacing``: (dz, dy, dx) mm (or (dy, dx) for one slice, then dz = 1 mm).
    Geometry (``origin`` patient mm of voxel 0, ``direction`` rows = array axes'
    patient unit vectors, as in ``audit.dicom.reader``) defaults to the
    reference's when it is a ``CTVolume`` (e.g. a crop), else identity at 0.
    ``reference`` (a volume or a pydicom header) lends the patient identity and,
    when its geometry is used, its FrameOfReferenceUID. ``description`` is the
    SeriesDescription (cut to 64 characters); ``derivation`` the full
    DerivationDescription. A new StudyInstanceUID unless ``study_uid`` is given.
    """
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        written = _write_into(tmp, hu, spacing, reference=reference, description=description, derivation=derivation,
                              origin=origin, direction=direction, study_uid=study_uid,
                              frame_of_reference_uid=frame_of_reference_uid, series_number=series_number, window=window,
                              sources=_source_instances(reference, _depth(hu)))
    final = Path(folder)
    return WrittenSeries(written.series_uid, written.study_uid, written.frame_of_reference_uid, final,
                         tuple(final / f.name for f in written.files), written.description)


def write_flipped_case(
    clean,
    noisy,
    spacing: Sequence[float],
    out_folder: str | os.PathLike,
    *,
    level: float,
    key: Any,
    attack: str = "random NPS noise",
    reference: CTVolume | SeriesHeaders | Any | None = None,
    origin: Sequence[float] | None = None,
    direction=None,
    window: tuple[float, float] = (-600.0, 1500.0),
    overwrite: bool = False,
) -> dict[str, str]:
    """Write a flipped case as two derived series of one new study: ``clean/`` and ``noisy/`` under ``out_folder``.

    ``clean``, ``noisy``: HU arrays of one shape; ``level``: the dose (mAs);
    ``key``: the draw's ``NoiseKey`` (or any id); ``attack``: how ``noisy`` was
    made. Both series share a study and frame of reference, so a viewer shows
    them side by side and scrolls them together; each SeriesDescription names
    its role, the dose, the key and the attack. Written atomically as a whole.

    Returns (JSON-ready strings): ``study_uid``, ``clean_series_uid``,
    ``noisy_series_uid``, ``folder``, ``clean_dir``, ``noisy_dir`` (absolute
    paths), ``clean_description``, ``noisy_description``.
    """
    clean = np.asarray(clean)
    noisy = np.asarray(noisy)
    if clean.shape != noisy.shape:
        raise InputError(f"flipped case: noisy image shape {noisy.shape} differs from the clean image's {clean.shape}")
    try:
        level = float(level)
    except (TypeError, ValueError):
        raise InputError(f"flipped case: level must be a dose in mAs, got {level!r}") from None
    pydicom = _pydicom()
    compact, full = _key_text(key)
    study = str(pydicom.uid.generate_uid())
    frame = _reference_frame(reference, origin) or str(pydicom.uid.generate_uid())
    dose = f"{level:g} mAs"
    desc = {role: _fit(f"{role.upper()} {dose} key {compact}", attack) for role in ("clean", "noisy")}
    derivation = {
        "clean": f"Clean image of a flipped case; its pair is perturbed by {attack} at {dose}, draw {full}.",
        "noisy": f"Clean image plus {attack} at {dose}, draw {full}; the model's decision differs from the clean one.",
    }
    out = Path(out_folder)
    series = {}
    sources = _source_instances(reference, _depth(clean))  # both series come from the same source slices: read once
    with atomic_folder(out, overwrite=overwrite) as tmp:
        for n, (role, image) in enumerate((("clean", clean), ("noisy", noisy))):
            series[role] = _write_into(tmp / role, image, spacing, reference=reference, description=desc[role],
                                       derivation=derivation[role], origin=origin, direction=direction, study_uid=study,
                                       frame_of_reference_uid=frame, series_number=1001 + n, window=window,
                                       sources=sources)
    folder = out.resolve()
    return {
        "study_uid": study,
        "clean_series_uid": series["clean"].series_uid,
        "noisy_series_uid": series["noisy"].series_uid,
        "folder": str(folder),
        "clean_dir": str(folder / "clean"),
        "noisy_dir": str(folder / "noisy"),
        "clean_description": desc["clean"],
        "noisy_description": desc["noisy"],
    }


def atomic_folder(target: str | os.PathLike, *, overwrite: bool = False):
    """A private (0700) folder that appears complete or not at all (``audit.io.atomic_dir``); an existing ``target``
    is an error unless ``overwrite``."""
    return atomic_dir(target, overwrite=overwrite, private=True)


# -- internals ---------------------------------------------------------------------------------


def _pydicom():
    import pydicom

    return pydicom


def _fit(head: str, attack: str) -> str:
    """``head`` + attack, cut to the 64 characters of an LO value (the attack is shortened first)."""
    room = _LO_MAX - len(head) - 1
    if room <= 3:
        return head[:_LO_MAX]
    return f"{head} {attack if len(attack) <= room else attack[: room - 3] + '...'}"


def _key_text(key: Any) -> tuple[str, str]:
    """(compact, full) text of a draw key: 'seed/sample/level/k' and 'NoiseKey(seed=..., ...)'."""
    fields = getattr(key, "_fields", None)
    if fields:
        return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in key), repr(key)
    if isinstance(key, (tuple, list)):
        return "/".join(str(v) for v in key), str(tuple(key))
    return str(key), str(key)


def _depth(hu) -> int:
    """Slices of a (nz, ny, nx) or (ny, nx) HU array."""
    shape = np.shape(hu)
    return int(shape[0]) if len(shape) == 3 else 1


def _source_instances(reference, nz: int) -> list[tuple[str, str]] | None:
    """(SOPClassUID, SOPInstanceUID) of the source slice behind each written slice, when the derived series has the
    source's slices one for one (a whole series); None otherwise (a resampled cube has no one-to-one source)."""
    files = getattr(reference, "files", ()) if isinstance(reference, (CTVolume, SeriesHeaders)) else ()
    if len(files) != nz:
        return None
    pydicom = _pydicom()
    out = []
    for f in files:
        try:
            h = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
            out.append((str(h.SOPClassUID), str(h.SOPInstanceUID)))
        except (OSError, AttributeError, pydicom.errors.InvalidDicomError):
            return None
    return out


def _reference_frame(reference, origin) -> str | None:
    """The reference's FrameOfReferenceUID when its patient geometry is the one written."""
    if isinstance(reference, (CTVolume, SeriesHeaders)) and origin is None:
        return reference.frame_of_reference_uid or None
    return None


def _ds(x: float):
    from pydicom.valuerep import DSfloat

    return DSfloat(float(x), auto_format=True)


def _validated(hu, spacing) -> tuple[np.ndarray, tuple[float, float, float]]:
    hu = np.asarray(hu)
    if hu.ndim == 2:
        hu = hu[None]
    if hu.ndim != 3 or 0 in hu.shape:
        raise InputError(f"hu: expected a (nz, ny, nx) or (ny, nx) HU array, got shape {hu.shape}")
    if not np.issubdtype(hu.dtype, np.number) or np.iscomplexobj(hu):
        raise InputError(f"hu: expected real numbers (HU), got dtype {hu.dtype}")
    if not np.all(np.isfinite(hu)):
        raise InputError("hu: image contains NaN or inf; cannot store it as DICOM")
    sp = [float(s) for s in spacing]
    if len(sp) == 2:
        sp = [1.0, *sp]
    if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise InputError(f"spacing: expected (dz, dy, dx) positive mm, got {tuple(spacing)}")
    lo, hi = float(np.min(hu)), float(np.max(hu))
    if round(lo) < INT16[0] or round(hi) > INT16[1]:
        raise InputError(f"hu: values {lo:.0f}..{hi:.0f} HU do not fit 16-bit stored pixels {INT16}")
    return hu, (sp[0], sp[1], sp[2])


def _geometry(reference, origin, direction) -> tuple[np.ndarray, np.ndarray]:
    if origin is None and isinstance(reference, (CTVolume, SeriesHeaders)):
        origin = reference.origin
        direction = reference.direction if direction is None else direction
    o = np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64)
    d = np.eye(3)[[2, 1, 0]] if direction is None else np.asarray(direction, dtype=np.float64)
    if o.shape != (3,) or not np.all(np.isfinite(o)):
        raise InputError(f"origin: expected patient (x, y, z) mm, got {o.tolist()}")
    if d.shape != (3, 3) or not np.allclose(d @ d.T, np.eye(3), atol=1e-6) or not np.allclose(d[0], np.cross(d[2], d[1]), atol=1e-6):
        raise InputError("direction: expected orthonormal rows (slice normal, column cosine, row cosine) with normal = row x column")
    return o, d


def _write_into(folder: Path, hu, spacing, *, reference, description, derivation, origin, direction, study_uid,
                frame_of_reference_uid, series_number, window, sources) -> WrittenSeries:
    """Write the series' files into ``folder`` (created here; the caller makes it atomic); ``sources``: from
    ``_source_instances``."""
    _pydicom()  # one-line error if pydicom is missing
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        CTImageStorage,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    hu, (dz, dy, dx) = _validated(hu, spacing)
    o, d = _geometry(reference, origin, direction)
    header = reference.header if isinstance(reference, (CTVolume, SeriesHeaders)) else reference
    study = study_uid or str(generate_uid())
    series = str(generate_uid())
    frame = frame_of_reference_uid or _reference_frame(reference, origin) or str(generate_uid())
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    description = description[:_LO_MAX]

    base = Dataset()
    base.SpecificCharacterSet = "ISO_IR 192"
    base.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    base.SOPClassUID = CTImageStorage
    base.StudyDate = base.SeriesDate = base.ContentDate = date
    base.StudyTime = base.SeriesTime = base.ContentTime = time
    base.AccessionNumber = ""
    base.Modality = "CT"
    base.Manufacturer = ""
    base.ReferringPhysicianName = ""
    base.StudyDescription = STUDY_DESCRIPTION
    base.SeriesDescription = description
    base.DerivationDescription = derivation[:1024]
    for tag in _PATIENT_TAGS:
        value = header.get(tag) if header is not None and hasattr(header, "get") else None
        setattr(base, tag, value if value is not None else "")
    base.KVP = ""
    base.SliceThickness = _ds(dz)
    base.SpacingBetweenSlices = _ds(dz)
    base.StudyInstanceUID = study
    base.SeriesInstanceUID = series
    base.StudyID = ""
    base.SeriesNumber = int(series_number)
    base.AcquisitionNumber = 1
    base.ImageOrientationPatient = [_ds(v) for v in np.concatenate([d[2], d[1]])]
    base.FrameOfReferenceUID = frame
    base.PositionReferenceIndicator = ""
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows, base.Columns = int(hu.shape[1]), int(hu.shape[2])
    base.PixelSpacing = [_ds(dy), _ds(dx)]
    base.BitsAllocated = 16
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 1
    base.WindowCenter = _ds(window[0])
    base.WindowWidth = _ds(window[1])
    base.RescaleIntercept = _ds(0)
    base.RescaleSlope = _ds(1)
    base.RescaleType = "HU"
    base.BurnedInAnnotation = "NO"
    base.ImageComments = (NOT_DIAGNOSTIC + ". " + derivation)[:10240]
    if isinstance(reference, (CTVolume, SeriesHeaders)) and reference.series_uid:
        # Where the derived series came from, for a PACS user who finds it beside the original (Common Instance
        # Reference module: the source lies in another study).
        ref_series = Dataset()
        ref_series.SeriesInstanceUID = reference.series_uid
        ref_study = Dataset()
        ref_study.StudyInstanceUID = reference.study_uid
        ref_study.ReferencedSeriesSequence = [ref_series]
        base.StudiesContainingOtherReferencedInstancesSequence = [ref_study]

    try:
        folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{folder}: cannot create the series folder ({exc.strerror or exc})") from None
    files = []
    for k in range(hu.shape[0]):
        ds = Dataset()
        ds.update(base)
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = k + 1
        if sources is not None:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sources[k]
            ds.SourceImageSequence = [item]
        position = o + k * dz * d[0]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(position @ d[0]))
        ds.PixelData = np.rint(hu[k]).astype("<i2").tobytes()
        path = folder / f"{k + 1:04d}.dcm"
        try:
            ds.save_as(path, enforce_file_format=True)
            os.chmod(path, PRIVATE_FILE_MODE)  # carries the source's patient identity
        except OSError as exc:
            raise InputError(f"{path}: cannot write the slice ({exc.strerror or exc})") from None
        files.append(path)
    return WrittenSeries(series, study, frame, folder, tuple(files), description)
