"""``report.html``: one self-contained page (figures embedded as PNG data URIs) from an output folder.

The page is a function of ``report.json`` and the files ``audit.report.cases``
wrote beside it when the campaign ended (case panels, the NPS figure): it can
be rendered again (``audit report OUT``) without the model, the data or the
noise generator.

It opens with the verdict and the headline (``report["summary"]``; rebuilt
from the per-model level blocks for reports written before that key existed),
then the definitions of every metric it shows, then one section per model and
the studies' other views (comparisons, scan arm, attacks, spread). A model's
section adds, where report.json has them: segmentation quantiles (table and box
figure, mm), detection (CPM, sensitivity at 1 FP/scan, paired CPM drop, lesion
SAR per dose; FROC curves with CI bands; score histograms) and the OOD AUROC. It fits the
page width and prints to a clean PDF (one model per page, figures never cut).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import Any

from audit.errors import InputError
from audit.io import write_text
from audit.report import figures
from audit.report.attacks import render_attack_html, render_attack_sweeps, render_query_summary
from audit.report.cases import NPS_FIGURE, case_image

#: A clean score this close to a binary head's threshold marks a flipped case as borderline.
BORDERLINE = 0.05

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;padding:1.2em 2em 3em;max-width:1480px;
 color:#222;line-height:1.4;font-size:15px}
h1{margin:.2em 0 .1em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}h3{margin:1.2em 0 .4em}
h4{margin:.8em 0 .3em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #d4d4d4;padding:3px 8px;font-size:13px;text-align:right;
 vertical-align:top}
th{background:#f3f3f3;font-weight:600}td.l,th.l{text-align:left}
.tw{overflow-x:auto;max-width:100%}
img{max-width:100%;height:auto;display:block}
figure{margin:.4em 0 1em;break-inside:avoid}figcaption{color:#555;font-size:12.5px;margin-top:.25em;max-width:75em}
.small,.meta{color:#666;font-size:12.5px}.meta{overflow-wrap:anywhere}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,440px),1fr));gap:.6em 1.6em;align-items:start}
.grid.cases{grid-template-columns:repeat(auto-fit,minmax(min(100%,560px),1fr))}
.row{display:flex;flex-wrap:wrap;gap:.4em 1.6em;align-items:flex-start}
.summary{border:1px solid #ccc;border-radius:6px;padding:.6em 1.2em 1em;background:#fafafa}
.summary h2{margin-top:.3em;border:0}
.verdict{font-size:1.25em;font-weight:700;padding:.45em .8em;border-radius:5px;margin:.3em 0 .6em;border-left:8px solid}
.verdict.pass{background:#e8f5e9;border-color:#2e7d32;color:#1b5e20}
.verdict.fail{background:#fdecea;border-color:#c62828;color:#b71c1c}
.verdict.none{background:#eef1f5;border-color:#78909c;color:#37474f}
.verdict span{font-weight:400;font-size:.8em;color:#444}
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,420px),1fr));gap:.2em 2em}
table.kv th{text-align:left;background:none;border:0;border-bottom:1px solid #eee;font-weight:600;padding-left:0}
table.kv td{text-align:left;border:0;border-bottom:1px solid #eee}
span.pass{color:#1b5e20;font-weight:600}span.fail{color:#b71c1c;font-weight:600}
p.warn{background:#fff8e1;border-left:6px solid #f9a825;padding:.3em .6em}
tr.borderline td{background:#fff8e1}.badge{display:inline-block;font-size:11px;padding:0 5px;border-radius:3px;
 background:#ffb300;color:#222;margin-left:4px}
dl.defs{display:grid;grid-template-columns:max-content 1fr;gap:.25em 1em;font-size:13.5px;margin:.3em 0}
dl.defs dt{font-weight:600}dl.defs dd{margin:0}dl.defs .src{color:#777}
nav.toc{font-size:13px;margin:.4em 0 1em;color:#555}nav.toc a{margin-right:1em;color:#1565c0;text-decoration:none}
caption{caption-side:top;font-size:12px;color:#555;text-align:left;padding-bottom:2px}
.ci{white-space:nowrap;color:#555}
code{font-size:12.5px;overflow-wrap:anywhere}
@media (max-width:700px){body{padding:.6em}dl.defs{grid-template-columns:1fr}}
@media print{
 @page{size:A4;margin:12mm}
 body{max-width:none;padding:0;font-size:11.5px}
 nav.toc{display:none}
 .summary{background:none}
 section.model,section.views{break-before:page}
 h2,h3,h4{break-after:avoid}
 figure,img,tr,.verdict{break-inside:avoid}
 table.cmr,table.kv{break-inside:avoid}
 .tw{overflow:visible}
 .grid,.grid.cases{display:block}
 .grid figure{max-width:100%}
 a{color:inherit;text-decoration:none}
}
"""


