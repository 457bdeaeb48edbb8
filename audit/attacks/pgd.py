"""Projected gradient descent (ascent on the task loss) with an L-inf or L2 bound.

Madry et al. 2018, "Towards deep learning models resistant to adversarial
attacks"; settings of study 4 (lumbar-disk U-Net): eps 0.01-0.2 in model-input
units, step eps/5, 100 iterations, random start.

Threat model: ||p||_inf <= eps (sign step) or ||p||_2 <= eps (normalised
step), in the attack's space (``"input"`` by default, as in study 4, or
``"hu"`` with eps in HU), with the perturbed image kept in the valid range
(HU range or its preprocessed image; never a blanket [0, 1]). ``restarts``
random restarts; samples already flipped on the twin skip later restarts; the
candidate kept per sample is the first flip, else the highest-loss one.
Parameters of the twin never need gradients (``torch_twin`` freezes them),
2D/3D inputs go channels-last, each step clamps once (to the eps box
intersected with the valid range) in place, and the twin's decisions on the
final iterate come from the same forward pass as its loss: together 1.3-1.8x
torchattacks' PGD on this 2-core CPU, deployed re-run included
(``bench/attacks.py``). The loss reads the logit under a sigmoid/softmax output
when the twin exposes it (``audit.attacks.logits``).

Objectives (``audit.attacks.objectives``): ``task`` (default) and
``output_distance`` read the head's output only; ``evade_ood``, for a model
whose head names an ``ood_output``, flips the class while keeping the twin's
OOD score from rising above each sample's clean score (its loss reads the
head's output and the OOD output of the same forward pass; the penalty's unit
is the spread of the batch's clean scores, computed once per ``perturb`` over
the whole batch).
"""

from __future__ import annotations

from typing import Any, Sequence

from audit.attacks.base import HU_RANGE, Attack, Candidates, Target, positive, success
from audit.attacks.objectives import OBJECTIVES, OOD_OBJECTIVES, evade_ood, ood_scale, output_distance, task_loss
from audit.errors import ConfigError
from audit.artifact.heads import Decisions

NORMS = ("linf", "l2")
#: What ``objective`` may be.
PGD_OBJECTIVES = OBJECTIVES + OOD_OBJECTIVES


