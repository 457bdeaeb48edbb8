"""``audit attack`` and the attacks of ``audit run`` / ``audit retrain``: config -> artifact and twin -> attacks,
decided by the deployed engine -> report blocks (and ``attack.json`` / ``attack.html``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audit.artifact import AuditedModel, open_artifact
from audit.artifact.quantize import fp32_reference
from audit.attacks import ATTACKS, build_attack
from audit.attacks.base import Target, run_attack
from audit.attacks.blocks import SCHEMA, attack_block, reference_comparison
from audit.attacks.explain import explain_examples
from audit.campaign.noise import NoiseSpec
from audit.config import AttackConfig, AttackSpec
from audit.data import open_source
from audit.engines.threads import torch_threads_during
from audit.errors import ConfigError, EngineError, InputError
from audit.io import write_json, write_text
from audit.report.attacks import render_attack_page
from models.build import load_checkpoint


def open_module(config: AttackConfig) -> Any:
    """The user's torch module (a weights-only checkpoint of a registry net) to serve as the twin, or None."""
    if config.checkpoint is None:
        return None
    return load_checkpoint(str(config.net), config.variant, config.checkpoint)


def settings(spec: AttackSpec, shape: tuple[int, ...], spacing: tuple[float, ...]) -> list[tuple[str, dict[str, Any]]]:
    """(label, parameters) of every run: one per noise level for the attacks at a dose, one per eps in a list."""
    params = dict(spec.params)
    runs = [(spec.attack, params)]
    if ATTACKS[spec.attack].wants_nps(params):  # nps_ascent, nps_search, an ensemble with one of them
        noise = spec.noise if spec.noise is not None else NoiseSpec()  # the config's default for nps_ascent
        model = noise.dose_model(shape, spacing)
        runs = [(f"{spec.attack} @ {lv:g} mAs", {**params, "nps": model.nps_at(lv), "spacing": spacing[-2:]})
                for lv in noise.levels]
    if isinstance(params.get("eps"), list):
        runs = [(f"{label} eps={e:g}", {**p, "eps": e}) for label, p in runs for e in params["eps"]]
    return runs


@dataclass
class AttackPlan:
    """Every run of an ``AttackSpec`` against one model, built (twin converted, parameters checked) before any
    work starts, so a bad parameter or an unconvertible model fails in seconds, not after a campaign.
    ``reference``: the FP32 original of a quantised model (``fp32_reference``); each block then compares the
    two engines' decisions, clean and on the attacked inputs (``reference``); ``reference_info`` says what was
    found (or why there is no comparison)."""

    spec: AttackSpec
    model: AuditedModel
    source: Any
    target: Target
    n: int
    runs: list[tuple[str, Any]]
    reference: AuditedModel | None = None
    reference_info: dict[str, Any] | None = None

    def load(self) -> np.ndarray:
        """The attacked samples (the first ``n`` of the source), in HU; load once and share between plans."""
        return self.source.load(np.arange(self.n))

    def first_result(self, hu: np.ndarray, ids: list[str], *, seed_offset: int = 0) -> Any:
        """The raw ``AttackResult`` of the first run on ``hu``, keeping the attacked inputs (what retraining adds)."""
        _, attack = self.runs[0]
        with torch_threads_during(shared=False):
            return run_attack(attack, self.model, hu, seed=self.spec.seed + seed_offset,
                              batch_size=self.spec.batch_size, ids=ids, keep=0, progress=False, return_inputs=True)

    def run(self, hu: np.ndarray | None = None, *, progress: bool | None = None, prefix: str = "") -> list[dict[str, Any]]:
        """The report blocks: what ``attack.json`` lists under ``runs`` and ``report.json`` under ``attacks``.
        ``hu``: the samples ``load`` returns (loaded here if not given)."""
        spec, blocks = self.spec, []
        hu = self.load() if hu is None else hu
        ids = list(self.source.ids)[: self.n]
        for label, attack in self.runs:
            with torch_threads_during(shared=False):  # the twin's autograd: torch's default collapses on few cores
                result = run_attack(attack, self.model, hu, seed=spec.seed, batch_size=spec.batch_size, ids=ids,
                                    keep=spec.keep, progress=progress, return_inputs=self.reference is not None)
            explanations = []
            if spec.explain and result.examples and self.target.twin is not None:  # Grad-CAM needs the twin
                explanations = explain_examples(self.target, result)
            names = self.model.head.labels_names
            reference = self.reference_info or None
            if self.reference is not None:
                reference = reference_comparison(result, self.model, self.reference, hu, info=self.reference_info,
                                                 class_names=names)
            block = attack_block(result, label=prefix + label, class_names=names, explanations=explanations,
                                 reference=reference)
            block["model"], block["twin"] = self.model.name, self.target.describe()
            if getattr(attack, "extra_report", None):
                block["extra"] = attack.extra_report(result, self.source)
            blocks.append(block)
        return blocks


