"""Classification, rating and segmentation metrics on NumPy arrays (no scikit-learn).

AUC is the Mann-Whitney statistic: the probability that a random positive
scores above a random negative, ties counting one half.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auc(labels, scores) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 positive); NaN if a class is missing.

    Notes
    -----
    AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), R_pos the sum of the
    positives' mid-ranks among all scores (Mann-Whitney U / (n_pos n_neg)).
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"auc: labels and scores differ in length ({y.size} vs {s.size})")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


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
    y = np.asarray(labels, dtype=np.int64).ravel()
    p = np.asarray(predicted, dtype=np.int64).ravel()
    return np.bincount(y * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


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
    t = np.asarray(mask_true).astype(bool).reshape(len(mask_true), -1)
    p = np.asarray(mask_pred).astype(bool).reshape(len(mask_pred), -1)
    inter = np.sum(t & p, axis=1)
    total = np.sum(t, axis=1) + np.sum(p, axis=1)
    return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)
