"""Philox-4x64-10 as array code: the keyed generator on NumPy or CuPy, same bits as NumPy's.

``numpy.random.Philox`` is the reference. Its state is a 256-bit counter
(four 64-bit words, word 0 least significant) and a 128-bit key; each time its
buffer runs dry it *first* adds one to the counter (carrying across words),
then encrypts the counter under the key with ten Philox rounds and hands out
the four 64-bit words of the result in order. A fresh ``Philox(key=K,
counter=C)`` therefore yields, as its ``i``-th raw 64-bit output, word ``i % 4``
of ``philox4x64(C + 1 + i // 4, K)``. ``Generator.random`` turns these into
uniforms the way NumPy's C code does:

* float64: ``(x >> 11) * 2**-53``, one raw output each;
* float32: ``(w >> 8) * 2**-24`` with ``w`` the 32-bit halves of the raw
  outputs, low half first (NumPy's ``next_uint32`` buffers the high half).

This module computes exactly those bits with element-wise integer operations
over an array namespace ``xp`` (``numpy`` or ``cupy``), vectorised over any
number of keys and counters at once, so a stream can be drawn where the noise
is shaped (on a GPU) and still replay bit for bit on a laptop. A 64x64 -> 128
bit product is not an array operation, so the high half of each Philox
multiply is put together from four 32x32 -> 64 bit products (``_mulhilo``);
everything else is 64-bit add, xor, shift and compare, which wrap the same way
in NumPy and CUDA.

On NumPy, NumPy's own C generator is several times faster than this array
code (see ``kernels.keys``); the host path keeps using it and this module is
what the device path runs. Both give the same bits, and ``tests/kernels/
test_philox.py`` holds them to it.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from kernels.errors import KernelError

ROUNDS = 10

_U64 = np.uint64
_M32 = _U64(0xFFFFFFFF)
_S8, _S11, _S32, _S40 = _U64(8), _U64(11), _U64(32), _U64(40)
# Random123 constants for Philox-4x64: the round multipliers and the Weyl key increments.
_MULT = (0xD2E7470EE14C6C93, 0xCA5A826395121157)
_WEYL = (_U64(0x9E3779B97F4A7C15), _U64(0xBB67AE8584CAA73B))
_MULT_HALVES = tuple((_U64(m & 0xFFFFFFFF), _U64(m >> 32), _U64(m)) for m in _MULT)


def _mulhilo(a, halves):
    """(high, low) 64-bit halves of ``a * m`` for a uint64 array ``a`` and a constant ``m``.

    ``m`` comes split as (low 32 bits, high 32 bits, m). The four partial
    products of 32-bit halves fit in 64 bits; the middle column's carries are
    summed in a 64-bit word that cannot overflow (three terms under 2**32).
    """
    m_lo, m_hi, m = halves
    a_lo = a & _M32
    a_hi = a >> _S32
    ll = a_lo * m_lo
    lh = a_lo * m_hi
    hl = a_hi * m_lo
    hi = a_hi * m_hi
    mid = (ll >> _S32) + (lh & _M32) + (hl & _M32)
    hi += lh >> _S32
    hi += hl >> _S32
    hi += mid >> _S32
    return hi, a * m  # uint64 products wrap mod 2**64: the low half


def philox4x64_words(c0, c1, c2, c3, k0, k1, *, xp: ModuleType = np, rounds: int = ROUNDS):
    """Philox-4x64 of counter words ``c0..c3`` under key words ``k0, k1`` (uint64 arrays, broadcast together).

    Returns the four output words ``(x0, x1, x2, x3)`` as uint64 arrays of the
    broadcast shape. Works for any namespace whose arrays support uint64
    ``& >> * + ^`` with wrap-around (NumPy, CuPy).
    """
    # The in-place xors below need left sides of the full broadcast shape; key words may stay smaller.
    c0, c1, c2, c3 = xp.broadcast_arrays(c0, c1, c2, c3, k0, k1)[:4]
    for r in range(rounds):
        if r:
            k0 = k0 + _WEYL[0]
            k1 = k1 + _WEYL[1]
        hi0, lo0 = _mulhilo(c0, _MULT_HALVES[0])
        hi1, lo1 = _mulhilo(c2, _MULT_HALVES[1])
        hi1 ^= c1
        hi1 ^= k0
        hi0 ^= c3
        hi0 ^= k1
        c0, c1, c2, c3 = hi1, lo1, hi0, lo0
    return c0, c1, c2, c3


def philox4x64(counter, key, *, xp: ModuleType = np, rounds: int = ROUNDS):
    """Philox-4x64 blocks: counters ``(..., 4)`` and keys ``(..., 2)`` (uint64, broadcast) -> ``(..., 4)`` uint64."""
    counter = xp.asarray(counter, dtype=xp.uint64)
    key = xp.asarray(key, dtype=xp.uint64)
    if counter.shape[-1:] != (4,) or key.shape[-1:] != (2,):
        raise KernelError(f"philox4x64: expected counters (..., 4) and keys (..., 2), got {counter.shape} and {key.shape}")
    words = philox4x64_words(*(counter[..., i] for i in range(4)), key[..., 0], key[..., 1], xp=xp, rounds=rounds)
    return xp.stack(words, axis=-1)


def counter_add(counter, n, *, xp: ModuleType = np):
    """``counter + n`` modulo 2**256 for counters ``(..., 4)`` (word 0 least significant) and ``n`` uint64 (broadcast)."""
    counter = xp.asarray(counter, dtype=xp.uint64)
    n = xp.asarray(n, dtype=xp.uint64)
    words = []
    w = counter[..., 0] + n
    carry = (w < n).astype(xp.uint64)
    words.append(w)
    for i in (1, 2, 3):
        w = counter[..., i] + carry
        carry = carry & (w == 0).astype(xp.uint64)
        words.append(w)
    return xp.stack(words, axis=-1)


def random_raw(key, counter, count: int, *, xp: ModuleType = np):
    """The first ``count`` raw outputs of a fresh ``numpy.random.Philox(key=key[b], counter=counter[b])`` per row.

    ``key``: ``(B, 2)`` and ``counter``: ``(B, 4)`` integers in [0, 2**64)
    (NumPy or ``xp`` arrays). Returns a ``(B, count)`` uint64 ``xp`` array, equal
    to ``Philox(...).random_raw(count)`` row by row.
    """
    key = xp.asarray(key, dtype=xp.uint64)
    counter = xp.asarray(counter, dtype=xp.uint64)
    if key.ndim != 2 or key.shape[1] != 2 or counter.shape != (key.shape[0], 4):
        raise KernelError(f"random_raw: expected keys (B, 2) and counters (B, 4), got {key.shape} and {counter.shape}")
    if count < 0:
        raise KernelError(f"random_raw: count must be >= 0, got {count}")
    b = key.shape[0]
    blocks = -(-count // 4)
    if blocks == 0:
        return xp.empty((b, 0), dtype=xp.uint64)
    # Block j of a row encrypts counter + 1 + j (NumPy bumps the counter before each block).
    steps = xp.arange(1, blocks + 1, dtype=xp.uint64)
    if not bool(xp.any(counter[:, 0] > _U64(2**64 - 1 - blocks))):
        # No carry out of word 0 anywhere: skip the 256-bit add (the common case, word 0 starts at 0).
        c0 = counter[:, 0:1] + steps
        c1, c2, c3 = (counter[:, i : i + 1] for i in (1, 2, 3))
    else:
        ctr = counter_add(counter[:, None, :], steps[None, :], xp=xp)
        c0, c1, c2, c3 = (ctr[..., i] for i in range(4))
    words = philox4x64_words(c0, c1, c2, c3, key[:, 0:1], key[:, 1:2], xp=xp)
    return xp.stack(words, axis=-1).reshape(b, 4 * blocks)[:, :count]


def uniforms(key, counter, count: int, *, dtype=np.float32, xp: ModuleType = np):
    """``count`` uniforms in [0, 1) per row, bit-equal to ``Generator(Philox(key=.., counter=..)).random(count, dtype)``.

    Returns a ``(B, count)`` ``xp`` array of ``dtype`` (float32 or float64), for
    a fresh generator per row.
    """
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        raw = random_raw(key, counter, count, xp=xp)
        return (raw >> _S11).astype(xp.float64) * xp.float64(2.0**-53)
    if dtype != np.float32:
        raise KernelError(f"uniforms: dtype must be float32 or float64, got {dtype}")
    raw = random_raw(key, counter, -(-count // 2), xp=xp)
    b = raw.shape[0]
    # 24-bit mantissas of the low then the high 32-bit half of each raw word.
    lo = ((raw & _M32) >> _S8).astype(xp.float32)
    hi = (raw >> _S40).astype(xp.float32)
    u = xp.stack([lo, hi], axis=-1).reshape(b, -1)[:, :count]
    u *= xp.float32(2.0**-24)
    return u
