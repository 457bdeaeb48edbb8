"""A phantom scanner: repeated scans of one fixed phantom slice per body-site class at a given mAs.

It stands in for study 2's repeated physical scans of a phantom: the scans feed
NPS estimation (repeat minus mean) and the comparison of simulated with
"scanned" noise. The noise is NPS-shaped (``kernels``) and, like real CT
noise, not stationary: it is stronger where the X-ray paths through the body
are long.

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
``NoiseKey(seed, c, round(1000 * mas), r)``, so any scan can be regenerated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from audit.errors import ConfigError
from kernels.dose import DoseModel
from kernels.keys import NoiseKey
from kernels.nps import DEFAULT_CUTOFF, preset
from kernels.stationary import nps_noise
from models.phantoms.bodysite import BODYSITE_CLASSES, SPACING, phantom_slice


@dataclass(frozen=True)
class ScanSet:
    """``scans`` (R, 256, 256) float32 HU, the ``clean`` slice, the noise ``gain`` map, ``spacing`` (y, x) mm."""

    scans: np.ndarray
    clean: np.ndarray
    gain: np.ndarray
    spacing: tuple[float, float]
    class_name: str
    mas: float


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
    """Scans the fixed phantom slice of a class with NPS noise from ``dose`` (HU, 1.5 mm pixels).

    Default dose model: the ``kernel`` preset with pixel sigma ``sigma_ref`` HU at
    ``mas_ref`` mAs; its cutoff is lowered to the grid's Nyquist frequency (0.33 1/mm
    at 1.5 mm) so that no noise power is lost on this grid.
    """

    def __init__(self, dose: DoseModel | None = None, *, kernel: str = "standard", sigma_ref: float = 12.0,
                 mas_ref: float = 200.0) -> None:
        if dose is None:
            cutoff = min(DEFAULT_CUTOFF, 0.5 / max(SPACING))
            dose = DoseModel.from_sigma(preset(kernel, 1.0, cutoff=cutoff), sigma_ref, mas_ref)
        self.dose = dose
        self.spacing = SPACING

    def scan(self, class_name: str, mas: float, repeats: int, seed: int = 0) -> ScanSet:
        """``repeats`` scans of the class phantom at ``mas`` (see the module notes for the keys)."""
        if class_name not in BODYSITE_CLASSES:
            raise ConfigError(f"scanner class: expected one of {BODYSITE_CLASSES}, got {class_name!r}")
        if int(repeats) < 1:
            raise ConfigError(f"scanner repeats: expected >= 1, got {repeats}")
        clean = phantom_slice(class_name)
        gain = gain_map(clean)
        c = BODYSITE_CLASSES.index(class_name)
        keys = [NoiseKey(int(seed), c, int(round(1000 * float(mas))), r) for r in range(int(repeats))]
        noise = nps_noise(keys, self.dose.nps_at(mas), clean.shape, self.spacing)
        return ScanSet((clean[None] + gain[None] * noise).astype(np.float32), clean, gain, self.spacing, class_name, float(mas))
