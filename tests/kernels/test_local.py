"""Spatially varying (local-NPS) noise, study 2: regions keep their sigma and texture, seams are invisible."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import LocalNPS, NoiseKey, estimate_nps, local_nps_noise, nps_noise, preset, sigma_map_noise
from kernels.local import patch_starts

SPACING = 0.5
SHAPE = (256, 512)  # left half soft 10 HU, right half sharp 40 HU
SOFT, SHARP = preset("soft", 10.0), preset("sharp", 40.0)
LEFT, RIGHT = np.s_[:, :, 0:240], np.s_[:, :, 272:512]  # region interiors, away from the boundary


@pytest.fixture(scope="module")
def scans():
    """20 repeated 'scans' of an object whose two halves have different noise."""
    keys = [NoiseKey(9, i, 0, 0) for i in range(20)]
    a = nps_noise(keys, SOFT, SHAPE, SPACING)
    b = nps_noise([NoiseKey(9, i, 1, 0) for i in range(20)], SHARP, SHAPE, SPACING)
    obj = np.where(np.arange(SHAPE[1]) < SHAPE[1] // 2, 40.0, -60.0)[None, None, :]
    return obj + np.where(np.arange(SHAPE[1]) < SHAPE[1] // 2, a, b)


@pytest.fixture(scope="module")
def local(scans):
    return LocalNPS.from_repeated_scans(scans, SPACING)  # defaults: 6.8 mm patches, 30% overlap


@pytest.fixture(scope="module")
def generated(local):
    return local_nps_noise([NoiseKey(1, i, 0, 0) for i in range(120)], local)


def test_patch_geometry_defaults(local):
    assert local.patch == (14, 14)  # 6.8 mm / 0.5 mm, rounded
    steps = np.diff(local.starts_x)
    assert np.all(np.abs(steps - 0.7 * 14) <= 1)
    assert local.starts_x[-1] + 14 == SHAPE[1]
    np.testing.assert_allclose(local.mean_image[:, :10].mean(), 40.0, atol=1.0)


@pytest.mark.parametrize("region, truth", [(LEFT, SOFT), (RIGHT, SHARP)])
def test_each_region_keeps_sigma_and_peak_frequency(generated, region, truth):
    noise = generated[region]
    sigma_truth, _, peak_truth = truth.summary()
    assert abs(noise.std() / sigma_truth - 1) < 0.05
    est = estimate_nps(noise, SPACING, roi=128, stride=64, detrend_method=None)
    assert abs(est.summary().f_peak / peak_truth - 1) < 0.10


def test_seams_are_invisible(local, generated):
    sd = generated.astype(np.float64).std(axis=0)  # per-pixel sigma over 120 draws
    py, px = local.patch
    for region in (slice(0, 240), slice(272, 512)):
        starts = [x for x in local.starts_x if region.start <= x and x + px <= region.stop]
        overlap_cols = [x + px - 2 for x in starts[:-1]]  # columns inside a left-right overlap
        centre_cols = [x + px // 2 for x in starts[1:-1]]  # columns in patch centres
        seam, centre = sd[:, overlap_cols].mean(), sd[:, centre_cols].mean()
        assert abs(seam / centre - 1) < 0.05, (region, seam, centre)


def test_moments_match_the_scans(scans, generated):
    from kernels import noise_from_repeated_scans

    real = noise_from_repeated_scans(scans)[LEFT].ravel()
    sim = generated[LEFT].astype(np.float64).ravel()

    def moments(v):
        z = (v - v.mean()) / v.std()
        return v.mean(), v.var(), np.mean(z**3), np.mean(z**4) - 3

    m_real, v_real, s_real, k_real = moments(real)
    m_sim, v_sim, s_sim, k_sim = moments(sim)
    assert abs(m_sim - m_real) < 0.02 * np.sqrt(v_real)
    assert abs(v_sim / v_real - 1) < 0.02 * 2  # sigma within 2% <=> variance within ~4%
    assert abs(np.sqrt(v_sim / v_real) - 1) < 0.02
    assert abs(s_sim - s_real) < 0.05 and abs(k_sim - k_real) < 0.05
    hist_real, edges = np.histogram(real, bins=40, range=(-40, 40), density=True)
    hist_sim, _ = np.histogram(sim, bins=edges, density=True)
    assert np.abs(hist_sim - hist_real).max() < 0.05 * hist_real.max()


def test_dose_scaling_alpha(local):
    keys = [NoiseKey(2, i, 0, 0) for i in range(40)]
    ref = local_nps_noise(keys, local)
    low = local_nps_noise(keys, local, alpha=np.sqrt(200 / 50))
    np.testing.assert_allclose(low, ref * np.float32(2.0), rtol=1e-5, atol=1e-4)


def test_sigma_map_noise_follows_the_map():
    y, x = np.mgrid[:128, :128]
    smap = np.where(x < 64, 5.0, 25.0)
    noise = sigma_map_noise([NoiseKey(3, i, 0, 0) for i in range(200)], preset("standard", 1.0), smap, 0.5)
    assert abs(noise[:, :, 8:56].std() / 5.0 - 1) < 0.02
    assert abs(noise[:, :, 72:120].std() / 25.0 - 1) < 0.02


def test_patch_starts_cover_the_image():
    for n, p in [(100, 14), (14, 14), (37, 10)]:
        s = patch_starts(n, p, 0.3)
        assert s[0] == 0 and s[-1] + p == n and np.all(np.diff(s) <= p)


def test_too_few_scans_or_too_big_patches_are_refused():
    with pytest.raises(ValueError, match="R >= 2"):
        LocalNPS.from_repeated_scans(np.zeros((1, 64, 64)), 0.5)
    with pytest.raises(ValueError, match="patch_mm"):
        LocalNPS.from_repeated_scans(np.random.default_rng(0).normal(size=(3, 16, 16)), 0.5, patch_mm=20)
    with pytest.raises(ValueError, match="overlap"):
        LocalNPS.from_repeated_scans(np.zeros((3, 64, 64)), 0.5, overlap=1.0)
