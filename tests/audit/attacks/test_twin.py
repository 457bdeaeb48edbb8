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


REDUCE_18 = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum",
             "ReduceLogSumExp", "ReduceProd")


def _reduce18_model(path, op, axes, keepdims, *, computed_axes=False):
    """input (b, 1, 4, 4) -> Exp(x) (positive, so LogSum and Prod are defined) -> op over ``axes`` (an input)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = []
    nodes = [helper.make_node("Exp", ["input"], ["pos"])]
    if computed_axes:  # axes from the input's shape: not a constant
        nodes += [helper.make_node("Shape", ["input"], ["shp"], start=2, end=3),
                  helper.make_node("Sub", ["shp", "two"], ["axes"])]
        inits.append(helper.make_tensor("two", TensorProto.INT64, [1], [2]))
    else:
        inits.append(helper.make_tensor("axes", TensorProto.INT64, [len(axes)], axes))
    nodes.append(helper.make_node(op, ["pos", "axes"], ["y"], keepdims=keepdims))
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("op", REDUCE_18)
@pytest.mark.parametrize("axes,keepdims", [([2, 3], 0), ([-1], 1), ([1, 3], 1)])
def test_opset18_reduce_ops_convert_with_parity_and_gradients(tmp_path, op, axes, keepdims):
    """torch's exporter at opset 18 gives Reduce* their axes as an input; onnx2torch 1.5 has no converter for that
    form, ours matches ONNX Runtime (the twin's parity check) and passes gradients to the input."""
    import onnxruntime as ort

    path = _reduce18_model(tmp_path / f"{op}.onnx", op, axes, keepdims)
    x = np.random.default_rng(0).normal(0, 0.3, (5, 1, 4, 4)).astype(np.float32)
    twin = torch_twin(path, parity_inputs=x)  # raises if any output differs by more than atol + rtol |ref|
    assert twin.parity_inputs >= len(x)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    xt = torch.from_numpy(x).requires_grad_(True)
    (out,) = twin(xt)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), xt)
    assert float(g.abs().sum()) > 0


def test_opset18_reduce_with_computed_axes_is_refused_naming_it(tmp_path):
    path = _reduce18_model(tmp_path / "computed.onnx", "ReduceMean", [], 1, computed_axes=True)
    with pytest.raises(EngineError, match=r"ReduceMean \(opset 18\) with computed, not constant, axes"):
        torch_twin(path)
