"""Assemble ``report.json`` (schema ``audit-report/1``) from the records of a campaign.

The HTML report and the gate read only this file. Per model and level it holds
K, N, SAN, the SAN fraction, per-sample SAR, per-class SAR, the CMR with its
class order, the exceedance curve and confidence intervals (from
``audit.metrics.robustness_summary``); plus clean performance, the worst
cases with the keys that regenerate their noise, the spread over several
models (study 2) and timing. A segmentation model's levels add ``segmentation``:
the per-draw Dice (and, when recorded, HD95 and contour error in mm and the
filled-contour Dice) as quantiles q05 ... q95 and mean, each with its unit.

Detection models (``head.task == "detection"``, study 3) add ``detection`` to the
clean block and to every level (``detection_block``). Definitions, exactly:

- a *scan* is one model input volume with its reference lesions; at a level, each
  (sample i, draw k) is one *scan replicate*: the level's FROC pools the N x K
  replicates (LUNA16 matching, ``audit.metrics.detection``), sensitivity over the
  N K lesion instances, FPs per scan = false positives / (N K); clean pools N scans;
- intervals are clustered by sample: a bootstrap resample draws N samples with
  replacement and takes all K replicates of each (``froc_bootstrap(clusters=)``);
  clean's resamples scans (one per sample, LUNA16); 1000 resamples, seed 0;
- ``cpm_drop`` = clean CPM - level CPM, paired: one resample of samples weights
  both FROCs (``froc_paired_difference``);
- ``lesion_sar`` = mean over included lesions of the fraction of the K draws whose
  found-at-threshold status differs from clean (the records' ``lesion_changed``);
  interval: design-effect Wilson with the sample as cluster (``lesion_sar``);
- ``missed_per_draw`` / ``gained_per_draw`` / ``new_fp_per_draw``: means over the
  N K draws of lesions lost / gained and new false positives at the operating
  threshold, per draw (units: lesions or false positives per scan replicate);
- ``confidence_histogram``: counts per 0.1 score bin of the best mark on each
  detected lesion (hits) and of the false positives, all scores (only when every
  score lies in [0, 1]). Classification heads get no score histogram: their
  score is not always a probability, and SAR already describes their flips.

Any model whose records carry an OOD score (head key ``ood_output``) adds ``ood``
per level: the AUROC of clean (in-distribution, N scores) against the level's
perturbed scores (N K), over the pairs of *different* samples (a draw is not
compared with its own image's clean score: that pair shares the image and would
bias the AUROC of independent inputs), with ``audit.metrics.ood.ood_auroc``'s
cluster bootstrap (cluster = sample: its clean score and its K draws together;
2000 resamples, seed 0), and ``paired``: the mean over samples of P(draw > its own
clean score). Non-finite scores (NaN, inf: a detector failing on an input) are
left out and counted (``non_finite``: clean and perturbed), so one bad input does
not stop the report; the block says so when a side has no finite score left.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from audit.campaign import records
from audit.campaign.noise import NoiseSpec
from audit.errors import InputError
from audit.io import plain, read_user_text
from audit.metrics import (
    accuracy,
    auc,
    binary_performance,
    delong_not_computable,
    delong_test,
    macro_f1,
    paired_sar_test,
    precision_recall_f1,
    robustness_summary,
    two_proportion_z_test,
)
from audit.metrics.contours import distribution
from audit.metrics.detection import (
    FP_RATES,
    ScanMatch,
    confidence_histograms,
    froc,
    froc_bootstrap,
    froc_paired_difference,
    interpolate_sensitivity,
    lesion_sar,
)
from audit.metrics.dose_response import fit_critical_dose
from audit.metrics.ood import sample_ood_auroc
from kernels import grid_variance

SCHEMA = "audit-report/1"
WORST_CASES = 6


class Audited(Protocol):
    """What the report needs of an audited model (``audit.artifact.Audited``): its name, head and description."""

    name: str
    head: Any

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PathStyle:
    """How report.json writes a path: it names no folder of this machine that the user did not give.

    - inside the output folder ``out`` (or ``root``, an output folder ``out`` sits in, as retraining's ``--out``
      holds ``audit/``): relative to ``out`` (``../...`` for what lies in ``root`` only), so the folder can move;
    - inside a named place (``places``: the model cache as ``<model cache>/...``, the package's shipped models as
      ``<shipped models>/...``): the place's name and the path inside it; the build folder's name carries the
      recipe hash and the engine block the file's sha256, so the artifact stays identified on any machine;
    - given in a config relative to its folder (``base``, where relative config paths start): as the config gave it;
    - any other path exactly as given (a relative command-line path stays relative, an absolute one absolute).
    """

    out: Path
    base: Path | None = None
    places: tuple[tuple[str, Path], ...] = ()
    root: Path | None = None

    def show(self, path: str | os.PathLike | None) -> str | None:
        """``path`` as report.json writes it (None stays None)."""
        if path is None:
            return None
        text = os.fspath(path)
        if not text or text.startswith("<"):  # empty, or already written this way (a stored report's value)
            return text
        p = Path(text)
        full = os.path.realpath(text)
        out = os.path.realpath(self.out)
        if _within(full, os.path.realpath(self.root or self.out)):
            return Path(os.path.relpath(full, out)).as_posix()
        for name, folder in self.places:
            if _within(full, os.path.realpath(folder)):
                rel = Path(os.path.relpath(full, os.path.realpath(folder))).as_posix()
                return name if rel == "." else f"{name}/{rel}"
        if self.base is not None and p.is_absolute() and _within(text, os.fspath(self.base)):
            return Path(os.path.relpath(text, self.base)).as_posix()  # base / relative, as the config gave it
        return text

    def text(self, message: str | None) -> str | None:
        """Free text (an error message kept in the report) with each absolute folder ``show`` knows rewritten."""
        if not message:
            return message
        prefixes: dict[str, str] = {}
        out = os.path.realpath(self.out)
        for folder in {f(g) for g in {self.out, self.root or self.out} for f in (os.path.abspath, os.path.realpath)}:
            rel = os.path.relpath(os.path.realpath(folder), out)
            prefixes[folder + os.sep] = "" if rel == "." else Path(rel).as_posix() + "/"
        for name, folder in self.places:
            for f in {os.path.abspath(folder), os.path.realpath(folder)}:
                prefixes.setdefault(f + os.sep, name + "/")
        if self.base is not None:
            prefixes.setdefault(os.fspath(self.base) + os.sep, "")
        for prefix in sorted(prefixes, key=len, reverse=True):  # the innermost folder first
            message = message.replace(prefix, prefixes[prefix])
        return message


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def relocate_paths(report: dict[str, Any], paths: PathStyle) -> dict[str, Any]:
    """Every path report.json holds, written as ``paths`` says (in place; returns ``report``)."""
    for model in report.get("models", ()):
        engine = model.get("engine") or {}
        for key in ("source", "path"):
            if isinstance(engine.get(key), str):
                engine[key] = paths.show(engine[key])
        for case in model.get("worst_cases", ()):
            _relocate_dicom(case.get("dicom"), paths)
    for block in (report.get("data"), (report.get("summary") or {}).get("data")):
        if block and isinstance(block.get("source"), str):
            block["source"] = paths.text(block["source"]) if not os.path.isabs(block["source"]) else paths.show(block["source"])
    noise = report.get("noise") or {}
    if noise.get("table"):
        noise["table"] = paths.show(noise["table"])
    if noise.get("phantom_series"):
        noise["phantom_series"] = [paths.show(p) for p in noise["phantom_series"]]
    if noise.get("reduction"):  # per series: the series' folder names it (keys and values)
        noise["reduction"] = _relocate_text(noise["reduction"], paths)
    for block in report.get("attacks", ()):
        attack = block.get("attack") or {}
        for key in ("generator", "ood"):
            if isinstance(attack.get(key), str):
                attack[key] = paths.show(attack[key])
        twin = block.get("twin") or {}
        if isinstance(twin.get("reason"), str):  # why no twin: the converter's message names the file
            twin["reason"] = paths.text(twin["reason"])
    build = report.get("build") or {}
    if isinstance(build.get("folder"), str):
        build["folder"] = paths.show(build["folder"])
    gate = (report.get("summary") or {}).get("gate") or {}
    if isinstance(gate.get("policy"), str):
        gate["policy"] = paths.show(gate["policy"])
    return report


def _relocate_dicom(link: dict[str, Any] | None, paths: PathStyle) -> None:
    for key in ("folder", "clean_dir", "noisy_dir"):
        if link and isinstance(link.get(key), str):
            link[key] = paths.show(link[key])


def _relocate_text(v: Any, paths: PathStyle) -> Any:
    if isinstance(v, dict):
        return {paths.text(k): _relocate_text(x, paths) for k, x in v.items()}
    if isinstance(v, list):
        return [_relocate_text(x, paths) for x in v]
    return paths.text(v) if isinstance(v, str) else v


def clean_performance(model: Audited, clean: records.CleanRecords, *, confidence: float = 0.95) -> dict[str, Any]:
    known = clean.true_labels >= 0
    out: dict[str, Any] = {"N_labelled": int(known.sum()), "class_counts_predicted": np.bincount(
        clean.labels[clean.labels >= 0], minlength=max(model.head.n_classes, 1)).tolist()}
    found = getattr(clean, "detection", None)
    if model.head.task == "detection":  # a detection label counts the marks shown: not a class
        out.pop("class_counts_predicted")
        if found is not None:
            out["detection"] = plain(detection_clean_block(model, found, confidence=confidence))
    if not known.any():
        return plain(out)
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
        if head.task == "segmentation":
            summary["segmentation"] = segmentation_block(rec)
    if head.task == "detection" and getattr(rec, "detection", None) is not None:
        summary["detection"] = detection_block(model, clean, rec, confidence=confidence)
    ood = ood_block(clean, rec, confidence=confidence)
    if ood is not None:
        summary["ood"] = ood
    summary["level"] = rec.level
    if head.n_classes:  # whose SAR_i is whose: the gate's paired per-class comparison needs it
        summary["per_sample"]["clean_label"] = clean.labels.tolist()
    known = clean.true_labels >= 0
    if head.task == "binary" and known.any() and len(np.unique(clean.true_labels[known])) == 2:
        # Clean vs noisy AUC on the same cases (draw k = 0 of each sample), DeLong's test for correlated AUCs.
        summary["auc"] = _delong(clean.true_labels[known], clean.scores[known], rec.scores[known, 0], "clean", "noisy_draw0")
    return summary


def segmentation_block(rec: records.LevelRecords) -> dict[str, Any]:
    """Distributions over the level's N x K draws of each recorded segmentation metric against the clean mask
    (``audit.metrics.contours.distribution``: q05 ... q95, mean, unit): ``dice`` always, ``hd95_mm``,
    ``contour_error_mm`` (mm) and ``filled_dice`` when the head computed them (a contour threshold or
    ``contour_metrics = true``)."""
    out: dict[str, Any] = {}
    for key, unit in (("dice", "1"), ("hd95_mm", "mm"), ("contour_error_mm", "mm"), ("filled_dice", "1")):
        values = getattr(rec, key)
        if values is not None:
            out[key] = distribution(values, unit)
    return out


#: FP rates (per scan) at which report.json samples each FROC curve: 1/8 to 8, four points per octave (LUNA16's
#: range; the seven CPM rates are among them). Sensitivity between the curve's points: LUNA16's interpolation.
FROC_GRID = tuple(2.0 ** (e / 4.0) for e in range(-12, 13))
#: Bootstrap resamples and seed of the FROC intervals (LUNA16's count) and of the OOD AUROC interval.
FROC_BOOT, OOD_BOOT, BOOT_SEED = 1000, 2000, 0
DETECTION_UNITS = {"fp_rates_per_scan": "false positives per scan", "sensitivity": "fraction of included lesions",
                   "cpm": "mean sensitivity at the seven FP rates", "lesion_sar": "fraction of lesion-draws",
                   "missed_per_draw": "lesions per scan replicate", "gained_per_draw": "lesions per scan replicate",
                   "new_fp_per_draw": "false positives per scan replicate", "threshold": "model score"}


def _froc_fields(matches: Sequence[ScanMatch], clusters: np.ndarray | None, confidence: float) -> dict[str, Any]:
    """CPM, sensitivity at each CPM rate and at 1 FP/scan with bootstrap CIs, the curve on ``FROC_GRID``, counts."""
    f = froc(matches, FP_RATES)
    ci = froc_bootstrap(matches, FP_RATES, confidence, n_boot=FROC_BOOT, seed=BOOT_SEED, clusters=clusters)
    one = FP_RATES.index(1.0)
    grid = interpolate_sensitivity(f.fps, f.sensitivity, FROC_GRID) if f.n_lesions else np.full(len(FROC_GRID), np.nan)
    return {"fp_rates_per_scan": list(FP_RATES), "cpm": f.cpm, "cpm_ci": [ci.cpm_low, ci.cpm_high],
            "sensitivity_at": f.sensitivity_at, "sensitivity_ci_low": ci.sensitivity_low,
            "sensitivity_ci_high": ci.sensitivity_high, "sensitivity_at_1fp": f.sensitivity_at[one],
            "sensitivity_at_1fp_ci": [ci.sensitivity_low[one], ci.sensitivity_high[one]],
            "froc": {"fps_per_scan": list(FROC_GRID), "sensitivity": grid},
            "lesion_draws": f.n_lesions, "detected_lesion_draws": f.n_detected, "false_positives": f.n_false_positives,
            "false_positives_per_scan": f.n_false_positives / f.n_scans,
            "interval": {"method": ci.to_dict()["method"], "confidence": ci.confidence, "n_boot": ci.n_boot,
                         "n_valid": ci.n_valid, "seed": ci.seed, "clusters": ci.n_clusters}}


def _operating_point(matches: Sequence[ScanMatch], threshold: float | None) -> dict[str, Any] | None:
    """Sensitivity and FPs per scan of the marks a reader is shown: scores >= the head's threshold."""
    if threshold is None:
        return None
    lesions = sum(m.n_lesions for m in matches)
    hits = sum(int(np.count_nonzero(m.hit_scores >= threshold)) for m in matches)
    fps = sum(int(np.count_nonzero(m.fp_scores >= threshold)) for m in matches)
    return {"threshold": float(threshold), "sensitivity": hits / lesions if lesions else None,
            "fps_per_scan": fps / len(matches)}


