"""Robustness of decisions to random perturbations: n_i, SAR, SAN, per-class SAR, CMR, exceedance curves.

Inputs are the labels a model gives each sample without noise, ``clean_labels``
(N,), and with each of K perturbations at one level (dose), ``perturbed_labels``
(N, K). A *flip* is a perturbed label that differs from the clean one; the
clean label is the model's prediction, not the ground truth, so these metrics
need no reference labels. All rates are fractions in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from audit.errors import InputError
from audit.io import plain
from audit.metrics import _checks
from audit.metrics.intervals import (
    BINOMIAL_METHODS,
    POOLED_METHODS,
    binomial_interval,
    pooled_rate_interval,
)

#: Default thresholds s of the exceedance curve: 0, 0.01, ..., 1.
DEFAULT_THRESHOLDS = np.linspace(0.0, 1.0, 101)
# SAR_i is a multiple of 1/K; a threshold that should equal one (0.3 from a
# grid) may land a rounding error above or below it. Comparing SAR_i > s + tol
# makes ">" mean "exceeds by more than rounding" (tol far below 1/K for any K).
_EXCEEDANCE_TOL = 1e-12


def flip_counts(clean_labels, perturbed_labels) -> np.ndarray:
    """n_i = number of the K perturbed labels of sample i that differ from its clean label: (N,) int64.

    ``clean_labels``: (N,) integer labels; ``perturbed_labels``: (N, K), K >= 1.

    Notes
    -----
    n_i = #{k : label(x_i + p_ik) != y_i}, y_i the clean prediction (study 1).
    """
    y, p = _checks.clean_and_perturbed(clean_labels, perturbed_labels, None)
    return np.count_nonzero(p != y[:, None], axis=1).astype(np.int64)


def sample_attack_rate(clean_labels, perturbed_labels) -> np.ndarray:
    """SAR_i = n_i / K, the fraction of perturbations that flip sample i: (N,) float64 in [0, 1].

    Notes
    -----
    Study 1's per-sample successful attack rate; a sample with SAR_i > 0 counts
    towards SAN. For its confidence interval (K independent draws on one image,
    a binomial proportion) use ``binomial_interval(n_i, K)``.
    """
    n_i = flip_counts(clean_labels, perturbed_labels)
    return n_i / np.asarray(perturbed_labels).shape[1]


def successful_attack_number(clean_labels, perturbed_labels) -> int:
    """SAN = number of samples flipped by at least one of the K perturbations (0 <= SAN <= N).

    Notes
    -----
    SAN = #{i : n_i >= 1} (study 1). It grows with K (more chances to flip), so
    compare SAN only between audits with the same K; ``san_fraction`` is SAN / N.
    """
    return int(np.count_nonzero(flip_counts(clean_labels, perturbed_labels)))


def san_fraction(clean_labels, perturbed_labels) -> float:
    """SAN / N, the fraction of samples flipped at least once, in [0, 1]."""
    n_i = flip_counts(clean_labels, perturbed_labels)
    return float(np.count_nonzero(n_i) / n_i.size)


def cmr_counts(clean_labels, perturbed_labels, n_classes: int) -> np.ndarray:
    """Counts behind the CMR: ``counts[a, b]`` = perturbed inferences predicted a of samples with clean prediction b.

    Shape (C, C) int64, C = ``n_classes``; column b sums to K N_b. These are
    the n of the CMR proportions, e.g. for ``cmr_z_test``.
    """
    c = _checks.n_classes("n_classes", n_classes)
    y, p = _checks.clean_and_perturbed(clean_labels, perturbed_labels, c)
    b = np.broadcast_to(y[:, None], p.shape)
    counts = np.bincount((p * c + b).ravel(), minlength=c * c)
    return counts.reshape(c, c).astype(np.int64)


def confusion_matrix_for_robustness(clean_labels, perturbed_labels, n_classes: int) -> np.ndarray:
    """CMR: ``cmr[a, b]`` = fraction of perturbed inferences of samples with clean prediction b predicted a.

    Shape (C, C) float64; rows are the perturbed prediction a, columns the clean
    prediction b. Every column sums to 1; a class b that the model never
    predicts on clean images has no perturbed inferences, and its column is NaN.

    Notes
    -----
    Study 2's Confusion Matrix for Robustness. Its diagonal is the fraction of
    perturbed inferences that keep the clean decision, so 1 - CMR[b, b] = SAR_b
    (``class_attack_rate``), and the off-diagonal entries of column b say which
    class the flips of class b go to. The orientation (columns = clean class)
    is the study's; ``classification.confusion_matrix`` has rows = truth.
    """
    counts = cmr_counts(clean_labels, perturbed_labels, n_classes)
    totals = counts.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)


def class_attack_rate(clean_labels, perturbed_labels, n_classes: int) -> np.ndarray:
    """SAR_c = flips among samples whose clean prediction is c over their K N_c perturbed inferences: (C,) float64.

    NaN for a class with no clean predictions (N_c = 0).

    Notes
    -----
    SAR_c = sum_{i : y_i = c} n_i / (K N_c), c the class predicted *without*
    noise (study 2); equals 1 - CMR[c, c]. The N_c K draws are clustered by
    sample: use ``class_attack_rate_intervals`` for intervals that respect that.
    """
    c = _checks.n_classes("n_classes", n_classes)
    y, p = _checks.clean_and_perturbed(clean_labels, perturbed_labels, c)
    n_i = np.count_nonzero(p != y[:, None], axis=1)
    flips = np.bincount(y, weights=n_i, minlength=c)
    n_c = np.bincount(y, minlength=c)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_c > 0, flips / (p.shape[1] * np.maximum(n_c, 1)), np.nan)


def class_attack_rate_intervals(
    clean_labels,
    perturbed_labels,
    n_classes: int,
    confidence: float = 0.95,
    *,
    method: str = "cluster_wilson",
    n_boot: int = 2000,
    seed: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Confidence intervals of SAR_c, one per class: ``(low, high)``, each (C,) float64, NaN where N_c = 0.

    ``method`` is one of ``intervals.POOLED_METHODS``; the default,
    ``"cluster_wilson"``, widens Wilson by the design effect of the clustering of
    draws by sample (see ``intervals.design_effect``). With ``"bootstrap"``,
    classes are resampled in class order from one generator made from ``seed``.
    """
    c = _checks.n_classes("n_classes", n_classes)
    if method not in POOLED_METHODS:
        raise InputError(f"method: expected one of {', '.join(POOLED_METHODS)}, got {method!r}")
    y, p = _checks.clean_and_perturbed(clean_labels, perturbed_labels, c)
    n_i = np.count_nonzero(p != y[:, None], axis=1)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    lo, hi = np.full(c, np.nan), np.full(c, np.nan)
    for cls in range(c):
        members = n_i[y == cls]
        if members.size:
            lo[cls], hi[cls] = pooled_rate_interval(
                members, p.shape[1], confidence, method=method, n_boot=n_boot, seed=rng
            )
    return lo, hi


