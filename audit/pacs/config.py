"""Where the PACS is and how to talk to it: one frozen ``PacsServer`` (``audit.config.pacs_section`` reads the table).

Credentials are never stored on the object (so never in a report, a log line
or an exception): it holds only the *names* of the environment variables, or
the path of a file, to read them from when a connection is opened. A query in
the URL (``?token=...``, as some gateways want) is sent with every request and
never shown: ``display_url`` and ``repr`` leave it out.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from audit.errors import ConfigError
from audit.toml import Table

#: URL schemes: DICOMweb over HTTP(S), or DIMSE (``dicom://host:port``, C-FIND/C-GET/C-MOVE/C-STORE).
WEB_SCHEMES, DIMSE_SCHEMES = ("http", "https"), ("dicom",)
#: How a DIMSE series is retrieved: C-GET on the association, or C-MOVE to the tool's own storage SCP.
RETRIEVE_MODES = ("get", "move")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ct-robustness-audit/pacs`` (``~/.cache/...`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "ct-robustness-audit" / "pacs"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost``, 127.0.0.0/8, ::1): plain http there never leaves it."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_ae_title(value: str, key: str) -> str:
    """A DICOM AE title: 1 to 16 printable ASCII characters, not all spaces, no backslash."""
    if not isinstance(value, str) or not 0 < len(value.strip()) <= 16 or not value.isascii() or "\\" in value \
            or not value.isprintable():
        raise ConfigError(f"pacs.{key}: expected an AE title of 1 to 16 printable ASCII characters (no backslash), "
                          f"got {str(value)[:40]!r}")
    return value.strip()


def read_secret_file(path: Path, key: str) -> str:
    """The first non-empty line of a credentials file, refused (one line) when group or others may read it."""
    try:
        st = os.stat(path)
        if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"pacs.{key}: {path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                              f"run chmod 600 {path}")
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"pacs.{key}: cannot read {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"pacs.{key}: {path} is not UTF-8 text") from None
    return next((line.strip() for line in lines if line.strip()), "")


@dataclass(frozen=True, repr=False)
class PacsServer:
    """A PACS: a DICOMweb server (QIDO-RS, WADO-RS, STOW-RS under one root ``url``, e.g. ``https://pacs/dicom-web``),
    or a DIMSE one (``url = "dicom://host:port"``: C-FIND, C-GET or C-MOVE, C-STORE).

    DICOMweb credentials: ``username_env`` / ``password_env``, names of
    environment variables holding HTTP basic credentials (sent UTF-8); or
    ``credentials_file``, a file whose first line is ``username:password``; or a
    bearer token from the environment variable ``token_env`` or the first line
    of ``token_file``. Files must not be readable by group or others. Plain
    ``http://`` carrying credentials to another machine is refused unless
    ``allow_insecure_http``. ``verify_tls`` (default on) checks the server's
    certificate, against ``ca_bundle`` when given (never overridden by
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``). ``timeout``: seconds per connect
    or read; ``retries``: extra attempts after a transient failure (unreachable,
    connection cut, HTTP 5xx/408/429, an incomplete series), waiting
    ``backoff * 2**n`` seconds before attempt n+1. Retrieved series are kept in
    ``cache_dir`` (0700; least recently used evicted beyond ``cache_max_mb``),
    checked against the server's instance count before each use. ``push``: send
    flipped cases back to the server as derived series; ``push_to`` (a
    ``[pacs.push_to]`` table with the same keys, DICOMweb or DIMSE) sends them
    to another destination instead, e.g. a research PACS beside the clinical one.

    DIMSE: ``ae_title`` is this tool's AE title, ``called_ae`` the server's;
    ``retrieve`` is ``"get"`` (C-GET on the association) or ``"move"`` (C-MOVE to
    a storage SCP this tool opens on ``move_port``, which the PACS must know as
    ``ae_title`` at this host and port). ``tls``: DICOM over TLS (C-GET only),
    the server's certificate checked as for https (``verify_tls``, ``ca_bundle``).
    """

    url: str
    username_env: str | None = None
    password_env: str | None = None
    credentials_file: Path | None = None
    token_env: str | None = None
    token_file: Path | None = None
    allow_insecure_http: bool = False
    verify_tls: bool = True
    ca_bundle: Path | None = None
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0
    cache_dir: Path | None = None
    cache_max_mb: float = 2048.0
    push: bool = False
    ae_title: str = "CT-AUDIT"
    called_ae: str = "ANY-SCP"
    retrieve: str = "get"
    move_port: int | None = None
    tls: bool = False
    push_to: "PacsServer | None" = None

    @property
    def push_target(self) -> "PacsServer | None":
        """Where flipped cases go: ``push_to`` when given, this server with ``push``, else nowhere."""
        return self.push_to if self.push_to is not None else (self if self.push else None)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        try:
            parts.port
        except ValueError:
            raise ConfigError(f"pacs.url: the port of {self.display_url!r} is not a number from 0 to 65535") from None
        if parts.scheme not in WEB_SCHEMES + DIMSE_SCHEMES or not parts.hostname:
            raise ConfigError(f"pacs.url: expected an http(s) URL of the DICOMweb root or dicom://host:port, "
                              f"got {self.display_url!r}")
        if parts.username or parts.password:
            raise ConfigError("pacs.url: credentials in the URL are refused; name them with username_env/password_env, "
                              "credentials_file, token_env or token_file")
        if (self.username_env is None) != (self.password_env is None):
            raise ConfigError("pacs: set both username_env and password_env (or neither)")
        given = [k for k in ("username_env", "credentials_file", "token_env", "token_file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"pacs: set one source of credentials, got {', '.join(given)}")
        if not self.timeout > 0 or self.retries < 0 or self.backoff < 0 or not self.cache_max_mb > 0:
            raise ConfigError(f"pacs: expected timeout > 0 s, retries >= 0, backoff >= 0 s and cache_max_mb > 0, got "
                              f"{self.timeout}, {self.retries}, {self.backoff}, {self.cache_max_mb}")
        if self.is_dimse:
            if parts.port is None or parts.path.strip("/") or parts.query:
                raise ConfigError(f"pacs.url: expected dicom://host:port (no path or query), got {self.display_url!r}")
            if given:
                raise ConfigError(f"pacs: {given[0]} is for DICOMweb; a DIMSE server (dicom://) identifies this tool by "
                                  "pacs.ae_title")
            check_ae_title(self.ae_title, "ae_title")
            check_ae_title(self.called_ae, "called_ae")
            if self.retrieve not in RETRIEVE_MODES:
                raise ConfigError(f"pacs.retrieve: expected one of {list(RETRIEVE_MODES)}, got {self.retrieve!r}")
            if self.retrieve == "move" and (self.move_port is None or not 0 < self.move_port < 65536):
                raise ConfigError("pacs.move_port: retrieve = \"move\" needs the port (1 to 65535) of this tool's storage "
                                  "SCP, registered on the PACS under pacs.ae_title")
            if self.tls and self.retrieve == "move":
                raise ConfigError("pacs.retrieve: C-MOVE over TLS would need a certificate for this tool's storage SCP; "
                                  "use retrieve = \"get\" with tls = true")
        elif self.tls:
            raise ConfigError("pacs.tls: for a DIMSE server (dicom://host:port); a DICOMweb server uses an https:// URL")
        elif (parts.scheme == "http" and (given or parts.query) and not self.allow_insecure_http
              and not is_loopback(parts.hostname)):
            raise ConfigError(f"pacs.url: plain http would send the credentials to {parts.hostname} unencrypted; use "
                              "https, or set pacs.allow_insecure_http = true on a network you trust")

    def __repr__(self) -> str:
        return f"PacsServer({self.display_url!r})"

    @property
    def is_dimse(self) -> bool:
        return urlsplit(self.url).scheme in DIMSE_SCHEMES

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int | None:
        return urlsplit(self.url).port

    @property
    def display_url(self) -> str:
        """The URL as shown in messages and reports: no user info, no query (it may hold a token), no trailing slash."""
        p = urlsplit(self.url)
        host = p.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        try:
            port = p.port
        except ValueError:
            port = None
        netloc = host + (f":{port}" if port else "")
        return urlunsplit((p.scheme, netloc, p.path.rstrip("/"), "", ""))

    @property
    def base_url(self) -> str:
        """The URL requests are built on: the given one without its query and trailing slash."""
        p = urlsplit(self.url)
        return urlunsplit((p.scheme, p.netloc, p.path.rstrip("/"), "", ""))

    def query_params(self) -> list[tuple[str, str]]:
        """The URL's query (e.g. a gateway's ``token``), sent with every request, never shown."""
        return parse_qsl(urlsplit(self.url).query, keep_blank_values=True)

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
            first = read_secret_file(Path(self.credentials_file), "credentials_file")
            user, sep, password = first.partition(":")
            if not sep or not user or not password:
                raise ConfigError(f"pacs.credentials_file: {self.credentials_file} must start with a line 'username:password'")
            return user, password
        return None

    def token(self) -> str | None:
        """The bearer token read now from ``token_env`` or ``token_file``, or None; errors never show it."""
        if self.token_env is not None:
            value = (os.environ.get(self.token_env) or "").strip()
            if not value:
                raise ConfigError(f"pacs: environment variable {self.token_env} is not set (named by pacs.token_env)")
            key = "token_env"
        elif self.token_file is not None:
            value = read_secret_file(Path(self.token_file), "token_file")
            if not value:
                raise ConfigError(f"pacs.token_file: {self.token_file} is empty; expected the token on its first line")
            key = "token_file"
        else:
            return None
        if not value.isascii() or not value.isprintable() or any(c.isspace() for c in value):
            raise ConfigError(f"pacs.{key}: the token holds characters an HTTP header cannot carry (spaces, control or "
                              "non-ASCII characters)")
        return value


def pacs_section(t: Table) -> PacsServer:
    """The ``[pacs]`` table of a config (``audit.config`` and ``audit cache purge`` read it): a DICOMweb or DIMSE
    server; credentials are named, never given."""
    if not isinstance(t.raw.get("url"), str):
        raise ConfigError("pacs.url: missing; the DICOMweb root, e.g. \"https://pacs.example.org/dicom-web\", "
                          "or dicom://host:port")

    def path(key: str) -> Path | None:  # "~" expands; other relative paths are relative to the config
        if key not in t:
            return None
        given = t.path(key)
        home = Path(str(t.raw[key])).expanduser()
        return home if home.is_absolute() else given

    keys = ("url", "username_env", "password_env", "credentials_file", "token_env", "token_file", "allow_insecure_http",
            "verify_tls", "ca_bundle", "timeout", "retries", "backoff", "cache_dir", "cache_max_mb", "push", "ae_title",
            "called_ae", "retrieve", "move_port", "tls")
    given = dict(
        url=t.str("url"), username_env=t.str("username_env", None), password_env=t.str("password_env", None),
        credentials_file=path("credentials_file"), token_env=t.str("token_env", None), token_file=path("token_file"),
        allow_insecure_http=t.bool("allow_insecure_http", False), verify_tls=t.bool("verify_tls", True),
        ca_bundle=path("ca_bundle"), timeout=t.float("timeout", 30.0, low=0, low_open=True),
        retries=t.int("retries", 3, low=0), backoff=t.float("backoff", 1.0, low=0), cache_dir=path("cache_dir"),
        cache_max_mb=t.float("cache_max_mb", 2048.0, low=0, low_open=True), push=t.bool("push", False),
        ae_title=t.str("ae_title", "CT-AUDIT"), called_ae=t.str("called_ae", "ANY-SCP"),
        retrieve=t.str("retrieve", "get"), move_port=t.int("move_port", None, low=1, high=65535),
        tls=t.bool("tls", False))
    if "push_to" in t:
        given["push_to"] = _push_destination(t.table("push_to"))
    t.done((*keys, "push_to"))  # a misspelt key is named before the values are judged together
    return PacsServer(**given)


def _push_destination(t: Table) -> PacsServer:
    """``[pacs.push_to]``: a server of its own (same keys) that receives the flipped cases; errors name its table."""
    if "push_to" in t or "push" in t:
        raise ConfigError(f"{t.name}: a push destination takes the server keys only (no push or push_to of its own)")
    try:
        return pacs_section(t)
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(t.name) else t.name + text[len("pacs"):] if text.startswith("pacs")
                          else f"{t.name}: {text}") from None
