"""BodySiteNet2D (study 2): 4-class body-site classifier on axial slices.

3 x (Conv2d [+ BatchNorm] + ReLU + max-pool), FC + ReLU, dropout, FC + softmax. The first
convolution has stride 2 so a 256^2 slice (1.5 mm) is handled at the cost of a
128^2 one; the output is the softmax over the 4 classes, shape (B, 4).

``batch_norm`` (off by default, the study's layout) normalises each convolution's
output: the reference build uses it, because the class evidence near the class
boundaries is a pair of organs at a few tens of HU (``models.phantoms.bodysite``)
that a plain net of this size does not pick up within a CPU-sized training budget.
"""

from __future__ import annotations

import torch
from torch import nn


class BodySiteNet2D(nn.Module):
    """Input (B, 1, 256, 256): HU scaled to [0, 1]. Output (B, 4) class probabilities."""

    def __init__(self, n_classes: int = 4, size: int = 256, channels: tuple[int, int, int] = (8, 16, 32),
                 hidden: int = 64, dropout: float = 0.5, batch_norm: bool = False) -> None:
        super().__init__()
        c1, c2, c3 = channels

        def block(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
            norm = [nn.BatchNorm2d(cout)] if batch_norm else []
            return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), *norm, nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(1, c1, 5, 2), *block(c1, c2, 3), *block(c2, c3, 3))
        side = size // 16
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c3 * side * side, hidden), nn.ReLU(),
                                        nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)
