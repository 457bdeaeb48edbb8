"""Wilson, Clopper-Pearson and cluster-aware intervals against published values, hand cases and coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta, binomtest, norm
from scipy.stats import t as student_t

from audit.errors import InputError
from audit.metrics.intervals import cluster_design_effect, cluster_rate_interval
from audit.metrics import (
    binomial_interval,
    bootstrap_interval,
    clopper_pearson_interval,
    cluster_exact_interval,
    cluster_wilson_interval,
    design_effect,
    effective_draws,
    exact_lower_bound,
    exact_upper_bound,
    pooled_rate_interval,
    wilson_interval,
)

# Newcombe (1998), Stat Med 17:857, Table I, 95% intervals: method 3 (Wilson score) and method 5 (Clopper-Pearson).
NEWCOMBE = [
    # x, n, Wilson, Clopper-Pearson
    (81, 263, (0.2553, 0.3662), (0.2527, 0.3676)),
    (15, 148, (0.0624, 0.1605), (0.0578, 0.1617)),
    (0, 20, (0.0, 0.1611), (0.0, 0.1684)),
    (1, 29, (0.0061, 0.1718), (0.0009, 0.1776)),
]


@pytest.mark.parametrize(("x", "n", "wilson", "cp"), NEWCOMBE)
def test_published_values_newcombe_1998(x, n, wilson, cp):
    assert wilson_interval(x, n) == pytest.approx(wilson, abs=5e-5)
    assert clopper_pearson_interval(x, n) == pytest.approx(cp, abs=5e-5)


def test_small_counts_by_hand():
    # Wilson 0/10: z^2 = 3.8415, centre = (z^2/20) / (1 + z^2/10) = 0.13876 = half-width -> [0, 0.2775].
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    # Wilson 5/10: half = 1.4160 * sqrt(0.025 + 0.0096) = 0.2634 around 0.5.
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=5e-5)
    # Clopper-Pearson 0/10: upper solves (1 - p)^10 = 0.025, p = 1 - 0.025^(1/10) = 0.3085.
    lo, hi = clopper_pearson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** 0.1, abs=1e-12) and round(hi, 4) == 0.3085
    # x = n mirrors x = 0.
    assert clopper_pearson_interval(10, 10) == pytest.approx((1 - hi, 1.0), abs=1e-12)
    assert wilson_interval(10, 10) == pytest.approx((1 - 0.2775, 1.0), abs=5e-5)


def test_vectorised_agrees_with_scipy_and_handles_zero_trials():
    x = np.array([0, 3, 7, 12, 0])
    n = np.array([12, 12, 12, 12, 0])
    for method, name in (("wilson", "wilson"), ("clopper_pearson", "exact")):
        lo, hi = binomial_interval(x, n, 0.9, method)
        for i in range(4):
            ref = binomtest(int(x[i]), int(n[i])).proportion_ci(confidence_level=0.9, method=name)
            assert (lo[i], hi[i]) == pytest.approx((ref.low, ref.high), abs=1e-10)
        assert np.isnan(lo[4]) and np.isnan(hi[4])


def _wilson(p, n, z=1.959963984540054):
    """Wilson's formula written out, for a fractional (effective) n."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def test_design_effect_by_hand():
    # n_i = [1, 3], K = 4: SAR_i = [0.25, 0.75], s^2 = 0.125, var = s^2/N = 0.0625;
    # p = 0.5, binomial var = 0.25 / 8 = 0.03125 -> deff = 2.
    assert design_effect([1, 3], 4) == pytest.approx(2.0)
    # Flips spread evenly (s^2 = 0): deff clips to 1, no clustering in the data.
    assert design_effect([2, 2, 2, 2], 4) == 1.0
    # All-or-nothing samples: raw deff 64/12 > K clips to K = 4, one Bernoulli trial per sample.
    assert design_effect([0, 0, 4, 4], 4) == 4.0
    # Where the data cannot show the clustering, the worst case: no flips at all (or only flips) -> K, so the
    # effective sample size is the number of samples (it was 1: all N K draws independent); one sample -> K.
    assert design_effect([0, 0, 0], 5) == 5.0
    assert design_effect([5, 5, 5], 5) == 5.0
    assert design_effect([2], 5) == 5.0
    # The one home: clusters of unequal sizes (the lesion SAR's m_i = K L_i), equal sizes give design_effect.
    assert cluster_design_effect([1, 3], [4, 4]) == pytest.approx(design_effect([1, 3], 4))
    assert cluster_design_effect([0, 0, 0], [4, 8, 2]) == 8.0
    x, m = np.array([0, 3, 1, 5]), np.array([6, 12, 6, 18])
    p = x.sum() / m.sum()
    ratio = 4 / 3 * np.sum((x - p * m) ** 2) / m.sum() ** 2 / (p * (1 - p) / m.sum())
    assert cluster_design_effect(x, m) == pytest.approx(np.clip(ratio, 1, 18), rel=1e-12)


