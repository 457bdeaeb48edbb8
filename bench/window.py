"""Peak memory of sliding-window inference over a whole 300 x 512 x 512 CT volume: must stay below 2 GB.

The volume is an int16 HU ``.npy`` in a temp folder, opened memory-mapped; the model is a real ONNX graph
(Conv3d 3x3x3 + sigmoid, dynamic spatial axes) run by ONNX Runtime on 32 x 128 x 128 tiles with 8 voxels of
overlap, Gaussian blending, and the blended float32 output written to a memory-mapped ``.npy``. Each variant runs
in its own child process, peak RSS from ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the child:
  (a) baseline: the same imports, the engine opened and one batch of tiles run (what any audit process costs);
  (b) the whole volume.
Side by side: (b) - (a) is what the sliding window adds, compared with the volume's and the output's sizes.
Last line: one JSON object {"peak_rss_gb", "limit_gb": 2, "baseline_rss_gb", ...}.
Usage: python bench/window.py [--shape 300 512 512] [--tile 32 128 128] [--overlap 8] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
LIMIT_GB = 2.0

CHILD = """
import json, resource, sys, time
import numpy as np
from audit.artifact.window import Tiling, sliding_window_dense
from audit.engines import load_engine
model, vol_path, out_path, whole = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tile, overlap, batch = tuple(map(int, sys.argv[5:8])), int(sys.argv[8]), int(sys.argv[9])
engine = load_engine(model, threads=1)
volume = np.load(vol_path, mmap_mode="r")
prepare = lambda hu: np.clip((hu + 1000.0) / 1400.0, 0.0, 1.0)  # HU window [-1000, 400] -> [0, 1]
t0 = time.perf_counter()
if whole:
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(1, *volume.shape))
    sliding_window_dense(volume, engine.run, tile=tile, overlap=overlap, batch=batch, margin=1, prepare=prepare,
                         pad_value=-1000.0, out=out)
    out.flush()
    tiles = len(Tiling(volume.shape, tile, overlap, margin=1))
    check = float(np.asarray(out[0, ::50, ::128, ::128]).mean())
else:
    x = np.stack([prepare(np.asarray(volume[: tile[0], : tile[1], : tile[2]], np.float32))] * batch)[:, None]
    engine.run(x)
    tiles, check = batch, 0.0
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "tiles": tiles,
                  "seconds": round(time.perf_counter() - t0, 1), "check": check}))
"""


def conv_model(path: Path) -> Path:
    """Conv3d(1 -> 1, 3x3x3, pad 1) + Sigmoid with dynamic batch and spatial axes: a heat-map head."""
    w = np.full((1, 1, 3, 3, 3), 1.0 / 27.0, np.float32)
    b = np.zeros(1, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["h"], kernel_shape=[3, 3, 3], pads=[1] * 6),
         helper.make_node("Sigmoid", ["h"], ["y"])],
        "heat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "z", "y", "x"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, "z", "y", "x"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def write_volume(path: Path, shape: tuple[int, int, int]) -> None:
    """An int16 HU volume (air, a body ellipse, noise), written slab by slab so this process stays small."""
    vol = np.lib.format.open_memmap(path, mode="w+", dtype=np.int16, shape=shape)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    body = ((yy - shape[1] / 2) / (0.4 * shape[1])) ** 2 + ((xx - shape[2] / 2) / (0.45 * shape[2])) ** 2 < 1
    for z in range(0, shape[0], 16):
        slab = np.where(body, 40, -1000)[None] + rng.normal(0, 20, (min(16, shape[0] - z), *shape[1:]))
        vol[z : z + 16] = slab.astype(np.int16)
    vol.flush()
    del vol


def child(model: Path, vol: Path, out: Path, whole: bool, args) -> dict:
    argv = [sys.executable, "-c", CHILD, str(model), str(vol), str(out), str(int(whole)), *map(str, args.tile),
            str(args.overlap), str(args.batch)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512))
    parser.add_argument("--tile", type=int, nargs=3, default=(32, 128, 128))
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory() as tmp:
        model, vol, out = conv_model(Path(tmp) / "heat.onnx"), Path(tmp) / "volume.npy", Path(tmp) / "out.npy"
        write_volume(vol, shape)
        base = child(model, vol, out, False, args)
        run = child(model, vol, out, True, args)
    gib = 1024.0 ** 2  # KiB per GiB
    vol_gb, out_gb = np.prod(shape) * 2 / 1024.0 ** 3, np.prod(shape) * 4 / 1024.0 ** 3
    print(f"{'variant':34}{'tiles':>7}{'peak RSS GiB':>14}{'s':>8}")
    print(f"{'baseline (imports, engine, 1 batch)':34}{base['tiles']:>7}{base['peak_kib'] / gib:>14.3f}"
          f"{base['seconds']:>8}")
    print(f"{'whole volume':34}{run['tiles']:>7}{run['peak_kib'] / gib:>14.3f}{run['seconds']:>8}")
    print(f"volume {vol_gb:.3f} GiB int16 (memory-mapped), output {out_gb:.3f} GiB float32 (memory-mapped)")
    peak = run["peak_kib"] / gib
    print(json.dumps({"peak_rss_gb": round(peak, 3), "limit_gb": LIMIT_GB, "below_limit": bool(peak < LIMIT_GB),
                      "baseline_rss_gb": round(base["peak_kib"] / gib, 3),
                      "window_added_gb": round(peak - base["peak_kib"] / gib, 3),
                      "volume_gb": round(float(vol_gb), 3), "output_gb": round(float(out_gb), 3),
                      "shape": list(shape), "tile": list(args.tile), "overlap": args.overlap, "batch": args.batch,
                      "tiles": run["tiles"], "seconds": run["seconds"]}))


if __name__ == "__main__":
    main()
