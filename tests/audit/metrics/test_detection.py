"""Detection metrics: LUNA16 matching, FROC and CPM (hand-computed and against an independent LUNA16-style
computation), scan bootstrap, the cluster bootstrap over samples of noisy draws and its paired difference,
lesion-level flips and their SAR interval, output conventions, confidence histograms."""

from __future__ import annotations

import numpy as np
import pytest

from audit.errors import InputError
from audit.metrics.intervals import cluster_wilson_interval
from audit.metrics.detection import (
    DUPLICATE,
    FALSE_POSITIVE,
    FP_RATES,
    HIT,
    IGNORED,
    Candidates,
    Lesions,
    candidates_from_boxes,
    candidates_from_points,
    confidence_histograms,
    froc,
    froc_bootstrap,
    froc_paired_difference,
    heatmap_peaks,
    lesion_flips,
    lesion_sar,
    match_candidates,
    nms,
)

SPACING = (2.0, 1.0, 1.0)  # anisotropic: one voxel in z is 2 mm


def cands(rows):
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    return Candidates(rows[:, :3], rows[:, 3])


def planted_scans():
    """Four scans with known hits, duplicates, ignored marks, boundary cases and false positives."""
    scans = []
    # scan 0: L0 hit (1 mm off, 0.9) + a duplicate (0.6); L1 hit through z (1 voxel = 2 mm < 3 mm, 0.3);
    # a mark exactly at L1's radius (3 mm: not inside, strict) and one 2 voxels off in z (4 mm) are FPs.
    scans.append((
        cands([[10, 21, 20, 0.9], [10, 20, 22, 0.6], [11, 40, 40, 0.3], [10, 40, 43, 0.95], [12, 20, 20, 0.1],
               [20, 60, 60, 0.8]]),
        Lesions.of([[10, 20, 20], [10, 40, 40]], [3.0, 3.0]),
    ))
    # scan 1: a hit (0.2), a mark on an excluded lesion (0.99, ignored), one FP (0.7)
    scans.append((cands([[5, 30, 31, 0.99], [5, 5, 5, 0.2], [5, 50, 50, 0.7]]),
                  Lesions.of([[5, 5, 5], [5, 30, 30]], [2.0, 5.0], excluded=[0, 1])))
    # scan 2: no lesion, one FP (0.5); padding slots (NaN, -inf) of a fixed-count output
    scans.append((candidates_from_points([[1, 1, 1], [0, 0, 0], [0, 0, 0]], [0.5, np.nan, -np.inf]),
                  Lesions.of([], [])))
    # scan 3: overlapping lesions A, B; the one mark is inside both and counts for the nearer (A); B is missed
    scans.append((cands([[10, 10, 12, 0.4]]), Lesions.of([[10, 10, 10], [10, 10, 16]], [5.0, 5.0])))
    return scans


def matched():
    return [match_candidates(c, les, SPACING) for c, les in planted_scans()]


def test_matching_rules_by_hand():
    m = matched()
    assert m[0].role.tolist() == [HIT, DUPLICATE, HIT, FALSE_POSITIVE, FALSE_POSITIVE, FALSE_POSITIVE]
    assert m[0].lesion_score.tolist() == [0.9, 0.3]
    assert m[1].role.tolist() == [IGNORED, HIT, FALSE_POSITIVE] and m[1].lesion_found.tolist() == [True, False]
    assert m[1].n_lesions == 1
    assert len(planted_scans()[2][0]) == 1 and m[2].fp_scores.tolist() == [0.5]
    assert m[3].assigned.tolist() == [0] and m[3].lesion_found.tolist() == [True, False]
    # a minimum radius turns the 4 mm z-offset mark into a duplicate of L0
    wide = match_candidates(*planted_scans()[0], SPACING, min_radius_mm=4.5)
    assert wide.role[4] == DUPLICATE


