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

Projections (``projection``)
----------------------------
The study's P_S matches the mean Fourier *magnitude*, averaged over all
samples together. That is looser than the dose it claims in two ways: for
Gaussian-like noise E|F| = sqrt(pi/4) sqrt(E|F|^2), so matching the mean
magnitude inflates the variance by 4/pi (a projected random start has 1.27x
the variance of noise at the dose), and the average over samples lets the
ascent put more power on some samples than on others (issue #14). Hence:

- ``"per_slice_power"`` (default): per 2D slice of every sample and per radial
  frequency bin, F[p] is scaled so that the mean of |F|^2 in the bin equals the
  bin's mean of S(f) Nx Ny / (dx dy), and F[p] is zero where S is. By Parseval
  the pixel variance of every slice, hence of every sample, is then exactly the
  variance of noise at the dose (the grid variance of S). Within a bin the
  power may still be distributed over angle and |f| as the ascent likes. That
  freedom is bounded by the NPS-whitened (Mahalanobis) norm
  ``w(p) = sqrt(sum_f |F[p](f)|^2 / (S(f) Nx Ny / (dx dy)) / d)``, with d the
  number of frequencies with S > 0 (times the slices, over a whole sample; w
  is 1 on average for noise at the dose): w^2 d of NPS noise is chi-square with d degrees of
  freedom, so ``whitened_quantile`` q (0.99 by default) caps w at
  sqrt(chi2.ppf(q, d) / d). A slice above the cap has its per-frequency power
  mixed with the NPS's own, (1 - lam) |F[p]|^2 + lam S Nx Ny / (dx dy), phases
  kept, lam the smallest that meets the cap; the mix keeps every bin's power,
  so the variance stays the dose's. The phases stay free (as in the study):
  the ascent can still focus its power in space, e.g. peaks of several sigma
  where the model looks (measured on nodule3d at 100 mAs: max |p| ~370 HU
  against ~125 HU for random noise; per_sample_power ~1000 HU).
- ``"per_sample_power"``: the same, per sample with all its slices pooled (a
  sample's variance is the dose's, but one slice may carry the power of
  others); the same as per_slice_power for 2D images.
- ``"study1_eq2"``: study 1's eq. 2/5 as written: mean magnitude per radial
  bin, averaged over angle, slices and all samples of the batch together.
- ``"per_sample_magnitude"``: the mean magnitude matched per sample (what this
  module did before issue #14; 4/pi too much variance for a random start).

Every run reports, per sample, the perturbation's RMS (HU, after the HU-range
clip) and whitened norm (before the clip) next to those of random NPS noise at
the dose on the same sample (``reference_draws`` keyed ``kernels.nps_noise``
draws): batch means in the result's ``notes``, per-sample values in
``extra_report``.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from audit.attacks.base import HU_RANGE, Attack, AttackResult, Candidates, Target, positive
from audit.attacks.objectives import OBJECTIVES, output_distance, task_loss
from audit.errors import ConfigError
from kernels import NoiseKey, nps_noise
from kernels.nps import GridNPS, NPSTruncationWarning, RadialNPS, radial_frequency

#: Projections of ``NPSAscent`` (module notes): the default first.
PROJECTIONS = ("per_slice_power", "per_sample_power", "study1_eq2", "per_sample_magnitude")
#: The projections that match power (and may cap the whitened norm).
POWER_PROJECTIONS = ("per_slice_power", "per_sample_power")
#: Default quantile of the whitened norm of NPS noise that caps the ascent's (``POWER_PROJECTIONS`` only).
WHITENED_QUANTILE = 0.99


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




# --- power projection, per slice or per sample (issue #14) ---------------------------------------------------



def cached_grid(grids: dict[tuple[int, int], SpectrumGrid], nps: Any, shape: Sequence[int],
                spacing: Sequence[float]) -> SpectrumGrid:
    """The ``SpectrumGrid`` of ``nps`` for images whose last two axes are ``shape[-2:]``, kept in ``grids`` (an
    attack's own cache) so each shape is built once."""
    key = (int(shape[-2]), int(shape[-1]))
    if key not in grids:
        grids[key] = SpectrumGrid(nps, key, tuple(spacing)[-2:])
    return grids[key]

class SpectrumGrid:
    """What the power projection needs on one image grid (ny, nx): per FFT point its radial bin and target power
    T(f) = S(f) Nx Ny / (dx dy) (torch, float64, flattened), where S > 0 (``support``), and per bin the mean T."""

    def __init__(self, nps: Any, shape: Sequence[int], spacing: Sequence[float]) -> None:
        import torch

        ny, nx = (int(n) for n in shape[-2:])
        spacing = (float(spacing[-2]), float(spacing[-1]))
        self.shape, self.spacing = (ny, nx), spacing
        self.bins = torch.from_numpy(radial_bins((ny, nx), spacing)).reshape(-1)
        self.nb = int(self.bins.max()) + 1
        self.counts = torch.bincount(self.bins, minlength=self.nb).to(torch.float64)
        t = torch.from_numpy(target_magnitude(nps, (ny, nx), spacing) ** 2).reshape(-1)
        self.support = t > 1e-12 * float(t.max()) if float(t.max()) > 0 else torch.zeros_like(t, dtype=torch.bool)
        self.power = torch.where(self.support, t, torch.zeros_like(t))
        self.inv_power = torch.where(self.support, 1.0 / self.power.clamp_min(1e-300), torch.zeros_like(t))
        total = torch.zeros(self.nb, dtype=torch.float64).index_add_(0, self.bins, self.power)
        self.bin_power = total / self.counts.clamp_min(1)
        self.n_support = int(self.support.sum())

    def spectrum(self, p: Any, *, per_slice: bool = False) -> tuple[Any, int, int]:
        """(F[p] as (G, M, ny*nx) complex128, G, M): G groups of M slices each: the samples (axis 0; one if ``p``
        is a single 2D image), or with ``per_slice`` every 2D slice on its own (M = 1)."""
        import torch

        ny, nx = self.shape
        if tuple(p.shape[-2:]) != (ny, nx):
            raise ConfigError(f"NPS projection: expected images of {ny}x{nx} pixels, got {tuple(p.shape[-2:])}")
        g = int(np.prod(p.shape[:-2])) if per_slice else p.shape[0] if p.ndim > 2 else 1
        F = torch.fft.fft2(p.to(torch.float64)).reshape(g, -1, ny * nx)
        return F, g, F.shape[1]

    def dof(self, slices: int) -> int:
        """Degrees of freedom d of a sample of ``slices`` slices: the chi-square of w^2 d for NPS noise."""
        return max(1, slices * self.n_support)


def whitened_norm(p: Any, target_S: Any = None, spacing: Sequence[float] | None = None, *,
                  grid: SpectrumGrid | None = None) -> Any:
    """Per sample (axis 0) NPS-whitened norm sqrt(sum |F[p]|^2 / (S Nx Ny / (dx dy)) / d) over the frequencies
    with S > 0 and all slices, d their number: the Mahalanobis norm under the NPS covariance over sqrt(d), 1 on
    average for noise at the dose. Power where S = 0 is not counted (pseudo-inverse). Returns a float64 tensor (G,)."""
    grid = grid if grid is not None else SpectrumGrid(target_S, p.shape[-2:], spacing)
    F, _, m = grid.spectrum(p)
    a = F.real ** 2 + F.imag ** 2
    return ((a * grid.inv_power).sum((1, 2)) / grid.dof(m)).sqrt()


def whitened_bound(quantile: float, dof: int) -> float:
    """The ``quantile`` of the whitened norm of Gaussian noise at the dose with ``dof`` degrees of freedom:
    sqrt(chi2.ppf(q, d) / d) (inf for q = 1)."""
    if quantile >= 1.0:
        return float("inf")
    from scipy.stats import chi2

    return float(np.sqrt(chi2.ppf(quantile, dof) / dof))


def project_power(p: Any, target_S: Any = None, spacing: Sequence[float] | None = None, *,
                  whitened_quantile: float | None = None, per_slice: bool = False,
                  grid: SpectrumGrid | None = None) -> Any:
    """Project perturbations onto a dose's noise power per radial bin, per sample or per slice (``NPSAscent``).

    ``p``: torch tensor (..., ny, nx) in HU whose axis 0 is the samples (a 2D
    ``p`` is one sample); ``target_S`` the NPS (HU^2 mm^2, a ``kernels`` NPS or
    a full FFT-order (ny, nx) array) and ``spacing`` (dy, dx) mm, or a prepared
    ``grid``. F[p] is set to zero where S is, then scaled by a real factor per
    radial bin (as in ``kernels.nps.radial_average``) so that the mean of |F|^2
    over the bin and the group's slices equals the bin's mean of
    S Nx Ny / (dx dy), a group being a sample (all its slices) or, with
    ``per_slice``, every 2D slice: each group's mean square is the grid
    variance of S, the variance of noise at the dose. Bins where p has no power
    stay zero. With ``whitened_quantile`` q < 1, a group whose whitened norm
    (``whitened_norm``, d degrees of freedom) exceeds sqrt(chi2.ppf(q, d) / d)
    gets per-frequency power
    (1 - lam) |F|^2 + lam S Nx Ny / (dx dy) (phases kept, lam the smallest in
    [0, 1] that meets the bound; lam = 1 gives norm 1, so a bound below 1 is
    met only as closely as that): bin powers, hence the variance, are kept.
    The result is real (every factor is symmetric in f) and the projection idempotent.
    """
    import torch

    grid = grid if grid is not None else SpectrumGrid(target_S, p.shape[-2:], spacing)
    F, g, m = grid.spectrum(p, per_slice=per_slice)
    F = F * grid.support
    a = F.real ** 2 + F.imag ** 2
    p_bin = torch.zeros(g, grid.nb, dtype=torch.float64).index_add_(1, grid.bins, a.sum(1))
    p_bin = p_bin / (m * grid.counts.clamp_min(1))
    scale = torch.where(p_bin > 0, (grid.bin_power / p_bin.clamp_min(1e-300)).sqrt(), torch.zeros_like(p_bin))
    F = F * scale[:, grid.bins][:, None]
    if whitened_quantile is not None and whitened_quantile < 1.0:
        d = grid.dof(m)
        a = F.real ** 2 + F.imag ** 2
        w2 = (a * grid.inv_power).sum((1, 2))
        b2 = whitened_bound(whitened_quantile, d) ** 2 * d
        over = w2 > b2 * (1 + 1e-9)
        if bool(over.any()):
            # w^2 d is linear in lam: (1 - lam) w2 + lam d (the NPS-shaped power has w^2 d = d)
            lam = ((w2 - b2) / (w2 - d).clamp_min(1e-300)).clamp(0.0, 1.0)
            lam = torch.where(over, lam, torch.zeros_like(lam)).view(g, 1, 1)
            mag = a.sqrt()
            unit = torch.where(mag > 0, F / mag.clamp_min(1e-300), torch.ones_like(F))
            mixed = unit * ((1 - lam) * a + lam * grid.power).sqrt()
            F = torch.where(over.view(g, 1, 1), mixed, F)
    out = torch.fft.ifft2(F.reshape(p.shape[:-2] + grid.shape)).real
    return out.to(p.dtype)


def nps_shaped(x: Any, grid: SpectrumGrid) -> Any:
    """White noise ``x`` (..., ny, nx) filtered by sqrt(S): Gaussian noise with the NPS's shape (any scale)."""
    import torch

    F = torch.fft.fft2(x.to(torch.float64)) * grid.power.sqrt().reshape(grid.shape)
    return torch.fft.ifft2(F).real.to(x.dtype)


def _kernel_nps(nps: Any, spacing: Sequence[float]) -> Any:
    """``nps`` as a ``kernels`` NPS object (a full array becomes a ``GridNPS`` on the image's grid)."""
    if isinstance(nps, (RadialNPS, GridNPS)):
        return nps
    return GridNPS(np.asarray(nps, np.float64), tuple(spacing[-2:]), "array")


class NPSAscent(Attack):
    """NPS-projected gradient ascent: ``nps`` target (kernels NPS at the dose, HU^2 mm^2), ``spacing`` (mm, the
    image's), ``step`` (1, relative), ``tol`` (1e-3), ``iterations`` (10), ``restarts`` K (10), ``objective``
    output_distance (eq. 3) or task, ``projection`` (``PROJECTIONS``: per_slice_power, the default, per_sample_power,
    the study's study1_eq2, or per_sample_magnitude), ``whitened_quantile`` (power projections only: 0.99 unless
    given; 1 turns the whitened-norm cap off), ``reference_draws`` (random NPS draws per sample for the reported
    reference, 4).
    Always in HU space; the perturbation is not bounded by a norm but by its spectrum (module notes), and the
    perturbed image is kept in ``hu_range``."""

    name = "nps_ascent"

    def __init__(self, target: Target, *, nps: Any, spacing: Sequence[float], step: float = 1.0, tol: float = 1e-3,
                 iterations: int = 10, restarts: int = 10, objective: str = "output_distance",
                 projection: str = "per_slice_power", whitened_quantile: float | None = None,
                 reference_draws: int = 4, hu_range: Sequence[float] = HU_RANGE) -> None:
        super().__init__(target, space="hu", hu_range=hu_range)
        if objective not in OBJECTIVES:
            raise ConfigError(f"attack.objective: expected one of {OBJECTIVES}, got {objective!r}")
        if projection not in PROJECTIONS:
            raise ConfigError(f"attack.projection: expected one of {PROJECTIONS}, got {projection!r}")
        if whitened_quantile is None:
            whitened_quantile = WHITENED_QUANTILE if projection in POWER_PROJECTIONS else 1.0
        if isinstance(whitened_quantile, bool) or not isinstance(whitened_quantile, (int, float)) \
                or not 0.5 <= whitened_quantile <= 1.0:
            raise ConfigError(f"attack.whitened_quantile: expected a number in [0.5, 1] (1: no cap), "
                              f"got {whitened_quantile!r}")
        if whitened_quantile < 1.0 and projection not in POWER_PROJECTIONS:
            raise ConfigError(f"attack.whitened_quantile: the whitened-norm cap applies to the projections "
                              f"{POWER_PROJECTIONS} only, not {projection!r}")
        self.nps, self.spacing = nps, tuple(float(s) for s in spacing)
        self.step, self.tol = positive("step", step), positive("tol", tol)
        self.iterations = positive("iterations", iterations, integer=True)
        self.restarts = positive("restarts", restarts, integer=True)
        self.objective, self.projection = objective, projection
        self.whitened_quantile = float(whitened_quantile)
        self.reference_draws = positive("reference_draws", reference_draws, integer=True)
        self._grids: dict[tuple[int, int], SpectrumGrid] = {}
        self._stats: list[dict[str, np.ndarray]] = []

    def loss(self, raw: Any, clean_raw: Any) -> Any:
        if self.objective == "output_distance":
            return output_distance(raw, clean_raw)
        return task_loss(self.target.loss_head, raw, clean_raw)

    def grid(self, shape: Sequence[int]) -> SpectrumGrid:
        """The ``SpectrumGrid`` of images whose last two axes are ``shape[-2:]`` (built once per shape)."""
        return cached_grid(self._grids, self.nps, shape, self.spacing)

    def project(self, p: Any) -> Any:
        if self.projection == "study1_eq2":
            return project_to_nps(p, self.nps, self.spacing[-2:], per_sample=False)
        if self.projection == "per_sample_magnitude":
            return project_to_nps(p, self.nps, self.spacing[-2:], per_sample=True)
        return project_power(p, whitened_quantile=self.whitened_quantile, grid=self.grid(p.shape),
                             per_slice=self.projection == "per_slice_power")

    def random_start(self, shape: Sequence[int], generator: Any, dtype: Any) -> Any:
        """A projected random start: white noise for the study's forms (as in study 1), NPS-shaped noise for the
        power projections (the start is then random noise at the dose, its spectrum within bins included)."""
        import torch

        x = torch.randn(tuple(shape), generator=generator, dtype=dtype)
        return self.project(nps_shaped(x, self.grid(shape)) if self.projection in POWER_PROJECTIONS else x)

    def perturb(self, hu: Any, generator: Any) -> Candidates:
        import torch

        v0 = hu.detach()
        lo, hi = self.bounds(v0)
        with torch.no_grad():
            clean_raw = self.forward(v0)
        b = len(v0)
        view = (b,) + (1,) * (v0.ndim - 1)
        out, iters, wn = [], [], []
        for _ in range(self.restarts):
            p = self.random_start(v0.shape, generator, v0.dtype)
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
            wn.append(whitened_norm(p.detach(), grid=self.grid(v0.shape)).numpy())
        values = torch.stack(out, 1)
        stats = self.dose_stats(v0, values, np.stack(wn, 1), lo, hi, generator)
        self._stats.append(stats)
        rms, ref = stats["perturbation_rms_hu"], stats["random_rms_hu"]
        notes = {"mean_iterations": float(np.mean(iters)), "perturbation_rms_hu": float(rms.mean()),
                 "random_rms_hu": float(ref.mean()), "rms_ratio": float((rms.mean(1) / np.maximum(ref, 1e-30)).mean()),
                 "whitened_norm": float(stats["whitened_norm"].mean()),
                 "random_whitened_norm": float(stats["random_whitened_norm"].mean())}
        return Candidates(values, "hu", notes)

    def dose_stats(self, v0: Any, values: Any, wn: np.ndarray, lo: Any, hi: Any,
                   generator: Any) -> dict[str, np.ndarray]:
        """Per sample: the candidates' perturbation RMS (HU, after the HU-range clip; (B, K)) and whitened norm
        (``wn``, before the clip; (B, K)), and those of ``reference_draws`` random NPS draws at the dose added to
        the same sample ((B,): RMS over the draws after the same clip, mean whitened norm). The draws are
        ``kernels.nps_noise`` with keys ``NoiseKey(s, j, 0, k)``: s from the batch's generator (drawn after the
        restarts), j the position in the batch, k the draw."""
        import torch

        b, shape = len(v0), tuple(v0.shape[1:])
        rms = (values - v0[:, None]).reshape(b, values.shape[1], -1).double().pow(2).mean(-1).sqrt().numpy()
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        r = self.reference_draws
        keys = [NoiseKey(seed, j, 0, k) for j in range(b) for k in range(r)]
        m = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        draw_shape = (m, *shape[-2:]) if m > 1 else shape[-2:]
        draw_spacing = (1.0, *self.spacing[-2:]) if m > 1 else self.spacing[-2:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NPSTruncationWarning)
            noise = nps_noise(keys, _kernel_nps(self.nps, self.spacing), draw_shape, draw_spacing)
        n = torch.from_numpy(noise).reshape(b, r, *shape).to(v0.dtype)
        ref_wn = whitened_norm(n.reshape(b * r, *shape), grid=self.grid(shape)).numpy().reshape(b, r)
        clipped = torch.minimum(torch.maximum(v0[:, None] + n, lo[:, None]), hi[:, None]) - v0[:, None]
        ref_rms = clipped.reshape(b, -1).double().pow(2).mean(-1).sqrt().numpy()
        return {"perturbation_rms_hu": rms, "whitened_norm": wn, "random_rms_hu": ref_rms,
                "random_whitened_norm": ref_wn.mean(1), "whitened_dof": np.full(b, self.grid(shape).dof(m)),
                "cap_dof": np.full(b, self.grid(shape).dof(1 if self.projection == "per_slice_power" else m))}

    def extra_report(self, result: AttackResult, source: Any = None) -> dict[str, Any]:
        """Dose check of the run ``result`` describes (the last ``result.n`` samples ``perturb`` saw): per sample
        the perturbation's RMS (HU) and whitened norm per candidate ((N, K) lists) next to random NPS noise at
        the dose on the same sample ((N,) lists; the whitened norm per sample over ``whitened_dof`` degrees of
        freedom), the cap on the whitened norm (``whitened_bound``, over ``whitened_bound_dof``: per slice for
        per_slice_power, so a sample's norm is at most the cap; per sample for per_sample_power), and medians /
        maxima. Clears
        what it read; {} if ``perturb`` did not see those samples."""
        stats, self._stats = self._stats, []
        rows = {k: np.concatenate([s[k] for s in stats])[-result.n:] for k in stats[0]} if stats else {}
        if not rows or len(rows["random_rms_hu"]) != result.n:
            return {}
        rms, ref, wn = rows["perturbation_rms_hu"], rows["random_rms_hu"], rows["whitened_norm"]
        dof, cap_dof = int(rows["whitened_dof"][0]), int(rows["cap_dof"][0])
        ratio = rms / np.maximum(ref, 1e-30)[:, None]
        capped = self.projection in POWER_PROJECTIONS and self.whitened_quantile < 1.0
        return {
            "projection": self.projection, "whitened_quantile": self.whitened_quantile if capped else None,
            "whitened_bound": whitened_bound(self.whitened_quantile, cap_dof) if capped else None,
            "whitened_bound_dof": cap_dof, "whitened_dof": dof,
            "perturbation_rms_hu": rms.tolist(), "random_rms_hu": ref.tolist(), "whitened_norm": wn.tolist(),
            "random_whitened_norm": rows["random_whitened_norm"].tolist(),
            "median_rms_hu": float(np.median(rms)), "median_random_rms_hu": float(np.median(ref)),
            "median_rms_ratio": float(np.median(ratio)), "max_rms_ratio": float(ratio.max()),
            "max_whitened_norm": float(wn.max()),
            "median_random_whitened_norm": float(np.median(rows["random_whitened_norm"])),
        }

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "step": self.step, "tol": self.tol, "iterations": self.iterations,
                "restarts": self.restarts, "objective": self.objective, "projection": self.projection,
                "whitened_quantile": self.whitened_quantile, "reference_draws": self.reference_draws,
                "nps": getattr(self.nps, "name", "array"), "spacing": list(self.spacing)}
