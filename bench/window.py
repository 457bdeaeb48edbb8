"""Peak memory of sliding-window inference over a whole 300 x 512 x 512 CT volume: must stay below 2 GB.

The volume is an int16 HU ``.npy`` in a temp folder, opened memory-mapped; the model is a real ONNX graph
(Conv3d 3x3x3 + sigmoid, dynamic spatial axes) run by ONNX Runtime on 32 x 128 x 128 tiles with 8 voxels of
overlap, Gaussian blending, and the blended float32 output written to a memory-mapped ``.npy``. Each variant runs
in its own child process, peak RSS from ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the child:
  (a) baseline: the same imports, the engine opened and one batch of tiles run (what any audit process costs);
  (b) the whole volume.
Side by side: (b) - (a) is what the sliding window adds, compared with the volume's and the output's sizes.
Then the audit's own path, ``AuditedModel.decide`` on the memory-mapped HU volume (each tile prepared as read),
for two detection heads on fixed 32 x 128 x 128 inputs (so the data exceed them and the window is taken):
  (c) heat map: sigmoid(40 (mean3x3x3(x) - 0.9)) (near 0 in air and soft tissue, near 1 in the planted 400 HU
      spheres), blended into one float32 map, peaks extracted slab-wise at the head's floor (0.05), NMS 5 mm;
  (d) candidates: 3x3x3 local maxima of x above 0.9, top 16 per tile (centres, scores), each tile keeping the
      candidates of the region it owns.
Last line: one JSON object {"peak_rss_gb" (the largest of b, c, d), "limit_gb": 2, "baseline_rss_gb", "decide": {...}}.
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


DECIDE_CHILD = """
import json, resource, sys, time
import numpy as np
from audit.artifact import open_path
model, vol_path = sys.argv[1], sys.argv[2]
m = open_path(model, "bench")
volume = np.load(vol_path, mmap_mode="r")
t0 = time.perf_counter()
dec = m.decide(volume[None], (1.0, 0.7, 0.7))
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "candidates": len(dec.candidates[0]),
                  "shown": int(dec.labels[0]), "seconds": round(time.perf_counter() - t0, 1)}))
