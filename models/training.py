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

from audit.metrics.detection import froc
from models.augment import AUGMENTATIONS
from models.nets.fpr3d import beta_loss
from models.phantoms.lesion_volumes import unpad
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


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, sched=None) -> float:
    """One optimiser step on ``loss`` (zero_grad, backward, step, then ``sched.step()`` when given); the loss value."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
    return loss.item()


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
                loss = _step(opt, bp.task.loss(net, xb, _targets(data, b, bp.task.targets), epoch))
                total += loss * b.size
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
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


# --- Two-stage detector (issue 18) -------------------------------------------------------------------

#: Stage-1 training crops (voxels): a 24^3 crop of a 48^3 volume costs an eighth of the whole volume per step, and the
#: fully convolutional net (17-voxel receptive field) sees the same context around a voxel either way; a crop holds
#: the largest (12 mm) nodule with its centre >= 6 voxels from the crop's faces.
STAGE1_CROP = 24
#: Fresh random crops per training volume per stage-1 epoch; half of them are placed to contain a lesion.
STAGE1_CROPS = 6
#: Heat-map target: a Gaussian of sigma = diameter / 6 (e^-4.5 at the nodule's surface), at least 1 voxel,
#: exactly 1 at the centre voxel (the focal loss's positive).
HEAT_SIGMA_FRACTION = 1.0 / 6.0
#: Stage-2 positives besides the stage-1 candidates on a lesion: the lesion's centre voxel and this many copies
#: shifted by up to 1 voxel per axis (the spread of a stage-1 peak around a centre).
STAGE2_JITTER_COPIES = 2
#: Epochs over which the evidential KL term is annealed in (``BetaTask``'s default).
STAGE2_KL_ANNEAL = 10


def heat_target(lesions: np.ndarray, size: int) -> np.ndarray:
    """The stage-1 target (size^3) float32 of one volume's padded lesion rows (z, y, x voxel, diameter mm)."""
    t = np.zeros((size,) * 3, np.float32)
    grid = np.indices((size,) * 3, dtype=np.float32)
    for z, y, x, d in np.asarray(lesions, np.float64).reshape(-1, 4):
        if not np.isfinite(d):
            continue
        sigma = max(1.0, HEAT_SIGMA_FRACTION * d)
        d2 = (grid[0] - z) ** 2 + (grid[1] - y) ** 2 + (grid[2] - x) ** 2
        np.maximum(t, np.exp(-d2 / (2 * sigma**2)), out=t)
        t[tuple(np.clip(np.round([z, y, x]).astype(int), 0, size - 1))] = 1.0
    return t


