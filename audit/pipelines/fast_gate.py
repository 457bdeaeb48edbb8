"""The fast gate: draw in rounds and stop as soon as every rule's verdict is decided.

Round r runs draws k_{r} <= k < k_{r+1} of every sample at the levels some
undecided rule still needs; the keys are those of the full campaign, so the
draws seen after r rounds are exactly the first k_{r+1} draws of a full run.
After each round a rule is decided when a one-sided exact bound lies on one
side of its limit: the Clopper-Pearson bound on effective counts
(``audit.metrics.exact_upper_bound`` / ``exact_lower_bound``: draws of one
image are clustered) at level 1 - error/looks per look, so the chance of a
wrong early verdict is at most ``error`` per rule (Bonferroni over the looks;
at any true rate only one of the two wrong verdicts is possible). "Wrong" is
judged against the SAR of the audited case set (the mean flip probability of
these N images), which is what the full gate estimates. Wilson bounds were
used before and are anti-conservative near zero: one flip in the first 200
draws gave a lower bound of 5e-4 where the exact one is 1.3e-5.
What can be decided early:
- ``sar`` / ``sar_class`` on the estimate: pass when the upper bound <= max, fail when the lower bound > max;
- ``san_fraction``: fail as soon as SAN / N > max (SAN only grows with K); pass at full K;
- ``cmr_offdiag``: pass when every class's SAR upper bound <= max (an off-diagonal entry never exceeds
  its column's SAR); fail at full K;
- ``clean_*``: at once (no noise involved);
- rules on upper confidence bounds and ``no_regression``: at full K, where they equal the full gate.
Verdicts reached at full K are exact (identical to ``audit gate`` on a full report); earlier ones are
bounded, and ``gate.json`` says which is which.
Screening runs may opt in to a noise bank (``[noise] bank``, or ``bank=`` here): far cheaper draws, each
an exact draw of the noise, but samples share the bank's fields, so the bounds' independence across
samples is approximate; ``gate.json`` then records ``noise_bank`` and says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from audit.artifact import AuditedModel
from audit.campaign import records
from audit.campaign.noise import BANK_NOTE
from audit.campaign.run import run_campaign
from audit.config import AuditConfig
from audit.data import open_source
from audit.gate import Outcome, evaluate
from audit.io import write_json
from audit.metrics import exact_lower_bound, exact_upper_bound
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


def bounded_verdict(flip_counts: Any, draws: int, limit: float, confidence: float) -> tuple[bool | None, float | None, str]:
    """(pass, fail or None if undecided, the bound that decided, a note) for "pooled SAR <= limit" from per-sample
    flip counts after ``draws`` draws each, with one-sided exact bounds at ``confidence``."""
    counts = np.asarray(flip_counts)
    if counts.size == 0:
        return None, None, ""
    hi = exact_upper_bound(counts, draws, confidence)
    if hi <= limit:
        return True, hi, "exact upper bound"
    lo = exact_lower_bound(counts, draws, confidence)
    if lo > limit:
        return False, lo, "exact lower bound"
    return None, None, ""


def _early(rule: dict[str, Any], clean: records.CleanRecords, rec: records.LevelRecords, names: list[str],
           confidence: float) -> tuple[bool | None, float | None, str]:
    """(verdict or None if undecided, the bound that decided it, a note) from the draws so far."""
    metric, limit = rule["metric"], rule.get("max")
    if rule.get("bound") == "upper":
        return None, None, ""
    counts, k = rec.flipped.sum(axis=1), rec.flipped.shape[1]
    if metric == "sar":
        return bounded_verdict(counts, k, limit, confidence)
    if metric == "sar_class" and str(rule["class"]) in names:
        members = clean.labels == names.index(str(rule["class"]))
        return bounded_verdict(counts[members], k, limit, confidence)
    if metric == "san_fraction":
        frac = float(np.mean(counts > 0))
        if frac > limit:
            return False, frac, "SAN only grows with more draws"
    elif metric == "cmr_offdiag" and names:
        highs = [exact_upper_bound(counts[clean.labels == c], k, confidence) for c in range(len(names))
                 if np.any(clean.labels == c)]
        if highs and max(highs) <= limit:
            return True, max(highs), "largest class SAR exact upper bound"
    return None, None, ""


def run_fast_gate(config: AuditConfig, rules: list[dict[str, Any]], out: Path, *, rounds: int = 10, error: float = 0.05,
                  baseline: dict[str, Any] | None = None, models: list[AuditedModel] | None = None, source: Any = None,
                  progress: bool | None = False, bank: int | None = None) -> dict[str, Any]:
    """Run the sequential gate; writes ``out/gate.json`` and returns it. ``bank``: fields per level of a noise
    bank (0: fresh noise; None: the config's ``[noise] bank``)."""
    models = models if models is not None else open_models(config)
    source = source if source is not None else open_source(config.data, pacs=config.pacs)
    noise = config.noise if bank is None else replace(config.noise, bank=int(bank))
    n = len(source)
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
            rec = records.load_level(out, m.name, lv, noise.level_key(lv), n, done_at[lv], cleans[m.name])
            verdict, value, note = _early(rule, clean, rec, list(m.head.labels_names), confidence)
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
    if noise.bank:
        result.update(noise_bank=noise.bank, noise_bank_note=BANK_NOTE)
    write_json(out / "gate.json", result)
    return result


def _exact(rule, model, clean, out, noise, n, done_at, baseline) -> Verdict:
    """The full gate's verdict on the draws so far (all K of the rule's level): exact."""
    levels = [lv for lv in noise.levels if lv in done_at and done_at[lv] == noise.draws]
    blocks = [level_block(model, clean, records.load_level(out, model.name, lv, noise.level_key(lv), n, noise.draws, clean))
              for lv in levels]
    mini = {"models": [{"name": model.name, "levels": blocks, "clean": clean_performance(model, clean),
                        "head": model.head.to_dict()}], "noise": noise.to_dict()}
    (o,) = [x for x in evaluate(mini, [rule], baseline) if x.model == model.name]
    k = noise.draws if not rule["metric"].startswith("clean_") else 0
    return Verdict(o.rule, o.model, o.passed, o.measured, o.limit, k, True, o.detail)


def as_outcomes(result: dict[str, Any]) -> list[Outcome]:
    return [Outcome(v["rule"], v["model"], v["measured"], v["limit"], v["passed"],
                    ("exact" if v["exact"] else "bounded") + (f": {v['detail']}" if v["detail"] else ""))
            for v in result["verdicts"]]
