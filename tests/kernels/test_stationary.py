"""Stationary NPS noise: the measured NPS, sigma and texture match the target."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kernels import DoseModel, NoiseKey, estimate_nps, grid_variance, nps_noise, preset, radial_average, texture
from tests.conftest import to_host

SHAPE = (128, 128)
SPACING = 0.5  # mm: Nyquist 1.0 1/mm, above the presets' 0.8 1/mm cutoff
DRAWS = 1000


def _keys(n, seed=0, level=0):
    return [NoiseKey(seed, i, level, 0) for i in range(n)]


def _radial_target(nps):
    full = nps.on_grid(SHAPE, (SPACING, SPACING), half=False)
    return radial_average(full, (SPACING, SPACING))


@pytest.mark.parametrize("name", ["soft", "standard", "sharp"])
@pytest.mark.parametrize("method", ["spectral", "spatial"])
def test_measured_nps_matches_preset(xp, name, method):
    nps = preset(name, sigma=15.0)
    noise = nps_noise(_keys(DRAWS), nps, SHAPE, SPACING, method=method, xp=xp)
    assert noise.dtype == xp.float32 and noise.shape == (DRAWS, *SHAPE)
    noise = to_host(noise)
    measured = estimate_nps(noise, SPACING, detrend_method=None)
    f, s_meas, _ = measured.radial()
    f_t, s_target, _ = _radial_target(nps)
    np.testing.assert_allclose(f, f_t)

    nyquist = 0.5 / SPACING
    band = (f >= 0.05) & (f <= 0.8 * nyquist) & (s_target > 0.02 * s_target.max())
    band[:2] = False  # DC bin and first ring
    assert band.sum() > 20
    rel = np.abs(s_meas[band] / s_target[band] - 1)
    assert rel.max() < 0.05, f"{name}: worst radial bin off by {rel.max():.3f} at {f[band][rel.argmax()]:.3f} 1/mm"

    sigma_target = math.sqrt(grid_variance(nps.on_grid(SHAPE, (SPACING, SPACING)), SHAPE, (SPACING, SPACING)))
    assert abs(noise.std() / sigma_target - 1) < 0.01
    f_av_m, _ = texture(f, s_meas)
    f_av_t, _ = texture(f_t, s_target)
    assert abs(f_av_m / f_av_t - 1) < 0.01
    # f_peak within 2 radial bins (compared as bin indices: bins report their mean |f|).
    assert abs(int(np.argmax(s_meas)) - int(np.argmax(s_target))) <= 2


def test_grid_sigma_matches_continuous_sigma_when_nyquist_covers_the_band():
    nps = preset("standard", sigma=12.0)
    on_grid = math.sqrt(grid_variance(nps.on_grid(SHAPE, (SPACING, SPACING)), SHAPE, (SPACING, SPACING)))
    assert abs(on_grid / 12.0 - 1) < 0.01


def test_gaussian_statistics(xp):
    noise = to_host(nps_noise(_keys(200, seed=3), preset("sharp", 20.0), SHAPE, SPACING, xp=xp)).astype(np.float64)
    z = (noise - noise.mean()) / noise.std()
    skew, excess = float(np.mean(z**3)), float(np.mean(z**4) - 3)
    assert abs(skew) < 0.05 and abs(excess) < 0.1


def test_dose_scaling_of_generated_sigma():
    model = DoseModel.from_sigma(preset("standard", 1.0), sigma_ref=10.0, mas_ref=200.0)
    hi = nps_noise(_keys(300, level=200), model.nps_at(200.0), SHAPE, SPACING)
    lo = nps_noise(_keys(300, level=50), model.nps_at(50.0), SHAPE, SPACING)
    assert abs((lo.std() / hi.std()) / math.sqrt(200.0 / 50.0) - 1) < 0.02
    assert abs(hi.std() / 10.0 - 1) < 0.01


def test_electronic_noise_term_at_low_dose():
    e = 0.2  # 20% of the variance at the reference dose is electronic
    model = DoseModel.from_sigma(preset("soft", 1.0), sigma_ref=10.0, mas_ref=100.0, electronic_fraction=e)
    mas = 10.0
    expected_var = 100.0 * ((1 - e) * 100.0 / mas + e * (100.0 / mas) ** 2)
    noise = nps_noise(_keys(200), model.nps_at(mas), SHAPE, SPACING)
    assert abs(noise.var() / expected_var - 1) < 0.02
    assert abs(model.sigma_at(mas) ** 2 / expected_var - 1) < 1e-9


def test_volume_slices_are_independent_by_default():
    nps = preset("standard", 10.0)
    vol = nps_noise(_keys(64), nps, (8, 64, 64), (1.0, 0.5, 0.5))
    assert vol.shape == (64, 8, 64, 64)
    corr = np.corrcoef(vol[:, 3].ravel(), vol[:, 4].ravel())[0, 1]
    assert abs(corr) < 0.01
    assert abs(vol.std() / 10.0 - 1) < 0.01


def test_volume_with_slice_profile_correlates_neighbours_as_predicted():
    nz, dz, fwhm = 16, 0.625, 1.25
    nps = preset("standard", 10.0)
    vol = nps_noise(_keys(200), nps, (nz, 64, 64), (dz, 0.5, 0.5), z_nps=fwhm).astype(np.float64)
    # Predicted correlation at lag d: sum P(fz) cos(2 pi fz d dz) / sum P, P Gaussian.
    fz = np.fft.fftfreq(nz, dz)
    p = np.exp(-((2 * np.pi * (fwhm / 2.3548) * fz) ** 2))
    for lag in (1, 2):
        predicted = np.sum(p * np.cos(2 * np.pi * fz * lag * dz)) / p.sum()
        measured = np.corrcoef(vol[:, :-lag].ravel(), vol[:, lag:].ravel())[0, 1]
        assert abs(measured - predicted) < 0.02, (lag, measured, predicted)
    # Each slice keeps the 2D NPS: sigma per slice equals the 2D sigma.
    assert np.all(np.abs(vol.std(axis=(0, 2, 3)) / 10.0 - 1) < 0.02)


def test_odd_sizes_and_anisotropic_spacing_keep_sigma():
    nps = preset("soft", 8.0)
    noise = nps_noise(_keys(300), nps, (45, 63), (0.6, 0.4))
    assert noise.shape == (300, 45, 63)
    target = math.sqrt(grid_variance(nps.on_grid((45, 63), (0.6, 0.4)), (45, 63), (0.6, 0.4)))
    assert abs(noise.std() / target - 1) < 0.02
