"""Noise kernels: CT noise shaped by a noise power spectrum, on NumPy or CuPy arrays.

No torch, no I/O. Units: HU, mm, 1/mm, HU^2 mm^2. Every draw is addressed by a
``NoiseKey(seed, sample_id, level, k)`` (see ``kernels.keys``).
"""

from kernels.dose import DoseModel, variance_factor
from kernels.errors import KernelError, MissingExtraError
from kernels.estimate import NPSEstimate, detrend, estimate_nps, extract_rois, noise_from_repeated_scans
from kernels.keys import NoiseKey, as_keys
from kernels.local import LocalNPS, local_nps_noise, sigma_map_noise
from kernels.nps import (
    DEFAULT_CUTOFF,
    PRESET_WINDOWS,
    GridNPS,
    NPSSummary,
    NPSTruncationWarning,
    RadialNPS,
    grid_variance,
    preset,
    radial_average,
    texture,
)
from kernels.reduce import (
    added_variance_factor,
    reduction_noise,
    reduction_noise_rows,
    reduction_nps,
    sigma_after,
    size_noise_factor,
)
from kernels.scan_noise import ScanNoiseEstimate, WaterDiameter, estimate_scan_noise, water_equivalent_diameter
from kernels.stationary import NoisePlan, noise_plan, nps_noise
from kernels.stress import gaussian_noise, poisson_noise, uniform_noise

__all__ = [
    "DEFAULT_CUTOFF", "PRESET_WINDOWS", "DoseModel", "GridNPS", "KernelError", "LocalNPS", "MissingExtraError",
    "NPSEstimate", "NPSSummary", "NPSTruncationWarning", "NoiseKey", "NoisePlan", "RadialNPS", "ScanNoiseEstimate", "WaterDiameter",
    "added_variance_factor", "as_keys", "detrend", "estimate_nps", "estimate_scan_noise", "extract_rois",
    "gaussian_noise", "grid_variance", "local_nps_noise", "noise_from_repeated_scans", "noise_plan", "nps_noise", "poisson_noise",
    "preset", "radial_average", "reduction_noise", "reduction_noise_rows", "reduction_nps", "sigma_after",
    "sigma_map_noise", "size_noise_factor", "texture", "uniform_noise", "variance_factor", "water_equivalent_diameter",
]
