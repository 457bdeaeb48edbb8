"""PyTorch engine: for users who hold the module itself (and for gradient attacks' parity checks)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from audit.engines.base import Engine, InputSpec


class TorchEngine(Engine):
    """An ``nn.Module`` in eval mode behind the Engine interface.

    ``input_shape`` uses None for dynamic dimensions, e.g. ``(None, 1, 32, 32, 32)``.
    Outputs are named ``output_names`` in the module's return order.
    """

    backend = "torch"

    def __init__(self, module: Any, input_shape: Sequence[int | None], *, input_name: str = "input",
                 output_names: Sequence[str] = ("output",), metadata: Mapping[str, str] | None = None,
                 device: str = "cpu") -> None:
        import torch

        super().__init__(InputSpec(input_name, tuple(input_shape), np.dtype(np.float32)), tuple(output_names),
                         dict(metadata or {}), f"torch:{type(module).__name__}")
        self.module = module.eval().to(device)
        self.device = torch.device(device)

    def _run(self, batch: Any) -> dict[str, np.ndarray]:
        import torch

        x = torch.from_dlpack(batch) if not isinstance(batch, np.ndarray) else torch.from_numpy(np.ascontiguousarray(batch))
        with torch.inference_mode():
            out = self.module(x.to(self.device))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {name: o.detach().cpu().numpy() for name, o in zip(self.output_names, outs)}
