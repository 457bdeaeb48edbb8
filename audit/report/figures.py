"""Figures shared by the CLI and the reports (matplotlib, headless Agg backend).

The report's figures (``sar_vs_level`` ... ``attack_sweep``, ``froc_curves``, ``detection_score_histograms``,
``segmentation_quantiles``) draw from
report.json's blocks and return a ``Drawn``: the PNG and a caption that says
how the axes are scaled (a log axis that holds zeros is a symmetric log, linear
near 0, and the caption says where), so a page never shows a scale it does not
name.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class Drawn:
    """A report figure: PNG bytes and the caption that states its scales."""

    png: bytes
    caption: str


def nps_check_figure(path: Path, *, f, target, measured, band, sample, spacing, title: str) -> None:
    """Target vs measured radial NPS (1/mm, HU^2 mm^2) beside one noise sample, written as PNG to ``path``."""
    plt = _pyplot()
    fig, (ax_nps, ax_img) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1.4, 1]})
    ax_nps.plot(f, target, "k-", lw=2, label="target")
    ax_nps.plot(f, measured, "o", ms=3, color="tab:red", label="measured")
    if np.any(band):
        ax_nps.axvspan(f[band].min(), f[band].max(), color="tab:blue", alpha=0.07, label="checked band")
    ax_nps.set_xlabel("spatial frequency (1/mm)")
    ax_nps.set_ylabel("NPS (HU² mm²)")
    ax_nps.set_xlim(0, min(f.max(), 0.5 / min(spacing)))  # full rings end at Nyquist
    ax_nps.grid(alpha=0.3)
    ax_nps.legend()
    ny, nx = sample.shape
    lim = 3 * float(np.std(sample)) or 1.0
    im = ax_img.imshow(sample, cmap="gray", vmin=-lim, vmax=lim, extent=(0, nx * spacing[1], ny * spacing[0], 0))
    ax_img.set_xlabel("mm")
    ax_img.set_title("one noise sample (HU)")
    fig.colorbar(im, ax=ax_img, fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    _literal_text(fig)
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def _literal_text(fig) -> None:
    """Show text set from report data literally: a class or model name with ``$`` is not TeX math (mathtext would
    fail or garble it). Tick labels that formatters make at draw time (log axes use mathtext) are not touched."""
    from matplotlib.text import Text

    for t in fig.findobj(Text):
        if "$" in t.get_text():
            t.set_parse_math(False)


def png_bytes(fig, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes and close it."""
    plt = _pyplot()
    _literal_text(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def png_base64(fig, dpi: int = 80) -> str:
    """A figure as base64 PNG text (what report.json embeds for attack explanations)."""
    return base64.b64encode(png_bytes(fig, dpi)).decode("ascii")


def _none_to_nan(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


# ---------------------------------------------------------------------------
# axes


def level_label(unit: str) -> str:
    """The axis / column label of a campaign's level: ``dose (mAs)``, ``noise sigma (HU)``, ..."""
    if unit == "mAs" or unit.startswith("fraction"):
        return f"dose ({unit})"
    if unit.startswith("HU"):
        what = unit[unit.find("(") + 1:unit.find(")")] if "(" in unit else "level"
        return f"noise {what} (HU)"
    return f"noise level ({unit})"


def _level_axis(ax, levels: Sequence[float], unit: str, log_x: bool) -> None:
    """x at the audited levels only, labelled as plain numbers ("10", "50", not 10^1), log for doses."""
    from matplotlib.ticker import FixedLocator, NullLocator

    lv = sorted(float(v) for v in levels)
    if log_x and lv[0] > 0:
        ax.set_xscale("log")
        lo, hi = lv[0] / 1.35, lv[-1] * 1.35
    else:
        pad = 0.06 * ((lv[-1] - lv[0]) or abs(lv[0]) or 1.0)
        lo, hi = lv[0] - pad, lv[-1] + pad
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator(lv))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{v:g}" for v in lv], fontsize=8)
    ax.set_xlabel(level_label(unit))


def _tick(v: float, _pos=None) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e-4:
        return f"{v:g}"
    return f"{v:.0e}".replace("e-0", "e-")


def _rate_axis(ax, values: Sequence[float], floor: float, *, what: str = "rates") -> str:
    """Fit the y axis of rates in [0, 1] to the data; small rates get a log axis that keeps zeros.

    ``floor``: the smallest non-zero rate the data can hold (1 / trials). Returns the caption's sentence.
    """
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from matplotlib.ticker import FixedLocator

    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    top = float(v.max()) if v.size else 0.0
    if 0 < top <= 0.3:
        low = float(v[v > 0].min())  # the linear part ends at the decade below the smallest value shown, or 1/trials
        lin = 10.0 ** math.floor(math.log10(max(min(max(floor, low), top), 1e-9)))
        upper = min(1.0, top * 1.8)
        ax.set_yscale("symlog", linthresh=lin, linscale=0.4)
        ax.set_ylim(0, upper)
        decades = math.log10(upper / lin)
        steps = (1,) if decades > 3.5 else (1, 2, 5) if decades < 2.5 else (1, 3)
        ticks = [0.0] + [m * 10.0 ** e for e in range(round(math.log10(lin)), 1) for m in steps
                         if lin <= m * 10.0 ** e <= upper * 1.0001]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(_tick))
        ax.yaxis.set_minor_formatter(NullFormatter())
        return (f"y: log scale for small {what} (symmetric log: linear below {_tick(lin)}, so zeros sit on the "
                f"bottom axis).")
    ax.set_ylim(0, min(1.02, top * 1.12) if top > 0 else 0.05)
    ax.yaxis.set_major_formatter(FuncFormatter(_tick))
    return "y: linear." if top > 0 else "y: linear (every value is 0)."


