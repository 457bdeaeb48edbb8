"""What an attack maximises, by task: per-sample losses on the twin's raw outputs.

- binary (sigmoid, softmax pair or evidential beta): cross-entropy to the clean
  label, i.e. move the probability away from the clean decision;
- multiclass: cross-entropy to the clean label;
- rating and regression: squared L2 distance of the output to its clean value
  (or to a given target);
- segmentation: 1 - soft Dice between the predicted foreground probability and
  the clean mask (study 4);
- ``output_distance``: ||D(x + p) - D(x)||^2 (study 1, eq. 3), task-agnostic, on
  what the losses read (the logit where the twin exposes it, else the output);
- ``evade_ood`` (PGD only, a model whose head names an ``ood_output``): flip the
  class while keeping the OOD score from rising, ``task - OOD_PENALTY *
  relu(ood(x + p) - ood(x)) / scale`` (``evade_ood``), with ood(x) each sample's
  clean score (a constant) and ``scale`` the spread of the batch's clean scores
  (``ood_scale``). The task objective ignores the OOD score: an attack on it is
  blind to the detector, this one evades it.

Each returns a (B,) tensor; larger is "more attacked". Class log-probabilities
come from ``log_probabilities``. From a logit (``Target`` hands the losses the
pre-activation of a sigmoid/softmax output when the graph shows one, see
``audit.attacks.logits``) they are ``log_softmax`` of the logits divided by a
per-sample temperature T = max(1, (max - min logit) / LOGIT_SPREAD_CAP), T held
constant in the gradient: T = 1 (plain cross-entropy, torchattacks' loss) for
all but very confident samples. There the plain gradient, 1 - p of the clean
class, is computed as 1 - fl(p) and rounds to exactly 0 in float32 once p is
within an ulp of 1 (a spread above ~17), and PGD would stall. For a binary
logit the tempered gradient has the same sign as the plain one, so an L-inf
step is unchanged wherever the plain one was non-zero. From
probabilities they are the log of p + 1e-30 rather than of a clamped p: a clamp
would zero the gradient of a tiny probability, where p + tiny keeps it.
"""

from __future__ import annotations

from typing import Any

from audit.artifact.heads import Head
from audit.errors import ConfigError

_TINY = 1e-30
#: Largest logit spread a loss sees (see the module docstring): 1 - p >= exp(-12) ~ 6e-6, about 100 float32 ulps
#: below 1, so the gradient keeps ~1% precision instead of rounding to 0.
LOGIT_SPREAD_CAP = 12.0
#: Objectives of every gradient attack (PGD, the NPS ascent).
OBJECTIVES = ("task", "output_distance")
#: Objectives that also read the OOD score (the head's ``ood_output``): PGD's only, on top of ``OBJECTIVES``.
OOD_OBJECTIVES = ("evade_ood",)
#: ``evade_ood``'s weight of an OOD-score rise against the task loss: a rise of one ``ood_scale`` costs OOD_PENALTY
#: nats of task loss (unit-free). Measured (L-inf 6 HU, 10 steps, seed 0; deployed successes, AUROC of the successful
#: candidates, own image = P(candidate > its clean score)): on the test net FragileOod (score over the whole image,
#: tests/audit/attacks/test_attack_ood.py), 10 images: task 8/10, 0.50, 0.90; evade_ood 8/10, 0.26, 0.00 at every
#: weight from 0.001 to 100 (the score's gradient reaches pixels the class ignores). On a variant whose score reads
#: the class's own region, where the two gradients compete, 30 images: task 17/30, 0.42, 0.17; weights 0.01 and 0.1
#: change nothing (17/30, 0.42, 0.17); 1, 10 and 100 give 17/30, 0.38, 0.03. So the penalty starts to bite near 1;
#: 10 is an order of magnitude above that, and even 100 cost no success (the penalty is zero once the score is at or
#: below the clean one, so the task gradient alone drives the flip from there).
OOD_PENALTY = 10.0
#: ``ood_scale``'s floor as a fraction of the batch's mean |clean OOD score| (a batch of one sample, or of equal
#: scores, has no spread), and in absolute units when that is 0 too.
OOD_SCALE_FLOOR = 0.01
OOD_SCALE_TINY = 1e-12


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
    raise ConfigError(f"probability: task {head.task!r} has no class probabilities")


def _looks_like_prob(flat: Any) -> bool:
    import torch

    with torch.no_grad():
        return bool((flat >= 0).all() and torch.allclose(flat.sum(1), torch.ones_like(flat[:, 0]), atol=1e-4))


