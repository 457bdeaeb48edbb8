"""The gate: each rule kind passes and fails on real reports; baselines flag regressions, not seed noise."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from audit.artifact import AuditedModel
from audit.campaign.run import CampaignStats, RunOptions, run_campaign
from audit.data import ArraySource
from audit.engines import load_engine
from audit.gate import evaluate, load_policy
from audit.artifact.heads import head_from, preprocess_from
from audit.campaign.noise import NoiseSpec
from audit.report import build_report
from tests.audit.conftest import SHAPE, SPACING, planted_images
from tests.audit.planted import planted_model, region_means


def _report(tmp, model_path, seed, name="planted"):
    engine = load_engine(model_path)
    model = AuditedModel(name, engine, head_from(engine.metadata), preprocess_from(engine.metadata))
    images = planted_images(60, spread_hu=6.0, seed=5)
    truth = (region_means(images, (slice(12, 36), slice(12, 36))) >= 0).astype(np.int64)
    source = ArraySource(images, (SPACING, SPACING), truth)
    noise = NoiseSpec(kind="nps", levels=(50.0, 200.0), draws=40, seed=seed, sigma_ref=40.0)
    out = tmp / f"out-{model_path.stem}-{seed}"
    run_campaign([model], source, noise, out, RunOptions(shard_samples=30))
    report = build_report(out, [model], source, noise, CampaignStats().to_dict())
    path = out / "report.json"
    path.write_text(json.dumps(report))
    return report, path


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    robust = planted_model(tmp / "robust.onnx", SHAPE, (slice(12, 36), slice(12, 36)), 0.0)  # 24x24 region: quiet mean
    fragile = planted_model(tmp / "fragile.onnx", SHAPE, (slice(20, 28), slice(20, 28)), 0.0)  # 8x8: 3x noisier mean
    return {"base": _report(tmp, robust, 1), "seed2": _report(tmp, robust, 2), "fragile": _report(tmp, fragile, 1)}


def _policy(tmp_path, text):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return load_policy(path)


@pytest.mark.parametrize("rule, passing_limit, failing_limit", [
    ('metric = "san_fraction"\nlevel = 50', 1.0, 0.0),
    ('metric = "sar"\nlevel = 50', 0.9, 0.0),
    ('metric = "sar"\nlevel = 50\nbound = "upper"', 0.95, 0.0),
    ('metric = "sar_class"\nclass = "above"\nlevel = 50', 0.9, 0.0),
    ('metric = "cmr_offdiag"\nlevel = 50', 0.9, 0.0),
])
def test_max_rules_pass_and_fail(tmp_path, reports, rule, passing_limit, failing_limit):
    report = reports["fragile"][0]
    ok = evaluate(report, _policy(tmp_path, f"[[rule]]\n{rule}\nmax = {passing_limit}\n"))
    bad = evaluate(report, _policy(tmp_path, f"[[rule]]\n{rule}\nmax = {failing_limit}\n"))
    assert all(o.passed for o in ok) and not any(o.passed for o in bad)
    assert bad[0].measured > 0


@pytest.mark.parametrize("metric", ["clean_auc", "clean_accuracy"])
def test_clean_rules_pass_and_fail(tmp_path, reports, metric):
    report = reports["fragile"][0]
    (ok,) = evaluate(report, _policy(tmp_path, f'[[rule]]\nmetric = "{metric}"\nmin = 0.5\n'))
    (bad,) = evaluate(report, _policy(tmp_path, f'[[rule]]\nmetric = "{metric}"\nmin = 1.01\n'))
    assert ok.passed and not bad.passed and 0.5 < ok.measured <= 1.0


def test_missing_clean_metric_is_an_error_not_a_pass(tmp_path, reports):
    report = json.loads(json.dumps(reports["base"][0]))
    report["models"][0]["clean"].pop("auc")
    with pytest.raises(ValueError, match="no clean auc"):
        evaluate(report, _policy(tmp_path, '[[rule]]\nmetric = "clean_auc"\nmin = 0.5\n'))


def test_upper_bound_is_stricter_than_the_estimate(tmp_path, reports):
    report = reports["fragile"][0]
    est = evaluate(report, _policy(tmp_path, '[[rule]]\nmetric = "sar"\nlevel = 50\nmax = 1\n'))[0].measured
    upper = evaluate(report, _policy(tmp_path, '[[rule]]\nmetric = "sar"\nlevel = 50\nmax = 1\nbound = "upper"\n'))[0].measured
    assert upper > est


@pytest.mark.parametrize("test", ["sar_class", "cmr"])
def test_baseline_flags_a_real_regression_but_not_seed_noise(tmp_path, reports, test):
    rules = _policy(tmp_path, f'[[rule]]\nmetric = "no_regression"\ntest = "{test}"\n')
    base, seed2, fragile = reports["base"][0], reports["seed2"][0], reports["fragile"][0]
    assert base["models"][0]["levels"][0]["SAR_overall"] != seed2["models"][0]["levels"][0]["SAR_overall"]  # seeds differ
    assert all(o.passed for o in evaluate(seed2, rules, base))
    (regressed,) = evaluate(fragile, rules, base)
    assert not regressed.passed and "worse" in regressed.detail


def _gate(*args):
    return subprocess.run([sys.executable, "-m", "audit", "gate", *map(str, args)], capture_output=True, text=True)


def test_cli_exit_codes_table_and_junit(tmp_path, reports):
    policy = tmp_path / "p.toml"
    policy.write_text('[[rule]]\nname = "low dose SAR"\nmetric = "sar"\nlevel = 50\nmax = 0.0\n'
                      '[[rule]]\nmetric = "san_fraction"\nlevel = 200\nmax = 1.0\n')
    proc = _gate(reports["fragile"][1], "--policy", policy, "--junit", tmp_path / "g.xml")
    assert proc.returncode == 1 and "low dose SAR" in proc.stdout and "FAIL" in proc.stdout and "pass" in proc.stdout
    xml = (tmp_path / "g.xml").read_text()
    assert xml.count("<testcase") == 2 and xml.count("<failure") == 1
    policy.write_text('[[rule]]\nmetric = "san_fraction"\nlevel = 200\nmax = 1.0\n')
    assert _gate(reports["fragile"][1], "--policy", policy, "--junit", tmp_path / "g.xml").returncode == 0


@pytest.mark.parametrize("text, needle", [
    ('[[rule]]\nname = "mystery"\nmetric = "sar_magic"\nmax = 1\n', "mystery"),
    ('[[rule]]\nname = "dose 77"\nmetric = "sar"\nlevel = 77\nmax = 1\n', "level 77"),
    ('[[rule]]\nmetric = "sar"\nmax = 1\n', "needs the 'level'"),
    ('[[rule]]\nmetric = "no_regression"\n', "--baseline"),
    ('[[rule]]\nmetric = "sar_class"\nclass = "purple"\nlevel = 50\nmax = 1\n', "purple"),
])
def test_bad_policies_exit_2_naming_the_rule(tmp_path, reports, text, needle):
    policy = tmp_path / "p.toml"
    policy.write_text(text)
    proc = _gate(reports["base"][1], "--policy", policy, "--junit", tmp_path / "g.xml")
    assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