# ---------------------------------------------------------------------------
# per-model robustness figures


def _sorted_blocks(model: dict) -> list[dict]:
    return sorted(model["levels"], key=lambda b: b["level"])


def _fit_curve(fit: dict, doses: np.ndarray) -> np.ndarray:
    eta = fit["a"] + fit["b"] * np.log(doses)
    f = 1.0 / (1.0 + np.exp(-eta)) if fit.get("model") == "logistic" else 1.0 - np.exp(-np.exp(eta))
    return fit.get("lower", 0.0) + (fit.get("upper", 1.0) - fit.get("lower", 0.0)) * f


def sar_vs_level(model: dict, unit: str, log_x: bool, critical: Sequence[dict] | None = None) -> Drawn:
    """Per-class SAR_c and pooled SAR against the level, with confidence bands; with ``critical`` (the summary's
    critical-dose entries) also the fitted dose-response curve and each target's crossing."""
    plt = _pyplot()
    blocks = _sorted_blocks(model)
    levels = np.array([b["level"] for b in blocks], float)
    n, k = blocks[0]["N"], blocks[0]["K"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    values: list[float] = []
    if "per_class" in blocks[0]:
        names = blocks[0]["class_names"]
        for c, name in enumerate(names):
            sar = _none_to_nan([b["per_class"]["SAR"][c] for b in blocks])
            lo = _none_to_nan([b["per_class"]["SAR_ci_low"][c] for b in blocks])
            hi = _none_to_nan([b["per_class"]["SAR_ci_high"][c] for b in blocks])
            if np.all(np.isnan(sar)):
                continue
            line, = ax.plot(levels, sar, "o-", ms=4, label=f"SAR$_c$ {name}")
            ax.fill_between(levels, lo, hi, color=line.get_color(), alpha=0.13, lw=0)
            values += [*sar, *hi]
    overall = _none_to_nan([b["SAR_overall"] for b in blocks])
    lo = _none_to_nan([b["SAR_overall_ci"][0] for b in blocks])
    hi = _none_to_nan([b["SAR_overall_ci"][1] for b in blocks])
    ax.errorbar(levels, overall, yerr=[np.clip(overall - lo, 0, None), np.clip(hi - overall, 0, None)], fmt="ks--",
                ms=4, lw=1.3, capsize=3, label="SAR pooled (95% CI)")
    values += [*overall, *hi]
    notes = []
    fit_entry = next((c for c in (critical or []) if c.get("fit")), None)
    if fit_entry and log_x and all(k_ in fit_entry["fit"] for k_ in ("a", "b")) and fit_entry["fit"]["a"] is not None \
            and fit_entry["fit"]["b"] is not None:
        d = np.geomspace(levels.min(), levels.max(), 200)
        ax.plot(d, _fit_curve(fit_entry["fit"], d), color="0.45", lw=1, label=f"{fit_entry['fit'].get('model', '')} fit")
        for c in critical or []:
            t = c.get("target", c.get("target_SAR"))
            ax.axhline(t, color="tab:red", lw=0.8, ls=":")
            ax.text(levels.max(), t, f" target {100 * t:g}%", va="bottom", ha="right", fontsize=7, color="tab:red")
            if c.get("dose_mAs") is not None:
                ax.axvline(c["dose_mAs"], color="tab:red", lw=0.8, ls="--")
                ci = c.get("ci_mAs") or [None, None]
                if None not in ci:
                    ax.axvspan(ci[0], ci[1], color="tab:red", alpha=0.06, lw=0)
        notes.append("Grey: the dose-response fit behind the critical dose; red dotted: the SAR targets; red dashed "
                     "(shaded): a critical dose (its CI).")
    _level_axis(ax, levels, unit, log_x)
    scale = _rate_axis(ax, values, 1.0 / (n * k), what="SAR")
    ax.set_ylabel("successful-attack rate (SAR)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{model['name']}: SAR per clean class and pooled", fontsize=10)
    caption = (f"SAR against {level_label(unit)}, at the audited levels (N = {n} samples, K = {k} draws each). "
               f"Bands and error bars: 95% CIs that count each sample as one cluster of K draws. {scale} {' '.join(notes)}")
    return Drawn(png_bytes(fig), caption)


def san_fraction_vs_level(model: dict, unit: str, log_x: bool) -> Drawn:
    """SAN / N against the level with its Clopper-Pearson interval; each point labelled SAN/N."""
    plt = _pyplot()
    blocks = _sorted_blocks(model)
    levels = np.array([b["level"] for b in blocks], float)
    frac = _none_to_nan([b["SAN_fraction"] for b in blocks])
    lo = _none_to_nan([b["SAN_fraction_ci"][0] for b in blocks])
    hi = _none_to_nan([b["SAN_fraction_ci"][1] for b in blocks])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.errorbar(levels, frac, yerr=[np.clip(frac - lo, 0, None), np.clip(hi - frac, 0, None)], fmt="o-",
                color="tab:purple", ms=5, capsize=3, label="SAN / N (95% CI)")
    for b, x, y in zip(blocks, levels, frac):
        ax.annotate(f"{b['SAN']}/{b['N']}", (x, y), textcoords="offset points", xytext=(5, 6), fontsize=7)
    _level_axis(ax, levels, unit, log_x)
    scale = _rate_axis(ax, [*frac, *hi], 1.0 / blocks[0]["N"], what="fractions")
    ax.set_ylabel("fraction of samples flipped at least once")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{model['name']}: SAN fraction (K = {blocks[0]['K']} draws)", fontsize=10)
    caption = (f"SAN fraction (samples flipped by at least one of K = {blocks[0]['K']} draws, over N = {blocks[0]['N']}) "
               f"against {level_label(unit)}; labels: SAN/N. Error bars: 95% Clopper-Pearson over the N samples. {scale}")
    return Drawn(png_bytes(fig), caption)


def _cmr_panel(ax, frac: np.ndarray, counts: np.ndarray | None, names: Sequence[str], norm, cmap, title: str):
    masked = np.ma.masked_where(~np.isfinite(frac) | (frac <= 0), frac)
    im = ax.imshow(masked, norm=norm, cmap=cmap)
    c = len(names)
    fs = 8 if c <= 3 else 6.5
    for (i, j), v in np.ndenumerate(frac):
        if not np.isfinite(v):
            ax.text(j, i, "no clean\ncases", ha="center", va="center", fontsize=fs - 1, color="0.35")
            continue
        text = f"{v:.3g}" if v > 0 else "0"
        if counts is not None:
            text += f"\n({int(counts[i, j])})"
        dark = v > 0 and norm(v) < 0.55
        ax.text(j, i, text, ha="center", va="center", fontsize=fs, color="white" if dark else "black")
    ax.set_xticks(range(c), names, rotation=35 if c > 2 else 0, ha="right" if c > 2 else "center", fontsize=7)
    ax.set_yticks(range(c), names, fontsize=7)
    ax.set_title(title, fontsize=9)
    return im


def _cmr_norm(counts_list: Sequence[np.ndarray | None], mats: Sequence[np.ndarray]):
    from matplotlib.colors import LogNorm

    totals = [float(np.nanmax(c.sum(axis=0))) for c in counts_list if c is not None and c.size]
    if totals and max(totals) > 0:
        vmin = 1.0 / max(totals)
    else:
        pos = np.concatenate([m[np.isfinite(m) & (m > 0)] for m in mats]) if mats else np.array([])
        vmin = float(pos.min()) if pos.size else 1e-3
    return LogNorm(vmin=min(0.9 * vmin, 0.1), vmax=1.0)


def _cmap():
    import matplotlib

    return matplotlib.colormaps["viridis"].with_extremes(bad="#eeeeee")


CMR_COLOUR_NOTE = ("Colour: the fraction on a log scale (from {vmin} to 1), so rare off-diagonal flips show; "
                   "light grey: 0.")


def cmr_heatmaps(model: dict, unit: str) -> Drawn:
    """CMR heat maps, one per level: each cell the fraction and (in brackets) the count; log colour of the fraction."""
    plt = _pyplot()
    blocks = [b for b in _sorted_blocks(model) if "CMR" in b]
    mats = [np.array([_none_to_nan(r) for r in b["CMR"]["matrix"]]) for b in blocks]
    counts = [np.array(b["CMR"]["counts"], float) if b["CMR"].get("counts") is not None else None for b in blocks]
    names = blocks[0]["CMR"]["class_order"]
    per_row = min(len(blocks), 5 if len(names) <= 2 else 3)
    rows = math.ceil(len(blocks) / per_row)
    side = 2.3 if len(names) <= 2 else 1.0 + 0.75 * len(names)
    fig, axes = plt.subplots(rows, per_row, figsize=(side * per_row + 1.0, side * rows + 0.6), squeeze=False)
    norm, cmap = _cmr_norm(counts, mats), _cmap()
    im = None
    for i, (ax, b, mat, cnt) in enumerate(zip(axes.ravel(), blocks, mats, counts)):
        im = _cmr_panel(ax, mat, cnt, names, norm, cmap, f"{b['level']:g} {unit}")
        if i % per_row:
            ax.set_yticklabels([])
    for ax in axes.ravel()[len(blocks):]:
        ax.axis("off")
    for r in range(rows):
        axes[r][0].set_ylabel("perturbed prediction", fontsize=8)
    fig.supxlabel("clean prediction", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.025, pad=0.02, label="fraction (log colour)")
    caption = ("Confusion Matrix for Robustness per level: column = clean prediction, row = perturbed prediction; each "
               "cell gives the fraction of that column's perturbed inferences" + (" and, in brackets, their count" if
                                                                                  counts[0] is not None else "")
               + "; columns sum to 1 and 1 - diagonal = SAR_c. " + CMR_COLOUR_NOTE.format(vmin=f"{norm.vmin:.2g}"))
    return Drawn(png_bytes(fig), caption)


def cmr_pair(real, simulated, class_order: Sequence[str], title: str, labels=("repeated real scans", "simulated noise")) -> Drawn:
    """Two CMRs side by side on one log colour scale (the scan arm: real repeated scans vs simulated noise)."""
    plt = _pyplot()
    mats = [np.array([_none_to_nan(r) for r in m]) for m in (real, simulated)]
    side = 2.3 if len(class_order) <= 2 else 1.0 + 0.75 * len(class_order)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.2, side + 0.6), squeeze=False)
    norm, cmap = _cmr_norm([None, None], mats), _cmap()
    im = None
    for ax, m, name in zip(axes[0], mats, labels):
        im = _cmr_panel(ax, m, None, class_order, norm, cmap, name)
    axes[0][1].set_yticklabels([])
    axes[0][0].set_ylabel("perturbed prediction", fontsize=8)
    fig.supxlabel("clean prediction", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label="fraction (log colour)")
    caption = ("CMR of the repeated real scans beside the CMR of simulated noise (column = clean prediction, row = "
               "perturbed prediction; each cell the fraction). " + CMR_COLOUR_NOTE.format(vmin=f"{norm.vmin:.2g}"))
    return Drawn(png_bytes(fig), caption)