def exceedance_curve(sar, thresholds=None) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of samples whose SAR_i exceeds each threshold s: ``(thresholds, fraction)``, float64 arrays.

    ``sar``: per-sample SAR_i (N,) in [0, 1]; ``thresholds``: 1-D values in
    [0, 1] (default ``DEFAULT_THRESHOLDS``, 101 points 0, 0.01, ..., 1).

    Notes
    -----
    E(s) = #{i : SAR_i > s} / N (study 1's SAR-exceedance curve). It is
    non-increasing in s, E(0) is the SAN fraction and E(1) = 0. ">" ignores
    differences below 1e-12, so a grid point that rounds to just under k/K does
    not count SAR_i = k/K as exceeding it.
    """
    s_i = _checks.fractions("sar", sar)
    if s_i.ndim != 1 or s_i.size == 0:
        raise InputError(f"sar: expected a non-empty 1-D array of per-sample SAR_i, got shape {s_i.shape}")
    t = DEFAULT_THRESHOLDS.copy() if thresholds is None else _checks.fractions("thresholds", thresholds)
    if t.ndim != 1 or t.size == 0:
        raise InputError(f"thresholds: expected a non-empty 1-D array of values in [0, 1], got shape {t.shape}")
    s_sorted = np.sort(s_i)
    above = s_i.size - np.searchsorted(s_sorted, t + _EXCEEDANCE_TOL, side="right")
    return t, above / s_i.size


@dataclass(frozen=True)
class RobustnessSummary:
    """The robustness metrics of one perturbation level: the per-level block of report.json.

    Arrays are NumPy; ``to_dict()`` gives plain lists, ints and floats (NaN as
    None) ready for ``json.dump(..., allow_nan=False)``.
    """

    n_samples: int  # N
    n_draws: int  # K
    n_classes: int  # C
    class_names: tuple[str, ...]
    confidence: float
    flip_counts: np.ndarray  # n_i, (N,) int
    sar: np.ndarray  # SAR_i, (N,)
    sar_low: np.ndarray  # per-sample interval, (N,)
    sar_high: np.ndarray
    sample_ci_method: str
    san: int
    san_fraction: float
    san_fraction_low: float  # Wilson over N independent samples
    san_fraction_high: float
    class_counts: np.ndarray  # N_c, (C,) int
    class_sar: np.ndarray  # SAR_c, (C,), NaN where N_c = 0
    class_sar_low: np.ndarray
    class_sar_high: np.ndarray
    class_ci_method: str
    overall_sar: float  # sum n_i / (N K)
    overall_sar_low: float  # same method as the per-class intervals
    overall_sar_high: float
    cmr: np.ndarray  # (C, C), rows perturbed prediction, columns clean prediction
    cmr_counts: np.ndarray  # (C, C) int
    thresholds: np.ndarray  # exceedance curve s
    exceedance: np.ndarray  # fraction of samples with SAR_i > s

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (lists, ints, floats; NaN -> None)."""
        return {
            "K": self.n_draws,
            "N": self.n_samples,
            "n_classes": self.n_classes,
            "class_names": list(self.class_names),
            "confidence": self.confidence,
            "SAN": self.san,
            "SAN_fraction": plain(self.san_fraction),
            "SAN_fraction_ci": [plain(self.san_fraction_low), plain(self.san_fraction_high)],
            "SAN_fraction_ci_method": "clopper_pearson",
            "SAR_overall": plain(self.overall_sar),
            "SAR_overall_ci": [plain(self.overall_sar_low), plain(self.overall_sar_high)],
            "per_sample": {
                "n_flips": plain(self.flip_counts),
                "SAR": plain(self.sar),
                "SAR_ci_low": plain(self.sar_low),
                "SAR_ci_high": plain(self.sar_high),
                "ci_method": self.sample_ci_method,
            },
            "per_class": {
                "N_c": plain(self.class_counts),
                "SAR": plain(self.class_sar),
                "SAR_ci_low": plain(self.class_sar_low),
                "SAR_ci_high": plain(self.class_sar_high),
                "ci_method": self.class_ci_method,
            },
            "CMR": {
                "matrix": plain(self.cmr),
                "counts": plain(self.cmr_counts),
                "rows": "perturbed prediction",
                "columns": "clean prediction",
                "class_order": list(self.class_names),
            },
            "exceedance": {"thresholds": plain(self.thresholds), "fraction": plain(self.exceedance)},
        }


