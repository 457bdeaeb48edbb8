"""Noise-generation throughput, measured side by side in one process.

For 32^3 cubes (slice by slice, study 1) and 256^2 / 512^2 slices it times:
- ``ours``: ``nps_noise`` batched (spectral draw, all CPU threads);
- ``ours_1t``: the same on one thread; ``spatial``: real white noise + forward FFT;
- ``naive``: a study-style loop, one slice at a time: float64 white noise,
  complex128 FFT forward and back;
- ``draw``: drawing the same number of Gaussian values alone with NumPy
  (``standard_normal(dtype=float32)``, one call), the practical ceiling.
Prints a table, then as its last line one JSON object of rate ratios.
Usage: python bench/noise.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from kernels import NoiseKey, nps_noise, preset

CASES = {"cube32": ((32, 32, 32), (1.0, 1.0, 1.0), 64), "slice256": ((256, 256), (0.7, 0.7), 64), "slice512": ((512, 512), (0.7, 0.7), 16)}


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (FFT plans, thread pool)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


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
    ratios: dict[str, float] = {}
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
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