def exceedance_curves(model: dict, unit: str) -> Drawn:
    """E(s) = fraction of samples with SAR_i > s per level; both axes fitted to where the curves are non-zero."""
    plt = _pyplot()
    blocks = _sorted_blocks(model)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    values: list[float] = []
    x_max = 0.0
    for b in blocks:
        s = np.array(b["exceedance"]["thresholds"], float)
        e = _none_to_nan(b["exceedance"]["fraction"])
        nz = np.flatnonzero(e > 0)
        if nz.size:
            x_max = max(x_max, s[min(nz[-1] + 1, len(s) - 1)])
        values += list(e)
        ax.step(s, e, where="post", label=f"{b['level']:g} {unit}" + ("" if nz.size else " (no flips)"))
    x_note = ""
    if 0 < x_max < 0.9:
        ax.set_xlim(0, min(1.0, x_max * 1.15 + 0.02))
        x_note = f" x: 0 to {ax.get_xlim()[1]:.2g} (every SAR_i lies below it)."
    else:
        ax.set_xlim(0, 1)
    scale = _rate_axis(ax, values, 1.0 / blocks[0]["N"], what="fractions")
    ax.set_xlabel("s (threshold on SARᵢ)")
    ax.set_ylabel("fraction of samples with SARᵢ > s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{model['name']}: SAR exceedance", fontsize=10)
    caption = (f"Exceedance curves: the fraction of the N = {blocks[0]['N']} samples whose SAR_i exceeds s, per level; "
               f"the value at s = 0 is the SAN fraction. {scale}{x_note}")
    return Drawn(png_bytes(fig), caption)


