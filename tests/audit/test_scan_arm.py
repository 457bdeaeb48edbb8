"""Study 2's check: noise synthesised from local NPS flips a model as often as the repeated scans do."""

from __future__ import annotations

import numpy as np

from audit.artifact import AuditedModel
from audit.engines import load_engine
from audit.artifact.heads import head_from, preprocess_from
from audit.dicom import RepeatedScans
from audit.pipelines.scan_arm import scan_arm
from models.phantoms.scanner import PhantomScanner
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
