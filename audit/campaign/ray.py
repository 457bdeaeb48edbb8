"""Scale-out on Ray: sample blocks run as tasks on the nodes of a cluster; no shared filesystem needed.

The driver (the process that runs ``audit run --ray``) alone reads and writes files: it resolves ``--out``,
checks or writes the store, reads each model file once and puts its bytes in Ray's object store (one copy per
node, content-addressed by SHA-256 on the node's disk), reads each sample block's images and ships them with
the block's task, and writes every shard the tasks send back (atomically, with the same writer as a
single-process run). A task never opens the config's paths and never touches ``--out``, so the records (and
the report) are identical to a single-process run whatever the placement, and no folder has to be shared or
mounted at the same path. There is no shared-store mode: shipping costs the driver one read of the data,
which a shared store would also cost (over the network), and a mode that needs the same mount everywhere is
the failure the issue reports.

Before any work, ``preflight`` runs one tiny task pinned on every node that has the CPUs (and GPUs) a block
needs: it reports the project, Python and Ray versions and opens every model from the shipped bytes (so the
engine's package imports and the file opens). A node that cannot import the project, runs another project
version or cannot open a model is excluded, and the run finishes on the others (report.json
``timing.ray_nodes`` and ``timing.ray_excluded`` say which and why); none left is one line, before any work.

Blocks are tasks, not actors: a task holds its CPU only while it runs, and the worker process keeps the
opened engines for the next block (``_OPENED``). The driver hands out one block per free CPU of the nodes it
uses (plus one queued per node), pinned to that node; when a task is lost (its worker process or its whole node killed) the block goes
back to the queue, the node is no longer used unless it is the last one, and the block runs elsewhere, up to
``MAX_ATTEMPTS`` times per block (report.json ``timing.ray_retries``: which block, why, and on which node it
then finished). A block's shards are written only when it returns, so nothing is duplicated.
Limits: noise mode ``reduce`` (its scans' own noise is measured from the whole source) is refused with
``--ray``; a model must be one file (no ONNX external-data files beside it); nodes that join after the
preflight are not used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import os
import platform
import socket
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from audit.artifact import AuditedModel, ModelEntry, open_artifact
from audit.campaign import records
from audit.campaign.run import CampaignStats, needs_lesions, plan, run_campaign, thread_layout
from audit.data import lesions_of, open_source
from audit.engines import backend
from audit.errors import ConfigError, InputError
from audit.io import remove_stale_temps
from kernels._xp import optional_import

#: How many tasks may lose one sample block (worker process or node lost) before the run stops.
MAX_ATTEMPTS = 4
#: Seconds every node has to answer the preflight (start a worker, open the models) before it is excluded.
PREFLIGHT_SECONDS = 120.0
#: The distribution whose version every node must run (the driver's).
PROJECT = "ct-robustness-audit"


def _open(config: Any):
    """The models and source of an ``audit.config.AuditConfig``, opened on the driver."""
    return [open_artifact(e, config.head, config.preprocess) for e in config.models], open_source(config.data, config.pacs)


def _one_thread_per_task(config: Any) -> Any:
    """A task gets one CPU: ONNX Runtime on one single-thread stream and the campaign on one worker (not one per
    core of the node: tasks share it), unless the config says otherwise. ``audit run``'s config gives a model without
    thread options the local layout's (``config.campaign_threads``: one stream per core of the driver): those are
    taken for not given."""
    local = thread_layout().engine_options()

    def one(options: Any) -> dict[str, Any]:
        given = {k: v for k, v in dict(options).items() if k in ("threads", "streams")}
        return {**dict(options), "threads": 1, "streams": 1} if not given or given == local else dict(options)

    models = tuple(dataclasses.replace(m, options=one(m.options)) if m.engine == "onnxruntime" else m
                   for m in config.models)
    run = config.run if config.run.noise_workers is not None else dataclasses.replace(config.run, noise_workers=1)
    return dataclasses.replace(config, models=models, run=run)


def project_version() -> str:
    try:
        return importlib.metadata.version(PROJECT)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed as a distribution)"


@dataclass
class RayStats(CampaignStats):
    """``CampaignStats`` plus where the run went: the nodes used and the nodes the preflight excluded."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "ray_nodes": list(self.nodes), "ray_excluded": list(self.excluded)}


@dataclass(frozen=True)
class ShippedModel:
    """A ``[[model]]`` entry whose file travels as bytes through Ray's object store (``ref``; None: no file)."""

    entry: ModelEntry
    sha256: str | None
    ref: Any


