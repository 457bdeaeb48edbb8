"""The bounded series cache (no server needed) and the [pacs] config table."""

from __future__ import annotations

import os

import pytest

from audit.config import parse_config
from audit.toml import tomllib
from audit.errors import ConfigError, InputError
from audit.pacs import PacsServer, SeriesCache

UIDS = ("1.2.3.1", "1.2.3.2", "1.2.3.3")


def _fill(cache: SeriesCache, uid: str, kb: int) -> None:
    with cache.put(uid) as tmp:
        for n in range(4):
            (tmp / f"{n}.dcm").write_bytes(os.urandom(kb * 256))


def test_cache_evicts_least_recently_used_beyond_its_bound(tmp_path):
    cache = SeriesCache(tmp_path, max_bytes=250 * 1024)
    _fill(cache, UIDS[0], 100)  # no pauses: the order of use decides, not the clock's resolution
    _fill(cache, UIDS[1], 100)
    assert cache.get(UIDS[0]) is not None  # used again: now the most recent
    _fill(cache, UIDS[2], 100)
    assert cache.get(UIDS[1]) is None and cache.get(UIDS[0]) is not None and cache.get(UIDS[2]) is not None
    assert cache.size() <= 250 * 1024 and cache.instances(UIDS[2]) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([UIDS[0], UIDS[2]])  # nothing hidden left over
    # An entry bigger than the whole bound is still kept (it is the one being read), alone.
    _fill(cache, "1.2.3.4", 400)
    assert [p.name for p in tmp_path.iterdir()] == ["1.2.3.4"]


def test_failed_put_leaves_nothing(tmp_path):
    cache = SeriesCache(tmp_path, max_bytes=1 << 20)
    with pytest.raises(RuntimeError):
        with cache.put(UIDS[0]) as tmp:
            (tmp / "0.dcm").write_bytes(b"x" * 10)
            raise RuntimeError("cut off")
    assert list(tmp_path.iterdir()) == [] and cache.get(UIDS[0]) is None
    with pytest.raises(InputError, match="not a DICOM UID"):
        cache.folder("../../etc")


def _config(pacs: str, tmp_path) -> dict:
    return tomllib.loads(f'[model]\npath = "m.onnx"\n[data]\nmanifest = "m.csv"\n[noise]\nkind = "gaussian"\nlevels = [5]\n{pacs}')


def test_pacs_table_is_validated_and_push_writes_dicom_cases(tmp_path):
    cfg = parse_config(_config('[pacs]\nurl = "https://pacs.example.org/dicom-web/"\nusername_env = "U"\n'
                               'password_env = "P"\ncache_dir = "c"\npush = true\ntimeout = 5\n', tmp_path), tmp_path)
    assert isinstance(cfg.pacs, PacsServer) and cfg.pacs.verify_tls is True and cfg.pacs.push and cfg.dicom_cases
    assert cfg.pacs.cache_root == tmp_path / "c" and cfg.pacs.display_url == "https://pacs.example.org/dicom-web"
    assert parse_config(_config("", tmp_path), tmp_path).pacs is None


@pytest.mark.parametrize("table, needle", [
    ('url = "http://h/dicom-web"\npasword_env = "P"', "pacs.pasword_env: unknown key"),
    ('url = "http://alice:secret@h/dicom-web"', "credentials in the URL are refused"),
    ('url = "ftp://h"', "pacs.url: expected an http"),
    ('username_env = "U"', "pacs.url: missing"),
    ('url = "http://h"\nusername_env = "U"', "set both username_env and password_env"),
    ('url = "http://h"\nverify_tls = "no"', "pacs.verify_tls: expected true or false"),
    ('url = "http://h"\nretries = -1', "pacs.retries: expected an integer >= 0"),
])
def test_bad_pacs_tables_name_the_key(tmp_path, table, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        parse_config(_config(f"[pacs]\n{table}\n", tmp_path), tmp_path)
    assert "secret" not in str(info.value)


def test_missing_credentials_name_the_variable_not_a_value(tmp_path, monkeypatch):
    monkeypatch.delenv("AUDIT_NO_SUCH_VAR", raising=False)
    monkeypatch.setenv("AUDIT_PACS_U", "alice")
    server = PacsServer("http://127.0.0.1:1/dicom-web", username_env="AUDIT_PACS_U", password_env="AUDIT_NO_SUCH_VAR")
    with pytest.raises(ConfigError, match="AUDIT_NO_SUCH_VAR is not set") as info:
        server.credentials()
    assert "alice" not in str(info.value)
    bad = tmp_path / "creds"
    bad.write_text("alice-without-colon\n")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="must start with a line 'username:password'") as info:
        PacsServer("https://h", credentials_file=bad).credentials()
    assert "alice" not in str(info.value)
