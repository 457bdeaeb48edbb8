"""Sliding-window inference over volumes larger than a model's input (whole-scan detection and segmentation).

Depends only on an engine-like callable ``run(batch) -> outputs``: ``batch``
(B, 1, tz, ty, tx) float32, ``outputs`` an array or a mapping of named arrays
(``Engine.run`` is one), each (B, C, tz, ty, tx) or (B, tz, ty, tx) for dense
heads. Nothing here knows the campaign or an engine backend.

Tiling, per axis of length L with tile t and overlap o (stride t - o): n =
ceil((L - t) / (t - o)) + 1 tiles whose starts are spread evenly from 0 to
L - t (rounded), so the last tile ends at L and no overlap is below o. An axis
shorter than its tile gets one tile, padded with ``pad_value`` past the end,
and the padded part of the output is discarded.

Dense outputs (segmentation, heat maps) are blended: each tile's output is
multiplied by a weight w(z) w(y) w(x) and summed, then divided by the summed
weights. The tile starts form a grid and the weights are separable, so the sum
of weights factorises into three 1-D sums (no weight volume is kept). Weights:
``gaussian`` (sigma = tile / 8 per axis, nnU-Net's, so a tile's centre counts
most and its edge, where zero padding distorts the output, least), ``linear``
(a tent, 1 at the centre down to 1/ceil(t/2) at the edge), or ``constant``.
``margin`` (voxels) zeroes the weight within that distance of every tile edge
that is interior to the volume: set it to the model's receptive-field radius
and every kept voxel equals a full-volume pass up to float rounding (the
overlap must be >= 2 margin so every voxel keeps a positive weight).

Detection outputs with candidate lists are decoded per tile and shifted to
volume coordinates, and every position of the volume has exactly one owning
tile (``Tiling.owned``): per axis, tile i keeps candidates c (tile coordinates,
sub-voxel centres allowed) with lo_i <= c < hi_i, the boundary between tiles i
and i + 1 at the midpoint of their overlap, (s_{i+1} + s_i + t - 1) / 2 in
volume voxel coordinates; the first tile's region starts at 0 and the last
tile's ends at the volume's end (L, so nothing in the padding is kept). The
midpoint is at least (overlap - 1) / 2 voxels inside both tiles, so with
overlap >= 2 margin every voxel-centred candidate kept is at least ``margin``
from the interior edge of its tile (the dense rule), and a sub-voxel centre in
the seam between t - 1 - margin and t - margin (e.g. a box centre x.5) is kept
by exactly one tile instead of dropped by both. No NMS is applied across tiles:
the partition already keeps each mark once, and the result is the union of
what each tile's model reports in its own region, as a single full pass would
report it (a model whose receptive radius is within the margin gives the same
list), whatever the volume's size; two real marks a few mm apart stay two. Heat
map heads are blended densely and then peak-extracted on the whole map
(``audit.metrics.detection.heatmap_peaks``): the result is then that of one pass.

Streaming: tiles are sliced from ``volume`` as they are needed (pass an
``np.load(..., mmap_mode="r")`` array or any array-like with ``shape`` and
slicing), outputs are accumulated in float32, into ``out`` when given (e.g. a
``np.lib.format.open_memmap`` file), so peak memory is the output, one batch of
tiles and the model, not the volume.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from audit.engines.base import pick_output
from audit.errors import InputError
from audit.metrics.detection import Candidates

BLENDS = ("gaussian", "linear", "constant")

GAUSSIAN_SIGMA_SCALE = 1.0 / 8.0
"""Gaussian blending sigma as a fraction of the tile side (nnU-Net's choice)."""

Run = Callable[[np.ndarray], Any]


def _triple(name: str, value, minimum: int) -> tuple[int, int, int]:
    v = (value,) * 3 if isinstance(value, (int, np.integer)) else tuple(value)
    if len(v) != 3 or any(isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or x < minimum
                          for x in v):
        raise InputError(f"{name}: expected an integer >= {minimum} or three of them (z, y, x), got {value!r}")
    return tuple(int(x) for x in v)  # type: ignore[return-value]


def tile_starts(length: int, tile: int, overlap: int) -> np.ndarray:
    """Starts of the tiles along one axis (module notes): first 0, last ``length - tile``, no overlap below ``overlap``."""
    if overlap >= tile:
        raise InputError(f"overlap: expected fewer voxels than the tile ({tile}), got {overlap}")
    if length <= tile:
        return np.zeros(1, dtype=np.int64)
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    return np.round(np.linspace(0, length - tile, n)).astype(np.int64)


def _base_weight(tile: int, blend: str) -> np.ndarray:
    i = np.arange(tile, dtype=np.float64)
    if blend == "gaussian":
        sigma = GAUSSIAN_SIGMA_SCALE * tile
        return np.exp(-((i - (tile - 1) / 2.0) ** 2) / (2.0 * sigma * sigma))
    if blend == "linear":
        return (np.minimum(i, tile - 1 - i) + 1.0) / math.ceil(tile / 2)
    return np.ones(tile)


class Tiling:
    """The tile grid of one volume: per-axis starts, weights and summed weights (the normaliser)."""

    def __init__(self, shape: Sequence[int], tile, overlap, *, blend: str = "gaussian", margin=0):
        if blend not in BLENDS:
            raise InputError(f"blend: expected one of {', '.join(BLENDS)}, got {blend!r}")
        if len(shape) != 3 or any(int(s) < 1 for s in shape):
            raise InputError(f"volume: expected a (Z, Y, X) volume, got shape {tuple(shape)}")
        self.shape = tuple(int(s) for s in shape)
        self.tile = _triple("tile", tile, 1)
        self.overlap = _triple("overlap", overlap, 0)
        self.margin = _triple("margin", margin, 0)
        for ax in range(3):
            if self.overlap[ax] < 2 * self.margin[ax]:
                raise InputError(f"overlap: expected overlap >= 2 * margin on every axis (a voxel near one tile's "
                                 f"edge must be inside another), got overlap {self.overlap} with margin {self.margin}")
        self.starts = [tile_starts(n, t, o) for n, t, o in zip(self.shape, self.tile, self.overlap)]
        self.weights: list[list[np.ndarray]] = []
        self.norm: list[np.ndarray] = []
        for ax, (n, t, m) in enumerate(zip(self.shape, self.tile, self.margin)):
            base = _base_weight(t, blend)
            ws, total = [], np.zeros(max(n, t))
            for s in self.starts[ax]:
                w = base.copy()
                if m and s > 0:
                    w[:m] = 0.0
                if m and s + t < n:
                    w[t - m :] = 0.0
                ws.append(w)
                total[s : s + t] += w
            if np.any(total[:n] <= 0):
                raise InputError(f"overlap: axis {ax} has voxels with no weight; expected overlap >= 2 * margin "
                                 f"({2 * m}), got {self.overlap[ax]}")
            self.weights.append(ws)
            self.norm.append(total[:n])

    def owned(self, axis: int, index: int) -> tuple[float, float]:
        """[lo, hi) in tile coordinates that tile ``index`` owns along ``axis`` (module notes: one owner per position).

        Interior boundaries at the midpoint of two neighbouring tiles' overlap, (s_{i+1} + s_i + t - 1) / 2 in
        volume voxel coordinates; the first tile starts at 0, the last ends at the volume's end (no padding kept).
        """
        starts, t, n = self.starts[axis], self.tile[axis], self.shape[axis]
        s = float(starts[index])
        lo = 0.0 if index == 0 else (float(starts[index]) + float(starts[index - 1]) + t - 1) / 2.0
        hi = float(min(n, s + t)) if index == starts.size - 1 else (float(starts[index + 1]) + s + t - 1) / 2.0
        return lo - s, hi - s

    def __len__(self) -> int:
        return int(np.prod([s.size for s in self.starts]))

    def tiles(self) -> Iterator[tuple[tuple[int, int, int], tuple[int, int, int]]]:
        """(tile index per axis, start per axis) of every tile, z-major."""
        for idx in itertools.product(*(range(s.size) for s in self.starts)):
            yield idx, tuple(int(self.starts[a][i]) for a, i in enumerate(idx))  # type: ignore[misc]

    def read(self, volume: Any, start: Sequence[int], pad_value: float) -> np.ndarray:
        """One tile of the volume as float32, padded with ``pad_value`` where the volume is shorter than the tile."""
        stop = [min(s + t, n) for s, t, n in zip(start, self.tile, self.shape)]
        part = np.asarray(volume[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]], dtype=np.float32)
        if part.shape == self.tile:
            return part
        buf = np.full(self.tile, pad_value, dtype=np.float32)
        buf[: part.shape[0], : part.shape[1], : part.shape[2]] = part
        return buf


