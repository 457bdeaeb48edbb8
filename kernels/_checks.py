"""Argument checks shared by the kernels; each error names the argument and the expectation."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from kernels.errors import KernelError


def positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise KernelError(f"{name}: expected a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise KernelError(f"{name}: expected a positive finite number, got {value!r}")
    return v


def fraction(name: str, value: float, *, low_open: bool = False, high_open: bool = False) -> float:
    v = float(value)
    lo_ok = v > 0 if low_open else v >= 0
    hi_ok = v < 1 if high_open else v <= 1
    if not (math.isfinite(v) and lo_ok and hi_ok):
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise KernelError(f"{name}: expected a number in {lo}0, 1{hi}, got {value!r}")
    return v


def shape(name: str, value: Sequence[int], ndims: tuple[int, ...]) -> tuple[int, ...]:
    try:
        s = tuple(int(n) for n in value)
    except (TypeError, ValueError):
        raise KernelError(f"{name}: expected a tuple of {' or '.join(map(str, ndims))} positive integers, got {value!r}") from None
    if len(s) not in ndims or any(n < 2 for n in s) or any(int(n) != n for n in value):
        raise KernelError(f"{name}: expected {' or '.join(map(str, ndims))} integers >= 2, got {tuple(value)!r}")
    return s


def spacing(name: str, value: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    """Pixel spacing in mm: a scalar (isotropic) or one value per axis, all > 0."""
    vals = [value] * ndim if np.isscalar(value) else list(value)  # type: ignore[list-item]
    if len(vals) != ndim:
        raise KernelError(f"{name}: expected {ndim} values (mm, one per axis), got {len(vals)}")
    return tuple(positive(f"{name}[{i}]", v) for i, v in enumerate(vals))


def finite_array(name: str, a: np.ndarray, *, nonnegative: bool = False) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise KernelError(f"{name}: expected finite values, found NaN or inf")
    if nonnegative and np.any(a < 0):
        raise KernelError(f"{name}: expected values >= 0 (a power spectrum), found min {float(np.min(a)):.4g}")
    return a
