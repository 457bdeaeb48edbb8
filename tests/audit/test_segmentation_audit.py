"""Segmentation end to end (issue 18): a real ONNX segmentation model through a real campaign at two doses.

Contour thresholds (HD95, contour error, filled-contour Dice) flip draws as the head says; report.json holds the
per-dose distributions with their units, the page shows them, and the gate's ``dice_q05`` rule reads them. The
HD95 of every draw is recomputed here independently: the noise regenerated from its key, the model run again and
the distance computed by brute force over surface voxels (no distance transform, no ``audit.metrics.contours``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from audit.artifact import ModelEntry, open_artifact
from audit.artifact.heads import Decisions, head_from
from audit.campaign import records
from audit.campaign.noise import NoiseSpec
from audit.campaign.run import RunOptions, run_campaign
from audit.config import parse_config
from audit.data import ArraySource
from audit.errors import ConfigError
from audit.gate import evaluate, load_policy, load_report
from audit.pipelines.run import write_reports

SHAPE = (32, 32)
SPACING = (0.6, 0.8)  # mm per axis (rows, columns): anisotropic, so a unit slip shows
WINDOW = (-1000.0, 1000.0)
HD95_MAX_MM = 1.5
LEVELS = (25.0, 400.0)  # mAs: sigma 80 HU and 20 HU


def seg_model(path: Path) -> Path:
    """p = sigmoid(gain * (avgpool3x3(x) - t)) per pixel, t at 0 HU: a smoothed threshold segmentation, (B, 1, H, W)."""
    t = (0.0 - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["x"], ["s"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0),
         helper.make_node("Sub", ["s", "t"], ["d"]), helper.make_node("Mul", ["d", "gain"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["mask"])],
        "seg", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, *SHAPE])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, *SHAPE])],
        [helper.make_tensor("t", TensorProto.FLOAT, [], [t]), helper.make_tensor("gain", TensorProto.FLOAT, [], [400.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in {"audit.task": "segmentation", "audit.threshold": "0.5",
                       "audit.hu_window": json.dumps(list(WINDOW))}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def disc_images(n: int) -> np.ndarray:
    """A bright disc (contrast rising with the sample) on a dark background, centre and radius varied."""
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    out = np.empty((n, *SHAPE), np.float32)
    for i in range(n):
        cy, cx, r = 16 + rng.integers(-3, 4), 16 + rng.integers(-3, 4), 6 + i % 3
        contrast = 30.0 + 15.0 * i
        out[i] = np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r, contrast, -contrast)
    return out


def brute_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """HD95 in mm by brute force: surface = mask pixels with a 4-neighbour outside (or off the image); all pairs."""
    def surface_points(m: np.ndarray) -> np.ndarray:
        p = np.pad(m, 1)
        inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        return np.argwhere(m & ~inner) * np.asarray(spacing)

    sa, sb = surface_points(a), surface_points(b)
    if len(sa) == 0 and len(sb) == 0:
        return 0.0
    if len(sa) == 0 or len(sb) == 0:
        return float("inf")
    dist = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return float(max(np.percentile(dist.min(axis=1), 95), np.percentile(dist.min(axis=0), 95)))


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    model = open_artifact(ModelEntry(seg_model(tmp / "seg.onnx"), "seg"),
                          {"min_dice": 0.0, "hd95_max_mm": HD95_MAX_MM})  # Dice never flips: HD95 alone decides
    source = ArraySource(disc_images(6), SPACING)
    noise = NoiseSpec(kind="nps", levels=LEVELS, draws=8, seed=5, sigma_ref=40.0, mas_ref=100.0)
    out = tmp / "out"
    stats = run_campaign([model], source, noise, out, RunOptions(batch_size=16, shard_samples=4, progress=False))
    write_reports(out, [model], source, noise, stats)
    return model, source, noise, out


def test_hd95_flips_match_an_independent_recomputation(audited):
    model, source, noise, out = audited
    report = load_report(out / "report.json")
    noise = noise.resolved(source)
    dose_model = noise.noise_model(source)
    n, k = len(source), noise.draws
    hu = source.load(list(range(n)))
    clean = model.decide(hu).masks
    flips_by_level = {}
    for block in report["models"][0]["levels"]:
        level = block["level"]
        rec = records.load_level(out, "seg", level, noise.level_key(level), n, k)
        keys = np.array([noise.key(i, level, j) for i in range(n) for j in range(k)], dtype=np.uint64)
        rows = np.repeat(hu, k, axis=0)
        noisy = model.decide(rows + noise.sample(keys, level, rows, source.spacing, model=dose_model)).masks
        h = np.array([brute_hd95(noisy[r], clean[r // k], SPACING) for r in range(n * k)]).reshape(n, k)
        np.testing.assert_allclose(rec.hd95_mm, h, rtol=1e-5, atol=1e-5)  # recorded per draw, in mm
        assert np.array_equal(rec.flipped, h > HD95_MAX_MM)
        assert sum(block["per_sample"]["n_flips"]) == int((h > HD95_MAX_MM).sum())
        assert block["SAR_overall"] == pytest.approx((h > HD95_MAX_MM).mean())
        seg = block["segmentation"]
        assert set(seg) == {"dice", "hd95_mm", "contour_error_mm", "filled_dice"}
        assert seg["hd95_mm"]["unit"] == seg["contour_error_mm"]["unit"] == "mm" and seg["dice"]["unit"] == "1"
        finite = np.isfinite(h).all()
        for q, key in zip((5, 25, 50, 75, 95), ("q05", "q25", "q50", "q75", "q95")):
            assert seg["hd95_mm"][key] == (pytest.approx(np.percentile(h, q), rel=1e-5) if finite else None)
        assert seg["dice"]["q05"] == pytest.approx(np.percentile(rec.dice, 5), rel=1e-6)
        assert seg["dice"]["n"] == n * k
        flips_by_level[level] = int((h > HD95_MAX_MM).sum())
    # the doses must make the test bite: flips at low dose, fewer at high dose, not all
    assert 0 < flips_by_level[LEVELS[0]] < n * k and flips_by_level[LEVELS[1]] < flips_by_level[LEVELS[0]]
    page = (out / "report.html").read_text()
    assert "Segmentation agreement per level" in page and "HD95 (mm)" in page and "contour error (mm)" in page
    assert f"HD95 &gt; {HD95_MAX_MM:g} mm" in page


def test_gate_dice_q05_rule_passes_and_fails_on_the_report(audited, tmp_path):
    out = audited[3]
    report = load_report(out / "report.json")
    q05 = {b["level"]: b["segmentation"]["dice"]["q05"] for b in report["models"][0]["levels"]}
    assert q05[LEVELS[0]] < q05[LEVELS[1]] <= 1.0
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[[rule]]\nmetric = "dice_q05"\nlevel = {LEVELS[1]}\nmin = {q05[LEVELS[1]] - 0.01}\n\n'
                      f'[[rule]]\nmetric = "dice_q05"\nlevel = {LEVELS[0]}\nmin = {q05[LEVELS[0]] + 0.01}\n')
    outcomes = evaluate(report, load_policy(policy))
    assert [o.passed for o in outcomes] == [True, False]
    assert outcomes[1].measured == pytest.approx(q05[LEVELS[0]])
    policy.write_text('[[rule]]\nmetric = "dice_q05"\nmin = 0.9\n')
    with pytest.raises(ConfigError, match="level"):
        load_policy(policy)


def test_default_segmentation_head_is_dice_only_and_unchanged():
    head = head_from({"audit.task": "segmentation"})
    assert head.to_dict() == {"task": "segmentation", "class_names": [], "threshold": 0.5, "activation": "none",
                              "output": None, "rating_edges": [1.5, 2.5, 3.5, 4.5], "tolerance": 0.0, "min_dice": 0.9}
    clean = np.zeros((2, 8, 8), bool)
    clean[:, 2:6, 2:6] = True
    noisy = clean.copy()
    noisy[1] = False  # an empty mask: Dice 0, and HD95 infinite when asked for
    dec = [Decisions(np.full(2, -1), np.zeros(2, np.float32), m) for m in (clean, noisy)]
    flags, cols = head.draw_metrics(*dec, spacing=(1.0, 1.0))
    assert flags.tolist() == [False, True] and set(cols) == {"dice"}
    measured = head_from({"audit.task": "segmentation"}, {"contour_metrics": True, "min_dice": 0.0})
    flags, cols = measured.draw_metrics(*dec, spacing=(2.0, 2.0))
    assert flags.tolist() == [False, False]  # measured, not a criterion
    assert cols["hd95_mm"].tolist() == [0.0, np.inf] and cols["filled_dice"].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("key, value, match", [
    ("hd95_max_mm", -1.0, "head.hd95_max_mm"), ("contour_error_max_mm", "2", "head.contour_error_max_mm"),
    ("filled_dice_min", 1.5, "head.filled_dice_min"), ("contour_metrics", 1, "head.contour_metrics"),
])
def test_bad_head_thresholds_are_one_line_naming_the_key(key, value, match, tmp_path):
    raw = {"model": {"path": "m.onnx"}, "data": {"phantom": "nodules"}, "noise": {"kind": "gaussian", "levels": [10.0]},
           "head": {key: value}}
    with pytest.raises(ConfigError, match=match) as err:
        parse_config(raw, tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=match):
        head_from({"audit.task": "segmentation"}, {key: value})
    with pytest.raises(ConfigError, match="only for task 'segmentation'"):
        head_from({"audit.task": "binary"}, {"hd95_max_mm": 1.0})
