"""Dose reduction, the rest of it: CTDIvol levels, the kernel library, the spatial map through the audit, the ROIs drawn.

Small synthetic scans (white noise of known sigma on water-like bodies) keep every test a few seconds long.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from audit.campaign.noise import NoiseSpec
from audit.campaign.reduction import LibraryFallbackWarning
from audit.config import noise_section
from audit.data import ArraySource, ManifestSource
from audit.errors import ConfigError, InputError
from audit.report.cases import write_noise_rois
from audit.report.html import render_reduction
from audit.toml import Table
from kernels import variance_factor
from kernels.library import KernelLibrary
from tests.audit.test_dose_reduction import manifest_of, one_line, write_ct


def _body(n=96, sp=1.0, a=40.0, b=40.0, seed=0, sigma=10.0):
    y, x = (np.mgrid[:n, :n] - n / 2 + 0.5) * sp
    img = np.where((x / a) ** 2 + (y / b) ** 2 <= 1, 40.0, -1000.0)
    return (img + np.random.default_rng(seed).normal(0, sigma, img.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctdi")
    with_ctdi = write_ct(root / "with", _body()[None], Exposure="200", CTDIvol=12.0, ConvolutionKernel="STANDARD")
    without = write_ct(root / "without", _body(seed=1)[None], Exposure="200")
    return root, with_ctdi, without


def test_ctdivol_levels_are_fractions_of_the_series_ctdivol(tagged):
    root, with_ctdi, without = tagged
    source = ManifestSource(manifest_of(root, [with_ctdi]))
    spec = NoiseSpec(ctdivol_mgy=(6.0, 3.0), draws=1, roi_mm=16.0)
    assert spec.resolved_mode(source) == "reduce" and spec.to_dict()["level_unit"] == "CTDIvol (mGy)"
    model = spec.noise_model(source)
    assert model.fraction(0, 3.0) == 0.25 and np.allclose(model.target_dose(0, 3.0), 50.0)
    row = model.to_dict()["samples"][0]
    assert row["levels"][1] == {"level": 3.0, "fraction": 0.25, "percent": 25.0, "mas": 50.0, "ctdi_vol_mgy": 3.0}
    assert row["ctdi_source"] == "CTDIvol"
    # A series without the tag: refused by name, unless the config gives the acquired CTDIvol.
    bare = ManifestSource(manifest_of(root, [without]))
    with pytest.raises(InputError) as err:
        spec.noise_model(bare)
    assert "without" in one_line(err.value) and "states no CTDIvol" in str(err.value)
    assert "noise.acquired_ctdivol_mgy" in str(err.value)
    given = NoiseSpec(ctdivol_mgy=(3.0,), acquired_ctdivol_mgy=10.0).noise_model(bare)
    assert given.fraction(0, 3.0) == pytest.approx(0.3) and given.doses[0].ctdi_source == "noise.acquired_ctdivol_mgy"
    with pytest.raises(ConfigError) as err:
        NoiseSpec(ctdivol_mgy=(12.0,)).noise_model(source)
    assert "acquired CTDIvol 12 mGy" in one_line(err.value) and "with" in str(err.value)


@pytest.mark.parametrize("table, message", [
    ({"ctdivol_mgy": [3.0], "fractions": [0.5]}, "not fractions and ctdivol_mgy"),
    ({"ctdivol_mgy": [3.0], "mode": "add"}, "mode 'add'"),
    ({"ctdivol_mgy": [0.0]}, "noise.ctdivol_mgy"),
    ({"spatial": "smooth"}, "noise.spatial"),
])
def test_bad_ctdivol_or_spatial_keys_are_one_line(table, message):
    with pytest.raises(ConfigError) as err:
        noise_section(Table(table, "noise"))
    assert message in one_line(err.value)


def test_kernel_library_texture_when_the_scan_has_no_uniform_region(tmp_path):
    air = np.random.default_rng(0).normal(-1000, 5, (1, 64, 64)).astype(np.float32)  # nothing to measure noise on
    scan = write_ct(tmp_path / "air", air, Exposure="200", ConvolutionKernel="B30f", Manufacturer="SIEMENS")
    source = ManifestSource(manifest_of(tmp_path, [scan]))
    spec = NoiseSpec(fractions=(0.5,), sigma_ref=12.0, mas_ref=100.0)
    with pytest.warns(LibraryFallbackWarning, match="kernel library"):
        own = spec.noise_model(source).scan_noise(0)
    assert own.how["source"] == "library" and own.how["entry"]["window"] == "standard"
    assert "not usable" in own.how["fallback"] and own.spatial["mode"] == "stationary"
    assert own.sigma0[0] == pytest.approx(12.0 * math.sqrt(variance_factor(200.0, 100.0)))
    assert own.nps.summary().f_peak == pytest.approx(own.how["entry"]["f_peak"], abs=0.01)
    # No entry for the kernel: the estimator's one-line refusal, naming the kernel.
    other = write_ct(tmp_path / "canon", air, Exposure="200", ConvolutionKernel="FC03", Manufacturer="Canon")
    canon = ManifestSource(manifest_of(tmp_path, [other]))
    with pytest.raises(InputError) as err:
        spec.noise_model(canon).scan_noise(0)
    assert "canon" in one_line(err.value) and "no kernel-library entry for ConvolutionKernel 'FC03'" in str(err.value)
    # A user table adds it (rows before the built-in ones).
    table = tmp_path / "kernels.csv"
    table.write_text("manufacturer,kernel,window,f_peak\nCanon,FC0[1-9],soft,0.2\n")
    user = noise_section(Table({"fractions": [0.5], "kernel_table": str(table), "scan_noise": "library"}, "noise"))
    own = user.noise_model(canon).scan_noise(0)
    assert own.how["entry"]["source"].endswith("kernels.csv (user table)") and own.nps.summary().f_peak == pytest.approx(0.2, abs=0.01)
    bad = tmp_path / "bad.csv"
    bad.write_text("manufacturer,kernel,window,f_peak\nGE,LUNG,crisp,0.5\n")
    with pytest.raises(InputError) as err:
        noise_section(Table({"kernel_table": str(bad)}, "noise"))
    assert "bad.csv: row 2" in one_line(err.value) and "crisp" in str(err.value)


def test_builtin_library_classes():
    lib = KernelLibrary.builtin()
    assert lib.lookup("GE MEDICAL SYSTEMS", "SOFT").window == "soft"
    assert lib.lookup("SIEMENS", "Br40d\\3").window == "standard"
    assert lib.lookup("SIEMENS", "B70f").window == "sharp"
    assert lib.lookup("Philips", "B").window == "standard" and lib.lookup("GE", "B30f") is None
    soft, std, sharp = (lib.lookup("GE", k).f_peak for k in ("SOFT", "STANDARD", "BONE"))
    assert soft < std < sharp  # the classes' peaks: 0.23, 0.36, 0.64 1/mm


@pytest.fixture(scope="module")
def wide_source():
    images = np.stack([_body(128, 1.5, 92.0, 40.0, seed=s) for s in range(2)])
    return ArraySource(images, (1.5, 1.5))


def test_map_through_the_audit_follows_the_body_and_is_keyed(wide_source):
    spec = NoiseSpec(fractions=(0.25,), acquired_mas=200.0, draws=1, roi_mm=15.0)
    model = spec.noise_model(wide_source)
    own = model.scan_noise(0)
    assert spec.spatial == "map" and own.spatial["mode"] == "map"
    lo, hi = own.spatial["relative_sigma_in_patient"]
    assert hi / lo > 1.2  # a wide body: lateral paths are long
    keys = spec.keys(np.zeros(64, np.int64), 0.25, np.arange(64))
    hu = np.repeat(wide_source.images[:1], 64, axis=0)
    noise = spec.sample(keys, 0.25, hu, wide_source.spacing, model=model)
    assert np.array_equal(noise[5:6], spec.sample(keys[5:6], 0.25, hu[:1], wide_source.spacing, model=model))
    gain = model._gain(0, 0.25, own, (128, 128))
    centre, side = (slice(58, 70), slice(58, 70)), (slice(58, 70), slice(20, 32))  # the middle and 57 mm lateral
    measured = noise[:, centre[0], centre[1]].std() / noise[:, side[0], side[1]].std()
    predicted = math.sqrt(np.mean(gain[centre] ** 2) / np.mean(gain[side] ** 2))
    assert measured == pytest.approx(predicted, rel=0.1) and abs(predicted - 1) > 0.05
    # Where sigma0 was measured, the inserted variance is sigma0^2 (D0/D - 1) = 3 sigma0^2 on average.
    region = _roi_region(own)[0]
    assert np.sqrt(np.mean(noise[:, region] ** 2)) == pytest.approx(own.sigma0[0] * math.sqrt(3), rel=0.05)
    flat = NoiseSpec(fractions=(0.25,), acquired_mas=200.0, roi_mm=15.0, spatial="stationary").noise_model(wide_source)
    assert flat.scan_noise(0).spatial == {"mode": "stationary", "reason": "noise.spatial = 'stationary'"}
    # A body cut by the field of view: its projections are incomplete, so the noise stays stationary (stated).
    cut = ArraySource(np.full((1, 64, 64), 40.0, np.float32) + np.random.default_rng(2).normal(0, 10, (1, 64, 64))
                      .astype(np.float32), (1.0, 1.0))
    own_cut = NoiseSpec(fractions=(0.5,), acquired_mas=100.0, roi_mm=12.0).noise_model(cut).scan_noise(0)
    assert own_cut.spatial["mode"] == "stationary" and "image edge" in own_cut.spatial["reason"]


def _roi_region(own) -> np.ndarray:
    """Where sigma0 was measured: the estimator's ROIs (of slices with their own sigma0)."""
    est = own.estimate
    region = np.zeros((est.slice_sigma.size, *own.vmap.shape), dtype=bool)
    for k, y, x in est.rois:
        if np.isfinite(est.slice_sigma[k]):
            region[k, y : y + est.roi_size, x : x + est.roi_size] = True
    return region