"""

#: Spheres planted in the bench volume for the detection heads: (z, y, x) as fractions of the shape, radius 4 voxels,
#: 400 HU (x = 1 after the [-1000, 400] window), inside the body ellipse.
SPHERES = ((0.25, 0.5, 0.5), (0.5, 0.4, 0.6), (0.5, 0.6, 0.35), (0.75, 0.45, 0.45), (0.9, 0.55, 0.6))
SPHERE_RADIUS = 4
DECIDE_TILE = (32, 128, 128)
DETECT_WINDOW = (-1000.0, 400.0)


def _save(model, path: Path, meta: dict) -> Path:
    model.ir_version = 9
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, path)
    return path


def heatmap_detector(path: Path) -> Path:
    """A fixed-input (1, 1, 32, 128, 128) heat-map detection head: sigmoid(40 (mean3x3x3(x) - 0.9))."""
    spatial = list(DECIDE_TILE)
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["x"], ["a"], kernel_shape=[3, 3, 3], pads=[1] * 6),
         helper.make_node("Sub", ["a", "t"], ["d"]), helper.make_node("Mul", ["d", "g"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["heat"])], "heat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, *spatial])],
        [helper.make_tensor_value_info("heat", TensorProto.FLOAT, [1, 1, *spatial])],
        [helper.make_tensor("t", TensorProto.FLOAT, [], [0.9]), helper.make_tensor("g", TensorProto.FLOAT, [], [40.0])])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path,
                 {"audit.task": "detection", "audit.output_kind": "heatmap", "audit.hu_window": json.dumps(DETECT_WINDOW)})


def candidate_detector(path: Path, top: int = 16) -> Path:
    """A fixed-input candidates head: 3x3x3 local maxima of x above 0.9, the top ``top`` (centres, scores; -inf pad)."""
    spatial = list(DECIDE_TILE)
    nodes = [
        helper.make_node("MaxPool", ["x"], ["mp"], kernel_shape=[3, 3, 3], pads=[1] * 6),
        helper.make_node("Equal", ["x", "mp"], ["peak"]), helper.make_node("Greater", ["x", "floor"], ["high"]),
        helper.make_node("And", ["peak", "high"], ["keep"]), helper.make_node("Where", ["keep", "x", "ninf"], ["s"]),
        helper.make_node("Reshape", ["s", "flat_shape"], ["flat"]),
        helper.make_node("TopK", ["flat", "m"], ["scores", "idx"], axis=-1, largest=1, sorted=1),
        helper.make_node("Div", ["idx", "nyx"], ["cz"]), helper.make_node("Div", ["idx", "nx"], ["q"]),
        helper.make_node("Mod", ["q", "ny"], ["cy"]), helper.make_node("Mod", ["idx", "nx"], ["cx"]),
        *[helper.make_node("Unsqueeze", [c, "last"], [c + "1"]) for c in ("cz", "cy", "cx")],
        helper.make_node("Concat", ["cz1", "cy1", "cx1"], ["ci"], axis=-1),
        helper.make_node("Cast", ["ci"], ["centres"], to=TensorProto.FLOAT)]
    inits = [helper.make_tensor("floor", TensorProto.FLOAT, [], [0.9]),
             helper.make_tensor("ninf", TensorProto.FLOAT, [], [-np.inf]),
             helper.make_tensor("flat_shape", TensorProto.INT64, [2], [0, -1]),
             helper.make_tensor("m", TensorProto.INT64, [1], [top]),
             helper.make_tensor("nyx", TensorProto.INT64, [], [spatial[1] * spatial[2]]),
             helper.make_tensor("ny", TensorProto.INT64, [], [spatial[1]]),
             helper.make_tensor("nx", TensorProto.INT64, [], [spatial[2]]),
             helper.make_tensor("last", TensorProto.INT64, [1], [-1])]
    graph = helper.make_graph(nodes, "cands", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, *spatial])],
                              [helper.make_tensor_value_info("centres", TensorProto.FLOAT, [1, top, 3]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, top])], inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path,
                 {"audit.task": "detection", "audit.output_kind": "candidates",
                  "audit.hu_window": json.dumps(DETECT_WINDOW)})


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
    r = SPHERE_RADIUS
    ball = np.sum(np.square(np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]), axis=0) <= r * r
    for fz, fy, fx in SPHERES:  # the detection heads' targets
        z, y, x = (int(f * (n - 1)) for f, n in zip((fz, fy, fx), shape))
        z, y, x = (min(max(c, r), n - 1 - r) for c, n in zip((z, y, x), shape))
        box = vol[z - r : z + r + 1, y - r : y + r + 1, x - r : x + r + 1]
        box[ball] = 400
    vol.flush()
    del vol


def child(model: Path, vol: Path, out: Path, whole: bool, args) -> dict:
    argv = [sys.executable, "-c", CHILD, str(model), str(vol), str(out), str(int(whole)), *map(str, args.tile),
            str(args.overlap), str(args.batch)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def decide_child(model: Path, vol: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", DECIDE_CHILD, str(model), str(vol)], capture_output=True, text=True,
                          cwd=ROOT)
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
        out.unlink()
        heat = decide_child(heatmap_detector(Path(tmp) / "heatmap.onnx"), vol)
        cand = decide_child(candidate_detector(Path(tmp) / "cands.onnx"), vol)
    gib = 1024.0 ** 2  # KiB per GiB
    vol_gb, out_gb = np.prod(shape) * 2 / 1024.0 ** 3, np.prod(shape) * 4 / 1024.0 ** 3
    print(f"{'variant':34}{'tiles':>7}{'peak RSS GiB':>14}{'s':>8}")
    print(f"{'baseline (imports, engine, 1 batch)':34}{base['tiles']:>7}{base['peak_kib'] / gib:>14.3f}"
          f"{base['seconds']:>8}")
    print(f"{'whole volume':34}{run['tiles']:>7}{run['peak_kib'] / gib:>14.3f}{run['seconds']:>8}")
    for label, r in (("decide: heat map (in memory)", heat), ("decide: candidates", cand)):
        print(f"{label:34}{r['candidates']:>7}{r['peak_kib'] / gib:>14.3f}{r['seconds']:>8}   (column 2: candidates)")
    print(f"volume {vol_gb:.3f} GiB int16 (memory-mapped), output {out_gb:.3f} GiB float32 (memory-mapped)")
    peak = max(run["peak_kib"], heat["peak_kib"], cand["peak_kib"]) / gib
    print(json.dumps({"peak_rss_gb": round(peak, 3), "limit_gb": LIMIT_GB, "below_limit": bool(peak < LIMIT_GB),
                      "baseline_rss_gb": round(base["peak_kib"] / gib, 3),
                      "window_added_gb": round(peak - base["peak_kib"] / gib, 3),
                      "volume_gb": round(float(vol_gb), 3), "output_gb": round(float(out_gb), 3),
                      "shape": list(shape), "tile": list(args.tile), "overlap": args.overlap, "batch": args.batch,
                      "tiles": run["tiles"], "seconds": run["seconds"],
                      "decide": {"tile": list(DECIDE_TILE), "spheres": len(SPHERES),
                                 "heatmap": {"peak_rss_gb": round(heat["peak_kib"] / gib, 3),
                                             "candidates": heat["candidates"], "seconds": heat["seconds"]},
                                 "candidates": {"peak_rss_gb": round(cand["peak_kib"] / gib, 3),
                                                "candidates": cand["candidates"], "seconds": cand["seconds"]}}}))


if __name__ == "__main__":
    main()