def test_cluster_wilson_by_hand():
    # n_i = [1, 3, 1, 3] (K = 4): SAR_i = .25 .75 .25 .75, s^2 = 1/12, var = 1/48; p = 0.5,
    # binomial var = 0.25/16 = 1/64 -> deff = 4/3; n_eff = 16 / (4/3) = 12 draws, times
    # (z / t_3)^2 = (1.959964 / 3.182446)^2 = 0.379292 for N = 4 samples -> n_eff = 4.551507.
    assert design_effect([1, 3, 1, 3], 4) == pytest.approx(4 / 3)
    assert effective_draws([1, 3, 1, 3], 4) == pytest.approx(4.551507, abs=1e-6)
    assert cluster_wilson_interval([1, 3, 1, 3], 4) == pytest.approx(_wilson(0.5, 4.551507), abs=1e-6)
    # One sample: deff = K, no degrees-of-freedom factor: Wilson of one trial.
    assert cluster_wilson_interval([3], 4) == pytest.approx(_wilson(0.75, 1.0), abs=1e-12)
    # Many samples, flips spread evenly: deff = 1 and t -> z, so it tends to naive Wilson on all draws.
    even = np.full(2000, 2)
    assert cluster_wilson_interval(even, 10) == pytest.approx(wilson_interval(4000, 20000), abs=2e-5)
    # No flips: the lower bound is 0 and the upper bound is that of 0 flips in n_eff draws.
    lo, hi = cluster_wilson_interval([0] * 50, 20)
    assert lo == 0.0 and hi == pytest.approx(_wilson(0.0, effective_draws([0] * 50, 20))[1], abs=1e-12)
    assert hi > wilson_interval(0, 1000)[1]


def test_cluster_intervals_cover_when_naive_wilson_does_not():
    # Flip tendency varies strongly between images (SAR_i ~ Beta(0.3, 3)): draws cluster by image.
    rng = np.random.default_rng(11)
    reps, n, k = 1000, 30, 50
    true_rate = 0.3 / 3.3
    hits = {"cluster_wilson": 0, "wilson": 0, "bootstrap": 0}
    for r in range(reps):
        n_i = rng.binomial(k, rng.beta(0.3, 3.0, n))
        for method in hits:
            lo, hi = pooled_rate_interval(n_i, k, method=method, n_boot=200, seed=r)
            hits[method] += lo <= true_rate <= hi
    coverage = {m: h / reps for m, h in hits.items()}
    assert coverage["cluster_wilson"] >= 0.9, coverage
    assert coverage["bootstrap"] >= 0.85, coverage
    assert coverage["wilson"] <= 0.6, coverage


