"""Pytest plugin: robustness checks written as ordinary tests.

Registered through the ``pytest11`` entry point when the package is installed::

    def test_nodule_model_is_robust(robustness_audit):
        report = robustness_audit("audit.toml")          # runs once per session and config, then cached
        report.assert_sar_below(50, 0.05, cls="malignant")
        report.assert_clean_at_least("auc", 0.85)

Assertions reuse the gate's rules (``audit.gate``), so a test and a CI gate
judge a report the same way, and a failure prints the gate's table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from audit.config import load_config
from audit.gate import class_index, evaluate, level_block, table
from audit.pipelines.run import run_config


class AuditReport:
    """A report.json with assertions that fail with a readable rule table."""

    def __init__(self, report: dict[str, Any], path: Path) -> None:
        self.data, self.path = report, path

    def _check(self, rule: dict[str, Any]) -> None:
        rule.setdefault("name", rule["metric"])
        outcomes = evaluate(self.data, [rule])
        if not all(o.passed for o in outcomes):
            pytest.fail(f"robustness check failed for {self.path}:\n{table(outcomes)}", pytrace=False)

    def assert_sar_below(self, level: float, max_sar: float, *, cls: str | None = None, bound: str = "estimate",
                         model: str | None = None) -> None:
        rule: dict[str, Any] = {"metric": "sar_class" if cls is not None else "sar", "level": level, "max": max_sar, "bound": bound}
        if cls is not None:
            rule["class"] = cls
        if model:
            rule["model"] = model
        self._check(rule)

    def assert_san_fraction_below(self, level: float, max_fraction: float, *, model: str | None = None) -> None:
        self._check({"metric": "san_fraction", "level": level, "max": max_fraction, **({"model": model} if model else {})})

    def assert_clean_at_least(self, metric: str, minimum: float, *, model: str | None = None) -> None:
        self._check({"metric": f"clean_{metric}", "min": minimum, **({"model": model} if model else {})})

    def sar(self, level: float, *, cls: str | None = None, model: str | None = None) -> float:
        m = next(x for x in self.data["models"] if model in (None, x["name"]))
        block = level_block(m, level, "sar")
        return block["SAR_overall"] if cls is None else block["per_class"]["SAR"][class_index(block, cls, "sar")]


@pytest.fixture(scope="session")
def robustness_audit(tmp_path_factory) -> Callable[[str | Path], AuditReport]:
    """Run (once per session and config file) the audit a config describes; returns an ``AuditReport``."""
    cache: dict[tuple[str, int], AuditReport] = {}

    def run(config: str | Path) -> AuditReport:
        path = Path(config).resolve()
        key = (str(path), path.stat().st_mtime_ns)
        if key not in cache:
            out = tmp_path_factory.mktemp("robustness-audit")
            report = run_config(load_config(path), out, progress=False)
            cache[key] = AuditReport(report, out / "report.json")
        return cache[key]

    return run
