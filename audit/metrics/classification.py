"""Clean (noise-free) performance: AUC, accuracy, sensitivity/specificity, confusion matrix, per-class F1.

These describe how good the model is before any perturbation, against the
reference labels, so a robustness result can be read next to the accuracy it
puts at risk. Binary conventions: label 1 is positive, higher scores mean
"more positive", and a case is called positive when ``score >= threshold``.
Rates are fractions in [0, 1]; an undefined ratio (0/0) is NaN, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from audit.errors import InputError
from audit.metrics import _checks


def auc(labels, scores, *, missing_class: str = "raise") -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (N,), 0/1.

    A class absent from ``labels`` raises ``InputError`` (``missing_class="raise"``, for a report, where it is a
    data problem) or gives NaN (``"nan"``, for a training fold that may lack one).

    Notes
    -----
    The Mann-Whitney statistic: the probability that a random positive scores
    above a random negative, ties counting 1/2. Computed from midranks:
    AUC = (R_pos - m (m + 1) / 2) / (m n), R_pos the sum of the m positives'
    ranks among all N = m + n scores. Study 5 reports readers' AUCs; DeLong's
    test for two of them is ``hypothesis.delong_test``.
    """
    if missing_class not in ("raise", "nan"):
        raise InputError(f"missing_class: expected 'raise' or 'nan', got {missing_class!r}")
    y = _checks.binary_labels("labels", labels, min_per_class=1 if missing_class == "raise" else 0)
    s = _checks.scores("scores", scores, y.size)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return float("nan")
    return float((rankdata(s)[y].sum() - m * (m + 1) / 2.0) / (m * n))


def _pair(true_labels, predicted_labels, n_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    t = _checks.labels("true_labels", true_labels, n_classes)
    p = _checks.labels("predicted_labels", predicted_labels, n_classes)
    if t.shape != p.shape:
        raise InputError(f"predicted_labels: expected shape {t.shape} to match true_labels, got {p.shape}")
    if t.size == 0:
        raise InputError("true_labels: expected at least one case, got none")
    return t, p


def accuracy(true_labels, predicted_labels) -> float:
    """Fraction of cases whose predicted label equals the true label; labels (N,) integers >= 0."""
    t, p = _pair(true_labels, predicted_labels, None)
    return float(np.mean(t == p))


def confusion_matrix(true_labels, predicted_labels, n_classes: int) -> np.ndarray:
    """Counts ``cm[t, p]`` of cases with true label t predicted p: (C, C) int64. Rows are the truth.

    Notes
    -----
    The usual orientation (rows = truth, columns = prediction). The robustness
    CMR (``robustness.confusion_matrix_for_robustness``) is the other way round
    (rows = perturbed prediction, columns = clean prediction), as in study 2.
    """
    c = _checks.n_classes("n_classes", n_classes)
    t, p = _pair(true_labels, predicted_labels, c)
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


def sensitivity_specificity(labels, scores, threshold: float = 0.5) -> tuple[float, float]:
    """Sensitivity (recall of positives) and specificity (recall of negatives) at ``score >= threshold``.

    ``labels`` (N,) 0/1 with both classes present; ``scores`` (N,).
    """
    y = _checks.binary_labels("labels", labels)
    s = _checks.scores("scores", scores, y.size)
    thr = _threshold(threshold)
    called = s >= thr
    return float(np.mean(called[y])), float(np.mean(~called[~y]))


def _threshold(value) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise InputError(f"threshold: expected a finite number, got {value!r}") from None
    if not np.isfinite(t):
        raise InputError(f"threshold: expected a finite number, got {value!r}")
    return t


def binary_performance(labels, scores, threshold: float = 0.5) -> dict[str, float | int]:
    """Clean performance of a binary model: AUC, and accuracy, sensitivity, specificity at ``threshold``.

    Returns a plain dict (``auc``, ``accuracy``, ``sensitivity``,
    ``specificity``, ``threshold``, ``n_positive``, ``n_negative``) for report.json.
    """
    y = _checks.binary_labels("labels", labels)
    s = _checks.scores("scores", scores, y.size)
    thr = _threshold(threshold)
    sens, spec = sensitivity_specificity(y, s, thr)
    return {
        "auc": auc(y, s),
        "accuracy": float(np.mean((s >= thr) == y)),
        "sensitivity": sens,
        "specificity": spec,
        "threshold": thr,
        "n_positive": int(y.sum()),
        "n_negative": int((~y).sum()),
    }


@dataclass(frozen=True)
class PerClassScores:
    """Per-class precision, recall and F1 (each (C,) float64, NaN where undefined) and support (true count)."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray


def precision_recall_f1(true_labels, predicted_labels, n_classes: int) -> PerClassScores:
    """One-vs-rest precision, recall and F1 of each class, from labels (N,) in [0, n_classes).

    Notes
    -----
    With TP, FP, FN of class c: precision = TP / (TP + FP) (NaN if c is never
    predicted), recall = TP / (TP + FN) (NaN if c never occurs), F1 =
    2 TP / (2 TP + FP + FN), the harmonic mean of the two, which is 0 when
    only one of them is defined and NaN only when c is absent from both the
    truth and the predictions.
    """
    cm = confusion_matrix(true_labels, predicted_labels, n_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), np.nan)
        recall = np.where(actual > 0, tp / np.maximum(actual, 1), np.nan)
        denom = predicted + actual  # 2 TP + FP + FN
        f1 = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), np.nan)
    return PerClassScores(precision, recall, f1, actual.astype(np.int64))


def macro_f1(true_labels, predicted_labels, n_classes: int) -> float:
    """Unweighted mean of the per-class F1 over the classes that occur in the truth or the predictions.

    Notes
    -----
    A class absent from both has no F1 (NaN) and is left out rather than
    counted as 0 or 1, so declaring unused classes does not change the score.
    """
    f1 = precision_recall_f1(true_labels, predicted_labels, n_classes).f1
    return float(np.nanmean(f1))