def log_probabilities(head: Head, raw: Any) -> Any:
    """(B, C) log class probabilities (binary: C = 2, [log P(0), log P(1)]) from a raw output tensor (B, ...)."""
    import torch
    from torch.nn import functional as F

    flat = raw.reshape(raw.shape[0], -1)
    if head.task == "binary" and flat.shape[1] == 1:
        z = flat[:, 0]
        if head.activation == "sigmoid":  # P(1) = sigmoid(z) = softmax([0, z])[1]
            return F.log_softmax(_tempered(torch.stack([torch.zeros_like(z), z], dim=1)), dim=1)
        return torch.stack([torch.log(1 - z + _TINY), torch.log(z + _TINY)], dim=1)
    if head.task == "binary" and head.activation == "beta":
        a, b = flat[:, 0], flat[:, 1]
        total = torch.log(a + b + _TINY)
        return torch.stack([torch.log(b + _TINY) - total, torch.log(a + _TINY) - total], dim=1)
    if head.task in ("binary", "multiclass"):
        if head.activation == "softmax" or (head.activation == "none" and not _looks_like_prob(flat)):
            return F.log_softmax(_tempered(flat), dim=1)
        return torch.log(flat + _TINY)
    raise ConfigError(f"log_probabilities: task {head.task!r} has no class probabilities")


def _tempered(logits: Any) -> Any:
    """Logits (B, C) divided by T = max(1, spread / LOGIT_SPREAD_CAP) per sample, T a constant for autograd."""
    import torch

    with torch.no_grad():
        t = torch.clamp((logits.amax(1) - logits.amin(1)) / LOGIT_SPREAD_CAP, min=1.0)
    return logits / t[:, None]


def task_loss(head: Head, raw: Any, clean_raw: Any, clean_labels: Any | None = None, target: Any | None = None) -> Any:
    """Per-sample loss to maximise for ``head.task``; ``clean_raw`` is the twin's output on the clean input.

    ``clean_labels`` (B,) int64 (classification) defaults to the decisions on
    ``clean_raw``; ``target`` (regression) defaults to ``clean_raw``.
    """
    import torch

    b = raw.shape[0]
    if head.task in ("binary", "multiclass"):
        if clean_labels is None:
            with torch.no_grad():
                p = probability(head, clean_raw)
                clean_labels = (p >= head.threshold).long() if head.task == "binary" else p.argmax(1)
        return -log_probabilities(head, raw).gather(1, clean_labels.view(-1, 1).long())[:, 0]
    if head.task in ("regression", "rating"):
        ref = clean_raw if target is None else target
        return ((raw - ref.detach()) ** 2).reshape(b, -1).sum(1)
    if head.task == "segmentation":
        prob = _foreground(head, raw)
        ref = (_foreground(head, clean_raw) > head.threshold).to(prob.dtype) if target is None else target.to(prob.dtype)
        prob, ref = prob.reshape(b, -1), ref.reshape(b, -1).detach()
        dice = (2 * (prob * ref).sum(1) + 1.0) / (prob.sum(1) + ref.sum(1) + 1.0)
        return 1.0 - dice
    raise ConfigError(f"objective: unknown task {head.task!r}")


def _foreground(head: Head, raw: Any) -> Any:
    import torch

    if raw.ndim >= 4 and raw.shape[1] > 1:  # class maps: P(not background)
        return 1.0 - torch.softmax(raw, dim=1)[:, 0]
    return torch.sigmoid(raw) if head.activation == "sigmoid" else raw


def output_distance(raw: Any, clean_raw: Any) -> Any:
    """||D(x + p) - D(x)||^2 per sample (study 1, eq. 3)."""
    return ((raw - clean_raw.detach()) ** 2).reshape(raw.shape[0], -1).sum(1)


def ood_scale(clean_ood: Any) -> Any:
    """The unit of an OOD-score rise in ``evade_ood``, one constant per batch: the standard deviation of the batch's
    clean OOD scores (B,), how much the score varies between in-distribution inputs, which is what the detector's
    AUROC ranks against; floored at ``OOD_SCALE_FLOOR`` x their mean magnitude (then ``OOD_SCALE_TINY``), so a
    batch of one sample or of equal scores still has a unit. A 0-dim tensor, no gradient."""
    import torch

    with torch.no_grad():
        c = clean_ood.detach().to(torch.float64)
        spread = c.std(unbiased=False) if c.numel() > 1 else torch.zeros((), dtype=torch.float64)
        floor = torch.clamp(OOD_SCALE_FLOOR * c.abs().mean(), min=OOD_SCALE_TINY)
        return torch.maximum(spread, floor).to(clean_ood.dtype)


def evade_ood(task: Any, ood: Any, clean_ood: Any, scale: Any) -> Any:
    """Per-sample ``task - OOD_PENALTY * relu(ood - clean_ood) / scale``: the task loss (B,), less the rise of the
    OOD score ``ood`` (B,) over the sample's clean score ``clean_ood`` (held constant) in units of ``scale``
    (``ood_scale``). A score at or below the clean one costs nothing."""
    import torch

    return task - OOD_PENALTY * torch.relu(ood - clean_ood.detach()) / scale
