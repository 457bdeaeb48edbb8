"""``audit noise check``: generate noise for an NPS and dose, measure it, and plot target vs measured.

With ``--dicom SERIES --fraction F`` (or ``--mas D``): the series' own noise (uniform-region NPS, sigma0 with its
confidence interval), the noise a reduction to F of its acquired dose inserts (S(D) - S(D0)), and the predicted
against the measured sigma after insertion, printed and drawn.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from audit.campaign.noise import level_key, read_nps_table
from audit.dicom import scan_series
from audit.errors import InputError
from audit.io import atomic_path
from audit.report.figures import nps_check_figure
from kernels import (
    DoseModel,
    NoiseKey,
    estimate_nps,
    estimate_scan_noise,
    nps_noise,
    preset,
    radial_average,
    reduction_noise,
    texture,
    variance_factor,
)
from kernels.nps import PRESET_WINDOWS, grid_variance


def register(sub: argparse._SubParsersAction) -> None:
    noise = sub.add_parser("noise", help="inspect the noise kernels")
    noise_sub = noise.add_subparsers(dest="noise_command", metavar="SUBCOMMAND", required=True)
    check = noise_sub.add_parser("check", help="measure generated noise against its target NPS and plot both")
    src = check.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(PRESET_WINDOWS), default="standard", help="NPS preset (default: standard)")
    src.add_argument("--table", type=Path, help="CSV with columns freq (1/mm), nps (HU^2 mm^2): a radial NPS at --mas-ref")
    check.add_argument("--sigma", type=float, default=10.0, help="preset pixel sigma at --mas-ref, HU (default 10)")
    check.add_argument("--mas-ref", type=float, default=None,
                       help="reference exposure, mAs (default 200; with --dicom: the acquired dose)")
    check.add_argument("--mas", type=float, default=None, help="exposure to generate, mAs (default 50)")
    check.add_argument("--dicom", type=Path, help="a CT series (folder or file): measure its own noise and insert what a "
                                                  "lower dose adds (dose reduction)")
    check.add_argument("--fraction", type=float, default=None,
                       help="with --dicom: the target dose as a fraction of the acquired dose, in (0, 1) (default 0.25)")
    check.add_argument("--acquired-mas", type=float, default=None,
                       help="with --dicom: the acquired dose (mAs) when the series states none")
    check.add_argument("--slices", type=int, default=4, help="with --dicom: slices measured, evenly spaced (default 4)")
    check.add_argument("--electronic", type=float, default=0.0, help="electronic fraction of the variance at --mas-ref")
    check.add_argument("--spacing", type=float, default=0.5, help="pixel spacing, mm (default 0.5)")
    check.add_argument("--size", type=int, default=128, help="image size, pixels (default 128)")
    check.add_argument("--draws", type=int, default=None, help="number of noise images (default 500; with --dicom: 8 per slice)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--out", type=Path, default=Path("noise-check.png"), help="PNG to write")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    if args.dicom is not None:
        return run_dicom_check(args)
    if args.fraction is not None or args.acquired_mas is not None:
        raise InputError("--fraction and --acquired-mas apply to --dicom SERIES only")
    args.mas = 50.0 if args.mas is None else args.mas
    args.draws = 500 if args.draws is None else args.draws
    args.mas_ref = 200.0 if args.mas_ref is None else args.mas_ref
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


def run_dicom_check(args: argparse.Namespace) -> int:
    """The series' own noise, the noise a dose reduction inserts, predicted vs measured sigma after insertion."""
    args.draws = 8 if args.draws is None else args.draws
    if args.fraction is not None and not 0 < args.fraction < 1:
        raise InputError(f"--fraction: expected a number in (0, 1) (a fraction of the acquired dose), got {args.fraction:g}")
    if args.fraction is not None and args.mas is not None:
        raise InputError("--fraction and --mas: give one target dose")
    if args.draws < 1 or args.slices < 1:
        raise InputError(f"--draws and --slices must be >= 1, got {args.draws} and {args.slices}")
    vol = scan_series(args.dicom)  # headers only; the picked slices are read below
    acq = vol.acquisition
    name = f"{args.dicom} (series {vol.series_uid})"
    nz = vol.shape[0]
    picked = np.unique(np.linspace(0, nz - 1, min(args.slices, nz)).round().astype(int))
    if acq is not None and acq.slice_mas is not None:
        d0, dose_from = np.asarray(acq.slice_mas, float)[picked], acq.dose_tag
        series_mas = float(acq.exposure_mas)
    elif args.acquired_mas is not None and args.acquired_mas > 0:
        d0, dose_from, series_mas = np.full(picked.size, float(args.acquired_mas)), "--acquired-mas", float(args.acquired_mas)
    else:
        raise InputError(f"{name}: states no dose (ExposureInuAs, Exposure); pass --acquired-mas")
    if args.mas is not None:
        if not args.mas < series_mas:
            raise InputError(f"{name}: --mas {args.mas:g} is at or above the acquired dose {series_mas:g} mAs; "
                             "a dose reduction can only lower the dose")
        fraction = args.mas / series_mas
    else:
        fraction = 0.25 if args.fraction is None else args.fraction
    mas_ref = series_mas if args.mas_ref is None else args.mas_ref
    images = np.stack([vol.read(int(k), int(k) + 1)[0] for k in picked]).astype(np.float64)
    spacing = (vol.spacing[1], vol.spacing[2])
    est = estimate_scan_noise(images, spacing, name=name)
    sigma0 = np.where(np.isfinite(est.slice_sigma), est.slice_sigma, est.sigma)
    shape = images.shape[1:]
    keys = [NoiseKey(args.seed, int(k), level_key(fraction), d) for d in range(args.draws) for k in picked]
    noise = np.empty((len(keys), *shape), np.float32)
    for n, key in enumerate(keys):
        m = n % picked.size
        noise[n] = reduction_noise([key], est.grid_nps(), shape, spacing, fraction * d0[m], d0[m], sigma0=sigma0[m],
                                   mas_ref=mas_ref, electronic_fraction=args.electronic, name=name)[0]
    ratio = np.array([variance_factor(fraction * d, mas_ref, args.electronic) / variance_factor(d, mas_ref, args.electronic)
                      for d in d0])
    predicted = math.sqrt(float(np.mean(sigma0**2 * ratio)))
    # Measured where sigma0 was measured: the same ROIs, on the images with the inserted noise.
    noisy = images[None] + noise.reshape(args.draws, picked.size, *shape)
    r = est.roi_size
    rois = np.stack([noisy[:, k, y : y + r, x : x + r] for k, y, x in est.rois], axis=1).reshape(-1, r, r)
    rois = rois - rois.mean(axis=(1, 2), keepdims=True)
    measured = math.sqrt(float(np.mean(rois.var(axis=(1, 2)))))
    power = np.mean(np.abs(np.fft.fft2(rois)) ** 2, axis=0) * (spacing[0] * spacing[1] / (r * r))
    f, s_meas, _ = radial_average(power, spacing)
    s0 = est.nps.nps
    _, s_own, _ = radial_average(s0, spacing)
    s_target = s_own * float(np.mean(ratio * sigma0**2) / np.mean(sigma0**2))
    band = (s_target > 0.05 * s_target.max()) & (f > 0)
    inserted = est.grid_nps().scaled(float(np.mean(sigma0**2 * (ratio - 1))) / est.sigma**2)
    s_ins = inserted.summary()
    own = est.summary()

    with atomic_path(args.out) as tmp:
        nps_check_figure(tmp, f=f, target=s_target, measured=s_meas, band=band, sample=noise[0], spacing=spacing,
                         title=f"{args.dicom.name} at {100 * fraction:g}% of {series_mas:g} mAs: NPS after insertion, "
                               f"target S(D) vs measured ({est.n_rois} ROIs of {r * spacing[1]:.1f} mm, {args.draws} draws)")
    ctdi = getattr(acq, "ctdi_vol_mgy", None)
    modulation = f", modulated {min(acq.slice_mas):g} to {max(acq.slice_mas):g} mAs per slice" if (
        acq is not None and acq.has_dose and acq.modulated) else ""
    print(f"series {vol.series_uid}: acquired {series_mas:g} mAs ({dose_from}{modulation}), "
          f"kernel {getattr(acq, 'kernel', None) or 'not stated'}, "
          f"CTDIvol {'not stated' if ctdi is None else f'{ctdi:g} mGy'}")
    print(f"target: {100 * fraction:g}% of the acquired dose = {fraction * series_mas:g} mAs, "
          f"electronic share {args.electronic:g} at {mas_ref:g} mAs")
    print(f"scan's own noise: sigma0 {est.sigma:.3f} HU (95% CI {est.ci[0]:.3f} to {est.ci[1]:.3f}), "
          f"f_av {own.f_av:.4f} 1/mm, f_peak {own.f_peak:.4f} 1/mm, from {est.n_rois} ROIs on {picked.size} slice(s)")
    print(f"inserted NPS: sigma {s_ins.sigma:.3f} HU, f_av {s_ins.f_av:.4f} 1/mm, f_peak {s_ins.f_peak:.4f} 1/mm")
    print(f"predicted sigma after insertion: {predicted:.3f} HU")
    print(f"measured sigma after insertion: {measured:.3f} HU ({100 * (measured / predicted - 1):+.2f}%)")
    print(f"wrote {args.out}")
    return 0
