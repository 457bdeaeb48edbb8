"""Contour metrics of segmentations (study 4): HD95, the contour error Error_reg, Dice of filled contours, flips.

Masks are binary arrays of any dimension (2-D slices or 3-D volumes) with a
voxel ``spacing`` in mm per axis (anisotropic allowed). The *surface* of a mask
is its voxels with at least one face neighbour (4-connected in 2-D,
6-connected in 3-D) outside the mask or outside the image; distances are
between voxel centres, in mm, computed exactly by
``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``.

- HD95: the larger of the two directed 95th percentiles of surface distance
  (from each surface voxel of A to the nearest of B, and back), percentiles
  linearly interpolated (``np.percentile``): the symmetric form MONAI uses, so
  one bad side cannot hide behind a good one.
- Error_reg (contour error): DESIGN.md gives study 4's name but no formula;
  defined here as the mean distance between the predicted and reference
  contours, symmetric (average symmetric surface distance: all surface voxels
  of both, each to the other contour). For a contour *regression* output
  (ordered points in correspondence) ``landmark_error`` gives the mean
  point-to-point distance instead.
- Dice of filled contours: holes filled per 2-D slice (the last two axes;
  a slice is what the contour outlines), then Dice.

Empty masks: both empty -> every distance 0 and Dice 1 (perfect agreement
that there is nothing); exactly one empty -> distances +inf (no surface to
measure to: maximal disagreement) and Dice 0, so such a draw is a flip for
any finite threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from audit.errors import InputError
from audit.metrics import _checks
from audit.metrics.segmentation import dice


#: Per-draw record columns of a segmentation campaign's contour metrics (mm, mm, Dice), in this order.
CONTOUR_COLUMNS = ("hd95_mm", "contour_error_mm", "filled_dice")


def _pair(mask_a, mask_b, spacing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = _checks.binary("mask_a", mask_a)
    b = _checks.binary("mask_b", mask_b)
    if a.shape != b.shape:
        raise InputError(f"mask_b: expected shape {a.shape} to match mask_a, got {b.shape}")
    if a.ndim < 1:
        raise InputError("mask_a: expected an array with at least one dimension")
    return a, b, _spacing(spacing, a.ndim)


def _spacing(spacing, ndim: int) -> np.ndarray:
    """Voxel sizes in mm, one per axis (a single number: isotropic)."""
    try:
        sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (ndim,)).copy()
    except (TypeError, ValueError):
        sp = None
    if sp is None or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"spacing: expected {ndim} positive voxel sizes in mm (one per axis), got {spacing!r}")
    return sp


def surface(mask: np.ndarray) -> np.ndarray:
    """The surface voxels of a boolean mask: in the mask, with a face neighbour outside it (or outside the image)."""
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                          border_value=0)


def surface_distances(mask_a, mask_b, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (each surface voxel of A to B's surface, each of B's to A's).

    Both empty: two empty arrays; one empty: the other's surface voxels at +inf.
    """
    a, b, sp = _pair(mask_a, mask_b, spacing)
    sa, sb = surface(a), surface(b)
    if not sa.any() or not sb.any():
        return np.full(int(sa.sum()), np.inf), np.full(int(sb.sum()), np.inf)
    to_b = ndimage.distance_transform_edt(~sb, sampling=sp)
    to_a = ndimage.distance_transform_edt(~sa, sampling=sp)
    return to_b[sa], to_a[sb]


def hausdorff_percentile(mask_a, mask_b, spacing, percentile: float = 95.0) -> float:
    """Symmetric percentile Hausdorff distance (mm): max of the two directed ``percentile``-th surface distances.

    ``percentile`` 95 is HD95 (robust to a few stray voxels); 100 is the Hausdorff distance. 0 when both are
    empty, +inf when one is.
    """
    q = float(percentile)
    if not (0.0 <= q <= 100.0):
        raise InputError(f"percentile: expected a number in [0, 100], got {percentile!r}")
    d_ab, d_ba = surface_distances(mask_a, mask_b, spacing)
    if d_ab.size == 0 and d_ba.size == 0:
        return 0.0
    if np.isinf(d_ab).any() or np.isinf(d_ba).any():
        return float("inf")
    return float(max(np.percentile(d_ab, q), np.percentile(d_ba, q)))


def hd95(mask_a, mask_b, spacing) -> float:
    """HD95 in mm (``hausdorff_percentile`` at 95)."""
    return hausdorff_percentile(mask_a, mask_b, spacing, 95.0)


def contour_error(mask_pred, mask_ref, spacing) -> float:
    """Error_reg (mm): mean distance between the predicted and reference contours, over the surface voxels of both.

    ASSD = (sum of d(A -> B) + sum of d(B -> A)) / (|dA| + |dB|). 0 when both are empty, +inf when one is.
    """
    d_ab, d_ba = surface_distances(mask_pred, mask_ref, spacing)
    if d_ab.size + d_ba.size == 0:
        return 0.0
    return float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size))


def landmark_error(points_pred, points_ref, spacing) -> float:
    """Mean Euclidean distance (mm) between corresponding contour points (P, D) of a contour-regression output."""
    p = np.asarray(points_pred, dtype=np.float64)
    r = np.asarray(points_ref, dtype=np.float64)
    if p.ndim != 2 or p.shape != r.shape or p.shape[0] == 0:
        raise InputError(f"points_pred: expected shape (P, D) with P >= 1 matching points_ref {r.shape}, got {p.shape}")
    sp = _spacing(spacing, p.shape[1])
    return float(np.mean(np.sqrt(np.sum(((p - r) * sp) ** 2, axis=1))))


