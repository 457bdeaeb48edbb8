"""Square attack (score-based, black-box) on the deployed engine, and the engine oracle every black-box attack uses.

Andriushchenko, Croce, Flammarion, Hein 2020, "Square Attack: a query-efficient
black-box adversarial attack via random search" (ECCV). No gradients and no
torch twin: every query is a batch of the active samples through the deployed
engine, exactly as the campaign and ``run_attack`` feed it (``AuditedModel``'s
preprocessing, ``Engine.run``, the head), so an ONNX graph onnx2torch cannot
convert, a TensorRT or an INT8 engine is attacked as deployed.

Threat model: ||p||_inf <= eps or ||p||_2 <= eps in the attack's space (``"hu"``
by default, eps in HU; or ``"input"``, model-input units as PGD's default), the
perturbed image kept in the valid range (HU range or its preprocessed image,
widened to include the clean pixel, as for every attack).

- L-inf: each iteration sets one window (a square on 2D images, a cube on volumes: the spacing is not used, the
  reference volumes are isotropic) to a vertex of the eps box (+-eps, one sign per channel), a sign that changes
  the window (as the paper's code ensures).
- Where the windows go (``prior``, L-inf): ``"uniform"`` is the paper (uniformly random windows, a start of
  stripes of +-eps, one random sign per position on the last axis). ``"probe"`` spends
  ``PROBE_BLOCKS``^d queries (64 on a volume, 16 on an image; only when they are at most ``PROBE_SHARE`` of the
  budget) shifting each block of a coarse grid alone by +eps: the start is every block at the sign that lowered
  the margin, and |margin change| per unit of L1 change is a sensitivity map on a ``PRIOR_CELLS``^d grid; window
  centres are then drawn from the map (``PRIOR_MIX`` of draws, the rest uniform) and every query updates the
  cells under its window with what it measured (``PRIOR_RATE``). Why: a CT classifier's sensitivity sits on the
  lesion (on the shipped nodule3d half of |gradient| lies in the central 8^3 of 32^3 voxels, 1.6% of the
  volume), so uniform windows spend most queries where nothing moves the score, and random stripes move it by
  ~0 where the probe's start already moves it a third of the way the gradient sign would.
- ``"search"`` (default): the probe, with a second pattern, then an octree search of the signs (a best-first form
  of SignHunter's hierarchical sign flips, Al-Dujaili & O'Reilly 2020) for ``SEARCH_SHARE`` (1.0: all) of the
  remaining queries. The probe also shifts each block by eps x the image's high-pass sign (``texture_signs``:
  sign(x - smooth(x))), another 4^d queries, and starts each block from whichever pattern, +1 or the texture,
  moved its margin more, at the sign that lowered it (``TEXTURE``). Then every query flips one block of the
  current vertex (each of its pixels to the other end of its eps interval, so a window update of +-eps whose
  place and size the search picks instead of the dice) and keeps it when the margin drops; the block whose test
  moved the margin most, kept or not, is split next into its 2^d halves, and a block no longer than
  ``VOXELS_SIDE`` (4) on any axis straight into its single voxels (the probe's blocks are the roots, re-tested when
  nothing is left to split), so the budget goes down to single voxels where the margin is sensitive and stays
  coarse elsewhere. A block's pass over its voxels that gained g (the margin's drop) puts it back in the heap
  keyed ``REVISIT`` x g: the kept flips move the gradient of the voxels tested before them, and a second pass
  where the margin is most sensitive beats a first one where it hardly is. With ``SEARCH_SHARE`` < 1 the
  windows of ``"probe"`` spend the rest, drawn from the map the search's tests refined, on the paper's schedule
  from where the search stopped (small windows). Below the probe's budget both are the stripes start and
  windows from a map their own queries learn. Why: the samples PGD flips on nodule3d and the probe's windows do
  not need nearly the whole gradient-sign move, with the sign right voxel by voxel (the signs of the clean
  gradient's 2^3 block sums, or of its smoothed or low-frequency (DCT) parts, flip 2-5 of 11 samples on the twin
  where its per-voxel sign flips 8; its top 2,048 voxels carry 86-92% of its L1 mass); one random window rarely improves a vertex
  already near that optimum, a systematic sign search at shrinking block sizes does, and its start decides how
  much is left to find: the high-pass sign agrees with the gradient's (up to one polarity) on 65-75% of its L1
  mass, a block's single sign on about half.
- L2: start from a grid of pseudo-Gaussian bumps with random signs scaled to
  ||p|| = eps; each iteration moves the perturbation's mass of a second random
  window into a first one, adding a new bump there (the paper's Algorithm 3). Uniform windows: its step
  renormalises the whole perturbation, so a query does not measure its window and the map does not help.
- Window side: (p N)^(1/d) pixels for d spatial axes, the
  fraction p halving on the paper's schedule (``p_selection``, its 10,000 iterations rescaled to the
  budget) from ``p_init`` (0.05 L-inf, 0.1 L2, the paper's defaults).
- A proposal is kept when it lowers the margin loss (``margin``: binary, the
  distance of the score to the threshold on the clean label's side, on the
  logit where the head applies a sigmoid (from a probability output: log(p / (1 - p)) - logit(threshold));
  multiclass, the clean class's
  logit/probability minus the best other; rating, the distance to the clean
  bin's nearer edge; regression, tolerance - |change|; segmentation, Dice -
  min_dice); a sample stops at its first flip (early stop: no query is spent on a flipped sample) or when its
  ``queries`` (5,000 by default, the clean query and the probe included) are spent. Every query is a batch of
  the samples still running (the probe: many blocks per engine call).

The queries each sample used are reported (``notes.mean_queries``, and per
sample with the mean and median per success in ``extra_report``).

Measured on the fragile test net (48 samples, 2-core CPU): L-inf 8 HU, PGD
(20 steps, twin) 0.48, Square 0.44 at 1,000 queries and 0.48 at 5,000 (mean
56 queries per success); L2 120 HU, PGD 0.77, Square 0.46 / 0.63. A saturated
output (probabilities exactly 0 or 1 in float32) leaves the margin nothing to
follow: with gain 1e5 Square finds 0.15 where PGD through the twin's logit
finds 0.48 and HopSkipJump (labels only) 0.44 (these with the paper's uniform windows).

On the shipped nodule3d as rebuilt in ac4dc98 (32^3 cubes, 32 samples, L-inf 0.02 in model-input units = 28 HU,
5,000 queries; ``bench/attacks_blackbox.py --no-art --no-nps``, here with ONNX Runtime and torch at one thread):
PGD (20 steps, twin) flips 10, 10, 9 of 32 at seeds 0, 1, 2 (10, 9 at seeds 3, 4); Square with the search
(default) flips 8 at every seed (its only randomness breaks zero-change ties): 0.80, 0.80, 0.89 of PGD, every flip
among PGD's, 492 queries per success, median 196; the search before the texture start, the voxel-level split and
the second passes (``SEARCH_SHARE`` 0.8) flipped the same 8 at 683 queries per success, median 295. The 2 PGD flips it
misses (samples 1, 16) end 0.011 and 0.001 (probability) short of the threshold, were 0.016 and 0.012 before;
tried there without a flip: ``REVISIT`` 0.3-1.0 (16 ends 0.0003-0.007 short), second passes over the more
sensitive half of a block only, voxels ordered by their high-pass magnitude. Before the rebuild (the artifact of
0fcb745): PGD 11/32 and 12/32 at seeds 0 and 1, the search 9/32. Smooth subspaces do not fit this model: on the twin, of 11
samples near the threshold the clean gradient's per-voxel sign flips 8, the sign of its 2^3 block sums 5, of the
gradient Gaussian-smoothed (sigma 1-2 voxels) 5, of its lowest 4^3-16^3 DCT coefficients 2-5.
bodysite2d (quick build, 256^2 images, 32 samples, seed 0): PGD 17/32; Square 7/32 before and after (median
queries per success 3,087 before, 1,670 after).
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any, Sequence

import numpy as np

from audit.artifact import Decisions, Head
from audit.attacks.base import (
    HU_RANGE,
    Attack,
    AttackResult,
    Candidates,
    Target,
    positive,
)
from audit.engines.base import pick_output
from audit.errors import ConfigError, EngineError

NORMS = ("linf", "l2")
#: The paper's default initial window fraction per norm.
P_INIT = {"linf": 0.05, "l2": 0.1}
#: Where windows go (L-inf): ``"search"`` (the block probe, then a best-first octree search of the blocks' signs for
#: ``SEARCH_SHARE`` of the budget, then windows drawn from the sensitivity map), ``"probe"`` (the block probe, then
#: map-guided windows) or ``"uniform"`` (the paper's stripes start and uniformly random windows).
PRIORS = ("search", "probe", "uniform")
#: Cells per axis of the sensitivity map windows are drawn from.
PRIOR_CELLS = 8
#: Probe blocks per axis (4^d queries: 16 on 2D images, 64 on volumes), each shifted by +eps alone from the clean
#: image; done only when they cost at most ``PROBE_SHARE`` of the budget, else the stripes start (the search's
#: texture pattern doubles them).
PROBE_BLOCKS = 4
PROBE_SHARE = 0.05
#: Share of window draws that follow the map (the rest uniform: every region keeps being explored).
PRIOR_MIX = 0.9
#: How fast a cell's sensitivity follows what the queries of windows over it measure (exponential average).
PRIOR_RATE = 0.3
#: Share of the queries left after the probe and the start that the octree search (``prior = "search"``) spends
#: before the map-guided windows (1.0: all of them; with its second passes the search gained more per query than
#: the windows on the nodule3d samples it misses); windows, if any, continue the paper's schedule from that point.
SEARCH_SHARE = 1.0
#: The octree search splits a block only while it has more voxels (pixels) than this (1: down to single voxels).
SEARCH_MIN_VOXELS = 1
#: The search's probe also shifts each block by eps x the image's high-pass sign (``texture_signs``) and starts
#: each block from whichever pattern moved the margin more: on nodule3d the gradient's sign agrees with the
#: high-pass sign (or its opposite) on 65-75% of the gradient's L1 mass, where a block's one sign gets about half.
TEXTURE = True
#: A block no longer than this on every axis (4^3 voxels, 4^2 pixels) splits straight into single voxels, skipping
#: the 2^d level: the sign of a CNN's gradient varies voxel to voxel (on nodule3d the signs of its 2^3 block sums
#: flip 5 of 11 samples where its per-voxel signs flip 8), so that level's tests mostly cancel. (Skipping two levels
#: on bodysite2d's 256^2 images, 8^2 blocks to pixels, lost a sample the full quadtree and 4^2 flip.)
VOXELS_SIDE = 4
#: A block whose single-voxel pass gained (lowered the margin by) g re-enters the heap keyed ``REVISIT`` x g, for
#: a second pass (the flips move the gradient of the voxels tested earlier); 0: one pass per block.
REVISIT = 0.5


# --- the deployed engine as an oracle ------------------------------------------------------------------------


def margin(head: Head, outputs: dict[str, np.ndarray], adv: Decisions, clean: Decisions, source: str) -> np.ndarray:
    """(B,) float64 margin loss of outputs ``outputs`` (with decisions ``adv``) against the clean decisions:
    > 0 while the decision is the clean one, <= 0 once it flipped (the attack minimises it; a success is still
    ``Head.flipped``). Binary: the score's distance to the threshold on the clean label's side (on the logit when
    the head applies a sigmoid to one output); multiclass: clean class minus best other (logits or probabilities
    as the model outputs them); rating: distance to the clean bin's nearer edge; regression: tolerance - |change|;
    segmentation: Dice to the clean mask - min_dice."""
    raw = np.asarray(pick_output(outputs, head.output, source), np.float64)
    b = raw.shape[0]
    flat = raw.reshape(b, -1)
    if head.task == "binary":
        if flat.shape[1] == 1 and head.activation == "sigmoid" and 0.0 < head.threshold < 1.0:
            s = flat[:, 0] - math.log(head.threshold / (1.0 - head.threshold))
        elif flat.shape[1] == 1 and head.activation == "none":
            s = flat[:, 0] - head.threshold
        else:
            s = adv.scores.astype(np.float64) - head.threshold
        return np.where(clean.labels == 1, s, -s)
    if head.task == "multiclass":
        rows = np.arange(b)
        mine = flat[rows, clean.labels]
        others = flat.copy()
        others[rows, clean.labels] = -np.inf
        return mine - others.max(axis=1)
    if head.task == "rating":
        edges = np.asarray(head.rating_edges, np.float64)
        v = adv.scores.astype(np.float64)
        lower = np.concatenate([[-np.inf], edges])[clean.labels]
        upper = np.concatenate([edges, [np.inf]])[clean.labels]
        return np.minimum(v - lower, upper - v)
    if head.task == "regression":
        return head.tolerance - np.abs(adv.scores.astype(np.float64) - clean.scores.astype(np.float64))
    dice = head.flipped(clean, adv)[1]
    return np.asarray(dice, np.float64) - head.min_dice


class EngineOracle:
    """The deployed engine on one batch: queries (batched, through the campaign's path), margins, flips, counts.

    ``v`` is a variable in the attack's ``space``: HU images (B, *shape), fed as ``AuditedModel.decide`` feeds
    them, or model inputs (B, C, *shape), fed as ``decide_input`` does; these are the paths ``run_attack``
    re-runs the candidates through. The clean decision is one query (counted).
    """

    def __init__(self, target: Target, space: str, hu: np.ndarray) -> None:
        if target.model is None:
            raise EngineError("black-box attack: the target has no deployed model to query")
        self.model, self.head, self.space = target.model, target.head, space
        hu = np.ascontiguousarray(hu, np.float32)
        self.count = np.zeros(len(hu), np.int64)
        outs = self.model.engine.run(self.model.prepare(hu))
        self.clean = self.head.decide(outs, self.model.name)
        self.clean_margin = margin(self.head, outs, self.clean, self.clean, self.model.name)
        self.count += 1

    def outputs(self, v: np.ndarray) -> dict[str, np.ndarray]:
        v = np.ascontiguousarray(v, np.float32)
        return self.model.engine.run(self.model.prepare(v) if self.space == "hu" else v)

    def query(self, v: np.ndarray, idx: np.ndarray) -> tuple[Decisions, np.ndarray, np.ndarray]:
        """(decisions, margin (b,), flipped (b,) bool) of the variables ``v`` of the samples ``idx`` (one query each)."""
        outs = self.outputs(v)
        adv = self.head.decide(outs, self.model.name)
        clean = self.clean.take(idx)
        np.add.at(self.count, idx, 1)  # a sample may appear more than once (probes)
        return adv, margin(self.head, outs, adv, clean, self.model.name), self.head.flipped(clean, adv)[0]


def generator_rng(generator: Any) -> np.random.Generator:
    """A NumPy generator seeded from the batch's torch generator (so results depend on the attack's seed only)."""
    import torch

    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


def query_report(queries: np.ndarray, result: AttackResult, budget: int) -> dict[str, Any]:
    """Queries per sample and per success (a success: the deployed re-run flipped the sample)."""
    won = result.deployed_flips.any(axis=1)
    q = np.asarray(queries, np.int64)
    return {"queries_budget": int(budget), "queries": q.tolist(), "mean_queries": float(q.mean()) if len(q) else 0.0,
            "successes": int(won.sum()),
            "queries_per_success": float(q[won].mean()) if won.any() else None,
            "median_queries_per_success": float(np.median(q[won])) if won.any() else None}


class QueryStats:
    """Per-sample query counts of the batches ``perturb`` saw, read back (and cleared) by ``extra_report``."""

    def __init__(self) -> None:
        self.rows: list[dict[str, np.ndarray]] = []

    def add(self, **rows: np.ndarray) -> None:
        self.rows.append({k: np.asarray(v) for k, v in rows.items()})

    def take(self, n: int) -> dict[str, np.ndarray]:
        """The last ``n`` samples' rows ({} when ``perturb`` saw fewer); clears them."""
        rows, self.rows = self.rows, []
        if not rows:
            return {}
        out = {k: np.concatenate([r[k] for r in rows])[-n:] for k in rows[0]}
        return out if len(next(iter(out.values()))) == n else {}


