"""The OOD detector per attack (study 4): a real ONNX model with an OOD output, attacked; the per-attack AUROC of clean
against attacked inputs equals a brute-force count over pairs of *different* samples, its interval a brute-force
cluster bootstrap over samples; the block reaches attack.json, report.json and both HTML pages with its definitions.
PGD's ``evade_ood`` objective flips the class as the task objective does while keeping the OOD score down.

The model is the fragile threshold net (``nets.Fragile``) with a second output ``ood`` = mean |x - 0.5| over the
image (x = (HU + 1000) / 2000): an attack that moves pixels away from 0 HU raises it, so the AUROC is neither 1/2
nor 1 on these textured images, and it depends on which candidates the deployed engine judged.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from audit.artifact import AuditedModel
from audit.artifact.heads import head_from, preprocess_from
from audit.attacks import NPSAscent, Target, build_attack, run_attack
from audit.attacks.blocks import attack_block
from audit.cli import main
from audit.engines import load_engine
from audit.errors import ConfigError, InputError
from audit.report import check_report
from audit.report.build import read_report
from audit.report.attacks import render_attack_html, render_ood
import audit.attacks.objectives as objectives
from tests.audit.attacks import nets
from tests.audit.conftest import write_config, write_manifest

N = 10  # sample ids 0..9: the metric numbers its clusters by id sorted as text, the same order for one digit
EPS = 6.0  # HU, L-inf: flips the samples whose smoothed region mean lies within about 6 HU of 0, not the others


class FragileOod(nets.Fragile):
    """``nets.Fragile``'s P(above) plus an OOD score per image: the mean |x - 0.5| (0 at 0 HU everywhere)."""

    def forward(self, x):
        return super().forward(x), (x - 0.5).abs().mean(dim=(1, 2, 3))


class RegionOod(nets.Fragile):
    """``FragileOod`` with the score over the class's own region only: the two gradients compete for the same
    pixels, so the weight of ``evade_ood``'s penalty matters."""

    def forward(self, x):
        return super().forward(x), (x[:, :, nets.REGION[0], nets.REGION[1]] - 0.5).abs().mean(dim=(1, 2, 3))