def _crop_origins(lesions: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A crop origin (3,) for one volume: around a random lesion (margin 6 voxels) with probability 1/2."""
    hi = size - STAGE1_CROP
    les = unpad(lesions)
    if les.shape[0] and rng.random() < 0.5:
        c = np.round(les[rng.integers(les.shape[0]), :3]).astype(int)
        lo_o, hi_o = np.clip(c - STAGE1_CROP + 7, 0, hi), np.clip(c - 6, 0, hi)
        return rng.integers(lo_o, np.maximum(lo_o, hi_o) + 1)
    return rng.integers(0, hi + 1, 3)


@torch.no_grad()
def detect(net: torch.nn.Module, x: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1 alone on volumes ``x``: candidate voxels (N, M, 3) and their heat-map probabilities (N, M)."""
    cs, ps = [], []
    for start in range(0, x.shape[0], batch_size):
        _, c, k = net.candidates(torch.from_numpy(x[start : start + batch_size]))
        cs.append(c.numpy())
        ps.append(torch.sigmoid(k).numpy())
    return np.concatenate(cs), np.concatenate(ps)


@torch.no_grad()
def _stage1_outputs(net, x: np.ndarray, batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Stage 1 of a ``Detector3D`` on volumes ``x`` in ``predict``'s batches: per batch the volumes, candidate voxels
    and keys (``Detector3D.candidates``), for ``_with_stage1`` while stage 1 is fixed."""
    net.eval()
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = torch.from_numpy(x[start : start + batch_size])
        _, centres, keys = net.candidates(xb)
        out.append((xb, centres, keys))
    return out


@torch.no_grad()
def _with_stage1(net, stage1: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> list[np.ndarray]:
    """``predict(net, x)`` of a ``Detector3D`` with stage 1's outputs on ``x`` given (``_stage1_outputs``): only
    stage 2 runs (``Detector3D.scored``, what ``forward`` runs after ``candidates``)."""
    net.eval()
    cs, ss = [], []
    for xb, centres, keys in stage1:
        c, scores = net.scored(xb, centres, keys)
        cs.append(c.numpy())
        ss.append(scores.numpy())
    return [np.concatenate(cs), np.concatenate(ss)]


@torch.no_grad()
def _stage2_patches(net, bp: Blueprint, data: Data, idx: np.ndarray, rng: np.random.Generator):
    """FPR training patches of volumes ``idx``: every stage-1 candidate (label 1 iff it lies on a lesion, the
    audit's matching) plus each lesion's centre voxel and ``STAGE2_JITTER_COPIES`` jittered copies (label 1)."""
    centres, probs = detect(net, data.x[idx])
    matches = bp.task.matches(centres.astype(np.float64), probs, data.targets["lesions"][idx])
    patches, labels = [], []
    for j, i in enumerate(idx):
        keep = np.isfinite(probs[j])
        pos = np.isin(matches[j].role, (0, 1))  # HIT or DUPLICATE: on a lesion
        les = unpad(data.targets["lesions"][i])
        extra = [np.round(les[:, :3]).astype(np.int64)]
        extra += [extra[0] + rng.integers(-1, 2, extra[0].shape) for _ in range(STAGE2_JITTER_COPIES)]
        c = np.concatenate([centres[j][keep]] + extra).clip(0, data.x.shape[-1] - 1)
        patches.append(net.patches(torch.from_numpy(data.x[i : i + 1]), torch.from_numpy(c)[None]).numpy())
        labels.append(np.concatenate([pos[keep], np.ones(c.shape[0] - int(keep.sum()), bool)]))
    return np.concatenate(patches), np.concatenate(labels).astype(np.int64)


def _train_stage1(net, bp: Blueprint, recipe: Recipe, data: Data, split: Split, rng: np.random.Generator,
                  gen: torch.Generator, report: Callable[[int, int, float, float], None]) -> tuple[int, float]:
    """Stage 1 of ``train_detector`` (in place on ``net.stage1``): returns the kept epoch and its validation CPM."""
    augment = AUGMENTATIONS[bp.augment] if bp.augment else None
    task, size = bp.task, data.x.shape[-1]
    targets = {int(i): heat_target(data.targets["lesions"][i], size) for i in split.train}
    opt = torch.optim.Adam(net.stage1.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = -(-split.train.size * STAGE1_CROPS // recipe.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs * steps)
    best, best_state, best_epoch = -np.inf, None, -1
    for epoch in range(recipe.epochs):
        net.train()
        order = np.repeat(split.train, STAGE1_CROPS)[rng.permutation(split.train.size * STAGE1_CROPS)]
        total = 0.0
        for start in range(0, order.size, recipe.batch_size):
            b = order[start : start + recipe.batch_size]
            crops = []
            for i in b:
                o = _crop_origins(data.targets["lesions"][i], size, rng)
                sl = tuple(slice(int(v), int(v) + STAGE1_CROP) for v in o)
                crops.append(np.stack([data.x[i, 0][sl], targets[int(i)][sl]]))
            xt = torch.from_numpy(np.stack(crops))
            if augment is not None:
                xt = augment(xt, gen, max_shift=0)
            total += _step(opt, task.heatmap_loss(net.stage1(xt[:, :1]), xt[:, 1:]), sched) * b.size
        net.eval()
        c, p = detect(net, data.x[split.val])
        score = froc(task.matches(c.astype(np.float64), p, data.targets["lesions"][split.val])).cpm
        report(1, epoch, total / order.size, score)
        if score > best or best_state is None:
            best, best_state, best_epoch = score, copy.deepcopy(net.stage1.state_dict()), epoch + 1
    net.stage1.load_state_dict(best_state)
    net.eval()
    return best_epoch, float(best)


def _train_stage2(net, bp: Blueprint, recipe: Recipe, data: Data, split: Split, rng: np.random.Generator,
                  gen: torch.Generator,
                  report: Callable[[int, int, float, float], None]) -> tuple[int, dict, np.ndarray]:
    """Stage 2 of ``train_detector`` (in place on ``net.stage2``, stage 1 fixed): returns the kept epoch, its
    validation metrics and the training patches' labels."""
    augment = AUGMENTATIONS[bp.augment] if bp.augment else None
    task = bp.task
    net.eval()
    px, py = _stage2_patches(net, bp, data, split.train, rng)
    opt = torch.optim.Adam(net.stage2.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs * -(-py.size // recipe.batch_size))
    # Stage 1 is fixed here (the optimiser holds stage 2's parameters alone): its validation candidates are computed
    # once; each epoch's evaluation runs stage 2 on them, giving what ``evaluate`` would (it draws no random numbers).
    val_stage1 = _stage1_outputs(net, data.x[split.val])
    val_targets = {k: v[split.val] for k, v in data.targets.items()}
    best, best_state, best_epoch, best_metrics = -np.inf, None, -1, {}
    for epoch in range(recipe.epochs):
        net.stage2.train()
        order = balanced_order(py, rng)
        total = 0.0
        for start in range(0, order.size, recipe.batch_size):
            b = order[start : start + recipe.batch_size]
            xb = torch.from_numpy(px[b])
            if augment is not None:
                xb = augment(xb, gen)
            loss = beta_loss(net.stage2(xb), torch.from_numpy(py[b]), min(1.0, epoch / STAGE2_KL_ANNEAL))
            total += _step(opt, loss, sched) * b.size
        net.eval()
        m = task.evaluate(_with_stage1(net, val_stage1), val_targets)
        report(2, epoch, total / order.size, task.score(m))
        if task.score(m) > best or best_state is None:
            best, best_state, best_epoch, best_metrics = task.score(m), copy.deepcopy(net.stage2.state_dict()), \
                epoch + 1, m
    net.stage2.load_state_dict(best_state)
    net.eval()
    return best_epoch, best_metrics, py


def train_detector(bp: Blueprint, recipe: Recipe, data: Data, split: Split, seed: int, *, progress: bool = False,
                   desc: str = "", log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a two-stage detector (``models.nets.Detector3D``), each stage with its own loss, best-on-validation.

    Both stages: Adam at ``recipe.lr`` annealed to 0 by a cosine over the stage's steps (a short run still ends
    converged). Stage 1: ``recipe.epochs`` epochs of ``STAGE1_CROPS`` random 24^3 crops per training volume, rotated together
    with their heat-map targets (``heat_target``), focal heat-map loss (``DetectionTask.heatmap_loss``); the
    epoch kept is the one with the best stage-1 CPM on the validation volumes (candidates scored by their heat).
    Stage 2: patches at the kept stage 1's candidates on the training volumes (``_stage2_patches``), the evidential
    beta loss with class-balanced batches and cube augmentation, ``recipe.epochs`` epochs; the epoch kept is the
    one with the best CPM of the whole detector on the validation volumes. Deterministic like ``train``.
    """
    history: list[dict] = []

    def report(stage: int, epoch: int, loss: float, score: float) -> None:
        history.append({"stage": stage, "epoch": epoch + 1, "train_loss": loss, "val_score": score})
        if log is not None:
            log(f"{desc.strip()} stage {stage} epoch {epoch + 1}/{recipe.epochs}: train loss {loss:.4f}, "
                f"validation CPM {score:.4f}".strip())

    with deterministic(seed):
        net = bp.make_net()
        gen = torch.Generator().manual_seed(int(seed))
        rng = np.random.default_rng([int(seed), 11])
        stage1_epoch, stage1_cpm = _train_stage1(net, bp, recipe, data, split, rng, gen, report)
        best_epoch, best_metrics, py = _train_stage2(net, bp, recipe, data, split, rng, gen, report)
    best_metrics = {**best_metrics, "stage1_cpm": stage1_cpm, "stage1_best_epoch": stage1_epoch,
                    "stage2_patches": int(py.size), "stage2_positive_fraction": float(py.mean())}
    return TrainResult(net, best_epoch, best_metrics, history)


#: ``Blueprint.trainer`` -> training function (same signature).
TRAINERS: dict[str, Callable[..., TrainResult]] = {"standard": train, "detector": train_detector}
