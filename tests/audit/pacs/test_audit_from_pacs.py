"""Audits whose manifest names series on a real Orthanc (DICOMweb), and flipped cases pushed back to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audit.dicom import read_series, write_series

SHAPE = (20, 24, 24)        # series (nz, ny, nx), 1 mm voxels
CENTRE = (12, 12, 10)       # i, j, k (column, row, slice) of the lesion
CUBE = 16
REGION = (slice(4, 12),) * 3
NOISE = 'kind = "nps"\nmode = "add"  # synthetic noise-free cubes: the studies\' protocol\nlevels = [20, 200]\ndraws = 6\nseed = 3\nsigma_ref = 150.0'


def _volumes(n: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Series whose lesion mean is spread around the planted model's threshold (0 HU), with texture around it."""
    rng = np.random.default_rng(seed)
    vols, labels = [], []
    for _ in range(n):
        v = rng.normal(-300.0, 30.0, SHAPE).round().astype(np.float32)
        mean = float(rng.normal(0.0, 3.0))
        k, j, i = CENTRE[2], CENTRE[1], CENTRE[0]
        v[k - 6:k + 6, j - 6:j + 6, i - 6:i + 6] = np.round(mean + rng.normal(0, 2.0, (12, 12, 12)))
        vols.append(v)
        labels.append(int(mean >= 0))
    return vols, np.array(labels)


@pytest.fixture(scope="module")
def dataset(orthanc, tmp_path_factory):
    """Series written to folders and uploaded to the Orthanc; a folder manifest and a PACS manifest of the same rows."""
    from tests.audit.planted import planted_model

    root = tmp_path_factory.mktemp("pacs-data")
    vols, labels = _volumes(8)
    rows_files, rows_pacs, uids = ["path,label,id,i,j,k"], ["path,label,id,i,j,k"], []
    for n, (v, lab) in enumerate(zip(vols, labels)):
        from pydicom.dataset import Dataset

        patient = Dataset()
        patient.PatientID, patient.PatientName, patient.PatientSex = f"AUDIT-{n:03d}", f"Phantom^Case{n}", "O"
        w = write_series(v, (1.0, 1.0, 1.0), root / f"series{n}", description=f"audit test {n}", reference=patient)
        orthanc.upload(w.folder)
        uids.append((w.study_uid, w.series_uid))
        ijk = ",".join(map(str, CENTRE))
        rows_files.append(f"series{n},{lab},case{n},{ijk}")
        # half by series UID alone, half by study/series
        rows_pacs.append(f"dicomweb:{w.series_uid if n % 2 else w.study_uid + '/' + w.series_uid},{lab},case{n},{ijk}")
    (root / "files.csv").write_text("\n".join(rows_files) + "\n")
    (root / "pacs.csv").write_text("\n".join(rows_pacs) + "\n")
    model = planted_model(root / "planted3d.onnx", (CUBE,) * 3, REGION, threshold_hu=0.0)
    return root, model, uids


def uploaded_audit(orthanc, folder: Path, seed: int, prefix: str = "dicomweb:") -> tuple[Path, Path]:
    """Four series with lesions uploaded to ``orthanc`` (REST), a manifest naming them by ``prefix``<SeriesUID> with
    the lesion centre, and the planted model: (manifest, model)."""
    from tests.audit.planted import planted_model

    vols, labels = _volumes(4, seed=seed)
    rows = ["path,label,i,j,k"]
    for n, (v, lab) in enumerate(zip(vols, labels)):
        w = write_series(v, (1.0, 1.0, 1.0), folder / f"s{n}")
        orthanc.upload(w.folder)
        rows.append(f"{prefix}{w.series_uid},{lab},{','.join(map(str, CENTRE))}")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return folder / "m.csv", planted_model(folder / "m.onnx", (CUBE,) * 3, REGION, threshold_hu=0.0)


def _config(path: Path, model: Path, manifest: Path, pacs: str = "") -> Path:
    path.write_text(f'[model]\npath = "{model}"\nname = "planted3d"\n\n[data]\nmanifest = "{manifest}"\ncube = {CUBE}\n\n'
                    f"[noise]\n{NOISE}\n\n[run]\nbatch_size = 32\nshard_samples = 4\n\n[report]\nworst = 3\n\n{pacs}")
    return path


