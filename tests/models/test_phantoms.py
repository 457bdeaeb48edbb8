import numpy as np
import pytest

from models.metrics import auc
from models.phantoms import (PhantomScanner, bodysite_slices, disk_slices, fpr_candidates,
                             nodule_cubes)
from models.phantoms.bodysite import PATIENT_OFFSET_SD, Patient, render


def test_nodule_cubes_deterministic_and_prefix_stable():
    a, b = nodule_cubes(6, seed=3), nodule_cubes(6, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    small = nodule_cubes(4, seed=3)
    np.testing.assert_array_equal(small.images, a.images[:4])
    assert not np.array_equal(nodule_cubes(6, seed=4).images, a.images)
    assert a.images.shape == (6, 32, 32, 32) and a.images.dtype == np.float32 and a.spacing == (1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def cubes():
    return nodule_cubes(300, seed=11)


def test_nodule_hu_ranges(cubes):
    corners = cubes.images[:, :4, :4, :4]
    assert -900 < float(np.median(corners)) < -790  # parenchyma about -850 HU
    centre = cubes.images[:, 14:18, 14:18, 14:18].max(axis=(1, 2, 3))
    assert np.mean(centre > -300) > 0.9  # a solid nodule at (near) the centre


def test_nodule_classes_separable_but_not_by_volume_alone(cubes):
    # Volume measured from the image: voxels denser than -400 HU in the central 16^3 (nodule + vessel bits).
    vol = np.sum(cubes.images[:, 8:24, 8:24, 8:24] > -400, axis=(1, 2, 3))
    a = auc(cubes.labels, vol)
    assert 0.65 < a < 0.99, a
    assert auc(cubes.labels, cubes.features["volume_mm3"]) < 0.99
    assert 0.35 < np.mean(cubes.labels) < 0.65
    # Ratings follow malignancy: mean rating of malignant well above benign.
    assert cubes.ratings[cubes.labels == 1].mean() - cubes.ratings[cubes.labels == 0].mean() > 1.0
    assert set(np.unique(cubes.ratings)) <= {1, 2, 3, 4, 5}


def test_fpr_candidates_deterministic_and_balanced():
    a = fpr_candidates(40, seed=1)
    np.testing.assert_array_equal(a.images, fpr_candidates(40, seed=1).images)
    assert 0.25 < a.labels.mean() < 0.75


def test_bodysite_slices_deterministic_classes_and_spacing():
    a = bodysite_slices(40, seed=2)
    np.testing.assert_array_equal(a.images, bodysite_slices(40, seed=2).images)
    assert a.images.shape == (40, 256, 256) and a.spacing == (1.5, 1.5)
    np.testing.assert_array_equal(a.labels, np.floor(a.u).astype(int))
    assert set(a.labels.tolist()) == {0, 1, 2, 3}
    # Air around the body, tissue in it.
    assert np.all(a.images[:, :3, :3] < -900)
    assert np.all(np.mean(a.images > -500, axis=(1, 2)) > 0.02)


def test_bodysite_transition_slices_are_ambiguous():
    """Near a boundary the anatomy belongs to the neighbouring class for some patients; mid-class never."""
    rng = np.random.default_rng(0)
    people = [Patient(offset=rng.normal(0, PATIENT_OFFSET_SD)) for _ in range(200)]
    near = [int(1.0 + 0.01 + p.offset) != 1 for p in people]  # labelled chest, 0.01 past the boundary
    mid = [int(1.5 + p.offset) != 1 for p in people]
    assert 0.15 < np.mean(near) < 0.5
    assert np.mean(mid) == 0.0
    # And the two sides of a boundary look alike: across-boundary difference << between class centres.
    p = Patient()
    img = lambda u: render(u, p, np.random.default_rng(0), texture=False)  # noqa: E731
    for b in (1, 2, 3):
        across = np.mean(np.abs(img(b - 0.01) - img(b + 0.01)))
        centres = np.mean(np.abs(img(b - 0.5) - img(b + 0.5)))
        assert across < 0.5 * centres, (b, across, centres)


def test_scanner_noise_scales_with_dose_and_is_keyed():
    sc = PhantomScanner(sigma_ref=12.0, mas_ref=200.0)
    lo, hi = sc.scan("chest", 50.0, 12, seed=5), sc.scan("chest", 200.0, 12, seed=5)
    body = hi.clean > -500
    s_lo = np.std((lo.scans - lo.clean)[:, body])
    s_hi = np.std((hi.scans - hi.clean)[:, body])
    assert s_lo / s_hi == pytest.approx(2.0, rel=0.05)  # sigma ~ sqrt(mAs0 / mAs)
    assert s_hi == pytest.approx(12.0 * np.mean(hi.gain[body] ** 2) ** 0.5, rel=0.1)
    # Keyed: scan 3 is the same whether 4 or 12 were taken.
    np.testing.assert_array_equal(sc.scan("chest", 50.0, 4, seed=5).scans[3], lo.scans[3])
    # Not stationary: more noise in the middle of the body than at its edge.
    n = lo.scans - lo.clean
    assert np.std(n[:, 118:138, 118:138]) > 1.1 * np.std(n[:, 118:138, 30:50])
    with pytest.raises(ValueError, match="scanner class"):
        sc.scan("knee", 50.0, 2)


def test_disk_mask_agrees_with_contour():
    from matplotlib.path import Path as MPath

    d = disk_slices(8, seed=0)
    c = (np.arange(128) + 0.5) / 64.0 - 1.0  # pixel centres in normalised coordinates
    yy, xx = np.meshgrid(c, c, indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    for i in range(len(d)):
        inside = MPath(d.contours[i]).contains_points(pts).reshape(128, 128)
        m = d.masks[i].astype(bool)
        iou = np.sum(inside & m) / np.sum(inside | m)
        assert iou > 0.95, (i, iou)