def _score_histogram(matches: Sequence[ScanMatch]) -> dict[str, Any] | None:
    """Counts per 0.1 bin of hit scores (best mark per detected lesion) and false-positive scores; None when a score
    lies outside [0, 1] (a logit, not a confidence)."""
    hits = np.concatenate([m.hit_scores for m in matches] or [np.zeros(0)])
    fps = np.concatenate([m.fp_scores for m in matches] or [np.zeros(0)])
    both = np.r_[hits, fps]
    if both.size and (both.min() < 0 or both.max() > 1):
        return None
    h = confidence_histograms({"hits": hits, "false_positives": fps}, bins=10)
    return {"edges": h.edges, "hits": h.counts["hits"], "false_positives": h.counts["false_positives"]}


def detection_clean_block(model: Audited, det: Any, *, confidence: float = 0.95) -> dict[str, Any]:
    """The clean FROC of a detection model: N scans, one per sample, scan bootstrap (module notes)."""
    out = {"scans": len(det.matches), "draws": 1, "lesions": int(sum(m.n_lesions for m in det.matches)),
           **_froc_fields(det.matches, None, confidence), "units": DETECTION_UNITS}
    out["operating_point"] = _operating_point(det.matches, getattr(model.head, "threshold", None))
    out["confidence_histogram"] = _score_histogram(det.matches)
    return out