def _batches(tiling: Tiling, volume: Any, batch: int, prepare, pad_value: float):
    """(tile indices, starts, input batch (B, 1, tz, ty, tx) float32), ``batch`` tiles at a time."""
    items = iter(tiling.tiles())
    while True:
        chunk = list(itertools.islice(items, batch))
        if not chunk:
            return
        xs = []
        for _, start in chunk:
            x = tiling.read(volume, start, pad_value)
            xs.append(x if prepare is None else np.asarray(prepare(x), dtype=np.float32))
        yield [c[0] for c in chunk], [c[1] for c in chunk], np.stack(xs)[:, None]


def _pick(outputs: Any, output: str | None) -> np.ndarray:
    arr = pick_output(outputs, output, "window") if isinstance(outputs, Mapping) else outputs
    return np.asarray(arr)


def _batch_size(batch: int) -> int:
    if isinstance(batch, (bool, np.bool_)) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise InputError(f"batch: expected an integer >= 1 (tiles per inference), got {batch!r}")
    return int(batch)


def sliding_window_dense(volume: Any, run: Run, *, tile, overlap, batch: int = 2, blend: str = "gaussian",
                         margin=0, output: str | None = None, prepare: Callable[[np.ndarray], Any] | None = None,
                         pad_value: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
    """Blended dense output (C, Z, Y, X) float32 of ``run`` over a (Z, Y, X) ``volume`` (module notes).

    ``tile``, ``overlap``, ``margin``: voxels, one integer or (z, y, x); ``batch``: tiles per call of ``run``;
    ``output``: which named output (None: the first); ``prepare``: applied to each (tz, ty, tx) float32 tile
    before inference (e.g. a HU window), so the volume stays in HU on disk; ``pad_value``: fills tiles past the
    volume's end, in the volume's units (before ``prepare``); ``out``: a zero-able float32 (C, Z, Y, X) array to
    accumulate into (a memmap keeps the output on disk), allocated when None.
    """
    tiling = Tiling(np.shape(volume) if not hasattr(volume, "shape") else volume.shape, tile, overlap,
                    blend=blend, margin=margin)
    n = _batch_size(batch)
    shape = tiling.shape
    acc, first = out, True
    for idxs, starts, x in _batches(tiling, volume, n, prepare, pad_value):
        y = _pick(run(x), output)
        if y.ndim == 4:
            y = y[:, None]
        if y.ndim != 5 or y.shape[0] != x.shape[0] or y.shape[2:] != tiling.tile:
            raise InputError(f"window: expected a dense output (B, C, {', '.join(map(str, tiling.tile))}) for a "
                             f"batch of {x.shape[0]} tiles, got shape {y.shape}")
        if acc is None:
            acc = np.zeros((y.shape[1], *shape), dtype=np.float32)
        elif first:
            if acc.shape != (y.shape[1], *shape) or acc.dtype != np.float32:
                raise InputError(f"out: expected a float32 array of shape {(y.shape[1], *shape)}, got "
                                 f"{acc.dtype} {acc.shape}")
            acc[...] = 0.0
        first = False
        for b, (idx, start) in enumerate(zip(idxs, starts)):
            wz, wy, wx = (tiling.weights[a][idx[a]] for a in range(3))
            stop = [min(s + t, L) for s, t, L in zip(start, tiling.tile, shape)]
            ext = [e - s for s, e in zip(start, stop)]
            w = (wz[: ext[0], None, None] * wy[None, : ext[1], None] * wx[None, None, : ext[2]]).astype(np.float32)
            acc[:, start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]] += (
                y[b, :, : ext[0], : ext[1], : ext[2]].astype(np.float32) * w)
    nz, ny, nx = tiling.norm
    plane = (ny[:, None] * nx[None, :]).astype(np.float64)
    for z in range(shape[0]):
        acc[:, z] = (acc[:, z] / (nz[z] * plane)).astype(np.float32)
    return acc


