"""PyTorch engine: a module a user holds, or a ``torch.export`` program file opened by name (``engine = "torch"``).

A program file (``.pt2``, written by ``save_program``) is loaded with
``torch.export.load``: a graph and its tensors, no pickled Python objects, so
opening a user's file runs none of its code. The model's ``audit.*`` metadata
(task, class names, HU window, ...) travels inside it as an extra file, as it
does in an ONNX artifact's metadata.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from audit.engines.base import Engine, InputSpec, cuda_device, sha256_file
from audit.engines.threads import in_one_stream, pin_torch_threads, torch_threads_during
from audit.errors import EngineError

#: Name of the extra file holding the ``audit.*`` metadata inside a program file.
METADATA_FILE = "audit_metadata.json"


class TorchEngine(Engine):
    """An ``nn.Module`` in eval mode behind the Engine interface.

    ``input_shape`` uses None for dynamic dimensions, e.g. ``(None, 1, 32, 32, 32)``.
    Outputs are named ``output_names`` in the module's return order.
    """

    backend = "torch"
    OPTIONS = ("device",)

    def __init__(self, module: Any, input_shape: Sequence[int | None], *, input_name: str = "input",
                 output_names: Sequence[str] = ("output",), metadata: Mapping[str, str] | None = None,
                 device: str = "cpu", source: str | None = None, eval_mode: bool = True) -> None:
        import torch

        super().__init__(InputSpec(input_name, tuple(input_shape), np.dtype(np.float32)), tuple(output_names),
                         dict(metadata or {}), source or f"torch:{type(module).__name__}")
        self.torch_device = torch.device(device)
        self.module = (module.eval() if eval_mode else module).to(self.torch_device)
        #: ``"cpu"`` or ``"cuda:N"`` (the Engine contract; ``torch_device`` is torch's own).
        # ``"cuda"`` without an index is torch's current device, not necessarily 0.
        self.device = (cuda_device(torch.cuda.current_device() if self.torch_device.index is None else self.torch_device.index)
                       if self.torch_device.type == "cuda" else self.torch_device.type)
        self.path: Path | None = None

    @classmethod
    def open(cls, path: Path, *, device: str = "cpu") -> "TorchEngine":
        """A ``torch.export`` program file (see ``save_program``)."""
        import torch

        extra = {METADATA_FILE: ""}
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a file that is not a program
            raise EngineError(f"{path}: not a torch.export program file ({exc.__class__.__name__})") from None
        try:
            metadata = json.loads(extra[METADATA_FILE] or "{}")
        except ValueError:
            raise EngineError(f"{path}: unreadable {METADATA_FILE} inside the program file") from None
        names = list(program.graph_signature.user_inputs)
        nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        if len(names) != 1 or names[0] not in nodes:
            raise EngineError(f"{path}: expected a program with one tensor input, got {len(names)}")
        shape = tuple(d if isinstance(d, int) else None for d in nodes[names[0]].meta["val"].shape)
        outputs = json.loads(metadata.get("audit.outputs", "[]")) or [f"output{i}" for i in range(len(program.graph_signature.user_outputs))]
        engine = cls(program.module(), shape, input_name=names[0], output_names=outputs, metadata=metadata, device=device,
                     source=str(path), eval_mode=False)
        engine.path = Path(path)
        return engine

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.path is not None:
            out.update(path=str(self.path), sha256=sha256_file(self.path), providers=[str(self.torch_device)])
        return out

    @property
    def single_thread_runs(self) -> bool:
        """A CPU module: a run inside a campaign worker (``one_stream``) uses one torch thread."""
        return self.torch_device.type == "cpu"

    def _run(self, batch: Any) -> dict[str, np.ndarray]:
        import torch

        x = torch.from_dlpack(batch) if not isinstance(batch, np.ndarray) else torch.from_numpy(np.ascontiguousarray(batch))
        if self.torch_device.type == "cpu":
            # torch's thread count is one per process: a campaign worker's run (one_stream) pins it to 1 and leaves it
            # there (idempotent, so workers agree; the campaign restores it when its workers stop), where saving and
            # restoring it per run would race between workers
            with (contextlib.nullcontext(pin_torch_threads(1)) if in_one_stream() else torch_threads_during()), \
                    torch.inference_mode():
                out = self.module(x)
        else:
            with torch.inference_mode():
                out = self.module(x.to(self.torch_device))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if self.xp is not np:  # CUDA module, CuPy present: outputs stay on the device (zero-copy DLPack)
            return {name: self.xp.from_dlpack(o.detach().contiguous()) for name, o in zip(self.output_names, outs)}
        return {name: o.detach().cpu().numpy() for name, o in zip(self.output_names, outs)}


def save_program(module: Any, example: np.ndarray, path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Export ``module`` (eval mode) with a dynamic batch to a ``torch.export`` program file with its metadata."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module.eval(), (x,), dynamic_shapes=({0: batch},))
    path = Path(path)
    torch.export.save(program, str(path), extra_files={METADATA_FILE: json.dumps(dict(metadata or {}))})
    return path
