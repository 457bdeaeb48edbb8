"""``[track] mlflow`` and ``audit gate --mlflow``: the audit as an MLflow run, read back with MLflow's own client from a
real tracking store (a ``file://`` store always; a real ``mlflow server`` with a SQLite backend on loopback where
one is installed in its own venv: ``~/.cache/ct-robustness-audit/mlflow-server``, which ``.ci/run`` creates, or
``$AUDIT_MLFLOW_SERVER``: the full ``mlflow`` package would downgrade pyarrow here, so it is not a test dependency)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from audit.cli import main
from tests.audit.conftest import REGION, planted_images, write_config, write_manifest
from tests.audit.planted import region_means

mlflow = pytest.importorskip("mlflow", reason="the track extra (mlflow-skinny) is not installed")

NOISE = 'kind = "nps"\nlevels = [30, 120, 480]\ndraws = 16\nseed = 7\nsigma_ref = 30.0'
POLICY = '[[rule]]\nname = "SAR at 480 mAs"\nmetric = "sar"\nlevel = 480\nmax = 1.0\n'
#: The venv with full mlflow that .ci/run creates (``$AUDIT_MLFLOW_SERVER`` names another); ~1.5 min on a loaded 2-core box.
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ct-robustness-audit"
SERVER_VENV = Path(os.environ.get("AUDIT_MLFLOW_SERVER") or CACHE / "mlflow-server")


def _audit_with_tracking(tmp_path: Path, planted: Path, uri: str) -> tuple[Path, dict]:
    images = planted_images(10, spread_hu=5.0)
    manifest = write_manifest(tmp_path / "data", images, (region_means(images, REGION) >= 0).astype(int))
    config = write_config(tmp_path / "a.toml", planted, manifest, noise=NOISE)
    config.write_text(config.read_text() + f'\n[track]\nmlflow = "{uri}"\nexperiment = "ct-audit"\nrun_name = "nightly"\n')
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    assert main(["run", str(config), "--out", str(tmp_path / "out"), "--no-progress", "--policy", str(policy)]) == 0
    return policy, json.loads((tmp_path / "out" / "report.json").read_text())


def _check_run(uri: str, report: dict, run_name: str, verdict: str) -> None:
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ct-audit")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    assert len(runs) == 1
    run = runs[0]
    model = report["models"][0]
    assert run.data.params["model/planted/sha256"] == model["engine"]["sha256"]
    assert run.data.params["noise/kind"] == "nps" and json.loads(run.data.params["noise/levels"]) == [30, 120, 480]
    assert run.data.params["noise/draws"] == "16"
    for block in model["levels"]:
        assert run.data.metrics[f"planted/SAR/level/{block['level']:g}"] == pytest.approx(block["SAR_overall"])
        assert run.data.metrics[f"planted/SAN/level/{block['level']:g}"] == block["SAN"]
    assert run.data.metrics["planted/clean/accuracy"] == model["clean"]["accuracy"]
    crit = [c for m in report["summary"]["models"] for c in m.get("critical_dose") or () if c.get("dose") is not None]
    assert all(run.data.metrics[f"planted/critical_dose/SAR/{c['target']:g}"] == pytest.approx(c["dose"]) for c in crit)
    assert run.data.tags["audit.gate"] == verdict
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"report.json", "report.html"}
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "report.json")).read_text())
    assert logged["models"][0]["levels"] == model["levels"]


def test_audit_and_gate_logged_to_a_file_store(tmp_path, planted, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this opt-in
    uri = (tmp_path / "mlruns").as_uri()
    policy, report = _audit_with_tracking(tmp_path, planted, uri)
    _check_run(uri, report, "nightly", "pass")
    assert main(["gate", str(tmp_path / "out" / "report.json"), "--policy", str(policy), "--mlflow", uri,
                 "--experiment", "ct-audit", "--run-name", "gate"]) == 0
    _check_run(uri, report, "gate", "pass")
    # A tracking server that is not there: one line naming it (not its credentials), exit 2.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    capsys.readouterr()
    code = main(["gate", str(tmp_path / "out" / "report.json"), "--policy", str(policy), "--mlflow",
                 f"http://u:pw@127.0.0.1:{port}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"127.0.0.1:{port}" in err[0] and "pw@" not in err[0], err


@pytest.mark.slow
@pytest.mark.skipif(not (SERVER_VENV / "bin" / "mlflow").exists(),
                    reason=f"no mlflow server venv at {SERVER_VENV} (.ci/run creates it; or set AUDIT_MLFLOW_SERVER to "
                           "a venv with mlflow: python -m venv V; V/bin/pip install mlflow)")
def test_audit_logged_to_a_real_mlflow_server_with_sqlite(tmp_path, planted):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(SERVER_VENV / "bin" / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("mlflow server did not start within 120 s")
                time.sleep(0.5)
        _, report = _audit_with_tracking(tmp_path, planted, uri)
        _check_run(uri, report, "nightly", "pass")
    finally:
        server.terminate()
        server.wait(20)
