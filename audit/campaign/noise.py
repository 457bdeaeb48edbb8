"""What noise a campaign adds, at which levels, with how many draws: one validated object.

Kinds: ``nps`` (stationary NPS noise at doses in mAs, the default), and the
stress noises of study 3, ``gaussian`` (levels = sigma in HU), ``uniform``
(levels = half-width in HU) and ``poisson`` (levels = counts lambda).

Keys: draw k of sample i at a level uses ``NoiseKey(seed, i, level_key, k)``
with ``level_key = round(1000 * level)`` (the level in thousandths), so the
noise at one dose does not depend on which other doses a campaign lists.
``NoiseSpec.keys`` is the one place that layout is written; the campaign, the
report's worst cases, the case images and the scan arm all call it.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.errors import ConfigError, InputError
from kernels import DoseModel, RadialNPS, gaussian_noise, grid_variance, nps_noise, poisson_noise, preset, uniform_noise
from kernels.nps import DEFAULT_CUTOFF, PRESET_WINDOWS

KINDS = ("nps", "gaussian", "uniform", "poisson")


def level_key(level: float) -> int:
    """A level's part of a draw key: the level in thousandths, so one dose's draws do not depend on the others."""
    return int(round(1000.0 * float(level)))


def draw_keys(seed: int, samples: Any, level: float, ks: Any) -> np.ndarray:
    """The (B, 4) uint64 keys ``(seed, sample, level_key(level), k)``: the one place the key layout is written."""
    samples, ks = np.broadcast_arrays(np.asarray(samples, np.int64), np.asarray(ks, np.int64))
    return np.stack([np.full(samples.size, seed), samples.ravel(), np.full(samples.size, level_key(level)), ks.ravel()],
                    axis=1).astype(np.uint64)


@dataclass(frozen=True)
class NoiseSpec:
    kind: str = "nps"
    levels: tuple[float, ...] = (10.0, 50.0, 100.0, 200.0, 500.0)
    draws: int = 50
    seed: int = 0
    preset: str = "standard"
    table: str | None = None
    sigma_ref: float = 25.0
    mas_ref: float = 100.0
    electronic_fraction: float = 0.0
    cutoff: float | None = None
    z_fwhm_mm: float | None = None
    method: str = "spectral"
    table_values: tuple[tuple[float, float], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"noise.kind: expected one of {KINDS}, got {self.kind!r}")
        if not self.levels or any(not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0) for v in self.levels):
            raise ConfigError(f"noise.levels: expected a non-empty list of positive numbers, got {list(self.levels)!r}")
        if len(set(self.level_key(v) for v in self.levels)) != len(self.levels):
            raise ConfigError(f"noise.levels: expected distinct levels, got {list(self.levels)!r}")
        if not isinstance(self.draws, int) or self.draws < 1:
            raise ConfigError(f"noise.draws: expected an integer >= 1, got {self.draws!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"noise.seed: expected a non-negative integer, got {self.seed!r}")
        if self.kind == "nps":
            if self.table is None and self.preset not in PRESET_WINDOWS:
                raise ConfigError(f"noise.preset: expected one of {sorted(PRESET_WINDOWS)}, got {self.preset!r}")
            for key in ("sigma_ref", "mas_ref"):
                v = getattr(self, key)
                if not (isinstance(v, (int, float)) and v > 0):
                    raise ConfigError(f"noise.{key}: expected a positive number, got {v!r}")
            if not 0 <= self.electronic_fraction < 1:
                raise ConfigError(f"noise.electronic_fraction: expected a number in [0, 1), got {self.electronic_fraction!r}")
            if self.method not in ("spectral", "spatial"):
                raise ConfigError(f"noise.method: expected 'spectral' or 'spatial', got {self.method!r}")

    level_key = staticmethod(level_key)

    def keys(self, samples: Any, level: float, ks: Any) -> np.ndarray:
        """The (B, 4) uint64 keys of draws ``ks`` of ``samples`` at ``level`` (see ``draw_keys``)."""
        return draw_keys(self.seed, samples, level, ks)

    def key(self, sample: int, level: float, k: int) -> list[int]:
        """One draw's key as plain integers (what a report lists)."""
        return [int(v) for v in self.keys([sample], level, [k])[0]]

    def dose_model(self, shape: Sequence[int], spacing: Sequence[float]) -> DoseModel:
        """The NPS at ``mas_ref`` scaled so the pixel sigma *on this image grid* is ``sigma_ref``."""
        if self.table_values:
            f, s = zip(*self.table_values)
            shape_nps = RadialNPS(np.array(f), np.array(s), Path(self.table or "table").name)
        else:
            # A preset's window ends at DEFAULT_CUTOFF (0.8 1/mm); on a coarser grid (e.g. 1 mm cubes,
            # Nyquist 0.5) it is fitted to the grid's Nyquist instead of being cut off, unless noise.cutoff is set.
            nyquist = min(0.5 / d for d in spacing[-2:])
            cutoff = self.cutoff or min(DEFAULT_CUTOFF, nyquist)
            shape_nps = preset(self.preset, 1.0, cutoff=cutoff)
        grid = tuple(shape[-2:]), tuple(spacing[-2:])
        variance = grid_variance(shape_nps.on_grid(*grid), *grid)
        return DoseModel(shape_nps.scaled(self.sigma_ref**2 / variance), self.mas_ref, self.electronic_fraction)

    def sample(self, keys: np.ndarray, level: float, hu: np.ndarray, spacing: Sequence[float], *, workers: int = 1,
               model: DoseModel | None = None) -> np.ndarray:
        """Noise (HU) for the images ``hu`` (B, *shape), one key per image."""
        shape = hu.shape[1:]
        if self.kind == "nps":
            model = model or self.dose_model(shape, spacing)
            z = self.z_fwhm_mm if len(shape) == 3 else None
            return nps_noise(keys, model.nps_at(level), shape, spacing, z_nps=z, method=self.method, workers=workers)
        if self.kind == "gaussian":
            return gaussian_noise(keys, shape, level)
        if self.kind == "uniform":
            return uniform_noise(keys, shape, level)
        return poisson_noise(keys, hu, level)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("kind", "draws", "seed")}
        d["levels"] = list(self.levels)
        d["level_unit"] = {"nps": "mAs", "gaussian": "HU (sigma)", "uniform": "HU (half-width)", "poisson": "counts (lambda)"}[self.kind]
        d["key"] = "NoiseKey(seed, sample_index, round(1000 * level), k)"
        if self.kind == "nps":
            d.update(preset=None if self.table else self.preset, table=self.table, sigma_ref=self.sigma_ref, mas_ref=self.mas_ref,
                     electronic_fraction=self.electronic_fraction, cutoff=self.cutoff, z_fwhm_mm=self.z_fwhm_mm, method=self.method)
        return d


def read_nps_table(path: Path) -> RadialNPS:
    """A radial NPS from a CSV with columns ``freq`` (1/mm) and ``nps`` (HU^2 mm^2)."""
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        values = [(float(r["freq"]), float(r["nps"])) for r in rows]
    except OSError as exc:
        raise InputError(f"{path}: cannot read the NPS table ({exc.strerror or exc})") from None
    except (KeyError, ValueError, TypeError):
        raise InputError(f"{path}: expected a CSV with a header 'freq,nps' and numeric values (1/mm, HU^2 mm^2)") from None
    if len(values) < 2:
        raise InputError(f"{path}: expected at least 2 rows in the NPS table")
    try:
        f, s = zip(*values)
        return RadialNPS(np.array(f), np.array(s), path.name)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