def test_bootstrap_is_seeded_and_sane():
    n_i = np.random.default_rng(0).binomial(10, np.random.default_rng(1).beta(0.5, 3.0, 60))
    a = bootstrap_interval(n_i, 10, seed=1)
    assert a == bootstrap_interval(n_i, 10, seed=1)
    assert a == bootstrap_interval(n_i, 10, seed=np.random.default_rng(1))
    assert a != bootstrap_interval(n_i, 10, seed=2)
    assert a[0] < n_i.sum() / 600 < a[1]
    # It reflects the between-image spread about as the design-effect interval does.
    assert np.allclose(a, cluster_wilson_interval(n_i, 10), atol=0.03)
    assert bootstrap_interval([0, 0, 0], 10) == (0.0, 0.0)  # degenerate, as documented


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: wilson_interval(11, 10), "0 <= successes <= trials"),
        (lambda: wilson_interval(1, 10, confidence=1.0), "confidence: expected a number in (0, 1)"),
        (lambda: wilson_interval(0.5, 10), "successes: expected integer"),
        (lambda: binomial_interval(1, 10, method="wald"), "method: expected one of wilson, clopper_pearson"),
        (lambda: pooled_rate_interval([1, 2], 4, method="wald"), "method: expected one of cluster_wilson"),
        (lambda: cluster_wilson_interval([1, 5], 4), "flip_counts: expected counts in [0, K] = [0, 4]"),
        (lambda: cluster_wilson_interval([1, 2], 0), "draws: expected the number of perturbations"),
        (lambda: bootstrap_interval([1, 2], 4, n_boot=3), "n_boot: expected an integer >= 10"),
        (lambda: cluster_exact_interval([1, 5], 4), "flip_counts: expected counts in [0, K] = [0, 4]"),
        (lambda: exact_lower_bound([1, 2], 4, confidence=0.0), "confidence: expected a number in (0, 1)"),
        (lambda: exact_upper_bound([1, 2], -1), "draws: expected the number of perturbations"),
    ],
)
def test_bad_input_names_the_argument(call, fragment):
    with pytest.raises(InputError, match=None) as info:
        call()
    assert fragment in str(info.value)


# --- exact (Clopper-Pearson) bounds on effective counts --------------------------------------------


def _cp(x, n, tail):
    """Clopper-Pearson bounds in the beta-quantile form, fractional x and n allowed."""
    lo = 0.0 if x == 0 else beta.ppf(tail, x, n - x + 1)
    hi = 1.0 if x == n else beta.ppf(1 - tail, x + 1, n - x)
    return lo, hi


def test_cluster_exact_by_hand():
    # n_i = [1, 3, 1, 3], K = 4: deff = 4/3, n_eff = 12 (z / t_3)^2 = 4.551507 (as for cluster Wilson), p = 0.5.
    n_eff = 12 * (norm.ppf(0.975) / student_t.ppf(0.975, 3)) ** 2
    assert n_eff == pytest.approx(4.551507, abs=1e-6)
    assert cluster_exact_interval([1, 3, 1, 3], 4) == pytest.approx(_cp(0.5 * n_eff, n_eff, 0.025), abs=1e-12)
    # One sample: deff = K, n_eff = 1 and x_eff = p, a fractional count: the beta form takes it.
    assert cluster_exact_interval([3], 4, 0.9) == pytest.approx(_cp(0.75, 1.0, 0.05), abs=1e-12)
    # Evenly spread flips over many samples: deff = 1, t -> z: the exact binomial interval on all N K draws.
    even = cluster_exact_interval(np.full(4000, 2), 10)
    assert even == pytest.approx(clopper_pearson_interval(8000, 40000), rel=2e-3)
    # All-or-nothing samples: deff = K, one trial per sample.
    n_eff = 4 * (norm.ppf(0.975) / student_t.ppf(0.975, 3)) ** 2
    assert cluster_exact_interval([0, 0, 4, 4], 4) == pytest.approx(_cp(0.5 * n_eff, n_eff, 0.025), abs=1e-12)
    # Wider than cluster Wilson in the tails it is used for.
    n_i = [0] * 38 + [1, 2]
    assert cluster_exact_interval(n_i, 50, 0.995)[0] < cluster_wilson_interval(n_i, 50, 0.995)[0]
    assert np.isnan(cluster_exact_interval([], 5)[0])
    assert pooled_rate_interval(n_i, 50, method="cluster_exact") == cluster_exact_interval(n_i, 50)


