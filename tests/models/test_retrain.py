"""Adaptive training on the reference nodule model (study 1, Algorithm 2): SAN on the training set falls after
2 rounds while test AUC drops by no more than 0.05. Bad retrain configs exit 2."""

from __future__ import annotations

import json

import pytest

from audit.cli import main


def test_adaptive_training_lowers_train_san_and_keeps_test_auc(quick_retrain):
    """Study 1, Algorithm 2 on the reference nodule model (small config, ``quick_retrain``), from the CLI: train SAN
    falls after 2 rounds, test AUC drops by at most 0.05; every round's artifact is audited on the same noise draws,
    with its attack, in one report."""
    from audit.report.build import check_report

    out, printed, report, audit = quick_retrain
    assert "round 2: attack SAN train" in printed and "noise SAR 20 mAs" in printed
    r0, r2 = report["rounds"][0], report["rounds"][2]
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert r0["train"]["san"] >= 3, "the attack must find something to retrain on"
    assert r2["train"]["san"] < r0["train"]["san"]
    assert r2["test"]["auc"] >= r0["test"]["auc"] - 0.05
    assert (out / "nodule3d-round2.onnx").is_file()
    assert "train SAN" in (out / "retrain.html").read_text()

    check_report(audit)
    assert [m["name"] for m in audit["models"]] == ["round0", "round1", "round2"]
    assert audit["noise"]["draws"] == 8 and [b["level"] for b in audit["models"][0]["levels"]] == [20.0, 200.0]
    for rec, model in zip(report["rounds"], audit["models"]):
        # retrain.json carries the audit's SAR per dose for each round
        assert [b["SAR_overall"] for b in model["levels"]] == [b["SAR_overall"] for b in rec["audit"]]
    # each round's attack on the test split sits in the same report, with the deployed rate that retrain.json has
    assert [a["summary"]["san"] for a in audit["attacks"]] == [r["test"]["san"] for r in report["rounds"]]
    assert len(audit["comparisons"]) == 3  # the rounds compared pairwise on identical draws
    page = (out / "audit" / "report.html").read_text()
    assert "Gradient attacks" in page and "round 2, test split: pgd" in page
    assert "test SAR @ 200 mAs" in (out / "retrain.html").read_text()


@pytest.mark.parametrize("body,match", [
    ('[retrain]\nmode = "magic"', "retrain.mode: expected one of"),
    ('[retrain]\nrounds = 0', "retrain.rounds: expected an integer >= 1"),
    ('[retrain]\nepoch = 3', "retrain.epoch: unknown key"),
    ('[attack]\nname = "fgsm"', "attack.name: unknown attack 'fgsm'"),
    ('[model]\nname = "resnet"', "unknown model 'resnet'"),
    ('[model]\nname = "detector3d"', "'detector3d' cannot be retrained here (a two-stage detector"),
])
def test_bad_retrain_config_exits_2(tmp_path, capsys, body, match):
    cfg = tmp_path / "r.toml"
    cfg.write_text(body + "\n")
    assert main(["retrain", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_adaptive_training_with_its_own_nps_ascent_runs_end_to_end(quick_nodule, tmp_path, capsys):
    """Study 1's Algorithm 2 with study 1's own attack (NPS-projected ascent at the [noise] dose): one round on the
    quick model, from the CLI; the attack is planned as audit attack plans it (its NPS, spacing, parity check)."""
    _, _, cache = quick_nodule
    cfg = tmp_path / "retrain.toml"
    cfg.write_text(f'[model]\nname = "nodule3d"\nquick = true\ncache_dir = "{cache}"\n\n'
                   '[retrain]\nmode = "adaptive"\nrounds = 1\nepochs = 1\ntrain_samples = 16\ntest_samples = 16\naudit = false\n\n'
                   '[attack]\nname = "nps_ascent"\nrestarts = 2\n\n'
                   '[noise]\nkind = "nps"\nlevels = [10]\n')
    out = tmp_path / "rt"
    assert main(["retrain", str(cfg), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "retrain.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    assert report["config"]["attack"]["name"] == "nps_ascent"
    assert (out / "nodule3d-round1.onnx").is_file()


def test_retrain_attack_parameters_are_checked_before_anything_loads(tmp_path, capsys):
    cfg = tmp_path / "r.toml"
    cfg.write_text('[attack]\nname = "nps_ascent"\nstepz = 2\n')
    assert main(["retrain", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "attack.stepz: unknown parameter of attack 'nps_ascent'" in err and not (tmp_path / "o").exists()
