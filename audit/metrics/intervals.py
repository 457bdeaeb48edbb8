"""Confidence intervals for attack rates: Wilson, Clopper-Pearson, and cluster-aware ones for pooled rates.

A per-sample rate SAR_i = n_i / K counts K independent noise draws on one
image: a binomial proportion, for which Wilson and Clopper-Pearson are the
standard intervals. A pooled rate (per class SAR_c, or over all samples) adds
the n_i of many images, and draws of one image are *not* independent of each
other: some images flip often, most never. Treating the N_c K draws as
independent then gives intervals that are far too narrow, so pooled rates get
a cluster-aware interval: a design-effect-corrected Wilson interval (default,
deterministic), a design-effect-corrected Clopper-Pearson interval
(``cluster_exact_interval``, for rates near zero and for decisions), or a
bootstrap over samples (seeded). The design effect has one home,
``cluster_design_effect`` (clusters of any size: the lesion SAR's too); where
the data cannot show the clustering (no flip at all, or only flips) it takes
the worst case, so the effective sample size is the number of samples.

Near zero, Wilson is anti-conservative on the lower side: it inverts a normal
approximation of a binomial whose mean n p is then below a few counts and
strongly right-skewed, so one or two flips already pull its lower bound well
above the rates that could plausibly have produced them. One flip in 200
draws: the two-sided 99.5% Wilson lower bound is 5.1e-4, the exact
(Clopper-Pearson) one 1.3e-5, forty times lower; with N = 40 samples, K = 50
draws and a true rate of 4.5e-4, the one-sided 99.5% Wilson lower bound lies
above the truth in about 1.4% of audits against at most 0.5% promised, the
exact one in about 0.2%. A gate that fails a model when a lower bound exceeds
its limit should therefore use ``exact_lower_bound`` (and ``exact_upper_bound``
to pass one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from audit.errors import InputError
from audit.metrics import _checks

#: Interval methods for a pooled rate over samples (see ``pooled_rate_interval``).
POOLED_METHODS = ("cluster_wilson", "bootstrap", "wilson", "clopper_pearson", "cluster_exact")
#: Interval methods for a binomial proportion (see ``binomial_interval``).
BINOMIAL_METHODS = ("wilson", "clopper_pearson")


def _z(confidence: float) -> float:
    return float(special.ndtri(0.5 + confidence / 2.0))


def _counts(successes, trials) -> tuple[np.ndarray, np.ndarray]:
    x = _checks.integer_array("successes", successes)
    n = _checks.integer_array("trials", trials)
    try:
        x, n = np.broadcast_arrays(x, n)
    except ValueError:
        raise InputError(f"successes, trials: expected broadcastable shapes, got {x.shape} and {n.shape}") from None
    if np.any(n < 0) or np.any(x < 0) or np.any(x > n):
        raise InputError("successes, trials: expected 0 <= successes <= trials")
    return x, n


def _wilson_bounds(p: np.ndarray, n: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson bounds for observed proportion ``p`` out of ``n`` (may be fractional, an effective size)."""
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z / denom * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    # At p = 0 (p = 1) the lower (upper) bound is exactly 0 (1); clip rounding elsewhere.
    lo = np.where(p == 0.0, 0.0, np.clip(centre - half, 0.0, 1.0))
    hi = np.where(p == 1.0, 1.0, np.clip(centre + half, 0.0, 1.0))
    return lo, hi


def _out(lo: np.ndarray, hi: np.ndarray, scalar: bool):
    if scalar:
        return float(lo), float(hi)
    return lo, hi


