"""An ensemble of attacks: per sample, the worst case over its members, as AutoAttack reports robust accuracy.

Croce and Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks": a sample counts as robust only if
no attack of the ensemble flips it. Here every member attacks every sample (so
each keeps its own rate), its candidates are columns of one candidate set, and
``run_attack`` lets the deployed engine decide every column: the block's
deployed success rate is the per-sample worst case (a sample succeeds if any
member's candidate flips it), and ``extra_report`` gives the robust rate (1 -
that) beside each member's own success and robust rates (and its own extras,
e.g. queries per success; and, for a model with an OOD output, the OOD
detector's AUROC on that member's candidates, ``AttackResult.ood``).

Members (``attacks``): the flip attacks ``pgd``, ``nps_ascent`` (white-box, on
the torch twin) and ``square``, ``nps_search``, ``hopskipjump`` (black-box, the
deployed engine only); default ``["pgd", "square"]``. White-box members run
where a twin exists: when the ONNX graph cannot be converted the pipeline
gives the ensemble a target without a twin and the white-box members are
skipped, named with the converter's reason (``notes``/``extra_report``), unless
no member is left. Shared parameters go to every member that takes them:
``eps``, ``norm``, ``space`` (one space for all, ``"hu"`` by default, as the
candidates are compared in it; the NPS members are HU only), ``hu_range`` and
the pipeline's ``nps``/``spacing``; ``params`` holds per-member overrides,
e.g. ``[attack.params.square] queries = 1000``.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from audit.attacks.base import HU_RANGE, Attack, AttackResult, Candidates, Target
from audit.attacks.hopskipjump import HopSkipJump
from audit.attacks.nps_ascent import NPSAscent
from audit.attacks.nps_search import NPSSearch
from audit.attacks.pgd import PGD
from audit.attacks.square import Square
from audit.errors import ConfigError, EngineError

#: The attacks an ensemble can hold (flip attacks from the clean image; one home, no strings built).
MEMBERS: dict[str, type[Attack]] = {c.name: c for c in (PGD, NPSAscent, Square, NPSSearch, HopSkipJump)}
DEFAULT_MEMBERS = ("pgd", "square")
#: Parameters the ensemble shares with every member that takes them.
SHARED = ("eps", "norm", "space", "hu_range", "nps", "spacing")


def _names(attacks: Any) -> list[str]:
    names = list(DEFAULT_MEMBERS) if attacks is None else attacks
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
        raise ConfigError(f"attack.attacks: expected a non-empty list of attack names from {sorted(MEMBERS)}, "
                          f"got {attacks!r}")
    for n in names:
        if n not in MEMBERS:
            raise ConfigError(f"attack.attacks: unknown member {n!r}; expected names from {sorted(MEMBERS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"attack.attacks: a member is listed twice in {list(names)!r}")
    return list(names)


class Ensemble(Attack):
    """Per-sample worst case over ``attacks`` (module notes): ``attacks`` (["pgd", "square"]), shared ``eps``,
    ``norm``, ``space`` (hu), ``hu_range``, the pipeline's ``nps``/``spacing``, per-member ``params``."""

    name = "ensemble"
    needs_twin = False
    #: The pipeline may give the ensemble a target without a twin when the twin cannot be built.
    twin_optional = True

    @classmethod
    def wants_twin(cls, params: dict[str, Any]) -> bool:
        return any(MEMBERS[n].needs_twin for n in _names(params.get("attacks")) if n in MEMBERS)

    @classmethod
    def wants_nps(cls, params: dict[str, Any]) -> bool:
        """Whether a member runs at a dose (the pipeline then runs the ensemble once per dose)."""
        return any(MEMBERS[n].wants_nps({}) for n in _names(params.get("attacks")))

    def __init__(self, target: Target, *, attacks: Sequence[str] | None = None, eps: float | None = None,
                 norm: str | None = None, space: str = "hu", nps: Any = None, spacing: Sequence[float] | None = None,
                 params: dict[str, dict[str, Any]] | None = None, hu_range: Sequence[float] = HU_RANGE) -> None:
        super().__init__(target, space=space, hu_range=hu_range)
        names = _names(attacks)
        params = {} if params is None else params
        if not isinstance(params, dict) or any(not isinstance(v, dict) for v in params.values()):
            raise ConfigError(f"attack.params: expected a table per member, e.g. params.square = {{queries = 1000}}, "
                              f"got {params!r}")
        for key in params:
            if key not in names:
                raise ConfigError(f"attack.params.{key}: not a member of this ensemble {names}")
        shared = {"eps": eps, "norm": norm, "space": space, "hu_range": list(hu_range), "nps": nps,
                  "spacing": spacing}
        self.skipped: dict[str, str] = {}
        self.members: list[tuple[str, Attack]] = []
        for n in names:
            cls = MEMBERS[n]
            if cls.needs_twin and target.twin is None:
                self.skipped[n] = f"needs a torch twin: {target.no_twin_reason or 'none was built'}"
                continue
            sig = inspect.signature(cls.__init__).parameters
            own = dict(params.get(n, {}))
            for key in own:
                if key not in sig or key in ("self", "target", "nps", "spacing"):
                    raise ConfigError(f"attack.params.{n}.{key}: unknown parameter of attack {n!r}; allowed: "
                                      f"{', '.join(p for p in sig if p not in ('self', 'target', 'nps', 'spacing'))}")
            if "space" not in sig and space != "hu":
                raise ConfigError(f"attack.space: member {n!r} works in HU only; an ensemble's candidates share one "
                                  f"space, so use space = \"hu\"")
            kwargs = {k: v for k, v in shared.items() if k in sig and v is not None and k not in own}
            kwargs.update(own)
            if "nps" in sig and kwargs.get("nps") is None:
                raise ConfigError(f"attack ensemble: member {n!r} needs the [noise] NPS target (supplied per dose)")
            try:
                self.members.append((n, cls(target, **kwargs)))
            except TypeError as exc:
                raise ConfigError(f"attack ensemble, member {n!r}: {exc}") from None
        if not self.members:  # every member was skipped for want of a twin: the twin's refusal is the reason
            raise EngineError(f"attack ensemble: no member can run ({'; '.join(f'{k} {v}' for k, v in self.skipped.items())})")
        self.columns: list[tuple[str, int, int]] = []

    def perturb(self, hu: Any, generator: Any) -> Candidates:
        import torch

        values, twin, notes, columns = [], [], {}, []
        clean = self.start(hu).detach()
        for n, attack in self.members:
            c = attack.perturb(hu, generator)
            own_start = c.reference is None or torch.equal(c.reference.detach(), clean)  # PGD names the clean start
            if not own_start or c.mode != "flip" or c.space != self.space:
                raise ConfigError(f"attack ensemble: member {n!r} returned candidates the ensemble cannot compare")
            start = sum(v.shape[1] for v in values)
            columns.append((n, start, start + c.values.shape[1]))
            values.append(c.values.detach())
            twin.append(c.twin_flips)
            notes.update({f"{n}.{k}": v for k, v in c.notes.items()})
        self.columns = columns
        twin_flips = np.concatenate(twin, axis=1) if all(t is not None for t in twin) else None
        return Candidates(torch.cat(values, 1), self.space, notes, twin_flips=twin_flips)

    def extra_report(self, result: AttackResult, source: Any = None) -> dict[str, Any]:
        """The robust rate (no member flipped the sample) beside each member's own success and robust rates and
        its own extras, and the members skipped for want of a twin."""
        out: dict[str, Any] = {"worst_case_success_rate": float(result.deployed_flips.any(axis=1).mean()),
                               "robust_rate": float(1.0 - result.deployed_flips.any(axis=1).mean()),
                               "members": [], "skipped": dict(self.skipped)}
        attacks = dict(self.members)
        for n, a, b in self.columns:
            sub = replace(result, attack=attacks[n].describe(), torch_flips=result.torch_flips[:, a:b],
                          deployed_flips=result.deployed_flips[:, a:b], linf=result.linf[:, a:b],
                          l2=result.l2[:, a:b], examples=[], adv_inputs=None,
                          adv_ood=None if result.adv_ood is None else result.adv_ood[:, a:b])
            own = sub.deployed_flips.any(axis=1)
            row = {"name": n, "columns": [a, b], "deployed_success_rate": float(own.mean()),
                   "torch_success_rate": float(sub.torch_flips.any(axis=1).mean()),
                   "robust_rate": float(1.0 - own.mean()), "max_linf": float(sub.linf.max(initial=0.0)),
                   "max_l2": float(sub.l2.max(initial=0.0)),
                   "only_this_member": int((own & ~np.delete(result.deployed_flips, np.s_[a:b], axis=1).any(axis=1)).sum())}
            ood = sub.ood()  # the OOD detector on this member's candidates (None: the model has no OOD output)
            if ood is not None:
                row["ood"] = ood
            member_extra = getattr(attacks[n], "extra_report", None)
            if member_extra is not None:
                row["extra"] = member_extra(sub, source)
            out["members"].append(row)
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "attacks": [n for n, _ in self.members], "skipped": dict(self.skipped),
                "members": [a.describe() for _, a in self.members]}
