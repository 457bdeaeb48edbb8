"""The one small interface every attack implements, and the loop in which the deployed artifact decides.

An ``Attack`` holds a ``Target`` (the differentiable twin with the model's
preprocessing and head) and maps a batch of clean HU images to candidate
perturbed inputs: ``perturb(hu, generator) -> Candidates`` with K candidates per
sample. It works in one of two spaces:

- ``"hu"``: the variable is the HU image; the twin sees ``preprocess(hu + p)``,
  exactly as in a noise campaign (noise is added in HU before preprocessing);
  the valid range is ``hu_range`` (default [-1024, 3071] HU);
- ``"input"``: the variable is the model input after preprocessing (study 4's
  eps 0.01-0.2 are in these units); the valid range is the preprocessed image of
  ``hu_range`` ([0, 1] for a clipping window).

No clamping to [0, 1] is assumed: the range follows from the HU range and
window. A clean pixel outside the range stays where it is (the bound widens to
include it), so a perturbation never moves the clean image itself.

``run_attack`` then re-runs every candidate through the deployed engine: a
candidate counts as a success only if the deployed artifact's decision flips
(``Head.flipped``), and the result keeps both rates (twin and deployed).

Black-box attacks (``needs_twin = False``: Square, the NPS search, HopSkipJump)
query the deployed engine only (``Target.model``), so they also run on a
``Target.deployed(model)`` without a twin: a graph onnx2torch cannot convert,
a TensorRT or INT8 engine. Without a twin the "twin" rate is the attack's own
view from its engine queries (``Candidates.twin_flips``); with one, the twin
judges their candidates as it judges the gradient attacks'.

A model whose head names an out-of-distribution score (``ood_output``, study 4)
gets that score from the deployed engine on the clean inputs and on every
candidate (``AttackResult.clean_ood`` / ``adv_ood``); ``AttackResult.ood``
gives the detector's AUROC of clean against attacked inputs, per attack, by the
rule of the per-dose OOD block (``audit.metrics.ood.sample_ood_auroc``: pairs of
different samples only, cluster bootstrap over samples), and ``summary`` holds
it under ``ood``. The task and output-distance objectives
(``audit.attacks.objectives``) read the head's output only: their AUROCs are
those of attacks blind to the detector. PGD's ``evade_ood`` objective flips the
class while keeping the score from rising above the clean one (it reads the
twin's outputs as the head reads the engine's, ``Target.ood_score``): its AUROC
is that of an attack that targets the detector. The attack's ``objective`` is
in ``AttackResult.attack``.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Sequence

import numpy as np

from audit.artifact import AuditedModel, Decisions, Head, Preprocess
from audit.artifact.heads import OOD_UNCERTAINTY
from audit.attacks.logits import expose_logit
from audit.attacks.twin import Twin, torch_twin
from audit.errors import ConfigError, EngineError, InputError
from audit.io import progress_bar
from audit.metrics.ood import sample_ood_auroc

#: What the OOD block compares (``AttackResult.ood``): its in-distribution and OOD sides, and the score's unit.
OOD_DEFINITIONS = {
    "in_distribution": "clean inputs: one OOD score per attacked sample (deployed engine)",
    "ood": "the attack's candidates: K per sample, every candidate the deployed engine judged, successful or not",
    "positive": "attacked (higher score = OOD)",
    "score_unit": "the head's ood_output as the deployed engine gives it (higher = more OOD); AUROC is a probability",
}
#: Fewest samples with attacked inputs for an OOD AUROC interval: resampling 1-2 clusters gives a degenerate or
#: conditional interval (all successes in one sample: [1, 1] from the resamples that happen to draw it).
MIN_OOD_SAMPLES = 3
#: Default valid HU range: air to the top of a 12-bit scanner range.
HU_RANGE = (-1024.0, 3071.0)
SPACES = ("hu", "input")


@dataclass
class Target:
    """The twin plus how the deployed pipeline feeds and reads it.

    ``input_rank`` is the rank of the engine input with the batch axis (e.g. 5
    for (B, 1, D, H, W)); ``output_index`` which twin output the head reads.
    ``has_ood``: whether the twin outputs what the head's ``ood_output`` reads;
    ``ood_score`` reads it by the head's own rule (``Head.ood_of``).
    ``model``: the deployed artifact, which black-box attacks query; ``twin`` is
    None for a target of black-box attacks only (``Target.deployed``).
    """

    twin: Twin | None
    head: Head
    preprocess: Preprocess
    input_rank: int
    output_index: int = 0
    channels_last: bool = True
    attack_logits: bool = True
    model: AuditedModel | None = None
    no_twin_reason: str | None = None

    @classmethod
    def from_model(cls, model: AuditedModel, module: Any = None, *, parity_hu: np.ndarray | None = None,
                   attack_logits: bool = True) -> "Target":
        """The target of an audited ONNX model: ``module`` (torch) if given, else onnx2torch; parity-checked."""
        path = getattr(model.engine, "path", None)
        rank = len(model.engine.input_spec.shape)
        parity = None if parity_hu is None else model.prepare(np.asarray(parity_hu, np.float32))
        twin = torch_twin(module if module is not None else path, onnx_path=path, parity_inputs=parity)
        if path is None:
            twin.output_names = tuple(model.engine.output_names)
        names = twin.output_names
        index = names.index(model.head.output) if model.head.output in names else 0
        return cls(twin, model.head, model.preprocess, rank, index, attack_logits=attack_logits, model=model)

    @classmethod
    def deployed(cls, model: AuditedModel, reason: str | None = None) -> "Target":
        """A target without a twin, for black-box attacks: they query ``model``'s engine only. ``reason``: why
        there is no twin (e.g. the converter's refusal), recorded in ``describe``."""
        return cls(None, model.head, model.preprocess, len(model.engine.input_spec.shape), model=model,
                   no_twin_reason=reason)

    def __post_init__(self) -> None:
        import torch

        # what the losses read: the head's output, or the pre-activation of its sigmoid/softmax (audit.attacks.logits)
        self.loss_index, self.loss_head, self.loss_on = self.output_index, self.head, "output"
        if self.twin is None:
            self.loss_on = "deployed engine outputs (no twin)"
            return
        if self.attack_logits and self.head.task in ("binary", "multiclass"):
            found = expose_logit(self.twin.module, self.output_index)
            if found is not None:
                self.twin.module, kind, self.loss_index = found
                self.loss_head, self.loss_on = replace(self.head, activation=kind), f"logit ({kind})"
        if self.channels_last and self.input_rank in (4, 5):  # conv weights and inputs in the same (faster) layout
            fmt = torch.channels_last if self.input_rank == 4 else torch.channels_last_3d
            self.twin.module = self.twin.module.to(memory_format=fmt)

    # --- torch forward --------------------------------------------------------
    def to_input(self, hu: Any) -> Any:
        """HU (B, *shape) tensor -> model input (B, C, *shape), the torch version of ``Preprocess``."""
        lo, hi = self.preprocess.window
        x = (hu - lo) * (1.0 / (hi - lo))
        if self.preprocess.clip:
            x = x.clamp(0.0, 1.0)
        while x.ndim < self.input_rank:
            x = x[:, None]
        return x

    def outputs(self, x: Any) -> tuple[Any, ...]:
        import torch

        if self.twin is None:
            raise EngineError("this attack needs a torch twin, and this target has none (black-box attacks only)")
        if self.channels_last and x.ndim in (4, 5):
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
        return self.twin(x)

    def raw(self, x: Any) -> Any:
        """The output the losses read (``loss_index``: the head's output or its logit), for model input ``x``."""
        return self.outputs(x)[self.loss_index]

    @property
    def has_ood(self) -> bool:
        """Whether the twin outputs what the head reads its OOD score from (its ``ood_output``, or for
        ``"uncertainty"`` the head's own output)."""
        ood = self.head.ood_output
        return self.twin is not None and ood is not None and (ood == OOD_UNCERTAINTY or ood in self.twin.output_names)

    def ood_score(self, outs: Sequence[Any]) -> Any:
        """(B,) OOD score, differentiable, from all twin outputs of one forward pass, read as the head reads the
        engine's (``Head.ood_of``; an exposed logit, appended last, is not among the named outputs)."""
        if not self.has_ood:
            raise ConfigError("this target has no OOD output (the head names no ood_output, or the twin lacks it)")
        return self.head.ood_of(dict(zip(self.twin.output_names, outs)), "twin", outs[0].shape[0])

    def decide(self, x: Any) -> Decisions:
        """Decisions of the twin (NumPy), read by the same head as the deployed engine."""
        import torch

        if self.twin is None:  # no twin: the deployed engine is its own judge
            return self.model.decide_input(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32))
        with torch.no_grad():
            return self.decisions(self.outputs(x))

    def decisions(self, outs: Sequence[Any]) -> Decisions:
        """Decisions (NumPy) from all twin outputs of one forward pass."""
        return self.head.decide({n: o.detach().cpu().numpy() for n, o in zip(self.twin.output_names, outs)}, "twin")

    def describe(self) -> dict[str, Any]:
        if self.twin is None:
            outputs = list(self.model.engine.output_names) if self.model is not None else []
            return {"origin": "none (black-box: deployed engine queries only)", "outputs": outputs,
                    "parity_max_abs_diff": None, "parity_inputs": 0, "loss_on": self.loss_on,
                    "reason": self.no_twin_reason or "no attack planned needs one"}
        return {**self.twin.describe(), "loss_on": self.loss_on}

    def input_range(self, hu_range: tuple[float, float]) -> tuple[float, float]:
        lo, hi = self.preprocess.window
        a, b = ((v - lo) / (hi - lo) for v in hu_range)
        return (max(a, 0.0), min(b, 1.0)) if self.preprocess.clip else (a, b)


