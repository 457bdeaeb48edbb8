"""Generator manipulation (study 5): an image-to-image model (e.g. a CycleGAN generator) is the perturbation.

The generator (an ONNX file run by ONNX Runtime; no gradients needed) maps an
image to a manipulated one, e.g. injecting or removing a finding. In
``space = "input"`` (default) it maps model inputs to model inputs, in
``"hu"`` HU images to HU images; input (B, 1, *shape) or (B, *shape) as its
ONNX signature says. Success: the deployed decision on the manipulated image
differs from the one on the original. With ground-truth ``labels`` (binary)
the report adds the deployed model's AUC on original and manipulated images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.attacks.base import HU_RANGE, Attack, AttackResult, Candidates, Target
from audit.engines import load_engine
from audit.errors import EngineError
from audit.metrics.classification import auc


class GeneratorManipulation(Attack):
    """``generator`` (ONNX path), ``space`` input|hu (input)."""

    name = "generator"
    needs = ("labels",)

    def __init__(self, target: Target, *, generator: str | Path, space: str = "input", labels: Any = None,
                 hu_range: Sequence[float] = HU_RANGE) -> None:
        super().__init__(target, space=space, hu_range=hu_range)
        self.path = Path(generator)
        self.engine = load_engine(self.path)
        self.labels = None if labels is None else np.asarray(labels)

    def perturb(self, hu: Any, generator: Any) -> Candidates:
        import torch

        v = self.start(hu)
        rank = len(self.engine.input_spec.shape)
        x = v.numpy().astype(np.float32)
        while x.ndim < rank:
            x = x[:, None]
        while x.ndim > rank and x.shape[1] == 1:
            x = x[:, 0]
        out = next(iter(self.engine.run(np.ascontiguousarray(x)).values()))
        if out.size != v.numel():
            raise EngineError(f"{self.path}: generator output {out.shape} does not match its input {tuple(v.shape)}")
        return Candidates(torch.from_numpy(out.reshape(v.shape).astype(np.float32))[:, None], self.space)

    def extra_report(self, result: AttackResult, source: Any) -> dict[str, Any]:
        """Flip rate and, with binary ground truth, the deployed AUC on original vs manipulated images."""
        out: dict[str, Any] = {"flip_rate": float(result.deployed_flips.any(1).mean())}
        labels = self.labels if self.labels is not None else getattr(source, "labels", None)
        if labels is not None and self.target.head.task == "binary":
            labels = np.asarray(labels)
            ok = labels >= 0
            if len(np.unique(labels[ok])) == 2:
                out["auc_clean"] = float(auc(labels[ok], result.clean_scores[ok]))
                out["auc_manipulated"] = float(auc(labels[ok], result.adv_scores[ok]))
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "generator": str(self.path)}
