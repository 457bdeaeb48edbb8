"""Images/s of the `remote` engine (KServe v2 over HTTP, `audit serve` in its own process on loopback) vs ONNX
Runtime in process, on the same reference model and batches.

The server runs ONNX Runtime on the same machine, so every remote image costs the local inference plus the HTTP
round trip and the tensor (de)serialisation; the physical limit of the ratio is 1.0 (less on 2 cores, where the
server and the client share the CPUs). Binary tensor data (the v2 extension) and plain JSON are both measured.
Last line: one JSON object of remote/local ratios per model, transport and batch.
Usage: python bench/remote.py [--seconds 2] [--models nodule3d bodysite2d]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys

import numpy as np

from audit.engines import load_engine
from engines import rate  # bench/engines.py: the same images/s loop (scripts run from bench/)
from models.build import cached_build

BATCHES = (16, 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--models", nargs="+", default=["nodule3d", "bodysite2d"])
    args = parser.parse_args()
    ratios: dict[str, float] = {}
    print(f"{'model':12}{'engine':>14}{'batch':>7}{'images/s':>12}")
    for name in args.models:
        path = cached_build(name, quick=True, progress=False).primary
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "audit", "serve", str(path), "--name", name, "--port", str(port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            server.stdout.readline()  # "serving ..." once it listens
            local = load_engine(path)
            engines = {"ort-local": local}
            for transport, binary in (("remote-binary", True), ("remote-json", False)):
                engines[transport] = load_engine(None, "remote", url=f"http://127.0.0.1:{port}", model_name=name,
                                                 binary=binary)
            shape = tuple(local.input_spec.shape[1:])
            for b in BATCHES:
                x = np.random.default_rng(0).uniform(0, 1, (b, *shape)).astype(np.float32)
                base = None
                for label, engine in engines.items():
                    r = rate(engine.run, x, args.seconds if label != "remote-json" else args.seconds / 2)
                    print(f"{name:12}{label:>14}{b:>7}{r:12.1f}")
                    if base is None:
                        base = r
                    else:
                        ratios[f"{name}_{label}_b{b}_vs_local"] = round(r / base, 3)
        finally:
            server.kill()
            server.wait(10)
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
