"""The opt-in noise bank: exact draws (shifted fresh fields), a sample's draws distinct, the run marked, mixed gates refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audit.artifact import AuditedModel
from audit.artifact.heads import head_from, preprocess_from
from audit.campaign.noise import BANK_FIELDS, BANK_SAMPLE, NoiseBank, NoiseSpec, draw_keys
from audit.campaign.run import RunOptions, run_campaign
from audit.cli import main
from audit.config import load_config, parse_config
from audit.gate import load_policy
from audit.pipelines.fast_gate import run_fast_gate
from audit.data import ArraySource
from audit.engines import load_engine
from audit.errors import ConfigError
from audit.io import write_json
from audit.pipelines.run import write_reports
from audit.report import check_report
from audit.report.build import build_report
from kernels import grid_variance
from tests.audit.conftest import REGION, SPACING, planted_images, write_config, write_manifest
from tests.audit.conftest import SHAPE as PLANTED_SHAPE
from tests.audit.planted import planted_model, region_means

SHAPE = (32, 32)


def _spec(**kw) -> NoiseSpec:
    base = dict(kind="nps", levels=(50.0,), draws=8, seed=5, sigma_ref=30.0, mas_ref=100.0, bank=16)
    return NoiseSpec(**{**base, **kw})


def test_a_bank_draw_is_a_fresh_field_circularly_shifted():
    """Each draw is bit for bit a fresh draw (keys (seed, BANK_SAMPLE, level, b)) rolled by its keyed offset:
    the exact noise distribution, since a circular shift of a stationary periodic field has the field's law."""
    spec = _spec()
    bank = NoiseBank(spec, SHAPE, (SPACING, SPACING))
    keys = draw_keys(spec.seed, np.repeat(np.arange(5), 7), 50.0, np.tile(np.arange(7), 5))
    drawn = bank.sample(keys, 50.0)
    f, offset = bank.layout(keys)
    fresh = spec.sample(draw_keys(spec.seed, np.full(16, BANK_SAMPLE, np.uint64), 50.0, np.arange(16)), 50.0,
                        np.zeros((16, *SHAPE), np.float32), (SPACING, SPACING))
    for r in range(keys.shape[0]):
        shift = np.unravel_index(offset[r], SHAPE)
        np.testing.assert_array_equal(drawn[r], np.roll(fresh[f[r]], shift, axis=(0, 1)))


def test_bank_draws_have_the_target_variance_and_nps():
    """Pixel variance within 5% of the grid variance of the dose's NPS, and the periodogram averaged over the draws
    and 4x4 frequency blocks within 12% of the NPS averaged the same way (64 fields: about 3% standard error)."""
    spec = _spec(bank=BANK_FIELDS, levels=(40.0,))
    bank = NoiseBank(spec, SHAPE, (SPACING, SPACING))
    keys = draw_keys(spec.seed, np.repeat(np.arange(32), 8), 40.0, np.tile(np.arange(8), 32))
    n = bank.sample(keys, 40.0).astype(np.float64)
    target = spec.dose_model(SHAPE, (SPACING, SPACING)).nps_at(40.0).on_grid(SHAPE, (SPACING, SPACING), half=False)
    var = grid_variance(spec.dose_model(SHAPE, (SPACING, SPACING)).nps_at(40.0).on_grid(SHAPE, (SPACING, SPACING)),
                        SHAPE, (SPACING, SPACING))
    assert abs(n.var() / var - 1) < 0.05, (n.var(), var)
    periodogram = (np.abs(np.fft.fft2(n)) ** 2).mean(axis=0) * SPACING * SPACING / (SHAPE[0] * SHAPE[1])

    def blocks(a):
        return a.reshape(8, 4, 8, 4).mean(axis=(1, 3))

    want, got = blocks(target), blocks(periodogram)
    strong = want > 0.05 * want.max()  # where the NPS has power (a relative error of nothing is noise)
    np.testing.assert_allclose(got[strong], want[strong], rtol=0.12)


def test_a_samples_draws_are_distinct_even_beyond_the_bank_size():
    spec = _spec(bank=4, draws=40)
    bank = NoiseBank(spec, (8, 8), (SPACING, SPACING))
    for sample in (0, 3, 17):
        keys = spec.keys(np.full(40, sample), 50.0, np.arange(40))  # K = 10 x B: fields reused, shifts differ
        f, offset = bank.layout(keys)
        assert len(set(zip(f.tolist(), offset.tolist()))) == 40
        assert sorted(f[:4].tolist()) == [0, 1, 2, 3]  # K <= B: every draw its own field
        flat = bank.sample(keys, 50.0).reshape(40, -1)
        assert len({row.tobytes() for row in flat}) == 40


