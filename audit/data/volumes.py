"""CT volumes from NIfTI (``.nii``, ``.nii.gz``; nibabel) and MetaImage (``.mhd`` + data file, ``.mha``; SimpleITK).

A file is read into the DICOM reader's convention (``audit.dicom.CTVolume``):
array axes (slice, row, column) with ``spacing`` (dz, dy, dx) mm, ``origin``
the patient position (x, y, z) mm of voxel (0, 0, 0) and ``direction`` rows the
patient unit vectors along the array axes, in DICOM patient coordinates (LPS:
x toward the patient's left, y posterior, z head). NIfTI's world (RAS) is turned
into LPS. The axes are then permuted and flipped so that they run as those of a
standard axial DICOM series (slices toward the head, rows posterior, columns
left), whatever order the file stores them in; so the same scan read from
DICOM, NIfTI or MetaImage gives the same array.

The values must be plausible as HU (air or fat present, nothing beyond int16,
no NaN): a normalised image or stored values without their rescale are refused
in one line naming the file. Lesion centres in voxels are the file's own
indices (i, j, k as its viewer shows them), mapped to patient mm through the
file's own geometry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.dicom import CTVolume
from audit.errors import InputError, MissingExtraError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
METAIMAGE_SUFFIXES = (".mhd", ".mha")
#: Plausible HU: the lowest value must show air, lung or fat; nothing beyond these bounds (int16, scanners' fill).
MAX_LOWEST_HU, MIN_HU, MAX_HU = -200.0, -3100.0, 32767.0


def is_volume_file(path: Path) -> bool:
    """Whether ``path`` names a NIfTI or MetaImage file (by its name)."""
    name = path.name.lower()
    return name.endswith(NIFTI_SUFFIXES + METAIMAGE_SUFFIXES)


@dataclass(frozen=True, eq=False)
class VolumeFile:
    """A read volume file: the ``CTVolume`` in the DICOM convention and ``file_affine``, the 4x4 map from the file's
    own voxel (i, j, k, 1) to patient LPS (x, y, z, 1) mm."""

    volume: CTVolume
    file_affine: np.ndarray

    def voxel_to_patient(self, ijk) -> np.ndarray:
        """Patient (x, y, z) mm of the file's own voxel (i, j, k)."""
        return (self.file_affine @ np.append(np.asarray(ijk, dtype=np.float64), 1.0))[:3]


def read_volume_file(path: str | Path) -> VolumeFile:
    """Read a NIfTI or MetaImage CT volume (see the module docstring); ``InputError`` naming the file otherwise."""
    path = Path(path)
    name = path.name.lower()
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        if name.endswith(NIFTI_SUFFIXES):
            data, affine = _read_nifti(path)
        elif name.endswith(METAIMAGE_SUFFIXES):
            data, affine = _read_metaimage(path)
        else:
            raise InputError(f"{path}: not a NIfTI (.nii, .nii.gz) or MetaImage (.mhd, .mha) file")
    except (InputError, MissingExtraError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated or malformed file: one line naming it
        raise InputError(f"{path}: cannot read the volume ({type(exc).__name__}: {_first_line(exc)})") from None
    return VolumeFile(_to_dicom_convention(path, data, affine), affine)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def _library(name: str, path: Path):
    """nibabel or SimpleITK (dependencies of the project, imported when a file needs them), or one line."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingExtraError(f"{name} is needed to read {path.name} but is not importable ({exc}); "
                                f"install it with: pip install {name}") from exc


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data indexed [i, j, k] with its scaling applied, voxel -> LPS affine)."""
    img = _library("nibabel", path).load(str(path))
    data = _three_d(path, np.asarray(img.dataobj, dtype=np.float32))
    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    return data, ras_to_lps @ np.asarray(img.affine, dtype=np.float64)


def _read_metaimage(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data indexed [i, j, k] (ITK x, y, z), voxel -> LPS affine)."""
    sitk = _library("SimpleITK", path)
    img = sitk.ReadImage(str(path))
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: {img.GetNumberOfComponentsPerPixel()} components per voxel; expected one (HU)")
    if img.GetDimension() != 3:
        raise InputError(f"{path}: a {img.GetDimension()}D image; expected a 3D CT volume")
    data = np.asarray(sitk.GetArrayViewFromImage(img), dtype=np.float32).transpose(2, 1, 0)  # (z, y, x) -> [i, j, k]
    d = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = d * np.asarray(img.GetSpacing(), dtype=np.float64)[None, :]
    affine[:3, 3] = img.GetOrigin()
    return np.ascontiguousarray(data), affine


def _three_d(path: Path, data: np.ndarray) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: shape {data.shape}; expected a 3D CT volume")
    return data


def _to_dicom_convention(path: Path, data: np.ndarray, affine: np.ndarray) -> CTVolume:
    """Permute and flip ``data`` ([i, j, k] with ``affine``) to array axes toward +z, +y, +x (LPS), as a CTVolume."""
    m = affine[:3, :3]
    spacing_file = np.linalg.norm(m, axis=0)
    if not np.all(np.isfinite(affine)) or np.any(spacing_file <= 0) or abs(np.linalg.det(m)) < 1e-9 * np.prod(spacing_file):
        raise InputError(f"{path}: the voxel-to-patient geometry is degenerate (spacing {spacing_file.tolist()} mm)")
    unit = m / spacing_file[None, :]
    # Output axis o (0: slice, 1: row, 2: column) follows patient component (2: z, 1: y, 0: x): pick, largest first,
    # the file axis most aligned with it.
    perm, taken = [None, None, None], set()
    for _ in range(3):
        best = max(((abs(unit[2 - o, f]), o, f) for o in range(3) if perm[o] is None for f in range(3) if f not in taken))
        _, o, f = best
        perm[o] = f
        taken.add(f)
    flips = [unit[2 - o, perm[o]] < 0 for o in range(3)]
    hu = data.transpose(perm)
    first = np.zeros(3)  # the file index of the new voxel (0, 0, 0)
    for o in range(3):
        if flips[o]:
            hu = np.flip(hu, axis=o)
            first[perm[o]] = data.shape[perm[o]] - 1
    hu = np.ascontiguousarray(hu, dtype=np.float32)
    direction = np.stack([unit[:, perm[o]] * (-1.0 if flips[o] else 1.0) for o in range(3)])
    spacing = tuple(float(spacing_file[perm[o]]) for o in range(3))
    origin = tuple(float(v) for v in (affine @ np.append(first, 1.0))[:3])
    _check_hu(path, hu)
    return CTVolume(hu, spacing, origin, direction)


def _check_hu(path: Path, hu: np.ndarray) -> None:
    if not np.all(np.isfinite(hu)):
        raise InputError(f"{path}: the volume holds NaN or inf; expected HU")
    lo, hi = float(hu.min()), float(hu.max())
    if lo < MIN_HU or hi > MAX_HU:
        raise InputError(f"{path}: values {lo:g} to {hi:g} are not plausible as HU (expected within {MIN_HU:g} to "
                         f"{MAX_HU:g}); is it a CT volume in HU?")
    if lo > MAX_LOWEST_HU:
        raise InputError(f"{path}: values {lo:g} to {hi:g} are not plausible as HU (nothing below {MAX_LOWEST_HU:g}: "
                         "no air, lung or fat); a normalised image, or stored values without their rescale intercept?")
