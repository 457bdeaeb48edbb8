"""A real Orthanc PACS with the DICOMweb plugin (and, when asked, its DICOM port) on loopback, started and stopped by
the tests; real loopback servers in front of it (a proxy that cuts or slows answers, one that wants a bearer token);
a private CA made with openssl for HTTPS.

Skips (with the reason) when the Orthanc binary, its DicomWeb plugin or
dicomweb-client is missing; ``.ci/run`` installs the Debian packages
``orthanc`` and ``orthanc-dicomweb``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PLUGIN_PLACES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so",
                 "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 30.0
USER, PASSWORD = "auditor", "pw-Secret-4711"


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).is_file()), None)


def dicomweb_plugin() -> str | None:
    for p in PLUGIN_PLACES:
        if Path(p).is_file():
            return p
    found = sorted(Path("/usr/lib").glob("**/libOrthancDicomWeb.so*")) if Path("/usr/lib").is_dir() else []
    return str(found[0]) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    """One running Orthanc: its DICOMweb root, REST root and process."""

    root: str
    rest: str
    process: subprocess.Popen
    folder: Path
    auth: tuple[bytes, bytes] | None = None
    dicom_port: int | None = None  # the DIMSE port (AE title ORTHANC), when enabled

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)

    def rest_get(self, path: str):
        import requests

        r = requests.get(self.rest + path, auth=self.auth, timeout=10)
        r.raise_for_status()
        return r.json()

    def upload(self, folder: Path | list[Path]) -> None:
        """Store every file of ``folder`` (or the files listed) through Orthanc's REST API (not the code under test)."""
        import requests

        for f in sorted(folder.iterdir()) if isinstance(folder, Path) else folder:
            r = requests.post(self.rest + "/instances", data=f.read_bytes(), auth=self.auth, timeout=10)
            r.raise_for_status()


