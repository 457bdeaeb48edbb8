"""Streaming random-noise campaign: every (sample, dose, draw) through every model, resumable.

Work is cut into sample blocks of ``shard_samples`` samples. For each block the
clean decisions are computed once, then for each level the draws of every
sample stream through the engines in batches. A shard (one file of records)
holds one block at one level for a range of draws: all K when the block's
records fit ``SHARD_RECORDS``, else consecutive ranges of as many draws as fit,
so the records held in memory until a shard is written do not grow with K. A
dispatcher thread loads images and hands each batch to a pool of workers
that generate its noise (keyed, see ``audit.campaign.noise``), preprocess it
and, on the host, run the engines on it; the main thread takes the batches
in order, computes flips and writes shards (NumPy's FFT and ONNX Runtime
release the GIL). The queue between them is bounded, so memory stays flat
whatever N and K are, and the records do not depend on the worker count.

Before a fresh campaign writes anything, ``start_store`` checks the data and
the models, and (when asked, as ``audit run`` does) hands a ``RunSize`` (its
inferences, records on disk and a time estimate from a probe batch) to a
callback that may refuse it.

Three steps, one function each: ``plan`` (what is left to do, from the
records on disk), ``produce`` (the dispatcher: images, then one ``make_batch``
job per batch: noise, preprocessing, inference on the host) and ``Consumer``
(flips, shards written atomically; inference where the engines are on a GPU).

One campaign, on the engines' array namespace (``campaign_namespace``): noise,
add, window and clip are made where the engine runs (CuPy for an engine on a
GPU, NumPy on the CPU; same keys, same uniform bits), the batches go to the
engine in that namespace and only decisions and scores come back to the host.
Models on different namespaces or devices get their noise on the host (each
engine then copies its batch in): one noise stream, drawn once, replayable.

Detection models (``audit.artifact.heads``: what a detection flip is) need the data's reference lesions
(``audit.data.lesions_of``); their shards carry the candidates, roles and lesion flips of every draw
(``records.DETECTION_COLUMNS``). A model whose data exceed its fixed input runs by sliding window
(``AuditedModel.window_tile``), inside ``decide_input``.

Threads (``thread_layout``): on the host one worker per core, each doing all
of a batch's work with single-thread engine runs; with a GPU one worker
launching device noise beside the engine on the main thread. Explicit
``[run] noise_workers`` and ``[[model]] threads`` / ``streams`` always win.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import queue
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from audit.artifact import AuditedModel, Decisions
from audit.campaign import records
from audit.campaign.noise import NoiseBank, NoiseSpec
from audit.data import data_fingerprint, lesions_of
from audit.engines.threads import one_stream, torch_threads_during, usable_cpus
from audit.errors import ConfigError, InputError
from audit.io import atomic_path, is_temp, progress_bar, remove_stale_temps
from kernels._xp import namespace

_DONE = object()

#: Most records (samples x draws) one shard holds per model. A shard is assembled in memory before it is written,
#: so this bounds the campaign's memory whatever K is: 2**16 records are about 3 MiB of columns (x2 while written).
#: Blocks of ``shard_samples`` x K records within it stay one shard per level, named as before draws were split.
SHARD_RECORDS = 2**16
#: The records' ``k`` column is int32: more draws per sample and level cannot be recorded.
MAX_DRAWS = 2**31 - 1
#: Bytes one record takes in a Parquet shard, an upper estimate: measured about 6 (binary and regression heads of a
#: planted model whose scores repeat, 128,000 records); scores that never repeat add up to 4, Dice as many.
RECORD_BYTES = 16
#: ``audit run`` refuses a campaign above this many inferences unless ``--yes`` is given (``--max-inferences``
#: changes it). 10^8 inferences take hours even where an engine runs 10^4 a second (about 3 h on a GPU, a day or
#: more on a 2-core CPU) and write up to 1.6 GB of records: a typo in ``draws`` or ``levels`` should not start
#: that unasked.
MAX_RUN_INFERENCES = 10**8
#: Memory the batches of the campaign's workers may take together (``campaign_workers``): counted as two float32
#: input batches per worker (the one it makes, and its temporaries or a sliding-window model's dense map of one
#: volume; an upper estimate where finished batches hold decisions only; the block's images, ``shard_samples`` of
#: them, come on top). 256^2 slices or 32^3 cubes in batches of 64 (8-16 MiB) never meet it; whole CT volumes
#: do (512 x 512 x 300 voxels: 315 MB each), and then fewer workers start rather than memory growing with the cores.
WORKER_MEMORY_BYTES = 2 * 2**30


#: The cores this process may run on (its affinity mask, e.g. a container's cpuset): the engines' one rule.
available_cpus = usable_cpus


@dataclass(frozen=True)
class ThreadLayout:
    """How a campaign splits the ``cpus`` cores: ``workers`` threads each making whole batches (noise, add, window,
    clip) and, where the engines run on the host, also running the engines on the batch it made
    (``engines_in_workers``), there unsplit on the worker's thread (``one_stream``)."""

    cpus: int
    workers: int

    def engine_options(self) -> dict[str, int]:
        """The ONNX Runtime options a CPU model gets (``[[model]] threads`` / ``streams``): single-thread runs, one
        stream per core for runs outside the workers (an attack's queries; ``audit.engines.ort``)."""
        return {"threads": 1, "streams": self.cpus}


