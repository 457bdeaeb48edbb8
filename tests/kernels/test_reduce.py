"""Dose reduction on scans that carry noise: the added-variance law, keyed insertion, the scan's own noise, size.

The key test is a projection-domain truth (``tests/kernels/ct_sim.py``): a water phantom scanned with Poisson
counts plus electronic noise and reconstructed by FBP at full and at quarter dose; reducing the full-dose images to
25% with their own, single-scan noise estimates must reproduce the quarter-dose images' pixel sigma within 5% and
radial NPS within 10%.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kernels import (
    DoseModel,
    KernelError,
    NoiseKey,
    added_variance_factor,
    estimate_scan_noise,
    grid_variance,
    noise_from_repeated_scans,
    nps_noise,
    preset,
    radial_average,
    reduction_noise,
    sigma_after,
    size_noise_factor,
    water_equivalent_diameter,
)
from kernels.reduce import reduction_noise_rows as kernels_rows
from kernels.scan_noise import repeated_scan_noise
from tests.kernels.ct_sim import Scanner, disk_mask, dose_truth, water_phantom


def test_added_variance_is_what_the_lower_dose_adds():
    # Quantum noise only: D0/D - 1 whatever the reference dose.
    assert np.allclose(added_variance_factor(50, 200), 3.0)
    assert np.allclose(added_variance_factor([100, 50, 20], 200), [1.0, 3.0, 9.0])
    assert np.allclose(added_variance_factor(0.25, 1.0, mas_ref=7.0), 3.0)
    # With an electronic term the factor is the dose model's variance ratio minus one.
    model = DoseModel(preset("standard", 10.0), mas_ref=200, electronic_fraction=0.2)
    ratio = model.factor(40) / model.factor(160)
    assert np.allclose(added_variance_factor(40, 160, mas_ref=200, electronic_fraction=0.2), ratio - 1)
    assert np.allclose(sigma_after(10.0, 40, 160, mas_ref=200, electronic_fraction=0.2), 10 * math.sqrt(ratio))


@pytest.mark.parametrize("dose, acquired", [(200, 200), (250, 200), ([50, 210], [100, 200])])
def test_a_dose_at_or_above_the_acquired_one_is_refused_naming_the_series(dose, acquired):
    with pytest.raises(KernelError) as err:
        added_variance_factor(dose, acquired, name="series 1.2.3")
    msg = str(err.value)
    assert "series 1.2.3" in msg and "acquired dose 200" in msg and "\n" not in msg


def test_insertion_is_keyed_and_matches_the_scaled_nps():
    nps0 = preset("standard", 8.0, cutoff=0.6)
    keys = [NoiseKey(3, i, 250, 0) for i in range(4)]
    a = reduction_noise(keys, nps0, (64, 64), 0.7, 50, 200)
    b = reduction_noise(keys[2:3], nps0, (64, 64), 0.7, 50, 200)
    assert np.array_equal(a[2], b[0])  # one key, one draw, whatever the batch
    c = nps_noise(keys, nps0.scaled(3.0), (64, 64), 0.7)
    assert np.allclose(a, c, rtol=1e-5, atol=1e-5)  # the white noise of that key, as for all noise; only the filter differs
    # sigma0 rescales the scan's NPS to its measured level on this grid.
    d = reduction_noise(keys, nps0, (64, 64), 0.7, 50, 200, sigma0=4.0)
    grid = ((64, 64), (0.7, 0.7))
    assert np.allclose(d, a * math.sqrt(16 / grid_variance(nps0.on_grid(*grid), *grid)), rtol=1e-4, atol=1e-4)


def test_per_slice_doses_give_per_slice_variance():
    nps0 = preset("soft", 1.0, cutoff=0.5)
    acquired = np.array([100.0, 200.0, 300.0, 400.0])
    sigma0 = np.array([12.0, 10.0, 9.0, 8.0])
    keys = [NoiseKey(1, i, 500, 0) for i in range(300)]
    noise = reduction_noise(keys, nps0, (4, 32, 32), (2.0, 1.0, 1.0), 0.5 * acquired, acquired, sigma0=sigma0)
    measured = noise.std(axis=(0, 2, 3))
    assert np.allclose(measured, sigma0 * 1.0, rtol=0.03)  # halving the dose doubles the variance: add sigma0^2
    with pytest.raises(KernelError, match="slice 2"):
        reduction_noise(keys[:1], nps0, (4, 32, 32), 1.0, [50, 100, 310, 200], acquired, name="s")


def _body(n: int, sp: float) -> np.ndarray:
    y, x = (np.mgrid[:n, :n] - n / 2 + 0.5) * sp
    img = np.full((n, n), -1000.0)
    img[(x / 150) ** 2 + (y / 110) ** 2 <= 1] = -90  # fat
    img[(x / 135) ** 2 + (y / 95) ** 2 <= 1] = 40  # muscle and organs
    img[((x - 60) / 40) ** 2 + ((y + 10) / 50) ** 2 <= 1] = 60  # liver
    img[((x + 55) / 35) ** 2 + ((y + 5) / 45) ** 2 <= 1] = -850  # lung
    img[(x / 12) ** 2 + ((y - 70) / 12) ** 2 <= 1] = 700  # spine
    img[((x - 10) / 8) ** 2 + ((y + 30) / 8) ** 2 <= 1] = 150  # vessel
    return img


@pytest.mark.parametrize("sigma", [10.0, 40.0])
def test_uniform_region_estimator_recovers_a_known_sigma0(sigma):
    sp, n = 0.8, 256
    body = _body(n, sp)
    nps = preset("standard", 1.0, cutoff=0.6)
    scale = sigma / math.sqrt(grid_variance(nps.on_grid((n, n), (sp, sp)), (n, n), (sp, sp)))
    errors = []
    for s in range(4):
        noise = nps_noise([NoiseKey(11, s, 0, 0)], nps, (n, n), sp)[0] * scale
        est = estimate_scan_noise(body + noise, (sp, sp))
        errors.append(est.sigma / sigma - 1)
        assert est.ci[0] < est.sigma < est.ci[1] and est.ci[1] - est.ci[0] < 0.1 * sigma
        assert est.n_rois >= 10 and est.rois.shape == (est.n_rois, 3)
        r = est.roi_size
        for _, y, x in est.rois:  # every ROI lies in soft tissue: no air, lung, bone or vessel inside
            patch = body[y : y + r, x : x + r]
            assert patch.min() >= -100 and patch.max() <= 100
        assert est.summary().sigma == pytest.approx(est.sigma, rel=1e-9)
    assert max(abs(e) for e in errors) < 0.05, errors


def test_estimator_refuses_a_scan_without_uniform_regions():
    air = np.full((64, 64), -1000.0) + np.random.default_rng(0).normal(0, 5, (64, 64))
    with pytest.raises(KernelError, match="series X: found 0 uniform"):
        estimate_scan_noise(air, 0.7, name="series X")


def test_water_equivalent_diameter_of_water_and_half_density_disks():
    sp, n = 0.5, 512
    y, x = (np.mgrid[:n, :n] - n / 2 + 0.5) * sp
    disk = np.where(x**2 + y**2 <= 100.0**2, 0.0, -1000.0)  # water, radius 100 mm
    dw = water_equivalent_diameter(np.stack([disk, disk / 2 - 500]), sp)  # -500 HU: half the density of water
    assert dw.diameter_mm[0] == pytest.approx(200.0, rel=0.005)
    assert not dw.truncated.any()
    cut = water_equivalent_diameter(np.where(x**2 + y**2 <= 140.0**2, 0.0, -1000.0), sp)
    assert cut.truncated[0]  # the field of view cuts the patient: flagged
    lungs = disk.copy()
    lungs[(x + 40) ** 2 + y**2 <= 30.0**2] = -800  # holes inside the body count (filled), at their density
    assert water_equivalent_diameter(lungs, sp).diameter_mm[0] < 200.0


def test_size_law_is_the_stated_exponential():
    assert np.allclose(size_noise_factor([200, 300], 200), [1.0, math.exp(0.02 * 100 / 2)])
    with pytest.raises(KernelError):
        size_noise_factor(-1, 200)


@pytest.fixture(scope="module")
def truth():
    return dose_truth(repeats=48, seed=0)


def _radial_nps(noise: np.ndarray, positions, roi: int, spacing: float):
    rois = np.stack([noise[:, y : y + roi, x : x + roi] for y, x in positions], 1).reshape(-1, roi, roi)
    rois = rois - rois.mean(axis=(1, 2), keepdims=True)
    power = np.mean(np.abs(np.fft.fft2(rois)) ** 2, axis=0) * spacing**2 / roi**2
    return radial_average(power, (spacing, spacing), bin_width=2 / (roi * spacing))


def test_projection_domain_truth_full_to_quarter_dose(truth):
    """Reduce each full-dose FBP image to 25% with its own single-scan noise estimate and the electronic term."""
    sp = truth.scanner.pixel
    shape = truth.full.shape[1:]
    ests = [estimate_scan_noise(img, sp, roi_mm=32) for img in truth.full]
    noise = np.concatenate([
        reduction_noise([NoiseKey(0, r, 250, 0)], est.grid_nps(), shape, sp, 0.25, 1.0, sigma0=est.sigma, mas_ref=1.0,
                        electronic_fraction=truth.electronic_fraction)
        for r, est in enumerate(ests)])
    reduced = noise_from_repeated_scans(truth.full + noise)
    quarter = noise_from_repeated_scans(truth.quarter)
    # Compare where the estimator measures (the ROIs it chose in at least half of the scans).
    roi = ests[0].roi_size
    pos, count = np.unique(np.concatenate([e.rois for e in ests])[:, 1:], axis=0, return_counts=True)
    pos = pos[count >= len(ests) / 2]
    region = np.zeros(shape, dtype=bool)
    for y, x in pos:
        region[y : y + roi, x : x + roi] = True
    sigma_err = reduced[:, region].std() / quarter[:, region].std() - 1
    f, s_q, _ = _radial_nps(quarter, pos, roi, sp)
    _, s_r, _ = _radial_nps(reduced, pos, roi, sp)
    band = s_q > 0.05 * s_q.max()
    nps_err = np.abs(s_r[band] / s_q[band] - 1)
    print(f"sigma error {100 * sigma_err:+.2f}%, radial NPS errors {np.round(100 * nps_err, 1)} % at {np.round(f[band], 3)}")
    assert abs(sigma_err) < 0.05
    assert nps_err.max() < 0.10
    # Adding the whole quarter-dose noise instead (the studies' protocol) overshoots: the scan's noise counted twice.
    whole = noise * math.sqrt(1 / 0.25 / (1 / 0.25 - 1))
    overshoot = noise_from_repeated_scans(truth.full + whole)[:, region].std() / quarter[:, region].std() - 1
    assert overshoot > 0.05
    # Ignoring the electronic term (e = 0) undershoots the quarter dose in this scanner.
    assert truth.electronic_fraction > 0.03


def test_tube_current_modulation_per_slice_sigma():
    """Slices scanned at different tube currents: per-slice doses from the headers, per-slice sigma0 from the scan."""
    sc = Scanner()
    p = sc.line_integrals(water_phantom(60.0))
    rng = np.random.default_rng(5)
    i0 = np.array([1.0e4, 2.0e4, 4.0e4])  # photons per ray ~ tube current
    repeats = 16
    full = np.stack([sc.scan(p, i, 6.0, repeats, rng) for i in i0], axis=1)  # (R, nz, n, n)
    quarter = np.stack([sc.scan(p, i / 4, 6.0, repeats, rng) for i in i0], axis=1)
    mas = 100.0 * i0 / i0.mean()
    q, el = sc.noise_components(p, i0[1], 6.0, 6, rng)  # the electronic share at the middle slice's dose
    inside = disk_mask(sc, 45.0)
    e = float(el[:, inside].var() / (q[:, inside].var() + el[:, inside].var()))
    out = []
    for r in range(repeats):
        est = estimate_scan_noise(full[r], (2.0, 1.0, 1.0), roi_mm=32)
        assert np.all(np.isfinite(est.slice_sigma))
        out.append(reduction_noise([NoiseKey(0, r, 250, 0)], est.grid_nps(), full.shape[1:], (2.0, 1.0, 1.0),
                                   0.25 * mas, mas, sigma0=est.slice_sigma, mas_ref=mas[1], electronic_fraction=e)[0])
    reduced = noise_from_repeated_scans(full + np.stack(out))
    truth = noise_from_repeated_scans(quarter)
    ratio = reduced[:, :, inside].std(axis=(0, 2)) / truth[:, :, inside].std(axis=(0, 2))
    print("per-slice sigma ratio", np.round(ratio, 3))
    assert np.all(np.abs(ratio - 1) < 0.10)


def test_repeated_phantom_scans_give_sigma_and_nps():
    sc = Scanner()
    p = sc.line_integrals(water_phantom(60.0))
    rng = np.random.default_rng(2)
    est = repeated_scan_noise(sc.scan(p, 2e4, 0.0, 12, rng), sc.pixel, roi_mm=32)
    assert est.ci[0] < est.sigma < est.ci[1]
    other = noise_from_repeated_scans(sc.scan(p, 2e4, 0.0, 48, rng))  # an independent, larger set of repeats
    r = est.roi_size
    truth = math.sqrt(np.mean([np.mean(other[:, y : y + r, x : x + r] ** 2) for _, y, x in est.rois]))
    assert est.sigma == pytest.approx(truth, rel=0.05)
    assert est.summary().sigma == pytest.approx(est.sigma, rel=1e-9)


@pytest.mark.parametrize("shape, spacing, z", [((48, 40), (0.7, 0.7), None), ((4, 24, 24), (2.0, 1.0, 1.0), None),
                                               ((4, 24, 24), (2.0, 1.0, 1.0), 3.0)])
def test_rows_of_different_scans_are_bit_identical_to_one_call_each(shape, spacing, z):
    a, b = preset("standard", 6.0, cutoff=0.5), preset("soft", 9.0, cutoff=0.5)
    keys = [NoiseKey(4, i, 500, k) for i in range(3) for k in range(2)]
    nz = shape[0] if len(shape) == 3 else 1
    nps = [a, a, b, b, a, a]
    acquired = [np.full(nz, 200.0), np.full(nz, 200.0), np.linspace(100, 300, nz), np.linspace(100, 300, nz),
                np.full(nz, 150.0), np.full(nz, 150.0)]
    dose = [0.5 * d for d in acquired]
    sigma0 = [None, None, np.linspace(8, 12, nz), np.linspace(8, 12, nz), 5.0, 5.0]
    sigma0 = [s if s is not None else 7.0 for s in sigma0]
    if len(shape) == 2:
        acquired, dose = [d[:1] for d in acquired], [d[:1] for d in dose]
        sigma0 = [np.atleast_1d(s)[:1] for s in sigma0]
    batch = kernels_rows(keys, nps, shape, spacing, dose, acquired, sigma0=sigma0, z_nps=z, workers=2)
    for r, key in enumerate(keys):
        one = reduction_noise([key], nps[r], shape, spacing, dose[r], acquired[r], sigma0=sigma0[r], z_nps=z)
        assert np.array_equal(batch[r], one[0]), r


def test_reduction_over_xp_matches_numpy(xp):
    """The same keys give the same noise on NumPy and on CuPy (to float32 rounding), per-slice gains included."""
    nps0 = preset("standard", 5.0, cutoff=0.5)
    keys = [NoiseKey(2, i, 250, 0) for i in range(3)]
    acquired = np.array([100.0, 200.0, 300.0])
    ref = reduction_noise(keys, nps0, (3, 32, 32), 1.0, 0.25 * acquired, acquired, sigma0=[6.0, 5.0, 4.0])
    out = reduction_noise(keys, nps0, (3, 32, 32), 1.0, 0.25 * acquired, acquired, sigma0=[6.0, 5.0, 4.0], xp=xp)
    host = out.get() if hasattr(out, "get") else np.asarray(out)
    assert host.dtype == np.float32 and np.allclose(host, ref, rtol=1e-4, atol=1e-4)
