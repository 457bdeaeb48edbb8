"""The HTML report is a web page: headless Chromium loads it, every figure renders, no console errors."""

from __future__ import annotations

import shutil

import pytest

from audit.config import AttackSpec
from audit.pipelines.attack import plan_attacks
from audit.artifact import AuditedModel
from audit.campaign.run import RunOptions, run_campaign
from audit.data import ArraySource
from audit.engines import load_engine
from audit.artifact.heads import head_from, preprocess_from
from audit.campaign.noise import NoiseSpec
from audit.pipelines.run import write_reports
from tests.audit.conftest import SPACING, planted_images

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def report_dir(tmp_path, planted):
    engine = load_engine(planted)
    model = AuditedModel("planted", engine, head_from(engine.metadata), preprocess_from(engine.metadata))
    source = ArraySource(planted_images(16, spread_hu=4.0), (SPACING, SPACING))
    noise = NoiseSpec(kind="nps", levels=(25.0, 100.0), draws=10, seed=0, sigma_ref=30.0)
    stats = run_campaign([model], source, noise, tmp_path / "out", RunOptions(shard_samples=8))
    spec = AttackSpec("pgd", {"eps": 10.0, "steps": 5, "space": "hu"}, keep=1, samples=4)
    attacks = plan_attacks(spec, model, source).run(progress=False)
    write_reports(tmp_path / "out", [model], source, noise, stats, attacks=attacks)
    return tmp_path / "out"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_chromium(report_dir):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is part of the test extra")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((report_dir / "report.html").as_uri())
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete && e.naturalWidth > 0])")
        page.screenshot(path=str(report_dir / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    alts = [alt for alt, _ in images]
    assert {"NPS per dose", "SAR versus level", "CMR heat maps", "exceedance curves"} <= set(alts)
    assert any(a.startswith("case ") for a in alts), "flipped cases are shown"
    assert sum("clean vs attacked" in a for a in alts) == 1, "the attack's explanation figure is shown"
    broken = [alt for alt, ok in images if not ok]
    assert broken == []
    assert (report_dir / "report.png").stat().st_size > 10_000
