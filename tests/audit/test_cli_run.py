"""``audit run`` from a config file: reports on disk, and bad input -> exit 2 with one line, nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audit.report import check_report

from tests.audit.conftest import REGION, planted_images, write_config, write_manifest
from tests.audit.planted import planted_model, region_means

NOISE = 'kind = "nps"\nlevels = [50, 200]\ndraws = 8\nseed = 1\nsigma_ref = 30.0'


def _audit(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audit", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def setup(tmp_path, planted):
    images = planted_images(12, spread_hu=5.0)
    manifest = write_manifest(tmp_path / "data", images, (region_means(images, REGION) >= 0).astype(int))
    return tmp_path, planted, manifest


def test_run_writes_the_three_reports(setup):
    tmp, model, manifest = setup
    config = write_config(tmp / "a.toml", model, manifest, noise=NOISE)
    proc = _audit("run", config, "--out", tmp / "out")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp / "out" / "report.json").read_text())
    check_report(report)
    assert report["schema"] == "audit-report/1"
    m = report["models"][0]
    assert m["engine"]["sha256"] and m["head"]["task"] == "binary" and report["noise"]["levels"] == [50, 200]
    assert [b["N"] for b in m["levels"]] == [12, 12] and m["clean"]["N_labelled"] == 12
    assert m["clean"]["accuracy"] == 1.0  # labels were made from the planted rule
    auc = m["levels"][0]["auc"]
    assert auc["clean"] == 1.0 and auc["test"] == "DeLong" and 0.5 <= auc["noisy_draw0"] <= 1.0
    xml = (tmp / "out" / "junit.xml").read_text()
    assert xml.count("<testcase") == 12 * 2
    assert "<html" in (tmp / "out" / "report.html").read_text()
    assert "SAN" in proc.stdout


def _one_line_exit_2(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_missing_model(setup):
    tmp, _, manifest = setup
    config = write_config(tmp / "a.toml", tmp / "missing.onnx", manifest, noise=NOISE)
    _one_line_exit_2(_audit("run", config, "--out", tmp / "out"), "missing.onnx", "not found")
    assert not (tmp / "out").exists()


def test_2d_data_for_a_3d_model(setup):
    tmp, _, manifest = setup
    model3d = planted_model(tmp / "m3.onnx", (16, 16, 16), (slice(4, 12),) * 3, 0.0)
    config = write_config(tmp / "a.toml", model3d, manifest, noise=NOISE)
    _one_line_exit_2(_audit("run", config, "--out", tmp / "out"), "2D slices", "(?, 1, 16, 16, 16)")


def test_nan_in_an_image(setup):
    tmp, model, manifest = setup
    bad = np.load(manifest.parent / "case003.npz")
    hu = bad["hu"].copy()
    hu[5, 5] = np.nan
    np.savez(manifest.parent / "case003.npz", hu=hu, spacing=bad["spacing"])
    config = write_config(tmp / "a.toml", model, manifest, noise=NOISE)
    _one_line_exit_2(_audit("run", config, "--out", tmp / "out"), "case003.npz", "NaN")
    assert not (tmp / "out" / "report.json").exists()


@pytest.mark.parametrize("text, needle", [
    ("[noise]\nlevls = [1]\n", "noise.levls"),
    ("[model]\npath='m.onnx'\ncolour='red'\n", "model.colour"),
    ("[fancy]\n", "fancy"),
    ("[model]\npath='m.onnx'\n[data]\nphantom='nodules'\n[noise]\nlevels = [-5]\n", "noise.levels"),
    ("[model]\npath = \n", "not valid TOML"),
])
def test_bad_config_names_the_key(tmp_path, text, needle):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    _one_line_exit_2(_audit("run", config, "--out", tmp_path / "out"), needle, "bad.toml")


def test_unwritable_out_dir(setup):
    tmp, model, manifest = setup
    config = write_config(tmp / "a.toml", model, manifest, noise=NOISE)
    blocker = tmp / "file"
    blocker.write_text("a file where a folder should be")
    _one_line_exit_2(_audit("run", config, "--out", blocker / "out"), str(blocker))


def test_flipped_cases_as_dicom_series_linked_from_the_report(setup):
    from audit.dicom import read_series

    tmp, model, manifest = setup
    config = write_config(tmp / "a.toml", model, manifest, noise=NOISE)
    config.write_text(config.read_text() + "\n[report]\nworst = 2\ndicom = true\n")
    proc = _audit("run", config, "--out", tmp / "out")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp / "out" / "report.json").read_text())
    cases = report["models"][0]["worst_cases"]
    assert cases and all("dicom" in c for c in cases)
    case = cases[0]
    clean, noisy = read_series(case["dicom"]["clean_dir"]), read_series(case["dicom"]["noisy_dir"])
    assert clean.series_uid == case["dicom"]["clean_series_uid"] and noisy.series_uid != clean.series_uid
    original = np.load(manifest.parent / f"{case['id']}.npz")["hu"]
    assert np.abs(clean.hu[0] - original).max() <= 0.5  # HU kept to the stored integer
    assert np.abs(noisy.hu[0] - original).max() > 1.0  # the noise is there
    assert case["dicom"]["noisy_dir"] in (tmp / "out" / "report.html").read_text()