def test_bank_is_refused_where_the_noise_depends_on_the_image():
    with pytest.raises(ConfigError, match="noise.bank"):
        NoiseSpec(kind="poisson", levels=(1e4,), bank=8)
    with pytest.raises(ConfigError, match="noise.bank"):
        NoiseSpec(kind="nps", mode="reduce", fractions=(0.5,), acquired_mas=200.0, bank=8)
    with pytest.raises(ConfigError, match="noise.bank"):
        NoiseBank(_spec(bank=2**14, levels=(10.0, 50.0, 100.0)), (128, 128, 64), (1.0, 1.0, 1.0))


def test_config_bank_true_takes_the_default_size_and_bad_values_name_the_key(tmp_path):
    raw = {"model": {"path": "m.onnx"}, "data": {"phantom": "nodules"}, "noise": {"bank": True}}
    assert parse_config(raw, tmp_path).noise.bank == BANK_FIELDS
    assert parse_config({**raw, "noise": {"bank": 12}}, tmp_path).noise.bank == 12
    assert parse_config({**raw, "noise": {}}, tmp_path).noise.bank == 0  # never the default
    with pytest.raises(ConfigError, match=r"^noise\.bank: "):
        parse_config({**raw, "noise": {"bank": "yes"}}, tmp_path)


def _audit(planted, folder, bank: int, page: bool):
    """A small audit of the planted model; its report.json, and with ``page`` its report.html (no case figures)."""
    engine = load_engine(planted)
    model = AuditedModel("planted", engine, head_from(engine.metadata), preprocess_from(engine.metadata))
    source = ArraySource(planted_images(24, spread_hu=4.0), (SPACING, SPACING))
    noise = NoiseSpec(kind="nps", levels=(25.0, 400.0), draws=12, seed=2, sigma_ref=40.0, mas_ref=100.0, bank=bank)
    stats = run_campaign([model], source, noise, folder, RunOptions(batch_size=64, shard_samples=8, progress=False))
    if page:
        return write_reports(folder, [model], source, noise, stats, worst=0)
    report = build_report(folder, [model], source, noise.resolved(source), stats.to_dict(), worst=0)
    write_json(folder / "report.json", report)
    return report


def test_bank_run_is_marked_and_a_mixed_no_regression_baseline_is_refused(tmp_path, planted, capsys):
    banked = _audit(planted, tmp_path / "bank", 8, page=True)
    fresh = _audit(planted, tmp_path / "fresh", 0, page=False)
    check_report(banked)
    assert banked["noise"]["bank"] == 8 and "approximate" in banked["noise"]["bank_note"]
    assert banked["summary"]["noise"]["bank"] == 8 and "bank" not in fresh["noise"]
    page = (tmp_path / "bank" / "report.html").read_text()
    assert "noise bank (screening run)" in page and "independence across samples is approximate" in page
    assert banked["models"][0]["levels"][0]["SAN"] > 0  # the planted model flips at 25 mAs with banked noise too
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nmetric = "no_regression"\n')
    capsys.readouterr()
    code = main(["gate", str(tmp_path / "bank" / "report.json"), "--policy", str(policy),
                 "--baseline", str(tmp_path / "fresh" / "report.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "noise bank" in err and "fresh noise" in err, err
    both = main(["gate", str(tmp_path / "bank" / "report.json"), "--policy", str(policy),
                 "--baseline", str(tmp_path / "bank" / "report.json")])
    assert both == 0  # a run against itself: no worsening
    out = json.loads((tmp_path / "bank" / "report.json").read_text())
    assert out["timing"]["clean_inferences"] == 24  # the clean pass is counted, once per sample and model


def test_fast_gate_opts_in_and_says_so(tmp_path):
    """``run_fast_gate(bank=B)`` draws from a bank (gate.json records it and the caveat) and reaches the clear
    verdict; without it gate.json carries no bank."""
    model = planted_model(tmp_path / "m.onnx", PLANTED_SHAPE, REGION, 0.0)
    images = planted_images(20, spread_hu=6.0, seed=9)
    manifest = write_manifest(tmp_path / "data", images, (region_means(images, REGION) >= 0).astype(int))
    config = load_config(write_config(tmp_path / "a.toml", model, manifest, run="batch_size = 100\nshard_samples = 20",
                                      noise='kind = "nps"\nlevels = [25, 400]\ndraws = 40\nseed = 3\nsigma_ref = 40.0'))
    policy = tmp_path / "p.toml"
    policy.write_text('[[rule]]\nmetric = "sar"\nlevel = 25\nmax = 0.01\n')  # the planted model flips far more
    banked = run_fast_gate(config, load_policy(policy), tmp_path / "bank", rounds=4, bank=16)
    assert banked["noise_bank"] == 16 and "approximate" in banked["noise_bank_note"] and banked["passed"] is False
    assert json.loads((tmp_path / "bank" / "campaign.json").read_text())["noise"]["bank"] == 16
    fresh = run_fast_gate(config, load_policy(policy), tmp_path / "fresh", rounds=4)
    assert "noise_bank" not in fresh and fresh["passed"] is False