def wilson_interval(successes, trials, confidence: float = 0.95):
    """Wilson score interval for a binomial proportion ``successes / trials``: ``(low, high)``.

    Inputs broadcast; scalars give floats, arrays give arrays. Where
    ``trials == 0`` the interval is NaN (no information), so a class with no
    samples carries NaN through a vectorised call.

    Notes
    -----
    With p = x/n and z the normal quantile of (1 + confidence)/2:
    centre = (p + z^2/(2n)) / (1 + z^2/n), half-width = z/(1 + z^2/n) *
    sqrt(p(1-p)/n + z^2/(4n^2)) (Wilson 1927; Newcombe 1998, method 3). Unlike
    the Wald interval it stays inside [0, 1] and is not degenerate at 0/n, which
    is where attack rates of robust models live.
    """
    conf = _checks.confidence(confidence)
    scalar = np.ndim(successes) == 0 and np.ndim(trials) == 0
    x, n = _counts(successes, trials)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo, hi = _wilson_bounds(x / n.astype(np.float64), n.astype(np.float64), _z(conf))
    empty = n == 0
    lo, hi = np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)
    return _out(lo, hi, scalar)


def clopper_pearson_interval(successes, trials, confidence: float = 0.95):
    """Clopper-Pearson ("exact") interval for a binomial proportion: ``(low, high)``.

    Inputs broadcast; scalars give floats, arrays give arrays; NaN where ``trials == 0``.

    Notes
    -----
    low = Beta quantile(alpha/2; x, n - x + 1) (0 when x = 0), high = Beta
    quantile(1 - alpha/2; x + 1, n - x) (1 when x = n), alpha = 1 - confidence
    (Clopper & Pearson 1934). Coverage is at least nominal for every p, so it is
    wider than Wilson; use it where a guaranteed bound matters more than length.
    """
    conf = _checks.confidence(confidence)
    scalar = np.ndim(successes) == 0 and np.ndim(trials) == 0
    x, n = _counts(successes, trials)
    alpha = 1.0 - conf
    xf, nf = x.astype(np.float64), n.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(x == 0, 0.0, stats.beta.ppf(alpha / 2.0, np.maximum(xf, 1e-300), nf - xf + 1.0))
        hi = np.where(x == n, 1.0, stats.beta.ppf(1.0 - alpha / 2.0, xf + 1.0, np.maximum(nf - xf, 1e-300)))
    empty = n == 0
    lo, hi = np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)
    return _out(lo, hi, scalar)


def binomial_interval(successes, trials, confidence: float = 0.95, method: str = "wilson"):
    """``wilson_interval`` or ``clopper_pearson_interval`` by name (``method`` in ``BINOMIAL_METHODS``)."""
    if method == "wilson":
        return wilson_interval(successes, trials, confidence)
    if method == "clopper_pearson":
        return clopper_pearson_interval(successes, trials, confidence)
    raise InputError(f"method: expected one of {', '.join(BINOMIAL_METHODS)}, got {method!r}")


