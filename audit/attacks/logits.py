"""Attack the pre-activation when the deployed output is a sigmoid or softmax.

A confident model's float32 sigmoid rounds to exactly 1.0 (z > ~17), and its
gradient ``p (1 - p)`` to exactly 0: a loss on the probability sees a flat
model and PGD finds nothing, although a modest change of the input may flip
it. The twin's graph (onnx2torch's, or ``torch.fx`` of the user's module) is
searched from the head's output back through shape-only ops (unsqueeze,
reshape, flatten, indexing) to a Sigmoid or a Softmax over the class axis;
when found, the pre-activation, with the same shape ops replayed, becomes an
extra output, and the losses read it as a logit (``log_sigmoid`` /
``log_softmax``: exact where the probability has saturated). Decisions still
come from the real outputs. A graph that cannot be traced, or whose output is
not such an activation, is attacked on its output as before.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
from torch import fx, nn

_SHAPE_FUNCTIONS = {operator.getitem, torch.unsqueeze, torch.squeeze, torch.reshape, torch.flatten}
_SHAPE_METHODS = {"unsqueeze", "squeeze", "reshape", "view", "flatten", "contiguous"}
_SHAPE_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity)
#: onnx2torch's shape-only modules (by class name: they are not part of its public API)
_ONNX2TORCH_SHAPE = {"OnnxUnsqueezeStaticAxes", "OnnxUnsqueezeDynamicAxes", "OnnxSqueezeStaticAxes",
                     "OnnxSqueezeDynamicAxes", "OnnxReshape", "OnnxFlatten"}


def _module(gm: fx.GraphModule, node: fx.Node) -> Any:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_shape_op(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _SHAPE_FUNCTIONS
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    m = _module(gm, node)
    return isinstance(m, _SHAPE_MODULES) or type(m).__name__ in _ONNX2TORCH_SHAPE


def _softmax_dim(node: fx.Node, module: Any) -> Any:
    if isinstance(module, nn.Softmax):
        return module.dim
    return node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)


def _activation(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """"sigmoid" or "softmax" (over axis 1 or -1) if ``node`` is one, else None."""
    m = _module(gm, node)
    if isinstance(m, nn.Sigmoid) or (node.op == "call_function" and node.target in (torch.sigmoid, nn.functional.sigmoid)) \
            or (node.op == "call_method" and node.target == "sigmoid"):
        return "sigmoid"
    softmax = isinstance(m, nn.Softmax) or (node.op == "call_function" and node.target in (
        torch.softmax, nn.functional.softmax)) or (node.op == "call_method" and node.target == "softmax")
    if softmax and _softmax_dim(node, m) in (1, -1):
        return "softmax"
    return None


def expose_logit(module: nn.Module, output_index: int) -> tuple[nn.Module, str, int] | None:
    """(a module returning the original outputs plus the pre-activation of output ``output_index``, "sigmoid" |
    "softmax", the index of that extra output), or None when that output is not a sigmoid/softmax the graph shows
    (or the module cannot be traced)."""
    try:
        gm = copy.deepcopy(module) if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)
    except Exception:  # noqa: BLE001 - any tracing failure means: attack the output as it is
        return None
    out = next(n for n in gm.graph.nodes if n.op == "output")
    result = out.args[0]
    outs = list(result) if isinstance(result, (tuple, list)) else [result]
    if not 0 <= output_index < len(outs) or not isinstance(outs[output_index], fx.Node):
        return None
    chain, node = [], outs[output_index]
    while _is_shape_op(gm, node) and node.args and isinstance(node.args[0], fx.Node):
        chain.append(node)
        node = node.args[0]
    kind = _activation(gm, node)
    if kind is None or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    logit = node.args[0]
    with gm.graph.inserting_before(out):
        for shape_op in reversed(chain):  # the same reshapes, applied to the pre-activation
            prev = shape_op.args[0]
            logit = gm.graph.node_copy(shape_op, lambda a, prev=prev, new=logit: new if a is prev else a)
    out.args = (tuple(outs) + (logit,),)
    gm.graph.lint()
    gm.recompile()
    return gm.eval(), kind, len(outs)
