"""Dose reduction through the audit: DICOM series with acquisition tags -> manifest -> NoiseSpec -> inserted noise.

The full-dose FBP images of the projection-domain truth (``tests/kernels/ct_sim.py``) are saved as DICOM series with
their dose; reduced to 25% through ``NoiseSpec(fractions=...)`` they must match the quarter-dose scans' pixel sigma
within 5% and radial NPS within 10%. Bad input is refused with one line naming the key or the series.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pydicom
import pytest

from audit.campaign.noise import NoiseSpec
from audit.campaign.reduction import DoseReduction, KernelMismatchWarning
from audit.config import noise_section
from audit.data import ArraySource, ManifestSource
from audit.dicom import write_series
from audit.errors import ConfigError, InputError
from audit.toml import Table
from kernels import DoseModel, noise_from_repeated_scans, radial_average, variance_factor
from tests.kernels.ct_sim import Scanner, dose_truth, water_phantom


def write_ct(folder, hu, spacing=(1.0, 1.0, 1.0), **tags):
    """A CT series of ``hu`` (nz, ny, nx) with acquisition tags (a value, or a list with one value per slice)."""
    written = write_series(np.asarray(hu, np.float32), spacing, folder)
    for k, f in enumerate(written.files):
        ds = pydicom.dcmread(f)
        for tag, value in tags.items():
            setattr(ds, tag, value[k] if isinstance(value, list) else value)
        ds.save_as(f)
    return folder


def manifest_of(folder, series):
    path = folder / "cases.csv"
    path.write_text("path,label\n" + "".join(f"{s.relative_to(folder)},0\n" for s in series))
    return path


@pytest.fixture(scope="module")
def truth():
    return dose_truth(repeats=48, seed=0)


@pytest.fixture(scope="module")
def scans(truth, tmp_path_factory):
    """The full-dose images as 48 one-slice DICOM series acquired at 200 mAs, kernel STANDARD, CTDIvol 12 mGy."""
    root = tmp_path_factory.mktemp("fulldose")
    series = [write_ct(root / f"scan{r:02d}", img[None], Exposure="200", XRayTubeCurrent="250", ExposureTime="800",
                       CTDIvol=12.0, KVP="120", ConvolutionKernel="STANDARD")
              for r, img in enumerate(truth.full)]
    return manifest_of(root, series)


def test_dicom_series_reduced_to_a_quarter_match_the_quarter_dose_scans(truth, scans):
    source = ManifestSource(scans)
    spec = NoiseSpec(fractions=(0.25, 0.5), draws=1, electronic_fraction=truth.electronic_fraction, mas_ref=200.0)
    assert spec.resolved_mode(source) == "reduce" and spec.to_dict()["level_unit"] == "fraction of the acquired dose"
    model = spec.noise_model(source)
    assert isinstance(model, DoseReduction)
    hu = source.load(range(len(source)))  # (R, 1, n, n)
    keys = spec.keys(np.arange(len(source)), 0.25, np.zeros(len(source), np.int64))
    noise = spec.sample(keys, 0.25, hu, source.spacing, model=model)
    reduced = noise_from_repeated_scans((hu + noise)[:, 0])
    quarter = noise_from_repeated_scans(truth.quarter)
    est = model.scan_noise(0)
    roi = est.estimate.roi_size
    region = np.zeros(hu.shape[2:], dtype=bool)
    for _, y, x in est.estimate.rois:
        region[y : y + roi, x : x + roi] = True
    sigma_err = reduced[:, region].std() / quarter[:, region].std() - 1

    def nps(n):
        rois = np.stack([n[:, y : y + roi, x : x + roi] for _, y, x in est.estimate.rois], 1).reshape(-1, roi, roi)
        rois = rois - rois.mean(axis=(1, 2), keepdims=True)
        return radial_average(np.mean(np.abs(np.fft.fft2(rois)) ** 2, 0) / roi**2, (1.0, 1.0), bin_width=2 / roi)[1]

    s_q, s_r = nps(quarter), nps(reduced)
    band = s_q > 0.05 * s_q.max()
    nps_err = np.abs(s_r[band] / s_q[band] - 1)
    print(f"DICOM path: sigma error {100 * sigma_err:+.2f}%, worst radial NPS bin {100 * nps_err.max():.1f}%")
    assert abs(sigma_err) < 0.05 and nps_err.max() < 0.10

    block = model.to_dict()
    assert block["mode"] == "reduce" and len(block["samples"]) == len(source)
    series = next(iter(block["series"].values()))
    assert series["acquisition"]["exposure_mas"] == 200.0 and series["acquisition"]["kernel"] == "STANDARD"
    row = block["samples"][0]
    assert row["acquired_mas"] == 200.0 and row["dose_source"] == "Exposure"
    assert row["levels"][0] == {"level": 0.25, "fraction": 0.25, "percent": 25.0, "mas": 50.0, "ctdi_vol_mgy": 3.0}
    own = row["scan_noise"]
    assert own["source"] == "estimate" and own["estimate"]["ci"][0] < own["sigma0"] < own["estimate"]["ci"][1]
    assert own["estimate"]["rois"] and own["water_diameter_mm"][0] == pytest.approx(120.0, rel=0.03)
    e = truth.electronic_fraction
    ratio = variance_factor(50.0, 200.0, e) / variance_factor(200.0, 200.0, e)
    assert model.predicted_sigma(0, 0.25)[0] == pytest.approx(est.sigma0[0] * math.sqrt(ratio), rel=1e-6)


def test_auto_mode_follows_the_data(scans, tmp_path):
    phantoms = ArraySource(np.zeros((2, 16, 16), np.float32), (1.0, 1.0))
    spec = NoiseSpec(draws=1)
    assert spec.mode == "auto"
    assert spec.resolved_mode(phantoms) == "add" and isinstance(spec.noise_model(phantoms), DoseModel)
    assert spec.resolved(phantoms).to_dict()["mode"] == "add"
    assert spec.resolved_mode(ManifestSource(scans)) == "reduce"  # real scans: their noise is already there
    assert NoiseSpec(acquired_mas=100.0).resolved_mode(phantoms) == "reduce"  # the user says the arrays are scans
    assert NoiseSpec(mode="add").resolved_mode(ManifestSource(scans)) == "add"  # asked for: the studies' protocol


def test_arrays_with_a_configured_dose_are_reduced_in_2d():
    rng = np.random.default_rng(0)
    images = (rng.normal(0, 20, (3, 64, 64))).astype(np.float32)  # "scans" of water with white-ish noise
    source = ArraySource(images, (0.7, 0.7))
    spec = NoiseSpec(levels=(50.0,), acquired_mas=200.0, draws=1, scan_noise="estimate", roi_mm=8.0)
    model = spec.noise_model(source)
    assert model.doses[0].source == "noise.acquired_mas"
    noise = spec.sample(spec.keys([0, 1, 2], 50.0, [0, 0, 0]), 50.0, images, source.spacing, model=model)
    assert noise.shape == images.shape
    assert noise.std() == pytest.approx(20 * math.sqrt(3), rel=0.1)  # 200 -> 50 mAs adds 3 sigma0^2


def test_reduce_mode_needs_the_model():
    spec = NoiseSpec(mode="reduce", fractions=(0.5,))
    with pytest.raises(ConfigError, match="noise_model"):
        spec.sample(spec.keys([0], 0.5, [0]), 0.5, np.zeros((1, 16, 16), np.float32), (1.0, 1.0))


# -- bad input ----------------------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("fractions, bad", [([0.5, 1.0], "1"), ([1.5], "1.5"), ([0.0], "0"), ([-0.2], "-0.2")])
def test_fractions_outside_zero_one_are_refused(fractions, bad):
    with pytest.raises(ConfigError) as err:
        noise_section(Table({"mode": "reduce", "fractions": fractions}, "noise"))
    assert "noise.fractions" in one_line(err.value) and bad in str(err.value)
    with pytest.raises(ConfigError, match="noise.fractions"):
        NoiseSpec(mode="reduce", fractions=tuple(fractions))


def test_a_level_above_the_acquired_dose_is_refused_naming_the_series(scans):
    source = ManifestSource(scans)
    with pytest.raises(ConfigError) as err:
        NoiseSpec(mode="reduce", levels=(100.0, 250.0)).noise_model(source)
    msg = one_line(err.value)
    assert "250 mAs" in msg and "acquired dose 200 mAs" in msg and "scan00" in msg and "series 1." in msg


def test_reduce_without_dose_tags_or_configured_dose_names_the_series(tmp_path):
    folder = write_ct(tmp_path / "nodose", np.zeros((2, 16, 16)))
    source = ManifestSource(manifest_of(tmp_path, [folder]))
    for spec in (NoiseSpec(mode="reduce", fractions=(0.5,)), NoiseSpec()):  # explicit, and auto on a DICOM scan
        with pytest.raises(InputError) as err:
            spec.noise_model(source)
        msg = one_line(err.value)
        assert "nodose" in msg and "states no dose" in msg and "noise.acquired_mas" in msg
    model = NoiseSpec(mode="reduce", fractions=(0.5,), acquired_mas=150.0).noise_model(source)  # the config supplies it
    assert model.doses[0].series_mas == 150.0 and model.doses[0].source == "noise.acquired_mas"


def test_modulated_series_gets_its_dose_per_slice(tmp_path):
    folder = write_ct(tmp_path / "tcm", np.zeros((3, 16, 16)), Exposure=["100", "200", "300"],
                      XRayTubeCurrent=["100", "200", "300"])
    model = NoiseSpec(fractions=(0.5,)).noise_model(ManifestSource(manifest_of(tmp_path, [folder])))
    assert np.allclose(model.doses[0].acquired, [100, 200, 300])
    assert np.allclose(model.target_dose(0, 0.5), [50, 100, 150])
    assert np.allclose(NoiseSpec(levels=(100.0,)).noise_model(
        ManifestSource(manifest_of(tmp_path, [folder]))).target_dose(0, 100.0), [50, 100, 150])
    # Without a dose tag, a configured dose is spread over the slices by the stated tube current.
    bare = write_ct(tmp_path / "tcm-bare", np.zeros((3, 16, 16)), XRayTubeCurrent=["100", "200", "300"])
    model = NoiseSpec(fractions=(0.5,), acquired_mas=200.0).noise_model(ManifestSource(manifest_of(tmp_path, [bare])))
    assert np.allclose(model.doses[0].acquired, [100, 200, 300]) and "XRayTubeCurrent" in model.doses[0].source


def test_a_phantom_of_another_kernel_is_a_warning_or_strict_error(truth, scans, tmp_path):
    sc = Scanner()
    p = sc.line_integrals(water_phantom(60.0))
    phantom = sc.scan(p, truth.i0, truth.electronic, 3, np.random.default_rng(7))
    folders = [str(write_ct(tmp_path / f"ph{r}", img[None], Exposure="200", ConvolutionKernel="B30f"))
               for r, img in enumerate(phantom)]
    source = ManifestSource(scans)
    spec = NoiseSpec(fractions=(0.25,), scan_noise="phantom", phantom_series=tuple(folders))
    with pytest.warns(KernelMismatchWarning, match="'STANDARD' differs from the phantom series' 'B30f'"):
        model = spec.noise_model(source)
    own = model.scan_noise(0)
    # Same phantom, same dose, same size: the phantom's sigma is the scan's (within the estimate's precision).
    assert own.sigma0[0] == pytest.approx(float(np.std(noise_from_repeated_scans(truth.full)[:, 30:98, 30:98])), rel=0.1)
    assert own.how["source"] == "phantom" and own.how["phantom"]["mas"] == 200.0
    strict = NoiseSpec(fractions=(0.25,), scan_noise="phantom", phantom_series=tuple(folders), strict_kernel=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError) as err:
            strict.noise_model(source)
    assert "strict_kernel" in one_line(err.value) and "B30f" in str(err.value)


def test_noise_check_on_a_dicom_series(scans, tmp_path):
    series = scans.parent / "scan00"
    out = tmp_path / "check.png"
    proc = subprocess.run([sys.executable, "-m", "audit", "noise", "check", "--dicom", str(series), "--fraction", "0.25",
                           "--draws", "8", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = proc.stdout
    assert "sigma0" in text and "predicted" in text and "measured" in text
    predicted = float(text.split("predicted sigma after insertion:")[1].split()[0])
    measured = float(text.split("measured sigma after insertion:")[1].split()[0])
    assert measured == pytest.approx(predicted, rel=0.05)


@pytest.mark.parametrize("args, message", [
    (["--fraction", "1.0"], "--fraction"),
    (["--fraction", "0"], "--fraction"),
    (["--mas", "400"], "acquired dose 200"),
])
def test_noise_check_bad_input_exits_2_with_one_line(scans, tmp_path, capfd, args, message):
    out = tmp_path / "x.png"
    proc = _audit_here(capfd, "noise", "check", "--dicom", str(scans.parent / "scan00"), "--draws", "4",
                       "--out", str(out), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


def _audit_here(capfd, *args: str) -> subprocess.CompletedProcess:
    """``audit ARGS`` run in this process, its output read at the file-descriptor level as a subprocess's would be:
    for the refusals, one interpreter start and import less each (the real process runs the successful commands)."""
    from audit.cli import main

    capfd.readouterr()
    code = main(list(args))
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["audit", *args], code, out, err)


def _water_body(n=128, sp=1.0, radius=55.0):
    y, x = (np.mgrid[:n, :n] - n / 2 + 0.5) * sp
    return np.where(x**2 + y**2 <= radius**2, 0.0, -1000.0).astype(np.float32)


def test_lesion_cubes_measure_their_noise_and_size_on_the_whole_source_slices(tmp_path):
    rng = np.random.default_rng(4)
    body = _water_body()
    sigma = np.array([10.0, 10.0, 10.0, 10.0, 20.0, 20.0, 20.0, 20.0])  # the tube current changes at slice 4
    vol = np.stack([body + rng.normal(0, s, body.shape) for s in sigma])
    write_ct(tmp_path / "ct", vol, spacing=(2.0, 1.0, 1.0), Exposure=["400"] * 4 + ["100"] * 4)
    manifest = tmp_path / "cubes.csv"
    manifest.write_text("path,label,i,j,k\nct,1,64,64,1.5\nct,0,64,64,5.5\n")
    source = ManifestSource(manifest, cube=16, target_spacing=1.0)
    # Cube slice m (1 mm) lies at source slice 1.5 + (m - 7.5) / 2 (2 mm slices): the nearest, clipped.
    slices = source.source_slices(0)
    assert list(slices) == [0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert source.acquisition(0).slice_mas == tuple(400.0 if k < 4 else 100.0 for k in slices)
    model = NoiseSpec(fractions=(0.5,)).noise_model(source)
    assert np.allclose(model.target_dose(0, 0.5), [200.0 if k < 4 else 50.0 for k in slices])
    own = model.scan_noise(0)
    assert own.estimate.roi_size == 32  # measured on the whole 128^2 slices, not on the 16^3 cube
    assert np.allclose(own.sigma0, sigma[slices], rtol=0.05)  # per slice, as the tube current changed
    assert np.allclose(model.scan_noise(1).sigma0, sigma[source.source_slices(1)], rtol=0.05)
    assert np.allclose(own.water_diameter_mm, 110.0, rtol=0.02)
    hu = source.load([0, 1])
    noise = NoiseSpec(fractions=(0.5,)).sample(np.array([[0, 0, 500, 0], [0, 1, 500, 0]], np.uint64), 0.5, hu,
                                               source.spacing, model=model)
    assert noise.shape == (2, 16, 16, 16) and np.isfinite(noise).all()


def test_model_noise_is_scaled_to_the_patient_size():
    images = np.stack([_water_body()] * 2)
    source = ArraySource(images, (1.0, 1.0))
    spec = NoiseSpec(fractions=(0.5,), acquired_mas=200.0, scan_noise="model", sigma_ref=20.0, mas_ref=200.0,
                     reference_diameter_mm=200.0)
    own = spec.noise_model(source).scan_noise(0)
    assert own.sigma0[0] == pytest.approx(20.0 * math.exp(0.02 * (110.0 - 200.0) / 2), rel=0.02)
    assert "exp(0.02/mm" in own.how["law"]


def test_audit_run_reduces_real_scans_end_to_end(scans, tmp_path, capfd):
    """``audit run`` on DICOM series with dose tags: auto mode picks reduction, the levels are fractions of the
    acquired 200 mAs, the report states the mode and each series' acquisition, and the campaign's noise is what a
    quarter dose adds (the noisy scans' sigma grows by sqrt(1/f) of the scan's own)."""
    from tests.audit.planted import planted_model

    model = planted_model(tmp_path / "m.onnx", (128, 128), (slice(40, 88), slice(40, 88)), 0.0)
    cfg = tmp_path / "audit.toml"
    cfg.write_text(f'[model]\npath = "{model}"\n[data]\nmanifest = "{scans}"\n'
                   '[noise]\nfractions = [0.5, 0.25]\ndraws = 4\n[report]\nworst = 2\n')
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "audit", "run", str(cfg), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = __import__("json").loads((out / "report.json").read_text())
    assert report["noise"]["mode"] == "reduce" and report["summary"]["noise"]["mode"] == "reduce"
    reduction = report["noise"]["reduction"]
    assert reduction["series"] and all(s["acquired_mas"] == 200.0 for s in reduction["series"].values())
    assert [b["level"] for b in report["models"][0]["levels"]] == [0.5, 0.25]
    own = reduction["samples"][0]["scan_noise"]  # the chosen ROIs drawn at audit time, shown beside sigma0
    assert (out / own["roi_figure"]).is_file() and own["spatial"]["mode"] == "map"
    page = (out / "report.html").read_text()
    assert 'id="reduction"' in page and "sigma0 (HU)" in page
    # Refused before any output: a level at the acquired dose.
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace("fractions = [0.5, 0.25]", "levels = [200]"))
    refused = _audit_here(capfd, "run", str(bad), "--out", str(tmp_path / "o2"))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "o2").exists()
