"""The HTML report is a web page: headless Chromium loads it, every figure renders, no console errors.

One campaign (planted model, three doses, a gate policy, a PGD attack) and one browser session check the page a
reader sees: the verdict and headline first, every image decoded, nothing wider than a 1280 px window, the CMR
counts readable as numbers, and a PDF print of several pages. The same page is then rendered from a report.json
without its ``summary`` block (reports written before it existed) and must still open with the headline.
"""

from __future__ import annotations

import json
import re
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
from audit.report.html import render_html
from tests.audit.conftest import SPACING, planted_images

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH = 1280

POLICY = """[[rule]]
name = "no flips at 25 mAs"
metric = "sar"
level = 25
max = 0.0

[[rule]]
metric = "san_fraction"
level = 100
max = 1.0
"""


@pytest.fixture
def report_dir(tmp_path, planted):
    engine = load_engine(planted)
    model = AuditedModel("planted", engine, head_from(engine.metadata), preprocess_from(engine.metadata))
    source = ArraySource(planted_images(16, spread_hu=4.0), (SPACING, SPACING))
    noise = NoiseSpec(kind="nps", levels=(25.0, 50.0, 100.0), draws=10, seed=0, sigma_ref=30.0)
    stats = run_campaign([model], source, noise, tmp_path / "out", RunOptions(shard_samples=8))
    spec = AttackSpec("pgd", {"eps": 10.0, "steps": 5, "space": "hu"}, keep=1, samples=4)
    attacks = plan_attacks(spec, model, source).run(progress=False)
    (tmp_path / "policy.toml").write_text(POLICY)
    write_reports(tmp_path / "out", [model], source, noise, stats, attacks=attacks, policy=tmp_path / "policy.toml")
    return tmp_path / "out"


PAGE_FACTS = """() => {
  const first = document.querySelector('body > section');
  const cmr = [...document.querySelectorAll('table.cmr')].map(t => [t.caption ? t.caption.textContent : '',
      [...t.querySelectorAll('tr')].map(r => [...r.children].map(c => c.textContent))]);
  return {
    firstSection: first ? first.id : null,
    verdict: first && first.querySelector('.verdict') ? first.querySelector('.verdict').className + '|' +
             first.querySelector('.verdict').textContent : null,
    summaryText: first ? first.textContent : '',
    summaryTop: first ? first.getBoundingClientRect().top + window.scrollY : null,
    images: [...document.images].map(e => [e.alt, e.complete && e.naturalWidth > 0]),
    scrollWidth: document.documentElement.scrollWidth,
    cmr: cmr,
    definitions: document.querySelector('#definitions') ? document.querySelector('#definitions').textContent : '',
    cmrCaption: [...document.querySelectorAll('figure')].filter(f => f.querySelector('img[alt="CMR heat maps"]'))
                 .map(f => f.textContent).join(' '),
  };
}"""


def _launch(sync_api, p):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_chromium(report_dir):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is part of the test extra")
    report = json.loads((report_dir / "report.json").read_text())
    old = {k: v for k, v in report.items() if k != "summary"}  # a report written before the summary block
    (report_dir / "report-old.html").write_text(render_html(old, report_dir))
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = _launch(sync_api, p)
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((report_dir / "report.html").as_uri())
        facts = page.evaluate(PAGE_FACTS)
        page.screenshot(path=str(report_dir / "report.png"), full_page=True)
        pdf = page.pdf(format="A4", print_background=True)
        page.goto((report_dir / "report-old.html").as_uri())
        old_facts = page.evaluate(PAGE_FACTS)
        browser.close()
    assert errors == []

    # verdict first: the summary is the page's first section, at the top, with the gate's verdict and the headline
    assert facts["firstSection"] == "summary" and facts["summaryTop"] < 250
    assert facts["verdict"].startswith("verdict fail|") and "FAIL" in facts["verdict"]
    text = facts["summaryText"]
    head = report["summary"]["models"][0]["per_level"][0]
    assert report["models"][0]["engine"]["sha256"][:12] in text and "onnxruntime" in text
    assert f"{head['SAN']}\xa0/\xa0{head['N']}" in text, "SAN as count / N"
    assert "SAR pooled [95% CI]" in text and "noise sigma (HU)" in text and "dose (mAs)" in text
    assert "no flips at 25 mAs" in text, "the gate's rules sit under the verdict"
    if report["summary"]["models"][0]["critical_dose"]:
        assert "Critical dose" in text

    # every figure decoded
    alts = [alt for alt, _ in facts["images"]]
    assert {"NPS per dose", "SAR versus level", "SAN fraction versus level", "CMR heat maps", "exceedance curves"} <= set(alts)
    assert any(a.startswith("case ") for a in alts), "flipped cases are shown"
    assert sum("clean vs attacked" in a for a in alts) == 1, "the attack's explanation figure is shown"
    assert [alt for alt, ok in facts["images"] if not ok] == []

    # nothing wider than the window
    assert facts["scrollWidth"] <= WIDTH

    # the CMR counts as numbers: one table per level, its cells equal report.json's counts
    block = report["models"][0]["levels"][0]
    assert len(facts["cmr"]) == len(report["models"][0]["levels"])
    caption, rows = facts["cmr"][0]
    assert caption.startswith(f"{block['level']:g} mAs") and "counts" in caption
    shown = [[int(re.match(r"\s*(\d+)", cell).group(1)) for cell in row[1:]] for row in rows[1:1 + len(block["CMR"]["counts"])]]
    assert shown == block["CMR"]["counts"]
    assert "count" in facts["cmrCaption"] and "log" in facts["cmrCaption"], "the caption says what the cells and colours are"

    # every metric defined once, with its study
    for term in ("SAN fraction", "SAR_i", "SAR (pooled)", "SAR_c", "CMR", "exceedance curve", "critical dose", "design effect"):
        assert term in facts["definitions"]
    assert "study 1" in facts["definitions"] and "study 2" in facts["definitions"]

    # a report without the summary block opens with the same headline, rebuilt from the level blocks
    assert old_facts["firstSection"] == "summary" and old_facts["verdict"].startswith("verdict none|")
    assert f"{head['SAN']}\xa0/\xa0{head['N']}" in old_facts["summaryText"]
    assert old_facts["scrollWidth"] <= WIDTH and [a for a, ok in old_facts["images"] if not ok] == []

    # it prints: a PDF of several pages
    assert pdf[:4] == b"%PDF" and (len(re.findall(rb"/Type\s*/Page\b", pdf)) > 1 or len(pdf) > 10_000)
    assert (report_dir / "report.png").stat().st_size > 10_000


