"""NPS models on other image grids: the variance survives resampling, and sigma scaling is exact where noise is drawn (#13)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from kernels import DoseModel, GridNPS, NoiseKey, NPSTruncationWarning, RadialNPS, estimate_nps, grid_variance, nps_noise, preset


def _keys(n, seed=0):
    return [NoiseKey(seed, i, 0, 0) for i in range(n)]


def _variance_on(nps, shape, spacing):
    return grid_variance(nps.on_grid(shape, spacing), shape, spacing)


def _estimate(name="standard", sigma=20.0, shape=(64, 64), spacing=1.0, draws=100):
    """An NPS estimate of noise that has power up to the grid's Nyquist frequency (0.5 1/mm at 1 mm)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NPSTruncationWarning)  # the preset reaches past Nyquist on purpose
        noise = nps_noise(_keys(draws, seed=7), preset(name, sigma), shape, spacing)
    return estimate_nps(noise, spacing)


@pytest.mark.parametrize("source", [(32, 32), (31, 31), (32, 25)])
@pytest.mark.parametrize("target", [33, 64, 128, 256])
def test_flat_grid_nps_keeps_its_variance_on_finer_frequency_grids(source, target):
    flat = GridNPS(np.ones(source), (2.0, 2.0))
    ratio = _variance_on(flat, (target, target), (2.0, 2.0)) / flat.variance()
    assert abs(ratio - 1) < 0.005, f"{source} -> {target}: {100 * ratio:.1f}% of the variance"


@pytest.mark.parametrize("target", [33, 64, 128, 256])
def test_ramp_windowed_grid_nps_keeps_its_variance(target):
    # A sharp kernel cut by the grid: much of its power sits near Nyquist (0.25 1/mm at 2 mm).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NPSTruncationWarning)
        values = preset("sharp", 10.0, cutoff=0.3).on_grid((32, 32), (2.0, 2.0), half=False)
    grid = GridNPS(values, (2.0, 2.0))
    ratio = _variance_on(grid, (target, target), (2.0, 2.0)) / grid.variance()
    assert abs(ratio - 1) < 0.005, f"32 -> {target}: {100 * ratio:.1f}% of the variance"


def test_grid_nps_on_another_grid_is_zero_past_its_band_and_point_symmetric():
    grid = GridNPS(np.ones((32, 32)), (2.0, 2.0))
    finer = grid.on_grid((64, 64), (1.0, 1.0), half=False)  # Nyquist 0.5 > the source's 0.25 1/mm
    f = np.abs(np.fft.fftfreq(64, 1.0))
    w = np.where(f < 0.25, 1.0, np.where(f == 0.25, 0.5, 0.0))  # samples on the band's edge count half
    np.testing.assert_allclose(finer, w[:, None] * w[None, :], atol=1e-12)
    assert grid_variance(finer[:, :33], (64, 64), (1.0, 1.0)) == pytest.approx(grid.variance())
    odd = GridNPS(_estimate(shape=(31, 31), spacing=1.0, draws=20).nps, (1.0, 1.0)).on_grid((50, 50), (1.0, 1.0), half=False)
    np.testing.assert_allclose(odd, np.roll(np.flip(odd, (0, 1)), (1, 1), (0, 1)), rtol=1e-12)


def test_estimate_drawn_on_a_larger_image_has_the_estimated_sigma():
    est = estimate_nps(np.random.default_rng(3).normal(0.0, 10.0, (200, 32, 32)), 2.0)
    noise = nps_noise(_keys(200), est.as_grid(), (128, 128), 2.0)
    assert abs(noise.std() / math.sqrt(est.variance()) - 1) < 0.01


def test_radial_table_of_an_estimate_stands_for_the_variance_on_its_grid():
    est = _estimate()
    radial = est.as_radial()
    assert radial.variance() == pytest.approx(_variance_on(radial, (64, 64), (1.0, 1.0)), rel=1e-12)
    assert abs(radial.variance() / est.variance() - 1) < 0.005
    # Finer frequency sampling of the same band: nothing invented past the measured band, nothing lost.
    for shape, spacing in [((256, 256), (1.0, 1.0)), ((96, 160), (1.0, 1.0)), ((128, 128), (0.5, 0.5))]:
        assert abs(_variance_on(radial, shape, spacing) / radial.variance() - 1) < 0.005, (shape, spacing)


def test_from_sigma_on_an_estimated_radial_nps_draws_sigma_without_a_warning():
    est = _estimate()
    model = DoseModel.from_sigma(est.as_radial(), sigma_ref=12.0, mas_ref=100.0)
    assert model.sigma_at(100.0) == pytest.approx(12.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NPSTruncationWarning)
        noise = nps_noise(_keys(300), model.nps_at(100.0), (64, 64), 1.0)
        noise50 = nps_noise(_keys(300, seed=1), model.nps_at(50.0), (64, 64), 1.0)
    assert abs(noise.std() / 12.0 - 1) < 0.01
    assert abs(noise50.std() / (12.0 * math.sqrt(2)) - 1) < 0.01


def test_truncation_warning_counts_the_power_the_grid_generates():
    # Power inside the grid's square band but outside the Nyquist disk is generated: no warning.
    corner = RadialNPS([0.0, 0.51, 0.511], [1.0, 1.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", NPSTruncationWarning)
        corner.on_grid((64, 64), (1.0, 1.0))  # Nyquist 0.5: 3.9% past the disk, 0.7% past the square
    # A measured table on a coarser grid does lose power, and says how much.
    radial = _estimate().as_radial()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NPSTruncationWarning)
        lost = 1 - _variance_on(radial, (32, 32), (2.0, 2.0)) / radial.variance()
    with pytest.warns(NPSTruncationWarning) as caught:
        radial.on_grid((32, 32), (2.0, 2.0))
    said = float(str(caught[0].message).split("%")[0].split()[-1])
    assert abs(said - 100 * lost) < 1.0
