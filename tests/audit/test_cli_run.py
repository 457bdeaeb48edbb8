"""``audit run`` from a config file: reports on disk, and bad input -> exit 2 with one line, nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from audit.report import check_report

from tests.audit.conftest import REGION, planted_images, write_config, write_manifest
from tests.audit.planted import planted_model, region_means

NOISE = 'kind = "nps"\nlevels = [50, 200]\ndraws = 8\nseed = 1\nsigma_ref = 30.0'


def _audit(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audit", *map(str, args)], capture_output=True, text=True)


def _audit_here(capfd, *args) -> subprocess.CompletedProcess:
    """``audit ARGS`` run in this process, its output read at the file-descriptor level as a subprocess's would be
    (a library writing to fd 2 still counts): for the refusals, one interpreter start and import less each. The real
    process is exercised by the runs here that succeed and by test_bad_inputs.py::test_bad_input_in_a_subprocess."""
    from audit.cli import main

    capfd.readouterr()
    code = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["audit", *map(str, args)], code, out, err)


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


def test_attack_section_puts_gradient_attacks_in_the_same_report(setup):
    """``[attack]`` in an audit config: the attack runs on the same model and data, and report.json/html hold it
    next to the noise results, with both rates (twin and deployed)."""
    from tests.audit.attacks import nets

    tmp = setup[0]
    model = nets.export(nets.Fragile(), tmp / "fragile.onnx")  # exported by torch: onnx2torch converts it
    images = nets.images(12, spread_hu=5.0, seed=3)
    manifest = write_manifest(tmp / "fragile-data", images, np.zeros(12, int))
    config = write_config(tmp / "a.toml", model, manifest, noise=NOISE)
    config.write_text(config.read_text() + '\n[attack]\nname = "pgd"\neps = [1.0, 20.0]\nspace = "hu"\nsteps = 10\n'
                      "samples = 8\nkeep = 1\n")
    proc = _audit("run", config, "--out", tmp / "out")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp / "out" / "report.json").read_text())
    check_report(report)
    small, big = report["attacks"]
    assert [small["label"], big["label"]] == ["pgd eps=1", "pgd eps=20"] and small["model"] == "planted"
    assert small["summary"]["n"] == big["summary"]["n"] == 8
    # the fragile model thresholds a smoothed region mean at 0 HU; the images' means lie within 20 HU of it
    assert big["summary"]["deployed_success_rate"] == 1.0 > small["summary"]["deployed_success_rate"]
    assert big["summary"]["max_linf"] <= 20.0 * (1 + 1e-5) and len(big["explanations"]) == 1
    page = (tmp / "out" / "report.html").read_text()
    assert "Gradient attacks" in page and "Attack: pgd eps=20" in page and "success rate, deployed artifact" in page


def test_attack_on_data_of_the_wrong_shape_exits_2(setup, capfd):
    """The twin's parity check would feed the data to the engine: the shape is checked first, as for the campaign."""
    from tests.audit.attacks import nets

    tmp, _, manifest = setup  # 48 x 48 slices; the fragile model reads 24 x 24
    model = nets.export(nets.Fragile(), tmp / "fragile.onnx")
    config = write_config(tmp / "a.toml", model, manifest, noise=NOISE)
    config.write_text(config.read_text() + '\n[attack]\nname = "pgd"\n')
    _one_line_exit_2(_audit_here(capfd, "run", config, "--out", tmp / "out"),
                     "planted: the data are 2D slices of shape (48, 48)")


@pytest.mark.parametrize("attack,needle", [('name = "pgd"\neps = -1.0', "attack.eps: expected a number > 0"),
                                          ('name = "fgsm"', "attack.name: unknown attack 'fgsm'"),
                                          ('name = "pgd"\nsamples = 0', "attack.samples: expected an integer >= 1"),
                                          ('name = "pgd"\nepsilon = 3', "attack.epsilon: unknown parameter")])
