"""Campaign throughput against its ceiling and against a study-style loop, for both reference models.

For NoduleNet3D (32^3 cubes) and BodySiteNet2D (256^2 slices), in one process,
same model and batch size:
  (a) the campaign end to end (noise + preprocessing + ONNX Runtime + records);
  (b) the bare engine on pre-generated inputs (the ceiling: (a) cannot beat it);
  (c) a naive study-style loop: one sample and one draw at a time, torch eager,
      per-slice float64 NumPy FFT noise.
Then peak RSS of the campaign for N = 200 vs N = 2000 samples (child processes).
Last line: one JSON object with a/b, a/c per model and the RSS growth.
Models come from the build cache (quick recipes; built on first use).
Usage: python bench/campaign.py [--images 1500] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = {"nodule3d": "nodules", "bodysite2d": "bodysite"}


def setup(name: str, n: int):
    from audit.artifact import open_path
    from audit.data import phantom_source
    from models.build import cached_build, load_checkpoint

    build = cached_build(name, quick=True, progress=False)
    model = open_path(build.primary, name)
    source = phantom_source(MODELS[name], n, 1000)
    net = load_checkpoint(name, None, build.artifacts[0].checkpoint)
    return model, source, net


def noise_spec(draws: int):
    from audit.campaign.noise import NoiseSpec

    return NoiseSpec(kind="nps", levels=(50.0,), draws=draws, seed=0, sigma_ref=25.0, mas_ref=100.0)


def campaign_rate(model, source, draws: int, batch: int) -> float:
    from audit.campaign.run import RunOptions, run_campaign

    with tempfile.TemporaryDirectory() as out:
        stats = run_campaign([model], source, noise_spec(draws), Path(out), RunOptions(batch_size=batch, shard_samples=64, progress=False))
    return stats.inferences / stats.seconds


def engine_rate(model, source, images: int, batch: int) -> float:
    x = model.preprocess(source.load(np.arange(min(batch, len(source)))), len(model.engine.input_spec.shape))
    model.engine.run(x)  # warm-up
    t0, done = time.perf_counter(), 0
    while done < images:
        model.engine.run(x)
        done += x.shape[0]
    return done / (time.perf_counter() - t0)


def naive_rate(net, source, model, images: int) -> float:
    """One sample, one draw at a time: float64 per-slice FFT noise, torch eager, no batching."""
    import torch

    spec = noise_spec(1)
    nps = spec.dose_model(source.shape, source.spacing).nps_at(50.0)
    ny, nx = source.shape[-2:]
    sp = source.spacing[-2:]
    amp = np.sqrt(nps.on_grid((ny, nx), sp, half=False) / (sp[0] * sp[1]))
    rng = np.random.default_rng(0)
    lo, hi = model.preprocess.window
    t0 = time.perf_counter()
    for i in range(images):
        hu = source.load([i % len(source)])[0].astype(np.float64)
        slices = hu.reshape(-1, ny, nx)
        noisy = np.stack([s + np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((ny, nx))) * amp)) for s in slices]).reshape(hu.shape)
        x = torch.from_numpy(((np.clip(noisy, lo, hi) - lo) / (hi - lo)).astype(np.float32))[None, None]
        with torch.no_grad():
            net(x)
    return images / (time.perf_counter() - t0)


def write_cases(folder: Path, n: int) -> dict[int, Path]:
    """n phantom cubes as .npy files with manifests of the first 200 and of all n rows."""
    from models.phantoms.nodules import nodule_cubes

    cubes = nodule_cubes(n, 1000)
    rows = ["path,label"]
    for i, (img, lab) in enumerate(zip(cubes.images, cubes.labels)):
        np.save(folder / f"c{i:05d}.npy", img)
        rows.append(f"c{i:05d}.npy,{int(lab)}")
    manifests = {}
    for size in (200, n):
        manifests[size] = folder / f"manifest-{size}.csv"
        manifests[size].write_text("\n".join(rows[: size + 1]) + "\n")
    return manifests


def peak_rss_kib(manifest: Path) -> int:
    """Peak RSS of a child process that audits the manifest's cubes (K = 2) streaming them from disk."""
    code = (f"import sys, resource; sys.path.insert(0, {str(Path(__file__).parent)!r}); import campaign as b; "
            "from audit.data import ManifestSource; "
            f"m, _, _ = b.setup('nodule3d', 2); s = ManifestSource({str(manifest)!r}, (1.0, 1.0, 1.0)); "
            "b.campaign_rate(m, s, 2, 64); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500, help="inferences per variant and model")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--naive-images", type=int, default=150)
    args = parser.parse_args()
    ratios: dict[str, float] = {}
    print(f"{'model':12}{'variant':>10}{'images/s':>12}")
    for name in MODELS:
        n = 100
        model, source, net = setup(name, n)
        draws = max(1, args.images // n)
        rates = {"campaign": campaign_rate(model, source, draws, args.batch),
                 "engine": engine_rate(model, source, args.images, args.batch),
                 "naive": naive_rate(net, source, model, args.naive_images)}
        for variant, r in rates.items():
            print(f"{name:12}{variant:>10}{r:12.1f}")
        ratios[f"{name}_campaign_vs_engine"] = round(rates["campaign"] / rates["engine"], 3)
        ratios[f"{name}_campaign_vs_naive"] = round(rates["campaign"] / rates["naive"], 2)
    with tempfile.TemporaryDirectory() as tmp:
        manifests = write_cases(Path(tmp), 2000)
        small, large = peak_rss_kib(manifests[200]), peak_rss_kib(manifests[2000])
    print(f"peak RSS nodule3d campaign: N=200 {small / 1024:.0f} MiB, N=2000 {large / 1024:.0f} MiB")
    ratios["rss_growth_n2000_vs_n200"] = round(large / small - 1, 3)
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
