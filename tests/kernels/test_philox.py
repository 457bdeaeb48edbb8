"""The array Philox (kernels.philox) gives NumPy's Philox bits, so host and device draws replay each other."""

from __future__ import annotations

import types

import numpy as np
import pytest

from kernels import NoiseKey, as_keys, philox
from kernels.errors import KernelError
from kernels.keys import box_muller, complex_normals, generator, stream_of, uniforms
from tests.conftest import to_host

TOP = 2**64 - 1


def _numpy_raw(key, counter, count):
    return np.stack([np.random.Philox(key=key[b], counter=counter[b]).random_raw(count) for b in range(key.shape[0])])


def _edge_counters(n, rng):
    """Random counters whose low words sit at or near 2**64 - 1, so blocks carry into the next words."""
    c = rng.integers(0, 2**64, (n, 4), dtype=np.uint64)
    near = np.uint64(TOP) - rng.integers(0, 3, n, dtype=np.uint64)
    c[0::2, 0] = near[0::2]  # carry out of word 0
    c[0::4, 1] = np.uint64(TOP)  # ... and on through word 1
    c[0::8, 2] = np.uint64(TOP)  # ... and word 2
    c[0::16, 3] = np.uint64(TOP)  # ... and past word 3: the 256-bit counter wraps to 0
    return c


def test_raw_outputs_match_numpy_for_10k_keys_and_carrying_counters():
    rng = np.random.default_rng(17)
    n = 10_000
    key = rng.integers(0, 2**64, (n, 2), dtype=np.uint64)
    key[:4] = [[0, 0], [TOP, TOP], [0, TOP], [TOP, 0]]
    counter = _edge_counters(n, rng)
    counter[:4] = [[TOP] * 4, [0] * 4, [TOP, 0, TOP, 0], [TOP, TOP, 0, 0]]
    # 9 outputs = 3 blocks: the first block, a full refill, a partial one.
    np.testing.assert_array_equal(philox.random_raw(key, counter, 9), _numpy_raw(key, counter, 9))


@pytest.mark.parametrize("start", [0, 2**64 - 2, 2**64 - 1])
def test_long_streams_match_numpy_across_the_word_0_carry(start):
    rng = np.random.default_rng(start % 97)
    key = rng.integers(0, 2**64, (5, 2), dtype=np.uint64)
    counter = rng.integers(0, 2**64, (5, 4), dtype=np.uint64)
    counter[:, 0] = start
    counter[1:3, 1] = TOP
    for count in (1, 3, 4, 5, 1001):
        np.testing.assert_array_equal(philox.random_raw(key, counter, count), _numpy_raw(key, counter, count))


