"""n_i, SAR_i, SAN, SAR_c, CMR, exceedance and the per-level summary: hand-computed cases and properties."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audit.errors import InputError
from audit.metrics import (
    clopper_pearson_interval,
    cluster_exact_interval,
    class_attack_rate,
    class_attack_rate_intervals,
    cmr_counts,
    confusion_matrix_for_robustness,
    exceedance_curve,
    flip_counts,
    robustness_summary,
    sample_attack_rate,
    san_fraction,
    successful_attack_number,
)

# N = 4 samples, K = 3 draws, 3 classes.
#   sample 0: clean 0, perturbed 0 1 0 -> n = 1
#   sample 1: clean 0, perturbed 0 0 0 -> n = 0
#   sample 2: clean 1, perturbed 1 2 2 -> n = 2
#   sample 3: clean 2, perturbed 2 2 2 -> n = 0
CLEAN = np.array([0, 0, 1, 2])
PERTURBED = np.array([[0, 1, 0], [0, 0, 0], [1, 2, 2], [2, 2, 2]])


def test_hand_case_per_sample_rates_and_san():
    np.testing.assert_array_equal(flip_counts(CLEAN, PERTURBED), [1, 0, 2, 0])
    np.testing.assert_allclose(sample_attack_rate(CLEAN, PERTURBED), [1 / 3, 0, 2 / 3, 0], rtol=0, atol=1e-15)
    assert successful_attack_number(CLEAN, PERTURBED) == 2  # samples 0 and 2
    assert san_fraction(CLEAN, PERTURBED) == 0.5


def test_hand_case_per_class_rate_and_cmr():
    # SAR_0 = (1 + 0) / (3 * 2) = 1/6; SAR_1 = 2 / (3 * 1) = 2/3; SAR_2 = 0 / 3 = 0.
    np.testing.assert_allclose(class_attack_rate(CLEAN, PERTURBED, 3), [1 / 6, 2 / 3, 0], atol=1e-15)
    # counts[a, b]: column 0 collects samples 0 and 1 (perturbed 0 1 0 0 0 0): a=0 five times, a=1 once;
    # column 1 sample 2 (1 2 2); column 2 sample 3 (2 2 2).
    expected_counts = np.array([[5, 0, 0], [1, 1, 0], [0, 2, 3]])
    np.testing.assert_array_equal(cmr_counts(CLEAN, PERTURBED, 3), expected_counts)
    cmr = confusion_matrix_for_robustness(CLEAN, PERTURBED, 3)
    np.testing.assert_allclose(cmr, [[5 / 6, 0, 0], [1 / 6, 1 / 3, 0], [0, 2 / 3, 1]], atol=1e-15)
    np.testing.assert_allclose(1 - np.diag(cmr), class_attack_rate(CLEAN, PERTURBED, 3), atol=1e-15)


def test_class_without_clean_predictions_is_nan():
    cmr = confusion_matrix_for_robustness(CLEAN, PERTURBED, 4)
    assert np.all(np.isnan(cmr[:, 3]))
    assert not np.any(np.isnan(cmr[:, :3]))
    np.testing.assert_array_equal(cmr[3, :3], 0.0)  # class 3 is never predicted under noise either
    sar_c = class_attack_rate(CLEAN, PERTURBED, 4)
    assert np.isnan(sar_c[3]) and not np.any(np.isnan(sar_c[:3]))
    lo, hi = class_attack_rate_intervals(CLEAN, PERTURBED, 4)
    assert np.isnan(lo[3]) and np.isnan(hi[3])


def test_hand_case_exceedance_curve():
    sar = sample_attack_rate(CLEAN, PERTURBED)  # [1/3, 0, 2/3, 0]
    t, e = exceedance_curve(sar, [0, 1 / 3, 0.5, 2 / 3, 1])
    # > 0: two of four; > 1/3: only 2/3; > 0.5: only 2/3; > 2/3: none; > 1: none.
    np.testing.assert_allclose(e, [0.5, 0.25, 0.25, 0.0, 0.0])
    t, e = exceedance_curve(sar)
    assert t.shape == (101,) and t[0] == 0 and t[-1] == 1
    assert e[33] == 0.5 and e[34] == 0.25 and e[66] == 0.25 and e[67] == 0.0


def test_exceedance_ignores_rounding_of_grid_points():
    sar = np.array([3 / 10])  # n_i = 3 of K = 10
    # 0.1 + 0.2 lands just above 0.3 and 0.7 - 0.4 just below it; neither is exceeded by 3/10.
    assert 0.7 - 0.4 < 0.3 < 0.1 + 0.2
    _, e = exceedance_curve(sar, [0.1 + 0.2, 0.7 - 0.4, 0.29, 0.31])
    np.testing.assert_array_equal(e, [0.0, 0.0, 1.0, 0.0])


@pytest.mark.parametrize("seed", range(6))
def test_properties_on_random_audits(seed):
    rng = np.random.default_rng(seed)
    n, k, c = int(rng.integers(1, 60)), int(rng.integers(1, 30)), int(rng.integers(2, 6))
    clean = rng.integers(0, c, n)
    flip = rng.random((n, 1)) * rng.random((n, k)) < rng.random()  # uneven flip tendency per sample
    perturbed = np.where(flip, rng.integers(0, c, (n, k)), clean[:, None])
    cmr = confusion_matrix_for_robustness(clean, perturbed, c)
    present = np.bincount(clean, minlength=c) > 0
    np.testing.assert_allclose(cmr[:, present].sum(axis=0), 1.0, atol=1e-12)
    assert np.all(np.isnan(cmr[:, ~present]))
    sar_c = class_attack_rate(clean, perturbed, c)
    np.testing.assert_allclose(1 - np.diag(cmr)[present], sar_c[present], atol=1e-12)
    n_i = flip_counts(clean, perturbed)
    san = successful_attack_number(clean, perturbed)
    assert 0 <= san <= n and san == np.count_nonzero(n_i)
    # The per-class rates, weighted by N_c, pool back to the overall rate.
    n_c = np.bincount(clean, minlength=c)
    assert np.isclose(np.nansum(sar_c * n_c) / n, n_i.sum() / (n * k))
    t, e = exceedance_curve(sample_attack_rate(clean, perturbed))
    assert np.all(np.diff(e) <= 0)
    assert e[0] == san / n and e[-1] == 0.0
    assert np.all(cmr_counts(clean, perturbed, c).sum(axis=0) == k * n_c)


def test_summary_hand_case_and_json():
    s = robustness_summary(CLEAN, PERTURBED, 4, ["lung", "liver", "head", "pelvis"], thresholds=[0, 0.5, 1])
    d = s.to_dict()
    text = json.dumps(d, allow_nan=False)  # NaN must already be None
    d = json.loads(text)
    assert d["K"] == 3 and d["N"] == 4 and d["SAN"] == 2 and d["SAN_fraction"] == 0.5
    assert d["per_sample"]["n_flips"] == [1, 0, 2, 0]
    assert d["per_class"]["N_c"] == [2, 1, 1, 0]
    assert d["per_class"]["SAR"][:3] == pytest.approx([1 / 6, 2 / 3, 0]) and d["per_class"]["SAR"][3] is None
    assert d["per_class"]["SAR_ci_low"][3] is None and d["per_class"]["ci_method"] == "cluster_exact"
    assert [row[3] for row in d["CMR"]["matrix"]] == [None] * 4
    assert d["CMR"]["counts"][2] == [0, 2, 3, 0] and d["CMR"]["class_order"] == ["lung", "liver", "head", "pelvis"]
    assert d["exceedance"] == {"thresholds": [0.0, 0.5, 1.0], "fraction": [0.5, 0.25, 0.0]}
    assert d["SAR_overall"] == pytest.approx(3 / 12)
    # Exact by default (rates near 0): per-sample Clopper-Pearson on (n_i, K); SAN fraction on (SAN, N).
    assert d["per_sample"]["SAR_ci_high"][1] == pytest.approx(clopper_pearson_interval(0, 3)[1])
    assert d["SAN_fraction_ci"] == pytest.approx(list(clopper_pearson_interval(2, 4)))
    # Class 0 pools samples 0 and 1 (n_i = 1, 0); the default interval is the cluster-aware exact one.
    assert d["per_class"]["SAR_ci_high"][0] == pytest.approx(cluster_exact_interval([1, 0], 3)[1])
    assert d["SAR_overall_ci"] == pytest.approx(list(cluster_exact_interval([1, 0, 2, 0], 3)))


def test_summary_bootstrap_is_seeded_and_methods_selectable():
    rng = np.random.default_rng(3)
    clean = rng.integers(0, 2, 40)
    perturbed = np.where(rng.random((40, 20)) < 0.2, 1 - clean[:, None], clean[:, None])
    a = robustness_summary(clean, perturbed, 2, class_ci_method="bootstrap", seed=7)
    b = robustness_summary(clean, perturbed, 2, class_ci_method="bootstrap", seed=7)
    c = robustness_summary(clean, perturbed, 2, class_ci_method="bootstrap", seed=8)
    np.testing.assert_array_equal(a.class_sar_low, b.class_sar_low)
    assert not np.array_equal(a.class_sar_low, c.class_sar_low)
    cp = robustness_summary(clean, perturbed, 2, sample_ci_method="clopper_pearson")
    w = robustness_summary(clean, perturbed, 2)
    assert np.all(cp.sar_high - cp.sar_low >= w.sar_high - w.sar_low - 1e-12)  # CP is the wider one
    assert cp.to_dict()["per_sample"]["ci_method"] == "clopper_pearson"


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: flip_counts([0, 1], [[0, 1]]), "perturbed_labels: expected shape (N, K) = (2, K)"),
        (lambda: flip_counts([0, 1], np.zeros((2, 0), int)), "K >= 1"),
        (lambda: flip_counts([0, 1], [0, 1]), "perturbed_labels: expected a 2-D array"),
        (lambda: flip_counts([], np.zeros((0, 3), int)), "N >= 1"),
        (lambda: class_attack_rate([0, 3], [[0], [1]], 3), "clean_labels: expected class labels in [0, 3), found 3"),
        (lambda: class_attack_rate([0, 1], [[0], [-1]], 3), "perturbed_labels: expected class labels in [0, 3), found -1"),
        (lambda: class_attack_rate([0, 1.5], [[0], [1]], 3), "clean_labels: expected integer labels"),
        (lambda: class_attack_rate([0, 1], [[0], [1]], 0), "n_classes: expected an integer >= 1"),
        (lambda: robustness_summary([0, 1], [[0], [1]], 2, ["a"]), "class_names: expected 2 names"),
        (lambda: robustness_summary([0, 1], [[0], [1]], 2, class_ci_method="naive"), "class_ci_method: expected one of"),
        (lambda: robustness_summary([0, 1], [[0], [1]], 2, confidence=95), "confidence: expected a number in (0, 1)"),
        (lambda: exceedance_curve([0.2, 1.5]), "sar: expected finite values in [0, 1]"),
        (lambda: exceedance_curve([0.2], [[0.1]]), "thresholds: expected a non-empty 1-D array"),
    ],
)
def test_bad_input_names_the_argument(call, fragment):
    with pytest.raises(InputError) as info:
        call()
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_integral_float_labels_are_accepted():
    np.testing.assert_array_equal(flip_counts(CLEAN.astype(float), PERTURBED.astype(float)), [1, 0, 2, 0])
