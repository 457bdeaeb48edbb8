"""Study 2's check: noise synthesised from local NPS flips a model as often as the repeated scans do."""

from __future__ import annotations

import numpy as np
import pytest

from audit.artifact import AuditedModel
from audit.campaign.noise import NoiseSpec
from audit.engines import load_engine
from audit.artifact.heads import head_from, preprocess_from
from audit.dicom import RepeatedScans
from audit.pipelines.scan_arm import ScanArmWarning, phantom_scanner_arm, scan_arm
from audit.report.build import noise_sigma
from audit.report.html import render_scan_arm
from kernels import nps_noise
from kernels.keys import NoiseKey
from models.phantoms.bodysite import BODYSITE_CLASSES, SPACING
from models.phantoms.scanner import NEAR_BOUNDARY, PhantomScanner, dose_law, phantom_position
from tests.audit.planted import planted_model, region_means

REGION = (slice(100, 116), slice(120, 136))  # 24 mm square in the chest phantom


def test_simulated_and_real_scans_agree_on_a_planted_model(tmp_path):
    scans = PhantomScanner().scan("chest", 25.0, 20, seed=4)
    means = region_means(scans.scans, REGION)
    threshold = float(means.mean() + 0.5 * means.std())  # the region mean flips in about a third of the scans
    path = planted_model(tmp_path / "p.onnx", scans.scans.shape[1:], REGION, threshold)
    engine = load_engine(path)
    model = AuditedModel("planted", engine, head_from(engine.metadata), preprocess_from(engine.metadata))
    arm = scan_arm(model, [RepeatedScans(scans.scans, scans.spacing, "chest")], draws=300, seed=1)
    (ph,) = arm["per_phantom"]
    assert 0.05 < ph["SAR_real"] < 0.95 and 0.05 < ph["SAR_simulated"] < 0.95  # the comparison is not vacuous
    assert arm["max_abs_z"] < 2.58  # no entry differs at 99%
    cmr = np.array(arm["CMR_simulated"])
    col = ph["clean_label"]
    assert abs(cmr[:, col].sum() - 1) < 1e-12 and abs(1 - cmr[col, col] - ph["SAR_simulated"]) < 1e-12


# --- power, dose alignment, warnings ------------------------------------------------------------------

SMALL = (24, 24)
SMALL_REGION = (slice(9, 15), slice(9, 15))  # 9 mm square: its mean has ~10 HU of noise at 25 mAs


def _planted_phantoms(offsets, mas: float, scans: int, seed: int) -> list[RepeatedScans]:
    """Flat 40 HU phantoms whose central square is ``offset`` HU off the planted model's threshold, scanned with
    the phantom scanner's (= the audit's) dose law on their grid."""
    law = dose_law(shape=SMALL, spacing=SPACING)
    out = []
    for j, h in enumerate(offsets):
        clean = np.full(SMALL, 40.0, np.float32)
        clean[SMALL_REGION] += h
        keys = [NoiseKey(seed, j, int(1000 * mas), r) for r in range(scans)]
        noise = nps_noise(keys, law.nps_at(mas), SMALL, SPACING)
        out.append(RepeatedScans((clean[None] + noise).astype(np.float32), SPACING, f"p{j}"))
    return out


@pytest.fixture(scope="module")
def small_planted(tmp_path_factory):
    path = planted_model(tmp_path_factory.mktemp("arm") / "p.onnx", SMALL, SMALL_REGION, 40.0)
    engine = load_engine(path)
    return AuditedModel("planted", engine, head_from(engine.metadata), preprocess_from(engine.metadata))