def plan_attacks(spec: AttackSpec, model: AuditedModel, source: Any, *, module: Any = None) -> AttackPlan:
    """The twin (``module`` or onnx2torch, parity-checked on the first 8 samples) and every attack of ``spec``,
    ready to run; the samples themselves are read only when it runs. Black-box attacks need no twin: none is
    built for them (an unconvertible graph can still be attacked), and an ensemble whose twin cannot be built
    runs its black-box members only. Detection models are refused in one line: every attack here judges a
    per-image decision, and a detection flip is lesion-level (``audit.artifact.heads``)."""
    if model.head.task == "detection":
        raise ConfigError(f"attack: model '{model.name}' is a detection model; attacks judge per-image decisions, "
                          "not lesion-level flips (its noise audit runs without [attack])")
    model.check_input(source)
    n = len(source) if spec.samples is None else min(spec.samples, len(source))
    cls = ATTACKS[spec.attack]
    if cls.wants_twin(dict(spec.params)):
        try:
            target = Target.from_model(model, module, parity_hu=source.load(np.arange(min(n, 8))))
        except EngineError as exc:
            if not getattr(cls, "twin_optional", False):
                raise
            target = Target.deployed(model, reason=str(exc))
    else:
        target = Target.deployed(model)
    runs = [(label, build_attack(spec.attack, target, **_extra(spec, params, source, n)))
            for label, params in settings(spec, tuple(source.shape), tuple(source.spacing))]
    reference, info = fp32_reference(model)  # a quantised artifact: compare its decisions with its FP32 original's
    return AttackPlan(spec, model, source, target, n, runs, reference, info)


def run_attack_config(config: AttackConfig, out: Path, *, progress: bool | None = None) -> dict[str, Any]:
    """Every attack of ``config`` on its model; ``attack.json`` and ``attack.html`` in ``out``. The data pass the
    same first pass as ``audit run`` (every row readable, finite, right rank, shape and modality) and the attacks
    are planned before ``out`` is created, so a bad input leaves nothing behind."""
    out = Path(out)
    model = open_artifact(config.model, config.head, config.preprocess)
    source = open_source(config.data, pacs=config.pacs)
    preflight = getattr(source, "preflight", None)
    if preflight is not None:
        preflight()
    plan = plan_attacks(config.spec, model, source, module=open_module(config))
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; --out must be a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot write output there ({exc.strerror or exc})") from None
    runs = plan.run(progress=progress)
    spec = config.spec
    report = {"schema": SCHEMA, "model": model.describe(), "twin": plan.target.describe(),
              "data": {"name": source.name, "n": len(source),
                       "shape": list(source.shape), "spacing": list(source.spacing)},
              "noise": spec.noise.to_dict() if spec.noise is not None else None, "runs": runs}
    write_json(out / "attack.json", report)
    write_text(out / "attack.html", render_attack_page(report))
    return report


def _extra(spec: AttackSpec, params: dict[str, Any], source: Any, n: int) -> dict[str, Any]:
    """Attack parameters that come from the data rather than the config (e.g. the labels an AUC needs)."""
    cls = ATTACKS[spec.attack]
    needs = getattr(cls, "needs", ())
    extra = dict(params)
    if "labels" in needs and getattr(source, "labels", None) is not None:
        extra["labels"] = np.asarray(source.labels)[:n]
    if "spacing" in needs and "spacing" not in extra:
        extra["spacing"] = tuple(source.spacing)
    return extra


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for b in report["runs"]:
        s = b["summary"]
        lines.append(f"{b['label']}: torch {100 * s['torch_success_rate']:.1f}%, deployed "
                     f"{100 * s['deployed_success_rate']:.1f}% (SAN {s['san']}/{s['n']}) - {s['verdict']}")
        ref = b.get("reference")
        if ref:
            lines.append(f"  vs {ref['reference']}: {ref['verdict']}" if "verdict" in ref
                         else f"  no FP32 comparison: {ref.get('reason')}")
        o = s.get("ood")  # a model with an OOD output: the detector's AUROC of clean against attacked inputs
        if o and o.get("auroc") is None:
            lines.append(f"{b['label']}: OOD AUROC undefined ({o.get('note', '')})")
        elif o:
            won = (o.get("successful") or {}).get("auroc")
            lo, hi = (f"{v:.3f}" if v is not None else "-" for v in o["ci"])
            lines.append(f"{b['label']}: OOD AUROC clean vs attacked {o['auroc']:.3f} [{lo}, {hi}]"
                         + (f", successful candidates only {won:.3f}" if won is not None else ""))
    return lines
