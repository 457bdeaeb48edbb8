"""A planted model: a real ONNX graph whose decision is a threshold on the mean of a region.

Under Gaussian noise the region mean moves by a Gaussian of known sigma, so
the flip probability of every sample is known in closed form.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

WINDOW = (-1000.0, 1000.0)  # HU -> [0, 1], wide enough that nothing clips


def planted_model(path: Path, shape: tuple[int, ...], region: tuple[slice, ...], threshold_hu: float, *,
                  gain: float = 400.0, task: str = "binary") -> Path:
    """Write an ONNX model: p = sigmoid(gain * (mean_R(x) - t)), x = (hu - lo) / (hi - lo), input (B, 1, *shape)."""
    lo, hi = WINDOW
    t = (threshold_hu - lo) / (hi - lo)
    nd = len(shape)
    starts = [0, 0] + [s.start for s in region]
    ends = [2**31 - 1, 2**31 - 1] + [s.stop for s in region]
    axes = list(range(nd + 2))
    inits = [
        helper.make_tensor("starts", TensorProto.INT64, [len(starts)], starts),
        helper.make_tensor("ends", TensorProto.INT64, [len(ends)], ends),
        helper.make_tensor("axes", TensorProto.INT64, [len(axes)], axes),
        helper.make_tensor("t", TensorProto.FLOAT, [], [t]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [gain]),
        helper.make_tensor("reduce_axes", TensorProto.INT64, [nd + 1], list(range(1, nd + 2))),
    ]
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["roi"]),
        helper.make_node("ReduceMean", ["roi", "reduce_axes"], ["m"], keepdims=1),
        helper.make_node("Sub", ["m", "t"], ["d"]),
        helper.make_node("Mul", ["d", "gain"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p"]),
        helper.make_node("Reshape", ["p", "out_shape"], ["probability"]),
    ]
    inits.append(helper.make_tensor("out_shape", TensorProto.INT64, [2], [-1, 1]))
    graph = helper.make_graph(
        nodes, "planted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, *shape])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in {"audit.task": task, "audit.class_names": json.dumps(["below", "above"]), "audit.threshold": "0.5",
                       "audit.hu_window": json.dumps(list(WINDOW))}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def region_means(images: np.ndarray, region: tuple[slice, ...]) -> np.ndarray:
    return images[(slice(None), *region)].reshape(images.shape[0], -1).mean(axis=1)