def test_map_on_a_modulated_volume_is_per_slice():
    """A 3-slice volume, the tube current (and the noise) rising with the slice: the map is per slice, the level per
    slice stays sigma0(slice)^2 (D0/D - 1) where sigma0 was measured, and the electronic term makes it level-dependent."""
    sigma = np.array([8.0, 12.0, 16.0])
    vol = np.stack([_body(96, 1.5, 62.0, 30.0, seed=s, sigma=v) for s, v in enumerate(sigma)])[None]
    source = ArraySource(vol, (3.0, 1.5, 1.5))
    spec = NoiseSpec(fractions=(0.5, 0.25), acquired_mas=200.0, roi_mm=12.0, electronic_fraction=0.2, mas_ref=200.0)
    model = spec.noise_model(source)
    own = model.scan_noise(0)
    assert own.spatial["mode"] == "map" and own.vmap.quantum.shape[0] == 3
    keys = spec.keys(np.zeros(48, np.int64), 0.25, np.arange(48))
    noise = spec.sample(keys, 0.25, np.repeat(vol, 48, axis=0), source.spacing, model=model)
    assert noise.shape == (48, 3, 96, 96)
    ratio = variance_factor(50.0, 200.0, 0.2) / variance_factor(200.0, 200.0, 0.2) - 1
    region = _roi_region(own)
    for k in range(3):
        measured = np.sqrt(np.mean(noise[:, k][:, region[k]] ** 2))
        assert measured == pytest.approx(own.sigma0[k] * math.sqrt(ratio), rel=0.06), k
    assert not np.allclose(model._gain(0, 0.5, own, (3, 96, 96)), model._gain(0, 0.25, own, (3, 96, 96)))


def test_chosen_rois_are_drawn_and_shown_beside_sigma0(wide_source, tmp_path):
    spec = NoiseSpec(fractions=(0.25,), acquired_mas=200.0, roi_mm=15.0)
    model = spec.noise_model(wide_source)
    model.prepare()
    report = {"noise": {"reduction": model.to_dict()}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_noise_rois(tmp_path, report, model)
    row = report["noise"]["reduction"]["samples"][0]["scan_noise"]
    png = tmp_path / row["roi_figure"]
    assert row["roi_figure"].startswith("figures/") and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert row["roi_slice"] == 0 and len(row["estimate"]["rois"]) == row["estimate"]["n_rois"] >= 4
    page = render_reduction(report, tmp_path)
    assert "Dose reduction" in page and "sigma0 (HU)" in page and "95% CI" in page and page.count("<img") == 2
    assert "% of acquired dose" in page and "CTDIvol (mGy)" in page and "map" in page
