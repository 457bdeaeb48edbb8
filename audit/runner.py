"""From a validated config to finished reports: open engines, load data, run the campaign, write reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.campaign import AuditedModel, CampaignStats, run_campaign
from audit.config import AuditConfig
from audit.data import ArraySource, ManifestSource
from audit.engines import load_engine
from audit.errors import ConfigError
from audit.heads import head_from, preprocess_from
from audit.noise_spec import NoiseSpec
from audit.report import build_report, render_html, write_html, write_json, write_junit
from kernels import radial_average


def open_models(config: AuditConfig) -> list[AuditedModel]:
    out = []
    for entry in config.models:
        engine = load_engine(entry.path, entry.engine, **dict(entry.options))
        head = head_from(engine.metadata, config.head, str(entry.path))
        prep = preprocess_from(engine.metadata, config.preprocess, str(entry.path))
        out.append(AuditedModel(entry.name, engine, head, prep))
    return out


def open_source(data: dict[str, Any], pacs: Any = None):
    """The data source of a ``[data]`` table; ``pacs`` (a ``PacsServer``) serves manifest rows ``dicomweb:<UID>``."""
    if "manifest" in data:
        return ManifestSource(data["manifest"], data.get("spacing"), data.get("class_names", ()),
                              cube=int(data.get("cube", 32)), target_spacing=float(data.get("target_spacing", 1.0)),
                              pacs=pacs)
    n, seed = int(data.get("n", 100)), int(data.get("seed", 1))
    if data["phantom"] == "nodules":
        from models.phantoms.nodules import nodule_cubes

        s = nodule_cubes(n, seed)
        return ArraySource(s.images, tuple(s.spacing), s.labels, name=f"phantom nodules (n={n}, seed={seed})",
                           class_names=tuple(s.class_names))
    from models.phantoms.bodysite import bodysite_slices

    s = bodysite_slices(n, seed)
    return ArraySource(s.images, tuple(s.spacing), s.labels, name=f"phantom body-site slices (n={n}, seed={seed})",
                       class_names=tuple(getattr(s, "class_names", ())))


def nps_curves(noise: NoiseSpec, shape: Sequence[int], spacing: Sequence[float]):
    if noise.kind != "nps":
        return None
    model = noise.dose_model(shape, spacing)
    grid = tuple(shape[-2:]), tuple(spacing[-2:])
    curves = {}
    f = None
    for level in noise.levels:
        f, s, _ = radial_average(model.nps_at(level).on_grid(*grid, half=False), grid[1])
        curves[f"{level:g} mAs"] = s
    return f, curves


def regenerate_case(source: Any, noise: NoiseSpec, case: dict) -> tuple[np.ndarray, np.ndarray]:
    """A worst case's clean image and its noisy image, the noise regenerated from the case's key: (1, *shape) each."""
    hu = source.load([case["sample"]])
    key = np.array([case["key"]], dtype=np.uint64)
    return hu, hu + noise.sample(key, case["level"], hu, source.spacing)


def case_renderer(source: Any, noise: NoiseSpec, models: Sequence[AuditedModel]):
    """Regenerate a worst case's noise from its key and draw clean / noisy / difference."""
    from audit import figures

    by_name = {m.name: m for m in models}

    def render(model: dict, case: dict) -> bytes:
        hu, noisy = regenerate_case(source, noise, case)
        m = by_name[model["name"]]
        clean_dec = m.decide(hu)
        title = (f"{case['id']} at {case['level']:g} {noise.to_dict()['level_unit']}, draw {case['k']}: "
                 f"label {int(clean_dec.labels[0])} ({float(clean_dec.scores[0]):.3f}) -> {case['noisy_label']} ({case['noisy_score']:.3f})")
        return figures.case_panel(hu[0], noisy[0], m.preprocess.window, title)

    return render


def write_dicom_cases(out: Path, report: dict[str, Any], source: Any, noise: NoiseSpec, pacs: Any = None) -> None:
    """Each worst case as a derived DICOM study (clean and noisy series); the report links them by UID and folder.

    With ``pacs`` (a ``PacsServer`` with ``push``) each case is also stored on the server (STOW-RS), once.
    """
    from audit.dicom import write_flipped_case

    client = None
    if pacs is not None and pacs.push:
        from audit.pacs import connect

        client = connect(pacs)
    for model in report["models"]:
        for case in model["worst_cases"]:
            hu, noisy = regenerate_case(source, noise, case)
            clean, noisy = hu[0], noisy[0]
            if clean.ndim == 2:
                clean, noisy = clean[None], noisy[None]
            spacing = tuple(source.spacing) if len(source.spacing) == 3 else (1.0, *source.spacing)
            folder = out / "dicom" / model["name"] / f"sample{case['sample']:06d}-level{noise.level_key(case['level'])}-k{case['k']}"
            attack = "random NPS noise" if noise.kind == "nps" else f"{noise.kind} noise, level {case['level']:g}"
            reference = source.reference(case["sample"])
            case["dicom"] = write_flipped_case(clean, noisy, spacing, folder, level=float(case["level"]), key=tuple(case["key"]),
                                               attack=attack, overwrite=True, reference=reference)
            if client is not None:
                from audit.pacs import push_case

                case["dicom"] = push_case(client, case["dicom"], model["name"])


