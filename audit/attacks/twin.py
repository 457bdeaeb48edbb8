"""The differentiable twin of a deployed artifact: the user's torch module, or the ONNX file converted to torch.

Gradient attacks need autograd; the deployed artifact is an ONNX file (or a
TensorRT engine built from one). ``torch_twin`` takes the torch module when the
user has it, otherwise converts the ONNX graph with onnx2torch, and in both
cases checks parity against ONNX Runtime on real inputs before any attack runs.
A model it cannot mirror is refused with an ``EngineError`` that names the
unsupported op (or the output and size of the parity gap); an attack on a twin
that disagrees with the artifact would measure the wrong model.

Perturbations found on the twin are never trusted on their own: every one is
re-run through the deployed engine (``audit.attacks.base.run_attack``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.attacks import onnx2torch_ext
from audit.errors import EngineError, InputError

#: Parity tolerance between the twin and ONNX Runtime: |a - b| <= atol + rtol |b| on every output element.
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-3


@dataclass
class Twin:
    """A torch module (eval mode, parameters frozen) that computes what the deployed artifact computes.

    ``origin`` is ``"torch module"`` or ``"onnx2torch"``; ``parity_max_abs_diff``
    the largest output difference to ONNX Runtime measured on ``parity_inputs``
    inputs (None when no ONNX file was given to compare with).
    """

    module: Any
    output_names: tuple[str, ...]
    origin: str
    parity_max_abs_diff: float | None = None
    parity_inputs: int = 0

    def __call__(self, x: Any) -> tuple[Any, ...]:
        out = self.module(x)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def describe(self) -> dict[str, Any]:
        return {"origin": self.origin, "outputs": list(self.output_names),
                "parity_max_abs_diff": self.parity_max_abs_diff, "parity_inputs": self.parity_inputs}


def unsupported_ops(model: Any) -> list[str]:
    """``op (domain, opset N)`` for every node type of an ONNX ``ModelProto`` that onnx2torch has no converter for."""
    from onnx2torch.node_converters.registry import get_converter

    onnx2torch_ext.register()
    opsets = {o.domain or "": o.version for o in model.opset_import}
    missing: list[str] = []
    for node in _all_nodes(model.graph):
        domain = node.domain or ""
        label = f"{node.op_type} (domain '{domain or 'ai.onnx'}', opset {opsets.get(domain, '?')})"
        if label in missing:
            continue
        try:
            get_converter(node.op_type, opsets.get(domain, 1), domain)
        except NotImplementedError:
            missing.append(label)
    return missing


def _all_nodes(graph: Any):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and len(attr.g.node):
                yield from _all_nodes(attr.g)


def _relax_reshape_allowzero(model: Any) -> int:
    """Set ``allowzero=0`` on Reshape nodes whose target shape is a constant with no zero (same meaning).

    ``torch.onnx.export`` (dynamo) writes ``allowzero=1``, which onnx2torch
    refuses; it only matters when the shape holds a 0, so where the shape is an
    initializer without one, the flag changes nothing. Returns how many were relaxed.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    consts = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = a.t
    relaxed = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        for a in node.attribute:
            if a.name == "allowzero" and a.i == 1:
                tensor = inits.get(node.input[1]) or consts.get(node.input[1])
                if tensor is not None and not np.any(numpy_helper.to_array(tensor) == 0):
                    a.i = 0
                    relaxed += 1
    return relaxed


