"""Real DICOM files for the tests: pydicom's bundled test data, edited copies, and series written to tmp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

#: Geometry of the ``series_dir`` fixture: origin (patient mm) and spacing (dz, dy, dx) mm.
ORIGIN = (10.0, -20.0, 30.0)
SPACING = (2.5, 0.7, 0.8)


def bundled(name: str) -> Path:
    """A file shipped inside the pydicom package (never downloaded)."""
    from pydicom.data import get_testdata_file

    root = Path(get_testdata_file("CT_small.dcm")).parent
    path = root / name
    if not path.is_file():
        pytest.skip(f"pydicom's bundled test file {name} is not installed")
    return path


def copy_modified(src: Path, dst: Path, edit=None, **tags) -> Path:
    """Write ``src`` to ``dst`` with ``tags`` set (None deletes) and ``edit(ds)`` applied: a real, edited DICOM file."""
    import pydicom

    ds = pydicom.dcmread(src)
    for name, value in tags.items():
        if value is None:
            if name in ds:
                delattr(ds, name)
        else:
            setattr(ds, name, value)
    if edit is not None:
        edit(ds)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)
    return dst


def ramp_volume(shape=(12, 40, 36), seed=0) -> np.ndarray:
    """Integer HU with structure on every axis (so any mis-ordering of slices or axes shows)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (-900 + 60 * k + 7 * j + 3 * i + rng.integers(-20, 21, shape)).astype(np.float32)


def oblique_direction(degrees: float = 150.0) -> np.ndarray:
    """Rows (slice normal, column cosine, row cosine) of a stack tilted about x: the normal points mostly -z."""
    a = np.deg2rad(degrees)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(a), np.sin(a)])
    return np.stack([np.cross(row, col), col, row])


def scramble(folder: Path, seed: int = 1) -> list[Path]:
    """Rename the files to random names and give them shuffled InstanceNumbers (neither may be trusted)."""
    import pydicom

    files = sorted(folder.iterdir())
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(files))
    out = []
    for f, p in zip(files, perm):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = int(p) + 1
        f.unlink()
        dst = folder / f"img_{rng.integers(1 << 30):010d}"
        ds.save_as(dst, enforce_file_format=True)
        out.append(dst)
    return out


def leftovers(folder: Path) -> list[str]:
    """Everything under ``folder`` (hidden temporaries included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []

