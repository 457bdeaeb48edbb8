"""Latent-space search (study 3): PGD on the latent code of a generator whose output is blended into a background.

Study 3 made hard synthetic nodules: a nodule generator G maps a code z to a
patch; the patch is blended into a background patch (the data image) and PGD
moves z (L-inf bound ``eps`` around a N(0, 1) start, step eps/5) to change the
model's decision. With w a smooth blending map (1 at the centre, 0 beyond
``radius`` voxels, cosine edge of ``edge`` voxels):

    hu = (1 - w) * background + w * (offset + scale * G(z))

G is a torch module or an ONNX file (converted with onnx2torch and checked
against ONNX Runtime, as the model is); its input is (B, latent_dim) and its
output (B, *shape) or (B, 1, *shape). Success: the deployed decision on the
blended image differs from its decision on the start code's image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.attacks.base import HU_RANGE, Attack, Candidates, Target, positive
from audit.attacks.objectives import task_loss
from audit.attacks.twin import torch_twin
from audit.errors import ConfigError


def blend_map(shape: Sequence[int], radius: float, edge: float) -> np.ndarray:
    """w on the image grid: 1 within ``radius - edge`` of the centre, cosine down to 0 at ``radius`` (voxels)."""
    grids = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    t = np.clip((radius - r) / max(edge, 1e-6), 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)


class LatentSearch(Attack):
    """``generator`` (module or ONNX path), ``latent_dim``, ``eps`` (1.0), ``alpha`` (eps/5), ``steps`` (100),
    ``radius``/``edge`` (voxels), ``scale``/``offset`` (G's output to HU)."""

    name = "latent"

    def __init__(self, target: Target, *, generator: Any, latent_dim: int, eps: float = 1.0, alpha: float | None = None,
                 steps: int = 100, radius: float = 8.0, edge: float = 3.0, scale: float = 1.0, offset: float = 0.0,
                 hu_range: Sequence[float] = HU_RANGE) -> None:
        super().__init__(target, space="hu", hu_range=hu_range)
        self.latent_dim = positive("latent_dim", latent_dim, integer=True)
        self.eps = positive("eps", eps)
        self.alpha = self.eps / 5 if alpha is None else positive("alpha", alpha)
        self.steps = positive("steps", steps, integer=True)
        self.radius, self.edge = positive("radius", radius), float(edge)
        self.scale, self.offset = float(scale), float(offset)
        path = Path(generator) if isinstance(generator, (str, Path)) else None
        if path is not None:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            shape = sess.get_inputs()[0].shape
            if len(shape) != 2 or shape[1] not in (latent_dim, None) and not isinstance(shape[1], str):
                raise ConfigError(f"attack.latent_dim: the generator {path} takes input {shape}, not (B, {latent_dim})")
        self.generator = torch_twin(generator, onnx_path=path, input_shape=(self.latent_dim,))
        self.generator_path = str(path) if path else type(generator).__name__

    def render(self, hu: Any, z: Any, w: Any) -> Any:
        g = self.generator(z)[0]
        g = g.reshape(hu.shape) if g.numel() == hu.numel() else g
        if g.shape != hu.shape:
            raise ConfigError(f"attack.generator: output shape {tuple(g.shape)} does not match the images {tuple(hu.shape)}")
        lo, hi = self.bounds(hu)
        out = (1 - w) * hu + w * (self.offset + self.scale * g)
        return torch_minmax(out, lo, hi)

    def perturb(self, hu: Any, generator: Any) -> Candidates:
        import torch

        w = torch.from_numpy(blend_map(hu.shape[1:], self.radius, self.edge))
        z0 = torch.randn(len(hu), self.latent_dim, generator=generator)
        with torch.no_grad():
            start = self.render(hu, z0, w)
            ref_raw = self.forward(start)
        z = z0.clone()
        for _ in range(self.steps):
            z.requires_grad_(True)
            loss = task_loss(self.target.loss_head, self.forward(self.render(hu, z, w)), ref_raw).sum()
            (g,) = torch.autograd.grad(loss, z)
            with torch.no_grad():
                z = torch.minimum(torch.maximum(z.detach() + self.alpha * g.sign(), z0 - self.eps), z0 + self.eps)
        with torch.no_grad():
            final = self.render(hu, z, w)
        return Candidates(final[:, None], "hu", reference=start)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "generator": self.generator_path, "latent_dim": self.latent_dim, "eps": self.eps,
                "alpha": self.alpha, "steps": self.steps, "radius": self.radius, "edge": self.edge,
                "scale": self.scale, "offset": self.offset}


def torch_minmax(x: Any, lo: Any, hi: Any) -> Any:
    import torch

    return torch.minimum(torch.maximum(x, lo), hi)