def test_froc_and_cpm_by_hand():
    # pooled: 0.95 FP, 0.9 TP, 0.8 FP, 0.7 FP, 0.5 FP, 0.4 TP, 0.3 TP, 0.2 TP, 0.1 FP; 4 scans, 5 lesions
    f = froc(matched())
    np.testing.assert_allclose(f.fps, [0, .25, .25, .5, .75, 1, 1, 1, 1, 1.25])
    np.testing.assert_allclose(f.sensitivity, [0, 0, .2, .2, .2, .2, .4, .6, .8, .8])
    np.testing.assert_allclose(f.sensitivity_at, [0, .2, .2, .8, .8, .8, .8])  # at 1/8 .. 8 FPs per scan
    assert f.cpm == pytest.approx(3.6 / 7, abs=1e-15)
    assert (f.n_scans, f.n_lesions, f.n_detected, f.n_false_positives) == (4, 5, 4, 5)


def test_tied_scores_interpolate_along_the_diagonal_as_luna16():
    # one scan, one lesion found at 0.6 and one FP at 0.6: the curve goes straight from (0, 0) to (1, 1)
    f = froc([match_candidates(cands([[0, 0, 0, 0.6], [9, 9, 9, 0.6]]), Lesions.of([[0, 0, 0]], 2.0), SPACING)])
    np.testing.assert_allclose(f.sensitivity_at, [0.125, 0.25, 0.5, 1, 1, 1, 1])
    assert f.cpm == pytest.approx(4.875 / 7)


def luna16_reference(matches, n_scans):
    """The LUNA16 evaluation's construction, written independently: one positive per detected lesion (its best
    score), one per missed lesion excluded from the ROC, negatives for FPs; sklearn's ROC curve scaled to FPs per
    scan and to all lesions; np.interp at the seven rates. The ROC curve is counted by brute force at every
    distinct score (what sklearn's roc_curve gives, without the dependency)."""
    gt, prob, excl = [], [], []
    for m in matches:
        for j in range(m.lesion_found.size):
            if m.n_lesions and not np.isneginf(m.lesion_score[j]):
                gt.append(1), prob.append(m.lesion_score[j]), excl.append(False)
        gt += [1] * (m.n_lesions - int(m.lesion_found.sum()))
        prob += [-1e9] * (m.n_lesions - int(m.lesion_found.sum()))
        excl += [True] * (m.n_lesions - int(m.lesion_found.sum()))
        gt += [0] * m.fp_scores.size
        prob += m.fp_scores.tolist()
        excl += [False] * m.fp_scores.size
    gt, prob, excl = np.array(gt), np.array(prob), np.array(excl)
    g, p = gt[~excl], prob[~excl]
    cuts = np.unique(p)[::-1]
    tp = np.array([0] + [int(((p >= t) & (g == 1)).sum()) for t in cuts])
    fp = np.array([0] + [int(((p >= t) & (g == 0)).sum()) for t in cuts])
    tpr = tp / max(int(g.sum()), 1)
    fpr = fp / max(int((g == 0).sum()), 1)
    fps = fpr * (g.size - g.sum()) / n_scans if (g == 0).any() else np.zeros(fpr.size)
    sens = tpr * g.sum() / gt.sum()
    return np.interp(FP_RATES, fps, sens)


@pytest.mark.parametrize("seed", range(6))
def test_froc_matches_the_luna16_construction_on_random_detectors(seed):
    rng = np.random.default_rng(seed)
    scans = []
    for _ in range(rng.integers(3, 9)):
        les = rng.uniform(5, 60, (rng.integers(1, 5), 3))
        marks = [np.c_[les + rng.normal(0, 0.5, les.shape), rng.uniform(0, 1, len(les))]]  # some lesions hit
        marks = [marks[0][rng.uniform(size=len(les)) < 0.7]]
        fp = rng.uniform(0, 70, (rng.integers(0, 12), 3))
        marks.append(np.c_[fp, np.round(rng.uniform(0, 1, len(fp)), 1)])  # rounded: ties between scores
        scans.append(match_candidates(cands(np.concatenate(marks)), Lesions.of(les, 3.0), (1.0, 1.0, 1.0)))
    f = froc(scans)
    want = luna16_reference(scans, len(scans))
    np.testing.assert_allclose(f.sensitivity_at, want, rtol=0, atol=1e-12)
    assert f.cpm == pytest.approx(float(np.mean(want)), abs=1e-12)


