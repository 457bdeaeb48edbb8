"""ONNX Runtime engine: the embedded default, runs everywhere.

Providers are tried in the order TensorRT -> CUDA -> CPU, keeping those this
onnxruntime build offers. A session whose first provider is CUDA or TensorRT
states ``device = "cuda:N"`` (its ``device_id``) and takes CuPy batches by IO
binding: the input is bound from the CuPy array's device pointer, the outputs
are allocated by ONNX Runtime on the device and handed back as CuPy arrays
(copied to the host only when ``run(..., to_host=True)``, the default), so
GPU-generated noise never leaves the device. NumPy batches take the plain
``session.run`` path on any provider.

``streams`` (host batches on a CPU session): a batch is cut into parts run
concurrently by that many single-thread runs of the one session
(``InferenceSession.run`` is thread-safe; its intra-op pool is one per session
and shared by concurrent runs, so streams run with intra-op threads off and
``threads`` is not used): data-parallel across the batch instead of parallel
inside each operator: ONNX Runtime's intra-op threads meet at a barrier
after every operator, and one thread preempted by other work stalls the
others there, while independent single-thread runs only meet once per
batch. Measured on 2 cores with NoduleNet3D (32^3, batches of 64): the bare
engine +2-5%; a campaign with one noise producer beside it 0.90 of its
engine against 0.83 with 2 intra-op threads (issue 17). A campaign on the
host runs its engine inside workers that each take whole batches
(``audit.campaign.run.thread_layout``): there a batch runs unsplit on its
worker's thread (``audit.engines.threads.one_stream``); streams serve the
engine used alone (attacks' queries, a bare benchmark, a campaign's clean
pass where the engine is not run by its workers).
The outputs are each
sample's own, as in one run.

``micro_batch``: single-thread runs take host batches in parts of at most
that many samples (default ``MICRO_BATCH``; 0: the default): a part's
activations stay in cache. Measured on one thread: BodySiteNet2D (256^2)
2,700 images/s in batches of 64, 3,850 in parts of 8; NoduleNet3D (32^3) 495
against 540. Runs on several intra-op threads take the batch whole (their
operators need it to split across threads). A campaign's batch size then only
sets how often the pipeline hands work over, not the engine's cache footprint.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.engines.base import Engine, InputSpec, cuda_device, dims, sha256_file
from audit.engines.threads import in_one_stream
from audit.errors import EngineError, InputError
from kernels._xp import optional_import

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
#: Most samples per part in single-thread runs (``micro_batch`` = 0): measured best on both reference models.
MICRO_BATCH = 8
#: Providers that run a session on a CUDA device (IO binding with device pointers applies).
CUDA_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def check_external_data(path: Path) -> None:
    """Refuse ONNX files whose external-data locations point outside the model's folder."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
        raise EngineError(f"{path}: not a readable ONNX model ({exc.__class__.__name__}: {exc})") from None
    folder = path.resolve().parent
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            target = (folder / location).resolve()
            if folder not in target.parents:
                raise EngineError(f"{path}: tensor '{tensor.name}' keeps external data at '{location}', outside the model's folder")


def available_providers(requested: Sequence[str] | None = None) -> list[str]:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    order = list(requested) if requested else list(PREFERRED_PROVIDERS)
    unknown = [p for p in order if p not in available and p not in PREFERRED_PROVIDERS]
    if unknown:
        raise EngineError(f"providers: {unknown} are not offered by this onnxruntime build; available: {sorted(available)}")
    chosen = [p for p in order if p in available]
    return chosen or ["CPUExecutionProvider"]


