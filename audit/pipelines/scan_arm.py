"""The repeated-scan arm (study 2): does simulated noise flip a model as often as real repeated scans do?

For each phantom (one per class), R repeated scans at one dose are run
through the model (the "real" arm, clean label = the prediction on the scans'
mean image). The simulated arm estimates the local NPS from the same scans
(``kernels.LocalNPS``, 6.8 mm patches, 30% overlap), adds K draws of
spatially varying noise to the mean image and runs those. Both arms give a CMR;
each entry is compared with the two-proportion Z-test of study 2 (|Z| > 1.96
rejects equality at 95%). The phantom scanner of ``models.phantoms.scanner``
stands in for a physical scanner until DICOM series arrive.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from audit.artifact import AuditedModel
from audit.campaign.noise import draw_keys
from audit.dicom.repeated import RepeatedScans
from audit.errors import ConfigError
from audit.metrics import cmr_z_test
from kernels import LocalNPS, local_nps_noise
from models.phantoms.bodysite import BODYSITE_CLASSES
from models.phantoms.scanner import PhantomScanner


def _labels(model: AuditedModel, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([model.decide(images[i : i + batch]).labels for i in range(0, len(images), batch)])


def scan_arm(model: AuditedModel, phantoms: Sequence[RepeatedScans], *, draws: int = 100, seed: int = 0,
             patch_mm: float = 6.8, overlap: float = 0.3) -> dict[str, Any]:
    """Real-vs-simulated CMR comparison for one model; a report block (plain lists and floats)."""
    c = model.head.n_classes
    if not c:
        raise ConfigError(f"scan_arm: model '{model.name}' has no classes ({model.head.task}); the CMR needs a classifier")
    real = np.zeros((c, c), np.int64)
    sim = np.zeros((c, c), np.int64)
    per_phantom = []
    for j, ph in enumerate(phantoms):
        local = LocalNPS.from_repeated_scans(ph.scans, ph.spacing, patch_mm=patch_mm, overlap=overlap)
        mean = local.mean_image.astype(np.float32)
        clean = int(model.decide(mean[None]).labels[0])
        real_labels = _labels(model, ph.scans.astype(np.float32))
        keys = draw_keys(seed, np.full(draws, j), 0.0, np.arange(draws))  # level 0: the scans' own dose (alpha = 1)
        sim_labels = _labels(model, mean[None] + local_nps_noise(keys, local))
        np.add.at(real, (real_labels, clean), 1)
        np.add.at(sim, (sim_labels, clean), 1)
        per_phantom.append({"phantom": ph.name, "scans": int(len(ph.scans)), "draws": draws, "clean_label": clean,
                            "SAR_real": float(np.mean(real_labels != clean)), "SAR_simulated": float(np.mean(sim_labels != clean)),
                            "sigma_real_hu": float(local.sigma_map().mean())})
    test = cmr_z_test(real, sim)
    with np.errstate(invalid="ignore"):
        cmr_real = real / real.sum(axis=0, keepdims=True)
        cmr_sim = sim / sim.sum(axis=0, keepdims=True)
    z = np.asarray(test.z, dtype=float)
    finite = np.isfinite(z)
    return {"model": model.name, "class_order": list(model.head.labels_names), "per_phantom": per_phantom,
            "CMR_real": cmr_real.tolist(), "CMR_simulated": cmr_sim.tolist(), "z": z.tolist(),
            "p_value": np.asarray(test.p_value, dtype=float).tolist(),
            "max_abs_z": float(np.max(np.abs(z[finite]))) if finite.any() else None,
            "entries_rejecting_95": int(np.sum(np.abs(z[finite]) > 1.96))}


def phantom_scanner_arm(mas: float, scans: int, seed: int = 0) -> list[RepeatedScans]:
    """Repeated scans of each body-site class phantom from the phantom scanner."""
    scanner = PhantomScanner()
    return [RepeatedScans(s.scans, tuple(s.spacing), name) for name in BODYSITE_CLASSES
            for s in [scanner.scan(name, mas, scans, seed)]]
