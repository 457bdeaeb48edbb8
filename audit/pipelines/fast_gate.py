"""The fast gate: draw in rounds and stop as soon as every rule's verdict is decided.

Round r runs draws k_{r} <= k < k_{r+1} of every sample at the levels some
undecided rule still needs; the keys are those of the full campaign, so the
draws seen after r rounds are exactly the first k_{r+1} draws of a full run.
After each round a rule is decided when its confidence bounds (at level
1 - error/rounds per look, so the chance of a wrong early verdict is at most
``error`` per rule, Bonferroni over the looks) lie wholly on one side of its
limit. What can be decided early:
- ``sar`` / ``sar_class`` on the estimate: pass when the upper bound <= max, fail when the lower bound > max;
- ``san_fraction``: fail as soon as SAN / N > max (SAN only grows with K); pass at full K;
- ``cmr_offdiag``: pass when every class's SAR upper bound <= max (an off-diagonal entry never exceeds
  its column's SAR); fail at full K;
- ``clean_*``: at once (no noise involved);
- rules on upper confidence bounds and ``no_regression``: at full K, where they equal the full gate.
Verdicts reached at full K are exact (identical to ``audit gate`` on a full report); earlier ones are
bounded, and ``gate.json`` says which is which.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from audit.artifact import AuditedModel
from audit.campaign import records
from audit.campaign.run import run_campaign
from audit.config import AuditConfig
from audit.data import open_source
from audit.gate import Outcome, evaluate
from audit.io import write_json
from audit.pipelines.run import open_models
from audit.report.build import clean_performance, level_block

LEVEL_RULES = ("san_fraction", "sar", "sar_class", "cmr_offdiag")


@dataclass
class Verdict:
    rule: str
    model: str
    passed: bool
    measured: float | None
    limit: str
    draws: int
    exact: bool
    detail: str = ""


def _early(rule: dict[str, Any], block: dict[str, Any]) -> tuple[bool | None, float | None, str]:
    """(verdict or None if undecided, the bound that decided it, a note) from a partial block."""
    metric, limit = rule["metric"], rule.get("max")
    if rule.get("bound") == "upper":
        return None, None, ""
    if metric == "sar":
        lo, hi = block["SAR_overall_ci"]
        if hi is not None and hi <= limit:
            return True, hi, "upper bound"
        if lo is not None and lo > limit:
            return False, lo, "lower bound"
    elif metric == "sar_class":
        names = block.get("class_names", [])
        if str(rule["class"]) in names and "per_class" in block:
            c = names.index(str(rule["class"]))
            lo, hi = block["per_class"]["SAR_ci_low"][c], block["per_class"]["SAR_ci_high"][c]
            if hi is not None and hi <= limit:
                return True, hi, "upper bound"
            if lo is not None and lo > limit:
                return False, lo, "lower bound"
    elif metric == "san_fraction":
        if block["SAN_fraction"] > limit:
            return False, block["SAN_fraction"], "SAN only grows with more draws"
    elif metric == "cmr_offdiag" and "per_class" in block:
        highs = [h for h, n in zip(block["per_class"]["SAR_ci_high"], block["per_class"]["N_c"]) if n]
        if highs and max(highs) <= limit:
            return True, max(highs), "largest class SAR upper bound"
    return None, None, ""


def run_fast_gate(config: AuditConfig, rules: list[dict[str, Any]], out: Path, *, rounds: int = 10, error: float = 0.05,
                  baseline: dict[str, Any] | None = None, models: list[AuditedModel] | None = None, source: Any = None,
                  progress: bool | None = False) -> dict[str, Any]:
    """Run the sequential gate; writes ``out/gate.json`` and returns it."""
    models = models if models is not None else open_models(config)
    source = source if source is not None else open_source(config.data, pacs=config.pacs)
    noise, n = config.noise, len(source)
    big_k = noise.draws
    step = max(1, math.ceil(big_k / rounds))
    bounds = list(range(0, big_k, step)) + [big_k]
    looks = len(bounds) - 1
    confidence = 1.0 - error / looks
    options = replace(config.run, progress=progress)
    pending = [(i, m) for i, rule in enumerate(rules) for m in models if "model" not in rule or rule["model"] == m.name]
    verdicts: dict[tuple[int, str], Verdict] = {}
    done_at: dict[float, int] = {}
    inferences = 0
    for r in range(looks):
        k0, k1 = bounds[r], bounds[r + 1]
        undecided = [(i, m) for i, m in pending if (i, m.name) not in verdicts]
        if not undecided:
            break
        needed = set()
        for i, _ in undecided:
            rule = rules[i]
            needed |= {float(rule["level"])} if rule["metric"] in LEVEL_RULES else set(map(float, noise.levels))
        needed = {lv for lv in noise.levels if float(lv) in needed}
        stats = run_campaign(models, source, noise, out, options, resume=True, draws=(k0, k1), levels=sorted(needed))
        inferences += stats.inferences
        for lv in needed:
            done_at[lv] = k1
        full = k1 == big_k
        cleans = {m.name: records.load_clean(out, m.name, n) for m in models}  # once per round, not per rule
        for i, m in undecided:
            rule = rules[i]
            clean = cleans[m.name]
            if rule["metric"].startswith("clean_") or full:
                verdicts[(i, m.name)] = _exact(rule, m, clean, out, noise, n, done_at, baseline)
                continue
            if rule["metric"] not in LEVEL_RULES:
                continue
            lv = next(v for v in noise.levels if math.isclose(v, rule["level"]))
            rec = records.load_level(out, m.name, lv, noise.level_key(lv), n, done_at[lv])
            verdict, value, note = _early(rule, level_block(m, clean, rec, confidence=confidence))
            if verdict is not None:
                limit = f"<= {rule['max']:g}"
                verdicts[(i, m.name)] = Verdict(rule["name"], m.name, verdict, value, limit, done_at[lv], False,
                                                f"decided after {done_at[lv]} of {big_k} draws by the {note} at confidence {confidence:.4f}")
    full_inferences = n * big_k * len(noise.levels) * len(models)
    result = {"schema": "audit-gate/1", "mode": "sequential", "error_bound_per_rule": error, "rounds": looks,
              "confidence_per_look": confidence, "inferences": inferences, "full_inferences": full_inferences,
              "inference_ratio": full_inferences / max(inferences, 1),
              "passed": all(v.passed for v in verdicts.values()),
              "verdicts": [asdict(v) for v in verdicts.values()]}
    write_json(out / "gate.json", result)
    return result


def _exact(rule, model, clean, out, noise, n, done_at, baseline) -> Verdict:
    """The full gate's verdict on the draws so far (all K of the rule's level): exact."""
    levels = [lv for lv in noise.levels if lv in done_at and done_at[lv] == noise.draws]
    blocks = [level_block(model, clean, records.load_level(out, model.name, lv, noise.level_key(lv), n, noise.draws))
              for lv in levels]
    mini = {"models": [{"name": model.name, "levels": blocks, "clean": clean_performance(model, clean),
                        "head": model.head.to_dict()}]}
    (o,) = [x for x in evaluate(mini, [rule], baseline) if x.model == model.name]
    k = noise.draws if not rule["metric"].startswith("clean_") else 0
    return Verdict(o.rule, o.model, o.passed, o.measured, o.limit, k, True, o.detail)


def as_outcomes(result: dict[str, Any]) -> list[Outcome]:
    return [Outcome(v["rule"], v["model"], v["measured"], v["limit"], v["passed"],
                    ("exact" if v["exact"] else "bounded") + (f": {v['detail']}" if v["detail"] else ""))
            for v in result["verdicts"]]
