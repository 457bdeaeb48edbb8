"""Inference engines behind one interface; backends import their libraries lazily.

``load_engine(path, backend=...)``: ``"onnxruntime"`` (default, any ``.onnx``)
or ``"tensorrt"`` (GPU extra). ``TorchEngine`` wraps a module a user holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audit.engines.base import Engine, InputSpec, pick_output, sha256_file
from audit.errors import EngineError, InputError

BACKENDS = ("onnxruntime", "tensorrt")


def load_engine(path: str | Path, backend: str = "onnxruntime", **options: Any) -> Engine:
    """Open a model artifact with the named backend; options go to the backend's constructor."""
    path = Path(path)
    if backend not in BACKENDS:
        raise EngineError(f"engine: expected one of {BACKENDS}, got {backend!r}")
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    if backend == "onnxruntime":
        from audit.engines.ort import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, **options)
    from audit.engines.trt import TensorRTEngine

    return TensorRTEngine(path, **options)


__all__ = ["BACKENDS", "Engine", "InputSpec", "load_engine", "pick_output", "sha256_file"]