# --- window helpers on the (B, *spatial, C) layout ----------------------------------------------------------


def to_layout(v: np.ndarray, nd: int) -> np.ndarray:
    """(B, *chan, *spatial) -> (B, *spatial, C): the channels (none for HU images) last, flattened to C."""
    b, spatial = v.shape[0], v.shape[v.ndim - nd:]
    return np.moveaxis(v.reshape(b, -1, *spatial), 1, -1)


def from_layout(z: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The inverse of ``to_layout`` for variables of shape ``shape`` (B, *chan, *spatial)."""
    return np.ascontiguousarray(np.moveaxis(z, -1, 1)).reshape(tuple(shape))


def window_index(starts: np.ndarray, side: int) -> tuple[np.ndarray, ...]:
    """Advanced index of one window of ``side`` pixels per axis per sample: ``starts`` (b, d) -> a tuple giving
    z[index] of shape (b, side, ..., side, C)."""
    b, d = starts.shape
    index = [np.arange(b).reshape(b, *([1] * d))]
    for a in range(d):
        shape = [b] + [1] * d
        shape[a + 1] = side
        index.append((starts[:, a].reshape(b, *([1] * d)) + np.arange(side).reshape(shape[1:])).reshape(shape))
    return tuple(index)


def random_starts(rng: np.random.Generator, b: int, spatial: Sequence[int], side: int) -> np.ndarray:
    return np.stack([rng.integers(0, n - side + 1, b) for n in spatial], axis=1)


def edges(n: int, k: int) -> np.ndarray:
    """Edges of ``min(k, n)`` near-equal segments of an axis of ``n`` pixels."""
    return np.linspace(0, n, min(k, n) + 1).round().astype(np.int64)


def cell_sums(x: np.ndarray, cuts: Sequence[np.ndarray]) -> np.ndarray:
    """(b, *spatial) -> (b, *cells): sums of ``x`` over the cells cut by ``cuts`` (one edge array per axis)."""
    for a, e in enumerate(cuts):
        x = np.add.reduceat(x, e[:-1], axis=a + 1)
    return x


def overlap(starts: np.ndarray, side: int, cuts: Sequence[np.ndarray]) -> np.ndarray:
    """(b, *cells): the fraction of each cell a window of ``side`` pixels at ``starts`` (b, d) covers."""
    out = None
    for a, e in enumerate(cuts):
        s = starts[:, a:a + 1]
        ov = np.clip(np.minimum(s + side, e[None, 1:]) - np.maximum(s, e[None, :-1]), 0, None) / np.diff(e)[None]
        out = ov if out is None else out[..., None] * ov.reshape(len(ov), *([1] * (out.ndim - 1)), -1)
    return out


def prior_starts(rng: np.random.Generator, sens: np.ndarray, cuts: Sequence[np.ndarray], spatial: Sequence[int],
                 side: int) -> np.ndarray:
    """Window starts (b, d): a cell drawn with probability ``PRIOR_MIX`` x its share of ``sens`` (b, *cells) +
    (1 - ``PRIOR_MIX``) uniformly, the window centred at a uniform pixel of that cell (clipped inside the image)."""
    b = len(sens)
    flat = sens.reshape(b, -1)
    prob = PRIOR_MIX * flat / np.maximum(flat.sum(axis=1, keepdims=True), 1e-300) + (1 - PRIOR_MIX) / flat.shape[1]
    cdf = np.cumsum(prob, axis=1)
    cell = np.minimum((cdf < rng.random((b, 1)) * cdf[:, -1:]).sum(axis=1), flat.shape[1] - 1)
    multi = np.unravel_index(cell, sens.shape[1:])
    starts = []
    for a, (e, n) in enumerate(zip(cuts, spatial)):
        centre = rng.integers(e[multi[a]], e[multi[a] + 1])
        starts.append(np.clip(centre - side // 2, 0, n - side))
    return np.stack(starts, axis=1)


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """The paper's schedule of the window fraction, its 10,000 iterations rescaled to ``n_iters``."""
    i = int(it / max(n_iters, 1) * 10000)
    for edge, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                      (8000, 256), (10000, 512)):
        if i <= edge:
            return p_init / div
    return p_init / 512