QUERY_FACTS = """() => ({
  images: [...document.images].map(e => [e.alt, e.complete && e.naturalWidth > 0]),
  scrollWidth: document.documentElement.scrollWidth,
  heading: document.querySelector('#attacks h2') ? document.querySelector('#attacks h2').textContent : null,
  queries: [...document.querySelectorAll('table.queries tr')].map(r => [...r.children].map(c => c.textContent)),
})"""


def open_pages(paths, script: str) -> tuple[list[dict], list[str]]:
    """Each page loaded in headless Chromium at 1280 px: what ``script`` returns, and every console or page error."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is part of the test extra")
    errors: list[str] = []
    facts = []
    with sync_api.sync_playwright() as p:
        browser = _launch(sync_api, p)
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        for path in paths:
            page.goto(path.as_uri())
            facts.append(page.evaluate(script))
        browser.close()
    return facts, errors


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_query_based_attacks_render_with_queries_per_success(tmp_path, planted):
    """Black-box attacks (Square, and an ensemble of PGD and Square) in the report: a table of queries per success
    with its unit, each number the block's own, the success-against-queries figure, no console error, no overflow."""
    engine = load_engine(planted)
    model = AuditedModel("planted", engine, head_from(engine.metadata), preprocess_from(engine.metadata))
    source = ArraySource(planted_images(12, spread_hu=4.0), (SPACING, SPACING))
    noise = NoiseSpec(kind="nps", levels=(25.0, 100.0), draws=4, seed=0, sigma_ref=30.0)
    out = tmp_path / "out"
    stats = run_campaign([model], source, noise, out, RunOptions(shard_samples=8))
    attacks = []
    for name, params in (("square", {"eps": 10.0, "queries": 60}),
                         ("ensemble", {"attacks": ["pgd", "square"], "eps": 10.0, "params": {"square": {"queries": 30}}})):
        attacks += plan_attacks(AttackSpec(name, params, keep=1, samples=6), model, source).run(progress=False)
    report = write_reports(out, [model], source, noise, stats, attacks=attacks)
    square = report["attacks"][0]["extra"]
    assert square["successes"] > 0, "the planted images lie within 10 HU of the threshold"

    (facts,), errors = open_pages([out / "report.html"], QUERY_FACTS)
    assert errors == []
    assert facts["heading"] == "Gradient and query-based attacks"
    assert [alt for alt, ok in facts["images"] if not ok] == []
    assert "attack success versus queries" in [alt for alt, _ in facts["images"]]
    assert facts["scrollWidth"] <= WIDTH
    head, *rows = facts["queries"]
    assert "(queries)" in " ".join(head) and "queries per success: mean / median" in head
    by_label = {r[0]: r for r in rows}
    assert set(by_label) == {"square", "ensemble: square"}, "the gradient member has no queries to show"
    row = by_label["square"]
    assert row[1] == f"{square['successes']} / 6" and row[3] == str(square["queries_budget"])
    mean, median = (float(v) for v in row[5].split(" / "))
    assert mean == pytest.approx(square["queries_per_success"], rel=1e-3)
    assert median == pytest.approx(square["median_queries_per_success"], rel=1e-3)
