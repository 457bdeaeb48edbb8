"""Counter-based addressing of random draws: one key, one reproducible stream.

Every perturbation is addressed by ``(seed, sample_id, level, k)``. The key
selects a Philox-4x64-10 stream (NumPy's ``Philox`` bit generator) with
``key = (seed, sample_id)`` and starting ``counter = (0, 0, k, level)``. A draw
consumes the counter from its low words, so streams never overlap for draws
smaller than 2**130 bytes, and the numbers a key yields do not depend on the
batch it travels in, its position, the process or the machine.

The uniforms are always drawn by NumPy on the host, also when the noise is then
shaped on a GPU with CuPy: a perturbation found on a GPU replays from the same
uniform bits on a laptop. The noise itself then agrees to float32 rounding
(about 1e-6 relative): CUDA's and NumPy's log/sin/cos and cuFFT's and
pocketfft's transforms round differently.

To regenerate one perturbation from a report, call the same kernel with the
same noise spec and the single key ``NoiseKey(seed, sample_id, level, k)``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from kernels.errors import KernelError

_U64_MAX = 2**64 - 1


class NoiseKey(NamedTuple):
    """Address of one draw. All fields are integers in [0, 2**64)."""

    seed: int
    sample_id: int
    level: int
    k: int


def as_keys(keys: NoiseKey | Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Validate keys and return them as a ``(B, 4)`` uint64 array (seed, sample_id, level, k)."""
    if isinstance(keys, NoiseKey):
        keys = [keys]
    if isinstance(keys, np.ndarray) and keys.dtype == np.uint64:
        arr = keys
    else:
        rows = [tuple(k) for k in keys]
        for row in rows:
            if len(row) != 4 or any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) for v in row):
                raise KernelError(f"keys: expected (seed, sample_id, level, k) integer tuples, got {row!r}")
            if any(int(v) < 0 or int(v) > _U64_MAX for v in row):
                raise KernelError(f"keys: every field must lie in [0, 2**64), got {row!r}")
        arr = np.array(rows, dtype=np.uint64).reshape(-1, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise KernelError(f"keys: expected shape (B, 4), got {arr.shape}")
    if arr.shape[0] == 0:
        raise KernelError("keys: expected at least one key")
    return arr


def generator(key: Sequence[int] | np.ndarray) -> np.random.Generator:
    """The NumPy generator of one key (a fresh Philox stream at the key's counter)."""
    seed, sample_id, level, k = (int(v) for v in key)
    return np.random.Generator(np.random.Philox(key=[seed, sample_id], counter=[0, 0, k, level]))


def default_workers() -> int:
    """Threads for host-side work: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def uniforms(keys: np.ndarray, count: int, *, workers: int | None = None) -> np.ndarray:
    """``count`` float32 uniforms in [0, 1) per key: a ``(B, count)`` host array."""
    out = np.empty((keys.shape[0], count), dtype=np.float32)

    def fill(rows: range) -> None:
        for b in rows:
            generator(keys[b]).random(dtype=np.float32, out=out[b])

    parallel_rows(keys.shape[0], fill, workers=workers, min_items=count)
    return out


_BLOCK = 1 << 15  # Box-Muller block: temporaries stay in cache and on the heap


def complex_normals(keys: np.ndarray, m: int, *, xp=np, workers: int | None = None):
    """``m`` circular complex normals per key (E|z|^2 = 1): a ``(B, m)`` complex64 ``xp`` array.

    Box-Muller on the key's float32 uniforms: the first ``m`` set the modulus
    sqrt(-ln(1 - u)), the next ``m`` the phase 2 pi u. The real and imaginary
    parts, times sqrt(2), are independent standard normals (tails end at 5.8
    sigma, the float32 resolution of u). On NumPy the work runs in cache-sized
    blocks per key; on CuPy the uniforms travel to the device and the
    transform runs there.
    """
    if xp is not np:
        u = xp.asarray(uniforms(keys, 2 * m, workers=workers))
        r = xp.sqrt(-xp.log1p(-u[:, :m]))
        theta = u[:, m:] * xp.float32(2 * np.pi)
        z = xp.empty((keys.shape[0], m, 2), dtype=xp.float32)
        xp.multiply(r, xp.cos(theta), out=z[..., 0])
        xp.multiply(r, xp.sin(theta), out=z[..., 1])
        return z.view(xp.complex64)[..., 0]
    out = np.empty((keys.shape[0], m), dtype=np.complex64)
    two_pi = np.float32(2 * np.pi)

    def fill(rows: range) -> None:
        u = np.empty(2 * m, dtype=np.float32)
        for b in rows:
            generator(keys[b]).random(dtype=np.float32, out=u)
            pairs = out[b].view(np.float32).reshape(m, 2)
            for lo in range(0, m, _BLOCK):
                hi = min(lo + _BLOCK, m)
                r = np.log1p(-u[lo:hi])
                np.negative(r, out=r)
                np.sqrt(r, out=r)
                theta = u[m + lo : m + hi] * two_pi
                np.multiply(r, np.cos(theta), out=pairs[lo:hi, 0])
                np.multiply(r, np.sin(theta, out=theta), out=pairs[lo:hi, 1])

    parallel_rows(keys.shape[0], fill, workers=workers, min_items=2 * m)
    return out


def parallel_rows(n: int, fn: Callable[[range], None], *, workers: int | None = None, min_items: int = 0) -> None:
    """Run ``fn`` over ``range(n)`` split into contiguous chunks on a thread pool.

    NumPy's random fills, ufuncs and ``scipy.fft`` release the GIL, so threads
    scale on the host. Small jobs (under ~64k elements in all) stay on one thread.
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, n)
    if workers == 1 or n * max(min_items, 1) < 65536:
        fn(range(n))
        return
    bounds = np.linspace(0, n, workers + 1).astype(int)
    chunks: Iterable[range] = [range(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in [pool.submit(fn, c) for c in chunks]:
            f.result()