def detection_block(model: Audited, clean: records.CleanRecords, rec: records.LevelRecords, *,
                    confidence: float = 0.95) -> dict[str, Any]:
    """A detection model at one level: FROC over the N x K scan replicates with sample-clustered CIs, the paired CPM
    drop from clean, lesion-level SAR, flips per draw, score histograms (definitions: module notes)."""
    d = rec.detection
    n = len(d.matches)
    k = len(d.matches[0]) if n else 0
    flat = [m for draws in d.matches for m in draws]
    samples = np.repeat(np.arange(n), k)
    out: dict[str, Any] = {"scans": n, "draws": k, "scan_replicates": n * k,
                           "lesions": int(sum(int(np.count_nonzero(~e)) for e in d.lesion_excluded)),
                           **_froc_fields(flat, samples, confidence), "units": DETECTION_UNITS}
    out["operating_point"] = _operating_point(flat, getattr(model.head, "threshold", None))
    sar = lesion_sar(d.lesion_changed, d.lesion_excluded, confidence)
    out.update(lesion_sar=sar.sar, lesion_sar_ci=[sar.low, sar.high],
               lesion_sar_detail={"changed": sar.changed, "lesion_draws": sar.n_lesions * sar.draws, "deff": sar.deff,
                                  "n_eff": sar.n_eff, "method": sar.to_dict()["method"]})
    for key in ("missed", "gained", "new_fp"):
        out[f"{key}_per_draw"] = float(np.mean(getattr(d, key))) if n * k else None
    cd = getattr(clean, "detection", None)
    if cd is not None:
        diff = froc_paired_difference(cd.matches, flat, samples, FP_RATES, confidence, n_boot=FROC_BOOT, seed=BOOT_SEED)
        out.update(cpm_clean=diff.cpm_reference, cpm_drop=diff.cpm_drop,
                   cpm_drop_ci=[diff.cpm_drop_low, diff.cpm_drop_high], cpm_drop_method=diff.to_dict()["method"])
    out["confidence_histogram"] = _score_histogram(flat)
    return plain(out)


