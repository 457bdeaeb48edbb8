"""A phantom scanner: repeated scans of body-site phantom slices at a given mAs.

It stands in for study 2's repeated physical scans of a phantom: the scans feed
NPS estimation (repeat minus mean) and the comparison of simulated with
"scanned" noise. The noise is NPS-shaped (``kernels``) and, like real CT
noise, not stationary: it is stronger where the X-ray paths through the body
are long.

Phantoms: ``phantom=None`` is the fixed phantom slice of a class (an average
patient at the middle of the class); ``phantom=j`` is phantom j of a class
(``phantom_set``): its own patient and a position near one of the class's
inner boundaries (within ``NEAR_BOUNDARY``: where a model's decision is least
certain and noise is most likely to flip it), so a set of them gives the
scan arm something to compare.

Dose: by default the scanner follows the audit's dose law exactly (the
``standard`` preset with its window ending at the grid's Nyquist frequency,
scaled so that the pixel sigma on the 256^2 grid at 1.5 mm is ``sigma_ref`` =
25 HU at ``mas_ref`` = 100 mAs, sigma ~ sqrt(mas_ref / mAs): the defaults of
``[noise]``), so the same nominal mAs means the same noise in the scan arm and
in an audit; the scan arm passes the audit's own ``DoseModel``.

Notes
-----
Non-stationarity model (first order): the noise variance at a pixel is
proportional to ``0.5 + 0.5 L(x, y) / mean_body(L)``, L being the sum of the
water-equivalent path lengths through the pixel along its row and its column
(mu_tissue / mu_water = 1 + HU/1000), smoothed over 10 mm. So the gain map
``g`` has mean about 1 inside the body and the noise at a pixel is
``g(x, y) n(x, y)``, n stationary with the dose model's NPS: its local NPS is
``g^2 S(f)`` (to the extent g is smooth over a patch).

Draws are keyed: scan ``r`` of class ``c`` at ``mas`` uses
``NoiseKey(seed, c + C (j + 1), round(1000 * mas), r)`` for phantom j (C
classes; ``c`` for the fixed phantom), so any scan can be regenerated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from audit.errors import ConfigError
from kernels.dose import DoseModel
from kernels.keys import NoiseKey
from kernels.nps import DEFAULT_CUTOFF, grid_variance, preset
from kernels.stationary import nps_noise
from models.phantoms._draw import sample_rng
from models.phantoms.bodysite import BODYSITE_CLASSES, SIZE, SPACING, Patient, phantom_slice, render

_STREAM_PHANTOM = 41
#: Varied phantoms lie within this distance (class units of the body coordinate) of an inner class boundary.
NEAR_BOUNDARY = 0.12


@dataclass(frozen=True)
class ScanSet:
    """``scans`` (R, 256, 256) float32 HU, the ``clean`` slice, the noise ``gain`` map, ``spacing`` (y, x) mm."""

    scans: np.ndarray
    clean: np.ndarray
    gain: np.ndarray
    spacing: tuple[float, float]
    class_name: str
    mas: float
    phantom: int | None = None
    u: float | None = None


def dose_law(kernel: str = "standard", sigma_ref: float = 25.0, mas_ref: float = 100.0,
             shape: tuple[int, int] = (SIZE, SIZE), spacing: tuple[float, float] = SPACING) -> DoseModel:
    """The audit's sigma-vs-mAs law on this grid (``NoiseSpec.dose_model`` with the same arguments): the preset,
    its window ending at min(0.8 1/mm, the grid's Nyquist), scaled so that the pixel sigma *on this grid* is
    ``sigma_ref`` HU at ``mas_ref``."""
    cutoff = min(DEFAULT_CUTOFF, min(0.5 / d for d in spacing))
    shape_nps = preset(kernel, 1.0, cutoff=cutoff)
    grid = tuple(shape), tuple(spacing)
    variance = grid_variance(shape_nps.on_grid(*grid), *grid)
    return DoseModel(shape_nps.scaled(sigma_ref**2 / variance), mas_ref)


def phantom_position(class_name: str, j: int, seed: int = 0) -> tuple[float, Patient]:
    """Body coordinate and patient of phantom ``j`` of a class: a slice of its own patient near a class boundary.

    The anatomy shown (``u + patient.offset``) is uniform over the parts of the class within ``NEAR_BOUNDARY``
    of an inner boundary (both ends for a middle class, one for the first and last), drawn from
    ``(seed, class, j)``.
    """
    c = BODYSITE_CLASSES.index(class_name)
    rng = sample_rng(seed, c * 100_000 + int(j), _STREAM_PHANTOM)
    patient = Patient.draw(rng)
    zones = []
    if c > 0:  # the boundary with the class below is an inner one
        zones.append((c, c + NEAR_BOUNDARY))
    if c + 1 < len(BODYSITE_CLASSES):
        zones.append((c + 1 - NEAR_BOUNDARY, c + 1))
    lo, hi = zones[int(rng.integers(len(zones)))]
    u = float(rng.uniform(lo, hi)) - patient.offset  # the anatomy is at u + offset: inside [lo, hi)
    return u, patient


def gain_map(clean: np.ndarray, spacing: tuple[float, float] = SPACING) -> np.ndarray:
    """Noise amplitude gain (dimensionless, ~1 in the body) of a slice in HU; see the module notes."""
    mu = np.clip(1.0 + clean / 1000.0, 0.0, None)
    rows = mu.sum(axis=1, keepdims=True) * spacing[1]
    cols = mu.sum(axis=0, keepdims=True) * spacing[0]
    length = rows + cols
    body = clean > -500
    ref = float(length[np.broadcast_to(body, length.shape)].mean()) if body.any() else float(length.mean())
    var = 0.5 + 0.5 * length / ref
    return np.sqrt(gaussian_filter(var, 10.0 / spacing[0])).astype(np.float32)


class PhantomScanner:
    """Scans phantom slices of the body-site classes with NPS noise from ``dose`` (HU, 1.5 mm pixels).

    Default dose model: ``dose_law(kernel, sigma_ref, mas_ref)``, the audit's law (module notes): pixel sigma
    ``sigma_ref`` HU at ``mas_ref`` mAs on this grid, the preset's window ending at the grid's Nyquist
    frequency (0.33 1/mm at 1.5 mm) so that no noise power is lost. Inside the body the gain map has mean
    square about 1, so the scans' noise there has the audit's sigma at the same mAs.
    """

    def __init__(self, dose: DoseModel | None = None, *, kernel: str = "standard", sigma_ref: float = 25.0,
                 mas_ref: float = 100.0) -> None:
        self.dose = dose_law(kernel, sigma_ref, mas_ref) if dose is None else dose
        self.spacing = SPACING

    def phantom(self, class_name: str, phantom: int | None = None, seed: int = 0) -> tuple[np.ndarray, float | None]:
        """The clean slice (HU) of the class's fixed phantom (``None``) or of its phantom ``j``, and its u."""
        if class_name not in BODYSITE_CLASSES:
            raise ConfigError(f"scanner class: expected one of {BODYSITE_CLASSES}, got {class_name!r}")
        if phantom is None:
            return phantom_slice(class_name), None
        if int(phantom) < 0:
            raise ConfigError(f"scanner phantom: expected an index >= 0, got {phantom}")
        u, patient = phantom_position(class_name, int(phantom), seed)
        c = BODYSITE_CLASSES.index(class_name)
        return render(u, patient, sample_rng(seed, c * 100_000 + int(phantom), _STREAM_PHANTOM + 1)), u

    def scan(self, class_name: str, mas: float, repeats: int, seed: int = 0, *, phantom: int | None = None) -> ScanSet:
        """``repeats`` scans of a class phantom at ``mas`` (see the module notes for the phantoms and keys)."""
        if class_name not in BODYSITE_CLASSES:
            raise ConfigError(f"scanner class: expected one of {BODYSITE_CLASSES}, got {class_name!r}")
        if int(repeats) < 1:
            raise ConfigError(f"scanner repeats: expected >= 1, got {repeats}")
        clean, u = self.phantom(class_name, phantom, seed)
        gain = gain_map(clean)
        c = BODYSITE_CLASSES.index(class_name)
        sample = c if phantom is None else c + len(BODYSITE_CLASSES) * (int(phantom) + 1)
        keys = [NoiseKey(int(seed), sample, int(round(1000 * float(mas))), r) for r in range(int(repeats))]
        noise = nps_noise(keys, self.dose.nps_at(mas), clean.shape, self.spacing)
        return ScanSet((clean[None] + gain[None] * noise).astype(np.float32), clean, gain, self.spacing, class_name,
                       float(mas), phantom, u)

    def phantom_set(self, mas: float, repeats: int, per_class: int = 10, seed: int = 0) -> list[ScanSet]:
        """``per_class`` varied phantoms of every class (``phantom=0..per_class-1``), each scanned ``repeats`` times."""
        if int(per_class) < 1:
            raise ConfigError(f"scanner per_class: expected >= 1, got {per_class}")
        return [self.scan(name, mas, repeats, seed, phantom=j) for name in BODYSITE_CLASSES for j in range(int(per_class))]
