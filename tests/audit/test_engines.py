"""One conformance test for every engine, plus ONNX Runtime specifics (metadata, external data, bad files)."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from audit.engines import BACKENDS, load_engine, threads
from audit.engines.torch_module import TorchEngine
from audit.engines.threads import in_one_stream, one_stream
from audit.errors import EngineError, InputError
from audit.serve import ServedModel, serve_in_thread
from tests.audit.conftest import REGION, SHAPE
from tests.audit.planted import WINDOW, planted_model
from models.phantoms.nodules import nodule_cubes
from tests.conftest import to_host


class PlantedTorch(torch.nn.Module):
    """The planted model written in torch: sigmoid(gain * (mean of the region - t))."""

    def forward(self, x):
        t = (0.0 - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
        m = x[:, :, REGION[0], REGION[1]].mean(dim=(1, 2, 3))
        return torch.sigmoid(400.0 * (m - t)).reshape(-1, 1)


def _tensorrt_reason() -> str | None:
    """Why native TensorRT cannot run here, or None."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (pip install 'ct-robustness-audit[gpu]')"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as exc:  # noqa: BLE001 - CuPy missing or no usable GPU
        return f"no usable CUDA device for TensorRT ({exc.__class__.__name__})"
    return None


@contextlib.contextmanager
def _open(name, path):
    """The planted model behind backend ``name`` (every entry of ``BACKENDS`` must have one here)."""
    if name == "onnxruntime":
        yield load_engine(path)
    elif name == "torch":
        yield TorchEngine(PlantedTorch(), (None, 1, *SHAPE), input_name="x", output_names=("probability",))
    elif name == "remote":
        server, url = serve_in_thread([ServedModel(path, "planted")])  # a KServe v2 server on loopback
        try:
            yield load_engine(None, "remote", url=url, model_name="planted", max_batch=2, binary=False)  # JSON
        finally:
            server.shutdown()
            server.server_close()
    elif name == "tensorrt":
        reason = _tensorrt_reason()
        if reason:
            pytest.skip(f"GPU test: {reason}")
        yield load_engine(path, "tensorrt", max_batch=16, opt_batch=8)
    else:
        raise AssertionError(f"backend {name!r} has no conformance fixture: add one to _open")


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_engine_conforms(planted, name):
    x = np.random.default_rng(0).uniform(0.45, 0.55, (5, 1, *SHAPE)).astype(np.float32)
    reference = load_engine(planted).run(x)["probability"]
    with _open(name, planted) as engine:
        assert engine.input_spec.shape == (None, 1, *SHAPE), name
        assert engine.input_spec.dtype == np.float32
        # Where it runs, and the namespace a campaign makes its noise in.
        assert engine.device == "cpu" or engine.device.startswith("cuda:"), engine.device
        assert engine.xp.__name__ in ("numpy", "cupy") and (engine.device != "cpu" or engine.xp is np)
        out = engine.run(x)
        assert list(out) == ["probability"] and out["probability"].shape == (5, 1), name
        assert isinstance(out["probability"], np.ndarray)
        kept = engine.run(engine.xp.asarray(x), to_host=False)["probability"]  # the device path where there is one
        assert type(kept).__module__.split(".")[0] == engine.xp.__name__
        np.testing.assert_allclose(to_host(kept), out["probability"], rtol=0, atol=1e-6)  # GPU tactics may vary
        with pytest.raises(InputError, match="rank"):
            engine.run(x[:, 0])
        with pytest.raises(InputError, match="dtype"):
            engine.run(x.astype(np.float64))
        with pytest.raises(InputError, match="dimension 2"):
            engine.run(np.zeros((2, 1, 8, 8), np.float32))
        assert engine.describe()["backend"] == name
    if name in ("onnxruntime", "remote"):  # the same ONNX Runtime (behind HTTP for remote)
        np.testing.assert_array_equal(out["probability"], reference)
    else:  # torch; TensorRT (FP32): gain 400 amplifies float32 rounding
        np.testing.assert_allclose(out["probability"], reference, atol=1e-4)


def test_onnxruntime_binds_inputs_and_outputs_by_pointer(planted):
    # The device path's IO binding (pointer in, ORT-allocated outputs), run on host memory here.
    engine = load_engine(planted)
    x = np.random.default_rng(1).uniform(0.45, 0.55, (3, 1, *SHAPE)).astype(np.float32)
    values = engine.run_bound(x.ctypes.data, x.shape)
    assert [tuple(v.shape()) for v in values] == [(3, 1)] and values[0].data_type() == "tensor(float)"
    np.testing.assert_array_equal(values[0].numpy(), engine.run(x)["probability"])


