"""NPS-projected gradient ascent (study 1): perturbations keep the dose's noise power and beat random NPS noise.

The default projection (``per_slice_power``) gives every slice of every sample exactly the variance of noise at
the dose and caps the NPS-whitened norm at a quantile of random noise's; study 1's eq. 2 (``study1_eq2``, mean
magnitude over all samples) and the former per-sample magnitude form stay available and keep their 4/pi excess
(issue #14).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.attacks import NPSAscent, Target, run_attack
from audit.attacks.nps_ascent import (
    SpectrumGrid,
    angle_averaged_magnitude,
    project_power,
    project_to_nps,
    radial_bins,
    target_magnitude,
    whitened_bound,
    whitened_norm,
)
from audit.errors import ConfigError
from kernels import DoseModel, grid_variance, nps_noise, preset
from tests.audit.attacks import nets

SPACING = (0.5, 0.5)
K = 3


def _nps():
    """Noise at 100 mAs (12 HU pixel sigma)."""
    return DoseModel(preset("standard", 12.0, cutoff=0.8), 100.0).nps_at(100.0)


def _dose_variance(shape=nets.SHAPE, spacing=SPACING) -> float:
    """Pixel variance (HU^2) of noise at the dose on this grid (the NPS summed over the grid's frequencies)."""
    return grid_variance(_nps().on_grid(shape, spacing), shape, spacing)


def _random(n: int, k: int, seed: int = 5) -> np.ndarray:
    """(n, k, *SHAPE) random NPS noise at the dose, keyed draws."""
    keys = [(seed, i, 100, j) for i in range(n) for j in range(k)]
    return nps_noise(keys, _nps(), nets.SHAPE, SPACING).reshape(n, k, *nets.SHAPE)


def _bin_power(p: np.ndarray, shape, spacing) -> np.ndarray:
    """Mean |F[p]|^2 per radial bin (over the bin's points and every leading axis)."""
    bins = radial_bins(shape, spacing).ravel()
    a = (np.abs(np.fft.fft2(np.asarray(p, np.float64))) ** 2).reshape(-1, bins.size).mean(0)
    return np.bincount(bins, a) / np.bincount(bins)


@pytest.fixture(scope="module")
def hu():
    return nets.images(32, spread_hu=6.0, seed=8)


@pytest.fixture(scope="module")
def default_run(fragile, hu):
    target = Target.from_model(fragile, parity_hu=hu[:4])
    attack = NPSAscent(target, nps=_nps(), spacing=SPACING, restarts=K, iterations=10, hu_range=(-3000.0, 3000.0))
    res = run_attack(attack, fragile, hu, seed=2, batch_size=16)
    return attack, res, attack.extra_report(res)


def test_default_projection_gives_each_sample_the_dose_variance_and_power_spectrum(fragile, hu, default_run):
    attack, res, extra = default_run
    assert attack.projection == "per_slice_power" and res.k == K
    sigma2 = _dose_variance()
    rand = _random(len(hu), 16)
    rand_var = (rand.astype(np.float64) ** 2).mean((-1, -2))  # (n, 16)
    assert abs(rand_var.mean() / sigma2 - 1) <= 0.05  # the reference: random noise at the dose has this variance
    # every candidate of every sample: variance within 5% of the dose's (here it is exact: no HU clip is hit)
    rms = np.asarray(extra["perturbation_rms_hu"])
    assert rms.shape == (len(hu), K)
    np.testing.assert_allclose(rms, res.l2 / np.sqrt(np.prod(nets.SHAPE)), rtol=1e-5)
    assert np.all(rms ** 2 <= 1.05 * sigma2) and np.all(rms ** 2 >= 0.95 * sigma2), (rms ** 2 / sigma2)
    assert np.median(rms) <= 1.05 * np.sqrt(np.median(rand_var))
    # ... and so is the reported random reference on the same samples
    ref = np.asarray(extra["random_rms_hu"])
    assert ref.shape == (len(hu),) and abs(np.median(ref) ** 2 / sigma2 - 1) <= 0.1
    assert extra["max_rms_ratio"] <= 1.25 and abs(extra["median_rms_ratio"] - 1) <= 0.1
    assert res.notes["perturbation_rms_hu"] == pytest.approx(rms.mean())
    assert res.notes["random_rms_hu"] == pytest.approx(ref.mean())
    # the power per radial bin of each candidate is the dose's (the variance is its sum)
    cands = attack.perturb(torch.from_numpy(hu), torch.Generator().manual_seed(2)).values.numpy()
    t = target_magnitude(_nps(), nets.SHAPE, SPACING) ** 2
    bins = radial_bins(nets.SHAPE, SPACING).ravel()
    tb = np.bincount(bins, t.ravel()) / np.bincount(bins)
    live = tb > 1e-3 * tb.max()
    for i in range(len(hu)):
        for k in range(K):
            pb = _bin_power(cands[i, k] - hu[i], nets.SHAPE, SPACING)
            assert np.abs(pb[live] / tb[live] - 1).max() <= 1e-3
            assert np.all(pb[~live] <= 1e-3 * tb.max())


def test_ascent_flips_more_than_random_noise_at_the_same_dose(fragile, hu, default_run):
    """Optimised vs random NPS noise at 100 mAs, same samples, same K: the ascent flips more."""
    _, res, _ = default_run
    clean = fragile.decide(hu)
    rand = _random(len(hu), K, seed=2)
    rand_flips = np.stack([fragile.head.flipped(clean, fragile.decide(hu + rand[:, k]))[0] for k in range(K)], 1)
    s = res.summary()
    assert s["san"] >= rand_flips.any(1).sum() + 3, (s["san"], rand_flips.any(1).sum())
    assert res.deployed_flips.sum() > rand_flips.sum()
    assert s["sar_mean"] == np.mean(res.deployed_flips.sum(1) / K)
    # the score moves further than under random noise, too
    adv_move = np.abs(res.adv_scores - res.clean_scores)
    rand_move = np.abs(fragile.decide(hu + rand[:, 0]).scores - clean.scores)
    assert np.median(adv_move) >= np.median(rand_move)


def test_whitened_norm_cap_is_the_quantile_of_random_noise_and_is_enforced(default_run):
    grid = SpectrumGrid(_nps(), nets.SHAPE, SPACING)
    d = grid.dof(1)
    bound = whitened_bound(0.99, d)
    # random noise at the dose: whitened norm 1 on average, above the 0.99 bound about 1% of the time
    w = whitened_norm(torch.from_numpy(_random(500, 1, seed=11)[:, 0]), grid=grid).numpy()
    assert abs(w.mean() - 1) <= 0.01
    assert 0.0 < (w > bound).mean() <= 0.03
    # a perturbation with the dose's power per bin but all of it on the weakest frequencies of each bin
    x = torch.from_numpy(_random(4, 1, seed=12)[:, 0]).double()
    weak = (grid.power < 0.6 * grid.bin_power[grid.bins]) & grid.support
    skew = torch.fft.ifft2(torch.fft.fft2(x) * (weak.reshape(nets.SHAPE) * 1.0 + 0.05)).real
    loose = project_power(skew, grid=grid)
    assert float(whitened_norm(loose, grid=grid).min()) > 1.1 * bound
    q = project_power(skew, grid=grid, whitened_quantile=0.99)
    wq = whitened_norm(q, grid=grid)
    np.testing.assert_allclose(wq.numpy(), bound, rtol=1e-6)
    # the cap keeps every bin's power, so the variance stays the dose's; projecting again changes nothing
    for i in range(4):
        np.testing.assert_allclose(_bin_power(q[i], nets.SHAPE, SPACING), _bin_power(loose[i], nets.SHAPE, SPACING),
                                   rtol=1e-9, atol=1e-9 * float(grid.bin_power.max()))
    np.testing.assert_allclose((q ** 2).mean((-1, -2)).numpy(), _dose_variance(), rtol=1e-9)
    np.testing.assert_allclose(project_power(q, grid=grid, whitened_quantile=0.99).numpy(), q.numpy(), atol=1e-9)
    # the attack's candidates all lie within the cap it reports
    _, _, extra = default_run
    assert extra["whitened_quantile"] == 0.99 and extra["whitened_bound"] == pytest.approx(bound)
    assert np.max(extra["whitened_norm"]) <= bound * (1 + 1e-6)
    assert abs(np.median(extra["random_whitened_norm"]) - 1) <= 0.05


def test_power_projection_per_slice_and_per_sample_on_volumes():
    """Volumes (B, D, ny, nx), however uneven the input: per slice, every slice has the dose's variance; per sample,
    every sample (its slices pooled) has it, while one slice may carry the others' power."""
    shape, spacing = (20, 28), (0.7, 0.6)
    nps = preset("standard", 20.0, cutoff=0.5 / 0.7)
    gen = torch.Generator().manual_seed(3)
    p = torch.randn(3, 4, *shape, generator=gen) * torch.tensor([1.0, 30.0, 0.2, 5.0]).view(1, 4, 1, 1)
    var = grid_variance(nps.on_grid(shape, spacing), shape, spacing)
    per_slice = project_power(p, nps, spacing, per_slice=True)
    np.testing.assert_allclose((per_slice.double() ** 2).mean((2, 3)).numpy(), var, rtol=1e-5)
    per_sample = project_power(p, nps, spacing)
    slices = (per_sample.double() ** 2).mean((2, 3)).numpy()
    np.testing.assert_allclose(slices.mean(1), var, rtol=1e-5)
    assert slices.max() > 3 * var  # the pooled form lets slice 1 take most of the sample's power
    assert per_sample.dtype == p.dtype and per_slice.shape == p.shape
    # the whitened-norm cap per slice: every slice of the result within sqrt(chi2.ppf(q, d) / d)
    grid = SpectrumGrid(nps, shape, spacing)
    q = project_power(p, grid=grid, per_slice=True, whitened_quantile=0.99)
    w = whitened_norm(q.reshape(-1, *shape), grid=grid)
    assert float(w.max()) <= whitened_bound(0.99, grid.dof(1)) * (1 + 1e-6)
    np.testing.assert_allclose((q.double() ** 2).mean((2, 3)).numpy(), var, rtol=1e-5)


def test_study1_eq2_keeps_the_studys_looser_constraint(fragile, hu):
    """The study's form (mean magnitude over angle, slices and all samples) still inflates the variance by ~4/pi
    for a random start, and lets the ascent give some samples more power than others."""
    target = Target.from_model(fragile, parity_hu=hu[:4])
    attack = NPSAscent(target, nps=_nps(), spacing=SPACING, restarts=2, iterations=10, hu_range=(-3000.0, 3000.0),
                       projection="study1_eq2")
    sigma2 = _dose_variance()
    start = attack.random_start((64, *nets.SHAPE), torch.Generator().manual_seed(4), torch.float32)
    ratio = float((start.double() ** 2).mean()) / sigma2
    assert 1.15 < ratio < 1.4, ratio  # 4/pi = 1.27
    # the study's eq. 5: the mean magnitude per bin over all samples of the batch matches sqrt(S N / (dx dy))
    gen = torch.Generator().manual_seed(2)
    cands = attack.perturb(torch.from_numpy(hu), gen).values
    t = target_magnitude(_nps(), nets.SHAPE, SPACING)
    bins = radial_bins(nets.SHAPE, SPACING).ravel()
    tb = np.bincount(bins, t.ravel()) / np.bincount(bins)
    b, m = angle_averaged_magnitude(cands[:, 0] - torch.from_numpy(hu), SPACING)
    live = tb[b] > 1e-3 * tb.max()
    assert np.abs(m[live] / tb[b][live] - 1).max() <= 0.01
    res = run_attack(attack, fragile, hu, seed=2, batch_size=32)
    rms = np.asarray(attack.extra_report(res)["perturbation_rms_hu"])
    assert np.median(rms) ** 2 > 1.15 * sigma2 and rms.max() / rms.min() > 1.1
    assert res.notes["rms_ratio"] > 1.1
    # the former per-sample magnitude form: its start is exactly the old projection of the same white noise
    old = NPSAscent(target, nps=_nps(), spacing=SPACING, projection="per_sample_magnitude")
    x = torch.randn(8, *nets.SHAPE, generator=torch.Generator().manual_seed(6))
    np.testing.assert_array_equal(old.random_start(x.shape, torch.Generator().manual_seed(6), torch.float32).numpy(),
                                  project_to_nps(x, _nps(), SPACING, per_sample=True).numpy())


def test_projection_options_are_checked(fragile, hu):
    target = Target.from_model(fragile, parity_hu=hu[:4])
    kw = {"nps": _nps(), "spacing": SPACING}
    with pytest.raises(ConfigError, match="projection"):
        NPSAscent(target, projection="magnitude", **kw)
    with pytest.raises(ConfigError, match="whitened_quantile"):
        NPSAscent(target, projection="study1_eq2", whitened_quantile=0.99, **kw)
    with pytest.raises(ConfigError, match="whitened_quantile"):
        NPSAscent(target, whitened_quantile=0.2, **kw)
    assert NPSAscent(target, projection="study1_eq2", **kw).whitened_quantile == 1.0
    d = NPSAscent(target, whitened_quantile=1, **kw).describe()
    assert d["projection"] == "per_slice_power" and d["whitened_quantile"] == 1.0
    assert NPSAscent(target, projection="per_sample_power", **kw).whitened_quantile == 0.99
