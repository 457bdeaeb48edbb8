"""``retrain.html``: robustness (attack SAN, noise SAR per dose) and accuracy per retraining round, side by side."""

from __future__ import annotations

import html
from typing import Any


def render_retrain_html(report: dict[str, Any]) -> str:
    """Robustness (attack SAN, noise SAR per dose) and accuracy per round, side by side."""
    keys = [k for k in ("auc", "accuracy", "macro_f1", "mae", "dice") if k in report["rounds"][0]["train"]]
    levels = [b["level"] for b in report["rounds"][0].get("audit", [])]
    head = (["round", "added"] + [f"train {k}" for k in keys] + ["train SAN (attack)"] + [f"test {k}" for k in keys]
            + ["test SAN (attack)"] + [f"test SAR @ {lv:g} mAs" for lv in levels])
    rows = []
    for r in report["rounds"]:
        cells = [r["round"], r.get("added", "")] + [f"{r['train'][k]:.3f}" for k in keys] + \
                [f"{r['train']['san']}/{r['train']['n']}"] + [f"{r['test'][k]:.3f}" for k in keys] + \
                [f"{r['test']['san']}/{r['test']['n']}"] + [f"{b['SAR_overall']:.4f}" for b in r.get("audit", [])]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    link = (f"<p>Noise audit of every round on the same draws, with each round's attack: "
            f"<a href='{html.escape(report['audit_report'])}'>{html.escape(report['audit_report'])}</a></p>"
            if report.get("audit_report") else "")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>retrain</title></head><body>"
            f"<h1>Retraining ({html.escape(report['mode'])}) of {html.escape(report['model'])}</h1><table border=1>"
            "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + f"</table>{link}</body></html>")
