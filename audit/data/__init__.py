"""Where the images come from: a ``Source`` serves HU images with spacing, labels and ids, by index.

A source serves batches by index so a campaign's memory stays bounded whatever
the number of samples. ``ArraySource`` wraps arrays in memory; ``ManifestSource``
reads a CSV manifest (arrays, DICOM folders, PACS series); the phantom sets of
``models.phantoms`` come as ``ArraySource``. ``DataSection`` is the validated
``[data]`` table and ``open_source`` the one way to turn it into a source.

Detection audits also need reference lesions: a source may have ``lesions``, one
``audit.metrics.detection.Lesions`` per sample in its voxel grid, or None where
it holds no lesion information (``lesions_of``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from audit.data.arrays import ArraySource
from audit.data.manifest import ManifestSource
from audit.metrics.detection import Lesions
from models.phantoms.bodysite import bodysite_slices
from models.phantoms.lesion_volumes import lesion_volumes
from models.phantoms.nodules import nodule_cubes

#: Phantom sets an audit can draw (``[data] phantom = ...``): nodule cubes, body-site slices, and lung volumes with
#: annotated nodules (``lesions``: the detection audit's data, with reference lesions).
PHANTOMS = ("nodules", "bodysite", "lesions")


class Source(Protocol):
    """What the campaign, attacks and reports need of a data set."""

    name: str
    spacing: tuple[float, ...]
    labels: np.ndarray | None
    ids: list[str]
    class_names: tuple[str, ...]

    def __len__(self) -> int: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    def load(self, index: Sequence[int]) -> np.ndarray: ...

    def reference(self, i: int) -> Any: ...

    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class DataSection:
    """The ``[data]`` table: a ``manifest`` (CSV) or a ``phantom`` set of ``n`` samples drawn with ``seed``."""

    manifest: Path | None = None
    phantom: str | None = None
    n: int = 100
    seed: int = 1
    spacing: tuple[float, ...] | None = None
    class_names: tuple[str, ...] = ()
    cube: int = 32
    target_spacing: float = 1.0


def lesions_of(source: Any) -> list[Lesions] | None:
    """The source's reference lesions (one ``Lesions`` per sample), or None where it holds none (a source without
    the attribute, an ``ArraySource`` built without ``lesions``, a manifest whose rows hold none). A manifest reads
    and checks its rows' lesions here, on first use: call it only for detection."""
    return getattr(source, "lesions", None)


def lesions_fingerprint(lesions: Sequence[Lesions] | None) -> str:
    """SHA-256 of every sample's lesions: per sample its lesion count, then centres, radii (float64) and excluded
    flags, so moving, resizing, excluding, adding or removing a lesion (or moving one between samples) changes it."""
    h = hashlib.sha256()
    h.update(b"none" if lesions is None else str(len(lesions)).encode())
    for les in lesions or ():
        h.update(f"|{les.centres.shape[0]}|".encode())
        for a in (les.centres, les.radii_mm, les.excluded):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes() + b"|")
    return h.hexdigest()


def data_fingerprint(source: Any, *, lesions: bool) -> str:
    """The data part of a campaign's fingerprint: ``source.fingerprint()``, plus the reference lesions when
    ``lesions`` (a campaign with a detection model, whose records depend on them). Without, it is the source's own
    fingerprint, so non-detection campaigns keep theirs whatever lesions the data hold."""
    base = source.fingerprint()
    if not lesions:
        return base
    return hashlib.sha256(f"{base}|lesions:{lesions_fingerprint(lesions_of(source))}".encode()).hexdigest()


def phantom_source(kind: str, n: int, seed: int) -> ArraySource:
    """``n`` phantom nodule cubes, body-site slices or lung volumes with their reference lesions, drawn with
    ``seed``. Lesion volumes carry no label (-1): a detection audit judges them by their lesions."""
    if kind == "lesions":
        v = lesion_volumes(n, seed)
        refs = [Lesions.from_rows(les) for les in v.lesions]
        return ArraySource(v.images, tuple(v.spacing), None, name=f"phantom lesion volumes (n={n}, seed={seed})",
                           lesions=refs)
    if kind == "nodules":
        s = nodule_cubes(n, seed)
        return ArraySource(s.images, tuple(s.spacing), s.labels, name=f"phantom nodules (n={n}, seed={seed})",
                           class_names=tuple(s.class_names))
    s = bodysite_slices(n, seed)
    return ArraySource(s.images, tuple(s.spacing), s.labels, name=f"phantom body-site slices (n={n}, seed={seed})",
                       class_names=tuple(getattr(s, "class_names", ())))


def open_source(data: DataSection, pacs: Any = None) -> Source:
    """The source of a ``[data]`` table; ``pacs`` (a ``PacsServer``) serves manifest rows ``dicomweb:<UID>``."""
    if data.manifest is not None:
        return ManifestSource(data.manifest, data.spacing, data.class_names, cube=data.cube,
                              target_spacing=data.target_spacing, pacs=pacs)
    return phantom_source(str(data.phantom), data.n, data.seed)


__all__ = ["PHANTOMS", "ArraySource", "DataSection", "ManifestSource", "Source", "data_fingerprint",
           "lesions_fingerprint", "lesions_of", "open_source", "phantom_source"]
