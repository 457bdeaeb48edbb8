"""Lesion detection (study 3): output conventions, lesion matching, FROC and CPM, lesion-level flips.

Output conventions of a ``detection`` head (one scan; coordinates in voxels of
the model's input volume, ordered (z, y, x), spacing in mm ordered the same):

- **candidates**: ``centres`` (M, 3) and ``scores`` (M,), higher = more likely a
  lesion. A model with a fixed maximum count pads unused slots with a score of
  NaN or -inf; ``candidates_from_points`` drops them.
- **boxes**: ``boxes`` (M, 6) as (z0, y0, x0, z1, y1, x1), lower corner
  included, upper corner excluded (voxel-index boxes, as slices are); the
  candidate is the box centre ((z0 + z1 - 1) / 2, ...), the centre voxel of the
  box. ``candidates_from_boxes``; padding as above.
- **heat map**: a (Z, Y, X) map of lesion probability; ``heatmap_peaks``
  extracts local maxima over a cubic ``neighbourhood`` (3 = the 26 neighbours)
  at or above ``threshold``, then non-maximum suppression within
  ``nms_radius_mm``.

Matching follows the LUNA16 evaluation (Setio et al. 2017, Med Image Anal 42,
and its evaluation script): a candidate hits a lesion when the distance (mm)
between the candidate and the lesion centre is *strictly* below the lesion's
radius (half its diameter); each lesion counts once, with the highest score of
the candidates on it; the other candidates on a detected lesion are ignored
(neither hit nor false positive, LUNA16's "double detections"); candidates on
an *excluded* lesion are ignored; every other candidate is a false positive.
One deviation, stated: LUNA16 lets a candidate inside two overlapping lesions
count for both; here it counts for the nearest only (ties: the lower lesion
index), so one mark never finds two lesions.

FROC: candidates of all scans pooled; at each threshold t (every distinct score),
sensitivity = detected lesions with score >= t / all included lesions, FPs per
scan = false positives with score >= t / number of scans, plus the origin
(0, 0). Sensitivity at an FP rate r is the linear interpolation of that curve
(LUNA16 uses ``np.interp``): with j the last point whose FP rate is <= r,
sens_j + (sens_{j+1} - sens_j)(r - fps_j)/(fps_{j+1} - fps_j), or sens_j beyond
the last point. CPM (competition performance metric) = mean sensitivity at
1/8, 1/4, 1/2, 1, 2, 4, 8 FPs per scan, interpolated exactly at those rates
(LUNA16's script interpolates onto a 10001-point grid over [1/8, 8] and reads
the grid point at or just below each rate: the same up to the curve's slope
times 8e-4 FPs). Missed lesions lower the sensitivity at every rate, as in
LUNA16. One FROC per dose level: pass that level's scans.

Noisy draws as scans: at a dose, each (sample, draw) is one *scan replicate*, so the FROC pools the N x K
replicates (FPs per scan = FPs / (N K), sensitivity over the N K lesion instances). The K draws of a sample share
its image and lesions, so the replicates are clustered: ``froc_bootstrap(..., clusters=sample ids)`` resamples
samples with all their draws (a cluster bootstrap); ``froc_paired_difference`` compares the clean FROC with a
dose's on the same resampled samples (paired); ``lesion_sar`` gives the lesion-level flip rate with a
design-effect interval whose cluster is the sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage, spatial

from audit.errors import InputError
from audit.metrics import _checks
from audit.metrics.intervals import cluster_rate_interval

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""The FP-per-scan rates of the CPM (LUNA16)."""

LUNA16_BOOTSTRAPS = 1000
"""Bootstrap resamples of scans in the LUNA16 evaluation (``bNumberOfBootstrapSamples``)."""

NEW_FP_RADIUS_MM = 2.5
"""Default radius within which a noisy false positive is the *same* mark as a clean one: half LUNA16's 5 mm
diameter for a nodule of unknown size (the smallest lesion the evaluation matches by)."""


# --- conventions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """Detections in one scan: ``centres`` (M, 3) float64 voxel (z, y, x), ``scores`` (M,) float64, finite."""

    centres: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.size)

    def above(self, threshold: float) -> "Candidates":
        """The candidates with ``score >= threshold`` (the deployed operating point)."""
        keep = self.scores >= threshold
        return Candidates(self.centres[keep], self.scores[keep])

    def shifted(self, offset: Sequence[float]) -> "Candidates":
        """The same candidates with ``offset`` (3,) voxels added (tile -> volume coordinates)."""
        return Candidates(self.centres + np.asarray(offset, dtype=np.float64), self.scores)


