"""Fixtures for tests/models: slow tests only with AUDIT_RUN_SLOW=1 (the quick build lives in tests/conftest.py)."""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # A hook, not an autouse fixture: it runs before any fixture, so a skipped slow test does not first build
    # its module-scoped model (a fixture would skip only after the build).
    if item.get_closest_marker("slow") and os.environ.get("AUDIT_RUN_SLOW") != "1":
        pytest.skip("slow: full-size build; set AUDIT_RUN_SLOW=1 to run it")
