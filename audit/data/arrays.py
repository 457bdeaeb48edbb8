"""``ArraySource``: HU images already in memory (phantom sets, retrain folds, tests), with optional reference lesions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from audit.errors import InputError
from audit.metrics.detection import Lesions


@dataclass
class ArraySource:
    """Images ``(N, *shape)`` in HU with spacing (mm per axis) and optional labels (N,) (-1 = unknown).

    ``lesions``: the reference lesions of each sample (one ``audit.metrics.detection.Lesions`` per sample, centres
    in voxels of the image, (z, y, x)); detection audits need them (a lesion-free scan has L = 0), other tasks
    ignore them. None: no lesion information (a detection head then refuses the source).
    """

    images: np.ndarray
    spacing: tuple[float, ...]
    labels: np.ndarray | None = None
    ids: list[str] = field(default_factory=list)
    name: str = "arrays"
    class_names: tuple[str, ...] = ()
    lesions: list[Lesions] | None = None

    def __post_init__(self) -> None:
        if self.images.ndim not in (3, 4):
            raise InputError(f"{self.name}: expected images (N, ny, nx) or (N, nz, ny, nx), got shape {self.images.shape}")
        if len(self.spacing) != self.images.ndim - 1:
            raise InputError(f"{self.name}: spacing {self.spacing} does not match image rank {self.images.ndim - 1}")
        if not self.ids:
            self.ids = [f"{self.name}:{i}" for i in range(len(self))]
        bad = ~np.isfinite(self.images.reshape(len(self), -1)).all(axis=1)
        if bad.any():
            raise InputError(f"{self.ids[int(np.argmax(bad))]}: image contains NaN or inf")
        if self.lesions is not None:
            self.lesions = list(self.lesions)
            if len(self.lesions) != len(self):
                raise InputError(f"{self.name}: lesions: expected one Lesions per sample ({len(self)}), "
                                 f"got {len(self.lesions)}")
            for i, les in enumerate(self.lesions):
                if not isinstance(les, Lesions):
                    raise InputError(f"{self.ids[i]}: lesions: expected audit.metrics.detection.Lesions, got "
                                     f"{type(les).__name__}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def preflight(self) -> None:
        """Nothing left to check before a campaign: arrays in memory are checked (rank, spacing, finite) on creation."""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def load(self, index: Sequence[int]) -> np.ndarray:
        return np.asarray(self.images[np.asarray(index)], dtype=np.float32)

    def reference(self, i: int) -> None:
        """Arrays carry no DICOM source for a derived series to borrow from (see ``ManifestSource.reference``)."""
        return None

    def fingerprint(self) -> str:
        """The images, spacing and labels; not the lesions, which only a detection campaign adds
        (``audit.data.data_fingerprint``), so other tasks' fingerprints do not depend on them."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images, dtype=np.float32).tobytes())
        h.update(repr((self.spacing, None if self.labels is None else self.labels.tolist())).encode())
        return h.hexdigest()
