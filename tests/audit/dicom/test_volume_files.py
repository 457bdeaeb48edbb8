"""NIfTI (nibabel) and MetaImage (SimpleITK) manifest rows: one known volume written as DICOM (the project's writer),
as NIfTI and as MetaImage, in different storage orders, reads back to the same HU and geometry by every route."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audit.data import ManifestSource
from audit.data.volumes import read_volume_file
from audit.dicom import read_series, write_series
from audit.errors import InputError

nib = pytest.importorskip("nibabel", reason="nibabel not installed: pip install nibabel")
sitk = pytest.importorskip("SimpleITK", reason="SimpleITK not installed: pip install SimpleITK")

SHAPE = (14, 30, 26)           # (nz, ny, nx)
SPACING = (2.0, 0.75, 0.8)     # (dz, dy, dx) mm
ORIGIN = (-40.0, 25.0, -110.0)  # patient LPS mm of voxel (0, 0, 0)


def _known() -> np.ndarray:
    """Integer HU (exact through DICOM's int16) with air, soft tissue, a bright lesion and no symmetry."""
    rng = np.random.default_rng(3)
    v = rng.integers(-1000, 400, SHAPE).astype(np.float32)
    v[4:9, 10:18, 6:14] = 60 + np.arange(8)[None, None, :]
    return v


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    """(folder, dicom volume, nifti paths, metaimage paths) of one volume."""
    root = tmp_path_factory.mktemp("volume-files")
    hu = _known()
    w = write_series(hu, SPACING, root / "dicom", origin=ORIGIN)
    ref = read_series(w.folder)
    lps = np.eye(4)  # file voxel (i, j, k) = (column, row, slice) -> LPS mm, as the DICOM series
    lps[:3, :3] = (ref.direction * np.asarray(ref.spacing)[:, None]).T[:, ::-1]
    lps[:3, 3] = ref.origin
    data_ijk = hu.transpose(2, 1, 0)  # [i, j, k]
    to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    nifti = []
    # As stored by the DICOM: i left, j posterior, k head.
    nib.save(nib.Nifti1Image(data_ijk.astype(np.int16), to_ras @ lps), str(root / "as-dicom.nii.gz"))
    nifti.append(root / "as-dicom.nii.gz")
    # Radiological RAS storage (i and j flipped), float32 with a scaling: the same patient positions.
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, SHAPE[2] - 1
    flip[1, 1], flip[1, 3] = -1, SHAPE[1] - 1
    img = nib.Nifti1Image(((data_ijk[::-1, ::-1, :] + 1024) / 2).astype(np.float32), to_ras @ lps @ flip)
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(root / "ras.nii"))
    nifti.append(root / "ras.nii")
    # Axes permuted: the file's first axis runs along the slices.
    perm = np.eye(4)[:, [2, 0, 1, 3]]
    nib.save(nib.Nifti1Image(data_ijk.transpose(2, 0, 1).astype(np.int16), to_ras @ lps @ perm), str(root / "kij.nii.gz"))
    nifti.append(root / "kij.nii.gz")
    metaimage = []
    # SimpleITK from the array (z, y, x), LPS as ITK has it; once as DICOM stores it, once feet first (k flipped).
    for name, arr, origin, d in (
        ("as-dicom.mhd", hu, ref.origin, lps[:3, :3] / np.asarray(SPACING)[::-1][None, :]),
        ("feet-first.mha", hu[::-1], ref.index_to_patient((SHAPE[0] - 1, 0, 0)),
         lps[:3, :3] / np.asarray(SPACING)[::-1][None, :] @ np.diag([1.0, 1.0, -1.0])),
    ):
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr).astype(np.int16))
        img.SetSpacing(tuple(float(s) for s in SPACING[::-1]))
        img.SetOrigin(tuple(float(v) for v in origin))
        img.SetDirection(tuple(float(v) for v in d.ravel()))
        sitk.WriteImage(img, str(root / name))
        metaimage.append(root / name)
    assert (root / "as-dicom.raw").is_file()  # the .mhd's data file beside it
    return root, ref, nifti, metaimage


