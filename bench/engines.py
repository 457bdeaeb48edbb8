"""Images/s of every engine available on this machine for the reference models at batch 1, 16, 64, 256.

Engines: ONNX Runtime on each provider this build offers (CPU, CUDA, TensorRT EP),
native TensorRT FP32/FP16 when the gpu extra and a GPU are present, and the
torch module (eager, its threads pinned by ``audit.engines.threads``). CUDA
engines get CuPy batches and keep outputs on the device (``engine.xp``). Last line: one JSON object of each engine's rate relative
to ONNX Runtime CPU at the same model and batch.
Usage: python bench/engines.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

BATCHES = (1, 16, 64, 256)
MODELS = ("nodule3d", "bodysite2d")


def rate(engine, x, seconds: float) -> float:
    """Images/s of ``engine.run`` on ``x``; a CUDA engine gets the batch in its own namespace (CuPy: no host copy)
    and leaves its outputs on the device, synchronised before the clock stops."""
    xp = engine.xp
    if xp is not np:
        x = xp.asarray(x)
    sync = xp.cuda.get_current_stream().synchronize if xp is not np else (lambda: None)
    engine.run(x, to_host=False)
    sync()
    t0, done = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        engine.run(x, to_host=False)
        done += x.shape[0]
    sync()
    return done / (time.perf_counter() - t0)


def engines_for(path, name):
    import onnxruntime as ort

    from audit.engines import load_engine
    from audit.engines.torch_module import TorchEngine
    from models.build import cached_build, load_checkpoint

    for provider in ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"):
        if provider in ort.get_available_providers():
            yield f"ort-{provider.removesuffix('ExecutionProvider').lower()}", load_engine(path, providers=[provider])
    try:
        import tensorrt  # noqa: F401

        for precision in ("fp32", "fp16"):
            yield f"tensorrt-{precision}", load_engine(path, "tensorrt", precision=precision, max_batch=max(BATCHES))
    except ImportError:
        pass
    build = cached_build(name, quick=True, progress=False)
    net = load_checkpoint(name, None, build.artifacts[0].checkpoint)
    spec = load_engine(path).input_spec
    yield "torch-eager", TorchEngine(net, spec.shape, input_name=spec.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    from models.build import cached_build

    ratios: dict[str, float] = {}
    print(f"{'model':12}{'engine':>16}{'batch':>7}{'images/s':>12}")
    for name in MODELS:
        path = cached_build(name, quick=True, progress=False).primary
        base: dict[int, float] = {}
        for engine_name, engine in engines_for(path, name):
            shape = tuple(d for d in engine.input_spec.shape[1:])
            for b in BATCHES:
                x = np.random.default_rng(0).uniform(0, 1, (b, *shape)).astype(np.float32)
                r = rate(engine, x, args.seconds)
                print(f"{name:12}{engine_name:>16}{b:>7}{r:12.1f}")
                if engine_name == "ort-cpu":
                    base[b] = r
                else:
                    ratios[f"{name}_{engine_name}_b{b}_vs_ort_cpu"] = round(r / base[b], 2)
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
