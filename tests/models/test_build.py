import json

import pytest

import models
from audit.cli import main
from models import cache


def test_quick_nodule_build_meets_auc_and_time(quick_nodule):
    """The CI recipe (what ``audit demo`` uses): test AUC >= 0.80 within 3 minutes on 2 cores.

    Time is asserted as CPU time (<= 2 cores x 180 s), which a shared, busy
    machine does not inflate the way it inflates wall time.
    """
    result, cpu_s, _ = quick_nodule
    auc = result.artifacts[0].test["auc"]
    assert auc >= 0.80, auc
    assert cpu_s < 2 * 180.0, (cpu_s, result.metrics["timing_s"])
    m = json.loads((result.out / "metrics.json").read_text())
    assert m["recipe"]["quick"] is True and m["models"][0]["parity_max_abs_diff"] <= 1e-4
    assert set(m["models"][0]["test"]) >= {"auc", "accuracy", "sensitivity", "specificity"}


def test_cached_build_is_reused_and_keyed_by_recipe(quick_nodule):
    result, _, root = quick_nodule
    stamp = (result.out / "metrics.json").stat().st_mtime_ns
    lines: list[str] = []
    again = models.cached_build("nodule3d", quick=True, cache_dir=root, log=lines.append)
    assert lines == [] and (again.out / "metrics.json").stat().st_mtime_ns == stamp  # reused, nothing retrained
    assert again.out == result.out and again.artifacts[0].weights_sha256 == result.artifacts[0].weights_sha256
    r = models.REGISTRY["nodule3d"].recipe(quick=True)
    assert result.out == cache.build_dir(r, root)
    assert cache.recipe_hash(r) != cache.recipe_hash(models.REGISTRY["nodule3d"].recipe(quick=True, seed=1))


def test_cli_list():
    assert main(["models", "list"]) == 0


def test_cli_build_writes_metrics_and_onnx(tmp_path, capsys):
    out = tmp_path / "fpr"
    assert main(["models", "build", "fpr3d", "--samples", "24", "--epochs", "1", "--seed", "3", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "fpr3d" and m["models"][0]["seed"] == 3
    assert (out / m["primary"]).is_file() and (out / "recipe.json").is_file()
    assert "fpr3d/default: 1 model" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["models", "build", "resnet", "--out", "{tmp}/o"], "unknown model 'resnet'"),
    (["models", "build", "nodule3d", "--variant", "huge", "--out", "{tmp}/o"], "no variant 'huge'"),
    (["models", "build", "nodule3d", "--out", "{tmp}/file/sub"], "--out"),
    (["models", "build", "nodule3d", "--folds", "0", "--out", "{tmp}/o"], "--folds"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, needle):
    (tmp_path / "file").write_text("x")
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("audit: error: ") and err.count("\n") == 1 and needle in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_default_builds_reach_study_quality(tmp_path):
    """Full-size reference builds: NoduleNet3D test AUC >= 0.85, BodySiteNet2D macro F1 >= 0.95 (mean over folds)."""
    nod = models.build("nodule3d", out=tmp_path / "nodule3d")
    assert nod.metrics["summary"]["auc"]["mean"] >= 0.85
    body = models.build("bodysite2d", out=tmp_path / "bodysite2d")
    assert body.metrics["summary"]["macro_f1"]["mean"] >= 0.95
