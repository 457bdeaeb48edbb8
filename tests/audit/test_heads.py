"""Heads turn raw outputs into decisions and flips the way each task defines them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audit.errors import ConfigError
from audit.artifact.heads import Head, Preprocess, head_from, preprocess_from


def test_binary_from_probability_logits_and_beta():
    h = Head("binary", threshold=0.5)
    d = h.decide({"p": np.array([[0.2], [0.5], [0.9]])})
    assert d.labels.tolist() == [0, 1, 1] and np.allclose(d.scores, [0.2, 0.5, 0.9])
    logits = h.decide({"z": np.array([[2.0, 0.0], [0.0, 3.0]])})
    assert logits.labels.tolist() == [0, 1]
    beta = head_from({"audit.task": "binary", "audit.output_kind": "beta", "audit.threshold": "0.5"})
    d = beta.decide({"evidence": np.array([[3.0, 1.0], [1.0, 4.0]])})
    assert d.labels.tolist() == [1, 0] and np.allclose(d.scores, [0.75, 0.2])


def test_multiclass_rating_regression_flips():
    mc = Head("multiclass", class_names=("a", "b", "c"))
    clean, noisy = mc.decide({"p": np.eye(3)}), mc.decide({"p": np.eye(3)[[0, 2, 2]]})
    assert mc.flipped(clean, noisy)[0].tolist() == [False, True, False]
    rating = Head("rating")
    assert rating.decide({"r": np.array([[1.2], [2.6], [4.9]])}).labels.tolist() == [0, 2, 4]
    reg = Head("regression", tolerance=0.1)
    f, _ = reg.flipped(reg.decide({"y": np.array([[1.0], [1.0]])}), reg.decide({"y": np.array([[1.05], [1.3]])}))
    assert f.tolist() == [False, True]


def test_segmentation_flip_is_dice_below_the_limit():
    seg = head_from({"audit.task": "segmentation", "audit.output_kind": "mask+contour", "audit.threshold": "0.5"}, {"min_dice": 0.8})
    assert seg.output == "mask" and seg.n_classes == 0
    mask = np.zeros((2, 1, 8, 8))
    mask[:, :, 2:6, 2:6] = 1.0
    noisy = mask.copy()
    noisy[1, :, 2:6, 4:6] = 0.0  # half of the second mask lost: Dice 2*8/(16+8) = 0.667
    flips, d = seg.flipped(seg.decide({"mask": mask, "contour": np.zeros((2, 4, 2))}),
                           seg.decide({"mask": noisy, "contour": np.zeros((2, 4, 2))}))
    assert flips.tolist() == [False, True] and np.allclose(d, [1.0, 2 / 3])


def test_metadata_and_config_merge_and_errors():
    meta = {"audit.task": "binary", "audit.class_names": json.dumps(["neg", "pos"]), "audit.threshold": "0.3",
            "audit.hu_window": "[-1000, 400]"}
    h = head_from(meta, {"threshold": 0.7})
    assert h.threshold == 0.7 and h.labels_names == ("neg", "pos")
    with pytest.raises(ConfigError, match="head.colour"):
        head_from(meta, {"colour": 1})
    with pytest.raises(ConfigError, match="no task"):
        head_from({})
    p = preprocess_from(meta)
    assert p.window == (-1000.0, 400.0)
    x = p(np.array([[-2000.0, -300.0, 1000.0]], np.float32), 3)
    assert x.shape == (1, 1, 3) and np.allclose(x, [[[0.0, 0.5, 1.0]]])
    with pytest.raises(ConfigError, match="hu_window"):
        preprocess_from({}, {})
    assert Preprocess((0.0, 10.0), clip=False)(np.array([[20.0]], np.float32), 2)[0, 0] == 2.0
