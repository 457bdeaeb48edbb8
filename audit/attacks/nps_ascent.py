"""NPS-constrained projected gradient ascent (study 1, eq. 3-5, Algorithm 1).

The perturbation is noise a scanner could have made at a dose: after every
gradient step it is projected back onto the target noise power spectrum.

Notes
-----
Study 1 (3D lung-nodule classifier). With D the model and p a perturbation in
HU on every axial slice:

    maximise   ||D(x + p) - D(x)||^2                                  (eq. 3)
    p_t = P_S(p_{t-1} + eta g_t),  g_t = grad_p ||D(x + p) - D(x)||^2 (eq. 4)
    P_S: scale F[p] so that its magnitude, averaged over angle, slices and
         samples, equals sqrt(S(f) Nx Ny / (dx dy))                    (eq. 5)

stopping when ||p_t - p_{t-1}|| / ||p_{t-1}|| <= eps (1e-3) or after N_iter
(10) steps, step eta = 1, from K random starts (random noise projected onto
the NPS). The gradient of an output probability w.r.t. HU is tiny next to noise
of tens of HU, so the step is taken relative to the perturbation: g is scaled
to the norm of p_{t-1} per sample before ``step`` multiplies it (eta = 1 moves
as far as the perturbation is large, then the projection restores the
spectrum). Without that the study's eta = 1 would stop at once and the attack
would be random NPS noise. Each of the K restarts is a candidate, so SAR_i =
n_i / K and SAN follow DESIGN.md's definitions with the deployed model deciding.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from audit.attacks.base import HU_RANGE, Attack, Candidates, Target, positive
from audit.attacks.objectives import OBJECTIVES, output_distance, task_loss
from audit.errors import ConfigError
from kernels.nps import NPSTruncationWarning, radial_frequency


def radial_bins(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Radial bin index of every point of the full 2D FFT grid (ny, nx), as in ``kernels.nps.radial_average``:
    bins of width max(1/(ny dy), 1/(nx dx)) centred on multiples of it."""
    ny, nx = shape
    fr = np.asarray(radial_frequency((ny, nx), spacing, half=False))
    step = max(1.0 / (ny * spacing[0]), 1.0 / (nx * spacing[1]))
    return np.floor(fr / step + 0.5).astype(np.int64)


def target_magnitude(nps: Any, shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """sqrt(S(f) Nx Ny / (dx dy)) on the full FFT grid of ``shape`` (ny, nx): the Fourier magnitude noise with
    NPS ``nps`` (a ``kernels`` RadialNPS/GridNPS, or a full (ny, nx) array in HU^2 mm^2) has on average."""
    ny, nx = shape
    if isinstance(nps, np.ndarray) or hasattr(nps, "__array__") and not hasattr(nps, "on_grid"):
        s = np.asarray(nps, np.float64)
        if s.shape != (ny, nx):
            raise ConfigError(f"target_S: expected a full NPS array of shape {(ny, nx)}, got {s.shape}")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NPSTruncationWarning)
            s = np.asarray(nps.on_grid((ny, nx), spacing, half=False), np.float64)
    if np.any(s < 0) or not np.all(np.isfinite(s)):
        raise ConfigError("target_S: expected a finite, non-negative NPS")
    return np.sqrt(s * nx * ny / (spacing[0] * spacing[1]))


def project_to_nps(p: Any, target_S: Any, spacing: Sequence[float], *, per_sample: bool = False) -> Any:
    """Project perturbations onto a target noise power spectrum (study 1, eq. 5).

    ``p``: torch tensor (..., ny, nx) in HU, the leading axes being samples and
    slices; ``target_S``: the NPS (HU^2 mm^2) as a ``kernels`` NPS object or a
    full FFT-order (ny, nx) array; ``spacing``: (dy, dx) in mm. Returns p' with
    the phase of p in every frequency bin and a Fourier magnitude whose average
    over angle (radial bins as in ``kernels.nps.radial_average``), slices and
    samples equals the same average of sqrt(S(f) Nx Ny / (dx dy)). The scale
    factor is real and depends on |f| only, so p' stays real. Bins where p has
    no power are left at zero (nothing to scale); bins where S is zero become zero.
    With ``per_sample`` the average runs over angle and slices of each sample
    (axis 0) separately, so no sample can carry the others' noise power.
    """
    import torch

    ny, nx = p.shape[-2:]
    spacing = (float(spacing[-2]), float(spacing[-1]))
    bins = torch.from_numpy(radial_bins((ny, nx), spacing)).reshape(-1)
    nb = int(bins.max()) + 1
    tmag = torch.from_numpy(target_magnitude(target_S, (ny, nx), spacing)).reshape(-1)
    counts = torch.bincount(bins, minlength=nb).to(torch.float64)
    t_bin = torch.zeros(nb, dtype=torch.float64).index_add_(0, bins, tmag) / counts
    F = torch.fft.fft2(p.to(torch.float64))
    groups = p.shape[0] if per_sample and p.ndim > 2 else 1
    mag = F.abs().reshape(groups, -1, ny * nx).mean(1)
    m_bin = torch.zeros(groups, nb, dtype=torch.float64).index_add_(1, bins, mag) / counts
    scale = torch.where(m_bin > 0, t_bin / m_bin.clamp_min(1e-300), torch.zeros_like(m_bin))
    factor = scale[:, bins].reshape(groups, *([1] * (p.ndim - 3 if groups > 1 else p.ndim - 2)), ny, nx)
    out = torch.fft.ifft2(F * (factor if groups > 1 else factor[0])).real
    return out.to(p.dtype)


