"""Lesion cubes: centred where asked (mm or voxel), resampled exactly for linear HU, air outside the scan."""

from __future__ import annotations

import numpy as np
import pytest

from audit.dicom import AIR_HU, CTVolume, crop_cube, scan_series, write_series
from audit.errors import InputError
from tests.audit.dicom.files import oblique_direction


def _ramp_volume(shape=(30, 50, 44), spacing=(2.5, 0.7, 0.8), origin=(-40.0, 12.0, 300.0)):
    """A volume whose HU is a linear function of the patient position: 3x + 2y - 5z + 100."""
    vol = CTVolume(np.zeros(shape, np.float32), spacing, origin, oblique_direction())
    kji = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    xyz = vol.index_to_patient(kji)
    return CTVolume(_ramp(xyz).astype(np.float32), spacing, origin, vol.direction), _ramp


def _ramp(xyz):
    return 3 * xyz[..., 0] + 2 * xyz[..., 1] - 5 * xyz[..., 2] + 100


def _cube_positions(cube):
    kji = np.stack(np.meshgrid(*[np.arange(n) for n in cube.hu.shape], indexing="ij"), axis=-1)
    return cube.index_to_patient(kji)


def test_cube_at_1mm_reproduces_linear_hu_at_its_patient_positions():
    vol, ramp = _ramp_volume()
    center = vol.index_to_patient([14.3, 25.6, 21.1])
    cube = crop_cube(vol, center, size_vox=16, spacing=1.0)
    assert cube.hu.shape == (16, 16, 16) and cube.spacing == (1.0, 1.0, 1.0)
    assert np.allclose(cube.index_to_patient([7.5, 7.5, 7.5]), center, atol=1e-9)  # centred on the lesion
    # Trilinear interpolation is exact for a linear field: any error is a geometry error.
    err = np.abs(cube.hu - ramp(_cube_positions(cube))).max()
    assert err < 0.05  # float32 rounding of values up to ~2000 HU


def test_voxel_and_mm_centres_give_the_same_cube():
    vol, _ = _ramp_volume()
    ijk = (21.0, 25.0, 14.0)  # column, row, slice
    by_voxel = crop_cube(vol, ijk, size_vox=8, spacing=1.0, units="voxel")
    by_mm = crop_cube(vol, vol.index_to_patient(ijk[::-1]), size_vox=8, spacing=1.0, units="mm")
    assert np.allclose(by_voxel.hu, by_mm.hu, atol=1e-3)


def test_outside_the_scan_is_air():
    vol, ramp = _ramp_volume()
    cube = crop_cube(vol, vol.index_to_patient([0, 0, 0]), size_vox=12, spacing=1.0)  # centred on a corner voxel
    idx = vol.patient_to_index(_cube_positions(cube))
    hi = np.array(vol.shape) - 1
    outside = np.any((idx < -1) | (idx > hi + 1), axis=-1)  # beyond the half-voxel blend at the edge
    inside = np.all((idx >= 0) & (idx <= hi), axis=-1)
    assert 0.5 < outside.mean() < 0.95 and inside.sum() > 20
    assert np.all(cube.hu[outside] == AIR_HU)
    assert np.abs(cube.hu[inside] - ramp(_cube_positions(cube))[inside]).max() < 0.05


def test_cube_far_outside_is_all_air():
    vol, _ = _ramp_volume()
    cube = crop_cube(vol, (1e4, 0, 0), size_vox=4)
    assert np.all(cube.hu == AIR_HU)


def test_sphere_in_a_dicom_series_is_centred_in_its_cube(tmp_path):
    shape, spacing, origin = (40, 64, 64), (1.25, 0.7, 0.7), (-22.0, -22.0, -25.0)
    vol = CTVolume(np.zeros(shape, np.float32), spacing, origin, np.eye(3)[[2, 1, 0]])
    kji = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    lesion = np.array([3.3, -4.1, 2.7])  # patient mm
    hu = np.where(np.linalg.norm(vol.index_to_patient(kji) - lesion, axis=-1) < 6.0, 40.0, -850.0).astype(np.float32)
    write_series(hu, spacing, tmp_path / "s", origin=origin)

    headers = scan_series(tmp_path / "s")  # lazy: reads only the slab the cube needs
    cube = crop_cube(headers, lesion, size_vox=32, spacing=1.0)
    assert np.array_equal(cube.hu, crop_cube(headers.volume(), lesion, size_vox=32, spacing=1.0).hu)
    w = cube.hu + 850.0
    com = (w[..., None] * _cube_positions(cube)).sum(axis=(0, 1, 2)) / w.sum()
    assert np.linalg.norm(com - lesion) < 0.1  # mm (measured 0.025: voxelisation of a 6 mm sphere)
    vol_mm3 = (cube.hu > -405).sum()  # 1 mm^3 voxels above the half-way level
    assert vol_mm3 == pytest.approx(4 / 3 * np.pi * 6.0**3, rel=0.03)  # measured 0.7% low


@pytest.mark.parametrize("kwargs, needle", [
    (dict(units="cm"), "units"), (dict(order=3), "order"), (dict(size_vox=0), "positive"), (dict(spacing=-1.0), "positive"),
])
def test_bad_crop_arguments_are_refused(kwargs, needle):
    vol, _ = _ramp_volume()
    with pytest.raises(InputError, match=needle):
        crop_cube(vol, (0, 0, 0), **kwargs)
