"""A detection audit from the command line: `audit run` on the phantom lung volumes with reference lesions
(``[data] phantom = "lesions"``), a real ONNX detector in ONNX Runtime, then `audit gate` with the detection rules.

The detector is the planted one of ``test_detection_audit`` (local maxima of the windowed intensity, top M),
exported for the phantoms' 48^3 grid: a real model whose FROC on these volumes is whatever it is, so the gate is
checked against the report's own CPM (a limit at it passes, one just above fails).
"""

from __future__ import annotations

import json
import math

from audit.cli import main
from audit.data import phantom_source
from audit.report.build import check_report
from tests.audit.test_detection_audit import detector

N, K = 3, 2
LEVELS = (10, 200)


def _policy(path, metric: str, minimum: float, extra: str = "") -> str:
    path.write_text(f'[[rule]]\nmetric = "{metric}"\nlevel = 10\nmin = {minimum!r}\n{extra}')
    return str(path)


def test_audit_run_and_gate_a_detector_on_phantom_lesion_volumes(tmp_path, capsys):
    model = detector(tmp_path / "det.onnx", spatial=(48, 48, 48))
    config = tmp_path / "det.toml"
    config.write_text(f'[[model]]\npath = "{model}"\nname = "det"\n\n[data]\nphantom = "lesions"\nn = {N}\nseed = 3\n\n'
                      f'[noise]\nlevels = {list(LEVELS)}\ndraws = {K}\nseed = 0\n\n[run]\nbatch_size = 4\n'
                      f'shard_samples = 2\n')
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    check_report(report)
    m = report["models"][0]
    assert m["head"]["task"] == "detection"
    source = phantom_source("lesions", N, 3)
    lesions = sum(les.n_included for les in source.lesions)
    assert m["clean"]["detection"]["scans"] == N and m["clean"]["detection"]["lesion_draws"] == lesions
    for block in m["levels"]:
        det = block["detection"]
        assert det["scan_replicates"] == N * K and det["lesion_draws"] == lesions * K  # every draw a scan replicate
        lo, hi = det["cpm_ci"]
        assert lo <= det["cpm"] <= hi
    page = (out / "report.html").read_text()
    assert "FROC" in page and "per scan" in page

    cpm = m["levels"][0]["detection"]["cpm"]
    report_path = str(out / "report.json")
    capsys.readouterr()
    assert main(["gate", report_path, "--policy", _policy(tmp_path / "ok.toml", "cpm", cpm)]) == 0
    if cpm < 0.99:  # a limit above the measured CPM fails, and says so
        assert main(["gate", report_path, "--policy", _policy(tmp_path / "no.toml", "cpm", min(1.0, cpm + 0.01))]) == 1
    sens = m["levels"][0]["detection"]
    assert math.isfinite(cpm) and sens["fp_rates_per_scan"][3] == 1.0
    assert main(["gate", report_path, "--policy", _policy(tmp_path / "s.toml", "froc_sensitivity",
                                                             sens["sensitivity_at"][3], "fp_rate = 1.0\n")]) == 0


def test_attacks_on_a_detection_model_are_one_line_before_any_output(tmp_path, capsys):
    """Every attack judges a per-image decision; a detection flip is lesion-level: refused before the campaign."""
    model = detector(tmp_path / "det.onnx", spatial=(48, 48, 48))
    config = tmp_path / "det.toml"
    config.write_text(f'[[model]]\npath = "{model}"\nname = "det"\n\n[data]\nphantom = "lesions"\nn = 2\n\n'
                      '[noise]\nlevels = [10]\ndraws = 2\n\n[attack]\nname = "square"\neps = 20.0\nqueries = 50\n')
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "model 'det' is a detection model" in err and len(err.splitlines()) == 1
    assert not out.exists()
