"""Assemble ``report.json`` (schema ``audit-report/1``) from the records of a campaign.

The HTML report and the gate read only this file. Per model and level it holds
K, N, SAN, the SAN fraction, per-sample SAR, per-class SAR, the CMR with its
class order, the exceedance curve and confidence intervals (from
``audit.metrics.robustness_summary``); plus clean performance, the worst
cases with the keys that regenerate their noise, the spread over several
models (study 2) and timing.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from audit.campaign import records
from audit.campaign.noise import NoiseSpec
from audit.io import plain
from audit.metrics import (
    accuracy,
    binary_performance,
    delong_test,
    macro_f1,
    paired_sar_test,
    precision_recall_f1,
    robustness_summary,
    two_proportion_z_test,
)
from audit.metrics.dose_response import fit_critical_dose
from kernels import grid_variance

SCHEMA = "audit-report/1"
WORST_CASES = 6


class Audited(Protocol):
    """What the report needs of an audited model (``audit.artifact.Audited``): its name, head and description."""

    name: str
    head: Any

    def describe(self) -> dict[str, Any]: ...


def clean_performance(model: Audited, clean: records.CleanRecords) -> dict[str, Any]:
    known = clean.true_labels >= 0
    out: dict[str, Any] = {"N_labelled": int(known.sum()), "class_counts_predicted": np.bincount(
        clean.labels[clean.labels >= 0], minlength=max(model.head.n_classes, 1)).tolist()}
    if not known.any():
        return out
    y, pred, score = clean.true_labels[known], clean.labels[known], clean.scores[known]
    task = model.head.task
    try:
        if task == "binary":
            out.update(binary_performance(y, score, model.head.threshold))
        elif task in ("multiclass", "rating"):
            c = model.head.n_classes
            yy = y if task == "multiclass" else np.clip(y, 0, c - 1)
            out["accuracy"] = accuracy(yy, pred)
            out["macro_f1"] = macro_f1(yy, pred, c)
            per = precision_recall_f1(yy, pred, c)
            out["per_class"] = {name: {"precision": per.precision[i], "recall": per.recall[i], "f1": per.f1[i]}
                                for i, name in enumerate(model.head.labels_names)}
    except ValueError as exc:  # e.g. one class only in the labelled set
        out["note"] = str(exc)
    return plain(out)


def level_block(model: Audited, clean: records.CleanRecords, rec: records.LevelRecords, *,
                confidence: float = 0.95) -> dict[str, Any]:
    """The report block of one model at one level; ``confidence`` sets every interval (the fast gate narrows it)."""
    head = model.head
    if head.n_classes:
        summary = robustness_summary(clean.labels, rec.labels, head.n_classes, head.labels_names, confidence=confidence).to_dict()
    else:  # regression / segmentation: a flip is defined per draw; no classes, no CMR
        flips = rec.flipped.astype(np.int64)
        summary = robustness_summary(np.zeros(len(flips), np.int64), flips, 2, ("unchanged", "flipped"),
                                     confidence=confidence).to_dict()
        for key in ("per_class", "CMR"):
            summary.pop(key, None)
        if rec.dice is not None:
            summary["dice_mean"] = float(np.nanmean(rec.dice))
    summary["level"] = rec.level
    if head.n_classes:  # whose SAR_i is whose: the gate's paired per-class comparison needs it
        summary["per_sample"]["clean_label"] = clean.labels.tolist()
    known = clean.true_labels >= 0
    if head.task == "binary" and known.any() and len(np.unique(clean.true_labels[known])) == 2:
        # Clean vs noisy AUC on the same cases (draw k = 0 of each sample), DeLong's test for correlated AUCs.
        t = delong_test(clean.true_labels[known], clean.scores[known], rec.scores[known, 0])
        summary["auc"] = {"clean": t.auc_a, "noisy_draw0": t.auc_b, "z": t.z, "p_value": t.p_value, "test": "DeLong"}
    return summary


def worst_cases(rec_by_level: dict[float, records.LevelRecords], clean: records.CleanRecords, noise: NoiseSpec,
                ids: Sequence[str], limit: int) -> list[dict]:
    """The samples that flip most at the lowest dose (or largest stress), with one flipping draw's key."""
    levels = sorted(rec_by_level, reverse=noise.kind != "nps")
    cases: list[dict] = []
    for level in levels:
        rec = rec_by_level[level]
        n_i = rec.flipped.sum(axis=1)
        for i in np.argsort(-n_i, kind="stable"):
            if n_i[i] == 0 or len(cases) >= limit:
                break
            if any(c["sample"] == int(i) for c in cases):
                continue
            k = int(np.argmax(rec.flipped[i]))
            cases.append({"sample": int(i), "id": ids[i], "level": level, "k": k, "SAR": float(n_i[i] / rec.flipped.shape[1]),
                          "clean_label": int(clean.labels[i]), "clean_score": float(clean.scores[i]),
                          "noisy_label": int(rec.labels[i, k]), "noisy_score": float(rec.scores[i, k]),
                          "key": noise.key(int(i), level, k)})
        if len(cases) >= limit:
            break
    return cases


