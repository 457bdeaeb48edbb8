"""Detection in report.json, the gate and the page (issue 18): FROC/CPM per dose from planted matches against an
independent LUNA16-style count (points and the cluster-bootstrap intervals, exact), lesion SAR, the paired CPM drop,
the OOD AUROC, the schema check, the gate's cpm / froc_sensitivity rules, the page's detection section and the
segmentation quantile figure; then the same through a real campaign of the planted ONNX detector.

The records are built the way the campaign builds them (``match_candidates`` and ``lesion_flips`` on planted
candidates and lesions, ``audit.campaign.records`` dataclasses); the audited model is a stand-in of the ``Audited``
protocol (name, head, describe), since the report reads nothing else of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread as plt_imread

from audit.artifact import ModelEntry, open_artifact
from audit.campaign import records
from audit.campaign.noise import NoiseSpec
from audit.campaign.run import RunOptions, run_campaign
from audit.data import ArraySource
from audit.errors import ConfigError, InputError
from audit.gate import evaluate, load_policy, load_report
from audit.io import plain
from audit.metrics.detection import FP_RATES, Candidates, Lesions, lesion_flips, match_candidates
from audit.metrics.ood import ood_auroc
from audit.report import build, figures
from audit.pipelines.run import write_reports
from audit.report.html import _segmentation_figure, render_html
from tests.audit import test_detection_audit as planted  # the planted ONNX detector and its phantoms

N, K, THRESHOLD = 4, 3, 0.5
LEVELS = (25.0, 100.0)  # mAs
SPACING = (1.0, 1.0, 1.0)


def cands(rows) -> Candidates:
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    return Candidates(rows[:, :3], rows[:, 3])


def planted_sample(i: int) -> tuple[Lesions, np.ndarray]:
    """Sample i's lesions (radius 3 mm; sample 3 has one excluded) and its clean marks (z, y, x, score)."""
    excluded = [0, 1] if i == 3 else [0, 0]
    les = Lesions.of([[10, 10, 10], [10, 30, 30]], 3.0, excluded=excluded)
    marks = np.array([[10, 10, 11, 0.9 - 0.1 * i], [10, 30, 30, 0.6 + 0.05 * i],  # both lesions found clean
                      [20, 50, 50, 0.55], [5, 5, 40, 0.2 + 0.1 * i]], float)  # one FP above threshold, one below
    return les, marks


def noisy_marks(marks: np.ndarray, level: float, i: int, k: int) -> np.ndarray:
    """A draw: lower dose (25 mAs) drops lesion scores more, and some draws add a new false positive."""
    rng = np.random.default_rng([int(level), i, k])
    out = marks.copy()
    drop = 0.35 if level < 50 else 0.1
    out[:2, 3] = np.clip(out[:2, 3] - drop * rng.uniform(0, 1, 2), 0, 1)
    out[2:, 3] = np.clip(out[2:, 3] + rng.normal(0, 0.05, 2), 0, 1)
    if (i + k) % 2 == 0:
        out = np.vstack([out, [30, 60, 10 + k, float(rng.uniform(0.3, 0.8))]])
    return out


def campaign() -> tuple[records.CleanRecords, dict[float, records.LevelRecords]]:
    clean_m, clean_found, excluded = [], [], []
    per_level: dict[float, Any] = {lv: ([], [], [], [], [], []) for lv in LEVELS}
    for i in range(N):
        les, marks = planted_sample(i)
        clean_m.append(match_candidates(cands(marks), les, SPACING))
        excluded.append(les.excluded)
        clean_found.append(match_candidates(cands(marks).above(THRESHOLD), les, SPACING).lesion_found)
        for lv in LEVELS:
            draws = [cands(noisy_marks(marks, lv, i, k)) for k in range(K)]
            f = lesion_flips(cands(marks), draws, les, SPACING, threshold=THRESHOLD)
            m, missed, gained, new_fp, changed, _ = per_level[lv]
            m.append([match_candidates(d, les, SPACING) for d in draws])
            missed.append(f.missed.sum(axis=1))
            gained.append(f.gained.sum(axis=1))
            new_fp.append(f.new_fp)
            changed.append((f.noisy_found != f.clean_found[None, :]) & ~les.excluded[None, :])
    ood_clean = np.linspace(0.1, 0.4, N)
    clean = records.CleanRecords(np.full(N, -1), np.zeros(N, np.int64), np.zeros(N),
                                 detection=records.DetectionClean(clean_m, clean_found, excluded), ood_score=ood_clean)
    by_level = {}
    for lv in LEVELS:
        m, missed, gained, new_fp, changed, _ = per_level[lv]
        det = records.DetectionDraws(m, np.array(missed), np.array(gained), np.array(new_fp), changed, excluded)
        flipped = np.array([c.any(axis=1) for c in changed]) | (det.missed + det.gained + det.new_fp > 0)
        ood = ood_clean[:, None] + (100.0 / lv) * 0.1 * np.arange(1, K + 1)[None, :]  # more noise, higher OOD score
        by_level[lv] = records.LevelRecords(lv, np.zeros((N, K), np.int64), np.zeros((N, K)), flipped, None,
                                            detection=det, ood_score=ood)
    return clean, by_level