def test_bootstrap_over_scans_equals_a_brute_force_resampling():
    m = matched()
    got = froc_bootstrap(m, n_boot=200, seed=7)
    rng = np.random.default_rng(7)
    cpms = []
    for _ in range(200):
        idx = rng.integers(0, len(m), len(m))
        sample = [m[i] for i in idx]
        if sum(s.n_lesions for s in sample):
            cpms.append(froc(sample).cpm)
    lo, hi = np.quantile(cpms, [0.025, 0.975])
    assert (got.cpm_low, got.cpm_high) == pytest.approx((lo, hi), abs=1e-12)
    assert got.n_valid == len(cpms) and got.cpm == froc(m).cpm
    assert froc_bootstrap(m, n_boot=200, seed=7).to_dict() == got.to_dict()  # seeded: reproducible
    same = froc_bootstrap([m[0]] * 5, n_boot=50, seed=1)  # identical scans: every resample is the same
    assert same.cpm_low == same.cpm_high == pytest.approx(froc([m[0]]).cpm)


def test_lesion_flips():
    les = Lesions.of([[10, 20, 20], [10, 40, 40]], [3.0, 3.0])
    clean = cands([[10, 20, 20, 0.9], [10, 40, 40, 0.7], [20, 60, 60, 0.8]])
    noisy = [
        cands([[10, 20, 20, 0.9], [10, 40, 40, 0.4], [20, 60, 61, 0.8]]),  # L1 below threshold: missed; FP moved 1 mm
        cands([[10, 20, 21, 0.95], [10, 40, 40, 0.6], [20, 60, 60, 0.8], [5, 5, 5, 0.9]]),  # one new FP
        cands([[10, 20, 20, 0.3], [10, 40, 40, 0.45]]),  # both missed
    ]
    f = lesion_flips(clean, noisy, les, SPACING, threshold=0.5)
    assert f.clean_found.tolist() == [True, True]
    assert f.missed.tolist() == [[False, True], [False, False], [True, True]]
    assert not f.gained.any()
    assert f.new_fp.tolist() == [0, 1, 0] and f.fp_flip.tolist() == [False, True, False]
    np.testing.assert_allclose(f.lesion_sar, [1 / 3, 2 / 3])
    back = lesion_flips(noisy[2], [clean], les, SPACING, threshold=0.5)  # the reverse direction gains both
    assert back.gained.tolist() == [[True, True]] and back.new_fp.tolist() == [1]


def test_output_conventions():
    c = candidates_from_boxes([[0, 0, 0, 4, 6, 2], [2, 2, 2, 3, 3, 3]], [0.5, np.nan])
    np.testing.assert_allclose(c.centres, [[1.5, 2.5, 0.5]])  # the centre of voxels 0..3, 0..5, 0..1
    with pytest.raises(InputError, match="shapes"):
        candidates_from_points(np.zeros((3, 2)), np.zeros(3))
    heat = np.zeros((12, 20, 20))
    for (z, y, x), v in [((3, 5, 5), 0.9), ((3, 5, 7), 0.8), ((8, 15, 15), 0.7), ((8, 2, 17), 0.3)]:
        heat[z, y, x] = v
    p = heatmap_peaks(heat, threshold=0.5, nms_radius_mm=2.5, spacing=(2.0, 1.0, 1.0))
    assert p.centres.tolist() == [[3, 5, 5], [8, 15, 15]] and p.scores.tolist() == [0.9, 0.7]  # 0.8 is 2 mm away
    assert len(heatmap_peaks(heat, threshold=0.5, nms_radius_mm=1.5, spacing=(2.0, 1.0, 1.0))) == 3
    kept = nms(cands([[0, 0, 0, 0.5], [0, 0, 1, 0.5], [0, 0, 3, 0.6]]), 1.5, (1, 1, 1))
    assert kept.centres.tolist() == [[0, 0, 3], [0, 0, 0]]  # equal scores: the earlier one is kept


