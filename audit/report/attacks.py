"""Attack blocks of report.json as HTML: one ``<section>`` per run, and ``audit attack``'s own page."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

from audit.metrics import clopper_pearson_interval
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


#: The unit of the query counts black-box attacks report (``extra``: ``audit.attacks.square.query_report``).
QUERY_UNIT = "queries: engine calls of one image each, the clean one included"
#: When a query-based attack stops spending queries on a sample.
QUERY_STOP = "Square and the NPS search stop at the flip; HopSkipJump keeps shrinking the perturbation within its budget"


def _query_stats(extra: dict[str, Any] | None) -> dict[str, Any] | None:
    """A block's (or an ensemble member's) query counts, or None for attacks that do not query (gradient attacks)."""
    return extra if extra and "queries_per_success" in extra else None


def _per_success(q: dict[str, Any]) -> str:
    mean, median = q.get("queries_per_success"), q.get("median_queries_per_success")
    return "- (no success)" if mean is None else f"{_fmt(float(mean))} / {_fmt(float(median))}"


def _query_rows(extra: dict[str, Any] | None) -> list[tuple[str, Any]]:
    q = _query_stats(extra)
    if q is None:
        return []
    return [("query budget per sample (queries)", q.get("queries_budget")),
            ("queries per sample, mean (queries)", q.get("mean_queries")),
            ("queries per success, mean / median (queries)", _per_success(q))]


def render_query_summary(blocks: Sequence[dict[str, Any]]) -> str:
    """The attacks that query the deployed engine side by side: success with its exact 95% interval and the queries a
    success took (mean and median), with a figure of success against queries spent."""
    rows, curves = [], []
    for b in blocks:
        s = b.get("summary") or {}
        members = [(f"{b.get('label', '')}: {m['name']}", m.get("deployed_success_rate"), _query_stats(m.get("extra")))
                   for m in (b.get("extra") or {}).get("members", [])]
        for label, rate, q in [(b.get("label", ""), s.get("deployed_success_rate"), _query_stats(b.get("extra"))), *members]:
            if q is None:
                continue
            n = s.get("n", 0)
            won = q.get("successes")
            lo, hi = clopper_pearson_interval(won, n) if n and won is not None else (None, None)
            rows.append("<tr>" + "".join(f"<td{' class=l' if i == 0 else ''}>{c}</td>" for i, c in enumerate((
                html.escape(label), f"{won} / {n}", f"{_fmt(rate)} <span class='ci'>[{_fmt(lo)}, {_fmt(hi)}]</span>",
                _fmt(q.get("queries_budget")), _fmt(q.get("mean_queries")), _per_success(q)))) + "</tr>")
            if q.get("queries") and len(q["queries"]) == n and len(b.get("samples", [])) == n:
                if label == b.get("label", ""):  # the block's own per-sample counts (members share the samples' order)
                    curves.append((label, q["queries"], [r["deployed_flips"] > 0 for r in b["samples"]],
                                   q.get("queries_budget")))
    if not rows:
        return ""
    head = ("attack", "successes / N", "success rate [95% CI]", "budget per sample (queries)",
            "mean queries per sample", "queries per success: mean / median")
    out = [f"<h3>Queries per success</h3><p class='small'>Attacks that only query the deployed engine; {QUERY_UNIT}. "
           "A success is a sample whose deployed decision flipped; its queries are those the attack spent on it "
           f"({QUERY_STOP}); the interval is exact (Clopper-Pearson) over the N samples.</p>",
           "<div class='tw'><table class='queries'><tr>" + "".join(
               f"<th{' class=l' if i == 0 else ''}>{html.escape(h)}</th>" for i, h in enumerate(head)) + "</tr>"
           + "".join(rows) + "</table></div>"]
    if curves:
        d = figures.success_vs_queries(curves, QUERY_STOP)
        out.append(f'<figure><img alt="attack success versus queries" '
                   f'src="data:image/png;base64,{base64.b64encode(d.png).decode()}"/>'
                   f"<figcaption>{html.escape(d.caption)}</figcaption></figure>")
    return "\n".join(out)


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
            *_sigma_rows(block), *_query_rows(block.get("extra")), ("seconds", s["seconds"]), ("seed", s["seed"])]
    sub = f"h{int(heading[1]) + 1}"
    out = [f'<section class="attack" data-attack="{html.escape(str(a.get("name", "")))}"><{heading}>Attack: {html.escape(block["label"])}</{heading}>',
           f"<p><b>{html.escape(s['verdict'])}</b>. Only flips of the deployed artifact count; the twin's rate is shown "
           f"for comparison.</p><p><small>{html.escape(a.get('name', ''))}: {params}</small></p>",
           "<div class='row'><div class='tw'><table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>"
                                                                for k, v in rows) + "</table></div>"]
    q = _query_stats(block.get("extra"))
    queries = q["queries"] if q and len(q.get("queries") or ()) == len(block["samples"]) else None
    flipped = [dict(r, queries=queries[i] if queries else None) for i, r in enumerate(block["samples"])
               if r["deployed_flips"] > 0]
    if flipped:
        cols = ("id", "clean_label", "adv_label", "clean_score", "adv_score", "deployed_flips", "sar", "linf") + \
            (("queries",) if queries else ())
        head = ("sample", "clean decision", "attacked decision", "clean score", "attacked score", "deployed flips of K",
                "SAR_i", "max L-inf") + (("queries spent",) if queries else ())
        body = "".join("<tr>" + "".join(f"<td>{_fmt(r[k])}</td>" for k in cols) + "</tr>" for r in flipped[:max_rows])
        more = f"<p>... and {len(flipped) - max_rows} more (see report.json).</p>" if len(flipped) > max_rows else ""
        out.append(f"<div><{sub} style='margin-top:0'>Flipped samples</{sub}><div class='tw'><table><tr>"
                   + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{body}</table></div>{more}</div>")
    out.append("</div>")
    members = (block.get("extra") or {}).get("members") or []
    if members:  # an ensemble: per sample the worst case over its members, beside each member's own rates
        e = block["extra"]
        rows = "".join("<tr>" + "".join(f"<td{' class=l' if i == 0 else ''}>{c}</td>" for i, c in enumerate((
            html.escape(m["name"]), _fmt(m.get("deployed_success_rate")), _fmt(m.get("robust_rate")),
            _fmt(m.get("only_this_member")), _per_success(_query_stats(m.get("extra"))) if _query_stats(m.get("extra"))
            else "- (gradient attack)"))) + "</tr>" for m in members)
        out.append(f"<p>Worst case over the members: success {_fmt(e.get('worst_case_success_rate'))}, robust rate "
                   f"{_fmt(e.get('robust_rate'))}" + (f"; skipped: {_fmt(e['skipped'])}" if e.get("skipped") else "")
                   + "</p><div class='tw'><table><tr><th class=l>member</th><th>success rate (deployed)</th>"
                   "<th>robust rate</th><th>samples only this member flipped</th>"
                   "<th>queries per success: mean / median (queries)</th></tr>" + rows + "</table></div>")
    out.append(render_ood(block))
    out.append(render_reference(block.get("reference")))
    for ex in block.get("explanations", []):
        out.append(f'<figure><img alt="{html.escape(ex["caption"])}" src="data:image/png;base64,{ex["png"]}"/>'
                   f"<figcaption>{html.escape(ex['caption'])}</figcaption></figure>")
    out.append("</section>")
    return "\n".join(out)


#: What the OOD table of an attack block shows (``audit.attacks.base.AttackResult.ood``), in words.
OOD_NOTE = ("AUROC = P(OOD score of an attacked input &gt; OOD score of the clean input of <em>another</em> sample), "
            "ties 1/2: 0.5 means the detector cannot tell this attack's inputs from clean ones, 1 that it flags every "
            "one. Clean: one score per attacked sample; attacked: every candidate the deployed engine judged (K per "
            "sample), or only the successful ones (those the SAN counts). A candidate is not compared with its own "
            "sample's clean score (they share the image); that comparison is the 'own image' column, the mean over "
            "samples of P(candidate &gt; its own clean score). 95% CI: cluster bootstrap over samples (a sample's "
            "clean score and its candidates resampled together, 2000 resamples). Units: AUROC and 'own image' are "
            "probabilities; the mean scores are in the units of the head's OOD output (higher = more OOD). "
            "Non-finite scores are left out and counted. What this measures depends on the attack's objective (its "
            "parameters above): task and output_distance ignore the OOD score (an attack blind to the detector); "
            "evade_ood flips the class while keeping the score from rising above each sample's clean score (an attack "
            "that targets the detector).")


def render_ood(block: dict[str, Any]) -> str:
    """The OOD detector on one attack: AUROC of clean against attacked inputs (all candidates, the successful ones,
    each ensemble member's), with intervals, counts and mean scores; empty when the model has no OOD output."""
    o = (block.get("summary") or {}).get("ood")
    if not o:
        return ""
    members = [(f"member {m['name']}: all its candidates", m["ood"])
               for m in (block.get("extra") or {}).get("members") or [] if m.get("ood")]
    def cell(v: Any) -> str:
        return "-" if v is None else _fmt(v)

    rows = []
    for label, d in [("all candidates", o), ("successful candidates", o.get("successful") or {}), *members]:
        ci = d.get("ci") or [None, None]
        auroc = "-" if d.get("auroc") is None else (f"{_fmt(float(d['auroc']))} <span class='ci'>[{cell(ci[0])}, "
                                                     f"{cell(ci[1])}]</span>")
        rows.append("<tr>" + "".join(f"<td{' class=l' if i == 0 else ''}>{c}</td>" for i, c in enumerate((
            html.escape(label), auroc, cell(d.get("paired")), cell(d.get("n_in")), cell(d.get("n_ood")),
            f"{cell(d.get('samples_attacked'))} of {cell(d.get('n_clusters'))}",
            f"{cell(d.get('mean_clean'))} / {cell(d.get('mean_attacked'))}",
            sum((d.get("non_finite") or {}).values()), html.escape(str(d.get("note", "")))))) + "</tr>")
    head = ("attacked inputs", "AUROC [95% CI]", "own image", "clean inputs (n)", "attacked inputs (n)",
            "samples attacked (of clusters)", "mean OOD score: clean / attacked", "non-finite", "note")
    return ("<div class='ood'><h4>Out-of-distribution score: clean vs attacked</h4>"
            f"<p class='small'>{OOD_NOTE}</p><div class='tw'><table class='ood'><tr>"
            + "".join(f"<th{' class=l' if i == 0 else ''}>{html.escape(h)}</th>" for i, h in enumerate(head)) + "</tr>"
            + "".join(rows) + "</table></div></div>")


def render_reference(ref: dict[str, Any] | None, *, max_rows: int = 20) -> str:
    """A quantised artifact attacked directly, beside its FP32 original: where the two decide differently, clean and
    under the same attacked inputs (``audit.attacks.blocks.reference_comparison``)."""
    if not ref:
        return ""
    if "verdict" not in ref:
        return f"<p class='small'>No FP32 comparison: {html.escape(str(ref.get('reason', 'not available')))}</p>"
    counts = [("samples", ref["n"]), ("clean decisions that differ", ref["clean_differ"]),
              ("attacked decisions that differ", ref["attacked_differ"]),
              (f"flips of {ref['model']}", ref["flipped_model"]),
              (f"... that flip {ref['reference']} too", ref["flipped_reference_too"]),
              (f"... that leave {ref['reference']} unchanged", ref["flipped_model_only"])]
    rows = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in (
            html.escape(str(r["id"])), f"{html.escape(str(r['clean'][0]))} ({_fmt(r['clean_scores'][0])})",
            f"{html.escape(str(r['clean'][1]))} ({_fmt(r['clean_scores'][1])})",
            f"{html.escape(str(r['attacked'][0]))} ({_fmt(r['attacked_scores'][0])})",
            f"{html.escape(str(r['attacked'][1]))} ({_fmt(r['attacked_scores'][1])})")) + "</tr>"
        for r in (ref.get("per_sample") or [])[:max_rows])
    table = ("<div class='tw'><table><tr><th>sample</th><th>clean: attacked model (score)</th><th>clean: reference "
             "(score)</th><th>attacked input: attacked model</th><th>attacked input: reference</th></tr>"
             + rows + "</table></div>") if rows else ""
    return (f"<div class='reference'><h4>Attacked artifact vs its FP32 original</h4><p><b>{html.escape(ref['verdict'])}"
            "</b>.</p><div class='tw'><table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>"
                                                     for k, v in counts) + "</table></div>" + table + "</div>")


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
