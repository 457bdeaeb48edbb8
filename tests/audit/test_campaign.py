"""The campaign end to end on a planted model whose flip probability is known in closed form."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.stats import norm

import audit.campaign.run as campaign_run
from audit.artifact import AuditedModel
from audit.campaign import records
from audit.campaign.run import RunOptions, run_campaign
from audit.cli import main
from audit.config import parse_config
from audit.io import is_temp
from audit.data import ArraySource
from audit.engines import load_engine
from audit.artifact.heads import head_from, preprocess_from
from audit.campaign.noise import NoiseSpec
from audit.report import check_report
from audit.pipelines.run import write_reports
from tests.audit.conftest import REGION, SHAPE, SPACING, planted_images, write_config, write_manifest
from tests.audit.planted import region_means

Z99 = 2.576


def _open(path, **options):
    engine = load_engine(path, **options)
    return AuditedModel("planted", engine, head_from(engine.metadata), preprocess_from(engine.metadata))


def _region_mean_sigma(noise: NoiseSpec, level: float) -> float:
    """Exact sigma of the region mean of NPS noise: sqrt(sum_k |W_k|^2 S_k / (M^2 N dV))."""
    s = noise.dose_model(SHAPE, (SPACING, SPACING)).nps_at(level).on_grid(SHAPE, (SPACING, SPACING), half=False)
    w = np.zeros(SHAPE)
    w[REGION] = 1.0
    m, n = w.sum(), w.size
    return float(np.sqrt(np.sum(np.abs(np.fft.fft2(w)) ** 2 * s) / (m * m * n * SPACING * SPACING)))


@pytest.mark.parametrize("kind", ["nps", "gaussian"])
def test_planted_sar_matches_closed_form_per_class_and_dose(tmp_path, planted, kind):
    images = planted_images(60, spread_hu=6.0)
    source = ArraySource(images, (SPACING, SPACING))
    if kind == "nps":
        noise = NoiseSpec(kind="nps", levels=(25.0, 100.0, 400.0), draws=200, seed=3, preset="standard", sigma_ref=40.0, mas_ref=100.0)
        sigmas = {lv: _region_mean_sigma(noise, lv) for lv in noise.levels}
    else:
        noise = NoiseSpec(kind="gaussian", levels=(20.0, 60.0), draws=200, seed=3)
        sigmas = {lv: lv / 16.0 for lv in noise.levels}  # white noise: sigma / sqrt(16 * 16)
    model = _open(planted)
    run_campaign([model], source, noise, tmp_path / "out", RunOptions(batch_size=128, shard_samples=16))
    report = write_reports(tmp_path / "out", [model], source, noise, stats=_stats())
    means = region_means(images, REGION)
    clean = (means >= 0).astype(int)
    for block in report["models"][0]["levels"]:
        p = norm.cdf(-np.abs(means) / sigmas[block["level"]])
        for c in (0, 1):
            members = clean == c
            expected = p[members].mean()
            half_width = Z99 * np.sqrt(np.sum(p[members] * (1 - p[members])) / noise.draws) / members.sum()
            measured = block["per_class"]["SAR"][c]
            assert abs(measured - expected) <= half_width + 1e-12, (kind, block["level"], c, measured, expected, half_width)
        _check_cmr(block)
    check_report(report)


def _check_cmr(block):
    cmr = np.array([[np.nan if v is None else v for v in row] for row in block["CMR"]["matrix"]])
    sar_c = np.array([np.nan if v is None else v for v in block["per_class"]["SAR"]])
    present = ~np.isnan(sar_c)
    np.testing.assert_allclose(cmr[:, present].sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(1 - np.diag(cmr)[present], sar_c[present], atol=1e-12)


def _stats():
    from audit.campaign.run import CampaignStats

    return CampaignStats()


def _numbers(report):
    """The report without what legitimately differs between runs (time stamps, timing)."""
    r = json.loads(json.dumps(report))
    r.pop("created")
    r.pop("timing")
    for m in r["models"]:
        m["engine"].pop("path", None)
        m["engine"].pop("source", None)
    return r


def test_batch_size_does_not_change_the_report(tmp_path, planted):
    images = planted_images(20, spread_hu=5.0)
    source = ArraySource(images, (SPACING, SPACING))
    noise = NoiseSpec(kind="nps", levels=(50.0, 200.0), draws=16, seed=1, sigma_ref=30.0)
    model = _open(planted)
    reports = []
    for batch in (1, 64):
        out = tmp_path / f"b{batch}"
        run_campaign([model], source, noise, out, RunOptions(batch_size=batch, shard_samples=8))
        reports.append(_numbers(write_reports(out, [model], source, noise, _stats())))
    assert reports[0] == reports[1]
    assert reports[0]["models"][0]["levels"][0]["SAN"] > 0  # the comparison is not vacuous


def _shards(out):
    return sorted((out / "records").rglob("shard-*.parquet"))


def test_killed_run_resumes_without_losing_or_duplicating_records(tmp_path, planted):
    images = planted_images(48, spread_hu=5.0)
    labels = (region_means(images, REGION) >= 0).astype(int)
    manifest = write_manifest(tmp_path / "data", images, labels)
    noise = "kind = \"nps\"\nlevels = [30, 120, 480]\ndraws = 300\nseed = 7\nsigma_ref = 30.0"
    config = write_config(tmp_path / "audit.toml", planted, manifest, noise=noise, run="batch_size = 32\nshard_samples = 4")
    expected_shards = 12 * 3
    killed = tmp_path / "killed"
    # Killed deterministically from inside the real CLI process: SIGKILL right after the 4th level shard lands and
    # while the 5th is half-written (its temporary file on disk, not yet renamed).
    driver = (
        "import os, signal, sys\n"
        "from audit.campaign import records\n"
        "from audit.cli import main\n"
        "real, seen = records.write_table, []\n"
        "def write_table(path, columns):\n"
        "    if path.name.startswith('shard-'):\n"
        "        seen.append(path)\n"
        "        if len(seen) == 5:\n"
        "            (path.parent / ('.' + path.name + '.x.tmp')).write_bytes(b'half')\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(path, columns)\n"
        "records.write_table = write_table\n"
        f"sys.exit(main(['run', {str(config)!r}, '--out', {str(killed)!r}, '--no-progress']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    done_at_kill = len(_shards(killed))
    assert done_at_kill == 4 < expected_shards
    assert list(killed.rglob("*.tmp"))  # the half-written shard is there until --resume
    assert not (killed / "report.json").exists()
    # Without --resume the folder is refused; with it the run completes.
    again = subprocess.run([sys.executable, "-m", "audit", "run", str(config), "--out", str(killed)], capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = subprocess.run([sys.executable, "-m", "audit", "run", str(config), "--out", str(killed), "--resume"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    straight = subprocess.run([sys.executable, "-m", "audit", "run", str(config), "--out", str(tmp_path / "straight")],
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr

    import pyarrow.parquet as pq

    rows = [pq.read_table(p) for p in _shards(killed)]
    keys = {(s, lv, k) for t in rows for s, lv, k in zip(t.column("sample").to_pylist(), t.column("level").to_pylist(), t.column("k").to_pylist())}
    total = sum(t.num_rows for t in rows)
    assert total == len(keys) == 48 * 300 * 3
    assert not list(killed.rglob("*.tmp"))
    a = _numbers(json.loads((killed / "report.json").read_text()))
    b = _numbers(json.loads((tmp_path / "straight" / "report.json").read_text()))
    assert a == b


# ----------------------------------------------------------------------------------------- kills, split shards


def _cli_driver(argv, *, kill_at_replace: str | None = None, kill_at_shard: int | None = None,
                shard_records: int | None = None) -> subprocess.CompletedProcess:
    """``audit`` in a child process that SIGKILLs itself just before ``os.replace`` lands a file named
    ``kill_at_replace`` (its temporary file complete on disk), or while the ``kill_at_shard``-th shard is half-written;
    ``shard_records`` lowers ``SHARD_RECORDS`` so that draws are split into several shards."""
    driver = ["import os, signal, sys", "from pathlib import Path", "import audit.campaign.run as run",
              "from audit.campaign import records", "from audit.cli import main"]
    if shard_records is not None:
        driver.append(f"run.SHARD_RECORDS = {shard_records}")
    if kill_at_replace is not None:
        driver += ["real_replace = os.replace",
                   "def replace(src, dst, *a, **k):",
                   f"    if Path(dst).name == {kill_at_replace!r}:",
                   "        os.kill(os.getpid(), signal.SIGKILL)",
                   "    return real_replace(src, dst, *a, **k)",
                   "os.replace = replace"]
    if kill_at_shard is not None:
        driver += ["real_write, seen = records.write_table, []",
                   "def write_table(path, columns):",
                   "    if path.name.startswith('shard-'):",
                   "        seen.append(path)",
                   f"        if len(seen) == {kill_at_shard}:",
                   "            (path.parent / ('.' + path.name + '.x.tmp')).write_bytes(b'half')",
                   "            os.kill(os.getpid(), signal.SIGKILL)",
                   "    real_write(path, columns)",
                   "records.write_table = write_table"]
    driver.append(f"sys.exit(main({[str(a) for a in argv]!r}))")
    return subprocess.run([sys.executable, "-c", "\n".join(driver)], capture_output=True, text=True)


def _temps(out):
    return sorted(p.relative_to(out) for p in out.rglob("*") if is_temp(p))


def _gaussian_run(tmp_path, planted, n, *, draws, seed):
    """A config of ``n`` planted images (labels: the model's clean decisions), Gaussian noise at 20 and 60 HU, blocks
    of 4 samples; its output folder and the ``audit run`` command line."""
    images = planted_images(n, spread_hu=5.0)
    manifest = write_manifest(tmp_path / "data", images, (region_means(images, REGION) >= 0).astype(int))
    config = write_config(tmp_path / "audit.toml", planted, manifest,
                          noise=f"kind = \"gaussian\"\nlevels = [20, 60]\ndraws = {draws}\nseed = {seed}",
                          run="batch_size = 16\nshard_samples = 4")
    out = tmp_path / "killed"
    return config, out, ["run", str(config), "--out", str(out), "--no-progress"]


def test_kills_inside_report_writing_leave_no_temp_file_after_resume(tmp_path, planted):
    """SIGKILL as report.json, then report.html, is about to land (their temporary files complete on disk): each
    --resume clears every temp file in the output folder, and the last one gives the uninterrupted run's report."""
    config, out, argv = _gaussian_run(tmp_path, planted, 8, draws=6, seed=3)
    first = _cli_driver(argv, kill_at_replace="report.json")
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert [p.name.startswith(".report.json.") for p in _temps(out)] == [True] and not (out / "report.json").exists()
    second = _cli_driver(argv + ["--resume"], kill_at_replace="report.html")
    assert second.returncode == -signal.SIGKILL, second.stderr
    assert [p.name.startswith(".report.html.") for p in _temps(out)] == [True]  # report.json's temp was cleared
    assert (out / "report.json").is_file() and not (out / "report.html").exists()
    assert main(argv + ["--resume"]) == 0
    assert _temps(out) == [] and (out / "report.html").is_file()
    assert main(["run", str(config), "--out", str(tmp_path / "straight"), "--no-progress"]) == 0
    a = _numbers(json.loads((out / "report.json").read_text()))
    b = _numbers(json.loads((tmp_path / "straight" / "report.json").read_text()))
    assert a == b and a["models"][0]["levels"][1]["SAN"] > 0


def test_draws_split_into_shards_resume_and_give_the_unsplit_report(tmp_path, planted, monkeypatch, capsys):
    """With draws split (12 samples x 20 draws in shards of 4 samples x 8 draws: ranges 0-8, 8-16, 16-20), a run
    killed mid-shard resumes with every (sample, level, k) record exactly once, and the report equals that of the
    same campaign in whole-K shards; resuming under another shard layout is refused, never mixed."""
    config, out, argv = _gaussian_run(tmp_path, planted, 12, draws=20, seed=5)
    killed = _cli_driver(argv, kill_at_shard=5, shard_records=32)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(_shards(out)) == 4 and _temps(out)
    assert main(argv + ["--resume"]) == 2 and "different campaign" in capsys.readouterr().err  # whole-K layout
    monkeypatch.setattr(campaign_run, "SHARD_RECORDS", 32)
    assert main(argv + ["--resume"]) == 0
    monkeypatch.undo()
    names = {p.name for p in _shards(out)}
    assert len(_shards(out)) == 3 * 2 * 3 and {"shard-00000004-k000000-000008.parquet",
                                               "shard-00000004-k000016-000020.parquet"} <= names
    tables = [pq.read_table(p) for p in _shards(out)]
    keys = {(s, lv, k) for t in tables for s, lv, k in zip(*(t.column(c).to_pylist() for c in ("sample", "level", "k")))}
    assert sum(t.num_rows for t in tables) == len(keys) == 12 * 20 * 2 and not _temps(out)
    assert main(["run", str(config), "--out", str(tmp_path / "whole"), "--no-progress"]) == 0
    assert {p.name for p in _shards(tmp_path / "whole")} == {"shard-00000000.parquet", "shard-00000004.parquet",
                                                              "shard-00000008.parquet"}
    a = _numbers(json.loads((out / "report.json").read_text()))
    b = _numbers(json.loads((tmp_path / "whole" / "report.json").read_text()))
    assert a == b and a["models"][0]["levels"][1]["SAN"] > 0


def test_sequential_rounds_over_split_shards_are_slices_of_the_full_run(tmp_path, planted):
    """Rounds (the fast gate's draws = (k0, k1)) cut at the shard ranges too: their records equal the full run's."""

    source = ArraySource(planted_images(6, spread_hu=5.0), (SPACING, SPACING))
    noise = NoiseSpec(kind="gaussian", levels=(30.0,), draws=20, seed=2)
    model = _open(planted)
    split = RunOptions(batch_size=7, shard_samples=3, shard_records=24, progress=False)  # 8 draws per shard
    for k0, k1 in ((0, 10), (10, 20)):
        run_campaign([model], source, noise, tmp_path / "rounds", split, resume=True, draws=(k0, k1))
    names = sorted(p.name for p in _shards(tmp_path / "rounds"))
    assert names[:4] == ["shard-00000000-k000000-000008.parquet", "shard-00000000-k000008-000010.parquet",
                         "shard-00000000-k000010-000016.parquet", "shard-00000000-k000016-000020.parquet"]
    again = run_campaign([model], source, noise, tmp_path / "rounds", split, resume=True, draws=(10, 20))
    assert again.inferences == 0 and again.shards_reused == 4  # a round done is reused: 2 ranges x 2 blocks
    run_campaign([model], source, noise, tmp_path / "full", RunOptions(batch_size=64, progress=False))
    a = records.load_level(tmp_path / "rounds", "planted", 30.0, noise.level_key(30.0), 6, 20)
    b = records.load_level(tmp_path / "full", "planted", 30.0, noise.level_key(30.0), 6, 20)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.scores, b.scores) and a.flipped.any()


