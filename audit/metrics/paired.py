"""Paired, cluster-aware comparison of two models (or two arms) audited on the same keyed draws.

Two models of one campaign see the same N samples and the same K noise draws
of each sample. Their per-sample flip counts n_i^A and n_i^B are therefore
paired (same image, same noise), and the draws of one sample are clustered
(same image: some images flip often, most never). The unit of independent
evidence is the sample, not the draw, so both tests here work on the
per-sample differences

    d_i = (n_i^A - n_i^B) / K,    mean_i d_i = SAR^A - SAR^B (the pooled rates),

and never on the N K draws as if they were independent trials (which is
what study 2's two-proportion Z-test does, ``hypothesis.two_proportion_z_test``:
with heterogeneous images it rejects equal models far more often than its
level; see the tests).

- ``paired_sar_test``: two-sided test of SAR^A = SAR^B with a cluster-robust
  confidence interval of the difference;
- ``paired_noninferiority``: one-sided test against a margin, for a gate's
  ``no_regression`` rule.

Methods: ``"permutation"`` (default) flips the signs of the d_i (Fisher's
one-sample randomisation test; exact, computed by complete enumeration of
the sign patterns' distribution when that is cheap, else Monte Carlo with the
+1 correction); ``"sandwich"`` refers mean(d) / SE(d), SE the cluster-robust
(between-sample) standard error s_d / sqrt(N), to Student's t with N - 1
degrees of freedom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from audit.errors import InputError
from audit.metrics import _checks

#: Methods of ``paired_sar_test`` and ``paired_noninferiority``.
PAIRED_METHODS = ("permutation", "sandwich")

# Exact permutation distribution by dynamic programming costs about m * sum|D_i| operations
# (m samples with D_i != 0); above this budget Monte Carlo is used.
_EXACT_BUDGET = 50_000_000
# Without integer differences (a margin that is not a multiple of 1/K), complete enumeration of 2^m signs.
_ENUMERATE_MAX = 16


def _alpha(alpha) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise InputError(f"alpha: expected a number in (0, 1), got {alpha!r}") from None
    if not 0.0 < a < 1.0:
        raise InputError(f"alpha: expected a number in (0, 1) such as 0.05, got {alpha!r}")
    return a


@dataclass(frozen=True)
class PairedSARTest:
    """Paired comparison of two pooled SARs on the same samples and draws (``paired_sar_test``).

    ``difference`` = ``sar_a`` - ``sar_b``; ``ci_low``, ``ci_high``: its
    cluster-robust interval at ``confidence`` (t interval, N - 1 degrees of
    freedom, for either method); ``statistic``: mean(d) / SE(d), SE the
    between-sample standard error; ``p_value``: two-sided, from ``method``.
    ``n_discordant``: samples whose counts differ (d_i != 0; only those carry
    information for the permutation test). ``exact``: the permutation p-value
    is exact (complete enumeration); otherwise ``n_perm`` Monte Carlo sign
    flips were used (0 for the sandwich method).
    """

    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    statistic: float
    p_value: float
    method: str
    n_samples: int
    n_discordant: int
    draws: int
    sar_a: float
    sar_b: float
    exact: bool
    n_perm: int

    def rejects(self, alpha: float = 0.05) -> bool:
        """Whether SAR^A = SAR^B is rejected at level ``alpha`` (p-value <= alpha)."""
        return bool(self.p_value <= _alpha(alpha))


@dataclass(frozen=True)
class NonInferiorityTest:
    """One-sided paired comparison of a candidate with a baseline against a margin (``paired_noninferiority``).

    ``difference`` = ``sar_candidate`` - ``sar_baseline``; ``upper_bound``: its
    one-sided cluster-robust upper confidence bound at ``confidence`` (t, N - 1
    degrees of freedom); ``statistic``: (mean(d) - margin) / SE(d).

    Two one-sided p-values, for the two ways a gate can be written:

    - ``p_value``: H0 difference >= margin (the candidate is worse by the
      margin or more); small means non-inferiority is shown, ``rejects``.
      A gate that passes only on ``rejects`` puts the burden of proof on the
      candidate (strict: equal models pass only when the margin is large
      enough for the data to show it).
    - ``p_regression``: H0 difference <= margin; small means the candidate is
      shown to be worse than the baseline by more than the margin,
      ``shows_regression``. A gate that fails only on it is lenient (equal
      models fail with probability at most alpha).
    """

    difference: float
    margin: float
    upper_bound: float
    confidence: float
    statistic: float
    p_value: float
    p_regression: float
    method: str
    n_samples: int
    n_discordant: int
    draws: int
    sar_candidate: float
    sar_baseline: float
    exact: bool
    n_perm: int

    def rejects(self, alpha: float = 0.05) -> bool:
        """Non-inferiority shown at level ``alpha``: difference < margin with ``p_value`` <= alpha."""
        return bool(self.p_value <= _alpha(alpha))

    def shows_regression(self, alpha: float = 0.05) -> bool:
        """Regression shown at level ``alpha``: difference > margin with ``p_regression`` <= alpha."""
        return bool(self.p_regression <= _alpha(alpha))


# --- inputs -----------------------------------------------------------------------------------------


def _counts(name: str, value, draws) -> tuple[np.ndarray, int]:
    """Per-sample flip counts (N,) and K from counts (N,) with ``draws`` or per-draw indicators (N, K)."""
    a = np.asarray(value)
    if a.ndim == 2:
        flips = _checks.binary(name, a)
        k = flips.shape[1]
        if k == 0:
            raise InputError(f"{name}: expected per-draw flip indicators of shape (N, K) with K >= 1, got {a.shape}")
        if draws is not None and _checks.draws("draws", draws) != k:
            raise InputError(f"draws: expected K = {k} to match {name} of shape {a.shape}, got {draws!r}")
        return np.count_nonzero(flips, axis=1).astype(np.int64), k
    if draws is None:
        raise InputError(f"draws: expected K, the number of draws per sample, when {name} holds flip counts (N,)")
    k = _checks.draws("draws", draws)
    return _checks.flip_counts(name, a, k), k


def _pair(name_a: str, flips_a, name_b: str, flips_b, draws) -> tuple[np.ndarray, np.ndarray, int]:
    na, ka = _counts(name_a, flips_a, draws)
    nb, kb = _counts(name_b, flips_b, draws)
    if ka != kb:
        raise InputError(f"{name_a}, {name_b}: expected the same draws K for both, got {ka} and {kb}")
    if na.shape != nb.shape:
        raise InputError(f"{name_a}, {name_b}: expected the same samples, got {na.size} and {nb.size}")
    if na.size == 0:
        raise InputError(f"{name_a}: expected at least one sample")
    return na, nb, ka


def _method(method) -> str:
    if method not in PAIRED_METHODS:
        raise InputError(f"method: expected one of {', '.join(PAIRED_METHODS)}, got {method!r}")
    return method


def _n_perm(n_perm) -> int:
    if isinstance(n_perm, (bool, np.bool_)) or not isinstance(n_perm, (int, np.integer)) or n_perm < 99:
        raise InputError(f"n_perm: expected an integer >= 99 (Monte Carlo sign flips), got {n_perm!r}")
    return int(n_perm)


def _t_quantile(upper_tail: float, df: int) -> float:
    """The quantile of Student's t with ``df`` degrees of freedom that has ``upper_tail`` above it."""
    return -float(special.stdtrit(df, upper_tail))