def start_orthanc(folder: Path, *, users: dict[str, str] | None = None, modalities: dict[str, list] | None = None,
                  dicom_tls: "Tls | None" = None) -> Orthanc:
    """Start Orthanc on free loopback ports with temporary storage; waits (bounded) until /system answers.

    ``modalities``: enable the DICOM (DIMSE) port, AE title ``ORTHANC``, with
    these known peers (AE -> [AE, host, port]) for C-MOVE; ``dicom_tls``: that
    port speaks DICOM over TLS with this certificate. (HTTPS goes through
    ``HttpFront(tls=...)``: Debian's Orthanc 1.10 crashes on its own HTTPS.)
    """
    import requests

    binary, plugin = orthanc_binary(), dicomweb_plugin()
    folder.mkdir(parents=True, exist_ok=True)
    http, dicom = free_port(), free_port()
    config = {
        "Name": "audit-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": http, "DicomPort": dicom, "DicomServerEnabled": modalities is not None, "DicomAet": "ORTHANC",
        "DicomModalities": modalities or {}, "DicomCheckCalledAet": True, "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True, "UnknownSopClassAccepted": True, "RemoteAccessAllowed": False,
        "HttpServerEnabled": True, "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {}, "StableAge": 1,
    }
    if dicom_tls is not None:
        config.update({"DicomTlsEnabled": True, "DicomTlsCertificate": str(dicom_tls.server_pem.with_suffix(".crt")),
                       "DicomTlsPrivateKey": str(dicom_tls.server_pem.with_suffix(".key")),
                       "DicomTlsTrustedCertificates": str(dicom_tls.ca_pem), "DicomTlsRemoteCertificateRequired": False})
    (folder / "orthanc.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    log = open(folder / "orthanc.log", "wb")
    proc = subprocess.Popen([binary, str(folder / "orthanc.json")], cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    # UTF-8, as the code under test sends it (requests would encode str credentials as Latin-1)
    auth = tuple(v.encode("utf-8") for v in next(iter(users.items()))) if users else None
    rest = f"http://127.0.0.1:{http}"
    server = Orthanc(rest + "/dicom-web", rest, proc, folder, auth, dicom if modalities is not None else None)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if requests.get(rest + "/system", auth=auth, timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    server.stop()
    tail = (folder / "orthanc.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"Orthanc did not answer on {rest}/system within {START_TIMEOUT_S:g} s:\n{tail}")


def _require():
    if orthanc_binary() is None:
        pytest.skip("Orthanc binary not found: apt-get install orthanc orthanc-dicomweb")
    if dicomweb_plugin() is None:
        pytest.skip("Orthanc DicomWeb plugin not found: apt-get install orthanc-dicomweb")
    pytest.importorskip("dicomweb_client", reason="dicomweb-client not installed: pip install dicomweb-client")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """An open Orthanc (no authentication) for the whole session."""
    _require()
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def orthanc_auth(tmp_path_factory):
    """An Orthanc that requires HTTP basic authentication (user USER, password PASSWORD)."""
    _require()
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-auth"), users={USER: PASSWORD})
    yield server
    server.stop()


class CuttingProxy:
    """A loopback TCP proxy to ``port``: the first ``refuse`` connections are closed at once; on the others the
    answer is cut after ``cut_after`` bytes (None: never). Counts connections."""

    def __init__(self, port: int, *, cut_after: int | None = None, refuse: int = 0, throttle: float = 0.0) -> None:
        self.target = port
        self.cut_after = cut_after
        self.refuse = refuse
        self.throttle = throttle  # seconds of pause after each 2 kB of an answer (a slow link)

        self.connections = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            if self.connections <= self.refuse:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
        except OSError:
            client.close()
            return
        client.settimeout(10)

        def up():
            try:
                while data := client.recv(65536):
                    upstream.sendall(data)
            except OSError:
                pass

        threading.Thread(target=up, daemon=True).start()
        sent = 0
        try:
            while data := upstream.recv(65536):
                if self.cut_after is not None and sent + len(data) > self.cut_after:
                    client.sendall(data[: self.cut_after - sent])
                    break
                step = 2048 if self.throttle else len(data)
                for at in range(0, len(data), step):
                    client.sendall(data[at:at + step])
                    time.sleep(self.throttle)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)


@dataclass
class Tls:
    """A private CA and a server certificate for 127.0.0.1 signed by it (PEM files made with the openssl CLI)."""

    ca_pem: Path
    server_pem: Path  # key and certificate in one file


def make_tls(folder: Path, name: str = "ca") -> Tls:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found: it makes the test CA")
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=audit test {name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "server.csr", "-CA", f"{name}.pem", "-CAkey", f"{name}.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")
    (folder / "server.pem").write_bytes((folder / "server.key").read_bytes() + (folder / "server.crt").read_bytes())
    return Tls(folder / f"{name}.pem", folder / "server.pem")


class HttpFront:
    """A loopback HTTP(S) reverse proxy in front of ``rest`` (an Orthanc): with ``token`` it answers 401 unless the
    request carries ``Authorization: Bearer <token>``; with ``tls`` it serves HTTPS with that certificate (Debian's
    Orthanc 1.10 crashes on its own TLS); ``drop`` lists DICOM JSON tags removed from every answer (a server that
    omits them). Counts the requests it saw; ``url`` is its DICOMweb root."""

    def __init__(self, rest: str, *, token: str | None = None, tls: Tls | None = None, drop: tuple[str, ...] = ()) -> None:
        import http.server
        import ssl

        import requests

        self.requests = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                proxy.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "host")}
                r = requests.request(self.command, rest + self.path, data=body, headers=headers, timeout=30)
                content = r.content
                if drop and "json" in r.headers.get("Content-Type", ""):
                    content = json.dumps([{k: v for k, v in item.items() if k not in drop} for item in r.json()]).encode()
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _forward

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:  # a client that refuses our certificate
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.server_pem)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/dicom-web"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
