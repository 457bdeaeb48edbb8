"""The PACS client as a hospital's security review wants it, each against a real loopback server: the cache checked
against the server, UTF-8 passwords, TLS settings the environment cannot override, SIGTERM during a retrieval,
plain http with credentials refused, URL tokens never shown, bearer tokens, credential-file and cache permissions,
and ``audit cache purge``."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pydicom
import pytest

from audit.cli import main
from audit.data import ManifestSource
from audit.dicom import write_series
from audit.errors import ConfigError
from audit.pacs import DicomWebPacs, PacsError, PacsServer, SeriesCache
from tests.audit.pacs.conftest import CuttingProxy, HttpFront, make_tls, start_orthanc
from tests.audit.pacs.test_audit_from_pacs import SHAPE, _volumes

ROOT = Path(__file__).resolve().parents[3]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _series(tmp_path: Path, seed: int, name: str = "s"):
    """A 20-slice series written to a folder: (writer result, files sorted by slice position)."""
    w = write_series(_volumes(1, seed=seed)[0][0], (1.0, 1.0, 1.0), tmp_path / name)
    files = sorted(w.folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    return w, files


def _everything(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


# -- the cache is checked against the server -------------------------------------------------------------------------


def test_a_cached_series_that_grew_on_the_server_is_retrieved_again(orthanc, tmp_path):
    """A series still arriving from the scanner at the first fetch: cached with 19 instances, then 20 on the server."""
    w, files = _series(tmp_path, seed=21)
    orthanc.upload(files[:-1])  # the last slice has not arrived yet
    server = PacsServer(orthanc.root, cache_dir=tmp_path / "cache")
    folder = DicomWebPacs(server).fetch(w.series_uid)
    assert len(list(folder.glob("*.dcm"))) == SHAPE[0] - 1
    orthanc.upload(files[-1:])
    pacs = DicomWebPacs(server)
    folder = pacs.fetch(w.series_uid)
    assert len(list(folder.glob("*.dcm"))) == SHAPE[0] and pacs.cache.instances(w.series_uid) == SHAPE[0]
    (tmp_path / "m.csv").write_text(f"path,label\ndicomweb:{w.series_uid},1\n")
    assert ManifestSource(tmp_path / "m.csv", pacs=pacs).shape == SHAPE
    # Unchanged on the server: served from the cache (one QIDO request, no retrieval).
    before = pacs.attempts
    assert pacs.fetch(w.series_uid) == folder and pacs.attempts == before + 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [w.series_uid]  # the old entry is gone


def test_a_series_that_grows_between_search_and_retrieval_is_counted_again(orthanc, tmp_path):
    w, files = _series(tmp_path, seed=29)
    orthanc.upload(files[:-1])
    pacs = DicomWebPacs(PacsServer(orthanc.root, retries=1, backoff=0.01, cache_dir=tmp_path / "cache"))
    stale = pacs.locate(w.series_uid)  # as a manifest located it when the run began
    orthanc.upload(files[-1:])
    folder = pacs.fetch(w.series_uid, ref=stale)
    assert stale.instances == SHAPE[0] - 1 and len(list(folder.glob("*.dcm"))) == SHAPE[0]


def test_a_server_that_omits_the_instance_count_is_asked_for_the_instances(orthanc, tmp_path):
    """Without NumberOfSeriesRelatedInstances the completeness check still has a count (not skipped in silence)."""
    w, _ = _series(tmp_path, seed=28)
    orthanc.upload(w.folder)
    front = HttpFront(orthanc.rest, drop=("00201209",))
    try:
        pacs = DicomWebPacs(PacsServer(front.url, retries=0, cache_dir=tmp_path / "cache"))
        assert pacs.locate(w.series_uid).instances == SHAPE[0]
        assert len(list(pacs.fetch(w.series_uid).glob("*.dcm"))) == SHAPE[0]
        assert pacs.cache.instances(w.series_uid) == SHAPE[0]
    finally:
        front.close()


# -- credentials: UTF-8, bearer tokens, files, plain http -----------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc_utf8(tmp_path_factory):
    from tests.audit.pacs.conftest import _require

    _require()
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-utf8"), users={"alice": "pässwörd", "bob": "€uro-Key 1"})
    yield server
    server.stop()


def test_non_ascii_passwords_are_sent_as_utf8(orthanc_utf8, tmp_path, monkeypatch):
    w, _ = _series(tmp_path, seed=22)
    orthanc_utf8.upload(w.folder)
    monkeypatch.setenv("PACS_USER", "alice")
    monkeypatch.setenv("PACS_PASSWORD", "pässwörd")
    server = PacsServer(orthanc_utf8.root, username_env="PACS_USER", password_env="PACS_PASSWORD", retries=0,
                        cache_dir=tmp_path / "a")
    assert len(list(DicomWebPacs(server).fetch(w.series_uid).glob("*.dcm"))) == SHAPE[0]
    creds = _secret(tmp_path / "creds", "bob:€uro-Key 1\n")
    server = PacsServer(orthanc_utf8.root, credentials_file=creds, retries=0, cache_dir=tmp_path / "b")
    assert len(list(DicomWebPacs(server).fetch(w.series_uid).glob("*.dcm"))) == SHAPE[0]
    # A wrong non-ASCII password is the server's refusal, named as such (not a local encoding error).
    _secret(creds, "bob:€uro-Key 2\n")
    with pytest.raises(PacsError, match="HTTP 401 unauthorized") as info:
        DicomWebPacs(PacsServer(orthanc_utf8.root, credentials_file=creds, retries=0, cache_dir=tmp_path / "c")).fetch(
            w.series_uid)
    assert "€" not in str(info.value)


def test_bearer_token_from_the_environment_or_a_file(orthanc, tmp_path, monkeypatch):
    w, _ = _series(tmp_path, seed=23)
    orthanc.upload(w.folder)
    proxy = HttpFront(orthanc.rest, token="tok-3f9a.b_c")
    try:
        url = proxy.url
        monkeypatch.setenv("PACS_TOKEN", "tok-3f9a.b_c")
        pacs = DicomWebPacs(PacsServer(url, token_env="PACS_TOKEN", retries=0, cache_dir=tmp_path / "a"))
        assert len(list(pacs.fetch(w.series_uid).glob("*.dcm"))) == SHAPE[0] and proxy.requests >= 2
        token = _secret(tmp_path / "token", "\ntok-3f9a.b_c\n")
        pacs = DicomWebPacs(PacsServer(url, token_file=token, retries=0, cache_dir=tmp_path / "b"))
        assert len(list(pacs.fetch(w.series_uid).glob("*.dcm"))) == SHAPE[0]
        monkeypatch.setenv("PACS_TOKEN", "tok-wrong")
        pacs = DicomWebPacs(PacsServer(url, token_env="PACS_TOKEN", retries=3, backoff=0.01, cache_dir=tmp_path / "c"))
        with pytest.raises(PacsError, match="HTTP 401 unauthorized") as info:
            pacs.fetch(w.series_uid)
        assert "tok-" not in str(info.value) and "\n" not in str(info.value) and pacs.attempts == 1
        assert _everything(tmp_path / "c") == []
    finally:
        proxy.close()


@pytest.mark.parametrize("key", ["credentials_file", "token_file"])
def test_credential_files_readable_by_others_are_refused(tmp_path, key):
    secret = _secret(tmp_path / "secret", "alice:s3cret-Value\n" if key == "credentials_file" else "s3cret-Value\n", 0o644)
    server = PacsServer("https://pacs.example.org/dicom-web", **{key: secret})
    read = server.credentials if key == "credentials_file" else server.token
    with pytest.raises(ConfigError) as info:
        read()
    text = str(info.value)
    assert "\n" not in text and f"pacs.{key}" in text and "readable by group or others (mode 0644)" in text
    assert f"chmod 600 {secret}" in text and "s3cret" not in text
    secret.chmod(0o640)
    with pytest.raises(ConfigError, match="mode 0640"):
        read()
    secret.chmod(0o600)
    assert read() in (("alice", "s3cret-Value"), "s3cret-Value")


def test_tokens_with_characters_a_header_cannot_carry_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PACS_TOKEN", "bad token€")
    with pytest.raises(ConfigError, match="pacs.token_env: the token holds characters") as info:
        PacsServer("https://h/dicom-web", token_env="PACS_TOKEN").token()
    assert "bad" not in str(info.value)
    monkeypatch.delenv("PACS_TOKEN")
    with pytest.raises(ConfigError, match="PACS_TOKEN is not set"):
        PacsServer("https://h/dicom-web", token_env="PACS_TOKEN").token()


@pytest.mark.parametrize("kw", [dict(username_env="U", password_env="P"), dict(token_env="T"),
                                dict(credentials_file=Path("c")), dict(token_file=Path("t")), dict()])
def test_plain_http_with_credentials_to_another_host_is_refused(kw):
    url = "http://pacs.example.org/dicom-web" + ("" if kw else "?token=abc")
    with pytest.raises(ConfigError) as info:
        PacsServer(url, **kw)
    text = str(info.value)
    assert "pacs.url: plain http would send the credentials to pacs.example.org unencrypted" in text
    assert "allow_insecure_http = true" in text and "abc" not in text and "\n" not in text
    PacsServer(url, allow_insecure_http=True, **kw)
    PacsServer(url.replace("http:", "https:"), **kw)
    for host in ("127.0.0.1", "localhost", "[::1]", "127.8.9.10"):
        PacsServer(url.replace("pacs.example.org", host), **kw)
    PacsServer("http://pacs.example.org/dicom-web")  # no credentials: nothing to protect


def test_plain_http_refusal_through_the_config_table(tmp_path):
    from audit.config import parse_config
    from audit.toml import tomllib

    head = '[model]\npath = "m.onnx"\n[data]\nmanifest = "m.csv"\n[noise]\nkind = "gaussian"\nlevels = [5]\n'
    table = '[pacs]\nurl = "http://10.1.2.3/dicom-web"\ntoken_file = "t"\n'
    with pytest.raises(ConfigError, match="allow_insecure_http"):
        parse_config(tomllib.loads(head + table), tmp_path)
    cfg = parse_config(tomllib.loads(head + table + "allow_insecure_http = true\n"), tmp_path)
    assert cfg.pacs.allow_insecure_http and cfg.pacs.token_file == tmp_path / "t"
    with pytest.raises(ConfigError, match="pacs: set one source of credentials, got credentials_file, token_file"):
        parse_config(tomllib.loads(head + table + 'credentials_file = "c"\n'), tmp_path)


def test_a_token_in_the_url_is_sent_but_never_shown(orthanc, tmp_path):
    w, _ = _series(tmp_path, seed=24)
    orthanc.upload(w.folder)
    server = PacsServer(orthanc.root + "/?token=Zq81-secret", retries=0, cache_dir=tmp_path / "cache")
    assert "Zq81" not in repr(server) + server.display_url + server.base_url
    pacs = DicomWebPacs(server)
    assert "Zq81" not in repr(pacs) + pacs.url
    assert len(list(pacs.fetch(w.series_uid).glob("*.dcm"))) == SHAPE[0]
    gone = PacsServer("http://127.0.0.1:9/dicom-web?token=Zq81-secret", retries=0, timeout=2, cache_dir=tmp_path / "x")
    with pytest.raises(PacsError) as info:
        DicomWebPacs(gone).fetch(w.series_uid)
    assert "Zq81" not in str(info.value) and "http://127.0.0.1:9/dicom-web" in str(info.value)


# -- TLS: the config decides, not the environment --------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc_tls(orthanc, tmp_path_factory):
    """The Orthanc behind an HTTPS front whose certificate a private CA signed; another CA that did not."""
    root = tmp_path_factory.mktemp("orthanc-tls")
    tls = make_tls(root / "pki")
    other = make_tls(root / "other-pki", "other")
    w = write_series(_volumes(1, seed=25)[0][0], (1.0, 1.0, 1.0), root / "s")
    orthanc.upload(w.folder)
    front = HttpFront(orthanc.rest, tls=tls)
    yield front, tls, other, w.series_uid
    front.close()


@pytest.mark.parametrize("var", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_ca_bundle_and_verify_off_are_not_overridden_by_the_environment(orthanc_tls, tmp_path, monkeypatch, var):
    server, tls, other, uid = orthanc_tls
    monkeypatch.setenv(var, str(other.ca_pem))
    pacs = DicomWebPacs(PacsServer(server.url, ca_bundle=tls.ca_pem, retries=0, cache_dir=tmp_path / "a"))
    assert len(list(pacs.fetch(uid).glob("*.dcm"))) == SHAPE[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pacs = DicomWebPacs(PacsServer(server.url, verify_tls=False, retries=0, cache_dir=tmp_path / "b"))
        assert len(list(pacs.fetch(uid).glob("*.dcm"))) == SHAPE[0]
    assert [str(w.message) for w in caught if "Unverified HTTPS" in str(w.message)] == []
    # The other way round: the environment's bundle is right, the configured one is wrong: the config wins.
    monkeypatch.setenv(var, str(tls.ca_pem))
    with pytest.raises(PacsError, match="TLS verification failed; give pacs.ca_bundle") as info:
        DicomWebPacs(PacsServer(server.url, ca_bundle=other.ca_pem, retries=0, cache_dir=tmp_path / "c")).fetch(uid)
    assert "\n" not in str(info.value) and _everything(tmp_path / "c") == []


def test_verify_off_prints_nothing_through_a_real_process(orthanc_tls, tmp_path):
    server, tls, other, uid = orthanc_tls
    code = ("import sys; from audit.pacs import DicomWebPacs, PacsServer; "
            f"p = DicomWebPacs(PacsServer({server.url!r}, verify_tls=False, retries=0, cache_dir={str(tmp_path / 'c')!r})); "
            f"print(len(list(p.fetch({uid!r}).glob('*.dcm'))))")
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "REQUESTS_CA_BUNDLE": str(other.ca_pem)}, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == str(SHAPE[0]) and proc.stderr == "", proc.stderr


# -- SIGTERM during a retrieval --------------------------------------------------------------------------------------


def test_sigterm_during_retrieval_is_one_line_exit_143_and_leaves_no_partial_series(orthanc, tmp_path):
    w, _ = _series(tmp_path, seed=26)
    orthanc.upload(w.folder)
    proxy = CuttingProxy(int(orthanc.rest.rsplit(":", 1)[1]), throttle=0.25)  # ~10 s: SIGTERM lands mid-series
    cache = tmp_path / "cache"
    try:
        code = ("from audit.pacs import DicomWebPacs, PacsServer; "
                f"DicomWebPacs(PacsServer('http://127.0.0.1:{proxy.port}/dicom-web', retries=0, cache_dir={str(cache)!r}))"
                f".fetch({w.series_uid!r})")
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(p.suffix == ".dcm" for p in cache.glob(".*.tmp/*")):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        assert any(p.suffix == ".dcm" for p in cache.glob(".*.tmp/*")), "the retrieval never started"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proxy.close()
    assert proc.returncode == 143, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "terminated by SIGTERM while retrieving series " + w.series_uid in lines[0] and "(exit 143)" in lines[0]
    assert _everything(cache) == []  # no entry, no hidden partial folder of patient data


# -- permissions of what holds patient data --------------------------------------------------------------------------


def test_cache_is_private(orthanc, tmp_path):
    w, _ = _series(tmp_path, seed=27)
    orthanc.upload(w.folder)
    root = tmp_path / "cache"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    folder = DicomWebPacs(PacsServer(orthanc.root, cache_dir=root)).fetch(w.series_uid)
    assert _mode(root) == 0o700 and _mode(folder) == 0o700
    assert {_mode(f) for f in folder.iterdir()} == {0o600}
    fresh = DicomWebPacs(PacsServer(orthanc.root, cache_dir=tmp_path / "new" / "cache")).fetch(w.series_uid)
    assert _mode(fresh.parent) == 0o700


# -- audit cache purge -----------------------------------------------------------------------------------------------


def _fill(cache: SeriesCache, uid: str) -> None:
    with cache.put(uid) as tmp:
        (tmp / "1.dcm").write_bytes(b"x" * 1000)


def test_cache_purge_removes_series_and_leftovers_only(tmp_path, capsys):
    root = tmp_path / "cache"
    cache = SeriesCache(root, 1 << 20)
    for uid in ("1.2.3", "1.2.4"):
        _fill(cache, uid)
    (root / ".1.2.5.abc.tmp").mkdir()  # a killed retrieval's leftover
    (root / "1.2.6").mkdir()  # an incomplete entry
    (root / "notes.txt").write_text("not the cache's")
    assert main(["cache", "purge", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"audit cache purge: removed 2 series (0.0 MB) from {root}"]
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]
    # From a run config's [pacs] table (a relative cache_dir is relative to the config).
    _fill(cache, "1.2.7")
    config = tmp_path / "run.toml"
    config.write_text('[model]\npath = "m.onnx"\n[pacs]\nurl = "https://pacs.example.org/dicom-web"\ncache_dir = "cache"\n')
    assert main(["cache", "purge", "--config", str(config)]) == 0
    assert "removed 1 series" in capsys.readouterr().out and cache.entries() == []
    assert main(["cache", "purge", "--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.toml" in err[0]


def test_cache_purge_loads_only_its_own_module(tmp_path):
    code = ("import sys; from audit.cli import main; "
            f"rc = main(['cache', 'purge', '--cache-dir', {str(tmp_path / 'c')!r}]); "
            "print(rc, sorted(m for m in sys.modules if m.startswith(('audit.commands', 'audit.campaign', 'torch', "
            "'onnxruntime'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "0 ['audit.commands', 'audit.commands.cache']", proc.stderr
