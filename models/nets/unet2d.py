"""UNet2D (study 4): a small U-Net for disk segmentation with a contour regression head.

Two down-sampling levels (channels c, 2c, 4c at the bottom), skip connections,
a 1x1 convolution to the mask logit; the contour head pools the bottleneck and
regresses P boundary points. Outputs: ``mask`` (B, 1, H, W) probability of
disk, ``contour`` (B, P, 2) points (x, y) in normalised image coordinates
[-1, 1] (tanh).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())


class UNet2D(nn.Module):
    """Input (B, 1, 128, 128): HU windowed to [0, 1]. Outputs (mask (B, 1, H, W), contour (B, P, 2))."""

    def __init__(self, channels: int = 8, points: int = 32) -> None:
        super().__init__()
        c = channels
        self.points = points
        self.enc1, self.enc2, self.bottom = _block(1, c), _block(c, 2 * c), _block(2 * c, 4 * c)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2), _block(4 * c, 2 * c)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2), _block(2 * c, c)
        self.mask_head = nn.Conv2d(c, 1, 1)
        self.contour_head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(4 * c * 16, 128), nn.ReLU(),
                                          nn.Linear(128, 2 * points))

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask logits (B, 1, H, W), contour pre-activation (B, P, 2))."""
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottom(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.mask_head(d1), self.contour_head(b).view(-1, self.points, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, c = self.logits(x)
        return torch.sigmoid(m), torch.tanh(c)
