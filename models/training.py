"""Training: seeded splits, class-balanced sampling, augmentation, Adam, best-on-validation checkpoint.

Splits: a stratified held-out test split (``test_fraction``), then either K
stratified folds of the rest (``folds`` >= 2: fold k validates on part k and
trains on the others) or one stratified train/validation split (``folds`` ==
1). Splits depend only on ``data_seed``, so repeats differ by their training
seed alone (study 2's "same recipe, N models").

Determinism: each run executes under ``torch.use_deterministic_algorithms``
with the torch RNG forked and seeded, batches and augmentations from explicit
generators; on one machine and thread count the same seed gives bit-identical
weights (checked by ``weights_sha256``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from models.augment import AUGMENTATIONS
from models.registry import Blueprint, Data, Recipe


@dataclass(frozen=True)
class Split:
    """Index arrays into a ``Data``: ``train``, ``val`` and the shared held-out ``test``."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    fold: int


@dataclass
class TrainResult:
    net: torch.nn.Module
    best_epoch: int
    val_metrics: dict
    history: list[dict] = field(default_factory=list)


def _stratified_parts(idx: np.ndarray, strata: np.ndarray, parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Split ``idx`` into ``parts`` groups with each stratum spread evenly (shuffled by ``rng``)."""
    groups: list[list[int]] = [[] for _ in range(parts)]
    offset = 0
    for s in np.unique(strata[idx]):
        members = idx[strata[idx] == s]
        members = members[rng.permutation(members.size)]
        for j, m in enumerate(members):
            groups[(j + offset) % parts].append(int(m))
        offset += members.size
    return [np.sort(np.asarray(g, dtype=np.int64)) for g in groups]


def make_splits(strata: np.ndarray, recipe: Recipe) -> list[Split]:
    """The test split and one train/val split per fold, from ``recipe.data_seed``."""
    n = strata.size
    rng = np.random.default_rng([recipe.data_seed, 7])
    all_idx = np.arange(n)
    n_test_parts = max(2, int(round(1.0 / recipe.test_fraction)))
    parts = _stratified_parts(all_idx, strata, n_test_parts, rng)
    test = parts[0]
    rest = np.setdiff1d(all_idx, test)
    if recipe.folds == 1:
        k = max(2, int(round(1.0 / recipe.val_fraction)))
        vparts = _stratified_parts(rest, strata, k, rng)
        return [Split(np.setdiff1d(rest, vparts[0]), vparts[0], test, 0)]
    fparts = _stratified_parts(rest, strata, recipe.folds, rng)
    return [Split(np.setdiff1d(rest, fparts[k]), fparts[k], test, k) for k in range(recipe.folds)]


def balanced_order(strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One epoch of positions into ``strata`` (same length), drawn with probability 1 / (size of own stratum)."""
    counts = np.bincount(strata)
    w = 1.0 / counts[strata]
    return rng.choice(strata.size, size=strata.size, replace=True, p=w / w.sum())


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch inside a forked RNG with deterministic algorithms on; restores the previous state."""
    previous = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous)


def _targets(data: Data, idx: np.ndarray, names) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(data.targets[k][idx])) for k in names}


@torch.no_grad()
def predict(net: torch.nn.Module, x: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
    """The exported outputs of ``net`` (eval mode) for inputs ``x``, as NumPy arrays (one per output)."""
    net.eval()
    chunks: list[list[np.ndarray]] = []
    for start in range(0, x.shape[0], batch_size):
        out = net(torch.from_numpy(x[start : start + batch_size]))
        outs = out if isinstance(out, tuple) else (out,)
        chunks.append([o.numpy() for o in outs])
    return [np.concatenate(parts) for parts in zip(*chunks)]


def evaluate(bp: Blueprint, net: torch.nn.Module, data: Data, idx: np.ndarray) -> dict:
    """The task's metrics of ``net`` on the samples ``idx``."""
    outputs = predict(net, data.x[idx])
    return bp.task.evaluate(outputs, {k: v[idx] for k, v in data.targets.items()})


def train(bp: Blueprint, recipe: Recipe, data: Data, split: Split, seed: int, *, progress: bool = False,
          desc: str = "", log: Callable[[str], None] | None = None) -> TrainResult:
    """Train one model on ``split.train`` and keep the epoch with the best validation score.

    Progress: a bar per epoch when ``progress`` (the caller applies the terminal/CI rule,
    ``audit.io.progress_enabled``); otherwise one ``log`` line per epoch (loss, validation score), so a long
    build is never silent in a log."""
    augment = AUGMENTATIONS[bp.augment] if bp.augment else None
    with deterministic(seed):
        net = bp.make_net()
        opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        gen = torch.Generator().manual_seed(int(seed))
        rng = np.random.default_rng([int(seed), 11])
        best, best_state, best_epoch, best_metrics = -np.inf, None, -1, {}
        history = []
        for epoch in range(recipe.epochs):
            net.train()
            order = split.train[balanced_order(data.strata[split.train], rng)]
            batches = [order[i : i + recipe.batch_size] for i in range(0, order.size, recipe.batch_size)]
            bar = _bar(len(batches), f"{desc} epoch {epoch + 1}/{recipe.epochs}", progress)
            total = 0.0
            for b in batches:
                xb = torch.from_numpy(data.x[b])
                if augment is not None:
                    xb = augment(xb, gen)
                loss = bp.task.loss(net, xb, _targets(data, b, bp.task.targets), epoch)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * b.size
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}")
            m = evaluate(bp, net, data, split.val)
            score = bp.task.score(m)
            history.append({"epoch": epoch + 1, "train_loss": total / order.size, "val_score": score})
            if bar is not None:
                bar.set_postfix(loss=f"{total / order.size:.4f}", val=f"{score:.4f}")
                bar.close()
            elif log is not None:
                log(f"{desc.strip()} epoch {epoch + 1}/{recipe.epochs}: train loss {total / order.size:.4f}, "
                    f"validation score {score:.4f}".strip())
            if score > best or best_state is None:
                best, best_state, best_epoch, best_metrics = score, copy.deepcopy(net.state_dict()), epoch + 1, m
        net.load_state_dict(best_state)
        net.eval()
    return TrainResult(net, best_epoch, best_metrics, history)


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc.strip(), unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True)


def weights_sha256(net_or_state) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes (sorted by name)."""
    state = net_or_state.state_dict() if isinstance(net_or_state, torch.nn.Module) else net_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()
