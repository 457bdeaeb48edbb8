"""Figures shared by the CLI and the reports (matplotlib, headless Agg backend)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def nps_check_figure(path: Path, *, f, target, measured, band, sample, spacing, title: str) -> None:
    """Target vs measured radial NPS (1/mm, HU^2 mm^2) beside one noise sample, written as PNG to ``path``."""
    plt = _pyplot()
    fig, (ax_nps, ax_img) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1.4, 1]})
    ax_nps.plot(f, target, "k-", lw=2, label="target")
    ax_nps.plot(f, measured, "o", ms=3, color="tab:red", label="measured")
    if np.any(band):
        ax_nps.axvspan(f[band].min(), f[band].max(), color="tab:blue", alpha=0.07, label="checked band")
    ax_nps.set_xlabel("spatial frequency (1/mm)")
    ax_nps.set_ylabel("NPS (HU$^2$ mm$^2$)")
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
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def png_bytes(fig, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes and close it."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def png_base64(fig, dpi: int = 80) -> str:
    """A figure as base64 PNG text (what report.json embeds for attack explanations)."""
    return base64.b64encode(png_bytes(fig, dpi)).decode("ascii")


def _none_to_nan(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def sar_vs_level(model: dict, unit: str, log_x: bool) -> bytes:
    """Per-class SAR (and overall) against the level, with confidence bands."""
    plt = _pyplot()
    levels = np.array([b["level"] for b in model["levels"]])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if "per_class" in model["levels"][0]:
        names = model["levels"][0]["class_names"]
        for c, name in enumerate(names):
            sar = _none_to_nan([b["per_class"]["SAR"][c] for b in model["levels"]])
            lo = _none_to_nan([b["per_class"]["SAR_ci_low"][c] for b in model["levels"]])
            hi = _none_to_nan([b["per_class"]["SAR_ci_high"][c] for b in model["levels"]])
            if np.all(np.isnan(sar)):
                continue
            line, = ax.plot(levels, sar, "o-", label=f"SAR {name}")
            ax.fill_between(levels, lo, hi, color=line.get_color(), alpha=0.15)
    overall = _none_to_nan([b["SAR_overall"] for b in model["levels"]])
    ax.plot(levels, overall, "k--", lw=1.5, label="SAR overall")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(unit)
    ax.set_ylabel("successful-attack rate")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{model['name']}: SAR per clean class (bands: CIs)")
    return png_bytes(fig)


def cmr_heatmaps(model: dict, unit: str) -> bytes:
    plt = _pyplot()
    blocks = [b for b in model["levels"] if "CMR" in b]
    fig, axes = plt.subplots(1, len(blocks), figsize=(3.2 * len(blocks), 3.3), squeeze=False)
    for ax, b in zip(axes[0], blocks):
        mat = np.array([_none_to_nan(r) for r in b["CMR"]["matrix"]])
        names = b["CMR"]["class_order"]
        ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
        for (i, j), v in np.ndenumerate(mat):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(f"{b['level']:g} {unit}", fontsize=9)
    axes[0][0].set_ylabel("perturbed prediction")
    fig.supxlabel("clean prediction", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)


def exceedance_curves(model: dict, unit: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for b in model["levels"]:
        ax.step(b["exceedance"]["thresholds"], _none_to_nan(b["exceedance"]["fraction"]), where="post", label=f"{b['level']:g} {unit}")
    ax.set_xlabel("s")
    ax.set_ylabel("fraction of samples with SAR_i > s")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{model['name']}: SAR exceedance")
    return png_bytes(fig)


def nps_used(f, curves: dict, title: str) -> bytes:
    """Radial NPS curves (1/mm, HU^2 mm^2) per level."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, s in curves.items():
        ax.plot(f, s, label=label)
    ax.set_xlim(0, None)
    ax.set_ylim(0, None)
    ax.set_xlabel("spatial frequency (1/mm)")
    ax.set_ylabel("NPS (HU$^2$ mm$^2$)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return png_bytes(fig)


def case_panel(clean, noisy, window, title: str) -> bytes:
    """Clean, noisy and difference images (central slice of a volume), HU."""
    plt = _pyplot()
    if clean.ndim == 3:
        clean, noisy = clean[clean.shape[0] // 2], noisy[noisy.shape[0] // 2]
    diff = noisy - clean
    fig, axes = plt.subplots(1, 3, figsize=(8.4, 3.0))
    lim = max(float(np.abs(diff).max()), 1.0)
    for ax, img, name, kw in ((axes[0], clean, "clean", {"vmin": window[0], "vmax": window[1], "cmap": "gray"}),
                              (axes[1], noisy, "noisy", {"vmin": window[0], "vmax": window[1], "cmap": "gray"}),
                              (axes[2], diff, "noise (HU)", {"vmin": -lim, "vmax": lim, "cmap": "RdBu_r"})):
        im = ax.imshow(img, **kw)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    fig.suptitle(title, fontsize=9)
    return png_bytes(fig)
