"""Evaluation of an out-of-distribution (OOD) detector (study 4): AUROC with a cluster bootstrap interval.

The detector gives each input a score, higher = more likely OOD (or perturbed).
AUROC = P(score of an OOD input > score of an in-distribution input), ties 1/2,
the two inputs independent (from different source images): the Mann-Whitney
statistic over the pairs (OOD input, in-distribution input) whose sources
*differ*. Pairs of an image's perturbed draw with its own clean score are left
out: they share the image's offset, so they compare only the perturbation
(P ~ Phi(delta / s_noise) rather than Phi(delta / sqrt(2 s_image^2 + s_noise^2))),
and counting them (1/N of all pairs, more in a resample that draws an image
twice) biases the estimate towards that paired value and made the cluster
bootstrap interval under-cover (N = 10 images, K = 5 draws: 54% for 95%;
cross-source pairs only: 95%). Where every input has its own source this is
the plain Mann-Whitney AUROC (``classification.auc``). The within-source
comparison is reported separately as ``paired``: the mean over sources with
both kinds of input of P(perturbed draw > its own clean score), the detector's
power to tell an image from its own perturbation.

Clustering: perturbed inputs come as K draws (noise, attack restarts) of each
source image, and the in-distribution inputs are usually those same images, so
scores of one source are correlated. The interval is a *cluster bootstrap over
source samples*: each resample draws the sources with replacement and takes all
their in-distribution and OOD scores together, then recomputes the AUROC of the
individual scores over the pairs of *different original* sources: a pair of
drawn sources (c, d) weighs mult_c mult_d for c != d and nothing for c = d, so a
source drawn twice is never compared with its own copy. Chosen over DeLong on per-sample aggregated scores because
it keeps the estimand (the AUROC of single inputs, what a deployed detector
sees) while respecting the clustering; aggregating first would estimate the
AUROC of per-image mean scores, a different and usually larger number. DeLong's
independent-input variance (``hypothesis.delong_auc_variance``) misstates the
uncertainty here: it counts K draws of one image as K independent inputs (too
narrow when the draws share the image's offset) and ignores the correlation
between an image's clean and perturbed scores (which can make it too wide).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.errors import InputError
from audit.metrics import _checks


@dataclass(frozen=True)
class OodAuroc:
    """AUROC of an OOD score with its cluster-bootstrap percentile interval over source samples."""

    auroc: float
    low: float
    high: float
    confidence: float
    n_in: int
    n_ood: int
    n_clusters: int
    n_boot: int
    n_valid: int
    seed: int | None
    paired: float = float("nan")  # mean over sources of P(perturbed draw > own clean score); NaN: no such source

    def to_dict(self) -> dict[str, Any]:
        return {"auroc": self.auroc, "ci": [self.low, self.high], "confidence": self.confidence, "n_in": self.n_in,
                "n_ood": self.n_ood, "n_clusters": self.n_clusters, "n_boot": self.n_boot, "n_valid": self.n_valid,
                "seed": self.seed, "paired": self.paired,
                "method": "cross-source pairs; cluster bootstrap over source samples"}


def _finite(name: str, value) -> np.ndarray:
    a = np.asarray(value)
    if not np.issubdtype(a.dtype, np.number) or a.dtype.kind == "c":
        raise InputError(f"{name}: expected real-valued scores, got dtype {a.dtype}")
    a = a.astype(np.float64).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise InputError(f"{name}: expected at least one finite score (no NaN or inf)")
    return a


def _within_wins(s_in: np.ndarray, s_ood: np.ndarray, k_in: np.ndarray, k_ood: np.ndarray,
                 n_c: int) -> tuple[np.ndarray, np.ndarray]:
    """Per source c: Mann-Whitney wins of its OOD inputs over its own in-distribution inputs (ties 1/2), and the
    number of such pairs, (n_c,) each."""
    wins, pairs = np.zeros(n_c), np.zeros(n_c)
    order_in = np.argsort(k_in, kind="stable")
    order_ood = np.argsort(k_ood, kind="stable")
    cut_in = np.searchsorted(k_in[order_in], np.arange(n_c + 1))
    cut_ood = np.searchsorted(k_ood[order_ood], np.arange(n_c + 1))
    for c in range(n_c):
        a = np.sort(s_in[order_in[cut_in[c] : cut_in[c + 1]]])
        b = s_ood[order_ood[cut_ood[c] : cut_ood[c + 1]]]
        if a.size and b.size:
            below = np.searchsorted(a, b, side="left")
            equal = np.searchsorted(a, b, side="right") - below
            wins[c] = float(np.sum(below + 0.5 * equal))
            pairs[c] = float(a.size * b.size)
    return wins, pairs


def _weighted_auroc(s_in: np.ndarray, s_ood: np.ndarray, k_in: np.ndarray, k_ood: np.ndarray, mult: np.ndarray,
                    within: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Cross-source Mann-Whitney AUROC for a batch of source multiplicity rows ``mult`` (B, n_c).

    All weighted pairs (weight mult_c(in) mult_d(ood)) minus the same-source ones (mult_c^2 times source c's own
    wins and pairs): exactly the pairs of different original sources, each pair of drawn copies counted once.
    """
    allv = np.unique(np.r_[s_in, s_ood])
    gi = np.searchsorted(allv, s_in)
    go = np.searchsorted(allv, s_ood)
    w_wins, w_pairs = within
    out = np.empty(mult.shape[0])
    for b in range(mult.shape[0]):
        m = mult[b].astype(np.float64)
        w_in, w_ood = m[k_in], m[k_ood]
        per_value = np.bincount(gi, weights=w_in, minlength=allv.size)
        below = np.cumsum(per_value) - per_value  # in-distribution weight strictly below each value
        wins = np.sum(w_ood * (below[go] + 0.5 * per_value[go])) - np.sum(m * m * w_wins)
        tot = w_in.sum() * w_ood.sum() - np.sum(m * m * w_pairs)
        out[b] = wins / tot if tot > 0 else np.nan
    return out


