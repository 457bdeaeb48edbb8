"""Where the PACS is and how to talk to it: one frozen ``PacsServer`` (``audit.config.pacs_section`` reads the table).

Credentials are never stored on the object (so never in a report, a log line
or an exception): it holds only the *names* of the environment variables, or
the path of a file, to read them from when a connection is opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from audit.errors import ConfigError

def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ct-robustness-audit/pacs`` (``~/.cache/...`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "ct-robustness-audit" / "pacs"


@dataclass(frozen=True)
class PacsServer:
    """A DICOMweb server (QIDO-RS, WADO-RS, STOW-RS under one root ``url``, e.g. ``https://pacs/dicom-web``).

    ``username_env`` / ``password_env``: names of environment variables holding
    HTTP basic credentials; or ``credentials_file``: a file whose first line is
    ``username:password``. ``verify_tls`` (default on) checks the server's
    certificate, against ``ca_bundle`` when given. ``timeout``: seconds per
    connect or read; ``retries``: extra attempts after a transient failure
    (unreachable, connection cut, HTTP 5xx/408/429, an incomplete series),
    waiting ``backoff * 2**n`` seconds before attempt n+1. Retrieved series are
    kept in ``cache_dir`` (least recently used evicted beyond ``cache_max_mb``).
    ``push``: send flipped cases back to the server as derived series.
    """

    url: str
    username_env: str | None = None
    password_env: str | None = None
    credentials_file: Path | None = None
    verify_tls: bool = True
    ca_bundle: Path | None = None
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0
    cache_dir: Path | None = None
    cache_max_mb: float = 2048.0
    push: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"pacs.url: expected an http(s) URL of the DICOMweb root, got {self.display_url!r}")
        if parts.username or parts.password:
            raise ConfigError("pacs.url: credentials in the URL are refused; name them with username_env/password_env "
                              "or credentials_file")
        if (self.username_env is None) != (self.password_env is None):
            raise ConfigError("pacs: set both username_env and password_env (or neither)")
        if self.username_env is not None and self.credentials_file is not None:
            raise ConfigError("pacs: set username_env/password_env or credentials_file, not both")
        if not self.timeout > 0 or self.retries < 0 or self.backoff < 0 or not self.cache_max_mb > 0:
            raise ConfigError(f"pacs: expected timeout > 0 s, retries >= 0, backoff >= 0 s and cache_max_mb > 0, got "
                              f"{self.timeout}, {self.retries}, {self.backoff}, {self.cache_max_mb}")

    @property
    def display_url(self) -> str:
        """The URL as shown in messages and reports: no user info, no query, no trailing slash."""
        p = urlsplit(self.url)
        host = p.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{p.port}" if p.port else "")
        return urlunsplit((p.scheme, netloc, p.path.rstrip("/"), "", ""))

    @property
    def cache_root(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()

    def credentials(self) -> tuple[str, str] | None:
        """(username, password) read now from the environment or the file, or None; errors name the source, never a value."""
        if self.username_env is not None:
            values = []
            for var in (self.username_env, self.password_env):
                value = os.environ.get(str(var))
                if not value:
                    raise ConfigError(f"pacs: environment variable {var} is not set (named by pacs.username_env/password_env)")
                values.append(value)
            return values[0], values[1]
        if self.credentials_file is not None:
            try:
                lines = Path(self.credentials_file).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(f"pacs.credentials_file: cannot read {self.credentials_file} ({exc.strerror or exc})") from None
            first = next((line.strip() for line in lines if line.strip()), "")
            user, sep, password = first.partition(":")
            if not sep or not user or not password:
                raise ConfigError(f"pacs.credentials_file: {self.credentials_file} must start with a line 'username:password'")
            return user, password
        return None
