"""NPS-projected gradient ascent (study 1): perturbations keep the dose's spectrum and beat random NPS noise."""

from __future__ import annotations

import numpy as np
import torch

from audit.attacks import NPSAscent, Target, project_to_nps, run_attack
from audit.attacks.nps_ascent import angle_averaged_magnitude, radial_bins, target_magnitude
from kernels import DoseModel, preset
from tests.audit.attacks import nets

SPACING = (0.5, 0.5)


def _nps():
    return DoseModel(preset("standard", 12.0, cutoff=0.8), 100.0).nps_at(100.0)


def test_ascent_candidates_have_the_target_spectrum_and_flip_more_than_random_noise(fragile):
    hu = nets.images(32, spread_hu=6.0, seed=8)
    target = Target.from_model(fragile, parity_hu=hu[:4])
    attack = NPSAscent(target, nps=_nps(), spacing=SPACING, restarts=3, iterations=10, hu_range=(-3000.0, 3000.0))
    res = run_attack(attack, fragile, hu, seed=2, batch_size=32)
    assert res.k == 3
    # every candidate of every sample: the angle-averaged magnitude of its perturbation matches the NPS
    cands = attack.perturb(torch.from_numpy(hu), torch.Generator().manual_seed(2)).values
    t = target_magnitude(_nps(), nets.SHAPE, SPACING)
    bins = radial_bins(nets.SHAPE, SPACING).ravel()
    tb = np.bincount(bins, t.ravel()) / np.bincount(bins)
    for i in range(len(hu)):
        for k in range(3):
            b, m = angle_averaged_magnitude(cands[i, k] - torch.from_numpy(hu[i]), SPACING)
            live = tb[b] > 1e-3 * tb.max()
            assert np.abs(m[live] / tb[b][live] - 1).max() <= 0.01
    # random noise with the same projected spectrum, same K
    gen = torch.Generator().manual_seed(2)
    rand_flips = np.zeros((len(hu), 3), bool)
    clean = fragile.decide(hu)
    for k in range(3):
        p = project_to_nps(torch.randn(hu.shape, generator=gen), _nps(), SPACING, per_sample=True).numpy()
        rand_flips[:, k] = fragile.head.flipped(clean, fragile.decide(hu + p))[0]
    s = res.summary()
    assert s["san"] >= rand_flips.any(1).sum() + 3, (s["san"], rand_flips.any(1).sum())
    assert res.deployed_flips.sum() > rand_flips.sum()
    assert s["sar_mean"] == np.mean(res.deployed_flips.sum(1) / 3)
