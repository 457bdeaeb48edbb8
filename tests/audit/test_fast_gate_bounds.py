"""The fast gate's early verdicts are wrong at most ``error`` of the time, near zero as well as at moderate rates.

"Wrong" is judged against the SAR of the audited case set: the mean flip
probability of these N images, which is what the full gate estimates. Each
simulated run draws K flips per image in rounds and applies the gate's own
decision function (``bounded_verdict``) after every round at confidence
1 - error / looks, exactly as ``run_fast_gate`` does.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from audit.metrics import cluster_wilson_interval, exact_lower_bound
from audit.pipelines.fast_gate import bounded_verdict

N, K, ROUNDS, RUNS = 40, 50, 10, 200


def _case_set(rng, sar: float, spread: str) -> np.ndarray:
    """Per-image flip probabilities whose mean is exactly ``sar``: equal, or clustered on a few images."""
    if spread == "equal":
        return np.full(N, sar)
    w = rng.gamma(0.3, size=N)
    return np.clip(w / w.mean() * sar, 0, 1)


def _wrong_early(decide, sar: float, limit: float, error: float, spread: str, seed: int) -> tuple[int, int]:
    """(wrong early verdicts, early verdicts) over RUNS simulated sequential gates."""
    rng = np.random.default_rng(seed)
    step = K // ROUNDS
    confidence = 1 - error / ROUNDS
    wrong = early = 0
    for _ in range(RUNS):
        p = _case_set(rng, sar, spread)
        truth_passes = p.mean() <= limit
        flips = rng.random((N, K)) < p[:, None]
        for r in range(1, ROUNDS):  # the last look is the full gate: exact, not early
            verdict = decide(flips[:, : r * step].sum(axis=1), r * step, limit, confidence)
            if verdict is not None:
                early += 1
                wrong += verdict != truth_passes
                break
    return wrong, early


def _wilson(counts, draws, limit, confidence):
    """The old per-look rule: a two-sided cluster Wilson interval at the same confidence."""
    lo, hi = cluster_wilson_interval(counts, draws, confidence)
    return True if hi <= limit else False if lo > limit else None


def _exact(counts, draws, limit, confidence):
    return bounded_verdict(counts, draws, limit, confidence)[0]


CASES = [  # (true SAR of the case set, limit, spread)
    (0.9 * 5e-4, 5e-4, "equal"),      # rare flips just under a small limit: an early FAIL is wrong
    (0.9 * 5e-4, 5e-4, "clustered"),
    (0.10, 0.08, "clustered"),        # moderate: an early PASS is wrong
    (0.10, 0.12, "clustered"),        # moderate: an early FAIL is wrong
]


@pytest.mark.parametrize("error", [0.05, 0.01])
@pytest.mark.parametrize("sar, limit, spread", CASES)
def test_wrong_early_verdicts_at_most_error(error, sar, limit, spread):
    wrong, early = _wrong_early(_exact, sar, limit, error, spread, seed=int(1e6 * sar) + int(1e3 * error))
    # One-sided binomial test of "rate <= error" over RUNS runs (early or not: a late verdict is never wrong).
    assert binomtest(wrong, RUNS, error, alternative="greater").pvalue > 0.01, (wrong, early)


def test_one_early_flip_is_weak_evidence_under_the_exact_bound():
    """The mechanism of the old defect: after one flip in the first 200 draws, Wilson's lower bound sits 30x above
    the exact one, close to a small limit; the exact rule needs far more evidence to fail a rule early."""
    counts = np.zeros(N, np.int64)
    counts[0] = 1
    lo_wilson = cluster_wilson_interval(counts, 5, 1 - 2 * 0.05 / ROUNDS)[0]
    lo_exact = exact_lower_bound(counts, 5, 1 - 0.05 / ROUNDS)
    assert lo_exact < lo_wilson / 30
    assert bounded_verdict(counts, 5, 5e-4, 1 - 0.05 / ROUNDS)[0] is None


def test_exact_rule_is_never_wronger_than_the_old_one_near_zero():
    old = sum(_wrong_early(_wilson, 0.9 * 5e-4, 5e-4, 0.05, "equal", seed=s)[0] for s in range(11, 15))
    new = sum(_wrong_early(_exact, 0.9 * 5e-4, 5e-4, 0.05, "equal", seed=s)[0] for s in range(11, 15))
    assert new < old and new / (4 * RUNS) <= 0.05


def test_clear_cases_are_still_decided_early():
    """The bound is not so wide that nothing is ever decided: a clear pass and a clear fail stop early.

    "Clear" is judged against what N = 40 images can show: with no flip seen, the exact upper bound is that of 0
    flips in about N trials (the design effect is K when no flip shows how flips cluster), 0.136 at the per-look
    confidence 0.995, however many draws were made; and with flips it is never lower (the no-flip floor of
    ``audit.metrics.intervals.cluster_design_effect``: before it, one flip in 200 draws gave 0.039, a pass of a
    0.05 limit that no flip at all could not earn). So a limit under 0.136 (0.05, the old test's) is never passed
    early with N = 40, only by the full gate on the estimate; a clear pass is a limit above what N images bound."""
    confidence = 1 - 0.05 / ROUNDS
    zero = np.zeros(N, np.int64)
    one = zero.copy()
    one[0] = 1
    assert bounded_verdict(zero, 5, 0.05, confidence)[0] is None
    assert bounded_verdict(one, 5, 0.05, confidence)[0] is None
    assert bounded_verdict(zero, 5, 0.2, confidence)[:2] == (True, pytest.approx(0.136, abs=5e-4))
    assert bounded_verdict(one, 5, 0.2, confidence)[:2] == bounded_verdict(zero, 5, 0.2, confidence)[:2]
    _, early_pass = _wrong_early(_exact, 0.001, 0.2, 0.05, "equal", seed=3)
    _, early_fail = _wrong_early(_exact, 0.30, 0.10, 0.05, "clustered", seed=4)
    assert early_pass == RUNS and early_fail >= 0.8 * RUNS
