"""Scale-out on Ray: sample blocks spread over actors that each hold their own engine.

Every actor runs ``run_campaign`` on the blocks it is handed and writes into
the same result store; shards are atomic and keyed, so the records (and the
report) are identical to a single-process run whatever the placement. The
driver hands out one block at a time: when an actor, its worker process or
its whole node is lost, the block goes back to the queue and a new actor
(placed by Ray on a node that is alive) takes it, up to ``MAX_ATTEMPTS`` times
per block; a block whose shards were already written is skipped, so nothing is
lost or duplicated. Which blocks were retried, and why, is in the run's
statistics (report.json ``timing.ray_retries``). Paths are resolved on the
driver; an actor never creates a store: one that cannot see the driver's
``--out`` (no shared filesystem at the same path) fails with one line that
says so. Requirement: the output folder, the model and the data must be on a
filesystem every node mounts at the same path.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from audit.artifact import open_artifact
from audit.campaign.run import CampaignStats, run_campaign
from audit.data import open_source
from audit.errors import InputError
from audit.io import remove_stale_temps
from kernels._xp import optional_import


def _open(config: Any):
    """The models and source of an ``audit.config.AuditConfig``, opened where this runs (driver or actor)."""
    return [open_artifact(e, config.head, config.preprocess) for e in config.models], open_source(config.data, config.pacs)


def _one_thread_per_actor(config: Any) -> Any:
    """Actors get one CPU each: default ONNX Runtime to one intra-op thread unless the config says otherwise."""
    models = tuple(m if m.engine != "onnxruntime" or "threads" in m.options else
                   dataclasses.replace(m, options={**dict(m.options), "threads": 1}) for m in config.models)
    return dataclasses.replace(config, models=models)


#: How many workers may fail one sample block (actor, process or node lost) before the run stops.
MAX_ATTEMPTS = 4


def _kill(ray: Any, worker: Any) -> None:
    try:
        ray.kill(worker, no_restart=True)
    except Exception:  # noqa: BLE001 - an actor on a lost node cannot be killed again; nothing to do
        pass


def run_on_ray(config: Any, out: Path, *, address: str = "auto", actors: int | None = None, num_gpus: float = 0.0,
               resume: bool = False, on_first_result: Callable[[list], None] | None = None) -> CampaignStats:
    """Run the campaign of ``config`` over Ray actors; returns the summed statistics.

    ``address``: ``"auto"`` (join the cluster in RAY_ADDRESS or start a local one) or a cluster address.
    ``actors``: how many (default: the cluster's CPUs). ``num_gpus`` per actor (1 = one GPU each).
    """
    ray = optional_import("ray")
    out = Path(out).resolve()  # a relative --out means the driver's folder, wherever an actor runs
    config = _one_thread_per_actor(config)
    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    models, source = _open(config)
    options = dataclasses.replace(config.run, progress=False)
    run_campaign(models, source, config.noise, out, options, resume=resume, blocks=[])  # marker + fingerprint check
    firsts = list(range(0, len(source), options.shard_samples))
    count = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))

    @ray.remote(num_cpus=1, num_gpus=num_gpus, max_restarts=3, max_task_retries=3)
    class CampaignWorker:
        def __init__(self, config: Any, out: str) -> None:
            self.config, self.out = config, Path(out)
            self.models, self.source = _open(config)

        def run(self, block: int) -> dict[str, Any]:
            stats = run_campaign(self.models, self.source, self.config.noise, self.out, options, resume=True,
                                 blocks=[block], create_store=False)
            return {**stats.__dict__, "node": ray.get_runtime_context().get_node_id()}

    workers = [CampaignWorker.remote(config, str(out)) for _ in range(min(count, len(firsts)))]
    start = time.perf_counter()
    pending: dict[Any, tuple[Any, int]] = {}
    queue = list(firsts)
    attempts = {b: 0 for b in firsts}
    for w in workers:
        if queue:
            block = queue.pop(0)
            pending[w.run.remote(block)] = (w, block)
    total = CampaignStats()
    first_seen = False
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        worker, block = pending.pop(ready[0])
        try:
            part = ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:  # our own error inside the actor: a user error stays one line
            raise exc.as_instanceof_cause() from None
        except ray.exceptions.RayError as exc:  # the actor, its process or its node was lost: redo the block elsewhere
            attempts[block] += 1
            total.retries.append({"block": block, "attempt": attempts[block], "error": type(exc).__name__})
            if attempts[block] >= MAX_ATTEMPTS:
                raise InputError(f"ray: sample block {block} failed on {MAX_ATTEMPTS} workers ({type(exc).__name__}); "
                                 f"finished shards are kept: run again with --resume") from None
            workers.remove(worker)
            _kill(ray, worker)
            worker = CampaignWorker.remote(config, str(out))
            workers.append(worker)
            pending[worker.run.remote(block)] = (worker, block)
            continue
        for key in ("inferences", "shards_run", "shards_reused"):
            setattr(total, key, getattr(total, key) + part[key])
        total.noise_seconds += part["noise_seconds"]
        total.engine_seconds += part["engine_seconds"]
        if not first_seen and on_first_result is not None:
            first_seen = True
            on_first_result(workers)
        if queue:
            block = queue.pop(0)
            pending[worker.run.remote(block)] = (worker, block)
    total.seconds = time.perf_counter() - start
    for w in workers:
        _kill(ray, w)
    remove_stale_temps(out)  # writes cut short by a killed actor
    return total
