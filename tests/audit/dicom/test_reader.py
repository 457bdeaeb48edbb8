"""Reading CT series: real scanner files to HU and geometry, anatomical order whatever the file order."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from audit.dicom import read_series, scan_series
from tests.audit.dicom.files import ORIGIN, SPACING, oblique_direction, ramp_volume, scramble, bundled


def _header_hu(path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.mark.parametrize("name", ["CT_small.dcm", "693_J2KI.dcm"])
def test_bundled_ct_reads_to_its_own_rescaled_hu_and_header_geometry(name):
    path = bundled(name)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        from pydicom.pixels import get_decoder

        if not get_decoder(ds.file_meta.TransferSyntaxUID).is_available:
            pytest.skip(f"no decoder for {ds.file_meta.TransferSyntaxUID.name} installed")
    vol = read_series([path])

    expected = _header_hu(path)
    assert vol.hu.dtype == np.float32 and vol.hu.shape == (1, int(ds.Rows), int(ds.Columns))
    assert np.array_equal(vol.hu[0], expected.astype(np.float32))  # exact: integers well inside float32
    assert vol.hu.std() > 50  # a real image, not a constant
    assert vol.spacing[1:] == pytest.approx([float(v) for v in ds.PixelSpacing], abs=1e-9)
    assert vol.spacing[0] == pytest.approx(float(ds.get("SpacingBetweenSlices") or ds.SliceThickness))
    assert vol.orientation == pytest.approx([float(v) for v in ds.ImageOrientationPatient], abs=1e-9)
    assert vol.origin == pytest.approx([float(v) for v in ds.ImagePositionPatient], abs=1e-9)
    assert vol.series_uid == ds.SeriesInstanceUID and vol.files == (path,)


def test_ct_small_given_as_a_folder_ignores_non_dicom_files(tmp_path):
    src = bundled("CT_small.dcm")
    (tmp_path / "ct.dcm").write_bytes(src.read_bytes())
    (tmp_path / "README.txt").write_text("exported from PACS\n")
    vol = read_series(tmp_path)
    assert np.array_equal(vol.hu[0], _header_hu(src).astype(np.float32))
    assert vol.files == (tmp_path / "ct.dcm",)


def test_scrambled_files_read_back_in_anatomical_order(series_dir):
    expected = ramp_volume()
    files = scramble(series_dir)
    # The shuffle must really have broken name and InstanceNumber order, or the test proves nothing.
    by_name = [pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber for f in sorted(files)]
    assert by_name != sorted(by_name)

    vol = read_series(series_dir)
    assert np.abs(vol.hu - expected).max() <= 0.5
    d = oblique_direction()
    assert np.allclose(vol.direction, d, atol=1e-9)
    assert vol.spacing == pytest.approx(SPACING, abs=1e-6)
    assert vol.origin == pytest.approx(ORIGIN, abs=1e-6)
    # The normal points mostly to -z: sorting by the z coordinate would have reversed the stack.
    assert d[0, 2] < 0
    positions = np.array([[float(v) for v in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient] for f in vol.files])
    assert np.allclose(positions, vol.index_to_patient(np.stack([np.arange(12), np.zeros(12), np.zeros(12)], axis=1)), atol=1e-6)


def test_index_and_patient_coordinates_invert_each_other(series_dir):
    vol = scan_series(series_dir)
    kji = np.array([[0, 0, 0], [11, 39, 35], [3.5, 7.25, 20.0]])
    xyz = vol.index_to_patient(kji)
    assert np.allclose(vol.patient_to_index(xyz), kji, atol=1e-9)
    # Moving one column moves PixelSpacing[1] along the row cosine (IOP[0:3]).
    step = xyz[0] - vol.index_to_patient([0, 0, 1])
    assert np.linalg.norm(step) == pytest.approx(SPACING[2])
    assert np.allclose(-step / SPACING[2], vol.orientation[:3])
    assert np.allclose(vol.affine @ np.append(kji[2], 1.0), np.append(xyz[2], 1.0))


def test_series_uid_picks_one_series_out_of_a_mixed_folder(tmp_path, series_dir):
    import shutil

    from audit.dicom import list_series, write_series

    write_series(ramp_volume((3, 40, 36), seed=5), SPACING, tmp_path / "other")
    for f in (tmp_path / "other").iterdir():
        shutil.move(f, series_dir / f"other_{f.name}")
    groups = list_series(series_dir)
    assert sorted(len(v) for v in groups.values()) == [3, 12]
    uid = next(u for u, files in groups.items() if len(files) == 3)
    vol = read_series(series_dir, series_uid=uid)
    assert vol.hu.shape == (3, 40, 36) and np.abs(vol.hu - ramp_volume((3, 40, 36), seed=5)).max() <= 0.5


def test_picked_series_may_sit_beside_a_non_ct_file(series_dir):
    import shutil

    shutil.copy(bundled("MR_small.dcm"), series_dir / "mr.dcm")
    uid = pydicom.dcmread(sorted(series_dir.glob("0*.dcm"))[0], stop_before_pixels=True).SeriesInstanceUID
    assert np.abs(read_series(series_dir, series_uid=uid).hu - ramp_volume()).max() <= 0.5


def test_scan_series_reads_only_the_requested_slices(series_dir):
    headers = scan_series(series_dir)
    assert headers.shape == (12, 40, 36)
    slab = headers.read(4, 7)
    assert slab.shape == (3, 40, 36) and np.abs(slab - ramp_volume()[4:7]).max() <= 0.5
