"""Counter-based addressing of random draws: one key, one reproducible stream.

Every perturbation is addressed by ``(seed, sample_id, level, k)``. The key
selects a Philox-4x64-10 stream (NumPy's ``Philox`` bit generator) with
``key = (seed, sample_id)`` and starting ``counter = (0, 0, k, level)``. A draw
consumes the counter from its low words, so streams never overlap for draws
smaller than 2**130 bytes, and the numbers a key yields do not depend on the
batch it travels in, its position, the process or the machine.

On NumPy the uniforms come from NumPy's own C ``Philox`` (several times faster
on a CPU than array code). On CuPy they are drawn on the device by the same
generator written as array code (``kernels.philox``), which gives the same bits
for the same key: a perturbation found on a GPU replays from the same uniform
bits on a laptop, and no uniforms cross the bus. The noise itself then agrees
to float32 rounding (about 1e-6 relative): CUDA's and NumPy's log/sin/cos and
cuFFT's and pocketfft's transforms round differently.

To regenerate one perturbation from a report, call the same kernel with the
same noise spec and the single key ``NoiseKey(seed, sample_id, level, k)``.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from kernels import philox
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


def stream_of(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Philox keys ``(B, 2)`` and starting counters ``(B, 4)`` (uint64) of draw keys ``(B, 4)``.

    ``key = (seed, sample_id)``, ``counter = (0, 0, k, level)`` (word 0 least significant).
    """
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1, 4)
    zeros = np.zeros(keys.shape[0], dtype=np.uint64)
    return np.ascontiguousarray(keys[:, :2]), np.stack([zeros, zeros, keys[:, 3], keys[:, 2]], axis=1)


def philox_stream(key: Sequence[int] | np.ndarray) -> np.random.Philox:
    """NumPy's Philox bit generator of one key, at the key's counter."""
    seed, sample_id, level, k = (int(v) for v in key)
    # uint64 arrays, not lists: NumPy reads a list holding a value >= 2**63 as float64 and rounds it.
    return np.random.Philox(key=np.array([seed, sample_id], dtype=np.uint64), counter=np.array([0, 0, k, level], dtype=np.uint64))


