"""Scale-out on a local Ray instance (2 CPUs): same report as one process, and a killed worker loses nothing.

The multi-node cases (a lost node, a node without the project, no shared folder) are in test_ray_cluster.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.config import load_config
from audit.pipelines.run import run_config
from audit.campaign.ray import run_on_ray
from audit.errors import ConfigError, InputError
from tests.audit.conftest import REGION, planted_images, write_config, write_manifest
from tests.audit.planted import region_means

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'ct-robustness-audit[ray]')")

NOISE = 'kind = "nps"\nlevels = [50, 200]\ndraws = 40\nseed = 5\nsigma_ref = 40.0'


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def config(tmp_path, planted):
    images = planted_images(48, spread_hu=6.0, seed=2)
    manifest = write_manifest(tmp_path / "data", images, (region_means(images, REGION) >= 0).astype(int))
    return load_config(write_config(tmp_path / "a.toml", planted, manifest, noise=NOISE, run="batch_size = 64\nshard_samples = 6"))


def _numbers(report):
    r = json.loads(json.dumps(report))
    for key in ("created", "timing"):
        r.pop(key)
    return r


def test_ray_run_matches_single_process(local_ray, config, tmp_path):
    single = run_config(config, tmp_path / "single", progress=False)
    on_ray = run_config(config, tmp_path / "ray", ray="auto")
    assert _numbers(on_ray) == _numbers(single)
    assert single["models"][0]["levels"][0]["SAN"] > 0


def _kill_running_blocks(wait: float = 30.0) -> list[int]:
    """SIGKILL every Ray worker process running a sample block (its process title is ``ray::run_block``), waiting
    until one runs (a new worker process takes seconds to start)."""
    import time

    import psutil

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        killed = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            if (p.info["cmdline"] or [""])[0].startswith("ray::run_block"):
                p.kill()
                killed.append(p.info["pid"])
        if killed:
            return killed
        time.sleep(0.1)
    return []


def test_killed_worker_is_replaced_and_no_record_is_lost_or_duplicated(local_ray, config, tmp_path):
    """Blocks of 6 samples x 400 draws x 2 levels (about a second each here), so some still run when the first is back."""
    import dataclasses

    import pyarrow.parquet as pq

    config = dataclasses.replace(config, noise=dataclasses.replace(config.noise, draws=400))
    killed = []
    stats = run_on_ray(config, tmp_path / "out", on_first_result=lambda pending: killed.extend(_kill_running_blocks()))
    assert killed and stats.retries  # a block was lost with its process, and redone
    assert all(r["error"] == "WorkerCrashedError" and "finished_on" in r for r in stats.retries)
    tables = [pq.read_table(p) for p in (tmp_path / "out" / "records").rglob("shard-*.parquet")]
    keys = [(s, lv, k) for t in tables for s, lv, k in zip(t.column("sample").to_pylist(), t.column("level").to_pylist(),
                                                        t.column("k").to_pylist())]
    assert len(keys) == len(set(keys)) == 48 * 400 * 2
    assert stats.inferences >= 48 * 400 * 2
    assert not list((tmp_path / "out").rglob("*.tmp"))
    assert stats.to_dict()["ray_retries"] == stats.retries


def test_missing_ray_is_explained(monkeypatch):
    import sys

    from audit.errors import USER_ERRORS
    from kernels._xp import optional_import

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(USER_ERRORS, match=r"ct-robustness-audit\[ray\]"):
        optional_import("ray")


def test_relative_out_means_the_drivers_folder(local_ray, config, tmp_path, monkeypatch):
    """A relative --out is resolved on the driver before anything is shipped: the records land beside the
    driver's campaign.json, wherever the actors' working folder is."""
    monkeypatch.chdir(tmp_path)
    stats = run_on_ray(config, Path("rel-out"))
    assert stats.inferences == 48 * 40 * 2
    assert (tmp_path / "rel-out" / "campaign.json").is_file()
    assert len(list((tmp_path / "rel-out" / "records").rglob("shard-*.parquet"))) == 8 * 2


def test_reduce_mode_is_refused_in_one_line(config):
    """Reduce mode measures each scan's own noise from the whole source: not shipped per block, so refused."""
    import dataclasses

    reduce = dataclasses.replace(config, noise=dataclasses.replace(config.noise, mode="reduce", acquired_mas=200.0))
    with pytest.raises(ConfigError, match="not supported with --ray"):
        run_on_ray(reduce, Path("never-written"))
    assert not Path("never-written").exists()


def test_an_address_where_nothing_listens_is_one_line_at_once(config, tmp_path):
    """Ray itself retries an unreachable head for minutes; the driver says so in one line within seconds."""
    import socket
    import time

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(InputError, match=f"nothing answers at 127.0.0.1:{port}"):
        run_on_ray(config, tmp_path / "out", address=f"127.0.0.1:{port}")
    assert time.monotonic() - start < 30 and not (tmp_path / "out").exists()


def test_a_model_with_external_data_is_refused_before_any_work(local_ray, config, tmp_path):
    """Only the model file is shipped to the nodes: external-data files beside it would be missing there."""
    import dataclasses

    import onnx
    import onnx.numpy_helper

    model = onnx.load(config.models[0].path)
    for i, t in enumerate(list(model.graph.initializer)):  # float weights as raw bytes: what external data holds
        if t.data_type == onnx.TensorProto.FLOAT:  # (Slice's int64 bounds stay inline: shape inference reads them)
            model.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), t.name))
    split = tmp_path / "split" / "model.onnx"
    split.parent.mkdir()
    onnx.save_model(model, split, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
                    size_threshold=0)
    entry = dataclasses.replace(config.models[0], path=split)
    with pytest.raises(InputError, match="external-data"):
        run_on_ray(dataclasses.replace(config, models=(entry,)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_detection_on_ray_matches_single_process(local_ray, tmp_path):
    """A detection model's tasks get the samples' reference lesions with their block: same records and report."""
    from tests.audit.test_detection_audit import detector

    model = detector(tmp_path / "det.onnx", spatial=(48, 48, 48))
    path = tmp_path / "det.toml"
    path.write_text(f'[[model]]\npath = "{model}"\nname = "det"\n\n[data]\nphantom = "lesions"\nn = 3\nseed = 3\n\n'
                    '[noise]\nlevels = [10]\ndraws = 2\n\n[run]\nshard_samples = 2\n')
    config = load_config(path)
    single = run_config(config, tmp_path / "single", progress=False)
    on_ray = run_config(config, tmp_path / "ray", ray="auto")
    assert _numbers(on_ray) == _numbers(single)
    assert single["models"][0]["levels"][0]["detection"]["scan_replicates"] == 6
