"""Cubes around lesions, resampled to a target spacing (study 1: 32^3 voxels at 1 mm).

The cube's axes follow the volume's array axes (slice, row, column), so a crop
of an axial series is axial. Regions outside the scanned volume are air
(-1000 HU), as a scanner would see them around a patient.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from audit.dicom.reader import CTVolume, SeriesHeaders
from audit.errors import InputError

AIR_HU = -1000.0
UNITS = ("mm", "voxel")


def crop_cube(
    volume: CTVolume | SeriesHeaders,
    center: Sequence[float],
    size_vox: int | Sequence[int] = 32,
    spacing: float | Sequence[float] = 1.0,
    units: str = "mm",
    *,
    order: int = 1,
) -> CTVolume:
    """A cube of ``size_vox`` voxels at ``spacing`` mm centred on ``center``, as a ``CTVolume``.

    ``center``: patient (x, y, z) mm with ``units='mm'``, or voxel (i, j, k) =
    (column, row, slice) of the sorted series with ``units='voxel'`` (DICOM/ITK
    order, the reverse of the array axes). With an even size the centre lies
    between the two middle voxels. Interpolation is trilinear (``order=1``; 0 is
    nearest; no cubic, which overshoots at edges), blending to air within half a
    voxel beyond the volume. A ``SeriesHeaders`` reads only the slices the cube
    needs. The result carries the cube's patient geometry (origin, direction),
    so it can be written back as DICOM in the source's frame of reference.
    """
    if units not in UNITS:
        raise InputError(f"crop units: expected one of {UNITS}, got {units!r}")
    if order not in (0, 1):
        raise InputError(f"crop order: expected 0 (nearest) or 1 (trilinear), got {order!r}")
    size = np.broadcast_to(np.asarray(size_vox, dtype=np.int64), (3,)).copy()
    target = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if np.any(size < 1) or not np.all(np.isfinite(target)) or np.any(target <= 0):
        raise InputError(f"crop: expected a positive size (voxels) and spacing (mm), got {tuple(size)} and {tuple(target)}")
    center = np.asarray(center, dtype=np.float64)
    if center.shape != (3,) or not np.all(np.isfinite(center)):
        raise InputError(f"crop center: expected 3 finite numbers (x, y, z mm or i, j, k voxels), got {center.tolist()}")
    c_kji = volume.patient_to_index(center) if units == "mm" else center[::-1]

    src_spacing = np.asarray(volume.spacing)
    offsets = [(np.arange(n) - (n - 1) / 2.0) * t / s for n, t, s in zip(size, target, src_spacing)]
    axes = [c + o for c, o in zip(c_kji, offsets)]  # fractional source index per cube axis

    # The slab of source voxels the interpolation touches, clipped to the volume.
    lo = [max(0, int(np.floor(a.min())) - 1) for a in axes]
    hi = [min(n, int(np.ceil(a.max())) + 2) for a, n in zip(axes, volume.shape)]
    out = np.full(tuple(size), AIR_HU, dtype=np.float32)
    if all(h > l for l, h in zip(lo, hi)):
        from scipy import ndimage

        if isinstance(volume, SeriesHeaders):
            block = volume.read(lo[0], hi[0])[:, lo[1] : hi[1], lo[2] : hi[2]]
        else:
            block = np.asarray(volume.hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)
        grid = np.stack(np.meshgrid(*[a - l for a, l in zip(axes, lo)], indexing="ij"))
        # 'grid-constant' blends toward air within half a voxel beyond the volume's edge voxels; the slab's
        # margin keeps every other point's neighbours inside the block.
        out = ndimage.map_coordinates(block, grid, order=order, mode="grid-constant", cval=AIR_HU, prefilter=False)
        out = out.astype(np.float32, copy=False)
    origin = volume.index_to_patient(np.array([a[0] for a in axes]))
    return CTVolume(out, tuple(float(t) for t in target), tuple(float(v) for v in origin), volume.direction,
                    volume.series_uid, volume.study_uid, volume.frame_of_reference_uid, (), volume.header)
