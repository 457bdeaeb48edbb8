"""Every malformed input exits 2 with one line on stderr, no traceback, and leaves no output behind.

Each case builds one bad input (config, policy, manifest, data file, DICOM, ONNX, NPS table, report or
command-line flag) next to otherwise valid ones and runs ``audit.cli.main`` in-process; a few run as a
subprocess. Data are tiny (a planted ONNX model on 48 x 48 images, pydicom's CT_small.dcm), so the whole
file runs in seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from audit.cli import main

from tests.audit.conftest import REGION, SHAPE, planted_images, write_manifest
from tests.audit.planted import planted_model, region_means

NOISE = {"kind": '"gaussian"', "levels": "[20]", "draws": "2", "seed": "1"}
RUN = {"batch_size": "64", "shard_samples": "8"}
BIG = "99999999999999999999999"  # beyond 64-bit integers
GOOD_RULE = {"metric": '"sar"', "level": "20", "max": "0.5"}


def toml(sections: dict[str, dict[str, str] | str]) -> str:
    """TOML text from {section: {key: raw TOML value}}; a str value is written as a top-level key."""
    top = [f"{k} = {v}" for k, v in sections.items() if isinstance(v, str)]
    tables = [f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in body.items() if v is not None)
              for name, body in sections.items() if not isinstance(body, str)]
    return "\n".join(top + tables)


class World:
    """A valid model, data set, config, report and policy; cases spoil one thing at a time."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.model = planted_model(root / "planted.onnx", SHAPE, REGION, threshold_hu=0.0)
        self.images = planted_images(4, spread_hu=5.0)
        self.labels = (region_means(self.images, REGION) >= 0).astype(int)
        self.manifest = write_manifest(root / "data", self.images, self.labels)
        self.config = self.write_config(root / "good.toml")
        self.policy = self.write_policy(root / "good-policy.toml")
        rc = main(["run", str(self.config), "--out", str(root / "good-out"), "--no-progress"])
        assert rc == 0, "the unspoilt world must run"
        self.report = root / "good-out" / "report.json"
        self.report_json = json.loads(self.report.read_text())
        # a 3D planted model fed by whole DICOM series of one 128 x 128 slice (pydicom's CT_small.dcm)
        from pydicom.data import get_testdata_file

        self.ct_file = Path(get_testdata_file("CT_small.dcm"))
        self.mr_file = Path(get_testdata_file("MR_small.dcm"))
        self.model3d = planted_model(root / "planted3d.onnx", (1, 128, 128),
                                     (slice(0, 1), slice(32, 96), slice(32, 96)), threshold_hu=0.0)

    # -- builders
    def sections(self, **over: dict[str, str | None] | str | None) -> dict[str, Any]:
        s: dict[str, Any] = {"model": {"path": f'"{self.model}"', "name": '"planted"'},
                             "data": {"manifest": f'"{self.manifest}"'}, "noise": dict(NOISE), "run": dict(RUN)}
        for name, body in over.items():
            if body is None:
                s.pop(name, None)
            elif isinstance(body, str):
                s[name] = body
            else:
                s.setdefault(name, {}).update(body)
        return s

    def write_config(self, path: Path, extra: str = "", **over: Any) -> Path:
        path.write_text(toml(self.sections(**over)) + "\n" + extra)
        return path

    def write_policy(self, path: Path, *rules: dict[str, str], text: str | None = None) -> Path:
        if text is None:
            text = "\n".join("[[rule]]\n" + "".join(f"{k} = {v}\n" for k, v in r.items()) for r in (rules or [GOOD_RULE]))
        path.write_text(text)
        return path

    def write_report(self, path: Path, edit: Callable[[dict], Any]) -> Path:
        report = json.loads(json.dumps(self.report_json))
        edit(report)
        path.write_text(json.dumps(report))
        return path

    def dicom_folder(self, path: Path, src: Path | None = None, *, truncate: int | None = None) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        data = (src or self.ct_file).read_bytes()
        (path / "slice.dcm").write_bytes(data if truncate is None else data[:truncate])
        return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("world"))


# ----------------------------------------------------------------------------------------- helpers for cases


def run(w: World, tmp: Path, extra: str = "", **over: Any) -> list[str]:
    """``audit run`` of a config spoilt by ``over`` (section -> {key: raw value}, None drops a section)."""
    return ["run", str(w.write_config(tmp / "bad.toml", extra, **over)), "--out", str(tmp / "out"), "--no-progress"]


def run_text(tmp: Path, text: str | bytes) -> list[str]:
    path = tmp / "bad.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["run", str(path), "--out", str(tmp / "out"), "--no-progress"]


def with_manifest(w: World, tmp: Path, text: str | bytes, *, model: Path | None = None, data: dict | None = None) -> list[str]:
    """A run whose manifest (in ``tmp``, paths relative to it) is ``text``."""
    path = tmp / "manifest.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    over: dict[str, Any] = {"data": {"manifest": f'"{path}"', **(data or {})}}
    if model is not None:
        over["model"] = {"path": f'"{model}"'}
    return run(w, tmp, **over)


def arrays(w: World, tmp: Path, *spoil: tuple[int, Any], suffix: str = ".npz") -> list[str]:
    """A manifest of the four good images with row ``i`` replaced by ``value`` (an array, or bytes written as is)."""
    rows = ["path,label"]
    for i, img in enumerate(w.images):
        name = f"img{i}{suffix}"
        value = dict(spoil).get(i, img)
        if isinstance(value, bytes):
            (tmp / name).write_bytes(value)
        elif suffix == ".npy":
            np.save(tmp / name, value, allow_pickle=True)
        else:
            np.savez(tmp / name, hu=value, spacing=np.array([0.5, 0.5]))
        rows.append(f"{name},{w.labels[i]}")
    return with_manifest(w, tmp, "\n".join(rows) + "\n", data={"spacing": "[0.5, 0.5]"} if suffix == ".npy" else None)