def _audit(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audit", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def _numbers(report: dict) -> list:
    """What an audit measured: clean metrics and every level's counts and rates, per model."""
    out = []
    for m in report["models"]:
        out.append({k: v for k, v in m["clean"].items() if isinstance(v, (int, float))})
        for b in m["levels"]:
            out.append({k: b[k] for k in ("level", "K", "N", "SAN", "SAN_fraction", "SAR_overall", "SAR") if k in b})
        out.append([(c["sample"], c["level"], c["k"], c["noisy_label"]) for c in m["worst_cases"]])
    return out


def _pacs_table(orthanc, tmp: Path, push: bool) -> str:
    return (f'[pacs]\nurl = "{orthanc.root}"\ncache_dir = "{tmp / "cache"}"\ncache_max_mb = 64\n'
            f"retries = 1\nbackoff = 0.05\ntimeout = 20\npush = {'true' if push else 'false'}\n")


def test_audit_from_pacs_matches_files_and_pushes_each_flipped_case_once(orthanc, dataset, tmp_path):
    root, model, uids = dataset
    proc = _audit("run", _config(tmp_path / "files.toml", model, root / "files.csv"), "--out", tmp_path / "out-files")
    assert proc.returncode == 0, proc.stderr
    files_report = json.loads((tmp_path / "out-files" / "report.json").read_text())

    before = len(orthanc.rest_get("/series"))
    config = _config(tmp_path / "pacs.toml", model, root / "pacs.csv", _pacs_table(orthanc, tmp_path, push=True))
    proc = _audit("run", config, "--out", tmp_path / "out-pacs")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out-pacs" / "report.json").read_text())

    # Same series, same numbers: the PACS path reads exactly what the files hold.
    assert _numbers(report) == _numbers(files_report)
    assert report["models"][0]["levels"][0]["SAN"] >= 1, "the fixture must flip some cases"
    # Every series was retrieved into the cache, complete.
    cached = {p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")}
    assert cached == {s for _, s in uids}

    cases = report["models"][0]["worst_cases"]
    assert cases and all(c["dicom"]["pushed"] for c in cases)
    new_series = {c["dicom"][f"{r}_series_uid"] for c in cases for r in ("clean", "noisy")}
    assert len(new_series) == 2 * len(cases)
    after = len(orthanc.rest_get("/series"))
    assert after == before + len(new_series)
    for c in cases:
        d = c["dicom"]
        assert sorted(d["pacs"]["stored"]) == sorted([d["clean_series_uid"], d["noisy_series_uid"]])
        assert d["pacs"]["server"] == orthanc.root and d["pacs"]["already_present"] == []
        for role in ("clean", "noisy"):
            # Read back from the PACS (WADO-RS, through our own retrieval) to the same HU as the local derived series.
            from audit.pacs import DicomWebPacs, PacsServer

            pacs = DicomWebPacs(PacsServer(orthanc.root, cache_dir=tmp_path / "readback"))
            ref = pacs.locate(d[f"{role}_series_uid"])
            assert ref.study_uid == d["study_uid"] and ref.instances == CUBE
            assert ref.description == d[f"{role}_description"] and ref.description.startswith(role.upper())
            remote = read_series(pacs.fetch(ref.series_uid, ref.study_uid))
            local = read_series(tmp_path / "out-pacs" / d[f"{role}_dir"])  # relative to the output folder
            assert remote.series_uid == local.series_uid
            np.testing.assert_array_equal(remote.hu, local.hu)
            # the derived series belong to the source series' patient, so the PACS files them under that patient
            for series in (remote, local):
                assert series.header.PatientID == f"AUDIT-{c['sample']:03d}"
                assert str(series.header.PatientName) == f"Phantom^Case{c['sample']}"
        # The clean series is the audited cube of the source series (HU kept to the stored integer).
        source = read_series(root / f"series{c['sample']}")
        k, j, i = CENTRE[2], CENTRE[1], CENTRE[0]
        clean = read_series(tmp_path / "out-pacs" / d["clean_dir"]).hu
        assert abs(float(clean[6:10, 6:10, 6:10].mean()) - float(source.hu[k - 2:k + 2, j - 2:j + 2, i - 2:i + 2].mean())) < 3.0

    # A second run (new out dir, warm cache) finds every case already on the server and pushes nothing.
    proc = _audit("run", config, "--out", tmp_path / "out-pacs-2")
    assert proc.returncode == 0, proc.stderr
    again = json.loads((tmp_path / "out-pacs-2" / "report.json").read_text())
    assert _numbers(again) == _numbers(report)
    assert len(orthanc.rest_get("/series")) == after
    for c, c2 in zip(cases, again["models"][0]["worst_cases"]):
        assert c2["dicom"]["study_uid"] == c["dicom"]["study_uid"]
        assert c2["dicom"]["pacs"]["stored"] == []
        assert sorted(c2["dicom"]["pacs"]["already_present"]) == sorted([c["dicom"]["clean_series_uid"],
                                                                          c["dicom"]["noisy_series_uid"]])


def test_clean_derived_series_hold_the_source_hu(orthanc, dataset, tmp_path):
    """Retrieval keeps HU exactly: a series read through the PACS equals the same series read from its folder."""
    from audit.pacs import DicomWebPacs, PacsServer

    root, _, uids = dataset
    pacs = DicomWebPacs(PacsServer(orthanc.root, cache_dir=tmp_path / "cache"))
    for n, (study, series) in enumerate(uids[:3]):
        via_pacs = read_series(pacs.fetch(series, study if n % 2 else None))
        from_files = read_series(root / f"series{n}")
        np.testing.assert_array_equal(via_pacs.hu, from_files.hu)
        assert via_pacs.spacing == from_files.spacing and np.allclose(via_pacs.origin, from_files.origin)
