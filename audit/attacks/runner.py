"""From a validated attack config to report.json/HTML: open the artifact, build the twin, attack, let it decide."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from audit.attacks.base import Target, run_attack
from audit.attacks.config import AttackConfig
from audit.attacks.report import SCHEMA, attack_block, render_attack_page
from audit.campaign import AuditedModel


def open_model(config: AttackConfig) -> AuditedModel:
    from audit.engines import load_engine
    from audit.heads import head_from, preprocess_from

    engine = load_engine(config.model_path, "onnxruntime", **dict(config.engine_options))
    head = head_from(engine.metadata, config.head, str(config.model_path))
    prep = preprocess_from(engine.metadata, config.preprocess, str(config.model_path))
    return AuditedModel(config.model_name, engine, head, prep)


def open_module(config: AttackConfig) -> Any:
    if config.checkpoint is None:
        return None
    from models.build import load_checkpoint

    return load_checkpoint(str(config.net), config.variant, config.checkpoint)


def settings(config: AttackConfig, shape: tuple[int, ...], spacing: tuple[float, ...]) -> list[tuple[str, dict[str, Any]]]:
    """(label, parameters) of every run: one per eps in a list, one per noise level for nps_ascent."""
    params = dict(config.params)
    if config.attack == "nps_ascent":
        model = config.noise.dose_model(shape, spacing)
        return [(f"nps_ascent @ {lv:g} mAs", {**params, "nps": model.nps_at(lv), "spacing": spacing[-2:]})
                for lv in config.noise.levels]
    if isinstance(params.get("eps"), list):
        return [(f"{config.attack} eps={e:g}", {**params, "eps": e}) for e in params["eps"]]
    return [(config.attack, params)]


def run_attack_config(config: AttackConfig, out: Path, *, progress: bool | None = None) -> dict[str, Any]:
    from audit.atomic import atomic_path
    from audit.attacks import build_attack
    from audit.runner import open_source

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = open_model(config)
    source = open_source(dict(config.data), pacs=getattr(config, "pacs", None))
    hu = source.load(np.arange(len(source)))
    target = Target.from_model(model, open_module(config), parity_hu=hu[:8])
    runs = []
    for label, params in settings(config, tuple(source.shape), tuple(source.spacing)):
        attack = build_attack(config.attack, target, **_extra(config, params, source))
        result = run_attack(attack, model, hu, seed=config.seed, batch_size=config.batch_size, ids=source.ids,
                            keep=config.keep, progress=progress)
        explanations = []
        if config.explain and result.examples:
            from audit.attacks.explain import explain_examples

            explanations = explain_examples(target, result)
        runs.append(attack_block(result, label=label, class_names=model.head.labels_names, explanations=explanations))
        if getattr(attack, "extra_report", None):
            runs[-1]["extra"] = attack.extra_report(result, source)
    report = {"schema": SCHEMA, "model": model.describe(), "twin": target.twin.describe(),
              "data": {"name": getattr(source, "name", str(config.data.get("manifest", ""))), "n": len(source),
                       "shape": list(source.shape), "spacing": list(source.spacing)},
              "noise": config.noise.to_dict() if config.noise is not None else None, "runs": runs}
    with atomic_path(out / "attack.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1, allow_nan=True))
    with atomic_path(out / "attack.html") as tmp:
        tmp.write_text(render_attack_page(report), encoding="utf-8")
    return report


def _extra(config: AttackConfig, params: dict[str, Any], source: Any) -> dict[str, Any]:
    """Attack parameters that come from the data rather than the config (e.g. the labels an AUC needs)."""
    from audit.attacks import ATTACKS

    cls = ATTACKS[config.attack]
    needs = getattr(cls, "needs", ())
    extra = dict(params)
    if "labels" in needs and getattr(source, "labels", None) is not None:
        extra["labels"] = np.asarray(source.labels)
    if "spacing" in needs and "spacing" not in extra:
        extra["spacing"] = tuple(source.spacing)
    return extra


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for b in report["runs"]:
        s = b["summary"]
        lines.append(f"{b['label']}: torch {100 * s['torch_success_rate']:.1f}%, deployed "
                     f"{100 * s['deployed_success_rate']:.1f}% (SAN {s['san']}/{s['n']}) - {s['verdict']}")
    return lines
