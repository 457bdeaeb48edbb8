"""Native TensorRT engine (GPU extra): builds a plan from ONNX and runs on device buffers.

The plan is built with one optimisation profile over the dynamic batch
(1 .. ``max_batch``, optimum ``opt_batch``) in FP32, FP16 or INT8 and cached on disk
under a key of the model's sha256, the GPU name, the TensorRT version, the
precision and the batch range, so a second audit reuses it. INT8 is TensorRT's
explicit quantization: the ONNX file must carry Q/DQ nodes (an artifact from
``audit.artifact.quantize.quantize_int8``); their scales are used, no calibrator
runs, and layers without Q/DQ may run in FP16. Inputs may be
CuPy arrays (noise generated on the GPU never leaves it) or NumPy arrays
(copied to the device): the batch's device pointer is set as the input's
tensor address (``IExecutionContext.set_tensor_address``), the outputs are
CuPy arrays whose pointers are set likewise, and ``execute_async_v3`` runs on
the engine's stream after it waits on the stream the batch was made on.
``run(..., to_host=False)`` leaves the outputs on the device. The engine
states ``device = "cuda:N"`` and ``xp`` = CuPy.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from audit.io import atomic_path
from audit.engines.base import Engine, InputSpec, cuda_device, dims, sha256_file
from audit.errors import EngineError, InputError
from kernels._xp import optional_import

PRECISIONS = ("fp32", "fp16", "int8")


def plan_cache_dir() -> Path:
    return Path(os.environ.get("AUDIT_CACHE_DIR", Path.home() / ".cache" / "ct-robustness-audit")) / "trt-plans"


class TensorRTEngine(Engine):
    """A TensorRT execution context behind the Engine interface."""

    backend = "tensorrt"
    OPTIONS = ("precision", "max_batch", "opt_batch", "workspace_gib")

    def __init__(self, path: str | Path, *, precision: str = "fp32", max_batch: int = 256, opt_batch: int = 64,
                 workspace_gib: float = 4.0) -> None:
        trt = optional_import("tensorrt")
        cupy = optional_import("cupy")
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: model file not found")
        if precision not in PRECISIONS:
            raise EngineError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        self._trt, self._cp = trt, cupy
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.sha256 = sha256_file(path)
        gpu = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
        key = hashlib.sha256(f"{self.sha256}|{gpu}|{trt.__version__}|{precision}|{max_batch}|{opt_batch}".encode()).hexdigest()[:24]
        plan = plan_cache_dir() / f"{path.stem}-{key}.plan"
        if not plan.is_file():
            self._build(path, plan, precision, max_batch, opt_batch, workspace_gib)
        # TensorRT: a factory (the runtime) must outlive the objects it creates (the engine); keep it.
        self.runtime = runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise EngineError(f"{plan}: TensorRT could not deserialize the cached plan")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise EngineError(f"{path}: expected one input, found {inputs}")
        name = inputs[0]
        dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        super().__init__(InputSpec(name, dims(self.engine.get_tensor_shape(name)), dtype),
                         tuple(n for n in names if n != name), meta, str(path))
        self.path, self.precision, self.plan, self.max_batch = path, precision, plan, max_batch
        self.device = cuda_device(cupy.cuda.Device().id)
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def _build(self, onnx_path: Path, plan: Path, precision: str, max_batch: int, opt_batch: int, workspace_gib: float) -> None:
        trt = self._trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"{onnx_path}: TensorRT cannot parse the model ({errors})")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            if not any(node.op_type == "QuantizeLinear" for node in _onnx_nodes(onnx_path)):
                raise EngineError(f"{onnx_path}: precision 'int8' needs a Q/DQ-quantised model (explicit quantization; make "
                                  "one with audit.artifact.quantize.quantize_int8), this one has no QuantizeLinear node")
            config.set_flag(trt.BuilderFlag.INT8)
        profile = builder.create_optimization_profile()
        inp = network.get_input(0)
        rest = tuple(inp.shape)[1:]
        if any(d < 0 for d in rest):
            raise EngineError(f"{onnx_path}: only the batch dimension may be dynamic for TensorRT, got {tuple(inp.shape)}")
        profile.set_shape(inp.name, (1, *rest), (min(opt_batch, max_batch), *rest), (max_batch, *rest))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineError(f"{onnx_path}: TensorRT failed to build an engine")
        with atomic_path(plan) as tmp:
            tmp.write_bytes(bytes(serialized))

    def _run(self, batch: Any) -> dict[str, Any]:
        """Device pointers in, CuPy outputs out (the base class copies them to the host unless ``to_host=False``)."""
        cp = self._cp
        if batch.shape[0] > self.max_batch:
            raise InputError(f"input '{self.input_spec.name}': batch {batch.shape[0]} exceeds the engine's max_batch {self.max_batch}")
        with cp.cuda.Device(int(self.device.rsplit(":", 1)[-1])):
            x = cp.ascontiguousarray(cp.asarray(batch))  # no copy for a contiguous CuPy batch on this device
            # The batch was written on the caller's stream; TensorRT reads it on ours.
            self.stream.wait_event(cp.cuda.get_current_stream().record())
            if not self.context.set_input_shape(self.input_spec.name, tuple(x.shape)):
                raise InputError(f"input '{self.input_spec.name}': shape {tuple(x.shape)} is outside the engine's profile")
            self.context.set_tensor_address(self.input_spec.name, x.data.ptr)
            outputs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
                outputs[name] = cp.empty(shape, dtype=dtype)
                self.context.set_tensor_address(name, outputs[name].data.ptr)
            if not self.context.execute_async_v3(self.stream.ptr):
                raise EngineError(f"{self.path}: TensorRT execution failed")
            self.stream.synchronize()  # x must outlive the run; outputs are ready for any stream after this
        return outputs

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path), "sha256": self.sha256, "precision": self.precision,
                "tensorrt": self._trt.__version__, "plan": str(self.plan)}


def _onnx_nodes(path: Path) -> list[Any]:
    """The nodes of an ONNX file's main graph (weights not loaded)."""
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.node)
