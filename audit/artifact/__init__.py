"""The artifact under audit: engine + head + preprocessing, opened one way (``open_artifact``).

``AuditedModel`` is what every consumer (campaign, attacks, scan arm, retrain)
holds; ``open_artifact`` is the only place an engine, a head and a
preprocessing are put together from a config entry and the artifact's metadata.

Whole volumes larger than a model's fixed spatial input (detection and
segmentation of 3D volumes, ``Head.windowed``) run by sliding window
(``audit.artifact.window``): tiles of the model's input size with the head's
``window_overlap`` / ``window_margin`` / ``window_blend``; dense outputs are
blended into the volume's grid (heat maps then peak-extracted once, on the
whole map); candidate lists are shifted to it and each tile keeps only the
candidates in the region it owns (one owner per position, no NMS across tiles:
the list a single full pass gives, whatever the volume's size). Classification and
regression heads, 2D data and data smaller than the input on any axis keep
being refused (``check_input``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from audit.artifact.heads import (ACTIVATIONS, BLENDS, DETECTION_FORMATS, OOD_UNCERTAINTY, TASKS,
                                  WINDOW_OVERLAP_FRACTION, Decisions, Head, Preprocess, head_from, preprocess_from)
from audit.artifact.window import sliding_window_candidates, sliding_window_dense
from audit.engines import Engine, load_engine
from audit.errors import InputError
from kernels._xp import to_numpy

#: Tiles per engine call in a sliding-window run (an engine with a fixed batch size gets its own): a few tiles
#: keep the working memory small and still amortise a call's overhead.
WINDOW_BATCH = 4


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

    def decide(self, hu: np.ndarray, spacing: Any = None) -> Decisions:
        """Decisions of a HU batch. A sliding-window run (volumes larger than the input) prepares each tile as it
        is read, so the whole prepared float32 volume (and its temporaries) never exists: the HU batch may be a
        memory-mapped int16 array."""
        tile = self.window_tile(tuple(np.shape(hu)[1:]))
        if tile is None:
            return self.decide_input(self.prepare(hu), spacing)
        lo = self.preprocess.window[0]  # prepares to 0 (the window's floor), the padding a prepared batch gets
        return self._decide_windowed(hu, tile, spacing, prepare=lambda t: self.preprocess(t, 3), pad_value=lo)

    def prepare(self, hu: np.ndarray) -> np.ndarray:
        """HU batch -> the engine's input (window, channel axis, float32)."""
        return self.preprocess(hu, len(self.engine.input_spec.shape))

    def decide_input(self, x: np.ndarray, spacing: Any = None) -> Decisions:
        """Decisions of a prepared batch; ``spacing`` (mm per spatial axis) for heads that need it (heat-map
        detection) and for sliding-window runs, taken where the data exceed the model's input (module notes)."""
        tile = self.window_tile(tuple(x.shape[2:]))
        if tile is None:
            return self.head.decide(self.engine.run(x), self.name, spacing)
        return self._decide_windowed(to_numpy(x)[:, 0], tile, spacing)

    def decide_batched(self, hu: np.ndarray, batch: int, spacing: Any = None) -> Decisions:
        """Decisions for a whole array of HU images, ``batch`` at a time."""
        return Decisions.concat([self.decide(hu[i : i + batch], spacing) for i in range(0, hu.shape[0], batch)])

    def window_tile(self, data_shape: tuple[int, ...]) -> tuple[int, int, int] | None:
        """The tile of a sliding-window run over volumes of spatial shape ``data_shape``, or None where the model
        takes them whole (or cannot run them: not a windowed head, not 3D, smaller than the input on some axis)."""
        spec = self.engine.input_spec.shape
        if not self.head.windowed() or len(spec) != 5 or len(data_shape) != 3:
            return None
        tile = tuple(want if isinstance(want, int) else got for want, got in zip(spec[2:], data_shape))
        if tile == tuple(data_shape) or any(got < want for want, got in zip(tile, data_shape)):
            return None
        return tile  # type: ignore[return-value]

    def _run_tiles(self, x: np.ndarray) -> Mapping[str, np.ndarray]:
        """The engine on a batch of tiles; a fixed-batch engine gets its batch size (last tile repeated, cut after)."""
        fixed = self.engine.input_spec.shape[0]
        if isinstance(fixed, int) and x.shape[0] < fixed:
            out = self.engine.run(np.concatenate([x, np.repeat(x[-1:], fixed - x.shape[0], axis=0)]))
            return {k: v[: x.shape[0]] for k, v in out.items()}
        return self.engine.run(x)

    def _decide_windowed(self, volumes: Any, tile: tuple[int, int, int], spacing: Any, prepare: Any = None,
                         pad_value: float = 0.0) -> Decisions:
        """Decisions of ``volumes`` (B, Z, Y, X) by sliding window; ``prepare`` (HU tile -> model input) when they
        are in HU, None when already prepared; ``pad_value`` in the volumes' units. Heat maps are blended into one
        float32 map per item and peak-extracted item by item (one map alive at a time); segmentation maps are blended
        into one preallocated (B, C, Z, Y, X) array (no stacking copy)."""
        head = self.head
        x = volumes
        if head.ood_output is not None:
            raise InputError(f"{self.name}: ood_output '{head.ood_output}' cannot be read over a sliding window "
                             f"(volumes {tuple(x.shape[1:])}, model input {tile})")
        if spacing is None or len(tuple(spacing)) != 3:
            raise InputError(f"{self.name}: a sliding-window run needs the volumes' voxel spacing in mm (z, y, x), "
                             f"got {spacing!r}")
        overlap = head.window_overlap or tuple(int(round(WINDOW_OVERLAP_FRACTION * t)) for t in tile)
        margin = head.window_margin or tuple(o // 2 for o in overlap)
        fixed = self.engine.input_spec.shape[0]
        kw = {"tile": tile, "overlap": overlap, "margin": margin, "prepare": prepare, "pad_value": pad_value,
              "batch": fixed if isinstance(fixed, int) else WINDOW_BATCH}
        n = x.shape[0]
        try:
            if head.task == "detection" and head.detection_format != "heatmap":
                return head.from_candidates([sliding_window_candidates(
                    x[b], self._run_tiles, lambda one: head.item_candidates(one, self.name, spacing), **kw)
                    for b in range(n)])
            name = head.output or self.engine.output_names[0]
            if head.task == "detection":  # heat map: blend, extract the peaks, drop the map before the next item
                cands = []
                for b in range(n):
                    heat = sliding_window_dense(x[b], self._run_tiles, output=name, blend=head.window_blend, **kw)
                    cands.append(head.item_candidates({name: heat}, self.name, spacing))
                    del heat
                return head.from_candidates(cands)
            first = sliding_window_dense(x[0], self._run_tiles, output=name, blend=head.window_blend, **kw)
            dense = first[None]
            if n > 1:
                dense = np.empty((n, *first.shape), np.float32)
                dense[0] = first
                del first
                for b in range(1, n):
                    sliding_window_dense(x[b], self._run_tiles, output=name, blend=head.window_blend, out=dense[b], **kw)
        except InputError as exc:
            raise InputError(f"{self.name}: sliding window: {exc}") from None
        return head.decide({name: dense}, self.name, spacing)

    def check_input(self, source: Any) -> None:
        """Data rank and shape must fit the engine's input (after the channel axis the preprocessing adds), or
        be 3D volumes a detection or segmentation model runs by sliding window (module notes)."""
        spec = self.engine.input_spec
        data_shape = tuple(source.shape)
        if self.head.task == "detection" and len(data_shape) != 3:
            raise InputError(f"{self.name}: detection audits take 3D volumes (z, y, x); the data have shape "
                             f"{data_shape}")
        if self.window_tile(data_shape) is not None:
            if self.head.ood_output is not None:
                raise InputError(f"{self.name}: ood_output '{self.head.ood_output}' cannot be read over a sliding "
                                 f"window (the data {data_shape} exceed input '{spec.name}' {spec.describe_shape()})")
            return
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


__all__ = ["ACTIVATIONS", "BLENDS", "DETECTION_FORMATS", "OOD_UNCERTAINTY", "TASKS", "AuditedModel", "Decisions", "Head",
           "ModelEntry", "Preprocess", "head_from", "open_artifact", "open_path", "preprocess_from"]
