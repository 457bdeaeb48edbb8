"""NPS models: presets, tables, 2D arrays, dose scaling, summaries and argument checks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from kernels import DoseModel, GridNPS, NPSTruncationWarning, RadialNPS, estimate_nps, preset, variance_factor
from kernels.nps import PRESET_WINDOWS


@pytest.mark.parametrize("name, peak", [("soft", 0.23), ("standard", 0.36), ("sharp", 0.64)])
def test_presets_peak_where_documented_and_scale_to_sigma(name, peak):
    nps = preset(name, sigma=17.0)
    sigma, f_av, f_peak = nps.summary()
    assert abs(sigma - 17.0) < 1e-6
    assert abs(f_peak - peak) < 0.01
    assert nps(0.0) == 0.0 and nps(0.81) == 0.0  # ramp starts at zero; window ends at the cutoff
    assert 0 < f_av < 0.8


def test_presets_are_ordered_soft_to_sharp():
    peaks = [preset(n, 1.0).summary().f_peak for n in ("soft", "standard", "sharp")]
    assert peaks == sorted(peaks) and set(PRESET_WINDOWS) == {"soft", "standard", "sharp"}


def test_radial_table_interpolates_and_integrates():
    nps = RadialNPS([0.0, 0.5, 1.0], [100.0, 100.0, 100.0])
    assert nps(0.25) == 100.0 and nps(1.5) == 0.0
    assert abs(nps.variance() - 100.0 * math.pi) < 1e-6  # flat disk of radius 1
    assert abs(nps.with_sigma(3.0).variance() - 9.0) < 1e-9


def test_grid_nps_round_trips_an_estimate_and_interpolates():
    est = estimate_nps(np.random.default_rng(0).normal(0, 5, (50, 32, 32)), 0.5)
    grid = est.as_grid()
    np.testing.assert_allclose(grid.on_grid((32, 32), (0.5, 0.5), half=False), est.nps)
    assert abs(grid.variance() - est.variance()) < 1e-9
    finer = grid.on_grid((64, 64), (0.5, 0.5), half=False)  # same band, twice the samples
    assert abs(finer.mean() / est.nps.mean() - 1) < 0.05


def test_grid_nps_must_be_point_symmetric():
    bad = np.zeros((8, 8))
    bad[1, 2] = 1.0
    with pytest.raises(ValueError, match="point symmetry"):
        GridNPS(bad, (0.5, 0.5))


def test_dose_law_quantum_and_electronic():
    assert variance_factor(50, 200) == pytest.approx(4.0)
    assert variance_factor(50, 200, 0.5) == pytest.approx(0.5 * 4 + 0.5 * 16)
    model = DoseModel.from_sigma(preset("soft", 1.0), sigma_ref=20.0, mas_ref=100.0)
    assert model.sigma_at(25.0) == pytest.approx(40.0)
    assert model.nps_at(400.0).summary().sigma == pytest.approx(10.0)


def test_truncation_is_warned():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preset("sharp", 10.0).on_grid((32, 32), (1.0, 1.0))  # Nyquist 0.5 < cutoff 0.8
    assert any(issubclass(w.category, NPSTruncationWarning) for w in caught)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: preset("smooth", 10.0), "one of"),
        (lambda: preset("soft", -1.0), "sigma"),
        (lambda: preset("soft", 1.0, cutoff=0.0), "cutoff"),
        (lambda: RadialNPS([0.0, 1.0], [1.0, -1.0]), ">= 0"),
        (lambda: RadialNPS([0.0, 0.0], [1.0, 1.0]), "increasing"),
        (lambda: RadialNPS([0.0], [1.0]), "length"),
        (lambda: RadialNPS([0.0, 1.0], [np.nan, 1.0]), "finite"),
        (lambda: DoseModel(preset("soft", 1.0), mas_ref=0.0), "reference mAs"),
        (lambda: DoseModel(preset("soft", 1.0), 100.0).nps_at(-5.0), "mAs"),
        (lambda: DoseModel(preset("soft", 1.0), 100.0, electronic_fraction=1.0), "electronic_fraction"),
        (lambda: preset("soft", 1.0).on_grid((32, 32), (0.0, 0.5)), "spacing"),
        (lambda: preset("soft", 1.0).on_grid((32,), (0.5,)), "shape"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()