def robustness_summary(
    clean_labels,
    perturbed_labels,
    n_classes: int,
    class_names: Sequence[str] | None = None,
    *,
    confidence: float = 0.95,
    class_ci_method: str = "cluster_exact",
    sample_ci_method: str = "clopper_pearson",
    thresholds=None,
    n_boot: int = 2000,
    seed: int | np.random.Generator = 0,
) -> RobustnessSummary:
    """All robustness metrics of one level from ``clean_labels`` (N,) and ``perturbed_labels`` (N, K).

    ``class_names`` default to "0", "1", ...; ``class_ci_method`` (one of
    ``intervals.POOLED_METHODS``) sets the intervals of SAR_c and of the
    overall SAR, ``sample_ci_method`` ("wilson" or "clopper_pearson") those of
    SAR_i; ``seed`` only matters for ``"bootstrap"``.

    Notes
    -----
    SAR_i, SAN and exceedance curves are study 1's; SAR_c and CMR study 2's.
    The default interval for pooled rates is the design-effect-corrected
    Wilson interval: deterministic (no seed in the report), well behaved at
    rates near 0 and for small N_c, and widened by the clustering of draws by
    image that naive Wilson on N_c K draws ignores.
    """
    c = _checks.n_classes("n_classes", n_classes)
    y, p = _checks.clean_and_perturbed(clean_labels, perturbed_labels, c)
    if class_names is None:
        names = tuple(str(i) for i in range(c))
    else:
        names = tuple(str(s) for s in class_names)
        if len(names) != c:
            raise InputError(f"class_names: expected {c} names (one per class), got {len(names)}")
    conf = _checks.confidence(confidence)
    if class_ci_method not in POOLED_METHODS:
        raise InputError(f"class_ci_method: expected one of {', '.join(POOLED_METHODS)}, got {class_ci_method!r}")
    if sample_ci_method not in BINOMIAL_METHODS:
        raise InputError(f"sample_ci_method: expected one of {', '.join(BINOMIAL_METHODS)}, got {sample_ci_method!r}")
    n, k = p.shape
    n_i = np.count_nonzero(p != y[:, None], axis=1).astype(np.int64)
    sar = n_i / k
    sar_low, sar_high = binomial_interval(n_i, np.full(n, k), conf, sample_ci_method)
    san = int(np.count_nonzero(n_i))
    # Exact by default: these rates are often near 0, where Wilson's bounds are anti-conservative.
    san_low, san_high = binomial_interval(san, n, conf, "clopper_pearson")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    class_low, class_high = class_attack_rate_intervals(
        y, p, c, conf, method=class_ci_method, n_boot=n_boot, seed=rng
    )
    overall_low, overall_high = pooled_rate_interval(n_i, k, conf, method=class_ci_method, n_boot=n_boot, seed=rng)
    counts = cmr_counts(y, p, c)
    t, exceed = exceedance_curve(sar, thresholds)
    return RobustnessSummary(
        n_samples=n,
        n_draws=k,
        n_classes=c,
        class_names=names,
        confidence=conf,
        flip_counts=n_i,
        sar=sar,
        sar_low=np.asarray(sar_low),
        sar_high=np.asarray(sar_high),
        sample_ci_method=sample_ci_method,
        san=san,
        san_fraction=san / n,
        san_fraction_low=san_low,
        san_fraction_high=san_high,
        class_counts=np.bincount(y, minlength=c).astype(np.int64),
        class_sar=class_attack_rate(y, p, c),
        class_sar_low=class_low,
        class_sar_high=class_high,
        class_ci_method=class_ci_method,
        overall_sar=float(n_i.sum() / (n * k)),
        overall_sar_low=overall_low,
        overall_sar_high=overall_high,
        cmr=confusion_matrix_for_robustness(y, p, c),
        cmr_counts=counts,
        thresholds=t,
        exceedance=exceed,
    )
