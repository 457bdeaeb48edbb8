"""Paired, cluster-aware SAR comparison: hand values, exactness, and calibration against study 2's Z-test.

The simulations plant per-sample flip probabilities and draw K flips per sample
for two models on the *same* keyed draws: half of model B's draws reuse model
A's uniforms (same noise, correlated flips), half are fresh. Everything is
vectorised over (simulations, samples, draws); only the tests loop over
simulated comparisons.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import binomtest, ttest_1samp

from audit.errors import InputError
from audit.metrics import (
    PAIRED_METHODS,
    paired_noninferiority,
    paired_sar_test,
    two_proportion_z_test,
)
from audit.metrics import paired as paired_module

N, K, ALPHA = 40, 50, 0.05
# Heterogeneous fragility: per-sample flip probability ~ Beta(0.5, 9.5), mean 0.05, most images
# rarely flip and a few flip often (between-sample SD 0.066 against a mean of 0.05).
BETA = (0.5, 9.5)


def _keyed_draws(rng, p_a, p_b, shared=0.5):
    """Flip counts (S, N) of two models whose flip probabilities are p_a, p_b (S, N), on the same keyed draws."""
    shape = p_a.shape + (K,)
    u = rng.random(shape)
    u_b = np.where(rng.random(shape) < shared, u, rng.random(shape))
    return (u < p_a[..., None]).sum(-1), (u_b < p_b[..., None]).sum(-1)


def _rate(results, attr="rejects"):
    return float(np.mean([getattr(r, attr)(ALPHA) for r in results]))


def _not_above(rejections: int, sims: int, level: float = ALPHA) -> bool:
    """One-sided binomial check: no evidence (at 1%) that the true rejection rate exceeds ``level``."""
    return binomtest(rejections, sims, level, alternative="greater").pvalue > 0.01


def _brute_force_p(d):
    """Two-sided sign-flip p-value over all 2^N sign patterns (N small)."""
    d = np.asarray(d, float)
    s = np.array([np.dot(signs, np.abs(d)) for signs in itertools.product((-1, 1), repeat=d.size)])
    return float(np.mean(np.abs(s) >= abs(d.sum()) - 1e-12))


# --- hand values and exactness --------------------------------------------------------------------


def test_hand_example_both_methods():
    a, b = [3, 0, 5, 1, 4, 2], [0, 0, 1, 1, 0, 2]  # d * K = [3, 0, 4, 0, 4, 0]
    r = paired_sar_test(a, b, 10)
    assert r.difference == pytest.approx(11 / 60)
    assert r.sar_a == pytest.approx(15 / 60) and r.sar_b == pytest.approx(4 / 60)
    assert r.n_samples == 6 and r.n_discordant == 3 and r.method == "permutation" and r.exact
    # Three nonzero differences, all positive: 2 of the 8 sign patterns are as extreme -> p = 1/4.
    assert r.p_value == pytest.approx(0.25)
    d = (np.array(a) - np.array(b)) / 10
    tt = ttest_1samp(d, 0.0)
    s = paired_sar_test(a, b, 10, "sandwich")
    assert s.statistic == pytest.approx(tt.statistic) and s.p_value == pytest.approx(tt.pvalue)
    ci = tt.confidence_interval(0.95)
    assert (s.ci_low, s.ci_high) == pytest.approx((ci.low, ci.high)) == (r.ci_low, r.ci_high)
    assert r.statistic == pytest.approx(tt.statistic)  # same studentised statistic for both methods
    # Swapping the models flips the sign, keeps the p-value.
    back = paired_sar_test(b, a, 10)
    assert back.difference == pytest.approx(-r.difference) and back.p_value == r.p_value
    assert r.rejects(0.3) and not r.rejects(0.2)


def test_per_draw_indicators_equal_counts():
    rng = np.random.default_rng(3)
    fa, fb = rng.random((12, 7)) < 0.3, rng.random((12, 7)) < 0.2
    by_draws = paired_sar_test(fa, fb)
    by_counts = paired_sar_test(fa.sum(1), fb.sum(1), 7)
    assert by_draws == by_counts and by_draws.draws == 7
    assert paired_sar_test(fa.astype(int), fb.astype(int), 7) == by_counts
    assert paired_noninferiority(fa, fb, margin=0.1) == paired_noninferiority(fa.sum(1), fb.sum(1), 7, margin=0.1)


def test_exact_distribution_matches_brute_force():
    rng = np.random.default_rng(5)
    for _ in range(40):
        n = int(rng.integers(1, 11))
        a, b = rng.integers(0, 9, n), rng.integers(0, 9, n)
        r = paired_sar_test(a, b, 8)
        assert r.exact and r.p_value == pytest.approx(_brute_force_p(a - b), abs=1e-12)
        # A margin that is not a multiple of 1/K: complete enumeration of the signs instead.
        ni = paired_noninferiority(a, b, 8, margin=0.03)
        e = (a - b) / 8 - 0.03
        s = np.array([np.dot(sg, np.abs(e)) for sg in itertools.product((-1, 1), repeat=n)])
        assert ni.exact and ni.p_value == pytest.approx(np.mean(s <= e.sum() + 1e-12), abs=1e-12)
        assert ni.p_regression == pytest.approx(np.mean(s >= e.sum() - 1e-12), abs=1e-12)


def test_monte_carlo_is_seeded_valid_and_close_to_exact(monkeypatch):
    rng = np.random.default_rng(8)
    a, b = rng.binomial(K, 0.08, N), rng.binomial(K, 0.065, N)  # p about 0.2
    exact = paired_sar_test(a, b, K)
    monkeypatch.setattr(paired_module, "_EXACT_BUDGET", 0)
    mc = paired_sar_test(a, b, K, n_perm=20000, seed=1)
    assert exact.exact and not mc.exact and mc.n_perm == 20000
    assert mc.p_value == pytest.approx(exact.p_value, abs=0.005)
    assert mc == paired_sar_test(a, b, K, n_perm=20000, seed=np.random.default_rng(1))
    assert mc != paired_sar_test(a, b, K, n_perm=20000, seed=2)
    # +1 correction: never below 1 / (n_perm + 1), even when no sign pattern is as extreme.
    far = paired_sar_test(np.full(N, 30), np.full(N, 1), K, n_perm=999)
    assert far.p_value == pytest.approx(1 / 1000)
    # A non-integer margin with more than 16 samples goes to Monte Carlo too (budget restored).
    monkeypatch.undo()
    ni = paired_noninferiority(a, b, K, margin=0.013, n_perm=999)
    assert not ni.exact and ni.n_perm == 999 and 1 / 1000 <= ni.p_regression <= 1


def test_degenerate_cases():
    same = paired_sar_test([2, 0, 5], [2, 0, 5], 5)
    assert same.p_value == 1.0 and same.difference == 0.0 and (same.ci_low, same.ci_high) == (0.0, 0.0)
    assert same.statistic == 0.0 and same.n_discordant == 0
    assert paired_sar_test([2, 0, 5], [2, 0, 5], 5, "sandwich").p_value == 1.0
    one = paired_sar_test([4], [1], 5)
    assert one.p_value == 1.0 and (one.ci_low, one.ci_high) == (-1.0, 1.0) and np.isnan(one.statistic)
    assert paired_sar_test([4], [1], 5, "sandwich").p_value == 1.0
    # Every sample worse by the same amount: zero spread, the sandwich test is certain.
    shift = paired_sar_test([3, 3, 3, 3], [1, 1, 1, 1], 5, "sandwich")
    assert shift.statistic == np.inf and shift.p_value == 0.0 and shift.ci_low == shift.ci_high == pytest.approx(0.4)
    assert paired_sar_test([3, 3, 3, 3], [1, 1, 1, 1], 5).p_value == pytest.approx(2 / 16)  # 4 signs, exact


def test_noninferiority_by_hand_and_duality():
    rng = np.random.default_rng(9)
    base = rng.binomial(K, rng.beta(*BETA, N))
    cand = rng.binomial(K, rng.beta(*BETA, N))
    d = (cand - base) / K
    for margin in (0.0, 0.02, -0.04):  # multiples of 1/K: exact permutation
        r = paired_noninferiority(cand, base, K, margin, "sandwich")
        tt = ttest_1samp(d, margin, alternative="less")
        assert r.p_value == pytest.approx(tt.pvalue) and r.p_regression == pytest.approx(1 - tt.pvalue)
        assert r.upper_bound == pytest.approx(tt.confidence_interval(0.95).high)
        assert r.rejects() == (r.upper_bound < margin)  # the sandwich test is the confidence bound
        p = paired_noninferiority(cand, base, K, margin)
        assert p.exact and p.margin == margin and p.difference == pytest.approx(d.mean())
    # At margin 0 the two one-sided permutation p-values are the tails of the two-sided test.
    two = paired_sar_test(cand, base, K)
    one = paired_noninferiority(cand, base, K)
    assert two.difference != 0.0 and min(one.p_value, one.p_regression) == pytest.approx(two.p_value / 2, abs=1e-12)
    # A model against itself: any positive margin shows non-inferiority, no margin shows regression.
    for method in PAIRED_METHODS:
        same = paired_noninferiority(base, base, K, margin=0.05, method=method)
        assert same.rejects() and not same.shows_regression() and same.upper_bound == 0.0
        assert not paired_noninferiority(base, base, K, method=method).rejects()


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: paired_sar_test([1, 2], [1, 2], 2, method="wald"), "method: expected one of permutation, sandwich"),
        (lambda: paired_sar_test([1, 2], [1, 2, 0], 4), "expected the same samples"),
        (lambda: paired_sar_test([1, 5], [1, 2], 4), "flips_a: expected counts in [0, K] = [0, 4]"),
        (lambda: paired_sar_test([1, 2], [1, 2]), "draws: expected K"),
        (lambda: paired_sar_test(np.zeros((3, 4), bool), np.zeros((3, 5), bool)), "expected the same draws K"),
        (lambda: paired_sar_test(np.zeros((3, 4), bool), np.zeros((3, 4), bool), 5), "draws: expected K = 4"),
        (lambda: paired_sar_test([[0, 2]], [[0, 1]]), "flips_a: expected binary values"),
        (lambda: paired_sar_test([], [], 4), "expected at least one sample"),
        (lambda: paired_sar_test([1], [1], 4, n_perm=10), "n_perm: expected an integer >= 99"),
        (lambda: paired_sar_test([1], [1], 4).rejects(1.5), "alpha: expected a number in (0, 1)"),
        (lambda: paired_noninferiority([1], [1], 4, margin=2), "margin: expected a number in [-1, 1]"),
        (lambda: paired_noninferiority([1], [1], 4, confidence=1), "confidence: expected a number in (0, 1)"),
    ],
)
def test_bad_input_names_the_argument(call, fragment):
    with pytest.raises(InputError) as info:
        call()
    assert fragment in str(info.value)


def test_study_z_test_is_labelled_not_for_decisions():
    doc = " ".join(two_proportion_z_test.__doc__.split())
    assert "Study formula, treats draws as independent; not for decisions" in doc


# --- calibration and power by simulation ---------------------------------------------------------------


def test_equal_models_with_different_fragile_images_keep_the_level_where_the_z_test_does_not():
    # H0: both models draw their per-sample flip probabilities from one heterogeneous distribution,
    # independently (each is fragile on different images); same samples, same keyed draws.
    sims = 2000
    rng = np.random.default_rng(2024)
    n_a, n_b = _keyed_draws(rng, rng.beta(*BETA, (sims, N)), rng.beta(*BETA, (sims, N)))
    perm = [paired_sar_test(n_a[s], n_b[s], K) for s in range(sims)]
    sand = [paired_sar_test(n_a[s], n_b[s], K, "sandwich") for s in range(sims)]
    z = two_proportion_z_test(n_a.sum(1) / (N * K), N * K, n_b.sum(1) / (N * K), N * K)
    rates = {"permutation": _rate(perm), "sandwich": _rate(sand), "draw-level Z": float(np.mean(z.rejects(ALPHA)))}
    print(f"\nfalse rejections at alpha {ALPHA}, N={N}, K={K}, {sims} comparisons: {rates}")
    assert all(r.exact for r in perm)
    for method in PAIRED_METHODS:
        assert rates[method] <= 0.06 and _not_above(round(rates[method] * sims), sims), rates
    assert rates["draw-level Z"] > 0.2, rates  # study 2's formula, draws as independent trials


def test_equal_models_with_shared_fragility_keep_the_level():
    # H0: identical per-sample flip probabilities (the same images are fragile for both).
    sims = 2000
    rng = np.random.default_rng(7)
    p = rng.beta(*BETA, (sims, N))
    n_a, n_b = _keyed_draws(rng, p, p)
    rates = {m: _rate([paired_sar_test(n_a[s], n_b[s], K, m) for s in range(sims)]) for m in PAIRED_METHODS}
    print(f"\nfalse rejections with shared fragility: {rates}")
    for method in PAIRED_METHODS:
        assert _not_above(round(rates[method] * sims), sims), rates


def test_power_against_a_planted_difference():
    sims = 500
    rng = np.random.default_rng(11)
    p_a = rng.beta(*BETA, (sims, N))
    power = {}
    for factor in (2.0, 1.3):
        n_a, n_b = _keyed_draws(rng, p_a, np.minimum(1.0, factor * p_a))
        for m in PAIRED_METHODS:
            power[(factor, m)] = _rate([paired_sar_test(n_a[s], n_b[s], K, m) for s in range(sims)])
    print(f"\npower at alpha {ALPHA} (B's flip probabilities = factor x A's), N={N}, K={K}: {power}")
    for m in PAIRED_METHODS:
        assert power[(2.0, m)] >= 0.95 and power[(1.3, m)] >= 0.6, power


def test_noninferiority_keeps_the_level_at_the_margin():
    sims = 2000
    rng = np.random.default_rng(13)
    # Margin 0, equal models (independent heterogeneous fragility): neither one-sided verdict beyond alpha.
    n_c, n_b = _keyed_draws(rng, rng.beta(*BETA, (sims, N)), rng.beta(*BETA, (sims, N)))
    rates = {}
    for m in PAIRED_METHODS:
        res = [paired_noninferiority(n_c[s], n_b[s], K, 0.0, m) for s in range(sims)]
        rates[("margin 0", m, "non-inferior")] = _rate(res)
        rates[("margin 0", m, "regression")] = _rate(res, "shows_regression")
    # Margin 0.02 with the candidate exactly 0.02 worse on every image (the boundary of H0): sims / 2 each.
    p_b = rng.beta(*BETA, (sims // 2, N))
    n_c2, n_b2 = _keyed_draws(rng, np.minimum(1.0, p_b + 0.02), p_b)
    for m in PAIRED_METHODS:
        res = [paired_noninferiority(n_c2[s], n_b2[s], K, 0.02, m) for s in range(sims // 2)]
        rates[("margin 0.02", m, "non-inferior")] = _rate(res)
    print(f"\none-sided rejection rates at alpha {ALPHA}: {rates}")
    for (case, _, _), rate in rates.items():
        n = sims if case == "margin 0" else sims // 2
        assert rate <= 0.06 and _not_above(round(rate * n), n), rates
