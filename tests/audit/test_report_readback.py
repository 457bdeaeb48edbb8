"""``audit report OUT`` reads report.json back with types: what the check accepts, the page renders.

A real report (planted model, two levels) is spoilt at random places (keys removed, values replaced by any JSON)
by hypothesis: ``read_report`` either refuses it with the project's error, or ``render_html`` draws it without any
other exception (exit 3 would be a bug).
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.errors import USER_ERRORS
from audit.report.build import read_report
from audit.report.html import render_html
from tests.audit.test_parsers_hypothesis import report, spoil  # noqa: F401 - report: the real report fixture

#: Deterministic, no example database in the checkout; few examples: every accepted one draws the page's figures.
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def test_the_unspoilt_report_reads_back_and_renders(report, tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert read_report(tmp_path / "report.json") == report
    assert "<html" in render_html(report, tmp_path)


@SETTINGS
@given(data=st.data())
def test_a_spoilt_report_is_refused_or_renders(report, tmp_path, data):
    spoilt = spoil(report, data)
    path = Path(tmp_path) / "report.json"
    path.write_text(json.dumps(spoilt), encoding="utf-8")
    try:
        loaded = read_report(path)
    except USER_ERRORS:
        return
    render_html(loaded, tmp_path)