class OnnxRuntimeEngine(Engine):
    """An ``onnxruntime.InferenceSession`` behind the Engine interface."""

    backend = "onnxruntime"
    OPTIONS = ("threads", "streams", "micro_batch", "providers", "optimization")

    def __init__(self, path: str | Path, *, providers: Sequence[str] | None = None, threads: int = 0,
                 streams: int = 1, micro_batch: int = 0, optimization: str = "all", session: Any = None) -> None:
        self.threads, self.optimization = int(threads), str(optimization)  # 0 threads: ONNX Runtime's default
        if int(streams) < 1:
            raise EngineError(f"streams: expected a positive integer, got {streams!r}")
        self.streams = int(streams)
        if int(micro_batch) < 0:
            raise EngineError(f"micro_batch: expected 0 (the default, {MICRO_BATCH}) or a positive integer, got {micro_batch!r}")
        self.micro_batch = int(micro_batch) or MICRO_BATCH
        self.intra = 0  # intra-op threads per run (0: ORT's default); set below for sessions opened here
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        import onnxruntime as ort

        path = Path(path)
        if session is None:
            if not path.is_file():
                raise InputError(f"{path}: model file not found")
            check_external_data(path)
            options = ort.SessionOptions()
            # streams: single-thread runs (the session's one intra-op pool would be shared by all of them)
            options.intra_op_num_threads = self.intra = int(threads) if self.streams == 1 else 1
            options.inter_op_num_threads = 1
            levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                      "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
            if optimization not in levels:
                raise EngineError(f"optimization: expected one of {sorted(levels)}, got {optimization!r}")
            options.graph_optimization_level = levels[optimization]
            options.log_severity_level = 3
            # Threads that spin while waiting burn CPU the noise workers need (the campaign runs both on the
            # same cores); measured +21-54% campaign throughput on 2 cores with spinning off (issue 17).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                session = ort.InferenceSession(str(path), sess_options=options, providers=available_providers(providers))
            except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
                raise EngineError(f"{path}: onnxruntime cannot load the model ({exc})") from None
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise EngineError(f"{path}: expected a model with one input, found {[i.name for i in inputs]}")
        inp = inputs[0]
        if inp.type not in _ORT_TYPES or inp.type == "tensor(bool)":  # bool: an output type only (a mask head)
            raise EngineError(f"{path}: input '{inp.name}' has unsupported type {inp.type}")
        meta = dict(session.get_modelmeta().custom_metadata_map)
        super().__init__(InputSpec(inp.name, dims(inp.shape), np.dtype(_ORT_TYPES[inp.type])),
                         tuple(o.name for o in session.get_outputs()), meta, str(path))
        self.session = session
        self.path = path
        self.sha256 = sha256_file(path) if path.is_file() else ""
        self.device = session_device(session)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def single_thread_runs(self) -> bool:
        """A CPU session with single-thread runs (``threads = 1``, or ``streams`` > 1): under ``one_stream`` a batch
        runs on the calling thread alone. Intra-op threads (``threads`` 0 or > 1) would compete between workers."""
        return self.device == "cpu" and self.intra == 1

    def _run(self, batch: Any) -> dict[str, Any]:
        if not isinstance(batch, np.ndarray):
            return self._run_device(batch)  # a CuPy batch: the base class copied it to the host unless on CUDA
        streams = 1 if in_one_stream() else self.streams  # a campaign worker's thread runs its batch alone
        chunks = self._parts(batch, streams)
        streams = min(streams, len(chunks))
        if streams <= 1:
            values = [self._session_run(c) for c in chunks]
        else:
            values = [None] * len(chunks)
            taken = iter(range(len(chunks)))
            lock = threading.Lock()

            def work() -> None:  # a stream: the next part not yet taken, until none is left
                while True:
                    with lock:
                        i = next(taken, None)
                    if i is None:
                        return
                    values[i] = self._session_run(chunks[i])

            pending = [self._executor().submit(work) for _ in range(streams - 1)]
            try:
                work()  # this thread is one of the streams
            finally:  # every part done (or failed) before the batch returns or raises
                for f in pending:
                    f.result()
        if len(values) == 1:
            return dict(zip(self.output_names, values[0]))
        for part, outs in zip(chunks, values):  # a part's outputs must have its samples on axis 0 to be joined
            for name, value in zip(self.output_names, outs):
                if np.ndim(value) == 0 or value.shape[0] != part.shape[0]:
                    raise EngineError(f"{self.source}: output '{name}' has batch size {np.shape(value)[:1]} for a part of "
                                      f"{part.shape[0]} samples: it is not per sample; set streams = 1 and a micro_batch "
                                      "above the batch size so batches run whole, or export it with the batch on axis 0")
        return {name: np.concatenate(parts) for name, parts in zip(self.output_names, zip(*values))}

    def _parts(self, batch: np.ndarray, streams: int) -> list[np.ndarray]:
        """The parts a host batch runs in: whole for a fixed batch size or a multi-thread run of one stream; parts of
        at most ``micro_batch`` for single-thread runs. With ``streams`` > 1 the parts shrink toward the batch's end
        (each about 1 / (2 streams) of what is left; guided self-scheduling), so the streams end the batch about one
        sample apart however other work on the cores slowed them: equal parts left one core idle for half a part per
        batch (lock waits 13-17% of the engine's time on both reference models)."""
        n = batch.shape[0]
        if self.input_spec.shape[0] is not None or n <= 1 or self.device != "cpu":  # a GPU session takes batches whole
            return [batch]
        cap = self.micro_batch if self.intra == 1 else n
        if streams <= 1:
            return [batch] if cap >= n else [batch[i:i + cap] for i in range(0, n, cap)]
        parts, start = [], 0
        while start < n:
            size = min(cap, max(1, -(-(n - start) // (2 * streams))))
            parts.append(batch[start:start + size])
            start += size
        return parts

    def _session_run(self, batch: np.ndarray) -> list[Any]:
        return self.session.run(None, {self.input_spec.name: np.ascontiguousarray(batch)})

    def _executor(self) -> ThreadPoolExecutor:
        """The ``streams - 1`` threads that run a batch's other parts (made on first use, kept with the engine)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.streams - 1, thread_name_prefix="ort-stream")
            return self._pool

    def _run_device(self, batch: Any) -> dict[str, Any]:
        """IO binding: the CuPy batch bound by its device pointer, outputs allocated on the device, as CuPy arrays.

        The batch's stream is synchronised first (ONNX Runtime runs on its own
        stream); the outputs are copied out of ONNX Runtime's buffers into CuPy
        arrays that own their memory before the binding is released.
        """
        cp = optional_import("cupy")
        ordinal = int(self.device.rsplit(":", 1)[-1])
        with cp.cuda.Device(ordinal):
            batch = cp.ascontiguousarray(batch)  # a copy only when strided
            cp.cuda.get_current_stream().synchronize()
            values = self.run_bound(batch.data.ptr, batch.shape, "cuda", ordinal)
            outputs = {name: _cupy_copy(cp, value, ordinal) for name, value in zip(self.output_names, values)}
            # The copies are queued on CuPy's stream; once ``values`` is released ONNX Runtime's arena may hand its
            # memory to the next run on ORT's stream, which is not ordered after CuPy's: finish the copies first.
            cp.cuda.get_current_stream().synchronize()
            return outputs

    def run_bound(self, ptr: int, shape: Sequence[int], device_type: str = "cpu", ordinal: int = 0) -> list[Any]:
        """Run on an input already in memory at ``ptr`` (C-contiguous, the input's dtype) by IO binding; outputs
        allocated by ONNX Runtime on the same device, returned as ``OrtValue``s (``data_ptr``, ``shape``,
        ``numpy()`` for host ones). The device path's binding; on ``"cpu"`` it runs (and is tested) anywhere."""
        binding = self.session.io_binding()
        binding.bind_input(self.input_spec.name, device_type, ordinal, self.input_spec.dtype, list(shape), ptr)
        for name in self.output_names:
            binding.bind_output(name, device_type, ordinal)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return list(binding.get_outputs())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path), "sha256": self.sha256, "providers": self.providers,
                "threads": self.threads, "streams": self.streams, "micro_batch": self.micro_batch,
                "optimization": self.optimization}


def session_device(session: Any) -> str:
    """``"cuda:N"`` when the session's first provider runs on a CUDA device (its ``device_id``), else ``"cpu"``."""
    providers = list(session.get_providers())
    if not providers or providers[0] not in CUDA_PROVIDERS:
        return "cpu"
    options = session.get_provider_options().get(providers[0], {})
    return cuda_device(options.get("device_id", 0) or 0)


def _cupy_copy(cp: Any, value: Any, ordinal: int) -> Any:
    """A CuPy array owning a copy of an ONNX Runtime device ``OrtValue`` (``data_ptr``, ``shape``, ``data_type``)."""
    kind = value.data_type()
    if kind not in _ORT_TYPES:
        raise EngineError(f"output of type {kind} is not supported on the device path")
    dtype = np.dtype(_ORT_TYPES[kind])
    shape = tuple(value.shape())
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    memory = cp.cuda.UnownedMemory(value.data_ptr(), size, value, ordinal)
    view = cp.ndarray(shape, dtype, cp.cuda.MemoryPointer(memory, 0))
    return view.copy()
