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

from models import metrics
from models.nets.fpr3d import beta_loss


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
