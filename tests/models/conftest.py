"""Fixtures for tests/models: slow tests only with AUDIT_RUN_SLOW=1 (the quick build lives in tests/conftest.py)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _skip_slow_unless_asked(request):
    if request.node.get_closest_marker("slow") and os.environ.get("AUDIT_RUN_SLOW") != "1":
        pytest.skip("slow: full-size build; set AUDIT_RUN_SLOW=1 to run it")
