"""NPS estimator: normalisation (Parseval), white-noise level, repeated-scan handling, detrending."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import NoiseKey, detrend, estimate_nps, extract_rois, gaussian_noise, noise_from_repeated_scans, nps_noise, preset


def test_parseval_sum_of_nps_equals_detrended_roi_variance():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:64, :48]
    roi = rng.normal(0, 7, (64, 48)) + 0.3 * x - 0.1 * y + 40  # noise on a trend
    for method in ("mean", "poly1", "poly2"):
        est = estimate_nps(roi, (0.7, 0.4), detrend_method=method)
        residual = detrend(roi[None], method)[0]
        expected = np.mean((residual - residual.mean()) ** 2) + residual.mean() ** 2  # mean square = sum S df
        assert abs(est.variance() / expected - 1) < 1e-10
    est = estimate_nps(roi, (0.7, 0.4))
    assert abs(est.variance() / np.var(roi) - 1) < 1e-10


def test_white_noise_gives_flat_nps_at_sigma2_dx_dy():
    s, dx = 6.0, 0.7
    noise = gaussian_noise([NoiseKey(1, i, 0, 0) for i in range(400)], (64, 64), sigma=s)
    est = estimate_nps(noise, dx)
    f, nps, _ = est.radial()
    level = s * s * dx * dx
    assert abs(est.nps[1:, 1:].mean() / level - 1) < 0.01
    assert np.all(np.abs(nps[2:] / level - 1) < 0.05)


def test_repeated_scans_remove_the_object_and_keep_the_noise_variance():
    r, sigma = 20, 12.0
    y, x = np.mgrid[:96, :96]
    obj = 300.0 * ((x - 48) ** 2 + (y - 48) ** 2 < 30**2) - 1000.0 + 2.0 * x  # disc on a ramp
    noise = nps_noise([NoiseKey(5, i, 0, 0) for i in range(r)], preset("standard", sigma), (96, 96), 0.5)
    scans = obj[None] + noise
    realizations = noise_from_repeated_scans(scans)
    assert abs(realizations.std() / sigma - 1) < 0.02  # N/(N-1) correction keeps the scan variance
    est = estimate_nps(scans, 0.5, roi=32, repeated=True)
    assert abs(est.summary().sigma / sigma - 1) < 0.02
    assert est.n_rois == r * 9
    # Without removing the ensemble mean the object dominates: the estimate is useless.
    assert estimate_nps(scans, 0.5, roi=32).summary().sigma > 5 * sigma


def test_polynomial_detrend_removes_planes_and_quadratics_exactly():
    y, x = np.mgrid[:32, :32].astype(float)
    quad = 3 + 0.2 * x - 0.5 * y + 0.01 * x * y + 0.02 * x * x - 0.03 * y * y
    assert np.abs(detrend(quad[None], "poly2")).max() < 1e-9
    assert np.abs(detrend((3 + 0.2 * x - 0.5 * y)[None], "poly1")).max() < 1e-9


def test_extract_rois_grid_and_overlap():
    img = np.arange(10 * 12, dtype=float).reshape(10, 12)
    rois = extract_rois(img, 4, stride=2)
    assert rois.shape == (4 * 5, 4, 4)
    np.testing.assert_array_equal(rois[1], img[0:4, 2:6])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"roi": 1}, "roi"),
        ({"roi": 500}, "roi"),
        ({"detrend_method": "poly3"}, "detrend"),
    ],
)
def test_bad_estimator_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimate_nps(np.zeros((2, 64, 64)), 0.5, **kwargs)


def test_repeated_scans_need_two():
    with pytest.raises(ValueError, match="at least 2 repeated scans"):
        estimate_nps(np.zeros((1, 32, 32)), 0.5, repeated=True)
