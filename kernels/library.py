"""A small kernel library: an NPS texture per reconstruction kernel (ConvolutionKernel, manufacturer).

The scan's own noise texture comes, in order of preference, from repeated phantom scans of the same protocol, from
the scan's uniform regions, and, when neither is available, from this table (option (c) of the dose-reduction
design). An entry gives a *shape* only: a reconstruction window (``kernels.nps.PRESET_WINDOWS``) and the NPS peak
frequency f_peak (1/mm); the level (sigma0) must come from elsewhere (the config's ``sigma_ref`` at ``mas_ref``).

Sources, and what they support:
- The window shapes ("soft", "standard", and "sharp" = XCIST's bone window) and NPS ~ |f| W(f)^2: XCIST / gecatsim,
  ``gecatsim/reconstruction/pyfiles/createHSP.py``; Kijewski & Judy, Phys Med Biol 32:565 (1987).
- The peak frequencies of the classes (the presets at the default 0.8 1/mm cutoff: 0.23 soft, 0.36 standard, 0.64
  sharp) lie within the range reported for clinical body and bone kernels: Solomon et al. 2012 (peak frequencies
  differ by up to 0.74 1/mm between kernels), Friedman et al. 2013 (ACR phantom, standard body kernel, peak near
  0.25 1/mm). f_peak changes below about 0.02 1/mm (body) are not perceptible (J Med Imaging 2024, "Perceptual
  thresholds for differences in CT noise texture").
- Which vendor kernel belongs to which class follows the vendors' naming conventions (GE: SOFT, STANDARD, BONE,
  LUNG; Siemens: sharpness rises with the number of B/Br/I kernels; Philips: A smooth, B standard, D and L sharp).
  That assignment is a class by name, not a measured NPS: iterative reconstruction moves the peak to lower
  frequencies (De Marco & Origgi 2018), so a library texture is the weakest of the three sources and the report says
  it was used. A user table (``KernelLibrary.with_rows``) takes precedence over the built-in rows.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from kernels import _checks
from kernels.errors import KernelError
from kernels.nps import PRESET_WINDOWS, RadialNPS, preset

SOURCES = ("XCIST createHSP.py window shapes; Kijewski & Judy 1987 (FBP NPS ~ |f| W^2); class peaks within Solomon "
           "et al. 2012 and Friedman et al. 2013; vendor naming conventions for the class (not a measured NPS)")


@functools.cache
def window_peak(window: str) -> float:
    """The NPS peak of ``window`` as a fraction of its cutoff (the preset at cutoff 1)."""
    return preset(window, 1.0, cutoff=1.0).summary().f_peak


@dataclass(frozen=True)
class KernelEntry:
    """One row: ``manufacturer`` (case-insensitive substring; "" = any), ``kernel`` (a regular expression matched
    in full, case-insensitive, against the first value of ConvolutionKernel), the window class and f_peak (1/mm)."""

    manufacturer: str
    kernel: str
    window: str
    f_peak: float
    source: str = "built-in"

    def __post_init__(self) -> None:
        if self.window not in PRESET_WINDOWS:
            raise KernelError(f"kernel library: window {self.window!r} for kernel {self.kernel!r}: expected one of "
                              f"{sorted(PRESET_WINDOWS)}")
        _checks.positive(f"kernel library: f_peak for kernel {self.kernel!r}", self.f_peak)
        try:
            re.compile(self.kernel)
        except re.error as exc:
            raise KernelError(f"kernel library: kernel pattern {self.kernel!r} is not a regular expression ({exc})") from None

    def matches(self, manufacturer: str | None, kernel: str) -> bool:
        if self.manufacturer and self.manufacturer.lower() not in (manufacturer or "").lower():
            return False
        return re.fullmatch(self.kernel, kernel, flags=re.IGNORECASE) is not None

    def nps(self) -> RadialNPS:
        """The texture: the window's FBP NPS with its cutoff set so that it peaks at ``f_peak`` (unit variance)."""
        return preset(self.window, 1.0, cutoff=self.f_peak / window_peak(self.window))

    def to_dict(self) -> dict:
        return {"manufacturer": self.manufacturer or None, "kernel": self.kernel, "window": self.window,
                "f_peak": self.f_peak, "source": self.source if self.source != "built-in" else SOURCES}


def _class(window: str) -> float:
    return round(0.8 * window_peak(window), 3)  # the preset's peak at the default 0.8 1/mm cutoff


def _builtin() -> tuple[KernelEntry, ...]:
    soft, std, sharp = (_class(w) for w in ("soft", "standard", "sharp"))
    return (
        KernelEntry("GE", r"SOFT", "soft", soft),
        KernelEntry("GE", r"STANDARD|STND", "standard", std),
        KernelEntry("GE", r"BONE|BONEPLUS|LUNG|EDGE", "sharp", sharp),
        KernelEntry("SIEMENS", r"[BIQ]r?[12]\d[a-z]?", "soft", soft),  # B10f-B26f, Br10-Br29, I26f ...
        KernelEntry("SIEMENS", r"[BIQ]r?(3\d|4[0-4])[a-z]?", "standard", std),  # B30f-B41f, Br32-Br40, I30f-I44f
        KernelEntry("SIEMENS", r"[BIQ]r?(4[5-9]|[5-9]\d)[a-z]?", "sharp", sharp),  # B45f and up, Br59, Br64, I70f
        KernelEntry("PHILIPS", r"A", "soft", soft),
        KernelEntry("PHILIPS", r"B", "standard", std),
        KernelEntry("PHILIPS", r"D|L", "sharp", sharp),
    )


@dataclass(frozen=True)
class KernelLibrary:
    """The lookup table: user rows first, then the built-in ones."""

    rows: tuple[KernelEntry, ...]

    @classmethod
    def builtin(cls) -> KernelLibrary:
        return cls(_builtin())

    def with_rows(self, rows: Iterable[KernelEntry]) -> KernelLibrary:
        return KernelLibrary(tuple(rows) + self.rows)

    def lookup(self, manufacturer: str | None, kernel: str | None) -> KernelEntry | None:
        """The first row matching the series' manufacturer and the first value of its ConvolutionKernel, or None."""
        if not kernel:
            return None
        first = str(kernel).split("\\")[0].strip()
        return next((r for r in self.rows if r.matches(manufacturer, first)), None)