def _margin(margin) -> float:
    try:
        m = float(margin)
    except (TypeError, ValueError):
        raise InputError(f"margin: expected a number in [-1, 1] (a difference of SARs), got {margin!r}") from None
    if not (np.isfinite(m) and -1.0 <= m <= 1.0):
        raise InputError(f"margin: expected a number in [-1, 1] (a difference of SARs), got {margin!r}")
    return m


# --- the two reference distributions ------------------------------------------------------------------


def _standard_error(diff: np.ndarray, k: int) -> float:
    """Between-sample standard error of mean(d), d = diff / K, from integer differences (exact zero when all equal)."""
    n = diff.size
    if n < 2:
        return float("nan")
    s1, s2 = int(diff.sum()), int(np.dot(diff, diff))
    num = n * s2 - s1 * s1  # n (n - 1) var(diff), an exact integer
    return float(np.sqrt(num / (n * (n - 1)) / n)) / k


def _t_stat(centred: float, se: float) -> float:
    if not np.isfinite(se):
        return float("nan")
    if se == 0.0:
        return 0.0 if centred == 0.0 else float(np.copysign(np.inf, centred))
    return centred / se


def _t_pvalues(t: float, n: int) -> tuple[float, float, float]:
    """(two-sided, P(T >= t), P(T <= t)) for Student's t with n - 1 df; no information (1, 1, 1) for N < 2."""
    if np.isnan(t):
        return 1.0, 1.0, 1.0
    df = n - 1
    return float(min(1.0, 2.0 * special.stdtr(df, -abs(t)))), float(special.stdtr(df, -t)), float(special.stdtr(df, t))


