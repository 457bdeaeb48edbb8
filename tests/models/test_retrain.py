"""Adaptive training on the reference nodule model (study 1, Algorithm 2): SAN on the training set falls after
2 rounds while test AUC drops by no more than 0.05. Bad retrain configs exit 2."""

from __future__ import annotations

import pytest

from audit.cli import main


@pytest.mark.slow
def test_adaptive_training_lowers_train_san_and_keeps_test_auc(request, tmp_path):
    from models.retrain import RetrainConfig, retrain

    # requested here, after the slow-skip fixture ran: as an argument the session build would run even when skipped
    _, _, cache = request.getfixturevalue("quick_nodule")
    config = RetrainConfig(model="nodule3d", quick=True, mode="adaptive", rounds=2, epochs=3, train_samples=48,
                           test_samples=48, attack={"name": "pgd", "eps": 0.02, "steps": 5}, cache_dir=str(cache))
    report = retrain(config, tmp_path / "rt")
    r0, r2 = report["rounds"][0], report["rounds"][2]
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert r0["train"]["san"] >= 3, "the attack must find something to retrain on"
    assert r2["train"]["san"] < r0["train"]["san"]
    assert r2["test"]["auc"] >= r0["test"]["auc"] - 0.05
    assert (tmp_path / "rt" / "nodule3d-round2.onnx").is_file()
    assert "train SAN" in (tmp_path / "rt" / "retrain.html").read_text()


@pytest.mark.parametrize("body,match", [
    ('[retrain]\nmode = "magic"', "retrain.mode: expected one of"),
    ('[retrain]\nrounds = 0', "retrain.rounds: expected an integer >= 1"),
    ('[retrain]\nepoch = 3', "retrain.epoch: unknown key"),
    ('[attack]\nname = "fgsm"', "attack.name: unknown attack 'fgsm'"),
    ('[model]\nname = "resnet"', "unknown model 'resnet'"),
])
def test_bad_retrain_config_exits_2(tmp_path, capsys, body, match):
    cfg = tmp_path / "r.toml"
    cfg.write_text(body + "\n")
    assert main(["retrain", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