@dataclass
class BlockSource:
    """The driver's source as a task sees it: its metadata and one sample block's images, nothing read from a path."""

    name: str
    spacing: tuple[float, ...]
    labels: np.ndarray | None
    class_names: tuple[str, ...]
    shape: tuple[int, ...]
    n: int
    first: int
    images: np.ndarray
    ids: list[str] = field(default_factory=list)
    lesions: list | None = None  # the reference lesions of every sample, shipped for detection models (small)

    def __len__(self) -> int:
        return self.n

    def load(self, index: Sequence[int]) -> np.ndarray:
        rows = np.asarray(index, dtype=np.int64) - self.first
        if rows.size and (rows.min() < 0 or rows.max() >= len(self.images)):
            raise InputError(f"{self.name}: samples {list(index)[:3]}... are not in the shipped block at {self.first}")
        return np.asarray(self.images[rows], dtype=np.float32)

    def reference(self, i: int) -> None:
        return None


#: The statistics a block's task sends back, summed on the driver (wall time and reused shards are the driver's).
_SUMMED = ("inferences", "shards_run", "noise_seconds", "engine_seconds", "clean_inferences", "clean_seconds")

#: Engines a worker process opened, by (file SHA-256, entry, head, preprocess): the next block reuses them.
_OPENED: dict[str, list[AuditedModel]] = {}


def _model_file(ray: Any, shipped: ShippedModel) -> Path | None:
    """The shipped model's bytes as a file on this node: ``<tmp>/audit-ray-models/<sha256>/<name>``, written once."""
    if shipped.ref is None:
        return None
    path = Path(tempfile.gettempdir()) / "audit-ray-models" / str(shipped.sha256) / Path(shipped.entry.path).name
    if not path.is_file():
        data = ray.get(shipped.ref)
        if hashlib.sha256(data).hexdigest() != shipped.sha256:
            raise InputError(f"{shipped.entry.path}: the model bytes shipped to this node do not match their SHA-256")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: tasks of one node may race to write it
    return path


def _opened(shipped: Sequence[ShippedModel], head: Any, preprocess: Any) -> list[AuditedModel]:
    """The shipped models opened in this worker process (once per process: later blocks reuse the engines)."""
    ray = optional_import("ray")
    key = repr([(s.sha256, s.entry.name, s.entry.engine, sorted(dict(s.entry.options).items())) for s in shipped]
               + [head, preprocess])
    if key not in _OPENED:
        _OPENED[key] = [open_artifact(dataclasses.replace(s.entry, path=_model_file(ray, s) or s.entry.path), head, preprocess)
                        for s in shipped]
    return _OPENED[key]


def node_report(shipped: Sequence[ShippedModel], head: Any, preprocess: Any) -> dict[str, Any]:
    """The preflight task: versions of this node, and every model opened here (its engine's package imports)."""
    ray = optional_import("ray")
    _opened(shipped, head, preprocess)
    return {"project": project_version(), "python": platform.python_version(), "ray": ray.__version__,
            "host": socket.gethostname(), "engines": sorted({backend(s.entry.engine).__name__ for s in shipped})}


def run_block(shipped: Sequence[ShippedModel], head: Any, preprocess: Any, meta: dict[str, Any], first: int,
              images: np.ndarray, noise: Any, dose_model: Any, options: Any) -> dict[str, Any]:
    """One sample block, as a task: every level and draw of it through every model; returns its shards (path
    relative to ``--out``, columns) and statistics. Nothing is read from the config's paths or written to disk
    (``out`` below is a name only: the shards go to the sink)."""
    ray = optional_import("ray")
    source = BlockSource(**meta, first=first, images=images)
    shards: list[tuple[str, dict[str, np.ndarray]]] = []
    nowhere = Path(tempfile.gettempdir()) / f"audit-ray-never-written-{uuid.uuid4().hex}"
    stats = run_campaign(_opened(shipped, head, preprocess), source, noise, nowhere, options, blocks=[first],
                         noise_model=dose_model, sink=lambda rel, cols: shards.append((rel.as_posix(), cols)))
    return {"shards": shards, "node": ray.get_runtime_context().get_node_id(),
            "stats": {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)
                      if f.name in _SUMMED and isinstance(getattr(stats, f.name), (int, float))}}


def _first_line(exc: BaseException) -> str:
    cause = exc
    if hasattr(exc, "cause") and exc.cause is not None:  # RayTaskError: the exception raised on the node
        cause = exc.cause
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    text = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "")
    return f"{type(cause).__name__}: {text}"[:240]


