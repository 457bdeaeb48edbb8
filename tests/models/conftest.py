"""Fixtures for tests/models: one quick NoduleNet3D build per session; slow tests only with AUDIT_RUN_SLOW=1."""

from __future__ import annotations

import os
import time

import pytest


@pytest.fixture(autouse=True)
def _skip_slow_unless_asked(request):
    if request.node.get_closest_marker("slow") and os.environ.get("AUDIT_RUN_SLOW") != "1":
        pytest.skip("slow: full-size build; set AUDIT_RUN_SLOW=1 to run it")


@pytest.fixture(scope="session")
def quick_nodule(tmp_path_factory):
    """The CI-sized NoduleNet3D build (the recipe ``audit demo`` uses), in a private cache.

    Returns (result, CPU seconds the build took in this process, cache folder).
    """
    import models

    cache = tmp_path_factory.mktemp("model-cache")
    c0 = time.process_time()
    result = models.cached_build("nodule3d", quick=True, cache_dir=cache)
    return result, time.process_time() - c0, cache
