"""Attack results as a report block (plain JSON): what ``report.json`` holds under ``attacks``.

``attack_block(result, label=...)``: the attack and its parameters, both
success rates (twin and deployed, the deployed one deciding), SAN/SAR, norms,
timing, per-sample outcomes and, for flipped cases, the explanation figures
(PNG, base64) made by ``audit.attacks.explain``. ``audit.report.attacks``
renders it.

``reference_comparison``: for an attacked artifact with a reference (a
quantised engine and its FP32 original, ``audit.artifact.quantize``), the
samples whose decisions differ between the two, clean and on the attacked
inputs, and whether what flips the deployed engine also flips the reference;
``attack_block(..., reference=...)`` keeps it under ``reference``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from audit.artifact import AuditedModel, Decisions
from audit.attacks.base import AttackResult
from audit.io import plain

SCHEMA = "audit-attack/1"


def attack_block(result: AttackResult, *, label: str | None = None, class_names: Sequence[str] = (),
                 explanations: list[dict[str, Any]] | None = None,
                 reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON block of one attack run (plain Python types only); ``reference``: ``reference_comparison``'s."""
    s = result.summary()
    n_i = result.deployed_flips.sum(axis=1)
    block = {
        "label": label or result.attack.get("name", "attack"),
        "attack": plain(result.attack),
        "summary": plain(s),
        "notes": plain(result.notes),
        "samples": [
            {"id": result.ids[i], "clean_label": _label(result.clean_labels[i], class_names),
             "adv_label": _label(result.adv_labels[i], class_names), "clean_score": float(result.clean_scores[i]),
             "adv_score": float(result.adv_scores[i]), "torch_flips": int(result.torch_flips[i].sum()),
             "deployed_flips": int(n_i[i]), "sar": float(n_i[i] / result.k), "linf": float(result.linf[i].max()),
             "l2": float(result.l2[i].max())}
            for i in range(result.n)
        ],
        "explanations": explanations or [],
    }
    if reference is not None:
        block["reference"] = plain(reference)
    return block


def _decide_inputs(model: AuditedModel, x: np.ndarray, batch: int = 64) -> Decisions:
    parts = [model.decide_input(np.ascontiguousarray(x[i : i + batch], np.float32)) for i in range(0, len(x), batch)]
    masks = None if parts[0].masks is None else np.concatenate([p.masks for p in parts])
    return Decisions(np.concatenate([p.labels for p in parts]), np.concatenate([p.scores for p in parts]), masks)


def reference_comparison(result: AttackResult, model: AuditedModel, reference: AuditedModel, hu: np.ndarray, *,
                         info: dict[str, Any] | None = None, class_names: Sequence[str] = ()) -> dict[str, Any]:
    """Decisions of the attacked ``model`` (e.g. the INT8 engine) against its ``reference`` (the FP32 original) on
    the clean samples ``hu`` and on the attacked inputs ``result.adv_inputs`` (``run_attack(return_inputs=True)``),
    both read by ``model``'s head. Keys: ``clean_differ`` / ``attacked_differ`` (samples whose decisions differ,
    with their ``*_ids``), ``flipped_model`` (the attack's successes on ``model``), ``flipped_reference_too`` (the
    same input flips the reference against its own clean decision), ``flipped_model_only``, and ``per_sample``
    rows (id, the two clean and the two attacked labels and scores) for every sample that differs anywhere."""
    if result.adv_inputs is None:
        raise ValueError("reference_comparison needs the attacked inputs: run_attack(..., return_inputs=True)")
    head = model.head
    prep = model.prepare(np.asarray(hu, np.float32))
    clean_m, clean_r = _decide_inputs(model, prep), _decide_inputs(reference, prep)
    adv_m, adv_r = _decide_inputs(model, result.adv_inputs), _decide_inputs(reference, result.adv_inputs)
    clean_differ = head.flipped(clean_r, clean_m)[0]
    attacked_differ = head.flipped(adv_r, adv_m)[0]
    won = result.deployed_flips.any(axis=1)
    ref_flipped = head.flipped(clean_r, adv_r)[0]
    ids = result.ids
    rows = [{"id": ids[i], "clean": [_label(clean_m.labels[i], class_names), _label(clean_r.labels[i], class_names)],
             "clean_scores": [float(clean_m.scores[i]), float(clean_r.scores[i])],
             "attacked": [_label(adv_m.labels[i], class_names), _label(adv_r.labels[i], class_names)],
             "attacked_scores": [float(adv_m.scores[i]), float(adv_r.scores[i])],
             "clean_differ": bool(clean_differ[i]), "attacked_differ": bool(attacked_differ[i]),
             "flipped_model": bool(won[i]), "flipped_reference": bool(ref_flipped[i])}
            for i in range(result.n) if clean_differ[i] or attacked_differ[i] or won[i] != ref_flipped[i]]
    n = result.n
    return {**(info or {}), "model": model.name, "reference": reference.name, "n": n,
            "clean_differ": int(clean_differ.sum()), "attacked_differ": int(attacked_differ.sum()),
            "clean_differ_ids": [ids[i] for i in np.nonzero(clean_differ)[0]],
            "attacked_differ_ids": [ids[i] for i in np.nonzero(attacked_differ)[0]],
            "flipped_model": int(won.sum()), "flipped_reference_too": int((won & ref_flipped).sum()),
            "flipped_model_only": int((won & ~ref_flipped).sum()),
            "verdict": (f"{int(clean_differ.sum())} of {n} clean and {int(attacked_differ.sum())} of {n} attacked "
                        f"samples get a different decision from {model.name} than from {reference.name}; "
                        f"{int((won & ~ref_flipped).sum())} of the {int(won.sum())} flips of {model.name} leave "
                        f"{reference.name}'s decision unchanged"),
            "per_sample": rows}


def _label(v: Any, names: Sequence[str]) -> Any:
    v = int(v)
    return names[v] if 0 <= v < len(names) else v
