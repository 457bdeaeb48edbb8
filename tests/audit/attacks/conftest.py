"""Fixtures for the attack tests: small real ONNX models opened by onnxruntime; slow tests only with AUDIT_RUN_SLOW=1."""

from __future__ import annotations

import os

import pytest

from tests.audit.attacks import nets


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # A hook, not an autouse fixture: it runs before any fixture, so a skipped slow test does not first build
    # its module-scoped model (a fixture would skip only after the build).
    if item.get_closest_marker("slow") and os.environ.get("AUDIT_RUN_SLOW") != "1":
        pytest.skip("slow: trains or attacks a reference model; set AUDIT_RUN_SLOW=1 to run it")


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    return nets.audited(nets.export(nets.Fragile(), tmp_path_factory.mktemp("fragile") / "fragile.onnx"))


@pytest.fixture(scope="module")
def constant(tmp_path_factory):
    return nets.audited(nets.export(nets.Constant(), tmp_path_factory.mktemp("constant") / "constant.onnx"))


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory):
    return nets.audited(nets.export(nets.SmallCNN(), tmp_path_factory.mktemp("cnn") / "cnn.onnx"))