def test_bad_attack_section_exits_2(setup, attack, needle, capfd):
    """Checked before the campaign runs: nothing is written."""
    from tests.audit.attacks import nets

    tmp = setup[0]
    model = nets.export(nets.Fragile(), tmp / "fragile.onnx")
    manifest = write_manifest(tmp / "fragile-data", nets.images(4), np.zeros(4, int))
    config = write_config(tmp / "a.toml", model, manifest, noise=NOISE)
    config.write_text(config.read_text() + f"\n[attack]\n{attack}\n")
    _one_line_exit_2(_audit_here(capfd, "run", config, "--out", tmp / "out"), needle)
    assert not (tmp / "out" / "records").exists() and not (tmp / "out" / "report.json").exists()


def _one_line_exit_2(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_missing_model(setup, capfd):
    tmp, _, manifest = setup
    config = write_config(tmp / "a.toml", tmp / "missing.onnx", manifest, noise=NOISE)
    _one_line_exit_2(_audit_here(capfd, "run", config, "--out", tmp / "out"), "missing.onnx", "not found")
    assert not (tmp / "out").exists()


def test_2d_data_for_a_3d_model(setup, capfd):
    tmp, _, manifest = setup
    model3d = planted_model(tmp / "m3.onnx", (16, 16, 16), (slice(4, 12),) * 3, 0.0)
    config = write_config(tmp / "a.toml", model3d, manifest, noise=NOISE)
    _one_line_exit_2(_audit_here(capfd, "run", config, "--out", tmp / "out"), "2D slices", "(?, 1, 16, 16, 16)")


def test_nan_in_an_image(setup, capfd):
    tmp, model, manifest = setup
    bad = np.load(manifest.parent / "case003.npz")
    hu = bad["hu"].copy()
    hu[5, 5] = np.nan
    np.savez(manifest.parent / "case003.npz", hu=hu, spacing=bad["spacing"])
    config = write_config(tmp / "a.toml", model, manifest, noise=NOISE)
    _one_line_exit_2(_audit_here(capfd, "run", config, "--out", tmp / "out"), "case003.npz", "NaN")
    assert not (tmp / "out" / "report.json").exists()


@pytest.mark.parametrize("text, needle", [
    ("[noise]\nlevls = [1]\n", "noise.levls"),
    ("[model]\npath='m.onnx'\ncolour='red'\n", "model.colour"),
    ("[fancy]\n", "fancy"),
    ("[model]\npath='m.onnx'\n[data]\nphantom='nodules'\n[noise]\nlevels = [-5]\n", "noise.levels"),
    ("[model]\npath = \n", "not valid TOML"),
])
def test_bad_config_names_the_key(tmp_path, text, needle, capfd):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    _one_line_exit_2(_audit_here(capfd, "run", config, "--out", tmp_path / "out"), needle, "bad.toml")


def test_unwritable_out_dir(setup, capfd):
    tmp, model, manifest = setup
    config = write_config(tmp / "a.toml", model, manifest, noise=NOISE)
    blocker = tmp / "file"
    blocker.write_text("a file where a folder should be")
    _one_line_exit_2(_audit_here(capfd, "run", config, "--out", blocker / "out"), str(blocker))


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
    assert case["dicom"]["clean_dir"].startswith("dicom/"), "written relative to the output folder"
    clean, noisy = read_series(tmp / "out" / case["dicom"]["clean_dir"]), read_series(tmp / "out" / case["dicom"]["noisy_dir"])
    assert clean.series_uid == case["dicom"]["clean_series_uid"] and noisy.series_uid != clean.series_uid
    original = np.load(manifest.parent / f"{case['id']}.npz")["hu"]
    assert np.abs(clean.hu[0] - original).max() <= 0.5  # HU kept to the stored integer
    assert np.abs(noisy.hu[0] - original).max() > 1.0  # the noise is there
    assert case["dicom"]["noisy_dir"] in (tmp / "out" / "report.html").read_text()