def texture_signs(z: np.ndarray, nd: int) -> np.ndarray:
    """The image's high-pass sign: sign(z - smooth(z)) of ``z`` (B, *spatial) with ``nd`` spatial axes, smooth: a
    [1, 2, 1] / 4 filter along every spatial axis (edges replicated); +1 where the image is locally flat."""
    sm = z.astype(np.float64)
    for a in range(1, nd + 1):
        n = sm.shape[a]
        if n < 2:
            continue
        lo = np.take(sm, np.r_[0, np.arange(n - 1)], axis=a)
        hi = np.take(sm, np.r_[np.arange(1, n), n - 1], axis=a)
        sm = 0.25 * lo + 0.5 * sm + 0.25 * hi
    t = np.sign(z - sm)
    t[np.abs(z - sm) <= 1e-12 * max(1.0, float(np.abs(z).max(initial=0.0)))] = 1.0
    return t


Box = tuple[tuple[int, int], ...]


def split_box(box: Box) -> list[Box]:
    """The children of a block ``box`` (one (start, stop) per axis): every axis longer than one pixel halved, so up
    to 2^d children (an octree on volumes, a quadtree on images); a block no longer than ``VOXELS_SIDE`` on any
    axis: its single voxels (pixels)."""
    if voxel_level(box):  # straight to single voxels
        return [tuple((int(c), int(c) + 1) for c in cell)
                for cell in itertools.product(*[range(a0, a1) for a0, a1 in box])]
    parts = []
    for a0, a1 in box:
        mid = (a0 + a1) // 2
        parts.append([(a0, mid), (mid, a1)] if a1 - a0 > 1 else [(a0, a1)])
    return [tuple(c) for c in itertools.product(*parts)]