@dataclass
class Detector:
    """The ``Audited`` protocol (what build_report reads of a model) for a detection model."""

    name: str = "detector"
    head: Any = field(default_factory=lambda: SimpleNamespace(task="detection", threshold=THRESHOLD, n_classes=0,
                                                              labels_names=()))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "head": {"task": "detection", "threshold": THRESHOLD},
                "engine": {"backend": "onnxruntime", "sha256": "0" * 64, "path": "detector.onnx"}}


@pytest.fixture(scope="module")
def audited():
    model = Detector()
    clean, by_level = campaign()
    noise = NoiseSpec(kind="nps", levels=LEVELS, draws=K, seed=1)
    source = ArraySource(np.zeros((N, 8, 16, 16), np.float32), (1.0, 1.0, 1.0), ids=[f"s{i}" for i in range(N)])
    block = {**model.describe(), "clean": build.clean_performance(model, clean),
             "levels": [build.level_block(model, clean, by_level[lv]) for lv in LEVELS],
             "worst_cases": build.worst_cases(by_level, clean, noise, source.ids, 3)}
    report = {"schema": build.SCHEMA, "created": "2026-12-01T00:00:00+00:00", "data": {"source": "planted", "N": N},
              "noise": noise.to_dict(), "models": [block], "timing": {"inferences": N * K * 2, "wall_seconds": 1.0,
                                                                      "images_per_second": 24.0}}
    report["summary"] = build.summary([block], [(model, clean, by_level)], source, noise)
    return json.loads(json.dumps(plain(report))), clean, by_level