def _cluster_counts(successes, trials) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster successes x_i and trials m_i: 1-D integers, equal lengths, 0 <= x_i <= m_i, m_i >= 1."""
    x = _checks.integer_array("successes", successes)
    m = _checks.integer_array("trials", trials)
    if x.ndim != 1 or m.shape != x.shape:
        raise InputError(f"successes, trials: expected two 1-D arrays of per-cluster counts of one length, got shapes "
                         f"{x.shape} and {m.shape}")
    if x.size and (m.min() < 1 or x.min() < 0 or np.any(x > m)):
        raise InputError("successes, trials: expected 0 <= successes <= trials and trials >= 1 in every cluster")
    return x, m


def _cluster_design_effect(x: np.ndarray, m: np.ndarray) -> float:
    """``cluster_design_effect`` on checked, non-empty counts."""
    n, total = x.size, float(m.sum())
    largest = float(m.max())
    p = float(x.sum()) / total
    if p in (0.0, 1.0) or n == 1:
        return largest
    xf, mf = x.astype(np.float64), m.astype(np.float64)
    var_cluster = n / (n - 1) * float(np.sum((xf - p * mf) ** 2)) / total**2
    return float(np.clip(var_cluster / (p * (1.0 - p) / total), 1.0, largest))


def cluster_design_effect(successes, trials) -> float:
    """Design effect of a pooled rate sum x_i / sum m_i over clusters of m_i trials each (sample i: m_i draws, or
    K L_i lesion-draws), x_i successes (flips) among them. Returns a float in [1, max m_i].

    The one home of the design effect: ``design_effect`` (per-class and overall SAR, m_i = K) and
    ``audit.metrics.detection.lesion_sar`` (lesion SAR, m_i = K L_i) both use it.

    Notes
    -----
    The pooled rate p = sum x_i / M, M = sum m_i, is a ratio estimator. Its variance across clusters
    (linearisation: N / (N - 1) sum (x_i - p m_i)^2 / M^2) over the binomial variance p (1 - p) / M is the design
    effect (Kish 1965), clipped to [1, max m_i]: 1 when the successes are spread as independent trials would
    spread them, max m_i when whole clusters succeed or fail together. With equal m_i = K it is the familiar
    s^2 / N over p (1 - p) / (N K), s^2 the sample variance of x_i / K, and 1 + (K - 1) ICC.

    Where the data cannot show the clustering the worst case is taken:

    - p = 0 (or p = 1): no success (or no failure) at all, so no variance to estimate. The design effect is
      then max m_i: the effective sample size is the number of clusters (for equal sizes), not of trials. This
      is the only choice that is valid whatever the clustering. The audited samples are a sample of the images
      the rate is about; an image whose flip probability is p_i flips at least once in its K draws with
      probability 1 - (1 - p_i)^K >= p_i, so the chance that none of N independent samples flips is at most
      (1 - SAR)^N, SAR the mean p_i of the population: Clopper-Pearson's bound for 0 successes in N trials
      covers SAR. Equality holds when a fraction SAR of images always flips and the rest never do, so no
      larger effective size is valid without an assumption about how flips cluster. Taking deff = 1 (all
      N K draws independent) gave an upper bound of about 3.7 / (N K) that a few fragile images not in the
      sample lie far above (per-class SAR with N_c = 20, K = 20, 1 image in 20 flipping 30% of its draws:
      the one-sided 95% upper bound covered the class SAR in 60% of audits, now in 99.7%;
      ``test_upper_bound_covers_clustered_rare_flips_where_deff_one_at_zero_did_not``).
      Unequal sizes: with w_i = m_i / max m_i <= 1, sum log(1 - p_i) <= sum w_i log(1 - p_i) <=
      (sum w_i) log(1 - p) (Jensen), p the m-weighted mean, so n_eff = M / max m_i = sum w_i is valid too.
    - N = 1: between-cluster spread unobservable; m_1, the interval of one trial.

    No-flip floor (applied by the intervals, not to this estimate). With flips seen, the design effect is
    estimated from the data, and that estimate cannot see fragile images the sample happens to miss or to
    catch on few draws: one flip in N K draws looks spread out (deff near 1), so it gave a far TIGHTER upper
    bound than no flip at all (N = 48, K = 10, 95% one-sided exact: 0 flips 0.063, 1 flip 0.010), and where a
    few images flip often and the rest rarely (not never) the 95% upper bound covered the true SAR in only
    0.79 to 0.91 of audits (N = 20 to 40, K = 20, 5% of images at 0.3 to 0.5, the rest at 0.001 to 0.003;
    ``test_no_flip_floor_covers_rare_fragile_images``). So every upper bound of a pooled rate
    (``cluster_rate_interval``, ``cluster_wilson_interval``, ``cluster_exact_interval``, ``exact_upper_bound``;
    the lesion SAR's through the first) is max(the bound with the estimated deff, the bound of 0 successes with
    deff = max m_i on the same clusters), and every lower bound mirrors it near p = 1: min(the bound with the
    estimated deff, the bound of all successes with deff = max m_i), which is 1 minus the no-flip upper bound.
    An interval for a rate observed with few flips cannot claim more than one observed with none: more flips
    are never evidence of a lower rate (the no-flip bound is the valid one for x = 0, argued above, and any flip
    makes a low SAR less plausible, not more, so a confidence procedure ordered by the evidence cannot bound
    x >= 1 below it). Raising a bound never lowers its coverage, so the max covers at least as often as the
    estimate alone; in the scenario above it covers in 1.0 of audits (the floor, about 3 / N, lies above the
    SAR of 0.022 up to N of about 130; past that the estimate alone decides, and there it already covered
    0.96 at N = 100 and 200). It costs nothing where flips
    are many: once the estimated bound exceeds the floor (a few flips in the N K draws) it decides. With the
    floor the upper bound is non-decreasing in the number of flips where flips are added evenly or over a part
    of the samples; where they fill one sample after another, the estimated deff falls from its clip at K
    just after a sample fills, and the bound can dip by about 1% of itself (never below the floor).
    ``test_upper_bound_never_drops_below_no_flips_and_grows_with_flips``. A floor on the deff alone (e.g. max
    m_i while few clusters flip) was not taken: it needs a threshold for "few" and still lets one flip in many
    draws give a tighter bound than none whenever the threshold is passed.

    The design effect returned here is the estimate (what ``ClusterRate.deff`` and ``LesionSar.deff`` report);
    where the floor decides, the interval is wider than deff alone implies.
    """
    x, m = _cluster_counts(successes, trials)
    if x.size == 0:
        raise InputError("successes, trials: expected at least one cluster")
    return _cluster_design_effect(x, m)


def design_effect(flip_counts, draws: int) -> float:
    """Design effect of a pooled rate over samples: its variance over the variance if all draws were independent.

    ``flip_counts``: n_i per sample, shape (N,); ``draws``: K per sample.
    Returns a float in [1, K].

    Notes
    -----
    ``cluster_design_effect`` with every cluster of K draws: the pooled rate is p = sum n_i / (N K); across
    samples (the clusters) its variance is estimated by s^2 / N, s^2 the sample variance (ddof 1) of SAR_i =
    n_i / K; under independence it would be p (1 - p) / (N K). Their ratio is the design effect deff = 1 +
    (K - 1) ICC (Kish 1965), which lies in [1, K]: 1 when flips are spread evenly over the samples, K when every
    sample either always or never flips. The estimate is clipped to that range. Where it cannot be estimated
    the worst case is taken (``cluster_design_effect``): p = 0 or 1 (no spread at all in the data) gives K, so
    the effective sample size is the number of samples N; N = 1 gives K, the interval of one Bernoulli trial.
    """
    k = _checks.draws("draws", draws)
    n_i = _checks.flip_counts("flip_counts", flip_counts, k)
    if n_i.size == 0:
        raise InputError("flip_counts: expected at least one sample")
    return _cluster_design_effect(n_i, np.full(n_i.size, k, np.int64))


def _df_factor(n: int, z: float, t_quantile) -> float:
    """Korn & Graubard's (z / t_{N-1})^2 for N >= 2 clusters, 1 for N = 1 (no degrees of freedom)."""
    return (z / float(t_quantile(n - 1))) ** 2 if n >= 2 else 1.0