@dataclass
class Candidates:
    """K candidate perturbed variables per sample, in the attack's ``space``: ``values`` (B, K, *shape).

    ``reference`` (B, *shape), when set, is what a candidate is compared with
    instead of the clean image (the uniform-noise start of a false-positive
    search, an out-of-distribution image). ``mode``: ``"flip"`` (success = the
    decision differs from the reference's) or ``"match"`` (success = the
    decision equals the clean image's while the reference's did not).
    ``twin_flips`` (B, K) bool, when the attack already knows them from its own
    last forward pass, spares ``run_attack`` re-running the twin.
    """

    values: Any
    space: str
    notes: dict[str, Any] = field(default_factory=dict)
    reference: Any = None
    mode: str = "flip"
    twin_flips: np.ndarray | None = None


class Attack:
    """Base class. Subclasses set ``name`` and implement ``perturb``; the docstring says paper, threat model, defaults."""

    name: ClassVar[str] = ""
    #: False for black-box attacks: they query the deployed engine (``Target.model``) and need no torch twin.
    needs_twin: ClassVar[bool] = True

    @classmethod
    def wants_twin(cls, params: dict[str, Any]) -> bool:
        """Whether this attack, with the ``[attack]`` parameters ``params``, needs a torch twin (the ensemble's
        answer depends on its members)."""
        return cls.needs_twin

    @classmethod
    def wants_nps(cls, params: dict[str, Any]) -> bool:
        """Whether this attack, with ``params``, runs at a dose of ``[noise]`` (it takes the dose's ``nps``; the
        pipelines then run it once per dose and the config keeps ``[noise]`` for it)."""
        return "nps" in inspect.signature(cls.__init__).parameters

    def __init__(self, target: Target, *, space: str = "hu", hu_range: Sequence[float] = HU_RANGE) -> None:
        if self.needs_twin and target.twin is None:
            why = f": {target.no_twin_reason}" if target.no_twin_reason else ""
            raise EngineError(f"attack {self.name!r} is a gradient attack and needs a torch twin; this target has "
                              f"none (black-box attacks only){why}")
        if space not in SPACES:
            raise ConfigError(f"attack.space: expected one of {SPACES}, got {space!r}")
        if len(hu_range) != 2 or not float(hu_range[0]) < float(hu_range[1]):
            raise ConfigError(f"attack.hu_range: expected [lo, hi] with lo < hi (HU), got {list(hu_range)!r}")
        self.target, self.space = target, space
        self.hu_range = (float(hu_range[0]), float(hu_range[1]))
        self.valid_range = self.hu_range if space == "hu" else target.input_range(self.hu_range)

    # --- helpers shared by the attacks ---------------------------------------
    def start(self, hu: Any) -> Any:
        """The clean variable in the attack's space."""
        return hu if self.space == "hu" else self.target.to_input(hu)

    def forward(self, v: Any) -> Any:
        """Raw head output for a variable in the attack's space."""
        return self.target.raw(self.target.to_input(v) if self.space == "hu" else v)

    def bounds(self, v0: Any) -> tuple[Any, Any]:
        """Elementwise valid range, widened to include the clean variable ``v0``."""
        import torch

        lo, hi = self.valid_range
        return torch.clamp(v0, max=lo), torch.clamp(v0, min=hi)

    def model_input(self, v: Any) -> Any:
        return self.target.to_input(v) if self.space == "hu" else v

    def perturb(self, hu: Any, generator: Any) -> Candidates:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "space": self.space, "hu_range": list(self.hu_range),
                "valid_range": [float(v) for v in self.valid_range]}