def reference_froc(matches) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity at FP_RATES and at FROC_GRID by direct counting at every distinct score, then np.interp."""
    hits = np.concatenate([m.hit_scores for m in matches])
    fps = np.concatenate([m.fp_scores for m in matches])
    lesions = sum(m.n_lesions for m in matches)
    cuts = np.unique(np.r_[hits, fps])[::-1]
    x = np.r_[0.0, [np.count_nonzero(fps >= t) / len(matches) for t in cuts]]
    y = np.r_[0.0, [np.count_nonzero(hits >= t) / lesions for t in cuts]]
    return np.interp(FP_RATES, x, y), np.interp(build.FROC_GRID, x, y)


def replicates(det, picked) -> list:
    return [m for i in picked for m in det.matches[i]]


def test_froc_block_matches_an_independent_count_with_clustered_intervals(audited):
    report, clean, by_level = audited
    model = report["models"][0]
    for b in model["levels"]:
        d, det = b["detection"], by_level[b["level"]].detection
        flat = replicates(det, range(N))
        at, grid = reference_froc(flat)
        np.testing.assert_allclose(d["sensitivity_at"], at, atol=1e-12)
        np.testing.assert_allclose(d["froc"]["sensitivity"], grid, atol=1e-12)
        assert d["cpm"] == pytest.approx(at.mean(), abs=1e-12)
        assert d["sensitivity_at_1fp"] == pytest.approx(at[FP_RATES.index(1.0)], abs=1e-12)
        hits = sum(m.hit_scores.size for m in flat)
        fps = sum(m.fp_scores.size for m in flat)
        assert (d["scans"], d["draws"], d["scan_replicates"], d["lesions"]) == (N, K, N * K, 7)
        assert (d["lesion_draws"], d["detected_lesion_draws"], d["false_positives"]) == (7 * K, hits, fps)
        assert d["false_positives_per_scan"] == pytest.approx(fps / (N * K))
        # the interval: resample the N samples with all their K draws (seed 0, 1000 resamples), independently counted
        rng = np.random.default_rng(build.BOOT_SEED)
        cpms, drops = [], []
        for _ in range(build.FROC_BOOT):
            picked = rng.integers(0, N, N)
            cpms.append(reference_froc(replicates(det, picked))[0].mean())
        assert d["cpm_ci"] == pytest.approx(list(np.quantile(cpms, [0.025, 0.975])), abs=1e-12)
        assert d["interval"]["clusters"] == N and "cluster bootstrap" in d["interval"]["method"]
        # paired drop: one resample of samples for clean and the level
        rng = np.random.default_rng(build.BOOT_SEED)
        for _ in range(build.FROC_BOOT):
            picked = rng.integers(0, N, N)
            drops.append(reference_froc([clean.detection.matches[i] for i in picked])[0].mean()
                         - reference_froc(replicates(det, picked))[0].mean())
        clean_cpm = reference_froc(clean.detection.matches)[0].mean()
        assert d["cpm_drop"] == pytest.approx(clean_cpm - at.mean(), abs=1e-12)
        assert d["cpm_drop_ci"] == pytest.approx(list(np.quantile(drops, [0.025, 0.975])), abs=1e-12)
        # lesion SAR: changed lesion-draws over included lesion-draws; flips per draw at the threshold
        changed = sum(int(c.sum()) for c in det.lesion_changed)
        assert d["lesion_sar"] == pytest.approx(changed / (7 * K))
        assert d["lesion_sar_ci"][0] <= d["lesion_sar"] <= d["lesion_sar_ci"][1]
        assert d["missed_per_draw"] == pytest.approx(det.missed.mean())
        assert d["new_fp_per_draw"] == pytest.approx(det.new_fp.mean())
        # hits and FPs histograms count every mark once
        h = d["confidence_histogram"]
        assert (sum(h["hits"]), sum(h["false_positives"])) == (hits, fps)
    low, high = (b["detection"] for b in sorted(model["levels"], key=lambda b: b["level"]))
    assert low["cpm"] < high["cpm"] and low["lesion_sar"] > high["lesion_sar"]  # 25 mAs hurts more than 100 mAs
    c = model["clean"]["detection"]
    assert c["cpm"] == pytest.approx(reference_froc(clean.detection.matches)[0].mean(), abs=1e-12)
    # at the threshold: every included lesion found; FPs 0.55 in each scan and sample 3's 0.5 (>= 0.5): 5 in 4 scans
    assert c["operating_point"] == {"threshold": THRESHOLD, "sensitivity": 1.0, "fps_per_scan": 1.25}
    assert report["summary"]["models"][0]["per_level"][0]["cpm"] == model["levels"][0]["detection"]["cpm"]


def test_ood_block_is_the_auroc_of_clean_against_perturbed_scores(audited):
    report, clean, by_level = audited
    for b in report["models"][0]["levels"]:
        o, s_ood = b["ood"], by_level[b["level"]].ood_score.ravel()
        wins = (s_ood[:, None] > clean.ood_score[None, :]) + 0.5 * (s_ood[:, None] == clean.ood_score[None, :])
        other = np.repeat(np.arange(N), K)[:, None] != np.arange(N)[None, :]  # a draw vs other samples' clean scores
        assert o["auroc"] == pytest.approx(wins[other].mean(), abs=1e-12)
        assert o["paired"] == pytest.approx(wins[~other].reshape(N, K).mean(axis=1).mean(), abs=1e-12)
        assert (o["n_in"], o["n_ood"], o["n_clusters"]) == (N, N * K, N)
        assert o["ci"][0] <= o["auroc"] <= o["ci"][1]


def test_a_non_finite_ood_score_is_left_out_and_counted():
    """A detector failing on one input (NaN) or scoring inf does not stop the report: those scores are left out and
    counted; the AUROC is that of the finite ones (same cluster ids), and a side with no finite score says so."""
    clean = SimpleNamespace(ood_score=np.array([0.1, np.nan, 0.3]))
    rec = SimpleNamespace(ood_score=np.array([[0.5, 0.6], [0.7, np.inf], [0.2, 0.4]]))
    o = build.ood_block(clean, rec)
    assert o["non_finite"] == {"clean": 1, "perturbed": 1} and (o["n_in"], o["n_ood"]) == (2, 5)
    want = ood_auroc(np.array([0.1, 0.3]), np.array([0.5, 0.6, 0.7, 0.2, 0.4]), [0, 2], [0, 0, 1, 2, 2],
                     n_boot=build.OOD_BOOT, seed=build.BOOT_SEED)
    assert o["auroc"] == want.auroc and o["ci"] == [want.low, want.high]
    none = build.ood_block(SimpleNamespace(ood_score=np.full(3, np.nan)), rec)
    assert none["auroc"] is None and "no finite OOD score" in none["note"]


def test_check_report_accepts_it_and_refuses_a_broken_detection_block(audited, tmp_path):
    report = audited[0]
    build.check_report(report)
    wrong = json.loads(json.dumps(report))
    wrong["models"][0]["levels"][0]["detection"]["cpm"] += 0.01
    with pytest.raises(AssertionError, match="detector level 25.0: CPM is not the mean sensitivity"):
        build.check_report(wrong)
    build.check_report_keys(report, "report.json")
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    assert build.read_report(path) == report
    broken = json.loads(json.dumps(report))
    broken["models"][0]["levels"][1]["detection"]["sensitivity_ci_low"].pop()
    with pytest.raises(InputError, match=r"levels\[1\]\.detection\.sensitivity_ci_low: expected 7 values"):
        build.check_report_keys(broken, "report.json")
    broken = json.loads(json.dumps(report))
    broken["models"][0]["clean"]["detection"]["cpm_ci"] = "high"
    with pytest.raises(InputError, match=r"clean\.detection\.cpm_ci"):
        build.check_report_keys(broken, "report.json")


def policy(tmp_path, text: str):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return load_policy(path)


def test_gate_cpm_and_froc_sensitivity_rules(audited, tmp_path):
    report = audited[0]
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    loaded = load_report(path)
    d25 = next(b for b in report["models"][0]["levels"] if b["level"] == 25.0)["detection"]
    cpm, sens1 = d25["cpm"], d25["sensitivity_at_1fp"]
    rules = policy(tmp_path, f"""