def test_blocks_and_counter_add_agree_with_integer_arithmetic():
    rng = np.random.default_rng(5)
    counter = _edge_counters(64, rng)
    steps = rng.integers(0, 2**64, 64, dtype=np.uint64)
    steps[:8] = 1
    got = philox.counter_add(counter, steps)
    for c, s, g in zip(counter, steps, got):
        value = (sum(int(w) << (64 * i) for i, w in enumerate(c)) + int(s)) % 2**256
        assert [int(w) for w in g] == [(value >> (64 * i)) & TOP for i in range(4)]
    # One block is the four outputs NumPy hands out after bumping the counter by one.
    key = rng.integers(0, 2**64, (64, 2), dtype=np.uint64)
    blocks = philox.philox4x64(philox.counter_add(counter, np.uint64(1)), key)
    np.testing.assert_array_equal(blocks, _numpy_raw(key, counter, 4))
    # Broadcasting: one counter under many keys.
    np.testing.assert_array_equal(philox.philox4x64(counter[0], key)[:1], philox.philox4x64(counter[:1], key[:1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count", [0, 1, 2, 7, 8, 9, 513])
def test_uniforms_match_numpy_generator_random(dtype, count):
    rng = np.random.default_rng(count)
    key = rng.integers(0, 2**64, (40, 2), dtype=np.uint64)
    counter = _edge_counters(40, rng)
    got = philox.uniforms(key, counter, count, dtype=dtype)
    want = np.stack(
        [np.random.Generator(np.random.Philox(key=key[b], counter=counter[b])).random(count, dtype=dtype) for b in range(40)]
    )
    assert got.dtype == dtype and got.shape == (40, count)
    np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"))


def _draw_keys(n, seed=3):
    """Draw keys over the whole field range, including fields at and above 2**63."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2**63, (n, 4), dtype=np.uint64)
    keys[: n // 4] = rng.integers(0, 2**64, (n // 4, 4), dtype=np.uint64)
    keys[0] = [0, 0, 0, 0]
    keys[1] = [TOP, TOP, TOP, TOP]
    keys[2] = [2**63, 2**63 + 1, 2**63 - 1, 2**63]
    return as_keys(keys)


def test_keyed_uniforms_and_normals_match_the_host_path_for_many_keys():
    keys = _draw_keys(3000)
    m = 37  # odd: the float32 stream ends on half a raw word
    host_u = uniforms(keys, 2 * m, workers=1)
    array_u = philox.uniforms(*stream_of(keys), 2 * m)
    np.testing.assert_array_equal(array_u.view(np.uint32), host_u.view(np.uint32))
    host_z = complex_normals(keys, m, workers=1)
    np.testing.assert_array_equal(box_muller(array_u, xp=np).view(np.uint32), host_z.view(np.uint32))


def test_a_256x256_spectrum_of_normals_matches_the_host_path():
    keys = _draw_keys(3, seed=8)
    m = 256 * 129  # one-sided spectrum of a 256 x 256 image
    array_z = box_muller(philox.uniforms(*stream_of(keys), 2 * m), xp=np)
    np.testing.assert_array_equal(array_z.view(np.uint32), complex_normals(keys, m, workers=1).view(np.uint32))


def test_key_fields_at_and_above_2_63_keep_every_bit():
    # NumPy reads a Python list holding a value >= 2**63 as float64; the keyed generator must not.
    ks = [NoiseKey(1, 2, 3, 2**63), NoiseKey(1, 2, 3, 2**63 + 1), NoiseKey(1, 2, 3, TOP - 2), NoiseKey(1, 2, 3, 0)]
    draws = [generator(k).random(8, dtype=np.float32) for k in ks]
    for i in range(len(draws)):
        for j in range(i):
            assert not np.array_equal(draws[i], draws[j]), (ks[i], ks[j])
    np.testing.assert_array_equal(np.stack(draws), philox.uniforms(*stream_of(as_keys(ks)), 8))


def test_the_device_branch_gives_host_bits_through_a_stand_in_namespace():
    # NumPy under another module object: kernels.keys takes its non-NumPy (CuPy) branch on the CPU.
    stand_in = types.ModuleType("numpy_stand_in")
    stand_in.__getattr__ = lambda name: getattr(np, name)
    keys = _draw_keys(64, seed=9)
    np.testing.assert_array_equal(uniforms(keys, 1001, xp=stand_in), uniforms(keys, 1001))
    m = 4097
    np.testing.assert_array_equal(complex_normals(keys, m, xp=stand_in).view(np.uint32), complex_normals(keys, m).view(np.uint32))


def test_bad_shapes_are_rejected():
    with pytest.raises(KernelError, match="random_raw"):
        philox.random_raw(np.zeros((2, 3), np.uint64), np.zeros((2, 4), np.uint64), 4)
    with pytest.raises(KernelError, match="philox4x64"):
        philox.philox4x64(np.zeros(3, np.uint64), np.zeros(2, np.uint64))
    with pytest.raises(KernelError, match="dtype"):
        philox.uniforms(np.zeros((1, 2), np.uint64), np.zeros((1, 4), np.uint64), 4, dtype=np.float16)


@pytest.mark.gpu
def test_device_draws_are_bit_equal_to_numpys():
    import cupy

    keys = _draw_keys(256, seed=11)
    key, counter = stream_of(keys)
    counter = counter.copy()
    counter[::3, 0] = TOP - 1  # carries on the device too
    dev_raw = philox.random_raw(cupy.asarray(key), cupy.asarray(counter), 1001, xp=cupy)
    np.testing.assert_array_equal(to_host(dev_raw), _numpy_raw(key, counter, 1001))
    m = 256 * 129
    dev_u = uniforms(keys[:4], 2 * m, xp=cupy)
    assert isinstance(dev_u, cupy.ndarray)
    np.testing.assert_array_equal(to_host(dev_u), uniforms(keys[:4], 2 * m))
    # Normals: same uniforms, CUDA's log/sin/cos round differently from NumPy's.
    dev_z = complex_normals(keys[:4], m, xp=cupy)
    assert isinstance(dev_z, cupy.ndarray) and dev_z.dtype == cupy.complex64
    np.testing.assert_allclose(to_host(dev_z), complex_normals(keys[:4], m), rtol=1e-5, atol=1e-6)


def test_normals_cut_into_several_blocks_match_the_whole_array_path():
    # A 512 x 512 spectrum (131,328 normals per key) runs in three Box-Muller blocks on the host.
    keys = _draw_keys(3, seed=12)
    m = 512 * 257
    np.testing.assert_array_equal(box_muller(uniforms(keys, 2 * m, workers=1), xp=np).view(np.uint32),
                                  complex_normals(keys, m, workers=1).view(np.uint32))