class _Restream:
    """One Philox bit generator moved to each key's stream by setting its state: the state of a fresh
    ``philox_stream(key)`` (empty buffer), without a construction per key (which seeds from OS entropy first)."""

    def __init__(self) -> None:
        self.bg = np.random.Philox(key=np.zeros(2, np.uint64))
        self.key = np.zeros(2, np.uint64)
        self.counter = np.zeros(4, np.uint64)
        self.buffer = np.zeros(4, np.uint64)

    def at(self, key: np.ndarray) -> np.random.Philox:
        """The generator at ``key`` = a (seed, sample_id, level, k) uint64 row."""
        self.key[0], self.key[1] = key[0], key[1]
        self.counter[2], self.counter[3] = key[3], key[2]
        self.bg.state = {"bit_generator": "Philox", "state": {"counter": self.counter, "key": self.key},
                         "buffer": self.buffer, "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
        return self.bg


def generator(key: Sequence[int] | np.ndarray) -> np.random.Generator:
    """The NumPy generator of one key (a fresh Philox stream at the key's counter)."""
    return np.random.Generator(philox_stream(key))


def default_workers() -> int:
    """Threads for host-side work: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def uniforms(keys: np.ndarray, count: int, *, xp=np, workers: int | None = None, array_code: bool = False):
    """``count`` float32 uniforms in [0, 1) per key: a ``(B, count)`` ``xp`` array.

    On NumPy, NumPy's Philox fills the rows on host threads; on CuPy the array
    Philox draws them on the device. The bits are the same either way.
    ``array_code``: use the array Philox on NumPy too (the device's code path, run on the host).
    """
    if xp is not np or array_code:
        return philox.uniforms(*(xp.asarray(a) for a in stream_of(keys)), count, xp=xp)
    out = np.empty((keys.shape[0], count), dtype=np.float32)

    def fill(rows: range) -> None:
        for b in rows:
            generator(keys[b]).random(dtype=np.float32, out=out[b])

    parallel_rows(keys.shape[0], fill, workers=workers, min_items=count)
    return out


#: Box-Muller block (float32 elements): a 256^2 slice's 33,024 normals in one block (fewer calls per key), its three
#: temporaries (384 KiB) stay in L2; longer rows are cut into equal blocks of at most this size.
_BLOCK = 1 << 16
_U32_8 = np.uint32(8)
#: -u and 2 pi u straight from the 24-bit integers i of u = i 2**-24: scaling float32(2 pi) by a power of two is exact,
#: so float32(i) * these round exactly as -(i 2**-24) and (i 2**-24) * float32(2 pi) do (the same bits, no u pass).
_NEG_TWO_M24 = np.float32(-(2.0**-24))
_TWO_PI = np.float32(2 * np.pi)
_TWO_PI_M24 = _TWO_PI * np.float32(2.0**-24)
_LITTLE_ENDIAN = sys.byteorder == "little"
_HOST = threading.local()


def _host_scratch(block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Restream]:
    """This thread's Box-Muller temporaries (three float32 blocks) and re-keyable Philox: made once per thread (a
    ``_Restream`` costs ~7 us, OS entropy included), grown when a longer block is asked for."""
    held = getattr(_HOST, "scratch", None)
    if held is None or held[0].size < block:
        held = _HOST.scratch = (*(np.empty(block, dtype=np.float32) for _ in range(3)), _Restream())
    r, theta, c, stream = held
    return r[:block], theta[:block], c[:block], stream


def complex_normals(keys: np.ndarray, m: int, *, xp=np, workers: int | None = None, out=None):
    """``m`` circular complex normals per key (E|z|^2 = 1): a ``(B, m)`` complex64 ``xp`` array.

    Box-Muller on the key's float32 uniforms: the first ``m`` set the modulus
    sqrt(-ln(1 - u)), the next ``m`` the phase 2 pi u. The real and imaginary
    parts, times sqrt(2), are independent standard normals (tails end at 5.8
    sigma, the float32 resolution of u). On NumPy the work runs per key in
    cache-sized blocks with per-thread scratch; on CuPy the uniforms are drawn
    (``kernels.philox``, same bits as NumPy's) and transformed on the device.
    ``out``: a C-contiguous ``(B, m)`` complex64 ``xp`` array to fill (the lean
    noise path reuses one), else a new one.
    """
    b = keys.shape[0]
    if out is not None and (tuple(out.shape) != (b, m) or out.dtype != xp.complex64 or not out.flags.c_contiguous):
        raise KernelError(f"complex_normals: out must be a C-contiguous ({b}, {m}) complex64 array, got {out.shape} {out.dtype}")
    if xp is not np:
        return box_muller(uniforms(keys, 2 * m, xp=xp), xp=xp, out=out)
    out = np.empty((b, m), dtype=np.complex64) if out is None else out
    blocks = -(-m // _BLOCK)
    size = -(-m // blocks)
    bounds = [(lo, min(lo + size, m)) for lo in range(0, m, size)]

    def fill(rows: range) -> None:
        # The same values, rounded in the same order, as ``box_muller``; tests hold them bit-equal.
        r, theta, c, stream = _host_scratch(size)
        for b in rows:
            if _LITTLE_ENDIAN:
                # = generator(keys[b]).random(2 m, float32) = i 2**-24 with i the 24 high bits of each 32-bit half (low
                # half first) of the raw 64-bit outputs, drawn in one call (cheaper than a call per float), shifted in
                # place; i < 2**24 reads the same as int32, whose cast to float32 is cheaper than uint32's (both exact).
                bits = stream.at(keys[b]).random_raw(m).view(np.uint32)
                src, neg, phase = np.right_shift(bits, _U32_8, out=bits).view(np.int32), _NEG_TWO_M24, _TWO_PI_M24
            else:  # pragma: no cover - big-endian hosts: the halves' order differs in memory
                src, neg, phase = generator(keys[b]).random(2 * m, dtype=np.float32), np.float32(-1), _TWO_PI
            pairs = out[b].view(np.float32).reshape(m, 2)
            for lo, hi in bounds:
                n = hi - lo
                rr, tt, cc = r[:n], theta[:n], c[:n]
                np.multiply(src[lo:hi], neg, out=rr, dtype=np.float32, casting="unsafe")  # -u
                np.log1p(rr, out=rr)
                np.negative(rr, out=rr)
                np.sqrt(rr, out=rr)
                np.multiply(src[m + lo : m + hi], phase, out=tt, dtype=np.float32, casting="unsafe")  # 2 pi u
                np.multiply(rr, np.cos(tt, out=cc), out=pairs[lo:hi, 0])
                np.multiply(rr, np.sin(tt, out=tt), out=pairs[lo:hi, 1])

    parallel_rows(b, fill, workers=workers, min_items=2 * m)
    return out


def box_muller(u, *, xp=np, out=None):
    """Complex normals ``(B, m)`` (complex64) from float32 uniforms ``(B, 2m)``, whole-array in ``xp``.

    The same values, rounded in the same order, as the blocked host loop of
    ``complex_normals``: on NumPy the two give the same bits. ``out``: a
    C-contiguous ``(B, m)`` complex64 array to write into.
    """
    b, m = u.shape[0], u.shape[1] // 2
    r = xp.sqrt(-xp.log1p(-u[:, :m]))
    theta = u[:, m : 2 * m] * xp.float32(2 * np.pi)
    z = xp.empty((b, m, 2), dtype=xp.float32) if out is None else out.view(xp.float32).reshape(b, m, 2)
    xp.multiply(r, xp.cos(theta), out=z[..., 0])
    xp.multiply(r, xp.sin(theta), out=z[..., 1])
    return z.view(xp.complex64)[..., 0] if out is None else out


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