@pytest.mark.gpu
def test_cupy_batches_stay_on_the_device(planted):
    import cupy
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("GPU test: this onnxruntime build has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
    engine = load_engine(planted, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert engine.device == "cuda:0" and engine.xp is cupy
    x = np.random.default_rng(2).uniform(0.45, 0.55, (6, 1, *SHAPE)).astype(np.float32)
    dev = engine.run(cupy.asarray(x), to_host=False)["probability"]
    assert isinstance(dev, cupy.ndarray)
    np.testing.assert_allclose(dev.get(), load_engine(planted, providers=["CPUExecutionProvider"]).run(x)["probability"],
                               atol=1e-4)


def test_torch_threads_follow_the_machine(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    assert threads.torch_threads(1) == 1 and threads.torch_threads(2) == 1  # the measured collapse at 2
    assert threads.torch_threads(2, shared=False) == 2  # nothing to contend with: torch keeps both cores
    assert threads.torch_threads(8) == 7 and threads.torch_threads(8, shared=False) == 8
    assert threads.torch_threads(64) == threads.MAX_THREADS
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.torch_threads(2) == 3
    monkeypatch.setenv(threads.ENV, "zero")
    with pytest.raises(ValueError, match=threads.ENV):
        threads.torch_threads()


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


def test_ort_streams_run_parts_of_a_batch_concurrently_with_each_samples_own_outputs():
    """``streams``: a batch cut into parts run concurrently on one session by single-thread streams (the campaign's
    CPU layout). Each sample's outputs are those of the session running it alone (exact: ONNX Runtime on one thread
    gives this model the same bits at any batch size), and within float tolerance of one whole-batch run on the
    same thread count; fewer samples than streams and bad counts are handled."""
    path = Path(__file__).resolve().parents[2] / "models" / "artifacts" / "nodule3d" / "nodule3d-r0-f0.onnx"
    x = ((np.clip(nodule_cubes(13, 11).images, -1000, 400) + 1000) / 1400)[:, None].astype(np.float32)
    split = load_engine(path, threads=3, streams=3)
    alone = load_engine(path, threads=1)
    assert split.streams == 3 and split.describe()["streams"] == 3
    out, whole = split.run(x), alone.run(x)
    one_by_one = [alone.run(x[i:i + 1]) for i in range(len(x))]
    for name in split.output_names:
        np.testing.assert_array_equal(out[name], np.concatenate([o[name] for o in one_by_one]))
        np.testing.assert_allclose(out[name], whole[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(split.run(x[:2])[name], out[name][:2])
    assert any(t.name.startswith("ort-stream") for t in threading.enumerate())  # the other parts ran on its threads
    parts = load_engine(path, threads=1, micro_batch=3)  # one thread: parts of 3 run in turn
    assert [len(c) for c in parts._parts(x, 1)] == [3, 3, 3, 3, 1] and parts.describe()["micro_batch"] == 3
    sizes = [len(c) for c in split._parts(np.zeros((64, 1, 32, 32, 32), np.float32), 3)]  # guided: shrinking to 1
    assert sum(sizes) == 64 and sizes == sorted(sizes, reverse=True) and sizes[0] == 8 and sizes[-3:] == [1, 1, 1]
    assert len(load_engine(path, threads=2)._parts(x, 1)) == 1  # intra-op threads need the batch whole
    # a campaign worker's thread (one_stream): the batch runs on that thread alone, in micro-batches, same outputs
    worker = load_engine(path, threads=1, streams=3)
    with one_stream():
        assert in_one_stream()
        for name, value in worker.run(x).items():
            np.testing.assert_array_equal(value, out[name])
    assert worker._pool is None and not in_one_stream()  # no stream thread was started
    for name in split.output_names:
        np.testing.assert_array_equal(parts.run(x)[name], out[name])
    with pytest.raises(EngineError, match="streams"):
        load_engine(path, streams=0)
    with pytest.raises(EngineError, match="micro_batch"):
        load_engine(path, micro_batch=-1)


def test_ort_parts_refuse_outputs_without_the_batch_on_axis_0(tmp_path):
    """A split batch is joined on axis 0: an output that is not per sample (here a scalar mean over the batch) is
    refused in one line naming it, never joined into something else; run whole (streams 1, a micro_batch above the
    batch) the base class's batch check names it too."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["s"], keepdims=0)], "scalar",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])])
    path = tmp_path / "scalar.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    x = np.ones((16, 1, 4, 4), np.float32)
    for options in ({"threads": 1}, {"threads": 2, "streams": 2}, {"threads": 1, "micro_batch": 64}):
        with pytest.raises(EngineError, match="output 's' has batch size"):
            load_engine(path, **options).run(x)
