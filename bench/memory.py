"""Peak memory of a campaign against K, the draws per sample and level: memory must not grow with K.

Each variant runs in its own child process (peak RSS from getrusage), on a planted ONNX model (a real graph: a
threshold on a region mean, 48 x 48 images; tests/audit/planted.py) with Gaussian noise at one level:
  (a) the campaign (``run_campaign``) on 10 samples with K = 100 and K = 10,000: draws are split into shards of at
      most ``SHARD_RECORDS`` records, so a shard in memory does not grow with K (the target: within 10%);
  (b) the same two campaigns followed by their reports (``write_reports``): the report reads every record back
      (N x K per level), so its memory does grow with N x K, as a report of that size must;
  (c) a full block (64 samples) at K = 5,000, draws split as in (a) vs one shard holding all K draws of the block
      (``shard_records`` above N x K): what splitting buys.
Last line: one JSON object of ratios (peak RSS of the larger K over the smaller, unsplit over split) and the
growth in MiB (the processes start at about 580 MiB: ``audit.artifact`` imports torch).
Usage: python bench/memory.py [--samples 10] [--small 100] [--large 10000] [--block-draws 5000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
from audit.artifact import open_path
from audit.campaign.noise import NoiseSpec
from audit.campaign.run import RunOptions, run_campaign
model_path, out, n, k, shard_records, report = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:7])
if report:
    from audit.pipelines.run import write_reports
from audit.data import ArraySource
rng = np.random.default_rng(0)
images = rng.normal(0.0, 30.0, (n, 48, 48)).astype(np.float32)
images[:, 16:32, 16:32] = rng.normal(0.0, 5.0, (n, 1, 1)).astype(np.float32)
model = open_path(model_path, "planted")
source = ArraySource(images, (0.5, 0.5))
noise = NoiseSpec(kind="gaussian", levels=(20.0,), draws=k, seed=0)
options = RunOptions(batch_size=256, shard_samples=64, shard_records=shard_records or None, progress=False)
t0 = time.perf_counter()
stats = run_campaign([model], source, noise, out, options)
if report:
    write_reports(out, [model], source, noise, stats, worst=0)
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "inferences": stats.inferences,
                  "shards": stats.shards_run, "seconds": round(time.perf_counter() - t0, 1)}))
"""


def peak(model: Path, n: int, k: int, *, shard_records: int = 0, report: bool = False) -> dict:
    """Peak RSS (KiB) and counts of one campaign in a fresh child process."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-c", CHILD, str(model), str(Path(tmp) / "out"), str(n), str(k), str(shard_records),
                str(int(report))]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({' '.join(argv[3:])}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--small", type=int, default=100, help="the smaller K")
    parser.add_argument("--large", type=int, default=10_000, help="the larger K")
    parser.add_argument("--block-draws", type=int, default=5_000, help="K of the split vs unsplit comparison (64 samples)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.audit.planted import planted_model

    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = planted_model(Path(tmp) / "planted.onnx", (48, 48), (slice(16, 32), slice(16, 32)), threshold_hu=0.0)
        print(f"{'variant':38}{'N':>5}{'K':>8}{'shards':>8}{'peak RSS MiB':>14}{'s':>7}")

        def show(name: str, n: int, k: int, r: dict) -> float:
            print(f"{name:38}{n:>5}{k:>8}{r['shards']:>8}{r['peak_kib'] / 1024:>14.1f}{r['seconds']:>7}")
            return r["peak_kib"]

        n, small, large = args.samples, args.small, args.large
        a = show("campaign", n, small, peak(model, n, small))
        b = show("campaign", n, large, peak(model, n, large))
        ratios[f"peak_rss_ratio_K{large}_vs_K{small}"] = round(b / a, 3)
        ratios["growth_MiB"] = round((b - a) / 1024, 1)  # the ratio is over a process that imports torch (~580 MiB)
        c = show("campaign + report", n, small, peak(model, n, small, report=True))
        d = show("campaign + report", n, large, peak(model, n, large, report=True))
        ratios[f"peak_rss_ratio_with_report_K{large}_vs_K{small}"] = round(d / c, 3)
        ratios["growth_with_report_MiB"] = round((d - c) / 1024, 1)
        kb = args.block_draws
        split = show("campaign, draws split", 64, kb, peak(model, 64, kb))
        whole = show("campaign, one shard per block (unsplit)", 64, kb, peak(model, 64, kb, shard_records=64 * kb))
        ratios[f"peak_rss_ratio_unsplit_vs_split_N64_K{kb}"] = round(whole / split, 3)
        ratios["unsplit_minus_split_MiB"] = round((whole - split) / 1024, 1)
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
