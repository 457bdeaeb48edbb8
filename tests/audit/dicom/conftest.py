"""Fixtures for the DICOM tests; slow tests only with AUDIT_RUN_SLOW=1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.audit.dicom.files import ORIGIN, SPACING, oblique_direction, ramp_volume


@pytest.fixture(autouse=True)
def _skip_slow_unless_asked(request):
    if request.node.get_closest_marker("slow") and os.environ.get("AUDIT_RUN_SLOW") != "1":
        pytest.skip("slow: set AUDIT_RUN_SLOW=1 to run it")


@pytest.fixture
def series_dir(tmp_path) -> Path:
    """A 12-slice oblique series written by ``write_series`` (origin ORIGIN mm, spacing SPACING mm)."""
    from audit.dicom import write_series

    folder = tmp_path / "series"
    write_series(ramp_volume(), SPACING, folder, origin=ORIGIN, direction=oblique_direction())
    return folder
