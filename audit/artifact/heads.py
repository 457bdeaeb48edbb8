"""Heads: raw engine outputs -> decisions, and when a perturbed decision counts as a flip.

A head knows its task. Classification heads (binary, multiclass, rating) give
class labels and a flip is a changed label. Regression flips when the value
moves more than a tolerance from the clean one; segmentation flips when the
Dice between the perturbed and the clean mask falls below a set value (study 4), and
optionally when a contour metric of ``audit.metrics.contours`` fails its threshold: HD95 or the contour
error above a distance in mm, or the Dice of filled contours below a value (any failing one flips).
Heads are built from the model's ONNX metadata (``audit.*`` keys written by
``models.export``) and a config section, the config winning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from audit.engines.base import pick_output
from audit.errors import ConfigError, InputError
from audit.metrics import batch_dice, segmentation_flips
from audit.metrics.contours import CONTOUR_COLUMNS
from kernels._xp import array_namespace

TASKS = ("binary", "multiclass", "rating", "regression", "segmentation")
#: Segmentation flip thresholds beyond Dice (``audit.metrics.segmentation_flips``): None = not a criterion.
CONTOUR_THRESHOLDS = ("hd95_max_mm", "contour_error_max_mm", "filled_dice_min")
HEAD_KEYS = ("class_names", "threshold", "activation", "output", "rating_edges", "tolerance", "min_dice",
             *CONTOUR_THRESHOLDS, "contour_metrics")
ACTIVATIONS = ("none", "sigmoid", "softmax", "beta")


@dataclass
class Decisions:
    """Per-item decisions: ``labels`` (B,) int64 (-1 where the task has none), ``scores`` (B,) float32, ``masks`` (segmentation)."""

    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray | None = None

    def take(self, index: np.ndarray) -> "Decisions":
        return Decisions(self.labels[index], self.scores[index], None if self.masks is None else self.masks[index])


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

    def decide(self, outputs: Mapping[str, np.ndarray], source: str = "model") -> Decisions:
        raw = np.asarray(pick_output(outputs, self.output, source), dtype=np.float64)
        b = raw.shape[0]
        if self.task == "segmentation":
            prob = _activate(raw, self.activation)
            if prob.ndim >= 3 and prob.shape[1] > 1:  # (B, C, ...) class maps: foreground = argmax > 0
                masks = np.argmax(prob, axis=1) > 0
            else:
                masks = prob.reshape(b, *prob.shape[-2:]) > self.threshold if prob.ndim >= 3 else prob > self.threshold
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

    def draw_metrics(self, clean: Decisions, noisy: Decisions, spacing: Any = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(flip flags (B,), per-item metric columns): segmentation gives ``dice`` (float32) and, when
        ``computes_contours``, ``hd95_mm``, ``contour_error_mm`` (mm; +inf where exactly one mask is empty) and
        ``filled_dice``; other tasks give none. ``spacing``: the images' voxel sizes in mm (the source's
        ``spacing``; its last axes are the masks' axes: masks on the image grid), needed only for the contour
        metrics (an attack calling ``flipped`` without it on such a head gets one ``InputError``)."""
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

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "class_names": list(self.labels_names), "threshold": self.threshold,
                "activation": self.activation, "output": self.output, "rating_edges": list(self.rating_edges),
                "tolerance": self.tolerance, "min_dice": self.min_dice,
                # only when set: the fingerprint (and so --resume) of a Dice-only head stays as it was
                **{k: getattr(self, k) for k in CONTOUR_THRESHOLDS if getattr(self, k) is not None},
                **({"contour_metrics": True} if self.contour_metrics else {})}


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
    hd95_max_mm, contour_error_max_mm (mm, >= 0), filled_dice_min (in [0, 1]) and contour_metrics (bool)."""
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
        kwargs[key] = tuple(value) if key in ("class_names", "rating_edges") else value
    if kwargs.get("activation", "none") not in ACTIVATIONS:
        raise ConfigError(f"head.activation: expected one of {ACTIVATIONS}, got {kwargs['activation']!r}")
    return Head(**kwargs)


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