def _sign_flip_pvalues(e: np.ndarray, integer: bool, n_perm: int, seed) -> tuple[float, float, float, bool, int]:
    """Sign-flip (randomisation) p-values of S = sum e: (two-sided, P(S* >= S), P(S* <= S), exact, n_perm used).

    S* = sum s_i |e_i| with independent fair signs s_i. Zeros carry no
    information and are dropped. Integer ``e``: exact distribution of S* by
    dynamic programming over subset sums when it fits ``_EXACT_BUDGET``.
    Otherwise complete enumeration of the signs when at most
    ``_ENUMERATE_MAX`` values are nonzero, else ``n_perm`` Monte Carlo sign
    vectors with p = (1 + #{as extreme}) / (1 + n_perm), which is a valid
    p-value (the observed signs count as one of the draws).
    """
    a = np.abs(e[e != 0])
    m = a.size
    if m == 0:
        return 1.0, 1.0, 1.0, True, 0
    s_obs = e.sum()
    if integer:
        ai = a.astype(np.int64)
        total = int(ai.sum())
        if m * (total + 1) <= _EXACT_BUDGET:
            # dist[u] = P(sum of a_i over the plus signs = u); S* = 2u - total.
            dist = np.zeros(total + 1)
            dist[0] = 1.0
            top = 0
            for v in np.sort(ai):
                v = int(v)
                dist[v : top + v + 1] += dist[: top + 1].copy()
                dist[: top + v + 1] *= 0.5
                top += v
            s_star = 2 * np.arange(total + 1, dtype=np.int64) - total
            so = int(round(float(s_obs)))
            two = float(dist[np.abs(s_star) >= abs(so)].sum())
            ge = float(dist[s_star >= so].sum())
            le = float(dist[s_star <= so].sum())
            return min(1.0, two), min(1.0, ge), min(1.0, le), True, 0
    tol = 1e-9 * max(1.0, float(a.sum()))
    if m <= _ENUMERATE_MAX:
        bits = (np.arange(1 << m, dtype=np.int64)[:, None] >> np.arange(m)) & 1
        s_star = (2 * bits - 1) @ a
        return (float(np.mean(np.abs(s_star) >= abs(s_obs) - tol)), float(np.mean(s_star >= s_obs - tol)),
                float(np.mean(s_star <= s_obs + tol)), True, 0)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    c_two = c_ge = c_le = 0
    chunk = max(1, (1 << 22) // m)
    for start in range(0, n_perm, chunk):
        size = min(n_perm, start + chunk) - start
        signs = rng.integers(0, 2, size=(size, m), dtype=np.int8) * 2 - 1
        s_star = signs @ a
        c_two += int(np.count_nonzero(np.abs(s_star) >= abs(s_obs) - tol))
        c_ge += int(np.count_nonzero(s_star >= s_obs - tol))
        c_le += int(np.count_nonzero(s_star <= s_obs + tol))
    q = float(n_perm + 1)
    return (c_two + 1) / q, (c_ge + 1) / q, (c_le + 1) / q, False, n_perm


def _pvalues(diff: np.ndarray, k: int, shift: float, method: str, n_perm: int, seed):
    """(two-sided, upper, lower, t, se, exact, n_perm) for H0 mean(d) = shift, d = diff / K."""
    n = diff.size
    se = _standard_error(diff, k)
    centred = float(diff.sum()) / (n * k) - shift
    t = _t_stat(centred, se)
    if method == "sandwich":
        two, ge, le = _t_pvalues(t, n)
        return two, ge, le, t, se, False, 0
    # Sign flips of e_i = d_i - shift, in units of 1 / K. The sum of e_i^2 is the same for every sign pattern,
    # so the studentised statistic is a monotone function of sum e_i and the test on the sum is the test on t.
    units = diff.astype(np.float64) - shift * k
    integer = bool(np.all(np.abs(units - np.round(units)) <= 1e-9 * k))
    e = np.round(units) if integer else units
    two, ge, le, exact, used = _sign_flip_pvalues(e, integer, n_perm, seed)
    return two, ge, le, t, se, exact, used


# --- public ---------------------------------------------------------------------------------------


def paired_sar_test(flips_a, flips_b, draws: int | None = None, method: str = "permutation", *,
                    confidence: float = 0.95, n_perm: int = 9999,
                    seed: int | np.random.Generator = 0) -> PairedSARTest:
    """Two-sided paired test of SAR^A = SAR^B for two models audited on the same samples and keyed draws.

    ``flips_a``, ``flips_b``: per-sample flip counts n_i (N,) with ``draws`` =
    K, or per-draw flip indicators (N, K) (bool or 0/1; ``draws`` then
    optional, and must equal K if given). Sample i must be the same image
    with the same K draws in both. ``method``: ``"permutation"`` (default) or
    ``"sandwich"``; ``confidence``: level of the interval of the difference;
    ``n_perm`` and ``seed`` (int or ``numpy.random.Generator``) are used only
    when the permutation distribution is too large to enumerate. The same
    inputs and seed give the same result.

    Notes
    -----
    d_i = (n_i^A - n_i^B) / K; mean(d) = SAR^A - SAR^B (pooled over samples).
    Under H0 "A and B are exchangeable on each sample" the sign of every d_i
    is a fair coin, independently across samples: the permutation test refers
    sum d_i to its distribution over all 2^N sign patterns (Fisher 1935).
    Samples with d_i = 0 do not change it. With integer n_i the distribution
    is computed exactly by dynamic programming over subset sums (cost about
    N * sum |n_i^A - n_i^B|); beyond that budget, ``n_perm`` random sign
    patterns from ``seed`` with p = (1 + #{|S*| >= |S|}) / (1 + n_perm).
    Because sum d_i^2 is invariant under sign flips, the test is the same as
    the sign-flip test of the studentised mean, which stays asymptotically
    valid under the weaker H0 mean(d) = 0 (its randomisation distribution and
    its sampling distribution both tend to the standard normal).

    The sandwich method: t = mean(d) / (s_d / sqrt(N)), s_d the sample
    standard deviation of d_i, referred to Student's t with N - 1 degrees of
    freedom. s_d^2 / N is the cluster-robust (CR1, one cluster per sample)
    variance of the difference of pooled rates on paired samples; it accounts
    for both the clustering of draws and the pairing of the two models.

    The interval is mean(d) +- t_{N-1} s_d / sqrt(N) for either method,
    clipped to [-1, 1] (for the permutation method it may disagree with the
    p-value at the margin of significance). Degenerate cases: all d_i equal
    gives a zero-width interval (t = 0, p = 1 if they are 0; t = +-inf if
    not, p = 0 for the sandwich method); N = 1 gives t = NaN, p = 1 and the
    interval [-1, 1].
    """
    m = _method(method)
    conf = _checks.confidence(confidence)
    perms = _n_perm(n_perm)
    na, nb, k = _pair("flips_a", flips_a, "flips_b", flips_b, draws)
    diff = na - nb
    n = diff.size
    two, _, _, t, se, exact, used = _pvalues(diff, k, 0.0, m, perms, seed)
    mean = float(diff.sum()) / (n * k)
    if n < 2:
        lo, hi = -1.0, 1.0
    else:
        half = _t_quantile((1.0 - conf) / 2.0, n - 1) * se
        lo, hi = max(-1.0, mean - half), min(1.0, mean + half)
    return PairedSARTest(
        difference=mean, ci_low=lo, ci_high=hi, confidence=conf, statistic=t, p_value=two, method=m,
        n_samples=n, n_discordant=int(np.count_nonzero(diff)), draws=k,
        sar_a=float(na.sum()) / (n * k), sar_b=float(nb.sum()) / (n * k), exact=exact, n_perm=used,
    )


def paired_noninferiority(flips_candidate, flips_baseline, draws: int | None = None, margin: float = 0.0,
                          method: str = "permutation", *, confidence: float = 0.95, n_perm: int = 9999,
                          seed: int | np.random.Generator = 0) -> NonInferiorityTest:
    """One-sided paired test of SAR^candidate - SAR^baseline against ``margin`` on the same samples and draws.

    Inputs as for ``paired_sar_test`` (counts with ``draws``, or per-draw
    indicators (N, K)); ``margin`` in [-1, 1], a difference of pooled SARs
    (0: no worsening at all tolerated). ``confidence`` sets ``upper_bound``,
    the one-sided upper confidence bound of the difference. The result has
    both one-sided p-values (see ``NonInferiorityTest``): ``p_value`` for
    H0 "difference >= margin" (``rejects``: non-inferiority shown) and
    ``p_regression`` for H0 "difference <= margin" (``shows_regression``:
    worse by more than the margin shown).

    Notes
    -----
    e_i = d_i - margin, d_i = (n_i^cand - n_i^base) / K. Permutation: the
    sign-flip distribution of sum e_i (exact when margin K is an integer and
    the dynamic programme fits, or when at most 16 e_i are nonzero; else
    Monte Carlo with the +1 correction). At margin 0 it is exact under
    exchangeable models; for a nonzero margin e_i need not be symmetric
    under H0, and the test relies on the studentised sign-flip test being
    asymptotically valid for mean(e) = 0. Sandwich: t = mean(e) / (s_d /
    sqrt(N)) on N - 1 degrees of freedom; then ``rejects(alpha)`` holds
    exactly when the upper bound at confidence 1 - alpha is below the margin.
    """
    m = _method(method)
    conf = _checks.confidence(confidence)
    perms = _n_perm(n_perm)
    mg = _margin(margin)
    nc, nb, k = _pair("flips_candidate", flips_candidate, "flips_baseline", flips_baseline, draws)
    diff = nc - nb
    n = diff.size
    _, ge, le, t, se, exact, used = _pvalues(diff, k, mg, m, perms, seed)
    mean = float(diff.sum()) / (n * k)
    upper = 1.0 if n < 2 else min(1.0, mean + _t_quantile(1.0 - conf, n - 1) * se)
    return NonInferiorityTest(
        difference=mean, margin=mg, upper_bound=upper, confidence=conf, statistic=t, p_value=le, p_regression=ge,
        method=m, n_samples=n, n_discordant=int(np.count_nonzero(diff)), draws=k,
        sar_candidate=float(nc.sum()) / (n * k), sar_baseline=float(nb.sum()) / (n * k), exact=exact, n_perm=used,
    )
