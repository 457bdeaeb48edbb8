"""The CI gate: rules of a policy file (TOML) checked against report.json, optionally against a baseline.

Rule kinds (``metric``):
- ``san_fraction``: SAN / N at ``level`` <= ``max``;
- ``sar``: overall SAR at ``level`` <= ``max``;
- ``sar_class``: SAR of class ``class`` at ``level`` <= ``max``; ``bound = "upper"`` checks the
  upper confidence bound instead of the estimate (stricter; the report's CI);
- ``cmr_offdiag``: the largest off-diagonal CMR entry at ``level`` <= ``max``;
- ``clean_auc`` (and ``clean_accuracy``, ``clean_macro_f1``): clean performance >= ``min``;
- ``dice_q05`` (segmentation): the 5th percentile over all draws at ``level`` of the Dice between each
  perturbed mask and the clean one >= ``min`` (95 % of the draws keep at least that overlap);
- ``cpm`` (detection): the CPM (mean FROC sensitivity at 1/8 ... 8 FPs per scan) at ``level`` >= ``min``,
  from the report's ``detection`` block (FROC over the level's N x K scan replicates);
- ``froc_sensitivity`` (detection): the FROC sensitivity at ``fp_rate`` false positives per scan (default 1;
  one of the report's CPM rates 0.125 ... 8) at ``level`` >= ``min``.
  Both take ``bound = "lower"`` to check the lower end of the report's 95 % CI (cluster bootstrap over
  samples) instead of the estimate (stricter); a model without a detection block is refused with one line;
  a level without included lesions (no sensitivity) fails;
- ``no_regression``: no significant worsening against ``--baseline`` (a report of the same samples):
  per level, and per class of the candidate's clean label (``test = "sar_class"``, default; ``"cmr"``
  is the same per column of the CMR, whose off-diagonal mass is SAR_c) or overall (``test = "sar"``),
  a one-sided paired test of the per-sample SAR_i differences (``audit.metrics.paired_noninferiority``,
  sign-flip permutation over samples: the sample is the unit, its draws are clustered) against
  ``margin`` (default 0), at ``alpha`` (default 0.05) Bonferroni-corrected over the comparisons the
  rule makes. It fails only where a worsening is shown, so equal models fail at most alpha of the time.
  A run whose noise came from a bank (``noise.bank``: samples share pre-drawn fields) is compared only with
  another such run (refused otherwise: the runs' noise is not drawn alike); the test then treats the samples
  as independent, which the bank makes approximate (its detail says so).
Every rule may name ``model`` (default: every model in the report) and a ``name``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from xml.etree import ElementTree as ET

import numpy as np

from audit.errors import ConfigError, InputError
from audit.io import atomic_path
from audit.metrics import paired_noninferiority
from audit.toml import read_toml

METRICS = ("san_fraction", "sar", "sar_class", "cmr_offdiag", "clean_auc", "clean_accuracy", "clean_macro_f1", "no_regression",
           "dice_q05", "cpm", "froc_sensitivity")
RULE_KEYS = {"metric", "level", "max", "min", "class", "bound", "model", "name", "test", "alpha", "margin", "fp_rate"}
#: metrics with a lower limit at one level (``min`` and ``level`` required)
_MIN_AT_LEVEL = ("dice_q05", "cpm", "froc_sensitivity")
#: default FP rate (false positives per scan) of ``froc_sensitivity``
DEFAULT_FP_RATE = 1.0


@dataclass(frozen=True)
class Outcome:
    rule: str
    model: str
    measured: float | None
    limit: str
    passed: bool
    detail: str = ""


def load_report(path: str | Path) -> dict[str, Any]:
    """report.json, checked for every key the gate reads (types included): a hand-edited or truncated report is one
    ``InputError`` naming the key, never a crash in the middle of the table."""
    path = Path(path)
    try:
        report = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the report ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: the report is not UTF-8 text (byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{path}: not valid JSON ({str(exc)[:120] or 'nested too deeply'})") from None
    if not isinstance(report, dict) or report.get("schema") != "audit-report/1":
        raise InputError(f"{path}: expected an audit report with \"schema\": \"audit-report/1\"")

    def fail(where: str, what: str, got: Any = None) -> None:
        text = repr(got)
        text = text if len(text) <= 60 else text[:57] + "..."
        raise InputError(f"{path}: {where}: {what}" + ("" if got is None else f", got {text}") +
                         " (not a complete report of audit run?)")

    def get(obj: Mapping[str, Any], key: str, where: str, kind: Any, what: str) -> Any:
        if key not in obj:
            fail(f"{where}.{key}" if where else key, "missing")
        if not kind(obj[key]):
            fail(f"{where}.{key}" if where else key, f"expected {what}", obj[key])
        return obj[key]

    def number(v: Any) -> bool:
        return (isinstance(v, float) and math.isfinite(v)) or (type(v) is int and abs(v) < 2**63)

    def count(v: Any) -> bool:
        return type(v) is int and 0 <= v < 2**63

    def numbers(n: int | None, *, none: bool = True, kind: Any = number) -> Any:
        return lambda v: isinstance(v, list) and (n is None or len(v) == n) and all(kind(x) or (none and x is None) for x in v)

    def table(v: Any) -> bool:
        return isinstance(v, dict)

    models = get(report, "models", "", lambda v: isinstance(v, list) and v and all(map(table, v)),
                 "a non-empty list of model blocks")
    for i, m in enumerate(models):
        w = f"models[{i}]"
        get(m, "name", w, lambda v: isinstance(v, str) and v, "a non-empty string")
        task = get(get(m, "head", w, table, "a table"), "task", f"{w}.head", lambda v: isinstance(v, str), "a string")
        clean = get(m, "clean", w, table, "a table")
        for key in ("auc", "accuracy", "macro_f1"):
            if clean.get(key) is not None and not number(clean[key]):
                fail(f"{w}.clean.{key}", "expected a number", clean[key])
        levels = get(m, "levels", w, lambda v: isinstance(v, list) and v and all(map(table, v)),
                     "a non-empty list of level blocks")
        for j, b in enumerate(levels):
            wb = f"{w}.levels[{j}]"
            get(b, "level", wb, number, "a number")
            n = get(b, "N", wb, count, "a sample count")
            get(b, "K", wb, count, "a draw count")
            get(b, "SAN_fraction", wb, number, "a number")
            get(b, "SAR_overall", wb, number, "a number")
            get(b, "SAR_overall_ci", wb, lambda v: numbers(2)(v) and number(v[1]), "[low, high] numbers")
            names = b.get("class_names", [])
            if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
                fail(f"{wb}.class_names", "expected a list of strings", names)
            per_sample = get(b, "per_sample", wb, table, "a table")
            get(per_sample, "n_flips", f"{wb}.per_sample", numbers(n, none=False, kind=count), f"{n} flip counts")
            if per_sample.get("clean_label") is not None:
                get(per_sample, "clean_label", f"{wb}.per_sample", numbers(n, none=False, kind=count), f"{n} labels")
            classification = task in ("binary", "multiclass", "rating")
            if classification or "per_class" in b:
                per_class = get(b, "per_class", wb, table, "a table")
                for key in ("SAR", "SAR_ci_high"):
                    get(per_class, key, f"{wb}.per_class", numbers(len(names)), f"{len(names)} numbers (one per class)")
            seg = b.get("segmentation")
            if seg is not None:
                get(get(get(b, "segmentation", wb, table, "a table"), "dice", f"{wb}.segmentation", table, "a table"),
                    "q05", f"{wb}.segmentation.dice", number, "a number (Dice in [0, 1])")
            if b.get("detection") is not None:
                det = get(b, "detection", wb, table, "a table")
                wd = f"{wb}.detection"
                rates = get(det, "fp_rates_per_scan", wd, lambda v: numbers(None, none=False)(v) and bool(v),
                            "a non-empty list of FP rates (per scan)")
                for key in ("sensitivity_at", "sensitivity_ci_low"):
                    get(det, key, wd, numbers(len(rates)), f"{len(rates)} numbers (one per FP rate)")
                if det.get("cpm") is not None:
                    get(det, "cpm", wd, number, "a number (CPM in [0, 1])")
                get(det, "cpm_ci", wd, numbers(2), "[low, high] numbers")
            if classification or "CMR" in b:
                cmr = get(b, "CMR", wb, table, "a table")
                get(cmr, "matrix", f"{wb}.CMR", lambda v: isinstance(v, list) and all(numbers(None)(r) for r in v),
                    "a matrix (list of rows of numbers)")
    return report


def load_policy(path: str | Path) -> list[dict[str, Any]]:
    """The ``[[rule]]`` tables of a policy file, every key checked (types included) before any report is read."""
    path = Path(path)
    raw = read_toml(path, "policy")
    extra = set(raw) - {"rule"}
    if extra:
        raise ConfigError(f"{path}: unknown section(s) {sorted(extra)}; a policy holds [[rule]] tables")
    rules = raw.get("rule", [])
    if isinstance(rules, dict):
        raise ConfigError(f"{path}: rule: expected [[rule]] tables (double brackets: a list of rules), got one [rule] table")
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        text = repr(rules)
        raise ConfigError(f"{path}: rule: expected [[rule]] tables, got {text if len(text) <= 60 else text[:57] + '...'}")
    if not rules:
        raise ConfigError(f"{path}: no [[rule]] tables")

    def check(label: str, rule: Mapping[str, Any], key: str, ok: Any, what: str) -> None:
        if key in rule and not ok(rule[key]):
            text = repr(rule[key])
            raise ConfigError(f"{path}: {label}: {key}: expected {what}, got {text if len(text) <= 60 else text[:57] + '...'}")

    def number(v: Any) -> bool:
        return (isinstance(v, float) and math.isfinite(v)) or (type(v) is int and abs(v) < 2**63)

    for i, rule in enumerate(rules):
        name = rule.get("name")
        check(f"rule {i + 1}", rule, "name", lambda v: isinstance(v, str) and v.strip(), "a non-empty string")
        metric = rule.get("metric")
        label = name or f"rule {i + 1} ({metric if isinstance(metric, str) else '?'})"
        unknown = set(rule) - RULE_KEYS
        if unknown:
            raise ConfigError(f"{path}: {label}: unknown key(s) {sorted(unknown)}")
        if metric not in METRICS:
            raise ConfigError(f"{path}: {label}: unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
        check(label, rule, "level", number, "a number (the dose or stress level of the report)")
        check(label, rule, "max", number, "a finite number")
        check(label, rule, "min", number, "a finite number")
        check(label, rule, "class", lambda v: (isinstance(v, str) and v) or type(v) is int, "a class name")
        check(label, rule, "model", lambda v: isinstance(v, str) and v, "a model name")
        check(label, rule, "test", lambda v: v in ("sar_class", "cmr", "sar"), "'sar_class', 'cmr' or 'sar'")
        check(label, rule, "alpha", lambda v: number(v) and 0 < v < 1, "a number in (0, 1)")
        check(label, rule, "margin", lambda v: number(v) and 0 <= v < 1, "a SAR difference in [0, 1)")
        check(label, rule, "fp_rate", lambda v: number(v) and v > 0, "a rate > 0 (false positives per scan)")
        if "fp_rate" in rule and metric != "froc_sensitivity":
            raise ConfigError(f"{path}: {label}: fp_rate applies to metric 'froc_sensitivity' only")
        needs_max = metric in ("san_fraction", "sar", "sar_class", "cmr_offdiag")
        if needs_max and "max" not in rule:
            raise ConfigError(f"{path}: {label}: needs a numeric 'max'")
        if (metric.startswith("clean_") or metric in _MIN_AT_LEVEL) and "min" not in rule:
            raise ConfigError(f"{path}: {label}: needs a numeric 'min'")
        if metric in _MIN_AT_LEVEL and "level" not in rule:
            raise ConfigError(f"{path}: {label}: needs the 'level' (dose) it applies to")
        if needs_max and "level" not in rule:
            raise ConfigError(f"{path}: {label}: needs the 'level' (dose) it applies to")
        if metric == "sar_class" and "class" not in rule:
            raise ConfigError(f"{path}: {label}: needs the 'class' it applies to")
        if metric in ("cpm", "froc_sensitivity"):
            if "min" in rule and not 0 <= rule["min"] <= 1:  # a sensitivity (CPM: a mean of them)
                raise ConfigError(f"{path}: {label}: min must be in [0, 1] (a sensitivity), got {rule['min']!r}")
            if rule.get("bound", "estimate") not in ("estimate", "lower"):
                raise ConfigError(f"{path}: {label}: bound must be 'estimate' or 'lower' (a minimum's stricter check)")
        elif rule.get("bound", "estimate") not in ("estimate", "upper"):
            raise ConfigError(f"{path}: {label}: bound must be 'estimate' or 'upper'")
        rule["name"] = label
    return rules


def level_block(model: Mapping[str, Any], level: float, rule: str) -> Mapping[str, Any]:
    for block in model["levels"]:
        if math.isclose(block["level"], float(level), rel_tol=1e-9):
            return block
    have = ", ".join(f"{b['level']:g}" for b in model["levels"])
    raise InputError(f"{rule}: level {level:g} is not in the report for model '{model['name']}' (levels: {have})")


def _models(report: Mapping[str, Any], rule: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    models = report["models"]
    if "model" in rule:
        models = [m for m in models if m["name"] == rule["model"]]
        if not models:
            raise InputError(f"{rule['name']}: no model named {rule['model']!r} in the report")
    return models


def class_index(block: Mapping[str, Any], cls: Any, rule: str) -> int:
    names = block.get("class_names", [])
    if str(cls) in names:
        return names.index(str(cls))
    raise InputError(f"{rule}: class {cls!r} is not in the report (classes: {names})")


def evaluate(report: Mapping[str, Any], rules: list[dict[str, Any]], baseline: Mapping[str, Any] | None = None) -> list[Outcome]:
    """Every rule against every model it names: one Outcome each."""
    out: list[Outcome] = []
    for rule in rules:
        name, metric = rule["name"], rule["metric"]
        for model in _models(report, rule):
            mname = model["name"]
            if metric.startswith("clean_"):
                key = metric.removeprefix("clean_")
                value = model["clean"].get(key)
                if value is None:
                    raise InputError(f"{name}: the report has no clean {key} for model '{mname}' (labels missing?)")
                out.append(Outcome(name, mname, value, f">= {rule['min']:g}", value >= rule["min"]))
                continue
            if metric == "no_regression":
                out.append(_regression(rule, model, baseline, report))
                continue
            block = level_block(model, rule["level"], name)
            if metric == "dice_q05":
                dist = (block.get("segmentation") or {}).get("dice")
                if dist is None:
                    raise InputError(f"{name}: metric 'dice_q05' needs a segmentation model's Dice distribution; model "
                                     f"'{mname}' has none ({model['head']['task']} task)")
                value = dist["q05"]
                out.append(Outcome(name, mname, value, f">= {rule['min']:g}", value >= rule["min"],
                                   f"5th percentile of Dice over {dist['n']} draws"))
                continue
            if metric in ("cpm", "froc_sensitivity"):
                out.append(_detection_rule(rule, model, block))
                continue
            if metric == "san_fraction":
                value = block["SAN_fraction"]
            elif metric == "sar":
                value = block["SAR_overall_ci"][1] if rule.get("bound") == "upper" else block["SAR_overall"]
            elif metric == "sar_class":
                if "per_class" not in block:  # regression / segmentation: flips have no classes
                    raise InputError(f"{name}: metric 'sar_class' needs per-class SAR; model '{mname}' has none "
                                     f"({model['head']['task']} task): use metric 'sar'")
                c = class_index(block, rule["class"], name)
                key = "SAR_ci_high" if rule.get("bound") == "upper" else "SAR"
                value = block["per_class"][key][c]
                if value is None:
                    out.append(Outcome(name, mname, None, f"<= {rule['max']:g}", True, "no sample predicted this class"))
                    continue
            else:  # cmr_offdiag
                if "CMR" not in block:
                    raise InputError(f"{name}: model '{mname}' has no CMR ({model['head']['task']} task)")
                mat = block["CMR"]["matrix"]
                value = max((v for i, row in enumerate(mat) for j, v in enumerate(row) if i != j and v is not None), default=0.0)
            out.append(Outcome(name, mname, value, f"<= {rule['max']:g}", value <= rule["max"]))
    return out


def _detection_rule(rule: Mapping[str, Any], model: Mapping[str, Any], block: Mapping[str, Any]) -> Outcome:
    """``cpm`` or ``froc_sensitivity`` at one level from the report's detection block (module notes)."""
    name, metric, mname = rule["name"], rule["metric"], model["name"]
    det = block.get("detection")
    if not det:
        raise InputError(f"{name}: metric '{metric}' needs a detection model's FROC; model '{mname}' has no detection "
                         f"block ({model['head']['task']} task)")
    lower = rule.get("bound") == "lower"
    conf = (det.get("interval") or {}).get("confidence")  # the report's own level (a fast gate narrows it)
    limit = f">= {rule['min']:g}" + ((f" ({100 * conf:g}% CI lower end)" if conf else " (CI lower end)") if lower else "")
    if metric == "cpm":
        value = det["cpm_ci"][0] if lower else det.get("cpm")
        what = "CPM (mean sensitivity at 1/8 to 8 FPs per scan)"
    else:
        rate = float(rule.get("fp_rate", DEFAULT_FP_RATE))
        rates = [float(r) for r in det["fp_rates_per_scan"]]
        at = next((i for i, r in enumerate(rates) if math.isclose(r, rate, rel_tol=1e-9)), None)
        if at is None:
            raise InputError(f"{name}: fp_rate {rate:g} is not among the report's FP rates per scan "
                             f"({', '.join(f'{r:g}' for r in rates)})")
        value = (det["sensitivity_ci_low"] if lower else det["sensitivity_at"])[at]
        what = f"FROC sensitivity at {rate:g} FPs per scan"
    detail = f"{what} over {det.get('scan_replicates', det.get('scans', '?'))} scan replicates"
    if value is None:
        return Outcome(name, mname, None, limit, False, f"{what}: undefined (no included lesion at this level)")
    return Outcome(name, mname, value, limit, value >= rule["min"], detail)


