"""Acquisition tags per series and per slice: read as the files state them, missing ones stated, never guessed."""

from __future__ import annotations

import random

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from audit.dicom import Acquisition, acquisition_from_headers, read_series, scan_series, write_series


def test_pydicom_ct_small_reads_as_stated():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    acq = read_series(path).acquisition
    assert isinstance(acq, Acquisition)
    assert acq.series_uid == ds.SeriesInstanceUID
    assert acq.exposure_mas == float(ds.Exposure) == 170.0
    assert acq.dose_tag == "Exposure" and acq.slice_mas == (170.0,)
    assert acq.tube_current_ma == float(ds.XRayTubeCurrent) == 170.0
    assert acq.slice_tube_current_ma == (170.0,)
    assert acq.exposure_time_ms == float(ds.ExposureTime) == 1601.0
    assert acq.kvp == float(ds.KVP) == 120.0
    assert acq.kernel == ds.ConvolutionKernel == "STANDARD"
    assert acq.manufacturer == ds.Manufacturer == "GE MEDICAL SYSTEMS"
    assert acq.model_name == ds.ManufacturerModelName == "RHAPSODE"
    assert acq.slice_thickness_mm == float(ds.SliceThickness) == 5.0
    assert acq.reconstruction_diameter_mm == pytest.approx(float(ds.ReconstructionDiameter)) == pytest.approx(338.6716)
    # Absent from the file: None, and named.
    assert acq.pitch is None and acq.ctdi_vol_mgy is None
    assert {"SpiralPitchFactor", "CTDIvol", "ExposureInuAs"} <= set(acq.missing)
    assert not acq.modulated and acq.has_dose
    d = acq.to_dict()
    assert d["exposure_mas"] == 170.0 and d["slice_mas"] is None and "CTDIvol" in d["missing"]


def test_exposure_is_never_replaced_by_current_times_time():
    """pydicom's 693_J2KI.dcm states Exposure 85 mAs beside 170 mA x 2.0 s: the stated 85 is kept."""
    ds = pydicom.dcmread(get_testdata_file("693_J2KI.dcm"), stop_before_pixels=True)
    acq = acquisition_from_headers([ds], str(ds.SeriesInstanceUID))
    assert acq.exposure_mas == 85.0 and acq.tube_current_ma == 170.0 and acq.exposure_time_ms == 2000.0
    assert acq.kvp == 140.0 and acq.kernel == "STANDARD"
    assert acq.manufacturer is None and "Manufacturer" in acq.missing  # an empty string is not a manufacturer


def _series(folder, tags_per_slice, *, shuffle_names=False, n=4):
    hu = np.zeros((n, 16, 16), dtype=np.float32)
    written = write_series(hu, (2.0, 0.7, 0.7), folder)
    for k, f in enumerate(written.files):  # written in array order
        ds = pydicom.dcmread(f)
        for tag, values in tags_per_slice.items():
            setattr(ds, tag, values[k])
        ds.save_as(f)
    if shuffle_names:  # the reader must sort by position, not by name
        names = [f.name for f in written.files]
        random.Random(3).shuffle(names)
        for f, new in zip(written.files, names):
            f.rename(f.with_name("tmp-" + new))
    return folder


def test_modulated_tube_current_per_slice_in_array_order(tmp_path):
    currents = ["120", "180", "240", "160"]
    exposure_uas = [60000, 90000, 120000, 80000]
    folder = _series(tmp_path / "tcm", {"XRayTubeCurrent": currents, "Exposure": ["999"] * 4,
                                        "ExposureInuAs": exposure_uas, "CTDIvol": [7.5] * 4,
                                        "ConvolutionKernel": ["B30f"] * 4, "KVP": ["120"] * 4},
                     shuffle_names=True)
    series = scan_series(folder)
    acq = series.acquisition
    assert acq.slice_tube_current_ma == (120.0, 180.0, 240.0, 160.0)
    assert acq.slice_mas == (60.0, 90.0, 120.0, 80.0)  # ExposureInuAs / 1000, preferred over Exposure
    assert acq.dose_tag == "ExposureInuAs"
    assert acq.modulated
    assert acq.exposure_mas == pytest.approx(87.5) and acq.tube_current_ma == pytest.approx(175.0)
    assert acq.ctdi_vol_mgy == 7.5 and acq.kernel == "B30f" and acq.kvp == 120.0
    assert any("varies per slice" in note for note in acq.notes)
    assert series.volume().acquisition == acq
    assert acq.take([2, 0]).slice_mas == (120.0, 60.0)
    assert acq.take([2, 0]).exposure_mas == acq.exposure_mas  # the series' dose stays the series'
    assert acq.to_dict()["slice_tube_current_ma"] == [120.0, 180.0, 240.0, 160.0]


def test_a_series_without_dose_tags_states_it(tmp_path):
    folder = _series(tmp_path / "bare", {})
    acq = read_series(folder).acquisition
    assert acq.slice_mas is None and acq.exposure_mas is None and not acq.has_dose
    assert {"Exposure", "ExposureInuAs", "XRayTubeCurrent", "CTDIvol", "KVP", "ConvolutionKernel"} <= set(acq.missing)
    assert any("acquired dose is unknown" in note for note in acq.notes)


def test_a_tag_on_some_slices_only_is_not_used(tmp_path):
    folder = _series(tmp_path / "partial", {"Exposure": ["100", "100", "", "100"]})
    acq = read_series(folder).acquisition
    assert acq.slice_mas is None
    assert any("Exposure is stated on 3 of 4 slices" in note for note in acq.notes)
