"""The lean noise path (``NoisePlan``): the same bits as ``nps_noise`` and the campaign's add + window + clip."""

from __future__ import annotations

import numpy as np
import pytest

from audit.artifact.heads import Preprocess
from kernels import DoseModel, GridNPS, KernelError, NoiseKey, as_keys, nps_noise, preset
from kernels import stationary
from kernels.stationary import NoisePlan, _hermitian, noise_plan
from tests.conftest import to_host

MODEL = DoseModel.from_sigma(preset("standard", sigma=1.0), sigma_ref=12.0, mas_ref=200)
CASES = [  # shape, spacing, method, z profile
    ((64, 64), 0.7, "spectral", None),
    ((33, 48), (0.5, 0.6), "spectral", None),
    ((40, 40), 0.7, "spatial", None),
    ((6, 16, 16), (2.0, 0.7, 0.7), "spectral", None),
    ((6, 16, 16), (2.0, 0.7, 0.7), "spectral", 3.0),
]


def _keys(n: int, seed: int = 3, level: int = 50, k0: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 2**63, n, dtype=np.uint64)
    return as_keys([NoiseKey(seed, int(i), level, k0 + j) for j, i in enumerate(ids)])


def _bits(a) -> np.ndarray:
    return to_host(a).view(np.uint32)


@pytest.mark.parametrize("shape, spacing, method, z", CASES)
@pytest.mark.parametrize("dose", [25, 200])
def test_lean_noise_is_bit_identical_to_nps_noise(shape, spacing, method, z, dose):
    keys = _keys(7, seed=dose)
    nps = MODEL.nps_at(dose)
    ref = nps_noise(keys, nps, shape, spacing, z_nps=z, method=method, workers=1)
    plan = noise_plan(nps, shape, spacing, z_nps=z, method=method)
    np.testing.assert_array_equal(_bits(plan.noise(keys)), _bits(ref))
    np.testing.assert_array_equal(_bits(plan.noise(keys, workers=2)), _bits(ref))  # threads do not change bits
    np.testing.assert_array_equal(_bits(plan.noise(keys[2:5])), _bits(ref[2:5]))  # nor the batch a key travels in


@pytest.mark.parametrize("window, clip", [((-1000.0, 400.0), True), ((-160.0, 240.0), False), (None, True)])
def test_noisy_into_equals_the_campaigns_add_window_and_clip(window, clip):
    shape, spacing = (48, 64), 0.7
    keys = _keys(5, seed=11)
    clean = np.random.default_rng(0).normal(-300, 400, (5, *shape)).astype(np.float32)
    nps = MODEL.nps_at(50)
    noisy = clean + nps_noise(keys, nps, shape, spacing, workers=1)
    ref = noisy if window is None else Preprocess(window, clip)(noisy, 4)
    out = np.full((5, 1, *shape), np.nan, np.float32)  # the engine's input buffer, with its channel axis
    got = noise_plan(nps, shape, spacing).noisy_into(out, clean, keys, window=window, clip=clip)
    assert got is out
    np.testing.assert_array_equal(_bits(out.reshape(ref.shape)), _bits(ref))


def test_non_float32_images_follow_the_promoted_expression():
    shape, spacing = (32, 32), 0.7
    keys = _keys(3)
    clean = np.random.default_rng(1).normal(0, 300, (3, *shape))  # float64
    nps = MODEL.nps_at(100)
    ref = Preprocess((-1000.0, 1000.0), True)(clean + nps_noise(keys, nps, shape, spacing, workers=1), 3)
    out = np.empty((3, *shape), np.float32)
    noise_plan(nps, shape, spacing).noisy_into(out, clean, keys, window=(-1000, 1000))
    np.testing.assert_array_equal(_bits(out), _bits(ref))


def test_the_device_code_path_gives_host_bits_on_numpy():
    # array_code: uniforms by the array Philox, whole-array Box-Muller (what CuPy runs), here on NumPy.
    shape, spacing = (64, 48), 0.7
    keys = _keys(4, seed=5)
    nps = MODEL.nps_at(80)
    ref = nps_noise(keys, nps, shape, spacing, workers=1)
    np.testing.assert_array_equal(_bits(NoisePlan(nps, shape, spacing, array_code=True).noise(keys)), _bits(ref))


def test_plans_are_cached_by_value_and_grid_nps_works():
    a = noise_plan(MODEL.nps_at(50), (32, 32), 0.7)
    assert noise_plan(MODEL.nps_at(50), (32, 32), 0.7) is a  # a fresh but equal NPS: the filter is reused
    assert noise_plan(MODEL.nps_at(51), (32, 32), 0.7) is not a
    assert noise_plan(MODEL.nps_at(50), (32, 32), 0.6) is not a
    full = MODEL.nps_at(50).on_grid((32, 32), (0.7, 0.7), half=False)
    grid = GridNPS(full, (0.7, 0.7))
    keys = _keys(2)
    np.testing.assert_array_equal(_bits(noise_plan(grid, (32, 32), 0.7).noise(keys)),
                                  _bits(nps_noise(keys, grid, (32, 32), 0.7, workers=1)))