def spread(model_blocks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Study 2's spread over several models: mean and std of CMR entries, models with any flip, per level."""
    if len(model_blocks) < 2:
        return None
    out = []
    for j, level in enumerate(b["level"] for b in model_blocks[0]["levels"]):
        blocks = [m["levels"][j] for m in model_blocks]
        entry: dict[str, Any] = {"level": level, "models": len(blocks),
                                 "models_with_any_flip": int(sum(1 for b in blocks if b["SAN"] > 0)),
                                 "SAR_overall_mean": float(np.mean([b["SAR_overall"] for b in blocks])),
                                 "SAR_overall_std": float(np.std([b["SAR_overall"] for b in blocks], ddof=1))}
        if all("CMR" in b for b in blocks):
            mats = np.array([[[np.nan if v is None else v for v in row] for row in b["CMR"]["matrix"]] for b in blocks])
            entry["CMR_mean"] = plain(np.nanmean(mats, axis=0))
            entry["CMR_std"] = plain(np.nanstd(mats, axis=0, ddof=1))
        out.append(entry)
    return {"per_level": out}


MAX_COMPARED_MODELS = 4


def compare_models(a: Audited, b: Audited, clean_a: records.CleanRecords, clean_b: records.CleanRecords,
                   levels_a: dict, levels_b: dict) -> dict[str, Any]:
    """Decision-level equivalence of two artifacts of one model on the same draws.

    Per level: the agreement of their perturbed decisions, the CMR between them
    (rows: B's label, columns: A's label, over all perturbed inferences), and a
    paired, cluster-aware test of their SARs (``audit.metrics.paired_sar_test``:
    sign-flip permutation of the per-sample differences of flip counts; the
    sample is the unit, since the models share samples and keyed draws), overall
    and per class of A's clean label. Study 2's draw-level Z-test is kept beside
    it as ``study_z``, labelled: it treats the N x K draws as independent.
    """
    c = a.head.n_classes
    out: dict[str, Any] = {"a": a.name, "b": b.name, "clean_agreement": float(np.mean(clean_a.labels == clean_b.labels)),
                           "test": PAIRED_TEST, "per_level": []}
    known = clean_a.true_labels >= 0
    if a.head.task == b.head.task == "binary" and known.any() and len(np.unique(clean_a.true_labels[known])) == 2:
        t = delong_test(clean_a.true_labels[known], clean_a.scores[known], clean_b.scores[known])
        out["clean_auc"] = {"a": t.auc_a, "b": t.auc_b, "z": t.z, "p_value": t.p_value, "test": "DeLong"}
    for level in levels_a:
        ra, rb = levels_a[level], levels_b[level]
        entry: dict[str, Any] = {"level": level, "decision_agreement": float(np.mean(ra.labels == rb.labels)),
                                 "flip_agreement": float(np.mean(ra.flipped == rb.flipped))}
        entry["SAR"] = _paired(ra.flipped, rb.flipped)
        if c and a.head.n_classes == b.head.n_classes:
            counts = np.zeros((c, c))
            np.add.at(counts, (rb.labels.ravel(), ra.labels.ravel()), 1)
            with np.errstate(invalid="ignore"):
                entry["CMR_between"] = {"matrix": counts / counts.sum(axis=0, keepdims=True), "rows": f"{b.name} label",
                                        "columns": f"{a.name} label", "class_order": list(a.head.labels_names)}
            per_class = []
            for cls in range(c):
                members = clean_a.labels == cls
                if members.any():
                    per_class.append({"class": a.head.labels_names[cls], **_paired(ra.flipped[members], rb.flipped[members])})
            entry["per_class"] = per_class
        out["per_level"].append(entry)
    return out


PAIRED_TEST = ("paired sign-flip permutation test of per-sample SAR_i differences (samples are the unit: draws of "
               "one image are clustered and both models see the same keyed draws); CI: cluster-robust t")


def _paired(flips_a: np.ndarray, flips_b: np.ndarray) -> dict[str, Any]:
    """The paired test of two models' SAR on the same samples and draws, with the study's Z-test beside it."""
    t = paired_sar_test(flips_a, flips_b)
    n, k = flips_a.shape
    z = two_proportion_z_test(t.sar_a, n * k, t.sar_b, n * k)
    return {"a": t.sar_a, "b": t.sar_b, "difference": t.difference, "ci": [t.ci_low, t.ci_high], "p_value": t.p_value,
            "samples": t.n_samples, "discordant_samples": t.n_discordant, "method": t.method,
            "rejects_equality_95": bool(t.rejects(0.05)),
            "study_z": {"z": z.z, "p_value": z.p_value, "note": "study 2's formula; treats draws as independent"}}


def build_report(out: Path, models: Sequence[Audited], source: Any, noise: NoiseSpec, timing: dict[str, Any],
                 *, worst: int = WORST_CASES, attacks: Sequence[dict[str, Any]] = (),
                 scan_arm: Sequence[dict[str, Any]] | None = None, build: dict[str, Any] | None = None,
                 noise_model: Any = None) -> dict[str, Any]:
    """report.json of a finished campaign from its records; ``timing``: ``CampaignStats.to_dict()``; ``attacks``:
    attack blocks (``audit.attacks.blocks``); ``scan_arm``: scan-arm blocks; ``build``: the reference build audited."""
    n, k = len(source), noise.draws
    model_blocks = []
    loaded = []
    for m in models:
        clean = records.load_clean(out, m.name, n)
        by_level = {lv: records.load_level(out, m.name, lv, noise.level_key(lv), n, k) for lv in noise.levels}
        loaded.append((m, clean, by_level))
        model_blocks.append({
            **m.describe(),
            "clean": clean_performance(m, clean),
            "levels": [level_block(m, clean, by_level[lv]) for lv in noise.levels],
            "worst_cases": worst_cases(by_level, clean, noise, source.ids, worst),
        })
    comparisons = []
    if 2 <= len(loaded) <= MAX_COMPARED_MODELS:
        for i in range(len(loaded)):
            for j in range(i + 1, len(loaded)):
                (ma, ca, la), (mb, cb, lb) = loaded[i], loaded[j]
                comparisons.append(compare_models(ma, mb, ca, cb, la, lb))
    labels = getattr(source, "labels", None)
    data = {"source": getattr(source, "name", "data"), "N": n, "shape": list(source.shape), "spacing_mm": list(source.spacing),
            "class_names": list(getattr(source, "class_names", ()) or ()),
            "true_label_counts": np.bincount(labels[labels >= 0]).tolist() if labels is not None and (labels >= 0).any() else None}
    report = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tool": provenance(),
        "data": data,
        "noise": noise.to_dict(),
        "models": model_blocks,
        "spread": spread(model_blocks),
        "comparisons": comparisons,
        "attacks": list(attacks),  # audit.attacks.blocks.attack_block of each attack run
        "timing": timing,
    }
    if noise.kind == "nps" and noise.mode == "reduce":  # per series: acquisition, acquired dose, the scan's own noise
        report["noise"]["reduction"] = (noise_model or noise.noise_model(source)).to_dict()
    if scan_arm:
        report["scan_arm"] = list(scan_arm)
    if build:
        report["build"] = build
    report["summary"] = summary(model_blocks, loaded, source, noise)
    return plain(report)