def test_one_sided_exact_bounds():
    n_i = np.array([0, 2, 0, 1, 5, 0, 0, 3])
    # A one-sided bound at confidence c is the matching side of the two-sided interval at 2c - 1 (same tail).
    lo, hi = cluster_exact_interval(n_i, 10, 0.99)
    assert exact_lower_bound(n_i, 10, 0.995) == pytest.approx(lo, abs=1e-14)
    assert exact_upper_bound(n_i, 10, 0.995) == pytest.approx(hi, abs=1e-14)
    # No flips: lower 0, upper 1 - (1 - c)^(1 / n_eff) with deff = K (n_eff = N = 40 samples, not N K = 200
    # draws: no flip says nothing about how flips cluster) and the one-sided t factor.
    n_eff = 40 * (norm.ppf(0.99) / student_t.ppf(0.99, 39)) ** 2
    assert exact_lower_bound([0] * 40, 5, 0.99) == 0.0
    assert exact_upper_bound([0] * 40, 5, 0.99) == pytest.approx(1 - 0.01 ** (1 / n_eff), rel=1e-10)
    assert exact_upper_bound([0] * 40, 5, 0.99) == pytest.approx(exact_upper_bound([0] * 40, 1, 0.99), rel=1e-12)
    # All flipped mirrors it: the lower bound is that of N trials.
    assert exact_lower_bound([5] * 40, 5, 0.99) == pytest.approx(0.01 ** (1 / n_eff), rel=1e-10)
    # One sample carries all flips: deff about its count (here clipped to K = 5), the bounds widen accordingly.
    assert design_effect([5] + [0] * 39, 5) == 5.0
    assert exact_lower_bound([5] + [0] * 39, 5, 0.99) < exact_lower_bound([1] * 5 + [0] * 35, 5, 0.99)
    assert exact_upper_bound([1] * 40, 1, 0.9) == 1.0 and np.isnan(exact_lower_bound([], 3))


def test_wilson_is_anti_conservative_near_zero():
    # One flip in 200 draws, 99.5% two-sided: Wilson's lower bound is 40 times the exact one.
    wl, _ = wilson_interval(1, 200, 0.995)
    cl, _ = clopper_pearson_interval(1, 200, 0.995)
    assert wl == pytest.approx(5.1e-4, abs=1e-5) and cl == pytest.approx(1.25e-5, abs=1e-7)