def _effective_two_sided(x: np.ndarray, m: np.ndarray, conf: float) -> tuple[float, float, float]:
    """(deff, n_eff, factor) for a two-sided interval at ``conf`` on checked, non-empty cluster counts
    (``effective_draws``); ``factor`` is the degrees-of-freedom factor in n_eff (``_df_factor``)."""
    deff = _cluster_design_effect(x, m)
    factor = _df_factor(x.size, _z(conf), lambda df: stats.t.ppf(0.5 + conf / 2.0, df))
    return deff, float(float(m.sum()) / deff * factor), factor


def _no_flip_size(m: np.ndarray, factor: float) -> float:
    """n_eff of the same clusters with no flip (or only flips): M / max m_i (deff = the largest cluster), times
    the degrees-of-freedom ``factor``: the floor's effective size (``cluster_design_effect``, "No-flip floor")."""
    return float(m.sum()) / float(m.max()) * factor


def effective_draws(flip_counts, draws: int, confidence: float = 0.95) -> float:
    """Effective number of independent draws behind a pooled rate: N K / deff, times (z / t_{N-1})^2 for N >= 2.

    ``flip_counts``: n_i per sample (N,), ``draws``: K. This is the n that
    ``cluster_wilson_interval`` puts into Wilson's formula.

    Notes
    -----
    N K / deff is Kish's effective sample size. The factor (z / t_{N-1})^2, z
    and t the two-sided quantiles of the normal and of Student's t with N - 1
    degrees of freedom, accounts for the design effect being estimated from
    only N samples (Korn & Graubard 1998); it matters for classes with few
    clean predictions and vanishes as N grows. For N = 1 it is left out (no
    degrees of freedom; deff = K already makes the one sample one trial).
    With no flip (or only flips) deff = K (``cluster_design_effect``): n_eff is
    N times the factor, the number of samples, not of draws.
    """
    conf = _checks.confidence(confidence)
    k = _checks.draws("draws", draws)
    n_i = _checks.flip_counts("flip_counts", flip_counts, k)
    if n_i.size == 0:
        raise InputError("flip_counts: expected at least one sample")
    return _effective_two_sided(n_i, np.full(n_i.size, k, np.int64), conf)[1]


