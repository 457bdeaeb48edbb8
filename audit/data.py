"""Sample sources: HU images with spacing and labels, loaded on demand.

A source serves batches by index so a campaign's memory stays bounded whatever
the number of samples. ``ArraySource`` wraps arrays already in memory (phantom
sets); ``ManifestSource`` reads a CSV of ``path,label`` rows pointing at .npy or
.npz files (paths relative to the CSV).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from audit.errors import InputError


@dataclass
class ArraySource:
    """Images ``(N, *shape)`` in HU with spacing (mm per axis) and optional labels (N,) (-1 = unknown)."""

    images: np.ndarray
    spacing: tuple[float, ...]
    labels: np.ndarray | None = None
    ids: list[str] = field(default_factory=list)
    name: str = "arrays"
    class_names: tuple[str, ...] = ()

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

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def load(self, index: Sequence[int]) -> np.ndarray:
        return np.asarray(self.images[np.asarray(index)], dtype=np.float32)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images, dtype=np.float32).tobytes())
        h.update(repr((self.spacing, None if self.labels is None else self.labels.tolist())).encode())
        return h.hexdigest()


class ManifestSource:
    """Rows of a CSV manifest (columns ``path``, ``label``; optional ``id``) pointing at .npy/.npz HU arrays.

    An .npz holds the image under ``hu`` (or ``image``, or its only array) and may
    hold ``spacing``; otherwise ``spacing`` must be given. All images share one shape.
    """

    def __init__(self, manifest: str | Path, spacing: Sequence[float] | None = None, class_names: Sequence[str] = ()) -> None:
        self.manifest = Path(manifest)
        self.name = str(self.manifest)
        self.class_names = tuple(class_names)
        try:
            with self.manifest.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
        except OSError as exc:
            raise InputError(f"{self.manifest}: cannot read the manifest ({exc.strerror or exc})") from None
        if not rows or "path" not in rows[0]:
            raise InputError(f"{self.manifest}: expected a CSV with a header naming at least 'path' (and 'label')")
        base = self.manifest.parent
        self.paths = [(base / r["path"]).resolve() if not Path(r["path"]).is_absolute() else Path(r["path"]) for r in rows]
        self.ids = [r.get("id") or r["path"] for r in rows]
        try:
            self.labels = np.array([int(r["label"]) if r.get("label", "") not in ("", None) else -1 for r in rows], np.int64)
        except ValueError as exc:
            raise InputError(f"{self.manifest}: label column must hold integers ({exc})") from None
        for p in self.paths:
            if p.suffix not in (".npy", ".npz"):
                raise InputError(f"{p}: unsupported file type '{p.suffix}'; expected .npy or .npz")
            if not p.is_file():
                raise InputError(f"{p}: file listed in {self.manifest.name} not found")
        first, first_spacing = self._read(0)
        self._shape = first.shape
        if first.ndim not in (2, 3):
            raise InputError(f"{self.paths[0]}: expected a 2D slice or 3D volume, got shape {first.shape}")
        given = tuple(float(s) for s in spacing) if spacing is not None else first_spacing
        if given is None:
            raise InputError(f"{self.paths[0]}: no spacing in the file; set data.spacing in the config")
        if len(given) != first.ndim or min(given) <= 0:
            raise InputError(f"data.spacing: expected {first.ndim} positive values (mm), got {given}")
        self.spacing = given

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._shape)

    def _read(self, i: int) -> tuple[np.ndarray, tuple[float, ...] | None]:
        path = self.paths[i]
        try:
            if path.suffix == ".npy":
                return np.load(path, allow_pickle=False), None
            with np.load(path, allow_pickle=False) as data:
                keys = list(data.keys())
                key = "hu" if "hu" in keys else "image" if "image" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise InputError(f"{path}: .npz must hold 'hu' or 'image' (or a single array), found {keys}")
                sp = tuple(float(v) for v in data["spacing"]) if "spacing" in keys else None
                return np.asarray(data[key]), sp
        except InputError:
            raise
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"{path}: cannot read the array ({exc})") from None

    def load(self, index: Sequence[int]) -> np.ndarray:
        out = np.empty((len(index), *self._shape), dtype=np.float32)
        for j, i in enumerate(index):
            img, _ = self._read(int(i))
            if img.shape != self._shape:
                raise InputError(f"{self.paths[i]}: shape {img.shape} differs from the first image's {self._shape}")
            if not np.issubdtype(img.dtype, np.number):
                raise InputError(f"{self.paths[i]}: expected a numeric array, got dtype {img.dtype}")
            if not np.all(np.isfinite(img)):
                raise InputError(f"{self.paths[i]}: image contains NaN or inf")
            out[j] = img
        return out

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p, lab in zip(self.paths, self.labels):
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}|{lab}".encode())
        h.update(repr(self.spacing).encode())
        return h.hexdigest()
