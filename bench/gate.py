"""Fast (sequential) gate vs full gate on the reference nodule model and a set of crafted policies.

One process: the full campaign (N samples x 5 doses x K draws) and the gate on
its report, then the sequential gate per policy on the same model, data and
keys. Last line: one JSON object with the inference ratio (full / fast, mean
and min over policies) and the share of policies with the same verdict.
Usage: python bench/gate.py [--samples 60] [--draws 50]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

POLICIES = {
    "malignant SAR at 10 mAs <= 0.5": ('sar_class', 'class = "malignant"\nlevel = 10\nmax = 0.5'),
    "SAR at 500 mAs <= 0.2": ("sar", "level = 500\nmax = 0.2"),
    "SAR at 10 mAs <= 0.001": ("sar", "level = 10\nmax = 0.001"),
    "SAN fraction at 50 mAs <= 0.01": ("san_fraction", "level = 50\nmax = 0.01"),
    "largest CMR off-diagonal at 200 mAs <= 0.6": ("cmr_offdiag", "level = 200\nmax = 0.6"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--draws", type=int, default=50)
    args = parser.parse_args()
    from audit.config import parse_config
    from audit.gate import evaluate, load_policy
    from audit.pipelines.run import run_config
    from audit.pipelines.fast_gate import run_fast_gate
    from models.build import cached_build

    model = cached_build("nodule3d", quick=True, progress=False).primary
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = parse_config({"model": {"path": str(model), "name": "nodule3d"},
                               "data": {"phantom": "nodules", "n": args.samples, "seed": 1000},
                               "noise": {"levels": [10, 50, 100, 200, 500], "draws": args.draws, "sigma_ref": 25.0}}, tmp)
        t0 = time.perf_counter()
        full = run_config(config, tmp / "full", progress=False)
        full_s = time.perf_counter() - t0
        ratios, agree = [], 0
        print(f"{'policy':44}{'full':>6}{'fast':>6}{'ratio':>8}")
        for name, (metric, body) in POLICIES.items():
            path = tmp / "policy.toml"
            path.write_text(f'[[rule]]\nname = "{name}"\nmetric = "{metric}"\n{body}\n')
            expected = all(o.passed for o in evaluate(full, load_policy(path)))
            result = run_fast_gate(config, load_policy(path), tmp / f"fast-{len(ratios)}", rounds=10)
            same = result["passed"] == expected
            agree += same
            ratios.append(result["inference_ratio"])
            print(f"{name:44}{'pass' if expected else 'FAIL':>6}{'pass' if result['passed'] else 'FAIL':>6}{result['inference_ratio']:8.1f}")
        print(f"full campaign: {full['timing']['inferences']} inferences in {full_s:.1f} s")
        print(json.dumps({"inference_ratio_mean": round(sum(ratios) / len(ratios), 2), "inference_ratio_min": round(min(ratios), 2),
                          "verdict_agreement": agree / len(POLICIES)}))


if __name__ == "__main__":
    main()
