"""What a model is trained and judged on: loss, predictions and metrics per kind of task.

A ``Task`` turns a batch of targets into a loss for ``net.logits``, turns the
exported outputs (``net.forward``) into NumPy predictions and those into
metrics, and names the validation score that picks the best checkpoint
(higher is better).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from audit.metrics.detection import Lesions, candidates_from_points, froc, match_candidates
from models import metrics
from models.nets.fpr3d import beta_loss
from models.phantoms.lesion_volumes import unpad


class Task:
    kind = ""
    targets: tuple[str, ...] = ()

    def loss(self, net, x: torch.Tensor, t: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, outputs: list[np.ndarray], t: dict[str, np.ndarray]) -> dict:
        raise NotImplementedError

    def score(self, m: dict) -> float:
        raise NotImplementedError


class BinaryTask(Task):
    """Sigmoid output (B, 1) = P(class 1); decisions at ``threshold``."""

    kind, targets = "binary", ("label",)

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def loss(self, net, x, t, epoch):
        return F.binary_cross_entropy_with_logits(net.logits(x)[:, 0], t["label"].float())

    def evaluate(self, outputs, t):
        return metrics.binary_metrics(t["label"], outputs[0][:, 0], self.threshold)

    def score(self, m):
        return m["auc"]


class RatingTask(Task):
    """Regression of the 1-5 malignancy rating; output (B, 1) in [1, 5]."""

    kind, targets = "rating", ("rating", "label")

    def loss(self, net, x, t, epoch):
        return F.mse_loss(1.0 + 4.0 * torch.sigmoid(net.logits(x)[:, 0]), t["rating"].float())

    def evaluate(self, outputs, t):
        return metrics.rating_metrics(t["rating"], outputs[0][:, 0], t["label"])

    def score(self, m):
        return -m["mae"]


class MulticlassTask(Task):
    """Softmax output (B, C); decisions by argmax."""

    kind, targets = "multiclass", ("label",)

    def __init__(self, class_names) -> None:
        self.class_names = tuple(class_names)

    def loss(self, net, x, t, epoch):
        return F.cross_entropy(net.logits(x), t["label"])

    def evaluate(self, outputs, t):
        return metrics.multiclass_metrics(t["label"], outputs[0], self.class_names)

    def score(self, m):
        return m["macro_f1"] + 1e-3 * m["accuracy"]


class BetaTask(Task):
    """Evidential binary output (B, 2) = (alpha, beta); P(class 1) = alpha / (alpha + beta)."""

    kind, targets = "binary", ("label",)

    def __init__(self, threshold: float = 0.5, anneal_epochs: int = 10) -> None:
        self.threshold, self.anneal = threshold, anneal_epochs

    def loss(self, net, x, t, epoch):
        return beta_loss(net(x), t["label"], min(1.0, epoch / self.anneal))

    def evaluate(self, outputs, t):
        ev = outputs[0].astype(np.float64)
        m = metrics.binary_metrics(t["label"], ev[:, 0] / ev.sum(axis=1), self.threshold)
        m["mean_uncertainty"] = float(np.mean(2.0 / ev.sum(axis=1)))
        return m

    def score(self, m):
        return m["auc"]


class SegContourTask(Task):
    """Mask (B, 1, H, W) probability and contour (B, P, 2) normalised points; Dice at ``threshold``."""

    kind, targets = "segmentation", ("mask", "contour")

    def __init__(self, half_fov_mm: float, threshold: float = 0.5, contour_weight: float = 10.0) -> None:
        self.half_fov, self.threshold, self.w = half_fov_mm, threshold, contour_weight

    def loss(self, net, x, t, epoch):
        m, c = net.logits(x)
        target = t["mask"].float()[:, None]
        p = torch.sigmoid(m)
        soft_dice = 1 - (2 * (p * target).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
        return F.binary_cross_entropy_with_logits(m, target) + soft_dice.mean() + self.w * F.mse_loss(torch.tanh(c), t["contour"])

    def evaluate(self, outputs, t):
        d = metrics.dice(t["mask"], outputs[0][:, 0] >= self.threshold)
        err = np.linalg.norm(outputs[1] - t["contour"], axis=-1) * self.half_fov
        return {"dice": float(np.mean(d)), "dice_min": float(np.min(d)), "contour_mae_mm": float(np.mean(err)), "n": int(len(d))}

    def score(self, m):
        return m["dice"] - 0.01 * m["contour_mae_mm"]


class DetectionTask(Task):
    """Candidates (B, M, 3) voxel centres and (B, M) scores per volume; judged by LUNA16's CPM (``audit.metrics``).

    Target ``lesions`` (B, L, 4): (z, y, x voxel, diameter mm) rows, NaN rows unused. Matching floors lesion radii
    at ``min_radius_mm`` as the audit does (metadata ``audit.min_radius_mm``); ``threshold`` is the operating point
    whose sensitivity and FPs per scan are reported. The two stages train with their own losses
    (``heatmap_loss`` for the candidate heat map, the evidential ``beta_loss`` for the FPR patches:
    ``models.training.train_detector``), so ``loss`` is not used.
    """

    kind, targets = "detection", ("lesions",)

    def __init__(self, spacing, min_radius_mm: float, threshold: float = 0.5) -> None:
        self.spacing, self.min_radius, self.threshold = tuple(spacing), float(min_radius_mm), float(threshold)

    def loss(self, net, x, t, epoch):
        raise NotImplementedError("detection: the stages train with heatmap_loss and beta_loss (train_detector)")

    def matches(self, centres: np.ndarray, scores: np.ndarray, lesions: np.ndarray) -> list:
        """One ``ScanMatch`` per volume (``audit.metrics.detection.match_candidates``)."""
        out = []
        for c, s, les in zip(centres, scores, lesions):
            out.append(match_candidates(candidates_from_points(c, s), Lesions.from_rows(unpad(les)), self.spacing,
                                        min_radius_mm=self.min_radius))
        return out

    def evaluate(self, outputs, t):
        ms = self.matches(outputs[0], outputs[1], t["lesions"])
        f = froc(ms)
        n_les = max(1, f.n_lesions)
        found = sum(int(np.sum(m.hit_scores >= self.threshold)) for m in ms)
        fps = sum(int(np.sum(m.fp_scores >= self.threshold)) for m in ms)
        return {"cpm": f.cpm, "sensitivity_at_1fp": float(f.sensitivity_at[f.rates.index(1.0)]),
                "sensitivity": found / n_les, "fp_per_scan": fps / len(ms),
                "candidate_recall": f.n_detected / n_les, "n_lesions": f.n_lesions, "n": len(ms)}

    def score(self, m):
        return m["cpm"]

    @staticmethod
    def heatmap_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Penalty-reduced focal loss on a Gaussian heat map (CornerNet / CenterNet: Law & Deng 2018, Zhou et al.
        2019): target 1 at a lesion's centre voxel, (1 - target)^4 down-weights the negatives around it; mean over
        the centre voxels, so the ~10^5 background voxels of a volume do not swamp the few lesions."""
        pos = target >= 1.0
        logp, log1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
        p = torch.sigmoid(logits)
        pos_loss = ((1 - p) ** 2 * logp)[pos].sum()
        neg_loss = ((1 - target) ** 4 * p**2 * log1mp)[~pos].sum()
        return -(pos_loss + neg_loss) / pos.sum().clamp(min=1)
