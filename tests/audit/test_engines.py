"""One conformance test for every engine, plus ONNX Runtime specifics (metadata, external data, bad files)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from audit.engines import load_engine
from audit.engines.torch_module import TorchEngine
from audit.errors import EngineError, InputError
from audit.serve import ServedModel, serve_in_thread
from tests.audit.conftest import REGION, SHAPE
from tests.audit.planted import WINDOW, planted_model


class PlantedTorch(torch.nn.Module):
    """The planted model written in torch: sigmoid(gain * (mean of the region - t))."""

    def forward(self, x):
        t = (0.0 - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
        m = x[:, :, REGION[0], REGION[1]].mean(dim=(1, 2, 3))
        return torch.sigmoid(400.0 * (m - t)).reshape(-1, 1)


def _engines(path):
    yield "onnxruntime", load_engine(path)
    yield "torch", TorchEngine(PlantedTorch(), (None, 1, *SHAPE), input_name="x", output_names=("probability",))
    server, url = serve_in_thread([ServedModel(path, "planted")])  # a KServe v2 server on loopback
    try:
        yield "remote", load_engine(None, "remote", url=url, model_name="planted", max_batch=2, binary=False)  # JSON
    finally:
        server.shutdown()
        server.server_close()


def test_every_engine_conforms(planted):
    x = np.random.default_rng(0).uniform(0.45, 0.55, (5, 1, *SHAPE)).astype(np.float32)
    results = {}
    for name, engine in _engines(planted):
        assert engine.input_spec.shape == (None, 1, *SHAPE), name
        assert engine.input_spec.dtype == np.float32
        out = engine.run(x)
        assert list(out) == ["probability"] and out["probability"].shape == (5, 1), name
        results[name] = out["probability"]
        with pytest.raises(InputError, match="rank"):
            engine.run(x[:, 0])
        with pytest.raises(InputError, match="dtype"):
            engine.run(x.astype(np.float64))
        with pytest.raises(InputError, match="dimension 2"):
            engine.run(np.zeros((2, 1, 8, 8), np.float32))
        desc = engine.describe()
        assert desc["backend"] == name
    np.testing.assert_allclose(results["onnxruntime"], results["torch"], atol=1e-4)
    np.testing.assert_array_equal(results["onnxruntime"], results["remote"])  # the same ONNX Runtime behind HTTP  # gain 400 amplifies float32 rounding


def test_onnxruntime_reports_metadata_hash_and_providers(planted):
    engine = load_engine(planted)
    assert engine.metadata["audit.task"] == "binary"
    desc = engine.describe()
    assert len(desc["sha256"]) == 64 and desc["providers"][-1] == "CPUExecutionProvider"


def test_missing_and_corrupt_models_are_named(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_engine(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(EngineError, match="bad.onnx"):
        load_engine(bad)


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    model = onnx.load(str(planted_model(tmp_path / "m.onnx", SHAPE, REGION, 0.0)))
    tensor = next(t for t in model.graph.initializer if t.name == "t")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("float_data")
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "evil.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineError, match="outside the model's folder"):
        load_engine(path)


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(planted):
    pytest.importorskip("tensorrt")
    trt = load_engine(planted, "tensorrt", max_batch=16, opt_batch=8)
    ort = load_engine(planted)
    x = np.random.default_rng(0).uniform(0.45, 0.55, (8, 1, *SHAPE)).astype(np.float32)
    np.testing.assert_allclose(trt.run(x)["probability"], ort.run(x)["probability"], atol=1e-4)