def ood_block(clean: records.CleanRecords, rec: records.LevelRecords, *, confidence: float = 0.95) -> dict[str, Any] | None:
    """AUROC of the OOD score, clean (in-distribution) against this level's draws (OOD), cluster bootstrap over
    samples (``audit.metrics.ood.sample_ood_auroc``); None when the records carry no OOD score."""
    s_in, s_ood = getattr(clean, "ood_score", None), getattr(rec, "ood_score", None)
    if s_in is None or s_ood is None:
        return None
    a, non_finite = sample_ood_auroc(s_in, s_ood, confidence, n_boot=OOD_BOOT, seed=BOOT_SEED)
    info = {"in_distribution": "clean scans (one score per sample)", "ood": "perturbed draws at this level (K per sample)",
            "positive": "perturbed (higher score = OOD)", "non_finite": non_finite}
    if a is None:
        return plain({"auroc": None, "ci": [None, None], **info,
                      "note": "no finite OOD score on one side: the AUROC is undefined"})
    return plain({**a.to_dict(), **info})


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


def _delong(labels: np.ndarray, a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> dict[str, Any]:
    """Two AUCs on the same cases and DeLong's test between them; where a class has too few cases for the test
    (``delong_not_computable``), the AUCs with z and p None and a note saying why."""
    why = delong_not_computable(labels)
    if why is not None:
        return {name_a: auc(labels, a), name_b: auc(labels, b), "z": None, "p_value": None, "test": "DeLong",
                "note": f"not computable: {why}"}
    t = delong_test(labels, a, b)
    return {name_a: t.auc_a, name_b: t.auc_b, "z": t.z, "p_value": t.p_value, "test": "DeLong"}


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
        out["clean_auc"] = _delong(clean_a.true_labels[known], clean_a.scores[known], clean_b.scores[known], "a", "b")
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
                 noise_model: Any = None, paths: PathStyle | None = None) -> dict[str, Any]:
    """report.json of a finished campaign from its records; ``timing``: ``CampaignStats.to_dict()``; ``attacks``:
    attack blocks (``audit.attacks.blocks``); ``scan_arm``: scan-arm blocks; ``build``: the reference build audited;
    ``paths``: how its paths are written (default: relative to ``out`` where inside it, else as given)."""
    n, k = len(source), noise.draws
    model_blocks = []
    loaded = []
    for m in models:
        clean = records.load_clean(out, m.name, n)
        by_level = {lv: records.load_level(out, m.name, lv, noise.level_key(lv), n, k, clean) for lv in noise.levels}
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
    return relocate_paths(plain(report), paths or PathStyle(out))


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
    if noise.bank:  # a screening run's noise bank: marked where the headline is read (absent for fresh noise)
        out["noise"].update(bank=spec["bank"], bank_note=spec["bank_note"])
    for block, (m, clean, by_level) in zip(model_blocks, loaded):
        entry: dict[str, Any] = {
            "name": block["name"], "sha256": block["engine"].get("sha256"), "engine": block["engine"].get("backend"),
            "per_level": [{"level": b["level"], "N": b["N"], "K": b["K"], "SAN": b["SAN"], "SAN_fraction": b["SAN_fraction"],
                           "SAN_fraction_ci": b["SAN_fraction_ci"], "SAR": b["SAR_overall"], "SAR_ci": b["SAR_overall_ci"]}
                          for b in block["levels"]],
            "critical_dose": None}
        for e, b in zip(entry["per_level"], block["levels"]):  # a detection model's headline: its CPM at the dose
            if b.get("detection"):
                e.update(cpm=b["detection"]["cpm"], cpm_ci=b["detection"]["cpm_ci"])
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


