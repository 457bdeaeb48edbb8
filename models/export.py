"""ONNX export with self-describing metadata, and the parity check that must follow every export.

The exported graph has one input named ``image`` with a dynamic batch axis
(opset ``OPSET``) and the net's ``forward`` outputs (probabilities, rating,
evidence, or mask and contour). What an auditor needs to use the artifact is
embedded as ONNX ``metadata_props`` under the keys below (all values strings;
JSON where noted), so the audit can read a model without any side file.

Metadata keys
-------------
audit.schema            "audit-model/1"
audit.model             registry name, e.g. "nodule3d"; audit.variant its variant
audit.task              "binary" | "multiclass" | "rating" | "segmentation" | "detection"
audit.class_names       JSON list of class names in output order (binary: [negative, positive];
                        rating: ["1", ..., "5"])
audit.threshold         binary: class 1 iff P(class 1) >= threshold; segmentation: mask threshold;
                        detection: the operating point (a candidate is shown, a finding, iff its
                        score >= threshold);
                        absent for multiclass (argmax) and rating
audit.rating_edges      rating only: JSON bin edges, rating = 1 + #(edges <= output)
audit.output_kind       "probability" (B, 1) P(class 1) | "probabilities" (B, C) softmax |
                        "rating" (B, 1) in [1, 5] | "beta" (B, 2) (alpha, beta), P(class 1) =
                        alpha / (alpha + beta) | "mask+contour" (B, 1, H, W) and (B, P, 2) |
                        detection: "candidates" (B, M, 3) voxel (z, y, x) centres and (B, M) scores,
                        NaN / -inf scores as padding | "boxes" (B, M, 6) (z0, y0, x0, z1, y1, x1) and
                        (B, M) scores | "heatmap" (B, 1, Z, Y, X) lesion probability
audit.min_radius_mm     detection: matching floor in mm (lesions matched as at least this large; 0 = LUNA16)
audit.nms_radius_mm     detection: heat-map NMS radius in mm (and the merge radius of sliding-window tiles)
audit.ood_output        any task: the output holding a per-item OOD score (higher = more out of distribution),
                        or "uncertainty" for beta heads (2 / (alpha + beta))
audit.outputs           JSON list of output names in order
audit.input_name        the input's name ("image")
audit.input_layout      "NCDHW" (volumes) or "NCHW" (slices); C = 1
audit.input_shape       JSON spatial shape, e.g. [32, 32, 32]
audit.input_spacing_mm  JSON voxel spacing per spatial axis in mm ((z,) y, x)
audit.hu_window         JSON [lo, hi]: model input x = (clip(HU, lo, hi) - lo) / (hi - lo)
audit.recipe_hash       hash of the training recipe and code (models.cache)
audit.weights_sha256    hash of the PyTorch state dict the graph was exported from
audit.seed, audit.fold, audit.repeat   which model of a build this is
audit.test_metrics      JSON metrics on the held-out phantom test split
audit.max_candidates    detection only: M, the fixed number of candidate slots
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from audit.errors import EngineError, InputError

OPSET = 18
INPUT_NAME = "image"
SCHEMA = "audit-model/1"
PARITY_SAMPLES = 100
PARITY_TOLERANCE = 1e-4
#: Batch sizes the parity check cycles through, to exercise the dynamic batch axis.
_PARITY_BATCHES = (1, 7, 32, 60)

KEY_SCHEMA = "audit.schema"
KEY_MODEL = "audit.model"
KEY_VARIANT = "audit.variant"
KEY_TASK = "audit.task"
KEY_CLASS_NAMES = "audit.class_names"
KEY_THRESHOLD = "audit.threshold"
KEY_RATING_EDGES = "audit.rating_edges"
KEY_OUTPUT_KIND = "audit.output_kind"
KEY_OUTPUTS = "audit.outputs"
KEY_INPUT_NAME = "audit.input_name"
KEY_INPUT_LAYOUT = "audit.input_layout"
KEY_INPUT_SHAPE = "audit.input_shape"
KEY_SPACING = "audit.input_spacing_mm"
KEY_HU_WINDOW = "audit.hu_window"
KEY_RECIPE_HASH = "audit.recipe_hash"
KEY_WEIGHTS = "audit.weights_sha256"
KEY_SEED = "audit.seed"
KEY_FOLD = "audit.fold"
KEY_REPEAT = "audit.repeat"
KEY_TEST_METRICS = "audit.test_metrics"

TASKS = ("binary", "multiclass", "rating", "segmentation", "detection")
OUTPUT_KINDS = ("probability", "probabilities", "rating", "beta", "mask+contour", "candidates")


class ParityError(EngineError):
    """ONNX Runtime and PyTorch disagree on an exported model beyond the tolerance."""


@dataclass(frozen=True)
class ModelCard:
    """The audit metadata of an ONNX model, parsed (see the module docstring for the meaning of each field)."""

    task: str
    class_names: tuple[str, ...]
    threshold: float | None
    hu_window: tuple[float, float]
    spacing_mm: tuple[float, ...]
    input_name: str
    input_layout: str
    input_shape: tuple[int, ...]
    output_kind: str
    outputs: tuple[str, ...]
    model: str = ""
    variant: str = ""
    recipe_hash: str = ""
    rating_edges: tuple[float, ...] | None = None
    raw: Mapping[str, str] | None = None

    def preprocess(self, hu: np.ndarray) -> np.ndarray:
        """HU (N, *input_shape) -> model input (N, 1, *input_shape) float32, per ``hu_window``."""
        lo, hi = self.hu_window
        return ((np.clip(hu, lo, hi) - lo) / (hi - lo))[:, None].astype(np.float32)


def metadata_for(bp, *, recipe_hash: str, weights: str, seed: int, fold: int, repeat: int,
                 test_metrics: Mapping | None = None) -> dict[str, str]:
    """The metadata dict (all strings) of a model built from blueprint ``bp``."""
    md = {
        KEY_SCHEMA: SCHEMA,
        KEY_MODEL: bp.name,
        KEY_VARIANT: bp.variant,
        KEY_TASK: bp.task.kind,
        KEY_CLASS_NAMES: json.dumps(list(bp.class_names)),
        KEY_OUTPUT_KIND: bp.output_kind,
        KEY_OUTPUTS: json.dumps(list(bp.output_names)),
        KEY_INPUT_NAME: INPUT_NAME,
        KEY_INPUT_LAYOUT: bp.layout,
        KEY_INPUT_SHAPE: json.dumps(list(bp.input_shape)),
        KEY_SPACING: json.dumps([float(s) for s in bp.spacing]),
        KEY_HU_WINDOW: json.dumps([float(v) for v in bp.hu_window]),
        KEY_RECIPE_HASH: recipe_hash,
        KEY_WEIGHTS: weights,
        KEY_SEED: str(int(seed)),
        KEY_FOLD: str(int(fold)),
        KEY_REPEAT: str(int(repeat)),
    }
    if bp.threshold is not None:
        md[KEY_THRESHOLD] = repr(float(bp.threshold))
    if test_metrics is not None:
        md[KEY_TEST_METRICS] = json.dumps(_scalars(test_metrics), sort_keys=True)
    md.update(bp.extra_metadata)
    return md


def _scalars(m: Mapping) -> dict:
    return {k: v for k, v in m.items() if isinstance(v, (int, float, str))}


def export_onnx(net: torch.nn.Module, path: str | os.PathLike, *, input_shape: Sequence[int],
                output_names: Sequence[str], metadata: Mapping[str, str], parity_inputs: np.ndarray | None = None,
                opset: int = OPSET, tolerance: float = PARITY_TOLERANCE, parity_samples: int = PARITY_SAMPLES) -> float:
    """Export ``net`` (eval mode) to ``path``, embed ``metadata``, then check parity; returns the max abs difference.

    ``input_shape`` is the spatial shape (the input is (B, 1, *input_shape)).
    ``parity_inputs`` (N, 1, *input_shape) supplies real inputs for the check
    (topped up to ``parity_samples``, default ``PARITY_SAMPLES``, with uniform [0, 1] noise). On a parity
    failure the file is removed and ``ParityError`` raised.
    """
    import onnx

    if opset < 17:
        raise InputError(f"opset: expected >= 17, got {opset}")
    path = Path(path)
    net = net.eval()
    dummy = torch.rand(2, 1, *input_shape, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dummy,), str(path), input_names=[INPUT_NAME], output_names=list(output_names),
                          dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, verbose=False,
                          external_data=False)
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(k), str(v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    try:
        return check_parity(path, net, parity_inputs, tolerance=tolerance, n=parity_samples)
    except ParityError:
        path.unlink(missing_ok=True)
        raise


def parity_batch(input_shape: Sequence[int], real: np.ndarray | None, n: int = PARITY_SAMPLES) -> np.ndarray:
    """``n`` inputs (n, 1, *input_shape) float32: the first rows of ``real``, then seeded uniform [0, 1]."""
    rows = [] if real is None else [np.asarray(real[:n], np.float32)]
    have = sum(r.shape[0] for r in rows)
    if have < n:
        rng = np.random.default_rng(0)
        rows.append(rng.random((n - have, 1, *input_shape), dtype=np.float32))
    return np.concatenate(rows)


def check_parity(path: str | os.PathLike, net: torch.nn.Module, inputs: np.ndarray | None = None, *,
                 tolerance: float = PARITY_TOLERANCE, n: int = PARITY_SAMPLES) -> float:
    """Max abs difference between ONNX Runtime on ``path`` and ``net`` over ``n`` inputs, in varying batch sizes.

    Raises ``ParityError`` naming the file, output and difference if it exceeds ``tolerance``. A net with a
    ``parity_difference(x, onnx_outputs, torch_outputs)`` method (a detector, whose candidates may be ordered
    differently where scores tie) measures the difference itself.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    out_names = [o.name for o in sess.get_outputs()]
    spatial = tuple(sess.get_inputs()[0].shape[2:])
    x = parity_batch(spatial, inputs, n)
    worst, worst_name = 0.0, out_names[0]
    net = net.eval()
    start, j = 0, 0
    while start < x.shape[0]:
        b = x[start : start + _PARITY_BATCHES[j % len(_PARITY_BATCHES)]]
        got = sess.run(None, {in_name: b})
        with torch.no_grad():
            ref = net(torch.from_numpy(b))
        ref = ref if isinstance(ref, tuple) else (ref,)
        if len(ref) != len(got):
            raise ParityError(f"{path}: ONNX model has {len(got)} outputs, PyTorch {len(ref)}")
        for name, g, r in zip(out_names, got, ref):
            if g.shape != tuple(r.shape):
                raise ParityError(f"{path}: output {name!r} has shape {g.shape} in ONNX Runtime, {tuple(r.shape)} in PyTorch")
        if hasattr(net, "parity_difference"):  # a detector: candidates compare as sets (its own tie rule)
            diffs = [("/".join(out_names), float(net.parity_difference(b, got, ref)))]
        else:
            diffs = [(name, float(np.max(np.abs(g.astype(np.float64) - r.numpy().astype(np.float64)))))
                     for name, g, r in zip(out_names, got, ref)]
        for name, d in diffs:
            if not d <= worst:
                worst, worst_name = d, name
        start += b.shape[0]
        j += 1
    if not worst <= tolerance:
        raise ParityError(f"{path}: ONNX Runtime differs from PyTorch by {worst:.3g} on output {worst_name!r} "
                          f"(max abs over {x.shape[0]} inputs); expected <= {tolerance:g}")
    return worst