def convert_onnx(path: str | Path) -> Any:
    """onnx2torch conversion of the ONNX file at ``path`` (eval mode); ``EngineError`` naming what it lacks."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
        raise EngineError(f"{path}: not a readable ONNX model ({exc.__class__.__name__}: {exc})") from None
    missing = unsupported_ops(model)
    if missing:
        raise EngineError(f"{path}: cannot build a torch twin for gradient attacks: onnx2torch has no converter for "
                          f"op {', '.join(missing)}; pass the torch module instead (model.checkpoint of an audit attack "
                          "config) or re-export without that op")
    _relax_reshape_allowzero(model)
    import warnings

    from onnx2torch import convert

    # onnx2torch's Slice indexes with a list (deprecated in torch): harmless, but it would print on every forward
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                            category=UserWarning, module="onnx2torch")

    try:
        module = convert(model)
    except NotImplementedError as exc:
        raise EngineError(f"{path}: cannot build a torch twin for gradient attacks: onnx2torch refuses a node "
                          f"({exc}); pass the torch module instead (model.checkpoint of an audit attack config)") from None
    return module.eval()


def torch_twin(model: str | Path | Any, *, onnx_path: str | Path | None = None, parity_inputs: np.ndarray | None = None,
               input_shape: Sequence[int] | None = None, atol: float = PARITY_ATOL, rtol: float = PARITY_RTOL,
               seed: int = 0) -> Twin:
    """The twin of an artifact: ``model`` is a torch ``nn.Module`` or the path of an ONNX file.

    When an ONNX file is known (``model`` itself or ``onnx_path``), the twin's
    outputs are compared with ONNX Runtime's on ``parity_inputs`` (model inputs,
    (N, C, ...) float32) plus 4 seeded uniform [0, 1] inputs of ``input_shape``
    (the full input shape without the batch axis); ``EngineError`` names the
    output and the gap if any element differs by more than ``atol + rtol |ref|``.
    """
    import torch

    if isinstance(model, (str, Path)):
        onnx_path = Path(model)
        module, origin = convert_onnx(onnx_path), "onnx2torch"
    elif isinstance(model, torch.nn.Module):
        module, origin = model.eval(), "torch module"
    else:
        raise InputError(f"model: expected an ONNX path or a torch.nn.Module, got {type(model).__name__}")
    for p in module.parameters():
        p.requires_grad_(False)
    names: tuple[str, ...] = ("output",)
    twin = Twin(module, names, origin)
    if onnx_path is None:
        return twin
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    twin.output_names = tuple(o.name for o in sess.get_outputs())
    inp = sess.get_inputs()[0]
    batches = []
    if parity_inputs is not None and len(parity_inputs):
        batches.append(np.ascontiguousarray(parity_inputs, dtype=np.float32))
    shape = tuple(input_shape) if input_shape is not None else tuple(inp.shape[1:])
    if all(isinstance(d, int) and d > 0 for d in shape):
        rng = np.random.default_rng(seed)
        batches.append(rng.random((4, *shape), dtype=np.float32))
    if not batches:
        raise InputError(f"{onnx_path}: input shape {inp.shape} has dynamic dimensions; give parity_inputs to check the twin")
    worst, count = 0.0, 0
    for x in batches:
        for start in range(0, len(x), 16):
            b = x[start : start + 16]
            ref = sess.run(None, {inp.name: b})
            with torch.no_grad():
                got = twin(torch.from_numpy(b))
            if len(got) != len(ref):
                raise EngineError(f"{onnx_path}: the torch twin has {len(got)} outputs, ONNX Runtime {len(ref)}")
            for name, g, r in zip(twin.output_names, got, ref):
                g = g.detach().numpy().astype(np.float64)
                r = np.asarray(r, np.float64)
                if g.shape != r.shape:
                    raise EngineError(f"{onnx_path}: output '{name}' has shape {g.shape} in the torch twin, {r.shape} in "
                                      "ONNX Runtime")
                gap = np.abs(g - r)
                worst = max(worst, float(gap.max(initial=0.0)))
                if np.any(gap > atol + rtol * np.abs(r)):
                    raise EngineError(f"{onnx_path}: the torch twin ({origin}) differs from ONNX Runtime by "
                                      f"{float(gap.max()):.3g} on output '{name}'; expected <= {atol:g} + {rtol:g}|ref| "
                                      "(attacks on it would not describe the deployed model)")
            count += len(b)
    twin.parity_max_abs_diff, twin.parity_inputs = worst, count
    return twin