# ---------------------------------------------------------------------------
# small HTML helpers


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _figure(png: bytes, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure>{_img(png, alt)}{cap}</figure>"


def _num(v: Any, digits: int = 4) -> str:
    """A number for a table cell (no HTML escaping needed for the result)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) < 1e-3 or abs(v) >= 1e6:
            return f"{v:.{max(digits - 1, 1)}e}"
        return f"{v:.{digits}g}"
    return str(v)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, int, float)):
        return _num(v)
    if isinstance(v, (list, tuple)) and len(v) <= 8 and all(isinstance(x, (int, float)) or x is None for x in v):
        return '<span class="ci">[' + ", ".join(_num(x) for x in v) + "]</span>"
    return html.escape(str(v))


def _ci(ci: Any) -> str:
    """An interval as HTML: breakable before it, never inside it."""
    if not ci or len(ci) != 2:
        return ""
    return f' <span class="ci">[{_num(ci[0], 3)}, {_num(ci[1], 3)}]</span>'


def _of(count: Any, total: Any) -> str:
    return f"{count}&nbsp;/&nbsp;{total}"


def _pct(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{100 * v:.{digits}g}%"


class Raw(str):
    """Cell content that is already HTML."""


def _cell(v: Any, left: bool = False) -> str:
    cls = ' class="l"' if left else ""
    if isinstance(v, Raw):
        return f"<td{cls}>{v}</td>"
    return f"<td{cls}>{_fmt(v)}</td>"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]], *, left: int | set[int] = 0, cls: str = "",
           caption: str = "", row_classes: Sequence[str] | None = None) -> str:
    """A table (wrapped so a wide one scrolls inside the page, never the page); ``left``: how many leading columns
    (or which columns) are text, aligned left."""
    is_left = (lambda i: i < left) if isinstance(left, int) else (lambda i: i in left)
    head = "".join(f'<th{" class=l" if is_left(i) else ""}>{html.escape(h)}</th>' for i, h in enumerate(header))
    body = []
    for r_i, r in enumerate(rows):
        rc = f' class="{row_classes[r_i]}"' if row_classes and row_classes[r_i] else ""
        body.append(f"<tr{rc}>" + "".join(_cell(v, is_left(i)) for i, v in enumerate(r)) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    c = f' class="{cls}"' if cls else ""
    return f'<div class="tw"><table{c}>{cap}<tr>{head}</tr>{"".join(body)}</table></div>'


def _without(header: list[str], rows: list[list[Any]], name: str, keep: bool) -> tuple[list[str], list[list[Any]]]:
    """``header`` and ``rows`` less the column ``name`` unless ``keep``."""
    if keep or name not in header:
        return header, rows
    i = header.index(name)
    return header[:i] + header[i + 1:], [r[:i] + r[i + 1:] for r in rows]


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><th>{html.escape(k)}</th>{_cell(v, True)}</tr>" for k, v in rows) + "</table>"


#: Readable labels (with units) of report.json's keys where they appear as table columns.
LABELS = {
    "N_labelled": "labelled samples", "class_counts_predicted": "clean predictions per class", "auc": "AUC",
    "accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity",
    "threshold": "decision threshold (score)", "n_positive": "labelled positives", "n_negative": "labelled negatives",
    "macro_f1": "macro F1", "note": "note", "dice_mean": "mean Dice to the clean mask",
    "decision_agreement": "decisions agree (all draws)", "flip_agreement": "flip / no-flip agrees (all draws)",
    "a": "A", "b": "B", "difference": "difference A - B", "ci": "95% CI", "p_value": "p", "samples": "samples",
    "discordant_samples": "samples where A and B differ", "method": "method", "rejects_equality_95": "rejects equality at 95%",
    "study_z": "study 2 Z-test", "z": "z", "test": "test", "class": "clean class", "clean": "clean",
    "noisy_draw0": "noisy (draw 0)", "clean_agreement": "clean decisions agree",
}


def _label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def _flat(d: dict[str, Any], prefix: str = "", names: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    """Scalars (and short numeric lists such as intervals) of a nested dict as (readable label, value);
    ``names`` overrides labels by key (e.g. a comparison's "a" and "b" by the models' names)."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        label = f"{prefix}{(names or {}).get(k) or _label(k)}"
        if isinstance(v, dict):
            out += _flat(v, f"{label}: ", names)
        elif isinstance(v, list) and (len(v) > 8 or any(isinstance(x, (dict, list)) for x in v)):
            continue  # matrices and per-class lists are shown on their own
        else:
            out.append((label, v))
    return out


def _generic_table(lead: Sequence[str], rows: list[tuple[list[Any], dict[str, Any]]], *, prefix: str = "",
                   names: dict[str, str] | None = None) -> str:
    """Rows of (leading cells, dict): every key any dict has becomes a readable column; a text column with one value
    in every row (a method's description, a note) is said once under the table instead."""
    flat = [(cells, dict(_flat(d, prefix, names))) for cells, d in rows]
    cols: list[str] = []
    for _, f in flat:
        cols += [c for c in f if c not in cols]
    notes = []
    for c in list(cols):
        vals = [f.get(c) for _, f in flat]
        if all(isinstance(v, str) for v in vals) and len(set(vals)) == 1 and len(vals[0]) > 12:
            notes.append(f"{c}: {vals[0]}")
            cols.remove(c)
    table = _table([*lead, *cols], [[*cells, *[f.get(c) for c in cols]] for cells, f in flat], left=len(lead))
    return table + "".join(f'<p class="small">{html.escape(n)}</p>' for n in notes)


# ---------------------------------------------------------------------------
# the summary (verdict first)


def _sigma_fallback(noise: dict[str, Any]) -> list[float | None]:
    """Pixel sigma per level (HU) from the noise spec where it follows from it alone (older reports)."""
    if (noise["kind"] == "nps" and noise.get("level_unit") == "mAs" and noise.get("mode", "add") == "add"
            and not noise.get("electronic_fraction") and noise.get("sigma_ref") and noise.get("mas_ref")):
        return [float(noise["sigma_ref"]) * math.sqrt(float(noise["mas_ref"]) / float(v)) for v in noise["levels"]]
    if noise["kind"] == "gaussian":
        return [float(v) for v in noise["levels"]]
    if noise["kind"] == "uniform":
        return [float(v) / math.sqrt(3.0) for v in noise["levels"]]
    return [None for _ in noise["levels"]]


def summary_of(report: dict[str, Any]) -> dict[str, Any]:
    """report.json's ``summary`` block, or the same headline rebuilt from the per-model level blocks (older reports)."""
    given = report.get("summary") or {}
    noise = report["noise"]
    out = {
        "verdict": given.get("verdict"), "gate": given.get("gate"),
        "data": given.get("data") or {k: report["data"].get(k) for k in ("source", "N", "shape", "spacing_mm")},
        "noise": dict(given["noise"]) if given.get("noise") else {
            "kind": noise["kind"], "mode": noise.get("mode", "add"), "preset": noise.get("preset"),
            "level_unit": noise["level_unit"], "levels": list(noise["levels"]), "draws": noise.get("draws"),
            "sigma_hu": _sigma_fallback(noise)},
        "models": given.get("models"),
    }
    out["noise"].setdefault("draws", noise.get("draws"))
    if noise.get("bank"):  # a noise bank is marked on the page even where the summary predates the key
        out["noise"].setdefault("bank", noise["bank"])
        out["noise"].setdefault("bank_note", noise.get("bank_note"))
    if out["models"] is None:
        out["models"] = [{
            "name": m["name"], "sha256": m["engine"].get("sha256"), "engine": m["engine"].get("backend"),
            "per_level": [{"level": b["level"], "N": b["N"], "K": b["K"], "SAN": b["SAN"], "SAN_fraction": b["SAN_fraction"],
                           "SAN_fraction_ci": b.get("SAN_fraction_ci"), "SAR": b["SAR_overall"],
                           "SAR_ci": b.get("SAR_overall_ci")} for b in m["levels"]],
            "critical_dose": None} for m in report["models"]]
    return out


def _sigma_by_level(s: dict[str, Any]) -> dict[float, float | None]:
    noise = s["noise"]
    sig = noise.get("sigma_hu") or [None] * len(noise["levels"])
    return {float(lv): v for lv, v in zip(noise["levels"], sig)}


def _verdict_html(s: dict[str, Any]) -> str:
    gate, verdict = s.get("gate"), s.get("verdict")
    if verdict in ("pass", "fail") and gate:
        outcomes = gate.get("outcomes", [])
        failed = sum(1 for o in outcomes if not o.get("passed"))
        detail = (f"all {len(outcomes)} rules of policy {gate.get('policy')} hold" if not failed else
                  f"{failed} of {len(outcomes)} rules of policy {gate.get('policy')} violated")
        return f'<div class="verdict {verdict}" id="verdict">Verdict: {verdict.upper()} <span>&middot; {_esc(detail)}</span></div>'
    if verdict in ("pass", "fail"):
        return f'<div class="verdict {verdict}" id="verdict">Verdict: {verdict.upper()}</div>'
    return ('<div class="verdict none" id="verdict">No verdict <span>&middot; no gate policy was applied to this run; '
            "the page reports measurements (run with <code>--policy</code> or <code>audit gate</code> for a verdict)</span></div>")


def _noise_rows(s: dict[str, Any]) -> list[tuple[str, Any]]:
    n = s["noise"]
    unit = n["level_unit"]
    kind = {"nps": "random NPS-shaped noise (correlated, CT-like)", "gaussian": "white Gaussian noise",
            "uniform": "uniform noise", "poisson": "Poisson noise"}.get(n["kind"], n["kind"])
    mode = {"add": "added to the images (noise-free inputs)", "reduce": "dose reduction of real scans (only the "
            "missing noise variance is added)"}.get(n.get("mode") or "add", n.get("mode"))
    sig = n.get("sigma_hu") or []
    levels = ", ".join(f"{lv:g}" for lv in n["levels"])
    rows = [("kind", kind), ("mode", mode)]
    if n.get("preset"):
        rows.append(("NPS preset", n["preset"]))
    rows.append((f"levels ({unit})", levels))
    if any(v is not None for v in sig):
        rows.append(("pixel sigma per level (HU)", ", ".join("-" if v is None else f"{v:.3g}" for v in sig)))
    if n.get("draws") is not None:
        rows.append(("draws per sample and level (K)", n["draws"]))
    if n.get("bank"):
        rows.append(("noise bank (screening run)", f"{n['bank']} pre-drawn fields per level, reused with keyed circular "
                     "shifts: each draw is exact and a sample's draws are distinct, but independence across samples "
                     "is approximate"))
    return rows


def _data_rows(d: dict[str, Any]) -> list[tuple[str, Any]]:
    shape = " x ".join(str(v) for v in d.get("shape") or [])
    spacing = " x ".join(f"{v:g}" for v in d.get("spacing_mm") or [])
    return [("data", d.get("source")), ("samples (N)", d.get("N")),
            ("image shape (voxels)", shape or "-"), ("voxel spacing (mm)", spacing or "-")]


def _critical_html(entries: Sequence[dict[str, Any]] | None, name: str) -> list[Any]:
    rows = []
    for c in entries or []:
        t = c.get("target", c.get("target_SAR"))
        ci, open_ = c.get("ci_mAs") or [None, None], c.get("ci_open") or [False, False]
        ci_html = ""
        if len(ci) == 2 and None not in ci:  # an end that reaches the audited range's edge extends beyond it
            lo = ("&le;&nbsp;" if open_[0] else "") + _num(ci[0], 3)
            hi = ("&ge;&nbsp;" if open_[1] else "") + _num(ci[1], 3)
            ci_html = f' <span class="ci">[{lo}, {hi}]</span>'
        if c.get("dose_mAs") is not None:
            dose = f"{c['dose_mAs']:.3g} mAs{ci_html}"
        elif c.get("bound_mAs") is not None:
            side = "&lt;" if "below" in str(c.get("status")) else "&gt;"
            dose = f"{side} {c['bound_mAs']:g} mAs" + (f" <span class='small'>(CI{ci_html})</span>" if ci_html else "")
        else:
            dose = "-"
        rows.append([name, _pct(t), c.get("status"), Raw(dose), c.get("note")])
    return rows


def render_summary(report: dict[str, Any]) -> str:
    """The verdict-first block: the verdict and the gate's rules, what was audited, the noise, the headline per level
    and the critical dose."""
    s = summary_of(report)
    unit = s["noise"]["level_unit"]
    sig = _sigma_by_level(s)
    parts = ['<section class="summary" id="summary"><h2>Summary</h2>', _verdict_html(s)]
    gate = s.get("gate")
    if gate and gate.get("outcomes"):
        rows = [[o.get("rule"), o.get("model"), o.get("measured"), o.get("limit"),
                 Raw(f'<span class="{"pass" if o.get("passed") else "fail"}">{"pass" if o.get("passed") else "FAIL"}</span>'),
                 o.get("detail")] for o in gate["outcomes"]]
        parts.append(f"<h3>Gate: policy {_esc(gate.get('policy'))}</h3>" +
                     _table(["rule", "model", "measured", "limit", "result", "detail"], rows, left={0, 1, 5}))
    audited = []
    for m in s["models"]:
        sha = str(m.get("sha256") or "")
        sha_html = f'<code title="{_esc(sha)}">{_esc(sha[:12])}</code>' if sha else "-"
        audited.append((f"model {m['name']}", Raw(f"sha256 {sha_html} &middot; engine {_esc(m.get('engine') or '-')}")))
    parts.append('<div class="facts"><div><h3>What was audited</h3>' + _kv([*audited, *_data_rows(s["data"])]) +
                 "</div><div><h3>Noise</h3>" + _kv(_noise_rows(s)) + "</div></div>")
    several = len(s["models"]) > 1
    rows = []
    for m in s["models"]:
        for e in sorted(m["per_level"], key=lambda e: e["level"]):
            lead = [m["name"]] if several else []
            rows.append([*lead, f"{e['level']:g}", _num(sig.get(float(e["level"])), 3), Raw(_of(e["SAN"], e["N"])),
                         Raw(f"{_num(e['SAN_fraction'], 3)}{_ci(e.get('SAN_fraction_ci'))}"),
                         Raw(f"{_num(e['SAR'], 3)}{_ci(e.get('SAR_ci'))}"),
                         Raw(f"{_num(e.get('cpm'), 3)}{_ci(e.get('cpm_ci'))}"), e["K"]])
    header = [*(["model"] if several else []), figures.level_label(unit), "noise sigma (HU)", "SAN: flipped samples / N",
              "SAN fraction [95% CI]", "SAR pooled [95% CI]", "CPM (detection) [95% CI]", "K draws"]
    header, rows = _without(header, rows, "noise sigma (HU)", any(v is not None for v in sig.values()))
    header, rows = _without(header, rows, "CPM (detection) [95% CI]",
                            any(e.get("cpm_ci") is not None for m in s["models"] for e in m["per_level"]))
    parts.append("<h3>Headline per level</h3>" + _table(header, rows, left=int(several)))
    crit = [r for m in s["models"] for r in _critical_html(m.get("critical_dose"), m["name"])]
    if crit:
        parts.append("<h3>Critical dose</h3><p class='small'>The dose above which the fitted SAR stays below the target "
                     "(dose-response fit over the audited doses; 95% CI: bootstrap over samples).</p>" +
                     _table(["model", "target SAR", "status", "critical dose (mAs) [95% CI]", "note"], crit, left=5))
    parts.append("</section>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------
# definitions

DEFINITIONS = (
    ("N", "number of samples (images or volumes) audited.", "all studies"),
    ("K", "number of random noise draws per sample at each level; every draw has a key (seed, sample, level, k) that "
          "regenerates it exactly.", "study 1: K = 50"),
    ("dose (mAs)", "tube current-time product; noise power scales as 1/mAs, so sigma(mAs) = sigma(ref) sqrt(ref/mAs).", "study 1, 2"),
    ("noise sigma (HU)", "pixel standard deviation of the noise a level adds, on the data's grid.", ""),
    ("NPS", "noise power spectrum S(f) in HU^2 mm^2 against spatial frequency f in 1/mm; its integral is the noise "
            "variance.", "study 1, 2"),
    ("flip", "a perturbed decision that differs from the model's own clean decision (not the ground truth).", ""),
    ("SAR_i", "n_i / K: the fraction of sample i's K draws that flip it (n_i = number of flipping draws).", "study 1"),
    ("SAN", "number of samples flipped by at least one of their K draws, #{i : n_i >= 1}; grows with K.", "study 1"),
    ("SAN fraction", "SAN / N; 95% CI: Clopper-Pearson over the N independent samples.", "study 1"),
    ("SAR (pooled)", "all flips over all draws, sum n_i / (N K).", "study 1, 2"),
    ("SAR_c", "flips of samples whose clean prediction is c over their K N_c draws; equals 1 - CMR[c, c].", "study 2"),
    ("CMR", "Confusion Matrix for Robustness: CMR[a, b] = fraction of perturbed inferences of samples with clean "
            "prediction b (column) that are predicted a (row); columns sum to 1.", "study 2"),
    ("exceedance curve", "E(s) = fraction of samples with SAR_i > s, for s in [0, 1]; E(0) = SAN fraction.", "study 1"),
    ("design effect / cluster interval", "the K draws of one image are clustered, not independent: the variance of a "
     "pooled rate is deff = 1 + (K - 1) ICC times the independent-draws variance; the SAR and SAR_c intervals are "
     "Clopper-Pearson intervals on the effective number of draws N K / deff (exact near 0); with no flip seen, "
     "deff = K (N samples, not N K draws: no flip says nothing about how flips would cluster); with flips seen, an "
     "upper bound is never below that no-flip one for the same samples (nor a lower bound above its mirror at 1): a "
     "rate observed with few flips is not bounded tighter than one observed with none.", "Kish 1965; Korn-Graubard 1998"),
    ("critical dose", "the dose at which a logistic (or Weibull) fit of SAR against log dose reaches a target SAR "
     "(1%, 5%); above it the fitted SAR stays below the target; CI: bootstrap over samples.", "after FDA's LCD-CT reporting"),
    ("Z-test (CMR)", "study 2's two-proportion Z between CMR entries; it treats every draw as independent, so it is "
                     "shown beside, never instead of, the paired sample-level test.", "study 2"),
    ("paired test", "sign-flip permutation test of per-sample SAR_i differences between two models on the same keyed "
                    "draws (samples are the unit).", ""),
    ("DeLong", "test for the difference of two correlated ROC AUCs on the same cases.", "study 5"),
    ("FROC, CPM (detection)", "sensitivity (fraction of included lesions found) against false positives per scan over "
     "all score thresholds, LUNA16 matching (a mark within a lesion's radius, in mm); at a level each sample under each "
     "draw is one scan replicate, FPs per scan = FPs / (N K). CPM: mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4, 8 FPs "
     "per scan; CI: bootstrap over samples with all their draws.", "study 3; LUNA16"),
    ("flip (detection)", "a noisy draw of a scan flips when, at the operating threshold and against the same scan's "
     "clean output, an included reference lesion is lost (found clean, not under the draw) or gained, or the draw "
     "shows a new false positive (no clean false positive within fp_radius_mm of it).", "study 3"),
    ("lesion SAR (detection)", "mean over included lesions of the fraction of K draws whose found status at the "
     "operating threshold differs from clean: study 1's SAR with 'found' as the label.", "study 1, 3"),
    ("OOD AUROC", "P(OOD score of a perturbed draw > that of a clean input of another image), ties 1/2 (a draw is not "
     "compared with its own image); CI: cluster bootstrap over samples.", "study 4"),
)


def render_definitions() -> str:
    items = "".join(f"<dt>{html.escape(t)}</dt><dd>{html.escape(d)}" +
                    (f' <span class="src">({html.escape(src)})</span>' if src else "") + "</dd>"
                    for t, d, src in DEFINITIONS)
    return f'<section id="definitions"><h2>Definitions</h2><dl class="defs">{items}</dl></section>'


# ---------------------------------------------------------------------------
# per model


def _class_name(model: dict[str, Any], label: Any) -> str:
    names = model["head"].get("class_names") or []
    try:
        i = int(label)
    except (TypeError, ValueError):
        return str(label)
    return names[i] if 0 <= i < len(names) else str(i)


def _clean_table(model: dict[str, Any]) -> str:
    clean = model["clean"]
    rows: list[tuple[str, Any]] = []
    for k, v in clean.items():
        if k == "class_counts_predicted" and isinstance(v, list):
            rows.append((_label(k), ", ".join(f"{_class_name(model, i)} {n}" for i, n in enumerate(v))))
        elif not isinstance(v, (dict, list)):
            rows.append((_label(k), v))
    out = "<h3>Clean performance</h3>" + _table([r[0] for r in rows], [[r[1] for r in rows]])
    per = clean.get("per_class")
    if isinstance(per, dict) and per:
        out += _generic_table(["class"], [([name], d) for name, d in per.items()])
    return out


def _level_table(model: dict[str, Any], unit: str, sig: dict[float, Any]) -> str:
    blocks = sorted(model["levels"], key=lambda b: b["level"])
    names = blocks[0].get("class_names") or [] if "per_class" in blocks[0] else []
    # N_c counts clean predictions, the same at every level: said once in the header unless a report differs
    n_c = [b["per_class"]["N_c"] for b in blocks] if names else []
    same_n_c = bool(n_c) and all(x == n_c[0] for x in n_c)
    rows = []
    for b in blocks:
        row = [f"{b['level']:g}", _num(sig.get(float(b["level"])), 3), b["N"], b["K"], Raw(_of(b["SAN"], b["N"])),
               Raw(f"{_num(b['SAN_fraction'], 3)}{_ci(b.get('SAN_fraction_ci'))}"),
               Raw(f"{_num(b['SAR_overall'], 3)}{_ci(b.get('SAR_overall_ci'))}")]
        if names:
            pc = b["per_class"]
            for c in range(len(names)):
                n = "" if same_n_c else f" <span class='small'>(N<sub>c</sub>&nbsp;=&nbsp;{pc['N_c'][c]})</span>"
                row.append(Raw(f"{_num(pc['SAR'][c], 3)}{_ci([pc['SAR_ci_low'][c], pc['SAR_ci_high'][c]])}{n}"))
        if "dice_mean" in b:
            row.append(b["dice_mean"])
        rows.append(row)
    header = [figures.level_label(unit), "noise sigma (HU)", "N", "K", "SAN / N", "SAN fraction [95% CI]",
              "SAR pooled [95% CI]", *[f"SAR_c {n}" + (f" (N_c = {n_c[0][c]})" if same_n_c else "") + " [95% CI]"
                                       for c, n in enumerate(names)]]
    if "dice_mean" in blocks[0]:
        header.append("mean Dice to clean mask")
    header, rows = _without(header, rows, "noise sigma (HU)", any(v is not None for v in sig.values()))
    return "<h3>Robustness per level</h3>" + _table(header, rows)


_SEG_METRICS = (("dice", "Dice"), ("hd95_mm", "HD95"), ("contour_error_mm", "contour error"),
                ("filled_dice", "filled-contour Dice"))
_SEG_CRITERIA = (("min_dice", "Dice < {:g}"), ("hd95_max_mm", "HD95 > {:g} mm"),
                 ("contour_error_max_mm", "contour error > {:g} mm"), ("filled_dice_min", "filled-contour Dice < {:g}"))


def _segmentation_table(model: dict[str, Any], unit: str) -> str:
    """Per level, the distribution over all N x K draws of each segmentation metric against the clean mask."""
    blocks = sorted(model["levels"], key=lambda b: b["level"])
    if not any(b.get("segmentation") for b in blocks):
        return ""
    rows = []
    for b in blocks:
        for key, name in _SEG_METRICS:
            d = (b.get("segmentation") or {}).get(key)
            if not d:
                continue
            inf = "&infin;" if d.get("n_infinite") else "-"
            cells = [Raw(inf) if d.get(q) is None else d.get(q) for q in ("q05", "q25", "q50", "q75", "q95", "mean")]
            shown = "mm" if d.get("unit") == "mm" else "0 to 1"
            rows.append([f"{b['level']:g}", f"{name} ({shown})", *cells, Raw(_of(d.get("n_infinite"), d.get("n")))])
    head = model.get("head") or {}
    crit = [text.format(head[k]) for k, text in _SEG_CRITERIA if isinstance(head.get(k), (int, float))]
    note = ("<p class='small'>Each perturbed mask against the model's own clean mask; quantiles over all draws of the "
            "level (linear interpolation). Distances in mm between voxel centres (HD95: symmetric 95th percentile "
            "surface distance; contour error: mean symmetric surface distance); &infin;: exactly one of the two masks "
            "is empty." + (" A draw flips when " + " or ".join(map(html.escape, crit)) + "." if crit else "") + "</p>")
    return ("<h3>Segmentation agreement per level</h3>" + note +
            _table([figures.level_label(unit), "metric (unit)", "5%", "25%", "median", "75%", "95%", "mean",
                    "infinite / draws"], rows, left={1}))


def _segmentation_figure(model: dict[str, Any], unit: str) -> str:
    fig = figures.segmentation_quantiles(model, unit)
    return "" if fig is None else _figure(fig.png, "segmentation metrics per level", fig.caption)


def _det_cell(value: Any, ci: Any) -> Raw:
    return Raw(f"{_num(value, 3)}{_ci(ci)}")


def _detection_section(model: dict[str, Any], unit: str) -> str:
    """A detection model's FROC per level (figure and table: CPM, sensitivity at 1 FP/scan, paired CPM drop, lesion
    SAR, flips per draw) and its score histograms."""
    clean = (model.get("clean") or {}).get("detection")
    blocks = [b for b in sorted(model["levels"], key=lambda b: b["level"]) if b.get("detection")]
    if not blocks and not clean:
        return ""
    rows = []
    if clean:
        op = clean.get("operating_point") or {}
        rows.append(["clean", _det_cell(clean.get("cpm"), clean["cpm_ci"]),
                     _det_cell(clean.get("sensitivity_at_1fp"), clean.get("sensitivity_at_1fp_ci")), "-", "-",
                     _num(op.get("sensitivity"), 3), _num(op.get("fps_per_scan"), 3), "-", "-",
                     Raw(f"{clean['scans']}&nbsp;x&nbsp;1"), clean["lesions"]])
    for b in blocks:
        d = b["detection"]
        op = d.get("operating_point") or {}
        rows.append([f"{b['level']:g}", _det_cell(d.get("cpm"), d["cpm_ci"]),
                     _det_cell(d.get("sensitivity_at_1fp"), d.get("sensitivity_at_1fp_ci")),
                     _det_cell(d.get("cpm_drop"), d.get("cpm_drop_ci")),
                     _det_cell(d.get("lesion_sar"), d.get("lesion_sar_ci")),
                     _num(op.get("sensitivity"), 3), _num(op.get("fps_per_scan"), 3),
                     _num(d.get("missed_per_draw"), 3), _num(d.get("new_fp_per_draw"), 3),
                     Raw(f"{d['scans']}&nbsp;x&nbsp;{d['draws']}"), d["lesions"]])
    thr = next((d.get("operating_point") or {} for d in [clean, *[b["detection"] for b in blocks]] if d), {})
    at = f" (score &ge; {_num(thr.get('threshold'), 3)})" if thr.get("threshold") is not None else ""
    header = [figures.level_label(unit), "CPM [95% CI]", "sensitivity at 1 FP/scan [95% CI]",
              "CPM drop from clean [95% CI]", "lesion SAR [95% CI]", "sensitivity at the threshold",
              "FPs per scan at the threshold", "lesions missed per draw", "new FPs per draw", "samples x draws",
              "lesions (included)"]
    note = ("<p class='small'>FROC as in LUNA16 (a mark hits a lesion within its radius, in mm); a level pools its N x K "
            "scan replicates, FPs per scan = FPs / (N K). CIs: bootstrap over samples, each with all its draws "
            "(the draws of one image are clustered); the CPM drop is paired (clean and the level on the same "
            "resampled samples). Lesion SAR: mean over included lesions of the fraction of draws whose found status at "
            "the operating threshold" + at + " differs from clean; CI: design-effect Wilson, cluster = sample. Missed, "
            "new FPs: at the threshold, per scan replicate.</p>")
    out = ["<h3>Detection: FROC and lesion flips per level</h3>", note, _table(header, rows, left=1)]
    froc = figures.froc_curves(model, unit)
    figs = [_figure(froc.png, "FROC per level", froc.caption)]
    hist = figures.detection_score_histograms(model, unit)
    if hist is not None:
        figs.append(_figure(hist.png, "score histograms per level", hist.caption))
    out.append('<div class="grid">' + "".join(figs) + "</div>")
    return "\n".join(out)


def _ood_table(model: dict[str, Any], unit: str) -> str:
    """Per level, the AUROC of the OOD score separating clean inputs from the level's perturbed draws."""
    blocks = [b for b in sorted(model["levels"], key=lambda b: b["level"]) if b.get("ood")]
    if not blocks:
        return ""
    rows = [[f"{b['level']:g}", _det_cell(b["ood"]["auroc"], b["ood"]["ci"]), b["ood"].get("n_in", "-"),
             b["ood"].get("n_ood", "-"), b["ood"].get("n_clusters", "-"), _num(b["ood"].get("paired"), 3),
             sum((b["ood"].get("non_finite") or {}).values())] for b in blocks]
    note = ("<p class='small'>AUROC = P(score of a perturbed draw &gt; score of a clean input of <em>another</em> "
            "image), ties 1/2: 0.5 means the detector cannot tell this level's noise from clean images, 1 that it "
            "flags every draw. A draw is not compared with its own image's clean score (they share the image); that "
            "comparison is the 'own image' column, the mean over images of P(draw &gt; its own clean score). 95% CI: "
            "cluster bootstrap over samples (a sample's clean score and its K draws resampled together). Non-finite "
            "scores are left out and counted.</p>")
    return ("<h3>Out-of-distribution score: clean vs perturbed</h3>" + note +
            _table([figures.level_label(unit), "AUROC [95% CI]", "clean scores", "perturbed scores", "samples (clusters)",
                    "own image", "non-finite"], rows, left=1))



def _cmr_tables(model: dict[str, Any], unit: str) -> str:
    """The CMR counts (and fractions) as HTML tables, one per level: the numbers behind the heat maps."""
    out = []
    for b in sorted(model["levels"], key=lambda b: b["level"]):
        cmr = b["CMR"]
        names = cmr["class_order"]
        counts = cmr.get("counts")
        rows = []
        for a, name in enumerate(names):
            cells: list[Any] = [name]
            for j in range(len(names)):
                frac = cmr["matrix"][a][j]
                if counts is not None:
                    cells.append(Raw(f"{int(counts[a][j])} <span class='small'>({_num(frac, 3)})</span>"))
                else:
                    cells.append(frac)
            rows.append(cells)
        if counts is not None:
            rows.append(["column total", *[sum(int(counts[a][j]) for a in range(len(names))) for j in range(len(names))]])
        what = "counts (fraction)" if counts is not None else "fractions"
        out.append(_table(["perturbed \\ clean", *names], rows, left=1, cls="cmr",
                          caption=f"{b['level']:g} {unit}: {what}"))
    return '<div class="row">' + "".join(out) + "</div>"


def _auc_table(model: dict[str, Any], unit: str) -> str:
    rows = [[f"{b['level']:g}", b["auc"].get("clean"), b["auc"].get("noisy_draw0"), b["auc"].get("z"), b["auc"].get("p_value")]
            for b in sorted(model["levels"], key=lambda b: b["level"]) if b.get("auc")]
    if not rows:
        return ""
    return ("<h3>AUC, clean vs noisy (DeLong)</h3><p class='small'>ROC AUC against the reference labels on the same cases "
            "without noise and with draw k = 0; DeLong's test for correlated AUCs (study 5).</p>" +
            _table([figures.level_label(unit), "AUC clean", "AUC noisy (draw 0)", "z", "p"], rows))


def _key_text(key: Sequence[int], level: float, unit: str) -> str:
    seed, sample, _, k = key
    return f"seed {seed}, sample {sample}, {level:g} {unit}, draw {k}"


def _cases_html(model: dict[str, Any], folder: Path, unit: str) -> str:
    head = model["head"]
    thr = head.get("threshold") if head.get("task") == "binary" else None
    cases = model["worst_cases"]
    rows, classes = [], []
    for c in cases:
        border = thr is not None and abs(float(c["clean_score"]) - float(thr)) <= BORDERLINE
        clean = f"{_esc(_class_name(model, c['clean_label']))} ({c['clean_score']:.3f})" if "clean_label" in c else "-"
        mark = (f'<span class="badge" title="clean score within {BORDERLINE:g} of the threshold">borderline</span>'
                if border else "")
        dicom = f"{c['dicom']['clean_dir']} / {c['dicom']['noisy_dir']}" if c.get("dicom") else "-"
        rows.append([c["id"], f"{c['level']:g} {unit}", f"{c['SAR']:.3g}", Raw(clean + mark),
                     Raw(f"{_esc(_class_name(model, c['noisy_label']))} ({c['noisy_score']:.3f})"),
                     Raw(f'<span title="key {_esc(c["key"])}">{_esc(_key_text(c["key"], c["level"], unit))}</span>'), dicom])
        classes.append("borderline" if border else "")
    note = "Scores are the model's output score. "
    if thr is not None:
        note += (f"Borderline (shaded): clean score within {BORDERLINE:g} of the threshold {thr:g}, so a small change of "
                 "any kind may flip it. ")
    note += "The draw (its key) regenerates the noise exactly; report.json keeps the raw key."
    out = ["<h3>Flipped cases</h3>",
           _table(["sample", "dose", "SAR_i at that dose", "clean decision (score)", "noisy decision (score)",
                   "draw (seed, sample, dose, k)", "DICOM (clean / noisy series)"], rows, left=1, row_classes=classes),
           f"<p class='small'>{html.escape(note)}</p>"]
    panels = []
    for c in cases:
        png = case_image(folder, model["name"], c)
        if png.is_file():
            cap = (f"{c['id']} at {c['level']:g} {unit}, draw {c['k']}: "
                   f"{_class_name(model, c.get('clean_label', '?'))} ({c.get('clean_score', float('nan')):.3f}) -> "
                   f"{_class_name(model, c['noisy_label'])} ({c['noisy_score']:.3f})")
            panels.append(_figure(png.read_bytes(), f"case {c['id']}", cap))
    if panels:
        out.append('<div class="grid cases">' + "".join(panels) + "</div>")
    return "\n".join(out)


def render_model(model: dict[str, Any], report: dict[str, Any], s: dict[str, Any], folder: Path, idx: int) -> str:
    noise = report["noise"]
    unit = noise["level_unit"]
    eng, head = model["engine"], model["head"]
    sig = _sigma_by_level(s)
    crit = next((m.get("critical_dose") for m in s["models"] if m["name"] == model["name"]), None)
    meta = [f"file <code>{_esc(eng.get('path', eng.get('source', '')))}</code>",
            f"sha256 <code>{_esc(str(eng.get('sha256', ''))[:16])}</code>",
            f"{_esc(eng.get('backend', ''))} {_esc(', '.join(eng.get('providers', [])))}",
            f"task {_esc(head.get('task'))}"]
    if head.get("class_names"):
        meta.append("classes " + _esc(", ".join(head["class_names"])))
    if head.get("task") in ("binary", "detection") and head.get("threshold") is not None:
        meta.append(f"threshold {head['threshold']:g}")
    if model.get("preprocess", {}).get("hu_window"):
        lo, hi = model["preprocess"]["hu_window"]
        meta.append(f"input window [{lo:g}, {hi:g}] HU")
    parts = [f'<section class="model" id="model-{idx}"><h2>Model {_esc(model["name"])}</h2>',
             f"<p class='meta'>{' &middot; '.join(meta)}</p>", _clean_table(model), _level_table(model, unit, sig),
             _segmentation_table(model, unit), _segmentation_figure(model, unit), _detection_section(model, unit),
             _ood_table(model, unit)]
    log_x = noise["kind"] == "nps"
    sar = figures.sar_vs_level(model, unit, log_x, critical=crit)
    san = figures.san_fraction_vs_level(model, unit, log_x)
    exc = figures.exceedance_curves(model, unit)
    parts.append('<div class="grid">' + _figure(sar.png, "SAR versus level", sar.caption) +
                 _figure(san.png, "SAN fraction versus level", san.caption) +
                 _figure(exc.png, "exceedance curves", exc.caption) + "</div>")
    if "CMR" in model["levels"][0]:
        cmr = figures.cmr_heatmaps(model, unit)
        parts.append('<div class="cmr-section"><h3>Confusion Matrix for Robustness</h3>' +
                     _figure(cmr.png, "CMR heat maps", cmr.caption) + "<h4>CMR counts per level</h4>" +
                     _cmr_tables(model, unit) + "</div>")
    parts.append(_auc_table(model, unit))
    if model["worst_cases"]:
        parts.append(_cases_html(model, folder, unit))
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------
# the studies' other views


def _matrix_table(mat: Sequence[Sequence[Any]], names: Sequence[str], caption: str, fmt=None) -> str:
    rows = [[names[a], *[Raw(fmt(v)) if fmt else v for v in row]] for a, row in enumerate(mat)]
    return _table(["perturbed \\ clean", *names], rows, left=1, caption=caption)


def render_comparisons(report: dict[str, Any], unit: str) -> str:
    comps = report.get("comparisons") or []
    if not comps:
        return ""
    parts = ['<section class="views" id="comparisons"><h2>Model comparisons on the same draws</h2>']
    for c in comps:
        a, b = c.get("a", "A"), c.get("b", "B")
        parts.append(f"<h3>{_esc(a)} (A) vs {_esc(b)} (B)</h3>")
        line = [f"clean decisions agree on {_pct(c['clean_agreement'], 4)} of samples"] if "clean_agreement" in c else []
        if c.get("clean_auc"):
            t = c["clean_auc"]
            line.append(f"clean AUC A {_num(t.get('a'), 3)} vs B {_num(t.get('b'), 3)}, {t.get('test', 'DeLong')} "
                        f"z = {_num(t.get('z'), 3)}, p = {_num(t.get('p_value'), 3)}")
        if line:
            parts.append(f"<p>{_esc('; '.join(line))}.</p>")
        if c.get("test"):
            parts.append(f"<p class='small'>Test: {_esc(c['test'])}.</p>")
        per = c.get("per_level") or []
        rows = [([f"{e['level']:g}"], {k: v for k, v in e.items() if k not in ("level", "per_class", "CMR_between")})
                for e in per]
        ab = {"a": f"{a} (A)", "b": f"{b} (B)"}
        if rows:
            parts.append(_generic_table([figures.level_label(unit)], rows, names=ab))
        pc_rows = [([f"{e['level']:g}", p.get("class")], {k: v for k, v in p.items() if k != "class"})
                   for e in per for p in e.get("per_class") or []]
        if pc_rows:
            parts.append(f"<h4>SAR per clean class of {_esc(a)} (A)</h4>" + _generic_table(
                [figures.level_label(unit), "clean class"], pc_rows, prefix="SAR ", names=ab))
        between = [e for e in per if e.get("CMR_between")]
        if between:
            tables = [_matrix_table(e["CMR_between"]["matrix"], e["CMR_between"]["class_order"],
                                    f"{e['level']:g} {unit}: rows {e['CMR_between'].get('rows')}, columns "
                                    f"{e['CMR_between'].get('columns')}") for e in between]
            parts.append("<h4>Decisions of B against decisions of A (fraction of each A-column)</h4>"
                         '<div class="row">' + "".join(tables) + "</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _z_cell(z: float | None, p: float | None) -> Raw:
    strong = z is not None and math.isfinite(z) and abs(z) > 1.96
    txt = f"{_num(z, 3)}" + (f" <span class='small'>(p {_num(p, 2)})</span>" if p is not None else "")
    return Raw(f"<b>{txt}</b>" if strong else txt)


def render_scan_arm(report: dict[str, Any]) -> str:
    arms = report.get("scan_arm") or []
    if not arms:
        return ""
    parts = ['<section class="views" id="scan-arm"><h2>Repeated scans vs simulated noise</h2>']
    for arm in arms:
        names = arm["class_order"]
        at = f" at {arm['mas']:g} mAs" if arm.get("mas") is not None else ""
        parts.append(f"<h3>{_esc(arm['model'])}{at}</h3>")
        parts.append(_table(["phantom", "repeated scans", "simulated draws", "clean decision", "SAR real scans",
                             "SAR simulated", "noise sigma of the scans (HU)"],
                            [[p["phantom"], p["scans"], p["draws"], names[p["clean_label"]], p["SAR_real"], p["SAR_simulated"],
                              p.get("sigma_real_hu")] for p in arm["per_phantom"]], left=1))
        if arm.get("CMR_real") and arm.get("CMR_simulated"):
            pair = figures.cmr_pair(arm["CMR_real"], arm["CMR_simulated"], names, f"{arm['model']}{at}")
            parts.append(_figure(pair.png, "CMR real vs simulated", pair.caption))
        if arm.get("z"):
            rows = [[names[a], *[_z_cell(arm["z"][a][j], arm["p_value"][a][j] if arm.get("p_value") else None)
                                 for j in range(len(names))]] for a in range(len(names))]
            parts.append(_table(["perturbed \\ clean", *names], rows, left=1,
                                caption="Z per CMR entry, real vs simulated (study 2's formula; bold: |Z| > 1.96)"))
        parts.append(f"<p>Max |Z| = {_num(arm.get('max_abs_z'), 3)}; {arm.get('entries_rejecting_95')} entries reject "
                     "equality at 95%. <span class='small'>Study 2's Z-test treats every draw and scan as an independent "
                     "trial; it is shown for comparison, the paired test below decides.</span></p>")
        parts.append(_scan_arm_decision(arm))
    parts.append("</section>")
    return "\n".join(parts)


def _scan_arm_decision(arm: dict[str, Any]) -> str:
    """The arm's paired test over phantoms, its power for the stated effect, and its warnings."""
    out = []
    for w in arm.get("warnings") or []:
        out.append(f"<p class='warn'><b>Warning:</b> {_esc(w)}</p>")
    t, pw = arm.get("test"), arm.get("power")
    if t:
        verdict = ("real and simulated noise flip the model at different rates" if t.get("rejects")
                   else "no difference detected between real and simulated noise")
        rows = [("decision", Raw(f"<b>{_esc(verdict)}</b>")), ("method", t.get("method")),
                ("SAR difference, simulated - real (95% CI)", f"{_num(t.get('difference'), 3)} {_ci(t.get('ci'))}"),
                ("p-value", t.get("p_value")), ("alpha", t.get("alpha")),
                ("phantoms with discordant flips", t.get("n_discordant"))]
        if pw:
            rows += [(f"power for an effect of {_num(pw.get('effect'), 3)} in pooled SAR", pw.get("power")),
                     ("size (rejections when equal)", pw.get("size")), ("planning model", pw.get("planning_model"))]
        out.append(_kv(rows))
    return "\n".join(out)


def render_spread(report: dict[str, Any], unit: str) -> str:
    sp = report.get("spread")
    if not sp:
        return ""
    per = sp["per_level"]
    rows = [[f"{e['level']:g}", e["models"], e["models_with_any_flip"], e["SAR_overall_mean"], e["SAR_overall_std"]] for e in per]
    parts = ['<section class="views" id="spread"><h2>Spread over models</h2>',
             "<p class='small'>Study 2: models trained identically differ in robustness; mean and standard deviation "
             "over the models of this run.</p>",
             _table([figures.level_label(unit), "models", "models with any flip", "SAR pooled: mean", "SAR pooled: std"], rows)]
    names = next((m["levels"][0]["CMR"]["class_order"] for m in report["models"] if "CMR" in m["levels"][0]), None)
    tables = []
    for e in per:
        if e.get("CMR_mean") and names:
            mat = [[(m, s) for m, s in zip(rm, rs)] for rm, rs in zip(e["CMR_mean"], e["CMR_std"])]
            tables.append(_matrix_table(mat, names, f"{e['level']:g} {unit}: CMR mean ± std",
                                        fmt=lambda v: f"{_num(v[0], 3)} ± {_num(v[1], 2)}"))
    if tables:
        parts.append('<div class="row">' + "".join(tables) + "</div>")
    parts.append("</section>")
    return "\n".join(parts)


def render_attacks(report: dict[str, Any]) -> str:
    blocks = report.get("attacks") or []
    if not blocks:
        return ""
    kinds = {"query-based" if m.get("black_box") else "gradient" for b in blocks
             for m in ((b.get("attack") or {}).get("members") or [b.get("attack") or {}])}
    title = ("Gradient attacks" if kinds <= {"gradient"} else "Query-based attacks" if kinds == {"query-based"}
             else "Gradient and query-based attacks")
    parts = [f'<section class="views" id="attacks"><h2>{title}</h2><p class="small">Gradient attacks search on the '
             "torch twin; query-based (black-box) attacks query the deployed engine only. A success counts only where "
             "the deployed artifact's decision changed.</p>",
             render_attack_sweeps(blocks), render_query_summary(blocks)]
    parts.extend(render_attack_html(block, heading="h3") for block in blocks)
    parts.append("</section>")
    return "\n".join(parts)


def render_reduction(report: dict[str, Any], folder: Path) -> str:
    """Dose reduction (``noise.reduction``): each series' acquisition, each level as % of the acquired dose, mAs and
    CTDIvol, and each sample's own noise (source, sigma0 with its CI, spatial map) beside the ROIs the estimator
    chose (``figures/noise-rois-*.png``, drawn at audit time)."""
    red = (report.get("noise") or {}).get("reduction")
    if not red:
        return ""
    parts = ['<section id="reduction"><h2>Dose reduction</h2><p class="small">' + _esc(red.get("rule")) + "</p>"]
    rows = [[name, _num((s.get("acquisition") or {}).get("kvp")), (s.get("acquisition") or {}).get("kernel"),
             (s.get("acquisition") or {}).get("manufacturer"), _num(s.get("acquired_mas")), s.get("dose_source"),
             _num((s.get("acquisition") or {}).get("ctdi_vol_mgy")), _num((s.get("acquisition") or {}).get("modulated"))]
            for name, s in (red.get("series") or {}).items()]
    parts.append("<h3>Acquisition per series</h3>" + _table(
        ["series", "kVp", "kernel", "manufacturer", "acquired mAs", "dose from", "CTDIvol (mGy)", "modulated"],
        rows, left={0, 2, 3, 5}))
    samples = red.get("samples") or []
    if samples:
        first = samples[0]
        parts.append(f"<h3>Levels ({_esc(first['series'])}; every sample in report.json)</h3>" + _table(
            ["level", "% of acquired dose", "mAs", "CTDIvol (mGy)"],
            [[_num(lv["level"]), _num(lv["percent"], 3), _num(lv["mas"], 4), _num(lv.get("ctdi_vol_mgy"), 3)]
             for lv in first.get("levels") or []]))
    body = []
    for row in samples[:8]:
        own = row.get("scan_noise") or {}
        est = own.get("estimate") or {}
        spatial = own.get("spatial") or {}
        facts = [("source", own.get("method") or own.get("source")), ("sigma0 (HU)", _num(own.get("sigma0"), 4)),
                 ("95% CI (HU)", Raw(_ci(est.get("ci"))) if est.get("ci") else "-"),
                 ("ROIs kept (independent)", f"{est['n_rois']} ({est['n_independent']:.1f})" if est else "-"),
                 ("spatial", spatial.get("mode", "-") + (f" ({spatial['reason']})" if spatial.get("reason") else "")),
                 ("law", own.get("law") or "-")]
        if own.get("source") == "library":
            entry = own.get("entry") or {}
            facts.insert(1, ("kernel library", f"{own.get('kernel')}: {entry.get('window')} window, f_peak "
                                               f"{entry.get('f_peak')} 1/mm ({entry.get('source')})"))
            if own.get("fallback"):
                facts.insert(2, ("why", own["fallback"]))
        fig = folder / own["roi_figure"] if own.get("roi_figure") else None
        img = _figure(fig.read_bytes(), "noise ROIs", f"Uniform ROIs kept on slice {own.get('roi_slice')}; corners "
                      "(slice, row, column) in report.json.") if fig is not None and fig.is_file() else ""
        body.append(f"<div><h3>Sample {row['sample']}: {_esc(row['series'])}</h3>" + _kv(facts) + img + "</div>")
    parts.append('<div class="grid">' + "".join(body) + "</div></section>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------
# the page


def render_html(report: dict[str, Any], folder: str | Path) -> str:
    """The HTML page of ``report`` (report.json's content), with the figure files found under ``folder``."""
    folder = Path(folder)
    noise = report["noise"]
    unit = noise["level_unit"]
    s = summary_of(report)
    toc = ['<a href="#summary">Summary</a>', '<a href="#definitions">Definitions</a>']
    nps = folder / NPS_FIGURE
    if nps.is_file():
        toc.append('<a href="#noise">Noise used</a>')
    if noise.get("reduction"):
        toc.append('<a href="#reduction">Dose reduction</a>')
    toc += [f'<a href="#model-{i}">Model {_esc(m["name"])}</a>' for i, m in enumerate(report["models"])]
    for key, label in (("comparisons", "Comparisons"), ("scan_arm", "Scan arm"), ("attacks", "Attacks"), ("spread", "Spread")):
        if report.get(key):
            toc.append(f'<a href="#{key.replace("_", "-")}">{label}</a>')
    d = report["data"]
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>Robustness audit: {_esc(', '.join(m['name'] for m in report['models']))}</title><style>{CSS}</style></head><body>",
             "<h1>Robustness audit</h1>",
             f"<p class='small'>{_esc(', '.join(m['name'] for m in report['models']))} on {d['N']} samples of "
             f"{_esc(d.get('source', 'data'))} &middot; created {_esc(report['created'])} &middot; schema {_esc(report['schema'])}</p>",
             f'<nav class="toc">{"".join(toc)}</nav>',
             render_summary(report), render_definitions(), render_reduction(report, folder)]
    if nps.is_file():
        sig = [v for v in (s["noise"].get("sigma_hu") or []) if v is not None]
        cap = ("Radial noise power spectrum of each dose as generated on the data's grid (HU^2 mm^2 against 1/mm; log y, "
               "so doses a decade apart are all visible)" + (f"; pixel sigma {min(sig):.3g} to {max(sig):.3g} HU." if sig else "."))
        parts.append('<section id="noise"><h2>Noise used</h2>' + _figure(nps.read_bytes(), "NPS per dose", cap) + "</section>")
    for i, model in enumerate(report["models"]):
        parts.append(render_model(model, report, s, folder, i))
    parts += [render_comparisons(report, unit), render_scan_arm(report), render_attacks(report), render_spread(report, unit)]
    t = report["timing"]
    tool = report.get("tool") or {}
    clean = f" + {t['clean_inferences']} clean" if t.get("clean_inferences") else ""  # the clean pass, counted in the rate
    parts.append(f"<p class='small'>{t['inferences']}{clean} inferences in {t['wall_seconds']} s ({t['images_per_second']} images/s)"
                 + (f" &middot; {_esc(tool.get('name'))} {_esc(tool.get('version'))}, Python {_esc(tool.get('python'))}"
                    if tool else "") + "</p>")
    parts.append(render_cluster(t))
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def render_cluster(t: dict[str, Any]) -> str:
    """Where a Ray run ran: its nodes, those left out and why, and every sample block redone after a lost worker or
    node (from report.json ``timing``); empty for a run on one machine."""
    if not (t.get("ray_nodes") or t.get("ray_excluded") or t.get("ray_retries")):
        return ""
    nodes = ", ".join(_esc(n.get("address", "?")) for n in t.get("ray_nodes") or [])
    lines = [f"Ray cluster: {len(t.get('ray_nodes') or [])} node(s) ran the campaign ({nodes})"]
    lines += [f"left out: {_esc(x.get('address', '?'))} ({_esc(x.get('reason', ''))})" for x in t.get("ray_excluded") or []]
    lines += [f"sample block {int(r['block'])} redone (attempt {int(r['attempt'])}): {_esc(r.get('error', ''))} on "
              f"{_esc(r.get('lost_on', '?'))}, finished on {_esc(r.get('finished_on', '?'))}"
              for r in t.get("ray_retries") or []]
    return "<p class='small'>" + "<br>".join(lines) + "</p>"


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
