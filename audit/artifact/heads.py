"""Heads: raw engine outputs -> decisions, and when a perturbed decision counts as a flip.

A head knows its task. Classification heads (binary, multiclass, rating) give
class labels and a flip is a changed label. Regression flips when the value
moves more than a tolerance from the clean one; segmentation flips when the
Dice between the perturbed and the clean mask falls below a set value (study 4), and
optionally when a contour metric of ``audit.metrics.contours`` fails its threshold: HD95 or the contour
error above a distance in mm, or the Dice of filled contours below a value (any failing one flips).

Detection (study 3): the engine gives candidate lesions per item in one of three formats
(``detection_format``, set by metadata ``audit.output_kind``): ``candidates`` (``centres_output``, default
"centres", (M, 3) voxel z, y, x per item, and ``output``, default "scores", (M,)), ``boxes`` (``centres_output``
default "boxes", (M, 6)) or ``heatmap`` (``output``: a (Z, Y, X) or (1, Z, Y, X) map per item, peaks at or above
``peak_threshold`` with NMS within ``nms_radius_mm``, > 0); padding (NaN / -inf scores) is dropped
(``audit.metrics.detection``'s conventions). Coordinates are voxels of the model input grid, which is the data's
grid (a sliding-window run shifts each tile's candidates back to the volume). Heat-map peaks are extracted down to
``peak_threshold`` (default ``PEAK_FLOOR`` = 0.05), not at the operating threshold: the FROC sweeps every threshold
and needs the candidates below the operating point too; the operating ``threshold`` is applied only for the
shown count and the flips. Scores are rounded to float32 when read (``item_candidates``), the precision the records
keep, so a threshold decided here and one re-applied to the stored scores agree. ``Decisions.candidates`` keeps ALL
candidates of each item (no threshold: FROC needs them); ``labels`` = the number of candidates with
``score >= threshold`` (the deployed operating point, metadata ``audit.threshold``, default 0.5) and ``scores``
= the highest candidate score (0.0 for an item without candidates: a scan with no mark scores as no evidence).

A detection draw flips (study 3's lesion-level flip, ``lesion_flips`` at the operating threshold, against the
clean output of the same scan) when any included reference lesion is lost (found clean, not under noise) or
gained, or the draw shows a new false positive (no clean false positive within ``fp_radius_mm``, default
``NEW_FP_RADIUS_MM``). Matching uses the reference lesions of the data (``source.lesions``) with radii floored at
``min_radius_mm`` (default 0: LUNA16's own radii; metadata ``audit.min_radius_mm``). Per draw the head gives the
columns of ``audit.campaign.records.DETECTION_COLUMNS``: the counts, every candidate's score, role and lesion
(``match_candidates`` on all candidates) and which lesions are found at the threshold. Detection audits need
reference lesions: data without any lesion information are refused (``audit.campaign.run.check_lesions``, one
line); a lesion-free scan is a sample with L = 0 (all its shown marks are false positives).

Any task may name an out-of-distribution score (``ood_output``): an engine output with one value per item
(higher = more out of distribution), or "uncertainty" for evidential (beta) heads, 2 / (alpha + beta);
``Decisions.ood`` then holds it.

Sliding window (detection and segmentation of 3D volumes): ``window_overlap`` (voxels, int or (z, y, x); default
``WINDOW_OVERLAP_FRACTION`` of the tile), ``window_margin`` (voxels dropped at interior tile edges; default half
the overlap, so each voxel is kept from exactly one tile where the tiles are evenly spaced) and ``window_blend``
(dense outputs; default gaussian), used by ``AuditedModel`` when the data exceed the model's fixed input; tiles'
candidate lists are partitioned between tiles (each position owned by one tile; ``audit.artifact.window``), with no
NMS across tiles.

Heads are built from the model's ONNX metadata (``audit.*`` keys written by
``models.export``) and a config section, the config winning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from audit.artifact.window import BLENDS
from audit.campaign.records import DETECTION_CLEAN_COLUMNS, DETECTION_COLUMNS
from audit.engines.base import pick_output
from audit.errors import ConfigError, InputError
from audit.metrics import batch_dice, segmentation_flips
from audit.metrics.contours import CONTOUR_COLUMNS
from audit.metrics.detection import (NEW_FP_RADIUS_MM, Candidates, CleanReference, Lesions, candidates_from_boxes,
                                     candidates_from_points, clean_reference, heatmap_peaks, lesion_flips,
                                     match_candidates)
from kernels._xp import array_namespace

TASKS = ("binary", "multiclass", "rating", "regression", "segmentation", "detection")
#: How a detection model gives its candidates (metadata ``audit.output_kind`` with one of these values sets it).
DETECTION_FORMATS = ("candidates", "boxes", "heatmap")
#: Default heat-map peak floor (``peak_threshold``): peaks at or above it are candidates, so the FROC reaches scores
#: well below a probability map's usual 0.5 operating point (LUNA16 FROCs run to 8 FPs per scan, far past it) while
#: the near-zero background of a probability map (noise ripples below 5%) yields no peaks to carry.
PEAK_FLOOR = 0.05
#: The output holding centres (candidates) or boxes per format when ``centres_output`` is not set.
DEFAULT_CENTRES_OUTPUT = {"candidates": "centres", "boxes": "boxes"}
#: The scores output of the candidates and boxes formats when ``output`` is not set.
DEFAULT_SCORES_OUTPUT = "scores"
#: Detection-only head keys (and their defaults in ``Head``); in ``to_dict`` only for detection heads.
DETECTION_KEYS = ("detection_format", "centres_output", "peak_threshold", "nms_radius_mm", "min_radius_mm",
                  "fp_radius_mm")
#: Sliding-window keys (detection and segmentation); in ``to_dict`` only when set.
WINDOW_KEYS = ("window_overlap", "window_margin", "window_blend")
#: Default sliding-window overlap as a fraction of the tile side: a quarter costs (4/3)^3 = 2.4x a tiled pass in 3D
#: (nnU-Net's half costs 8x) and with the default margin (half of it) every kept voxel is an eighth of a tile from
#: any interior tile edge, more than the receptive radius of the detectors and segmenters audited here.
WINDOW_OVERLAP_FRACTION = 0.25
#: ``ood_output`` value naming the evidential uncertainty 2 / (alpha + beta) of a beta head.
OOD_UNCERTAINTY = "uncertainty"
#: Segmentation flip thresholds beyond Dice (``audit.metrics.segmentation_flips``): None = not a criterion.
CONTOUR_THRESHOLDS = ("hd95_max_mm", "contour_error_max_mm", "filled_dice_min")
HEAD_KEYS = ("class_names", "threshold", "activation", "output", "rating_edges", "tolerance", "min_dice",
             *CONTOUR_THRESHOLDS, "contour_metrics", *DETECTION_KEYS, "ood_output", *WINDOW_KEYS)
ACTIVATIONS = ("none", "sigmoid", "softmax", "beta")


@dataclass
class Decisions:
    """Per-item decisions: ``labels`` (B,) int64 (-1 where the task has none), ``scores`` (B,) float32, ``masks``
    (segmentation), ``candidates`` (detection: one ``Candidates`` per item, all of them) and ``ood`` (B,) float32
    (the head's ``ood_output``, when set)."""

    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray | None = None
    candidates: list[Candidates] | None = None
    ood: np.ndarray | None = None

    def take(self, index: np.ndarray) -> "Decisions":
        idx = np.asarray(index)
        rows = np.flatnonzero(idx) if idx.dtype == bool else np.atleast_1d(idx)
        return Decisions(self.labels[idx], self.scores[idx], None if self.masks is None else self.masks[idx],
                         None if self.candidates is None else [self.candidates[int(i)] for i in rows],
                         None if self.ood is None else self.ood[idx])

    @staticmethod
    def concat(parts: Sequence["Decisions"]) -> "Decisions":
        """One ``Decisions`` of consecutive batches (masks, candidates and OOD scores carried)."""
        first = parts[0]
        return Decisions(np.concatenate([p.labels for p in parts]), np.concatenate([p.scores for p in parts]),
                         None if first.masks is None else np.concatenate([p.masks for p in parts]),
                         None if first.candidates is None else [c for p in parts for c in p.candidates],
                         None if first.ood is None else np.concatenate([p.ood for p in parts]))


@dataclass(frozen=True)
class Head:
    """How to read one output of a model. See ``head_from`` for the keys."""

    task: str
    class_names: tuple[str, ...] = ()
    threshold: float = 0.5
    activation: str = "none"
    output: str | None = None
    rating_edges: tuple[float, ...] = (1.5, 2.5, 3.5, 4.5)
    tolerance: float = 0.0
    min_dice: float = 0.9
    hd95_max_mm: float | None = None
    contour_error_max_mm: float | None = None
    filled_dice_min: float | None = None
    contour_metrics: bool = False  # record HD95 / contour error / filled Dice even without a threshold on them
    detection_format: str = "candidates"
    centres_output: str | None = None
    peak_threshold: float = PEAK_FLOOR  # heat-map peak floor (``PEAK_FLOOR``), far below the operating ``threshold``
    nms_radius_mm: float = 5.0   # heat-map peak NMS (> 0): ``heatmap_peaks``' default
    min_radius_mm: float = 0.0   # matching floor: 0 = LUNA16 (each lesion's own radius)
    fp_radius_mm: float = NEW_FP_RADIUS_MM
    ood_output: str | None = None
    window_overlap: tuple[int, int, int] | None = None  # None: WINDOW_OVERLAP_FRACTION of the tile
    window_margin: tuple[int, int, int] | None = None   # None: half the overlap
    window_blend: str = "gaussian"

    @property
    def computes_contours(self) -> bool:
        """Whether each draw gets HD95, the contour error and the filled-contour Dice (segmentation only)."""
        return self.task == "segmentation" and (self.contour_metrics or any(
            getattr(self, k) is not None for k in CONTOUR_THRESHOLDS))

    @property
    def n_classes(self) -> int:
        """Number of classes for CMR and per-class SAR; 0 for regression and segmentation."""
        if self.task == "binary":
            return 2
        if self.task == "rating":
            return len(self.rating_edges) + 1
        if self.task == "multiclass":
            return len(self.class_names)
        return 0

    @property
    def labels_names(self) -> tuple[str, ...]:
        if self.class_names and len(self.class_names) == self.n_classes:
            return self.class_names
        return tuple(str(i) for i in range(self.n_classes))

    def decide(self, outputs: Mapping[str, np.ndarray], source: str = "model", spacing: Any = None) -> Decisions:
        """Decisions of a batch of raw outputs. ``spacing`` (mm per spatial axis): needed by heat-map detection
        heads only (NMS in mm)."""
        dec = self._decide(outputs, source, spacing)
        if self.ood_output is not None:
            dec.ood = self._ood(outputs, source, dec.labels.shape[0])
        return dec

    def _ood(self, outputs: Mapping[str, np.ndarray], source: str, b: int) -> np.ndarray:
        return self.ood_of(outputs, source, b, lambda a: np.asarray(a, dtype=np.float64)).astype(np.float32)

    def ood_of(self, outputs: Mapping[str, Any], source: str, b: int, cast: Callable[[Any], Any] = lambda a: a) -> Any:
        """(b,) OOD score from raw outputs of any array library (NumPy here, torch tensors for an attack's twin,
        differentiable): the ``ood_output`` (one value per item), or 2 / (alpha + beta) for ``"uncertainty"``
        (evidential: total evidence + 2 is the Dirichlet strength). ``cast``: applied to the output read first."""
        if self.ood_output == OOD_UNCERTAINTY:
            ab = cast(pick_output(outputs, self.output, source)).reshape(b, -1)
            return 2.0 / (ab[:, 0] + ab[:, 1])
        v = cast(pick_output(outputs, self.ood_output, source)).reshape(b, -1)
        if v.shape[1] != 1:
            raise InputError(f"{source}: ood_output '{self.ood_output}' has {v.shape[1]} values per item; expected one")
        return v[:, 0]

    def item_candidates(self, one: Mapping[str, np.ndarray], source: str = "model", spacing: Any = None) -> Candidates:
        """All candidates of one item from its outputs (batch axis removed), in its voxel grid (module notes)."""
        fmt = self.detection_format
        try:
            if fmt == "heatmap":
                heat = np.asarray(pick_output(one, self.output, source))
                if heat.ndim == 4 and heat.shape[0] == 1:
                    heat = heat[0]
                if spacing is None or len(tuple(spacing)) < 3:
                    raise InputError(f"heat-map peaks need the voxel spacing in mm (z, y, x), got {spacing!r}")
                cand = heatmap_peaks(heat, threshold=self.peak_threshold, nms_radius_mm=self.nms_radius_mm,
                                     spacing=tuple(spacing)[-3:])
            else:
                pts = pick_output(one, self.centres_output or DEFAULT_CENTRES_OUTPUT[fmt], source)
                scores = np.asarray(pick_output(one, self.output or DEFAULT_SCORES_OUTPUT, source)).reshape(-1)
                cand = candidates_from_boxes(pts, scores) if fmt == "boxes" else candidates_from_points(pts, scores)
            # float32 as stored: a threshold applied now and to the records later sees the same numbers
            return Candidates(cand.centres, cand.scores.astype(np.float32).astype(np.float64))
        except InputError as exc:
            msg = str(exc)
            raise InputError(msg if msg.startswith(f"{source}:") else f"{source}: {msg}") from None

    def from_candidates(self, cands: list[Candidates]) -> Decisions:
        """Detection decisions of each item's candidates: shown count at the threshold, highest score (0.0: none)."""
        shown = np.array([np.count_nonzero(c.scores >= self.threshold) for c in cands], np.int64)
        best = np.array([c.scores.max() if len(c) else 0.0 for c in cands], np.float32)
        return Decisions(shown, best, candidates=cands)

    def _decide(self, outputs: Mapping[str, np.ndarray], source: str, spacing: Any) -> Decisions:
        if self.task == "detection":
            b = int(np.shape(next(iter(outputs.values())))[0])
            return self.from_candidates([self.item_candidates({k: v[i] for k, v in outputs.items()}, source, spacing)
                                         for i in range(b)])
        raw = np.asarray(pick_output(outputs, self.output, source), dtype=np.float64)
        b = raw.shape[0]
        if self.task == "segmentation":
            prob = _activate(raw, self.activation)
            if prob.ndim >= 3 and prob.shape[1] > 1:  # (B, C, ...) class maps: foreground = argmax > 0
                masks = np.argmax(prob, axis=1) > 0
            else:
                # (B, 1, ...) -> (B, ...): one foreground map per item, slices (H, W) or volumes (Z, Y, X)
                masks = (prob[:, 0] if prob.ndim >= 4 else prob.reshape(b, *prob.shape[-2:]) if prob.ndim == 3
                         else prob) > self.threshold
            return Decisions(np.full(b, -1, np.int64), masks.reshape(b, -1).mean(axis=1).astype(np.float32), masks)
        flat = raw.reshape(b, -1)
        if self.task == "binary":
            if flat.shape[1] == 1:
                p = _activate(flat[:, 0], self.activation)
            elif flat.shape[1] == 2 and self.activation == "beta":  # evidential (alpha, beta): P(1) = alpha / (alpha + beta)
                p = flat[:, 0] / (flat[:, 0] + flat[:, 1])
            elif flat.shape[1] == 2:
                p = _activate(flat, "softmax" if self.activation == "none" and not _is_prob(flat) else self.activation)[:, 1]
            else:
                raise ConfigError(f"{source}: binary head expects 1 or 2 output values per item, got {flat.shape[1]}")
            return Decisions((p >= self.threshold).astype(np.int64), p.astype(np.float32))
        if self.task == "multiclass":
            p = _activate(flat, self.activation)
            if self.class_names and p.shape[1] != len(self.class_names):
                raise ConfigError(f"{source}: {p.shape[1]} outputs but {len(self.class_names)} class names")
            return Decisions(np.argmax(p, axis=1).astype(np.int64), p.max(axis=1).astype(np.float32))
        value = flat[:, 0]
        if self.task == "rating":
            return Decisions(np.digitize(value, self.rating_edges).astype(np.int64), value.astype(np.float32))
        return Decisions(np.full(b, -1, np.int64), value.astype(np.float32))  # regression

    def flipped(self, clean: Decisions, noisy: Decisions, spacing: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(flip flags (B,), per-item Dice for segmentation else None). ``spacing``: see ``draw_metrics``."""
        flags, cols = self.draw_metrics(clean, noisy, spacing)
        return flags, cols.get("dice")

    def draw_metrics(self, clean: Decisions, noisy: Decisions, spacing: Any = None,
                     lesions: Sequence[Lesions] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """(flip flags (B,), per-item metric columns): segmentation gives ``dice`` (float32) and, when
        ``computes_contours``, ``hd95_mm``, ``contour_error_mm`` (mm; +inf where exactly one mask is empty) and
        ``filled_dice``; detection gives ``DETECTION_COLUMNS`` (module notes; list columns as lists of arrays);
        other tasks give none. ``spacing``: the images' voxel sizes in mm (the source's ``spacing``; its last axes
        are the masks' axes: masks on the image grid), needed only for the contour metrics and detection (an attack
        calling ``flipped`` without it on such a head gets one ``InputError``). ``lesions``: detection only, the
        reference lesions of each item (rows aligned with ``clean`` and ``noisy``)."""
        if self.task == "detection":
            return self._detection_draws(clean, noisy, spacing, lesions)
        if self.task == "regression":
            return np.abs(noisy.scores - clean.scores) > self.tolerance, {}
        if self.task != "segmentation":
            return noisy.labels != clean.labels, {}
        d = batch_dice(clean.masks, noisy.masks).astype(np.float32)
        flags = d < self.min_dice
        if not self.computes_contours:
            return flags, {"dice": d}
        spatial = clean.masks.ndim - 1
        if spacing is None or len(tuple(spacing)) < spatial:
            raise InputError(f"segmentation contour metrics need the voxel spacing in mm of the mask's {spatial} axes, "
                             f"got {spacing!r}")
        sp = tuple(float(v) for v in tuple(spacing)[-spatial:])
        crit = {k: getattr(self, k) for k in CONTOUR_THRESHOLDS}
        cols = {c: np.empty(d.size, np.float32) for c in CONTOUR_COLUMNS}
        for i in range(d.size):  # one clean mask per row: the metrics' own per-draw definition, empty masks included
            f = segmentation_flips(clean.masks[i], [noisy.masks[i]], sp, **crit)
            flags[i] |= bool(f.flipped[0])
            cols["hd95_mm"][i], cols["contour_error_mm"][i], cols["filled_dice"][i] = \
                f.hd95_mm[0], f.contour_error_mm[0], f.filled_dice[0]
        return flags, {"dice": d, **cols}

    def _match_args(self, spacing: Any, lesions: Sequence[Lesions] | None, n: int) -> tuple[float, float, float]:
        if spacing is None or len(tuple(spacing)) != 3:
            raise InputError(f"detection needs 3D volumes with their voxel spacing in mm (z, y, x), got {spacing!r}")
        if lesions is None or len(lesions) != n:
            raise InputError(f"detection flips need the reference lesions of each of the {n} items, got "
                             f"{'none' if lesions is None else len(lesions)}")
        return tuple(float(v) for v in spacing)  # type: ignore[return-value]

    def _detection_draws(self, clean: Decisions, noisy: Decisions, spacing: Any,
                         lesions: Sequence[Lesions] | None) -> tuple[np.ndarray, dict[str, Any]]:
        n = noisy.labels.shape[0]
        sp = self._match_args(spacing, lesions, n)
        counts = {c: np.zeros(n, np.int32) for c in DETECTION_COLUMNS[:3]}  # missed, gained, new_fp
        lists: dict[str, list] = {c: [] for c in DETECTION_COLUMNS[3:]}  # the per-candidate and per-lesion lists
        # The clean output matched once per sample, not per draw: the campaign's rows are a sample's draws in a run,
        # sharing its clean Candidates and Lesions objects (keyed by identity; both stay alive during this call).
        refs: dict[tuple[int, int], CleanReference] = {}
        for i in range(n):
            les, cand = lesions[i], noisy.candidates[i]
            key = (id(clean.candidates[i]), id(les))
            ref = refs.get(key)
            if ref is None:
                ref = refs[key] = clean_reference(clean.candidates[i], les, sp, threshold=self.threshold,
                                                  min_radius_mm=self.min_radius_mm)
            f = lesion_flips(ref, [cand], les, sp, threshold=self.threshold,
                             min_radius_mm=self.min_radius_mm, fp_radius_mm=self.fp_radius_mm)
            m = match_candidates(cand, les, sp, min_radius_mm=self.min_radius_mm)
            counts["missed"][i], counts["gained"][i] = f.missed[0].sum(), f.gained[0].sum()
            counts["new_fp"][i] = f.new_fp[0]
            for c, v in zip(DETECTION_COLUMNS[3:], (cand.scores.astype(np.float32), m.role.astype(np.int8),
                                                    m.assigned.astype(np.int32), f.noisy_found[0].astype(bool))):
                lists[c].append(v)
        flags = (counts["missed"] > 0) | (counts["gained"] > 0) | (counts["new_fp"] > 0)
        return flags, {**counts, **lists}

    def clean_columns(self, clean: Decisions, spacing: Any, lesions: Sequence[Lesions] | None) -> dict[str, Any]:
        """Detection: the clean shard's ``DETECTION_CLEAN_COLUMNS`` (every candidate's score, role and lesion, the
        lesions found at the threshold, the included lesion count and which lesions are excluded); else none."""
        if self.task != "detection":
            return {}
        n = clean.labels.shape[0]
        sp = self._match_args(spacing, lesions, n)
        cols: dict[str, Any] = {c: [] for c in DETECTION_CLEAN_COLUMNS}
        for i in range(n):
            les, cand = lesions[i], clean.candidates[i]
            m = match_candidates(cand, les, sp, min_radius_mm=self.min_radius_mm)
            shown = match_candidates(cand.above(self.threshold), les, sp, min_radius_mm=self.min_radius_mm)
            for c, v in zip(DETECTION_CLEAN_COLUMNS, (cand.scores.astype(np.float32), m.role.astype(np.int8),
                                                      m.assigned.astype(np.int32), shown.lesion_found.astype(bool),
                                                      np.int32(les.n_included), les.excluded.astype(bool))):
                cols[c].append(v)
        cols["n_lesions"] = np.asarray(cols["n_lesions"], np.int32)
        return cols

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "class_names": list(self.labels_names), "threshold": self.threshold,
                "activation": self.activation, "output": self.output, "rating_edges": list(self.rating_edges),
                "tolerance": self.tolerance, "min_dice": self.min_dice,
                # only when set: the fingerprint (and so --resume) of a Dice-only head stays as it was
                **{k: getattr(self, k) for k in CONTOUR_THRESHOLDS if getattr(self, k) is not None},
                **({"contour_metrics": True} if self.contour_metrics else {}),
                # detection keys for detection heads only; OOD and window keys only when set: other heads'
                # fingerprints (and so --resume) stay as they were
                **({k: getattr(self, k) for k in DETECTION_KEYS} if self.task == "detection" else {}),
                # the default overlap a detection sliding window uses (module constant, not a key): a change of it
                # changes the records, so it is in detection fingerprints (segmentation's stay as they were)
                **({"window_overlap_fraction": WINDOW_OVERLAP_FRACTION}
                   if self.task == "detection" and self.window_overlap is None else {}),
                **({"ood_output": self.ood_output} if self.ood_output is not None else {}),
                **{k: (list(getattr(self, k)) if isinstance(getattr(self, k), tuple) else getattr(self, k))
                   for k in WINDOW_KEYS if getattr(self, k) != Head.__dataclass_fields__[k].default}}

    def windowed(self) -> bool:
        """Whether data larger than a fixed model input may run by sliding window (3D detection, segmentation)."""
        return self.task in ("detection", "segmentation")


def _is_prob(x: np.ndarray) -> bool:
    return bool(np.all(x >= 0) and np.allclose(x.sum(axis=1), 1.0, atol=1e-4))


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if activation == "softmax":
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return x


def head_from(metadata: Mapping[str, str], config: Mapping[str, Any] | None = None, source: str = "model") -> Head:
    """Build a head from ONNX metadata (``audit.task``, ``audit.class_names``, ``audit.threshold``,
    ``audit.rating_edges``, ``audit.output``) overridden by a config mapping with keys
    task, class_names, threshold, activation, output, rating_edges, tolerance, min_dice and, for segmentation,
    hd95_max_mm, contour_error_max_mm (mm, >= 0), filled_dice_min (in [0, 1]) and contour_metrics (bool); for
    detection ``DETECTION_KEYS`` (metadata ``audit.output_kind`` = a detection format, ``audit.min_radius_mm``,
    ``audit.nms_radius_mm``); for detection and segmentation ``WINDOW_KEYS``; for any task ``ood_output``
    (metadata ``audit.ood_output``). Module notes: what each means."""
    config = dict(config or {})
    meta = {k.removeprefix("audit."): v for k, v in metadata.items() if k.startswith("audit.")}
    task = config.pop("task", None) or meta.get("task")
    if task is None:
        raise ConfigError(f"{source}: the model's metadata names no task; set head.task to one of {TASKS}")
    if task not in TASKS:
        raise ConfigError(f"head.task: expected one of {TASKS}, got {task!r}")
    kwargs: dict[str, Any] = {"task": task}
    try:
        if "class_names" in meta:
            kwargs["class_names"] = tuple(json.loads(meta["class_names"]))
        if meta.get("threshold") not in (None, "", "null"):
            kwargs["threshold"] = float(meta["threshold"])
        if "rating_edges" in meta:
            kwargs["rating_edges"] = tuple(float(v) for v in json.loads(meta["rating_edges"]))
        if meta.get("output"):
            kwargs["output"] = meta["output"]
        kind = meta.get("output_kind")
        if kind in DETECTION_FORMATS:
            kwargs["detection_format"] = kind
        for key in ("min_radius_mm", "nms_radius_mm"):
            if meta.get(key) not in (None, "", "null") and task == "detection":
                kwargs[key] = _detection_value(key, float(meta[key]), task)
        if meta.get("ood_output"):
            kwargs["ood_output"] = meta["ood_output"]
        if kind == "beta":
            kwargs["activation"] = "beta"
        elif kind == "mask+contour":
            kwargs["output"] = kwargs.get("output", "mask")
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: unreadable audit metadata ({exc})") from None
    for key, value in config.items():
        if key not in HEAD_KEYS:
            raise ConfigError(f"head.{key}: unknown key")
        if key in (*CONTOUR_THRESHOLDS, "contour_metrics") and task != "segmentation":
            raise ConfigError(f"head.{key}: only for task 'segmentation' (this head's task is {task!r})")
        if key in CONTOUR_THRESHOLDS:
            high = 1.0 if key == "filled_dice_min" else math.inf
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and 0 <= value <= high):
                raise ConfigError(f"head.{key}: expected a finite number in [0, {high:g}]"
                                  f"{' (mm)' if key.endswith('_mm') else ''}, got {value!r}")
            value = float(value)
        if key == "contour_metrics" and not isinstance(value, bool):
            raise ConfigError(f"head.contour_metrics: expected true or false, got {value!r}")
        value = _detection_value(key, value, task)
        kwargs[key] = tuple(value) if key in ("class_names", "rating_edges") else value
    if kwargs.get("activation", "none") not in ACTIVATIONS:
        raise ConfigError(f"head.activation: expected one of {ACTIVATIONS}, got {kwargs['activation']!r}")
    if kwargs.get("ood_output") == OOD_UNCERTAINTY and kwargs.get("activation") != "beta":
        raise ConfigError(f"head.ood_output: '{OOD_UNCERTAINTY}' is the evidence of a beta (evidential) head; this "
                          f"head's activation is {kwargs.get('activation', 'none')!r}")
    return Head(**kwargs)


def _detection_value(key: str, value: Any, task: str) -> Any:
    """A checked config value of a detection, window or OOD key (others pass through)."""
    if key in DETECTION_KEYS and task != "detection":
        raise ConfigError(f"head.{key}: only for task 'detection' (this head's task is {task!r})")
    if key in WINDOW_KEYS and task not in ("detection", "segmentation"):
        raise ConfigError(f"head.{key}: only for tasks 'detection' and 'segmentation' (this head's task is {task!r})")
    if key == "detection_format" and value not in DETECTION_FORMATS:
        raise ConfigError(f"head.detection_format: expected one of {DETECTION_FORMATS}, got {value!r}")
    if key == "window_blend" and value not in BLENDS:
        raise ConfigError(f"head.window_blend: expected one of {BLENDS}, got {value!r}")
    if key in ("centres_output", "ood_output") and (not isinstance(value, str) or not value):
        raise ConfigError(f"head.{key}: expected an output name, got {value!r}")
    if key in ("peak_threshold", "nms_radius_mm", "min_radius_mm", "fp_radius_mm"):
        low = -math.inf if key == "peak_threshold" else 0.0
        strict = key == "nms_radius_mm"  # a radius of 0 keeps every voxel of a plateau as its own peak
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and (value > low if strict else value >= low)):
            raise ConfigError(f"head.{key}: expected a finite number"
                              f"{(' > 0 (mm)' if strict else ' >= 0 (mm)') if low == 0 else ''}, got {value!r}")
        return float(value)
    if key in ("window_overlap", "window_margin"):
        v = [value] * 3 if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(v, (list, tuple)) or len(v) != 3 or any(
                isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in v):
            raise ConfigError(f"head.{key}: expected an integer >= 0 (voxels) or three of them (z, y, x), got {value!r}")
        return tuple(int(x) for x in v)
    return value


@dataclass(frozen=True)
class Preprocess:
    """HU -> model input: ``clip((hu - lo) / (hi - lo), 0, 1)`` (or no clip), float32, channel axis added.

    The same function as the training pipeline's (``models.registry.preprocess``);
    noise is added in HU before it.
    """

    window: tuple[float, float]
    clip: bool = True

    def __call__(self, hu: Any, input_rank: int) -> Any:
        lo, hi = self.window
        xp = array_namespace(hu)
        x = (hu - xp.float32(lo)) * xp.float32(1.0 / (hi - lo))
        if self.clip:
            x = xp.clip(x, 0.0, 1.0)
        while x.ndim < input_rank:
            x = x[:, None]
        return x.astype(xp.float32, copy=False)


def preprocess_from(metadata: Mapping[str, str], config: Mapping[str, Any] | None = None, source: str = "model") -> Preprocess:
    """HU window from config ``hu_window`` or metadata ``audit.hu_window`` (JSON [lo, hi])."""
    config = dict(config or {})
    for key in config:
        if key not in ("hu_window", "clip"):
            raise ConfigError(f"preprocess.{key}: unknown key")
    window = config.get("hu_window")
    if window is None and "audit.hu_window" in metadata:
        try:
            window = json.loads(metadata["audit.hu_window"])
        except ValueError:
            raise ConfigError(f"{source}: unreadable audit.hu_window metadata {metadata['audit.hu_window']!r}") from None
    if window is None:
        raise ConfigError(f"{source}: no HU window in the model metadata; set preprocess.hu_window = [lo, hi]")
    if len(window) != 2 or not float(window[1]) > float(window[0]):
        raise ConfigError(f"preprocess.hu_window: expected [lo, hi] with hi > lo, got {window!r}")
    return Preprocess((float(window[0]), float(window[1])), bool(config.get("clip", True)))
