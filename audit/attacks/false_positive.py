"""False positives from noise (study 3): PGD from uniform noise towards a patch the model calls positive.

Study 3 (nodule false-positive reduction): starting from a patch of uniform
noise U(noise_low, noise_high) HU, which the model rightly calls negative,
PGD with an L-inf (or L2) bound ``eps`` around that start raises P(``target_class``)
until the model calls the patch positive. The input image only gives the
shape; success = the deployed decision on the patch differs from its decision
on the uniform-noise start. Defaults: HU space, eps 100 HU, step eps/5, 100
iterations, noise U(-1000, -600) HU (lung parenchyma to ground glass).
"""

from __future__ import annotations

from typing import Any, Sequence

from audit.attacks.base import HU_RANGE, Target
from audit.attacks.objectives import log_probabilities
from audit.attacks.pgd import PGD
from audit.errors import ConfigError


class FalsePositive(PGD):
    """``noise_low``/``noise_high`` (HU), ``target_class`` (1), plus PGD's eps, alpha, steps, norm, restarts."""

    name = "false_positive"

    def __init__(self, target: Target, *, eps: float = 100.0, alpha: float | None = None, steps: int = 100,
                 norm: str = "linf", restarts: int = 1, noise_low: float = -1000.0, noise_high: float = -600.0,
                 target_class: int = 1, hu_range: Sequence[float] = HU_RANGE) -> None:
        super().__init__(target, eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=False, restarts=restarts,
                         space="hu", hu_range=hu_range)
        if target.head.task not in ("binary", "multiclass"):
            raise ConfigError(f"attack false_positive: needs a classification head, the model's task is {target.head.task!r}")
        if not float(noise_low) < float(noise_high):
            raise ConfigError(f"attack.noise_low/noise_high: expected low < high (HU), got {noise_low!r}, {noise_high!r}")
        self.noise = (float(noise_low), float(noise_high))
        n = max(target.head.n_classes, 2)
        if isinstance(target_class, bool) or not isinstance(target_class, int) or not 0 <= target_class < n:
            raise ConfigError(f"attack.target_class: expected an integer in [0, {n - 1}], got {target_class!r}")
        self.target_class = target_class

    def origin(self, v_clean: Any, generator: Any) -> Any:
        import torch

        lo, hi = self.noise
        return lo + (hi - lo) * torch.rand(v_clean.shape, generator=generator, dtype=v_clean.dtype)

    def loss(self, raw: Any, clean_raw: Any, labels: Any) -> Any:
        return log_probabilities(self.target.loss_head, raw)[:, self.target_class]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "noise_low": self.noise[0], "noise_high": self.noise[1],
                "target_class": self.target_class}