def test_exact_lower_bound_covers_rare_rates_where_wilson_does_not():
    # True rate 4.5e-4 on every image, N = 40 cases, K = 50 draws (about 0.9 expected flips per audit).
    # A lower bound at confidence 0.995 may exceed the truth in at most 0.5% of audits.
    sims, n, k, p = 4000, 40, 50, 4.5e-4
    rng = np.random.default_rng(17)
    counts = rng.binomial(k, p, (sims, n))
    exact = np.mean([exact_lower_bound(c, k, 0.995) > p for c in counts])
    wilson = np.mean(wilson_interval(counts.sum(1), n * k, 0.99)[0] > p)  # one-sided 99.5% Wilson lower bound
    cluster_wilson = np.mean([cluster_wilson_interval(c, k, 0.995)[0] > p for c in counts])  # 99.5% two-sided
    print(f"\nlower bound above p = {p}: exact {exact:.4f}, Wilson {wilson:.4f}, "
          f"cluster Wilson (two-sided) {cluster_wilson:.4f}")
    assert exact <= 0.005 and binomtest(round(exact * sims), sims, 0.005, alternative="greater").pvalue > 0.01
    assert wilson > 0.01 and binomtest(round(wilson * sims), sims, 0.005, alternative="greater").pvalue < 1e-4
    assert cluster_wilson > 0.01
    # Clustered rare flips (rates ~ Beta(0.05, 111), mean 4.5e-4, a few images carry them): still covered,
    # for the population rate and for the mean rate of the audited images.
    rates = rng.beta(0.05, 0.05 / p - 0.05, (sims // 2, n))
    counts = rng.binomial(k, rates)
    lows = np.array([exact_lower_bound(c, k, 0.995) for c in counts])
    highs = np.array([exact_upper_bound(c, k, 0.995) for c in counts])
    miss = {"lower > p": float(np.mean(lows > p)), "lower > mean p_i": float(np.mean(lows > rates.mean(1))),
            "upper < mean p_i": float(np.mean(highs < rates.mean(1)))}
    print(f"clustered rare flips, exact bounds missing: {miss}")
    assert max(miss.values()) <= 0.005, miss


# --- no flip seen: the design effect is the worst case (the number of samples is the effective size) -------------

# (N_c, K, fraction of fragile images, their per-draw flip probability); the rest of the images never flip
FRAGILE_FEW = [(20, 20, 0.05, 0.3), (50, 10, 0.03, 0.3), (30, 20, 0.05, 0.2)]


def _old_zero_upper(n: int, k: int, confidence: float) -> float:
    """The old rule's one-sided upper bound with no flip: deff = 1, 0 flips in N K (z / t_{N-1})^2 'independent' draws."""
    n_eff = n * k * (norm.ppf(confidence) / student_t.ppf(confidence, n - 1)) ** 2
    return 1 - (1 - confidence) ** (1 / n_eff)


def _unfloored_upper(n_i, k: int, confidence: float) -> float:
    """The one-sided exact upper bound on the estimated effective counts alone, without the no-flip floor: the rule
    before the floor (commit 86398b2), written out from ``cluster_exact_interval``'s definition."""
    n_i = np.asarray(n_i)
    n = n_i.size
    n_eff = n * k / design_effect(n_i, k) * (norm.ppf(confidence) / student_t.ppf(confidence, n - 1)) ** 2
    x = n_i.sum() / (n * k) * n_eff
    return 1.0 if x >= n_eff else float(beta.ppf(confidence, x + 1, n_eff - x))


@pytest.mark.parametrize(("n", "k", "fragile", "q"), FRAGILE_FEW)
def test_upper_bound_covers_clustered_rare_flips_where_deff_one_at_zero_did_not(n, k, fragile, q):
    """Per-class SAR of a class whose flips sit on a few fragile images: the 95% upper bounds cover the true SAR.

    Each replicate draws N_c images from a population in which a fraction ``fragile`` flips with probability q per
    draw and the rest never flip (true SAR = fragile x q, the population's: the report's per-class SAR stands for
    the images the model will see), then K draws per image. Often no fragile image is drawn, no flip is seen, and
    the old rule (deff = 1 at p = 0: all N_c K draws independent) gave an upper bound of about 3 / (N_c K), far
    below the truth. 600 replicates each (seed 2026), coverage of the one-sided 95% exact upper bound (the fast
    gate's), old rule -> deff = K at p = 0 (0 flips in about N_c trials, commit 86398b2):

        N_c = 20, K = 20, 5% at 0.3 (SAR 0.015; no flip in 39% of audits): 0.60 -> 0.997
        N_c = 50, K = 10, 3% at 0.3 (SAR 0.009; no flip in 21%):           0.80 -> 1.000
        N_c = 30, K = 20, 5% at 0.2 (SAR 0.010; no flip in 24%):           0.75 -> 0.985

    The two-sided 95% intervals' upper ends (report's ``cluster_exact``, ``cluster_wilson``) cover as often or more.
    Audits with flips kept the estimated deff there; their misses were the 0.3% to 1.5% left, which the no-flip
    floor (``test_no_flip_floor_covers_rare_fragile_images``) now removes (coverage 1.0 in all three).
    """
    rng = np.random.default_rng(2026)
    reps, true_sar, conf = 600, fragile * q, 0.95
    new = old = exact_two_sided = wilson_two_sided = zero = 0
    for _ in range(reps):
        n_i = rng.binomial(k, np.where(rng.random(n) < fragile, q, 0.0))
        high = exact_upper_bound(n_i, k, conf)
        new += high >= true_sar
        if n_i.sum() == 0:
            zero += 1
            old += _old_zero_upper(n, k, conf) >= true_sar
            assert high == pytest.approx(1 - (1 - conf) ** (1 / (n * (norm.ppf(conf) / student_t.ppf(conf, n - 1)) ** 2)))
        else:
            old += _unfloored_upper(n_i, k, conf) >= true_sar  # with flips the old rule estimated deff, no floor
        exact_two_sided += cluster_exact_interval(n_i, k, conf)[1] >= true_sar
        wilson_two_sided += cluster_wilson_interval(n_i, k, conf)[1] >= true_sar
    coverage = {"new": new / reps, "old": old / reps, "cluster_exact": exact_two_sided / reps,
                "cluster_wilson": wilson_two_sided / reps, "no flip": zero / reps}
    print(f"\nN_c={n} K={k} {fragile:.0%} at {q}: {coverage}")
    assert zero / reps > 0.15  # the case the fix is about occurs often
    assert coverage["new"] >= 0.95 and coverage["cluster_exact"] >= 0.95 and coverage["cluster_wilson"] >= 0.95
    assert coverage["old"] <= 0.85  # the old rule's failure, in the same test


def test_lesion_sar_and_per_class_sar_share_the_design_effect():
    """One home: the lesion SAR's interval is ``cluster_rate_interval`` on m_i = K L_i lesion-draws per sample."""
    from audit.metrics.detection import lesion_sar

    rng = np.random.default_rng(3)
    changed = [rng.random((8, c)) < r for c, r in zip([2, 1, 3, 2], [0.0, 0.5, 0.1, 0.0])]
    s = lesion_sar(changed, [np.zeros(c.shape[1], bool) for c in changed])
    r = cluster_rate_interval([int(c.sum()) for c in changed], [c.size for c in changed])
    assert (s.sar, s.low, s.high, s.deff, s.n_eff) == (r.rate, r.low, r.high, r.deff, r.n_eff)
    zero = lesion_sar([np.zeros((8, 2), bool)] * 5, [np.zeros(2, bool)] * 5)
    assert zero.deff == 16.0 == cluster_design_effect([0] * 5, [16] * 5)
    # Equal sizes: the per-class SAR's interval, bound for bound.
    assert (zero.low, zero.high) == cluster_wilson_interval([0] * 5, 16)
    assert np.isnan(cluster_rate_interval([], []).high)
    with pytest.raises(InputError, match="successes, trials"):
        cluster_rate_interval([3, 1], [2, 4])


# --- with flips seen: the no-flip floor -------------------------------------------------------------------------


def _flip_sequence(n: int, k: int, spread: str) -> list[np.ndarray]:
    """Per-sample flip counts for x = 0 .. N K flips, one flip added at a time: ``even`` round-robin over all N
    samples; ``quarter`` round-robin over the first N / 4 until they are full, then over the rest; ``fill`` one
    sample after another (the most clustered order)."""
    counts, out, q = np.zeros(n, np.int64), [], max(1, n // 4)
    out.append(counts.copy())
    for x in range(n * k):
        if spread == "even":
            i = x % n
        elif spread == "fill":
            i = x // k
        else:
            part = np.arange(q) if x < q * k else np.arange(q, n)
            i = int(part[np.argmin(counts[part])])
        counts[i] += 1
        out.append(counts.copy())
    return out


def _bounds(n_i, k: int) -> dict[str, tuple[float, float]]:
    """(lower, upper) of each cluster-aware bound at 95%: one-sided exact, two-sided exact and Wilson."""
    return {"exact one-sided": (exact_lower_bound(n_i, k), exact_upper_bound(n_i, k)),
            "cluster_exact": cluster_exact_interval(n_i, k), "cluster_wilson": cluster_wilson_interval(n_i, k)}


@pytest.mark.parametrize(("n", "k"), [(48, 10), (20, 20)])
def test_upper_bound_never_drops_below_no_flips_and_grows_with_flips(n, k):
    """An interval for a rate observed with few flips cannot claim more than one observed with none.

    Before the floor, one flip gave a far tighter upper bound than none (N = 48, K = 10, one-sided 95% exact:
    0 flips 0.063, 1 flip 0.010; cluster Wilson 0.078 and 0.012): one flip estimates deff near 1, no flip takes
    deff = K. Now every upper bound is at least the no-flip one for the same N (and every lower bound at most
    the all-flip one), and it is non-decreasing in the number of flips x = 0 .. N K when flips are added evenly
    or over a quarter of the samples first. Filling one sample after another, the estimated deff drops from its
    clip at K just after a sample fills, and the bound may dip by about 1% of itself there, never below the floor.
    """
    zero = _bounds(np.zeros(n, np.int64), k)
    full = _bounds(np.full(n, k, np.int64), k)
    for name in zero:
        assert zero[name][0] == 0.0 and full[name][1] == 1.0
        assert full[name][0] == pytest.approx(1.0 - zero[name][1], abs=1e-12)  # the mirror at p = 1
    for spread in ("even", "quarter", "fill"):
        seq = [_bounds(c, k) for c in _flip_sequence(n, k, spread)]
        for name in zero:
            lows = np.array([b[name][0] for b in seq])
            highs = np.array([b[name][1] for b in seq])
            assert np.all(highs >= zero[name][1]) and np.all(lows <= full[name][0] + 1e-12), (spread, name)
            assert highs[1] == zero[name][1]  # one flip: the no-flip bound decides
            if spread == "fill":
                assert np.all(np.diff(highs) >= -0.015 * highs[1:]), (spread, name)
                assert np.all(np.diff(lows) >= -0.015 * (1.0 - lows[:-1])), (spread, name)
            else:
                assert np.all(np.diff(highs) >= -1e-12) and np.all(np.diff(lows) >= -1e-12), (spread, name)


def test_no_flip_floor_covers_rare_fragile_images():
    """Coverage of the 95% upper bounds where a few images flip often and the rest rarely (not never).

    Each replicate draws N images from a population in which 5% flip with probability U(0.3, 0.5) per draw and
    the rest with U(0.001, 0.003) (true SAR 0.05 x 0.4 + 0.95 x 0.002 = 0.0219), then K = 20 draws each. Flips
    are then seen in almost every audit, the design effect is estimated from them, and a sample that misses the
    fragile images (or catches one on few draws) looks spread out. 400 replicates per N (seed 7), one-sided 95%
    exact upper bound (the fast gate's), estimated deff alone (the rule of commit 86398b2) -> with the no-flip
    floor (max with the bound of 0 flips in N samples):

        N = 20: 0.79 -> 1.0     N = 30: 0.85 -> 1.0     N = 40: 0.88 -> 1.0

    The two-sided 95% upper ends (``cluster_exact``, ``cluster_wilson``) likewise go to 1.0 (from 0.80 to 0.91
    before the floor, over seeds and N).
    The floor, about 3 / N, lies above this SAR up to N of about 130; past that the estimate alone decides.
    """
    rng = np.random.default_rng(7)
    reps, k, sar, conf = 400, 20, 0.05 * 0.4 + 0.95 * 0.002, 0.95
    for n in (20, 30, 40):
        hits = {"old one-sided": 0, "exact one-sided": 0, "cluster_exact": 0, "cluster_wilson": 0}
        for _ in range(reps):
            p_i = np.where(rng.random(n) < 0.05, rng.uniform(0.3, 0.5, n), rng.uniform(0.001, 0.003, n))
            n_i = rng.binomial(k, p_i)
            hits["old one-sided"] += _unfloored_upper(n_i, k, conf) >= sar
            hits["exact one-sided"] += exact_upper_bound(n_i, k, conf) >= sar
            hits["cluster_exact"] += cluster_exact_interval(n_i, k, conf)[1] >= sar
            hits["cluster_wilson"] += cluster_wilson_interval(n_i, k, conf)[1] >= sar
        coverage = {name: h / reps for name, h in hits.items()}
        print(f"\nN={n} K={k} 5% at 0.3-0.5, rest 0.001-0.003: {coverage}")
        assert coverage["old one-sided"] < 0.93  # the gap, in the same test
        assert min(coverage["exact one-sided"], coverage["cluster_exact"], coverage["cluster_wilson"]) >= 0.93


def test_no_flip_floor_leaves_many_flips_alone():
    """Where flips are many, the bound on the estimated deff is above the floor and decides, unchanged."""
    rng = np.random.default_rng(5)
    n_i = rng.binomial(20, rng.beta(0.3, 3.0, 40))
    assert exact_upper_bound(n_i, 20) == pytest.approx(_unfloored_upper(n_i, 20, 0.95), rel=1e-9)
    r = cluster_rate_interval(n_i, np.full(40, 20))
    assert (r.low, r.high) == pytest.approx(_wilson(r.rate, r.n_eff), abs=1e-12)
    # Lesion SAR (unequal clusters): the floor is Wilson's at p = 0 on M / max m_i samples.
    one = cluster_rate_interval([1, 0, 0, 0, 0, 0], [40, 20, 20, 60, 20, 40])
    n0 = 200 / 60 * (norm.ppf(0.975) / student_t.ppf(0.975, 5)) ** 2
    assert one.high == pytest.approx(_wilson(0.0, n0)[1], abs=1e-12)
    assert one.high > _wilson(one.rate, one.n_eff)[1]