def positive(name: str, value: Any, *, integer: bool = False) -> Any:
    """``value`` if it is a positive number (an integer >= 1 with ``integer``), else ``ConfigError`` naming ``name``."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"attack.{name}: expected an integer >= 1, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"attack.{name}: expected a number > 0, got {value!r}")
    return float(value)


@dataclass
class AttackResult:
    """Per-sample outcome of an attack on N samples with K candidates each.

    ``torch_flips``/``deployed_flips`` (N, K) bool: the twin's and the deployed
    artifact's decision changed against their own clean decisions.
    ``clean_labels``/``adv_labels`` are the deployed decisions (adv: of the first
    flipped candidate, else candidate 0); ``linf``/``l2`` the perturbation norms
    (N, K) in the attack's space. ``examples`` keeps up to ``keep`` flipped
    cases as (index, k, clean model input, attacked model input);
    ``adv_inputs`` (N, C, ...) the model input of the candidate ``adv_labels``
    describes, when ``run_attack`` was asked for them (retraining adds them).
    ``clean_ood`` (N,) and ``adv_ood`` (N, K) float32: the deployed engine's OOD
    score (the head's ``ood_output``) on the clean input and on every candidate;
    None when the head names none.
    """

    attack: dict[str, Any]
    ids: list[str]
    torch_flips: np.ndarray
    deployed_flips: np.ndarray
    clean_labels: np.ndarray
    adv_labels: np.ndarray
    clean_scores: np.ndarray
    adv_scores: np.ndarray
    linf: np.ndarray
    l2: np.ndarray
    seconds: float
    seed: int
    notes: dict[str, Any] = field(default_factory=dict)
    examples: list[tuple[int, int, np.ndarray, np.ndarray]] = field(default_factory=list)
    adv_inputs: np.ndarray | None = None
    clean_ood: np.ndarray | None = None
    adv_ood: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.torch_flips.shape[0])

    @property
    def k(self) -> int:
        return int(self.torch_flips.shape[1])

    def success_rates(self) -> tuple[float, float]:
        """(twin, deployed) success rates over samples: a sample succeeds if any of its K candidates flips."""
        if not self.n:
            return 0.0, 0.0
        return float(self.torch_flips.any(axis=1).mean()), float(self.deployed_flips.any(axis=1).mean())

    def summary(self) -> dict[str, Any]:
        """Rates over samples (``success_rates``), SAN and SAR (DESIGN.md), and the OOD block (``ood``: two
        bootstraps; callers wanting only the rates call ``success_rates``)."""
        n_i = self.deployed_flips.sum(axis=1)
        torch_rate, deployed_rate = self.success_rates()
        out = {
            "n": self.n, "k": self.k, "torch_success_rate": torch_rate, "deployed_success_rate": deployed_rate,
            "san": int((n_i >= 1).sum()), "san_fraction": deployed_rate,
            "sar_mean": float((n_i / self.k).mean()) if self.n else 0.0,
            "torch_only": int((self.torch_flips & ~self.deployed_flips).sum()),
            "max_linf": float(self.linf.max(initial=0.0)), "max_l2": float(self.l2.max(initial=0.0)),
            "seconds": round(self.seconds, 3), "seed": self.seed,
        }
        if out["san"] == 0:
            out["verdict"] = (f"no perturbation found by {self.attack.get('name')} flipped the deployed model on any of "
                              f"{self.n} samples")
            if self.notes.get("zero_gradient_fraction", 0.0) >= 1.0:
                out["verdict"] += "; the model's output does not depend on its input (zero gradient everywhere)"
        else:
            out["verdict"] = f"{out['san']} of {self.n} samples flipped on the deployed model"
        ood = self.ood()
        if ood is not None:
            out["ood"] = ood
        return out

    def ood(self, confidence: float = 0.95) -> dict[str, Any] | None:
        """The OOD detector on this attack (module notes): AUROC of the clean inputs' scores against all K
        candidates of each sample, with its 95% cluster-bootstrap interval over samples (2000 resamples, seed 0),
        ``paired`` (the mean over samples of P(a candidate > its own clean score)), the mean scores, and the same
        AUROC over the successful candidates only (``successful``: the inputs that flipped the deployed model);
        None when the model has no OOD output."""
        if self.clean_ood is None or self.adv_ood is None:
            return None
        clean, adv = np.asarray(self.clean_ood, np.float64), np.asarray(self.adv_ood, np.float64)
        out: dict[str, Any] = {}
        for key, keep in (("all", None), ("successful", self.deployed_flips)):
            a, non_finite = sample_ood_auroc(clean, adv, confidence, keep=keep)
            kept = adv if keep is None else adv[keep]
            part = {"auroc": None, "ci": [None, None]} if a is None else a.to_dict()
            rows = np.isfinite(adv) & (True if keep is None else np.asarray(keep, bool))
            samples = int(rows.any(axis=1).sum())  # samples with an attacked input counted: the clusters on that side
            part.update(non_finite=non_finite, mean_clean=_finite_mean(clean), mean_attacked=_finite_mean(kept),
                        samples_attacked=samples)
            if a is None:
                part["note"] = ("no successful candidate" if key == "successful" and not kept.size
                                else "no finite OOD score on one side: the AUROC is undefined")
            elif part.get("auroc") is None or not np.isfinite(part["auroc"]):
                part.update(auroc=None, ci=[None, None],
                            note="undefined: only pairs of different samples count, and there are none (one sample)")
            elif samples < MIN_OOD_SAMPLES:  # a bootstrap over 1-2 clusters on one side says nothing about spread
                part["ci"] = [None, None]
                part["note"] = (f"attacked inputs from {samples} sample(s): no interval (a bootstrap over samples "
                                f"needs {MIN_OOD_SAMPLES} or more on each side)")
            out[key] = part
        out["successful"]["ood"] = "successful candidates only (a success on the deployed model, as the SAN counts it)"
        return {**out.pop("all"), **OOD_DEFINITIONS, **out}


def run_attack(attack: Attack, model: AuditedModel, hu: np.ndarray, *, seed: int = 0, batch_size: int = 16,
               ids: Sequence[str] | None = None, keep: int = 4, progress: bool | None = None,
               return_inputs: bool = False) -> AttackResult:
    """Attack the HU images ``hu`` (N, *shape) with ``attack`` and let the deployed ``model`` decide.

    ``return_inputs`` keeps every sample's attacked model input (``AttackResult.adv_inputs``).

    Batch b uses ``torch.Generator().manual_seed(seed + b * 1_000_003)``, so a
    result depends on ``seed`` and ``batch_size`` only, never on global RNG state.
    """
    import torch

    hu = np.asarray(hu, np.float32)
    if hu.ndim < 2 or len(hu) == 0:
        raise InputError(f"attack data: expected a non-empty batch of images (N, *shape), got shape {hu.shape}")
    if not np.isfinite(hu).all():
        raise InputError("attack data: images contain NaN or inf")
    n = len(hu)
    ids = list(ids) if ids is not None else [str(i) for i in range(n)]
    head = model.head
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("tf", "df", "cl", "al", "cs", "as", "li", "l2", "x", "co",
                                                          "ao")}
    examples: list[tuple[int, int, np.ndarray, np.ndarray]] = []
    notes: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    bar = progress_bar(n, progress, attack.name)
    for b, start in enumerate(range(0, n, batch_size)):
        chunk = hu[start : start + batch_size]
        gen = torch.Generator().manual_seed(int(seed) + b * 1_000_003)
        hu_t = torch.from_numpy(chunk)
        x_clean_t = attack.target.to_input(hu_t)
        d_clean = model.decide(chunk)
        cands = attack.perturb(hu_t, gen)
        twin_known = cands.twin_flips is not None
        t_clean = None if twin_known else attack.target.decide(x_clean_t)
        t_ref, d_ref = t_clean, d_clean
        if cands.reference is not None:
            ref = cands.reference.detach()
            t_ref = None if twin_known else attack.target.decide(attack.model_input(ref))
            d_ref = model.decide(ref.numpy()) if cands.space == "hu" else model.decide_input(
                np.ascontiguousarray(attack.model_input(ref).numpy(), dtype=np.float32))
        for key, value in cands.notes.items():
            notes.setdefault(key, []).append(float(value) * len(chunk))
        v = cands.values.detach()
        v0 = (attack.start(hu_t) if cands.reference is None else cands.reference).detach()
        kk = v.shape[1]
        tf = np.zeros((len(chunk), kk), bool)
        df = np.zeros((len(chunk), kk), bool)
        adv_ood = None if d_clean.ood is None else np.full((len(chunk), kk), np.nan, np.float32)
        # What the table calls "clean": the decision a success is judged against (for an attack that starts from
        # a reference, e.g. the false-positive attack's uniform-noise patch, that start; not the real image).
        base = d_ref if cands.reference is not None and cands.mode == "flip" else d_clean
        adv_labels, adv_scores = base.labels.copy(), base.scores.copy()
        adv_x = None
        first = np.full(len(chunk), -1)
        diff = (v - v0[:, None]).reshape(len(chunk), kk, -1)
        li, l2 = diff.abs().amax(-1).numpy(), diff.norm(dim=-1).numpy()
        for k in range(kk):
            vk = v[:, k]
            x_adv = attack.model_input(vk)
            if cands.space == "hu":
                d_adv = model.decide(vk.numpy())
            else:
                d_adv = model.decide_input(np.ascontiguousarray(x_adv.numpy(), dtype=np.float32))
            tf[:, k] = (cands.twin_flips[:, k] if twin_known
                        else success(head, cands.mode, t_clean, t_ref, attack.target.decide(x_adv)))
            df[:, k] = success(head, cands.mode, d_clean, d_ref, d_adv)
            if adv_ood is not None:
                adv_ood[:, k] = d_adv.ood
            new = df[:, k] & (first < 0)
            first[new] = k
            take = new | ((k == 0) & ~df[:, k])
            adv_labels[take], adv_scores[take] = d_adv.labels[take], d_adv.scores[take]
            if return_inputs:
                adv_x = x_adv.detach().numpy().copy() if adv_x is None else adv_x
                adv_x[take] = x_adv.detach().numpy()[take]
            for i in np.nonzero(new)[0]:
                if len(examples) < keep:
                    examples.append((start + int(i), k, x_clean_t[i].numpy().copy(), x_adv[i].numpy().copy()))
        for key, val in (("tf", tf), ("df", df), ("cl", base.labels), ("al", adv_labels), ("cs", base.scores),
                         ("as", adv_scores), ("li", li), ("l2", l2), ("x", adv_x), ("co", d_clean.ood), ("ao", adv_ood)):
            if val is not None:
                parts[key].append(np.asarray(val))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    cat = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    return AttackResult(attack.describe(), ids, cat["tf"], cat["df"], cat["cl"], cat["al"], cat["cs"], cat["as"],
                        cat["li"], cat["l2"], time.perf_counter() - t0, int(seed),
                        {k: sum(v) / n for k, v in notes.items()}, examples, cat["x"], cat["co"], cat["ao"])


def _finite_mean(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def success(head: Head, mode: str, clean: Decisions, ref: Decisions, adv: Decisions) -> np.ndarray:
    """(B,) bool: ``"flip"``: ``adv`` differs from ``ref``; ``"match"``: ``adv`` agrees with ``clean`` and ``ref`` did not."""
    if mode == "match":
        return ~head.flipped(clean, adv)[0] & head.flipped(clean, ref)[0]
    return head.flipped(ref, adv)[0]
