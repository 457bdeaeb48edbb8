"""Streaming random-noise campaign: every (sample, dose, draw) through every model, resumable.

Work is cut into shards of ``shard_samples`` samples. For each shard the clean
decisions are computed once, then for each level the K draws of every sample
stream through the engines in batches. A producer thread loads images,
generates noise (keyed, see ``audit.campaign.noise``) and preprocesses while the
main thread runs inference: NumPy's FFT and ONNX Runtime both release the GIL.
The queue between them is bounded, so memory stays flat whatever N is.

Three steps, one function each: ``plan`` (what is left to do, from the
records on disk), ``produce`` (the producer thread: images, noise,
preprocessing) and ``Consumer`` (inference, flips, shards written atomically).
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.artifact import AuditedModel, Decisions
from audit.campaign import records
from audit.campaign.noise import NoiseSpec
from audit.errors import ConfigError, InputError
from audit.io import atomic_path, is_temp, progress_bar, remove_stale_temps

_DONE = object()


@dataclass(frozen=True)
class RunOptions:
    batch_size: int = 64
    shard_samples: int = 64
    noise_workers: int = 1
    prefetch: int = 4
    progress: bool | None = None  # None: on a terminal only, never under CI

    def __post_init__(self) -> None:
        for key in ("batch_size", "shard_samples", "noise_workers", "prefetch"):
            v = getattr(self, key)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"run.{key}: expected an integer >= 1, got {v!r}")


@dataclass
class CampaignStats:
    inferences: int = 0
    shards_run: int = 0
    shards_reused: int = 0
    seconds: float = 0.0
    noise_seconds: float = 0.0
    engine_seconds: float = 0.0
    per_model: dict[str, float] = field(default_factory=dict)
    retries: list[dict[str, Any]] = field(default_factory=list)  # scale-out: blocks redone after a lost worker

    def to_dict(self) -> dict[str, Any]:
        rate = self.inferences / self.seconds if self.seconds else 0.0
        out = {"inferences": self.inferences, "shards_run": self.shards_run, "shards_reused": self.shards_reused,
               "wall_seconds": round(self.seconds, 3), "noise_seconds": round(self.noise_seconds, 3),
               "engine_seconds": round(self.engine_seconds, 3), "images_per_second": round(rate, 2)}
        if self.retries:
            out["ray_retries"] = list(self.retries)
        return out


def fingerprint(models: Sequence[AuditedModel], source: Any, noise: NoiseSpec, options: RunOptions) -> str:
    """What the records depend on (not the batch size or thread counts)."""
    desc = {"models": [{"name": m.name, "sha256": m.engine.describe().get("sha256", m.engine.source),
                        "head": m.head.to_dict(), "preprocess": list(m.preprocess.window) + [m.preprocess.clip]} for m in models],
            "noise": noise.to_dict(), "data": source.fingerprint(), "shard_samples": options.shard_samples}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Plan:
    """What a (resumed) campaign still has to do: per sample block, the levels whose shards are missing."""

    first_ks: tuple[int, int]          # draws k0 <= k < k1
    span: tuple[int, int] | None       # None for all K draws, else (k0, k1) (a sequential round)
    todo: tuple[tuple[int, tuple[float, ...]], ...]
    reused: int
    n: int
    block: int

    @property
    def k(self) -> int:
        return self.first_ks[1] - self.first_ks[0]

    @property
    def total(self) -> int:
        return sum(min(self.block, self.n - f) * self.k * len(lv) for f, lv in self.todo)


def start_store(models: Sequence[AuditedModel], source: Any, noise: NoiseSpec, out: Path, options: RunOptions,
                resume: bool, create: bool = True) -> None:
    """Check or write ``campaign.json``: a fresh run needs a fresh folder, ``resume`` the same campaign.

    Before a fresh run writes anything: ``out`` must be new, empty or an output folder of ours (a folder holding
    other files is refused), every data row passes the source's first pass (``preflight``: readable, finite, right
    rank, shape and modality) and every model decides one sample (its head fits its outputs), so a bad input
    fails with nothing written. ``create=False`` (a scale-out worker) never writes it: a missing marker means this
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
            m.decide_batched(np.repeat(sample, fixed if isinstance(fixed, int) else 1, axis=0), options.batch_size)
    remove_stale_temps(out)  # a fresh run: what an earlier run killed before its marker left is ours to clear
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps({"fingerprint": fp, "noise": noise.to_dict(), "models": [m.name for m in models]}, indent=1))