def _spacing(spacing) -> np.ndarray:
    s = np.asarray(spacing, dtype=np.float64)
    if s.shape != (3,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise InputError(f"spacing: expected 3 positive voxel sizes in mm (z, y, x), got {spacing!r}")
    return s


def _real(name: str, value) -> np.ndarray:
    a = np.asarray(value)
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or a.dtype.kind == "c":
        raise InputError(f"{name}: expected real numbers, got dtype {a.dtype}")
    return a.astype(np.float64)


def candidates_from_points(centres, scores) -> Candidates:
    """One scan's candidate list (centres (M, 3) voxels z, y, x; scores (M,)) with NaN / -inf padding dropped."""
    c = _real("centres", centres)
    s = _real("scores", scores)
    if c.ndim != 2 or c.shape[1] != 3 or s.shape != (c.shape[0],):
        raise InputError(f"centres, scores: expected shapes (M, 3) and (M,), got {c.shape} and {s.shape}")
    keep = ~(np.isnan(s) | (s == -np.inf))
    if np.any(s[keep] == np.inf) or not np.all(np.isfinite(c[keep])):
        raise InputError("centres, scores: expected finite centres and scores (NaN or -inf only as padding)")
    return Candidates(c[keep], s[keep])


def candidates_from_boxes(boxes, scores) -> Candidates:
    """One scan's boxes (M, 6) = (z0, y0, x0, z1, y1, x1), upper corner excluded, as candidates at their centres."""
    b = _real("boxes", boxes)
    if b.ndim != 2 or b.shape[1] != 6:
        raise InputError(f"boxes: expected shape (M, 6) as (z0, y0, x0, z1, y1, x1), got {b.shape}")
    return candidates_from_points((b[:, :3] + b[:, 3:] - 1.0) / 2.0, scores)


def nms(candidates: Candidates, radius_mm: float, spacing) -> Candidates:
    """Greedy non-maximum suppression: keep the best-scoring candidate, drop every other within ``radius_mm``, repeat.

    Ties in score keep the earlier candidate (stable order). The result is sorted by score, highest first.
    Neighbours come from a k-d tree (``scipy.spatial.cKDTree``), so thousands of peaks of a noisy heat map cost
    O(M log M) rather than M passes over all of them; a candidate is suppressed at a distance strictly below
    ``radius_mm``.
    """
    sp = _spacing(spacing)
    r = float(radius_mm)
    if not (np.isfinite(r) and r >= 0):
        raise InputError(f"radius_mm: expected a distance >= 0 in mm, got {radius_mm!r}")
    order = np.argsort(-candidates.scores, kind="stable")
    pts = candidates.centres[order] * sp
    alive = np.ones(order.size, dtype=bool)
    if r > 0 and order.size > 1:
        tree = spatial.cKDTree(pts)
        for i in range(order.size):
            if not alive[i]:
                continue
            near = np.asarray(tree.query_ball_point(pts[i], r), dtype=np.int64)  # distance <= r
            later = near[near > i]
            if later.size:
                d2 = np.sum((pts[later] - pts[i]) ** 2, axis=1)
                alive[later[d2 < r * r]] = False
    keep = order[alive]
    return Candidates(candidates.centres[keep], candidates.scores[keep])


HEATMAP_SLAB_VOXELS = 1 << 22
"""Voxels per slab of ``heatmap_peaks``' local-maximum search (4 Mi: 16 MiB of float32 filter output, 16 planes of
512 x 512), so its working memory is a fixed few tens of MB whatever the map's size."""


def heatmap_peaks(heatmap, *, threshold: float = 0.5, neighbourhood: int = 3, nms_radius_mm: float = 5.0,
                  spacing=(1.0, 1.0, 1.0)) -> Candidates:
    """Candidates from a (Z, Y, X) heat map: local maxima >= ``threshold``, then NMS within ``nms_radius_mm``.

    A voxel is a local maximum when it equals the maximum of the ``neighbourhood``^3 cube centred on it (odd; 3:
    its 26 neighbours; voxels outside the map do not count), so every voxel of a flat plateau is one, and NMS keeps
    the first of them in C order. ``threshold`` 0.5: the usual operating point of a probability map (the detection
    head passes a lower floor, ``PEAK_FLOOR``, so the FROC sees scores below the operating point); ``nms_radius_mm``
    5.0: a nodule of LUNA16's smallest size (3 mm) or default diameter (5 mm) yields one peak, while two nodules
    further apart than that stay separate.

    Streaming: the map is searched in its own precision when float32 or float64 (no copy: a sliding window's blended
    map is float32), other dtypes as float32 (scores are float32 in the records anyway), in z slabs of ``HEATMAP_SLAB_VOXELS`` with a halo of ``neighbourhood // 2`` planes, so
    the extra memory is one slab's filter output, not a float64 copy of the map (a 300 x 512 x 512 map is 315 MB).
    """
    h = np.asarray(heatmap)
    if not (np.issubdtype(h.dtype, np.number) or h.dtype == bool) or h.dtype.kind == "c":
        raise InputError(f"heatmap: expected real numbers, got dtype {h.dtype}")
    if h.ndim != 3:
        raise InputError(f"heatmap: expected a (Z, Y, X) map, got shape {h.shape}")
    n = int(neighbourhood)
    if n < 1 or n % 2 == 0:
        raise InputError(f"neighbourhood: expected an odd cube side >= 1 in voxels, got {neighbourhood!r}")
    work = h.dtype if h.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    thr = work.type(threshold)
    halo = n // 2
    plane = max(1, h.shape[1] * h.shape[2])
    step = max(1, HEATMAP_SLAB_VOXELS // plane)
    idx_parts, score_parts = [], []
    for z0 in range(0, h.shape[0], step):
        z1 = min(h.shape[0], z0 + step)
        lo, hi = max(0, z0 - halo), min(h.shape[0], z1 + halo)
        slab = np.asarray(h[lo:hi], dtype=work)
        core = slab[z0 - lo : z0 - lo + (z1 - z0)]
        mx = ndimage.maximum_filter(slab, size=n, mode="constant", cval=-np.inf)[z0 - lo : z0 - lo + (z1 - z0)]
        peaks = (core >= thr) & (core == mx)
        idx = np.argwhere(peaks)
        idx[:, 0] += z0
        idx_parts.append(idx)
        score_parts.append(core[peaks])
    idx = np.concatenate(idx_parts) if idx_parts else np.zeros((0, 3), np.int64)
    scores = np.concatenate(score_parts).astype(np.float64) if score_parts else np.zeros(0)
    return nms(Candidates(idx.astype(np.float64), scores), nms_radius_mm, spacing)


# --- matching ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lesions:
    """Reference lesions of one scan: ``centres`` (L, 3) voxel (z, y, x), ``radii_mm`` (L,), ``excluded`` (L,) bool.

    An excluded lesion (LUNA16's "irrelevant findings") is neither counted nor a source of false positives.
    """

    centres: np.ndarray
    radii_mm: np.ndarray
    excluded: np.ndarray

    @classmethod
    def of(cls, centres, radii_mm, excluded=None) -> "Lesions":
        c = _real("lesion centres", centres).reshape(-1, 3) if np.size(centres) else np.zeros((0, 3))
        try:
            r = np.broadcast_to(_real("radii_mm", radii_mm), (c.shape[0],)).copy()
        except ValueError:
            raise InputError(f"radii_mm: expected one radius or {c.shape[0]} (one per lesion), got "
                             f"shape {np.shape(radii_mm)}") from None
        if not np.all(np.isfinite(c)) or np.any(~np.isfinite(r) | (r <= 0)):
            raise InputError("lesions: expected finite centres and radii > 0 mm")
        e = np.zeros(c.shape[0], bool) if excluded is None else _checks.binary("excluded", excluded).reshape(-1)
        if e.shape != (c.shape[0],):
            raise InputError(f"excluded: expected shape ({c.shape[0]},), got {e.shape}")
        return cls(c, r, e)

    @classmethod
    def from_rows(cls, rows, excluded=None) -> "Lesions":
        """Lesions from annotation rows (L, 4) of (z, y, x voxel centre, diameter mm): the phantom lesion volumes'
        ``lesions`` and an .npz manifest row's ``lesions`` array; radius = diameter / 2. An empty array is a scan
        without lesions; ``excluded`` as in ``of``."""
        a = np.asarray(rows)
        if a.size == 0:
            a = a.reshape(0, 4)
        if a.ndim != 2 or a.shape[1] != 4:
            raise InputError(f"lesions: expected (L, 4) rows of (z, y, x voxel, diameter mm), got shape {a.shape}")
        return cls.of(a[:, :3], a[:, 3] / 2.0, excluded)

    @property
    def n_included(self) -> int:
        return int(np.count_nonzero(~self.excluded))


HIT, DUPLICATE, IGNORED, FALSE_POSITIVE = 0, 1, 2, 3
"""Roles of a candidate after matching: the best mark on a lesion, another mark on it, a mark on an excluded
lesion, a false positive."""


@dataclass(frozen=True)
class ScanMatch:
    """One scan's candidates matched to its lesions.

    ``lesion_found`` (L,) bool; ``lesion_score`` (L,): the highest score on the lesion (-inf when missed);
    ``assigned`` (M,): the lesion each candidate counts for (-1: none); ``role`` (M,): HIT, DUPLICATE, IGNORED or
    FALSE_POSITIVE; ``fp_scores``: the false positives' scores; ``n_lesions``: included lesions.
    """

    lesion_found: np.ndarray
    lesion_score: np.ndarray
    assigned: np.ndarray
    role: np.ndarray
    fp_scores: np.ndarray
    n_lesions: int

    @property
    def hit_scores(self) -> np.ndarray:
        """Scores of the detected included lesions (one per lesion)."""
        return self.lesion_score[self.lesion_found]


def match_candidates(candidates: Candidates, lesions: Lesions, spacing, *, min_radius_mm: float = 0.0) -> ScanMatch:
    """Match one scan's candidates to its lesions (rules in the module notes); distances in mm via ``spacing``.

    ``min_radius_mm``: lesions smaller than this are matched as if this large (0: LUNA16's rule, the lesion's
    own radius; raise it for phantoms whose lesions span few voxels, where a centre one voxel off would miss).
    """
    sp = _spacing(spacing)
    rmin = float(min_radius_mm)
    if not (np.isfinite(rmin) and rmin >= 0):
        raise InputError(f"min_radius_mm: expected a distance >= 0 in mm, got {min_radius_mm!r}")
    m, n_les = len(candidates), lesions.centres.shape[0]
    radius = np.maximum(lesions.radii_mm, rmin)
    d = np.sqrt(np.sum(((candidates.centres[:, None, :] - lesions.centres[None, :, :]) * sp) ** 2, axis=2))
    inside = d < radius[None, :]
    assigned = np.where(inside.any(axis=1), np.argmin(np.where(inside, d, np.inf), axis=1), -1) if n_les else \
        np.full(m, -1)
    role = np.full(m, FALSE_POSITIVE, dtype=np.int8)
    score = np.full(n_les, -np.inf)
    for j in range(n_les):
        on = np.flatnonzero(assigned == j)
        if on.size == 0:
            continue
        if lesions.excluded[j]:
            role[on] = IGNORED
            continue
        best = on[np.argmax(candidates.scores[on])]
        role[on] = DUPLICATE
        role[best] = HIT
        score[j] = candidates.scores[best]
    found = np.isfinite(score) & ~lesions.excluded
    return ScanMatch(found, score, assigned.astype(np.int64), role, candidates.scores[role == FALSE_POSITIVE],
                     lesions.n_included)


# --- FROC and CPM ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Froc:
    """A FROC curve and its CPM over a set of scans.

    ``fps``, ``sensitivity``: the curve's points (origin first, one per distinct score, descending);
    ``thresholds``: the score of each point (+inf for the origin); ``rates``, ``sensitivity_at``: the CPM's FP
    rates and the interpolated sensitivities there; ``cpm`` their mean; counts of scans, included lesions,
    detected lesions and false positives (all thresholds). Sensitivities are NaN when there is no lesion.
    """

    fps: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    rates: tuple[float, ...]
    sensitivity_at: np.ndarray
    cpm: float
    n_scans: int
    n_lesions: int
    n_detected: int
    n_false_positives: int

    def to_dict(self) -> dict[str, Any]:
        return {"cpm": self.cpm, "rates": list(self.rates), "sensitivity_at": self.sensitivity_at.tolist(),
                "fps": self.fps.tolist(), "sensitivity": self.sensitivity.tolist(), "n_scans": self.n_scans,
                "n_lesions": self.n_lesions, "n_detected": self.n_detected,
                "n_false_positives": self.n_false_positives}


def _rates(rates) -> tuple[float, ...]:
    r = tuple(float(x) for x in rates)
    if not r or any(not (np.isfinite(x) and x > 0) for x in r):
        raise InputError(f"rates: expected FP-per-scan rates > 0 such as {FP_RATES}, got {rates!r}")
    return r


def interpolate_sensitivity(fps, sensitivity, rates) -> np.ndarray:
    """Sensitivity of a FROC curve (``fps`` non-decreasing) at ``rates``, by LUNA16's linear interpolation.

    With j the last point whose FP rate is <= r: sens_j + slope (r - fps_j) towards point j + 1, or sens_j past
    the curve's end (the same values ``np.interp`` gives; at a vertical step the upper sensitivity).
    """
    f = np.asarray(fps, dtype=np.float64)
    s = np.asarray(sensitivity, dtype=np.float64)
    r = np.asarray(rates, dtype=np.float64)
    j = np.searchsorted(f, r, side="right") - 1
    nxt = np.minimum(j + 1, f.size - 1)
    last = j == f.size - 1
    span = np.where(last, 1.0, f[nxt] - f[j])
    return np.where(last, s[j], s[j] + (s[nxt] - s[j]) * (r - f[j]) / span)


def _pooled(matches: Sequence[ScanMatch]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Entries of all scans: score, positive?, scan index; and included lesions per scan."""
    if len(matches) == 0:
        raise InputError("matches: expected at least one scan")
    scores, pos, scan = [], [], []
    for i, m in enumerate(matches):
        h, f = m.hit_scores, m.fp_scores
        scores += [h, f]
        pos += [np.ones(h.size, bool), np.zeros(f.size, bool)]
        scan += [np.full(h.size + f.size, i)]
    lesions = np.array([m.n_lesions for m in matches], dtype=np.float64)
    return np.concatenate(scores), np.concatenate(pos), np.concatenate(scan), lesions


def _curve(scores: np.ndarray, pos: np.ndarray, weight: np.ndarray, n_lesions: float, n_scans: float):
    """(fps, sensitivity, thresholds) from entries sorted by descending score with per-entry weights (B, E)."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if s.size else np.zeros(0, np.int64)
    w = weight[..., order]
    tp = np.cumsum(w * pos[order], axis=-1)[..., last]
    fp = np.cumsum(w * ~pos[order], axis=-1)[..., last]
    zero = np.zeros(w.shape[:-1] + (1,))
    fps = np.concatenate([zero, fp], axis=-1) / np.asarray(n_scans, dtype=np.float64)[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.concatenate([zero, tp], axis=-1) / np.asarray(n_lesions)[..., None]
    return fps, sens, np.r_[np.inf, s[last]]


def froc(matches: Sequence[ScanMatch], rates=FP_RATES) -> Froc:
    """FROC curve and CPM of the matched scans of one level (module notes: LUNA16's definition)."""
    r = _rates(rates)
    scores, pos, _, lesions = _pooled(matches)
    n_scans, n_les = len(matches), float(lesions.sum())
    fps, sens, thr = _curve(scores, pos, np.ones(scores.size), n_les, n_scans)
    at = interpolate_sensitivity(fps, sens, r) if n_les > 0 else np.full(len(r), np.nan)
    return Froc(fps, sens, thr, r, at, float(np.mean(at)), n_scans, int(n_les), int(pos.sum()),
                int((~pos).sum()))


@dataclass(frozen=True)
class FrocInterval:
    """Percentile bootstrap intervals over scans (or clusters of scans): CPM and the sensitivity at each rate.

    ``n_valid``: resamples with at least one lesion (the others have no sensitivity and are left out);
    ``n_clusters``: the resampled units (scans, or samples holding their K draws).
    """

    cpm: float
    cpm_low: float
    cpm_high: float
    rates: tuple[float, ...]
    sensitivity_low: np.ndarray
    sensitivity_high: np.ndarray
    confidence: float
    n_boot: int
    n_valid: int
    seed: int | None
    n_clusters: int | None = None
    clustered: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"cpm": self.cpm, "cpm_ci": [self.cpm_low, self.cpm_high], "rates": list(self.rates),
                "sensitivity_ci": [self.sensitivity_low.tolist(), self.sensitivity_high.tolist()],
                "confidence": self.confidence, "n_boot": self.n_boot, "n_valid": self.n_valid, "seed": self.seed,
                "n_clusters": self.n_clusters,
                "method": ("cluster bootstrap over samples (each with all its scan replicates)" if self.clustered
                           else "bootstrap over scans (LUNA16)")}


def _n_boot(n_boot) -> int:
    if isinstance(n_boot, (bool, np.bool_)) or not isinstance(n_boot, (int, np.integer)) or n_boot < 10:
        raise InputError(f"n_boot: expected an integer >= 10 (number of bootstrap resamples), got {n_boot!r}")
    return int(n_boot)


def _cluster_index(clusters, n: int, name: str = "clusters") -> tuple[np.ndarray, int]:
    """Cluster index 0..C-1 of each of ``n`` scans (ids in order of first sorted value); None: each scan its own."""
    if clusters is None:
        return np.arange(n), n
    c = np.asarray(clusters).reshape(-1)
    if c.shape != (n,):
        raise InputError(f"{name}: expected one cluster id per scan ({n}), got shape {np.shape(clusters)}")
    ids, inv = np.unique(c, return_inverse=True)
    return inv.reshape(-1).astype(np.int64), int(ids.size)


class _Pool:
    """One set of matched scans prepared for resampling: entries, their scan's cluster, lesions and scans per cluster."""

    def __init__(self, matches: Sequence[ScanMatch], cluster: np.ndarray, n_clusters: int):
        self.scores, self.pos, scan, lesions = _pooled(matches)
        self.entry_cluster = cluster[scan]
        self.lesions = np.bincount(cluster, weights=lesions, minlength=n_clusters)
        self.scans = np.bincount(cluster, minlength=n_clusters).astype(np.float64)
        self.size = self.scores.size

    def sensitivity_at(self, mult: np.ndarray, rates: tuple[float, ...]) -> np.ndarray:
        """(B, R) sensitivities at ``rates`` of B resamples given cluster multiplicities ``mult`` (B, C); NaN rows
        for resamples without a lesion."""
        n_les = mult @ self.lesions
        n_scans = mult @ self.scans
        fps, sens, _ = _curve(self.scores, self.pos, mult[:, self.entry_cluster].astype(np.float64), n_les, n_scans)
        out = np.full((mult.shape[0], len(rates)), np.nan)
        for b in range(mult.shape[0]):
            if n_les[b] > 0:
                out[b] = interpolate_sensitivity(fps[b], sens[b], rates)
        return out


def _resample(rng: np.random.Generator, n_clusters: int, count: int) -> np.ndarray:
    """``count`` rows of multiplicities: each row draws ``n_clusters`` clusters with replacement."""
    return np.stack([np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters) for _ in range(count)])


def _bounds(values: np.ndarray, conf: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = 1.0 - conf
    if values.shape[0] == 0:
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2], axis=0)
    return lo, hi


def froc_bootstrap(matches: Sequence[ScanMatch], rates=FP_RATES, confidence: float = 0.95, *,
                   n_boot: int = LUNA16_BOOTSTRAPS, seed: int | np.random.Generator = 0,
                   clusters=None) -> FrocInterval:
    """CPM with percentile bootstrap intervals, resampling whole scans (or clusters of scans) with replacement.

    Default (``clusters`` None): as LUNA16, each resample draws N of the N scans (their lesions and false positives
    together: a scan is the unit that varies) and recomputes the FROC with N scans. ``clusters``: one id per scan;
    each resample draws as many clusters as there are, with replacement, and takes every scan of a drawn cluster
    with it (the K noisy draws of a sample are one cluster: they share the image); FPs per scan then divide by the
    resample's scan count. ``n_boot`` 1000 as in LUNA16; ``seed`` an int or a Generator, so an interval is
    reproducible. The bounds are ``np.quantile``'s (linear) at (1 -/+ confidence) / 2; LUNA16 takes order
    statistics at floor(P n), which differs by at most one resample's value.
    """
    r = _rates(rates)
    conf = _checks.confidence(confidence)
    nb = _n_boot(n_boot)
    point = froc(matches, r)
    cluster, n_c = _cluster_index(clusters, len(matches))
    pool = _Pool(matches, cluster, n_c)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    at = np.empty((nb, len(r)))
    chunk = max(1, (1 << 21) // max(1, pool.size + n_c))
    for start in range(0, nb, chunk):
        stop = min(nb, start + chunk)
        at[start:stop] = pool.sensitivity_at(_resample(rng, n_c, stop - start), r)
    valid = ~np.isnan(at[:, 0])
    lo, hi = _bounds(at[valid], conf)
    clo, chi = _bounds(at[valid].mean(axis=1), conf)
    return FrocInterval(point.cpm, float(clo), float(chi), r, lo, hi, conf, nb, int(valid.sum()),
                        int(seed) if isinstance(seed, (int, np.integer)) else None, n_c, clusters is not None)


@dataclass(frozen=True)
class FrocDifference:
    """Paired bootstrap of a FROC difference, reference (clean) minus other (a dose): CPM and sensitivity per rate.

    ``cpm_drop`` = CPM(reference) - CPM(other); intervals are percentile intervals over resamples of the shared
    samples (one resample serves both FROCs: the pairing); ``n_valid``: resamples where both have a lesion.
    """

    cpm_reference: float
    cpm_other: float
    cpm_drop: float
    cpm_drop_low: float
    cpm_drop_high: float
    rates: tuple[float, ...]
    sensitivity_drop: np.ndarray
    sensitivity_drop_low: np.ndarray
    sensitivity_drop_high: np.ndarray
    confidence: float
    n_boot: int
    n_valid: int
    n_samples: int
    seed: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"cpm_drop": self.cpm_drop, "cpm_drop_ci": [self.cpm_drop_low, self.cpm_drop_high],
                "cpm_reference": self.cpm_reference, "cpm_other": self.cpm_other, "rates": list(self.rates),
                "sensitivity_drop": self.sensitivity_drop.tolist(),
                "sensitivity_drop_ci": [self.sensitivity_drop_low.tolist(), self.sensitivity_drop_high.tolist()],
                "confidence": self.confidence, "n_boot": self.n_boot, "n_valid": self.n_valid,
                "n_samples": self.n_samples, "seed": self.seed,
                "method": "paired cluster bootstrap over samples (one resample of samples for both FROCs)"}


def froc_paired_difference(reference: Sequence[ScanMatch], other: Sequence[ScanMatch], other_samples, rates=FP_RATES,
                           confidence: float = 0.95, *, n_boot: int = LUNA16_BOOTSTRAPS,
                           seed: int | np.random.Generator = 0) -> FrocDifference:
    """CPM(reference) - CPM(other) with a paired cluster-bootstrap interval (module notes).

    ``reference``: N scans, one per sample (the clean outputs); ``other``: scan replicates of the same samples
    (a dose's N x K draws), ``other_samples`` the sample index 0..N-1 of each. Each resample draws N samples with
    replacement and weights both FROCs by the same multiplicities, so the variation the two share (which samples,
    which lesions) cancels in the difference.
    """
    r = _rates(rates)
    conf = _checks.confidence(confidence)
    nb = _n_boot(n_boot)
    n = len(reference)
    samples = np.asarray(other_samples).reshape(-1)
    if samples.shape != (len(other),) or not np.issubdtype(samples.dtype, np.integer) or \
            (samples.size and (samples.min() < 0 or samples.max() >= n)):
        raise InputError(f"other_samples: expected one sample index in 0..{n - 1} per scan of other ({len(other)})")
    ref, oth = froc(reference, r), froc(other, r)
    p_ref, p_oth = _Pool(reference, np.arange(n), n), _Pool(other, samples.astype(np.int64), n)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    diff = np.empty((nb, len(r)))
    chunk = max(1, (1 << 21) // max(1, p_ref.size + p_oth.size + n))
    for start in range(0, nb, chunk):
        stop = min(nb, start + chunk)
        mult = _resample(rng, n, stop - start)
        diff[start:stop] = p_ref.sensitivity_at(mult, r) - p_oth.sensitivity_at(mult, r)
    valid = ~np.isnan(diff).any(axis=1)
    lo, hi = _bounds(diff[valid], conf)
    clo, chi = _bounds(diff[valid].mean(axis=1), conf)
    return FrocDifference(ref.cpm, oth.cpm, ref.cpm - oth.cpm, float(clo), float(chi), r,
                          ref.sensitivity_at - oth.sensitivity_at, lo, hi, conf, nb, int(valid.sum()), n,
                          int(seed) if isinstance(seed, (int, np.integer)) else None)


@dataclass(frozen=True)
class LesionSar:
    """Lesion-level SAR over the included lesions of N samples, K draws each, with a cluster-aware interval.

    ``sar`` = sum over lesions of #{draws whose found status changed} / (K x included lesions); ``deff``: design
    effect with the sample (scan) as cluster; ``n_eff``: the effective number of independent lesion-draws behind
    the interval.
    """

    sar: float
    low: float
    high: float
    confidence: float
    n_samples: int
    n_lesions: int
    draws: int
    changed: int
    deff: float
    n_eff: float

    def to_dict(self) -> dict[str, Any]:
        return {"sar": self.sar, "ci": [self.low, self.high], "confidence": self.confidence,
                "n_samples": self.n_samples, "n_lesions": self.n_lesions, "draws": self.draws, "changed": self.changed,
                "deff": self.deff, "n_eff": self.n_eff,
                "method": "design-effect Wilson, cluster = sample (its lesions and draws together)"}


def lesion_sar(lesion_changed: Sequence[np.ndarray], lesion_excluded: Sequence[np.ndarray],
               confidence: float = 0.95) -> LesionSar:
    """Lesion-level SAR (mean over included lesions of the fraction of K draws whose found status changed) and its
    design-effect Wilson interval, the sample as cluster.

    ``lesion_changed``: N arrays (K, L_i) bool; ``lesion_excluded``: N arrays (L_i,) bool. Samples with an included
    lesion are the clusters: x_i changed lesion-draws out of m_i = K L_i. The pooled rate p = sum x / sum m is a
    ratio estimator; its variance across clusters (linearisation, N / (N - 1) sum (x_i - p m_i)^2 / M^2) over the
    binomial one p (1 - p) / M is the design effect, clipped to [1, max m_i]; N = 1 gives m_1 (one cluster: one
    trial). At p = 0 or 1 the estimate says nothing about the clustering (no variance to measure), and flips are
    clustered by scan (one fragile scan flips many of its lesion-draws, the rest none), so the design effect is the
    conservative max m_i: n_eff is about the number of samples, not of lesion-draws (with deff 1, N = 10 scans and
    K = 20 the p = 0 upper bound was ~3.84 / M and covered a rare fragile scan 35% of the time). Wilson's interval
    on n_eff = M / deff, times (z / t_{N-1})^2 for N >= 2 (Korn & Graubard). The design effect and the interval are
    ``audit.metrics.intervals.cluster_design_effect`` and ``cluster_rate_interval`` (one home with the per-class
    SAR's), which reduce to ``cluster_wilson_interval`` when every sample has the same number of lesions. With
    changes seen, the upper end is never below the p = 0 one on the same scans (Wilson at p = 0 on M / max m_i,
    times the factor) and the lower end never above its mirror at p = 1: the no-flip floor of
    ``cluster_design_effect`` (a few changes whose spread suggests deff near 1 must not bound the rate tighter
    than no change at all). ``deff`` and ``n_eff`` are the estimate's; where the floor decides, the interval is
    wider than Wilson's on ``n_eff``. NaN without an included lesion.
    """
    conf = _checks.confidence(confidence)
    if len(lesion_changed) != len(lesion_excluded):
        raise InputError(f"lesion_changed, lesion_excluded: expected one array per sample in both, got "
                         f"{len(lesion_changed)} and {len(lesion_excluded)}")
    x, m, k = [], [], None
    for i, (ch, ex) in enumerate(zip(lesion_changed, lesion_excluded)):
        c = np.asarray(ch, dtype=bool)
        e = np.asarray(ex, dtype=bool).reshape(-1)
        if c.ndim != 2 or c.shape[1] != e.size or (k is not None and c.shape[0] != k):
            raise InputError(f"lesion_changed[{i}]: expected shape (K, {e.size}) with the same K for every sample, "
                             f"got {c.shape}")
        k = c.shape[0]
        if np.count_nonzero(~e):
            x.append(int(np.count_nonzero(c[:, ~e])))
            m.append(k * int(np.count_nonzero(~e)))
    k = int(k or 0)
    if not x:
        return LesionSar(np.nan, np.nan, np.nan, conf, 0, 0, k, 0, np.nan, np.nan)
    r = cluster_rate_interval(np.array(x, np.int64), np.array(m, np.int64), conf)
    total = sum(m)
    return LesionSar(r.rate, r.low, r.high, conf, len(x), int(total // k) if k else 0, k, int(sum(x)), r.deff, r.n_eff)


# --- lesion-level flips ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LesionFlips:
    """Lesion-level flips of one scan over K noisy draws, at one operating threshold.

    ``clean_found`` (L,); ``noisy_found`` (K, L); ``missed`` (K, L): found clean, not under draw k; ``gained``
    (K, L): the reverse; ``new_fp`` (K,): noisy false positives with no clean false positive within
    ``fp_radius_mm``; ``lesion_sar`` (L,): #{k : found changed} / K (NaN for excluded lesions), study 1's SAR
    with "found" as the label; ``fp_flip`` (K,): draws with at least one new false positive.
    """

    clean_found: np.ndarray
    noisy_found: np.ndarray
    missed: np.ndarray
    gained: np.ndarray
    new_fp: np.ndarray
    lesion_sar: np.ndarray
    fp_flip: np.ndarray
    threshold: float


@dataclass(frozen=True)
class CleanReference:
    """The clean side of ``lesion_flips`` for one scan, computed once and reused for each of its draws.

    ``found`` (L,): lesions found by the clean candidates at ``threshold``; ``fp_mm`` (F, 3): the clean false
    positives at the threshold, in mm. Built by ``clean_reference`` for one set of lesions, spacing and
    ``min_radius_mm``; ``lesion_flips`` checks the threshold, the lesion count, the spacing and ``min_radius_mm``.
    """

    found: np.ndarray
    fp_mm: np.ndarray
    threshold: float
    min_radius_mm: float
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)


def clean_reference(clean: Candidates, lesions: Lesions, spacing, *, threshold: float,
                    min_radius_mm: float = 0.0) -> CleanReference:
    """The clean candidates at ``threshold`` matched to ``lesions`` once: what each noisy draw is compared with."""
    sp = _spacing(spacing)
    c_kept = clean.above(threshold)
    c_match = match_candidates(c_kept, lesions, sp, min_radius_mm=min_radius_mm)
    return CleanReference(c_match.lesion_found, c_kept.centres[c_match.role == FALSE_POSITIVE] * sp,
                          float(threshold), float(min_radius_mm), tuple(float(v) for v in sp))


def lesion_flips(clean: Candidates | CleanReference, noisy: Sequence[Candidates], lesions: Lesions, spacing, *,
                 threshold: float, min_radius_mm: float = 0.0, fp_radius_mm: float = NEW_FP_RADIUS_MM) -> LesionFlips:
    """Which lesions a noisy draw loses or gains, and which false positives it adds, versus the clean output.

    Only candidates with ``score >= threshold`` count (the deployed operating point: a flip is a change of what
    a reader would be shown). Lesions are the reference lesions; to audit without a reference, pass the clean
    detections as lesions (radius ``fp_radius_mm``). A noisy false positive is new when no clean false positive
    lies within ``fp_radius_mm`` (default ``NEW_FP_RADIUS_MM``) of it. ``clean``: the clean candidates, or their
    ``clean_reference`` (the same result; the campaign matches a sample's clean output once for all its draws).
    """
    if len(noisy) == 0:
        raise InputError("noisy: expected at least one noisy draw (K >= 1)")
    sp = _spacing(spacing)
    rad = float(fp_radius_mm)
    if not (np.isfinite(rad) and rad >= 0):
        raise InputError(f"fp_radius_mm: expected a distance >= 0 in mm, got {fp_radius_mm!r}")
    if isinstance(clean, CleanReference):
        if (clean.threshold != threshold or clean.min_radius_mm != min_radius_mm
                or clean.found.shape[0] != lesions.centres.shape[0] or clean.spacing != tuple(float(v) for v in sp)):
            raise InputError(f"clean: a clean reference made at threshold {clean.threshold:g}, min_radius_mm "
                             f"{clean.min_radius_mm:g}, spacing {clean.spacing} mm for {clean.found.shape[0]} lesions; "
                             f"this call has {threshold!r}, {min_radius_mm!r}, {tuple(float(v) for v in sp)} and "
                             f"{lesions.centres.shape[0]}")
        ref = clean
    else:
        ref = clean_reference(clean, lesions, sp, threshold=threshold, min_radius_mm=min_radius_mm)
    c_fp = ref.fp_mm
    found, new_fp = [], []
    for cand in noisy:
        kept = cand.above(threshold)
        m = match_candidates(kept, lesions, sp, min_radius_mm=min_radius_mm)
        found.append(m.lesion_found)
        fp = kept.centres[m.role == FALSE_POSITIVE] * sp
        if c_fp.shape[0] == 0:
            new_fp.append(fp.shape[0])
        else:
            d2 = np.sum((fp[:, None, :] - c_fp[None, :, :]) ** 2, axis=2)
            new_fp.append(int(np.count_nonzero(~np.any(d2 < rad * rad, axis=1))))
    nf = np.array(found, dtype=bool).reshape(len(noisy), -1)
    cf = ref.found
    changed = nf != cf[None, :]
    sar = np.where(lesions.excluded, np.nan, changed.mean(axis=0))
    nfp = np.array(new_fp, dtype=np.int64)
    return LesionFlips(cf, nf, cf[None, :] & ~nf, ~cf[None, :] & nf & ~lesions.excluded[None, :], nfp, sar, nfp > 0,
                       float(threshold))


# --- confidence histograms (study 3, stress noise) ---------------------------------------------------


@dataclass(frozen=True)
class ConfidenceHistograms:
    """Counts of confidences per bin and level: ``edges`` (bins + 1,), ``counts`` {level: (bins,) int64}."""

    edges: np.ndarray
    counts: dict[Any, np.ndarray]

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges.tolist(), "counts": {str(k): v.tolist() for k, v in self.counts.items()}}


def confidence_histograms(confidences_by_level: Mapping[Any, Any], bins: int = 10) -> ConfidenceHistograms:
    """Histogram of model confidences (in [0, 1]) at each stress level, with one set of bins for all levels.

    Bins: ``bins`` equal widths over [0, 1], each [a, b) except the last, [a, 1] (NumPy's rule), so a confidence
    of exactly 1 is counted. ``bins`` 10: one bin per 0.1, fine enough to show the mass moving towards 0.5 (or 0)
    under stress noise, coarse enough for a few hundred draws per level. Confidences of any shape are flattened.
    """
    if isinstance(bins, (bool, np.bool_)) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise InputError(f"bins: expected an integer >= 1, got {bins!r}")
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    counts = {}
    for level, conf in confidences_by_level.items():
        c = _checks.fractions(f"confidences[{level!r}]", conf).reshape(-1)
        counts[level] = np.histogram(c, bins=edges)[0].astype(np.int64)
    return ConfidenceHistograms(edges, counts)
