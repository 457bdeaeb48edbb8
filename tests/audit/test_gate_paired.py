"""``no_regression`` compares a candidate with its baseline sample by sample: valid under the H0 that matters.

H0 for an audit: the two models are equally robust on the population of images but fragile on different
images (each image's flip probability under each model is an independent draw from one distribution).
The gate must then fail at most alpha of the time; study 2's draw-level Z-test, which treats the N x K
draws as independent trials, fails far more often. Under a planted worsening the power is reported.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

from audit.gate import evaluate
from audit.metrics import two_proportion_z_test

N, K, RUNS, ALPHA = 40, 50, 500, 0.05
RULE = {"name": "no worse", "metric": "no_regression", "level": 50.0, "test": "sar", "alpha": ALPHA}


def _report(counts: np.ndarray, labels: np.ndarray) -> dict:
    block = {"level": 50.0, "N": N, "K": K, "class_names": ["neg", "pos"], "SAR_overall": float(counts.sum() / (N * K)),
             "per_sample": {"n_flips": counts.tolist(), "clean_label": labels.tolist()},
             "per_class": {"N_c": np.bincount(labels, minlength=2).tolist()}}
    return {"models": [{"name": "m", "levels": [block]}]}


def _rates(ratio: float, seed: int, rule: dict) -> tuple[float, float]:
    """(gate failure rate, draw-level Z-test rejection rate) over RUNS simulated candidate/baseline pairs."""
    rng = np.random.default_rng(seed)
    gate_fails = z_rejects = 0
    for _ in range(RUNS):
        p_base = rng.beta(0.5, 9.5, N)                       # heterogeneous images, mean SAR 0.05
        p_cand = np.clip(rng.beta(0.5, 9.5, N) * ratio, 0, 1)  # same distribution, fragile on other images
        labels = rng.integers(0, 2, N)
        base, cand = rng.binomial(K, p_base), rng.binomial(K, p_cand)
        (outcome,) = evaluate(_report(cand, labels), [rule], _report(base, labels))
        gate_fails += not outcome.passed
        z = two_proportion_z_test(cand.sum() / (N * K), N * K, base.sum() / (N * K), N * K)
        z_rejects += z.z > 1.6449  # one-sided at 5%
    return gate_fails / RUNS, z_rejects / RUNS


def test_equal_models_fragile_on_different_images_fail_at_most_alpha():
    gate, draw_level = _rates(1.0, seed=1, rule=RULE)
    assert binomtest(round(gate * RUNS), RUNS, ALPHA, alternative="greater").pvalue > 0.01, gate
    assert gate <= 0.06
    assert draw_level > 0.2, draw_level  # the study formula's false alarms on the same data


def test_per_class_comparisons_also_hold_their_level():
    gate, _ = _rates(1.0, seed=2, rule={**RULE, "test": "sar_class"})
    assert gate <= 0.06


def test_a_planted_worsening_is_found():
    """Power at a doubled and a tripled per-image flip probability (measured 0.69 and 0.96 at N=40, K=50)."""
    double, _ = _rates(2.0, seed=3, rule=RULE)
    triple, _ = _rates(3.0, seed=3, rule=RULE)
    print(f"no_regression power, N={N}, K={K}: 2x SAR {double:.3f}, 3x SAR {triple:.3f}")
    assert double >= 0.6 and triple >= 0.9
