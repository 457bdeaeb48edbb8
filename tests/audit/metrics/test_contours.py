"""Contour metrics on shapes with known distances (anisotropic spacing), empty masks, filled Dice and flips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audit.errors import InputError
from audit.metrics.contours import (
    contour_error,
    fill_contours,
    filled_dice,
    hausdorff_percentile,
    hd95,
    landmark_error,
    segmentation_flips,
    surface_distances,
)

SPACING_2D = (2.0, 0.5)  # rows 2 mm, columns 0.5 mm


def squares():
    """A: 60 x 240 pixels (120 x 120 mm); B: A grown by 1 row and 4 columns each side, 2 mm on all sides."""
    a = np.zeros((70, 260), bool)
    b = np.zeros((70, 260), bool)
    a[5:65, 10:250] = True
    b[4:66, 6:254] = True
    return a, b


def test_concentric_squares_analytic():
    a, b = squares()
    d_ab, d_ba = surface_distances(a, b, SPACING_2D)
    # every surface pixel of A is 2 mm from B's outline; B's are 2 mm away except 16 corner pixels
    assert d_ab.size == 2 * 240 + 2 * 58 and np.all(d_ab == 2.0)
    corner = [math.sqrt(4 + (0.5 * k) ** 2) for k in (1, 2, 3, 4)]
    assert d_ba.size == 2 * 248 + 2 * 60
    np.testing.assert_allclose(np.sort(d_ba)[-16:], np.sort(corner * 4))
    assert hd95(a, b, SPACING_2D) == 2.0  # 16 / 616 = 2.6% of B's outline lies beyond 2 mm: below the 5% tail
    assert hausdorff_percentile(a, b, SPACING_2D, 100) == pytest.approx(math.sqrt(8))
    want = (2.0 * 596 + 2.0 * 600 + 4 * sum(corner)) / (596 + 616)
    assert contour_error(a, b, SPACING_2D) == pytest.approx(want, rel=1e-12)
    assert contour_error(b, a, SPACING_2D) == pytest.approx(want, rel=1e-12)  # symmetric


def test_concentric_spheres_anisotropic():
    spacing = (1.5, 0.75, 0.75)
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip((40, 80, 80), spacing)), indexing="ij")
    r = np.sqrt((z - 30) ** 2 + (y - 30) ** 2 + (x - 30) ** 2)
    inner, outer = r <= 10.0, r <= 16.0
    # the surfaces are 6 mm apart; voxelised, each lies within about half a voxel diagonal of its sphere
    assert hd95(inner, outer, spacing) == pytest.approx(6.0, abs=1.0)
    assert contour_error(inner, outer, spacing) == pytest.approx(6.0, abs=1.0)
    assert hd95(outer, outer, spacing) == 0.0


def test_empty_masks():
    e = np.zeros((8, 8), bool)
    m = e.copy()
    m[2:5, 2:5] = True
    assert hd95(e, e, 1.0) == 0.0 and contour_error(e, e, 1.0) == 0.0 and filled_dice(e, e) == 1.0
    assert hd95(e, m, 1.0) == math.inf and contour_error(m, e, 1.0) == math.inf and filled_dice(e, m) == 0.0


def test_filled_dice_fills_each_slice():
    ring = np.zeros((2, 9, 9), bool)
    ring[:, 2:7, 2:7] = True
    ring[:, 4, 4] = False  # a hole in every slice
    disc = fill_contours(ring)
    assert disc[:, 4, 4].all() and disc.sum() == 50
    assert filled_dice(ring, disc) == 1.0
    hollow_in_z = np.zeros((3, 5, 5), bool)
    hollow_in_z[[0, 2], 1:4, 1:4] = True
    hollow_in_z[1, 1:4, 1:4] = True
    hollow_in_z[1, 2, 2] = False  # enclosed in 3-D and in its slice: filled
    assert fill_contours(hollow_in_z)[1, 2, 2]


def test_landmark_error():
    assert landmark_error([[0, 0], [1, 1]], [[0, 1], [1, 1]], SPACING_2D) == pytest.approx(0.25)
    with pytest.raises(InputError, match="points_pred"):
        landmark_error([[0, 0]], [[0, 0], [1, 1]], 1.0)


def test_segmentation_flips_threshold_on_any_metric():
    clean = np.zeros((20, 20), bool)
    clean[5:15, 5:15] = True
    grown = np.zeros_like(clean)
    grown[4:16, 4:16] = True  # 1 pixel larger: Dice 200/244; its 4 corners (9% of 44) are sqrt(2) mm out
    stray = clean.copy()
    stray[0, 0] = True  # one far voxel (2% of the outline): HD95 0, the Hausdorff distance 7 mm
    empty = np.zeros_like(clean)
    f = segmentation_flips(clean, [clean, grown, stray, empty], (1.0, 1.0), dice_min=0.8, hd95_max_mm=1.5)
    np.testing.assert_allclose(f.dice[:2], [1.0, 200 / 244])
    assert f.hd95_mm[1] == pytest.approx(math.sqrt(2)) and f.hd95_mm[2] == 0.0 and f.hd95_mm[3] == math.inf and f.dice[3] == 0.0
    assert f.flipped.tolist() == [False, False, False, True]
    strict = segmentation_flips(clean, [grown], (1.0, 1.0), contour_error_max_mm=0.5)
    assert strict.flipped.tolist() == [True] and strict.thresholds["dice_min"] is None
    with pytest.raises(InputError, match="spacing"):
        hd95(clean, grown, (1.0, 1.0, 1.0))
