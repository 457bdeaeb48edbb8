"""NoduleNet3D (study 1): 3D lung-nodule malignancy classifier on 32^3 cubes.

Default: 4 x (Conv3d 3^3 + ReLU) with max-pooling down to 4^3, then 4 fully
connected layers and a sigmoid: P(malignant), shape (B, 1). The study's
variants change one thing each (``NODULE_VARIANTS``); ``rating`` swaps the
sigmoid for a malignancy-rating regression head, 1 + 4 sigmoid(z) in [1, 5].
"""

from __future__ import annotations

import torch
from torch import nn

#: Variant name -> what differs from the default.
NODULE_VARIANTS: dict[str, dict] = {
    "default": {},
    "batchnorm": {"batchnorm": True},
    "dropout0.1": {"dropout": 0.1},
    "dropout0.2": {"dropout": 0.2},
    "deeper": {"channels": (8, 16, 16, 32, 32, 32)},
    "shallower": {"channels": (16, 32)},
    "wider": {"channels": (16, 32, 64, 64)},
    "narrower": {"channels": (4, 8, 16, 16)},
    "rating": {"head": "rating"},
}
_DEFAULT = {"channels": (8, 16, 32, 32), "fc": (64, 32, 16), "batchnorm": False, "dropout": 0.0, "head": "binary"}


class NoduleNet3D(nn.Module):
    """Input (B, 1, 32, 32, 32): HU windowed to [0, 1]. Output (B, 1): P(malignant) or a rating in [1, 5]."""

    def __init__(self, variant: str = "default", size: int = 32) -> None:
        super().__init__()
        if variant not in NODULE_VARIANTS:
            raise ValueError(f"NoduleNet3D variant: expected one of {sorted(NODULE_VARIANTS)}, got {variant!r}")
        cfg = {**_DEFAULT, **NODULE_VARIANTS[variant]}
        self.variant, self.head = variant, cfg["head"]
        chans = cfg["channels"]
        # Pool after convs spread evenly so that three halvings take 32^3 to 4^3.
        n = len(chans)
        pool_after = {round((j + 1) * n / 3) - 1 for j in range(3)} if n >= 3 else set(range(n))
        layers: list[nn.Module] = []
        c_in, spatial = 1, size
        for i, c in enumerate(chans):
            layers.append(nn.Conv3d(c_in, c, 3, padding=1))
            if cfg["batchnorm"]:
                layers.append(nn.BatchNorm3d(c))
            layers.append(nn.ReLU())
            if i in pool_after:
                layers.append(nn.MaxPool3d(2))
                spatial //= 2
            c_in = c
        if spatial > 4:
            layers.append(nn.MaxPool3d(spatial // 4))
            spatial = 4
        self.features = nn.Sequential(*layers)
        fc: list[nn.Module] = [nn.Flatten()]
        f_in = c_in * spatial**3
        for f in cfg["fc"]:
            fc += [nn.Linear(f_in, f), nn.ReLU()]
            if cfg["dropout"]:
                fc.append(nn.Dropout(cfg["dropout"]))
            f_in = f
        fc.append(nn.Linear(f_in, 1))
        self.classifier = nn.Sequential(*fc)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.sigmoid(self.logits(x))
        return 1.0 + 4.0 * z if self.head == "rating" else z
