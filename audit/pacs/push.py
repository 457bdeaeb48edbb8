"""Send a flipped case (its derived clean and noisy series) to the PACS, once.

Before pushing, the case's Study/Series/SOP Instance and Frame of Reference UIDs
are made deterministic: derived from the pixels of both series, their
descriptions and the model. The same flipped case of a second audit run
therefore has the same UIDs; a series the server already holds in full is not
sent again, and one it holds in part is completed (re-storing an instance is
harmless), so the PACS never gets a duplicate.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from audit.dicom import atomic_folder
from audit.pacs.client import PacsClient, iter_files

ROLES = ("clean", "noisy")


def _identity(folder: Path, model: str) -> str:
    """sha256 over the model and every slice's patient, description and pixels, in order."""
    import pydicom

    h = hashlib.sha256(f"ct-robustness-audit flipped case|{model}".encode())
    for role in ROLES:
        for f in iter_files(folder / role):
            ds = pydicom.dcmread(f)
            h.update(f"|{role}|{ds.get('PatientID', '')}|{ds.get('SeriesDescription', '')}|{ds.InstanceNumber}|".encode())
            h.update(ds.PixelData)
    return h.hexdigest()


def _uid(identity: str, *parts: Any) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[identity, *map(str, parts)]))


def stable_uids(case: dict[str, Any], model: str) -> dict[str, Any]:
    """Rewrite the case folder with UIDs derived from its content (atomically); returns the updated ``dicom`` block."""
    import pydicom

    folder = Path(case["folder"])
    identity = _identity(folder, model)
    study, frame = _uid(identity, "study"), _uid(identity, "frame")
    series = {role: _uid(identity, role) for role in ROLES}
    if case.get("study_uid") == study and all(case.get(f"{r}_series_uid") == series[r] for r in ROLES):
        return dict(case)
    with atomic_folder(folder, overwrite=True) as tmp:
        for role in ROLES:
            (tmp / role).mkdir()
            for f in iter_files(folder / role):
                ds = pydicom.dcmread(f)
                sop = _uid(identity, role, int(ds.InstanceNumber))
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series[role], frame
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
                ds.save_as(tmp / role / f.name, enforce_file_format=True)
    return {**case, "study_uid": study, "clean_series_uid": series["clean"], "noisy_series_uid": series["noisy"]}


def push_case(pacs: PacsClient, case: dict[str, Any], model: str) -> dict[str, Any]:
    """Push a case written by ``write_flipped_case`` (its ``dicom`` block); returns the block with UIDs and ``pushed``.

    Adds ``"pushed": true``, ``"pacs": {"server", "stored", "already_present"}``
    (series UIDs newly stored, and already on the server in full).
    """
    block = stable_uids(case, model)
    stored, present = [], []
    for role in ROLES:
        files = list(iter_files(Path(block[f"{role}_dir"])))
        uid = block[f"{role}_series_uid"]
        if pacs.series_instances(uid, block["study_uid"]) == len(files):
            present.append(uid)
            continue
        pacs.store(files, block["study_uid"], uid)
        stored.append(uid)
    return {**block, "pushed": True, "pacs": {"server": pacs.url, "stored": stored, "already_present": present}}
