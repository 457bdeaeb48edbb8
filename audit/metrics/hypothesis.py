"""Hypothesis tests: two-proportion Z-test (CMR entries, study 2) and DeLong's test for correlated AUCs (study 5).

Each returns a small frozen dataclass with the statistic and the two-sided
p-value, so callers report both and choose their own significance level.

The two-proportion Z-test is study 2's formula and treats every perturbed
inference as an independent trial; draws of one sample are clustered and two
models of one campaign see the same keyed draws, so it is shown for
comparison with the study only. Decisions about two models' SARs use
``audit.metrics.paired`` (``paired_sar_test``, ``paired_noninferiority``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy.stats import rankdata

from audit.errors import InputError
from audit.metrics import _checks


def _two_sided_p(z):
    """2 (1 - Phi(|z|)) computed in the upper tail (no cancellation for large |z|)."""
    return 2.0 * special.ndtr(-np.abs(z))


@dataclass(frozen=True)
class ZTest:
    """Two-proportion Z-test: statistic ``z``, two-sided ``p_value`` and the ``pooled`` proportion.

    Floats for scalar inputs, arrays (broadcast shape) for array inputs.
    """

    z: float | np.ndarray
    p_value: float | np.ndarray
    pooled: float | np.ndarray

    def rejects(self, alpha: float = 0.05):
        """Whether equality is rejected at level ``alpha`` (|Z| > 1.96 for 0.05)."""
        return self.p_value < alpha


def two_proportion_z_test(p1, n1, p2, n2) -> ZTest:
    """Z-test of H0: the proportions ``p1`` (from ``n1`` trials) and ``p2`` (from ``n2`` trials) are equal.

    Study formula, treats draws as independent; not for decisions. On
    perturbed inferences of an audit the n trials are N samples times K
    draws, and draws of one sample are clustered (same image) and, between
    two models of one campaign, paired (same keyed draws); the Z-test ignores
    both, so with images of different fragility it rejects equal models far
    more often than its level (about 0.4 instead of 0.05 for N = 40, K = 50,
    per-sample rates ~ Beta(0.5, 9.5)). Use ``paired.paired_sar_test`` or
    ``paired.paired_noninferiority`` to decide; show this one beside it,
    labelled as the study's formula.

    Proportions in [0, 1], trial counts integers >= 1; inputs broadcast, so a
    whole matrix of entries is tested at once. Where the pooled proportion is
    0 or 1 the standard error is 0; then p1 == p2 necessarily and the result
    is Z = 0, p-value 1 (no evidence of a difference).

    Notes
    -----
    Z = (p1 - p2) / sqrt(p (1 - p) (1/n1 + 1/n2)), p = (n1 p1 + n2 p2) / (n1 + n2)
    (study 2, comparing CMR entries of simulated noise with those of repeated
    real scans); |Z| > 1.96 rejects equality at 95%. Z^2 is Pearson's
    chi-square of the 2x2 table without continuity correction.
    """
    a = _checks.fractions("p1", p1)
    b = _checks.fractions("p2", p2)
    m = _checks.integer_array("n1", n1)
    n = _checks.integer_array("n2", n2)
    if np.any(m < 1) or np.any(n < 1):
        raise InputError("n1, n2: expected trial counts >= 1")
    try:
        a, m, b, n = np.broadcast_arrays(a, m, b, n)
    except ValueError:
        shapes = ", ".join(str(v.shape) for v in (a, m, b, n))
        raise InputError(f"p1, n1, p2, n2: expected broadcastable shapes, got {shapes}") from None
    scalar = a.ndim == 0
    pooled = (m * a + n * b) / (m + n)
    se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / m + 1.0 / n))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(se > 0, (a - b) / np.where(se > 0, se, 1.0), 0.0)
    p = _two_sided_p(z)
    if scalar:
        return ZTest(float(z), float(p), float(pooled))
    return ZTest(z, p, pooled)


def cmr_z_test(counts_1, counts_2) -> ZTest:
    """Entry-wise Z-test between two CMRs given as count matrices (``robustness.cmr_counts``), both (C, C).

    Study formula, treats draws as independent; not for decisions (see ``two_proportion_z_test``).

    Entry [a, b] compares CMR_1[a, b] = counts_1[a, b] / sum_a counts_1[a, b]
    with the same entry of CMR_2, with n = the column totals (K N_b of each
    audit). Columns with no inferences in either audit give NaN.

    Notes
    -----
    Study 2 compared the CMR of simulated NPS noise with the CMR of repeated
    real scans entry by entry with this test (see ``two_proportion_z_test``).
    """
    c1 = _checks.integer_array("counts_1", counts_1)
    c2 = _checks.integer_array("counts_2", counts_2)
    if c1.ndim != 2 or c1.shape[0] != c1.shape[1] or c1.shape != c2.shape:
        raise InputError(f"counts_1, counts_2: expected two (C, C) count matrices of one shape, got {c1.shape} and {c2.shape}")
    if np.any(c1 < 0) or np.any(c2 < 0):
        raise InputError("counts_1, counts_2: expected counts >= 0")
    n1 = np.broadcast_to(c1.sum(axis=0, keepdims=True), c1.shape)
    n2 = np.broadcast_to(c2.sum(axis=0, keepdims=True), c2.shape)
    ok = (n1 > 0) & (n2 > 0)
    res = two_proportion_z_test(c1 / np.maximum(n1, 1), np.maximum(n1, 1), c2 / np.maximum(n2, 1), np.maximum(n2, 1))
    nan = np.full(c1.shape, np.nan)
    return ZTest(np.where(ok, res.z, nan), np.where(ok, res.p_value, nan), np.where(ok, res.pooled, nan))


# --- DeLong ---------------------------------------------------------------------------------------


def _structural_components(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components V10 (one per positive) and V01 (one per negative).

    Midrank algorithm of Sun & Xu (2014): with T_z the midranks among all
    cases, T_x among positives only and T_y among negatives only,
    V10_i = (T_z,i - T_x,i) / n and V01_j = 1 - (T_z,j - T_y,j) / m.
    """
    pos, neg = s[y], s[~y]
    m, n = pos.size, neg.size
    tz = rankdata(s)
    v10 = (tz[y] - rankdata(pos)) / n
    v01 = 1.0 - (tz[~y] - rankdata(neg)) / m
    return float(v10.mean()), v10, v01


