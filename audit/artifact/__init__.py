"""The artifact under audit: engine + head + preprocessing, opened one way (``open_artifact``).

``AuditedModel`` is what every consumer (campaign, attacks, scan arm, retrain)
holds; ``open_artifact`` is the only place an engine, a head and a
preprocessing are put together from a config entry and the artifact's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from audit.artifact.heads import ACTIVATIONS, TASKS, Decisions, Head, Preprocess, head_from, preprocess_from
from audit.engines import Engine, load_engine
from audit.errors import InputError


@dataclass(frozen=True)
class ModelEntry:
    """Where an artifact is and how to open it (a ``[[model]]`` table): path, name, engine and its options."""

    path: Path
    name: str
    engine: str = "onnxruntime"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class AuditedModel:
    """One artifact under audit: its engine, how to read its outputs, how to feed it."""

    name: str
    engine: Engine
    head: Head
    preprocess: Preprocess

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "engine": self.engine.describe(), "head": self.head.to_dict(),
                "preprocess": {"hu_window": list(self.preprocess.window), "clip": self.preprocess.clip}}

    def decide(self, hu: np.ndarray) -> Decisions:
        return self.decide_input(self.prepare(hu))

    def prepare(self, hu: np.ndarray) -> np.ndarray:
        """HU batch -> the engine's input (window, channel axis, float32)."""
        return self.preprocess(hu, len(self.engine.input_spec.shape))

    def decide_input(self, x: np.ndarray) -> Decisions:
        return self.head.decide(self.engine.run(x), self.name)

    def decide_batched(self, hu: np.ndarray, batch: int) -> Decisions:
        """Decisions for a whole array of HU images, ``batch`` at a time."""
        parts = [self.decide(hu[i : i + batch]) for i in range(0, hu.shape[0], batch)]
        masks = None if parts[0].masks is None else np.concatenate([p.masks for p in parts])
        return Decisions(np.concatenate([p.labels for p in parts]), np.concatenate([p.scores for p in parts]), masks)

    def check_input(self, source: Any) -> None:
        """Data rank and shape must fit the engine's input (after the channel axis the preprocessing adds)."""
        spec = self.engine.input_spec
        data_shape = tuple(source.shape)
        spatial = spec.shape[-len(data_shape):] if len(spec.shape) >= len(data_shape) else ()
        fits = len(spec.shape) in (len(data_shape) + 1, len(data_shape) + 2) and all(
            want is None or want == got for want, got in zip(spatial, data_shape))
        if not fits:
            kind = {2: "2D slices", 3: "3D volumes"}.get(len(data_shape), f"{len(data_shape)}D arrays")
            raise InputError(f"{self.name}: the data are {kind} of shape {data_shape}, but input '{spec.name}' expects "
                             f"{spec.describe_shape()} (batch, [channel,] spatial dims)")


def open_artifact(entry: ModelEntry, head: Mapping[str, Any] | None = None,
                  preprocess: Mapping[str, Any] | None = None) -> AuditedModel:
    """Open ``entry``'s engine and read its head and preprocessing from the metadata, ``head`` / ``preprocess``
    (config overrides) winning."""
    engine = load_engine(entry.path, entry.engine, **dict(entry.options))
    return AuditedModel(entry.name, engine, head_from(engine.metadata, head, str(entry.path)),
                        preprocess_from(engine.metadata, preprocess, str(entry.path)))


def open_path(path: str | Path, name: str | None = None, **options: Any) -> AuditedModel:
    """An ONNX file with its own metadata (no config): the reference models, retrain rounds, tests."""
    path = Path(path)
    return open_artifact(ModelEntry(path, name or path.stem, "onnxruntime", options))


__all__ = ["ACTIVATIONS", "TASKS", "AuditedModel", "Decisions", "Head", "ModelEntry", "Preprocess", "head_from",
           "open_artifact", "open_path", "preprocess_from"]