def test_confidence_histograms():
    h = confidence_histograms({10: [0.0, 0.05, 0.1, 0.95, 1.0], "500": np.full((2, 2), 0.5)}, bins=10)
    np.testing.assert_allclose(h.edges, np.linspace(0, 1, 11))
    assert h.counts[10].tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]  # 0.1 opens bin 1; 1.0 is in the last bin
    assert h.counts["500"].tolist() == [0, 0, 0, 0, 0, 4, 0, 0, 0, 0]
    with pytest.raises(InputError, match="confidences"):
        confidence_histograms({1: [1.2]})


def test_edge_cases():
    les = Lesions.of([[5, 5, 5]], 3.0)
    none = candidates_from_points(np.zeros((2, 3)), [np.nan, np.nan])  # every slot padding
    f = froc([match_candidates(none, les, SPACING)])
    assert f.cpm == 0.0 and f.n_detected == 0 and f.fps.tolist() == [0.0]
    no_lesions = froc([match_candidates(cands([[1, 1, 1, 0.5]]), Lesions.of([], []), SPACING)])
    assert np.isnan(no_lesions.cpm) and no_lesions.n_false_positives == 1
    only_hits = froc([match_candidates(cands([[5, 5, 5, 0.5]]), les, SPACING)])  # no FP: LUNA16's fps = 0 case
    assert only_hits.cpm == 1.0
    with pytest.raises(InputError, match="matches"):
        froc([])
    with pytest.raises(InputError, match="noisy"):
        lesion_flips(none, [], les, SPACING, threshold=0.5)


def noisy_campaign(seed: int, n: int = 6, k: int = 4):
    """N random scans (lesions, a detector's marks) and K noisy draws of each: the marks jitter by a sample's own
    amount (clustered draws) and their scores move; returns (clean matches, N x K draw matches, sample of each)."""
    rng = np.random.default_rng(seed)
    clean, draws, samples = [], [], []
    for i in range(n):
        les = Lesions.of(rng.uniform(5, 60, (rng.integers(1, 4), 3)), 3.0)
        marks = np.c_[les.centres + rng.normal(0, 0.5, les.centres.shape), rng.uniform(0.2, 1, len(les.centres))]
        f = rng.uniform(0, 70, (rng.integers(0, 6), 3))
        fp = np.c_[f, rng.uniform(0, 1, len(f))]
        rows = np.concatenate([marks, fp])
        clean.append(match_candidates(cands(rows), les, (1.0, 1.0, 1.0)))
        shift = rng.normal(0, 0.3)  # this sample's draws all lean one way: they are clustered
        for _ in range(k):
            moved = rows.copy()
            moved[:, 3] = np.clip(moved[:, 3] + shift + rng.normal(0, 0.05, len(rows)), 0, 1)
            draws.append(match_candidates(cands(moved), les, (1.0, 1.0, 1.0)))
            samples.append(i)
    return clean, draws, np.array(samples)


