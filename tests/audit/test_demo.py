"""The main job: ``audit demo`` on the shipped reference model, and ``--quick --train`` on the CI-sized build."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from audit.report import check_report


def test_quick_demo_writes_reports_and_reuses_a_finished_run(quick_nodule, tmp_path, monkeypatch, capsys):
    from audit.cli import main

    _, _, cache = quick_nodule
    env = {**os.environ, "AUDIT_CACHE_DIR": str(cache)}
    out = tmp_path / "demo"
    first = subprocess.run([sys.executable, "-m", "audit", "demo", "--quick", "--train", "--out", str(out)], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads((out / "report.json").read_text())
    check_report(report)
    model = report["models"][0]
    assert [b["level"] for b in model["levels"]] == [10, 50, 100, 200, 500]
    assert all(b["N"] == 48 and b["K"] == 10 for b in model["levels"])
    assert model["clean"]["auc"] > 0.7  # the reference model is a real classifier on the audit set
    sar = [b["SAR_overall"] for b in model["levels"]]
    assert sar[0] >= sar[-1]  # more noise (10 mAs) flips at least as often as little noise (500 mAs)
    assert "SAN" in first.stdout and (out / "report.html").is_file() and (out / "junit.xml").is_file()
    # The rerun in this process (the entry point was exercised above): one interpreter start and import less.
    monkeypatch.setenv("AUDIT_CACHE_DIR", str(cache))
    capsys.readouterr()
    assert main(["demo", "--quick", "--train", "--out", str(out)]) == 0
    assert "was reused" in capsys.readouterr().out  # finished shards are reused


def test_demo_audits_the_shipped_model_without_training(tmp_path, monkeypatch, capsys):
    """On a fresh clone the main job needs no build: the shipped artifact is audited at once (nothing is cached)."""
    from audit.cli import main

    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("AUDIT_CACHE_DIR", str(cache))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    check_report(report)
    assert report["build"]["shipped"] is True and report["build"]["test_metrics"]["auc"] >= 0.85
    assert report["summary"]["models"][0]["critical_dose"] is not None
    assert not (cache / "models").exists()  # nothing was trained
    assert "shipped reference nodule3d model" in capsys.readouterr().out
