"""Gradient attacks through torch autograd; the deployed artifact decides what counts as a success.

``ATTACKS`` maps a name to its class (an explicit registry; nothing is built
from strings). ``build_attack(name, target, **params)`` checks the name and the
parameters. ``run_attack(attack, model, hu)`` re-runs every candidate through
the deployed engine and reports both success rates (twin and deployed).
"""

from __future__ import annotations

import inspect
from typing import Any

from audit.attacks.base import HU_RANGE, Attack, AttackResult, Candidates, Target, run_attack
from audit.attacks.ensemble import Ensemble
from audit.attacks.false_positive import FalsePositive
from audit.attacks.generator import GeneratorManipulation
from audit.attacks.hopskipjump import HopSkipJump
from audit.attacks.latent import LatentSearch
from audit.attacks.nps_ascent import NPSAscent, project_to_nps
from audit.attacks.nps_search import NPSSearch
from audit.attacks.ood import OutOfDistribution
from audit.attacks.pgd import PGD
from audit.attacks.square import Square
from audit.attacks.twin import Twin, torch_twin
from audit.errors import ConfigError

#: Attack name -> class.
ATTACKS: dict[str, type[Attack]] = {
    PGD.name: PGD,
    NPSAscent.name: NPSAscent,
    FalsePositive.name: FalsePositive,
    OutOfDistribution.name: OutOfDistribution,
    LatentSearch.name: LatentSearch,
    GeneratorManipulation.name: GeneratorManipulation,
    Square.name: Square,
    NPSSearch.name: NPSSearch,
    HopSkipJump.name: HopSkipJump,
    Ensemble.name: Ensemble,
}


#: Parameters the pipelines fill from the data or the noise spec, never from the ``[attack]`` table.
SUPPLIED = ("target", "nps", "spacing", "labels")


def check_attack_params(name: str, params: dict[str, Any], supplied: tuple[str, ...] = SUPPLIED) -> None:
    """Refuse, before anything loads, an unknown attack, an unknown parameter or a missing required one."""
    if name not in ATTACKS:
        raise ConfigError(f"attack.name: unknown attack {name!r}; expected one of {sorted(ATTACKS)}")
    signature = inspect.signature(ATTACKS[name].__init__).parameters
    allowed = [p for p in signature if p not in ("self", "target")]
    for key in params:
        if key not in allowed or (key in supplied and key != "spacing"):
            raise ConfigError(f"attack.{key}: unknown parameter of attack {name!r}; allowed: "
                              f"{', '.join(p for p in allowed if p not in supplied)}")
    for key, p in signature.items():
        if key not in ("self", "target", *supplied) and p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD \
                and key not in params:
            raise ConfigError(f"attack.{key}: missing; attack {name!r} needs it")


def build_attack(name: str, target: Target, **params: Any) -> Attack:
    """The attack ``name`` on ``target``; ``ConfigError`` for an unknown name or parameter."""
    check_attack_params(name, params, supplied=())
    try:
        return ATTACKS[name](target, **params)
    except TypeError as exc:
        raise ConfigError(f"attack {name!r}: {exc}") from None


__all__ = ["ATTACKS", "HU_RANGE", "Attack", "AttackResult", "Candidates", "Ensemble", "FalsePositive",
           "GeneratorManipulation", "HopSkipJump",
           "LatentSearch", "NPSAscent", "NPSSearch", "OutOfDistribution", "PGD", "Square", "Target", "Twin",
           "build_attack", "check_attack_params", "project_to_nps", "run_attack", "torch_twin"]