def test_cluster_bootstrap_of_k_identical_draws_is_the_scan_bootstrap_of_one():
    m = matched()
    k = 5
    copies = [s for s in m for _ in range(k)]  # each scan's K draws all identical
    one = froc_bootstrap(m, n_boot=300, seed=3)
    clustered = froc_bootstrap(copies, n_boot=300, seed=3, clusters=np.repeat(np.arange(len(m)), k))
    assert clustered.cpm == pytest.approx(one.cpm, abs=1e-12)
    assert (clustered.cpm_low, clustered.cpm_high) == pytest.approx((one.cpm_low, one.cpm_high), abs=1e-12)
    np.testing.assert_allclose(clustered.sensitivity_low, one.sensitivity_low, atol=1e-12)
    np.testing.assert_allclose(clustered.sensitivity_high, one.sensitivity_high, atol=1e-12)
    assert clustered.n_clusters == len(m) and clustered.to_dict()["method"].startswith("cluster bootstrap")
    # treating the 5 copies as 5 independent scans makes the interval far too narrow
    naive = froc_bootstrap(copies, n_boot=300, seed=3)
    assert naive.cpm_high - naive.cpm_low < 0.7 * (clustered.cpm_high - clustered.cpm_low)


def test_cluster_bootstrap_equals_a_brute_force_resampling_of_samples():
    clean, draws, samples = noisy_campaign(11)
    n = len(clean)
    got = froc_bootstrap(draws, n_boot=120, seed=5, clusters=samples)
    rng = np.random.default_rng(5)
    cpms = []
    for _ in range(120):
        picked = rng.integers(0, n, n)
        cpms.append(froc([draws[j] for i in picked for j in np.flatnonzero(samples == i)]).cpm)
    assert (got.cpm_low, got.cpm_high) == pytest.approx(tuple(np.quantile(cpms, [0.025, 0.975])), abs=1e-12)
    assert got.cpm == froc(draws).cpm  # the point: all N x K replicates pooled, FPs per scan over N K
    assert froc(draws).n_scans == len(draws)


def test_paired_difference_resamples_samples_once_for_both_frocs():
    clean, draws, samples = noisy_campaign(12)
    n = len(clean)
    d = froc_paired_difference(clean, draws, samples, n_boot=120, seed=9)
    assert d.cpm_drop == pytest.approx(froc(clean).cpm - froc(draws).cpm, abs=1e-15)
    rng = np.random.default_rng(9)
    diffs = []
    for _ in range(120):
        picked = rng.integers(0, n, n)
        diffs.append(froc([clean[i] for i in picked]).cpm -
                     froc([draws[j] for i in picked for j in np.flatnonzero(samples == i)]).cpm)
    assert (d.cpm_drop_low, d.cpm_drop_high) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])), abs=1e-12)
    # a dose identical to clean (K copies of the clean scan): every resample's difference is exactly 0
    same = froc_paired_difference(clean, [c for c in clean for _ in range(3)], np.repeat(np.arange(n), 3), n_boot=50)
    assert same.cpm_drop == same.cpm_drop_low == same.cpm_drop_high == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InputError, match="other_samples"):
        froc_paired_difference(clean, draws, samples[:-1])


def test_lesion_sar_and_its_cluster_interval():
    # 3 samples, K = 4 draws, 2 lesions each (equal sizes: the interval is the project's cluster Wilson on
    # n_i = changed lesion-draws of K L = 8 trials)
    changed = [np.array([[1, 0], [1, 0], [1, 1], [1, 0]], bool), np.zeros((4, 2), bool),
               np.array([[0, 1], [0, 0], [0, 0], [0, 0]], bool)]
    excluded = [np.zeros(2, bool)] * 3
    s = lesion_sar(changed, excluded)
    assert s.sar == pytest.approx(6 / 24) and (s.n_samples, s.n_lesions, s.draws, s.changed) == (3, 6, 4, 6)
    assert (s.low, s.high) == pytest.approx(cluster_wilson_interval([5, 0, 1], 8), abs=1e-12)
    # an excluded lesion leaves the count; a sample with no included lesion is no cluster
    ex = lesion_sar(changed + [np.ones((4, 1), bool)], excluded + [np.ones(1, bool)])
    assert (ex.sar, ex.low, ex.high, ex.n_samples) == pytest.approx((s.sar, s.low, s.high, 3))
    # every draw of one sample flips, none of the others: far wider than 24 independent lesion-draws would give
    lumped = lesion_sar([np.ones((4, 2), bool), np.zeros((4, 2), bool), np.zeros((4, 2), bool)], excluded)
    assert lumped.deff == pytest.approx(8.0) and lumped.high - lumped.low > 0.5
    assert lesion_sar([np.zeros((4, 2), bool)] * 3, excluded).low == 0.0
    assert np.isnan(lesion_sar([np.zeros((4, 1), bool)], [np.ones(1, bool)]).sar)
    with pytest.raises(InputError, match="lesion_changed"):
        lesion_sar([np.zeros((4, 2), bool), np.zeros((3, 2), bool)], excluded[:2])


