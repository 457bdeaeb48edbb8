"""Clean performance: AUC, accuracy, sensitivity/specificity, confusion matrix, per-class and macro F1."""

from __future__ import annotations

import numpy as np
import pytest

from audit.errors import InputError
from audit.metrics import (
    accuracy,
    auc,
    binary_performance,
    confusion_matrix,
    macro_f1,
    precision_recall_f1,
    sensitivity_specificity,
)

# Positives score 0.9, 0.5, 0.3; negatives 0.5, 0.2, 0.6.
LABELS = np.array([1, 1, 0, 0, 1, 0])
SCORES = np.array([0.9, 0.5, 0.5, 0.2, 0.3, 0.6])


def test_auc_hand_case_with_a_tie():
    # 0.9 beats all 3 negatives (3); 0.5 ties 0.5 (1/2), beats 0.2 (1), loses to 0.6 (0) -> 1.5;
    # 0.3 beats only 0.2 (1). AUC = (3 + 1.5 + 1) / 9 = 11/18.
    assert auc(LABELS, SCORES) == pytest.approx(11 / 18, abs=1e-15)
    assert auc(LABELS, -SCORES) == pytest.approx(1 - 11 / 18, abs=1e-15)  # reversing the scores mirrors it
    assert auc(LABELS.astype(bool), SCORES) == auc(LABELS, SCORES)
    assert auc([1, 0, 1, 0], [0.5] * 4) == 0.5  # all ties


def test_sensitivity_specificity_and_accuracy_at_threshold():
    # Called positive at score >= 0.5: cases 0, 1, 2, 5. Positives 0, 1, 4 -> 2 of 3 found;
    # negatives 2, 3, 5 -> only 3 called negative, 1 of 3. Correct calls: 0, 1, 3 -> 3 of 6.
    assert sensitivity_specificity(LABELS, SCORES, 0.5) == pytest.approx((2 / 3, 1 / 3))
    assert sensitivity_specificity(LABELS, SCORES, 0.55) == pytest.approx((1 / 3, 2 / 3))
    perf = binary_performance(LABELS, SCORES, 0.5)
    assert perf["accuracy"] == 0.5 and perf["auc"] == pytest.approx(11 / 18)
    assert perf["n_positive"] == 3 and perf["n_negative"] == 3 and perf["threshold"] == 0.5


def test_multiclass_hand_case():
    true = [0, 0, 1, 1, 2, 2, 2]
    pred = [0, 1, 1, 1, 2, 0, 1]
    cm = confusion_matrix(true, pred, 4)  # class 3 declared but unused
    np.testing.assert_array_equal(cm, [[1, 1, 0, 0], [0, 2, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    assert accuracy(true, pred) == pytest.approx(4 / 7)
    s = precision_recall_f1(true, pred, 4)
    # TP = 1, 2, 1; predicted = 2, 4, 1; actual = 2, 2, 3.
    np.testing.assert_allclose(s.precision[:3], [1 / 2, 2 / 4, 1 / 1])
    np.testing.assert_allclose(s.recall[:3], [1 / 2, 1, 1 / 3])
    np.testing.assert_allclose(s.f1[:3], [2 / 4, 4 / 6, 2 / 4])  # 2 TP / (predicted + actual)
    assert np.isnan(s.precision[3]) and np.isnan(s.recall[3]) and np.isnan(s.f1[3])
    np.testing.assert_array_equal(s.support, [2, 2, 3, 0])
    assert macro_f1(true, pred, 4) == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)  # unused class left out
    assert macro_f1(true, pred, 3) == macro_f1(true, pred, 4)


def test_f1_of_a_class_predicted_but_never_true_is_zero():
    # Class 1 predicted once, never true: precision 0, recall undefined, F1 = 0; class 0 F1 = 2/3.
    s = precision_recall_f1([0, 0], [0, 1], 2)
    assert s.precision[1] == 0.0 and np.isnan(s.recall[1]) and s.f1[1] == 0.0
    assert macro_f1([0, 0], [0, 1], 2) == pytest.approx((2 / 3 + 0) / 2)


def test_f1_matches_harmonic_mean_on_random_labels():
    rng = np.random.default_rng(2)
    true, pred = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    s = precision_recall_f1(true, pred, 5)
    np.testing.assert_allclose(s.f1, 2 * s.precision * s.recall / (s.precision + s.recall), rtol=1e-12)
    assert confusion_matrix(true, pred, 5).sum() == 300
    assert accuracy(true, pred) == pytest.approx(np.trace(confusion_matrix(true, pred, 5)) / 300)


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: auc([0, 1, 2], [0.1, 0.2, 0.3]), "labels: expected binary values"),
        (lambda: auc([1, 1, 1], [0.1, 0.2, 0.3]), "labels: expected at least 1 positive(s) (1) and 1 negative(s) (0)"),
        (lambda: auc([1, 0, 1], [0.1, 0.2]), "scores: expected shape (3,)"),
        (lambda: auc([1, 0], ["a", "b"]), "scores: expected real-valued scores"),
        (lambda: sensitivity_specificity([1, 0], [0.2, 0.1], np.nan), "threshold: expected a finite number"),
        (lambda: confusion_matrix([0, 1], [0, 2], 2), "predicted_labels: expected class labels in [0, 2), found 2"),
        (lambda: accuracy([0, 1], [0, 1, 1]), "predicted_labels: expected shape (2,)"),
        (lambda: accuracy([], []), "true_labels: expected at least one case"),
    ],
)
def test_bad_input_names_the_argument(call, fragment):
    with pytest.raises(InputError) as info:
        call()
    assert fragment in str(info.value)