def test_every_route_reads_the_same_hu_and_geometry(routes):
    root, ref, nifti, metaimage = routes
    assert np.array_equal(ref.hu, _known())
    for path in nifti + metaimage:
        vol = read_volume_file(path).volume
        assert vol.hu.shape == ref.hu.shape and np.array_equal(vol.hu, ref.hu), path.name
        np.testing.assert_allclose(vol.spacing, ref.spacing, atol=1e-6, err_msg=path.name)
        np.testing.assert_allclose(vol.origin, ref.origin, atol=1e-4, err_msg=path.name)
        np.testing.assert_allclose(vol.direction, ref.direction, atol=1e-6, err_msg=path.name)


def test_manifest_rows_give_the_same_cubes_by_mm_and_by_the_files_own_voxels(routes):
    root, ref, nifti, metaimage = routes
    centre_ijk = (9, 13, 6)  # column, row, slice of the DICOM series (and of as-dicom files)
    centre_mm = ref.index_to_patient(centre_ijk[::-1])
    mm = ",".join(f"{v:.6f}" for v in centre_mm)
    rows = ["path,label,x,y,z,i,j,k", f"dicom,1,{mm},,,", *(f"{p.name},1,{mm},,," for p in nifti + metaimage)]
    # The same lesion in each file's own voxel indices.
    own = {"as-dicom.nii.gz": centre_ijk, "ras.nii": (SHAPE[2] - 1 - 9, SHAPE[1] - 1 - 13, 6), "kij.nii.gz": (6, 9, 13),
           "as-dicom.mhd": centre_ijk, "feet-first.mha": (9, 13, SHAPE[0] - 1 - 6)}
    rows += [f"{name},0,,,,{','.join(map(str, ijk))}" for name, ijk in own.items()]
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    src = ManifestSource(root / "m.csv", cube=8, target_spacing=1.0)
    src.preflight()
    cubes = src.load(range(len(src)))
    assert src.shape == (8, 8, 8) and src.spacing == (1.0, 1.0, 1.0)
    for n in range(1, len(src)):
        np.testing.assert_allclose(cubes[n], cubes[0], atol=1e-3, err_msg=src.ids[n])
    assert src.reference(1) is None and src.acquisition(1) is None  # no DICOM headers behind a volume file
    whole = ManifestSource(_manifest(root, "w.csv", ["path,label", "dicom,1", *(f"{p.name},1" for p in nifti + metaimage)]))
    assert whole.spacing == ref.spacing and np.array_equal(whole.load([0])[0], whole.load([len(whole) - 1])[0])
    before = src.fingerprint()
    (root / "as-dicom.raw").touch()
    assert src.fingerprint() != before  # the MetaImage's data file counts


def _manifest(root: Path, name: str, rows: list[str]) -> Path:
    (root / name).write_text("\n".join(rows) + "\n")
    return root / name


@pytest.mark.parametrize("values, needle", [
    (lambda v: (v + 1024) / 4095.0, "nothing below -200: no air, lung or fat"),  # normalised to [0, 1]
    (lambda v: v + 1024, "nothing below -200"),  # stored values without the rescale intercept
    (lambda v: v * 100, "not plausible as HU (expected within -3100 to 32767)"),
    (lambda v: np.where(v > 300, np.nan, v), "NaN or inf"),
])
def test_values_not_plausible_as_hu_are_refused_naming_the_file(tmp_path, values, needle):
    hu = _known().transpose(2, 1, 0)
    path = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(values(hu).astype(np.float32), np.eye(4)), str(path))
    with pytest.raises(InputError) as info:
        ManifestSource(_manifest(tmp_path, "m.csv", ["path,label", "odd.nii.gz,1"]))
    text = str(info.value)
    assert "\n" not in text and "odd.nii.gz" in text and needle in text, text


def test_unreadable_and_odd_files_are_one_line_naming_the_file(tmp_path):
    (tmp_path / "cut.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    (tmp_path / "lonely.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
                                         "ElementDataFile = missing.raw\n")
    nib.save(nib.Nifti1Image(np.zeros((5, 6), np.float32) - 1000, np.eye(4)), str(tmp_path / "flat.nii"))
    for name, needle in (("cut.nii.gz", "cannot read the volume"), ("lonely.mhd", "cannot read the volume"),
                         ("flat.nii", "expected a 3D CT volume")):
        with pytest.raises(InputError) as info:
            ManifestSource(_manifest(tmp_path, "m.csv", ["path,label", f"{name},1"]))
        text = str(info.value)
        assert "\n" not in text and name in text and needle in text, text