def _wilson(p: float, n: float, z: float) -> tuple[float, float]:
    """Wilson's score interval written out (Newcombe 1998, method 3) for a proportion p on n (fractional) trials."""
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, c - h), min(1.0, c + h)


def test_lesion_sar_with_unequal_lesion_counts_and_at_zero_against_an_independent_computation():
    from scipy.stats import norm, t

    rng = np.random.default_rng(4)
    k, counts = 6, [1, 3, 2, 4, 1, 2]  # unequal lesion counts: the ratio estimator, not the equal-size formula
    changed = [rng.uniform(size=(k, c)) < q for c, q in zip(counts, [0.0, 0.5, 0.1, 0.3, 0.0, 0.8])]
    s = lesion_sar(changed, [np.zeros(c, bool) for c in counts])
    x = np.array([c.sum() for c in changed], float)
    m = k * np.array(counts, float)
    n, total, z = len(counts), m.sum(), norm.ppf(0.975)
    p = x.sum() / total
    var = n / (n - 1) * np.sum((x - p * m) ** 2) / total ** 2
    deff = np.clip(var / (p * (1 - p) / total), 1, m.max())
    n_eff = total / deff * (z / t.ppf(0.975, n - 1)) ** 2
    assert s.sar == pytest.approx(p) and s.deff == pytest.approx(deff)
    # the upper end is never below the bound of no flip on the same scans (intervals.cluster_design_effect's floor)
    n_eff0 = total / m.max() * (z / t.ppf(0.975, n - 1)) ** 2
    assert s.low == pytest.approx(_wilson(p, n_eff, z)[0], abs=1e-12)
    assert s.high == pytest.approx(max(_wilson(p, n_eff, z)[1], _wilson(0.0, n_eff0, z)[1]), abs=1e-12)
    # p = 0: no variance to estimate the clustering from; one fragile scan would flip all its lesion-draws together,
    # so the design effect is the largest cluster and n_eff is about the number of scans (10), not 10 x 20 x 2
    # lesion-draws: the upper bound is Wilson's z^2 / (n_eff + z^2) on n_eff = M / max m_i (times (z / t_9)^2)
    zero = lesion_sar([np.zeros((20, 2), bool)] * 10, [np.zeros(2, bool)] * 10)
    n_eff0 = 400 / 40 * (z / t.ppf(0.975, 9)) ** 2
    assert zero.deff == 40.0 and zero.low == 0.0
    assert zero.high == pytest.approx(z * z / (n_eff0 + z * z), rel=1e-12)
    assert zero.high > 0.2  # 1 fragile scan in 10 flipping half its draws (SAR 0.05) is inside; 3.84 / 400 was not


def test_heatmap_peaks_by_slabs_equal_one_pass(monkeypatch):
    """The z-slab search (halo of neighbourhood // 2 planes) finds the same peaks as a one-slab search, plateaus and
    maxima on slab borders included, and a float32 map is searched without a float64 copy."""
    from audit.metrics import detection

    rng = np.random.default_rng(2)
    heat = ndimage_smooth(rng.random((23, 9, 11)).astype(np.float32))
    heat[7:9, 4, 4] = heat.max() + 0.1  # a two-plane plateau across a slab border (2 planes per slab below)
    whole = heatmap_peaks(heat, threshold=0.3, neighbourhood=5, nms_radius_mm=1.0)
    monkeypatch.setattr(detection, "HEATMAP_SLAB_VOXELS", 2 * 9 * 11)
    slabs = heatmap_peaks(heat, threshold=0.3, neighbourhood=5, nms_radius_mm=1.0)
    assert len(whole) > 5
    assert whole.centres.tolist() == slabs.centres.tolist() and whole.scores.tolist() == slabs.scores.tolist()