class PGD(Attack):
    """PGD: ``eps`` bound, ``alpha`` step (default eps/5), ``steps`` (100), ``norm`` linf|l2, ``random_start``,
    ``restarts`` (1), ``space`` input|hu (input), ``objective`` task|output_distance|evade_ood (task)."""

    name = "pgd"

    def __init__(self, target: Target, *, eps: float = 0.03, alpha: float | None = None, steps: int = 100,
                 norm: str = "linf", random_start: bool = True, restarts: int = 1, space: str = "input",
                 objective: str = "task", hu_range: Sequence[float] = HU_RANGE) -> None:
        super().__init__(target, space=space, hu_range=hu_range)
        if norm not in NORMS:
            raise ConfigError(f"attack.norm: expected one of {NORMS}, got {norm!r}")
        if objective not in PGD_OBJECTIVES:
            raise ConfigError(f"attack.objective: expected one of {PGD_OBJECTIVES}, got {objective!r}")
        if objective == "evade_ood" and not target.has_ood:
            why = ("names none" if target.head.ood_output is None
                   else f"names {target.head.ood_output!r}, which the torch twin does not output")
            raise ConfigError(f"attack.objective: 'evade_ood' keeps the OOD score down and needs a model whose head "
                              f"names an ood_output ([head] ood_output); this model's head {why}")
        self.eps = positive("eps", eps)
        self.alpha = self.eps / 5 if alpha is None else positive("alpha", alpha)
        self.steps, self.restarts = positive("steps", steps, integer=True), positive("restarts", restarts, integer=True)
        self.norm, self.random_start, self.objective = norm, bool(random_start), objective

    def loss(self, raw: Any, clean_raw: Any, labels: Any) -> Any:
        """The task part of the objective, on the output the losses read (see ``objective_loss``)."""
        if self.objective == "output_distance":
            return output_distance(raw, clean_raw)
        return task_loss(self.target.loss_head, raw, clean_raw, labels)

    def objective_loss(self, outs: Any, clean_raw: Any, labels: Any, ood_ref: tuple[Any, Any] | None) -> Any:
        """The objective on all twin outputs of one forward pass: ``loss`` on the output the losses read, and for
        ``evade_ood`` (``ood_ref``: the samples' clean OOD scores, the batch's ``ood_scale``) less the score's rise."""
        t = self.target
        task = self.loss(outs[t.loss_index], clean_raw, labels)
        return task if ood_ref is None else evade_ood(task, t.ood_score(outs), *ood_ref)

    def origin(self, v_clean: Any, generator: Any) -> Any:
        """Where the search starts (before the random start): the clean variable; other attacks override it."""
        return v_clean

    mode = "flip"

    def perturb(self, hu: Any, generator: Any) -> Candidates:
        import torch

        t = self.target
        v_clean = self.start(hu).detach()
        with torch.no_grad():
            clean_outs = t.outputs(self.model_input(v_clean))
        clean_raw, clean = clean_outs[t.loss_index], t.decisions(clean_outs)
        labels = torch.from_numpy(clean.labels)
        ood_ref = None
        if self.objective == "evade_ood":  # clean scores and their unit, once for the whole batch
            clean_ood = t.ood_score(clean_outs)
            ood_ref = (clean_ood, ood_scale(clean_ood))
        v0 = self.origin(v_clean, generator).detach()
        ref = clean if v0 is v_clean else t.decide(self.model_input(v0))
        lo, hi = self.bounds(v0)
        best = v0.clone()
        best_loss = torch.full((len(v0),), -float("inf"))
        done = torch.zeros(len(v0), dtype=torch.bool)
        zero_grad = torch.ones(len(v0), dtype=torch.bool)
        for _ in range(self.restarts):
            idx = torch.nonzero(~done)[:, 0]
            if len(idx) == 0:
                break
            v, loss, flat, adv = self.ascend(v0[idx], lo[idx], hi[idx], clean_raw[idx], labels[idx], generator,
                                             None if ood_ref is None else (ood_ref[0][idx], ood_ref[1]))
            zero_grad[idx] &= flat
            flipped = torch.from_numpy(success(t.head, self.mode, clean.take(idx.numpy()), ref.take(idx.numpy()), adv))
            better = flipped | (loss > best_loss[idx])
            best[idx[better]] = v[better]
            best_loss[idx[better]] = loss[better]
            done[idx[flipped]] = True
        # the kept candidate flipped the twin iff its sample is done (else it is the best loss of unflipped runs)
        return Candidates(best[:, None], self.space, {"zero_gradient_fraction": float(zero_grad.float().mean())},
                          reference=None if v0 is v_clean else v0, mode=self.mode, twin_flips=done[:, None].numpy())

    def ascend(self, v0: Any, lo: Any, hi: Any, clean_raw: Any, labels: Any,
               generator: Any, ood_ref: tuple[Any, Any] | None = None) -> tuple[Any, Any, Any, Decisions]:
        """One PGD run from (random) start; ``ood_ref`` (``evade_ood`` only): see ``objective_loss``.

        Returns the final variable, its loss, per-sample "the gradient was 0"
        (checked at the first step: a zero gradient leaves the variable where it
        is, so it stays 0 for the whole run) and the twin's decisions on it.
        """
        import torch

        b = len(v0)
        view = (b,) + (1,) * (v0.ndim - 1)
        if self.norm == "linf":  # one box per sample: the eps ball intersected with the valid range
            lo, hi = torch.maximum(v0 - self.eps, lo), torch.minimum(v0 + self.eps, hi)
        if self.random_start and self.norm == "linf":
            delta = (torch.rand(v0.shape, generator=generator, dtype=v0.dtype) * 2 - 1) * self.eps
        elif self.random_start:
            d = torch.randn(v0.shape, generator=generator, dtype=v0.dtype)
            r = torch.rand(b, generator=generator, dtype=v0.dtype) * self.eps
            delta = d / d.reshape(b, -1).norm(dim=1).clamp_min(1e-12).view(view) * r.view(view)
        else:
            delta = torch.zeros_like(v0)
        v = torch.clamp(v0 + delta, lo, hi)
        flat = torch.ones(b, dtype=torch.bool)
        for step in range(self.steps):
            v.requires_grad_(True)
            loss = self.objective_loss(self.target.outputs(self.model_input(v)), clean_raw, labels, ood_ref)
            (g,) = torch.autograd.grad(loss.sum(), v)
            v = v.detach()
            with torch.no_grad():
                if step == 0 or self.norm == "l2":
                    gn = g.reshape(b, -1).norm(dim=1)
                    if step == 0:
                        flat = gn == 0
                if self.norm == "linf":
                    v.add_(g.sign_(), alpha=self.alpha)
                else:
                    v.add_(g.mul_((self.alpha / gn.clamp_min(1e-12)).view(view)))
                    d = v.sub_(v0)
                    dn = d.reshape(b, -1).norm(dim=1).clamp_min(1e-12)
                    v = d.mul_(torch.clamp(self.eps / dn, max=1.0).view(view)).add_(v0)
                torch.clamp(v, lo, hi, out=v)
        t = self.target
        with torch.no_grad():
            outs = t.outputs(self.model_input(v))
            final = self.objective_loss(outs, clean_raw, labels, ood_ref)
        return v, final, flat, t.decisions(outs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "eps": self.eps, "alpha": self.alpha, "steps": self.steps, "norm": self.norm,
                "random_start": self.random_start, "restarts": self.restarts, "objective": self.objective}
