"""Scale-out on a local Ray instance (2 CPUs): same report as one process, and a killed actor loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.config import load_config
from audit.pipelines.run import run_config
from audit.campaign.ray import _open, run_on_ray
from audit.campaign.run import RunOptions, run_campaign
from audit.errors import InputError
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


def test_killed_actor_is_restarted_and_no_record_is_lost_or_duplicated(local_ray, config, tmp_path):
    import pyarrow.parquet as pq

    killed = []

    def chaos(workers):
        ray.kill(workers[0], no_restart=False)  # Ray restarts it and retries its block
        killed.append(True)

    stats = run_on_ray(config, tmp_path / "out", on_first_result=chaos)
    assert killed
    tables = [pq.read_table(p) for p in (tmp_path / "out" / "records").rglob("shard-*.parquet")]
    keys = [(s, lv, k) for t in tables for s, lv, k in zip(t.column("sample").to_pylist(), t.column("level").to_pylist(),
                                                        t.column("k").to_pylist())]
    assert len(keys) == len(set(keys)) == 48 * 40 * 2
    assert stats.inferences >= 48 * 40 * 2 - 6 * 40 * 2  # the killed block may have been redone, not skipped
    assert not list((tmp_path / "out").rglob("*.tmp"))


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


def test_a_worker_that_cannot_see_the_store_never_creates_one(tmp_path, planted, config):
    """What an actor without the shared folder meets: one line naming the cause, and no store of its own."""
    models, source = _open(config)
    with pytest.raises(InputError, match="does not see the driver's output folder"):
        run_campaign(models, source, config.noise, tmp_path / "elsewhere", RunOptions(shard_samples=6), resume=True,
                     blocks=[0], create_store=False)
    assert not (tmp_path / "elsewhere").exists()