@dataclass(frozen=True)
class AUCVariance:
    """One AUC with its DeLong variance and a Wald ``confidence`` interval (clipped to [0, 1])."""

    auc: float
    variance: float
    low: float
    high: float
    confidence: float


def delong_auc_variance(labels, scores, confidence: float = 0.95) -> AUCVariance:
    """AUC of ``scores`` for binary ``labels`` (1 positive), its DeLong variance and a confidence interval.

    ``labels`` (N,) 0/1 with at least 2 of each class (the variance uses sample
    variances over positives and over negatives); ``scores`` (N,), higher
    means more likely positive; ties count 1/2.

    Notes
    -----
    Var(AUC) = S10 / m + S01 / n, S10 and S01 the sample variances of the
    structural components over the m positives and n negatives (DeLong,
    DeLong & Clarke-Pearson 1988). The interval is AUC +- z sqrt(Var), clipped
    to [0, 1]; near AUC = 1 it is approximate, as any Wald interval is.
    """
    y = _checks.binary_labels("labels", labels, min_per_class=2)
    s = _checks.scores("scores", scores, y.size)
    conf = _checks.confidence(confidence)
    auc, v10, v01 = _structural_components(y, s)
    var = float(np.var(v10, ddof=1) / v10.size + np.var(v01, ddof=1) / v01.size)
    half = float(special.ndtri(0.5 + conf / 2.0)) * np.sqrt(var)
    return AUCVariance(auc, var, float(max(0.0, auc - half)), float(min(1.0, auc + half)), conf)


@dataclass(frozen=True)
class DeLongTest:
    """DeLong's test of two correlated AUCs on the same cases."""

    auc_a: float
    auc_b: float
    var_a: float
    var_b: float
    covariance: float  # Cov(AUC_a, AUC_b)
    z: float  # (auc_a - auc_b) / sqrt(var_a + var_b - 2 cov)
    p_value: float  # two-sided


#: DeLong's variance takes the sample covariance (ddof 1) of each class's structural components: 2 cases per class.
DELONG_MIN_PER_CLASS = 2


def delong_not_computable(labels) -> str | None:
    """Why ``delong_test`` cannot compare AUCs on these 0/1 ``labels`` (a class with fewer than
    ``DELONG_MIN_PER_CLASS`` cases), or None when it can. The AUCs themselves need one case per class."""
    y = _checks.binary("labels", labels)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if min(n_pos, n_neg) >= DELONG_MIN_PER_CLASS:
        return None
    return (f"DeLong's test needs at least {DELONG_MIN_PER_CLASS} cases of each class, got {n_pos} positive and "
            f"{n_neg} negative")


def delong_test(labels, scores_a, scores_b) -> DeLongTest:
    """Compare the AUCs of two scores (two models, or two readers) on the same cases.

    ``labels`` (N,) 0/1 with at least 2 of each class; ``scores_a``,
    ``scores_b`` (N,), higher means more likely positive. If the difference
    has zero estimated variance (e.g. identical scores), Z = 0 and p = 1 when
    the AUCs are equal, and Z = +-inf, p = 0 otherwise.

    Notes
    -----
    DeLong, DeLong & Clarke-Pearson (1988): with structural components V10
    (per positive) and V01 (per negative) of each score, S = S10 / m + S01 / n
    is the 2x2 covariance matrix of (AUC_a, AUC_b), S10 and S01 the sample
    covariance matrices (ddof 1) of the components. Z = (A - B) /
    sqrt(S_aa + S_bb - 2 S_ab) is referred to the standard normal. Components
    come from midranks (Sun & Xu 2014), O(N log N). Study 5 compares readers'
    ROC curves on original and manipulated images with it.
    """
    y = _checks.binary_labels("labels", labels, min_per_class=2)
    sa = _checks.scores("scores_a", scores_a, y.size)
    sb = _checks.scores("scores_b", scores_b, y.size)
    auc_a, v10a, v01a = _structural_components(y, sa)
    auc_b, v10b, v01b = _structural_components(y, sb)
    s10 = np.cov(np.vstack([v10a, v10b]), ddof=1)
    s01 = np.cov(np.vstack([v01a, v01b]), ddof=1)
    cov = s10 / v10a.size + s01 / v01a.size
    var_diff = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    diff = auc_a - auc_b
    # Rounding can leave a tiny variance for identical inputs; treat it as zero.
    if var_diff <= 1e-15 * max(1.0, float(cov[0, 0] + cov[1, 1])):
        z = 0.0 if diff == 0.0 else float(np.copysign(np.inf, diff))
    else:
        z = diff / np.sqrt(var_diff)
    return DeLongTest(
        auc_a=auc_a,
        auc_b=auc_b,
        var_a=float(cov[0, 0]),
        var_b=float(cov[1, 1]),
        covariance=float(cov[0, 1]),
        z=float(z),
        p_value=float(_two_sided_p(z)),
    )
