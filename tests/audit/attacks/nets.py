"""Small real models for the attack tests: torch nets exported to ONNX with audit metadata, opened by onnxruntime."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from audit.artifact import AuditedModel
from audit.engines import load_engine
from audit.artifact.heads import head_from, preprocess_from

WINDOW = (-1000.0, 1000.0)
SHAPE = (24, 24)
REGION = (slice(8, 16), slice(8, 16))


class Fragile(nn.Module):
    """P(above) = sigmoid(gain * (mean of a central region of x - t)) after a 3x3 smoothing conv: a small input
    change inside the region flips samples near the threshold (x = (hu + 1000) / 2000, t = 0.5 is 0 HU)."""

    def __init__(self, gain: float = 400.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 9)
        self.gain = gain

    def forward(self, x):
        r = self.conv(x)[:, :, REGION[0], REGION[1]].mean(dim=(1, 2, 3))
        return torch.sigmoid(self.gain * (r - 0.5))[:, None]


class Constant(nn.Module):
    """Ignores its input: P = sigmoid(0 * conv(x) + 2) = 0.88 for every image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.fill_(1.0)

    def forward(self, x):
        return torch.sigmoid(self.conv(x).mean(dim=(1, 2, 3)) * 2.0)[:, None]


class SmallCNN(nn.Module):
    """Conv-ReLU-Conv-ReLU-pool-linear with seeded random weights: a generic net for parity and bounds."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2))
        self.fc = nn.Linear(32, 1)

    def forward(self, x):
        return torch.sigmoid(self.fc(self.features(x).flatten(1)) * 20.0)


def export(net: nn.Module, path: Path, shape=SHAPE, task: str = "binary") -> Path:
    """Export ``net`` (input (B, 1, *shape)) to ONNX opset 17 with the audit metadata a head needs."""
    net = net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(2, 1, *shape),), str(path), input_names=["input"], output_names=["probability"],
                          dynamic_axes={"input": {0: "batch"}, "probability": {0: "batch"}}, opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    for key, value in {"audit.task": task, "audit.class_names": json.dumps(["below", "above"]), "audit.threshold": "0.5",
                       "audit.hu_window": json.dumps(list(WINDOW))}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, str(path))
    return path


def audited(path: Path) -> AuditedModel:
    engine = load_engine(path)
    return AuditedModel(path.stem, engine, head_from(engine.metadata), preprocess_from(engine.metadata))


def images(n: int, spread_hu: float = 10.0, seed: int = 0) -> np.ndarray:
    """Textured images whose central region sits near 0 HU (the fragile model's threshold)."""
    rng = np.random.default_rng(seed)
    imgs = rng.normal(0.0, 30.0, (n, *SHAPE)).astype(np.float32)
    imgs[(slice(None), *REGION)] += rng.normal(0.0, spread_hu, (n, 1, 1)).astype(np.float32)
    return imgs
