"""Shared fixtures: the array namespaces kernels run on (NumPy always, CuPy on a GPU)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from kernels._xp import cuda_unavailable

pytest_plugins = ["pytester"]  # tests of our own pytest plugin run pytest in a scratch project


def pytest_collection_modifyitems(config, items):
    reason = cuda_unavailable()
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


@pytest.fixture(scope="session")
def quick_retrain(quick_nodule, tmp_path_factory):
    """Study 1's Algorithm 2 on the quick nodule model, run once from the CLI for every test that reads it (small
    config: 2 rounds, 2 epochs, 48 samples per split, PGD, two doses x 8 draws; every round audited).

    Returns (output folder, what the run printed, retrain.json, audit/report.json)."""
    import contextlib
    import io
    import json

    from audit.cli import main

    _, _, cache = quick_nodule
    tmp = tmp_path_factory.mktemp("retrain")
    cfg = tmp / "retrain.toml"
    cfg.write_text(f'[model]\nname = "nodule3d"\nquick = true\ncache_dir = "{cache}"\n\n'
                   '[retrain]\nmode = "adaptive"\nrounds = 2\nepochs = 2\ntrain_samples = 48\ntest_samples = 48\n\n'
                   '[attack]\nname = "pgd"\neps = 0.02\nsteps = 5\n\n'
                   '[noise]\nkind = "nps"\nlevels = [20, 200]\ndraws = 8\n')
    out = tmp / "rt"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["retrain", str(cfg), "--out", str(out), "--no-progress"])
    assert code == 0, printed.getvalue()
    return (out, printed.getvalue(), json.loads((out / "retrain.json").read_text()),
            json.loads((out / "audit" / "report.json").read_text()))
