"""Stress noises (study 3): measured statistics match the request."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import NoiseKey, gaussian_noise, nps_noise, poisson_noise, preset, uniform_noise
from tests.conftest import to_host

KEYS = [NoiseKey(4, i, 0, 0) for i in range(64)]


def test_uniform_bounds_and_variance(xp):
    u = to_host(uniform_noise(KEYS, (64, 64), 30.0, xp=xp)).astype(np.float64)
    assert u.min() >= -30.0 and u.max() < 30.0
    assert abs(u.var() / (60.0**2 / 12) - 1) < 0.01
    assert abs(u.mean()) < 0.1


def test_gaussian_is_white_with_the_asked_sigma(xp):
    g = to_host(gaussian_noise(KEYS, (64, 64), 12.0, xp=xp)).astype(np.float64)
    assert abs(g.std() / 12.0 - 1) < 0.01
    z = (g - g.mean()) / g.std()
    assert abs(np.mean(z**3)) < 0.05 and abs(np.mean(z**4) - 3) < 0.1
    lag1 = np.corrcoef(g[:, :, :-1].ravel(), g[:, :, 1:].ravel())[0, 1]
    assert abs(lag1) < 0.01


def test_poisson_noise_variance_follows_counts():
    lam, lo, hi = 400.0, -1000.0, 1000.0
    img = np.broadcast_to(np.linspace(lo, hi, 64)[None, None, :], (64, 64, 64)).copy()
    n = poisson_noise(KEYS, img, lam).astype(np.float64)
    counts = (img[0, 0] - lo) / (hi - lo) * lam  # expected count per column
    var_hu = n.var(axis=(0, 1))
    expected = counts * ((hi - lo) / lam) ** 2
    cols = counts > 50
    assert np.all(np.abs(var_hu[cols] / expected[cols] - 1) < 0.1)
    assert abs(n.mean()) < 1.0  # unbiased on average


def test_bad_stress_arguments():
    with pytest.raises(ValueError, match="amplitude"):
        uniform_noise(KEYS, (8, 8), 0.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_noise(KEYS, (8, 8), -1.0)
    with pytest.raises(ValueError, match="B = 64"):
        poisson_noise(KEYS, np.zeros((2, 8, 8)), 100.0)
    with pytest.raises(ValueError, match="no intensity range"):
        poisson_noise(KEYS[:1], np.zeros((1, 8, 8)), 100.0)


def test_bad_generator_arguments():
    nps = preset("soft", 5.0)
    with pytest.raises(ValueError, match="method"):
        nps_noise(KEYS, nps, (8, 8), 0.5, method="fourier")
    with pytest.raises(ValueError, match="z_nps"):
        nps_noise(KEYS, nps, (8, 8), 0.5, z_nps=1.0)
    with pytest.raises(ValueError, match="spacing"):
        nps_noise(KEYS, nps, (8, 8, 8), (1.0, 0.5))
    with pytest.raises(ValueError, match="nps"):
        nps_noise(KEYS, "standard", (8, 8), 0.5)
    with pytest.raises(ValueError, match="xp"):
        nps_noise(KEYS, nps, (8, 8), 0.5, xp="jax")
