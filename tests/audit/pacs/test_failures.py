"""Each PACS failure ends in one line naming the server and the UID, after retries where a retry can help,
with nothing half-written: a stopped server, wrong credentials, an unknown UID, a transfer cut off mid-series."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from audit.data import ManifestSource
from audit.dicom import write_series
from audit.pacs import DicomWebPacs, PacsError, PacsServer
from tests.audit.pacs.conftest import PASSWORD, USER, CuttingProxy, start_orthanc
from tests.audit.pacs.test_audit_from_pacs import SHAPE, _volumes


def _one_line(exc: BaseException, *needles: str) -> str:
    text = str(exc)
    assert "\n" not in text
    for n in needles:
        assert n in text, (n, text)
    return text


def _everything(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def uploaded(orthanc, tmp_path_factory):
    """One series on the open Orthanc: (study UID, series UID, instances)."""
    vol = _volumes(1, seed=5)[0][0]
    w = write_series(vol, (1.0, 1.0, 1.0), tmp_path_factory.mktemp("fail-data") / "s")
    orthanc.upload(w.folder)
    return w.study_uid, w.series_uid, SHAPE[0]


def _manifest(tmp_path, row: str):
    path = tmp_path / "m.csv"
    path.write_text(f"path,label\n{row},1\n")
    return path


def test_stopped_server_is_retried_then_named_in_one_line(tmp_path, uploaded):
    server = start_orthanc(tmp_path / "gone")
    url = server.root
    server.stop()
    sleeps = []
    pacs = DicomWebPacs(PacsServer(url, retries=2, backoff=0.01, timeout=5, cache_dir=tmp_path / "cache"), sleep=sleeps.append)
    uid = uploaded[1]
    with pytest.raises(PacsError) as info:
        ManifestSource(_manifest(tmp_path, f"dicomweb:{uid}"), pacs=pacs)
    _one_line(info.value, f"PACS {url}", f"series {uid}", "unreachable", "after 3 attempts")
    assert pacs.attempts == 3 and sleeps == [0.01, 0.02]  # exponential backoff between attempts
    assert _everything(tmp_path / "cache") == []


def test_stopped_server_through_the_cli_exits_2_with_one_line(tmp_path, uploaded):
    server = start_orthanc(tmp_path / "gone")
    url = server.root
    server.stop()
    from tests.audit.pacs.test_audit_from_pacs import CUBE, REGION
    from tests.audit.planted import planted_model

    planted_model(tmp_path / "model.onnx", (CUBE,) * 3, REGION, threshold_hu=0.0)
    config = tmp_path / "a.toml"
    config.write_text(f'[model]\npath = "model.onnx"\n[data]\nmanifest = "{_manifest(tmp_path, "dicomweb:" + uploaded[1])}"\n'
                      f'[noise]\nkind = "gaussian"\nlevels = [10]\ndraws = 2\n'
                      f'[pacs]\nurl = "{url}"\nretries = 1\nbackoff = 0.01\ncache_dir = "cache"\n')
    proc = subprocess.run([sys.executable, "-m", "audit", "run", str(config), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert url in lines[0] and uploaded[1] in lines[0]
    assert not (tmp_path / "out" / "report.json").exists()


def test_unknown_uid_is_named_and_not_retried(orthanc, tmp_path, uploaded):
    pacs = DicomWebPacs(PacsServer(orthanc.root, retries=3, backoff=0.01, cache_dir=tmp_path / "cache"))
    with pytest.raises(PacsError) as info:
        ManifestSource(_manifest(tmp_path, "dicomweb:1.2.826.0.1.999.42"), pacs=pacs)
    _one_line(info.value, f"PACS {orthanc.root}", "series 1.2.826.0.1.999.42", "not found on the server")
    assert pacs.attempts == 1
    # A real series under the wrong study is not found either (the study is part of the address).
    with pytest.raises(PacsError) as info:
        pacs.fetch(uploaded[1], "1.2.826.0.1.999.7")
    _one_line(info.value, f"series {uploaded[1]}", "not found on the server in study 1.2.826.0.1.999.7")
    with pytest.raises(Exception, match="row 2: series 'x.y': not a DICOM UID"):
        ManifestSource(_manifest(tmp_path, "dicomweb:x.y"), pacs=pacs)
    assert _everything(tmp_path / "cache") == []


def test_manifest_row_without_a_server_is_refused(tmp_path):
    with pytest.raises(Exception, match=r"row 2 names a PACS series .* no server is configured; add a \[pacs\]"):
        ManifestSource(_manifest(tmp_path, "dicomweb:1.2.3"))


def test_wrong_credentials_give_401_naming_server_and_uid_never_the_password(orthanc_auth, tmp_path, monkeypatch):
    vol = _volumes(1, seed=6)[0][0]
    w = write_series(vol, (1.0, 1.0, 1.0), tmp_path / "s")
    orthanc_auth.upload(w.folder)
    monkeypatch.setenv("PACS_USER", USER)
    monkeypatch.setenv("PACS_PASSWORD", "not-the-password")
    server = PacsServer(orthanc_auth.root, username_env="PACS_USER", password_env="PACS_PASSWORD", retries=2,
                        backoff=0.01, cache_dir=tmp_path / "cache")
    pacs = DicomWebPacs(server)
    with pytest.raises(PacsError) as info:
        pacs.fetch(w.series_uid)
    text = _one_line(info.value, f"PACS {orthanc_auth.root}", f"series {w.series_uid}", "HTTP 401 unauthorized",
                     "pacs.username_env")
    assert "not-the-password" not in text and PASSWORD not in text and "PACS_PASSWORD" not in repr(pacs)
    assert pacs.attempts == 1  # a refusal is not retried
    assert "not-the-password" not in repr(server) and "not-the-password" not in json.dumps(server.__dict__, default=str)
    # Without credentials at all: the same refusal.
    with pytest.raises(PacsError, match="HTTP 401"):
        DicomWebPacs(PacsServer(orthanc_auth.root, retries=0, cache_dir=tmp_path / "cache")).fetch(w.series_uid)
    assert _everything(tmp_path / "cache") == []
    # The right credentials from a file: the series arrives.
    secret = tmp_path / "pacs-credentials"
    secret.write_text(f"{USER}:{PASSWORD}\n")
    secret.chmod(0o600)
    folder = DicomWebPacs(PacsServer(orthanc_auth.root, credentials_file=secret, cache_dir=tmp_path / "cache")).fetch(w.series_uid)
    assert len(list(folder.glob("*.dcm"))) == SHAPE[0]


def test_credentials_stay_out_of_reports_and_output(orthanc_auth, tmp_path):
    """A whole audit with push against the authenticated server: the password, and a token in the URL's query,
    appear in no file it writes and nowhere in its output; OUT/dicom (patient identity) is private."""
    from tests.audit.pacs.test_audit_from_pacs import _config, uploaded_audit

    manifest, model = uploaded_audit(orthanc_auth, tmp_path, seed=11)
    pacs = (f'[pacs]\nurl = "{orthanc_auth.root}?token=Tk-998877"\nusername_env = "PACS_USER"\npassword_env = "PACS_PASSWORD"\n'
            f'cache_dir = "cache"\npush = true\n')
    config = _config(tmp_path / "a.toml", model, manifest, pacs)
    env = {**os.environ, "PACS_USER": USER, "PACS_PASSWORD": PASSWORD}
    proc = subprocess.run([sys.executable, "-m", "audit", "run", str(config), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr and "Tk-998877" not in proc.stdout + proc.stderr
    assert (tmp_path / "out" / "dicom").stat().st_mode & 0o777 == 0o700
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["models"][0]["worst_cases"] and all(c["dicom"]["pushed"] for c in report["models"][0]["worst_cases"])
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes() and b"Tk-998877" not in f.read_bytes(), f


@pytest.mark.parametrize("cut_after", [6_000, 12_000, 30_000])  # the series' answer is about 40 kB
def test_transfer_cut_mid_series_is_refused_and_leaves_no_cache_entry(orthanc, tmp_path, uploaded, cut_after):
    study, series, n = uploaded
    proxy = CuttingProxy(int(orthanc.rest.rsplit(":", 1)[1]), cut_after=cut_after)
    try:
        url = f"http://127.0.0.1:{proxy.port}/dicom-web"
        pacs = DicomWebPacs(PacsServer(url, retries=2, backoff=0.01, cache_dir=tmp_path / "cache"))
        with pytest.raises(PacsError) as info:
            ManifestSource(_manifest(tmp_path, f"dicomweb:{study}/{series}"), pacs=pacs)
        _one_line(info.value, f"PACS {url}", f"series {series}", "cut off mid-series", "after 3 attempts")
        assert _everything(tmp_path / "cache") == []  # no entry, no hidden temporary left behind
    finally:
        proxy.close()


def test_transient_failures_are_retried_until_the_series_arrives(orthanc, tmp_path, uploaded):
    study, series, n = uploaded
    proxy = CuttingProxy(int(orthanc.rest.rsplit(":", 1)[1]), refuse=2)  # the first two connections are dropped
    try:
        sleeps = []
        pacs = DicomWebPacs(PacsServer(f"http://127.0.0.1:{proxy.port}/dicom-web", retries=3, backoff=0.01,
                                       cache_dir=tmp_path / "cache"), sleep=sleeps.append)
        folder = pacs.fetch(series)
        assert len(list(folder.glob("*.dcm"))) == n and proxy.connections >= 3 and sleeps == [0.01, 0.02]
        # With fewer retries than failures the same server is given up on.
        proxy.connections, proxy.refuse = 0, 2
        with pytest.raises(PacsError, match="after 2 attempts"):
            DicomWebPacs(PacsServer(f"http://127.0.0.1:{proxy.port}/dicom-web", retries=1, backoff=0.01,
                                    cache_dir=tmp_path / "other")).fetch(series)
    finally:
        proxy.close()
