import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import models
from models import export, registry, training


def test_quick_build_onnx_runs_with_dynamic_batch_and_matches_checkpoint(quick_nodule):
    result, _, _ = quick_nodule
    path = result.primary
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "image" and isinstance(inp.shape[0], str) and inp.shape[1:] == [1, 32, 32, 32]
    net = models.load_checkpoint("nodule3d", "default", result.artifacts[0].checkpoint)
    x = np.random.default_rng(3).random((5, 1, 32, 32, 32), dtype=np.float32)
    for b in (1, 5):
        got = sess.run(None, {"image": x[:b]})[0]
        with torch.no_grad():
            ref = net(torch.from_numpy(x[:b])).numpy()
        assert got.shape == (b, 1)
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_metadata_round_trips(quick_nodule):
    result, _, _ = quick_nodule
    card = models.read_metadata(result.primary)
    bp = registry.get("nodule3d").blueprint()
    art = result.artifacts[0]
    expected = export.metadata_for(bp, recipe_hash=result.recipe_hash, weights=art.weights_sha256, seed=art.seed,
                                   fold=art.fold, repeat=art.repeat, test_metrics=art.test)
    assert dict(card.raw) == expected
    assert card.task == "binary" and card.class_names == ("benign", "malignant") and card.threshold == 0.5
    assert card.hu_window == (-1000.0, 400.0) and card.spacing_mm == (1.0, 1.0, 1.0)
    assert card.input_shape == (32, 32, 32) and card.input_layout == "NCDHW"
    assert json.loads(card.raw[export.KEY_TEST_METRICS])["auc"] == pytest.approx(art.test["auc"])
    # The card's preprocessing is the training preprocessing.
    hu = np.linspace(-1200, 600, 32**3, dtype=np.float32).reshape(1, 32, 32, 32)
    np.testing.assert_array_equal(card.preprocess(hu), registry.preprocess(hu, registry.LUNG_WINDOW))


def test_parity_check_fails_loudly_on_a_different_model(quick_nodule, tmp_path):
    result, _, _ = quick_nodule
    net = models.load_checkpoint("nodule3d", "default", result.artifacts[0].checkpoint)
    with torch.no_grad():
        net.classifier[-1].bias += 0.5  # a different model than the exported one
    with pytest.raises(export.ParityError, match=r"differs from PyTorch by .* expected <= 0.0001"):
        export.check_parity(result.primary, net)


def test_export_removes_file_when_parity_fails(tmp_path):
    class Drift(torch.nn.Module):
        """Exports one graph but answers differently in eager mode afterwards."""

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)
            self.shift = 0.0

        def forward(self, x):
            return self.lin(x.flatten(1)[:, :4]) + self.shift

    net = Drift()
    orig = export.check_parity

    def drifted(path, model, inputs=None, **kw):
        model.shift = 1.0
        return orig(path, model, inputs, **kw)

    path = tmp_path / "m.onnx"
    export.check_parity = drifted
    try:
        with pytest.raises(export.ParityError):
            export.export_onnx(net, path, input_shape=(2, 2), output_names=["y"], metadata={})
    finally:
        export.check_parity = orig
    assert not path.exists()


def test_read_metadata_rejects_plain_onnx(tmp_path):
    net = torch.nn.Linear(3, 1).eval()
    path = tmp_path / "plain.onnx"
    torch.onnx.export(net, (torch.rand(2, 3),), str(path), dynamo=True, verbose=False)
    with pytest.raises(models.export.InputError, match="audit.schema"):
        models.read_metadata(path)
    with pytest.raises(models.export.InputError, match="not a readable ONNX"):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"not onnx")
        models.read_metadata(bad)


@pytest.mark.parametrize("name", ["bodysite2d", "fpr3d", "unet2d"])
def test_every_model_exports_with_parity_and_metadata(tmp_path, name):
    bp = registry.get(name).blueprint()
    with training.deterministic(0):
        net = bp.make_net().eval()
    md = export.metadata_for(bp, recipe_hash="h", weights=training.weights_sha256(net), seed=0, fold=0, repeat=0)
    diff = export.export_onnx(net, tmp_path / "m.onnx", input_shape=bp.input_shape, output_names=bp.output_names,
                              metadata=md)
    assert diff <= 1e-4
    card = models.read_metadata(tmp_path / "m.onnx")
    assert card.outputs == bp.output_names and card.class_names == bp.class_names
    assert card.spacing_mm == tuple(bp.spacing) and card.hu_window == bp.hu_window
