"""Two-proportion Z-test and DeLong's test: hand values, a brute-force reference, and calibration under H0."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2_contingency, norm

from audit.errors import InputError
from audit.metrics import auc, cmr_counts, cmr_z_test, delong_auc_variance, delong_test, two_proportion_z_test


def test_z_test_hand_values():
    # p1 = 0.3, p2 = 0.2, n = 100 each: p = 0.25, SE = sqrt(0.25 * 0.75 * 0.02) = 0.0612372,
    # Z = 0.1 / 0.0612372 = 1.632993, two-sided p = 2 (1 - Phi(1.632993)) = 0.102470.
    r = two_proportion_z_test(0.3, 100, 0.2, 100)
    assert r.z == pytest.approx(1.632993, abs=1e-6) and r.p_value == pytest.approx(0.102470, abs=1e-6)
    assert r.pooled == pytest.approx(0.25) and not r.rejects()
    # p1 = 0.5 of 40, p2 = 0.25 of 60: p = (20 + 15) / 100 = 0.35,
    # SE = sqrt(0.35 * 0.65 * (1/40 + 1/60)) = 0.0973610, Z = 0.25 / 0.0973610 = 2.567763 > 1.96.
    r = two_proportion_z_test(0.5, 40, 0.25, 60)
    assert r.z == pytest.approx(2.567763, abs=1e-6) and r.rejects()
    assert two_proportion_z_test(0.25, 60, 0.5, 40).z == pytest.approx(-r.z)


def test_z_squared_is_pearson_chi_square():
    x1, n1, x2, n2 = 37, 120, 52, 110
    r = two_proportion_z_test(x1 / n1, n1, x2 / n2, n2)
    chi2, p, _, _ = chi2_contingency([[x1, n1 - x1], [x2, n2 - x2]], correction=False)
    assert r.z**2 == pytest.approx(chi2, rel=1e-12) and r.p_value == pytest.approx(p, rel=1e-10)


def test_z_test_degenerate_and_vectorised():
    for p in (0.0, 1.0):  # pooled proportion 0 or 1: SE = 0 and p1 == p2; documented Z = 0, p = 1
        r = two_proportion_z_test(p, 30, p, 50)
        assert r.z == 0.0 and r.p_value == 1.0
    r = two_proportion_z_test(np.array([0.3, 0.0]), 100, np.array([0.2, 0.0]), np.array([100, 7]))
    assert r.z.shape == (2,) and r.z[0] == pytest.approx(1.632993, abs=1e-6) and r.z[1] == 0.0


def test_cmr_z_test_by_hand():
    c1 = np.array([[90, 0], [10, 50]])  # column 0: 10% of 100 inferences flip to 1; column 1 never flips
    c2 = np.array([[80, 0], [20, 0]])  # column 0: 20% of 100; class 1 never predicted clean -> column empty
    r = cmr_z_test(c1, c2)
    # Entry [1, 0]: p1 = 0.1, p2 = 0.2, p = 0.15, SE = sqrt(0.15 * 0.85 * 0.02) = 0.0504975, Z = -1.980295.
    assert r.z[1, 0] == pytest.approx(-1.980295, abs=1e-6) and r.z[0, 0] == pytest.approx(1.980295, abs=1e-6)
    assert np.all(np.isnan(r.z[:, 1])) and np.all(np.isnan(r.p_value[:, 1]))
    # Works directly on cmr_counts of two audits.
    clean = np.array([0, 0, 1])
    r = cmr_z_test(cmr_counts(clean, [[0, 1], [0, 0], [1, 1]], 2), cmr_counts(clean, [[0, 0], [0, 0], [1, 1]], 2))
    assert r.z.shape == (2, 2) and r.z[1, 1] == 0.0


def _delong_brute_force(y, scores):
    """Structural components from the O(m n) kernel psi (DeLong et al. 1988, eq. for V10, V01)."""
    y = np.asarray(y, bool)
    aucs, v10s, v01s = [], [], []
    for s in scores:
        x, w = s[y], s[~y]
        psi = (x[:, None] > w[None, :]) + 0.5 * (x[:, None] == w[None, :])
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    m, n = y.sum(), (~y).sum()
    s10 = np.array([[np.sum((a - a.mean()) * (b - b.mean())) / (m - 1) for b in v10s] for a in v10s])
    s01 = np.array([[np.sum((a - a.mean()) * (b - b.mean())) / (n - 1) for b in v01s] for a in v01s])
    return np.array(aucs), s10 / m + s01 / n


def test_delong_hand_case():
    # positives a = (0.9, 0.4), negatives a = (0.5, 0.1): psi = [[1, 1], [0, 1]] -> AUC_a = 3/4,
    #   V10 = (1, 1/2), V01 = (1/2, 1), S10 = S01 = 1/8 -> Var_a = 1/16 + 1/16 = 1/8.
    # positives b = (0.7, 0.3), negatives b = (0.7, 0.2): psi = [[1/2, 1], [0, 1]] -> AUC_b = 5/8,
    #   V10 = (3/4, 1/2), V01 = (1/4, 1), Var_b = 1/32 + 9/32 / 2 = 5/32.
    # Cov: S10_ab = 2 * (1/4)(1/8) = 1/16, S01_ab = 2 * (1/4)(3/8) = 3/16 -> Cov = 1/32 + 3/32 = 1/8.
    # Var(A - B) = 1/8 + 5/32 - 2/8 = 1/32; Z = (1/8) / sqrt(1/32) = 1/sqrt(2); p = 2 (1 - Phi(0.7071)) = 0.479500.
    y = [1, 1, 0, 0]
    r = delong_test(y, [0.9, 0.4, 0.5, 0.1], [0.7, 0.3, 0.7, 0.2])
    assert (r.auc_a, r.auc_b) == (0.75, 0.625)
    assert (r.var_a, r.var_b, r.covariance) == pytest.approx((1 / 8, 5 / 32, 1 / 8), abs=1e-15)
    assert r.z == pytest.approx(1 / math.sqrt(2), abs=1e-12) and r.p_value == pytest.approx(0.479500, abs=1e-6)
    one = delong_auc_variance(y, [0.9, 0.4, 0.5, 0.1])
    assert one.auc == 0.75 and one.variance == pytest.approx(1 / 8)
    # Wald interval 0.75 -+ 1.959964 * sqrt(1/8) = 0.75 -+ 0.692952, clipped at 1.
    assert one.low == pytest.approx(0.057048, abs=1e-6) and one.high == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_delong_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(12, 80))
    y = rng.random(n) < 0.4
    y[:2], y[2:4] = True, False
    a = np.round(y + rng.normal(0, 1.0, n), 1)  # rounding makes ties, within and across classes
    b = np.round(0.5 * a + rng.normal(0, 0.8, n), 1)  # correlated with a
    aucs, cov = _delong_brute_force(y, [a, b])
    r = delong_test(y.astype(int), a, b)
    assert (r.auc_a, r.auc_b) == pytest.approx(tuple(aucs), abs=1e-12)
    assert (r.var_a, r.var_b, r.covariance) == pytest.approx((cov[0, 0], cov[1, 1], cov[0, 1]), abs=1e-14)
    z = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert r.z == pytest.approx(z, rel=1e-10) and r.p_value == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9)
    assert r.auc_a == pytest.approx(auc(y, a), abs=1e-12)
    assert delong_auc_variance(y, b).variance == pytest.approx(cov[1, 1], abs=1e-14)


def test_delong_is_calibrated_under_the_null():
    # Two exchangeable, correlated scores of equal quality: about 5% of tests reject at 0.05.
    rng = np.random.default_rng(5)
    reps, n = 600, 80
    y = np.arange(n) % 2
    rejections = 0
    for _ in range(reps):
        common = y + rng.normal(0, 1.2, n)
        r = delong_test(y, common + rng.normal(0, 0.7, n), common + rng.normal(0, 0.7, n))
        rejections += r.p_value < 0.05
    assert 0.025 <= rejections / reps <= 0.08, rejections / reps


def test_delong_degenerate_cases():
    y = [1, 1, 0, 0, 1, 0]
    s = [0.9, 0.8, 0.3, 0.2, 0.4, 0.35]
    r = delong_test(y, s, s)  # identical scores: no difference, no variance of the difference
    assert r.z == 0.0 and r.p_value == 1.0
    r = delong_test(y, s, [2 * v for v in s])  # same ranks
    assert r.z == 0.0 and r.p_value == 1.0


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: two_proportion_z_test(1.2, 10, 0.5, 10), "p1: expected finite values in [0, 1]"),
        (lambda: two_proportion_z_test(0.2, 0, 0.5, 10), "n1, n2: expected trial counts >= 1"),
        (lambda: cmr_z_test(np.ones((2, 2)), np.ones((3, 3))), "counts_1, counts_2: expected two (C, C)"),
        (lambda: delong_test([1, 0, 1, 0], [1, 2, 3, 4], [1, 2, 3]), "scores_b: expected shape (4,)"),
        (lambda: delong_test([1, 0, 0, 0], [1, 2, 3, 4], [1, 2, 3, 4]), "at least 2 positive(s) (1)"),
        (lambda: delong_auc_variance([1, 0, 2, 0], [1, 2, 3, 4]), "labels: expected binary values"),
        (lambda: delong_auc_variance([1, 0, 1, 0], [1, 2, np.nan, 4]), "scores: expected finite scores"),
    ],
)
def test_bad_input_names_the_argument(call, fragment):
    with pytest.raises(InputError) as info:
        call()
    assert fragment in str(info.value)
