"""Attack blocks of report.json as HTML: one ``<section>`` per run, and ``audit attack``'s own page."""

from __future__ import annotations

import html
from typing import Any


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def render_attack_html(block: dict[str, Any], *, max_rows: int = 20, heading: str = "h2") -> str:
    """One attack block as an HTML ``<section>`` (summary, flipped samples, explanation figures)."""
    s, a = block["summary"], block["attack"]
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in a.items() if k != "name")
    rows = [("samples (N)", s["n"]), ("candidates per sample (K)", s["k"]),
            ("success rate, torch twin", f"{100 * s['torch_success_rate']:.1f}%"),
            ("success rate, deployed artifact", f"{100 * s['deployed_success_rate']:.1f}%"),
            ("SAN (deployed)", s["san"]), ("mean SAR (deployed)", s["sar_mean"]),
            ("flips on the twin only", s["torch_only"]), ("max L-inf / L2", f"{_fmt(s['max_linf'])} / {_fmt(s['max_l2'])}"),
            ("seconds", s["seconds"]), ("seed", s["seed"])]
    sub = f"h{int(heading[1]) + 1}"
    out = [f'<section class="attack"><{heading}>Attack: {html.escape(block["label"])}</{heading}>',
           f"<p><b>{html.escape(s['verdict'])}</b>. Only flips of the deployed artifact count; the twin's rate is shown "
           f"for comparison.</p><p><small>{html.escape(a.get('name', ''))}: {params}</small></p>",
           "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in rows) + "</table>"]
    flipped = [r for r in block["samples"] if r["deployed_flips"] > 0]
    if flipped:
        head = ("id", "clean", "attacked", "clean score", "attacked score", "deployed flips", "SAR", "L-inf")
        body = "".join("<tr>" + "".join(f"<td>{_fmt(r[k])}</td>" for k in (
            "id", "clean_label", "adv_label", "clean_score", "adv_score", "deployed_flips", "sar", "linf")) + "</tr>"
            for r in flipped[:max_rows])
        out.append(f"<{sub}>Flipped samples</{sub}><table><tr>" + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{body}</table>")
        if len(flipped) > max_rows:
            out.append(f"<p>... and {len(flipped) - max_rows} more (see report.json).</p>")
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
            "padding:2px 6px;text-align:left}figure{display:inline-block;margin:1em}</style>"
    body = "\n".join(render_attack_html(b) for b in report["runs"])
    return f"<!doctype html><html><head><meta charset='utf-8'><title>attacks</title>{style}</head><body>{head}{body}</body></html>"
