"""``report.html``: one self-contained page (figures embedded as PNG data URIs) from an output folder.

The page is a function of ``report.json`` and the files ``audit.report.cases``
wrote beside it when the campaign ended (case panels, the NPS figure): it can
be rendered again (``audit report OUT``) without the model, the data or the
noise generator.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Iterable

from audit.errors import InputError
from audit.io import write_text
from audit.report import figures
from audit.report.attacks import render_attack_html
from audit.report.cases import NPS_FIGURE, case_image

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}
th{background:#f3f3f3}img{max-width:100%;margin:.4em 0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
.small{color:#666;font-size:12px}"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: dict[str, Any], folder: str | Path) -> str:
    """The HTML page of ``report`` (report.json's content), with the figure files found under ``folder``."""
    folder = Path(folder)
    noise = report["noise"]
    unit = noise["level_unit"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Robustness audit</title><style>{CSS}</style></head><body>",
             "<h1>Robustness audit</h1>",
             f"<p class='small'>schema {report['schema']} &middot; created {report['created']} &middot; "
             f"{report['data']['N']} samples of shape {report['data']['shape']} at {report['data']['spacing_mm']} mm &middot; "
             f"noise: {html.escape(noise['kind'])}, K = {noise['draws']} draws per level, seed {noise['seed']}</p>"]
    if (folder / NPS_FIGURE).is_file():
        parts.append("<h2>Noise used</h2>" + _img((folder / NPS_FIGURE).read_bytes(), "NPS per dose"))
    for model in report["models"]:
        parts.append(f"<h2>Model {html.escape(model['name'])}</h2>")
        eng = model["engine"]
        parts.append(f"<p class='small'>{html.escape(eng.get('path', eng.get('source', '')))} &middot; sha256 "
                     f"{html.escape(str(eng.get('sha256', ''))[:16])} &middot; {html.escape(eng['backend'])} "
                     f"{html.escape(', '.join(eng.get('providers', [])))} &middot; task {html.escape(model['head']['task'])}</p>")
        clean = {k: v for k, v in model["clean"].items() if not isinstance(v, (dict, list))}
        if clean:
            parts.append("<h3>Clean performance</h3>" + _table(clean.keys(), [clean.values()]))
        rows = [[b["level"], b["N"], b["K"], b["SAN"], b["SAN_fraction"], b["SAR_overall"],
                 f"[{_fmt(b['SAR_overall_ci'][0])}, {_fmt(b['SAR_overall_ci'][1])}]"] for b in model["levels"]]
        parts.append("<h3>Robustness per level</h3>" + _table([unit, "N", "K", "SAN", "SAN fraction", "SAR", "SAR CI"], rows))
        log_x = noise["kind"] == "nps"
        parts.append(_img(figures.sar_vs_level(model, unit, log_x), "SAR versus level"))
        if "CMR" in model["levels"][0]:
            parts.append("<h3>Confusion Matrix for Robustness</h3>" + _img(figures.cmr_heatmaps(model, unit), "CMR heat maps"))
        parts.append(_img(figures.exceedance_curves(model, unit), "exceedance curves"))
        if model["worst_cases"]:
            parts.append("<h3>Flipped cases</h3>")
            parts.append(_table(["sample", "level", "SAR_i", "noisy label", "noisy score", "key (seed, sample, level, k)", "DICOM (clean / noisy series)"],
                                [[c["id"], c["level"], c["SAR"], c["noisy_label"], c["noisy_score"], str(c["key"]),
                                  f"{c['dicom']['clean_dir']} / {c['dicom']['noisy_dir']}" if c.get("dicom") else "-"]
                                 for c in model["worst_cases"]]))
            for case in model["worst_cases"]:
                png = case_image(folder, model["name"], case)
                if png.is_file():
                    parts.append(_img(png.read_bytes(), f"case {case['id']}"))
    for arm in report.get("scan_arm", []):
        parts.append(f"<h2>Repeated scans vs simulated noise: {html.escape(arm['model'])} at {arm['mas']:g} mAs</h2>")
        parts.append(_table(["phantom", "scans", "draws", "clean label", "SAR real", "SAR simulated", "sigma (HU)"],
                            [[p["phantom"], p["scans"], p["draws"], arm["class_order"][p["clean_label"]], p["SAR_real"],
                              p["SAR_simulated"], p["sigma_real_hu"]] for p in arm["per_phantom"]]))
        parts.append(f"<p>CMR Z-test, real vs simulated: max |Z| = {_fmt(arm['max_abs_z'])}, "
                     f"{arm['entries_rejecting_95']} entries reject equality at 95%.</p>")
    if report.get("attacks"):
        parts.append("<h2>Gradient attacks</h2><p class='small'>Perturbations found on the torch twin; a success counts "
                     "only where the deployed artifact's decision changed.</p>")
        parts.extend(render_attack_html(block, heading="h3") for block in report["attacks"])
    if report.get("spread"):
        rows = [[e["level"], e["models"], e["models_with_any_flip"], e["SAR_overall_mean"], e["SAR_overall_std"]] for e in report["spread"]["per_level"]]
        parts.append("<h2>Spread over models</h2>" + _table([unit, "models", "with any flip", "SAR mean", "SAR std"], rows))
    t = report["timing"]
    parts.append(f"<p class='small'>{t['inferences']} inferences in {t['wall_seconds']} s ({t['images_per_second']} images/s)</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_report(folder: str | Path) -> Path:
    """(Re)write ``folder/report.html`` from ``folder/report.json`` and the figure files beside it."""
    folder = Path(folder)
    path = folder / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the report ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    write_text(folder / "report.html", render_html(report, folder))
    return folder / "report.html"
