"""``audit attack CONFIG.toml``: a real run on a real ONNX model writes both rates; bad input exits 2 with a reason."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from audit.cli import main
from tests.audit.attacks import nets
from tests.audit.conftest import write_manifest


@pytest.fixture
def setup(tmp_path):
    model = nets.export(nets.Fragile(), tmp_path / "fragile.onnx")
    manifest = write_manifest(tmp_path / "data", nets.images(12, spread_hu=6.0, seed=3), np.zeros(12, int))
    return tmp_path, model, manifest


def _config(path, model, manifest, attack):
    path.write_text(f'[model]\npath = "{model}"\n\n[data]\nmanifest = "{manifest}"\n\n[attack]\n{attack}\n')
    return path


def test_attack_cli_writes_both_rates_and_explanations(setup, capsys):
    tmp, model, manifest = setup
    cfg = _config(tmp / "a.toml", model, manifest, 'name = "pgd"\neps = [5.0, 30.0]\nsteps = 10\nspace = "hu"\nkeep = 2')
    assert main(["attack", str(cfg), "--out", str(tmp / "out")]) == 0
    report = json.loads((tmp / "out" / "attack.json").read_text())
    assert report["schema"] == "audit-attack/1" and report["twin"]["origin"] == "onnx2torch"
    small, big = (r["summary"] for r in report["runs"])
    assert big["deployed_success_rate"] == 1.0 and small["deployed_success_rate"] < 1.0
    assert big["max_linf"] <= 30.0 * (1 + 1e-5)
    assert len(report["runs"][1]["explanations"]) == 2
    ex = report["runs"][1]["explanations"][0]
    assert ex["png"] and ex["first_layer_top"][0]["mean_abs_change"] > 0
    page = (tmp / "out" / "attack.html").read_text()
    assert "success rate, deployed artifact" in page and "data:image/png;base64" in page
    assert "deployed" in capsys.readouterr().out


def test_nps_ascent_from_the_cli_runs_one_attack_per_dose(setup):
    tmp, model, manifest = setup
    cfg = _config(tmp / "n.toml", model, manifest, 'name = "nps_ascent"\nrestarts = 2\niterations = 3\nexplain = false')
    cfg.write_text(cfg.read_text() + '\n[noise]\nlevels = [20, 200]\nsigma_ref = 10.0\n')
    assert main(["attack", str(cfg), "--out", str(tmp / "out")]) == 0
    runs = json.loads((tmp / "out" / "attack.json").read_text())["runs"]
    assert [r["label"] for r in runs] == ["nps_ascent @ 20 mAs", "nps_ascent @ 200 mAs"]
    assert runs[0]["summary"]["san"] >= runs[1]["summary"]["san"]  # more noise at lower dose


@pytest.mark.parametrize("attack,match", [
    ('name = "pgd"\neps = 0', "attack.eps: expected a number > 0"),
    ('name = "pgd"\neps = -0.1', "attack.eps: expected a number > 0"),
    ('name = "fgsm"', "attack.name: unknown attack 'fgsm'"),
    ('name = "pgd"\nepsilon = 0.1', "attack.epsilon: unknown parameter"),
])
def test_bad_attack_config_exits_2_naming_the_key(setup, capsys, attack, match):
    tmp, model, manifest = setup
    cfg = _config(tmp / "bad.toml", model, manifest, attack)
    assert main(["attack", str(cfg), "--out", str(tmp / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("audit: error:") and match in err and "Traceback" not in err


def test_onnx_with_an_op_the_converter_lacks_exits_2(tmp_path, capsys):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 1, *nets.SHAPE])
    y = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["b", 1])
    nodes = [helper.make_node("Shrink", ["input"], ["s"], lambd=0.1),
             helper.make_node("ReduceMean", ["s"], ["m"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Sigmoid", ["m"], ["p"]), helper.make_node("Unsqueeze", ["p", "ax"], ["probability"])]
    graph = helper.make_graph(nodes, "g", [x], [y], [helper.make_tensor("ax", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in {"audit.task": "binary", "audit.hu_window": "[-1000, 1000]"}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.save(model, str(tmp_path / "shrink.onnx"))
    manifest = write_manifest(tmp_path / "data", nets.images(2), np.zeros(2, int))
    cfg = _config(tmp_path / "c.toml", tmp_path / "shrink.onnx", manifest, 'name = "pgd"')
    assert main(["attack", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no converter for op Shrink" in err