def test_records_equal_a_draw_by_draw_recomputation_on_numpy_and_the_clean_pass_is_counted(tmp_path, planted):
    """The campaign on the engine's namespace (NumPy here) gives, for every (sample, k), the score of the model on
    image + ``NoiseSpec.sample`` of that one key, bit for bit (batching, the in-place add and the producer change
    nothing); its stats count the clean pass (N per model) beside the N x K noisy inferences."""
    source = ArraySource(planted_images(10, spread_hu=5.0), (SPACING, SPACING))
    noise = NoiseSpec(kind="nps", levels=(40.0,), draws=6, seed=9, sigma_ref=40.0, mas_ref=100.0)
    model = _open(planted)
    stats = run_campaign([model], source, noise, tmp_path / "out", RunOptions(batch_size=16, shard_samples=4, progress=False))
    assert stats.namespace == "numpy" and stats.inferences == 60 and stats.clean_inferences == 10
    assert stats.to_dict()["images_per_second"] == round(70 / stats.seconds, 2)
    rec = records.load_level(tmp_path / "out", "planted", 40.0, noise.level_key(40.0), 10, 6)
    for i, k in ((0, 0), (3, 5), (9, 2), (6, 4)):
        hu = source.load([i])
        drawn = noise.sample(noise.keys([i], 40.0, [k]), 40.0, hu, source.spacing)
        dec = model.decide_input(model.prepare(hu + drawn))
        assert rec.scores[i, k] == dec.scores[0] and rec.labels[i, k] == dec.labels[0]


