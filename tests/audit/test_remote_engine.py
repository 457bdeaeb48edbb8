"""``engine = "remote"`` against a real KServe v2 server on loopback (``audit serve``, a separate process): the same
keyed draws give the local ONNX Runtime engine's decisions and scores; a server that goes away mid-campaign is one
line and exit 2, and ``--resume`` after a restart finishes with every record exactly once."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from audit.campaign import records
from audit.cli import main
from audit.config import load_config
from audit.engines import load_engine
from audit.errors import ConfigError, EngineError
from audit.serve import ServedModel, serve_in_thread
from tests.audit.conftest import REGION, SHAPE, planted_images, write_config, write_manifest
from tests.audit.planted import region_means

NOISE = 'kind = "nps"\nlevels = [30, 120, 480]\ndraws = 24\nseed = 7\nsigma_ref = 30.0'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model: Path, port: int) -> subprocess.Popen:
    """``audit serve`` in its own process, returned once it answers on ``port``."""
    proc = subprocess.Popen([sys.executable, "-m", "audit", "serve", str(model), "--name", "planted", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "serving 'planted'" in line, proc.stderr.read() if proc.poll() is not None else line
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def _remote_config(path: Path, port: int, manifest: Path, *, extra: str = "") -> Path:
    path.write_text(f'[model]\nengine = "remote"\nurl = "http://user:s3cret@127.0.0.1:{port}"\nmodel_name = "planted"\n'
                    f'name = "planted"\nmax_batch = 16\nconcurrency = 2\n{extra}\n[data]\nmanifest = "{manifest}"\n\n'
                    f'[noise]\n{NOISE}\n\n[run]\nbatch_size = 32\nshard_samples = 4\n')
    return path


def _columns(out: Path) -> list[str]:
    return pq.read_table(next((out / "records").rglob("shard-*.parquet"))).column_names


def _records(out: Path) -> dict[tuple, tuple]:
    """(sample, level, k) -> the record's other columns, over every shard; asserts no key is written twice."""
    rows: dict[tuple, tuple] = {}
    for shard in sorted((out / "records").rglob("shard-*.parquet")):
        table = pq.read_table(shard).to_pydict()
        others = [c for c in table if c not in ("sample", "level", "k")]
        for i, key in enumerate(zip(table["sample"], table["level"], table["k"])):
            assert key not in rows, f"record {key} written twice"
            rows[key] = tuple(np.asarray(table[c][i], float).ravel().tolist() for c in others)
    return rows


@pytest.fixture
def data(tmp_path):
    images = planted_images(12, spread_hu=5.0)
    return write_manifest(tmp_path / "data", images, (region_means(images, REGION) >= 0).astype(int))


def test_remote_campaign_equals_local_onnxruntime(tmp_path, planted, data):
    """``audit serve`` in its own process; both campaigns run through the CLI's ``main``."""
    port = _free_port()
    server = _start_server(planted, port)
    try:
        remote = main(["run", str(_remote_config(tmp_path / "remote.toml", port, data, extra="binary = true")),
                       "--out", str(tmp_path / "r"), "--no-progress"])
    finally:
        _stop(server)
    assert remote == 0
    local = write_config(tmp_path / "local.toml", planted, data, noise=NOISE, run="batch_size = 32\nshard_samples = 4")
    assert main(["run", str(local), "--out", str(tmp_path / "l"), "--no-progress"]) == 0
    r, l = _records(tmp_path / "r"), _records(tmp_path / "l")
    assert set(r) == set(l) and len(r) == 12 * 3 * 24
    diff = max(abs(a - b) for key in r for ra, la in zip(r[key], l[key]) for a, b in zip(ra, la))
    assert diff <= 1e-6, diff
    print(f"max |record diff| remote vs local: {diff:g} over {len(r)} records, columns {_columns(tmp_path / 'r')}")
    rep_r, rep_l = (json.loads((tmp_path / d / "report.json").read_text())["models"][0] for d in ("r", "l"))
    assert rep_r["engine"]["backend"] == "remote" and rep_r["engine"]["sha256"] == rep_l["engine"]["sha256"]
    assert "s3cret" not in (tmp_path / "r" / "report.json").read_text()  # credentials never reach a report
    for a, b in zip(rep_r["levels"], rep_l["levels"]):
        assert (a["SAN"], a["SAR_overall"]) == (b["SAN"], b["SAR_overall"])
    assert rep_r["clean"] == rep_l["clean"]


