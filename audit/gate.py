"""The CI gate: rules of a policy file (TOML) checked against report.json, optionally against a baseline.

Rule kinds (``metric``):
- ``san_fraction``: SAN / N at ``level`` <= ``max``;
- ``sar``: overall SAR at ``level`` <= ``max``;
- ``sar_class``: SAR of class ``class`` at ``level`` <= ``max``; ``bound = "upper"`` checks the
  upper confidence bound instead of the estimate (stricter; the report's CI);
- ``cmr_offdiag``: the largest off-diagonal CMR entry at ``level`` <= ``max``;
- ``clean_auc`` (and ``clean_accuracy``, ``clean_macro_f1``): clean performance >= ``min``;
- ``no_regression``: no significant worsening against ``--baseline``: per class and level, the
  two-proportion Z-test of SAR_c (``test = "sar_class"``, default) or of every off-diagonal CMR entry
  (``test = "cmr"``), one-sided in the worse direction, at ``alpha`` (default 0.05) Bonferroni-corrected
  over the comparisons the rule makes. Draws of the same images under two noise seeds differ only by
  draw noise, which the pooled binomial Z-test over-covers, so seed noise alone does not fail it.
Every rule may name ``model`` (default: every model in the report) and a ``name``.
"""

from __future__ import annotations

import json
import math
from statistics import NormalDist
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from xml.etree import ElementTree as ET

from audit.errors import ConfigError, InputError
from audit.io import atomic_path
from audit.metrics import two_proportion_z_test
from audit.toml import read_toml

METRICS = ("san_fraction", "sar", "sar_class", "cmr_offdiag", "clean_auc", "clean_accuracy", "clean_macro_f1", "no_regression")
RULE_KEYS = {"metric", "level", "max", "min", "class", "bound", "model", "name", "test", "alpha"}


@dataclass(frozen=True)
class Outcome:
    rule: str
    model: str
    measured: float | None
    limit: str
    passed: bool
    detail: str = ""


def load_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read the report ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(report, dict) or report.get("schema") != "audit-report/1":
        raise InputError(f"{path}: expected an audit report with \"schema\": \"audit-report/1\"")
    return report


def load_policy(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    raw = read_toml(path, "policy")
    extra = set(raw) - {"rule"}
    if extra:
        raise ConfigError(f"{path}: unknown section(s) {sorted(extra)}; a policy holds [[rule]] tables")
    rules = raw.get("rule", [])
    if not rules:
        raise ConfigError(f"{path}: no [[rule]] tables")
    for i, rule in enumerate(rules):
        label = rule.get("name") or f"rule {i + 1} ({rule.get('metric', '?')})"
        unknown = set(rule) - RULE_KEYS
        if unknown:
            raise ConfigError(f"{path}: {label}: unknown key(s) {sorted(unknown)}")
        if rule.get("metric") not in METRICS:
            raise ConfigError(f"{path}: {label}: unknown metric {rule.get('metric')!r}; expected one of {', '.join(METRICS)}")
        needs_max = rule["metric"] in ("san_fraction", "sar", "sar_class", "cmr_offdiag")
        if needs_max and not isinstance(rule.get("max"), (int, float)):
            raise ConfigError(f"{path}: {label}: needs a numeric 'max'")
        if rule["metric"].startswith("clean_") and not isinstance(rule.get("min"), (int, float)):
            raise ConfigError(f"{path}: {label}: needs a numeric 'min'")
        if needs_max and "level" not in rule:
            raise ConfigError(f"{path}: {label}: needs the 'level' (dose) it applies to")
        if rule["metric"] == "sar_class" and "class" not in rule:
            raise ConfigError(f"{path}: {label}: needs the 'class' it applies to")
        if rule.get("bound", "estimate") not in ("estimate", "upper"):
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
                out.append(_regression(rule, model, baseline, two_proportion_z_test))
                continue
            block = level_block(model, rule["level"], name)
            if metric == "san_fraction":
                value = block["SAN_fraction"]
            elif metric == "sar":
                value = block["SAR_overall_ci"][1] if rule.get("bound") == "upper" else block["SAR_overall"]
            elif metric == "sar_class":
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


def _regression(rule, model, baseline, ztest) -> Outcome:
    name = rule["name"]
    if baseline is None:
        raise InputError(f"{name}: needs --baseline REPORT.json")
    base = next((m for m in baseline["models"] if m["name"] == model["name"]), None)
    if base is None:
        raise InputError(f"{name}: the baseline has no model named '{model['name']}'")
    alpha = float(rule.get("alpha", 0.05))
    test = rule.get("test", "sar_class")
    comparisons = []  # (description, z) with z > 0 meaning worse now
    levels = [rule["level"]] if "level" in rule else [b["level"] for b in model["levels"]]
    for level in levels:
        now, then = level_block(model, level, name), level_block(base, level, name)
        if test == "cmr" and "CMR" in now:
            for b, col in enumerate(now["CMR"]["class_order"]):
                n_now = now["per_class"]["N_c"][b] * now["K"]
                n_then = then["per_class"]["N_c"][b] * then["K"]
                for a, row in enumerate(now["CMR"]["class_order"]):
                    if a == b or not n_now or not n_then:
                        continue
                    p1, p0 = now["CMR"]["matrix"][a][b], then["CMR"]["matrix"][a][b]
                    comparisons.append((f"CMR[{row},{col}] at {level:g}", ztest(p1, n_now, p0, n_then).z))
        elif "per_class" in now:
            for c, cls in enumerate(now["class_names"]):
                n_now, n_then = now["per_class"]["N_c"][c] * now["K"], then["per_class"]["N_c"][c] * then["K"]
                if n_now and n_then:
                    comparisons.append((f"SAR[{cls}] at {level:g}", ztest(now["per_class"]["SAR"][c], n_now,
                                                                           then["per_class"]["SAR"][c], n_then).z))
        else:
            n = now["N"] * now["K"]
            comparisons.append((f"SAR at {level:g}", ztest(now["SAR_overall"], n, then["SAR_overall"], then["N"] * then["K"]).z))
    if not comparisons:
        return Outcome(name, model["name"], None, "no significant worsening", True, "nothing to compare")
    z_crit = NormalDist().inv_cdf(1 - alpha / len(comparisons))  # one-sided, Bonferroni
    worst = max(comparisons, key=lambda c: c[1])
    failed = [c for c in comparisons if c[1] > z_crit]
    detail = ("worse: " + "; ".join(f"{d} (Z={z:.2f})" for d, z in failed)) if failed else f"largest Z {worst[1]:.2f} ({worst[0]})"
    return Outcome(name, model["name"], float(worst[1]), f"Z <= {z_crit:.2f}", not failed, detail)


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