def write_reports(out: Path, models: Sequence[AuditedModel], source: Any, noise: NoiseSpec, stats: CampaignStats,
                  worst: int = 6, extra: dict | None = None, dicom: bool = False, pacs: Any = None,
                  attacks: Sequence[dict] = ()) -> dict[str, Any]:
    """report.json, report.html and junit.xml of a finished campaign; ``attacks``: attack blocks to include."""
    report = build_report(out, models, source, noise, stats, worst=worst, extra=extra, attacks=attacks)
    if dicom or (pacs is not None and pacs.push):
        write_dicom_cases(out, report, source, noise, pacs)
    write_json(out / "report.json", report)
    page = render_html(report, nps_curves=nps_curves(noise, source.shape, source.spacing),
                       case_images=case_renderer(source, noise, models))
    write_html(out / "report.html", page)
    write_junit(out / "junit.xml", report, list(source.ids))
    return report


def run_config(config: AuditConfig, out: Path, *, resume: bool = False, progress: bool | None = None,
               ray: str | None = None, ray_actors: int | None = None, ray_gpus: float = 0.0) -> dict[str, Any]:
    """Run the campaign (in this process, or over Ray with ``ray`` = "auto" or an address) and write the reports."""
    models = open_models(config)
    source = open_source(dict(config.data), pacs=config.pacs)
    options = config.run if progress is None else type(config.run)(**{**config.run.__dict__, "progress": progress})
    plans = []
    if config.attack is not None:  # twins and attack parameters checked before the campaign, not after it
        from audit.attacks.runner import plan_attacks

        try:
            plans = [plan_attacks(config.attack, m, source) for m in models]
        except ConfigError as exc:  # an attack parameter the [attack] table got wrong
            raise ConfigError(f"{config.path}: {exc}" if config.path else str(exc)) from None
    if ray is not None:
        from audit.scale import run_on_ray

        stats = run_on_ray(config, out, address=ray, actors=ray_actors, num_gpus=ray_gpus, resume=resume)
    else:
        stats = run_campaign(models, source, config.noise, out, options, resume=resume)
    extra = None
    if config.scan_arm is not None:
        from audit.scan_arm import phantom_scanner_arm, scan_arm

        arm = dict(config.scan_arm)
        phantoms = phantom_scanner_arm(float(arm["mas"]), int(arm.get("scans", 20)), int(arm.get("seed", 0)))
        extra = {"scan_arm": [dict(scan_arm(m, phantoms, draws=int(arm.get("draws", 100)), seed=int(arm.get("seed", 0)),
                                            patch_mm=float(arm.get("patch_mm", 6.8)), overlap=float(arm.get("overlap", 0.3))),
                                   mas=float(arm["mas"])) for m in models]}
    hu = plans[0].load() if plans else None  # the same samples for every model: read once
    attacks = [block for plan in plans
               for block in plan.run(hu, progress=options.progress, prefix=f"{plan.model.name}: " if len(models) > 1 else "")]
    return write_reports(out, models, source, config.noise, stats, config.worst, extra, dicom=config.dicom_cases,
                         pacs=config.pacs, attacks=attacks)


def summary_table(report: dict[str, Any]) -> str:
    unit = report["noise"]["level_unit"]
    lines = []
    for model in report["models"]:
        lines.append(f"model {model['name']} ({model['head']['task']}): " + ", ".join(
            f"{k} {v:.3f}" for k, v in model["clean"].items() if isinstance(v, float)))
        lines.append(f"  {unit:>12} {'SAN':>6} {'SAN frac':>9} {'SAR':>8}  SAR per class")
        for b in model["levels"]:
            per = b.get("per_class")
            cls = "  ".join(f"{n}={'-' if s is None else f'{s:.3f}'}" for n, s in zip(b["class_names"], per["SAR"])) if per else ""
            lines.append(f"  {b['level']:>12g} {b['SAN']:>6} {b['SAN_fraction']:>9.3f} {b['SAR_overall']:>8.4f}  {cls}")
    return "\n".join(lines)