def test_server_stopped_mid_campaign_then_resume_loses_no_record(tmp_path, planted, data, monkeypatch, capsys):
    """The server (on loopback, in a thread here) goes away right after the campaign's 3rd shard lands."""
    port = _free_port()
    config = _remote_config(tmp_path / "remote.toml", port, data, extra="retries = 1\ntimeout_s = 5")
    out = tmp_path / "out"
    server, _ = serve_in_thread([ServedModel(planted, "planted")], port=port)
    real, seen = records.write_table, []

    def write_table(path, columns):
        real(path, columns)
        if path.name.startswith("shard-"):
            seen.append(path)
            if len(seen) == 3:
                server.shutdown()
                server.server_close()

    monkeypatch.setattr(records, "write_table", write_table)
    argv = ["run", str(config), "--out", str(out), "--no-progress"]
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "remote model 'planted'" in err[0] and f"127.0.0.1:{port}" in err[0], err
        assert "s3cret" not in err[0]
        done = len(_records(out))
        assert 0 < done < 12 * 3 * 24 and not (out / "report.json").exists()
        server, _ = serve_in_thread([ServedModel(planted, "planted")], port=port)  # restarted, same address
        assert main(argv + ["--resume"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert len(_records(out)) == 12 * 3 * 24  # _records asserts every key once
    report = json.loads((out / "report.json").read_text())
    assert [b["N"] for b in report["models"][0]["levels"]] == [12, 12, 12]
    print(f"records at stop: {done}, after resume: {12 * 3 * 24}")


def test_remote_errors_name_server_and_model(planted):
    server, url = serve_in_thread([ServedModel(planted, "planted")])
    try:
        with pytest.raises(EngineError, match=r"remote model 'nope' at http://127\.0\.0\.1:\d+: GET .* HTTP 404"):
            load_engine(None, "remote", url=url, model_name="nope")
        engine = load_engine(None, "remote", url=url.replace("://", "://u:pw@"), model_name="planted", retries=2)
        assert engine.describe()["url"] == url and engine.max_batch is None and engine.binary  # listed by GET /v2
    finally:
        server.shutdown()
        server.server_close()
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="failed after 3 attempt") as err:
        engine.run(np.zeros((2, 1, *SHAPE), np.float32))
    assert "pw" not in str(err.value) and time.monotonic() - t0 >= 0.2 + 0.4  # backoff 0.2 s, then 0.4 s


@pytest.mark.parametrize("model, track, key", [
    ('engine = "remote"\nmodel_name = "m"', "", "model.url: missing"),
    ('engine = "remote"\nurl = "http://127.0.0.1:9"', "", "model.model_name: missing"),
    ('engine = "remote"\nurl = "http://127.0.0.1:9"\nmodel_name = "m"\nconcurrency = 0', "", "model.concurrency"),
    ('engine = "remote"\nurl = "http://127.0.0.1:9"\nmodel_name = "m"\nbinary = "yes"', "", "model.binary"),
    ('engine = "remote"\nurl = "http://127.0.0.1:9"\nmodel_name = "m"\ntimeout_s = -1', "", "model.timeout_s"),
    ('path = "m.onnx"\nurl = "http://127.0.0.1:9"', "", "model.url: not an option of engine 'onnxruntime'"),
    ('engine = "remote"\nurl = "http://h:1"\nmodel_name = "m"\npath = "m.onnx"', "", "model.path: engine 'remote' takes no"),
    ('path = "m.onnx"', '[track]\nmlflw = "x"', "track.mlflw: unknown key"),
    ('path = "m.onnx"', '[track]\nexperiment = "x"', "track.mlflow: missing"),
])
def test_remote_and_track_config_errors_name_the_key(tmp_path, model, track, key):
    config = tmp_path / "a.toml"
    config.write_text(f'[model]\n{model}\n\n[data]\nphantom = "nodules"\n\n{track}\n')
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(config)
