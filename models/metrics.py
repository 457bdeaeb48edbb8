"""The scores a training run reports per task (binary, multiclass, rating, segmentation), as dicts.

Every number is computed by ``audit.metrics`` (AUC, confusion matrix, Dice):
one definition for training and audit. A fold lacking a class gets an AUC of
NaN here (``missing_class="nan"``), where a report would refuse it.
"""

from __future__ import annotations

import numpy as np

from audit.metrics import batch_dice
from audit.metrics import confusion_matrix as _confusion_matrix
from audit.metrics.classification import auc as _auc


def auc(labels, scores) -> float:
    """Mann-Whitney AUC of ``scores`` for binary ``labels`` (1 positive); NaN if a class is missing."""
    return _auc(np.asarray(labels).astype(np.int64).ravel(), np.asarray(scores, np.float64).ravel(), missing_class="nan")


def binary_metrics(labels, scores, threshold: float = 0.5) -> dict[str, float]:
    """AUC, accuracy, sensitivity (recall of 1) and specificity (recall of 0) at ``score >= threshold``."""
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    pred = (s >= threshold).astype(int)
    tp, tn = int(np.sum((pred == 1) & (y == 1))), int(np.sum((pred == 0) & (y == 0)))
    pos, neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    return {
        "auc": auc(y, s),
        "accuracy": float(np.mean(pred == y)) if y.size else float("nan"),
        "sensitivity": tp / pos if pos else float("nan"),
        "specificity": tn / neg if neg else float("nan"),
        "n": int(y.size),
    }


def confusion_matrix(labels, predicted, n_classes: int) -> np.ndarray:
    """Counts ``C[true, predicted]`` as an ``(n_classes, n_classes)`` int64 array."""
    return _confusion_matrix(np.asarray(labels, np.int64).ravel(), np.asarray(predicted, np.int64).ravel(), n_classes)


def multiclass_metrics(labels, probabilities, class_names) -> dict:
    """Accuracy, per-class precision/recall/F1, macro F1 and the confusion matrix of argmax predictions.

    ``probabilities`` is ``(N, C)``; classes never predicted get precision 0.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).ravel()
    k = len(class_names)
    cm = confusion_matrix(y, np.argmax(p, axis=1), k)
    per_class = {}
    for c, name in enumerate(class_names):
        tp = cm[c, c]
        prec = tp / cm[:, c].sum() if cm[:, c].sum() else 0.0
        rec = tp / cm[c, :].sum() if cm[c, :].sum() else float("nan")
        f1 = 2 * prec * rec / (prec + rec) if (prec + rec) > 0 else 0.0
        per_class[name] = {"precision": float(prec), "recall": float(rec), "f1": float(f1), "support": int(cm[c, :].sum())}
    return {
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "macro_f1": float(np.nanmean([v["f1"] for v in per_class.values()])),
        "per_class": per_class,
        "confusion": cm.tolist(),
        "n": int(y.size),
    }


def rating_metrics(ratings, predicted, malignant) -> dict[str, float]:
    """For a 1-5 rating regressor: MAE, exact accuracy of the rounded rating, and AUC of the rating for ``malignant``."""
    r = np.asarray(ratings, dtype=np.float64).ravel()
    p = np.asarray(predicted, dtype=np.float64).ravel()
    return {
        "mae": float(np.mean(np.abs(p - r))),
        "accuracy": float(np.mean(np.clip(np.rint(p), 1, 5) == r)),
        "auc": auc(malignant, p),
        "n": int(r.size),
    }


def dice(mask_true, mask_pred) -> np.ndarray:
    """Per-sample Dice of boolean masks ``(N, ...)``; 1 where both are empty."""
    return batch_dice(np.asarray(mask_true).astype(bool), np.asarray(mask_pred).astype(bool))
