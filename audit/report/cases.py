"""Files a report page shows that report.json cannot hold, written once when the campaign ends.

For each worst case the noise is regenerated from its key once and drawn as a
clean / noisy / difference panel (``cases/<model>/<case>.png``), and, when
asked, written as a derived DICOM study (and pushed to the PACS); the NPS
actually used per dose is drawn as ``figures/nps.png``. ``audit.report.html``
then renders the page from report.json and these files alone: no model, no
data, no noise generator needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.campaign import records
from audit.campaign.noise import NoiseSpec
from audit.campaign.reduction import DoseReduction
from audit.dicom import write_flipped_case
from audit.io import PRIVATE_DIR_MODE, atomic_path
from audit.pacs import connect, push_case
from audit.report import figures
from kernels import radial_average

CASES_DIR, FIGURES_DIR = "cases", "figures"
NPS_FIGURE = f"{FIGURES_DIR}/nps.png"
ROI_FIGURES = 4  # samples whose noise ROIs are drawn (the first ones measured on the scan itself)


def case_name(case: dict[str, Any]) -> str:
    """The file stem of a worst case: sample, level key and draw (unique per model)."""
    return f"sample{case['sample']:06d}-level{case['key'][2]}-k{case['k']}"


def case_image(out: Path, model: str, case: dict[str, Any]) -> Path:
    return Path(out) / CASES_DIR / model / f"{case_name(case)}.png"


def regenerate(source: Any, noise: NoiseSpec, case: dict[str, Any], model: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """A worst case's clean image and its noisy image, the noise regenerated from the case's key: (1, *shape) each.
    ``model``: ``noise.noise_model(source)`` (needed in reduce mode)."""
    hu = source.load([case["sample"]])
    key = np.array([case["key"]], dtype=np.uint64)
    return hu, hu + noise.sample(key, case["level"], hu, source.spacing, model=model)


def write_nps_figure(out: Path, noise: NoiseSpec, shape: Sequence[int], spacing: Sequence[float]) -> None:
    """The radial NPS of every dose, as generated on the data's grid (``figures/nps.png``); nothing for stress noise
    or dose reduction (whose inserted NPS differs per scan; report.json's ``noise.reduction`` holds it)."""
    if noise.kind != "nps" or noise.mode == "reduce":
        return
    model = noise.dose_model(shape, spacing)
    grid = tuple(shape[-2:]), tuple(spacing[-2:])
    curves, f = {}, None
    for level in noise.levels:
        f, s, _ = radial_average(model.nps_at(level).on_grid(*grid, half=False), grid[1])
        curves[f"{level:g} mAs"] = s
    with atomic_path(Path(out) / NPS_FIGURE) as tmp:
        tmp.write_bytes(figures.nps_used(f, curves, "radial NPS per dose"))


def write_cases(out: Path, report: dict[str, Any], source: Any, noise: NoiseSpec, windows: dict[str, tuple[float, float]],
                *, dicom: bool = False, pacs: Any = None, noise_model: Any = None) -> dict[tuple[str, int], dict[str, Any]]:
    """Every worst case's panel (always) and derived DICOM study (``dicom``, or a PACS with ``push``).

    ``windows``: each model's HU display window. Returns the DICOM links per (model, sample) for
    ``audit.report.build.attach_dicom``.
    """
    out = Path(out)
    target = None if pacs is None else pacs.push_target
    client = connect(target) if target is not None else None
    noise_model = noise_model or noise.noise_model(source)
    write_noise_rois(out, report, noise_model)
    unit = report["noise"]["level_unit"]
    links: dict[tuple[str, int], dict[str, Any]] = {}
    for model in report["models"]:
        if not model["worst_cases"]:
            continue
        clean = records.load_clean(out, model["name"], len(source))
        for case in model["worst_cases"]:
            hu, noisy = regenerate(source, noise, case, noise_model)
            i = case["sample"]
            names = model["head"].get("class_names") or []
            label = lambda v: names[v] if 0 <= v < len(names) else str(v)  # noqa: E731 - a local naming helper
            title = (f"{case['id']} at {case['level']:g} {unit}, draw {case['k']}: {label(int(clean.labels[i]))} "
                     f"({float(clean.scores[i]):.3f}) -> {label(int(case['noisy_label']))} ({case['noisy_score']:.3f})")
            with atomic_path(case_image(out, model["name"], case)) as tmp:
                tmp.write_bytes(figures.case_panel(hu[0], noisy[0], windows[model["name"]], title,
                                                     spacing_mm=tuple(source.spacing)))
            if not (dicom or client is not None):
                continue
            c, n = (hu[0], noisy[0]) if hu[0].ndim == 3 else (hu[0][None], noisy[0][None])
            spacing = tuple(source.spacing) if len(source.spacing) == 3 else (1.0, *source.spacing)
            folder = out / "dicom" / model["name"] / case_name(case)
            attack = "random NPS noise" if noise.kind == "nps" else f"{noise.kind} noise, level {case['level']:g}"
            (out / "dicom").mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
            os.chmod(out / "dicom", PRIVATE_DIR_MODE)  # derived cases carry the source's patient identity
            link = write_flipped_case(c, n, spacing, folder, level=float(case["level"]), key=tuple(case["key"]),
                                      attack=attack, overwrite=True, reference=source.reference(i))
            links[(model["name"], i)] = push_case(client, link, model["name"]) if client is not None else link
    return links


def write_noise_rois(out: Path, report: dict[str, Any], noise_model: Any) -> None:
    """Dose reduction with the scan's own noise: for the first ``ROI_FIGURES`` samples measured on the scan itself,
    the slice with the most uniform ROIs the estimator kept, the ROIs drawn on it (``figures/noise-rois-<sample>.png``);
    report.json's sample row gets ``scan_noise.roi_figure`` and ``roi_slice`` (the ROIs' coordinates are in
    ``scan_noise.estimate.rois``)."""
    if not isinstance(noise_model, DoseReduction):
        return
    rows = ((report.get("noise") or {}).get("reduction") or {}).get("samples") or []
    drawn = 0
    for row in rows:
        own = row.get("scan_noise") or {}
        if drawn >= ROI_FIGURES or own.get("source") != "estimate":
            continue
        found = noise_model.roi_slice(int(row["sample"]))
        if found is None:
            continue
        image, rois, size, k, spacing = found
        rel = f"{FIGURES_DIR}/noise-rois-sample{int(row['sample']):06d}.png"
        est = own.get("estimate") or {}
        ci = est.get("ci") or [float("nan")] * 2
        title = (f"{row['series']}\nslice {k}: {len(rois)} uniform ROIs of {size} px; sigma0 {own['sigma0']:.2f} HU "
                 f"(95% CI {ci[0]:.2f}-{ci[1]:.2f})")
        with atomic_path(out / rel) as tmp:
            tmp.write_bytes(figures.noise_rois(image, rois, size, spacing, title))
        own["roi_figure"], own["roi_slice"] = rel, k
        drawn += 1
