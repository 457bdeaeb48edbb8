"""Shared fixtures: the array namespaces kernels run on (NumPy always, CuPy on a GPU)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

pytest_plugins = ["pytester"]  # tests of our own pytest plugin run pytest in a scratch project


def _cupy_reason() -> str | None:
    """Why CuPy tests cannot run here, or None if they can."""
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        return "CuPy is not installed (pip install 'ct-robustness-audit[gpu]')"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as exc:  # noqa: BLE001 - any CUDA failure means no usable GPU
        return f"no usable CUDA device ({exc})"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _cupy_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"GPU test: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array namespace under test; kernels must behave the same on each."""
    if request.param == "numpy":
        return np
    return importlib.import_module("cupy")


def to_host(a):
    return a.get() if type(a).__module__.startswith("cupy") else np.asarray(a)


@pytest.fixture(scope="session")
def quick_nodule(tmp_path_factory):
    """The CI-sized NoduleNet3D build (the recipe ``audit demo`` uses), in a private cache.

    Returns (result, CPU seconds the build took in this process, cache folder).
    """
    import time

    import models

    cache = tmp_path_factory.mktemp("model-cache")
    c0 = time.process_time()
    result = models.cached_build("nodule3d", quick=True, cache_dir=cache)
    return result, time.process_time() - c0, cache
