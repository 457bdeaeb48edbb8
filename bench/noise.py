"""Noise-generation throughput, measured side by side in one process.

For 32^3 cubes (slice by slice, study 1) and 256^2 / 512^2 slices it times:
- ``ours``: ``nps_noise`` batched (spectral draw, all CPU threads);
- ``ours_1t``: the same on one thread; ``spatial``: real white noise + forward FFT;
- ``naive``: a study-style loop, one slice at a time: float64 white noise,
  complex128 FFT forward and back;
- ``draw``: drawing the same number of Gaussian values alone with NumPy
  (``standard_normal(dtype=float32)``, one call), the practical ceiling.
Then the campaign's noise stage on one thread, in CPU-ms per image: the
reference (``clean + nps_noise(...)``, then the HU window and clip as
``Preprocess`` computes them) against the lean path
(``noise_plan(...).noisy_into(out, clean, keys, window=...)``: the same bits,
checked here), and their ratio ``*_lean_vs_reference`` (reference time / lean
time, > 1 is faster). For the 256^2 slice, the lean path's stages in CPU-ms per
image (``slice256_stage_cpu_ms``): the keyed Philox draws, Box-Muller, the
spectrum to image (Hermitian planes, filter, inverse FFT) and add + window + clip.
Prints a table, then as its last line one JSON object of rate ratios.
Usage: python bench/noise.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from kernels import NoiseKey, as_keys, nps_noise, preset
from kernels.keys import _Restream, complex_normals
from kernels.stationary import _shape_noise, noise_plan

CASES = {"cube32": ((32, 32, 32), (1.0, 1.0, 1.0), 64), "slice256": ((256, 256), (0.7, 0.7), 64), "slice512": ((512, 512), (0.7, 0.7), 16)}


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (FFT plans, thread pool)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def best_cpu(fns: dict, repeats: int) -> dict:
    """Least process CPU seconds of each function over ``repeats`` rounds, the functions interleaved in every round
    (after a warm-up): other jobs on shared cores drift, and interleaving lets each see the same drift."""
    for fn in fns.values():
        fn()
    best = {name: math.inf for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t0)
    return best


WINDOW = (-1000.0, 400.0)


def reference_stage(keys, nps, shape, spacing, clean):
    """The campaign's noise stage before the lean path: add the noise, then window and clip (``Preprocess``)."""
    noisy = clean + nps_noise(keys, nps, shape, spacing, workers=1)
    x = (noisy - np.float32(WINDOW[0])) * np.float32(1.0 / (WINDOW[1] - WINDOW[0]))
    return np.clip(x, 0.0, 1.0)[:, None].astype(np.float32, copy=False)


def lean_stages(plan, keys: np.ndarray, clean: np.ndarray, repeats: int) -> dict:
    """CPU-ms per image of the lean path's stages, chunk by chunk as ``NoisePlan.noisy_into`` runs them (one thread):
    Philox (the raw draws alone), Box-Muller (the normals less their draws), spectrum -> image, add + window + clip."""
    b, m = keys.shape[0], plan.per_key
    z = np.empty((b, m), np.complex64)
    spectra = complex_normals(keys, m, workers=1)
    out = np.empty((b, *plan.shape), np.float32)
    lo, scale = np.float32(WINDOW[0]), np.float32(1.0 / (WINDOW[1] - WINDOW[0]))
    stream = _Restream()
    chunks = [slice(a, min(a + plan.chunk, b)) for a in range(0, b, plan.chunk)]

    def draws():
        for key in keys:
            stream.at(key).random_raw(m)

    def normals():
        for c in chunks:
            complex_normals(keys[c], m, workers=1, out=z[c])

    def refill():  # the spectra anew (the next stage works in place): timed alone and taken off
        z[...] = spectra

    def to_image():
        refill()
        for c in chunks:
            _shape_noise(z[c], plan.filter, plan.shape, plan.fft_shape, plan.method, np, out=out[c])

    def post():
        for c in chunks:
            d = out[c]
            np.add(d, clean[c], out=d)
            d -= lo
            d *= scale
            np.clip(d, 0.0, 1.0, out=d)

    t = best_cpu({"philox": draws, "normals": normals, "refill": refill, "to_image": to_image, "post": post}, repeats)
    ms = {k: 1e3 * v / b for k, v in t.items()}
    return {"philox": round(ms["philox"], 4), "box_muller": round(ms["normals"] - ms["philox"], 4),
            "spectrum_to_image": round(ms["to_image"] - ms["refill"], 4), "add_window_clip": round(ms["post"], 4)}


