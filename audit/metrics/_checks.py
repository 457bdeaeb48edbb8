"""Argument checks shared by the metrics; each error names the argument and the expectation.

Every check returns the cleaned value (a NumPy array of a fixed dtype, or a
Python number) so a metric validates once and then works on trusted data.
"""

from __future__ import annotations

import math

import numpy as np

from audit.errors import InputError


def _array(name: str, value) -> np.ndarray:
    try:
        return np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - anything NumPy cannot read is bad input
        raise InputError(f"{name}: expected an array, got {type(value).__name__} ({exc})") from None


def integer_array(name: str, value) -> np.ndarray:
    """Any-shape array of integers (bool, int, or floats with integral values) as int64."""
    a = _array(name, value)
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64)
    if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        return a.astype(np.int64)
    raise InputError(f"{name}: expected integer labels or counts, got dtype {a.dtype} with non-integer values")


def n_classes(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}: expected an integer >= 1 (the number of classes), got {value!r}")
    return int(value)


def labels(name: str, value, n: int | None, *, ndim: int = 1) -> np.ndarray:
    """Integer class labels in ``[0, n)`` (``n`` None: any labels >= 0), with ``ndim`` dimensions, at least one element."""
    a = integer_array(name, value)
    if a.ndim != ndim:
        want = "(N,)" if ndim == 1 else "(N, K)"
        raise InputError(f"{name}: expected a {ndim}-D array of shape {want}, got shape {a.shape}")
    if a.size and (a.min() < 0 or (n is not None and a.max() >= n)):
        bad = a.min() if a.min() < 0 else a.max()
        bound = f"[0, {n})" if n is not None else ">= 0"
        raise InputError(f"{name}: expected class labels in {bound}, found {int(bad)}")
    return a


def clean_and_perturbed(clean_labels, perturbed_labels, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``clean_labels`` (N,) and ``perturbed_labels`` (N, K) with N >= 1 and K >= 1."""
    y = labels("clean_labels", clean_labels, n)
    p = labels("perturbed_labels", perturbed_labels, n, ndim=2)
    if y.shape[0] == 0:
        raise InputError("clean_labels: expected at least one sample (N >= 1), got N = 0")
    if p.shape[0] != y.shape[0] or p.shape[1] == 0:
        raise InputError(
            f"perturbed_labels: expected shape (N, K) = ({y.shape[0]}, K) with K >= 1 perturbations, got {p.shape}"
        )
    return y, p


def draws(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}: expected the number of perturbations per sample, an integer K >= 1, got {value!r}")
    return int(value)


def flip_counts(name: str, value, k: int) -> np.ndarray:
    """Per-sample flip counts n_i: 1-D integers in ``[0, K]``."""
    a = integer_array(name, value)
    if a.ndim != 1:
        raise InputError(f"{name}: expected a 1-D array of per-sample flip counts, got shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() > k):
        raise InputError(f"{name}: expected counts in [0, K] = [0, {k}], found {int(a.min())}..{int(a.max())}")
    return a


def confidence(value) -> float:
    try:
        c = float(value)
    except (TypeError, ValueError):
        raise InputError(f"confidence: expected a number in (0, 1), got {value!r}") from None
    if not (math.isfinite(c) and 0.0 < c < 1.0):
        raise InputError(f"confidence: expected a number in (0, 1) such as 0.95, got {value!r}")
    return c


def fractions(name: str, value) -> np.ndarray:
    """Finite float64 values in [0, 1] (proportions, rates)."""
    a = _array(name, value)
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise InputError(f"{name}: expected numbers in [0, 1], got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(a > 1):
        raise InputError(f"{name}: expected finite values in [0, 1]")
    return a


def binary(name: str, value) -> np.ndarray:
    """A binary array (bool or 0/1) as bool."""
    a = _array(name, value)
    if a.dtype == bool:
        return a
    if not np.issubdtype(a.dtype, np.number) or not np.all((a == 0) | (a == 1)):
        raise InputError(f"{name}: expected binary values (bool or 0/1); threshold scores or probabilities first")
    return a.astype(bool)


def scores(name: str, value, n: int) -> np.ndarray:
    a = _array(name, value)
    if not np.issubdtype(a.dtype, np.number) or a.dtype.kind == "c":
        raise InputError(f"{name}: expected real-valued scores, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.shape != (n,):
        raise InputError(f"{name}: expected shape ({n},) to match labels, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: expected finite scores, found NaN or inf")
    return a


def binary_labels(name: str, value, *, min_per_class: int = 1) -> np.ndarray:
    """1-D 0/1 labels (1 = positive) with at least ``min_per_class`` of each class, as bool."""
    a = binary(name, value)
    if a.ndim != 1:
        raise InputError(f"{name}: expected a 1-D array of 0/1 labels, got shape {a.shape}")
    n_pos, n_neg = int(a.sum()), int((~a).sum())
    if min(n_pos, n_neg) < min_per_class:
        raise InputError(
            f"{name}: expected at least {min_per_class} positive(s) (1) and {min_per_class} negative(s) (0), "
            f"got {n_pos} positive and {n_neg} negative"
        )
    return a
