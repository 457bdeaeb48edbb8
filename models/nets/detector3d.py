"""Detector3D (issue 18): a two-stage lung-nodule detector in one exportable graph, candidates then FPR.

Input (B, 1, 48, 48, 48): HU windowed to [0, 1] (lung window). Stage 1, ``CandidateNet3D``, is a small fully
convolutional net giving a nodule heat map (logits) at full resolution; candidates are its local maxima over a
5^3 neighbourhood (max-pool NMS: a voxel equal to the max of its block), the ``max_candidates``
(M = 32) highest taken by TopK, their voxel indices turned into (z, y, x) by integer division. Stage 2 is the
study-3 false-positive-reduction net (``FPRNet3D``, evidential beta output) on a 32^3 patch around each candidate,
gathered from the volume padded by 16 voxels of air (index arithmetic on the flattened volume: fixed shapes, so the
whole detector is one ONNX graph with a dynamic batch axis).

Outputs: ``centres`` (B, M, 3) float32 voxel (z, y, x) of the input grid; ``scores`` (B, M) float32 = the FPR net's
expected P(nodule) = alpha / (alpha + beta), in [0, 1]; slots whose stage-1 peak is not finite (fewer than M
maxima) score -inf (the audit drops them). Candidates come in descending stage-1 order.

Stage 1 sees the lung window and, as a second channel computed in the graph, its bottom -1000..-500 HU stretched
to [0, 1] (``PARENCHYMA_GAIN``): faint ground glass (-800..-700 HU, 50-150 HU above the parenchyma) is 0.04-0.11 of
the lung window but 0.1-0.3 of the stretch, while vessels and solid nodules saturate it; the small net learns the
faint lesions within the quick build's epochs that way. The stretch rescales signal and noise alike, so it
changes nothing about what the dose hides.

Notes
-----
Why these sizes: M = 32 candidates, 10 per nodule for the at most 3 nodules of a phantom volume (LUNA16's CPM
reads sensitivity up to 8 FPs per scan, so M >= 3 + 8 keeps the whole FROC reachable); the CPM can be no higher
than the share of lesions among the candidates, and with M = 16 the quick build's stage 1 held 87% of the held-out
lesions (CPM 0.79 clean), with M = 32 (and 16 epochs instead of 10) 95% (CPM 0.88); stage 2 scores twice the
patches, still seconds per 100 volumes; 32^3 is FPRNet3D's
trained patch (32 mm: a 12 mm nodule with 10 mm of context on each side). Stage 1 uses dilated 3^3 convolutions
(dilations 1, 2, 4, 1: a 17-voxel receptive field, wider than the 12 mm largest nodule) and no down-sampling, so a
peak lies on the voxel grid without up-sampling error; 5^3 NMS (peaks >= 3 voxels apart) keeps neighbouring nodules
apart (their centres are >= 8 mm apart) while one vessel or one large nodule fills fewer of the M slots than with
3^3 NMS (duplicate peaks left on a large nodule go to the FROC's duplicate rule). Candidates are ranked
on stage-1 *logits* (a sigmoid saturates to exactly 1.0 in float32, which would tie the ranking).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.nets.fpr3d import FPRNet3D

#: Candidate slots M (module notes: >= 3 lesions + 8 FPs per scan, and room for the faint lesions stage 1 ranks low).
MAX_CANDIDATES = 32
#: Max-pool NMS neighbourhood (voxels): a candidate is the maximum of its 5^3 block (module notes: a 3^3 block let
#: one vessel or one large nodule put several peaks 2 voxels apart into the M slots).
NMS_KERNEL = 5
#: Stage 1's second input channel stretches the bottom of the lung window, -1000..-500 HU, to [0, 1] (the input is
#: the lung window -1000..400 HU in [0, 1], so that range is [0, 500 / 1400]): module notes.
PARENCHYMA_GAIN = 1400.0 / 500.0
#: Stage-1 key differences below this (logit units) are ties that float rounding may order either way
#: (ONNX Runtime and PyTorch differ by ~1e-6 in a logit): ``parity_difference`` forgives them.
TIE_TOLERANCE = 1e-4
#: Initial heat-map probability everywhere (the head's bias; RetinaNet's prior, Lin et al. 2017): with ~10^5 voxels
#: per volume and a handful of lesion centres, a start at 0.5 would bury the focal loss in background terms.
PRIOR = 0.01


class CandidateNet3D(nn.Module):
    """Stage 1: (B, 1, D, H, W) -> nodule heat-map logits (B, 1, D, H, W), fully convolutional, full resolution."""

    def __init__(self, channels: tuple[int, ...] = (8, 8, 16, 8), dilations: tuple[int, ...] = (1, 2, 4, 1)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 2  # the lung window and its parenchyma stretch (PARENCHYMA_GAIN)
        for c, d in zip(channels, dilations):
            layers += [nn.Conv3d(c_in, c, 3, padding=d, dilation=d), nn.ReLU()]
            c_in = c
        head = nn.Conv3d(c_in, 1, 1)
        nn.init.constant_(head.bias, -math.log((1 - PRIOR) / PRIOR))
        self.body = nn.Sequential(*layers, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([x, torch.clamp(x * PARENCHYMA_GAIN, 0.0, 1.0)], dim=1))


class Detector3D(nn.Module):
    """Two-stage detector: input (B, 1, S, S, S) in [0, 1]; outputs ``centres`` (B, M, 3), ``scores`` (B, M)."""

    def __init__(self, size: int = 48, max_candidates: int = MAX_CANDIDATES, patch: int = 32,
                 nms_kernel: int = NMS_KERNEL) -> None:
        super().__init__()
        self.size, self.m, self.patch, self.nms = int(size), int(max_candidates), int(patch), int(nms_kernel)
        self.stage1 = CandidateNet3D()
        self.stage2 = FPRNet3D(size=patch)
        side = self.size + patch  # padded side: patch // 2 before, patch // 2 after
        o = torch.arange(patch)
        offsets = (o[:, None, None] * side * side + o[None, :, None] * side + o[None, None, :]).reshape(-1)
        self.register_buffer("offsets", offsets, persistent=False)  # not in the state dict: derived, not learnt

    def candidates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 1: heat-map logits (B, 1, S, S, S), candidate voxels (B, M, 3) int64 and their keys (B, M)
        (the logit of a local maximum, -inf for a padding slot)."""
        logits = self.stage1(x)
        peak = logits == F.max_pool3d(logits, self.nms, stride=1, padding=self.nms // 2)
        key = torch.where(peak, logits, torch.full_like(logits, -torch.inf)).flatten(1)
        keys, idx = torch.topk(key, self.m, dim=1)
        s = self.size
        centres = torch.stack([idx // (s * s), (idx // s) % s, idx % s], dim=-1)
        return logits, centres, keys

    def patches(self, x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """The (B * M, 1, P, P, P) patches centred on ``centres`` (voxel c at patch index P // 2), air outside."""
        h, side = self.patch // 2, self.size + self.patch
        flat = F.pad(x, (h,) * 6, value=0.0).reshape(x.shape[0], side**3)
        base = centres[..., 0] * side * side + centres[..., 1] * side + centres[..., 2]  # patch corner, padded grid
        idx = (base[..., None] + self.offsets).reshape(x.shape[0], -1)
        return torch.gather(flat, 1, idx).reshape(-1, 1, self.patch, self.patch, self.patch)

    def score_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Stage 2: expected P(nodule) alpha / (alpha + beta) per patch (N,)."""
        ev = self.stage2(patches)
        return ev[:, 0] / ev.sum(dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, centres, keys = self.candidates(x)
        return self.scored(x, centres, keys)

    def scored(self, x: torch.Tensor, centres: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2 on stage 1's candidates (``candidates``): the outputs, centres (B, M, 3) float32 and scores (B, M),
        -inf for a padding slot. Training calls it with stage 1's outputs kept from a frozen stage 1."""
        p = self.score_patches(self.patches(x, centres)).reshape(x.shape[0], self.m)
        scores = torch.where(torch.isfinite(keys), p, torch.full_like(p, -torch.inf))
        return centres.to(torch.float32), scores

    @torch.no_grad()
    def parity_difference(self, x: np.ndarray, got: list[np.ndarray], ref: tuple[torch.Tensor, ...]) -> float:
        """Max abs score difference between ONNX Runtime (``got``) and this module (``ref``) on inputs ``x``,
        comparing candidates as sets matched by voxel (TopK order and the NMS may differ where stage-1 keys tie
        within ``TIE_TOLERANCE``: such a candidate may be absent from one side). Any other mismatch: +inf."""
        logits, _, keys = self.candidates(torch.from_numpy(x))
        logits = logits[:, 0].numpy().astype(np.float64)
        keys = keys.numpy().astype(np.float64)
        worst = 0.0
        for b in range(x.shape[0]):
            a = {tuple(c): s for c, s in zip(got[0][b].astype(np.int64).tolist(), got[1][b].tolist())}
            r = {tuple(c): s for c, s in zip(ref[0][b].numpy().astype(np.int64).tolist(), ref[1][b].tolist())}
            for c in a.keys() & r.keys():
                sa, sr = a[c], r[c]
                if not (sa == sr or abs(sa - sr) <= worst):
                    worst = abs(sa - sr) if np.isfinite(sa) and np.isfinite(sr) else np.inf
            last = keys[b, -1]
            for c in a.keys() ^ r.keys():
                if a.get(c, r.get(c)) == -np.inf:
                    continue  # a padding slot: its voxel is arbitrary
                k = logits[b][c]
                z, y, xx = c
                h = self.nms // 2  # the NMS block around the candidate
                block = logits[b][max(z - h, 0) : z + h + 1, max(y - h, 0) : y + h + 1, max(xx - h, 0) : xx + h + 1]
                near_peak = np.sort(block.ravel())[-2] >= k - TIE_TOLERANCE  # a neighbour ties with it
                if not (abs(k - last) <= TIE_TOLERANCE or near_peak):
                    return np.inf
        return float(worst)