def attach_dicom(report: dict[str, Any], links: dict[tuple[str, int], dict[str, Any]],
                 paths: PathStyle | None = None) -> None:
    """Link each worst case to its derived DICOM series: ``links[(model name, sample)]`` (``audit.report.cases``);
    its folders written as ``paths`` says."""
    for model in report["models"]:
        for case in model["worst_cases"]:
            link = links.get((model["name"], case["sample"]))
            if link is not None:
                case["dicom"] = plain(link)
                if paths is not None:
                    _relocate_dicom(case["dicom"], paths)


def check_report(report: dict[str, Any], atol: float = 1e-9) -> None:
    """Invariants every report must hold (CMR columns sum to 1, 1 - diag = SAR_c; a detection block's CPM is the mean
    of its sensitivities and its CPM drop is clean CPM - CPM); AssertionError names the breach."""
    for model in report["models"]:
        for block in [model["clean"], *model["levels"]]:
            det = block.get("detection")
            where = f"{model['name']} {'clean' if block is model['clean'] else 'level ' + str(block['level'])}"
            if det and det.get("cpm") is not None and abs(det["cpm"] - float(np.mean(det["sensitivity_at"]))) > atol:
                raise AssertionError(f"{where}: CPM is not the mean sensitivity at the FP rates")
            if det and None not in (det.get("cpm_drop"), det.get("cpm_clean"), det.get("cpm")) and \
                    abs(det["cpm_clean"] - det["cpm"] - det["cpm_drop"]) > atol:
                raise AssertionError(f"{where}: CPM drop != clean CPM - CPM")
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


# -- report.json read back (``audit report OUT``): what the page reads, checked with types before it is rendered

def _is_num(v: Any) -> bool:
    return (isinstance(v, float) and math.isfinite(v)) or (type(v) is int and abs(v) < 2**63)


def _is_count(v: Any) -> bool:
    return type(v) is int and 0 <= v < 2**63


def _list_of(ok: Any, *, none: bool = False, size: int | None = None, nonempty: bool = False) -> Any:
    return lambda v: (isinstance(v, list) and (size is None or len(v) == size) and (not nonempty or bool(v))
                      and all(ok(x) or (none and x is None) for x in v))


