"""Attack blocks of report.json as HTML: one ``<section>`` per run, and ``audit attack``'s own page."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

from audit.report import figures

#: Keys (in the block or its summary) that give a perturbation's noise level in HU, with their labels.
SIGMA_KEYS = (("perturbation_sigma_hu", "perturbation sigma (HU)"), ("random_sigma_hu", "random noise of the same "
                                                                                        "budget: sigma (HU)"))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
        return ", ".join(_fmt(x) for x in v)
    return html.escape(str(v))


def _sigma_rows(block: dict[str, Any]) -> list[tuple[str, Any]]:
    """The perturbation's sigma in HU (and a random comparison's) where the block records them."""
    rows = []
    for key, label in SIGMA_KEYS:
        for where in (block.get("summary") or {}, block):
            if where.get(key) is not None:
                rows.append((label, where[key]))
                break
    return rows


def render_attack_sweeps(blocks: Sequence[dict[str, Any]]) -> str:
    """One figure per attack that ran at several eps: success (deployed and twin) and mean SAR against eps."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for b in blocks:
        a = b.get("attack") or {}
        if isinstance(a.get("eps"), (int, float)) and "summary" in b:
            groups.setdefault(f"{b.get('model', '')}\x00{a.get('name', 'attack')}", []).append(b)
    out = []
    for key, runs in groups.items():
        model, name = key.split("\x00")
        if len({float(b["attack"]["eps"]) for b in runs}) < 2:
            continue
        title = f"{name} on {model}" if model else name
        d = figures.attack_sweep(runs, title)
        out.append(f'<figure><img alt="attack success versus eps: {html.escape(title)}" '
                   f'src="data:image/png;base64,{base64.b64encode(d.png).decode()}"/>'
                   f"<figcaption>{html.escape(d.caption)}</figcaption></figure>")
    return "\n".join(out)


def render_attack_html(block: dict[str, Any], *, max_rows: int = 20, heading: str = "h2") -> str:
    """One attack block as an HTML ``<section>`` (summary, flipped samples, explanation figures)."""
    s, a = block["summary"], block["attack"]
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in a.items() if k != "name")
    unit = "HU" if a.get("space") == "hu" else "model-input units" if a.get("space") == "input" else "attack space"
    rows = [("samples (N)", s["n"]), ("candidates per sample (K)", s["k"]),
            ("success rate, torch twin", f"{100 * s['torch_success_rate']:.1f}%"),
            ("success rate, deployed artifact", f"{100 * s['deployed_success_rate']:.1f}%"),
            ("SAN (deployed)", s["san"]), ("mean SAR (deployed)", s["sar_mean"]),
            ("flips on the twin only", s["torch_only"]), (f"max L-inf / L2 ({unit})", f"{_fmt(s['max_linf'])} / {_fmt(s['max_l2'])}"),
            *_sigma_rows(block), ("seconds", s["seconds"]), ("seed", s["seed"])]
    sub = f"h{int(heading[1]) + 1}"
    out = [f'<section class="attack" data-attack="{html.escape(str(a.get("name", "")))}"><{heading}>Attack: {html.escape(block["label"])}</{heading}>',
           f"<p><b>{html.escape(s['verdict'])}</b>. Only flips of the deployed artifact count; the twin's rate is shown "
           f"for comparison.</p><p><small>{html.escape(a.get('name', ''))}: {params}</small></p>",
           "<div class='row'><div class='tw'><table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>"
                                                                for k, v in rows) + "</table></div>"]
    flipped = [r for r in block["samples"] if r["deployed_flips"] > 0]
    if flipped:
        head = ("sample", "clean decision", "attacked decision", "clean score", "attacked score", "deployed flips of K",
                "SAR_i", "max L-inf")
        body = "".join("<tr>" + "".join(f"<td>{_fmt(r[k])}</td>" for k in (
            "id", "clean_label", "adv_label", "clean_score", "adv_score", "deployed_flips", "sar", "linf")) + "</tr>"
            for r in flipped[:max_rows])
        more = f"<p>... and {len(flipped) - max_rows} more (see report.json).</p>" if len(flipped) > max_rows else ""
        out.append(f"<div><{sub} style='margin-top:0'>Flipped samples</{sub}><div class='tw'><table><tr>"
                   + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{body}</table></div>{more}</div>")
    out.append("</div>")
    for ex in block.get("explanations", []):
        out.append(f'<figure><img alt="{html.escape(ex["caption"])}" src="data:image/png;base64,{ex["png"]}"/>'
                   f"<figcaption>{html.escape(ex['caption'])}</figcaption></figure>")
    out.append("</section>")
    return "\n".join(out)


def render_attack_page(report: dict[str, Any]) -> str:
    """A standalone page for ``audit attack``: the model, the twin and one section per attack run."""
    twin = report.get("twin", {})
    head = (f"<h1>Gradient attacks: {html.escape(str(report['model'].get('name', '')))}</h1>"
            f"<p>Twin: {html.escape(str(twin.get('origin')))}, max |twin - ONNX Runtime| = "
            f"{_fmt(twin.get('parity_max_abs_diff'))} on {twin.get('parity_inputs')} inputs. "
            f"Data: {html.escape(str(report.get('data', {}).get('name', '')))}.</p>")
    style = "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;" \
            "padding:2px 6px;text-align:left}figure{display:inline-block;margin:1em}.row{display:flex;flex-wrap:wrap;gap:1em}</style>"
    body = "\n".join(render_attack_html(b) for b in report["runs"])
    return f"<!doctype html><html><head><meta charset='utf-8'><title>attacks</title>{style}</head><body>{head}{body}</body></html>"
