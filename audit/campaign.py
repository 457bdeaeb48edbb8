"""Streaming random-noise campaign: every (sample, dose, draw) through every model, resumable.

Work is cut into shards of ``shard_samples`` samples. For each shard the clean
decisions are computed once, then for each level the K draws of every sample
stream through the engines in batches. A producer thread loads images,
generates noise (keyed, see ``audit.noise_spec``) and preprocesses while the
main thread runs inference: NumPy's FFT and ONNX Runtime both release the GIL.
The queue between them is bounded, so memory stays flat whatever N is.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit import records
from audit.engines.base import Engine
from audit.errors import ConfigError, InputError
from audit.heads import Decisions, Head, Preprocess
from audit.noise_spec import NoiseSpec

_DONE = object()


@dataclass
class AuditedModel:
    """One artifact under audit: its engine, how to read its outputs, how to feed it."""

    name: str
    engine: Engine
    head: Head
    preprocess: Preprocess

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "engine": self.engine.describe(), "head": self.head.to_dict(),
                "preprocess": {"hu_window": list(self.preprocess.window), "clip": self.preprocess.clip}}

    def decide(self, hu: np.ndarray) -> Decisions:
        return self.decide_input(self.prepare(hu))

    def prepare(self, hu: np.ndarray) -> np.ndarray:
        """HU batch -> the engine's input (window, channel axis, float32)."""
        return self.preprocess(hu, len(self.engine.input_spec.shape))

    def decide_input(self, x: np.ndarray) -> Decisions:
        return self.head.decide(self.engine.run(x), self.name)


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

    def to_dict(self) -> dict[str, Any]:
        rate = self.inferences / self.seconds if self.seconds else 0.0
        return {"inferences": self.inferences, "shards_run": self.shards_run, "shards_reused": self.shards_reused,
                "wall_seconds": round(self.seconds, 3), "noise_seconds": round(self.noise_seconds, 3),
                "engine_seconds": round(self.engine_seconds, 3), "images_per_second": round(rate, 2)}


def fingerprint(models: Sequence[AuditedModel], source: Any, noise: NoiseSpec, options: RunOptions) -> str:
    """What the records depend on (not the batch size or thread counts)."""
    desc = {"models": [{"name": m.name, "sha256": m.engine.describe().get("sha256", m.engine.source),
                        "head": m.head.to_dict(), "preprocess": list(m.preprocess.window) + [m.preprocess.clip]} for m in models],
            "noise": noise.to_dict(), "data": source.fingerprint(), "shard_samples": options.shard_samples}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def _progress(total: int, enabled: bool | None, desc: str):
    if enabled is None:
        enabled = sys.stderr.isatty() and not os.environ.get("CI")
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", smoothing=0.1, dynamic_ncols=True)