def box_size(box: Box) -> int:
    return int(np.prod([a1 - a0 for a0, a1 in box]))


def voxel_level(box: Box) -> bool:
    """Whether ``box`` splits straight into its single voxels (no side longer than ``VOXELS_SIDE``)."""
    return all(a1 - a0 <= VOXELS_SIDE for a0, a1 in box)


def box_index(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a0, a1) for a0, a1 in box)


class BlockSearch:
    """Per sample, the blocks the octree search tests next: a max-heap of tested blocks keyed by |margin change|
    their last test measured (the block whose flip moved the margin most is split first), and a queue of the
    children of the block split last. A block split into single voxels (``VOXELS_SIDE``) is a pass: ``report``
    gets each of its voxels' gains, and a pass that gained g puts the block back keyed ``REVISIT`` x g. When a
    sample's heap is empty the root blocks are tested again."""

    def __init__(self, roots: Sequence[Box], keys: np.ndarray) -> None:
        """``keys`` (len(roots), b): the |margin change| the probe measured per root block and sample."""
        self.roots = list(roots)
        self.order = itertools.count()
        self.heaps: list[list[tuple[float, int, Box]]] = [[] for _ in range(keys.shape[1])]
        self.queues: list[list[tuple[Box, Box | None]]] = [[] for _ in range(keys.shape[1])]
        self.passes: list[dict[Box, list[float]]] = [{} for _ in range(keys.shape[1])]  # open passes: [left, gain]
        self.parent: list[Box | None] = [None] * keys.shape[1]  # the pass the block ``next`` gave belongs to
        for j, box in enumerate(self.roots):
            for i in range(keys.shape[1]):
                self.push(i, box, float(keys[j, i]))

    def push(self, i: int, box: Box, key: float) -> None:
        if box_size(box) > SEARCH_MIN_VOXELS:
            heapq.heappush(self.heaps[i], (-key, next(self.order), box))

    def next(self, i: int) -> Box:
        """The next block to flip for sample ``i``."""
        while not self.queues[i]:
            if not self.heaps[i]:
                self.queues[i].extend((r, None) for r in self.roots)
                break
            box = heapq.heappop(self.heaps[i])[2]
            kids = split_box(box)
            par = box if REVISIT and voxel_level(box) and box not in self.passes[i] else None
            if par is not None:
                self.passes[i][box] = [len(kids), 0.0]
            self.queues[i].extend((k, par) for k in kids)
        box, self.parent[i] = self.queues[i].pop(0)
        return box

    def report(self, i: int, gain: float) -> None:
        """What the test of the block ``next`` gave last for sample ``i`` gained (the margin's drop, 0 if not kept)."""
        par = self.parent[i]
        if par is None:
            return
        rec = self.passes[i][par]
        rec[0] -= 1
        rec[1] += gain
        if rec[0] == 0:
            del self.passes[i][par]
            if rec[1] > 0:
                self.push(i, par, REVISIT * rec[1])


