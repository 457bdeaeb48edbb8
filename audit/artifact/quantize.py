"""INT8 quantisation of an ONNX model with ONNX Runtime's own tools (static, QDQ, CPU).

Used to audit a quantised artifact against its FP32 original on the same draws:
tensor-level tools compare numbers on random inputs; the audit compares the
*decisions* on real images under noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from audit.io import atomic_path
from audit.errors import EngineError


def quantize_int8(source: str | Path, target: str | Path, calibration: np.ndarray, *, per_channel: bool = True) -> Path:
    """Write an INT8 (QDQ) copy of ``source`` calibrated on model inputs ``calibration`` (N, ...) float32.

    Metadata (``audit.*`` keys) is carried over so the quantised artifact stays self-describing.
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
        q.metadata_props.append(onnx.StringStringEntryProto(key="audit.quantized", value="int8-qdq-static"))
        onnx.save(q, str(tmp))
    return target
