"""The repeated-scan arm (study 2): does simulated noise flip a model as often as real repeated scans do?

For each phantom, R repeated scans at one dose are run through the model (the
"real" arm, clean label = the prediction on the scans' mean image). The
simulated arm estimates the local NPS from the same scans (``kernels.LocalNPS``,
6.8 mm patches, 30% overlap), adds K draws of spatially varying noise to the
mean image and runs those. Both arms give a CMR (study 2's entry-wise Z-test
is shown beside them, labelled as the study's formula).

The decision is a paired, cluster-aware test over phantoms: phantom j
contributes its real flips among its R scans and its simulated flips among
its first R draws (the same number, so that under H0, "the simulation is
faithful", the two counts are exchangeable), and ``audit.metrics.paired_sar_test``
refers the per-phantom differences to their sign-flip distribution. A phantom
is the unit of evidence; the draws of one phantom are not independent
trials. With one phantom per class no test can have power; the phantom
scanner supplies ``per_class`` varied phantoms (default 10) placed near the
classes' boundaries, where a model is least certain.

Power: the block states the probability that the test rejects (at ``alpha``)
when the simulated arm's pooled SAR differs from the real arm's by ``effect``
(absolute), by Monte Carlo under a planning model built from the observed
per-phantom rates (the effect added in proportion to each phantom's pooled
rate, or spread evenly when no phantom flipped), and beside it the rejection
rate of the same procedure under H0 (its size).

When no phantom's flip rate lies strictly between 0 and 1 (no scan and no
draw flips: identity CMRs on both sides; or the only flips are phantoms whose
mean image the model decides otherwise than every noisy one), the comparison
is an empty agreement; the block carries a warning and the warning is also
issued (``ScanArmWarning``) for the log.

Dose: ``phantom_scanner_arm`` scans with the audit's own dose model (the
``[noise]`` spec's ``dose_model`` on the phantom grid), so "25 mAs" means the
same noise in the scan arm as in the audit. ``variance_ratio`` scales the
simulated noise's variance against the scans' (1: their own dose; 2: the
simulation at half the dose), to plant a mismatch.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

from audit.artifact import AuditedModel
from audit.campaign.noise import NoiseSpec, draw_keys
from audit.dicom.repeated import RepeatedScans
from audit.errors import ConfigError
from audit.metrics import cmr_z_test, paired_sar_test
from kernels import LocalNPS, local_nps_noise
from models.phantoms.bodysite import SIZE, SPACING
from models.phantoms.scanner import PhantomScanner

#: Default effect for the stated power: an absolute difference of 0.05 between the two arms' pooled SARs.
EFFECT = 0.05
POWER_SIMULATIONS = 400
ALPHA = 0.05


class ScanArmWarning(UserWarning):
    """The scan arm's comparison carries no information (e.g. no flip in either arm)."""


