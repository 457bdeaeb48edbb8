"""Repeated scans from DICOM series feed the kernels' NPS estimators (study 2's phantom arm from real files)."""

from __future__ import annotations

import numpy as np
import pytest

from audit.dicom import read_repeated_scans, write_series
from audit.errors import InputError
from audit.dicom import RepeatedScans
from kernels import LocalNPS, NoiseKey, estimate_nps, nps_noise, preset

R, SHAPE, SPACING = 6, (3, 64, 64), (2.0, 0.8, 0.8)


def _phantom() -> np.ndarray:
    y, x = np.mgrid[: SHAPE[1], : SHAPE[2]]
    disc = np.hypot(y - 31.5, x - 31.5) < 24
    return np.where(disc, 0.0, -1000.0)[None].repeat(SHAPE[0], 0).astype(np.float32)


@pytest.fixture
def scans(tmp_path):
    """R series of one phantom with NPS noise (sigma 20 HU), each in its own folder; and the noise drawn."""
    keys = [NoiseKey(3, r, 100, 0) for r in range(R)]
    noise = nps_noise(keys, preset("standard", sigma=20.0, cutoff=0.5), SHAPE, SPACING)
    folders = []
    for r in range(R):
        folders.append(tmp_path / f"scan{r}")
        write_series(_phantom() + noise[r], SPACING, folders[-1], origin=(0.0, 0.0, -2.0), description="water disc")
    return folders, noise


def test_repeated_series_give_the_nps_of_the_noise_in_them(scans):
    folders, noise = scans
    rep = read_repeated_scans(folders)
    assert isinstance(rep, RepeatedScans) and rep.scans.shape == (R, 64, 64) and rep.spacing == (0.8, 0.8)
    assert rep.name == "water disc"
    # The middle slice of each file, anatomically: the phantom plus that scan's noise, to the stored integer.
    assert np.abs(rep.scans - (_phantom()[1] + noise[:, 1])).max() <= 0.5 + 1e-3
    drawn = float(np.sqrt(estimate_nps(noise[:, 1], SPACING[1:], repeated=True).variance()))
    read = estimate_nps(rep.scans, rep.spacing, repeated=True).summary().sigma
    assert read == pytest.approx(drawn, rel=0.01)  # integer storage adds 1/12 HU^2 to ~400 HU^2
    assert read == pytest.approx(20.0, rel=0.1)
    local = LocalNPS.from_repeated_scans(rep.scans, rep.spacing)
    assert local.sigma_map().mean() == pytest.approx(read, rel=0.1)


def test_one_folder_holding_all_series_works_too(tmp_path, scans):
    import shutil

    folders, _ = scans
    pooled = tmp_path / "pooled"
    pooled.mkdir()
    for r, f in enumerate(folders):
        for p in f.iterdir():
            shutil.copy(p, pooled / f"s{r}_{p.name}")
    rep = read_repeated_scans(pooled, slice_index=0)
    assert rep.scans.shape == (R, 64, 64)
    assert np.array_equal(np.sort(rep.scans.reshape(R, -1).sum(1)), np.sort(read_repeated_scans(folders, slice_index=0).scans.reshape(R, -1).sum(1)))


def test_a_scan_at_other_table_positions_is_refused(tmp_path, scans):
    folders, noise = scans
    write_series(_phantom(), SPACING, tmp_path / "moved", origin=(0.0, 0.0, 5.0))
    with pytest.raises(InputError, match=r"moved: ImagePositionPatient .* 7.000 mm from the first scan"):
        read_repeated_scans([*folders, tmp_path / "moved"])


def test_a_single_scan_is_refused(scans):
    folders, _ = scans
    with pytest.raises(InputError, match="at least 2"):
        read_repeated_scans(folders[:1])
