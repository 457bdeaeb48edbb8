"""Dose-reduction insertion against today's insertion (the whole noise of a dose), per image, side by side.

For batches of 256^2 slices and 32^3 cubes, both through ``NoiseSpec.sample`` as the campaign calls it:
- ``add``: ``mode = "add"`` with its ``DoseModel`` (the studies' protocol);
- ``reduce``: ``fractions = [0.25]`` with a ``DoseReduction`` over the same images (the scan's own noise
  measured once per sample beforehand, as a campaign does on first sight; per-slice doses for the cubes).
Prints a table, then as its last line one JSON object: the cost ratio reduce/add per case (target <= 1.2).
Usage: python bench/reduce.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass

import numpy as np

from audit.campaign.noise import NoiseSpec
from audit.data import ArraySource
from kernels import NoiseKey, nps_noise, preset

CASES = {"slice256": ((256, 256), (0.7, 0.7), 32), "cube32": ((32, 32, 32), (1.0, 1.0, 1.0), 64)}


@dataclass
class _Acq:  # what a DICOM series states (a modulated tube current), for the bench's array source
    slice_mas: tuple
    exposure_mas: float
    dose_tag: str = "Exposure"
    slice_tube_current_ma: tuple | None = None
    tube_current_ma: float | None = None
    ctdi_vol_mgy: float | None = None
    kernel: str | None = None

    def to_dict(self):
        return {"exposure_mas": self.exposure_mas}


class ScanSource(ArraySource):
    """Arrays standing for scans acquired at 200 mAs (per slice for volumes)."""

    def acquisition(self, i):
        n = self.images.shape[1] if self.images.ndim == 4 else 1
        mas = tuple(np.linspace(150, 250, n)) if n > 1 else (200.0,)
        return _Acq(mas, float(np.mean(mas)))


def best_time(fn, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    ratios = {}
    print(f"{'case':10}{'variant':>10}{'images/s':>12}")
    for name, (shape, spacing, batch) in CASES.items():
        nps = preset("standard", 1.0, cutoff=0.6)
        base = nps_noise([NoiseKey(9, i, 0, 0) for i in range(batch)], nps, shape, spacing) * 20.0
        images = (base + 40.0).astype(np.float32)  # soft tissue with the scan's own noise
        source = ScanSource(images, spacing)
        add = NoiseSpec(mode="add", levels=(50.0,), mas_ref=200.0, sigma_ref=20.0, roi_mm=8.0)
        red = NoiseSpec(mode="reduce", fractions=(0.25,), roi_mm=8.0)
        add_model, red_model = add.noise_model(source), red.noise_model(source)
        red_model.prepare()  # the scan's own noise, measured once per sample (not per draw)
        keys = add.keys(np.arange(batch), 50.0, np.zeros(batch, np.int64))
        times = {
            "add": best_time(lambda: add.sample(keys, 50.0, images, spacing, model=add_model), args.repeats),
            "reduce": best_time(lambda: red.sample(keys, 0.25, images, spacing, model=red_model), args.repeats),
        }
        for variant, t in times.items():
            print(f"{name:10}{variant:>10}{batch / t:12.1f}")
        ratios[f"{name}_reduce_vs_add"] = round(times["reduce"] / times["add"], 3)
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
