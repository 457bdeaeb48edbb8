"""BodySiteNet2D (study 2): 4-class body-site classifier on axial slices.

3 x (Conv2d + ReLU + max-pool), FC + ReLU, dropout, FC + softmax. The first
convolution has stride 2 so a 256^2 slice (1.5 mm) is handled at the cost of a
128^2 one; the output is the softmax over the 4 classes, shape (B, 4).
"""

from __future__ import annotations

import torch
from torch import nn


class BodySiteNet2D(nn.Module):
    """Input (B, 1, 256, 256): HU scaled to [0, 1]. Output (B, 4) class probabilities."""

    def __init__(self, n_classes: int = 4, size: int = 256, channels: tuple[int, int, int] = (8, 16, 32),
                 hidden: int = 64, dropout: float = 0.5) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = size // 16
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c3 * side * side, hidden), nn.ReLU(),
                                        nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)
