"""Manifest rows pointing at DICOM folders: whole volumes, or lesion cubes from mm or voxel coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from audit.data import ManifestSource
from audit.dicom import AIR_HU, read_series, write_series
from audit.errors import InputError
from tests.audit.dicom.files import ramp_volume


def _manifest(folder, header: str, *rows: str):
    path = folder / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_dicom_rows_with_mm_and_voxel_centres_give_lesion_cubes(tmp_path, series_dir):
    vol = read_series(series_dir)
    ijk = (18, 20, 6)  # column, row, slice
    x, y, z = (float(v) for v in vol.index_to_patient(ijk[::-1]))
    m = _manifest(tmp_path, "path,label,x,y,z,i,j,k",
                  f"series,1,{x!r},{y!r},{z!r},,,", "series,0,,,,18,20,6", f"{series_dir},1,{x + 500!r},{y!r},{z!r},,,")
    src = ManifestSource(m, cube=16, target_spacing=1.0)
    assert len(src) == 3 and src.shape == (16, 16, 16) and src.spacing == (1.0, 1.0, 1.0)
    assert src.labels.tolist() == [1, 0, 1]
    assert len(set(src.ids)) == 3  # one series, three lesions: ids tell them apart
    batch = src.load([0, 1, 2])
    assert batch.dtype == np.float32 and batch.shape == (3, 16, 16, 16)
    assert np.allclose(batch[0], batch[1], atol=1e-3)  # the same point, given in mm and in voxels
    # The cube's central 2x2x2 voxels straddle the lesion voxel: their mean is the series' HU there (linear ramp).
    assert batch[0, 7:9, 7:9, 7:9].mean() == pytest.approx(float(vol.hu[6, 20, 18]), abs=25)
    assert np.all(batch[2] == AIR_HU)  # 500 mm away: outside the scan


def test_dicom_row_without_centre_gives_the_whole_volume(tmp_path, series_dir):
    m = _manifest(tmp_path, "path,label", "series,2")
    src = ManifestSource(m)
    assert src.shape == (12, 40, 36) and src.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert np.abs(src.load([0])[0] - ramp_volume()).max() <= 0.5


def test_derived_cases_borrow_the_source_patient_and_for_whole_series_its_geometry(tmp_path, series_dir):
    """A flipped case written from a whole-series row keeps the source's patient, geometry and frame of reference
    (a viewer overlays it on the original); one from a lesion cube keeps the patient and the source's frame of
    reference, at the cube's real position (its centre maps back to the lesion's voxel)."""
    import pydicom

    from audit.dicom import write_flipped_case

    for f in sorted(series_dir.glob("*.dcm")):  # give the source series a patient
        ds = pydicom.dcmread(f)
        ds.PatientID, ds.PatientName = "SRC-7", "Source^Patient"
        ds.save_as(f)
    vol = read_series(series_dir)
    whole = ManifestSource(_manifest(tmp_path, "path,label", "series,2"))
    (tmp_path / "cubes").mkdir()
    cube = ManifestSource(_manifest(tmp_path / "cubes", "path,label,i,j,k", f"{series_dir},1,18,20,6"), cube=16)
    img = whole.load([0])[0]
    case = write_flipped_case(img, img + 1.0, whole.spacing, tmp_path / "whole", level=50, key=(0, 0, 50000, 0),
                              reference=whole.reference(0))
    written = read_series(case["clean_dir"])
    assert written.frame_of_reference_uid == vol.frame_of_reference_uid and np.allclose(written.origin, vol.origin)
    assert written.header.PatientID == vol.header.PatientID == "SRC-7"
    ref = cube.reference(0)
    assert ref.header.PatientID == vol.header.PatientID
    c = cube.load([0])[0]
    case = write_flipped_case(c, c, cube.spacing, tmp_path / "cube", level=50, key=(0, 0, 50000, 0), reference=ref)
    written = read_series(case["noisy_dir"])
    assert written.header.PatientID == vol.header.PatientID and written.frame_of_reference_uid == vol.frame_of_reference_uid
    centre = written.index_to_patient([(n - 1) / 2 for n in written.shape])
    assert np.allclose(vol.patient_to_index(centre), [6, 20, 18], atol=1e-6)  # (k, j, i) of the manifest's i,j,k
    np.save(tmp_path / "a.npy", np.zeros((4, 5), np.float32))
    assert ManifestSource(_manifest(tmp_path, "path,label", "a.npy,1"), spacing=(0.5, 0.5)).reference(0) is None


def test_npy_rows_behave_as_before_beside_dicom_support(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 5), np.float32))
    src = ManifestSource(_manifest(tmp_path, "path,label", "a.npy,1"), spacing=(0.5, 0.5))
    assert src.shape == (4, 5) and src.ids == ["a.npy"] and src.load([0]).shape == (1, 4, 5)


def test_fingerprint_follows_the_series_files_and_the_centre(tmp_path, series_dir):
    m = _manifest(tmp_path, "path,label,i,j,k", "series,1,18,20,6")
    before = ManifestSource(m, cube=8).fingerprint()
    assert ManifestSource(m, cube=8).fingerprint() == before
    assert ManifestSource(m, cube=16).fingerprint() != before
    m2 = _manifest(tmp_path, "path,label,i,j,k", "series,1,18,20,5")
    assert ManifestSource(m2, cube=8).fingerprint() != before
    write_series(ramp_volume(seed=9), (2.5, 0.7, 0.8), series_dir, overwrite=True)
    m3 = _manifest(tmp_path, "path,label,i,j,k", "series,1,18,20,6")
    assert ManifestSource(m3, cube=8).fingerprint() != before


@pytest.mark.parametrize("header, row, needle", [
    ("path,label,x,y", "series,1,1.0,2.0", "row 2 gives x,y but not z"),
    ("path,label,i,j,k", "series,1,a,b,c", "row 2 columns i,j,k must be numbers"),
    ("path,label,x,y,z,i,j,k", "series,1,1,2,3,4,5,6", "row 2 gives both x,y,z .mm. and i,j,k"),
])
def test_bad_centres_are_refused_naming_the_row(tmp_path, series_dir, header, row, needle):
    with pytest.raises(InputError, match=needle):
        ManifestSource(_manifest(tmp_path, header, row))


def test_centre_on_an_array_file_is_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 5), np.float32))
    with pytest.raises(InputError, match="a.npy: lesion coordinates .* DICOM folders only"):
        ManifestSource(_manifest(tmp_path, "path,label,i,j,k", "a.npy,1,1,2,0"), spacing=(0.5, 0.5))


def test_bad_dicom_row_surfaces_the_reader_error(tmp_path, series_dir):
    sorted(series_dir.iterdir())[6].unlink()
    with pytest.raises(InputError, match="gap of 1 missing slice"):
        ManifestSource(_manifest(tmp_path, "path,label,i,j,k", "series,1,18,20,6"))
