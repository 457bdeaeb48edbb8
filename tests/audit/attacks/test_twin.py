"""The torch twin: onnx2torch conversion checked against ONNX Runtime, clear refusals otherwise."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from audit.attacks import Target, torch_twin
from audit.attacks.twin import PARITY_ATOL
from audit.errors import EngineError
from tests.audit.attacks import nets


def test_onnx2torch_twin_matches_onnxruntime(small_cnn):
    target = Target.from_model(small_cnn, parity_hu=nets.images(6))
    assert target.twin.origin == "onnx2torch"
    assert target.twin.parity_inputs == 10
    assert target.twin.parity_max_abs_diff <= PARITY_ATOL
    hu = nets.images(20, seed=3)
    ours = target.decide(target.to_input(torch.from_numpy(hu)))
    deployed = small_cnn.decide(hu)
    np.testing.assert_allclose(ours.scores, deployed.scores, atol=1e-4)
    np.testing.assert_array_equal(ours.labels, deployed.labels)


def test_twin_from_the_users_torch_module(small_cnn):
    target = Target.from_model(small_cnn, module=nets.SmallCNN(), parity_hu=nets.images(4))
    assert target.twin.origin == "torch module"
    assert not any(p.requires_grad for p in target.twin.module.parameters())


def test_parity_gap_is_refused_naming_the_output(small_cnn):
    with pytest.raises(EngineError, match=r"differs from ONNX Runtime by .* on output 'probability'"):
        Target.from_model(small_cnn, module=nets.SmallCNN(seed=1), parity_hu=nets.images(4))


def test_dynamo_reshape_allowzero_is_accepted(tmp_path):
    """torch.onnx's dynamo exporter writes Reshape(allowzero=1), which onnx2torch refuses; a constant shape
    without zeros means the same with allowzero=0, so the twin converts and keeps parity."""
    net = nets.SmallCNN().eval()
    path = tmp_path / "dyn.onnx"
    torch.onnx.export(net, (torch.rand(2, 1, *nets.SHAPE),), str(path), dynamo=True, input_names=["input"],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},), opset_version=18)
    ops = {(n.op_type, tuple(a.i for a in n.attribute if a.name == "allowzero")) for n in onnx.load(str(path)).graph.node}
    twin = torch_twin(path)
    assert twin.parity_max_abs_diff <= PARITY_ATOL
    assert ("Reshape", (1,)) in ops or all(op != "Reshape" for op, _ in ops)


def test_unsupported_op_is_named(tmp_path):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1, 4, 4])
    graph = helper.make_graph([helper.make_node("Shrink", ["input"], ["y"], lambd=0.5)], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "shrink.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineError, match=r"no converter for op Shrink \(domain 'ai.onnx', opset 17\)"):
        torch_twin(path)