def _labels(model: AuditedModel, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([model.decide(images[i : i + batch]).labels for i in range(0, len(images), batch)])


def _rejects(real: np.ndarray, sim: np.ndarray, m: int, alpha: float) -> bool:
    return paired_sar_test(real, sim, m, n_perm=999, seed=0).p_value <= alpha


def planned_power(real: np.ndarray, sim: np.ndarray, m: int, effect: float, *, alpha: float = ALPHA,
                  simulations: int = POWER_SIMULATIONS, seed: int = 0) -> dict[str, Any]:
    """Power of the paired test for a difference ``effect`` of pooled SARs, and its size, by Monte Carlo.

    ``real``, ``sim``: per-phantom flip counts among ``m`` scans / draws. Planning model: phantom j flips
    with p_j = (real_j + sim_j) / (2 m) in both arms under H0; under H1 the simulated arm flips with
    q_j = min(1, p_j + effect J w_j / sum w), w_j = p_j on phantoms with p_j < 1 (the effect where the flips
    are), or evenly over the phantoms with p_j < 1 when none of them flipped.
    """
    p = (real + sim) / (2.0 * m)
    open_ = p < 1.0
    w = np.where(open_, p, 0.0)
    if w.sum() == 0:
        w = open_.astype(float)
    q = np.minimum(1.0, p + effect * p.size * w / w.sum()) if w.sum() > 0 else p
    rng = np.random.default_rng(seed)
    hits = {"power": 0, "size": 0}
    for _ in range(int(simulations)):
        a = rng.binomial(m, p)
        hits["power"] += _rejects(a, rng.binomial(m, q), m, alpha)
        hits["size"] += _rejects(a, rng.binomial(m, p), m, alpha)
    return {"effect": float(effect), "effect_realised": float(np.mean(q - p)), "alpha": float(alpha),
            "power": hits["power"] / simulations, "size": hits["size"] / simulations, "simulations": int(simulations),
            "planning_model": "per-phantom rates p_j pooled over both arms; H1: the simulated arm's rates "
                              "min(1, p_j + effect J w_j / sum w), w_j = p_j where p_j < 1 (evenly over those if "
                              "none flipped); exact paired sign-flip test"}


def scan_arm(model: AuditedModel, phantoms: Sequence[RepeatedScans], *, draws: int = 100, seed: int = 0,
             patch_mm: float = 6.8, overlap: float = 0.3, variance_ratio: float = 1.0, effect: float = EFFECT,
             alpha: float = ALPHA, power_simulations: int = POWER_SIMULATIONS) -> dict[str, Any]:
    """Real-vs-simulated comparison for one model over ``phantoms``; a report block (plain lists and floats)."""
    c = model.head.n_classes
    if not c:
        raise ConfigError(f"scan_arm: model '{model.name}' has no classes ({model.head.task}); the CMR needs a classifier")
    if not phantoms:
        raise ConfigError("scan_arm: expected at least one phantom's repeated scans")
    if not (math.isfinite(variance_ratio) and variance_ratio > 0):
        raise ConfigError(f"scan_arm variance_ratio: expected a positive number, got {variance_ratio!r}")
    if not 0 < effect <= 1:
        raise ConfigError(f"scan_arm effect: expected a difference of SARs in (0, 1], got {effect!r}")
    real = np.zeros((c, c), np.int64)
    sim = np.zeros((c, c), np.int64)
    per_phantom = []
    m = min(draws, min(len(ph.scans) for ph in phantoms))  # scans and draws per phantom in the paired test
    real_flips, sim_flips = np.zeros((len(phantoms), m), bool), np.zeros((len(phantoms), m), bool)
    for j, ph in enumerate(phantoms):
        local = LocalNPS.from_repeated_scans(ph.scans, ph.spacing, patch_mm=patch_mm, overlap=overlap)
        mean = local.mean_image.astype(np.float32)
        clean = int(model.decide(mean[None]).labels[0])
        real_labels = _labels(model, ph.scans.astype(np.float32))
        keys = draw_keys(seed, np.full(draws, j), 0.0, np.arange(draws))  # level 0: the scans' own dose
        # The mean image keeps 1/R of the scans' noise variance: the simulated draws add the other (R - 1)/R,
        # so that under a faithful simulation a draw and a scan have the same noise around the object.
        r = len(ph.scans)
        sim_labels = _labels(model, mean[None] + local_nps_noise(keys, local, alpha=math.sqrt(variance_ratio * (r - 1) / r)))
        np.add.at(real, (real_labels, clean), 1)
        np.add.at(sim, (sim_labels, clean), 1)
        real_flips[j], sim_flips[j] = real_labels[:m] != clean, sim_labels[:m] != clean
        per_phantom.append({"phantom": ph.name, "scans": int(len(ph.scans)), "draws": draws, "clean_label": clean,
                            "SAR_real": float(np.mean(real_labels != clean)), "SAR_simulated": float(np.mean(sim_labels != clean)),
                            "sigma_real_hu": float(local.sigma_map().mean())})
    study = cmr_z_test(real, sim)
    with np.errstate(invalid="ignore"):
        cmr_real = real / real.sum(axis=0, keepdims=True)
        cmr_sim = sim / sim.sum(axis=0, keepdims=True)
    z = np.asarray(study.z, dtype=float)
    finite = np.isfinite(z)
    n_real, n_sim = real_flips.sum(axis=1), sim_flips.sum(axis=1)
    test = paired_sar_test(n_real, n_sim, m, seed=seed)
    power = (planned_power(n_real, n_sim, m, effect, alpha=alpha, simulations=power_simulations, seed=seed)
             if power_simulations else None)
    warn = []
    p = (n_real + n_sim) / (2.0 * m)
    if not np.any((p > 0) & (p < 1)):
        what = ("no scan and no simulated draw of any phantom flipped the model" if not p.any() else
                 "each phantom flipped the model in all or in none of its scans and draws")
        warn.append(f"scan arm ({model.name}): {what} ({len(phantoms)} phantoms); the agreement is empty (no "
                    "phantom lets noise decide, so there is no evidence either way). Scan at a lower dose or use "
                    "phantoms nearer the model's decision boundaries.")
    for w in warn:
        warnings.warn(w, ScanArmWarning, stacklevel=2)
    return {"model": model.name, "class_order": list(model.head.labels_names), "per_phantom": per_phantom,
            "phantoms": len(phantoms), "variance_ratio": float(variance_ratio),
            "CMR_real": cmr_real.tolist(), "CMR_simulated": cmr_sim.tolist(),
            "SAR_real": float(real_flips.mean()), "SAR_simulated": float(sim_flips.mean()),
            "test": {"method": "paired sign-flip permutation test over phantoms (audit.metrics.paired_sar_test): "
                               f"per phantom the flips among its R scans against those among its first {m} draws",
                     "scans_and_draws_per_phantom": m, "difference": test.difference,
                     "ci": [test.ci_low, test.ci_high], "p_value": test.p_value, "alpha": float(alpha),
                     "rejects": bool(test.p_value <= alpha), "n_discordant": test.n_discordant, "exact": test.exact},
            "power": power,
            "warnings": warn,
            # Study 2's two-proportion Z-test per CMR entry: treats scans and draws as independent trials, shown for
            # comparison with the study, not for decisions (``test`` decides).
            "z_test_label": "study 2's formula per CMR entry; draws as independent trials; not for decisions",
            "z": z.tolist(), "p_value": np.asarray(study.p_value, dtype=float).tolist(),
            "max_abs_z": float(np.max(np.abs(z[finite]))) if finite.any() else None,
            "entries_rejecting_95": int(np.sum(np.abs(z[finite]) > 1.96))}


def phantom_scanner_arm(mas: float, scans: int, seed: int = 0, *, per_class: int = 10,
                        noise: NoiseSpec | None = None) -> list[RepeatedScans]:
    """Repeated scans of ``per_class`` varied phantoms of each body-site class from the phantom scanner.

    The scanner uses the dose model of ``noise`` (default: the ``[noise]`` defaults) on the phantoms' grid,
    so its noise at ``mas`` is the audit's at the same mAs.
    """
    spec = NoiseSpec() if noise is None else noise
    if spec.kind != "nps":
        spec = NoiseSpec()
    scanner = PhantomScanner(spec.dose_model((SIZE, SIZE), SPACING))
    return [RepeatedScans(s.scans, tuple(s.spacing), f"{s.class_name}-{s.phantom}")
            for s in scanner.phantom_set(mas, scans, per_class, seed)]