def fill_contours(mask) -> np.ndarray:
    """The mask with the holes of each 2-D slice (last two axes) filled; a 1-D mask is returned as is."""
    m = _checks.binary("mask", mask)
    if m.ndim < 2:
        return m.copy()
    flat = m.reshape(-1, *m.shape[-2:])
    return np.stack([ndimage.binary_fill_holes(s) for s in flat]).reshape(m.shape)


def filled_dice(mask_a, mask_b) -> float:
    """Dice of the two masks after filling each slice's holes (a ring and a disc of one outline agree)."""
    return dice(fill_contours(mask_a), fill_contours(mask_b))


@dataclass(frozen=True)
class SegmentationFlips:
    """Per-draw metrics of K noisy masks against the clean mask, and which draws flip.

    Arrays are (K,); a metric whose threshold is None is still computed (for the distributions) but cannot flip.
    """

    dice: np.ndarray
    hd95_mm: np.ndarray
    contour_error_mm: np.ndarray
    filled_dice: np.ndarray
    flipped: np.ndarray
    thresholds: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {"dice": self.dice.tolist(), "hd95_mm": self.hd95_mm.tolist(),
                "contour_error_mm": self.contour_error_mm.tolist(), "filled_dice": self.filled_dice.tolist(),
                "flipped": self.flipped.tolist(), "thresholds": dict(self.thresholds)}


def segmentation_flips(clean_mask, noisy_masks: Sequence[Any], spacing, *, dice_min: float | None = None,
                       hd95_max_mm: float | None = None, contour_error_max_mm: float | None = None,
                       filled_dice_min: float | None = None) -> SegmentationFlips:
    """Dice, HD95, Error_reg and filled Dice of each noisy mask to the clean mask; a flip when any threshold fails.

    A draw flips when Dice < ``dice_min``, HD95 > ``hd95_max_mm``, Error_reg > ``contour_error_max_mm`` or
    filled Dice < ``filled_dice_min`` (None: that metric is not a criterion). The thresholds have no default:
    what counts as a changed segmentation is the user's clinical tolerance (e.g. HD95 within a voxel or two).
    """
    crit = {"dice_min": dice_min, "hd95_max_mm": hd95_max_mm, "contour_error_max_mm": contour_error_max_mm,
            "filled_dice_min": filled_dice_min}
    for k, v in crit.items():
        if v is not None and not np.isfinite(float(v)):
            raise InputError(f"{k}: expected a finite number or None, got {v!r}")
    if len(noisy_masks) == 0:
        raise InputError("noisy_masks: expected at least one noisy mask (K >= 1)")
    clean = _checks.binary("clean_mask", clean_mask)
    filled_clean = fill_contours(clean)
    rows = []
    for m in noisy_masks:
        d_ab, d_ba = surface_distances(m, clean, spacing)
        both = d_ab.size + d_ba.size
        if both == 0:
            h, e = 0.0, 0.0
        elif np.isinf(d_ab).any() or np.isinf(d_ba).any():
            h, e = np.inf, np.inf
        else:
            h = max(np.percentile(d_ab, 95.0), np.percentile(d_ba, 95.0))
            e = (d_ab.sum() + d_ba.sum()) / both
        rows.append((dice(m, clean), h, e, dice(fill_contours(m), filled_clean)))
    d, h, e, f = (np.array(c, dtype=np.float64) for c in zip(*rows))
    flip = np.zeros(d.size, dtype=bool)
    if dice_min is not None:
        flip |= d < float(dice_min)
    if hd95_max_mm is not None:
        flip |= h > float(hd95_max_mm)
    if contour_error_max_mm is not None:
        flip |= e > float(contour_error_max_mm)
    if filled_dice_min is not None:
        flip |= f < float(filled_dice_min)
    return SegmentationFlips(d, h, e, f, flip, {k: None if v is None else float(v) for k, v in crit.items()})


#: The quantiles a distribution of per-draw values is summarised by (report.json keys q05 ... q95).
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def distribution(values, unit: str) -> dict[str, Any]:
    """Summary of per-draw values (Dice, or distances in mm): quantiles q05, q25, q50, q75, q95 (linear
    interpolation), mean, n (finite or infinite values; NaN, a draw not measured, is left out) and ``n_infinite``
    (+inf distances: exactly one mask empty). A quantile or mean that is infinite is None (JSON has no infinity;
    ``n_infinite`` says why). ``unit`` is stored as given ("mm", or "1" for Dice)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    out: dict[str, Any] = {"unit": unit, "n": int(v.size), "n_infinite": int(np.isinf(v).sum())}
    if v.size == 0:
        return {**out, **{_qkey(q): None for q in QUANTILES}, "mean": None}
    with np.errstate(invalid="ignore"):
        qs = np.quantile(v, QUANTILES)  # inf - inf between two infinite order statistics gives NaN: infinite
    qs = np.where(np.isnan(qs), np.inf, qs)
    mean = float(v.mean())
    return {**out, **{_qkey(q): (float(x) if np.isfinite(x) else None) for q, x in zip(QUANTILES, qs)},
            "mean": mean if np.isfinite(mean) else None}


def _qkey(q: float) -> str:
    return f"q{round(q * 100):02d}"