def noise_bank(report: Mapping[str, Any] | None) -> int:
    """Fields per level of the report's noise bank (``noise.bank``), 0 for fresh noise (or a report without it)."""
    return int(((report or {}).get("noise") or {}).get("bank") or 0)


def _regression(rule, model, baseline, report=None) -> Outcome:
    name = rule["name"]
    if baseline is None:
        raise InputError(f"{name}: needs --baseline REPORT.json")
    now_bank, then_bank = noise_bank(report), noise_bank(baseline)
    if bool(now_bank) != bool(then_bank):
        def how(b: int) -> str:
            return f"a noise bank ({b} fields per level)" if b else "fresh noise"

        raise InputError(f"{name}: this report used {how(now_bank)}, the baseline {how(then_bank)}; a no_regression "
                         "baseline needs both runs on a noise bank or both on fresh noise")
    base = next((m for m in baseline["models"] if m["name"] == model["name"]), None)
    if base is None:
        raise InputError(f"{name}: the baseline has no model named '{model['name']}'")
    alpha, margin = rule.get("alpha", 0.05), rule.get("margin", 0.0)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise ConfigError(f"{name}: alpha: expected a number in (0, 1), got {alpha!r}")
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not 0 <= margin < 1:
        raise ConfigError(f"{name}: margin: expected a SAR difference in [0, 1), got {margin!r}")
    test = rule.get("test", "sar_class")
    comparisons = []  # (description, NonInferiorityTest)
    levels = [rule["level"]] if "level" in rule else [b["level"] for b in model["levels"]]
    for level in levels:
        now, then = level_block(model, level, name), level_block(base, level, name)
        if now["N"] != then["N"] or now["K"] != then["K"]:
            raise InputError(f"{name}: the baseline audited N = {then['N']}, K = {then['K']} at {level:g}, this report "
                             f"N = {now['N']}, K = {now['K']}; a paired comparison needs the same samples and K")
        n_now, n_then = np.asarray(now["per_sample"]["n_flips"]), np.asarray(then["per_sample"]["n_flips"])
        labels = now["per_sample"].get("clean_label")
        groups = [(f"SAR at {level:g}", np.ones(n_now.size, bool))]
        if test in ("sar_class", "cmr") and labels is not None and "per_class" in now:
            labels = np.asarray(labels)
            groups = [(f"SAR[{cls}] at {level:g}", labels == c) for c, cls in enumerate(now["class_names"]) if np.any(labels == c)]
        for desc, members in groups:
            comparisons.append((desc, paired_noninferiority(n_now[members], n_then[members], now["K"], margin)))
    if not comparisons:
        return Outcome(name, model["name"], None, "no significant worsening", True, "nothing to compare")
    level_alpha = alpha / len(comparisons)  # Bonferroni over the comparisons
    worst = max(comparisons, key=lambda c: c[1].difference)
    failed = [(d, t) for d, t in comparisons if t.shows_regression(level_alpha)]
    detail = ("worse: " + "; ".join(f"{d} (+{t.difference:.4f}, p={t.p_regression:.2g})" for d, t in failed)) if failed \
        else f"largest difference {worst[1].difference:+.4f} ({worst[0]}, p={worst[1].p_regression:.2g}); paired test over samples"
    if now_bank:
        detail += "; noise bank: independence across samples is approximate"
    return Outcome(name, model["name"], float(worst[1].difference), f"no paired worsening > {margin:g} at p <= {level_alpha:.3g}",
                   not failed, detail)


def table(outcomes: list[Outcome]) -> str:
    rows = [("rule", "model", "measured", "limit", "result")]
    for o in outcomes:
        rows.append((o.rule, o.model, "-" if o.measured is None else f"{o.measured:.4g}", o.limit, "pass" if o.passed else "FAIL"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    lines += [f"  {o.rule} / {o.model}: {o.detail}" for o in outcomes if o.detail]
    return "\n".join(lines)


def write_junit(path: Path, outcomes: list[Outcome]) -> None:
    suite = ET.Element("testsuite", name="robustness-gate", tests=str(len(outcomes)),
                       failures=str(sum(not o.passed for o in outcomes)))
    for o in outcomes:
        case = ET.SubElement(suite, "testcase", classname=f"gate.{o.model}", name=o.rule)
        if not o.passed:
            ET.SubElement(case, "failure", message=f"measured {o.measured} violates {o.limit}").text = o.detail
    with atomic_path(path) as tmp:
        ET.ElementTree(suite).write(tmp, encoding="utf-8", xml_declaration=True)