def test_bad_buffers_and_images_are_refused():
    plan = noise_plan(MODEL.nps_at(50), (16, 16), 0.7)
    keys = _keys(2)
    clean = np.zeros((2, 16, 16), np.float32)
    with pytest.raises(KernelError, match="out"):
        plan.noisy_into(np.empty((2, 16, 15), np.float32), clean, keys)
    with pytest.raises(KernelError, match="out"):
        plan.noisy_into(np.empty((2, 16, 16), np.float64), clean, keys)
    with pytest.raises(KernelError, match="clean"):
        plan.noisy_into(np.empty((2, 16, 16), np.float32), clean[:1], keys)
    with pytest.raises(KernelError, match="window"):
        plan.noisy_into(np.empty((2, 16, 16), np.float32), clean, keys, window=(5, 5))


@pytest.mark.gpu
def test_device_plan_replays_the_host_noise():
    """Same keys on the GPU: the uniforms are the host's bits; the noise agrees to float32 rounding.

    Tolerance: 1e-4 of the noise's largest magnitude (CUDA's log/sin/cos and cuFFT round differently from NumPy's
    and pocketfft's; typically ~1e-6 relative).
    """
    import cupy

    shape, spacing = (256, 256), 0.7
    keys = _keys(8, seed=21)
    nps = MODEL.nps_at(50)
    host = nps_noise(keys, nps, shape, spacing, workers=1)
    plan = noise_plan(nps, shape, spacing, xp=cupy)
    dev = plan.noise(keys)
    assert isinstance(dev, cupy.ndarray) and dev.dtype == cupy.float32
    np.testing.assert_allclose(dev.get(), host, rtol=0, atol=1e-4 * float(np.abs(host).max()))
    clean = cupy.asarray(np.random.default_rng(0).normal(0, 300, (8, *shape)).astype(np.float32))
    out = cupy.empty((8, 1, *shape), cupy.float32)
    plan.noisy_into(out, clean, keys, window=(-1000.0, 1000.0))
    ref = Preprocess((-1000.0, 1000.0), True)(clean.get() + host, 4)
    np.testing.assert_allclose(out.get(), ref, rtol=0, atol=1e-4 * float(np.abs(host).max()) / 2000)


def _hermitian_by_roll(z, fft_ndim, nx):
    """The definition: each self-conjugate plane p <- (p + conj(p(-f))) / sqrt 2, p(-f) by flip and roll."""
    axes = tuple(range(1, fft_ndim))
    for c in [0] + ([nx // 2] if nx % 2 == 0 else []):
        p = z[..., c]
        z[..., c] = (p + np.conj(np.roll(np.flip(p, axis=axes), 1, axis=axes))) * np.float32(1 / np.sqrt(2))
    return z


@pytest.mark.parametrize("half, nx", [((3, 16, 9), 16), ((2, 15, 9), 17), ((2, 5, 6, 5), 8), ((2, 4, 7, 4), 7)])
def test_hermitian_planes_match_their_definition(half, nx):
    rng = np.random.default_rng(4)
    z = (rng.standard_normal(half) + 1j * rng.standard_normal(half)).astype(np.complex64)
    fft_ndim = len(half) - 1
    np.testing.assert_array_equal(_bits(_hermitian(z.copy(), fft_ndim, nx, np)), _bits(_hermitian_by_roll(z.copy(), fft_ndim, nx)))


def test_the_fft_written_into_the_buffer_gives_irfftn_bits(monkeypatch):
    # The lean path's inverse FFT writes straight into the output (scipy's own c2r); without it, irfftn and a copy.
    shape, spacing = (48, 64), 0.7
    keys = _keys(6, seed=21)
    clean = np.random.default_rng(2).normal(-300, 400, (6, *shape)).astype(np.float32)
    plan = NoisePlan(MODEL.nps_at(60), shape, spacing)
    direct = plan.noise(keys), plan.noisy_into(np.empty((6, 1, *shape), np.float32), clean, keys, window=(-1000.0, 400.0))
    monkeypatch.setattr(stationary, "_C2R", None)
    fallback = plan.noise(keys), plan.noisy_into(np.empty((6, 1, *shape), np.float32), clean, keys, window=(-1000.0, 400.0))
    for a, b in zip(direct, fallback):
        np.testing.assert_array_equal(_bits(a), _bits(b))
