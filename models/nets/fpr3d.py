"""FPRNet3D (study 3): false-positive reduction on 32^3 candidate patches, evidential (beta) output.

Three Conv3d blocks and two FC layers produce evidence for "nodule" and "not
nodule"; the output is the Beta distribution over P(nodule), shape (B, 2) as
(alpha, beta), alpha = 1 + softplus(e_nodule), beta = 1 + softplus(e_other).

Notes
-----
Evidential classification (Sensoy et al. 2018, binary case): the expected
probability is alpha / (alpha + beta) (what a decision thresholds) and the
uncertainty 2 / (alpha + beta) falls as evidence grows. Training minimises the
expected binary cross-entropy under the Beta,
y (psi(S) - psi(alpha)) + (1 - y) (psi(S) - psi(beta)), S = alpha + beta, plus
an annealed KL term that pulls the misleading evidence towards Beta(1, 1).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FPRNet3D(nn.Module):
    """Input (B, 1, 32, 32, 32): HU windowed to [0, 1]. Output (B, 2): (alpha, beta) >= 1."""

    def __init__(self, channels: tuple[int, int, int] = (8, 16, 32), size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv3d(c_in, c, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = size // 2 ** len(channels)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side**3, 64), nn.ReLU(), nn.Linear(64, 2))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw evidence (B, 2) before softplus, columns (nodule, not nodule)."""
        return self.classifier(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 + F.softplus(self.logits(x))


def beta_loss(evidence: torch.Tensor, y: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """Mean evidential loss of (alpha, beta) ``evidence`` (B, 2) for labels ``y`` (B,) in {0, 1}."""
    a, b = evidence[:, 0], evidence[:, 1]
    s = a + b
    y = y.float()
    nll = y * (torch.digamma(s) - torch.digamma(a)) + (1 - y) * (torch.digamma(s) - torch.digamma(b))
    # KL(Beta(a~, b~) || Beta(1, 1)) with the evidence for the true class removed.
    a_t = y + (1 - y) * a
    b_t = (1 - y) + y * b
    s_t = a_t + b_t
    kl = (torch.lgamma(s_t) - torch.lgamma(a_t) - torch.lgamma(b_t)
          + (a_t - 1) * (torch.digamma(a_t) - torch.digamma(s_t)) + (b_t - 1) * (torch.digamma(b_t) - torch.digamma(s_t)))
    return (nll + kl_weight * kl).mean()
