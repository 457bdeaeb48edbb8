"""Figures shared by the CLI and the reports (matplotlib, headless Agg backend)."""

from __future__ import annotations

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
