"""``audit noise check``: generate noise for an NPS and dose, measure it, and plot target vs measured."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from audit.io import atomic_path
from audit.report.figures import nps_check_figure
from audit.errors import InputError
from audit.campaign.noise import read_nps_table
from kernels import DoseModel, NoiseKey, estimate_nps, nps_noise, preset, radial_average, texture
from kernels.nps import PRESET_WINDOWS, grid_variance


def register(sub: argparse._SubParsersAction) -> None:
    noise = sub.add_parser("noise", help="inspect the noise kernels")
    noise_sub = noise.add_subparsers(dest="noise_command", metavar="SUBCOMMAND", required=True)
    check = noise_sub.add_parser("check", help="measure generated noise against its target NPS and plot both")
    src = check.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(PRESET_WINDOWS), default="standard", help="NPS preset (default: standard)")
    src.add_argument("--table", type=Path, help="CSV with columns freq (1/mm), nps (HU^2 mm^2): a radial NPS at --mas-ref")
    check.add_argument("--sigma", type=float, default=10.0, help="preset pixel sigma at --mas-ref, HU (default 10)")
    check.add_argument("--mas-ref", type=float, default=200.0, help="reference exposure, mAs (default 200)")
    check.add_argument("--mas", type=float, default=50.0, help="exposure to generate, mAs (default 50)")
    check.add_argument("--electronic", type=float, default=0.0, help="electronic fraction of the variance at --mas-ref")
    check.add_argument("--spacing", type=float, default=0.5, help="pixel spacing, mm (default 0.5)")
    check.add_argument("--size", type=int, default=128, help="image size, pixels (default 128)")
    check.add_argument("--draws", type=int, default=500, help="number of noise images (default 500)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--out", type=Path, default=Path("noise-check.png"), help="PNG to write")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    if args.size < 16 or args.draws < 10:
        raise InputError(f"--size must be >= 16 and --draws >= 10, got {args.size} and {args.draws}")
    shape, spacing = (args.size, args.size), (args.spacing, args.spacing)
    if args.table is not None:
        model = DoseModel(read_nps_table(args.table), args.mas_ref, args.electronic)
        label = f"table {args.table.name}"
    else:
        model = DoseModel(preset(args.preset, args.sigma), args.mas_ref, args.electronic)
        label = f"preset {args.preset}, {args.sigma:g} HU at {args.mas_ref:g} mAs"
    nps = model.nps_at(args.mas)
    keys = [NoiseKey(args.seed, i, 0, 0) for i in range(args.draws)]
    noise = nps_noise(keys, nps, shape, spacing)
    measured = estimate_nps(noise, spacing, detrend_method=None)
    f, s_meas, _ = measured.radial()
    _, s_target, _ = radial_average(nps.on_grid(shape, spacing, half=False), spacing)
    band = (f >= 0.05) & (f <= 0.8 * 0.5 / args.spacing) & (s_target > 0.02 * s_target.max())
    band[:2] = False
    worst = float(np.max(np.abs(s_meas[band] / s_target[band] - 1))) if band.any() else float("nan")
    sigma_t = math.sqrt(grid_variance(nps.on_grid(shape, spacing), shape, spacing))
    (fav_t, fpk_t), (fav_m, fpk_m) = texture(f, s_target), texture(f, s_meas)

    with atomic_path(args.out) as tmp:
        nps_check_figure(tmp, f=f, target=s_target, measured=s_meas, band=band, sample=noise[0], spacing=spacing,
                         title=f"{label} -> {args.mas:g} mAs ({args.draws} draws of {args.size}x{args.size}, {args.spacing:g} mm)")
    print(f"{'':12}{'target':>10}{'measured':>10}")
    print(f"{'sigma (HU)':12}{sigma_t:10.3f}{float(noise.std()):10.3f}")
    print(f"{'f_av (1/mm)':12}{fav_t:10.4f}{fav_m:10.4f}")
    print(f"{'f_peak (1/mm)':12}{fpk_t:10.4f}{fpk_m:10.4f}")
    print(f"worst radial-bin error in the checked band: {100 * worst:.2f}%")
    print(f"wrote {args.out}")
    return 0
