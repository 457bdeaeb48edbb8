"""The retrain report (issue 15): per-round SAN and SAR with the campaign report's intervals, in retrain.json and on
retrain.html; its paths relative or named; both pages open cleanly in a browser.

The session's small retraining of the quick reference model (``quick_retrain`` in tests/conftest.py: two rounds,
PGD, two doses with 8 draws), shared with tests/models/test_retrain.py.
"""

from __future__ import annotations

import re

import pytest

from audit.metrics import clopper_pearson_interval, cluster_exact_interval
from tests.audit.test_report_browser import CHROMIUM, WIDTH, open_pages
from tests.audit.test_report_paths import _absolute_mentions, _machine_folders


@pytest.fixture(scope="module")
def retrained(quick_retrain):
    """The session's small retraining (``tests/conftest.py``), shared with ``tests/models/test_retrain.py``."""
    out, _, report, audit = quick_retrain
    return out, report, audit


def test_per_round_san_and_sar_carry_the_campaign_reports_intervals(retrained):
    out, report, audit = retrained
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    for rec, model, block in zip(report["rounds"], audit["models"], audit["attacks"]):
        for split in ("train", "test"):
            s = rec[split]
            assert s["san_fraction_ci"] == pytest.approx(list(clopper_pearson_interval(s["san"], s["n"])))
            assert s["san_fraction_ci"][0] <= s["san_fraction"] <= s["san_fraction_ci"][1]
            assert s["sar_ci"][0] <= s["sar"] <= s["sar_ci"][1] and s["sar_ci_method"] == "cluster_exact"
        # the test split's attack is in the audit report with its per-sample flips: the same SAN and cluster interval
        n_i = [row["deployed_flips"] for row in block["samples"]]
        assert rec["test"]["san"] == sum(n > 0 for n in n_i) == block["summary"]["san"]
        assert rec["test"]["sar"] == pytest.approx(sum(n_i) / (len(n_i) * rec["test"]["k"]))
        assert rec["test"]["sar_ci"] == pytest.approx(list(cluster_exact_interval(n_i, rec["test"]["k"])))
        # the noise audit per dose: the audit report's own numbers and intervals
        assert [(a["level"], a["SAN"], a["SAN_fraction_ci"], a["SAR_overall"], a["SAR_overall_ci"]) for a in rec["audit"]] == \
            [(b["level"], b["SAN"], b["SAN_fraction_ci"], b["SAR_overall"], b["SAR_overall_ci"]) for b in model["levels"]]


def test_retrain_paths_are_relative_or_named(retrained):
    out, report, audit = retrained
    assert report["rounds"][0]["onnx"].startswith("<model cache>/models/nodule3d-")
    assert report["base_build"].startswith("<model cache>/models/nodule3d-")
    assert report["rounds"][1]["onnx"] == "nodule3d-round1.onnx" and (out / "nodule3d-round1.onnx").is_file()
    assert audit["models"][1]["engine"]["path"] == "../nodule3d-round1.onnx", "relative to OUT/audit"
    assert audit["models"][0]["engine"]["path"] == report["rounds"][0]["onnx"]
    folders = _machine_folders(out.parent)
    given = {report["config"]["cache_dir"]}  # the config gave the cache folder as an absolute path: kept so
    assert _absolute_mentions(report, folders, allowed=given) == []
    assert _absolute_mentions(audit, folders) == []


ROWS = """() => ({
  images: [...document.images].map(e => [e.alt, e.complete && e.naturalWidth > 0]),
  scrollWidth: document.documentElement.scrollWidth,
  rows: [...document.querySelectorAll('#rounds table tr')].map(r => [...r.children].map(c => c.textContent)),
})"""


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_retrain_pages_show_the_intervals_and_open_cleanly(retrained):
    out, report, _ = retrained
    (page, audit_page), errors = open_pages([out / "retrain.html", out / "audit" / "report.html"], ROWS)
    assert errors == []
    for facts in (page, audit_page):
        assert facts["images"] and [alt for alt, ok in facts["images"] if not ok] == []
        assert facts["scrollWidth"] <= WIDTH
    assert "robustness per round" in [alt for alt, _ in page["images"]]
    head, *rows = page["rows"]
    for rec, row in zip(report["rounds"], rows):
        cells = dict(zip(head, row))
        for split in ("train", "test"):
            s = rec[split]
            san = cells[f"{split} SAN (attack) [95% CI]"]
            assert san.startswith(f"{s['san']}\xa0/\xa0{s['n']} [")
            lo, hi = map(float, re.search(r"\[([^,]+), ([^\]]+)\]", san).groups())
            assert (lo, hi) == pytest.approx(s["san_fraction_ci"], rel=5e-3, abs=1e-9)
        for a in rec["audit"]:
            lo, hi = map(float, re.search(r"\[([^,]+), ([^\]]+)\]", cells[f"test SAR @ {a['level']:g} mAs (noise) [95% CI]"]).groups())
            assert (lo, hi) == pytest.approx(a["SAR_overall_ci"], rel=5e-3, abs=1e-9)