def ndimage_smooth(a: np.ndarray) -> np.ndarray:
    """A smooth random map (many local maxima a few voxels apart)."""
    from scipy import ndimage

    return ndimage.gaussian_filter(a, 1.0).astype(a.dtype)


def test_clean_reference_is_reused_bit_for_bit_and_once_per_sample(monkeypatch):
    """``lesion_flips`` with a ``clean_reference`` equals it with the clean candidates; the detection head matches a
    sample's clean output once for all its draws in a batch (not once per draw) and gives the same columns."""
    import audit.artifact.heads as heads
    from audit.artifact.heads import Decisions, head_from
    from audit.metrics.detection import clean_reference

    rng = np.random.default_rng(5)
    les = [Lesions.of(rng.uniform(5, 30, (3, 3)), [3.0, 4.0, 2.5], excluded=[0, 0, 1]), Lesions.of([], [])]

    def random_cands(m):
        return Candidates(rng.uniform(3, 32, (m, 3)), rng.uniform(0, 1, m))

    clean = [random_cands(12), random_cands(6)]
    for c, lesions in zip(clean, les):
        draws = [random_cands(int(rng.integers(0, 14))) for _ in range(5)]
        a = lesion_flips(c, draws, lesions, SPACING, threshold=0.4, min_radius_mm=1.0)
        ref = clean_reference(c, lesions, SPACING, threshold=0.4, min_radius_mm=1.0)
        b = lesion_flips(ref, draws, lesions, SPACING, threshold=0.4, min_radius_mm=1.0)
        for field in ("clean_found", "noisy_found", "missed", "gained", "new_fp", "lesion_sar", "fp_flip"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    with pytest.raises(InputError, match="clean reference"):
        lesion_flips(ref, draws, les[1], SPACING, threshold=0.5, min_radius_mm=1.0)
    with pytest.raises(InputError, match="spacing"):  # its false positives are in mm of the spacing it was made at
        lesion_flips(ref, draws, les[1], tuple(2 * v for v in SPACING), threshold=0.4, min_radius_mm=1.0)

    head = head_from({"audit.task": "detection", "audit.threshold": "0.4", "audit.min_radius_mm": "1.0"})
    rows = np.repeat([0, 1], 4)  # the campaign's layout: a sample's draws in a run, sharing its objects
    noisy = [random_cands(int(rng.integers(0, 14))) for _ in rows]
    ref_dec = Decisions(np.zeros(rows.size, np.int64), np.zeros(rows.size, np.float32),
                        candidates=[clean[int(i)] for i in rows])
    noisy_dec = Decisions(np.zeros(rows.size, np.int64), np.zeros(rows.size, np.float32), candidates=noisy)
    calls = []
    real = heads.clean_reference
    monkeypatch.setattr(heads, "clean_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    flags, cols = head.draw_metrics(ref_dec, noisy_dec, SPACING, [les[int(i)] for i in rows])
    assert len(calls) == 2  # once per sample, not 8 times
    for j, i in enumerate(rows):  # the columns of a per-draw recomputation from the clean candidates
        f = lesion_flips(clean[int(i)], [noisy[j]], les[int(i)], SPACING, threshold=0.4, min_radius_mm=1.0)
        assert (cols["missed"][j], cols["gained"][j], cols["new_fp"][j]) == \
            (f.missed[0].sum(), f.gained[0].sum(), f.new_fp[0])
        assert flags[j] == (f.missed[0].any() or f.gained[0].any() or f.new_fp[0] > 0)