def thread_layout(cpus: int | None = None, *, device: bool = False) -> ThreadLayout:
    """The thread layout for ``cpus`` cores (default: ``available_cpus()``).

    On the host: one worker per core, each taking whole batches in turn and doing all of a batch's work on its
    core (noise, add, window, clip, then every model's single-thread engine run; ``engines_in_workers``),
    the main thread only ordering their results and writing shards. No core waits for another and no thread
    preempts another: the work per image (noise + engine CPU time) is spread over every core, whatever the split
    between noise and engine is. Measured on 2 cores (issue 17, bench/campaign.py): BodySiteNet2D, where noise
    takes more CPU than inference, 0.38 of its bare engine with a noise producer feeding 2 engine streams (the
    producer one thread: a core idles while the engine waits for it) against 0.45 this way (limit 0.47);
    NoduleNet3D, where inference dominates, 0.91 either way (limit 0.92; medians of 5 quiet rounds).
    ``device`` (noise and engine on a GPU): the host only launches work: 1 worker making the device's noise and
    the engine run on the main thread, so the two overlap. Explicit config values (``[[model]] threads`` /
    ``streams``, ``[run] noise_workers``) always win over this rule.
    """
    cpus = available_cpus() if cpus is None else max(1, int(cpus))
    return ThreadLayout(cpus, 1 if device else cpus)


def engines_in_workers(models: Sequence[AuditedModel], xp: Any, workers: int) -> bool:
    """Whether the campaign's workers run the engines on the batches they make (``thread_layout``): noise on the host,
    more than one worker, and every engine's runs single-thread under ``one_stream`` (``Engine.single_thread_runs``:
    an ONNX Runtime CPU session with single-thread runs, a torch CPU module, a served model). Otherwise the engines
    run on the main thread, overlapping the workers' noise (a GPU engine, a session on intra-op threads, one worker)."""
    return xp is np and workers > 1 and all(getattr(m.engine, "single_thread_runs", False) for m in models)