@dataclass(frozen=True)
class ClusterRate:
    """A pooled rate over clusters with its design-effect Wilson interval (``cluster_rate_interval``)."""

    rate: float
    low: float
    high: float
    deff: float
    n_eff: float


def cluster_rate_interval(successes, trials, confidence: float = 0.95) -> ClusterRate:
    """Design-effect Wilson interval of a pooled rate sum x_i / sum m_i over clusters of unequal sizes m_i.

    ``successes``: x_i per cluster (N,), ``trials``: m_i per cluster (N,), m_i >= 1. Returns the rate, the
    interval, the design effect (``cluster_design_effect``) and the effective number of trials n_eff = M / deff,
    times (z / t_{N-1})^2 for N >= 2 (Korn & Graubard 1998), on which Wilson's formula is evaluated. All NaN for
    N = 0. With equal sizes m_i = K it is ``cluster_wilson_interval``; ``audit.metrics.detection.lesion_sar``
    uses it with m_i = K L_i lesion-draws per sample.

    The upper end is never below that of 0 successes on the same clusters (Wilson's upper bound at p = 0 on
    n_eff = M / max m_i, times the factor), and the lower end never above that of all successes (1 minus it):
    the no-flip floor of ``cluster_design_effect``. ``deff`` and ``n_eff`` are the estimate's, so where the
    floor decides the interval is wider than Wilson's on ``n_eff``.
    """
    conf = _checks.confidence(confidence)
    x, m = _cluster_counts(successes, trials)
    if x.size == 0:
        nan = float("nan")
        return ClusterRate(nan, nan, nan, nan, nan)
    deff, n_eff, factor = _effective_two_sided(x, m, conf)
    p = float(x.sum()) / float(m.sum())
    z = _z(conf)
    lo, hi = _wilson_bounds(np.float64(p), np.float64(n_eff), z)
    # No-flip floor (``cluster_design_effect``): never tighter than the interval of 0 (of all) flips.
    n0 = _no_flip_size(m, factor)
    _, hi0 = _wilson_bounds(np.float64(0.0), np.float64(n0), z)
    return ClusterRate(p, min(float(lo), 1.0 - float(hi0)), max(float(hi), float(hi0)), deff, n_eff)