def pseudo_gaussian(shape: Sequence[int]) -> np.ndarray:
    """The paper's pseudo-Gaussian bump on a box ``shape`` (any number of axes): nested boxes around the centre,
    box r weighted 1/(r+1)^2, unit L2 norm."""
    shape = tuple(int(n) for n in shape)
    out = np.zeros(shape)
    centre = [n // 2 for n in shape]
    for r in range(max(centre) + 1):
        box = tuple(slice(max(c - r, 0), min(c - r + 2 * r + 1, n)) for c, n in zip(centre, shape))
        out[box] += 1.0 / (r + 1) ** 2
    return out / np.sqrt((out ** 2).sum())


def meta_pseudo_gaussian(side: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Two pseudo-Gaussian bumps of opposite sign, side by side along a random axis of a cube of ``side`` (the
    paper's ``meta_pseudo_gaussian_pert``, whose random transpose becomes a random axis), unit L2 norm."""
    out = np.zeros((side,) * d)
    axis = int(rng.integers(d))
    half = side // 2
    first = [slice(None)] * d
    second = [slice(None)] * d
    first[axis], second[axis] = slice(0, half), slice(half, side)
    if half > 0:
        out[tuple(first)] = pseudo_gaussian(out[tuple(first)].shape)
    out[tuple(second)] = -pseudo_gaussian(out[tuple(second)].shape)
    return out / np.sqrt((out ** 2).sum())


def _norm(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.sqrt((x.astype(np.float64) ** 2).sum(axis=axes, keepdims=True))


class Square(Attack):
    """Square attack (module notes): ``eps`` (required; HU by default), ``norm`` linf|l2, ``queries`` per sample
    (5,000, the clean query included), ``p_init`` (0.05 linf, 0.1 l2), ``prior`` search|probe|uniform (L-inf;
    search: a block probe, an octree search of the signs, then windows where the margin is sensitive; probe: the
    block probe and those windows; uniform: the paper's), ``space`` hu|input (hu)."""

    name = "square"
    needs_twin = False

    def __init__(self, target: Target, *, eps: float, norm: str = "linf", queries: int = 5000,
                 p_init: float | None = None, prior: str = "search", space: str = "hu",
                 hu_range: Sequence[float] = HU_RANGE) -> None:
        super().__init__(target, space=space, hu_range=hu_range)
        if norm not in NORMS:
            raise ConfigError(f"attack.norm: expected one of {NORMS}, got {norm!r}")
        if prior not in PRIORS:
            raise ConfigError(f"attack.prior: expected one of {PRIORS}, got {prior!r}")
        self.prior = prior
        self.eps, self.norm = positive("eps", eps), norm
        self.queries = positive("queries", queries, integer=True)
        if self.queries < 3:
            raise ConfigError(f"attack.queries: expected at least 3 (clean, start, one step), got {queries!r}")
        p = P_INIT[norm] if p_init is None else positive("p_init", p_init)
        if p >= 1.0:
            raise ConfigError(f"attack.p_init: expected a fraction in (0, 1), got {p_init!r}")
        self.p_init = p
        self.stats = QueryStats()

    def perturb(self, hu: Any, generator: Any) -> Candidates:
        import torch

        rng = generator_rng(generator)
        hu_np = hu.detach().numpy().astype(np.float32)
        v0 = self.start(hu).detach().numpy().astype(np.float32)
        nd = hu_np.ndim - 1
        spatial = hu_np.shape[1:]
        oracle = EngineOracle(self.target, self.space, hu_np)
        lo_v, hi_v = self.valid_range
        z0 = to_layout(v0, nd).astype(np.float64)
        lo, hi = np.minimum(z0, lo_v), np.maximum(z0, hi_v)
        if self.norm == "linf":
            lo, hi = np.maximum(z0 - self.eps, lo), np.minimum(z0 + self.eps, hi)
        b = len(v0)
        cuts = [edges(n, PRIOR_CELLS) for n in spatial]
        sens = np.ones((b, *(len(e) - 1 for e in cuts)))
        # L2's step renormalises the whole perturbation, so a query's margin change is not the window's: the map
        # only guides L-inf (measured on the planted 3D test model: L2 with the map 0.19-0.25 vs uniform 0.19-0.31)
        guided = self.prior != "uniform" and self.norm == "linf"
        probed = guided and min(PROBE_BLOCKS, min(spatial)) ** nd <= PROBE_SHARE * self.queries
        if probed:
            signs, rate, roots, moved_most = self.probe(oracle, z0, lo, hi, rng, spatial, v0.shape)
            best = np.clip(z0 + self.eps * signs[..., None], lo, hi)
        else:  # no probe within the budget: the stripes, and a map (guided) the windows' own queries learn
            best = self.initial(z0, lo, hi, rng, spatial)
        idx = np.arange(b)
        _, best_margin, done = oracle.query(from_layout(best, v0.shape), idx)
        n_iters = self.queries - int(oracle.count.max())
        first = 0  # where on the window schedule the windows start
        if probed and self.prior == "search":
            first = int(SEARCH_SHARE * n_iters)
            # the sensitivity map is the windows' guide: kept up to date only where windows follow the search
            self.search(oracle, z0, lo, hi, signs, rate if first < n_iters else None, best, best_margin, done,
                        BlockSearch(roots, moved_most), int(oracle.count.max()) + first, v0.shape)
        if probed and first < n_iters:
            vol = np.prod(np.meshgrid(*[np.diff(e) for e in cuts], indexing="ij"), axis=0)
            sens = cell_sums(rate, cuts) / vol[None]
        step = self.linf_step if self.norm == "linf" else self.l2_step
        for it in range(first, n_iters):
            idx = np.nonzero(~done & (oracle.count < self.queries))[0]
            if len(idx) == 0:
                break
            p = p_selection(self.p_init, it, n_iters)
            side = self.side(p, spatial)
            starts = (prior_starts(rng, sens[idx], cuts, spatial, side) if guided
                      else random_starts(rng, len(idx), spatial, side))
            new = step(z0[idx], best[idx], lo[idx], hi[idx], starts, side, rng, spatial)
            _, m, flipped = oracle.query(from_layout(new, (len(idx), *v0.shape[1:])), idx)
            if guided:  # what this window's change did to the margin, per unit of L1 change
                moved = np.abs(new - best[idx]).reshape(len(idx), -1).sum(axis=1)
                change = np.abs(m - best_margin[idx]) / np.maximum(moved, 1e-300)
                w = PRIOR_RATE * overlap(starts, side, cuts)
                sens[idx] += w * (change.reshape(-1, *([1] * nd)) - sens[idx])
            take = flipped | (m < best_margin[idx])
            best[idx[take]] = new[take]
            best_margin[idx[take]] = m[take]
            done[idx[take & flipped]] = True
        self.stats.add(queries=oracle.count.copy())
        values = torch.from_numpy(from_layout(best.astype(np.float32), v0.shape))[:, None]
        twin_flips = done[:, None].copy() if self.target.twin is None else None
        return Candidates(values, self.space, {"mean_queries": float(oracle.count.mean())}, twin_flips=twin_flips)

    def side(self, p: float, spatial: Sequence[int]) -> int:
        """Window side for the pixel fraction ``p``: (p N)^(1/d) (odd and >= 3 for L2, whose bumps need a centre)."""
        nd = len(spatial)
        raw = round((p * float(np.prod(spatial))) ** (1.0 / nd))
        if self.norm == "linf":
            return int(min(max(raw, 1), min(spatial) - 1 or 1))
        side = max(int(raw), 3)
        side += 1 - side % 2
        return min(side, min(spatial))

    def probe(self, oracle: "EngineOracle", z0: np.ndarray, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator,
              spatial: Sequence[int], shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[Box], np.ndarray]:
        """``PROBE_BLOCKS``^d queries per sample and pattern: block k shifted alone by eps x pattern changes the
        margin by m_k. Patterns: +1 everywhere, and for ``prior = "search"`` (``TEXTURE``) the image's high-pass sign
        (``texture_signs``). Returns the start's signs (b, *spatial): each block at the pattern that moved the
        margin most, with the sign that lowered it (-sign m_k; a random sign where m_k = 0), the sensitivity (b,
        *spatial): |m_k| of the +1 pattern / (block's L1 change) on its pixels, the blocks and the largest |m_k|
        (blocks, b)."""
        b, nd = z0.shape[0], len(spatial)
        blocks = [edges(n, PROBE_BLOCKS) for n in spatial]
        grid = [len(e) - 1 for e in blocks]
        roots = [tuple((int(e[i]), int(e[i + 1])) for e, i in zip(blocks, cell)) for cell in np.ndindex(*grid)]
        patterns = [np.ones((b, *spatial))]
        if TEXTURE and self.prior == "search":
            patterns.append(texture_signs(z0.mean(axis=-1), nd))
        signs = np.zeros((b, *spatial))
        rate = np.zeros((b, *spatial))
        dm = np.zeros((len(patterns), len(roots), b))
        chunk = max(1, 256 // max(b, 1))
        jobs = [(k, r) for k in range(len(patterns)) for r in range(len(roots))]
        for c0 in range(0, len(jobs), chunk):
            part = jobs[c0:c0 + chunk]
            batch = np.repeat(z0[None], len(part), axis=0)
            for j, (k, r) in enumerate(part):
                box = box_index(roots[r])
                at = (slice(None), *box)
                batch[(j, *at)] = np.clip(z0[at] + self.eps * patterns[k][at][..., None], lo[at], hi[at])
            idx = np.tile(np.arange(b), len(part))
            _, m, _ = oracle.query(from_layout(batch.reshape(-1, *z0.shape[1:]), (len(idx), *shape[1:])), idx)
            m = (m - oracle.clean_margin[idx]).reshape(len(part), b)
            for j, (k, r) in enumerate(part):
                dm[k, r] = m[j]
        best_k = np.abs(dm).argmax(axis=0)  # (roots, b)
        keys = np.take_along_axis(np.abs(dm), best_k[None], axis=0)[0]
        for r, root in enumerate(roots):
            box = box_index(root)
            moved = np.abs(np.clip(z0[(slice(None), *box)] + self.eps, None, hi[(slice(None), *box)])
                           - z0[(slice(None), *box)]).reshape(b, -1).sum(axis=1)
            for i in range(b):
                k = int(best_k[r, i])
                d = dm[k, r, i]
                sign = -np.sign(d) if d != 0 else rng.choice([-1.0, 1.0])
                signs[(i, *box)] = sign * patterns[k][(i, *box)]
                rate[(i, *box)] = abs(dm[0, r, i]) / max(float(moved[i]), 1e-300)
        return signs, rate, roots, keys

    def search(self, oracle: "EngineOracle", z0: np.ndarray, lo: np.ndarray, hi: np.ndarray, signs: np.ndarray,
               rate: np.ndarray | None, best: np.ndarray, best_margin: np.ndarray, done: np.ndarray, blocks: BlockSearch,
               until: int, shape: Sequence[int]) -> None:
        """The octree sign search (in place on ``signs``, ``rate``, ``best``, ``best_margin``, ``done``): each query
        flips one block of a sample's current perturbation (every pixel of it to the other vertex of the eps box)
        and keeps the flip when the margin drops; the block, keyed by the |margin change| it caused, joins the heap
        whose top is split next (``BlockSearch``). A sample runs until its count reaches ``until`` or it flips.
        ``rate`` (None: no window phase follows) gets each searched block's |margin change| per unit L1 change."""
        while True:
            idx = np.nonzero(~done & (oracle.count < until))[0]
            if len(idx) == 0:
                return
            boxes = [box_index(blocks.next(int(i))) for i in idx]
            new = best[idx]
            for j, (i, box) in enumerate(zip(idx, boxes)):
                at = (i, *box)
                new[(j, *box)] = np.clip(z0[at] - self.eps * signs[at][..., None], lo[at], hi[at])
            _, m, flipped = oracle.query(from_layout(new, (len(idx), *shape[1:])), idx)
            change = m - best_margin[idx]
            take = flipped | (change < 0)
            for j, (i, box) in enumerate(zip(idx, boxes)):
                if rate is not None:
                    moved = np.abs(new[(j, *box)] - best[(i, *box)]).sum()
                    rate[(i, *box)] = abs(change[j]) / max(moved, 1e-300)
                blocks.push(int(i), tuple((sl.start, sl.stop) for sl in box), abs(float(change[j])))
                blocks.report(int(i), -float(change[j]) if take[j] else 0.0)
                if take[j]:
                    signs[(i, *box)] *= -1.0
            best[idx[take]] = new[take]
            best_margin[idx[take]] = m[take]
            done[idx[take & flipped]] = True

    def initial(self, z0: np.ndarray, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator,
                spatial: Sequence[int]) -> np.ndarray:
        b, c, nd = z0.shape[0], z0.shape[-1], len(spatial)
        if self.norm == "linf":  # vertical stripes: one random sign per position on the last axis (and channel)
            signs = rng.choice([-1.0, 1.0], size=(b, *([1] * (nd - 1)), spatial[-1], c))
            return np.clip(z0 + self.eps * signs, lo, hi)
        side = max(min(spatial) // 5, 1)
        delta = np.zeros_like(z0)
        counts = [n // side for n in spatial]
        offsets = [(n - side * k) // 2 for n, k in zip(spatial, counts)]
        for cell in np.ndindex(*counts):
            box = tuple(slice(o + i * side, o + (i + 1) * side) for o, i in zip(offsets, cell))
            bump = meta_pseudo_gaussian(side, nd, rng) if side > 1 else np.ones((1,) * nd)
            delta[(slice(None), *box, slice(None))] += bump[None, ..., None] * rng.choice(
                [-1.0, 1.0], size=(b, *([1] * nd), c))
        delta *= self.eps / np.maximum(_norm(delta, tuple(range(1, delta.ndim))), 1e-12)
        return np.clip(z0 + delta, lo, hi)

    def linf_step(self, z0: np.ndarray, best: np.ndarray, lo: np.ndarray, hi: np.ndarray, starts: np.ndarray,
                  side: int, rng: np.random.Generator, spatial: Sequence[int]) -> np.ndarray:
        """The window at ``starts`` set to a vertex of the eps box (one sign per channel) that changes it."""
        b, c, nd = best.shape[0], best.shape[-1], len(spatial)
        index = window_index(starts, side)
        signs = rng.choice([-1.0, 1.0], size=(b, *([1] * nd), c))
        win0, cur = z0[index], best[index]
        lo_w, hi_w = lo[index], hi[index]
        axes = tuple(range(1, cur.ndim))
        proposal = np.clip(win0 + self.eps * signs, lo_w, hi_w)
        same = (np.abs(proposal - cur) < 1e-7 * max(self.eps, 1.0)).all(axis=axes)
        signs[same] *= -1.0  # the window would not change: the other vertex
        new = best.copy()
        new[index] = np.clip(win0 + self.eps * signs, lo_w, hi_w)
        return new

    def l2_step(self, z0: np.ndarray, best: np.ndarray, lo: np.ndarray, hi: np.ndarray, starts: np.ndarray,
                side: int, rng: np.random.Generator, spatial: Sequence[int]) -> np.ndarray:
        """The paper's L2 update: a new bump in window 1 (at ``starts``) carrying the mass of a second, random
        window, then ||p|| = eps again."""
        b, c, nd = best.shape[0], best.shape[-1], len(spatial)
        first = window_index(starts, side)
        second = window_index(random_starts(rng, b, spatial, side), side)
        delta = best - z0
        all_axes = tuple(range(1, delta.ndim))
        win_axes = tuple(range(1, nd + 1))  # per channel, as the paper
        image_norm = _norm(delta, all_axes)
        window_norm = _norm(delta[first], win_axes)
        both = np.zeros(delta.shape, bool)
        both[first] = True
        both[second] = True
        both_norm = _norm(np.where(both, delta, 0.0), win_axes)
        bump = meta_pseudo_gaussian(side, nd, rng)[None, ..., None] * rng.choice([-1.0, 1.0], size=(b, *([1] * nd), c))
        new_w = bump + delta[first] / (1e-10 + window_norm)
        room = np.maximum(self.eps ** 2 - image_norm ** 2, 0.0) / c + both_norm ** 2
        new_w = new_w / np.maximum(_norm(new_w, win_axes), 1e-12) * np.sqrt(room)
        delta[second] = 0.0
        delta[first] = new_w
        delta *= self.eps / np.maximum(_norm(delta, all_axes), 1e-12)
        return np.clip(z0 + delta, lo, hi)

    def extra_report(self, result: AttackResult, source: Any = None) -> dict[str, Any]:
        """Queries per sample and per success of the run ``result`` describes (clears what it read)."""
        rows = self.stats.take(result.n)
        return query_report(rows["queries"], result, self.queries) if rows else {}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "eps": self.eps, "norm": self.norm, "queries": self.queries,
                "p_init": self.p_init, "prior": self.prior, "black_box": True}
