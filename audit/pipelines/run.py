"""``audit run``: config -> artifacts -> source -> campaign (here or on Ray) -> attacks, scan arm -> reports."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

from audit.artifact import AuditedModel, open_artifact
from audit.campaign.noise import NoiseSpec
from audit.campaign.ray import run_on_ray
from audit.campaign.run import MAX_RUN_INFERENCES, CampaignStats, RunSize, run_campaign
from audit.config import AuditConfig
from audit.data import Source, open_source
from audit.errors import ConfigError
from audit.gate import evaluate, load_policy
from audit.io import write_json
from audit.pipelines.attack import plan_attacks
from audit.pipelines.scan_arm import phantom_scanner_arm, scan_arm
from audit.report import attach_dicom, build_report, render_report, write_cases, write_junit, write_nps_figure
from audit.report.build import PathStyle, attach_gate
from audit.track import log_audit, require_mlflow
from models.cache import cache_root
from models.shipped import ARTIFACTS


def open_models(config: AuditConfig) -> list[AuditedModel]:
    return [open_artifact(entry, config.head, config.preprocess) for entry in config.models]


def path_style(out: Path, *, base: Path | None = None, root: Path | None = None, cache: Path | None = None) -> PathStyle:
    """How the reports of ``out`` write paths (``audit.report.build.PathStyle``): ``base``, the config's folder;
    ``root``, an output folder ``out`` sits in; ``cache``, the model cache when not the default one."""
    return PathStyle(Path(out), base, (("<model cache>", Path(cache) if cache else cache_root()),
                                       ("<shipped models>", ARTIFACTS)), root)


def write_reports(out: Path, models: Sequence[AuditedModel], source: Source, noise: NoiseSpec, stats: CampaignStats, *,
                  worst: int = 6, dicom: bool = False, pacs: Any = None, attacks: Sequence[dict] = (),
                  scan_arm: Sequence[dict] | None = None, build: dict | None = None,
                  policy: Path | None = None, paths: PathStyle | None = None, noise_model: Any = None) -> dict[str, Any]:
    """report.json, the figure files, report.html and junit.xml of a finished campaign; with ``policy`` the gate's
    verdict on the report heads it; ``paths``: how report.json writes paths (default ``path_style(out)``);
    ``noise_model``: the campaign's ``noise.noise_model(source)`` when the caller has it (in reduce mode building it
    reads every scan's dose and estimates its noise: done once per run, not once per consumer)."""
    paths = paths or path_style(out)
    rules = load_policy(policy) if policy is not None else None
    noise = noise.resolved(source)
    if noise_model is None:
        noise_model = noise.noise_model(source)
    report = build_report(out, models, source, noise, stats.to_dict(), worst=worst, attacks=attacks, scan_arm=scan_arm,
                          build=build, noise_model=noise_model, paths=paths)
    if rules is not None:
        attach_gate(report, paths.show(policy), evaluate(report, rules))
    windows = {m.name: m.preprocess.window for m in models}
    attach_dicom(report, write_cases(out, report, source, noise, windows, dicom=dicom, pacs=pacs, noise_model=noise_model),
                 paths)
    write_nps_figure(out, noise, source.shape, source.spacing)
    write_json(out / "report.json", report)
    render_report(out)
    write_junit(out / "junit.xml", report, list(source.ids))
    return report


def size_check(limit: int | None, yes: bool, log: Callable[[str], None] | None = None) -> Callable[[RunSize], None]:
    """What ``audit run`` does with a fresh campaign's size: ``log`` it, and refuse it above ``limit`` inferences
    (``MAX_RUN_INFERENCES`` by default; None: no limit) unless ``yes``."""

    def check(size: RunSize) -> None:
        if log is not None:
            log(f"run size: {size.describe()}")
        if limit is not None and size.inferences > limit and not yes:
            raise ConfigError(f"run size: {size.inferences:,} inferences ({size.dims}) is above "
                              f"the limit of {limit:,} (--max-inferences); pass --yes to run it")

    return check


def run_config(config: AuditConfig, out: Path, *, resume: bool = False, progress: bool | None = None,
               ray: str | None = None, ray_actors: int | None = None, ray_gpus: float = 0.0,
               policy: Path | None = None, yes: bool = False, max_inferences: int | None = MAX_RUN_INFERENCES,
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the campaign (in this process, or over Ray with ``ray`` = "auto" or an address) and write the reports;
    ``policy``: a gate policy whose verdict heads the report (checked before anything runs). A fresh campaign's
    size is ``log``-ged before it starts and refused above ``max_inferences`` unless ``yes``."""
    if policy is not None:
        load_policy(policy)
    if config.track is not None:
        require_mlflow()
    models = open_models(config)
    source = open_source(config.data, pacs=config.pacs)
    options = config.run if progress is None else dataclasses.replace(config.run, progress=progress)
    plans = []
    if config.attack is not None:  # twins and attack parameters checked before the campaign, not after it
        try:
            plans = [plan_attacks(config.attack, m, source) for m in models]
        except ConfigError as exc:  # an attack parameter the [attack] table got wrong
            raise ConfigError(f"{config.path}: {exc}" if config.path else str(exc)) from None
    check = size_check(max_inferences, yes, log)
    noise_model = config.noise.resolved(source).noise_model(source)  # once, for the campaign and its reports
    if ray is not None:
        if not (Path(out) / "campaign.json").exists():  # the size of a fresh run, before any actor starts (no probe)
            check(RunSize(len(source), len(config.noise.levels), config.noise.draws, len(models)))
        stats = run_on_ray(config, out, address=ray, actors=ray_actors, num_gpus=ray_gpus, resume=resume)
    else:
        stats = run_campaign(models, source, config.noise, out, options, resume=resume, check_size=check,
                             noise_model=noise_model)
    arm = None
    if config.scan_arm is not None:
        a = config.scan_arm
        phantoms = phantom_scanner_arm(a.mas, a.scans, a.seed, noise=config.noise)  # the audit's dose law
        arm = [dict(scan_arm(m, phantoms, draws=a.draws, seed=a.seed, patch_mm=a.patch_mm, overlap=a.overlap), mas=a.mas)
               for m in models]
    hu = plans[0].load() if plans else None  # the same samples for every model: read once
    attacks = [block for plan in plans
               for block in plan.run(hu, progress=options.progress, prefix=f"{plan.model.name}: " if len(models) > 1 else "")]
    report = write_reports(out, models, source, config.noise, stats, worst=config.worst, dicom=config.dicom_cases,
                           pacs=config.pacs, attacks=attacks, scan_arm=arm, policy=policy,
                           paths=path_style(out, base=config.base), noise_model=noise_model)
    if config.track is not None:  # [track]: the finished audit as one MLflow run
        run_id = log_audit(config.track, report, [Path(out) / "report.json", Path(out) / "report.html"])
        if log is not None:
            log(f"mlflow: logged run {run_id} to experiment {config.track.experiment!r}")
    return report


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
