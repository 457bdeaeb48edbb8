"""Attack results as a report block (plain JSON): what ``report.json`` holds under ``attacks``.

``attack_block(result, label=...)``: the attack and its parameters, both
success rates (twin and deployed, the deployed one deciding), SAN/SAR, norms,
timing, per-sample outcomes and, for flipped cases, the explanation figures
(PNG, base64) made by ``audit.attacks.explain``. ``audit.report.attacks``
renders it.
"""

from __future__ import annotations

from typing import Any, Sequence


from audit.attacks.base import AttackResult
from audit.io import plain

SCHEMA = "audit-attack/1"


def attack_block(result: AttackResult, *, label: str | None = None, class_names: Sequence[str] = (),
                 explanations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON block of one attack run (plain Python types only)."""
    s = result.summary()
    n_i = result.deployed_flips.sum(axis=1)
    return {
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


def _label(v: Any, names: Sequence[str]) -> Any:
    v = int(v)
    return names[v] if 0 <= v < len(names) else v
