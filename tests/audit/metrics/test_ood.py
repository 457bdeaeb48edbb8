"""OOD-detector AUROC against a brute-force pair count, and its cluster bootstrap against a brute-force resampling."""

from __future__ import annotations

import numpy as np
import pytest

from audit.errors import InputError
from audit.metrics import delong_auc_variance
from audit.metrics.ood import ood_auroc


def pair_count_auroc(s_in, s_ood) -> float:
    """P(OOD score > in-distribution score), ties 1/2, by counting every pair."""
    wins = sum(1.0 if o > i else 0.5 if o == i else 0.0 for o in s_ood for i in s_in)
    return wins / (len(s_in) * len(s_ood))


def clustered(seed: int, n: int = 12, k: int = 5, shift: float = 1.0):
    """n source images: one clean score each, and k OOD draws sharing a per-image offset (the clustering)."""
    rng = np.random.default_rng(seed)
    offset = rng.normal(0, 1.0, n)
    s_in = np.round(offset + rng.normal(0, 0.3, n), 1)  # rounded: ties
    s_ood = np.round(np.repeat(offset, k) + shift + rng.normal(0, 0.3, n * k), 1)
    ids = np.array([f"s{i:02d}" for i in range(n)])
    return s_in, s_ood, ids, np.repeat(ids, k)


@pytest.mark.parametrize("seed", range(4))
def test_auroc_equals_the_pair_count(seed):
    s_in, s_ood, c_in, c_ood = clustered(seed)
    r = ood_auroc(s_in, s_ood, c_in, c_ood, n_boot=20, seed=seed)
    assert r.auroc == pytest.approx(pair_count_auroc(s_in, s_ood), abs=1e-12)
    assert (r.n_in, r.n_ood, r.n_clusters) == (12, 60, 12)


def test_cluster_bootstrap_equals_a_brute_force_resampling():
    s_in, s_ood, c_in, c_ood = clustered(3)
    got = ood_auroc(s_in, s_ood, c_in, c_ood, n_boot=300, seed=11)
    rng = np.random.default_rng(11)
    ids = np.unique(c_in)
    vals = []
    for _ in range(300):
        pick = ids[rng.integers(0, ids.size, ids.size)]
        a = np.concatenate([s_in[c_in == c] for c in pick])
        b = np.concatenate([s_ood[c_ood == c] for c in pick])
        vals.append(pair_count_auroc(a, b))
    lo, hi = np.quantile(vals, [0.025, 0.975])
    assert (got.low, got.high) == pytest.approx((lo, hi), abs=1e-12)
    assert got.low <= got.auroc <= got.high and got.n_valid == 300


def test_clustered_interval_is_wider_than_the_independent_delong_interval():
    # 200 independent in-distribution images; 300 OOD draws that are 10 draws each of 30 source images sharing a
    # per-source offset: DeLong counts 300 independent OOD inputs, the cluster bootstrap 30 sources
    rng = np.random.default_rng(5)
    s_in = rng.normal(0, 1, 200)
    s_ood = np.repeat(rng.normal(1.0, 1.0, 30), 10) + rng.normal(0, 0.2, 300)
    c_in = np.array([f"i{i:03d}" for i in range(200)])
    c_ood = np.repeat([f"o{i:02d}" for i in range(30)], 10)
    r = ood_auroc(s_in, s_ood, c_in, c_ood, n_boot=400, seed=0)
    naive = delong_auc_variance(np.r_[np.zeros(s_in.size), np.ones(s_ood.size)], np.r_[s_in, s_ood])
    assert naive.auc == pytest.approx(r.auroc)
    assert r.high - r.low > 1.5 * (naive.high - naive.low)  # 10 draws of one image are not 10 images


def test_bad_input():
    with pytest.raises(InputError, match="clusters_in"):
        ood_auroc([0.1, 0.2], [0.3], ["a"], ["a"])
    with pytest.raises(InputError, match="scores_ood"):
        ood_auroc([0.1], [np.nan], ["a"], ["a"])
