"""An INT8 artifact attacked directly (issue #19): the shipped nodule3d quantised with ``audit.artifact.quantize``,
Square (L-inf, engine queries only) run on the INT8 ONNX Runtime session through ``plan_attacks`` as
``audit attack`` runs it, and the block's FP32 comparison (``reference``): samples whose decisions differ between
the INT8 engine and its FP32 original, clean and on the attacked inputs, and how many INT8 flips leave the FP32
decision unchanged. The same attack is also run on the FP32 original, for its success and time beside INT8's.

Clean decisions of both engines are also compared on ``--clean-n`` further phantoms (no attack).
Calibration: ``--calibration`` phantoms of another seed than the attacked ones. Samples: fresh phantoms
(``make_data`` at ``data_seed + 1``). eps in model-input units (x = clip((HU + 1000) / 1400, 0, 1)).
Last line: one JSON object.
Usage: python bench/attacks_int8.py [--n 32] [--eps 0.04] [--queries 500] [--calibration 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from types import MappingProxyType

import numpy as np

from audit.artifact import open_path
from audit.artifact.quantize import quantize_int8
from audit.config import AttackSpec
from audit.data.arrays import ArraySource
from audit.pipelines.attack import plan_attacks
from models import registry
from models.shipped import shipped_build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--eps", type=float, default=0.04)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--no-fp32-attack", action="store_true", help="attack the INT8 engine only")
    ap.add_argument("--clean-n", type=int, default=256, help="phantoms for the clean INT8/FP32 decision comparison")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    build = shipped_build("nodule3d")
    bp = registry.get("nodule3d").blueprint(build.recipe.variant)
    hu = np.asarray(bp.make_data(args.n, build.recipe.data_seed + 1).hu[: args.n], np.float32)
    calib_hu = np.asarray(bp.make_data(args.calibration, build.recipe.data_seed + 2).hu, np.float32)
    spec = AttackSpec("square", MappingProxyType({"eps": args.eps, "queries": args.queries, "space": "input"}))
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "nodule3d.onnx"
        fp32_path.write_bytes(Path(build.artifacts[0].onnx).read_bytes())
        fp32 = open_path(fp32_path, "nodule3d-fp32")
        t0 = time.perf_counter()
        int8_path = quantize_int8(fp32_path, Path(tmp) / "nodule3d_int8.onnx", fp32.prepare(calib_hu))
        quantize_s = time.perf_counter() - t0
        int8 = open_path(int8_path, "nodule3d-int8")
        more = np.asarray(bp.make_data(args.clean_n, build.recipe.data_seed + 3).hu, np.float32)
        a, b = int8.decide_batched(more, 32), fp32.decide_batched(more, 32)
        source = ArraySource(hu, tuple(bp.spacing))
        out = {"model": "nodule3d (shipped)", "n": args.n, "eps_input": args.eps, "queries": args.queries,
               "quantize_s": round(quantize_s, 2), "clean_n": args.clean_n,
               "clean_differ_of_clean_n": int((a.labels != b.labels).sum()),
               "clean_max_abs_score_diff": float(np.abs(a.scores - b.scores).max())}
        for name, model in (("int8", int8), ("fp32", fp32))[: 1 if args.no_fp32_attack else 2]:
            plan = plan_attacks(spec, model, source)
            assert plan.target.twin is None and plan.target.model is model
            t0 = time.perf_counter()
            (block,) = plan.run(progress=False)
            s = block["summary"]
            out.update({f"{name}_success": s["deployed_success_rate"], f"{name}_s": round(time.perf_counter() - t0, 2),
                        f"{name}_queries_per_success": block["extra"]["queries_per_success"]})
            if name == "int8":
                ref = block["reference"]
                out.update({k: ref[k] for k in ("clean_differ", "attacked_differ", "flipped_model",
                                                "flipped_reference_too", "flipped_model_only")})
                print(f"INT8: {ref['verdict']}", flush=True)
    print(f"Square {args.queries} queries, eps {args.eps}: INT8 {out['int8_success']:.3f} ({out['int8_s']} s), "
          f"FP32 {out.get('fp32_success', float('nan')):.3f} ({out.get('fp32_s')} s)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
