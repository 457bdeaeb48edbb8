"""The one Engine interface every backend implements.

An engine reports what it accepts (``input_spec``) and maps a batch to raw
outputs (``run``). The public ``run`` validates the batch against the spec (rank,
fixed dimensions, dtype) and then calls the backend's ``_run``, so every backend
rejects bad data with the same clear message (after Polygraphy's runners).

An engine also states where it computes (``device``: ``"cpu"`` or ``"cuda:N"``)
and the array namespace whose batches it takes without a host copy (``xp``:
NumPy, or CuPy for a CUDA engine where CuPy is installed), so a campaign can
make its noise where the engine runs. ``run`` accepts batches of either
namespace (a CuPy batch given to a host engine is copied to the host) and
returns host (NumPy) outputs unless asked to leave them on the device.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Sequence

import numpy as np

from audit.errors import EngineError, InputError
from kernels._xp import namespace, to_numpy


@dataclass(frozen=True)
class InputSpec:
    """Name, shape (``None`` for a dynamic dimension) and NumPy dtype of an engine's input."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def check(self, batch: Any) -> None:
        """Raise ``InputError`` if ``batch`` (NumPy or CuPy) does not fit this input."""
        shape, dtype = tuple(batch.shape), np.dtype(str(batch.dtype))
        if len(shape) != len(self.shape):
            raise InputError(
                f"input '{self.name}': received a batch of rank {len(shape)} {shape}; expected rank {len(self.shape)} "
                f"{self.describe_shape()} (e.g. 2D slices given to a 3D model?)"
            )
        for axis, (got, want) in enumerate(zip(shape, self.shape)):
            if want is not None and got != want:
                raise InputError(f"input '{self.name}': dimension {axis} is {got}; expected {want} in {self.describe_shape()}")
        if dtype != self.dtype:
            raise InputError(f"input '{self.name}': received dtype {dtype}; expected {self.dtype}")

    def describe_shape(self) -> str:
        return "(" + ", ".join("?" if d is None else str(d) for d in self.shape) + ")"


@dataclass
class Engine:
    """Base class: subclasses set the fields and implement ``_run``."""

    input_spec: InputSpec
    output_names: tuple[str, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    #: Short backend name recorded in reports.
    backend = "base"
    #: Config keys of ``[[model]]`` this backend takes (passed to ``open``).
    OPTIONS: tuple[str, ...] = ()
    #: Where the engine computes: ``"cpu"`` or ``"cuda:N"`` (set per instance by CUDA-capable backends).
    device = "cpu"

    @property
    def xp(self) -> ModuleType:
        """The array namespace of batches this engine takes without a host copy: CuPy on a CUDA device where CuPy
        imports, NumPy otherwise. A campaign makes its noise in it (``kernels.stationary.noise_plan(..., xp=...)``)."""
        return device_namespace(self.device)

    @property
    def single_thread_runs(self) -> bool:
        """Whether a run made inside ``audit.engines.threads.one_stream`` computes on its calling thread alone (or
        elsewhere, as a served model does), so several campaign workers may each run this engine at once on their own
        batches (``audit.campaign.run.engines_in_workers``). False unless a backend says so: its runs then stay on
        the campaign's main thread."""
        return False

    @classmethod
    def open(cls, path: Path, **options: Any) -> "Engine":
        """Open the artifact at ``path`` (the registry's entry point)."""
        return cls(path, **options)

    def run(self, batch: Any, *, to_host: bool = True) -> dict[str, Any]:
        """Raw outputs for ``batch`` (NumPy, or CuPy): a dict output name -> array with the batch on axis 0.

        Outputs are NumPy arrays; with ``to_host=False`` an engine on a CUDA
        device may leave them there as CuPy arrays (host engines return NumPy
        either way). A CuPy batch given to an engine whose ``xp`` is NumPy is
        copied to the host first.
        """
        self.input_spec.check(batch)
        if not isinstance(batch, np.ndarray) and self.xp is np:
            batch = to_numpy(batch)
        outputs = self._run(batch)
        for name, value in outputs.items():
            if tuple(value.shape[:1]) != tuple(batch.shape[:1]):
                raise EngineError(f"{self.source}: output '{name}' has batch size {value.shape[:1]}, expected {batch.shape[0]}")
        if to_host:
            outputs = {name: to_numpy(value) for name, value in outputs.items()}
        return outputs

    def _run(self, batch: Any) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What a report records about the engine."""
        return {"backend": self.backend, "source": self.source, "input": self.input_spec.name,
                "input_shape": list(self.input_spec.shape), "outputs": list(self.output_names)}


def device_namespace(device: str) -> ModuleType:
    """CuPy for a ``"cuda..."`` device when CuPy imports, else NumPy: the namespace a batch for ``device`` is best made in."""
    if not str(device).startswith("cuda"):
        return np
    try:
        return namespace("cupy")
    except Exception:  # noqa: BLE001 - CuPy missing or unusable: the engine copies host batches itself
        return np


def cuda_device(ordinal: Any = 0) -> str:
    """``"cuda:N"`` for a device ordinal (an int or a numeric string)."""
    return f"cuda:{int(ordinal)}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def pick_output(outputs: Mapping[str, np.ndarray], name: str | None, source: str) -> np.ndarray:
    """The output called ``name``, or the only/first output when ``name`` is None."""
    if name is None:
        return next(iter(outputs.values()))
    if name not in outputs:
        raise InputError(f"{source}: no output named '{name}'; outputs are {sorted(outputs)}")
    return outputs[name]


def dims(shape: Sequence[Any]) -> tuple[int | None, ...]:
    """Normalise symbolic/unknown dimensions to None."""
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