def ood_auroc(scores_in, scores_ood, clusters_in, clusters_ood, confidence: float = 0.95, *, n_boot: int = 2000,
              seed: int | np.random.Generator = 0) -> OodAuroc:
    """AUROC of an OOD detector's scores (OOD positive) and a cluster-bootstrap interval (module notes: why).

    ``scores_in`` (N_in,), ``scores_ood`` (N_ood,): the detector's score per input; ``clusters_in``,
    ``clusters_ood``: the source sample of each input (ids compared as text; an OOD draw shares its source's id, an
    input without a shared source gets its own id). ``n_boot`` 2000 resamples (the project's bootstrap default);
    ``seed`` an int or a Generator. Resamples with no cross-source pair are left out (``n_valid`` counts the rest).
    """
    s_in = _finite("scores_in", scores_in)
    s_ood = _finite("scores_ood", scores_ood)
    c_in = np.asarray(clusters_in).reshape(-1)
    c_ood = np.asarray(clusters_ood).reshape(-1)
    if c_in.shape != s_in.shape or c_ood.shape != s_ood.shape:
        raise InputError(f"clusters_in, clusters_ood: expected shapes {s_in.shape} and {s_ood.shape} to match the "
                         f"scores, got {c_in.shape} and {c_ood.shape}")
    conf = _checks.confidence(confidence)
    if isinstance(n_boot, (bool, np.bool_)) or not isinstance(n_boot, (int, np.integer)) or n_boot < 10:
        raise InputError(f"n_boot: expected an integer >= 10 (number of bootstrap resamples), got {n_boot!r}")
    ids, inv = np.unique(np.r_[c_in.astype(str), c_ood.astype(str)], return_inverse=True)
    k_in, k_ood = inv[: s_in.size], inv[s_in.size :]
    n_c = ids.size
    within = _within_wins(s_in, s_ood, k_in, k_ood, n_c)
    point = float(_weighted_auroc(s_in, s_ood, k_in, k_ood, np.ones((1, n_c)), within)[0])
    has = within[1] > 0
    paired = float(np.mean(within[0][has] / within[1][has])) if has.any() else float("nan")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    boots = np.empty(int(n_boot))
    chunk = max(1, (1 << 20) // max(1, s_in.size + s_ood.size))
    for start in range(0, int(n_boot), chunk):
        stop = min(int(n_boot), start + chunk)
        mult = np.stack([np.bincount(rng.integers(0, n_c, n_c), minlength=n_c) for _ in range(stop - start)])
        boots[start:stop] = _weighted_auroc(s_in, s_ood, k_in, k_ood, mult, within)
    valid = boots[~np.isnan(boots)]
    alpha = 1.0 - conf
    lo, hi = np.quantile(valid, [alpha / 2, 1 - alpha / 2]) if valid.size else (np.nan, np.nan)
    return OodAuroc(point, float(lo), float(hi), conf, int(s_in.size), int(s_ood.size), int(n_c), int(n_boot),
                    int(valid.size), int(seed) if isinstance(seed, (int, np.integer)) else None, paired)


def sample_ood_auroc(clean, perturbed, confidence: float = 0.95, *, keep=None, n_boot: int = 2000,
                     seed: int | np.random.Generator = 0) -> tuple[OodAuroc | None, dict[str, int]]:
    """``ood_auroc`` of N samples' clean scores against their perturbed ones, the sample as cluster.

    ``clean`` (N,): one in-distribution score per sample; ``perturbed`` (N, K): K perturbed inputs of each sample
    (noise draws at a dose, an attack's candidates); sample i's clean score and its K perturbed scores form
    cluster i, so only pairs of *different* samples count (module notes). ``keep`` (N, K) bool, optional: the
    perturbed inputs that count (e.g. an attack's successful candidates; default all). Non-finite scores (a
    detector failing on an input) are left out and counted. Returns (the AUROC, or None when a side has no finite
    score left; ``{"clean": n, "perturbed": n}`` the non-finite scores left out, of those kept).
    """
    s_in = np.asarray(clean, np.float64).reshape(-1)
    s_ood = np.asarray(perturbed, np.float64)
    if s_ood.ndim != 2 or s_ood.shape[0] != s_in.size:
        raise InputError(f"perturbed: expected (N, K) scores with N = {s_in.size} (one row per clean score), got "
                         f"shape {s_ood.shape}")
    n, k = s_ood.shape
    mask = np.ones((n, k), bool) if keep is None else np.asarray(keep, bool)
    if mask.shape != (n, k):
        raise InputError(f"keep: expected a ({n}, {k}) boolean mask like the perturbed scores, got shape {mask.shape}")
    c_in, c_ood = np.arange(n), np.repeat(np.arange(n), k)[mask.reshape(-1)]
    s_ood = s_ood.reshape(-1)[mask.reshape(-1)]
    ok_in, ok_ood = np.isfinite(s_in), np.isfinite(s_ood)
    non_finite = {"clean": int(np.count_nonzero(~ok_in)), "perturbed": int(np.count_nonzero(~ok_ood))}
    if not ok_in.any() or not ok_ood.any():
        return None, non_finite
    return (ood_auroc(s_in[ok_in], s_ood[ok_ood], c_in[ok_in], c_ood[ok_ood], confidence, n_boot=n_boot, seed=seed),
            non_finite)
