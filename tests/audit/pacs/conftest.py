"""A real Orthanc PACS with the DICOMweb plugin on loopback, started and stopped by the tests.

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
    auth: tuple[str, str] | None = None

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

    def upload(self, folder: Path) -> None:
        """Store every file of ``folder`` through Orthanc's REST API (not through the code under test)."""
        import requests

        for f in sorted(folder.iterdir()):
            r = requests.post(self.rest + "/instances", data=f.read_bytes(), auth=self.auth, timeout=10)
            r.raise_for_status()


def start_orthanc(folder: Path, *, users: dict[str, str] | None = None) -> Orthanc:
    """Start Orthanc on free loopback ports with temporary storage; waits (bounded) until /system answers."""
    import requests

    binary, plugin = orthanc_binary(), dicomweb_plugin()
    folder.mkdir(parents=True, exist_ok=True)
    http = free_port()
    config = {
        "Name": "audit-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": http, "DicomPort": free_port(), "DicomServerEnabled": False, "RemoteAccessAllowed": False,
        "HttpServerEnabled": True, "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {}, "StableAge": 1,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")
    proc = subprocess.Popen([binary, str(folder / "orthanc.json")], cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    auth = next(iter(users.items())) if users else None
    rest = f"http://127.0.0.1:{http}"
    server = Orthanc(rest + "/dicom-web", rest, proc, folder, auth)
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

    def __init__(self, port: int, *, cut_after: int | None = None, refuse: int = 0) -> None:
        self.target = port
        self.cut_after = cut_after
        self.refuse = refuse
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
                client.sendall(data)
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
