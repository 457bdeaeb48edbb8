"""INT8 quantisation of an ONNX model with ONNX Runtime's own tools (static, QDQ, CPU).

Used to audit a quantised artifact against its FP32 original on the same draws:
tensor-level tools compare numbers on random inputs; the audit compares the
*decisions* on real images under noise, and ``audit attack`` attacks the INT8
engine itself (black-box attacks; onnx2torch has no twin of a QDQ graph) and
reports where its decisions differ from the FP32 original's.

The quantised file names its original in its metadata (``audit.quantized_from``,
relative to the quantised file's folder when it can be, and its SHA-256), so
``fp32_reference`` finds and checks it without a config key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from audit.artifact import AuditedModel
from audit.engines import load_engine
from audit.engines.base import sha256_file
from audit.errors import EngineError
from audit.io import atomic_path

#: Metadata keys a quantised artifact carries: how it was made, its FP32 original's path and SHA-256.
QUANTIZED, FROM, FROM_SHA = "audit.quantized", "audit.quantized_from", "audit.quantized_from_sha256"


def quantize_int8(source: str | Path, target: str | Path, calibration: np.ndarray, *, per_channel: bool = True) -> Path:
    """Write an INT8 (QDQ) copy of ``source`` calibrated on model inputs ``calibration`` (N, ...) float32.

    Metadata (``audit.*`` keys) is carried over so the quantised artifact stays self-describing, plus
    ``audit.quantized`` and the original's path (``audit.quantized_from``, relative to ``target``'s folder when
    ``source`` lies below it) and SHA-256.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    source, target = Path(source), Path(target)
    model = onnx.load(str(source))
    input_name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict] = ({input_name: calibration[i : i + 8]} for i in range(0, len(calibration), 8))

        def get_next(self):
            return next(self._it, None)

    with atomic_path(target) as tmp:
        try:
            quantize_static(str(source), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        except Exception as exc:  # noqa: BLE001 - ORT's quantiser raises many types
            raise EngineError(f"{source}: INT8 quantisation failed ({exc})") from None
        q = onnx.load(str(tmp))
        del q.metadata_props[:]
        for prop in model.metadata_props:
            q.metadata_props.append(prop)
        try:
            origin = str(source.resolve().relative_to(target.resolve().parent))
        except ValueError:
            origin = str(source.resolve())
        for key, value in ((QUANTIZED, "int8-qdq-static"), (FROM, origin), (FROM_SHA, sha256_file(source))):
            q.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        onnx.save(q, str(tmp))
    return target


def fp32_reference(model: AuditedModel) -> tuple[AuditedModel | None, dict[str, Any]]:
    """The FP32 original of a quantised ``model`` (its ``audit.quantized_from``), opened with ``model``'s head and
    preprocessing, and what was found: ``(None, {...reason})`` for an artifact that is not quantised or whose
    original is missing or changed (SHA-256), so the report can say why there is no comparison."""
    meta = model.engine.metadata
    if QUANTIZED not in meta:
        return None, {}
    info: dict[str, Any] = {"quantized": meta[QUANTIZED], "path": meta.get(FROM)}
    own = getattr(model.engine, "path", None)
    if not meta.get(FROM) or own is None:
        return None, {**info, "reason": "the quantised artifact does not name its FP32 original"}
    path = Path(own).parent / meta[FROM]
    if not path.is_file():
        return None, {**info, "reason": f"FP32 original not found at {path}"}
    if meta.get(FROM_SHA) and sha256_file(path) != meta[FROM_SHA]:
        return None, {**info, "reason": f"{path} changed since it was quantised (SHA-256 differs)"}
    reference = AuditedModel(f"{path.stem} (FP32 original)", load_engine(path), model.head, model.preprocess)
    return reference, {**info, "path": str(path)}
