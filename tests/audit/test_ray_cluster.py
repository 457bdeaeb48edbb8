"""Scale-out on a real multi-node Ray cluster on loopback: a head and worker nodes, each a separate ``ray start``.

The head (127.0.0.1, no CPU: it runs no block) and worker nodes A and B (127.0.0.2 and .3, one CPU each) run
with the project; node C (127.0.0.4) runs in a mount namespace where the project's folder is an empty tmpfs, so
``import audit`` fails there. Every worker node runs in its own mount namespace where pytest's temporary
folder (the model, the manifest, every ``--out``) is an empty tmpfs, with its own working folder: no shared
filesystem between the driver (this process) and the tasks. Token authentication is on (RAY_AUTH_MODE=token).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import audit
from audit.config import load_config
from audit.pipelines.run import run_config
from tests.audit.conftest import REGION, SHAPE, planted_images, write_config, write_manifest
from tests.audit.planted import planted_model, region_means

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'ct-robustness-audit[ray]')")
psutil = pytest.importorskip("psutil")

NOISE = 'kind = "nps"\nlevels = [50, 200]\ndraws = 40\nseed = 5\nsigma_ref = 40.0'
N = 48
DRAWS_HEAVY = 400
PROJECT_ROOT = Path(audit.__file__).resolve().parents[1]
#: Faster detection of a lost node than Ray's default (about 30 s), set on the head's GCS.
FAST_HEALTH_CHECK = {"RAY_health_check_period_ms": "300", "RAY_health_check_timeout_ms": "300",
                     "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "0"}


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One ``ray start --block`` and every process it starts; ``kill`` sends SIGKILL to all of them (no others)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, hide: list[Path]) -> None:
        self.name = name
        mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(str(p))}" for p in hide)
        script = f"mount --make-rprivate / && {mounts + ' && ' if mounts else ''}exec {shlex.join(argv)}"
        cmd = ["unshare", "--mount", "sh", "-c", script] if hide else argv
        cwd.mkdir(parents=True, exist_ok=True)
        self.log = open(cwd / "ray-start.log", "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def processes(self) -> list:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def raylet(self):
        return next((p for p in self.processes() if "raylet" in p.name()), None)

    def kill(self) -> int:
        procs = self.processes()
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        self.log.close()
        return len(procs)


def _wait_for_nodes(address: str, env: dict[str, str], count: int, timeout: float = 120.0) -> None:
    """Until ``count`` nodes are alive, asked by one separate driver process (the way a user's driver connects)."""
    code = ("import ray,sys,time;ray.init(address=sys.argv[1],log_to_driver=False,configure_logging=False);"
            "t=time.monotonic()+float(sys.argv[3])\n"
            "while sum(1 for n in ray.nodes() if n['Alive'])<int(sys.argv[2]) and time.monotonic()<t: time.sleep(0.3)\n"
            "print(sum(1 for n in ray.nodes() if n['Alive']))")
    r = subprocess.run([sys.executable, "-c", code, address, str(count), str(timeout)], env=env, capture_output=True,
                       text=True, timeout=timeout + 60)
    if r.stdout.strip().splitlines()[-1:] != [str(count)]:
        raise RuntimeError(f"the Ray cluster at {address} did not reach {count} nodes: {r.stdout[-300:]} {r.stderr[-800:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not _can_unshare():
        pytest.skip("needs mount namespaces (unshare --mount) to give worker nodes no view of the driver's files")
    base = Path(tmp_path_factory.getbasetemp()).resolve()  # model, data and every --out: hidden from worker nodes
    home = Path(f"/tmp/aurc-{os.getpid()}")  # node folders: short (socket paths), outside the hidden folder
    token = subprocess.run(["ray", "get-auth-token", "--generate"], capture_output=True, text=True, check=True).stdout.strip()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    port = _port()
    address = f"127.0.0.1:{port}"

    def start(name: str, ip: str, cpus: int, hide: list[Path], head: bool = False) -> Node:
        argv = ["ray", "start", "--block", f"--node-ip-address={ip}", f"--num-cpus={cpus}", "--disable-usage-stats",
                f"--temp-dir={home / name / 'ray'}", f"--node-manager-port={_port()}", f"--object-manager-port={_port()}",
                f"--dashboard-agent-listen-port={_port()}", f"--dashboard-agent-grpc-port={_port()}",
                f"--runtime-env-agent-port={_port()}", f"--metrics-export-port={_port()}", "--object-store-memory=100000000"]
        argv += ["--head", f"--port={port}", "--include-dashboard=false"] if head else [f"--address={address}"]
        return Node(name, argv, {**env, **(FAST_HEALTH_CHECK if head else {})}, home / name, hide)

    nodes = {}
    try:  # workers retry joining until the head is up: all four start at once
        nodes["head"] = start("head", "127.0.0.1", 0, [], head=True)
        nodes["A"] = start("A", "127.0.0.2", 1, [base])
        nodes["B"] = start("B", "127.0.0.3", 1, [base])
        nodes["C"] = start("C", "127.0.0.4", 1, [base, PROJECT_ROOT])  # no project on this node
        _wait_for_nodes(address, env, 4)
        yield {"address": address, "nodes": nodes, "base": base, "home": home, "env": env}
    finally:
        for node in reversed(list(nodes.values())):
            node.kill()
        shutil.rmtree(home, ignore_errors=True)  # the nodes' Ray logs and sockets


def _audit_run(cluster, config_path: Path, out: Path, *extra: str, cwd: Path | None = None, wait: bool = True):
    """``audit run CONFIG --out OUT --ray ADDRESS`` as a user runs it (its own process, RAY_AUTH_MODE=token)."""
    argv = [sys.executable, "-m", "audit", "run", str(config_path), "--out", str(out), "--ray", cluster["address"], *extra]
    proc = subprocess.Popen(argv, env=cluster["env"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """The smallest planted campaign of test_ray.py (48 samples, 8 blocks of 6) and its single-process report."""
    folder = tmp_path_factory.mktemp("campaign")
    images = planted_images(N, spread_hu=6.0, seed=2)
    manifest = write_manifest(folder / "data", images, (region_means(images, REGION) >= 0).astype(int))
    model = planted_model(folder / "planted.onnx", SHAPE, REGION, threshold_hu=0.0)
    path = write_config(folder / "a.toml", model, manifest, noise=NOISE, run="batch_size = 64\nshard_samples = 6")
    config = load_config(path)
    single = run_config(config, folder / "single", progress=False)
    return config, single, folder


def _numbers(report):
    r = json.loads(json.dumps(report))
    for key in ("created", "timing"):
        r.pop(key)
    return r


def _records(out: Path) -> list[tuple]:
    import pyarrow.parquet as pq

    rows = []
    for p in sorted((out / "records").rglob("*.parquet")):
        t = pq.read_table(p).to_pydict()
        rows += [(p.relative_to(out).as_posix(), *(None if v != v else v for v in r)) for r in zip(*t.values())]  # NaN: None
    return rows


def test_cluster_run_from_another_folder_matches_single_process_without_shared_files(cluster, campaign):
    """(a) identical report and records; (c) a relative --out given from another folder is the driver's folder;
    (d) node C (no project) excluded by the preflight, named in the report; (e) the tasks' nodes see neither the
    model, the data nor --out (an empty tmpfs there: nothing was written at those paths) and work in folders of
    their own."""
    config, single, folder = campaign
    (folder / "elsewhere").mkdir()
    rc, _, err = _audit_run(cluster, folder / "a.toml", Path("rel") / "out", cwd=folder / "elsewhere")
    assert rc == 0, err[-2000:]
    out = folder / "elsewhere" / "rel" / "out"
    report = json.loads((out / "report.json").read_text())
    assert _numbers(report) == _numbers(single)
    assert _records(out) == _records(folder / "single")  # every record, shard by shard
    timing = report["timing"]
    assert sorted(n["address"] for n in timing["ray_nodes"]) == ["127.0.0.2", "127.0.0.3"]
    (bare,) = timing["ray_excluded"]
    assert bare["address"] == "127.0.0.4" and "not importable" in bare["reason"] and "audit" in bare["reason"]
    assert timing["inferences"] == N * 2 * 40 and not timing.get("ray_retries")
    for name in ("A", "B"):  # what a task on this node sees at the driver's paths
        raylet = cluster["nodes"][name].raylet()
        assert list(Path(f"/proc/{raylet.pid}/root{cluster['base']}").iterdir()) == []
        assert not Path(f"/proc/{raylet.pid}/root{config.models[0].path}").exists()
        assert Path(raylet.cwd()) == cluster["home"] / name


def test_no_usable_node_is_one_line_before_any_work(cluster, campaign):
    """(d) where no node can take a block (here: blocks asking for a GPU), exit 2 with one line, nothing written."""
    _, _, folder = campaign
    rc, _, err = _audit_run(cluster, folder / "a.toml", folder / "gpu-out", "--ray-gpus", "1")
    lines = [ln for ln in err.splitlines() if ln.strip() and "gcs_client" not in ln and "WARNING" not in ln]
    assert rc == 2 and len(lines) == 1 and "ray: no node can run the campaign (no live node has a CPU and 1 GPU" in lines[0]
    assert not (folder / "gpu-out").exists()


def test_sigkill_of_a_whole_worker_node_mid_run_finishes_on_the_others(cluster, campaign):
    """(b) every process of node B (raylet included) SIGKILLed as soon as the driver wrote the first shard: the run
    finishes on A with the same records, none duplicated, and the report says which blocks were lost where. Blocks
    of 400 draws (about a second each here), so B still holds blocks when the first shard lands."""
    _, _, folder = campaign
    heavy = folder / "heavy.toml"
    heavy.write_text((folder / "a.toml").read_text().replace("draws = 40", f"draws = {DRAWS_HEAVY}"))
    single = run_config(load_config(heavy), folder / "single-heavy", progress=False)
    out = folder / "lost-node"
    proc = _audit_run(cluster, heavy, out, wait=False)
    deadline = time.monotonic() + 120
    while not list((out / "records").rglob("shard-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed = cluster["nodes"]["B"].kill()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert killed >= 2  # ray start and its raylet at least
    report = json.loads((out / "report.json").read_text())
    assert _numbers(report) == _numbers(single)
    retries = report["timing"]["ray_retries"]
    assert retries and all(r["lost_on"].startswith("127.0.0.3") and r["finished_on"].startswith("127.0.0.2")
                           for r in retries)
    page = (out / "report.html").read_text()  # the reviewer's page says it too
    assert "Ray cluster: " in page and page.count("redone (attempt") == len(retries)
    rows = _records(out)
    assert rows == _records(folder / "single-heavy")
    keys = [r[1:4] for r in rows if "/level-" in r[0]]
    assert len(keys) == len(set(keys)) == N * 2 * DRAWS_HEAVY