def angle_averaged_magnitude(p: Any, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(bin index, mean |F[p]| per radial bin over all leading axes) of real perturbations (..., ny, nx)."""
    import torch

    ny, nx = p.shape[-2:]
    bins = torch.from_numpy(radial_bins((ny, nx), spacing)).reshape(-1)
    mag = torch.fft.fft2(torch.as_tensor(p).to(torch.float64)).abs().reshape(-1, ny * nx).mean(0)
    counts = torch.bincount(bins).to(torch.float64)
    m = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, bins, mag) / counts.clamp_min(1)
    keep = counts > 0
    return torch.nonzero(keep)[:, 0].numpy(), m[keep].numpy()


class NPSAscent(Attack):
    """NPS-projected gradient ascent: ``nps`` target (kernels NPS at the dose, HU^2 mm^2), ``spacing`` (mm, the
    image's), ``step`` (1, relative), ``tol`` (1e-3), ``iterations`` (10), ``restarts`` K (10), ``objective``
    output_distance (eq. 3) or task. Always in HU space; the perturbation is not bounded by a norm but by its
    spectrum, and the perturbed image is kept in ``hu_range``."""

    name = "nps_ascent"

    def __init__(self, target: Target, *, nps: Any, spacing: Sequence[float], step: float = 1.0, tol: float = 1e-3,
                 iterations: int = 10, restarts: int = 10, objective: str = "output_distance",
                 hu_range: Sequence[float] = HU_RANGE) -> None:
        super().__init__(target, space="hu", hu_range=hu_range)
        if objective not in OBJECTIVES:
            raise ConfigError(f"attack.objective: expected one of {OBJECTIVES}, got {objective!r}")
        self.nps, self.spacing = nps, tuple(float(s) for s in spacing)
        self.step, self.tol = positive("step", step), positive("tol", tol)
        self.iterations, self.restarts = positive("iterations", iterations, integer=True), positive("restarts", restarts, integer=True)
        self.objective = objective

    def loss(self, raw: Any, clean_raw: Any) -> Any:
        if self.objective == "output_distance":
            return output_distance(raw, clean_raw)
        return task_loss(self.target.loss_head, raw, clean_raw)

    def project(self, p: Any) -> Any:
        return project_to_nps(p, self.nps, self.spacing[-2:], per_sample=True)

    def perturb(self, hu: Any, generator: Any) -> Candidates:
        import torch

        v0 = hu.detach()
        lo, hi = self.bounds(v0)
        with torch.no_grad():
            clean_raw = self.forward(v0)
        b = len(v0)
        view = (b,) + (1,) * (v0.ndim - 1)
        out, iters = [], []
        for _ in range(self.restarts):
            p = self.project(torch.randn(v0.shape, generator=generator, dtype=v0.dtype))
            active = torch.ones(b, dtype=torch.bool)
            used = torch.zeros(b)
            for _ in range(self.iterations):
                if not active.any():
                    break
                p.requires_grad_(True)
                v = torch.minimum(torch.maximum(v0 + p, lo), hi)
                (g,) = torch.autograd.grad(self.loss(self.forward(v), clean_raw).sum(), p)
                with torch.no_grad():
                    pn = p.reshape(b, -1).norm(dim=1)
                    gn = g.reshape(b, -1).norm(dim=1).clamp_min(1e-30)
                    new = self.project(p.detach() + self.step * g * (pn / gn).view(view))
                    change = (new - p).reshape(b, -1).norm(dim=1) / pn.clamp_min(1e-30)
                    p = torch.where(active.view(view), new, p.detach())
                    used += active.float()
                    active &= change > self.tol
            out.append(torch.minimum(torch.maximum(v0 + p.detach(), lo), hi))
            iters.append(float(used.mean()))
        return Candidates(torch.stack(out, 1), "hu", {"mean_iterations": float(np.mean(iters))})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "step": self.step, "tol": self.tol, "iterations": self.iterations,
                "restarts": self.restarts, "objective": self.objective, "nps": getattr(self.nps, "name", "array"),
                "spacing": list(self.spacing)}