def npz_bytes(tmp: Path, **arrays_: Any) -> bytes:
    np.savez(tmp / "x.npz", **arrays_)
    return (tmp / "x.npz").read_bytes()


def dicom_rows(w: World, tmp: Path, *folders: Path) -> list[str]:
    rows = ["path,label"] + [f"{f.name},0" for f in folders]
    return with_manifest(w, tmp, "\n".join(rows) + "\n", model=w.model3d)


def nps(w: World, tmp: Path, text: str | bytes) -> list[str]:
    path = tmp / "nps.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    noise = {"kind": '"nps"', "levels": "[50]", "draws": "2", "table": f'"{path}"', "mas_ref": "100.0"}
    return run(w, tmp, noise=noise)


def gate(w: World, tmp: Path, *rules: dict[str, str], text: str | bytes | None = None, report: Path | None = None,
         baseline: Path | None = None) -> list[str]:
    path = tmp / "policy.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        w.write_policy(path, *rules, text=text)
    argv = ["gate", str(report or w.report), "--policy", str(path)]
    return argv + (["--baseline", str(baseline)] if baseline is not None else [])


def rule(**over: str | None) -> dict[str, str]:
    r = dict(GOOD_RULE, **over)
    return {k: v for k, v in r.items() if v is not None}


def bad_report(w: World, tmp: Path, edit: Callable[[dict], Any], *rules: dict[str, str]) -> list[str]:
    return gate(w, tmp, *(rules or (GOOD_RULE,)), report=w.write_report(tmp / "report.json", edit))


def level0(r: dict) -> dict:
    return r["models"][0]["levels"][0]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def unrelated_out(w: World, tmp: Path) -> list[str]:
    (tmp / "out").mkdir()
    (tmp / "out" / "thesis.tex").write_text("precious")
    return ["run", str(w.config), "--out", str(tmp / "out"), "--no-progress"]


def attack_on(w: World, tmp: Path, *spoil: tuple[int, Any]) -> list[str]:
    """``audit attack`` on the four good images with row ``i`` spoilt as in ``arrays``."""
    arrays(w, tmp, *spoil)
    config = write(tmp / "attack.toml", (f'[model]\npath = "{w.model}"\n[data]\nmanifest = "{tmp / "manifest.csv"}"\n'
                                         '[attack]\nname = "pgd"\neps = 0.01\nsteps = 2\n').encode())
    return ["attack", str(config), "--out", str(tmp / "out"), "--no-progress"]


def report_cmd(w: World, tmp: Path, edit: Callable[[dict], Any]) -> list[str]:
    """``audit report`` of a folder holding the good report.json spoilt by ``edit``."""
    (tmp / "rendered").mkdir()
    w.write_report(tmp / "rendered" / "report.json", edit)
    return ["report", str(tmp / "rendered")]


def as_regression(r: dict) -> None:
    """The good report as a regression model's: no classes, so no per-class SAR and no CMR."""
    for m in r["models"]:
        m["head"]["task"] = "regression"
        for b in m["levels"]:
            b.pop("per_class", None)
            b.pop("CMR", None)
            b["class_names"] = ["unchanged", "flipped"]


# ----------------------------------------------------------------------------------------- the cases

