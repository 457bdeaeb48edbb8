"""Stress noises of study 3: uniform, white Gaussian and Poisson, all keyed.

They are not CT-realistic; they probe how a model reacts to unstructured
perturbations of a given size. Each returns noise in HU to add to the image.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Sequence

import numpy as np

from kernels import _checks
from kernels._xp import array_namespace, namespace, to_numpy
from kernels.errors import KernelError
from kernels.keys import as_keys, complex_normals, generator, uniforms
from kernels.stationary import real_normals


def uniform_noise(keys, shape: Sequence[int], amplitude: float, *, xp: str | ModuleType | None = None):
    """Independent uniform noise on [-amplitude, +amplitude) HU: ``(B, *shape)`` float32."""
    keys = as_keys(keys)
    shape = _checks.shape("shape", shape, (2, 3))
    a = _checks.positive("amplitude", amplitude)
    xp = namespace(xp)
    u = xp.asarray(uniforms(keys, math.prod(shape)))
    return ((u * xp.float32(2 * a)) - xp.float32(a)).reshape(keys.shape[0], *shape)


def gaussian_noise(keys, shape: Sequence[int], sigma: float, *, xp: str | ModuleType | None = None):
    """Independent (white) Gaussian noise of standard deviation ``sigma`` HU: ``(B, *shape)`` float32."""
    keys = as_keys(keys)
    shape = _checks.shape("shape", shape, (2, 3))
    s = _checks.positive("sigma", sigma)
    xp = namespace(xp)
    n = math.prod(shape)
    white = real_normals(complex_normals(keys, math.ceil(n / 2), xp=xp), n, xp)
    return (white * xp.float32(s)).reshape(keys.shape[0], *shape)


def poisson_noise(keys, images, lam: float, *, hu_range: tuple[float, float] | None = None, xp=None):
    """Poisson noise: rescale each image to [0, lam], sample Poisson counts, rescale back; return sample - image.

    ``images``: ``(B, ...)`` HU, one key per image. ``lam`` is the count at the top
    of the range (larger = less noise). ``hu_range`` fixes the rescaling range
    (default: each image's own min and max, as in study 3).
    """
    keys = as_keys(keys)
    xp = array_namespace(images, xp=xp)
    lam = _checks.positive("lam", lam)
    host = to_numpy(images).astype(np.float64)
    if host.ndim < 3 or host.shape[0] != keys.shape[0]:
        raise KernelError(f"images: expected (B, ...) with B = {keys.shape[0]} keys, got shape {host.shape}")
    _checks.finite_array("images", host)
    out = np.empty(host.shape, dtype=np.float32)
    for b in range(host.shape[0]):
        lo, hi = hu_range if hu_range is not None else (float(host[b].min()), float(host[b].max()))
        if not hi > lo:
            raise KernelError(f"poisson_noise: image {b} has no intensity range to rescale (min = max = {lo})")
        scaled = np.clip((host[b] - lo) / (hi - lo), 0.0, None) * lam
        counts = generator(keys[b]).poisson(scaled)
        out[b] = counts / lam * (hi - lo) + lo - host[b]
    return xp.asarray(out)