def preflight(ray: Any, shipped: Sequence[ShippedModel], head: Any, preprocess: Any, num_gpus: float = 0.0,
              timeout: float = PREFLIGHT_SECONDS) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One pinned task on every live node with a CPU (and ``num_gpus`` GPUs): (usable nodes, excluded nodes with why).

    A node is excluded when its task fails (the project does not import there: the task's code cannot even be
    loaded; an engine's package or the model does not open), when it runs another project version than the
    driver, or when it does not answer within ``timeout`` seconds."""
    strategy = optional_import("ray.util.scheduling_strategies").NodeAffinitySchedulingStrategy
    probe = ray.remote(num_cpus=0, max_retries=0)(node_report)
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1
             and n["Resources"].get("GPU", 0) >= num_gpus]
    refs = {probe.options(scheduling_strategy=strategy(n["NodeID"], soft=False)).remote(shipped, head, preprocess): n
            for n in nodes}
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout) if refs else ([], [])
    mine = project_version()
    usable, excluded = [], []
    for ref, node in refs.items():
        where = {"node": node["NodeID"], "address": node.get("NodeManagerAddress", "?")}
        if ref not in ready:
            ray.cancel(ref, force=True)
            excluded.append({**where, "reason": f"no answer to the preflight within {timeout:g} s"})
            continue
        try:
            info = ray.get(ref)
        except ray.exceptions.RayError as exc:
            reason = _first_line(exc)
            if "No module named 'audit'" in reason or "No module named 'kernels'" in reason:
                reason = f"the project ({PROJECT}) is not importable on this node ({reason})"
            excluded.append({**where, "reason": reason})
            continue
        if info["project"] != mine:
            excluded.append({**where, "reason": f"{PROJECT} {info['project']} here, {mine} on the driver"})
            continue
        usable.append({**where, "cpus": int(node["Resources"]["CPU"]), "gpus": node["Resources"].get("GPU", 0), **info})
    return usable, excluded


#: Seconds the driver waits for a TCP connection to the cluster address before saying nothing listens there (Ray
#: itself retries for minutes).
CONNECT_SECONDS = 5.0


def _reachable(address: str) -> None:
    """One line, exit 2, when nothing accepts a connection at ``host:port`` (``auto`` and ``ray://`` addresses are
    left to Ray)."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS):
            pass
    except (OSError, ValueError) as exc:
        raise InputError(f"ray: nothing answers at {address} ({exc}); start the head with `ray start --head` "
                         "(README, Scale-out on a Ray cluster) or fix --ray") from None


def _ship_models(ray: Any, config: Any) -> list[ShippedModel]:
    """Every model file read once on the driver and put in the object store (no file: shipped as its entry only)."""
    shipped = []
    for e in config.models:
        if e.path is None or not getattr(backend(e.engine), "NEEDS_FILE", True):
            shipped.append(ShippedModel(e, None, None))
            continue
        data = Path(e.path).read_bytes()
        graph = onnx.load_model_from_string(data).graph if str(e.path).endswith(".onnx") else None
        if graph is not None and any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
            raise InputError(f"{e.path}: has ONNX external-data files beside it, which --ray does not ship; save it "
                             "as one file (onnx.save_model(..., save_as_external_data=False)) for a cluster run")
        shipped.append(ShippedModel(e, hashlib.sha256(data).hexdigest(), ray.put(data)))
    return shipped


def _slots(node: dict[str, Any], num_gpus: float) -> int:
    """Blocks one node holds at once: one per CPU (fewer where each block takes ``num_gpus`` of its GPUs) plus one
    queued behind them, so a node never waits for the driver to write a result and ship the next block."""
    cpus = int(node["cpus"])
    return (min(cpus, int(node["gpus"] // num_gpus)) if num_gpus else cpus) + 1


def _node_label(node: dict[str, Any]) -> str:
    return f"{node['address']} ({node['node'][:8]})"


def run_on_ray(config: Any, out: Path, *, address: str = "auto", actors: int | None = None, num_gpus: float = 0.0,
               resume: bool = False, on_first_result: Callable[[list], None] | None = None) -> RayStats:
    """Run the campaign of ``config`` on a Ray cluster; the driver writes every shard. Returns the statistics.

    ``address``: ``"auto"`` (the cluster in RAY_ADDRESS, or a local one) or a cluster address (``host:port``).
    ``actors``: most blocks in flight at once (default: every CPU of the usable nodes, plus one queued per node).
    ``num_gpus`` per block.
    ``on_first_result(in_flight)``: called once, when the first block is back (tests kill workers there).
    """
    ray = optional_import("ray")
    out = Path(out).resolve()  # a relative --out means the driver's folder, wherever the tasks run
    config = _one_thread_per_task(config)
    models, source = _open(config)
    options = dataclasses.replace(config.run, progress=False)
    noise = config.noise.resolved(source)
    if noise.kind == "nps" and noise.mode == "reduce":
        raise ConfigError("noise.mode 'reduce' is not supported with --ray (each scan's own noise is measured from the "
                          "whole source on one machine); run it without --ray")
    _reachable(address)
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "auto" else address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
            raise InputError(f"ray: cannot join the cluster at {address} ({str(exc).splitlines()[0][:160]}); is it up, "
                             "and, with token authentication (see README), are RAY_AUTH_MODE=token and the cluster's "
                             "token (~/.ray/auth_token or RAY_AUTH_TOKEN) set here?") from None
    shipped = _ship_models(ray, config)
    nodes, excluded = preflight(ray, shipped, config.head, config.preprocess, num_gpus)
    if not nodes:
        why = "; ".join(f"{_node_label(x)}: {x['reason']}" for x in excluded) or (
            f"no live node has a CPU{f' and {num_gpus:g} GPU(s)' if num_gpus else ''}")
        raise InputError(f"ray: no node can run the campaign ({why})")
    run_campaign(models, source, config.noise, out, options, resume=resume, blocks=[])  # marker + fingerprint check
    dose_model = noise.noise_model(source)
    work = plan(models, len(source), noise, out, options)
    stats = RayStats(shards_reused=work.reused, excluded=excluded,
                     nodes=[{k: n[k] for k in ("node", "address", "host", "cpus", "project", "python", "ray")} for n in nodes])
    labels = getattr(source, "labels", None)
    meta = ray.put({"name": source.name, "spacing": tuple(source.spacing), "class_names": tuple(source.class_names),
                    "labels": None if labels is None else np.asarray(labels), "shape": tuple(source.shape),
                    "n": len(source),
                    "lesions": lesions_of(source) if needs_lesions(models) else None})
    strategy = optional_import("ray.util.scheduling_strategies").NodeAffinitySchedulingStrategy
    task = ray.remote(max_retries=0)(run_block)
    usable = {n["node"]: n for n in nodes}
    label = {n["node"]: _node_label(n) for n in nodes}
    load = {nid: 0 for nid in usable}
    cap = actors or sum(_slots(n, num_gpus) for n in nodes)
    queue = deque(first for first, _ in work.todo)
    attempts = {b: 0 for b in queue}
    retried: dict[int, dict[str, Any]] = {}
    pending: dict[Any, tuple[int, str]] = {}

    def submit() -> None:
        while queue and len(pending) < cap:
            free = [nid for nid in usable if load[nid] < _slots(usable[nid], num_gpus)]
            if not free:
                return
            nid = min(free, key=lambda x: load[x])
            first = queue.popleft()
            images = source.load(np.arange(first, min(first + options.shard_samples, len(source))))
            ref = task.options(num_cpus=1, num_gpus=num_gpus, scheduling_strategy=strategy(nid, soft=False)).remote(
                shipped, config.head, config.preprocess, meta, first, images, noise, dose_model, options)
            pending[ref], load[nid] = (first, nid), load[nid] + 1

    start = time.perf_counter()
    first_seen = False
    submit()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        first, nid = pending.pop(ready[0])
        load[nid] -= 1
        try:
            part = ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:  # our own error inside the task: a user error stays one line
            raise exc.as_instanceof_cause() from None
        except ray.exceptions.RayError as exc:  # the worker process or its node was lost: redo the block elsewhere
            attempts[first] += 1
            entry = {"block": first, "attempt": attempts[first], "error": type(exc).__name__,
                     "lost_on": label[nid]}
            stats.retries.append(entry)
            retried[first] = entry
            if attempts[first] >= MAX_ATTEMPTS:
                raise InputError(f"ray: sample block {first} was lost on {MAX_ATTEMPTS} workers ({type(exc).__name__}); "
                                 "finished shards are kept: run again with --resume") from None
            alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            if nid in usable and (len(usable) > 1 or nid not in alive):  # a node that lost a task is not used again
                usable.pop(nid)
            if not usable:
                raise InputError(f"ray: every usable node was lost (last: {entry['lost_on']}); finished shards are "
                                 "kept: run again with --resume when the cluster is back") from None
            queue.appendleft(first)
            submit()
            continue
        for rel, cols in part["shards"]:
            path = out / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts or Path(rel).parts[0] != "records":
                raise InputError(f"ray: a task returned the shard path {rel!r}, outside {out}/records")
            if not records.shard_done(path, len(cols["sample"])):
                records.write_table(path, cols)
        for key, value in part["stats"].items():
            setattr(stats, key, getattr(stats, key) + value)
        if first in retried:
            retried[first]["finished_on"] = label.get(part["node"], part["node"])
        if not first_seen and on_first_result is not None:
            first_seen = True
            on_first_result(list(pending))
        submit()
    stats.seconds = time.perf_counter() - start
    remove_stale_temps(out)
    return stats