#: id -> (argv builder, a fragment the one line must hold (or None)).
CASES: dict[str, tuple[Callable[[World, Path], list[str]], str | None]] = {
    # --- config files (audit run)
    "config-missing": (lambda w, t: ["run", str(t / "nope.toml"), "--out", str(t / "out")], "nope.toml"),
    "config-not-utf8": (lambda w, t: run_text(t, b"[model]\npath = \"\xff\xfe.onnx\"\n"), "UTF-8"),
    "config-not-toml": (lambda w, t: run_text(t, "[model\npath = 1"), "TOML"),
    "config-is-folder": (lambda w, t: ["run", str(t), "--out", str(t / "out")], None),
    "config-unknown-section": (lambda w, t: run(w, t, extra="[colour]\nhue = 1\n"), "colour"),
    "report-worst-string": (lambda w, t: run(w, t, report={"worst": '"six"'}), "report.worst"),
    "report-worst-float": (lambda w, t: run(w, t, report={"worst": "1.5"}), "report.worst"),
    "report-worst-negative": (lambda w, t: run(w, t, report={"worst": "-1"}), "report.worst"),
    "report-worst-huge": (lambda w, t: run(w, t, report={"worst": BIG}), "report.worst"),
    "report-dicom-string": (lambda w, t: run(w, t, report={"dicom": '"yes"'}), "report.dicom"),
    "report-unknown-key": (lambda w, t: run(w, t, report={"figures": "3"}), "report.figures"),
    "report-not-table": (lambda w, t: run(w, t, report="3"), "report"),
    "head-threshold-string": (lambda w, t: run(w, t, head={"threshold": '"high"'}), "head.threshold"),
    "head-threshold-list": (lambda w, t: run(w, t, head={"threshold": "[0.5]"}), "head.threshold"),
    "head-class-names-string": (lambda w, t: run(w, t, head={"class_names": '"ab"'}), "head.class_names"),
    "head-multiclass-on-one-output": (lambda w, t: run(w, t, head={"task": '"multiclass"',
                                                                  "class_names": '["a", "b", "c"]'}), "class names"),
    "head-rating-edges-string": (lambda w, t: run(w, t, head={"rating_edges": '"x"'}), "head.rating_edges"),
    "head-task-int": (lambda w, t: run(w, t, head={"task": "3"}), "head.task"),
    "head-task-unknown": (lambda w, t: run(w, t, head={"task": '"poetry"'}), "head.task"),
    "head-output-unknown": (lambda w, t: run(w, t, head={"output": '"logits_v2"'}), "logits_v2"),
    "head-activation-int": (lambda w, t: run(w, t, head={"activation": "1"}), "head.activation"),
    "head-tolerance-string": (lambda w, t: run(w, t, head={"tolerance": '"0.1"'}), "head.tolerance"),
    "preprocess-window-string": (lambda w, t: run(w, t, preprocess={"hu_window": '"wide"'}), "preprocess.hu_window"),
    "preprocess-window-reversed": (lambda w, t: run(w, t, preprocess={"hu_window": "[400, -1000]"}), "hu_window"),
    "preprocess-window-mixed": (lambda w, t: run(w, t, preprocess={"hu_window": '[1, "a"]'}), "hu_window"),
    "preprocess-clip-int": (lambda w, t: run(w, t, preprocess={"clip": "1"}), "preprocess.clip"),
    "model-path-int": (lambda w, t: run(w, t, model={"path": "3"}), "model.path"),
    "model-path-missing-key": (lambda w, t: run(w, t, model={"path": None}), "model.path"),
    "model-threads-string": (lambda w, t: run(w, t, model={"threads": '"many"'}), "model.threads"),
    "model-threads-huge": (lambda w, t: run(w, t, model={"threads": BIG}), "model.threads"),
    "model-providers-string": (lambda w, t: run(w, t, model={"providers": '"CPU"'}), "model.providers"),
    "model-providers-unknown": (lambda w, t: run(w, t, model={"providers": '["QuantumExecutionProvider"]'}), None),
    "model-engine-unknown": (lambda w, t: run(w, t, model={"engine": '"abacus"'}), "model.engine"),
    "model-name-int": (lambda w, t: run(w, t, model={"name": "7"}), "model.name"),
    "model-not-table": (lambda w, t: run(w, t, model="3"), "model"),
    "model-list-of-ints": (lambda w, t: run(w, t, model="[1, 2]"), "model"),
    "model-empty-list": (lambda w, t: run(w, t, model="[]"), "model"),
    "model-section-missing": (lambda w, t: run(w, t, model=None), "model"),
    "onnx-missing-file": (lambda w, t: run(w, t, model={"path": f'"{t / "gone.onnx"}"'}), "gone.onnx"),
    "onnx-garbage": (lambda w, t: run(w, t, model={"path": f'"{write(t / "g.onnx", b"not an onnx model at all" * 9)}"'}),
                     "g.onnx"),
    "onnx-empty": (lambda w, t: run(w, t, model={"path": f'"{write(t / "e.onnx", b"")}"'}), "e.onnx"),
    "onnx-truncated": (lambda w, t: run(w, t, model={"path": f'"{write(t / "tr.onnx", w.model.read_bytes()[:200])}"'}),
                       "tr.onnx"),
    "onnx-is-folder": (lambda w, t: run(w, t, model={"path": f'"{t}"'}), None),
    "onnx-wrong-input-shape": (lambda w, t: run(w, t, model={"path": f'"{w.model3d}"'}), None),
    "data-manifest-int": (lambda w, t: run(w, t, data={"manifest": "5"}), "data.manifest"),
    "data-spacing-string": (lambda w, t: run(w, t, data={"spacing": '"1"'}), "data.spacing"),
    "data-spacing-wrong-length": (lambda w, t: run(w, t, data={"spacing": "[1.0, 1.0, 1.0]"}), "spacing"),
    "data-n-string": (lambda w, t: run(w, t, data={"manifest": None, "phantom": '"nodules"', "n": '"ten"'}), "data.n"),
    "data-class-names-int": (lambda w, t: run(w, t, data={"class_names": "1"}), "data.class_names"),
    "data-cube-float": (lambda w, t: run(w, t, data={"cube": "1.5"}), "data.cube"),
    "data-both-sources": (lambda w, t: run(w, t, data={"phantom": '"nodules"'}), "data"),
    "data-phantom-unknown": (lambda w, t: run(w, t, data={"manifest": None, "phantom": '"zebra"'}), "data.phantom"),
    "noise-draws-huge": (lambda w, t: run(w, t, noise={"draws": BIG}), "noise.draws"),
    "noise-draws-zero": (lambda w, t: run(w, t, noise={"draws": "0"}), "noise.draws"),
    "noise-draws-string": (lambda w, t: run(w, t, noise={"draws": '"8"'}), "noise.draws"),
    "noise-levels-empty": (lambda w, t: run(w, t, noise={"levels": "[]"}), "noise.levels"),
    "noise-levels-strings": (lambda w, t: run(w, t, noise={"levels": '["a"]'}), "noise.levels"),
    "noise-levels-negative": (lambda w, t: run(w, t, noise={"levels": "[-5]"}), "noise.levels"),
    "noise-kind-unknown": (lambda w, t: run(w, t, noise={"kind": '"pink"'}), "noise.kind"),
    "noise-seed-negative": (lambda w, t: run(w, t, noise={"seed": "-1"}), "noise.seed"),
    "noise-seed-huge": (lambda w, t: run(w, t, noise={"seed": BIG}), "noise.seed"),
    "noise-sigma-string": (lambda w, t: run(w, t, noise={"kind": '"nps"', "sigma_ref": '"x"'}), "noise.sigma_ref"),
    "noise-preset-unknown": (lambda w, t: run(w, t, noise={"kind": '"nps"', "levels": "[50]", "preset": '"neon"'}), "neon"),
    "noise-electronic-above-one": (lambda w, t: run(w, t, noise={"kind": '"nps"', "levels": "[50]",
                                                                 "electronic_fraction": "2.0"}), "electronic"),
    "noise-z-fwhm-negative": (lambda w, t: run(w, t, noise={"z_fwhm_mm": "-1"}), "noise.z_fwhm_mm"),
    "noise-method-unknown": (lambda w, t: run(w, t, noise={"kind": '"nps"', "levels": "[50]", "method": '"magic"'}),
                             "magic"),
    "noise-unknown-key": (lambda w, t: run(w, t, noise={"colour": '"pink"'}), "noise.colour"),
    "run-batch-string": (lambda w, t: run(w, t, run={"batch_size": '"x"'}), "run.batch_size"),
    "run-batch-zero": (lambda w, t: run(w, t, run={"batch_size": "0"}), "run.batch_size"),
    "run-shard-float": (lambda w, t: run(w, t, run={"shard_samples": "1e3"}), "run.shard_samples"),
    "run-prefetch-huge": (lambda w, t: run(w, t, run={"prefetch": BIG}), "run.prefetch"),
    "scan-arm-mas-string": (lambda w, t: run(w, t, scan_arm={"mas": '"x"'}), "scan_arm.mas"),
    "attack-name-unknown": (lambda w, t: run(w, t, attack={"name": '"telepathy"'}), "telepathy"),
    "attack-eps-string": (lambda w, t: run(w, t, attack={"name": '"pgd"', "eps": '"x"'}), "eps"),

    # --- NPS tables ([noise] table = ...)
    "nps-missing": (lambda w, t: run(w, t, noise={"kind": '"nps"', "levels": "[50]", "table": f'"{t / "no.csv"}"'}),
                    "no.csv"),
    "nps-not-utf8": (lambda w, t: nps(w, t, b"freq,nps\n0.1,\xff\n0.2,3\n"), "nps.csv"),
    "nps-wrong-header": (lambda w, t: nps(w, t, "f,s\n0.1,2\n0.2,3\n"), "nps.csv"),
    "nps-non-numeric": (lambda w, t: nps(w, t, "freq,nps\n0.1,two\n0.2,3\n"), "nps.csv"),
    "nps-one-row": (lambda w, t: nps(w, t, "freq,nps\n0.1,2\n"), "nps.csv"),
    "nps-empty": (lambda w, t: nps(w, t, ""), "nps.csv"),
    "nps-negative": (lambda w, t: nps(w, t, "freq,nps\n0.1,-2\n0.2,3\n0.3,1\n"), "nps.csv"),
    "nps-decreasing-freq": (lambda w, t: nps(w, t, "freq,nps\n0.3,2\n0.2,3\n0.1,1\n"), "nps.csv"),
    "nps-nan": (lambda w, t: nps(w, t, "freq,nps\n0.1,nan\n0.2,3\n0.3,1\n"), "nps.csv"),
    "nps-inf": (lambda w, t: nps(w, t, "freq,nps\n0.1,2\n0.2,inf\n0.3,1\n"), "nps.csv"),
    "nps-all-zero": (lambda w, t: nps(w, t, "freq,nps\n0.1,0\n0.2,0\n0.3,0\n"), "nps.csv"),
    "nps-nul-byte": (lambda w, t: nps(w, t, b"freq,nps\n0.1,2\x00\n0.2,3\n"), "nps.csv"),
    "nps-short-row": (lambda w, t: nps(w, t, "freq,nps\n0.1\n0.2,3\n0.3,1\n"), "nps.csv"),
    "nps-is-folder": (lambda w, t: run(w, t, noise={"kind": '"nps"', "levels": "[50]", "table": f'"{t}"'}), None),
    "nps-noise-check-table": (lambda w, t: ["noise", "check", "--table", str(write(t / "nps.csv", b"freq,nps\n1,x\n")),
                                            "--out", str(t / "out" / "c.png")], "nps.csv"),

    # --- manifests
    "manifest-missing": (lambda w, t: run(w, t, data={"manifest": f'"{t / "gone.csv"}"'}), "gone.csv"),
    "manifest-not-utf8": (lambda w, t: with_manifest(w, t, b"path,label\n\xff\xfe.npz,1\n"), "manifest.csv"),
    "manifest-empty": (lambda w, t: with_manifest(w, t, ""), "manifest.csv"),
    "manifest-no-path-column": (lambda w, t: with_manifest(w, t, "file,label\na.npz,1\n"), "path"),
    "manifest-label-word": (lambda w, t: with_manifest(w, t, f"path,label\n{w.root}/data/case000.npz,abc\n"), "label"),
    "manifest-label-float": (lambda w, t: with_manifest(w, t, f"path,label\n{w.root}/data/case000.npz,1.5\n"), "label"),
    "manifest-label-huge": (lambda w, t: with_manifest(w, t, f"path,label\n{w.root}/data/case000.npz,{BIG}\n"), "label"),
    "manifest-label-beyond-classes": (lambda w, t: with_manifest(w, t, f"path,label\n{w.root}/data/case000.npz,7\n"),
                                      "label 7"),
    "manifest-row-file-missing": (lambda w, t: with_manifest(w, t, "path,label\nghost.npz,1\n"), "ghost.npz"),
    "manifest-row-txt": (lambda w, t: with_manifest(w, t, f"path,label\n{write(t / 'a.txt', b'1')},1\n"), "a.txt"),
    "manifest-row-empty-path": (lambda w, t: with_manifest(w, t, "path,label\n,1\n"), None),
    "manifest-nul-byte": (lambda w, t: with_manifest(w, t, b"path,label\ncase\x00.npz,1\n"), "manifest.csv"),
    "manifest-huge-field": (lambda w, t: with_manifest(w, t, "path,label\n" + "a" * 200_000 + ".npz,1\n"),
                            "manifest.csv"),
    "manifest-is-folder": (lambda w, t: run(w, t, data={"manifest": f'"{t}"'}), None),
    "manifest-coordinates-on-array": (lambda w, t: with_manifest(
        w, t, f"path,label,x,y,z\n{w.root}/data/case000.npz,1,1,2,3\n"), "DICOM"),
    "manifest-partial-coordinates": (lambda w, t: with_manifest(
        w, t, f"path,label,x,y\n{w.root}/data/case000.npz,1,1,2\n"), "row 2"),
    "manifest-coordinates-words": (lambda w, t: with_manifest(
        w, t, f"path,label,i,j,k\n{w.root}/data/case000.npz,1,a,b,c\n"), "row 2"),
    "manifest-dicomweb-without-pacs": (lambda w, t: with_manifest(w, t, "path,label\ndicomweb:1.2.3,1\n"), "pacs"),

    # --- data files (.npy, .npz)
    "npy-truncated-first": (lambda w, t: arrays(w, t, (0, b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fo"), suffix=".npy"),
                            "img0.npy"),
    "npy-truncated-later": (lambda w, t: arrays(w, t, (3, b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fo"), suffix=".npy"),
                            "img3.npy"),
    "npy-not-numpy": (lambda w, t: arrays(w, t, (2, b"hello, world"), suffix=".npy"), "img2.npy"),
    "npy-object-dtype": (lambda w, t: arrays(w, t, (1, np.array([{"a": 1}, None], dtype=object)), suffix=".npy"),
                         "img1.npy"),
    "npy-string-dtype-first": (lambda w, t: arrays(w, t, (0, np.full(SHAPE, "ab")), suffix=".npy"), "img0.npy"),
    "npy-rank-1": (lambda w, t: arrays(w, t, (0, np.zeros(48, np.float32)), suffix=".npy"), "img0.npy"),
    "npy-rank-4": (lambda w, t: arrays(w, t, (0, np.zeros((2, 2, 2, 2), np.float32)), suffix=".npy"), "img0.npy"),
    "npy-rank-later": (lambda w, t: arrays(w, t, (2, np.zeros((2, *SHAPE), np.float32)), suffix=".npy"), "img2.npy"),
    "npy-nan-later": (lambda w, t: arrays(w, t, (3, np.where(np.arange(48 * 48).reshape(SHAPE) == 7, np.nan,
                                                            w.images[3]).astype(np.float32)), suffix=".npy"), "img3.npy"),
    "npy-complex-later": (lambda w, t: arrays(w, t, (2, w.images[2].astype(np.complex64)), suffix=".npy"), "img2.npy"),
    "npy-bool-later": (lambda w, t: arrays(w, t, (1, w.images[1] > 0), suffix=".npy"), "img1.npy"),
    "npz-truncated-first": (lambda w, t: arrays(w, t, (0, npz_bytes(t, hu=w.images[0])[:300])), "img0.npz"),
    "npz-truncated-later": (lambda w, t: arrays(w, t, (3, npz_bytes(t, hu=w.images[3])[:-40])), "img3.npz"),
    "npz-truncated-member": (lambda w, t: arrays(w, t, (2, npz_bytes(t, hu=w.images[2])[:1000])), "img2.npz"),
    "npz-no-image-key": (lambda w, t: arrays(w, t, (0, npz_bytes(t, a=w.images[0], b=w.images[0]))), "img0.npz"),
    "npz-spacing-string": (lambda w, t: arrays(w, t, (0, npz_bytes(t, hu=w.images[0], spacing=np.array(["a", "b"])))),
                           "img0.npz"),
    "npz-spacing-wrong-length": (lambda w, t: arrays(w, t, (0, npz_bytes(t, hu=w.images[0], spacing=np.ones(3)))),
                                 "spacing"),
    "npz-spacing-negative": (lambda w, t: arrays(w, t, (0, npz_bytes(t, hu=w.images[0], spacing=-np.ones(2)))),
                             "spacing"),
    "npz-spacing-nan": (lambda w, t: arrays(w, t, (0, npz_bytes(t, hu=w.images[0], spacing=np.array([np.nan, 1.0])))),
                        "spacing"),
    "npz-inf-first": (lambda w, t: arrays(w, t, (0, np.full(SHAPE, np.inf, np.float32))), "img0.npz"),
    "npz-nan-later": (lambda w, t: arrays(w, t, (2, np.full(SHAPE, np.nan, np.float32))), "img2.npz"),
    "npz-shape-later": (lambda w, t: arrays(w, t, (3, np.zeros((40, 40), np.float32))), "img3.npz"),
    "npz-object-member": (lambda w, t: arrays(w, t, (1, npz_bytes(t, hu=np.array([None, 1], dtype=object)))),
                          "img1.npz"),

    # --- DICOM (pydicom's CT_small.dcm, spoilt)
    "dicom-truncated-pixels": (lambda w, t: dicom_rows(w, t, w.dicom_folder(t / "s1", truncate=30000)), "s1"),
    "dicom-truncated-header": (lambda w, t: dicom_rows(w, t, w.dicom_folder(t / "s1", truncate=300)), "s1"),
    "dicom-wrong-modality": (lambda w, t: dicom_rows(w, t, w.dicom_folder(t / "s1", w.mr_file)), "Modality"),
    "dicom-empty-folder": (lambda w, t: dicom_rows(w, t, w.dicom_folder(t / "s1", truncate=0)), "s1"),
    "dicom-not-dicom": (lambda w, t: dicom_rows(w, t, w.dicom_folder(t / "s1", write(t / "readme", b"hello"))), "s1"),
    "dicom-truncated-later-row": (lambda w, t: dicom_rows(w, t, w.dicom_folder(t / "s1"), w.dicom_folder(t / "s2"),
                                                          w.dicom_folder(t / "s3", truncate=30000)), "s3"),
    "dicom-modality-later-row": (lambda w, t: dicom_rows(w, t, w.dicom_folder(t / "s1"),
                                                         w.dicom_folder(t / "s2", w.mr_file)), "s2"),

    # --- policies (audit gate)
    "policy-missing": (lambda w, t: ["gate", str(w.report), "--policy", str(t / "none.toml")], "none.toml"),
    "policy-not-utf8": (lambda w, t: gate(w, t, text=b"[[rule]]\nmetric = \"\xff\"\n"), "UTF-8"),
    "policy-not-toml": (lambda w, t: gate(w, t, text="[[rule]\nmetric="), "TOML"),
    "policy-no-rules": (lambda w, t: gate(w, t, text=""), "rule"),
    "policy-rule-int": (lambda w, t: gate(w, t, text="rule = 3\n"), "rule"),
    "policy-rule-string": (lambda w, t: gate(w, t, text='rule = "sar"\n'), "rule"),
    "policy-rule-list-of-ints": (lambda w, t: gate(w, t, text="rule = [1, 2]\n"), "rule"),
    "policy-rule-single-table": (lambda w, t: gate(w, t, text='[rule]\nmetric = "sar"\nlevel = 20\nmax = 0.5\n'), "rule"),
    "policy-extra-section": (lambda w, t: gate(w, t, text='[[rule]]\nmetric = "sar"\nlevel = 20\nmax = 0.5\n[x]\n'), "x"),
    "policy-level-string": (lambda w, t: gate(w, t, rule(level='"20"')), "level"),
    "policy-level-bool": (lambda w, t: gate(w, t, rule(level="true")), "level"),
    "policy-level-list": (lambda w, t: gate(w, t, rule(level="[20]")), "level"),
    "policy-level-absent-in-report": (lambda w, t: gate(w, t, rule(level="77")), "77"),
    "policy-max-string": (lambda w, t: gate(w, t, rule(max='"0.5"')), "max"),
    "policy-max-bool": (lambda w, t: gate(w, t, rule(max="true")), "max"),
    "policy-max-nan": (lambda w, t: gate(w, t, rule(max="nan")), "max"),
    "policy-min-string": (lambda w, t: gate(w, t, {"metric": '"clean_auc"', "min": '"x"'}), "min"),
    "policy-metric-unknown": (lambda w, t: gate(w, t, rule(metric='"sparkle"')), "sparkle"),
    "policy-metric-int": (lambda w, t: gate(w, t, rule(metric="3")), "metric"),
    "policy-metric-missing": (lambda w, t: gate(w, t, rule(metric=None)), "metric"),
    "policy-class-missing": (lambda w, t: gate(w, t, rule(metric='"sar_class"')), "class"),
    "policy-class-list": (lambda w, t: gate(w, t, rule(metric='"sar_class"', **{"class": "[1]"})), "class"),
    "policy-class-unknown": (lambda w, t: gate(w, t, rule(metric='"sar_class"', **{"class": '"dragon"'})), "dragon"),
    "policy-bound-unknown": (lambda w, t: gate(w, t, rule(bound='"lower"')), "bound"),
    "policy-name-int": (lambda w, t: gate(w, t, rule(name="3")), "name"),
    "policy-model-int": (lambda w, t: gate(w, t, rule(model="3")), "model"),
    "policy-model-unknown": (lambda w, t: gate(w, t, rule(model='"ghost"')), "ghost"),
    "policy-unknown-key": (lambda w, t: gate(w, t, rule(colour='"red"')), "colour"),
    "policy-alpha-string": (lambda w, t: gate(w, t, {"metric": '"no_regression"', "alpha": '"x"'}, baseline=w.report),
                            "alpha"),
    "policy-alpha-zero": (lambda w, t: gate(w, t, {"metric": '"no_regression"', "alpha": "0"}, baseline=w.report), "alpha"),
    "policy-margin-two": (lambda w, t: gate(w, t, {"metric": '"no_regression"', "margin": "2"}, baseline=w.report),
                          "margin"),
    "policy-test-unknown": (lambda w, t: gate(w, t, {"metric": '"no_regression"', "test": '"vibes"'}, baseline=w.report),
                            "test"),
    "policy-regression-no-baseline": (lambda w, t: gate(w, t, {"metric": '"no_regression"'}), "baseline"),
    "policy-run-bad": (lambda w, t: ["run", str(w.config), "--out", str(t / "out"), "--no-progress", "--policy",
                                     str(w.write_policy(t / "p.toml", rule(level='"20"')))], "level"),

    # --- reports (audit gate)
    "report-missing": (lambda w, t: gate(w, t, report=t / "none.json"), "none.json"),
    "report-not-json": (lambda w, t: gate(w, t, report=write(t / "r.json", b"{not json")), "r.json"),
    "report-not-utf8": (lambda w, t: gate(w, t, report=write(t / "r.json", b'{"schema": "\xff"}')), "r.json"),
    "report-is-list": (lambda w, t: gate(w, t, report=write(t / "r.json", b"[1, 2]")), "r.json"),
    "report-wrong-schema": (lambda w, t: bad_report(w, t, lambda r: r.update(schema="audit-report/0")), "schema"),
    "report-no-models": (lambda w, t: bad_report(w, t, lambda r: r.pop("models")), "models"),
    "report-models-string": (lambda w, t: bad_report(w, t, lambda r: r.update(models="x")), "models"),
    "report-model-no-name": (lambda w, t: bad_report(w, t, lambda r: r["models"][0].pop("name")), "name"),
    "report-model-no-levels": (lambda w, t: bad_report(w, t, lambda r: r["models"][0].pop("levels")), "levels"),
    "report-level-string": (lambda w, t: bad_report(w, t, lambda r: level0(r).update(level="20")), "level"),
    "report-no-san-fraction": (lambda w, t: bad_report(w, t, lambda r: level0(r).pop("SAN_fraction"),
                                                       rule(metric='"san_fraction"')), "SAN_fraction"),
    "report-san-fraction-string": (lambda w, t: bad_report(w, t, lambda r: level0(r).update(SAN_fraction="x"),
                                                           rule(metric='"san_fraction"')), "SAN_fraction"),
    "report-no-sar": (lambda w, t: bad_report(w, t, lambda r: level0(r).pop("SAR_overall")), "SAR_overall"),
    "report-no-per-class": (lambda w, t: bad_report(w, t, lambda r: level0(r).pop("per_class"),
                                                    rule(metric='"sar_class"', **{"class": '"below"'})), "per_class"),
    "report-no-clean": (lambda w, t: bad_report(w, t, lambda r: r["models"][0].pop("clean"),
                                                {"metric": '"clean_auc"', "min": "0.5"}), "clean"),
    "report-cmr-malformed": (lambda w, t: bad_report(w, t, lambda r: level0(r).update(CMR={"matrix": 3}),
                                                     rule(metric='"cmr_offdiag"')), "CMR"),
    "report-is-folder": (lambda w, t: gate(w, t, report=t), None),
    "baseline-no-per-sample": (lambda w, t: gate(w, t, {"metric": '"no_regression"'}, baseline=w.write_report(
        t / "base.json", lambda r: level0(r).pop("per_sample"))), "per_sample"),
    "baseline-wrong-schema": (lambda w, t: gate(w, t, {"metric": '"no_regression"'}, baseline=write(
        t / "base.json", b'{"schema": "x"}')), "base.json"),

    "gate-sar-class-on-regression": (lambda w, t: gate(w, t, rule(metric='"sar_class"', name='"per-class"',
                                                                  **{"class": '"flipped"'}),
                                                       report=w.write_report(t / "r.json", as_regression)), "per-class"),

    # --- reports (audit report OUT: read back with types before the page is rendered)
    "report-cmd-no-san": (lambda w, t: report_cmd(w, t, lambda r: level0(r).pop("SAN")), "levels[0].SAN"),
    "report-cmd-level-string": (lambda w, t: report_cmd(w, t, lambda r: level0(r).update(level="20")), "levels[0].level"),
    "report-cmd-no-worst-cases": (lambda w, t: report_cmd(w, t, lambda r: r["models"][0].pop("worst_cases")),
                                  "worst_cases"),
    "report-cmd-noise-garbage": (lambda w, t: report_cmd(w, t, lambda r: r.update(noise=[1, 2])), "noise"),
    "report-cmd-exceedance-garbage": (lambda w, t: report_cmd(w, t, lambda r: level0(r)["exceedance"].update(
        fraction="most")), "exceedance.fraction"),
    "report-cmd-summary-per-level-garbage": (lambda w, t: report_cmd(w, t, lambda r: r["summary"]["models"][0].update(
        per_level={"SAN": 1})), "summary.models[0].per_level"),
    "report-cmd-wrong-schema": (lambda w, t: report_cmd(w, t, lambda r: r.update(schema="audit-report/9")), "schema"),

    # --- audit attack: the same first pass over the data as audit run, before anything is written
    "attack-npz-nan-later": (lambda w, t: attack_on(w, t, (3, np.where(np.arange(48 * 48).reshape(SHAPE) == 7, np.nan,
                                                                       w.images[3]).astype(np.float32))), "img3.npz"),
    "attack-npz-shape-later": (lambda w, t: attack_on(w, t, (2, np.zeros((40, 40), np.float32))), "img2.npz"),
    "attack-npz-truncated-later": (lambda w, t: attack_on(w, t, (3, npz_bytes(t, hu=w.images[3])[:100])), "img3.npz"),

    # --- run size: refused above the limit unless --yes; draws beyond the records' int32 k refused even then
    "cli-run-above-max-inferences": (lambda w, t: run(w, t) + ["--max-inferences", "5"], "--yes"),
    "cli-max-inferences-zero": (lambda w, t: run(w, t) + ["--max-inferences", "0"], "--max-inferences"),
    "config-draws-huge-needs-yes": (lambda w, t: run(w, t, noise={"draws": "1000000000"}), "--yes"),
    "config-draws-beyond-int32-with-yes": (lambda w, t: run(w, t, noise={"draws": str(2**40)}) + ["--yes"],
                                           "noise.draws"),

    # --- command-line flags
    "cli-unknown-command": (lambda w, t: ["frobnicate"], "frobnicate"),
    "cli-no-command": (lambda w, t: [], None),
    "cli-unknown-flag": (lambda w, t: ["run", str(w.config), "--turbo"], "--turbo"),
    "cli-run-no-config": (lambda w, t: ["run"], "config"),
    "cli-ray-actors-word": (lambda w, t: ["run", str(w.config), "--ray-actors", "many"], "--ray-actors"),
    "cli-ray-gpus-word": (lambda w, t: ["run", str(w.config), "--ray-gpus", "x"], "--ray-gpus"),
    "cli-gate-no-policy": (lambda w, t: ["gate", str(w.report)], "--policy"),
    "cli-fast-gate-rounds-zero": (lambda w, t: ["fast-gate", str(w.config), "--policy", str(w.policy), "--rounds", "0",
                                                "--out", str(t / "out")], "--rounds"),
    "cli-fast-gate-error-two": (lambda w, t: ["fast-gate", str(w.config), "--policy", str(w.policy), "--error", "2",
                                              "--out", str(t / "out")], "--error"),
    "cli-noise-size-tiny": (lambda w, t: ["noise", "check", "--size", "4", "--out", str(t / "out" / "c.png")], "--size"),
    "cli-noise-preset-unknown": (lambda w, t: ["noise", "check", "--preset", "neon"], "neon"),
    "cli-noise-spacing-zero": (lambda w, t: ["noise", "check", "--spacing", "0", "--size", "16", "--draws", "10",
                                             "--out", str(t / "out" / "c.png")], "spacing"),
    "cli-noise-mas-negative": (lambda w, t: ["noise", "check", "--mas", "-5", "--size", "16", "--draws", "10",
                                             "--out", str(t / "out" / "c.png")], "mas"),
    "cli-noise-sigma-nan": (lambda w, t: ["noise", "check", "--sigma", "nan", "--size", "16", "--draws", "10",
                                          "--out", str(t / "out" / "c.png")], "sigma"),
    "cli-noise-no-subcommand": (lambda w, t: ["noise"], None),
    "cli-models-build-no-name": (lambda w, t: ["models", "build", "--out", str(t / "out")], None),
    "cli-report-no-report": (lambda w, t: ["report", str(t)], "report.json"),
    "cli-out-is-file": (lambda w, t: ["run", str(w.config), "--out", str(write(t / "out", b"x")), "--no-progress"], "out"),
    "cli-out-unrelated-folder": (unrelated_out, "out"),
    "cli-out-earlier-run": (lambda w, t: ["run", str(w.config), "--out", str(w.root / "good-out"), "--no-progress"],
                            "earlier run"),
    "cli-resume-different-campaign": (lambda w, t: ["run", str(w.write_config(t / "c.toml", noise={"draws": "3"})),
                                                    "--out", str(w.root / "good-out"), "--resume", "--no-progress"],
                                      "different campaign"),

    # --- attack and retrain configs
    "attack-config-not-utf8": (lambda w, t: ["attack", str(write(t / "a.toml", b"\xff\xfe")), "--out", str(t / "out")],
                               "UTF-8"),
    "attack-config-checkpoint-without-net": (lambda w, t: ["attack", str(write(t / "a.toml", (
        f'[model]\npath = "{w.model}"\ncheckpoint = "c.pt"\n[data]\nmanifest = "{w.manifest}"\n[attack]\nname = "pgd"\n'
    ).encode())), "--out", str(t / "out")], "model.net"),
    "retrain-config-rounds-string": (lambda w, t: ["retrain", str(write(t / "r.toml", b'[retrain]\nrounds = "x"\n')),
                                                   "--out", str(t / "out")], "retrain.rounds"),
}


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"/" for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_no_output(case, world, tmp_path, capsys):
    build, fragment = CASES[case]
    argv = build(world, tmp_path)
    outs = [Path(argv[i + 1]) for i, a in enumerate(argv) if a == "--out"]
    before = {o: _snapshot(o) for o in outs}
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip("\n").split("\n")
    assert rc == 2, f"exit {rc}; stderr:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("audit"), f"expected one line, got:\n{err}"
    assert "Traceback" not in err and "internal error" not in err
    if fragment is not None:
        assert fragment.lower() in lines[0].lower(), lines[0]
    for o, snap in before.items():  # no output folder (or the one given, untouched)
        assert _snapshot(o) == snap, f"{o} changed"


def test_at_least_60_malformed_inputs():
    assert len(CASES) >= 60


# ----------------------------------------------------------------------------------------- fixed input, resumed


def test_bad_later_row_leaves_nothing_and_a_fixed_manifest_runs(world, tmp_path, capsys):
    """The first pass finds the NaN in the last row before campaign.json exists; fixed, the same --out runs."""
    bad = world.images.copy()
    bad[-1, 0, 0] = np.nan
    manifest = write_manifest(tmp_path / "data", bad, world.labels)
    config = world.write_config(tmp_path / "a.toml", data={"manifest": f'"{manifest}"'})
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "case003.npz" in err and "row 5" in err and not out.exists()
    write_manifest(tmp_path / "data", world.images, world.labels)
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0
    assert (out / "report.json").is_file()


# ----------------------------------------------------------------------------------------- exit 3 and --debug


def test_internal_error_is_one_line_exit_3_and_debug_shows_the_traceback(world, monkeypatch, capsys):
    import audit.commands.gate as gate_cmd

    def broken(*args, **kwargs):
        raise RuntimeError("wires\ncrossed")

    monkeypatch.setattr(gate_cmd, "evaluate", broken)
    argv = ["gate", str(world.report), "--policy", str(world.policy)]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert err.strip() == "audit gate: internal error: RuntimeError: wires crossed"
    assert main(["--debug", *argv]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "audit gate: internal error: RuntimeError: wires crossed"


def test_debug_shows_the_traceback_of_a_user_error(world, tmp_path, capsys):
    assert main(["--debug", "gate", str(world.report), "--policy", str(tmp_path / "none.toml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("audit: error:")


# ----------------------------------------------------------------------------------------- the real process


def _audit(*args: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audit", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("case", ["config-not-utf8", "cli-unknown-flag", "policy-level-string", "npz-truncated-later"])
def test_bad_input_in_a_subprocess(case, world, tmp_path):
    argv = CASES[case][0](world, tmp_path)
    proc = _audit(*argv)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_out_of_an_earlier_interrupted_run_without_marker_is_ours(world, tmp_path, capsys):
    """A folder holding only temp files the tool left (killed before campaign.json landed) is not refused."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".campaign.json.abc123.tmp").write_text("{")
    assert main(["run", str(world.config), "--out", str(out), "--no-progress"]) == 0
    assert not (out / ".campaign.json.abc123.tmp").exists()
    shutil.rmtree(out)


# ----------------------------------------------------------------------------------------- run size, DeLong, audit report


def test_run_size_is_printed_and_yes_runs_above_the_limit(world, tmp_path, capsys):
    """The size line comes before the campaign; above --max-inferences only --yes runs it (the refusal is a case)."""
    out = tmp_path / "out"
    assert main(["run", str(world.config), "--out", str(out), "--no-progress", "--max-inferences", "5", "--yes"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    n, levels, k = len(world.images), 1, int(NOISE["draws"])
    assert first.startswith("run size:") and f"= {n * levels * (k + 1)} inferences" in first, first
    assert (out / "report.json").is_file()


def test_one_sample_of_a_class_completes_with_delong_marked_not_computable(world, tmp_path, capsys):
    """DeLong needs 2 cases per class: with one positive the audit still completes, the AUCs are there and the test
    says why it has no z and p; the gate and audit report read that report."""
    labels = np.array([1, 0, 0, 0])
    manifest = write_manifest(tmp_path / "data", world.images, labels)
    config = world.write_config(tmp_path / "one.toml", data={"manifest": f'"{manifest}"'})
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    auc = report["models"][0]["levels"][0]["auc"]
    assert auc["z"] is None and auc["p_value"] is None and "2 cases of each class" in auc["note"], auc
    assert 0.0 <= auc["clean"] <= 1.0 and report["models"][0]["clean"]["n_positive"] == 1
    assert main(["gate", str(out / "report.json"), "--policy", str(world.policy)]) in (0, 1)
    assert main(["report", str(out)]) == 0


def test_report_command_refuses_a_spoilt_report_before_writing(world, tmp_path, capsys):
    argv = report_cmd(world, tmp_path, lambda r: level0(r)["per_class"].update(SAR="high"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "report.json" in err and "levels[0].per_class.SAR" in err, err
    assert not (tmp_path / "rendered" / "report.html").exists()
    shutil.copy(world.report, tmp_path / "rendered" / "report.json")  # the good report renders
    assert main(argv) == 0 and (tmp_path / "rendered" / "report.html").is_file()
