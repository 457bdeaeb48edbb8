"""Dose scaling of CT noise: from a reference exposure (mAs0) to any mAs.

Quantum noise alone gives S(mAs) = S(mAs0) * mAs0/mAs, so sigma scales with
sqrt(mAs0/mAs). At very low dose electronic noise adds a term in 1/mAs^2:
variance(mAs) = a/mAs + b/mAs^2. Here it is parametrised by the fraction of the
reference variance that is electronic, so that the model is fixed by what a
user measures at one dose. The NPS shape is kept at every dose (a choice:
electronic noise is in truth somewhat whiter; iterative reconstruction also
changes the shape, which this model does not claim to capture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from kernels import _checks
from kernels.nps import GridNPS, RadialNPS

NPS = Union[RadialNPS, GridNPS]


def variance_factor(mas: float, mas_ref: float, electronic_fraction: float = 0.0) -> float:
    """variance(mas) / variance(mas_ref) = (1 - e) mas_ref/mas + e (mas_ref/mas)^2."""
    mas = _checks.positive("mAs", mas)
    mas_ref = _checks.positive("reference mAs", mas_ref)
    e = _checks.fraction("electronic_fraction", electronic_fraction, high_open=True)
    r = mas_ref / mas
    return (1.0 - e) * r + e * r * r


@dataclass(frozen=True, eq=False)
class DoseModel:
    """An NPS measured (or chosen) at ``mas_ref`` plus the law that carries it to other doses."""

    nps: NPS
    mas_ref: float
    electronic_fraction: float = 0.0

    def __post_init__(self) -> None:
        _checks.positive("reference mAs", self.mas_ref)
        _checks.fraction("electronic_fraction", self.electronic_fraction, high_open=True)

    @classmethod
    def from_sigma(cls, shape: NPS, sigma_ref: float, mas_ref: float, electronic_fraction: float = 0.0) -> "DoseModel":
        """Reference given as a pixel sigma (HU) at ``mas_ref``; ``shape`` supplies the NPS shape."""
        return cls(shape.with_sigma(sigma_ref), mas_ref, electronic_fraction)

    def factor(self, mas: float) -> float:
        return variance_factor(mas, self.mas_ref, self.electronic_fraction)

    def nps_at(self, mas: float) -> NPS:
        """The NPS at ``mas`` (HU^2 mm^2)."""
        return self.nps.scaled(self.factor(mas))

    def sigma_at(self, mas: float) -> float:
        """Pixel sigma (HU) at ``mas`` implied by the (continuous or grid) NPS."""
        return math.sqrt(self.nps.variance() * self.factor(mas))