def cluster_wilson_interval(flip_counts, draws: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson interval for a pooled rate p = sum n_i / (N K) on the effective number of draws.

    ``flip_counts``: n_i per sample (N,), ``draws``: K. Deterministic; NaN for N = 0.

    Notes
    -----
    Study 2's per-class SAR_c pools N_c K perturbed inferences that are
    clustered by sample. Wilson's formula with n replaced by the effective
    number of draws n_eff (``effective_draws``: N K / deff, deff from
    ``design_effect``, with Korn & Graubard's degrees-of-freedom factor) and p
    kept as the observed pooled rate keeps Wilson's good behaviour near 0 and
    1 while widening the interval by the clustering the data show. In
    simulations with strongly clustered flips (SAR_i ~ Beta(0.3, 3), K = 50)
    coverage of the 95% interval is about 0.93 at N = 30 and 0.91 at N = 10,
    against about 0.4 for naive Wilson on the N K draws; with very rare,
    concentrated flips and N ~ 10 no method covers well. With no flip the
    upper bound is that of 0 successes in about N trials (deff = K, see
    ``cluster_design_effect``), and with flips it is never lower than that
    (the no-flip floor; the lower bound mirrors it near 1).
    """
    k = _checks.draws("draws", draws)
    n_i = _checks.flip_counts("flip_counts", flip_counts, k)
    r = cluster_rate_interval(n_i, np.full(n_i.size, k, np.int64), confidence)
    return r.low, r.high


def bootstrap_interval(
    flip_counts, draws: int, confidence: float = 0.95, *, n_boot: int = 2000, seed: int | np.random.Generator = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval for a pooled rate sum n_i / (N K), resampling whole samples.

    ``flip_counts``: n_i per sample (N,), ``draws``: K, ``n_boot`` resamples,
    ``seed``: an int or a ``numpy.random.Generator`` (turned into one generator
    once; the same seed gives the same interval).

    Notes
    -----
    Resampling samples, not draws, keeps each image's draws together, so the
    interval reflects the between-image spread of SAR_i (Efron & Tibshirani
    1993, ch. 13). It makes no distributional assumption but is degenerate
    when the pooled rate is 0 or 1 (the interval is [0, 0] or [1, 1]) and
    under-covers for few samples, which is why it is an option, not the default.
    """
    conf = _checks.confidence(confidence)
    k = _checks.draws("draws", draws)
    n_i = _checks.flip_counts("flip_counts", flip_counts, k)
    if isinstance(n_boot, (bool, np.bool_)) or not isinstance(n_boot, (int, np.integer)) or n_boot < 10:
        raise InputError(f"n_boot: expected an integer >= 10 (number of bootstrap resamples), got {n_boot!r}")
    n = n_i.size
    if n == 0:
        return float("nan"), float("nan")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    rates = np.empty(int(n_boot), dtype=np.float64)
    chunk = max(1, (1 << 22) // n)  # about 4M indices (32 MiB) at a time, whatever N is
    for start in range(0, int(n_boot), chunk):
        stop = min(int(n_boot), start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        rates[start:stop] = n_i[idx].sum(axis=1) / (n * k)
    alpha = 1.0 - conf
    lo, hi = np.quantile(rates, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def pooled_rate_interval(
    flip_counts,
    draws: int,
    confidence: float = 0.95,
    *,
    method: str = "cluster_wilson",
    n_boot: int = 2000,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float]:
    """Interval for a pooled rate sum n_i / (N K) by ``method`` (one of ``POOLED_METHODS``).

    ``"cluster_wilson"`` (default), ``"cluster_exact"`` and ``"bootstrap"``
    respect the clustering of draws by sample; ``"wilson"`` and ``"clopper_pearson"`` treat all N K draws
    as independent and are only right when flips are spread evenly over the
    samples. NaN for N = 0 (e.g. a class with no clean predictions).
    """
    k = _checks.draws("draws", draws)
    n_i = _checks.flip_counts("flip_counts", flip_counts, k)
    if method == "cluster_wilson":
        return cluster_wilson_interval(n_i, k, confidence)
    if method == "bootstrap":
        return bootstrap_interval(n_i, k, confidence, n_boot=n_boot, seed=seed)
    if method == "cluster_exact":
        return cluster_exact_interval(n_i, k, confidence)
    if method in BINOMIAL_METHODS:
        return binomial_interval(int(n_i.sum()), int(n_i.size * k), confidence, method)
    raise InputError(f"method: expected one of {', '.join(POOLED_METHODS)}, got {method!r}")


# --- exact (Clopper-Pearson) bounds on effective counts ----------------------------------------------


def _effective_counts(n_i: np.ndarray, k: int, tail: float) -> tuple[float, float]:
    """(x_eff, n_eff) of a pooled rate for a bound whose tail probability is ``tail``.

    n_eff = N K / deff (``design_effect``, in [1, K]; K when p is 0 or 1), times (z / t_{N-1})^2 with
    z and t the (1 - tail) quantiles of the normal and of Student's t with N - 1
    degrees of freedom when N >= 2 (Korn & Graubard 1998); x_eff = p n_eff.
    """
    n = n_i.size
    n_eff = n * k / design_effect(n_i, k) * _tail_factor(n, tail)
    p = n_i.sum() / (n * k)
    return float(p * n_eff), float(n_eff)


def _tail_factor(n: int, tail: float) -> float:
    """(z / t_{N-1})^2 at the (1 - tail) quantiles for N >= 2 samples, 1 for N = 1."""
    return _df_factor(n, float(special.ndtri(tail)), lambda df: special.stdtrit(df, tail))


def _no_flip_upper(n: int, tail: float) -> float:
    """The exact upper bound of N samples with no flip: 0 flips in n_eff = N (z / t_{N-1})^2 trials (deff = K).

    The floor of every exact upper bound on N samples (and 1 minus it the ceiling of every lower bound), see
    ``cluster_design_effect``, "No-flip floor"."""
    return _beta_upper(0.0, n * _tail_factor(n, tail), tail)


def _beta_lower(x: float, n: float, tail: float) -> float:
    """Clopper-Pearson lower bound of x successes in n trials (both may be fractional): Beta(x, n - x + 1) quantile."""
    if x <= 0.0:
        return 0.0
    return float(special.betaincinv(x, n - x + 1.0, tail))


def _beta_upper(x: float, n: float, tail: float) -> float:
    """Clopper-Pearson upper bound: Beta(x + 1, n - x) quantile at 1 - tail (1 when x = n)."""
    if x >= n:
        return 1.0
    return float(special.betainccinv(x + 1.0, n - x, tail))


def _pooled_input(flip_counts, draws) -> tuple[np.ndarray, int]:
    k = _checks.draws("draws", draws)
    return _checks.flip_counts("flip_counts", flip_counts, k), k


def cluster_exact_interval(flip_counts, draws: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval for a pooled rate p = sum n_i / (N K) on effective counts: ``(low, high)``.

    ``flip_counts``: n_i per sample (N,), ``draws``: K. Deterministic; NaN for
    N = 0. Each side has tail probability (1 - confidence) / 2.

    Notes
    -----
    Korn & Graubard (1998): Clopper-Pearson's interval with the number of
    trials replaced by the effective number n_eff = N K / deff (``design_effect``,
    clipped to [1, K]), times the degrees-of-freedom factor (z / t_{N-1})^2,
    and the number of successes by x_eff = p n_eff. Both are fractional in
    general; the beta-quantile form of the bounds, low = Beta(x, n - x + 1)
    quantile at alpha/2 and high = Beta(x + 1, n - x) quantile at 1 - alpha/2,
    is defined for any real 0 <= x <= n and reduces to the exact binomial
    bounds when x and n are integers (flips spread evenly, many samples).

    Degenerate data: with no flips at all (p = 0) the design effect cannot be
    estimated and the worst case is taken, deff = K (``cluster_design_effect``):
    the upper bound is that of 0 flips in N trials (one per sample, less the
    degrees-of-freedom factor), about 3.7 / N at 95%, not 3.7 / (N K). The
    audited samples stand for the images the model will see, and a few
    fragile images that happen not to be among them can carry the whole rate;
    only a bound on N samples covers that (see ``cluster_design_effect`` for
    the argument); p = 1 mirrors it. When one sample carries all the flips the
    estimated design effect is about its count n_i, clipped to K (one Bernoulli
    trial per sample, the worst case), so such an interval is about as wide as
    that of one sample's worth of evidence. N = 1 gives deff = K: the interval
    of a single trial. With flips, the upper bound is never below the no-flip
    one and the lower bound never above its mirror at p = 1 (the no-flip floor
    of ``cluster_design_effect``: a few flips whose spread suggests deff near 1
    must not give a tighter bound than none).

    Near zero this is the interval to use for decisions: Wilson's lower bound
    is anti-conservative there (see the module docstring).
    """
    conf = _checks.confidence(confidence)
    n_i, k = _pooled_input(flip_counts, draws)
    if n_i.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - conf) / 2.0
    x, n = _effective_counts(n_i, k, tail)
    floor = _no_flip_upper(n_i.size, tail)
    return min(_beta_lower(x, n, tail), 1.0 - floor), max(_beta_upper(x, n, tail), floor)


def exact_lower_bound(flip_counts, draws: int, confidence: float = 0.95) -> float:
    """One-sided lower confidence bound (level ``confidence``) of a pooled rate sum n_i / (N K), exact form.

    ``flip_counts``: n_i per sample (N,), ``draws``: K; NaN for N = 0. The
    bound exceeds the true rate with probability at most 1 - confidence
    (exactly so for evenly spread flips; clustering is handled through the
    effective counts of ``cluster_exact_interval``, here with one-sided
    quantiles: tail probability 1 - confidence). 0 when no sample flipped;
    never above 1 minus the no-flip ``exact_upper_bound`` (the mirror of its
    floor, binding only near a rate of 1).

    Notes
    -----
    For a sequential gate that fails a rule as soon as this bound exceeds the
    limit, use confidence 1 - error / looks at each look (Bonferroni): a
    wrong fail then needs the bound to miss at one of the looks. Do not use
    Wilson's lower bound for that near zero; see the module docstring.
    """
    conf = _checks.confidence(confidence)
    n_i, k = _pooled_input(flip_counts, draws)
    if n_i.size == 0:
        return float("nan")
    tail = 1.0 - conf
    x, n = _effective_counts(n_i, k, tail)
    return min(_beta_lower(x, n, tail), 1.0 - _no_flip_upper(n_i.size, tail))


def exact_upper_bound(flip_counts, draws: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound (level ``confidence``) of a pooled rate sum n_i / (N K), exact form.

    ``flip_counts``: n_i per sample (N,), ``draws``: K; NaN for N = 0. The
    counterpart of ``exact_lower_bound`` (tail probability 1 - confidence);
    with no flips it is 1 - (1 - confidence)^(1 / n_eff), n_eff = N (z / t_{N-1})^2
    for N >= 2: the number of samples, not of draws (deff = K; see
    ``cluster_design_effect`` for why nothing larger is valid however the flip
    rates differ between samples). With flips it is the larger of the bound on
    the estimated effective counts and that no-flip bound (the no-flip floor):
    one flip does not claim more than none.
    """
    conf = _checks.confidence(confidence)
    n_i, k = _pooled_input(flip_counts, draws)
    if n_i.size == 0:
        return float("nan")
    tail = 1.0 - conf
    x, n = _effective_counts(n_i, k, tail)
    return max(_beta_upper(x, n, tail), _no_flip_upper(n_i.size, tail))
