"""DICOM in and out: read CT series into HU with geometry, crop lesion cubes, write flipped cases as derived series.

pydicom is imported lazily inside the functions, so importing this package is cheap.
"""

from audit.dicom.acquisition import Acquisition, acquisition_from_headers
from audit.dicom.crop import AIR_HU, crop_cube
from audit.dicom.reader import CTVolume, SeriesHeaders, list_series, read_series, scan_series
from audit.dicom.repeated import RepeatedScans, read_repeated_scans
from audit.dicom.writer import WrittenSeries, atomic_folder, write_flipped_case, write_series

__all__ = [
    "AIR_HU", "Acquisition", "CTVolume", "RepeatedScans", "SeriesHeaders", "WrittenSeries", "acquisition_from_headers",
    "atomic_folder", "crop_cube", "list_series", "read_repeated_scans", "read_series", "scan_series", "write_flipped_case", "write_series",
]
