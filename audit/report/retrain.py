"""``retrain.json``'s per-round rates with their intervals, and ``retrain.html``: robustness (attack SAN, noise SAR
per dose) and accuracy per retraining round, side by side.

The intervals are the campaign report's: the SAN fraction (samples with at least one flip, of N) has the exact
Clopper-Pearson interval; the SAR pooled over N x K draws (an attack's K candidates per sample, the noise audit's K
draws) has the cluster-aware exact interval (``audit.metrics.cluster_exact_interval``: Clopper-Pearson on effective
counts, since the draws of one sample are not independent). The noise audit's are copied from its report.json, so
the two pages show the same numbers.
"""

from __future__ import annotations

import base64
import html
from typing import Any

import numpy as np

from audit.metrics import clopper_pearson_interval, cluster_exact_interval
from audit.report import figures
from audit.report.html import CSS

CONFIDENCE = 0.95
SAN_CI_METHOD = "clopper_pearson"
SAR_CI_METHOD = "cluster_exact"


def attack_rates(deployed_flips: Any, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """SAN, SAN fraction and pooled SAR of one attack run with their intervals, from its deployed flips (N, K)."""
    flips = np.asarray(deployed_flips, bool)
    n, k = flips.shape
    n_i = flips.sum(axis=1)
    san = int((n_i > 0).sum())
    lo, hi = clopper_pearson_interval(san, n, confidence) if n else (float("nan"), float("nan"))
    s_lo, s_hi = cluster_exact_interval(n_i, k, confidence) if n else (float("nan"), float("nan"))
    return {"san": san, "n": int(n), "k": int(k), "san_fraction": san / n if n else 0.0,
            "san_fraction_ci": [float(lo), float(hi)], "san_fraction_ci_method": SAN_CI_METHOD,
            "sar": float(n_i.sum() / (n * k)) if n else 0.0, "sar_ci": [float(s_lo), float(s_hi)],
            "sar_ci_method": SAR_CI_METHOD, "confidence": confidence}


def audit_rates(model_block: dict[str, Any]) -> list[dict[str, Any]]:
    """One round's noise audit per dose, with the intervals of its report.json level blocks (copied, not redone)."""
    return [{"level": b["level"], "N": b["N"], "K": b["K"], "SAN": b["SAN"], "SAN_fraction": b["SAN_fraction"],
             "SAN_fraction_ci": b["SAN_fraction_ci"], "SAR_overall": b["SAR_overall"], "SAR_overall_ci": b["SAR_overall_ci"],
             "confidence": b.get("confidence", CONFIDENCE)} for b in model_block["levels"]]


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, float) and v != 0 and abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _ci(ci: Any) -> str:
    return f' <span class="ci">[{_num(ci[0])}, {_num(ci[1])}]</span>' if ci and len(ci) == 2 else ""


def _san_cell(split: dict[str, Any]) -> str:
    return f"{split['san']}&nbsp;/&nbsp;{split['n']}" + _ci(split.get("san_fraction_ci"))


def _sar_cell(rate: Any, ci: Any) -> str:
    return _num(rate) + _ci(ci)


def render_retrain_html(report: dict[str, Any]) -> str:
    """Robustness (attack SAN and SAR, noise SAR per dose, each with its 95% interval) and accuracy per round."""
    rounds = report["rounds"]
    keys = [k for k in ("auc", "accuracy", "macro_f1", "mae", "dice") if k in rounds[0]["train"]]
    levels = [b["level"] for b in rounds[0].get("audit", [])]
    unit = ((report.get("config") or {}).get("noise") or {}).get("level_unit", "mAs")
    # with one candidate per sample (K = 1) an attack's SAR is its SAN fraction: shown once
    with_sar = any(r[split].get("k", 1) > 1 and "sar" in r[split] for r in rounds for split in ("train", "test"))
    head = (["round", "samples added"] + [f"train {k}" for k in keys] + ["train SAN (attack) [95% CI]"]
            + (["train SAR (attack) [95% CI]"] if with_sar else []) + [f"test {k}" for k in keys]
            + ["test SAN (attack) [95% CI]"] + (["test SAR (attack) [95% CI]"] if with_sar else [])
            + [f"test SAR @ {lv:g} {unit} (noise) [95% CI]" for lv in levels])
    rows = []
    for r in rounds:
        cells = [html.escape(str(r["round"])), html.escape(str(r.get("added", "")))]
        for split in ("train", "test"):
            s = r[split]
            cells += [_num(s[k], 4) for k in keys] + [_san_cell(s)] + ([_sar_cell(s["sar"], s.get("sar_ci"))] if with_sar else [])
        cells += [_sar_cell(b["SAR_overall"], b.get("SAR_overall_ci")) for b in r.get("audit", [])]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table = ("<div class='tw'><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
             + "".join(rows) + "</table></div>")
    note = ("<p class='small'>SAN: samples whose deployed decision the attack flipped, of N, with the exact "
            "(Clopper-Pearson) 95% interval of the fraction. SAR: flips over all N x K attack candidates or noise draws, "
            "with the cluster-aware exact 95% interval of the campaign report (Clopper-Pearson on effective counts: "
            "draws of one sample are not independent). Noise SARs and their intervals are the audit report's."
            + ("" if with_sar else " The attack kept one candidate per sample (K = 1), so its SAR equals its SAN "
               "fraction and is shown once.") + "</p>")
    figure = ""
    if rounds:
        d = figures.retrain_rounds(report)
        figure = (f'<figure><img alt="robustness per round" src="data:image/png;base64,{base64.b64encode(d.png).decode()}">'
                  f"<figcaption>{html.escape(d.caption)}</figcaption></figure>")
    link = (f"<p>Noise audit of every round on the same draws, with each round's attack: "
            f"<a href='{html.escape(report['audit_report'])}'>{html.escape(report['audit_report'])}</a></p>"
            if report.get("audit_report") else "")
    title = f"Retraining ({html.escape(report['mode'])}) of {html.escape(report['model'])}"
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{title}</title>"
            f"<style>{CSS}</style></head><body><h1>{title}</h1>"
            f"<p class='small'>Round 0 is the model as built; each later round adds the attacked training samples and "
            f"fine-tunes. Base build: <code>{html.escape(str(report.get('base_build', '')))}</code></p>"
            f"<section id='rounds'><h2>Robustness and accuracy per round</h2>{table}{note}{figure}</section>{link}"
            "</body></html>")