def campaign_workers(models: Sequence[AuditedModel], xp: Any, per_batch: int = 0) -> int:
    """The campaign's workers where ``[run] noise_workers`` is not given: ``thread_layout``'s (one per core on the
    host, one beside a GPU engine), but one where a host engine runs on several threads per run (an ONNX Runtime
    session opened with intra-op threads): its runs on the main thread keep the cores busy, beside one noise worker,
    as the layout before the workers had it. ``per_batch`` (bytes of one float32 input batch, ``batch_bytes``): at
    most as many workers as ``WORKER_MEMORY_BYTES`` holds two such batches each for (at least 1)."""
    busy = any(str(getattr(m.engine, "device", "cpu")) == "cpu" and not getattr(m.engine, "single_thread_runs", False)
               for m in models)
    n = 1 if busy else thread_layout(device=xp is not np).workers
    return max(1, min(n, WORKER_MEMORY_BYTES // (2 * per_batch))) if per_batch > 0 else n


def batch_bytes(options: "RunOptions", source: Any) -> int:
    """Bytes of one float32 input batch of ``source``'s images (``options.batch_size`` of them; 0: shape unknown)."""
    shape = getattr(source, "shape", None)
    return int(options.batch_size) * math.prod(int(v) for v in shape) * 4 if shape else 0


@dataclass(frozen=True)
class RunOptions:
    batch_size: int = 64
    shard_samples: int = 64
    noise_workers: int | None = None  # workers making batches; None: from ``thread_layout`` (the cores, the engines' device)
    prefetch: int = 4
    progress: bool | None = None  # None: on a terminal only, never under CI
    shard_records: int | None = None  # most records per shard; None: SHARD_RECORDS

    def __post_init__(self) -> None:
        for key in ("batch_size", "shard_samples", "noise_workers", "prefetch", "shard_records"):
            v = getattr(self, key)
            if (v is not None or key not in ("shard_records", "noise_workers")) and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"run.{key}: expected an integer >= 1, got {v!r}")

    def workers(self, xp: Any = np, models: Sequence[AuditedModel] = (), source: Any = None) -> int:
        """The workers making batches: ``noise_workers`` if given, else ``campaign_workers`` for where the noise is
        made, what the engines are and how large a batch of ``source``'s images is."""
        if self.noise_workers is not None:
            return self.noise_workers
        return campaign_workers(models, xp, batch_bytes(self, source) if source is not None else 0)

    def draw_step(self, draws: int) -> int:
        """The length of the draw ranges shards are cut into for ``draws`` = K: K itself when a block's
        ``shard_samples`` x K records fit ``shard_records``, else as many draws as fit (at least one)."""
        most = SHARD_RECORDS if self.shard_records is None else self.shard_records
        return draws if self.shard_samples * draws <= most else max(1, most // self.shard_samples)


def draw_ranges(k0: int, k1: int, step: int) -> Iterator[tuple[int, int]]:
    """The shards' draw ranges covering k0 <= k < k1: cut at the multiples of ``step`` (lazily: K may be huge)."""
    a = k0
    while a < k1:
        b = min(k1, (a // step + 1) * step)
        yield a, b
        a = b


@dataclass(frozen=True)
class RunSize:
    """What a campaign will do: ``inferences`` (N x levels x (K + 1 clean) per model), the records it writes and
    their estimated bytes on disk, and ``seconds`` estimated from one timed batch (noise, preprocessing and every
    model), or None where no batch was timed."""

    samples: int
    levels: int
    draws: int
    models: int
    seconds: float | None = None

    @property
    def inferences(self) -> int:
        return self.samples * self.levels * (self.draws + 1) * self.models

    @property
    def records(self) -> int:
        return self.samples * self.levels * self.draws * self.models

    @property
    def disk_bytes(self) -> int:
        return self.records * RECORD_BYTES

    def describe(self) -> str:
        def si(v: float, unit: str) -> str:
            for p, s in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
                if v >= p:
                    return f"{v / p:.3g} {s}{unit}"
            return f"{v:.3g} {unit}"

        t = self.seconds
        when = "" if t is None else ", about " + ("1 s" if t < 1 else f"{t:.0f} s" if t < 120 else f"{t / 60:.0f} min" if t < 7200 else
                                                  f"{t / 3600:.1f} h" if t < 172800 else f"{t / 86400:.1f} days")
        return f"{self.dims} = {self.inferences:,} inferences; records {si(self.disk_bytes, 'B')} on disk{when}"

    @property
    def dims(self) -> str:
        return f"{self.samples} samples x {self.levels} levels x ({self.draws} draws + clean) x {self.models} model(s)"


@dataclass
class CampaignStats:
    """What a campaign did and how long it took. ``inferences``: the noisy ones (one record each);
    ``clean_inferences``: the clean pass (once per sample block and model), inside ``seconds`` and
    ``engine_seconds`` too, so ``images_per_second`` counts both: every image the engines ran, per wall second.
    ``noise_seconds`` and ``engine_seconds`` are summed over the workers (``thread_layout``): with several they exceed
    the wall time."""

    inferences: int = 0
    shards_run: int = 0
    shards_reused: int = 0
    seconds: float = 0.0
    noise_seconds: float = 0.0
    engine_seconds: float = 0.0
    per_model: dict[str, float] = field(default_factory=dict)
    retries: list[dict[str, Any]] = field(default_factory=list)  # scale-out: blocks redone after a lost worker
    clean_inferences: int = 0
    clean_seconds: float = 0.0
    namespace: str = "numpy"  # where the noise was made (``campaign_namespace``)
    noise_workers: int = 1  # the campaign's workers (``RunOptions.workers``); the report key keeps its name

    @property
    def images_per_second(self) -> float:
        return (self.inferences + self.clean_inferences) / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        rate = self.images_per_second
        out = {"inferences": self.inferences, "shards_run": self.shards_run, "shards_reused": self.shards_reused,
               "wall_seconds": round(self.seconds, 3), "noise_seconds": round(self.noise_seconds, 3),
               "engine_seconds": round(self.engine_seconds, 3), "images_per_second": round(rate, 2),
               "clean_inferences": self.clean_inferences, "clean_seconds": round(self.clean_seconds, 3),
               "noise_namespace": self.namespace, "noise_workers": self.noise_workers}
        if self.retries:
            out["ray_retries"] = list(self.retries)
        return out


def fingerprint(models: Sequence[AuditedModel], source: Any, noise: NoiseSpec, options: RunOptions) -> str:
    """What the records depend on (not the batch size or thread counts). The shard layout is part of it:
    the draws per shard only where draws are split, so a campaign whose shards hold all K keeps its fingerprint."""
    desc = {"models": [{"name": m.name, "sha256": m.engine.describe().get("sha256", m.engine.source),
                        "head": m.head.to_dict(), "preprocess": list(m.preprocess.window) + [m.preprocess.clip]} for m in models],
            "noise": noise.to_dict(), "shard_samples": options.shard_samples,
            "data": data_fingerprint(source, lesions=needs_lesions(models))}
    if options.draw_step(noise.draws) < noise.draws:
        desc["shard_draws"] = options.draw_step(noise.draws)
    space = campaign_namespace(models)[0].__name__
    if space != "numpy":  # device noise equals the host's only to float32 rounding (same uniforms, other log/FFT):
        desc["noise_namespace"] = space  # records of one campaign come from one of them (host runs keep their hash)
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Plan:
    """What a (resumed) campaign still has to do: per sample block, per level, the shards (draw ranges) not yet done.

    ``todo`` holds ``(first, levels)`` per block with clean or level records missing; ``levels`` holds
    ``(level, done)`` where ``done`` is the set of draw ranges whose shards every model has (skipped)."""

    first_ks: tuple[int, int]          # draws k0 <= k < k1
    draws: int                         # K of the campaign
    step: int                          # draws per shard (ranges cut at its multiples; K when they fit)
    todo: tuple[tuple[int, tuple[tuple[float, frozenset], ...]], ...]
    reused: int
    n: int
    block: int
    total: int

    @property
    def k(self) -> int:
        return self.first_ks[1] - self.first_ks[0]

    def ranges(self, done: frozenset = frozenset()) -> Iterator[tuple[int, int]]:
        return (r for r in draw_ranges(*self.first_ks, self.step) if r not in done)

    def shard(self, out: Path, model: str, level_key: int, first: int, draws: tuple[int, int]) -> Path:
        """The shard file of draws k0 <= k < k1: named without a range when it holds all K."""
        return records.shard_path(out, model, level_key, first, None if draws == (0, self.draws) else draws)


def start_store(models: Sequence[AuditedModel], source: Any, noise: NoiseSpec, out: Path, options: RunOptions,
                resume: bool, create: bool = True, *, check_size: Callable[[RunSize], None] | None = None,
                dose_model: Any = None) -> None:
    """Check or write ``campaign.json``: a fresh run needs a fresh folder, ``resume`` the same campaign.

    Before a fresh run writes anything: ``out`` must be new, empty or an output folder of ours (a folder holding
    other files is refused), every data row passes the source's first pass (``preflight``: readable, finite, right
    rank, shape and modality) and every model decides one sample (its head fits its outputs), so a bad input
    fails with nothing written. ``check_size`` (a fresh run only) then gets the run's ``RunSize``, its time
    estimated from one timed batch of sample 0 (noise at the first level, preprocessing, every model), and may
    refuse it by raising. ``create=False`` (a scale-out worker) never writes it: a missing marker means this
    worker does not see the driver's output folder."""
    fp = fingerprint(models, source, noise, options)
    marker = out / "campaign.json"
    if not create and not marker.exists():
        raise InputError(f"{out}: no campaign.json where the driver wrote one: this worker does not see the driver's "
                         "output folder (scale-out needs a filesystem every node mounts at the same path)")
    if marker.exists():
        try:
            previous = json.loads(marker.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            raise InputError(f"{marker}: unreadable; this folder's campaign cannot be resumed, choose another --out") from None
        if not resume:
            raise InputError(f"{out}: holds results of an earlier run; pass --resume to finish it or choose another --out")
        if previous != fp:
            raise InputError(f"{out}: holds results of a different campaign (models, data or noise changed); choose another --out")
        return
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; --out must be a new, empty or earlier output folder")
    if out.is_dir():  # what an output folder of ours holds, even when its marker is gone (audit demo redoes a run)
        ours = {"campaign.json", "records", "report.json", "report.html", "junit.xml", "gate.json"}
        names = sorted(p.name for p in out.iterdir() if not is_temp(p))
        if names and not set(names) & ours:
            raise InputError(f"{out}: not empty and holds no run of ours (no campaign.json; found {names[0]!r}"
                             f"{f' and {len(names) - 1} more' if len(names) > 1 else ''}); choose a new or empty --out")
    labels = getattr(source, "labels", None)
    for m in models if labels is not None else ():  # a label no class of the model has would skew every metric
        n = m.head.n_classes
        bad = np.flatnonzero((np.asarray(labels) >= n) | (np.asarray(labels) < -1)) if n else ()
        if len(bad):
            i = int(bad[0])
            raise InputError(f"{source.name}: sample {i} ({source.ids[i]}): label {int(labels[i])} is not a class of model "
                             f"'{m.name}' (expected 0..{n - 1}, or -1 for unknown)")
    preflight = getattr(source, "preflight", None)
    if preflight is not None:
        preflight()
    if len(source):
        sample = source.load([0])
        for m in models:  # the head reads the engine's outputs (names, count, classes) before any shard exists
            fixed = m.engine.input_spec.shape[0]
            m.decide_batched(np.repeat(sample, fixed if isinstance(fixed, int) else 1, axis=0), options.batch_size,
                             source.spacing)
    if check_size is not None:
        check_size(RunSize(len(source), len(noise.levels), noise.draws, len(models),
                           _probe_seconds(models, source, noise, options, dose_model) if len(source) else None))
    remove_stale_temps(out)  # a fresh run: what an earlier run killed before its marker left is ours to clear
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps({"fingerprint": fp, "noise": noise.to_dict(), "models": [m.name for m in models]}, indent=1))


def _probe_seconds(models: Sequence[AuditedModel], source: Any, noise: NoiseSpec, options: RunOptions,
                   dose_model: Any) -> float:
    """The whole campaign's time, estimated from one batch of sample 0 at the first level, as the campaign runs it
    (noise, preprocessing, every model; the engines are warm from the head probe), divided by the workers where each
    does all of a batch's work (``engines_in_workers``). One process: ``--ray`` is faster. An estimate: per image cost
    differs a little between levels and samples, and workers sharing a machine's memory scale less than linearly."""
    b = min(options.batch_size, noise.draws)
    hu = np.repeat(source.load([0]), b, axis=0)
    level = noise.levels[0]
    xp = campaign_namespace(models)[0]
    workers = options.workers(xp, models, source)
    alone = engines_in_workers(models, xp, workers)  # timed as one worker runs it, then shared by all of them
    t0 = time.perf_counter()
    with one_stream() if alone else contextlib.nullcontext():
        keys = noise.keys(np.zeros(b, np.int64), level, np.arange(b))
        noisy = hu + noise.sample(keys, level, hu, source.spacing, model=dose_model)
        for m in models:  # a model with a fixed batch size gets batches of that size, as in the head probe
            fixed = m.engine.input_spec.shape[0]
            m.decide_batched(noisy if not isinstance(fixed, int) else np.resize(noisy, (fixed, *noisy.shape[1:])),
                             fixed if isinstance(fixed, int) else b, source.spacing)
    per_image = (time.perf_counter() - t0) / b / (workers if alone else 1)
    return per_image * len(source) * len(noise.levels) * (noise.draws + 1)


_SHARD_NAME = re.compile(r"shard-(\d{8})(?:-k(\d+)-(\d+))?\.parquet")


def _shards_on_disk(folder: Path, draws: int) -> dict[int, list[tuple[int, int, Path]]]:
    """The shard files of one model and level, by sample block: (k0, k1, path), read from the names."""
    found: dict[int, list[tuple[int, int, Path]]] = {}
    if not folder.is_dir():
        return found
    for path in folder.iterdir():
        m = _SHARD_NAME.fullmatch(path.name)
        if m:
            k0, k1 = (0, draws) if m.group(2) is None else (int(m.group(2)), int(m.group(3)))
            found.setdefault(int(m.group(1)), []).append((k0, k1, path))
    return found


def plan(models: Sequence[AuditedModel], n: int, noise: NoiseSpec, out: Path, options: RunOptions, *,
         draws: tuple[int, int] | None = None, levels: Sequence[float] | None = None,
         blocks: Sequence[int] | None = None) -> Plan:
    """The shards still missing under ``out`` (finished ones are reused, never redone). Work is never enumerated
    draw by draw: only the shard files on disk are listed, so a huge K costs nothing here."""
    k0, k1 = (0, noise.draws) if draws is None else (int(draws[0]), int(draws[1]))
    if not 0 <= k0 < k1 <= noise.draws:
        raise ConfigError(f"draws: expected 0 <= k0 < k1 <= {noise.draws}, got ({k0}, {k1})")
    step = options.draw_step(noise.draws)
    wanted = list(noise.levels) if levels is None else [lv for lv in noise.levels if lv in set(levels)]
    firsts = list(range(0, n, options.shard_samples))
    if blocks is not None:
        unknown = sorted(set(blocks) - set(firsts))
        if unknown:
            raise ConfigError(f"blocks: {unknown} are not sample-block starts (multiples of {options.shard_samples} below {n})")
        firsts = [f for f in firsts if f in set(blocks)]

    def ours(r: tuple[int, int]) -> bool:  # a range this plan would write: inside (k0, k1), cut where it cuts
        return k0 <= r[0] < r[1] <= k1 and r[1] == min(k1, (r[0] // step + 1) * step) and (r[0] == k0 or r[0] % step == 0)

    on_disk = {(m.name, lv): _shards_on_disk(out / "records" / m.name / f"level-{noise.level_key(lv)}", noise.draws)
               for m in models for lv in wanted}
    todo, reused, total = [], 0, 0
    for first in firsts:
        size = min(options.shard_samples, n - first)
        todo_levels = []
        for lv in wanted:
            done: set[tuple[int, int]] | None = None
            for m in models:
                complete = {(a, b) for a, b, path in on_disk[(m.name, lv)].get(first, ())
                            if ours((a, b)) and records.shard_done(path, size * (b - a))}
                done = complete if done is None else done & complete
            done = done or set()
            reused += len(done)
            left = k1 - k0 - sum(b - a for a, b in done)
            if left:
                todo_levels.append((lv, frozenset(done)))
                total += size * left
        clean_missing = not all(records.shard_done(records.clean_path(out, m.name, first), size) for m in models)
        if todo_levels or clean_missing:
            todo.append((first, tuple(todo_levels)))
    return Plan((k0, k1), noise.draws, step, tuple(todo), reused, n, options.shard_samples, total)


def campaign_namespace(models: Sequence[AuditedModel]) -> tuple[Any, Any]:
    """(array namespace, device) the campaign makes its noise on: the engines' (``engine.xp``, ``engine.device``;
    NumPy and None where an engine states none) when every model shares one, else the host (NumPy), each engine
    then copying its batch to wherever it runs (one noise stream, drawn once, rather than one per device)."""
    spaces = {(namespace(getattr(m.engine, "xp", None)).__name__, str(getattr(m.engine, "device", None))) for m in models}
    if len(spaces) != 1:
        return np, None
    m = models[0]
    return namespace(getattr(m.engine, "xp", None)), getattr(m.engine, "device", None)


def on_device(xp: Any, device: Any) -> Any:
    """A context making ``device`` current for ``xp`` in this thread (CuPy allocates on the current device); a
    no-op on NumPy or where the device is not a CUDA ordinal (an int, ``"cuda:1"`` or an object with ``.id``)."""
    if xp is np or device is None:
        return contextlib.nullcontext()
    ordinal = getattr(device, "id", device)
    if isinstance(ordinal, str):
        ordinal = ordinal.rsplit(":", 1)[-1]
    try:
        return xp.cuda.Device(int(ordinal))
    except (TypeError, ValueError):
        return contextlib.nullcontext()


def noisy_inputs(models: Sequence[AuditedModel], hu: Any, noise: Any) -> dict[Any, Any]:
    """The engines' inputs for images ``hu`` plus ``noise`` (both in one namespace): add, window, clip (and the
    channel axis), once per distinct preprocessing. The noise buffer is fresh (the kernel's or the bank's), so the add
    is done in it when the dtypes agree (same sum). Where the lean kernel applies, ``fused_inputs`` does all of it."""
    if noise.dtype == hu.dtype:
        noise += hu
        noisy = noise
    else:
        noisy = hu + noise
    preps = {(m.preprocess, len(m.engine.input_spec.shape)) for m in models}
    if len(preps) == 1 and noisy.dtype == np.float32:  # one preprocessing: window and clip in place, its same bits
        (prep, rank), = preps
        lo, hi = prep.window
        noisy -= np.float32(lo)
        noisy *= np.float32(1.0 / (hi - lo))
        if prep.clip:
            noisy.clip(0.0, 1.0, out=noisy)
        return {(prep, rank): noisy.reshape(noisy.shape[0], *(1,) * max(0, rank - noisy.ndim), *noisy.shape[1:])}
    inputs: dict[Any, Any] = {}
    for m in models:
        key = (m.preprocess, len(m.engine.input_spec.shape))
        if key not in inputs:
            inputs[key] = m.prepare(noisy)
    return inputs


def fused_inputs(models: Sequence[AuditedModel], plan: Any, hu: Any, keys: np.ndarray) -> dict[Any, Any]:
    """The engines' inputs made by the lean kernel in one pass (noise, add, window, clip, in place in the engine's
    input buffer): the bits of ``noisy_inputs(models, hu, noise.sample(...))``. Only when every model shares one
    preprocessing (else empty: the noise is then drawn once and each preprocessing applied to it)."""
    preps = {(m.preprocess, len(m.engine.input_spec.shape)) for m in models}
    if len(preps) != 1:
        return {}
    (prep, rank), = preps
    xp = plan.xp
    out = xp.empty((hu.shape[0], *(1,) * max(0, rank - hu.ndim), *hu.shape[1:]), xp.float32)
    plan.noisy_into(out, hu, keys, window=tuple(prep.window), clip=bool(prep.clip))
    return {(prep, rank): out}


@dataclass(frozen=True)
class Made:
    """One batch as a worker made it: the engines' inputs (engines on the main thread) or every model's decisions
    (``engines_in_workers``), with the seconds its noise and its engines took on that worker."""

    inputs: dict[Any, Any] | None
    decisions: dict[str, Decisions] | None
    noise_seconds: float
    engine_seconds: float = 0.0


def make_batch(models: Sequence[AuditedModel], source: Any, noise: NoiseSpec, hu: Any, rows: np.ndarray, keys: np.ndarray,
               level: float, plan: Any, bank: NoiseBank | None, dose_model: Any, xp: Any, infer: bool) -> Made:
    """A worker's whole batch: noisy, preprocessed inputs of images ``hu[rows]`` under ``keys`` in ``xp`` (the lean
    kernel where it applies, else the noise drawn once and each preprocessing applied to it), then, with ``infer``,
    every model's decisions on them. One thread: the workers, not the threads inside a batch, use the cores."""
    t0 = time.perf_counter()
    images = hu[xp.asarray(rows)]
    # Preprocess here, off the main thread; models sharing a preprocessing share the input.
    inputs = fused_inputs(models, plan, images, keys) if plan is not None else {}
    if not inputs:
        drawn = (bank.sample(keys, level) if bank is not None else
                 plan.noise(keys) if plan is not None else
                 noise.sample(keys, level, images, source.spacing, model=dose_model, xp=xp))
        inputs = noisy_inputs(models, images, drawn)
    if xp is not np:  # device work is queued, not done: wait, so the time is the noise's and the
        xp.cuda.get_current_stream().synchronize()  # engine's stream never reads a batch half made
    t1 = time.perf_counter()
    if not infer:
        return Made(inputs, None, t1 - t0)
    decisions = {m.name: m.decide_input(inputs[(m.preprocess, len(m.engine.input_spec.shape))], source.spacing)
                 for m in models}
    return Made(None, decisions, t1 - t0, time.perf_counter() - t1)


def produce(put: Any, stopped: Any, work: Plan, models: Sequence[AuditedModel], source: Any, noise: NoiseSpec,
            options: RunOptions, dose_model: Any, *, xp: Any = np, bank: NoiseBank | None = None,
            submit: Callable[[Callable[[], Made]], Future], infer: bool = False) -> None:
    """The dispatcher: for each block, its images, then per level and shard (draw range) one job per batch
    (``make_batch``: noisy, preprocessed inputs in ``xp``, ``campaign_namespace``; with ``infer`` the decisions too),
    handed to ``submit`` (the workers' pool) and put in order as futures. ``dose_model``:
    ``noise.noise_model(source)`` (the whole noise of a dose, or what a lower dose adds); ``bank``: draws taken from a
    ``NoiseBank`` instead of fresh."""
    plans: dict[float, Any] = {}  # the lean kernel per level (None where only ``NoiseSpec.sample`` applies)
    for first, levels in work.todo:
        idx = np.arange(first, min(first + options.shard_samples, work.n))
        hu = xp.asarray(source.load(idx))
        put(("block", first, idx, hu))
        for level, done in levels:
            if bank is not None:
                bank.fields(level)  # drawn once per level, here (its own threads), before the workers share it
            elif level not in plans:
                plans[level] = noise.plan(level, hu.shape[1:], source.spacing, model=dose_model, xp=xp)
            for k0, k1 in work.ranges(done):
                k = k1 - k0
                for lo in range(0, idx.size * k, options.batch_size):
                    if stopped():
                        return
                    flat = np.arange(lo, min(lo + options.batch_size, idx.size * k))
                    rows, ks = flat // k, k0 + flat % k
                    job = functools.partial(make_batch, models, source, noise, hu, rows, noise.keys(idx[rows], level, ks),
                                            level, plans.get(level), bank, dose_model, xp, infer)
                    put(("batch", level, rows, ks, submit(job)))
                put(("shard_end", level, k0, k1))


class Consumer:
    """The main thread's side: clean decisions per block, flips per batch (in order, whichever worker made it), one
    shard per block, level, draw range and model."""

    def __init__(self, models: Sequence[AuditedModel], source: Any, noise: NoiseSpec, out: Path, options: RunOptions,
                 work: Plan, stats: CampaignStats, bar: Any, sink: Callable[[Path, dict], None] | None = None) -> None:
        self.models, self.source, self.noise, self.out, self.options = models, source, noise, out, options
        self.work, self.stats, self.bar = work, stats, bar
        self.sink = sink
        self.clean: dict[str, Decisions] = {}
        # detection heads' reference lesions, one per sample (None: none); read only when a detection model needs them
        self.lesions = lesions_of(source) if needs_lesions(models) else None
        self.acc: dict[str, dict[str, list]] = {}
        self.idx = np.empty(0, np.int64)
        self.first = 0

    def _write(self, path: Path, columns: dict[str, np.ndarray]) -> None:
        """A shard, written atomically under ``out``, or handed to ``sink`` (path relative to ``out``): scale-out."""
        if self.sink is None:
            records.write_table(path, columns)
        else:
            self.sink(path.relative_to(self.out), columns)

    def _lesions(self, m: AuditedModel, idx: np.ndarray) -> list | None:
        """The reference lesions of samples ``idx`` for a detection model (None for other tasks)."""
        if m.head.task != "detection" or self.lesions is None:
            return None
        return [self.lesions[int(i)] for i in idx]

    def block(self, first: int, idx: np.ndarray, hu: np.ndarray) -> None:
        self.first, self.idx = first, idx
        for m in self.models:
            t0 = time.perf_counter()  # the clean pass is engine work too: counted in the stats and the throughput
            clean = self.clean[m.name] = m.decide_batched(hu, self.options.batch_size, self.source.spacing)
            dt = time.perf_counter() - t0
            self.stats.clean_seconds += dt
            self.stats.engine_seconds += dt
            self.stats.clean_inferences += idx.size
            path = records.clean_path(self.out, m.name, first)
            if not records.shard_done(path, idx.size):
                labels = self.source.labels
                true = labels[idx] if labels is not None else np.full(idx.size, -1)
                cols = {"sample": idx.astype(np.int64), "true_label": np.asarray(true, np.int64),
                        "clean_label": clean.labels, "clean_score": clean.scores,
                        **m.head.clean_columns(clean, self.source.spacing, self._lesions(m, idx))}
                if clean.ood is not None:
                    cols[records.CLEAN_OOD_COLUMN] = clean.ood
                self._write(path, cols)
        self.acc = {m.name: {c: [] for c in records.RECORD_COLUMNS} for m in self.models}

    def batch(self, level: float, rows: np.ndarray, ks: np.ndarray, made: Future) -> None:
        """A batch's records, in order: its worker's ``Made`` (waited for), the engines run here where it holds inputs."""
        done: Made = made.result()
        self.stats.noise_seconds += done.noise_seconds
        self.stats.engine_seconds += done.engine_seconds
        for m in self.models:
            if done.decisions is not None:
                dec = done.decisions[m.name]
            else:
                t0 = time.perf_counter()
                dec = m.decide_input(done.inputs[(m.preprocess, len(m.engine.input_spec.shape))], self.source.spacing)
                self.stats.engine_seconds += time.perf_counter() - t0
            ref = self.clean[m.name].take(rows)
            flipped, metrics = m.head.draw_metrics(ref, dec, self.source.spacing, self._lesions(m, self.idx[rows]))
            a = self.acc[m.name]
            a["sample"].append(self.idx[rows].astype(np.int64))
            a["level"].append(np.full(rows.size, float(level)))
            a["k"].append(ks.astype(np.int32))
            a["clean_label"].append(ref.labels)
            a["label"].append(dec.labels)
            a["score"].append(dec.scores)
            a["flipped"].append(flipped)
            a["dice"].append(metrics.pop("dice", np.full(rows.size, np.nan, np.float32)))
            for c, v in metrics.items():  # contour metrics (records.CONTOUR_COLUMNS) when computed; detection columns
                a.setdefault(c, []).append(v)
            if dec.ood is not None:
                a.setdefault(records.OOD_COLUMN, []).append(dec.ood)
        self.stats.inferences += rows.size * len(self.models)
        self.bar.update(rows.size)

    def shard_end(self, level: float, k0: int, k1: int) -> None:
        for m in self.models:
            path = self.work.shard(self.out, m.name, self.noise.level_key(level), self.first, (k0, k1))
            if not records.shard_done(path, self.idx.size * (k1 - k0)):
                self._write(path, {c: _joined(v) for c, v in self.acc[m.name].items()})
            self.acc[m.name] = {c: [] for c in records.RECORD_COLUMNS}
        self.stats.shards_run += 1


def _joined(parts: list) -> Any:
    """One shard column from its batches: arrays concatenated, list columns (one array per record) chained."""
    return [x for part in parts for x in part] if isinstance(parts[0], list) else np.concatenate(parts)


def needs_lesions(models: Sequence[AuditedModel]) -> bool:
    """Whether the campaign's records depend on the data's reference lesions (a detection model is among them)."""
    return any(m.head.task == "detection" for m in models)


def check_lesions(models: Sequence[AuditedModel], source: Any) -> None:
    """A detection model needs the data's reference lesions (lesion-free scans are samples with L = 0)."""
    for m in models:
        if m.head.task == "detection" and lesions_of(source) is None:
            raise InputError(f"{source.name}: model '{m.name}' is a detection model but the data hold no reference "
                             "lesions (ArraySource(lesions=...), or .npz manifest rows with a 'lesions' array)")


def run_campaign(models: Sequence[AuditedModel], source: Any, noise: NoiseSpec, out: Path, options: RunOptions = RunOptions(),
                 *, resume: bool = False, draws: tuple[int, int] | None = None,
                 levels: Sequence[float] | None = None, blocks: Sequence[int] | None = None,
                 create_store: bool = True, check_size: Callable[[RunSize], None] | None = None,
                 noise_model: Any = None, sink: Callable[[Path, dict], None] | None = None) -> CampaignStats:
    """Run (or finish, with ``resume``) a campaign; records land under ``out/records``.

    ``draws = (k0, k1)`` runs only draws k0 <= k < k1 (the sequential gate's rounds; the keys are
    those of a full run, so a round is exactly a slice of it) and ``levels`` a subset of the levels.
    ``blocks`` restricts the run to the sample blocks starting at these indices (multiples of
    ``shard_samples``): how scale-out workers split a campaign between them. ``check_size``: see ``start_store``
    (``audit run`` refuses a run above ``MAX_RUN_INFERENCES`` there unless ``--yes``). ``sink`` (a scale-out worker
    without the driver's folder): each shard's columns go to ``sink(path relative to out, columns)``, nothing is
    written and no store is checked (the driver did), and every shard of ``blocks`` is computed.
    """
    out = Path(out)
    if not models:
        raise ConfigError("models: expected at least one model to audit")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"models: names must be unique, got {names}")
    if noise.draws > MAX_DRAWS:  # refused, never allocated: the records' k column is int32
        raise ConfigError(f"noise.draws: at most {MAX_DRAWS:,} draws per sample and level, got {noise.draws:,}")
    for m in models:
        m.check_input(source)
    check_lesions(models, source)
    noise = noise.resolved(source)  # add or reduce, decided by the data; recorded in campaign.json
    # reduce: acquired doses read and every level checked, before any output (``noise_model``: the caller's, built once
    # by ``noise.noise_model(source)`` for the campaign and its reports)
    dose_model = noise_model if noise_model is not None else noise.noise_model(source)
    if sink is None:  # a sink's caller (the scale-out driver) checked and wrote the store itself
        start_store(models, source, noise, out, options, resume, create_store, check_size=check_size, dose_model=dose_model)
    if resume and blocks is None:
        remove_stale_temps(out)  # writes cut short when the earlier run was killed
    work = plan(models, len(source), noise, out, options, draws=draws, levels=levels, blocks=blocks)
    xp, device = campaign_namespace(models)
    workers = options.workers(xp, models, source)
    infer = engines_in_workers(models, xp, workers)
    stats = CampaignStats(shards_reused=work.reused, namespace=xp.__name__, noise_workers=workers)
    # an opt-in bank (screening runs): its fields are drawn lazily, per level, in the dispatcher thread
    bank = NoiseBank(noise, source.shape, source.spacing, dose_model, xp=xp, workers=workers) if noise.bank else None

    stop = threading.Event()
    # batches alive at once: one being made per worker, up to ``prefetch`` + ``workers`` made and queued, one the
    # dispatcher holds and one the main thread reads (finished ones hold decisions only where workers run the engines)
    q: "queue.Queue[Any]" = queue.Queue(maxsize=options.prefetch + workers)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="audit-worker")

    def submit(job: Callable[[], Made]) -> Future:
        def worker_job() -> Made:  # CuPy's current device is per thread; a worker's engine runs stay on its thread
            with on_device(xp, device), one_stream():
                return job()
        return pool.submit(worker_job)

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def dispatcher() -> None:
        try:
            with on_device(xp, device):
                produce(put, stop.is_set, work, models, source, noise, options, dose_model, xp=xp, bank=bank,
                        submit=submit, infer=infer)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            put(("error", exc))
        finally:
            put(_DONE)

    start = time.perf_counter()
    thread = threading.Thread(target=dispatcher, name="batch-dispatcher", daemon=True)
    thread.start()
    bar = progress_bar(work.total, options.progress, "audit")
    consumer = Consumer(models, source, noise, out, options, work, stats, bar, sink)
    try:
        # CuPy's current device is per thread: the clean pass preprocesses here too. Beside workers that run the
        # engines (and so keep every core busy) the clean pass runs unsplit on this thread as well, and torch's
        # thread count (one per process) stays 1 while the workers run: a torch engine's runs leave it alone there
        with on_device(xp, device), (one_stream() if infer else contextlib.nullcontext()), \
                (torch_threads_during(1) if infer else contextlib.nullcontext()):
            consume(q, consumer)
    finally:
        stop.set()
        bar.close()
        thread.join(timeout=10)
        pool.shutdown(wait=True, cancel_futures=True)
    stats.seconds = time.perf_counter() - start
    return stats


def consume(q: "queue.Queue[Any]", consumer: Consumer) -> None:
    """The main thread's loop: hand each item of the dispatcher to the consumer until done; re-raise its errors."""
    while True:
        item = q.get()
        if item is _DONE:
            return
        kind, args = item[0], item[1:]
        if kind == "error":
            raise args[0]
        getattr(consumer, kind)(*args)