def sliding_window_candidates(volume: Any, run: Run, decode: Callable[[Any], Candidates], *, tile, overlap,
                              batch: int = 2, margin=0, prepare: Callable[[np.ndarray], Any] | None = None,
                              pad_value: float = 0.0) -> Candidates:
    """Candidates of a detection model over a whole volume, in volume voxel coordinates (module notes).

    ``decode`` turns one tile's outputs (the mapping, or array, with the batch axis removed) into
    ``Candidates`` in tile coordinates (e.g. ``candidates_from_points`` on two named outputs); each tile keeps the
    candidates in the region it owns (``Tiling.owned``: every position has exactly one owner, the padding none), and
    no NMS runs across tiles, so the list is the one a full pass of a model with receptive radius <= ``margin``
    gives. ``margin``: the model's receptive radius in voxels, checked against the overlap (>= 2 margin).
    """
    tiling = Tiling(volume.shape, tile, overlap, margin=margin)
    n = _batch_size(batch)
    owned = [[tiling.owned(a, i) for i in range(tiling.starts[a].size)] for a in range(3)]
    centres, scores = [], []
    for idxs, starts, x in _batches(tiling, volume, n, prepare, pad_value):
        outs = run(x)
        for b, (idx, start) in enumerate(zip(idxs, starts)):
            one = {k: np.asarray(v)[b] for k, v in outs.items()} if isinstance(outs, Mapping) else np.asarray(outs)[b]
            cand = decode(one)
            c = cand.centres
            keep = np.ones(len(cand), dtype=bool)
            for a in range(3):
                lo, hi = owned[a][idx[a]]
                keep &= (c[:, a] >= lo) & (c[:, a] < hi)
            centres.append(c[keep] + np.asarray(start, dtype=np.float64))
            scores.append(cand.scores[keep])
    c_all = np.concatenate(centres) if centres else np.zeros((0, 3))
    s_all = np.concatenate(scores) if scores else np.zeros(0)
    order = np.argsort(-s_all, kind="stable")  # highest score first: one order whatever the tiling
    return Candidates(c_all[order], s_all[order])
