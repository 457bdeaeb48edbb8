"""Out-of-distribution attack (study 4): from an image of another kind, drive the outputs to the clean sample's.

Study 4 (lumbar-disk U-Net): the start is an image the model was never meant
to see (``ood``: an array (M, *shape) in HU, or the path of a .npy file; sample
i starts from ood[i % M]); PGD within ``eps`` of it minimises
||D(v) - D(x_clean)||^2. Success: the deployed decision on the perturbed
out-of-distribution image equals the one on the clean sample while the
unperturbed one did not (``mode = "match"``). Defaults: input space, eps 0.05,
step eps/5, 100 iterations, random start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.attacks.base import HU_RANGE, Target
from audit.attacks.objectives import output_distance
from audit.attacks.pgd import PGD
from audit.errors import ConfigError, InputError


class OutOfDistribution(PGD):
    """``ood`` images (HU) plus PGD's eps, alpha, steps, norm, random_start, restarts, space."""

    name = "ood"
    mode = "match"

    def __init__(self, target: Target, *, ood: Any, eps: float = 0.05, alpha: float | None = None, steps: int = 100,
                 norm: str = "linf", random_start: bool = True, restarts: int = 1, space: str = "input",
                 hu_range: Sequence[float] = HU_RANGE) -> None:
        super().__init__(target, eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start,
                         restarts=restarts, space=space, hu_range=hu_range)
        if isinstance(ood, (str, Path)):
            try:
                ood = np.load(str(ood), allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InputError(f"attack.ood: cannot read {ood} as a .npy array of HU images ({exc})") from None
        ood = np.asarray(ood, np.float32)
        if ood.ndim < 3 or not np.isfinite(ood).all():
            raise ConfigError(f"attack.ood: expected finite HU images (M, *shape), got shape {ood.shape}")
        self.ood = ood
        self._next = 0

    def origin(self, v_clean: Any, generator: Any) -> Any:
        import torch

        if tuple(self.ood.shape[1:]) != tuple(v_clean.shape[-self.ood.ndim + 1:]):
            raise InputError(f"attack.ood: images of shape {self.ood.shape[1:]} do not match the data's "
                             f"{tuple(v_clean.shape[-self.ood.ndim + 1:])}")
        idx = (self._next + np.arange(len(v_clean))) % len(self.ood)
        self._next += len(v_clean)
        return self.start(torch.from_numpy(self.ood[idx]))

    def loss(self, raw: Any, clean_raw: Any, labels: Any) -> Any:
        return -output_distance(raw, clean_raw)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ood_images": int(len(self.ood))}