#: SAR targets of the critical dose (1% and 5%), after FDA's LCD-CT dose-reduction reporting.
CRITICAL_SAR = (0.01, 0.05)


def provenance() -> dict[str, Any]:
    """The tool and the library versions that produced a report."""
    versions = {}
    for name in ("ct-robustness-audit", "numpy", "scipy", "onnxruntime", "onnx", "torch", "pydicom"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"name": "ct-robustness-audit", "version": versions.pop("ct-robustness-audit"),
            "python": platform.python_version(), "libraries": versions}


def noise_sigma(noise: NoiseSpec, shape: Sequence[int], spacing: Sequence[float]) -> list[float | None]:
    """Pixel sigma (HU) of the noise each level adds on the data's grid (None where it depends on the image, as in
    dose reduction, where it depends on each scan's acquired dose: see ``noise.reduction``)."""
    if noise.kind == "nps" and noise.mode != "reduce":
        model = noise.dose_model(shape, spacing)
        grid = tuple(shape[-2:]), tuple(spacing[-2:])
        return [math.sqrt(grid_variance(model.nps_at(lv).on_grid(*grid), *grid)) for lv in noise.levels]
    if noise.kind == "gaussian":
        return [float(lv) for lv in noise.levels]
    if noise.kind == "uniform":
        return [float(lv) / math.sqrt(3.0) for lv in noise.levels]
    return [None for _ in noise.levels]