def attack_sweep(blocks: Sequence[dict], name: str) -> Drawn:
    """Success rate (deployed artifact and torch twin) and mean SAR against eps for runs of one attack."""
    plt = _pyplot()
    runs = sorted(blocks, key=lambda b: float(b["attack"]["eps"]))
    eps = np.array([float(b["attack"]["eps"]) for b in runs])
    deployed = np.array([b["summary"]["deployed_success_rate"] for b in runs], float)
    twin = np.array([b["summary"]["torch_success_rate"] for b in runs], float)
    sar = np.array([b["summary"].get("sar_mean", np.nan) for b in runs], float)
    spaces = {b["attack"].get("space") for b in runs}
    unit = "HU" if spaces == {"hu"} else "model-input units" if spaces <= {"input", None} else "/".join(map(str, spaces))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(eps, deployed, "o-", color="tab:red", label="success rate, deployed artifact")
    ax.plot(eps, twin, "s--", color="0.5", ms=4, label="success rate, torch twin")
    ax.plot(eps, sar, "^:", color="tab:blue", ms=4, label="mean SAR (deployed)")
    ax.set_xscale("log" if eps.min() > 0 and eps.max() / eps.min() >= 8 else "linear")
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.xaxis.set_major_locator(FixedLocator(eps))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{v:g}" for v in eps], fontsize=8)
    ax.set_xlabel(f"eps ({unit})")
    ax.set_ylabel("fraction of samples")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{name}: success against eps", fontsize=10)
    caption = (f"Attack {name}: fraction of samples whose deployed decision flipped (red; what counts), the twin's rate "
               f"(grey) and the mean SAR, against the perturbation bound eps ({unit}); x at the runs' eps.")
    return Drawn(png_bytes(fig), caption)


