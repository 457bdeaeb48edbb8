"""NPS projection (study 1, eq. 5): the angle-averaged Fourier magnitude matches sqrt(S Nx Ny / (dx dy))."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.attacks import project_to_nps
from audit.attacks.nps_ascent import angle_averaged_magnitude, radial_bins, target_magnitude
from kernels import GridNPS, preset


def _binned_target(nps, shape, spacing):
    t = target_magnitude(nps, shape, spacing)
    bins = radial_bins(shape, spacing).ravel()
    return np.bincount(bins, t.ravel()) / np.bincount(bins)


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("shape,spacing", [((32, 32), (1.0, 1.0)), ((48, 40), (0.6, 0.7))])
def test_projection_matches_target_spectrum_within_1_percent(shape, spacing, per_sample):
    nps = preset("standard", 20.0, cutoff=min(0.8, 0.5 / max(spacing)))
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(5, 3, *shape, generator=gen) * torch.tensor([1.0, 50.0, 0.1, 3.0, 7.0]).view(5, 1, 1, 1)
    q = project_to_nps(p, nps, spacing, per_sample=per_sample)
    assert q.dtype == p.dtype and q.shape == p.shape
    target = _binned_target(nps, shape, spacing)
    groups = [q[i] for i in range(len(q))] if per_sample else [q]
    for g in groups:
        bins, measured = angle_averaged_magnitude(g, spacing)
        t = target[bins]
        live = t > 1e-3 * t.max()
        rel = np.abs(measured[live] / t[live] - 1)
        assert rel.max() <= 0.01, rel.max()
        assert np.all(measured[~live] <= 1e-3 * t.max() + 1e-9)


def test_projection_keeps_phase_and_accepts_a_grid_nps():
    """Projecting twice changes nothing (idempotent) and a full (ny, nx) array works like the NPS object."""
    nps = preset("soft", 10.0, cutoff=0.5)
    grid = GridNPS(nps.on_grid((32, 32), (1.0, 1.0), half=False), (1.0, 1.0))
    p = torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(2))
    a = project_to_nps(p, nps, (1.0, 1.0))
    b = project_to_nps(p, grid, (1.0, 1.0))
    c = project_to_nps(a, np.asarray(grid.values), (1.0, 1.0))
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)
    np.testing.assert_allclose(a.numpy(), c.numpy(), atol=1e-4)
    # sign of the correlation with the input: the phase is p's
    assert float((a * p).sum()) > 0