def export_ood(path: Path, *, metadata_ood: bool = True, net: torch.nn.Module | None = None) -> Path:
    """FragileOod (or ``net``) as ONNX (outputs ``probability``, ``ood``) with the audit metadata; ``metadata_ood``:
    the head's ``ood_output`` in the metadata (else a config's ``[head]`` names it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export((net or FragileOod()).eval(), (torch.rand(2, 1, *nets.SHAPE),), str(path), input_names=["input"],
                          output_names=["probability", "ood"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "probability": {0: "batch"}, "ood": {0: "batch"}})
    model = onnx.load(str(path))
    meta = {"audit.task": "binary", "audit.class_names": json.dumps(["below", "above"]), "audit.threshold": "0.5",
            "audit.hu_window": json.dumps(list(nets.WINDOW)), "audit.output": "probability"}
    if metadata_ood:
        meta["audit.ood_output"] = "ood"
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def ood_model(tmp_path_factory):
    path = export_ood(tmp_path_factory.mktemp("ood") / "fragile_ood.onnx")
    engine = load_engine(path)
    return path, AuditedModel("fragile_ood", engine, head_from(engine.metadata), preprocess_from(engine.metadata))


@pytest.fixture(scope="module")
def pgd_run(ood_model):
    path, model = ood_model
    hu = nets.images(N, spread_hu=8.0, seed=3)
    attack = build_attack("pgd", Target.from_model(model), eps=EPS, steps=10, space="hu")
    return path, model, hu, run_attack(attack, model, hu, seed=0, return_inputs=True)


def _ort_ood(path: Path, x: np.ndarray) -> np.ndarray:
    """The ``ood`` output of the ONNX file by a plain ONNX Runtime session (not the audit's engine)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["ood"], {"input": np.ascontiguousarray(x, np.float32)})[0].reshape(-1)


def _wins(adv: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """(N, K, N): 1 where candidate (i, k) scores above sample j's clean score, 1/2 on a tie, else 0."""
    a, c = adv[:, :, None], clean[None, None, :]
    return (a > c) + 0.5 * (a == c)


def _brute_auroc(adv: np.ndarray, clean: np.ndarray, keep: np.ndarray | None = None) -> float:
    """Mean over the pairs (candidate of sample i, clean input of sample j), i != j, of the wins."""
    n, k = adv.shape
    keep = np.ones((n, k), bool) if keep is None else keep
    total = wins = 0.0
    for i in range(n):
        for kk in range(k):
            if not keep[i, kk]:
                continue
            for j in range(n):
                if j != i:
                    total += 1
                    wins += float(adv[i, kk] > clean[j]) + 0.5 * float(adv[i, kk] == clean[j])
    return wins / total


def _brute_bootstrap(adv: np.ndarray, clean: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Cluster bootstrap over samples, written out: each resample draws N samples with replacement; a drawn copy of
    sample i's candidates meets a drawn copy of sample j's clean score (weight m_i m_j) only when i != j; the 2.5%
    and 97.5% quantiles of the resampled AUROCs."""
    n = len(clean)
    w = _wins(adv, clean).sum(axis=1)  # (N, N): wins of sample i's K candidates over sample j's clean score
    k = adv.shape[1]
    other = ~np.eye(n, dtype=bool)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        m = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
        weight = np.outer(m, m) * other
        if weight.sum() > 0:
            out.append(float((weight * w).sum() / (k * weight.sum())))
    return tuple(float(v) for v in np.quantile(out, [0.025, 0.975]))


def test_ood_scores_are_the_deployed_engines_on_clean_and_attacked_inputs(pgd_run):
    path, model, hu, res = pgd_run
    x_clean = np.clip((hu - nets.WINDOW[0]) / (nets.WINDOW[1] - nets.WINDOW[0]), 0, 1)[:, None]
    np.testing.assert_allclose(res.clean_ood, _ort_ood(path, x_clean), rtol=1e-6)
    assert res.adv_ood.shape == (N, 1) and res.adv_ood.dtype == np.float32
    np.testing.assert_allclose(res.adv_ood[:, 0], _ort_ood(path, res.adv_inputs), rtol=1e-6)  # K = 1: the one candidate


def test_per_attack_auroc_is_the_brute_force_count_over_pairs_of_different_samples(pgd_run):
    _, _, _, res = pgd_run
    flips = res.deployed_flips
    assert 0 < flips.sum() < N  # some candidates succeed and some do not: the two AUROCs differ in what they count
    o = res.summary()["ood"]
    clean, adv = res.clean_ood.astype(np.float64), res.adv_ood.astype(np.float64)
    assert o["auroc"] == pytest.approx(_brute_auroc(adv, clean), abs=1e-12)
    assert 0.5 < o["auroc"] < 1.0
    own = _wins(adv, clean)[np.arange(N), :, np.arange(N)]  # (N, K): each candidate against its own clean score
    assert o["paired"] == pytest.approx(own.mean(axis=1).mean(), abs=1e-12)
    assert (o["n_in"], o["n_ood"], o["n_clusters"], o["n_boot"], o["seed"]) == (N, N, N, 2000, 0)
    assert o["mean_clean"] == pytest.approx(clean.mean()) and o["mean_attacked"] == pytest.approx(adv.mean())
    s = o["successful"]
    assert s["auroc"] == pytest.approx(_brute_auroc(adv, clean, flips), abs=1e-12)
    assert s["n_ood"] == flips.sum() and s["mean_attacked"] == pytest.approx(adv[flips].mean())
    assert o["non_finite"] == {"clean": 0, "perturbed": 0}
    for key in ("in_distribution", "ood", "positive", "score_unit", "method"):
        assert isinstance(o[key], str) and o[key]


def test_the_interval_is_a_cluster_bootstrap_over_samples(pgd_run):
    """The 95% interval resamples samples (a sample's clean score with its candidates), never pairs a candidate with
    its own image's clean score, and is the brute-force bootstrap's, exactly."""
    _, _, _, res = pgd_run
    o = res.ood()
    lo, hi = _brute_bootstrap(res.adv_ood.astype(np.float64), res.clean_ood.astype(np.float64))
    assert o["ci"] == [pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12)]
    assert o["ci"][0] < o["auroc"] < o["ci"][1] and o["n_valid"] == 2000


def test_ensemble_members_get_their_own_ood_auroc(ood_model):
    """An ensemble's candidates are its members' columns: the block's AUROC counts all of them (K = 2), each
    member's row only its own column."""
    _, model = ood_model
    hu = nets.images(N, spread_hu=8.0, seed=3)
    attack = build_attack("ensemble", Target.from_model(model), attacks=["pgd", "square"], eps=EPS,
                          params={"pgd": {"steps": 10}, "square": {"queries": 40}})
    res = run_attack(attack, model, hu, seed=0)
    clean, adv = res.clean_ood.astype(np.float64), res.adv_ood.astype(np.float64)
    assert adv.shape == (N, 2)
    o = res.summary()["ood"]
    assert o["auroc"] == pytest.approx(_brute_auroc(adv, clean), abs=1e-12) and o["n_ood"] == 2 * N
    assert o["n_clusters"] == N  # K = 2 candidates of a sample share its cluster
    extra = attack.extra_report(res)
    for m in extra["members"]:
        a, b = m["columns"]
        assert m["ood"]["auroc"] == pytest.approx(_brute_auroc(adv[:, a:b], clean), abs=1e-12)
        assert m["ood"]["n_ood"] == N * (b - a)
    block = attack_block(res, label="ensemble")
    block["extra"] = extra
    page = render_attack_html(block)
    assert "member pgd: all its candidates" in page and "member square: all its candidates" in page


def test_study4_ood_attack_inputs_are_flagged_by_the_detector(ood_model):
    """The ``ood`` attack (study 4) starts from images of another kind (flat +200 HU: mean |x - 0.5| = 0.1, ten times
    the textured clean images') and drives the outputs to the clean ones within 20 HU: its objective ignores the OOD
    score, so every candidate still scores above every clean input: AUROC 1 over the pairs of different samples."""
    _, model = ood_model
    hu = nets.images(N, spread_hu=8.0, seed=3)
    ood = np.full((2, *nets.SHAPE), 200.0, np.float32)
    res = run_attack(build_attack("ood", Target.from_model(model), ood=ood, eps=20.0, steps=5, space="hu"), model, hu,
                     seed=0)
    o = res.summary()["ood"]
    clean, adv = res.clean_ood.astype(np.float64), res.adv_ood.astype(np.float64)
    assert adv.min() > clean.max() and o["auroc"] == _brute_auroc(adv, clean) == 1.0 and o["ci"] == [1.0, 1.0]


def test_no_ood_output_no_ood_block(fragile):
    res = run_attack(build_attack("pgd", Target.from_model(fragile), eps=EPS, steps=3, space="hu"), fragile,
                     nets.images(4), seed=0)
    assert res.clean_ood is None and res.adv_ood is None and res.ood() is None and "ood" not in res.summary()
    assert render_ood(attack_block(res)) == ""


def _check_page(page: str) -> None:
    """The attack's OOD table with its definitions and units."""
    assert "Out-of-distribution score: clean vs attacked" in page
    for text in ("AUROC [95% CI]", "own image", "cluster bootstrap over samples", "of <em>another</em> sample",
                 "mean OOD score: clean / attacked", "units of the head's OOD output", "all candidates",
                 "successful candidates", "ignore the OOD score", "evade_ood flips the class"):
        assert text in page, text


def test_audit_attack_cli_reports_the_ood_auroc(ood_model, tmp_path, capsys):
    """``audit attack`` with the OOD output named in [head] (the artifact's metadata does not name it)."""
    path = export_ood(tmp_path / "m.onnx", metadata_ood=False)
    manifest = write_manifest(tmp_path / "data", nets.images(N, spread_hu=8.0, seed=3), np.zeros(N, int))
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[model]\npath = "{path}"\n\n[head]\nood_output = "ood"\n\n[data]\nmanifest = "{manifest}"\n\n'
                   f'[attack]\nname = "pgd"\neps = {EPS}\nsteps = 10\nspace = "hu"\nexplain = false\n')
    assert main(["attack", str(cfg), "--out", str(tmp_path / "out")]) == 0
    (run,) = json.loads((tmp_path / "out" / "attack.json").read_text())["runs"]
    o = run["summary"]["ood"]
    assert o["n_in"] == o["n_clusters"] == N and 0.5 < o["auroc"] < 1.0 and "successful" in o
    _check_page((tmp_path / "out" / "attack.html").read_text())
    assert f"OOD AUROC clean vs attacked {o['auroc']:.3f}" in capsys.readouterr().out


def test_audit_run_puts_the_per_attack_ood_auroc_in_the_attack_block(ood_model, tmp_path):
    """``audit run`` with [attack]: report.json holds the OOD AUROC per dose (levels) and per attack (the attack's
    block), and report.html shows the attack's OOD table inside the attack's section."""
    path, _ = ood_model
    manifest = write_manifest(tmp_path / "data", nets.images(N, spread_hu=8.0, seed=3), np.zeros(N, int))
    cfg = write_config(tmp_path / "a.toml", path, manifest,
                       noise='kind = "nps"\nlevels = [50]\ndraws = 2\nseed = 1\nsigma_ref = 30.0')
    cfg.write_text(cfg.read_text() + f'\n[attack]\nname = "pgd"\neps = {EPS}\nsteps = 10\nspace = "hu"\nkeep = 0\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    check_report(report)
    assert report["models"][0]["levels"][0]["ood"]["n_ood"] == 2 * N  # per dose
    (block,) = report["attacks"]
    o = block["summary"]["ood"]
    assert o["n_ood"] == N and o["ci"][0] <= o["auroc"] <= o["ci"][1]
    assert read_report(tmp_path / "out" / "report.json") == report  # read back as `audit report` does
    for where, spoil in (("auroc", "high"), ("successful.non_finite", {"clean": -1}), ("ci", [0.1])):
        bad = json.loads(json.dumps(report))
        *path, key = where.split(".")
        table = bad["attacks"][0]["summary"]["ood"]
        for part in path:
            table = table[part]
        table[key] = spoil
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(InputError, match=rf"attacks\[0\]\.summary\.ood\.{where}: expected"):
            read_report(tmp_path / "bad.json")
    page = (tmp_path / "out" / "report.html").read_text()
    section = page[page.index('<section class="attack"'):]
    _check_page(section[: section.index("</section>")])


def test_degenerate_ood_aurocs_say_why_instead_of_showing_an_interval(pgd_run):
    """Successes in one sample only: an AUROC but no interval (a bootstrap over 1 cluster on that side is [1, 1] or
    conditional on drawing it), with the count of samples; one sample in all: undefined, with the reason."""
    import dataclasses

    _, _, _, res = pgd_run
    one = np.zeros_like(res.deployed_flips)
    one[int(np.argmax(res.deployed_flips.any(axis=1)))] = res.deployed_flips[int(np.argmax(res.deployed_flips.any(axis=1)))]
    s = dataclasses.replace(res, deployed_flips=one).ood()["successful"]
    assert s["samples_attacked"] == 1 and s["auroc"] is not None and s["ci"] == [None, None] and "1 sample" in s["note"]
    assert res.ood()["samples_attacked"] == N and res.ood()["ci"][0] is not None
    single = dataclasses.replace(res, clean_ood=res.clean_ood[:1], adv_ood=res.adv_ood[:1],
                                 deployed_flips=res.deployed_flips[:1]).ood()
    assert single["auroc"] is None and "different samples" in single["note"]


def _evade(model, hu: np.ndarray):
    """``evade_ood`` at the settings of ``pgd_run`` (the task objective): eps, steps, space, seed."""
    return run_attack(build_attack("pgd", Target.from_model(model), eps=EPS, steps=10, space="hu",
                                   objective="evade_ood"), model, hu, seed=0)


def test_evade_ood_flips_as_the_task_objective_does_with_the_ood_score_kept_down(pgd_run):
    """Same images, eps, steps and seed. Measured: task 8 of 10 samples flipped on the deployed model, AUROC of its
    successful candidates 0.50 [0.34, 0.64], own image (P(candidate > its clean score)) 0.90; evade_ood 8 of 10,
    0.26 [0.10, 0.40], 0.00 (the same at OOD_PENALTY 0.001 to 100: the score's gradient reaches the pixels outside
    the class's region, which the task loss leaves free). Asserted: at least half the task's successes (the penalty
    is zero once the score is at or below the clean one, so it should cost few flips), an AUROC at least 0.15 below
    the task's (measured gap 0.24) and below chance, and almost no candidate above its own clean score."""
    _, model, hu, task = pgd_run
    evade = _evade(model, hu)
    assert (task.attack["objective"], evade.attack["objective"]) == ("task", "evade_ood")
    s_task, s_evade = int(task.deployed_flips.sum()), int(evade.deployed_flips.sum())
    assert s_task >= 5 and 2 * s_evade >= s_task, (s_task, s_evade)
    o_task, o_evade = task.ood(), evade.ood()
    a_task, a_evade = o_task["successful"]["auroc"], o_evade["successful"]["auroc"]
    assert a_evade <= a_task - 0.15 and a_evade < 0.45, (a_task, a_evade)
    assert o_task["paired"] >= 0.7 and o_evade["paired"] <= 0.1, (o_task["paired"], o_evade["paired"])
    clean, adv = evade.clean_ood.astype(np.float64), evade.adv_ood.astype(np.float64)
    assert o_evade["successful"]["auroc"] == pytest.approx(_brute_auroc(adv, clean, evade.deployed_flips), abs=1e-12)


def test_evade_ood_on_a_model_without_an_ood_output_is_refused_in_one_line(fragile, ood_model):
    """The refusal names attack.objective; the NPS ascent, whose loss reads the head's output only, refuses it too."""
    with pytest.raises(ConfigError) as exc:
        build_attack("pgd", Target.from_model(fragile), eps=EPS, objective="evade_ood")
    msg = str(exc.value)
    assert msg.startswith("attack.objective: 'evade_ood'") and "ood_output" in msg and "names none" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match=r"^attack\.objective: expected one of"):
        NPSAscent(Target.from_model(ood_model[1]), nps=None, spacing=(1.0, 1.0), objective="evade_ood")


def test_audit_attack_cli_records_the_objective_beside_the_ood_auroc(tmp_path, capsys):
    """``[attack] objective = "evade_ood"`` from a config: attack.json's run holds the objective with the OOD block
    it produced, and the page names it beside the OOD table; without an OOD output the CLI exits 2 naming the key."""
    path = export_ood(tmp_path / "m.onnx", metadata_ood=False)
    manifest = write_manifest(tmp_path / "data", nets.images(N, spread_hu=8.0, seed=3), np.zeros(N, int))
    attack = f'[attack]\nname = "pgd"\neps = {EPS}\nsteps = 10\nspace = "hu"\nexplain = false\nobjective = "evade_ood"\n'
    body = f'[model]\npath = "{path}"\n\n[data]\nmanifest = "{manifest}"\n\n'
    cfg = tmp_path / "a.toml"
    cfg.write_text(body + attack)
    assert main(["attack", str(cfg), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "attack.objective: 'evade_ood'" in err and "Traceback" not in err
    cfg.write_text(body.replace("[data]", '[head]\nood_output = "ood"\n\n[data]') + attack)
    assert main(["attack", str(cfg), "--out", str(tmp_path / "out")]) == 0
    (run,) = json.loads((tmp_path / "out" / "attack.json").read_text())["runs"]
    assert run["attack"]["objective"] == "evade_ood" and run["summary"]["ood"]["paired"] <= 0.1
    page = (tmp_path / "out" / "attack.html").read_text()
    assert "objective=evade_ood" in page
    _check_page(page)


def test_audit_run_records_the_objective_in_the_attack_block(ood_model, tmp_path):
    """``audit run`` with ``[attack] objective = "evade_ood"``: report.json's attack block names the objective."""
    path, _ = ood_model
    manifest = write_manifest(tmp_path / "data", nets.images(N, spread_hu=8.0, seed=3), np.zeros(N, int))
    cfg = write_config(tmp_path / "a.toml", path, manifest, noise='kind = "gaussian"\nlevels = [10]\ndraws = 1\nseed = 1')
    cfg.write_text(cfg.read_text() + f'\n[attack]\nname = "pgd"\neps = {EPS}\nsteps = 10\nspace = "hu"\nkeep = 0\n'
                   'objective = "evade_ood"\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    check_report(report)
    (block,) = report["attacks"]
    assert block["attack"]["objective"] == "evade_ood" and block["summary"]["ood"]["paired"] <= 0.1
    page = (tmp_path / "out" / "report.html").read_text()
    section = page[page.index('<section class="attack"'):]
    assert "objective=evade_ood" in section[: section.index("</section>")]


def test_the_penalty_weight_bites_where_the_score_and_the_class_share_pixels(tmp_path, monkeypatch):
    """RegionOod, 30 images. Measured (successes, own image): task 17/30, 0.17; OOD_PENALTY 0.01 or 0.1: 17/30,
    0.17 (the penalty loses to the task gradient on every shared pixel); 1, 10, 100: 17/30, 0.03. The module's
    weight (10) is past that crossover and costs no success."""
    path = export_ood(tmp_path / "region.onnx", net=RegionOod())
    engine = load_engine(path)
    model = AuditedModel("region_ood", engine, head_from(engine.metadata), preprocess_from(engine.metadata))
    hu = nets.images(30, spread_hu=8.0, seed=5)

    def attack(objective: str):
        return run_attack(build_attack("pgd", Target.from_model(model), eps=EPS, steps=10, space="hu",
                                       objective=objective), model, hu, seed=0)

    task, evade = attack("task"), attack("evade_ood")
    with monkeypatch.context() as m:
        m.setattr(objectives, "OOD_PENALTY", 0.1)
        weak = attack("evade_ood")
    assert objectives.OOD_PENALTY == 10.0
    assert weak.ood()["paired"] >= task.ood()["paired"] - 0.02  # too weak a weight: the task objective's result
    assert evade.ood()["paired"] <= weak.ood()["paired"] - 0.1, (evade.ood()["paired"], weak.ood()["paired"])
    assert evade.deployed_flips.sum() >= task.deployed_flips.sum() - 2


def test_ood_scale_is_the_clean_spread_floored():
    """The standard deviation of the batch's clean scores; a batch of one sample or of equal scores falls back on 1%
    of their mean magnitude, all zeros on 1e-12."""
    assert float(objectives.ood_scale(torch.tensor([1.0, 2.0, 3.0]))) == pytest.approx(np.std([1.0, 2.0, 3.0]))
    assert float(objectives.ood_scale(torch.tensor([0.5]))) == pytest.approx(0.005)
    assert float(objectives.ood_scale(torch.tensor([2.0, 2.0]))) == pytest.approx(0.02)
    assert float(objectives.ood_scale(torch.zeros(3))) == pytest.approx(1e-12)
