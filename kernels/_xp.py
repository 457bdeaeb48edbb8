"""Array-namespace plumbing: one body of kernel code serves NumPy and CuPy.

Kernels take an optional ``xp`` (the ``numpy`` or ``cupy`` module); when it is
omitted it is inferred from the array arguments. CuPy is only imported when a
caller asks for it, so the CPU install never needs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np

from kernels.errors import KernelError, MissingExtraError

# Package -> (pip extra that installs it, what it is used for).
_EXTRAS = {
    "cupy": ("gpu", "noise generation on CUDA GPUs"),
    "tensorrt": ("gpu", "the native TensorRT engine"),
    "ray": ("ray", "scale-out of campaigns over Ray"),
}


def optional_import(name: str) -> ModuleType:
    """Import an optional package or raise a ``MissingExtraError`` naming its extra."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        extra, purpose = _EXTRAS.get(name.split(".")[0], ("", "this feature"))
        hint = f"pip install 'ct-robustness-audit[{extra}]'" if extra else f"pip install {name}"
        raise MissingExtraError(f"{name} is needed for {purpose} but is not importable ({exc}); install it with: {hint}") from exc


def namespace(name: str | ModuleType | None) -> ModuleType:
    """Resolve ``"numpy"``/``"cupy"`` (or a module, or None for NumPy) to an array namespace."""
    if name is None:
        return np
    if isinstance(name, ModuleType):
        if name.__name__ not in ("numpy", "cupy"):
            raise KernelError(f"xp: expected the numpy or cupy module, got {name.__name__}")
        return name
    if name == "numpy":
        return np
    if name == "cupy":
        return optional_import("cupy")
    raise KernelError(f"xp: expected 'numpy' or 'cupy', got {name!r}")


def array_namespace(*arrays: Any, xp: str | ModuleType | None = None) -> ModuleType:
    """The namespace of the given arrays (CuPy if any is a CuPy array), or ``xp`` if given."""
    if xp is not None:
        return namespace(xp)
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            return namespace("cupy")
    return np


def is_numpy(xp: ModuleType) -> bool:
    return xp is np


def to_numpy(a: Any) -> np.ndarray:
    """Copy an array of either namespace to host memory as a NumPy array."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def fft_module(xp: ModuleType) -> ModuleType:
    """The FFT module for ``xp``: ``scipy.fft`` (threaded, keeps float32) or ``cupyx.scipy.fft``."""
    if is_numpy(xp):
        import scipy.fft

        return scipy.fft
    return optional_import("cupyx.scipy.fft")


def cuda_unavailable() -> str | None:
    """Why CuPy cannot run on a GPU here (one line for a skip or a bench), or None when it can."""
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        return "CuPy is not installed (pip install 'ct-robustness-audit[gpu]')"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as exc:  # noqa: BLE001 - any CUDA failure means no usable GPU
        return f"no usable CUDA device ({exc.__class__.__name__}: {exc})"
    return None
