"""Paths in report.json: relative to the output folder where inside it, as the user gave them otherwise, and the
model cache and the shipped models by name; no value names a folder of this machine the user did not give.

One ``audit run`` from a config with relative paths (model, manifest), a black-box attack, DICOM cases and a policy
given on the command line as an absolute path; and one audit of the shipped reference model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from audit.artifact import open_path
from audit.campaign.noise import NoiseSpec
from audit.campaign.run import RunOptions, run_campaign
from audit.cli import main
from audit.data import phantom_source
from audit.pipelines.run import path_style, write_reports
from models.cache import cache_root
from models.shipped import ARTIFACTS
from tests.audit.conftest import REGION, planted_images, write_manifest
from tests.audit.planted import region_means

POLICY = '[[rule]]\nmetric = "sar"\nlevel = 50\nmax = 1.0\n'


def _strings(v, where=""):
    """(where, text) of every string in a JSON value, keys included."""
    if isinstance(v, dict):
        for k, x in v.items():
            yield f"{where}.{k} (key)", k
            yield from _strings(x, f"{where}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _strings(x, f"{where}[{i}]")
    elif isinstance(v, str):
        yield where, v


def _machine_folders(*more: Path) -> list[str]:
    """Absolute folders of this machine a report must not name unless the user gave them."""
    folders = {str(Path.home()), str(cache_root()), str(ARTIFACTS.parent.parent), *map(str, more)}
    return sorted(folders | {os.path.realpath(f) for f in folders}, key=len, reverse=True)


def _absolute_mentions(report, folders, allowed=()) -> list[tuple[str, str]]:
    return [(w, s) for w, s in _strings(report) if s not in allowed and any(f in s for f in folders)]


def test_run_report_paths_are_relative_or_as_given(tmp_path, planted, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(planted, project / "model.onnx")
    images = planted_images(8, spread_hu=5.0)
    write_manifest(project / "data", images, (region_means(images, REGION) >= 0).astype(int))
    (project / "audit.toml").write_text(
        '[model]\npath = "model.onnx"\nname = "planted"\n\n[data]\nmanifest = "data/manifest.csv"\n\n'
        '[noise]\nkind = "nps"\nlevels = [50, 200]\ndraws = 4\nseed = 1\nsigma_ref = 30.0\n\n'
        '[report]\nworst = 2\ndicom = true\n\n'
        '[attack]\nname = "square"\neps = 20.0\nqueries = 30\nsamples = 4\nkeep = 0\n')
    policy = tmp_path / "policy.toml"  # given on the command line as an absolute path: written so
    policy.write_text(POLICY)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "project/audit.toml", "--out", "out", "--no-progress", "--policy", str(policy)]) == 0
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())

    engine = report["models"][0]["engine"]
    assert engine["path"] == engine["source"] == "model.onnx", "as the config gave it"
    assert report["data"]["source"] == report["summary"]["data"]["source"] == "data/manifest.csv"
    assert report["summary"]["gate"]["policy"] == str(policy)
    cases = report["models"][0]["worst_cases"]
    assert cases and all(c["dicom"]["folder"].startswith("dicom/") for c in cases)
    assert all((out / c["dicom"]["clean_dir"]).is_dir() for c in cases), "relative to the output folder"
    assert report["attacks"] and report["attacks"][0]["attack"]["name"] == "square"

    folders = _machine_folders(tmp_path)
    assert _absolute_mentions(report, folders, allowed={str(policy)}) == []
    assert _absolute_mentions(json.loads((out / "campaign.json").read_text()), folders) == []
    page = (out / "report.html").read_text()
    assert not any(f in page.replace(str(policy), "") for f in folders)


def test_shipped_model_and_model_cache_are_named_not_spelled_out(tmp_path):
    """The shipped reference model's file as ``<shipped models>/...``; a build folder in the model cache as
    ``<model cache>/...``: the same text on every machine, the file still identified by its sha256."""
    onnx = next((ARTIFACTS / "nodule3d").glob("*.onnx"))
    model = open_path(onnx, "nodule3d")
    source = phantom_source("nodules", 4, 1000)
    noise = NoiseSpec(kind="nps", levels=(100.0,), draws=2, seed=0, sigma_ref=25.0).resolved(source)
    out = tmp_path / "out"
    stats = run_campaign([model], source, noise, out, RunOptions(batch_size=8, progress=False))
    cache = tmp_path / "my-cache"
    build = {"folder": str(cache / "models" / "nodule3d-default-0123456789abcdef"), "recipe_hash": "0" * 64}
    report = write_reports(out, [model], source, noise, stats, build=build, paths=path_style(out, cache=cache))
    assert report["models"][0]["engine"]["path"] == f"<shipped models>/nodule3d/{onnx.name}"
    assert report["models"][0]["engine"]["sha256"]
    assert report["build"]["folder"] == "<model cache>/models/nodule3d-default-0123456789abcdef"
    assert _absolute_mentions(json.loads((out / "report.json").read_text()), _machine_folders(tmp_path)) == []


def test_path_style_rules(tmp_path):
    """Each rule on its own: inside the output folder, inside the output folder's parent output folder, a config's
    relative path, an absolute path given elsewhere, a relative command-line path, free text."""
    out, base = tmp_path / "rt" / "audit", tmp_path / "cfg"
    style = path_style(out, base=base, root=tmp_path / "rt", cache=tmp_path / "cache")
    assert style.show(out / "dicom" / "a") == "dicom/a"
    assert style.show(tmp_path / "rt" / "round1.onnx") == "../round1.onnx"
    assert style.show(base / "../data/m.csv") == "../data/m.csv"
    assert style.show(tmp_path / "cache" / "models" / "x" / "m.onnx") == "<model cache>/models/x/m.onnx"
    assert style.show("/opt/models/m.onnx") == "/opt/models/m.onnx"
    assert style.show("policy.toml") == "policy.toml"
    assert style.text(f"{base / 'm.onnx'}: op Foo; see {out / 'x'}") == "m.onnx: op Foo; see x"