def plan(models: Sequence[AuditedModel], n: int, noise: NoiseSpec, out: Path, options: RunOptions, *,
         draws: tuple[int, int] | None = None, levels: Sequence[float] | None = None,
         blocks: Sequence[int] | None = None) -> Plan:
    """The shards still missing under ``out`` (finished ones are reused, never redone)."""
    k0, k1 = (0, noise.draws) if draws is None else (int(draws[0]), int(draws[1]))
    if not 0 <= k0 < k1 <= noise.draws:
        raise ConfigError(f"draws: expected 0 <= k0 < k1 <= {noise.draws}, got ({k0}, {k1})")
    k = k1 - k0
    span = None if (k0, k1) == (0, noise.draws) else (k0, k1)
    wanted = list(noise.levels) if levels is None else [lv for lv in noise.levels if lv in set(levels)]
    firsts = list(range(0, n, options.shard_samples))
    if blocks is not None:
        unknown = sorted(set(blocks) - set(firsts))
        if unknown:
            raise ConfigError(f"blocks: {unknown} are not sample-block starts (multiples of {options.shard_samples} below {n})")
        firsts = [f for f in firsts if f in set(blocks)]
    todo, reused = [], 0
    for first in firsts:
        size = min(options.shard_samples, n - first)
        todo_levels = tuple(lv for lv in wanted if not all(
            records.shard_done(records.shard_path(out, m.name, noise.level_key(lv), first, span), size * k) for m in models))
        clean_missing = not all(records.shard_done(records.clean_path(out, m.name, first), size) for m in models)
        reused += len(wanted) - len(todo_levels)
        if todo_levels or clean_missing:
            todo.append((first, todo_levels))
    return Plan((k0, k1), span, tuple(todo), reused, n, options.shard_samples)


def produce(put: Any, stopped: Any, work: Plan, models: Sequence[AuditedModel], source: Any, noise: NoiseSpec,
            options: RunOptions, dose_model: Any) -> None:
    """The producer: for each block, its images, then per level batches of noisy, preprocessed inputs.
    ``dose_model``: ``noise.noise_model(source)`` (the whole noise of a dose, or what a lower dose adds)."""
    k0, k = work.first_ks[0], work.k
    for first, levels in work.todo:
        idx = np.arange(first, min(first + options.shard_samples, work.n))
        hu = source.load(idx)
        put(("shard", first, idx, hu))
        for level in levels:
            for lo in range(0, idx.size * k, options.batch_size):
                if stopped():
                    return
                flat = np.arange(lo, min(lo + options.batch_size, idx.size * k))
                rows, ks = flat // k, k0 + flat % k
                t0 = time.perf_counter()
                keys = noise.keys(idx[rows], level, ks)
                noisy = hu[rows] + noise.sample(keys, level, hu[rows], source.spacing, workers=options.noise_workers,
                                                model=dose_model)
                # Preprocess here, off the engine's thread; models sharing a preprocessing share the input.
                inputs: dict[Any, np.ndarray] = {}
                for m in models:
                    key = (m.preprocess, len(m.engine.input_spec.shape))
                    if key not in inputs:
                        inputs[key] = m.prepare(noisy)
                put(("batch", level, rows, ks, inputs, time.perf_counter() - t0))
            put(("level_end", level))


