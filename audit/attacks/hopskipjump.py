"""HopSkipJump (decision-based, label only) on the deployed engine.

Chen, Jordan, Wainwright 2020, "HopSkipJumpAttack: a query-efficient
decision-based attack" (IEEE S&P), in the form of ART's implementation: for
engines that return only a decision (a vendor's device, a remote endpoint),
every query asks "is the decision still the clean one?" through the deployed
engine (batched, the campaign's path; ``audit.attacks.square.EngineOracle``),
no scores and no twin.

1. Start: an input the engine already decides differently, per sample the
   nearest other image of the batch with a different clean decision, else
   uniform noise over the valid range (``init_queries`` tries, 100), then a
   binary search along the segment to the clean image (the boundary).
2. Each iteration at the boundary point x_b, at distance r from the clean
   image: estimate the boundary's normal from ``probes`` sqrt(t) (100, at
   most 10,000) random directions of length delta = sqrt(d) theta r (L2; d
   theta r for L-inf; theta = 0.01/sqrt(d), 0.01/d), each labelled +-1 by the
   engine, baseline-subtracted; step along it (its sign for L-inf) by
   2r/sqrt(t) halved until the engine still decides differently; binary
   search back to the boundary (L2: along the segment; L-inf: shrinking the
   box around the clean image), to a relative tolerance theta.
3. A sample stops when its boundary point is within ``eps`` of the clean image
   (a success: that point flips the engine) or when its ``queries`` (5,000,
   the clean query included) are spent; then its candidate is the boundary
   point projected onto the eps ball (L2: scaled; L-inf: clipped), which the
   deployed re-run judges like any candidate.

Threat model: ||p||_2 <= eps (default) or ||p||_inf <= eps, in HU (default) or
model-input units, the image kept in the valid range. ``notes.mean_queries``
and ``extra_report`` give the queries per sample and per success, and the
distance reached per sample (``boundary_distance``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from audit.attacks.base import (
    HU_RANGE,
    Attack,
    AttackResult,
    Candidates,
    Target,
    positive,
)
from audit.attacks.square import EngineOracle, QueryStats, generator_rng, query_report
from audit.errors import ConfigError

NORMS = ("l2", "linf")
#: Largest query batch sent to the engine at once (bytes of float32 input): probes of many samples are chunked.
QUERY_BYTES = 64 * 2**20
#: Halvings of the step before the step search gives up (the sample then stays at its boundary point).
MAX_HALVINGS = 20
#: Binary-search steps at most (the tolerance is usually met in 15-20).
MAX_BISECTIONS = 40


class HopSkipJump(Attack):
    """HopSkipJump (module notes): ``eps`` (required; HU by default), ``norm`` l2|linf (l2), ``queries`` per sample
    (5,000, the clean query included), ``probes`` (100, the first gradient estimate's; grows as sqrt(t)),
    ``max_probes`` (10,000), ``init_queries`` (100), ``space`` hu|input (hu)."""

    name = "hopskipjump"
    needs_twin = False

    def __init__(self, target: Target, *, eps: float, norm: str = "l2", queries: int = 5000, probes: int = 100,
                 max_probes: int = 10000, init_queries: int = 100, space: str = "hu",
                 hu_range: Sequence[float] = HU_RANGE) -> None:
        super().__init__(target, space=space, hu_range=hu_range)
        if norm not in NORMS:
            raise ConfigError(f"attack.norm: expected one of {NORMS}, got {norm!r}")
        self.eps, self.norm = positive("eps", eps), norm
        self.queries = positive("queries", queries, integer=True)
        self.probes = positive("probes", probes, integer=True)
        self.max_probes = max(positive("max_probes", max_probes, integer=True), self.probes)
        self.init_queries = positive("init_queries", init_queries, integer=True)
        self.stats = QueryStats()

    # --- geometry on flat variables (b, d) -----------------------------------
    def dist(self, x: np.ndarray, x0: np.ndarray) -> np.ndarray:
        diff = x - x0
        return np.abs(diff).max(axis=1) if self.norm == "linf" else np.sqrt((diff ** 2).sum(axis=1))

    def towards(self, x0: np.ndarray, x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """The point a fraction ``alpha`` (b,) of the way from ``x0`` to ``x`` (L-inf: x clipped to the box of
        alpha times its distance around x0)."""
        a = alpha[:, None]
        if self.norm == "l2":
            return (1.0 - a) * x0 + a * x
        r = self.dist(x, x0)[:, None] * a
        return np.clip(x, x0 - r, x0 + r)

    def project(self, x0: np.ndarray, x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """``x`` moved onto the eps ball around ``x0`` (unchanged when inside), in the valid range."""
        if self.norm == "linf":
            return np.clip(np.clip(x, x0 - self.eps, x0 + self.eps), lo, hi)
        d = self.dist(x, x0)
        s = np.minimum(1.0, self.eps / np.maximum(d, 1e-30))[:, None]
        return np.clip(x0 + (x - x0) * s, lo, hi)

    # --- queries --------------------------------------------------------------
    def adversarial(self, oracle: EngineOracle, x: np.ndarray, idx: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """(len(idx),) bool: the engine's decision on the flat variables ``x`` differs from the clean one."""
        per = max(1, QUERY_BYTES // (4 * int(np.prod(shape))))
        out = np.zeros(len(idx), bool)
        for s in range(0, len(idx), per):
            _, _, flipped = oracle.query(x[s : s + per].reshape(-1, *shape), idx[s : s + per])
            out[s : s + per] = flipped
        return out

    def bisect(self, oracle: EngineOracle, x0: np.ndarray, x: np.ndarray, idx: np.ndarray, shape: tuple[int, ...],
               theta: float) -> np.ndarray:
        """Binary search from the adversarial ``x`` towards ``x0`` (rows ``idx``), to the relative tolerance
        ``theta``: the adversarial end of the final interval."""
        low, high = np.zeros(len(idx)), np.ones(len(idx))
        for _ in range(MAX_BISECTIONS):
            open_ = (high - low) > theta
            if not open_.any():
                break
            j = np.nonzero(open_)[0]
            mid = (low[j] + high[j]) / 2
            adv = self.adversarial(oracle, self.towards(x0[j], x[j], mid), idx[j], shape)
            high[j] = np.where(adv, mid, high[j])
            low[j] = np.where(adv, low[j], mid)
        return self.towards(x0, x, high)

    def direction(self, oracle: EngineOracle, xb: np.ndarray, delta: np.ndarray, idx: np.ndarray, lo: np.ndarray,
                  hi: np.ndarray, n_probe: int, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """The boundary's normal at ``xb`` (rows ``idx``) from ``n_probe`` random directions of length ``delta``,
        each labelled +-1 by the engine, baseline-subtracted (all +1 or all -1: their mean direction, signed).
        Samples are taken in groups so that the probes stay within ``QUERY_BYTES`` * 4 of float64."""
        dim = xb.shape[1]
        grad = np.zeros_like(xb)
        group = max(1, (4 * QUERY_BYTES) // (8 * n_probe * dim))
        for s in range(0, len(idx), group):
            g = slice(s, s + group)
            m = len(idx[g])
            u = rng.standard_normal((m, n_probe, dim)) if self.norm == "l2" else rng.uniform(-1.0, 1.0, (m, n_probe, dim))
            u /= np.sqrt((u ** 2).sum(-1, keepdims=True))
            probes = np.clip(xb[g, None] + delta[g, None, None] * u, lo[idx[g]][:, None], hi[idx[g]][:, None])
            u = (probes - xb[g, None]) / delta[g, None, None]
            f = self.adversarial(oracle, probes.reshape(-1, dim), np.repeat(idx[g], n_probe), shape)
            f = f.reshape(m, n_probe).astype(np.float64) * 2.0 - 1.0
            mean = f.mean(1, keepdims=True)
            weights = np.where(np.abs(mean) == 1.0, mean, f - mean)
            grad[g] = (weights[..., None] * u).mean(1)
        return grad

    def initial(self, oracle: EngineOracle, z0: np.ndarray, lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(adversarial starting points (b, d), found (b,)): the nearest other image of the batch the engine decides
        differently, else uniform noise over the valid range."""
        b = len(z0)
        found = np.zeros(b, bool)
        x = z0.copy()
        labels = oracle.clean.labels
        if self.target.head.task in ("binary", "multiclass", "rating") and b > 1:
            d2 = ((z0[:, None] - z0[None]) ** 2).sum(-1) if b * b * z0.shape[1] <= 2**26 else None
            for i in range(b):
                others = np.nonzero(labels != labels[i])[0]
                if len(others) == 0:
                    continue
                order = others[np.argsort(d2[i, others])] if d2 is not None else others
                j = order[: min(len(order), 3)]
                cand = np.clip(z0[j], lo[i], hi[i])
                adv = self.adversarial(oracle, cand, np.full(len(j), i), shape)
                if adv.any():
                    x[i], found[i] = cand[int(np.argmax(adv))], True
        lo_v, hi_v = self.valid_range
        for _ in range(self.init_queries):
            idx = np.nonzero(~found & (oracle.count < self.queries))[0]
            if len(idx) == 0:
                break
            cand = rng.uniform(lo_v, hi_v, size=(len(idx), z0.shape[1]))
            cand = np.clip(cand, lo[idx], hi[idx])
            adv = self.adversarial(oracle, cand, idx, shape)
            x[idx[adv]], found[idx[adv]] = cand[adv], True
        return x, found

    def perturb(self, hu: Any, generator: Any) -> Candidates:
        import torch

        rng = generator_rng(generator)
        hu_np = hu.detach().numpy().astype(np.float32)
        v0 = self.start(hu).detach().numpy().astype(np.float32)
        shape, b = tuple(v0.shape[1:]), len(v0)
        z0 = v0.reshape(b, -1).astype(np.float64)
        dim = z0.shape[1]
        lo_v, hi_v = self.valid_range
        lo, hi = np.minimum(z0, lo_v), np.maximum(z0, hi_v)
        theta = 0.01 / math.sqrt(dim) if self.norm == "l2" else 0.01 / dim
        oracle = EngineOracle(self.target, self.space, hu_np)
        x, found = self.initial(oracle, z0, lo, hi, shape, rng)
        idx = np.nonzero(found)[0]
        if len(idx):
            x[idx] = self.bisect(oracle, z0[idx], x[idx], idx, shape, theta)
        dist = np.where(found, self.dist(x, z0), np.inf)
        reserve = MAX_BISECTIONS // 2 + MAX_HALVINGS // 2
        stopped = np.zeros(b, bool)  # no step kept the decision: the search is over for this sample
        t = 0
        while True:
            t += 1
            left = self.queries - oracle.count
            idx = np.nonzero(found & ~stopped & (dist > self.eps) & (left > reserve + 2))[0]
            if len(idx) == 0:
                break
            n_probe = int(min(self.probes * math.sqrt(t), self.max_probes, left[idx].min() - reserve))
            n_probe = max(n_probe, 2)
            xb, x0, r = x[idx], z0[idx], dist[idx]
            # gradient direction at the boundary from n_probe labelled random directions per sample
            delta = (math.sqrt(dim) if self.norm == "l2" else dim) * theta * r
            grad = self.direction(oracle, xb, delta, idx, lo, hi, n_probe, shape, rng)
            if self.norm == "l2":
                update = grad / np.maximum(np.sqrt((grad ** 2).sum(1, keepdims=True)), 1e-30)
            else:
                update = np.sign(grad)
            # geometric step search: halve until the engine still decides differently
            step = 2.0 * r / math.sqrt(t)
            new = xb.copy()
            pending = np.ones(len(idx), bool)
            for _ in range(MAX_HALVINGS):
                j = np.nonzero(pending & (self.queries - oracle.count[idx] > MAX_BISECTIONS // 2))[0]
                if len(j) == 0:
                    break
                step[j] /= 2.0
                cand = np.clip(xb[j] + step[j, None] * update[j], lo[idx[j]], hi[idx[j]])
                adv = self.adversarial(oracle, cand, idx[j], shape)
                new[j[adv]] = cand[adv]
                pending[j[adv]] = False
            moved = ~pending
            if moved.any():
                k = np.nonzero(moved)[0]
                new[k] = self.bisect(oracle, x0[k], new[k], idx[k], shape, theta)
            d_new = self.dist(new, x0)
            better = moved & (d_new < r)
            x[idx[better]], dist[idx[better]] = new[better], d_new[better]
            stopped[idx[~moved]] = True
        success = found & (dist <= self.eps * (1 + 1e-9))
        final = np.where(found[:, None], x, z0)
        final = np.where(success[:, None], np.clip(final, lo, hi), self.project(z0, final, lo, hi))
        flips = success.copy()
        check = np.nonzero(found & ~success)[0]
        if len(check):  # the projected point: one query tells whether it still flips (it rarely does)
            flips[check] = self.adversarial(oracle, final[check], check, shape)
        used = oracle.count.copy()
        self.stats.add(queries=used.copy(), boundary_distance=np.where(found, dist, np.nan), start_found=found)
        values = torch.from_numpy(final.astype(np.float32).reshape(b, *shape))[:, None]
        notes = {"mean_queries": float(used.mean()), "start_found": float(found.mean())}
        twin_flips = flips[:, None].copy() if self.target.twin is None else None
        return Candidates(values, self.space, notes, twin_flips=twin_flips)

    def extra_report(self, result: AttackResult, source: Any = None) -> dict[str, Any]:
        """Queries per sample and per success, the boundary distance reached per sample (None where no starting
        point was found) and the eps it is compared with; clears what it read."""
        rows = self.stats.take(result.n)
        if not rows:
            return {}
        d = rows["boundary_distance"]
        return {**query_report(rows["queries"], result, self.queries), "eps": self.eps, "norm": self.norm,
                "boundary_distance": [None if not np.isfinite(v) else float(v) for v in d],
                "start_found_rate": float(rows["start_found"].mean()),
                "median_boundary_distance": float(np.nanmedian(d)) if np.isfinite(d).any() else None}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "eps": self.eps, "norm": self.norm, "queries": self.queries,
                "probes": self.probes, "max_probes": self.max_probes, "init_queries": self.init_queries,
                "black_box": True, "decision_based": True}
