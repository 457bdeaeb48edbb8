"""Training-time augmentation from the studies, on torch batches with an explicit generator.

Cubes (study 1, 3): random shift (integer voxels) and rotation (the 24 proper
rotations by multiples of 90 degrees, which keep the 1 mm grid exact).
Slices (study 2): random isotropic scaling by 80-120 %, bilinear, air outside.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

_ROT_AXES = ((2, 3), (2, 4), (3, 4))


def cube_shift_rotate(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """x (B, 1, D, H, W): each cube rotated by a random 90-degree rotation and shifted by up to ``max_shift`` voxels.

    Shifts wrap around the cube edge (2 voxels of parenchyma, harmless for a centred nodule).
    """
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        v = x[b : b + 1]
        r = torch.randint(0, 4, (3,), generator=gen).tolist()
        for k, axes in zip(r, _ROT_AXES):
            if k:
                v = torch.rot90(v, k, axes)
        s = torch.randint(-max_shift, max_shift + 1, (3,), generator=gen).tolist()
        out[b : b + 1] = torch.roll(v, shifts=s, dims=(2, 3, 4))
    return out


def slice_scale(x: torch.Tensor, gen: torch.Generator, low: float = 0.8, high: float = 1.2, fill: float = 0.0) -> torch.Tensor:
    """x (B, 1, H, W): each slice zoomed by a factor uniform in [low, high] about the centre; ``fill`` outside."""
    scale = low + (high - low) * torch.rand(x.shape[0], generator=gen)
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0] = 1.0 / scale
    theta[:, 1, 1] = 1.0 / scale
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


AUGMENTATIONS = {"cube": cube_shift_rotate, "slice": slice_scale}