_STR = (lambda v: isinstance(v, str), "a string")
_NUM = (_is_num, "a number")
_COUNT = (_is_count, "a count (an integer >= 0)")
_INT = (lambda v: type(v) is int and abs(v) < 2**63, "an integer")
_TABLE = (lambda v: isinstance(v, dict), "a table")
_TABLES = (_list_of(lambda v: isinstance(v, dict)), "a list of tables")
_CI = (_list_of(_is_num, none=True, size=2), "[low, high] numbers")
_NUMS = (_list_of(_is_num, none=True), "a list of numbers")
_SOME_NUMS = (_list_of(_is_num, none=True, nonempty=True), "a non-empty list of numbers")
_FP_RATES = (_list_of(lambda v: _is_num(v) and v > 0, nonempty=True), "a non-empty list of FP rates > 0 (per scan)")
#: the detection block of clean and of a level (detection_block): every key the page and the gate read
_DETECTION_CLEAN = {
    "scans": (True, _COUNT), "draws": (True, _COUNT), "lesions": (True, _COUNT),
    "fp_rates_per_scan": (True, _FP_RATES),
    "cpm": (False, _NUM), "cpm_ci": (True, _CI), "sensitivity_at": (True, _SOME_NUMS),
    "sensitivity_ci_low": (True, _SOME_NUMS), "sensitivity_ci_high": (True, _SOME_NUMS),
    "sensitivity_at_1fp": (False, _NUM), "sensitivity_at_1fp_ci": (False, _CI),
    "froc": (True, {"fps_per_scan": (True, _FP_RATES), "sensitivity": (True, _SOME_NUMS)}),
    "lesion_draws": (False, _COUNT), "detected_lesion_draws": (False, _COUNT), "false_positives": (False, _COUNT),
    "false_positives_per_scan": (False, _NUM), "interval": (False, _TABLE), "units": (False, _TABLE),
    "operating_point": (False, {"threshold": (True, _NUM), "sensitivity": (False, _NUM), "fps_per_scan": (False, _NUM)}),
    "confidence_histogram": (False, {"edges": (True, (_list_of(_is_num, size=11), "11 bin edges (numbers)")),
                                     "hits": (True, (_list_of(_is_count), "a list of counts")),
                                     "false_positives": (True, (_list_of(_is_count), "a list of counts"))}),
}
_DETECTION_LEVEL = {
    **_DETECTION_CLEAN, "scan_replicates": (True, _COUNT),
    "lesion_sar": (False, _NUM), "lesion_sar_ci": (True, _CI), "lesion_sar_detail": (False, _TABLE),
    "missed_per_draw": (False, _NUM), "gained_per_draw": (False, _NUM), "new_fp_per_draw": (False, _NUM),
    "cpm_clean": (False, _NUM), "cpm_drop": (False, _NUM), "cpm_drop_ci": (False, _CI), "cpm_drop_method": (False, _STR),
}
#: key -> (required, check): a check is (predicate, what it expects), a nested dict (a table of these keys) or a
#: list [dict] (a list of such tables; [dict, "non-empty"]: at least one); an optional key may be absent or null.
_LEVEL_SPEC = {
    "level": (True, _NUM), "N": (True, _COUNT), "K": (True, _COUNT), "SAN": (True, _COUNT),
    "SAN_fraction": (True, _NUM), "SAN_fraction_ci": (True, _CI), "SAR_overall": (True, _NUM), "SAR_overall_ci": (True, _CI),
    "class_names": (False, (_list_of(lambda v: isinstance(v, str)), "a list of strings")),
    "per_sample": (True, _TABLE),
    "exceedance": (True, {"thresholds": (True, _NUMS), "fraction": (True, _NUMS)}),
    "per_class": (False, {"N_c": (True, (_list_of(_is_count), "a list of counts")), "SAR": (True, _NUMS),
                          "SAR_ci_low": (True, _NUMS), "SAR_ci_high": (True, _NUMS)}),
    "CMR": (False, {"matrix": (True, (_list_of(_list_of(_is_num, none=True)), "a matrix (list of rows of numbers)")),
                    "class_order": (True, (_list_of(lambda v: isinstance(v, str)), "a list of strings"))}),
    "auc": (False, _TABLE), "dice_mean": (False, _NUM),
    # detection: FROC over the level's scan replicates, lesion flips (see detection_block); OOD AUROC (ood_block)
    "detection": (False, _DETECTION_LEVEL),
    "ood": (False, {"auroc": (True, _NUM), "ci": (True, _CI), "n_in": (True, _COUNT), "n_ood": (True, _COUNT),
                    "n_clusters": (False, _COUNT), "confidence": (False, _NUM), "method": (False, _STR)}),
    # segmentation: per-draw metric distributions (see segmentation_block); a quantile may be null (infinite)
    "segmentation": (False, {key: (False, {"unit": (True, _STR), "n": (True, _COUNT), "n_infinite": (True, _COUNT),
                                           **{q: (False, _NUM) for q in ("q05", "q25", "q50", "q75", "q95", "mean")}})
                             for key in ("dice", "hd95_mm", "contour_error_mm", "filled_dice")}),
}
_CASE_SPEC = {
    "sample": (True, _COUNT), "id": (True, _STR), "level": (True, _NUM), "k": (True, _COUNT), "SAR": (True, _NUM),
    "noisy_label": (True, _INT), "noisy_score": (True, _NUM), "key": (True, (_list_of(_is_count), "a list of counts")),
    "clean_label": (True, _INT), "clean_score": (True, _NUM), "dicom": (False, _TABLE),
}
_CRITICAL_SPEC = {"target": (False, _NUM), "dose_mAs": (False, _NUM), "bound_mAs": (False, _NUM), "ci_mAs": (False, _CI),
                  "ci_open": (False, (_list_of(lambda v: isinstance(v, bool), size=2), "[bool, bool]")),
                  "status": (False, _STR), "note": (False, _STR), "fit": (False, _TABLE)}
