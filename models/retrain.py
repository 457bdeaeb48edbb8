"""Fine-tuning a reference model on perturbed samples: the torch side of ``audit retrain``.

``finetune`` trains on the pooled clean and perturbed samples (class-balanced
batches, the best validation epoch kept); ``export_round`` writes a round's
ONNX artifact (with the parity check) and state dict. The loop that attacks,
pools and audits lives in ``audit.pipelines.retrain``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import export, training


def split_metrics(bp, net, data, idx) -> dict[str, Any]:
    m = training.evaluate(bp, net, data, idx)
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def finetune(bp, net: torch.nn.Module, x: np.ndarray, targets: dict[str, np.ndarray], strata: np.ndarray, data,
             val: np.ndarray, *, epochs: int, lr: float, batch_size: int, seed: int) -> torch.nn.Module:
    """Fine-tune ``net`` on (x, targets) for ``epochs`` with class-balanced batches; keep the best validation epoch
    of the fine-tuning (never the start)."""
    with training.deterministic(seed):
        for p in net.parameters():
            p.requires_grad_(True)
        net = net.to(memory_format=torch.contiguous_format)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        rng = np.random.default_rng([seed, 13])
        # best among the fine-tuned epochs only: seeding it with the start would keep the old weights whenever
        # validation does not improve, and the round would change nothing
        best, best_state = -np.inf, None
        for epoch in range(epochs):
            net.train()
            order = training.balanced_order(strata, rng)
            for i in range(0, order.size, batch_size):
                b = order[i : i + batch_size]
                t = {k: torch.from_numpy(np.ascontiguousarray(v[b])) for k, v in targets.items()}
                loss = bp.task.loss(net, torch.from_numpy(x[b]), t, epoch)
                opt.zero_grad()
                loss.backward()
                opt.step()
            score = bp.task.score(split_metrics(bp, net, data, val))
            if score > best:
                best, best_state = score, copy.deepcopy(net.state_dict())
        net.load_state_dict(best_state)
    return net.eval()


def export_round(bp, net: torch.nn.Module, stem: Path, *, recipe_hash: str, seed: int, data, test: np.ndarray) -> tuple[Path, float]:
    """``stem.onnx`` (metadata, parity-checked against ``net``) and ``stem.pt``; returns (ONNX path, parity max |diff|)."""
    onnx_path = stem.with_suffix(".onnx")
    md = export.metadata_for(bp, recipe_hash=recipe_hash, weights=training.weights_sha256(net), seed=seed, fold=0,
                             repeat=0, test_metrics=split_metrics(bp, net, data, test))
    parity = export.export_onnx(net, onnx_path, input_shape=bp.input_shape, output_names=bp.output_names, metadata=md,
                                parity_inputs=data.x[test[: export.PARITY_SAMPLES]])
    torch.save(net.state_dict(), stem.with_suffix(".pt"))
    return onnx_path, parity
