"""An INT8 ONNX artifact attacked directly (issue #19): the black-box attacks query the INT8 engine itself (no
twin, not the FP32 original), and the attack block reports where its decisions differ from its FP32 original's,
clean and on the attacked inputs."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import pytest

from audit.artifact.quantize import FROM, QUANTIZED, fp32_reference, quantize_int8
from audit.config import AttackSpec
from audit.data.arrays import ArraySource
from audit.pipelines.attack import plan_attacks, summary_lines
from audit.report.attacks import render_attack_html
from tests.audit.attacks import nets

SPACING = (0.5, 0.5)


def _count_items(engine) -> list[int]:
    """Record the batch size of every call into ``engine``'s real session (the session itself still runs)."""
    seen: list[int] = []
    run = engine._run

    def counted(batch):
        seen.append(len(batch))
        return run(batch)

    engine._run = counted
    return seen


@pytest.fixture(scope="module")
def int8_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    fp32 = nets.export(nets.Fragile(), folder / "fragile.onnx")
    calibration = nets.audited(fp32).prepare(nets.images(32, spread_hu=12.0, seed=9))
    return fp32, quantize_int8(fp32, folder / "fragile_int8.onnx", calibration)


def test_square_attacks_the_int8_engine_and_reports_where_fp32_decides_otherwise(int8_pair):
    fp32_path, int8_path = int8_pair
    model = nets.audited(int8_path)
    assert model.engine.metadata[QUANTIZED] == "int8-qdq-static" and model.engine.metadata[FROM] == "fragile.onnx"
    hu = nets.images(64, spread_hu=12.0, seed=5)
    plan = plan_attacks(AttackSpec("square", MappingProxyType({"eps": 4.0, "queries": 300})), model,
                        ArraySource(hu, SPACING))
    assert plan.target.twin is None and plan.target.model is model  # the INT8 engine, no torch twin
    assert plan.reference is not None and plan.reference_info["path"] == str(fp32_path)
    int8_items, fp32_items = _count_items(model.engine), _count_items(plan.reference.engine)
    (block,) = plan.run(progress=False)
    ref, extra = block["reference"], block["extra"]

    # the queries went to the INT8 session: every one of them, plus the re-run and the comparison; the FP32
    # original answered only the comparison (clean and attacked inputs, once each)
    assert sum(int8_items) >= sum(extra["queries"]) + len(hu) and sum(extra["queries"]) > 2 * len(hu)
    assert sum(fp32_items) == 2 * len(hu)

    # the comparison, checked against the two engines directly
    fp32, int8 = nets.audited(fp32_path), nets.audited(int8_path)
    differ = fp32.decide(hu).labels != int8.decide(hu).labels
    assert ref["clean_differ"] == int(differ.sum()) >= 1 and ref["n"] == len(hu)
    assert ref["clean_differ_ids"] == [f"arrays:{i}" for i in np.nonzero(differ)[0]]
    s = block["summary"]
    assert ref["flipped_model"] == s["san"] > 0
    # Square stops at INT8's first flip, just across its boundary: there the FP32 original often still decides
    # the clean way; those inputs are decisions that differ between the two engines under attack
    assert ref["attacked_differ"] >= 1 and ref["flipped_model_only"] >= 1
    assert ref["flipped_model_only"] + ref["flipped_reference_too"] == ref["flipped_model"]
    rows = {r["id"]: r for r in ref["per_sample"]}
    for sample in block["samples"]:
        if sample["id"] in rows:  # the block's adversarial decision is the INT8 engine's
            assert rows[sample["id"]]["attacked"][0] == sample["adv_label"]
    assert sum(r["attacked_differ"] for r in rows.values()) == ref["attacked_differ"]
    assert any("FP32 original" in line for line in summary_lines({"runs": [block]}))
    page = render_attack_html(block)  # the page shows the comparison: verdict and each differing sample
    assert "Attacked artifact vs its FP32 original" in page and ref["verdict"].split(";")[0] in page
    assert all(str(r["id"]) in page for r in ref["per_sample"][:20])


def test_a_missing_fp32_original_is_named_not_guessed(int8_pair, tmp_path):
    _, int8_path = int8_pair
    lone = tmp_path / "alone_int8.onnx"
    lone.write_bytes(int8_path.read_bytes())  # its "fragile.onnx" is not next to it
    model = nets.audited(lone)
    reference, info = fp32_reference(model)
    assert reference is None and "not found" in info["reason"]
    plan = plan_attacks(AttackSpec("square", MappingProxyType({"eps": 8.0, "queries": 20})), model,
                        ArraySource(nets.images(4, seed=1), SPACING))
    (block,) = plan.run(progress=False)
    assert "not found" in block["reference"]["reason"] and "clean_differ" not in block["reference"]
    assert fp32_reference(nets.audited(int8_pair[0])) == (None, {})  # an FP32 artifact has no reference
