import numpy as np
import pytest

from models import metrics


def _auc_pairs(y, s):
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def test_auc_equals_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounding makes ties
    assert metrics.auc(y, s) == pytest.approx(_auc_pairs(y, s), abs=1e-12)


def test_auc_extremes_and_missing_class():
    y = np.array([0, 0, 1, 1])
    assert metrics.auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert metrics.auc(y, [0.5] * 4) == 0.5
    assert np.isnan(metrics.auc([1, 1], [0.2, 0.3]))


def test_binary_metrics_counts():
    m = metrics.binary_metrics([1, 1, 1, 0, 0], [0.9, 0.6, 0.2, 0.4, 0.7], threshold=0.5)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["accuracy"] == pytest.approx(3 / 5)


def test_multiclass_metrics_per_class():
    y = [0, 0, 1, 1, 2, 2]
    p = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    m = metrics.multiclass_metrics(y, p, ("a", "b", "c"))
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == 1.0
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))


def test_dice():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2], b[0, :1] = True, True
    assert metrics.dice(a, b).tolist() == pytest.approx([2 * 4 / 12, 1.0])
