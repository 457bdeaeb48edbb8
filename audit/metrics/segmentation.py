"""Dice overlap of binary masks, for segmentation heads (study 4).

A segmentation head counts a perturbed inference as a flip when the Dice of
its mask to the clean mask falls below a set value; these functions give the
Dice itself.
"""

from __future__ import annotations

import numpy as np

from audit.errors import InputError
from audit.metrics import _checks


def _masks(mask_a, mask_b, *, batched: bool) -> tuple[np.ndarray, np.ndarray]:
    a = _checks.binary("mask_a", mask_a)
    b = _checks.binary("mask_b", mask_b)
    if a.shape != b.shape:
        raise InputError(f"mask_b: expected shape {a.shape} to match mask_a, got {b.shape}")
    if batched and a.ndim < 2:
        raise InputError(f"mask_a: expected a batch (B, ...) of masks with at least 2 dimensions, got shape {a.shape}")
    return a, b


def batch_dice(mask_a, mask_b) -> np.ndarray:
    """Dice of each pair of masks in a batch: ``mask_a``, ``mask_b`` (B, ...) binary -> (B,) float64 in [0, 1].

    Notes
    -----
    Dice = 2 |A and B| / (|A| + |B|), summed over every axis but the first.
    When both masks are empty the ratio is 0/0; it is defined as 1 (the two
    segmentations agree perfectly that there is nothing), so an empty clean
    mask that stays empty under noise is not counted as a flip (study 4).
    """
    a, b = _masks(mask_a, mask_b, batched=True)
    axes = tuple(range(1, a.ndim))
    inter = np.count_nonzero(a & b, axis=axes)
    total = np.count_nonzero(a, axis=axes) + np.count_nonzero(b, axis=axes)
    return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)


def dice(mask_a, mask_b) -> float:
    """Dice of two binary masks of one shape (any number of dimensions); 1 when both are empty.

    See ``batch_dice`` for the definition; this is the unbatched form.
    """
    a, b = _masks(mask_a, mask_b, batched=False)
    return float(batch_dice(a.reshape(1, -1), b.reshape(1, -1))[0])