def read_metadata(path: str | os.PathLike) -> ModelCard:
    """The audit metadata of the ONNX model at ``path``; ``InputError`` if it is missing or malformed."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file problem
        raise InputError(f"{path}: not a readable ONNX model ({exc})") from None
    md = {p.key: p.value for p in model.metadata_props}
    if md.get(KEY_SCHEMA) != SCHEMA:
        raise InputError(f"{path}: metadata {KEY_SCHEMA!r} is {md.get(KEY_SCHEMA)!r}; expected {SCHEMA!r} "
                         "(export with models.export)")

    def get(key: str, parse=json.loads):
        if key not in md:
            raise InputError(f"{path}: metadata key {key!r} is missing")
        try:
            return parse(md[key])
        except ValueError:
            raise InputError(f"{path}: metadata key {key!r} has unparsable value {md[key]!r}") from None

    task = get(KEY_TASK, str)
    if task not in TASKS:
        raise InputError(f"{path}: metadata {KEY_TASK!r} is {task!r}; expected one of {TASKS}")
    window = tuple(float(v) for v in get(KEY_HU_WINDOW))
    if len(window) != 2 or not window[0] < window[1]:
        raise InputError(f"{path}: metadata {KEY_HU_WINDOW!r} must be [lo, hi] with lo < hi, got {md[KEY_HU_WINDOW]}")
    return ModelCard(
        task=task,
        class_names=tuple(get(KEY_CLASS_NAMES)),
        threshold=float(md[KEY_THRESHOLD]) if KEY_THRESHOLD in md else None,
        hu_window=window,
        spacing_mm=tuple(float(v) for v in get(KEY_SPACING)),
        input_name=get(KEY_INPUT_NAME, str),
        input_layout=get(KEY_INPUT_LAYOUT, str),
        input_shape=tuple(int(v) for v in get(KEY_INPUT_SHAPE)),
        output_kind=get(KEY_OUTPUT_KIND, str),
        outputs=tuple(get(KEY_OUTPUTS)),
        model=md.get(KEY_MODEL, ""),
        variant=md.get(KEY_VARIANT, ""),
        recipe_hash=md.get(KEY_RECIPE_HASH, ""),
        rating_edges=tuple(json.loads(md[KEY_RATING_EDGES])) if KEY_RATING_EDGES in md else None,
        raw=md,
    )