class Consumer:
    """The engine side: clean decisions per block, flips per batch, one shard per block, level and model."""

    def __init__(self, models: Sequence[AuditedModel], source: Any, noise: NoiseSpec, out: Path, options: RunOptions,
                 work: Plan, stats: CampaignStats, bar: Any) -> None:
        self.models, self.source, self.noise, self.out, self.options = models, source, noise, out, options
        self.work, self.stats, self.bar = work, stats, bar
        self.clean: dict[str, Decisions] = {}
        self.acc: dict[str, dict[str, list]] = {}
        self.idx = np.empty(0, np.int64)
        self.first = 0

    def shard(self, first: int, idx: np.ndarray, hu: np.ndarray) -> None:
        self.first, self.idx = first, idx
        for m in self.models:
            self.clean[m.name] = m.decide_batched(hu, self.options.batch_size)
            path = records.clean_path(self.out, m.name, first)
            if not records.shard_done(path, idx.size):
                labels = self.source.labels
                true = labels[idx] if labels is not None else np.full(idx.size, -1)
                records.write_table(path, {"sample": idx.astype(np.int64), "true_label": np.asarray(true, np.int64),
                                           "clean_label": self.clean[m.name].labels, "clean_score": self.clean[m.name].scores})
        self.acc = {m.name: {c: [] for c in records.RECORD_COLUMNS} for m in self.models}

    def batch(self, level: float, rows: np.ndarray, ks: np.ndarray, inputs: dict, noise_s: float) -> None:
        self.stats.noise_seconds += noise_s
        for m in self.models:
            t0 = time.perf_counter()
            dec = m.decide_input(inputs[(m.preprocess, len(m.engine.input_spec.shape))])
            self.stats.engine_seconds += time.perf_counter() - t0
            ref = self.clean[m.name].take(rows)
            flipped, dice = m.head.flipped(ref, dec)
            a = self.acc[m.name]
            a["sample"].append(self.idx[rows].astype(np.int64))
            a["level"].append(np.full(rows.size, float(level)))
            a["k"].append(ks.astype(np.int32))
            a["clean_label"].append(ref.labels)
            a["label"].append(dec.labels)
            a["score"].append(dec.scores)
            a["flipped"].append(flipped)
            a["dice"].append(dice if dice is not None else np.full(rows.size, np.nan, np.float32))
        self.stats.inferences += rows.size * len(self.models)
        self.bar.update(rows.size)

    def level_end(self, level: float) -> None:
        for m in self.models:
            path = records.shard_path(self.out, m.name, self.noise.level_key(level), self.first, self.work.span)
            cols = {c: np.concatenate(v) for c, v in self.acc[m.name].items()}
            if not records.shard_done(path, self.idx.size * self.work.k):
                records.write_table(path, cols)
            self.acc[m.name] = {c: [] for c in records.RECORD_COLUMNS}
        self.stats.shards_run += 1


def run_campaign(models: Sequence[AuditedModel], source: Any, noise: NoiseSpec, out: Path, options: RunOptions = RunOptions(),
                 *, resume: bool = False, draws: tuple[int, int] | None = None,
                 levels: Sequence[float] | None = None, blocks: Sequence[int] | None = None,
                 create_store: bool = True) -> CampaignStats:
    """Run (or finish, with ``resume``) a campaign; records land under ``out/records``.

    ``draws = (k0, k1)`` runs only draws k0 <= k < k1 (the sequential gate's rounds; the keys are
    those of a full run, so a round is exactly a slice of it) and ``levels`` a subset of the levels.
    ``blocks`` restricts the run to the sample blocks starting at these indices (multiples of
    ``shard_samples``): how scale-out workers split a campaign between them.
    """
    out = Path(out)
    if not models:
        raise ConfigError("models: expected at least one model to audit")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"models: names must be unique, got {names}")
    for m in models:
        m.check_input(source)
    noise = noise.resolved(source)  # add or reduce, decided by the data; recorded in campaign.json
    dose_model = noise.noise_model(source)  # reduce: acquired doses read and every level checked, before any output
    start_store(models, source, noise, out, options, resume, create_store)
    if resume and blocks is None:
        remove_stale_temps(out)  # writes cut short when the earlier run was killed
    work = plan(models, len(source), noise, out, options, draws=draws, levels=levels, blocks=blocks)
    stats = CampaignStats(shards_reused=work.reused)

    stop = threading.Event()
    q: "queue.Queue[Any]" = queue.Queue(maxsize=options.prefetch)

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def producer() -> None:
        try:
            produce(put, stop.is_set, work, models, source, noise, options, dose_model)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            put(("error", exc))
        finally:
            put(_DONE)

    start = time.perf_counter()
    thread = threading.Thread(target=producer, name="noise-producer", daemon=True)
    thread.start()
    bar = progress_bar(work.total, options.progress, "audit")
    consumer = Consumer(models, source, noise, out, options, work, stats, bar)
    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            kind, args = item[0], item[1:]
            if kind == "error":
                raise args[0]
            getattr(consumer, kind)(*args)
    finally:
        stop.set()
        bar.close()
        thread.join(timeout=10)
    stats.seconds = time.perf_counter() - start
    return stats
