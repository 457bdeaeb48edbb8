"""Noise where the engine runs: per model and precision, the bare engine, device noise and the campaign, on one GPU.

For each model (the shipped nodule3d; bodysite2d when its quick build is in the
model cache, as ``bench/campaign.py`` and ``bench/engines.py`` build it) and each
engine and precision this machine offers (ONNX Runtime CUDA EP FP32; native
TensorRT FP32, FP16, and INT8 from a Q/DQ copy made by ``quantize_int8``) it
measures, side by side in one run:

- ``engine``: images/s of the bare engine on a CuPy batch (outputs left on the device);
- ``noise``: images/s of device noise made the campaign's way
  (``noise_plan(..., xp=cupy).noisy_into``: keyed uniforms, normals, FFT, add,
  window, clip on the GPU), and its ratio to the engine;
- ``campaign``: images/s of ``run_campaign`` with that engine (noise on its
  device, the clean pass counted), and its ratio to the bare engine;
- a host-vs-device replay check: the same keys give bit-equal uniforms on the
  GPU and the host, and noise equal to float32 rounding (max |diff| / max |noise|).

Without a GPU (no CuPy, or no CUDA device) it says why, prints
``{"gpu": false, "reason": ...}`` as its last line and exits 0.
Last line: one JSON object. Usage: python bench/gpu.py [--seconds 2] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kernels._xp import cuda_unavailable

MODELS = {"nodule3d": "nodules", "bodysite2d": "bodysite"}
LEVEL = 50.0


def model_paths() -> dict[str, Path]:
    """ONNX files to bench: the shipped nodule3d, and bodysite2d's quick build if the model cache holds it."""
    from models import cache, registry
    from models.build import cached_build
    from models.shipped import shipped_build

    paths = {"nodule3d": shipped_build("nodule3d").primary}
    recipe = registry.get("bodysite2d").recipe(None, quick=True)
    if (cache.build_dir(recipe, None) / "metrics.json").is_file():
        paths["bodysite2d"] = cached_build("bodysite2d", quick=True, progress=False).primary
    else:
        print("bodysite2d: not in the model cache (python bench/campaign.py builds it); skipped")
    return paths


def engines_for(path: Path, calibration: np.ndarray, scratch: Path):
    """(label, engine) for every GPU engine and precision available: ORT CUDA EP, native TensorRT fp32/fp16/int8."""
    import onnxruntime as ort

    from audit.artifact.quantize import quantize_int8
    from audit.engines import load_engine

    if "CUDAExecutionProvider" in ort.get_available_providers():
        engine = load_engine(path, providers=["CUDAExecutionProvider"])
        if engine.device.startswith("cuda"):
            yield "ort-cuda-fp32", engine
        else:  # listed but not loaded (CUDA/cuDNN libraries missing): ORT fell back to the CPU silently
            print(f"onnxruntime: the CUDAExecutionProvider did not load (session providers {engine.providers}); skipped")
    else:
        print("onnxruntime: no CUDAExecutionProvider in this build (onnxruntime-gpu); skipped")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        print("tensorrt: not installed; native TensorRT skipped")
        return
    for precision in ("fp32", "fp16"):
        yield f"tensorrt-{precision}", load_engine(path, "tensorrt", precision=precision, max_batch=512, opt_batch=256)
    q = quantize_int8(path, scratch / f"{path.stem}-int8.onnx", calibration)
    yield "tensorrt-int8", load_engine(q, "tensorrt", precision="int8", max_batch=512, opt_batch=256)


def timed(fn, seconds: float, per_call: int, sync) -> float:
    """Items per second of ``fn`` (``per_call`` items each), synchronised with the device."""
    fn()
    sync()
    t0, done = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        fn()
        done += per_call
    sync()
    return done / (time.perf_counter() - t0)


def replay(spec, source, n: int = 16) -> dict[str, float | bool]:
    """Same keys on host and device: uniforms bit for bit, noise to float32 rounding."""
    import cupy

    from kernels._xp import to_numpy
    from kernels.keys import as_keys, uniforms
    from kernels.stationary import noise_plan

    keys = as_keys(spec.keys(np.arange(n), LEVEL, np.arange(n)))
    model = spec.dose_model(source.shape, source.spacing)
    nps = model.nps_at(LEVEL)
    host_u = uniforms(keys, 4097)
    dev_u = to_numpy(uniforms(keys, 4097, xp=cupy))
    host = noise_plan(nps, source.shape, source.spacing).noise(keys)
    dev = to_numpy(noise_plan(nps, source.shape, source.spacing, xp=cupy).noise(keys))
    return {"uniform_bits_equal": bool(np.array_equal(host_u.view(np.uint32), dev_u.view(np.uint32))),
            "noise_max_rel_diff": float(np.abs(dev - host).max() / np.abs(host).max())}


