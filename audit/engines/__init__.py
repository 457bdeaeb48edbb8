"""Inference engines behind one interface, and the registry that opens them by name.

``BACKENDS`` maps an engine name (``[[model]] engine = ...``) to its class;
each class lists the config options it takes (``OPTIONS``) and opens an
artifact with ``open(path, **options)``. Backends import their libraries
lazily (onnxruntime, tensorrt, torch), so the registry costs nothing to
import. Adding an engine: one module with an ``Engine`` subclass, one line here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audit.engines.base import Engine, InputSpec, pick_output, sha256_file
from audit.engines.ort import OnnxRuntimeEngine
from audit.engines.remote import RemoteEngine
from audit.engines.torch_module import TorchEngine
from audit.engines.trt import TensorRTEngine
from audit.errors import ConfigError, InputError

#: Engine name -> backend class (one home for the list of engines).
BACKENDS: dict[str, type[Engine]] = {
    "onnxruntime": OnnxRuntimeEngine,
    "remote": RemoteEngine,  # a KServe v2 server: url + model_name, no file
    "tensorrt": TensorRTEngine,
    "torch": TorchEngine,
}


def backend(name: str) -> type[Engine]:
    """The backend class called ``name``; ``ConfigError`` listing the known ones otherwise."""
    if name not in BACKENDS:
        raise ConfigError(f"model.engine: expected one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    return BACKENDS[name]


def load_engine(path: str | Path | None, name: str = "onnxruntime", **options: Any) -> Engine:
    """Open a model artifact with the named backend; options go to the backend's ``open`` (``path`` None for an
    engine without a file, ``remote``)."""
    cls = backend(name)
    path = None if path is None else Path(path)
    if getattr(cls, "NEEDS_FILE", True) and (path is None or not path.is_file()):
        raise InputError(f"{path}: model file not found")
    unknown = sorted(set(options) - set(cls.OPTIONS))
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: not an option of engine {name!r}; options: {', '.join(cls.OPTIONS) or 'none'}")
    return cls.open(path, **options)


__all__ = ["BACKENDS", "Engine", "InputSpec", "TorchEngine", "backend", "load_engine", "pick_output", "sha256_file"]
