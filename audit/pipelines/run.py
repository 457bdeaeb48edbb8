"""``audit run``: config -> artifacts -> source -> campaign (here or on Ray) -> attacks, scan arm -> reports."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from audit.artifact import AuditedModel, open_artifact
from audit.campaign.noise import NoiseSpec
from audit.campaign.ray import run_on_ray
from audit.campaign.run import CampaignStats, run_campaign
from audit.config import AuditConfig
from audit.data import Source, open_source
from audit.errors import ConfigError
from audit.gate import evaluate, load_policy
from audit.io import write_json
from audit.pipelines.attack import plan_attacks
from audit.pipelines.scan_arm import phantom_scanner_arm, scan_arm
from audit.report import attach_dicom, build_report, render_report, write_cases, write_junit, write_nps_figure
from audit.report.build import attach_gate


def open_models(config: AuditConfig) -> list[AuditedModel]:
    return [open_artifact(entry, config.head, config.preprocess) for entry in config.models]


def write_reports(out: Path, models: Sequence[AuditedModel], source: Source, noise: NoiseSpec, stats: CampaignStats, *,
                  worst: int = 6, dicom: bool = False, pacs: Any = None, attacks: Sequence[dict] = (),
                  scan_arm: Sequence[dict] | None = None, build: dict | None = None,
                  policy: Path | None = None) -> dict[str, Any]:
    """report.json, the figure files, report.html and junit.xml of a finished campaign; with ``policy`` the gate's
    verdict on the report heads it."""
    rules = load_policy(policy) if policy is not None else None
    noise = noise.resolved(source)
    noise_model = noise.noise_model(source)  # once: in reduce mode it reads every scan's dose and estimates its noise
    report = build_report(out, models, source, noise, stats.to_dict(), worst=worst, attacks=attacks, scan_arm=scan_arm,
                          build=build, noise_model=noise_model)
    if rules is not None:
        attach_gate(report, str(policy), evaluate(report, rules))
    windows = {m.name: m.preprocess.window for m in models}
    attach_dicom(report, write_cases(out, report, source, noise, windows, dicom=dicom, pacs=pacs, noise_model=noise_model))
    write_nps_figure(out, noise, source.shape, source.spacing)
    write_json(out / "report.json", report)
    render_report(out)
    write_junit(out / "junit.xml", report, list(source.ids))
    return report


def run_config(config: AuditConfig, out: Path, *, resume: bool = False, progress: bool | None = None,
               ray: str | None = None, ray_actors: int | None = None, ray_gpus: float = 0.0,
               policy: Path | None = None) -> dict[str, Any]:
    """Run the campaign (in this process, or over Ray with ``ray`` = "auto" or an address) and write the reports;
    ``policy``: a gate policy whose verdict heads the report (checked before anything runs)."""
    if policy is not None:
        load_policy(policy)
    models = open_models(config)
    source = open_source(config.data, pacs=config.pacs)
    options = config.run if progress is None else dataclasses.replace(config.run, progress=progress)
    plans = []
    if config.attack is not None:  # twins and attack parameters checked before the campaign, not after it
        try:
            plans = [plan_attacks(config.attack, m, source) for m in models]
        except ConfigError as exc:  # an attack parameter the [attack] table got wrong
            raise ConfigError(f"{config.path}: {exc}" if config.path else str(exc)) from None
    if ray is not None:
        stats = run_on_ray(config, out, address=ray, actors=ray_actors, num_gpus=ray_gpus, resume=resume)
    else:
        stats = run_campaign(models, source, config.noise, out, options, resume=resume)
    arm = None
    if config.scan_arm is not None:
        a = config.scan_arm
        phantoms = phantom_scanner_arm(a.mas, a.scans, a.seed)
        arm = [dict(scan_arm(m, phantoms, draws=a.draws, seed=a.seed, patch_mm=a.patch_mm, overlap=a.overlap), mas=a.mas)
               for m in models]
    hu = plans[0].load() if plans else None  # the same samples for every model: read once
    attacks = [block for plan in plans
               for block in plan.run(hu, progress=options.progress, prefix=f"{plan.model.name}: " if len(models) > 1 else "")]
    return write_reports(out, models, source, config.noise, stats, worst=config.worst, dicom=config.dicom_cases,
                         pacs=config.pacs, attacks=attacks, scan_arm=arm, policy=policy)


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