def test_scan_arm_rejects_a_wrong_dose_and_not_the_right_one_at_its_stated_power(small_planted):
    """40 phantoms x 20 scans at 25 mAs, graded fragility. Over replications: a faithful simulation is rejected
    at about alpha; one at half the dose (variance x 2) at about the power the arm states for its effect."""
    reps, rejected, power, effect = 16, {1.0: 0, 2.0: 0}, None, []
    for rep in range(reps):
        offsets = np.random.default_rng(100 + rep).uniform(-40.0, 40.0, 40)
        phantoms = _planted_phantoms(offsets, 25.0, 20, 1000 + rep)
        for ratio in (1.0, 2.0):
            arm = scan_arm(small_planted, phantoms, draws=20, seed=rep, variance_ratio=ratio,
                           power_simulations=400 if (rep, ratio) == (0, 1.0) else 0)
            assert arm["phantoms"] == 40 and arm["test"]["scans_and_draws_per_phantom"] == 20 and not arm["warnings"]
            rejected[ratio] += arm["test"]["rejects"]
            if arm["power"] is not None:
                power = arm["power"]
            if ratio == 2.0:
                effect.append(arm["SAR_simulated"] - arm["SAR_real"])
    assert power["effect"] == 0.05 and power["size"] <= 0.08  # the planning model's own false-rejection rate
    assert 0.6 <= power["power"] <= 1.0
    # The planted mismatch moves the pooled SAR by about the stated effect (0.05) ...
    assert 0.03 < float(np.mean(effect)) < 0.08, effect
    # ... and is rejected about as often as the stated power says; a faithful simulation about alpha.
    assert rejected[2.0] >= 0.6 * reps, rejected
    assert rejected[1.0] <= 3, rejected  # P(>= 4 of 16 | alpha 0.05) = 0.007


def test_scan_arm_warns_when_no_count_is_nonzero(small_planted):
    phantoms = _planted_phantoms(np.full(12, 400.0), 100.0, 6, 3)  # 400 HU above the threshold: never flips
    with pytest.warns(ScanArmWarning, match="agreement is empty"):
        arm = scan_arm(small_planted, phantoms, draws=6, seed=0, power_simulations=50)
    assert arm["SAR_real"] == arm["SAR_simulated"] == 0.0 and not arm["test"]["rejects"]
    assert arm["warnings"] and "agreement is empty" in arm["warnings"][0]
    page = render_scan_arm({"scan_arm": [arm]})  # the reviewer sees the warning, the decision and the power
    assert "class='warn'" in page and "agreement is empty" in page
    assert "no difference detected" in page and "power for an effect of 0.05" in page


def test_phantom_scanner_follows_the_audits_dose_law():
    """Same nominal mAs, same noise: the scanner's sigma in the body is the audit's pixel sigma on that grid."""
    spec = NoiseSpec(levels=(10.0, 100.0))
    target = noise_sigma(spec, (256, 256), SPACING)
    scanner = PhantomScanner()
    for mas, sigma in zip(spec.levels, target):
        s = scanner.scan("abdomen_pelvis", mas, 6, seed=2, phantom=1)
        body = s.clean > -500
        assert np.std((s.scans - s.clean)[:, body]) == pytest.approx(sigma, rel=0.06)
    # phantom_scanner_arm takes the [noise] spec's law: twice sigma_ref, twice the noise.
    a = phantom_scanner_arm(50.0, 3, per_class=1, noise=NoiseSpec(sigma_ref=50.0))
    b = phantom_scanner_arm(50.0, 3, per_class=1, noise=NoiseSpec(sigma_ref=25.0))
    ratio = [np.std(np.diff(x.scans, axis=0)) / np.std(np.diff(y.scans, axis=0)) for x, y in zip(a, b)]
    assert np.allclose(ratio, 2.0, rtol=1e-3)


def test_phantom_set_is_varied_slices_near_class_boundaries():
    scans = PhantomScanner().phantom_set(25.0, 2, per_class=10, seed=0)
    assert len(scans) == 40 and len({s.u for s in scans}) == 40
    for s in scans:
        u, patient = phantom_position(s.class_name, s.phantom, 0)
        v = u + patient.offset  # the anatomy shown: near an inner boundary, on the phantom's class's side
        assert u == s.u and int(v) == BODYSITE_CLASSES.index(s.class_name)
        assert abs(v - round(v)) < NEAR_BOUNDARY and 1 <= round(v) <= len(BODYSITE_CLASSES) - 1
    # Different patients: no two clean slices of a class alike.
    chest = np.stack([s.clean for s in scans if s.class_name == "chest"])
    assert min(np.abs(chest[i] - chest[j]).mean() for i in range(10) for j in range(i)) > 5.0
