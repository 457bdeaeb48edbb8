import numpy as np
import pytest

from models.metrics import auc
from models.phantoms import (PhantomScanner, bodysite_slices, disk_slices, fpr_candidates,
                             nodule_cubes)
from models.phantoms.bodysite import (MARKER_CONTRAST, MIN_CONTRAST, PATIENT_OFFSET_SD, TRANSITION, Patient,
                                      landmark_share, render, transition)


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
    """The same table position is a different class in different patients (their anatomical offset); mid-class
    never. And the two sides of a boundary look alike: across-boundary difference << between class centres."""
    rng = np.random.default_rng(0)
    people = [Patient(offset=rng.normal(0, PATIENT_OFFSET_SD)) for _ in range(200)]
    near = [int(1.0 + 0.01 + p.offset) != 1 for p in people]  # 0.01 past the boundary on the table
    mid = [int(1.5 + p.offset) != 1 for p in people]
    assert 0.15 < np.mean(near) < 0.5
    assert np.mean(mid) == 0.0
    p = Patient()
    img = lambda u: render(u, p, np.random.default_rng(0), texture=False)  # noqa: E731
    for b in (1, 2, 3):
        across = np.mean(np.abs(img(b - 0.01) - img(b + 0.01)))
        centres = np.mean(np.abs(img(b - 0.5) - img(b + 0.5)))
        assert across < 0.05 * centres, (b, across, centres)


@pytest.mark.parametrize("boundary", [1, 2, 3])
def test_bodysite_boundary_evidence_is_two_organs_at_soft_tissue_contrast(boundary):
    """Within a transition zone the gross anatomy is the same on both sides of a boundary; the slices differ only
    by a pair of organs (~20 mm radius) on the chest / leg & foot side, whose contrast is MIN_CONTRAST (20 HU) at
    the boundary and rises with the square of the distance to it (about 52 HU halfway through the zone for the
    average patient's 150 HU)."""
    p = Patient()
    organs_above = boundary % 2 == 1  # chest (1) and leg & foot (3) carry them; abdomen & pelvis (2) does not
    for d, low, high in ((0.005, 0.9 * MIN_CONTRAST, 1.1 * MIN_CONTRAST), (0.1, 45.0, 60.0)):
        below = render(boundary - d, p, np.random.default_rng(3), texture=False)
        above = render(boundary + d, p, np.random.default_rng(3), texture=False)
        diff = (above - below) * (1 if organs_above else -1)
        changed = np.abs(diff) > 0.5
        assert 0.002 < changed.mean() < 0.03, (d, changed.mean())  # two organs of ~20 mm radius: < 3% of the slice
        assert diff.min() > -0.5 and low < diff.max() < high, (d, diff.min(), diff.max())
    assert transition(boundary - 0.01)[1] < 0.5 < transition(boundary + 0.01)[1]
    assert transition(boundary + 0.5) is None
    for full in MARKER_CONTRAST:  # never below the floor, never above the patient's full contrast
        shares = [landmark_share(boundary + d, full) for d in np.linspace(-TRANSITION, TRANSITION, 41)]
        present = [x for x in shares if x > 0]
        assert min(present) * full == pytest.approx(MIN_CONTRAST, rel=0.03) and max(present) <= 1.0
        assert len(present) in (20, 21)  # one side of the boundary only
    assert (landmark_share(boundary + 0.01) > 0) == organs_above == (landmark_share(boundary - 0.01) == 0)


def test_bodysite_zones_hold_a_realistic_share_and_labels_follow_the_anatomy_shown():
    s = bodysite_slices(160, seed=4)
    np.testing.assert_array_equal(s.labels, np.floor(s.u).astype(int))
    near = np.array([transition(u) is not None for u in s.u])
    # Three inner boundaries, zones 2 x TRANSITION wide, u uniform on [0, 4): 30% of the slices.
    assert 0.18 < near.mean() < 0.42
    # The organs are in each slice exactly when its label is chest or leg & foot.
    for u, y in zip(s.u, s.labels):
        assert (landmark_share(u) > 0) == (y % 2 == 1)


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