_STRS = (_list_of(lambda v: isinstance(v, str)), "a list of strings")
#: an attack's OOD AUROC (``AttackResult.ood``): what ``report.attacks.render_ood`` reads, all of it optional
_ATTACK_OOD = {"auroc": (False, _NUM), "ci": (False, _CI), "paired": (False, _NUM), "n_in": (False, _COUNT),
               "n_ood": (False, _COUNT), "n_clusters": (False, _COUNT), "samples_attacked": (False, _COUNT),
               "mean_clean": (False, _NUM),
               "mean_attacked": (False, _NUM), "note": (False, _STR),
               "non_finite": (False, (lambda v: isinstance(v, dict) and all(_is_count(x) for x in v.values()),
                                      "a table of counts"))}
_ATTACK_SPEC = {"summary": (False, {"ood": (False, {**_ATTACK_OOD, "successful": (False, _ATTACK_OOD)})}),
                "extra": (False, {"members": (False, [{"ood": (False, _ATTACK_OOD)}])})}
_MODEL_SPEC = {
    "name": (True, (lambda v: isinstance(v, str) and bool(v), "a non-empty string")),
    "head": (True, {"task": (True, _STR), "threshold": (False, _NUM),
                    "class_names": (False, _STRS)}),
    "engine": (True, {"backend": (False, _STR), "sha256": (False, _STR), "path": (False, _STR), "source": (False, _STR),
                      "providers": (False, _STRS)}),
    "clean": (True, {"detection": (False, _DETECTION_CLEAN),
                     "class_counts_predicted": (False, (_list_of(_is_count), "a list of counts")),
                     "per_class": (False, (lambda v: isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()),
                                           "a table of tables (one per class)"))}),
    "preprocess": (False, {"hu_window": (False, _CI)}),
    "levels": (True, [_LEVEL_SPEC, "non-empty"]), "worst_cases": (True, [_CASE_SPEC]),
}
REPORT_SPEC = {
    "schema": (True, _STR), "created": (True, _STR),
    "tool": (False, {"name": (False, _STR), "version": (False, _STR), "python": (False, _STR)}),
    "timing": (True, {"inferences": (True, _COUNT), "wall_seconds": (True, _NUM), "images_per_second": (True, _NUM)}),
    "data": (True, {"source": (False, _STR), "N": (False, _COUNT), "shape": (False, (_list_of(_is_count), "a list of sizes")),
                    "spacing_mm": (False, _NUMS)}),
    "noise": (True, {"kind": (True, _STR), "level_unit": (True, _STR), "draws": (False, _COUNT),
                     "levels": (True, (_list_of(_is_num, nonempty=True), "a non-empty list of numbers")),
                     "bank": (False, _COUNT), "bank_note": (False, _STR)}),
    "models": (True, [_MODEL_SPEC, "non-empty"]),
    "summary": (False, {"noise": (False, {"kind": (True, _STR), "level_unit": (True, _STR), "draws": (False, _COUNT),
                                          "levels": (True, (_list_of(_is_num, nonempty=True), "a non-empty list of numbers")),
                                          "sigma_hu": (False, _NUMS), "mode": (False, _STR), "preset": (False, _STR),
                                          "bank": (False, _COUNT), "bank_note": (False, _STR)}),
                        "gate": (False, {"policy": (False, _STR), "outcomes": (False, _TABLES)}),
                        "data": (False, {"source": (False, _STR), "N": (False, _COUNT), "spacing_mm": (False, _NUMS),
                                         "shape": (False, (_list_of(_is_count), "a list of sizes"))}),
                        "models": (False, [{"name": (True, _STR), "critical_dose": (False, [_CRITICAL_SPEC]),
                                            "per_level": (True, [{"level": (True, _NUM), "N": (True, _COUNT),
                                                                  "K": (True, _COUNT), "SAN": (True, _COUNT),
                                                                  "SAN_fraction": (True, _NUM), "SAR": (True, _NUM),
                                                                  "SAN_fraction_ci": (False, _CI), "SAR_ci": (False, _CI),
                                                                  "cpm": (False, _NUM), "cpm_ci": (False, _CI)},
                                                                 "non-empty"])}])}),
    "spread": (False, _TABLE), "comparisons": (False, _TABLES), "attacks": (False, [_ATTACK_SPEC]), "scan_arm": (False, _TABLES),
}


def read_report(path: str | Path) -> dict[str, Any]:
    """report.json at ``path``, read (UTF-8 JSON) and checked by ``check_report_keys``: one ``InputError`` naming the
    file (and the key) when it is not a complete report."""
    try:
        report = json.loads(read_user_text(path, "report"))
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{path}: not valid JSON ({str(exc)[:120] or 'nested too deeply'})") from None
    check_report_keys(report, path)
    return report