def naive_loop(nps, shape, spacing, batch: int, rng: np.random.Generator) -> None:
    """One slice at a time, float64 white noise, complex128 FFT forward and back (a study script)."""
    ny, nx = shape[-2:]
    amp = np.sqrt(nps.on_grid((ny, nx), spacing[-2:], half=False) / (spacing[-1] * spacing[-2]))
    slices = batch * (shape[0] if len(shape) == 3 else 1)
    for _ in range(slices):
        white = rng.standard_normal((ny, nx))
        np.real(np.fft.ifft2(np.fft.fft2(white) * amp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    nps = preset("standard", 10.0, cutoff=0.7)
    ratios: dict[str, object] = {}
    print(f"{'case':10}{'variant':>10}{'images/s':>12}")
    for name, (shape, spacing, batch) in CASES.items():
        keys = [NoiseKey(0, i, 0, 0) for i in range(batch)]
        rng = np.random.default_rng(0)
        buf = np.empty(batch * math.prod(shape), dtype=np.float32)
        times = {
            "ours": best_time(lambda: nps_noise(keys, nps, shape, spacing), args.repeats),
            "ours_1t": best_time(lambda: nps_noise(keys, nps, shape, spacing, workers=1), args.repeats),
            "spatial": best_time(lambda: nps_noise(keys, nps, shape, spacing, method="spatial"), args.repeats),
            "naive": best_time(lambda: naive_loop(nps, shape, spacing, batch, rng), max(1, args.repeats // 2)),
            "draw": best_time(lambda: rng.standard_normal(dtype=np.float32, out=buf), args.repeats),
        }
        for variant, t in times.items():
            print(f"{name:10}{variant:>10}{batch / t:12.1f}")
        ratios[f"{name}_vs_naive"] = round(times["naive"] / times["ours"], 2)
        ratios[f"{name}_vs_draw"] = round(times["draw"] / times["ours"], 2)
        ratios[f"{name}_1thread_vs_draw"] = round(times["draw"] / times["ours_1t"], 2)
        ratios[f"{name}_spectral_vs_spatial"] = round(times["spatial"] / times["ours"], 2)
        # The campaign's noise stage, one thread: reference vs lean (same bits), CPU-ms per image.
        kb = as_keys(keys)
        clean = np.random.default_rng(1).normal(-200, 300, (batch, *shape)).astype(np.float32)
        out = np.empty((batch, 1, *shape), np.float32)
        ref = reference_stage(kb, nps, shape, spacing, clean)
        lean = noise_plan(nps, shape, spacing).noisy_into(out, clean, kb, window=WINDOW)
        if not np.array_equal(ref.view(np.uint32), lean.view(np.uint32)):
            raise SystemExit(f"{name}: the lean path's bits differ from the reference")
        cpu = best_cpu({"reference": lambda: reference_stage(kb, nps, shape, spacing, clean),
                        "lean": lambda: noise_plan(nps, shape, spacing).noisy_into(out, clean, kb, window=WINDOW)},
                       2 * args.repeats)
        for variant, t in cpu.items():
            print(f"{name:10}{variant:>10}{1e3 * t / batch:12.3f} CPU-ms/image")
        ratios[f"{name}_reference_cpu_ms"] = round(1e3 * cpu["reference"] / batch, 3)
        ratios[f"{name}_lean_cpu_ms"] = round(1e3 * cpu["lean"] / batch, 3)
        ratios[f"{name}_lean_vs_reference"] = round(cpu["reference"] / cpu["lean"], 2)
        if name == "slice256":
            stages = lean_stages(noise_plan(nps, shape, spacing), kb, clean, 2 * args.repeats)
            print(f"{name:10} lean stages (CPU-ms/image): " + ", ".join(f"{k} {v:.4f}" for k, v in stages.items()))
            ratios[f"{name}_stage_cpu_ms"] = stages
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
