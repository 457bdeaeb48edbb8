"""``engine = "remote"`` against Seldon MLServer, a v2 server that is not ours: MLServer runs from its own venv (it
would downgrade protobuf here; ``.ci/run`` creates ``~/.cache/ct-robustness-audit/mlserver``, or
``$AUDIT_MLSERVER`` names another) as a subprocess on loopback, with a small custom runtime, written by the test
into the model folder, that wraps ONNX Runtime on the planted model. On the same keyed draws the campaign through
MLServer gives the local ONNX Runtime engine's records, decisions and scores (within 1e-6: the scores are float32
probabilities, and JSON carries a float32 exactly, so any difference is ONNX Runtime's own, both sides being ORT
on CPU). MLServer exposes no ONNX metadata, so the head and preprocessing come from the config."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from audit.cli import main
from audit.engines import load_engine
from audit.errors import EngineError
from tests.audit.conftest import (
    REGION,
    SHAPE,
    planted_images,
    write_config,
    write_manifest,
)
from tests.audit.planted import planted_model, region_means
from tests.audit.test_remote_engine import NOISE, _columns, _records, _remote_config

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ct-robustness-audit"
VENV = Path(os.environ.get("AUDIT_MLSERVER") or CACHE / "mlserver")
STARTUP_S = 180  # MLServer imports FastAPI, gRPC, OpenTelemetry ... : tens of seconds on a loaded 2-core box

pytestmark = pytest.mark.skipif(
    not (VENV / "bin" / "mlserver").exists(),
    reason=f"no MLServer venv at {VENV} (.ci/run creates it; or set AUDIT_MLSERVER to a venv with "
           "mlserver onnxruntime numpy)")

#: The custom runtime: ONNX Runtime on CPU behind MLServer's MLModel, NumPy codec in and out.
RUNTIME = '''
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        self._session = ort.InferenceSession(await get_model_uri(self._settings), providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        names = [o.name for o in payload.outputs or ()] or [o.name for o in self._session.get_outputs()]
        values = self._session.run(names, feeds)
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id,
                                 outputs=[NumpyCodec.encode_output(n, v) for n, v in zip(names, values)])
'''

HEAD = ('\n[head]\ntask = "binary"\nthreshold = 0.5\nclass_names = ["below", "above"]\n\n'
        '[preprocess]\nhu_window = [-1000.0, 1000.0]\n')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory):
    """MLServer serving the planted model as 'planted' version 1; yields (url, model path, log path)."""
    root = tmp_path_factory.mktemp("mlserver")
    folder = root / "models" / "planted"
    folder.mkdir(parents=True)
    model = planted_model(folder / "planted.onnx", SHAPE, REGION, threshold_hu=0.0)
    (folder / "ort_runtime.py").write_text(RUNTIME)
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "planted", "implementation": "ort_runtime.OnnxRuntimeModel", "platform": "onnxruntime_onnx",
        "versions": ["1"], "parameters": {"uri": "./planted.onnx", "version": "1"},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1, *SHAPE]}],
        "outputs": [{"name": "probability", "datatype": "FP32", "shape": [-1, 1]}]}))
    port = _free_port()
    (root / "models" / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": _free_port(), "metrics_port": _free_port(),
        "metrics_dir": str(root / "metrics"), "parallel_workers": 0, "debug": False}))
    (root / "metrics").mkdir()
    log = root / "mlserver.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(VENV / "bin" / "mlserver"), "start", str(root / "models")], cwd=root,
                                stdout=out, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/v2/models/planted/ready", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() - t0 > STARTUP_S:
                    pytest.fail(f"MLServer did not serve 'planted' within {STARTUP_S} s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        print(f"MLServer ready in {time.monotonic() - t0:.1f} s")
        yield url, model, log
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_mlserver_campaign_equals_local_onnxruntime(tmp_path, mlserver):
    url, model, _ = mlserver
    port = int(url.rsplit(":", 1)[1])
    images = planted_images(12, spread_hu=5.0)
    data = write_manifest(tmp_path / "data", images, (region_means(images, REGION) >= 0).astype(int))
    remote = _remote_config(tmp_path / "remote.toml", port, data, extra='model_version = "1"\n' + HEAD)
    assert main(["run", str(remote), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    local = write_config(tmp_path / "local.toml", model, data, noise=NOISE, run="batch_size = 32\nshard_samples = 4")
    assert main(["run", str(local), "--out", str(tmp_path / "l"), "--no-progress"]) == 0
    r, l = _records(tmp_path / "r"), _records(tmp_path / "l")
    assert set(r) == set(l) and len(r) == 12 * 3 * 24
    diff = max(abs(a - b) for key in r for ra, la in zip(r[key], l[key]) for a, b in zip(ra, la))
    assert diff <= 1e-6, diff
    print(f"max |record diff| MLServer vs local: {diff:g} over {len(r)} records, columns {_columns(tmp_path / 'r')}")
    rep_r, rep_l = (json.loads((tmp_path / d / "report.json").read_text())["models"][0] for d in ("r", "l"))
    engine = rep_r["engine"]
    assert engine["backend"] == "remote" and engine["model_version"] == "1" and engine["platform"] == "onnxruntime_onnx"
    assert engine["binary"] is False  # MLServer's GET /v2 lists no binary tensor data extension: JSON numbers
    assert "s3cret" not in (tmp_path / "r" / "report.json").read_text()
    for a, b in zip(rep_r["levels"], rep_l["levels"]):
        assert (a["SAN"], a["SAR_overall"]) == (b["SAN"], b["SAR_overall"])
    assert rep_r["clean"] == rep_l["clean"]


def test_mlserver_errors_are_one_line_naming_server_and_model(mlserver):
    url, _, _ = mlserver
    with pytest.raises(EngineError, match=r"remote model 'nope' at http://127\.0\.0\.1:\d+: GET .* HTTP 404") as err:
        load_engine(None, "remote", url=url, model_name="nope")
    assert "\n" not in str(err.value)
    # binary = true forced on a server whose GET /v2 lists no binary_tensor_data: MLServer's schema rejects the body
    # (HTTP 422, FastAPI's {"detail": [...]}, not the protocol's {"error": ...}); the line carries its reason.
    engine = load_engine(None, "remote", url=url, model_name="planted", binary=True)
    with pytest.raises(EngineError, match=r"remote model 'planted' at .*: POST .*/infer answered HTTP 422: \S") as err:
        engine.run(np.zeros((2, 1, *SHAPE), np.float32))
    assert "\n" not in str(err.value)
    print(f"MLServer's answer to a binary body, as the engine reports it: {err.value}")
