"""Converters onnx2torch (1.5) lacks, added through its public ``add_converter`` registry.

Opset 18 moved the ``axes`` of the Reduce* ops (all but ReduceSum, which moved
in 13) from an attribute to an input. torch's exporter at opset 18 emits that
form for every ``x.mean(dim)``, so without these converters a twin of most
modern exports is refused. Axes must be a constant (an initializer or a
Constant node); a computed axes tensor is refused with the op named, as for
any other missing converter. Registered once, and only where onnx2torch has no
converter of its own for that op and version.
"""

from __future__ import annotations

from typing import Sequence

import torch

REDUCE_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
             "ReduceProd", "ReduceSumSquare")
_registered = False


def _reduce(op: str, x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    if op == "ReduceMean":
        return x.mean(dim=dims, keepdim=keep)
    if op == "ReduceMax":
        return x.amax(dim=dims, keepdim=keep)
    if op == "ReduceMin":
        return x.amin(dim=dims, keepdim=keep)
    if op == "ReduceL1":
        return x.abs().sum(dim=dims, keepdim=keep)
    if op == "ReduceL2":
        return (x * x).sum(dim=dims, keepdim=keep).sqrt()
    if op == "ReduceSumSquare":
        return (x * x).sum(dim=dims, keepdim=keep)
    if op == "ReduceLogSum":
        return x.sum(dim=dims, keepdim=keep).log()
    if op == "ReduceLogSumExp":
        return torch.logsumexp(x, dim=dims, keepdim=keep)
    if op == "ReduceProd":
        for d in sorted(dims, reverse=True):  # one axis at a time, from the last, so the indices stay valid
            x = x.prod(dim=d, keepdim=keep)
        return x
    raise NotImplementedError(op)


def _module_class():
    from onnx2torch.utils.common import OnnxToTorchModule

    class OnnxReduceConstAxes(torch.nn.Module, OnnxToTorchModule):
        """A Reduce* node of opset 18 with constant axes (empty: all axes, or identity with noop_with_empty_axes)."""

        def __init__(self, op: str, axes: Sequence[int], keepdims: bool, noop: bool) -> None:
            super().__init__()
            self.op, self.axes, self.keepdims, self.noop = op, [int(a) for a in axes], keepdims, noop

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.axes and self.noop:
                return x
            dims = [a % x.dim() for a in self.axes] if self.axes else list(range(x.dim()))
            return _reduce(self.op, x, dims, self.keepdims)

    return OnnxReduceConstAxes


def register() -> None:
    """Add the opset-18 Reduce* converters to onnx2torch's registry (idempotent)."""
    global _registered
    if _registered:
        return
    from onnx2torch.node_converters.registry import add_converter, get_converter
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    module_class = _module_class()

    def convert(node, graph):
        axes: list[int] = []
        if len(node.input_values) > 1 and node.input_values[1]:
            try:
                axes = [int(a) for a in get_const_value(node.input_values[1], graph).reshape(-1).tolist()]
            except KeyError:
                raise NotImplementedError(f"{node.operation_type} (opset 18) with computed, not constant, axes") from None
        keep = bool(node.attributes.get("keepdims", 1))
        noop = bool(node.attributes.get("noop_with_empty_axes", 0))
        return OperationConverterResult(torch_module=module_class(node.operation_type, axes, keep, noop),
                                        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],),
                                                                 outputs=node.output_values))

    for op in REDUCE_18:
        try:
            get_converter(op, 18)
        except NotImplementedError:
            add_converter(operation_type=op, version=18)(convert)
    _registered = True
