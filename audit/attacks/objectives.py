"""What an attack maximises, by task: per-sample losses on the twin's raw outputs.

- binary (sigmoid, softmax pair or evidential beta): cross-entropy to the clean
  label, i.e. move the probability away from the clean decision;
- multiclass: cross-entropy to the clean label;
- rating and regression: squared L2 distance of the output to its clean value
  (or to a given target);
- segmentation: 1 - soft Dice between the predicted foreground probability and
  the clean mask (study 4);
- ``output_distance``: ||D(x + p) - D(x)||^2 on the raw output (study 1, eq. 3),
  task-agnostic.

Each returns a (B,) tensor; larger is "more attacked". Logs take p + 1e-30
rather than a clamped p: a clamp would zero the gradient of a saturated
probability (p = 1e-13 after a steep sigmoid), where p + tiny keeps its sign.
"""

from __future__ import annotations

from typing import Any

from audit.heads import Head

_TINY = 1e-30
OBJECTIVES = ("task", "output_distance")


def probability(head: Head, raw: Any) -> Any:
    """P(class 1) (binary) or class probabilities (multiclass) from a raw output tensor (B, ...)."""
    import torch

    flat = raw.reshape(raw.shape[0], -1)
    if head.task == "binary":
        if flat.shape[1] == 1:
            return torch.sigmoid(flat[:, 0]) if head.activation == "sigmoid" else flat[:, 0]
        if head.activation == "beta":
            return flat[:, 0] / (flat[:, 0] + flat[:, 1])
        if head.activation == "softmax" or (head.activation == "none" and not _looks_like_prob(flat)):
            return torch.softmax(flat, dim=1)[:, 1]
        return flat[:, 1]
    if head.task == "multiclass":
        if head.activation == "softmax" or (head.activation == "none" and not _looks_like_prob(flat)):
            return torch.softmax(flat, dim=1)
        return flat
    raise ValueError(f"probability: task {head.task!r} has no class probabilities")


def _looks_like_prob(flat: Any) -> bool:
    import torch

    with torch.no_grad():
        return bool((flat >= 0).all() and torch.allclose(flat.sum(1), torch.ones_like(flat[:, 0]), atol=1e-4))


def task_loss(head: Head, raw: Any, clean_raw: Any, clean_labels: Any | None = None, target: Any | None = None) -> Any:
    """Per-sample loss to maximise for ``head.task``; ``clean_raw`` is the twin's output on the clean input.

    ``clean_labels`` (B,) int64 (classification) defaults to the decisions on
    ``clean_raw``; ``target`` (regression) defaults to ``clean_raw``.
    """
    import torch

    b = raw.shape[0]
    if head.task == "binary":
        p = probability(head, raw)
        if clean_labels is None:
            clean_labels = (probability(head, clean_raw) >= head.threshold).long()
        y = clean_labels.to(p.dtype)
        return -(y * torch.log(p + _TINY) + (1 - y) * torch.log(1 - p + _TINY))
    if head.task == "multiclass":
        p = probability(head, raw)
        if clean_labels is None:
            clean_labels = probability(head, clean_raw).argmax(1)
        return -torch.log(p.gather(1, clean_labels.view(-1, 1))[:, 0] + _TINY)
    if head.task in ("regression", "rating"):
        ref = clean_raw if target is None else target
        return ((raw - ref.detach()) ** 2).reshape(b, -1).sum(1)
    if head.task == "segmentation":
        prob = _foreground(head, raw)
        ref = (_foreground(head, clean_raw) > head.threshold).to(prob.dtype) if target is None else target.to(prob.dtype)
        prob, ref = prob.reshape(b, -1), ref.reshape(b, -1).detach()
        dice = (2 * (prob * ref).sum(1) + 1.0) / (prob.sum(1) + ref.sum(1) + 1.0)
        return 1.0 - dice
    raise ValueError(f"objective: unknown task {head.task!r}")


def _foreground(head: Head, raw: Any) -> Any:
    import torch

    if raw.ndim >= 4 and raw.shape[1] > 1:  # class maps: P(not background)
        return 1.0 - torch.softmax(raw, dim=1)[:, 0]
    return torch.sigmoid(raw) if head.activation == "sigmoid" else raw


def output_distance(raw: Any, clean_raw: Any) -> Any:
    """||D(x + p) - D(x)||^2 per sample (study 1, eq. 3)."""
    return ((raw - clean_raw.detach()) ** 2).reshape(raw.shape[0], -1).sum(1)
