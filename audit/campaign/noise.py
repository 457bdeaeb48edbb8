"""What noise a campaign adds, at which levels, with how many draws: one validated object.

Kinds: ``nps`` (stationary NPS noise at doses in mAs, the default), and the
stress noises of study 3, ``gaussian`` (levels = sigma in HU), ``uniform``
(levels = half-width in HU) and ``poisson`` (levels = counts lambda).

Modes of ``nps`` noise (``NoiseSpec.mode``):

- ``"add"``: the whole noise of each dose is added (the studies' protocol). Right
  for noise-free inputs (phantoms); on a real scan it double-counts the noise
  the scan already has.
- ``"reduce"``: dose reduction on real scans acquired at D0: only the noise a
  lower dose D adds is inserted, NPS S(D) - S(D0) per slice, from the scan's
  acquired dose (DICOM tags, or ``acquired_mas``) and its own noise
  (``scan_noise``); see ``audit.campaign.reduction``. Levels are ``fractions``
  of the acquired dose (e.g. ``(0.5, 0.25, 0.1)``), absolute mAs below it, or
  CTDIvol in mGy (``ctdivol_mgy``) below each series' acquired CTDIvol (its
  CTDIvol tag, else ``acquired_ctdivol_mgy``). ``spatial = "map"`` (the reduce
  default) makes the inserted noise follow the scan's FBP variance map
  (``kernels.variance_map``), ``"stationary"`` inserts it uniformly.
- ``"auto"`` (the default): decided by the data when the spec is bound to a
  source (``resolved(source)``, ``noise_model(source)``): ``reduce`` if the
  source holds DICOM series (real scans; their dose is read from their headers)
  or ``acquired_mas``, ``fractions`` or CTDIvol levels are given, ``add`` otherwise (phantoms and
  array files: noise-free or of unknown dose). A DICOM series without dose tags
  and no ``acquired_mas`` is then an error naming the series, never silently
  ``add``. Unbound (``sample`` without a model), ``auto`` adds, as before.

Keys: draw k of sample i at a level uses ``NoiseKey(seed, i, level_key, k)``
with ``level_key = round(1000 * level)`` (the level in thousandths), so the
noise at one dose does not depend on which other doses a campaign lists.
``NoiseSpec.keys`` is the one place that layout is written; the campaign, the
report's worst cases, the case images and the scan arm all call it.

Noise bank (``bank = B``, opt-in, for screening runs such as CI gates; never the
default): per level, B fields are drawn once with the keys
``(seed, BANK_SAMPLE, level_key, b)`` and draw k of sample i is field
``(o_i + k) mod B`` circularly shifted by a keyed offset (``NoiseBank``). A
circular shift of a stationary periodic field (every FFT draw and white noise
is one) has exactly the field's distribution, so each draw is an exact draw of
the noise; a sample's K draws are distinct (different fields, or one field at
different shifts); but draws of *different* samples reuse the same B fields, so
independence across samples is approximate, and reports say so.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.campaign.reduction import SCAN_NOISE, SPATIAL, DoseReduction
from audit.errors import ConfigError, InputError
from audit.io import read_user_text
from kernels import (
    DoseModel,
    KernelError,
    RadialNPS,
    gaussian_noise,
    grid_variance,
    nps_noise,
    poisson_noise,
    preset,
    uniform_noise,
)
from kernels._xp import to_numpy
from kernels.stationary import NoisePlan, noise_plan
from kernels.library import KernelEntry
from kernels.nps import DEFAULT_CUTOFF, PRESET_WINDOWS

KINDS = ("nps", "gaussian", "uniform", "poisson")
#: Fields per level with ``[noise] bank = true``: 64 independent fields, each shifted to any of the image's pixel
#: offsets (65,536 for a 256 x 256 slice), so a sample's draws stay distinct for K up to 64 x pixels; a bank of
#: 256 x 256 slices costs 16 MiB per level, and 64 fresh draws (what a bank costs) are what one sample block of
#: one shard costs at K = 1.
BANK_FIELDS = 64
#: The sample id of the bank fields' keys ``(seed, BANK_SAMPLE, level_key, b)``: no sample of a source has it.
BANK_SAMPLE = 2**64 - 1
#: Most bytes the banks of one campaign (fields x levels x image) may hold in memory.
BANK_BYTES = 2 * 2**30
BANK_NOTE = ("noise bank: each draw is an exact draw of the noise (a keyed circular shift of a pre-drawn stationary "
             "field) and a sample's draws are distinct, but samples share the bank's fields, so independence across "
             "samples is approximate (screening runs only)")
MODES = ("auto", "add", "reduce")
MODE_LABELS = {
    "add": "add: the whole noise of each dose is added (the studies' protocol; right for noise-free inputs such as phantoms)",
    "reduce": "reduce: only the noise the lower dose adds to the scan's own is inserted, S(D) - S(D0)",
    "auto": "auto: reduce on DICOM series (real scans) or with acquired_mas/fractions set, add on phantoms and arrays",
}


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
    """The ``[noise]`` table: kind, levels, draws, seed, the NPS and its dose model, and the mode (module docstring).

    Reduce mode: ``fractions`` (each in (0, 1), fractions of the acquired dose) become the ``levels``; without
    them ``levels`` are absolute mAs, each below every series' acquired dose. ``acquired_mas`` supplies the dose
    of series (or arrays) that state none. ``scan_noise``: where the scan's own noise comes from (``"estimate"``
    from its uniform regions, ROIs of 32 pixels or ``roi_mm``; ``"phantom"`` from ``phantom_series`` repeated scans at their
    stated dose or ``phantom_mas``, a kernel mismatch warned or, with ``strict_kernel``, refused; ``"model"`` the
    preset/table at ``sigma_ref``/``mas_ref``, scaled to the patient's size if ``reference_diameter_mm``).
    ``electronic_fraction`` is the electronic share of the variance at ``mas_ref`` in every mode. ``spatial``:
    ``"map"`` (reduce default: the noise follows the scan's FBP variance map) or ``"stationary"``; ``ctdivol_mgy``:
    levels as CTDIvol (mGy) below each series' CTDIvol (tag, else ``acquired_ctdivol_mgy``); ``kernel_table``: a
    user kernel library (``kernel_rows``, read by ``read_kernel_table``) before the built-in one.
    """

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
    mode: str = "auto"
    fractions: tuple[float, ...] = ()
    acquired_mas: float | None = None
    scan_noise: str = "estimate"
    phantom_series: tuple[str, ...] = ()
    phantom_mas: float | None = None
    reference_diameter_mm: float | None = None
    strict_kernel: bool = False
    roi_mm: float | None = None
    spatial: str = "map"
    ctdivol_mgy: tuple[float, ...] = ()
    acquired_ctdivol_mgy: float | None = None
    kernel_table: str | None = None
    kernel_rows: tuple[tuple[str, str, str, float], ...] = field(default=(), repr=False)
    bank: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"noise.mode: expected one of {MODES}, got {self.mode!r}")
        if self.spatial not in SPATIAL:
            raise ConfigError(f"noise.spatial: expected one of {SPATIAL}, got {self.spatial!r}")
        if self.ctdivol_mgy:
            bad = [v for v in self.ctdivol_mgy if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)]
            if bad:
                raise ConfigError(f"noise.ctdivol_mgy: expected positive numbers (CTDIvol in mGy), got {bad[0]!r}")
            if self.fractions:
                raise ConfigError("noise.ctdivol_mgy: give fractions (of the acquired dose) or CTDIvol levels, not both")
            if self.mode == "add":
                raise ConfigError("noise.ctdivol_mgy: CTDIvol levels are relative to each series' acquired CTDIvol "
                                  "and need mode = 'reduce' (or 'auto'); mode 'add' takes levels in mAs")
            object.__setattr__(self, "ctdivol_mgy", tuple(float(v) for v in self.ctdivol_mgy))
            object.__setattr__(self, "levels", self.ctdivol_mgy)
        if self.fractions:
            bad = [f for f in self.fractions if not (isinstance(f, (int, float)) and math.isfinite(f) and 0 < f < 1)]
            if bad:
                raise ConfigError(f"noise.fractions: expected numbers in (0, 1) (fractions of the acquired dose; a "
                                  f"reduction can only lower it), got {bad[0]!r}")
            if self.mode == "add":
                raise ConfigError("noise.fractions: fractions of the acquired dose need mode = 'reduce' (or 'auto'); "
                                  "mode 'add' takes levels in mAs")
            object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
            object.__setattr__(self, "levels", self.fractions)
        if self.mode == "reduce" and self.kind != "nps":
            raise ConfigError(f"noise.mode: 'reduce' applies to kind = 'nps' only, got kind {self.kind!r}")
        if self.scan_noise not in SCAN_NOISE:
            raise ConfigError(f"noise.scan_noise: expected one of {SCAN_NOISE}, got {self.scan_noise!r}")
        if self.scan_noise == "phantom" and len(self.phantom_series) < 2:
            raise ConfigError("noise.phantom_series: scan_noise = 'phantom' needs at least 2 repeated phantom scans "
                              f"(folders), got {len(self.phantom_series)}")
        for key in ("acquired_mas", "phantom_mas", "reference_diameter_mm", "roi_mm", "acquired_ctdivol_mgy"):
            v = getattr(self, key)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"noise.{key}: expected a positive number, got {v!r}")
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
        if isinstance(self.bank, bool) or not isinstance(self.bank, int) or self.bank < 0:
            raise ConfigError(f"noise.bank: expected true, false or a number of fields >= 1, got {self.bank!r}")
        if self.bank and (self.kind == "poisson" or self.mode == "reduce"):
            raise ConfigError("noise.bank: a bank reuses stationary noise (kind 'nps' added whole, 'gaussian' or "
                              f"'uniform'); kind {self.kind!r} in mode {self.mode!r} depends on each image")

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

    def resolved_mode(self, source: Any) -> str:
        """``add`` or ``reduce`` for this source (``auto`` decided by the data; see the module docstring)."""
        if self.kind != "nps" or self.mode == "add":
            return "add"
        if (self.mode == "reduce" or self.fractions or self.acquired_mas is not None or self.ctdivol_mgy
                or self.acquired_ctdivol_mgy is not None):
            return "reduce"
        getter = getattr(source, "acquisition", None)
        is_dicom = getattr(source, "source_slices", None)
        if callable(getter) and callable(is_dicom) and any(is_dicom(i) is not None for i in range(len(source))):
            return "reduce"  # real scans: their noise is already in them
        return "add"

    def resolved(self, source: Any) -> "NoiseSpec":
        """This spec with ``mode`` decided for ``source`` (what report.json records)."""
        return dataclasses.replace(self, mode=self.resolved_mode(source))

    def noise_model(self, source: Any) -> DoseModel | DoseReduction | None:
        """The model ``sample`` takes for this source: a ``DoseModel`` (add), a ``DoseReduction`` (reduce; reads every
        sample's acquired dose now and refuses bad levels or missing doses, naming the series), None (stress noise)."""
        if self.kind != "nps":
            return None
        if self.resolved_mode(source) == "reduce":
            return DoseReduction(self.resolved(source), source)
        return self.dose_model(source.shape, source.spacing)

    def sample(self, keys: np.ndarray, level: float, hu: Any, spacing: Sequence[float], *, workers: int = 1,
               model: DoseModel | DoseReduction | None = None, xp: Any = None) -> Any:
        """Noise (HU) for the images ``hu`` (B, *shape), one key per image, fresh (never from a bank).

        ``model``: from ``noise_model(source)``; a ``DoseReduction`` inserts only what the lower dose adds. Mode
        ``reduce`` needs it (the acquired doses are the source's); ``add`` and unbound ``auto`` add the whole noise.
        ``xp``: the array namespace the noise is made in (None: NumPy); the keys' uniforms are the same bits on
        either (``kernels.keys``). Dose reduction and Poisson noise are drawn on the host and moved to ``xp``.
        """
        shape = hu.shape[1:]
        if isinstance(model, DoseReduction):
            return _on(xp, model.sample(keys, level, to_numpy(hu), spacing, workers=workers))
        if self.kind == "nps" and self.mode == "reduce":
            raise ConfigError("noise.mode 'reduce': sample() needs the model of the scans, NoiseSpec.noise_model(source) "
                              "(their acquired doses and own noise)")
        if self.kind == "nps":
            model = model or self.dose_model(shape, spacing)
            z = self.z_fwhm_mm if len(shape) == 3 else None
            return nps_noise(keys, model.nps_at(level), shape, spacing, z_nps=z, method=self.method, workers=workers, xp=xp)
        if self.kind == "gaussian":
            return gaussian_noise(keys, shape, level, xp=xp)
        if self.kind == "uniform":
            return uniform_noise(keys, shape, level, xp=xp)
        return _on(xp, poisson_noise(keys, to_numpy(hu), level))

    def plan(self, level: float, shape: Sequence[int], spacing: Sequence[float], *, model: Any = None,
             xp: Any = None) -> NoisePlan | None:
        """The lean kernel of this noise at ``level`` (``kernels.stationary.noise_plan``: the filter once, buffers
        once, add + window + clip fused; the same bits as ``sample``), or None where ``sample`` is the only path
        (stress noise, dose reduction)."""
        if self.kind != "nps" or self.mode == "reduce" or isinstance(model, DoseReduction):
            return None
        model = model or self.dose_model(shape, spacing)
        z = self.z_fwhm_mm if len(shape) == 3 else None
        return noise_plan(model.nps_at(level), tuple(shape), tuple(spacing), z_nps=z, method=self.method, xp=xp)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("kind", "draws", "seed")}
        d["levels"] = list(self.levels)
        d["level_unit"] = {"nps": ("fraction of the acquired dose" if self.fractions else
                                   "CTDIvol (mGy)" if self.ctdivol_mgy else "mAs"), "gaussian": "HU (sigma)", "uniform": "HU (half-width)", "poisson": "counts (lambda)"}[self.kind]
        d["key"] = "NoiseKey(seed, sample_index, round(1000 * level), k)"
        if self.bank:  # only then: a report of fresh noise keeps its keys (and golden files) as before
            d.update(bank=self.bank, bank_key=f"NoiseKey(seed, {BANK_SAMPLE}, round(1000 * level), b), b < {self.bank}",
                     bank_note=BANK_NOTE)
        if self.kind == "nps":
            d.update(preset=None if self.table else self.preset, table=self.table, sigma_ref=self.sigma_ref, mas_ref=self.mas_ref,
                     electronic_fraction=self.electronic_fraction, cutoff=self.cutoff, z_fwhm_mm=self.z_fwhm_mm, method=self.method)
            if self.mode != "auto":  # decided (``resolved(source)``, or given): labelled; unbound "auto" adds, as before
                d.update(mode=self.mode, mode_label=MODE_LABELS[self.mode])
            if self.mode == "reduce":
                d.update(fractions=list(self.fractions) or None, acquired_mas=self.acquired_mas, scan_noise=self.scan_noise,
                         phantom_series=list(self.phantom_series) or None, phantom_mas=self.phantom_mas,
                         reference_diameter_mm=self.reference_diameter_mm, strict_kernel=self.strict_kernel,
                         roi_mm=self.roi_mm, spatial=self.spatial, ctdivol_mgy=list(self.ctdivol_mgy) or None,
                         acquired_ctdivol_mgy=self.acquired_ctdivol_mgy, kernel_table=self.kernel_table)
        return d


def _on(xp: Any, a: np.ndarray) -> Any:
    """A host array moved to ``xp`` (None or NumPy: as is)."""
    return a if xp is None or xp is np else xp.asarray(a)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays: a keyed, well-spread hash (wraps like the C code)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class NoiseBank:
    """B pre-drawn fields per level, reused across samples with keyed circular shifts (module docstring).

    Draw ``(seed, i, level, k)`` takes field ``f = (o_i + k) mod B`` with ``o_i`` a hash of ``(seed, i, level)``, shifted
    by pixel offset ``(h(seed, i, level, f) + (k // B) * stride) mod P`` (P pixels, ``stride`` coprime to P): two draws
    of one sample share a field only when their k differ by a multiple of B, and then their offsets differ (for
    K < B x P), so a sample's K draws are distinct. Fields are made once per level, in ``xp``, and kept there.
    """

    def __init__(self, spec: NoiseSpec, shape: Sequence[int], spacing: Sequence[float], model: Any = None, *,
                 xp: Any = None, workers: int = 1) -> None:
        self.spec, self.shape, self.spacing, self.model = spec, tuple(int(v) for v in shape), tuple(spacing), model
        self.xp, self.workers = np if xp is None else xp, workers
        self.size = int(spec.bank) or BANK_FIELDS
        self.pixels = math.prod(self.shape)
        need = self.size * len(spec.levels) * self.pixels * 4
        if need > BANK_BYTES:
            raise ConfigError(f"noise.bank: {self.size} fields x {len(spec.levels)} levels of {self.shape} images take "
                              f"{need / 2**30:.1f} GiB, above {BANK_BYTES / 2**30:.0f} GiB; use fewer fields or fresh noise")
        stride = int(self.pixels * 0.6180339887498949) | 1
        while math.gcd(stride, self.pixels) != 1:
            stride += 2
        self.stride = stride
        self._fields: dict[float, Any] = {}

    def fields(self, level: float) -> Any:
        """The level's (B, *shape) fields: fresh draws under the keys ``(seed, BANK_SAMPLE, level_key, b)``."""
        if level not in self._fields:
            keys = draw_keys(self.spec.seed, np.full(self.size, BANK_SAMPLE, np.uint64), level, np.arange(self.size))
            blank = np.zeros((self.size, *self.shape), np.float32)  # the fresh kernels read only its shape here
            self._fields[level] = self.spec.sample(keys, level, blank, self.spacing, workers=self.workers,
                                                   model=self.model, xp=self.xp)
        return self._fields[level]

    def layout(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(field index, pixel offset) per draw key ``(seed, sample, level_key, k)``: host integers."""
        keys = np.asarray(keys, np.uint64).reshape(-1, 4)
        seed, sample, lk, k = keys.T
        base = _mix(seed ^ _mix(sample ^ _mix(lk + np.uint64(0x9E3779B97F4A7C15))))
        b = np.uint64(self.size)
        f = (base % b + k % b) % b
        cycle = (k // b) % np.uint64(self.pixels)
        h = _mix(base ^ _mix(f + np.uint64(0xD1B54A32D192ED03))) % np.uint64(self.pixels)
        offset = (h + cycle * np.uint64(self.stride % self.pixels)) % np.uint64(self.pixels)
        return f.astype(np.int64), offset.astype(np.int64)

    def sample(self, keys: np.ndarray, level: float) -> Any:
        """Noise (HU) for draw keys ``(B, 4)``: ``(B, *shape)`` float32 in ``xp``, each a shifted bank field."""
        fields = self.fields(level)
        f, offset = self.layout(keys)
        shifts = np.stack(np.unravel_index(offset, self.shape), axis=1)
        out = self.xp.empty((f.size, *self.shape), self.xp.float32)
        for r in range(f.size):
            _roll_into(out[r], fields[int(f[r])], shifts[r])
        return out


def _roll_into(dst: Any, src: Any, shifts: Sequence[int]) -> None:
    """``dst[...] = roll(src, shifts)`` over every axis, as block copies (2 per shifted axis; no temporary)."""
    segments = []
    for n, s in zip(src.shape, shifts):
        s = int(s) % n
        segments.append(((slice(s, n), slice(0, n - s)), (slice(0, s), slice(n - s, n))) if s else ((slice(None), slice(None)),))
    for combo in itertools.product(*segments):
        dst[tuple(c[0] for c in combo)] = src[tuple(c[1] for c in combo)]


def read_nps_table(path: Path) -> RadialNPS:
    """A radial NPS from a UTF-8 CSV with columns ``freq`` (1/mm, strictly increasing from >= 0) and ``nps``
    (HU^2 mm^2, finite, >= 0, not all zero); anything else is one ``InputError`` naming the file (and the row)."""
    path = Path(path)
    text = read_user_text(path, "NPS table", bom=True)
    header = "expected a CSV with a header 'freq,nps' and numeric values (1/mm, HU^2 mm^2)"
    if "\0" in text:
        raise InputError(f"{path}: the NPS table holds a NUL byte; {header}")
    try:
        rows = list(csv.DictReader(text.splitlines()))
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV ({exc}); {header}") from None
    if not rows or "freq" not in rows[0] or "nps" not in rows[0]:
        raise InputError(f"{path}: {header}")
    values = []
    for n, r in enumerate(rows):
        try:
            f, v = float(r["freq"]), float(r["nps"])
        except (TypeError, ValueError):  # a short row gives None, a word a ValueError
            cells = [r.get("freq"), r.get("nps")]
            raise InputError(f"{path}: row {n + 2}: {header}, got {cells!r}"[:300]) from None
        if not (math.isfinite(f) and math.isfinite(v)):
            raise InputError(f"{path}: row {n + 2}: expected finite numbers, got freq {f:g}, nps {v:g}")
        values.append((f, v))
    if len(values) < 2:
        raise InputError(f"{path}: expected at least 2 rows in the NPS table")
    try:
        f, s = zip(*values)
        return RadialNPS(np.array(f), np.array(s), path.name)
    except ValueError as exc:  # KernelError: negative power, frequencies not increasing, all zeros
        raise InputError(f"{path}: {exc}") from None


KERNEL_TABLE_HEADER = "expected a CSV with a header 'manufacturer,kernel,window,f_peak' (window soft|standard|sharp, f_peak 1/mm)"


def read_kernel_table(path: Path) -> tuple[tuple[str, str, str, float], ...]:
    """A user kernel library: UTF-8 CSV rows ``manufacturer`` (substring, may be empty = any), ``kernel`` (a regular
    expression matched in full, case-insensitive), ``window`` (soft | standard | sharp) and ``f_peak`` (1/mm, > 0);
    anything else is one ``InputError`` naming the file and the row."""
    path = Path(path)
    text = read_user_text(path, "kernel table", bom=True)
    try:
        rows = list(csv.DictReader(text.splitlines()))
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV ({exc}); {KERNEL_TABLE_HEADER}") from None
    if not rows or any(k not in rows[0] for k in ("manufacturer", "kernel", "window", "f_peak")):
        raise InputError(f"{path}: {KERNEL_TABLE_HEADER}")
    out = []
    for n, r in enumerate(rows):
        try:
            entry = KernelEntry((r["manufacturer"] or "").strip(), (r["kernel"] or "").strip(), (r["window"] or "").strip(),
                                float(r["f_peak"]), f"{path.name} row {n + 2}")
        except (TypeError, ValueError, KernelError) as exc:
            raise InputError(f"{path}: row {n + 2}: {exc if isinstance(exc, KernelError) else KERNEL_TABLE_HEADER}"[:300]) from None
        if not entry.kernel:
            raise InputError(f"{path}: row {n + 2}: the kernel column is empty")
        out.append((entry.manufacturer, entry.kernel, entry.window, entry.f_peak))
    return tuple(out)