def run_campaign(models: Sequence[AuditedModel], source: Any, noise: NoiseSpec, out: Path, options: RunOptions = RunOptions(),
                 *, resume: bool = False, draws: tuple[int, int] | None = None,
                 levels: Sequence[float] | None = None, blocks: Sequence[int] | None = None) -> CampaignStats:
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
        check_input(m, source)
    fp = fingerprint(models, source, noise, options)
    marker = out / "campaign.json"
    if marker.exists():
        previous = json.loads(marker.read_text()).get("fingerprint")
        if not resume:
            raise InputError(f"{out}: holds results of an earlier run; pass --resume to finish it or choose another --out")
        if previous != fp:
            raise InputError(f"{out}: holds results of a different campaign (models, data or noise changed); choose another --out")
    else:
        from audit.atomic import atomic_path

        with atomic_path(marker) as tmp:
            tmp.write_text(json.dumps({"fingerprint": fp, "noise": noise.to_dict(), "models": names}, indent=1))

    if resume and blocks is None and (out / "records").is_dir():
        for stale in (out / "records").rglob(".*.tmp"):  # writes cut short when the earlier run was killed
            stale.unlink(missing_ok=True)
    n = len(source)
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
    todo: list[tuple[int, list[float]]] = []
    stats = CampaignStats()
    for first in firsts:
        size = min(options.shard_samples, n - first)
        todo_levels = [lv for lv in wanted if not all(
            records.shard_done(records.shard_path(out, m.name, noise.level_key(lv), first, span), size * k) for m in models)]
        clean_missing = not all(records.shard_done(records.clean_path(out, m.name, first), size) for m in models)
        stats.shards_reused += len(wanted) - len(todo_levels)
        if todo_levels or clean_missing:
            todo.append((first, todo_levels))
    total = sum(min(options.shard_samples, n - f) * k * len(lv) for f, lv in todo)
    dose_models = {}
    if noise.kind == "nps":
        dose_models["model"] = noise.dose_model(source.shape, source.spacing)

    stop = threading.Event()
    q: "queue.Queue[Any]" = queue.Queue(maxsize=options.prefetch)

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for first, levels in todo:
                idx = np.arange(first, min(first + options.shard_samples, n))
                hu = source.load(idx)
                put(("shard", first, idx, hu))
                for level in levels:
                    for lo in range(0, idx.size * k, options.batch_size):
                        if stop.is_set():
                            return
                        flat = np.arange(lo, min(lo + options.batch_size, idx.size * k))
                        rows, ks = flat // k, k0 + flat % k
                        t0 = time.perf_counter()
                        keys = np.stack([np.full(flat.size, noise.seed), idx[rows], np.full(flat.size, noise.level_key(level)), ks],
                                        axis=1).astype(np.uint64)
                        noisy = hu[rows] + noise.sample(keys, level, hu[rows], source.spacing, workers=options.noise_workers,
                                                        model=dose_models.get("model"))
                        # Preprocess here, off the engine's thread; models sharing a preprocessing share the input.
                        inputs: dict[Any, np.ndarray] = {}
                        for m in models:
                            key = (m.preprocess, len(m.engine.input_spec.shape))
                            if key not in inputs:
                                inputs[key] = m.prepare(noisy)
                        put(("batch", level, rows, ks, inputs, time.perf_counter() - t0))
                    put(("level_end", level))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            put(("error", exc))
        finally:
            put(_DONE)

    start = time.perf_counter()
    producer = threading.Thread(target=produce, name="noise-producer", daemon=True)
    producer.start()
    bar = _progress(total, options.progress, "audit")
    try:
        clean: dict[str, Decisions] = {}
        acc: dict[str, dict[str, list]] = {}
        shard_idx = np.empty(0, np.int64)
        first = 0
        while True:
            item = q.get()
            if item is _DONE:
                break
            kind = item[0]
            if kind == "error":
                raise item[1]
            if kind == "shard":
                _, first, shard_idx, hu = item
                for m in models:
                    clean[m.name] = _decide_batched(m, hu, options.batch_size)
                    path = records.clean_path(out, m.name, first)
                    if not records.shard_done(path, shard_idx.size):
                        true = source.labels[shard_idx] if source.labels is not None else np.full(shard_idx.size, -1)
                        records.write_table(path, {"sample": shard_idx.astype(np.int64), "true_label": np.asarray(true, np.int64),
                                                   "clean_label": clean[m.name].labels, "clean_score": clean[m.name].scores})
                acc = {m.name: {c: [] for c in records.RECORD_COLUMNS} for m in models}
            elif kind == "batch":
                _, level, rows, ks, inputs, noise_s = item
                stats.noise_seconds += noise_s
                for m in models:
                    t0 = time.perf_counter()
                    dec = m.decide_input(inputs[(m.preprocess, len(m.engine.input_spec.shape))])
                    stats.engine_seconds += time.perf_counter() - t0
                    ref = clean[m.name].take(rows)
                    flipped, dice = m.head.flipped(ref, dec)
                    a = acc[m.name]
                    a["sample"].append(shard_idx[rows].astype(np.int64))
                    a["level"].append(np.full(rows.size, float(level)))
                    a["k"].append(ks.astype(np.int32))
                    a["clean_label"].append(ref.labels)
                    a["label"].append(dec.labels)
                    a["score"].append(dec.scores)
                    a["flipped"].append(flipped)
                    a["dice"].append(dice if dice is not None else np.full(rows.size, np.nan, np.float32))
                stats.inferences += rows.size * len(models)
                bar.update(rows.size)
            elif kind == "level_end":
                level = item[1]
                for m in models:
                    path = records.shard_path(out, m.name, noise.level_key(level), first, span)
                    cols = {c: np.concatenate(v) for c, v in acc[m.name].items()}
                    if not records.shard_done(path, shard_idx.size * k):
                        records.write_table(path, cols)
                    acc[m.name] = {c: [] for c in records.RECORD_COLUMNS}
                stats.shards_run += 1
    finally:
        stop.set()
        bar.close()
        producer.join(timeout=10)
    stats.seconds = time.perf_counter() - start
    return stats


def _decide_batched(model: AuditedModel, hu: np.ndarray, batch: int) -> Decisions:
    parts = [model.decide(hu[i : i + batch]) for i in range(0, hu.shape[0], batch)]
    masks = None if parts[0].masks is None else np.concatenate([p.masks for p in parts])
    return Decisions(np.concatenate([p.labels for p in parts]), np.concatenate([p.scores for p in parts]), masks)


def check_input(model: AuditedModel, source: Any) -> None:
    """Data rank and shape must fit the engine's input (after the channel axis the preprocessing adds)."""
    spec = model.engine.input_spec
    data_shape = tuple(source.shape)
    spatial = spec.shape[-len(data_shape):] if len(spec.shape) >= len(data_shape) else ()
    fits = len(spec.shape) in (len(data_shape) + 1, len(data_shape) + 2) and all(
        want is None or want == got for want, got in zip(spatial, data_shape))
    if not fits:
        kind = {2: "2D slices", 3: "3D volumes"}.get(len(data_shape), f"{len(data_shape)}D arrays")
        raise InputError(f"{model.name}: the data are {kind} of shape {data_shape}, but input '{spec.name}' expects "
                         f"{spec.describe_shape()} (batch, [channel,] spatial dims)")