def success_vs_queries(curves: Sequence[tuple[str, Sequence[int], Sequence[bool], int | None]], stop: str = "") -> Drawn:
    """Per query-based attack (label, queries per sample, success per sample, budget): the fraction of samples whose
    deployed decision flipped and that took at most q queries, against q (log x); ``stop``: when the attacks stop
    spending queries on a sample (for the caption)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    top = 1
    for label, queries, won, budget in curves:
        q = np.asarray(queries, float)
        w = np.asarray(won, bool)
        n = max(len(q), 1)
        steps = np.sort(q[w])
        x = np.concatenate([[1.0], steps, [float(budget or (q.max() if q.size else 1.0))]])
        y = np.concatenate([[0.0], np.arange(1, len(steps) + 1) / n, [len(steps) / n]])
        ax.step(x, y, where="post", label=f"{label} ({int(w.sum())}/{len(q)})")
        top = max(top, float(x.max()))
    ax.set_xscale("log")
    ax.set_xlim(1, top * 1.1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("queries spent per sample (engine calls of one image)")
    ax.set_ylabel("fraction of samples flipped")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title("success against queries", fontsize=10)
    caption = ("Fraction of samples whose deployed decision flipped and on which the attack spent at most q queries, "
               f"against q (log x{'; ' + stop if stop else ''}); each curve ends at the attack's budget per sample.")
    return Drawn(png_bytes(fig), caption)


def _errorbar(ax, x, y, ci, **kw) -> None:
    """Points with their interval as error bars (an interval missing or NaN draws no bar)."""
    y = _none_to_nan(y)
    lo = _none_to_nan([c[0] if c else None for c in ci])
    hi = _none_to_nan([c[1] if c else None for c in ci])
    err = np.vstack([np.where(np.isfinite(lo), y - lo, 0.0), np.where(np.isfinite(hi), hi - y, 0.0)])
    ax.errorbar(x, y, yerr=np.clip(err, 0.0, None), capsize=3, **kw)


def retrain_rounds(report: dict) -> Drawn:
    """Per retraining round: the attack's SAN fraction on train and test, and the noise audit's pooled SAR per
    dose, each with its 95% interval (``retrain.json``'s rounds)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    rounds = report["rounds"]
    x = np.array([r["round"] for r in rounds], float)
    levels = [b["level"] for b in rounds[0].get("audit", [])]
    unit = ((report.get("config") or {}).get("noise") or {}).get("level_unit", "mAs")
    fig, axes = plt.subplots(1, 2 if levels else 1, figsize=(11.5 if levels else 6.0, 3.8), squeeze=False)
    ax = axes[0][0]
    for split, marker, color in (("train", "o-", "tab:red"), ("test", "s--", "tab:blue")):
        _errorbar(ax, x, [r[split]["san_fraction"] for r in rounds], [r[split].get("san_fraction_ci") for r in rounds],
                  fmt=marker, color=color, ms=5, label=f"{split} split")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("SAN fraction (attack)")
    ax.set_title(f"attack ({report.get('config', {}).get('attack', {}).get('name', 'attack')}): samples flipped",
                 fontsize=10)
    scale = ""
    if levels:
        ax2 = axes[0][1]
        shown = []
        for j, lv in enumerate(levels):
            ys = [r["audit"][j]["SAR_overall"] for r in rounds]
            cis = [r["audit"][j].get("SAR_overall_ci") for r in rounds]
            shown += ys + [c[1] for c in cis if c]
            _errorbar(ax2, x + 0.04 * (j - (len(levels) - 1) / 2), ys, cis, fmt="o-", ms=4, label=f"{lv:g} {unit}")
        k = rounds[0]["audit"][0]
        scale = _rate_axis(ax2, shown, 1.0 / max(k["N"] * k["K"], 1), what="SARs")
        ax2.set_ylabel("pooled SAR (noise audit, test split)")
        ax2.set_title("noise: SAR per dose", fontsize=10)
        ax2.legend(fontsize=7, title="dose", title_fontsize=7)
    for a in axes[0]:
        a.set_xlabel("retraining round")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    caption = ("Per round (0: the model as built): left, the fraction of samples the attack flipped on the deployed "
               "artifact, train and test split, with exact (Clopper-Pearson) 95% intervals"
               + ("; right, the noise audit's pooled SAR per dose on the test split with the campaign report's "
                  "cluster-aware exact 95% intervals (points offset slightly per dose). " + scale if levels else "."))
    return Drawn(png_bytes(fig), caption)


# ---------------------------------------------------------------------------
# detection (study 3) and segmentation distributions


def _rate_ticks(ax, rates: Sequence[float]) -> None:
    """Log x over FP rates per scan, ticks at ``rates`` written as fractions (1/8 ... 8)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xlim(min(rates) / 1.15, max(rates) * 1.15)
    ax.xaxis.set_major_locator(FixedLocator(list(rates)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"1/{round(1 / r)}" if r < 1 and abs(1 / r - round(1 / r)) < 1e-9 else f"{r:g}" for r in rates],
                       fontsize=8)


def _detection_series(model: dict, unit: str) -> list[tuple[str, dict, str]]:
    """(label, detection block, colour): clean first (black), then the levels from the highest dose down."""
    import matplotlib

    blocks = [b for b in sorted(model["levels"], key=lambda b: -b["level"]) if b.get("detection")]
    cmap = matplotlib.colormaps["plasma"]
    out = []
    clean = (model.get("clean") or {}).get("detection")
    if clean:
        out.append(("clean", clean, "black"))
    for i, b in enumerate(blocks):
        out.append((f"{b['level']:g} {unit}", b["detection"], cmap(0.1 + 0.75 * i / max(len(blocks) - 1, 1))))
    return out


def froc_curves(model: dict, unit: str) -> Drawn:
    """FROC per level and clean: sensitivity against FPs per scan (log x, 1/8 to 8), 95% CI band at the CPM rates."""
    plt = _pyplot()
    series = _detection_series(model, unit)
    fig, ax = plt.subplots(figsize=(6.6, 4.3))
    rates: list[float] = []
    for label, d, colour in series:
        rates = [float(r) for r in d["fp_rates_per_scan"]]
        x = np.array(d["froc"]["fps_per_scan"], float)
        top = 5 if label == "clean" else 2  # clean drawn dashed over the levels: visible where a level equals it
        ax.plot(x, _none_to_nan(d["froc"]["sensitivity"]), "--" if label == "clean" else "-", color=colour,
                lw=1.5 if label == "clean" else 1.3, zorder=top, label=f"{label}: CPM {_num_text(d.get('cpm'))}")
        ax.plot(rates, _none_to_nan(d["sensitivity_at"]), "o", color=colour, ms=3.5, zorder=top)
        ax.fill_between(rates, _none_to_nan(d["sensitivity_ci_low"]), _none_to_nan(d["sensitivity_ci_high"]),
                        color=colour, alpha=0.12, lw=0)
    _rate_ticks(ax, rates or [0.125, 8.0])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan (log scale)")
    ax.set_ylabel("sensitivity (fraction of lesions found)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, title="dose: CPM" if unit == "mAs" else "level: CPM", title_fontsize=7)
    ax.set_title(f"{model['name']}: FROC per {level_label(unit).split(' (')[0]}", fontsize=10)
    caption = (f"FROC curves: sensitivity (fraction of included lesions found) against false positives per scan, log x "
               f"from 1/8 to 8 (LUNA16's range); one curve per {level_label(unit)} and the clean images. A "
               "level's curve pools its N x K scan replicates (each sample under each draw; FPs per scan = FPs / (N K)). "
               "Markers: the seven CPM rates; bands: 95% bootstrap intervals there (resampling samples with all their "
               "draws; linear between the rates). CPM = mean sensitivity at the seven rates. Clean: black dashed.")
    return Drawn(png_bytes(fig), caption)


def _num_text(v) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.3f}"


def detection_score_histograms(model: dict, unit: str) -> Drawn | None:
    """Score histograms of hits (best mark per found lesion) and false positives, per level and clean, as marks per
    scan in each 0.1 bin; None when no block has one (scores outside [0, 1])."""
    series = [(label, d, c) for label, d, c in _detection_series(model, unit) if d.get("confidence_histogram")]
    if not series:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(6.4, 5.8), sharex=True)
    for ax, key, what in ((axes[0], "hits", "hits (best mark on each found lesion)"),
                          (axes[1], "false_positives", "false positives")):
        for label, d, colour in series:
            h = d["confidence_histogram"]
            edges = np.array(h["edges"], float)
            scans = max(int(d.get("scan_replicates") or d.get("scans") or 1), 1)
            per_scan = np.array(h[key], float) / scans
            ax.stairs(per_scan, edges, color=colour, lw=1.5 if label == "clean" else 1.2,
                      ls="--" if label == "clean" else "-", zorder=5 if label == "clean" else 2,
                      label=f"{label} ({int(sum(h[key]))} marks)")
        ax.set_xlim(0, 1)
        ax.set_ylabel("marks per scan, per 0.1 bin", fontsize=8)
        ax.set_title(what, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[1].set_xlabel("model score")
    fig.suptitle(f"{model['name']}: score histograms", fontsize=10)
    fig.tight_layout()
    caption = ("Scores of the marks per level and clean (black dashed), all scores (not only above the operating threshold): "
               "top the best mark on each detected lesion, bottom the false positives; y: marks per scan replicate in "
               "each 0.1-wide score bin (so levels with K draws per sample compare with clean); legend: marks counted.")
    return Drawn(png_bytes(fig), caption)


_SEG_PANELS = (("dice", "Dice to the clean mask", "Dice (0 to 1)"), ("hd95_mm", "HD95", "HD95 (mm)"),
               ("contour_error_mm", "contour error", "contour error (mm)"),
               ("filled_dice", "filled-contour Dice", "filled-contour Dice (0 to 1)"))


def segmentation_quantiles(model: dict, unit: str) -> Drawn | None:
    """Per level, box plots of each segmentation metric's per-draw distribution from the report's quantiles: box q25 to
    q75, line the median, whiskers q05 to q95, diamond the mean; None without a segmentation block."""
    blocks = [b for b in sorted(model["levels"], key=lambda b: b["level"]) if b.get("segmentation")]
    panels = [p for p in _SEG_PANELS if any((b["segmentation"] or {}).get(p[0]) for b in blocks)]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.6, 3.8), squeeze=False)
    notes = []
    for ax, (key, title, ylabel) in zip(axes[0], panels):
        dists = [(b["level"], b["segmentation"].get(key)) for b in blocks if b["segmentation"].get(key)]
        qs = ("q05", "q25", "q50", "q75", "q95")
        finite = [v for _, d in dists for v in (d.get(q) for q in (*qs, "mean")) if v is not None]
        unit_mm = any(d.get("unit") == "mm" for _, d in dists)
        top = (max(finite) * 1.15 if finite else 1.0) if unit_mm else 1.0
        for x, (level, d) in enumerate(dists):
            v = {q: d.get(q) for q in qs}
            shown = {q: (top if v[q] is None else v[q]) for q in qs}  # None: an infinite quantile (one mask empty)
            ax.add_patch(plt.Rectangle((x - 0.28, shown["q25"]), 0.56, shown["q75"] - shown["q25"], facecolor="tab:blue",
                                       alpha=0.25, edgecolor="tab:blue"))
            ax.plot([x - 0.28, x + 0.28], [shown["q50"]] * 2, color="tab:blue", lw=2)
            for a, b in (("q05", "q25"), ("q75", "q95")):  # whiskers; dashed where a quantile is infinite
                ax.plot([x, x], [shown[a], shown[b]], color="tab:blue", lw=1,
                        ls="--" if v[a] is None or v[b] is None else "-")
            for q in ("q05", "q95"):
                if v[q] is not None:
                    ax.plot([x - 0.12, x + 0.12], [shown[q]] * 2, color="tab:blue", lw=1)
            if d.get("mean") is not None:
                ax.plot(x, d["mean"], "D", color="tab:red", ms=4)
            if any(v[q] is None for q in qs):
                ax.text(x, top, "\u221e", ha="center", va="bottom", fontsize=11, color="tab:red")
                notes.append(f"{title} at {level:g} {unit}")
        ax.set_xticks(range(len(dists)), [f"{lv:g}" for lv, _ in dists], fontsize=8)
        ax.set_xlim(-0.6, len(dists) - 0.4)
        ax.set_ylim(0, top * (1.08 if unit_mm else 1.02))
        ax.set_xlabel(level_label(unit))
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{model['name']}: segmentation agreement per level (all draws)", fontsize=10)
    fig.tight_layout()
    caption = ("Distribution over each level's N x K draws of the perturbed mask against the model's own clean mask: box "
               "from the 25th to the 75th percentile, line the median, whiskers the 5th and 95th percentiles, red "
               "diamond the mean; distances in mm, Dice from 0 to 1 (y starts at 0)."
               + (" Dashed whisker to \u221e at the top: an infinite quantile (one of the two masks empty) at "
                  + ", ".join(notes) + "."
                  if notes else ""))
    return Drawn(png_bytes(fig), caption)


# ---------------------------------------------------------------------------
# figures drawn once at audit time (``audit.report.cases``)


def nps_used(f, curves: dict, title: str) -> bytes:
    """Radial NPS curves (1/mm, HU^2 mm^2) per level, log y (the doses differ by decades)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    f = np.asarray(f, float)
    peak = 0.0
    positive = []
    for label, s in curves.items():
        s = np.asarray(s, float)
        ok = (s > 0) & np.isfinite(s)
        if ok.any():
            positive.append(s[ok])
            peak = max(peak, float(s[ok].max()))
        ax.plot(f[ok], s[ok], label=label)
    ax.set_yscale("log")
    if peak > 0:
        low = max(float(min(p.min() for p in positive)), peak * 1e-4)
        ax.set_ylim(low / 1.5, peak * 2.0)
    ax.set_xlim(0, None)
    ax.set_xlabel("spatial frequency (1/mm)")
    ax.set_ylabel("NPS (HU² mm²), log scale")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title + " (y: log; zero values not drawn)", fontsize=10)
    return png_bytes(fig)


