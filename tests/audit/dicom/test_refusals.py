"""Each refusal of the reader on a real malformed file: an InputError naming the file and the field."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from audit.dicom import read_series
from audit.errors import InputError
from tests.audit.dicom.files import bundled, copy_modified, leftovers


def _refused(source, *needles):
    """Read ``source``, expect an InputError whose one-line message holds every needle; return it."""
    before = leftovers(source if source.is_dir() else source.parent)
    with pytest.raises(InputError) as info:
        read_series(source)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert str(needle) in msg, msg
    assert leftovers(source if source.is_dir() else source.parent) == before  # reading writes nothing
    return msg


def test_non_ct_modality_is_refused(tmp_path):
    shutil.copy(bundled("MR_small.dcm"), tmp_path / "mr.dcm")
    _refused(tmp_path, "mr.dcm", "Modality", "'MR'", "'CT'")


def test_mixed_series_is_refused_naming_both(tmp_path, series_dir):
    stray = shutil.copy(bundled("CT_small.dcm"), series_dir / "stray.dcm")
    uid = pydicom.dcmread(stray, stop_before_pixels=True).SeriesInstanceUID
    msg = _refused(series_dir, "SeriesInstanceUID", "2 series", "series_uid=")
    assert "stray.dcm" in msg and uid in msg


def test_missing_pixel_data_is_refused(tmp_path):
    copy_modified(bundled("CT_small.dcm"), tmp_path / "nopix.dcm", PixelData=None)
    _refused(tmp_path, "nopix.dcm", "PixelData missing")


def test_truncated_file_is_refused(tmp_path):
    data = bundled("CT_small.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: int(len(data) * 0.8)])  # cut inside the pixel data
    _refused(tmp_path, "cut.dcm", "PixelData", "less than expected")


@pytest.mark.parametrize("tag", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleIntercept"])
def test_missing_geometry_or_rescale_tag_is_refused(tmp_path, tag):
    copy_modified(bundled("CT_small.dcm"), tmp_path / "notag.dcm", **{tag: None})
    _refused(tmp_path, "notag.dcm", f"{tag} missing")


def _edit_slice(folder, index, **tags):
    path = sorted(folder.iterdir())[index]
    copy_modified(path, path, **tags)
    return path


def test_inconsistent_pixel_spacing_is_refused(series_dir):
    bad = _edit_slice(series_dir, 5, PixelSpacing=[0.75, 0.8])
    _refused(series_dir, bad.name, "PixelSpacing", "[0.75, 0.8]", "inconsistent")


def test_inconsistent_orientation_is_refused(series_dir):
    ds = pydicom.dcmread(sorted(series_dir.iterdir())[3], stop_before_pixels=True)
    iop = [float(v) for v in ds.ImageOrientationPatient]
    bad = _edit_slice(series_dir, 3, ImageOrientationPatient=[iop[0], iop[1], iop[2], 0.0, 0.0, 1.0])
    _refused(series_dir, bad.name, "ImageOrientationPatient", "inconsistent")


def test_gap_in_slice_positions_is_refused(series_dir):
    files = sorted(series_dir.iterdir())
    files[6].unlink()  # slice 7 of 12 lost in transfer
    _refused(series_dir, files[7].name, "ImagePositionPatient", "gap of 1 missing slice")


def test_irregular_slice_spacing_is_refused(series_dir):
    path = sorted(series_dir.iterdir())[6]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    normal = np.cross([float(v) for v in ds.ImageOrientationPatient[:3]], [float(v) for v in ds.ImageOrientationPatient[3:]])
    moved = np.array([float(v) for v in ds.ImagePositionPatient]) + 0.9 * normal  # 0.9 mm off a 2.5 mm grid
    _edit_slice(series_dir, 6, ImagePositionPatient=[round(float(v), 6) for v in moved])
    _refused(series_dir, "ImagePositionPatient", "inconsistent with the series' slice spacing of 2.500 mm")


def test_duplicate_slice_position_is_refused(series_dir):
    files = sorted(series_dir.iterdir())
    ipp = pydicom.dcmread(files[2], stop_before_pixels=True).ImagePositionPatient
    _edit_slice(series_dir, 3, ImagePositionPatient=list(ipp))
    _refused(series_dir, "ImagePositionPatient", "repeats that of")


def test_compressed_without_decoder_is_refused_naming_the_syntax(tmp_path):
    src = bundled("MR_small_jpeg_ls_lossless.dcm")  # real JPEG-LS pixel data
    ts = pydicom.dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID
    from pydicom.pixels import get_decoder

    if get_decoder(ts).is_available:
        pytest.skip("a JPEG-LS decoder is installed here, so this file is readable")
    geometry = pydicom.dcmread(bundled("CT_small.dcm"), stop_before_pixels=True)
    copy_modified(src, tmp_path / "jpegls.dcm", Modality="CT", RescaleSlope=1, RescaleIntercept=-1024,
                  SeriesInstanceUID=geometry.SeriesInstanceUID)
    _refused(tmp_path, "jpegls.dcm", "TransferSyntaxUID", ts.name, str(ts), "no decoder", "pip install one of", "pylibjpeg")


def test_not_a_dicom_file_given_explicitly_is_refused(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("not an image\n")
    with pytest.raises(InputError, match="notes.dcm: not a DICOM file"):
        read_series([path])


def test_folder_without_dicom_files_is_refused(tmp_path):
    (tmp_path / "README.txt").write_text("empty export\n")
    _refused(tmp_path, str(tmp_path), "no DICOM files")
