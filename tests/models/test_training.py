import numpy as np
import pytest
import torch

import models
from models import registry, training
from models.augment import cube_shift_rotate, slice_scale


def test_splits_disjoint_stratified_and_seeded():
    strata = np.array([0] * 70 + [1] * 30)
    r = registry.get("nodule3d").recipe(folds=5, samples=100)
    splits = training.make_splits(strata, r)
    assert len(splits) == 5
    test = splits[0].test
    assert abs(np.mean(strata[test]) - 0.3) <= 0.05
    vals = np.concatenate([s.val for s in splits])
    assert np.array_equal(np.sort(vals), np.setdiff1d(np.arange(100), test))  # folds partition the rest
    for s in splits:
        assert not set(s.train) & set(s.val) and not set(s.train) & set(test)
        assert abs(np.mean(strata[s.val]) - 0.3) <= 0.07
    again = training.make_splits(strata, r)
    assert all(np.array_equal(a.val, b.val) for a, b in zip(splits, again))
    one = training.make_splits(strata, registry.get("nodule3d").recipe(folds=1, samples=100))
    assert len(one) == 1 and one[0].val.size + one[0].train.size + one[0].test.size == 100


def test_balanced_order_equalises_classes():
    strata = np.array([0] * 900 + [1] * 100)
    order = training.balanced_order(strata, np.random.default_rng(0))
    assert order.size == 1000
    assert np.mean(strata[order]) == pytest.approx(0.5, abs=0.05)


def test_cube_augmentation_is_a_voxel_permutation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 32, 32, 32)
    y = cube_shift_rotate(x, g)
    assert torch.equal(torch.sort(y.flatten(1)).values, torch.sort(x.flatten(1)).values)
    assert not torch.equal(x, y)


def test_slice_scaling_changes_apparent_size():
    x = torch.zeros(64, 1, 64, 64)
    x[:, :, 24:40, 24:40] = 1.0  # a 16x16 square
    y = slice_scale(x, torch.Generator().manual_seed(1))
    area = y.sum(dim=(1, 2, 3)) / 256.0
    assert 0.8**2 - 0.05 < area.min() and area.max() < 1.2**2 + 0.05
    assert area.std() > 0.05


def _tiny(tmp_path, name, seed, **kw):
    return models.build(name, out=tmp_path / f"{name}-{seed}", samples=kw.pop("samples", 40), epochs=1, folds=1,
                        seed=seed, progress=False, **kw)


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = _tiny(tmp_path / "a", "nodule3d", 0)
    b = _tiny(tmp_path / "b", "nodule3d", 0)
    c = _tiny(tmp_path / "c", "nodule3d", 1)
    assert a.artifacts[0].weights_sha256 == b.artifacts[0].weights_sha256
    assert a.artifacts[0].weights_sha256 != c.artifacts[0].weights_sha256
    # The file on disk holds those weights (plain state dict, weights_only load).
    state = torch.load(a.artifacts[0].checkpoint, weights_only=True)
    assert training.weights_sha256(state) == a.artifacts[0].weights_sha256


def test_repeats_and_folds_in_one_build(tmp_path):
    r = models.build("bodysite2d", out=tmp_path, samples=48, epochs=1, folds=2, repeats=2, progress=False)
    assert [(a.repeat, a.fold, a.seed) for a in r.artifacts] == [(0, 0, 0), (0, 1, 0), (1, 0, 1), (1, 1, 1)]
    assert len({a.weights_sha256 for a in r.artifacts}) == 4
    assert set(r.metrics["summary"]) >= {"accuracy", "macro_f1"}
    per_class = r.artifacts[0].test["per_class"]
    assert set(per_class) == {"brain_neck", "chest", "abdomen_pelvis", "leg_foot"}
    assert set(per_class["chest"]) >= {"precision", "recall", "f1"}


@pytest.mark.parametrize("name,variant", [("fpr3d", None), ("unet2d", None), ("nodule3d", "rating")])
def test_other_models_train_and_export(tmp_path, name, variant):
    r = models.build(name, variant, out=tmp_path, samples=32, epochs=2, folds=1, progress=False)
    rec = r.metrics["models"][0]
    assert rec["parity_max_abs_diff"] <= 1e-4
    assert np.isfinite(rec["history"][-1]["train_loss"])
    card = models.read_metadata(r.primary)
    assert card.task == {"fpr3d": "binary", "unet2d": "segmentation", "nodule3d": "rating"}[name]
    if name == "nodule3d":
        assert card.rating_edges == (1.5, 2.5, 3.5, 4.5) and card.threshold is None
        assert set(r.artifacts[0].test) >= {"mae", "auc"}
    if name == "unet2d":
        assert card.outputs == ("mask", "contour")
        assert 0.0 <= r.artifacts[0].test["dice"] <= 1.0
