"""Property-based tests of the input parsers: whatever a user writes, a parser either accepts it or raises one of
the project's errors (``USER_ERRORS``: exit 2 with one line), never another exception (a traceback, exit 3).

Covered: config files (``load_config``, from TOML text built around a valid config with keys and values
spoilt), policies (``load_policy``), manifests (``ManifestSource`` and its first pass), NPS tables
(``read_nps_table``), reports (``load_report``, then the gate on what it accepted) and raw bytes for each.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.campaign.noise import read_nps_table
from audit.config import NOISE_KEYS, load_config
from audit.data import ManifestSource
from audit.errors import USER_ERRORS
from audit.gate import RULE_KEYS, evaluate, load_policy, load_report

from tests.audit.conftest import REGION, SHAPE, planted_images, write_manifest
from tests.audit.planted import planted_model

#: Deterministic (the same examples on every run and machine) and no example database written into the checkout.
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------- TOML text


def _key(k: str) -> str:
    return k if k and all(c.isascii() and (c.isalnum() or c in "-_") for c in k) else _string(k)


def _string(s: str) -> str:
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or c in '"\\\x7f' else c for c in s) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_text(doc: dict[str, Any]) -> str:
    """Every top-level entry as ``key = value`` (tables inline): valid TOML for any document."""
    return "".join(f"{_key(k)} = {toml_value(v)}\n" for k, v in doc.items())


WORDS = ["nps", "gaussian", "uniform", "poisson", "standard", "soft", "sharp", "binary", "multiclass", "regression",
         "onnxruntime", "tensorrt", "torch", "nodules", "bodysite", "pgd", "sigmoid", "none", "add", "reduce", "auto",
         "estimate", "sar", "sar_class", "san_fraction", "cmr_offdiag", "clean_auc", "no_regression", "upper",
         "estimate", "below", "above", "planted", "", " ", "x.onnx", "../x", "/dev/null", "\x00", "é"]
SCALARS = st.one_of(
    st.integers(-5, 300), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(), st.floats(min_value=-2, max_value=1000), st.booleans(),
    st.sampled_from(WORDS), st.text(max_size=12),
    st.datetimes(), st.dates(), st.times(),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                           max_size=3), max_leaves=6)

CONFIG_KEYS = {
    "model": ["path", "name", "engine", "threads", "providers", "optimization", "precision", "max_batch", "device"],
    "head": ["task", "class_names", "threshold", "activation", "output", "rating_edges", "tolerance", "min_dice"],
    "preprocess": ["hu_window", "clip"],
    "data": ["manifest", "phantom", "n", "seed", "spacing", "class_names", "cube", "target_spacing"],
    "noise": list(NOISE_KEYS),
    "run": ["batch_size", "shard_samples", "noise_workers", "prefetch"],
    "report": ["worst", "dicom"],
    "scan_arm": ["source", "mas", "scans", "draws", "seed", "patch_mm", "overlap"],
    "attack": ["name", "eps", "steps", "seed", "batch_size", "keep", "samples", "explain", "space"],
}


@st.composite
def configs(draw) -> dict[str, Any]:
    """A valid config with a few sections, keys or values replaced, added or dropped."""
    doc: dict[str, Any] = {
        "model": {"path": "m.onnx", "name": "m"},
        "data": {"phantom": "nodules", "n": 4},
        "noise": {"kind": "nps", "levels": [50.0, 200.0], "draws": 4, "seed": 1},
        "run": {"batch_size": 8},
    }
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(sorted(CONFIG_KEYS) + ["colour"]))
        action = draw(st.sampled_from(["set", "set", "set", "drop-key", "drop-section", "replace-section"]))
        if action == "drop-section":
            doc.pop(section, None)
        elif action == "replace-section":
            doc[section] = draw(VALUES)
        else:
            table = doc.setdefault(section, {})
            if not isinstance(table, dict):
                continue
            key = draw(st.sampled_from(CONFIG_KEYS.get(section, ["hue"]) + ["typo"]))
            if action == "drop-key":
                table.pop(key, None)
            else:
                table[key] = draw(VALUES)
    return doc


def _accepts_or_user_error(fn, *args: Any) -> Any:
    try:
        return fn(*args)
    except USER_ERRORS:
        return None


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hypo")


@SETTINGS
@given(doc=configs())
def test_config_parses_or_raises_a_user_error(folder, doc):
    path = folder / "config.toml"
    path.write_text(toml_text(doc), encoding="utf-8")
    _accepts_or_user_error(load_config, path)


@SETTINGS
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_config_bytes_parse_or_raise_a_user_error(folder, data):
    path = folder / "raw.toml"
    path.write_bytes(data)
    _accepts_or_user_error(load_config, path)


# ----------------------------------------------------------------------------------------- policies


@st.composite
def policies(draw) -> dict[str, Any]:
    rules = []
    for _ in range(draw(st.integers(0, 3))):
        rule = {"metric": draw(st.sampled_from(["sar", "sar_class", "san_fraction", "cmr_offdiag", "clean_auc",
                                                 "clean_accuracy", "no_regression"]) | VALUES)}
        for key in draw(st.lists(st.sampled_from(sorted(RULE_KEYS) + ["colour"]), max_size=5)):
            rule[key] = draw(st.sampled_from([20, 20.0, 0.5, 1, "below", "upper", "sar", "planted"]) | VALUES)
        rules.append(rule)
    doc: dict[str, Any] = {"rule": draw(st.sampled_from([rules, rules, rules, {"metric": "sar"}]) | VALUES)}
    if draw(st.booleans()) and draw(st.booleans()):
        doc[draw(st.text(max_size=5))] = draw(VALUES)
    return doc


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, Any]:
    """A real report.json (binary planted model, two levels) built without the HTML page."""
    from audit.artifact import AuditedModel
    from audit.artifact.heads import head_from, preprocess_from
    from audit.campaign.noise import NoiseSpec
    from audit.campaign.run import CampaignStats, RunOptions, run_campaign
    from audit.data import ArraySource
    from audit.engines import load_engine
    from audit.report import build_report

    tmp = tmp_path_factory.mktemp("report")
    engine = load_engine(planted_model(tmp / "p.onnx", SHAPE, REGION, 0.0))
    model = AuditedModel("planted", engine, head_from(engine.metadata), preprocess_from(engine.metadata))
    images = planted_images(8, spread_hu=5.0)
    labels = np.array([0, 1] * 4)  # both classes twice at least (the clean-vs-noisy AUC test needs it)
    source = ArraySource(images, (0.5, 0.5), labels)
    noise = NoiseSpec(kind="gaussian", levels=(20.0, 40.0), draws=3, seed=1)
    run_campaign([model], source, noise, tmp / "out", RunOptions(shard_samples=8))
    return json.loads(json.dumps(build_report(tmp / "out", [model], source, noise, CampaignStats().to_dict())))


@SETTINGS
@given(doc=policies())
def test_policy_parses_or_raises_a_user_error(folder, report, doc):
    path = folder / "policy.toml"
    path.write_text(toml_text(doc), encoding="utf-8")
    rules = _accepts_or_user_error(load_policy, path)
    if rules is not None:  # what the parser accepts, the gate can evaluate (or refuse, naming the rule)
        _accepts_or_user_error(evaluate, report, rules, report)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_policy_bytes_parse_or_raise_a_user_error(folder, data):
    path = folder / "raw-policy.toml"
    path.write_bytes(data)
    _accepts_or_user_error(load_policy, path)


# ----------------------------------------------------------------------------------------- reports

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)
GATE_RULES = [{"metric": "sar", "level": 20, "max": 0.5, "bound": "upper"}, {"metric": "san_fraction", "level": 40, "max": 1},
              {"metric": "sar_class", "class": "above", "level": 20, "max": 0.5, "bound": "upper"},
              {"metric": "cmr_offdiag", "level": 40, "max": 0.5}, {"metric": "clean_auc", "min": 0.1},
              {"metric": "clean_accuracy", "min": 0.1}, {"metric": "no_regression", "test": "sar_class"},
              {"metric": "no_regression", "test": "sar", "level": 20}]


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            out += _paths(v, prefix + (i,))
    return out


def spoil(report: dict, data) -> dict:
    """A copy of ``report`` with one to three keys deleted or replaced by arbitrary JSON (drawn from ``data``)."""
    spoilt = json.loads(json.dumps(report))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(spoilt) if p]
        if not paths:
            break
        where = data.draw(st.sampled_from(paths))
        parent = spoilt
        for k in where[:-1]:
            parent = parent[k]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[where[-1]]
        else:
            parent[where[-1]] = data.draw(JSON)
    return spoilt


@SETTINGS
@given(data=st.data())
def test_report_loads_or_raises_a_user_error_and_what_loads_gates(folder, report, data):
    spoilt = spoil(report, data)
    path = folder / "report.json"
    path.write_text(json.dumps(spoilt), encoding="utf-8")
    loaded = _accepts_or_user_error(load_report, path)
    if loaded is not None:
        rules = [dict(r, name=f"rule {i}") for i, r in enumerate(GATE_RULES)]
        for rule in rules:
            _accepts_or_user_error(evaluate, loaded, [rule], report)
            _accepts_or_user_error(evaluate, report, [rule], loaded)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_report_bytes_load_or_raise_a_user_error(folder, data):
    path = folder / "raw-report.json"
    path.write_bytes(data)
    _accepts_or_user_error(load_report, path)


# ----------------------------------------------------------------------------------------- manifests


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Good and bad data files a manifest may name."""
    root = tmp_path_factory.mktemp("files")
    images = planted_images(2, spread_hu=5.0)
    write_manifest(root, images, np.zeros(2, int))  # case000.npz, case001.npz (HU + spacing)
    np.save(root / "good.npy", images[0])
    np.save(root / "nan.npy", np.full(SHAPE, np.nan, np.float32))
    np.save(root / "small.npy", np.zeros((8, 8), np.float32))
    np.save(root / "text.npy", np.full(SHAPE, "a"))
    np.save(root / "cube.npy", np.zeros((4, 4, 4), np.float32))
    (root / "cut.npz").write_bytes((root / "case001.npz").read_bytes()[:500])
    (root / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    (root / "empty").mkdir()
    return root


NAMES = ["case000.npz", "case001.npz", "good.npy", "nan.npy", "small.npy", "text.npy", "cube.npy", "cut.npz", "junk.npy",
         "empty", "missing.npz", "x.txt", "dicomweb:1.2.3", "", " ", "../case000.npz"]
CELL = st.sampled_from(NAMES) | st.sampled_from(["0", "1", "-1", "2", "99999999999999999999", "1.5", "x", ""]) | \
    st.text(max_size=8)
HEADERS = ["path", "label", "id", "x", "y", "z", "i", "j", "k"]


def _csv_cell(s: str) -> str:
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n\r') else s


@st.composite
def manifests(draw) -> str:
    header = draw(st.lists(st.sampled_from(HEADERS) | st.text(max_size=4), min_size=1, max_size=5, unique=True))
    if draw(st.integers(0, 4)):
        header = ["path"] + [h for h in header if h != "path"]
    rows = [[draw(st.sampled_from(NAMES)) if h == "path" and draw(st.integers(0, 3)) else draw(CELL) for h in header]
            for _ in range(draw(st.integers(0, 4)))]
    return "\n".join(",".join(map(_csv_cell, r)) for r in [header, *rows]) + "\n"


def _open_and_read(path: Path, spacing) -> None:
    src = ManifestSource(path, spacing)
    src.preflight()
    src.load(list(range(len(src))))
    src.fingerprint()


@SETTINGS
@given(text=manifests(), spacing=st.none() | st.just((0.5, 0.5)))
def test_manifest_opens_or_raises_a_user_error(files, text, spacing):
    with tempfile.NamedTemporaryFile("w", suffix=".csv", dir=files, delete=False, encoding="utf-8") as fh:
        fh.write(text)
    try:
        _accepts_or_user_error(_open_and_read, Path(fh.name), spacing)
    finally:
        Path(fh.name).unlink()


@SETTINGS
@given(data=st.binary(max_size=200))
def test_manifest_bytes_open_or_raise_a_user_error(files, data):
    path = files / "raw.csv"
    path.write_bytes(data)
    _accepts_or_user_error(_open_and_read, path, (0.5, 0.5))


# ----------------------------------------------------------------------------------------- NPS tables

NUMBER_TEXT = st.floats().map(repr) | st.integers().map(str) | st.sampled_from(["nan", "inf", "-0", "1e999", "", " 1",
                                                                                 "0x10", "1_0"]) | st.text(max_size=5)


@st.composite
def nps_tables(draw) -> str:
    header = draw(st.sampled_from([["freq", "nps"], ["nps", "freq"], ["freq"], ["f", "s"], ["freq", "nps", "x"]]))
    rows = draw(st.lists(st.lists(NUMBER_TEXT, min_size=0, max_size=len(header) + 1), max_size=6))
    if draw(st.booleans()):  # often a plausible table
        f = draw(st.lists(st.floats(0, 2), min_size=2, max_size=6))
        rows = [[repr(a), repr(draw(st.floats(-1, 100)))] for a in f]
    return "\n".join(",".join(map(_csv_cell, r)) for r in [header, *rows]) + "\n"


@SETTINGS
@given(text=nps_tables())
def test_nps_table_reads_or_raises_a_user_error(folder, text):
    path = folder / "nps.csv"
    path.write_text(text, encoding="utf-8")
    table = _accepts_or_user_error(read_nps_table, path)
    if table is not None:
        assert np.all(np.isfinite(table.values)) and np.all(np.diff(table.freq) > 0)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_nps_table_bytes_read_or_raise_a_user_error(folder, data):
    path = folder / "raw-nps.csv"
    path.write_bytes(data)
    _accepts_or_user_error(read_nps_table, path)