def summary(model_blocks: list[dict[str, Any]], loaded: list, source: Any, noise: NoiseSpec) -> dict[str, Any]:
    """The verdict-first block: what was audited, the noise, the headline per level and the critical dose."""
    spec = noise.to_dict()
    out: dict[str, Any] = {
        "verdict": None, "gate": None,
        "data": {"source": getattr(source, "name", "data"), "N": len(source), "shape": list(source.shape),
                 "spacing_mm": list(source.spacing)},
        "noise": {"kind": noise.kind, "mode": spec.get("mode", "add"), "preset": spec.get("preset"),
                  "level_unit": spec["level_unit"], "levels": list(noise.levels), "draws": noise.draws,
                  "sigma_hu": noise_sigma(noise, source.shape, source.spacing)},
        "models": [],
    }
    for block, (m, clean, by_level) in zip(model_blocks, loaded):
        entry: dict[str, Any] = {
            "name": block["name"], "sha256": block["engine"].get("sha256"), "engine": block["engine"].get("backend"),
            "per_level": [{"level": b["level"], "N": b["N"], "K": b["K"], "SAN": b["SAN"], "SAN_fraction": b["SAN_fraction"],
                           "SAN_fraction_ci": b["SAN_fraction_ci"], "SAR": b["SAR_overall"], "SAR_ci": b["SAR_overall_ci"]}
                          for b in block["levels"]],
            "critical_dose": None}
        if noise.kind == "nps" and len(noise.levels) >= 3:
            counts = np.stack([by_level[lv].flipped.sum(axis=1) for lv in noise.levels])
            fits = fit_critical_dose(np.asarray(noise.levels, float), counts, noise.draws, targets=CRITICAL_SAR)
            entry["critical_dose"] = [{"target": t, **f.to_dict()} for t, f in zip(CRITICAL_SAR, fits)]
        out["models"].append(entry)
    return out


def attach_gate(report: dict[str, Any], policy: str, outcomes: Sequence[Any]) -> None:
    """The gate's verdict on this report (``audit run --policy``): on the page, first."""
    report["summary"]["gate"] = {"policy": policy, "outcomes": [plain(dict(o.__dict__)) for o in outcomes]}
    report["summary"]["verdict"] = "pass" if all(o.passed for o in outcomes) else "fail"


def attach_dicom(report: dict[str, Any], links: dict[tuple[str, int], dict[str, Any]]) -> None:
    """Link each worst case to its derived DICOM series: ``links[(model name, sample)]`` (``audit.report.cases``)."""
    for model in report["models"]:
        for case in model["worst_cases"]:
            link = links.get((model["name"], case["sample"]))
            if link is not None:
                case["dicom"] = plain(link)


def check_report(report: dict[str, Any], atol: float = 1e-9) -> None:
    """Invariants every report must hold (CMR columns sum to 1, 1 - diag = SAR_c); AssertionError names the breach."""
    for model in report["models"]:
        for block in model["levels"]:
            if "CMR" not in block:
                continue
            cmr = np.array([[np.nan if v is None else v for v in row] for row in block["CMR"]["matrix"]], float)
            sar = np.array([np.nan if v is None else v for v in block["per_class"]["SAR"]], float)
            present = ~np.isnan(sar)
            if not np.allclose(cmr[:, present].sum(axis=0), 1.0, atol=atol):
                raise AssertionError(f"{model['name']} level {block['level']}: CMR columns do not sum to 1")
            if not np.allclose(1.0 - np.diag(cmr)[present], sar[present], atol=atol):
                raise AssertionError(f"{model['name']} level {block['level']}: 1 - diag(CMR) != SAR_c")