def bench_model(name: str, path: Path, args, scratch: Path) -> dict[str, object]:
    import cupy

    from audit.artifact import AuditedModel, head_from, preprocess_from
    from audit.campaign.noise import NoiseSpec
    from audit.campaign.run import RunOptions, run_campaign
    from audit.data import phantom_source
    from kernels.keys import as_keys
    from kernels.stationary import noise_plan

    source = phantom_source(MODELS[name], args.samples, 1000)
    spec = NoiseSpec(kind="nps", levels=(LEVEL,), draws=args.draws, seed=0, sigma_ref=25.0, mas_ref=100.0)
    out: dict[str, object] = {}
    for key, value in replay(spec, source).items():
        out[f"{name}_replay_{key}"] = value
    b = args.batch
    hu = source.load(np.arange(len(source)))
    rows = np.arange(b) % len(source)
    sync = cupy.cuda.get_current_stream().synchronize
    clean = cupy.asarray(hu[rows])  # a block's images live on the device, as in the device campaign
    for label, engine in engines_for(path, _calibration(path, hu), scratch):
        model = AuditedModel(name, engine, head_from(engine.metadata, None, str(path)),
                             preprocess_from(engine.metadata, None, str(path)))
        tag = f"{name}_{label}"
        x = model.prepare(clean)
        engine_ips = timed(lambda: engine.run(x, to_host=False), args.seconds, b, sync)
        plan = noise_plan(spec.dose_model(source.shape, source.spacing).nps_at(LEVEL), source.shape, source.spacing,
                          xp=cupy)
        buf = cupy.empty(x.shape, cupy.float32)
        keys = as_keys(spec.keys(rows, LEVEL, np.arange(b)))
        lo_hi, clip = model.preprocess.window, model.preprocess.clip
        noise_ips = timed(lambda: plan.noisy_into(buf, clean, keys, window=lo_hi, clip=clip), args.seconds, b, sync)
        out[f"{tag}_engine_ips"] = round(engine_ips, 1)
        out[f"{tag}_noise_ips"] = round(noise_ips, 1)
        out[f"{tag}_noise_vs_engine"] = round(noise_ips / engine_ips, 2)
        try:
            with tempfile.TemporaryDirectory(dir=scratch) as folder:
                stats = run_campaign([model], source, spec, Path(folder),
                                     RunOptions(batch_size=b, shard_samples=len(source), progress=False))
            out[f"{tag}_campaign_ips"] = round(stats.images_per_second, 1)
            out[f"{tag}_campaign_vs_engine"] = round(stats.images_per_second / engine_ips, 2)
            out[f"{tag}_campaign_namespace"] = getattr(stats, "namespace", "?")
        except Exception as exc:  # noqa: BLE001 - report the campaign's failure beside the other figures
            out[f"{tag}_campaign_error"] = f"{exc.__class__.__name__}: {exc}"[:200]
        print(f"{name:12}{label:>16}{engine_ips:12.1f}{noise_ips:12.1f}{out.get(f'{tag}_campaign_ips', float('nan')):12.1f}")
    return out


def _calibration(path: Path, hu: np.ndarray) -> np.ndarray:
    """Model inputs for INT8 calibration: the phantoms through the model's own preprocessing."""
    from audit.artifact import open_path

    model = open_path(path)
    return model.prepare(hu[:64])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--samples", type=int, default=64, help="phantom images per model (campaign)")
    parser.add_argument("--draws", type=int, default=32, help="draws per image in the campaign")
    args = parser.parse_args()
    reason = cuda_unavailable()
    if reason is not None:
        print(f"no GPU here: {reason}; nothing measured")
        print(json.dumps({"gpu": False, "reason": reason}))
        return
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    result: dict[str, object] = {"gpu": True, "device": props["name"].decode(errors="replace")}
    print(f"{'model':12}{'engine':>16}{'engine/s':>12}{'noise/s':>12}{'campaign/s':>12}")
    with tempfile.TemporaryDirectory() as scratch:
        for name, path in model_paths().items():
            result.update(bench_model(name, path, args, Path(scratch)))
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
