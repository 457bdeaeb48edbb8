"""Black-box attacks through the pipeline (issue #19): an ONNX graph onnx2torch cannot convert is attacked end to
end by the black-box attacks while the gradient attacks still refuse it; the NPS search runs once per dose."""

from __future__ import annotations

import json
from types import MappingProxyType

import numpy as np
import onnx
import pytest
from onnx import helper

from audit.attacks.twin import torch_twin
from audit.campaign.noise import NoiseSpec
from audit.cli import main
from audit.config import AttackSpec
from audit.data.arrays import ArraySource
from audit.errors import EngineError
from audit.pipelines.attack import plan_attacks
from tests.audit.attacks import nets
from tests.audit.conftest import write_manifest


def _with_shrink(path):
    """The fragile net with Shrink(lambd=0) on its input: the identity for ONNX Runtime, an op onnx2torch lacks."""
    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["shrunk" if i == "input" else i for i in node.input]
    graph.node.insert(0, helper.make_node("Shrink", ["input"], ["shrunk"], lambd=0.0, bias=0.0))
    onnx.checker.check_model(model)
    out = path.with_name("shrink_" + path.name)
    onnx.save(model, str(out))
    return out


@pytest.fixture(scope="module")
def shrink(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shrink")
    plain = nets.export(nets.Fragile(), folder / "fragile.onnx")
    return _with_shrink(plain), nets.audited(plain)


def test_the_shrink_model_is_runnable_but_not_convertible(shrink):
    path, plain = shrink
    model = nets.audited(path)
    hu = nets.images(8, spread_hu=12.0, seed=3)
    np.testing.assert_array_equal(model.decide(hu).scores, plain.decide(hu).scores)
    with pytest.raises(EngineError, match=r"no converter for op Shrink"):
        torch_twin(path)


def _source(n=16, seed=5):
    return ArraySource(nets.images(n, spread_hu=12.0, seed=seed), SPACING_2D)


SPACING_2D = (0.5, 0.5)


@pytest.mark.parametrize("name,params", [("square", {"eps": 8.0, "queries": 300}),
                                         ("hopskipjump", {"eps": 8.0, "norm": "linf", "queries": 300}),
                                         ("ensemble", {"attacks": ["pgd", "square"], "eps": 8.0,
                                                       "params": {"square": {"queries": 300}}})])
def test_black_box_attacks_run_on_a_graph_the_converter_lacks(shrink, name, params):
    model = nets.audited(shrink[0])
    plan = plan_attacks(AttackSpec(name, MappingProxyType(params), explain=True), model, _source())
    assert plan.target.twin is None
    (block,) = plan.run(progress=False)
    s = block["summary"]
    assert 0 < s["deployed_success_rate"] < 1 and block["twin"]["origin"].startswith("none")
    assert s["max_linf"] <= 8.0 * (1 + 1e-5) and block["explanations"] == []
    if name == "ensemble":
        assert "Shrink" in block["twin"]["reason"] and "Shrink" in block["extra"]["skipped"]["pgd"]
        assert [m["name"] for m in block["extra"]["members"]] == ["square"]
        assert block["extra"]["robust_rate"] == pytest.approx(1 - s["deployed_success_rate"])
    else:
        assert block["extra"]["successes"] == s["san"] and block["extra"]["queries_per_success"] > 1


def test_gradient_attacks_still_refuse_it(shrink):
    model = nets.audited(shrink[0])
    with pytest.raises(EngineError, match=r"no converter for op Shrink"):
        plan_attacks(AttackSpec("pgd", MappingProxyType({"eps": 8.0})), model, _source(4))
    with pytest.raises(EngineError, match=r"no converter for op Shrink"):  # an ensemble of white-box members only
        plan_attacks(AttackSpec("ensemble", MappingProxyType({"attacks": ["pgd"], "eps": 8.0})), model, _source(4))


def test_no_twin_is_built_for_black_box_attacks_on_a_convertible_model(fragile):
    plan = plan_attacks(AttackSpec("square", MappingProxyType({"eps": 8.0, "queries": 10})), fragile, _source(4))
    assert plan.target.twin is None and plan.target.describe()["reason"] == "no attack planned needs one"
    plan = plan_attacks(AttackSpec("ensemble", MappingProxyType({"eps": 8.0, "params": {"square": {"queries": 10}}})),
                        fragile, _source(4))
    assert plan.target.twin is not None  # pgd is a member: the twin exists, so it runs


def test_nps_search_runs_once_per_dose(fragile):
    noise = NoiseSpec(levels=(20.0, 2000.0), sigma_ref=10.0)
    spec = AttackSpec("nps_search", MappingProxyType({"queries": 60, "draws": 20}), noise=noise)
    plan = plan_attacks(spec, fragile, _source(16, seed=3))
    blocks = plan.run(progress=False)
    assert [b["label"] for b in blocks] == ["nps_search @ 20 mAs", "nps_search @ 2000 mAs"]
    low, high = (b["extra"] for b in blocks)
    assert np.median(low["random_rms_hu"]) > 3 * np.median(high["random_rms_hu"])  # the dose's sigma per run
    assert blocks[0]["summary"]["san"] >= blocks[1]["summary"]["san"]


def test_audit_attack_cli_on_an_unconvertible_model(shrink, tmp_path):
    manifest = write_manifest(tmp_path / "data", nets.images(8, spread_hu=6.0, seed=3), np.zeros(8, int))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[model]\npath = "{shrink[0]}"\n\n[data]\nmanifest = "{manifest}"\n\n'
                   f'[attack]\nname = "square"\neps = [2.0, 30.0]\nqueries = 200\n')
    assert main(["attack", str(cfg), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "attack.json").read_text())
    assert report["twin"]["origin"].startswith("none")
    small, big = (r["summary"] for r in report["runs"])
    assert big["deployed_success_rate"] == 1.0 and small["deployed_success_rate"] < 1.0
    assert [r["label"] for r in report["runs"]] == ["square eps=2", "square eps=30"]
    assert "queries_per_success" in report["runs"][1]["extra"]
    assert "success rate, deployed artifact" in (tmp_path / "out" / "attack.html").read_text()