def _scale_bar(ax, width_px: int, height_px: int, spacing_x: float) -> None:
    """A white bar of 10 mm (or the largest of 5, 2, 1 mm that fits) at the image's lower left."""
    from matplotlib.patches import Rectangle
    import matplotlib.patheffects as pe

    length = next((mm for mm in (10.0, 5.0, 2.0, 1.0) if mm / spacing_x <= 0.6 * width_px), None)
    if length is None:
        return
    px = length / spacing_x
    x0, y0 = 0.06 * width_px, height_px * 0.9
    h = max(height_px * 0.025, 0.6)
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), px, h, color="white", ec="black", lw=0.6))
    ax.text(x0 - 0.5 + px / 2, y0 - 0.5 - h, f"{length:g} mm", color="white", ha="center", va="bottom", fontsize=7,
            path_effects=[pe.withStroke(linewidth=1.5, foreground="black")])


def case_panel(clean, noisy, window, title: str, *, spacing_mm: Sequence[float] | None = None) -> bytes:
    """Clean, noisy and difference images (HU) of one case; a volume shows its central axial slice.

    The panel states the slice and the display window; with ``spacing_mm`` (the image's (z,) y, x spacing) the
    clean and noisy images carry a 10 mm scale bar.
    """
    plt = _pyplot()
    clean, noisy = np.asarray(clean), np.asarray(noisy)
    where = "2D image"
    if clean.ndim == 3:
        z = clean.shape[0] // 2
        where = f"axial slice {z} of 0..{clean.shape[0] - 1} (central)"
        clean, noisy = clean[z], noisy[z]
    diff = noisy - clean
    lo, hi = float(window[0]), float(window[1])
    fig, axes = plt.subplots(1, 3, figsize=(8.4, 3.3))
    lim = max(float(np.abs(diff).max()), 1.0)
    ny, nx = clean.shape
    for ax, img, name, kw in ((axes[0], clean, "clean", {"vmin": lo, "vmax": hi, "cmap": "gray"}),
                              (axes[1], noisy, "noisy", {"vmin": lo, "vmax": hi, "cmap": "gray"}),
                              (axes[2], diff, "noise = noisy - clean", {"vmin": -lim, "vmax": lim, "cmap": "RdBu_r"})):
        im = ax.imshow(img, interpolation="nearest", **kw)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if spacing_mm is not None and ax is not axes[2]:
            _scale_bar(ax, nx, ny, float(spacing_mm[-1]))
    fig.colorbar(im, ax=axes[2], fraction=0.046, label="HU")
    pixel = "" if spacing_mm is None else f" · pixel {float(spacing_mm[-2]):g} x {float(spacing_mm[-1]):g} mm"
    fig.suptitle(title, fontsize=9)
    fig.text(0.5, 0.01, f"{where} · display window [{lo:g}, {hi:g}] HU (W {hi - lo:g} / L {(hi + lo) / 2:g}){pixel}",
             ha="center", va="bottom", fontsize=8, color="0.25")
    return png_bytes(fig)


def noise_rois(image, rois, roi_size: int, spacing_mm: Sequence[float], title: str) -> bytes:
    """One axial slice (HU, soft-tissue window -160..240) with the uniform ROIs the noise estimator chose drawn as
    squares (``rois``: (row, column) of each top-left corner, pixels; ``roi_size`` pixels)."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    ny, nx = image.shape
    dy, dx = float(spacing_mm[0]), float(spacing_mm[1])
    fig, ax = plt.subplots(figsize=(5.2, 5.2 * ny * dy / max(nx * dx, 1e-9) + 0.4))
    ax.imshow(image, cmap="gray", vmin=-160, vmax=240, extent=(0, nx * dx, ny * dy, 0))
    for y, x in rois:
        ax.add_patch(Rectangle((x * dx, y * dy), roi_size * dx, roi_size * dy, fill=False, edgecolor="#00e060", lw=1.0))
    ax.set_xlabel("mm")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return png_bytes(fig, dpi=90)
