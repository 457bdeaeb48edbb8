"""What the re-layout promised: same numbers, a page rendered from the output folder alone, engines by name."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.artifact import ModelEntry, open_artifact
from audit.campaign.noise import NoiseSpec
from audit.campaign.run import RunOptions, run_campaign
from audit.cli import main
from audit.data import ArraySource
from audit.engines import BACKENDS, load_engine
from audit.engines.torch_module import save_program
from audit.errors import EngineError
from audit.pipelines.demo import audit_reference
from audit.pipelines.run import write_reports
from tests.audit.conftest import SPACING, planted_images

DATA = Path(__file__).parent / "data"


def _comparable(report: dict) -> dict:
    """A report without what may differ between two runs of the same audit: time, timing, library versions, where
    files are and the engine's thread counts (the campaign's layout follows the machine's cores)."""
    r = json.loads(json.dumps(report))
    for key in ("created", "timing", "tool"):
        r.pop(key, None)
    for m in r["models"]:
        for key in ("source", "path", "threads", "streams"):
            m["engine"].pop(key, None)
    return _rounded(r)


def _rounded(v):
    """Floats to 10 significant digits: the same numbers up to the last bits of an FFT or a sum's order."""
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    return float(f"{v:.10g}") if isinstance(v, float) else v


def test_demo_quick_report_is_reproduced_exactly(tmp_path):
    """The quick demo's audit of a stored ONNX file gives the stored report.json (bar time, versions and paths).

    The stored copy was first made by the code before the re-layout, and the re-layout reproduced it exactly
    (commit 19147a1); it is regenerated only when the report's content changes on purpose, in that commit."""
    before = json.loads((DATA / "demo_quick_report.json").read_text())
    report, _ = audit_reference(tmp_path / "demo", DATA / "demo_quick_nodule3d_v0.onnx", quick=True, progress=False,
                                log=lambda _: None, build=before["build"])
    after = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert _comparable(after) == _comparable(before)
    assert after["models"][0]["levels"][0]["SAN"] == before["models"][0]["levels"][0]["SAN"] > 0


def _images_in(page: str) -> list[str]:
    return re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', page)


def test_report_html_renders_from_the_output_folder_alone(tmp_path, planted):
    model_file = tmp_path / "model.onnx"
    shutil.copy(planted, model_file)
    model = open_artifact(ModelEntry(model_file, "planted"))
    source = ArraySource(planted_images(24, spread_hu=3.0), (SPACING, SPACING))
    noise = NoiseSpec(kind="nps", levels=(25.0, 400.0), draws=20, seed=1, sigma_ref=40.0, mas_ref=100.0)
    out = tmp_path / "out"
    stats = run_campaign([model], source, noise, out, RunOptions(batch_size=64, shard_samples=8, progress=False))
    write_reports(out, [model], source, noise, stats)
    first = (out / "report.html").read_text()
    cases = [c["id"] for c in json.loads((out / "report.json").read_text())["models"][0]["worst_cases"]]
    assert cases, "the planted data must flip at 25 mAs"
    model_file.unlink()
    (out / "report.html").unlink()
    del model, source
    assert main(["report", str(out)]) == 0
    again = (out / "report.html").read_text()
    assert _images_in(again) == _images_in(first)
    assert {f"case {c}" for c in cases} <= set(_images_in(again))
    assert "NPS per dose" in _images_in(again)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.fc = torch.nn.Linear(2, 1)

    def forward(self, x):
        return torch.sigmoid(self.fc(self.conv(x).mean(dim=(2, 3))))


def test_torch_engine_opens_by_name_through_the_registry(tmp_path):
    """``engine = "torch"`` opens a torch.export program with its metadata; decisions equal the module's own."""
    assert "torch" in BACKENDS
    net = _Tiny().eval()
    x = np.random.default_rng(0).uniform(0, 1, (5, 1, 16, 16)).astype(np.float32)
    meta = {"audit.task": "binary", "audit.hu_window": "[-1000, 1000]", "audit.threshold": "0.5", "audit.outputs": '["p"]'}
    path = save_program(net, x[:2], tmp_path / "tiny.pt2", meta)
    engine = load_engine(path, "torch")
    assert engine.input_spec.shape == (None, 1, 16, 16)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(engine.run(x)["p"], want, rtol=1e-6, atol=1e-6)
    model = open_artifact(ModelEntry(path, "tiny", "torch"))
    hu = x[:, 0] * 2000.0 - 1000.0
    decided = model.decide(hu)
    np.testing.assert_array_equal(decided.labels, (want[:, 0] >= 0.5).astype(np.int64))
    assert model.describe()["engine"]["sha256"]


def test_a_file_that_is_not_a_program_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a program")
    with pytest.raises(EngineError, match="bad.pt2: not a torch.export program"):
        load_engine(bad, "torch")