def check_report_keys(report: Any, path: Path | str) -> None:
    """``report`` (report.json of ``path``, parsed) against ``REPORT_SPEC``: the schema tag, then every key the page
    reads from the report's core (models, levels, worst cases, noise, data, summary) with its type; the optional
    blocks (comparisons, attacks, scan arm) as lists of tables, and of the attacks the OOD tables the page reads. One ``InputError`` naming the file and key."""

    def fail(where: str, what: str, got: Any = None) -> None:
        text = repr(got)
        text = text if len(text) <= 60 else text[:57] + "..."
        raise InputError(f"{path}: {where}: {what}" + ("" if got is None else f", got {text}") +
                         " (not a complete report of audit run?)")

    def check(value: Any, spec: Any, where: str) -> None:
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                fail(where, "expected a table", value)
            for key, (required, sub) in spec.items():
                at = f"{where}.{key}" if where else key
                if value.get(key) is None:
                    if required:
                        fail(at, "missing")
                    continue
                check(value[key], sub, at)
        elif isinstance(spec, list):  # [table spec] or [table spec, "non-empty"]
            if not isinstance(value, list) or (len(spec) > 1 and not value):
                fail(where, f"expected a {'non-empty ' if len(spec) > 1 else ''}list of tables", value)
            for i, item in enumerate(value):
                check(item, spec[0], f"{where}[{i}]")
        elif not spec[0](value):
            fail(where, f"expected {spec[1]}", value)

    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise InputError(f"{path}: expected an audit report with \"schema\": \"{SCHEMA}\"")
    def detection_shapes(d: dict[str, Any] | None, w: str) -> None:
        if d is None:
            return
        r = len(d["fp_rates_per_scan"])
        for key in ("sensitivity_at", "sensitivity_ci_low", "sensitivity_ci_high"):
            if len(d[key]) != r:
                fail(f"{w}.{key}", f"expected {r} values (one per FP rate)", d[key])
        if len(d["froc"]["sensitivity"]) != len(d["froc"]["fps_per_scan"]):
            fail(f"{w}.froc.sensitivity", f"expected {len(d['froc']['fps_per_scan'])} values (one per FP rate)",
                 d["froc"]["sensitivity"])
        h = d.get("confidence_histogram")
        for key in ("hits", "false_positives") if h else ():
            if len(h[key]) != len(h["edges"]) - 1:
                fail(f"{w}.confidence_histogram.{key}", f"expected {len(h['edges']) - 1} counts (one per bin)", h[key])

    check(report, REPORT_SPEC, "")
    for i, model in enumerate(report["models"]):  # shapes that must agree: the page and its figures index by them
        first = model["levels"][0]
        detection_shapes(model["clean"].get("detection"), f"models[{i}].clean.detection")
        for j, b in enumerate(model["levels"]):
            w = f"models[{i}].levels[{j}]"
            detection_shapes(b.get("detection"), f"{w}.detection")
            names = b.get("class_names") or []
            if b["SAN"] > b["N"]:
                fail(f"{w}.SAN", f"expected at most N = {b['N']}", b["SAN"])
            n_flips = b["per_sample"].get("n_flips")
            if not (_list_of(_is_count)(n_flips) and len(n_flips) == b["N"]):
                fail(f"{w}.per_sample.n_flips", f"expected {b['N']} flip counts", n_flips)
            exc = b["exceedance"]
            if not exc["thresholds"] or len(exc["fraction"]) != len(exc["thresholds"]):
                fail(f"{w}.exceedance", "expected as many fractions as thresholds (at least one)", exc)
            for key in ("per_class", "CMR"):
                if (key in b) != (key in first):
                    fail(f"{w}.{key}", f"expected in every level or in none (as in {w.rsplit('[', 1)[0]}[0])",
                         b.get(key))
            if len(names) != len(first.get("class_names") or []):
                fail(f"{w}.class_names", "expected the same classes at every level", names)
            for key in ("N_c", "SAR", "SAR_ci_low", "SAR_ci_high") if "per_class" in b else ():
                if len(b["per_class"][key]) != len(names):
                    fail(f"{w}.per_class.{key}", f"expected {len(names)} values (one per class)", b["per_class"][key])
            if "CMR" in b:
                if len(b["CMR"]["class_order"]) != len(names):
                    fail(f"{w}.CMR.class_order", f"expected {len(names)} class names", b["CMR"]["class_order"])
                for key in ("matrix", "counts"):
                    m = b["CMR"].get(key)
                    cells = _list_of(_is_num, none=True) if key == "matrix" else _list_of(_is_count)
                    if (m is not None or key == "matrix") and not (
                            _list_of(cells, size=len(names))(m) and all(len(r) == len(names) for r in m)):
                        fail(f"{w}.CMR.{key}", f"expected a {len(names)} x {len(names)} matrix", m)