def test_thread_layout_gives_each_core_a_worker_on_the_host_and_explicit_values_win(tmp_path):
    for cpus in (1, 2, 16):  # on the host: a worker per core, each running single-thread engines on its own batches
        t = campaign_run.thread_layout(cpus)
        assert (t.workers, t.engine_options()) == (cpus, {"threads": 1, "streams": cpus})  # streams: runs outside
    assert campaign_run.thread_layout(16, device=True).workers == 1  # a GPU: one worker launching device noise
    assert RunOptions(noise_workers=3).workers() == 3
    assert RunOptions().workers() == campaign_run.thread_layout().workers
    # memory: whole CT volumes (512 x 512 x 300, 315 MB) in batches of 4 leave room for one worker, slices for all
    volumes = type("Volumes", (), {"shape": (300, 512, 512)})()  # only its shape is read
    big = campaign_run.batch_bytes(RunOptions(batch_size=4), volumes)
    assert big == 4 * 300 * 512 * 512 * 4
    assert campaign_run.campaign_workers([], np, big) == 1
    assert campaign_run.campaign_workers([], np, 2**20) == campaign_run.thread_layout().workers
    assert campaign_run.campaign_workers([], np, campaign_run.WORKER_MEMORY_BYTES // 6) == min(3, campaign_run.thread_layout().workers)
    assert RunOptions().workers(np, (), volumes) == 1 and RunOptions(noise_workers=4).workers(np, (), volumes) == 4
    raw = {"model": {"path": "m.onnx"}, "data": {"phantom": "nodules"}}
    options = parse_config(raw, tmp_path).models[0].options
    assert dict(options) == campaign_run.thread_layout().engine_options()
    for given in ({"threads": 3}, {"streams": 2}):  # either one given: the config's engine options stand as written
        options = parse_config({"model": {"path": "m.onnx", **given}, "data": {"phantom": "nodules"}}, tmp_path).models[0].options
        assert dict(options) == given


@pytest.mark.parametrize("bank", [0, 8])
def test_records_do_not_depend_on_the_workers_or_where_the_engines_run(tmp_path, planted, bank):
    """One worker (engines on the main thread), 2 and 3 workers (each running the engines on its own batches, in
    whatever order they finish): the same shard tables, column by column, with fresh noise and with the bank."""
    source = ArraySource(planted_images(20, spread_hu=5.0), (SPACING, SPACING))
    noise = NoiseSpec(kind="nps", levels=(50.0, 200.0), draws=12, seed=3, sigma_ref=30.0, bank=bank)
    model = _open(planted, **campaign_run.thread_layout().engine_options())  # as audit run opens it
    tables = {}
    for workers, batch in ((1, 16), (2, 7), (3, 5)):
        out = tmp_path / f"w{workers}"
        assert campaign_run.engines_in_workers([model], np, workers) == (workers > 1)
        stats = run_campaign([model], source, noise, out, RunOptions(batch_size=batch, shard_samples=8, noise_workers=workers))
        assert stats.noise_workers == workers and stats.inferences == 20 * 2 * 12
        tables[workers] = {p.relative_to(out): pq.read_table(p) for p in sorted((out / "records").rglob("*.parquet"))}
    assert len(tables[1]) == 2 * 3 + 3  # 3 blocks x 2 levels, 3 clean shards
    for workers in (2, 3):
        assert tables[workers].keys() == tables[1].keys()
        for path, table in tables[1].items():
            assert _same_table(tables[workers][path], table), (workers, path)
    flips = sum(int(np.sum(t.column("flipped").to_numpy())) for p, t in tables[1].items() if "level-" in str(p))
    assert flips > 0  # the comparison is not vacuous


def test_an_engine_failing_in_a_worker_stops_the_run_and_writes_nothing_half(tmp_path, planted):
    """The 5th engine run (a worker's) raises: the error leaves run_campaign, the workers are joined, no temporary
    file is left, and a resume finishes with the records of an unbroken run."""
    source = ArraySource(planted_images(16, spread_hu=5.0), (SPACING, SPACING))
    noise = NoiseSpec(kind="nps", levels=(50.0,), draws=8, seed=3, sigma_ref=30.0)
    model = _open(planted, **campaign_run.thread_layout().engine_options())  # as audit run opens it
    engine = model.engine
    calls = {"n": 0}

    class Failing(type(engine)):  # the real ONNX Runtime session; its 5th run fails as a lost device would
        def _run(self, batch):
            calls["n"] += 1
            if calls["n"] == 5:
                raise RuntimeError("engine lost on run 5")
            return super()._run(batch)

    failing = Failing.__new__(Failing)
    failing.__dict__.update(engine.__dict__)
    broken = AuditedModel("planted", failing, model.head, model.preprocess)
    options = RunOptions(batch_size=8, shard_samples=8, noise_workers=2)
    with pytest.raises(RuntimeError, match="engine lost on run 5"):
        run_campaign([broken], source, noise, tmp_path / "out", options)
    assert not [t for t in threading.enumerate() if t.name.startswith("audit-worker")]
    assert not [p for p in (tmp_path / "out").rglob("*") if is_temp(p)]
    run_campaign([model], source, noise, tmp_path / "out", options, resume=True)
    run_campaign([model], source, noise, tmp_path / "ref", options)
    for p in sorted((tmp_path / "ref" / "records").rglob("*.parquet")):
        assert _same_table(pq.read_table(tmp_path / "out" / p.relative_to(tmp_path / "ref")), pq.read_table(p)), p


def _same_table(a, b) -> bool:
    """Equal column names and values, NaN equal to NaN (a record without a Dice holds NaN)."""
    if a.column_names != b.column_names:
        return False
    for col in a.column_names:
        x, y = a.column(col).to_numpy(zero_copy_only=False), b.column(col).to_numpy(zero_copy_only=False)
        if x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            return False
    return True


def test_engines_run_in_the_workers_only_where_each_run_is_single_thread(planted, tmp_path):
    """A session on intra-op threads (``threads = 0``: ONNX Runtime's default pool, or 2) keeps its runs on the main
    thread beside one noise worker: several workers would each start a run over every core. Single-thread sessions
    (``threads = 1``, or streams) and torch CPU modules run in the workers, one worker per core; a torch module's run
    inside a worker takes one thread."""
    import torch

    from audit.engines.threads import one_stream, torch_threads_during
    from audit.engines.torch_module import TorchEngine

    cpus = campaign_run.thread_layout().cpus
    for options, alone in (({}, False), ({"threads": 2}, False), ({"threads": 1}, True), ({"threads": 1, "streams": 2}, True)):
        engine = load_engine(planted, **options)
        model = AuditedModel("planted", engine, head_from(engine.metadata), preprocess_from(engine.metadata))
        assert engine.single_thread_runs is alone, options
        assert campaign_run.campaign_workers([model], np) == (cpus if alone else 1), options
        assert campaign_run.engines_in_workers([model], np, 2) is alone, options

    seen = []

    class Count(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x.mean(dim=(1, 2, 3))

    engine = TorchEngine(Count(), (None, 1, *SHAPE))
    assert engine.single_thread_runs
    before = torch.get_num_threads()
    with torch_threads_during(before), one_stream():  # a worker pins torch's (process-wide) count; restored after
        engine.run(np.zeros((2, 1, *SHAPE), np.float32))
    assert seen == [1] and torch.get_num_threads() == before
    # a campaign whose workers run a torch module: one thread in every run, torch's count restored when they stop
    images = planted_images(6, spread_hu=5.0)
    planted_meta = load_engine(planted).metadata
    twin = AuditedModel("count", engine, head_from({"audit.task": "regression"}), preprocess_from(planted_meta))
    run_campaign([twin], ArraySource(images, (SPACING, SPACING)), NoiseSpec(kind="gaussian", levels=(20.0,), draws=4, seed=0),
                 tmp_path / "torch", RunOptions(batch_size=4, shard_samples=8, noise_workers=2))
    assert set(seen[1:]) == {1} and len(seen) > 3 and torch.get_num_threads() == before
