"""A DIMSE PACS (``url = "dicom://host:port"``): a real Orthanc on loopback with its DICOM port enabled. C-FIND,
C-GET and C-MOVE retrieval, C-STORE push, an idempotent second push, and failures (unknown UID, stopped server,
rejected AE title) each one line with exit 2 and no partial cache entry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audit.config import parse_config
from audit.data import ManifestSource
from audit.dicom import read_series, write_flipped_case
from audit.errors import ConfigError
from audit.pacs import DimsePacs, PacsError, PacsServer, connect, push_case
from audit.toml import tomllib
from tests.audit.pacs.conftest import _require, free_port, make_tls, start_orthanc
from tests.audit.pacs.test_audit_from_pacs import SHAPE, _volumes
from tests.audit.pacs.test_hardening import _everything, _series

pytest.importorskip("pynetdicom", reason="pynetdicom not installed: pip install 'ct-robustness-audit[pacs]'")

ROOT = Path(__file__).resolve().parents[3]
ME = "CT-AUDIT-T"


@pytest.fixture(scope="module")
def dimse(tmp_path_factory):
    """An Orthanc with its DICOM port on (AE ORTHANC) that knows this tool as ME at a free loopback port (C-MOVE)."""
    _require()
    move_port = free_port()
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-dimse"), modalities={ME: [ME, "127.0.0.1", move_port]})
    yield server, move_port
    server.stop()


def _server(dimse, tmp_path, **kw) -> PacsServer:
    orthanc, move_port = dimse
    kw.setdefault("cache_dir", tmp_path / "cache")
    return PacsServer(f"dicom://127.0.0.1:{orthanc.dicom_port}", ae_title=ME, called_ae="ORTHANC", retries=1,
                      backoff=0.01, timeout=10, **({"move_port": move_port} if kw.get("retrieve") == "move" else {}), **kw)


@pytest.mark.parametrize("retrieve", ["get", "move"])
def test_retrieval_gives_the_series_as_written_and_reuses_the_cache(dimse, tmp_path, retrieve):
    orthanc, _ = dimse
    w, _ = _series(tmp_path, seed=31 if retrieve == "get" else 32)
    orthanc.upload(w.folder)
    pacs = connect(_server(dimse, tmp_path, retrieve=retrieve))
    assert isinstance(pacs, DimsePacs)
    ref = pacs.locate(w.series_uid)
    assert (ref.study_uid, ref.instances, ref.modality) == (w.study_uid, SHAPE[0], "CT")
    folder = pacs.fetch(w.series_uid, w.study_uid)
    assert np.array_equal(read_series(folder).hu, read_series(w.folder).hu)
    before = pacs.attempts
    assert pacs.fetch(w.series_uid) == folder and pacs.attempts == before + 1  # one C-FIND, no retrieval
    (tmp_path / "m.csv").write_text(f"path,label,i,j,k\npacs:{w.series_uid},1,12,12,10\n")
    src = ManifestSource(tmp_path / "m.csv", cube=8, pacs=pacs)
    assert src.shape == (8, 8, 8) and src.series_name(0).endswith(f"(series {w.series_uid})")


def test_a_grown_series_is_retrieved_again_over_dimse(dimse, tmp_path):
    orthanc, _ = dimse
    w, files = _series(tmp_path, seed=33)
    orthanc.upload(files[:-1])
    server = _server(dimse, tmp_path)
    assert len(list(DimsePacs(server).fetch(w.series_uid).glob("*.dcm"))) == SHAPE[0] - 1
    orthanc.upload(files[-1:])
    assert len(list(DimsePacs(server).fetch(w.series_uid).glob("*.dcm"))) == SHAPE[0]


def test_push_by_c_store_is_sent_once(dimse, tmp_path):
    orthanc, _ = dimse
    vol = _volumes(1, seed=34)[0][0][:6]
    case = write_flipped_case(vol, vol + 5, (1.0, 1.0, 1.0), tmp_path / "case", level=20.0, key=(1, 2, 3))
    pacs = DimsePacs(_server(dimse, tmp_path))
    first = push_case(pacs, case, "model-a")
    assert first["pushed"] and sorted(first["pacs"]["stored"]) == sorted([first["clean_series_uid"], first["noisy_series_uid"]])
    assert first["pacs"]["server"] == f"dicom://127.0.0.1:{orthanc.dicom_port}"
    assert pacs.series_instances(first["noisy_series_uid"]) == 6
    second = push_case(pacs, case, "model-a")  # a second run: same UIDs, nothing sent
    assert second["pacs"]["stored"] == [] and len(second["pacs"]["already_present"]) == 2
    assert second["noisy_series_uid"] == first["noisy_series_uid"]
    back = pacs.fetch(first["noisy_series_uid"])
    assert np.array_equal(read_series(back).hu, read_series(Path(case["folder"]) / "noisy").hu)


def _one_line(exc: BaseException, *needles: str) -> str:
    text = str(exc)
    assert "\n" not in text, text
    for n in needles:
        assert n in text, (n, text)
    return text


def test_unknown_uid_and_rejected_ae_title_are_one_line_and_leave_nothing(dimse, tmp_path):
    orthanc, _ = dimse
    url = f"dicom://127.0.0.1:{orthanc.dicom_port}"
    pacs = DimsePacs(_server(dimse, tmp_path))
    (tmp_path / "m.csv").write_text("path,label\npacs:1.2.826.0.1.999.42,1\n")
    with pytest.raises(PacsError) as info:
        ManifestSource(tmp_path / "m.csv", pacs=pacs)
    _one_line(info.value, f"PACS {url}", "series 1.2.826.0.1.999.42", "not found on the server")
    assert pacs.attempts == 1
    wrong = DimsePacs(PacsServer(url, ae_title=ME, called_ae="NOT-ORTHANC", retries=3, backoff=0.01,
                                 cache_dir=tmp_path / "cache"))
    with pytest.raises(PacsError) as info:
        wrong.fetch("1.2.826.0.1.999.43")
    _one_line(info.value, "association rejected", "pacs.called_ae (NOT-ORTHANC")
    assert wrong.attempts == 1  # a refusal is not retried
    assert _everything(tmp_path / "cache") == []


def test_move_to_an_unregistered_ae_title_is_named(dimse, tmp_path):
    orthanc, move_port = dimse
    w, _ = _series(tmp_path, seed=35)
    orthanc.upload(w.folder)
    pacs = DimsePacs(PacsServer(f"dicom://127.0.0.1:{orthanc.dicom_port}", ae_title="STRANGER", called_ae="ORTHANC",
                                retrieve="move", move_port=move_port, retries=0, cache_dir=tmp_path / "cache"))
    with pytest.raises(PacsError) as info:
        pacs.fetch(w.series_uid)
    _one_line(info.value, f"series {w.series_uid}", "C-MOVE failed", "move destination STRANGER (pacs.ae_title)",
              f"pacs.move_port {move_port}")
    assert _everything(tmp_path / "cache") == []


def test_stopped_server_through_the_cli_is_one_line_exit_2(tmp_path):
    _require()
    from tests.audit.pacs.test_audit_from_pacs import CUBE, REGION
    from tests.audit.planted import planted_model

    server = start_orthanc(tmp_path / "gone", modalities={})
    port = server.dicom_port
    server.stop()
    planted_model(tmp_path / "model.onnx", (CUBE,) * 3, REGION, threshold_hu=0.0)
    (tmp_path / "m.csv").write_text("path,label\npacs:1.2.826.0.1.999.44,1\n")
    config = tmp_path / "a.toml"
    config.write_text('[model]\npath = "model.onnx"\n[data]\nmanifest = "m.csv"\n'
                      '[noise]\nkind = "gaussian"\nlevels = [10]\ndraws = 2\n'
                      f'[pacs]\nurl = "dicom://127.0.0.1:{port}"\ncalled_ae = "ORTHANC"\nae_title = "{ME}"\n'
                      'retries = 1\nbackoff = 0.01\ntimeout = 5\ncache_dir = "cache"\n')
    proc = subprocess.run([sys.executable, "-m", "audit", "run", str(config), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"dicom://127.0.0.1:{port}" in lines[0] and "1.2.826.0.1.999.44" in lines[0] and "after 2 attempts" in lines[0]
    assert _everything(tmp_path / "cache") == [] and not (tmp_path / "out" / "report.json").exists()


def test_dicom_over_tls_checks_the_servers_certificate(tmp_path):
    _require()
    tls, other = make_tls(tmp_path / "pki"), make_tls(tmp_path / "other-pki", "other")
    orthanc = start_orthanc(tmp_path / "orthanc", modalities={}, dicom_tls=tls)
    try:
        w, _ = _series(tmp_path, seed=37)
        orthanc.upload(w.folder)
        url = f"dicom://127.0.0.1:{orthanc.dicom_port}"
        kw = dict(ae_title=ME, called_ae="ORTHANC", tls=True, retries=2, backoff=0.01, timeout=10)
        pacs = DimsePacs(PacsServer(url, ca_bundle=tls.ca_pem, cache_dir=tmp_path / "a", **kw))
        assert np.array_equal(read_series(pacs.fetch(w.series_uid)).hu, read_series(w.folder).hu)
        pacs = DimsePacs(PacsServer(url, verify_tls=False, cache_dir=tmp_path / "b", **kw))
        assert len(list(pacs.fetch(w.series_uid).glob("*.dcm"))) == SHAPE[0]
        wrong = DimsePacs(PacsServer(url, ca_bundle=other.ca_pem, cache_dir=tmp_path / "c", **kw))
        with pytest.raises(PacsError) as info:
            wrong.fetch(w.series_uid)
        _one_line(info.value, f"PACS {url}", f"series {w.series_uid}", "TLS verification failed; give pacs.ca_bundle")
        assert wrong.attempts == 1 and _everything(tmp_path / "c") == []
    finally:
        orthanc.stop()


@pytest.mark.parametrize("table, needle", [
    ('url = "dicom://h"', "expected dicom://host:port"),
    ('url = "https://h/dicom-web"\ntls = true', "pacs.tls: for a DIMSE server"),
    ('url = "dicom://h:104"\ntls = true\nretrieve = "move"\nmove_port = 5', "C-MOVE over TLS"),
    ('url = "dicom://h:104/x"', "expected dicom://host:port"),
    ('url = "dicom://h:104"\ncalled_ae = "A-TITLE-LONGER-THAN-16"', "pacs.called_ae: expected an AE title"),
    ('url = "dicom://h:104"\nretrieve = "move"', "pacs.move_port: retrieve = \"move\" needs the port"),
    ('url = "dicom://h:104"\nretrieve = "copy"', "pacs.retrieve: expected one of"),
    ('url = "dicom://h:104"\ntoken_env = "T"', "token_env is for DICOMweb"),
    ('url = "dicom://h:104"\nmove_port = 70000', "pacs.move_port: expected an integer"),
    ('url = "dicom://h:104"\n[pacs.push_to]\ncalled_ae = "X"', "pacs.push_to.url: missing"),
    ('url = "dicom://h:104"\n[pacs.push_to]\nurl = "dicom://d:104"\ncalled_ae = "A-TITLE-LONGER-THAN-16"',
     "pacs.push_to.called_ae: expected an AE title"),
    ('url = "dicom://h:104"\n[pacs.push_to]\nurl = "dicom://d:104"\npush = true', "pacs.push_to: a push destination"),
])
def test_bad_dimse_tables_name_the_key(tmp_path, table, needle):
    head = '[model]\npath = "m.onnx"\n[data]\nmanifest = "m.csv"\n[noise]\nkind = "gaussian"\nlevels = [5]\n'
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        parse_config(tomllib.loads(f"{head}[pacs]\n{table}\n"), tmp_path)
    cfg = parse_config(tomllib.loads(f'{head}[pacs]\nurl = "dicom://pacs.example.org:11112"\ncalled_ae = "PACS"\n'
                                     'retrieve = "move"\nmove_port = 11113\n'), tmp_path)
    assert cfg.pacs.is_dimse and (cfg.pacs.host, cfg.pacs.port, cfg.pacs.move_port) == ("pacs.example.org", 11112, 11113)


def test_audit_run_over_dimse_retrieves_by_c_move_and_pushes_flipped_cases_to_another_destination(dimse, orthanc,
                                                                                                    tmp_path):
    """The whole run wired to a dicom:// server: rows by UID, C-MOVE into the cache; flipped cases go to a separate
    destination (``[pacs.push_to]``, here a second Orthanc over DICOMweb), none to the source PACS. A second push
    sending nothing is ``test_push_by_c_store_is_sent_once``; one CLI run keeps the suite fast."""
    import json

    from tests.audit.pacs.test_audit_from_pacs import _audit, _config, uploaded_audit

    source, move_port = dimse
    manifest, model = uploaded_audit(source, tmp_path, seed=36, prefix="pacs:")
    table = (f'[pacs]\nurl = "dicom://127.0.0.1:{source.dicom_port}"\nae_title = "{ME}"\ncalled_ae = "ORTHANC"\n'
             f'retrieve = "move"\nmove_port = {move_port}\ncache_dir = "{tmp_path / "cache"}"\n'
             'retries = 1\nbackoff = 0.05\ntimeout = 20\n'
             f'[pacs.push_to]\nurl = "{orthanc.root}"\ncache_dir = "{tmp_path / "push-cache"}"\ntimeout = 20\n')
    config = _config(tmp_path / "a.toml", model, manifest, table)
    source_series = len(source.rest_get("/series"))
    proc = _audit("run", config, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    first = json.loads((tmp_path / "out" / "report.json").read_text())["models"][0]["worst_cases"]
    assert first and all(c["dicom"]["pushed"] for c in first)
    assert len({p.name for p in (tmp_path / "cache").iterdir()}) == 4
    assert len(source.rest_get("/series")) == source_series  # nothing written back to the source PACS
    on_destination = {s["MainDicomTags"]["SeriesInstanceUID"] for s in orthanc.rest_get("/series?expand")}
    assert all({c["dicom"]["clean_series_uid"], c["dicom"]["noisy_series_uid"]} <= on_destination for c in first)
