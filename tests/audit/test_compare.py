"""Several artifacts in one audit: same draws for all, spread over models, decision-level engine comparison."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from audit.artifact import AuditedModel
from audit.campaign.run import CampaignStats, RunOptions, run_campaign
from audit.data import ArraySource
from audit.engines import load_engine
from audit.artifact.heads import head_from, preprocess_from
from audit.campaign.noise import NoiseSpec
from audit.artifact.quantize import quantize_int8
from audit.report import build_report, check_report
from tests.audit.conftest import SPACING, planted_images


def _open(path, name):
    engine = load_engine(path)
    return AuditedModel(name, engine, head_from(engine.metadata), preprocess_from(engine.metadata))


def _tiny_cnn(path, threshold_from: np.ndarray):
    """A real small CNN exported from torch, threshold at the median clean score so both classes occur."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 1),
                              torch.nn.Sigmoid()).eval()
    x = torch.from_numpy(threshold_from)
    with torch.no_grad():  # scale the last layer so the logits spread (std 2) around 0 on these inputs
        logits = net[:-1](x)[:, 0]
        net[-2].weight *= 2.0 / float(logits.std())
        net[-2].bias -= float(torch.median(net[:-1](x)[:, 0]))
    threshold = 0.5
    torch.onnx.export(net, (x[:2],), str(path), input_names=["image"], output_names=["probability"],
                      dynamic_axes={"image": {0: "batch"}, "probability": {0: "batch"}}, opset_version=18, dynamo=False)
    model = onnx.load(str(path))
    for k, v in {"audit.task": "binary", "audit.threshold": repr(threshold), "audit.hu_window": "[-1000, 1000]",
                 "audit.class_names": json.dumps(["low", "high"])}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.save(model, str(path))
    return path


def test_same_draws_for_every_model_and_spread(tmp_path, planted):
    copy = tmp_path / "copy.onnx"
    shutil.copy(planted, copy)
    models = [_open(planted, "a"), _open(copy, "b")]
    source = ArraySource(planted_images(24, spread_hu=5.0), (SPACING, SPACING))
    noise = NoiseSpec(kind="nps", levels=(50.0, 200.0), draws=12, seed=2, sigma_ref=30.0)
    stats = run_campaign(models, source, noise, tmp_path / "out", RunOptions(shard_samples=8))
    report = build_report(tmp_path / "out", models, source, noise, stats.to_dict())
    (cmp,) = report["comparisons"]
    for entry in cmp["per_level"]:
        assert entry["decision_agreement"] == 1.0 and entry["SAR"]["difference"] == 0.0 and entry["SAR"]["p_value"] == 1.0
    spread = report["spread"]["per_level"][0]
    assert spread["models"] == 2 and spread["SAR_overall_std"] == 0.0
    assert spread["models_with_any_flip"] in (0, 2)


def test_int8_artifact_is_compared_to_fp32_at_the_decision_level(tmp_path):
    rng = np.random.default_rng(1)
    hu = rng.normal(0, 200, (40, 48, 48)).astype(np.float32)
    x = ((np.clip(hu, -1000, 1000) + 1000) / 2000)[:, None].astype(np.float32)
    fp32 = _tiny_cnn(tmp_path / "fp32.onnx", x)
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", x)
    assert load_engine(int8).metadata["audit.quantized"] == "int8-qdq-static"
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(int8)).graph.node)
    models = [_open(fp32, "fp32"), _open(int8, "int8")]
    source = ArraySource(hu, (SPACING, SPACING))
    noise = NoiseSpec(kind="nps", levels=(25.0, 400.0), draws=10, seed=0, sigma_ref=60.0)
    stats = run_campaign(models, source, noise, tmp_path / "out", RunOptions(shard_samples=16))
    report = build_report(tmp_path / "out", models, source, noise, CampaignStats().to_dict())
    check_report(report)
    (cmp,) = report["comparisons"]
    assert cmp["a"] == "fp32" and cmp["b"] == "int8"
    for entry in cmp["per_level"]:
        assert 0.5 < entry["decision_agreement"] <= 1.0
        mat = np.array([[np.nan if v is None else v for v in row] for row in entry["CMR_between"]["matrix"]])
        present = ~np.isnan(mat).any(axis=0)
        np.testing.assert_allclose(mat[:, present].sum(axis=0), 1.0)
        assert 0.0 <= entry["SAR"]["p_value"] <= 1.0
    assert stats.inferences == 2 * 40 * 10 * 2


def test_check_report_catches_a_broken_cmr(tmp_path, planted):
    models = [_open(planted, "a")]
    source = ArraySource(planted_images(12, spread_hu=5.0), (SPACING, SPACING))
    noise = NoiseSpec(kind="gaussian", levels=(30.0,), draws=6, seed=2)
    run_campaign(models, source, noise, tmp_path / "out", RunOptions(shard_samples=8))
    report = build_report(tmp_path / "out", models, source, noise, CampaignStats().to_dict())
    check_report(report)
    report["models"][0]["levels"][0]["CMR"]["matrix"][0][0] = 0.123
    with pytest.raises(AssertionError, match="CMR"):
        check_report(report)