[[rule]]
metric = "cpm"
level = 25
min = {cpm - 0.01}
[[rule]]
metric = "froc_sensitivity"
level = 25
min = {sens1 - 0.01}
[[rule]]
metric = "cpm"
level = 25
min = {cpm + 0.01}
[[rule]]
metric = "froc_sensitivity"
level = 25
fp_rate = 0.25
min = {d25["sensitivity_at"][1] + 0.01}
[[rule]]
metric = "cpm"
level = 25
bound = "lower"
min = {cpm - 0.01}
""")
    got = evaluate(loaded, rules)
    assert [o.passed for o in got] == [True, True, False, False, d25["cpm_ci"][0] >= cpm - 0.01]
    assert got[0].measured == cpm and got[1].measured == sens1 and got[4].measured == d25["cpm_ci"][0]
    assert got[3].measured == d25["sensitivity_at"][1] and "0.25 FPs per scan" in got[3].detail
    conf = d25["interval"]["confidence"]  # the limit names the report's own CI level
    assert f"({100 * conf:g}% CI lower end)" in got[4].limit
    # refused: a model with no detection block, an FP rate the report does not have, keys that make no sense
    plain_model = json.loads(json.dumps(report))
    for b in plain_model["models"][0]["levels"]:
        del b["detection"]
    plain_model["models"][0]["head"]["task"] = "binary"
    with pytest.raises(InputError, match="metric 'cpm' needs a detection model's FROC; model 'detector' has no"):
        evaluate(plain_model, rules[:1])
    odd = policy(tmp_path, '[[rule]]\nmetric = "froc_sensitivity"\nlevel = 25\nfp_rate = 3\nmin = 0.5\n')
    with pytest.raises(InputError, match="fp_rate 3 is not among the report's FP rates per scan"):
        evaluate(loaded, odd)
    with pytest.raises(ConfigError, match="fp_rate applies to metric 'froc_sensitivity' only"):
        policy(tmp_path, '[[rule]]\nmetric = "cpm"\nlevel = 25\nfp_rate = 1\nmin = 0.5\n')
    with pytest.raises(ConfigError, match="needs the 'level'"):
        policy(tmp_path, '[[rule]]\nmetric = "cpm"\nmin = 0.5\n')
    with pytest.raises(ConfigError, match="bound must be 'estimate' or 'lower'"):
        policy(tmp_path, '[[rule]]\nmetric = "cpm"\nlevel = 25\nmin = 0.5\nbound = "upper"\n')
    for metric, low in [("cpm", 80), ("froc_sensitivity", -0.1)]:  # 80 (a percent?) can never be met
        with pytest.raises(ConfigError, match=r"min must be in \[0, 1\]"):
            policy(tmp_path, f'[[rule]]\nmetric = "{metric}"\nlevel = 25\nmin = {low}\n')


def test_page_has_the_detection_section_with_its_figures(audited, tmp_path):
    report = audited[0]
    page = render_html(report, tmp_path)
    assert "<h3>Detection: FROC and lesion flips per level</h3>" in page
    assert "Out-of-distribution score: clean vs perturbed" in page
    assert 'alt="FROC per level"' in page and 'alt="score histograms per level"' in page
    assert "CPM (detection) [95% CI]" in page  # the verdict-first headline carries the CPM
    # verdict first: the verdict, then the headline with the CPM, then the definitions (which define a detection
    # flip), then the model's detection section
    order = [page.index(m) for m in ('id="verdict"', "CPM (detection) [95% CI]", 'id="definitions"',
                                     "<dt>flip (detection)</dt>", "<h3>Detection: FROC and lesion flips per level</h3>")]
    assert order == sorted(order)
    assert "a new false positive" in page[order[3]:order[4]]
    d = report["models"][0]["levels"][0]["detection"]
    assert f"{d['cpm']:.3g}" in page
    (tmp_path / "report.html").write_text(page)


def test_segmentation_quantile_figure_draws_every_level_and_marks_infinite_distances(tmp_path):
    def dist(unit, q05, q95, n_inf=0):
        top = q95 or 10.0  # None: an infinite 95th percentile
        return {"unit": unit, "n": 60, "n_infinite": n_inf, "q05": q05, "q25": 0.8 * top, "q50": 0.85 * top,
                "q75": 0.9 * top, "q95": q95, "mean": None if q95 is None else 0.85 * top}

    levels = [{"level": 20.0, "segmentation": {"dice": dist("1", 0.7, 0.99), "hd95_mm": dist("mm", 1.0, None, 4)}},
              {"level": 100.0, "segmentation": {"dice": dist("1", 0.9, 0.99), "hd95_mm": dist("mm", 0.5, 2.0)}}]
    drawn = figures.segmentation_quantiles({"name": "seg", "levels": levels}, "mAs")
    assert drawn is not None and drawn.png.startswith(b"\x89PNG")
    (tmp_path / "seg.png").write_bytes(drawn.png)
    image = plt_imread(tmp_path / "seg.png")
    assert image.shape[1] > 2 * image.shape[0]  # two panels side by side (Dice, HD95)
    assert "HD95 at 20 mAs" in drawn.caption and "mm" in drawn.caption  # the infinite 95th percentile is named
    assert figures.segmentation_quantiles({"name": "m", "levels": [{"level": 1.0}]}, "mAs") is None
    assert "<figure>" in _segmentation_figure({"name": "seg", "levels": levels}, "mAs")  # the page shows it


def test_a_real_detection_campaign_reports_gates_and_renders(tmp_path):
    """End to end on the planted ONNX detector of test_detection_audit (records written by the campaign, read back
    by build_report): the blocks agree with the records, the report reads back, the gate and the page use them."""
    model = open_artifact(ModelEntry(planted.detector(tmp_path / "det.onnx", ood=True), "det"),
                          {"fp_radius_mm": planted.FP_RADIUS_MM, "ood_output": "ood"})
    images, lesions = planted.phantoms()
    source = ArraySource(images, planted.SPACING, lesions=lesions)
    noise = NoiseSpec(kind="nps", levels=planted.LEVELS, draws=planted.K, seed=7, sigma_ref=40.0, mas_ref=100.0)
    out = tmp_path / "out"
    write_reports(out, [model], source, noise,
                  run_campaign([model], source, noise, out, RunOptions(batch_size=8, shard_samples=2, progress=False)))
    report = build.read_report(out / "report.json")
    m = report["models"][0]
    clean = records.load_clean(out, "det", len(source))
    assert m["clean"]["detection"]["cpm"] == pytest.approx(reference_froc(clean.detection.matches)[0].mean(), abs=1e-9)
    for b in m["levels"]:
        rec = records.load_level(out, "det", b["level"], noise.resolved(source).level_key(b["level"]), len(source),
                                 planted.K)
        at, _ = reference_froc(replicates(rec.detection, range(len(source))))
        np.testing.assert_allclose(b["detection"]["sensitivity_at"], at, atol=1e-9)
        assert b["ood"]["n_ood"] == len(source) * planted.K
    low, high = (b["detection"] for b in sorted(m["levels"], key=lambda b: b["level"]))
    assert low["lesion_sar"] > high["lesion_sar"] and low["new_fp_per_draw"] > high["new_fp_per_draw"]
    rules = policy(tmp_path, f'[[rule]]\nmetric = "cpm"\nlevel = {planted.LEVELS[0]}\nmin = {low["cpm"] + 1e-6}\n')
    assert [o.passed for o in evaluate(load_report(out / "report.json"), rules)] == [False]
    page = (out / "report.html").read_text()
    assert 'alt="FROC per level"' in page and "Out-of-distribution score" in page
