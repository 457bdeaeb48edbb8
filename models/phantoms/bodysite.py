"""Axial body-site slices (study 2): a parametric body, four classes, 256^2 pixels at 1.5 mm.

Classes: brain & neck, chest (lungs), abdomen & pelvis, leg & foot. A slice is
addressed by a body coordinate in [0, 4) and the anatomy changes with it
(head -> neck -> shoulders and lung apices -> lungs and heart -> liver dome ->
bowel -> pelvis and bladder -> thighs -> knees -> calves -> feet). Each
"patient" has its own size, fat, arm position, table height, in-plane position
and rotation, landmark contrast, and its anatomy is shifted along the body
coordinate by a small patient offset (``render(u, patient)`` shows the anatomy
at ``v = u + offset``, of class ``floor(v)``: the same table position is a
different class in different patients). ``bodysite_slices`` labels a slice by
the anatomy it shows, so no slice is labelled against its own evidence.

Where the class evidence lies (so that realistic noise can matter, issue 14):
chest and leg & foot slices carry a pair of landmark organs (radius 18-22 mm,
left and right in the soft tissue, added to the soft tissue only); brain & neck
and abdomen & pelvis slices have none. Mid-class their contrast to the soft
tissue is large (``MARKER_CONTRAST``, 120-180 HU) and the gross anatomy decides
anyway. Within ``TRANSITION`` (0.2 class units) of an inner class boundary the
gross anatomy is the same on both sides (that of the lower class at the zone's
lower edge) and only the organs' presence tells the sides apart; there their
contrast falls towards the boundary (partial volume: the organ fills less of
the slice thickness) with the square of the distance, but never below
``MIN_CONTRAST`` (20 HU):

    contrast = MIN + (full - MIN) (d / TRANSITION)^2,  d = distance to the boundary.

About 30% of a body's slices lie in these zones (half of them with organs,
about half of those at 20-50 HU). Why these numbers: on the acquired slice
(anatomical texture about 6 HU over a few mm, plus the full-dose image's own
grain, ``ACQUIRED_GRAIN``, about 15 HU per pixel) 20 HU over an organ of 18 mm
radius is plainly visible, so every slice is decidable and a model reaches
macro F1 >= 0.95; with the audit's standard NPS (pixel sigma 79, 50, 35, 25,
18 HU at 10, 25, 50, 100, 200 mAs) the same 20-50 HU are below the per-pixel
noise at 10-50 mAs, so realistic doses hide or fake the evidence for a model
that reads it locally, as a CNN trained on full-dose slices does; at 200 mAs
and above the noise is about the grain it was trained with.

Spacing 1.5 mm gives a 384 mm field of view (an adult body fits). All values
in HU: air -1000, fat -100, soft tissue 30-60, lung about -850, bone cortex
about 1000.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import affine_transform, gaussian_filter

from audit.errors import ConfigError
from models.phantoms._draw import sample_rng

SIZE = 256
SPACING = (1.5, 1.5)  # mm, (y, x)
BODYSITE_CLASSES = ("brain_neck", "chest", "abdomen_pelvis", "leg_foot")
#: Standard deviation of a patient's anatomical offset along u (in class units).
PATIENT_OFFSET_SD = 0.02
#: Half-width (class units) of the transition zone around each inner class boundary (see ``render``): zones hold
#: 3 x 2 x 0.2 / 4 = 30% of the slices of a body.
TRANSITION = 0.2
#: Range between patients of the landmarks' full (mid-class) contrast to the soft tissue, HU.
MARKER_CONTRAST = (120.0, 180.0)
#: The landmarks' smallest contrast (HU), at a class boundary: above the acquired slice's grain and texture over an
#: organ of this size (decidable clean), below the audit's per-pixel noise at 10-50 mAs (fragile; module docstring).
MIN_CONTRAST = 20.0
#: The fine grain of the acquired (full-dose) image: white noise of this sigma (HU) smoothed with a Gaussian of this
#: sigma (pixels), about 15 HU per pixel, as a full-dose body scan has; the audit's noise comes on top of it.
ACQUIRED_GRAIN = (40.0, 0.75)
#: Range of the landmarks' radius, mm (see ``_markers``).
MARKER_RADIUS = (18.0, 22.0)
_STREAM_BODY = 3
_AIR, _FAT, _MUSCLE, _BONE, _LUNG = -1000.0, -100.0, 50.0, 1000.0, -850.0


@dataclass(frozen=True)
class BodySiteSet:
    """``images`` (N, 256, 256) float32 HU, ``labels`` (N,) int64 class index, ``u`` (N,) body coordinate,
    ``patient`` (N,) patient index, ``spacing`` (y, x) mm."""

    images: np.ndarray
    labels: np.ndarray
    u: np.ndarray
    patient: np.ndarray
    spacing: tuple[float, float] = SPACING
    class_names: tuple[str, ...] = BODYSITE_CLASSES

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Patient:
    """Body shape parameters of one synthetic patient (scales are relative to an average adult)."""

    sx: float = 1.0
    sy: float = 1.0
    fat: float = 12.0  # subcutaneous fat thickness, mm
    arms_down: bool = False
    offset: float = 0.0  # anatomical shift along u
    shift: tuple[float, float] = (0.0, 0.0)  # mm (y, x)
    angle: float = 0.0  # degrees
    table_gap: float = 20.0  # mm between body and table
    marker_contrast: float = 150.0  # HU, full contrast of the transition landmarks

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Patient":
        return cls(
            sx=rng.uniform(0.85, 1.15), sy=rng.uniform(0.85, 1.15), fat=rng.uniform(5.0, 25.0),
            arms_down=bool(rng.random() < 0.4), offset=rng.normal(0.0, PATIENT_OFFSET_SD),
            shift=(rng.uniform(-12, 12), rng.uniform(-15, 15)), angle=rng.uniform(-6, 6), table_gap=rng.uniform(5, 30),
            marker_contrast=rng.uniform(*MARKER_CONTRAST),
        )


class _Canvas:
    """A 256^2 HU image with mm coordinates (origin at the centre, y down = posterior)."""

    def __init__(self) -> None:
        self.img = np.full((SIZE, SIZE), _AIR, np.float32)
        c = (np.arange(SIZE) - (SIZE - 1) / 2.0) * SPACING[0]
        self.c = c

    def ellipse(self, cy: float, cx: float, ay: float, ax: float, hu: float, edge: float = 0.8, angle: float = 0.0) -> None:
        """Paint a soft-edged ellipse (centre and semi-axes in mm) only inside its bounding box."""
        if ay <= 0.3 or ax <= 0.3:
            return
        r = max(ay, ax) + 3 * edge
        ys = np.searchsorted(self.c, [cy - r, cy + r])
        xs = np.searchsorted(self.c, [cx - r, cx + r])
        if ys[1] <= ys[0] or xs[1] <= xs[0]:
            return
        y = self.c[ys[0]:ys[1], None] - cy
        x = self.c[None, xs[0]:xs[1]] - cx
        if angle:
            ca, sa = np.cos(angle), np.sin(angle)
            x, y = ca * x + sa * y, -sa * x + ca * y
        q = np.sqrt((y / ay) ** 2 + (x / ax) ** 2)
        w = np.clip((1.0 - q) * min(ay, ax) / edge + 0.5, 0.0, 1.0)
        sub = self.img[ys[0]:ys[1], xs[0]:xs[1]]
        sub *= 1.0 - w
        sub += w * hu

    def ring(self, cy, cx, ay, ax, thick, hu_wall, hu_in) -> None:
        self.ellipse(cy, cx, ay, ax, hu_wall)
        self.ellipse(cy, cx, ay - thick, ax - thick, hu_in)


def _bump(u: float, lo: float, hi: float, ramp: float = 0.06) -> float:
    """1 inside [lo, hi], ramping linearly to 0 over ``ramp`` outside: how present a structure is at u."""
    return float(np.clip(min(u - lo, hi - u) / ramp + 1.0, 0.0, 1.0))


def _vertebra(cv: _Canvas, cy: float, size: float = 1.0) -> None:
    cv.ring(cy, 0.0, 14 * size, 16 * size, 3.0, _BONE, 250.0)
    cv.ellipse(cy + 20 * size, 0.0, 7 * size, 8 * size, 15.0)  # spinal canal
    cv.ellipse(cy + 30 * size, 0.0, 6 * size, 4 * size, 700.0)  # spinous process


def _head_neck(cv: _Canvas, u: float, p: Patient, rng: np.random.Generator) -> None:
    # Head: a skull ring whose size follows the head's profile; face and jaw lower down.
    head = _bump(u, 0.0, 0.55, 0.08)
    if head > 0:
        prof = np.sqrt(max(1.0 - ((u - 0.28) / 0.42) ** 2, 0.05))
        ay, ax = 95 * prof * p.sy, 75 * prof * p.sx
        cv.ellipse(0, 0, ay + 4, ax + 4, 20.0)  # scalp
        cv.ring(0, 0, ay, ax, 6.0 * head, _BONE, 35.0)  # skull, brain
        cv.ellipse(0, 0, 0.35 * ay, 0.12 * ax, 5.0)  # ventricles (CSF)
        if 0.3 < u < 0.55:
            for side in (-1, 1):
                cv.ellipse(-0.7 * ay, side * 0.35 * ax, 11, 11, _FAT)  # orbits
                cv.ellipse(-0.7 * ay, side * 0.35 * ax, 6, 6, 20.0)  # globes
            cv.ellipse(-0.55 * ay, 0, 12, 8, _AIR)  # nasal cavity
    neck = _bump(u, 0.5, 1.2, 0.08)
    if neck > 0:
        t = np.clip((u - 0.75) / 0.25, 0, 1)  # widening towards the shoulders
        ay, ax = (55 + 55 * t) * p.sy, (55 + 110 * t) * p.sx
        cv.ellipse(10, 0, ay, ax, _FAT)
        cv.ellipse(10, 0, ay - p.fat * 0.5, ax - p.fat * 0.5, _MUSCLE)
        if u < 0.62:  # mandible
            cv.ring(-25, 0, 35 * p.sy, 45 * p.sx, 5.0, _BONE, _MUSCLE)
        _vertebra(cv, 15, 0.8)
        cv.ellipse(-20, 0, 8, 9, _AIR)  # trachea
        for side in (-1, 1):
            cv.ellipse(-12, side * 22, 5, 5, 60.0)  # carotids
        if t > 0.5:  # clavicles and humeral heads
            _shoulders(cv, ax)
        if u > 0.9:  # lung apices
            for side in (-1, 1):
                cv.ellipse(25, side * 0.42 * ax, 0.3 * ay * (u - 0.85) / 0.15, 0.15 * ax * (u - 0.85) / 0.15, _LUNG)


def _shoulders(cv: _Canvas, ax: float) -> None:
    for side in (-1, 1):
        cv.ellipse(-10, side * 0.55 * ax, 6, 35, _BONE, angle=side * 0.2)
        cv.ring(20, side * 0.85 * ax, 22, 22, 4.0, _BONE, 200.0)


def _chest(cv: _Canvas, u: float, p: Patient, rng: np.random.Generator) -> None:
    t = u - 1.0
    ay, ax = (112 + 18 * p.fat / 25) * p.sy, (155 + 15 * p.fat / 25) * p.sx
    cv.ellipse(5, 0, ay, ax, _FAT)
    cv.ellipse(5, 0, ay - p.fat, ax - p.fat, _MUSCLE)
    size = float(np.clip(np.sin(np.pi * np.clip(t + 0.15, 0, 1.1) / 1.25), 0.15, 1.0))
    for side in (-1, 1):
        ly, lx = 0.72 * ay * size, 0.33 * ax * (0.5 + 0.5 * size)
        cy, cx = 5 + 0.1 * ay, side * 0.42 * ax
        cv.ellipse(cy, cx, ly, lx, _LUNG)
        for _ in range(int(30 * size)):  # vessels in the lung
            r, phi = np.sqrt(rng.random()) * 0.85, rng.uniform(0, 2 * np.pi)
            cv.ellipse(cy + r * ly * np.sin(phi), cx + r * lx * np.cos(phi), rng.uniform(1, 3), rng.uniform(1, 3), 40.0, edge=0.5)
    if t < 0.12:
        _shoulders(cv, ax)
    heart = _bump(t, 0.35, 0.85, 0.15)
    if heart > 0:
        cv.ellipse(-0.2 * ay, 0.12 * ax, 0.35 * ay * heart, 0.28 * ax * heart, 45.0)
    cv.ellipse(0.1 * ay, -0.1 * ax, 12, 12, 45.0)  # aorta
    if t > 0.75:  # liver dome rising under the right lung, stomach under the left
        d = (t - 0.75) / 0.25
        cv.ellipse(-0.05 * ay, -0.35 * ax, 0.6 * ay * d, 0.42 * ax * d, 58.0)
        cv.ellipse(-0.2 * ay, 0.35 * ax, 0.3 * ay * d, 0.25 * ax * d, _AIR)
    _vertebra(cv, 0.6 * ay, 1.1)
    _ribs(cv, ay, ax, p.fat, 1.0)
    if p.arms_down:
        for side in (-1, 1):
            cv.ellipse(10, side * (ax + 45), 40, 38, _MUSCLE)
            cv.ring(10, side * (ax + 45), 12, 12, 4.0, _BONE, 100.0)


def _ribs(cv: _Canvas, ay: float, ax: float, fat: float, extent: float) -> None:
    """Ribs along the body wall; ``extent`` < 1 keeps only the lateral-posterior ones (lower ribs)."""
    for k in range(9):
        phi = np.pi * (0.1 + 0.8 * k / 8)
        if phi < np.pi * (1 - extent):
            continue
        for side in (-1, 1):
            cv.ellipse(5 - (ay - fat - 6) * np.cos(phi), side * (ax - fat - 6) * np.sin(phi), 4, 6, 800.0)


def _abdomen_pelvis(cv: _Canvas, u: float, p: Patient, rng: np.random.Generator) -> None:
    t = u - 2.0
    narrow = 1.0 - 0.2 * max(0.0, t - 0.8) / 0.2  # the pelvis narrows towards the groin
    ay, ax = (112 + 18 * p.fat / 25) * p.sy * narrow, (155 + 15 * p.fat / 25) * p.sx
    cv.ellipse(5, 0, ay, ax, _FAT)
    cv.ellipse(5, 0, ay - p.fat, ax - p.fat, _MUSCLE)
    cv.ellipse(5, 0, ay - p.fat - 12, ax - p.fat - 12, 35.0)
    if t < 0.3:  # lower ribs
        _ribs(cv, ay, ax, p.fat, 0.7 - t)
    if t < 0.08:  # lung bases behind the liver
        for side in (-1, 1):
            cv.ellipse(0.4 * ay, side * 0.45 * ax, 0.3 * ay * (0.08 - t) / 0.08 + 2, 0.2 * ax, _LUNG)
    liver = _bump(t, -0.1, 0.3, 0.1)
    if liver > 0:
        cv.ellipse(-0.05 * ay, -0.35 * ax, 0.6 * ay * liver, 0.42 * ax * liver, 58.0)
        cv.ellipse(-0.2 * ay, 0.35 * ax, 0.3 * ay * liver, 0.25 * ax * liver, _AIR)  # stomach gas
    kid = _bump(t, 0.2, 0.45, 0.05)
    if kid > 0:
        for side in (-1, 1):
            cv.ellipse(0.35 * ay, side * 0.4 * ax, 28 * kid, 18 * kid, 30.0)
    bowel = _bump(t, 0.15, 0.85, 0.1)
    for _ in range(int(25 * bowel)):
        r, phi = np.sqrt(rng.random()) * 0.7, rng.uniform(0, 2 * np.pi)
        hu = _AIR if rng.random() < 0.4 else rng.uniform(0, 40)
        cv.ellipse(-0.1 * ay + r * ay * np.sin(phi), r * ax * np.cos(phi), rng.uniform(4, 12), rng.uniform(4, 12), hu)
    pelvis = _bump(t, 0.55, 1.2, 0.08)
    if pelvis > 0:
        for side in (-1, 1):
            cv.ring(0.35 * ay, side * 0.55 * ax, 40 * pelvis, 16 * pelvis + 1, 5.0, _BONE, 250.0)  # iliac wings
        cv.ring(0.55 * ay, 0, 18 * pelvis, 35 * pelvis, 5.0, _BONE, 250.0)  # sacrum
    if t > 0.75:
        cv.ellipse(-0.3 * ay, 0, 30 * min(1, (t - 0.7) * 4), 45 * min(1, (t - 0.7) * 4), 5.0)  # bladder
    if t > 0.82:
        for side in (-1, 1):
            cv.ring(0.15 * ay, side * 0.6 * ax, 24, 24, 5.0, _BONE, 200.0)  # femoral heads
    if t < 0.6:
        _vertebra(cv, 0.6 * ay, 1.1)
    cv.ellipse(0.35 * ay, -0.08 * ax, 11, 11, 45.0)  # aorta


def _legs(cv: _Canvas, u: float, p: Patient, rng: np.random.Generator) -> None:
    t = u - 3.0
    if t < 0.1:  # groin: the legs still joined by soft tissue, ischial bones, bladder base
        g = 1.0 - t / 0.1
        cv.ellipse(5, 0, (90 + 10 * g) * p.sy, (120 + 40 * g) * p.sx, _FAT)
        cv.ellipse(5, 0, (75 + 10 * g) * p.sy, (100 + 40 * g) * p.sx, _MUSCLE)
        cv.ellipse(-30, 0, 25 * g, 40 * g, 5.0)
        for side in (-1, 1):
            cv.ring(40, side * 40, 18 * g + 1, 22 * g + 1, 5.0, _BONE, 250.0)
    if t < 0.85:
        r = (95 - 50 * t) if t < 0.45 else (60 - 30 * (t - 0.45) / 0.4)
        sep = 85 * p.sx - 10 * t
        for side in (-1, 1):
            cx = side * sep
            cv.ellipse(0, cx, r * p.sy, r * 0.9 * p.sx, _FAT)
            cv.ellipse(0, cx, r * p.sy - p.fat * 0.8, r * 0.9 * p.sx - p.fat * 0.8, _MUSCLE)
            if t < 0.45:  # femur (condyles near the knee)
                kb = 1.0 + 1.2 * max(0.0, t - 0.35) / 0.1
                cv.ring(0, cx, 13 * kb, 13 * kb, 5.0, _BONE, -20.0)
            else:  # tibia and fibula
                cv.ring(-5, cx, 13, 12, 5.0, _BONE, -20.0)
                cv.ring(8, cx + side * 22, 6, 6, 3.0, _BONE, 100.0)
    else:  # feet: long front-to-back
        d = (t - 0.85) / 0.15
        for side in (-1, 1):
            cx = side * (60 * p.sx)
            cv.ellipse(-20, cx, 90 * p.sy * (0.6 + 0.4 * d), 40 * p.sx, _MUSCLE - 10)
            for k in range(3):
                cv.ellipse(-60 + 40 * k, cx, 12, 8, 700.0)


_REGIONS = (_head_neck, _chest, _abdomen_pelvis, _legs)


def transition(v: float) -> tuple[int, float] | None:
    """``(boundary, fraction)`` when anatomical coordinate ``v`` lies in the transition zone of an inner class
    boundary (``|v - b| < TRANSITION``), ``fraction`` = (v - b + TRANSITION) / (2 TRANSITION) in [0, 1); else None."""
    b = int(round(v))
    if 1 <= b < len(BODYSITE_CLASSES) and abs(v - b) < TRANSITION:
        return b, (v - b + TRANSITION) / (2.0 * TRANSITION)
    return None


def landmark_share(v: float, full: float = 150.0) -> float:
    """Share in [0, 1] of the landmarks' full contrast ``full`` (HU) at anatomical coordinate ``v``.

    The landmark organs are present in chest and leg & foot, absent (0) in brain & neck and abdomen & pelvis;
    inside a transition zone their contrast falls with the square of the distance d to the boundary (partial
    volume), from 1 at the zone's edge to ``MIN_CONTRAST / full`` at the boundary (module docstring).
    """
    if int(np.clip(v, 0.0, 3.999)) % 2 == 0:
        return 0.0
    zone = transition(v)
    if zone is None:
        return 1.0
    floor = min(1.0, MIN_CONTRAST / full)
    d = min(1.0, abs(2.0 * zone[1] - 1.0))
    return floor + (1.0 - floor) * d**2


def _markers(cv: _Canvas, share: float, p: Patient, rng: np.random.Generator) -> None:
    """The landmarks: a pair of organs in the soft tissue at ``p.marker_contrast * share`` HU above it (none at 0).

    They lie left and right at the soft tissue nearest to (5, +-45) mm, radius ``MARKER_RADIUS`` (18-22 mm:
    large enough to be learnt from about a thousand full-dose slices by BodySiteNet2D within a CPU-sized build;
    smaller organs of 6-13 mm were not picked up there, measured). A model that reads them locally meets
    per-pixel noise of their contrast's size at 10-50 mAs). Mid-class their contrast is
    the patient's full contrast (120-180 HU); near a class boundary it is 20 to a few tens of HU: there the
    class evidence is two organs at soft-tissue contrast, what realistic noise can hide or fake.
    """
    if share <= 0.0:
        return
    img = cv.img
    soft_tissue = (img > -20.0) & (img < 90.0)
    ok = soft_tissue.copy()  # centres only where the neighbourhood (8 pixels, 12 mm, each way) is soft tissue too
    for ax in (0, 1):
        for d in (-8, 8):
            ok &= np.roll(soft_tissue, d, axis=ax)
    ys, xs = np.nonzero(ok)
    if ys.size == 0:
        ys, xs = np.nonzero(img > -500)
    contrast = p.marker_contrast * share
    y, x = cv.c[:, None], cv.c[None, :]
    for side in (-1, 1):
        ty, tx = 5.0 + rng.normal(0.0, 3.0), side * 45.0 + rng.normal(0.0, 3.0)
        q = int(np.argmin((cv.c[ys] - ty) ** 2 + (cv.c[xs] - tx) ** 2))
        r = rng.uniform(*MARKER_RADIUS)
        ry, rx = r, r * rng.uniform(0.85, 1.15)
        w = np.clip((1.0 - np.sqrt(((y - cv.c[ys[q]]) / ry) ** 2 + ((x - cv.c[xs[q]]) / rx) ** 2)) * r / 0.8 + 0.5, 0, 1)
        img += (contrast * w * soft_tissue).astype(np.float32)  # added to the soft tissue only: low contrast


def render(u: float, patient: Patient, rng: np.random.Generator, *, texture: bool = True) -> np.ndarray:
    """The axial slice at body coordinate ``u`` of ``patient``: (256, 256) float32 HU.

    The anatomy is that of ``v = u + patient.offset``. Within ``TRANSITION`` of an inner class boundary b
    the gross anatomy is the same on both sides (that of the lower region at ``b - TRANSITION``) and only
    the zone's partial-volume landmark organs (``_markers``) tell the sides apart: organs at soft-tissue
    contrast, where realistic noise matters. ``texture=False``: no anatomical texture and no acquired grain.
    """
    cv = _Canvas()
    v = float(np.clip(u + patient.offset, 0.0, 3.999))
    zone = transition(v)
    anatomy = v if zone is None else zone[0] - TRANSITION
    region = int(anatomy)
    _REGIONS[region](cv, anatomy, patient, rng)
    _markers(cv, landmark_share(v, patient.marker_contrast), patient, rng)
    # Table under the patient.
    cv.ellipse(150 + patient.table_gap * 0.3, 0, 6, 200, 100.0, edge=1.0)
    img = cv.img
    if texture:
        body = img > -500
        tissue = gaussian_filter(rng.normal(0, 30.0, img.shape), 1.5)  # about 6 HU, structures of a few mm
        grain = gaussian_filter(rng.normal(0, ACQUIRED_GRAIN[0], img.shape), ACQUIRED_GRAIN[1])  # about 15 HU
        img = img + body * (tissue + grain).astype(np.float32)
    # Patient position: rotate about the centre and shift (mm -> pixels).
    a = np.deg2rad(patient.angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = (np.array(img.shape) - 1) / 2.0
    shift = np.array(patient.shift) / np.array(SPACING)
    offset = centre - rot @ (centre + shift)
    out = affine_transform(img, rot, offset=offset, order=1, mode="constant", cval=_AIR)
    return out.astype(np.float32)


def bodysite_slices(n: int, seed: int = 0, *, patients: int | None = None, zone_share: float = 0.0) -> BodySiteSet:
    """``n`` slices, classes balanced in expectation, from ``patients`` patients (default n // 8, >= 4).

    Slice ``i`` belongs to patient ``i % patients`` and shows the anatomy at ``u`` uniform in [0, 4) (the
    patient's offset is taken out of the coordinate passed to ``render``), or, with probability ``zone_share``,
    uniform in the transition zone of an inner boundary chosen at random (a training set that shows the
    subtle evidence more often; an audit set keeps 0, the body's own mix). The label is ``floor(u)``, the
    class of the anatomy shown. It depends only on ``(seed, i, patients, zone_share)``.
    """
    n = int(n)
    if not 0.0 <= float(zone_share) <= 1.0:
        raise ConfigError(f"zone_share: expected a fraction in [0, 1], got {zone_share!r}")
    patients = max(4, n // 8) if patients is None else int(patients)
    people = [Patient.draw(sample_rng(seed, j, _STREAM_BODY + 100)) for j in range(patients)]
    images = np.empty((n, SIZE, SIZE), np.float32)
    us = np.empty(n)
    pid = np.arange(n) % patients
    for i in range(n):
        rng = sample_rng(seed, i, _STREAM_BODY)
        us[i] = rng.uniform(0.0, 4.0)
        if zone_share and rng.random() < zone_share:
            us[i] = float(np.clip(rng.integers(1, len(BODYSITE_CLASSES)) + rng.uniform(-TRANSITION, TRANSITION), 0, 3.999))
        p = people[pid[i]]
        images[i] = render(us[i] - p.offset, p, rng)
    labels = np.floor(us).astype(np.int64)
    return BodySiteSet(images, labels, us, pid)


def phantom_slice(class_name: str) -> np.ndarray:
    """The fixed phantom slice of a class: an average patient at the middle of the class, no texture (HU)."""
    if class_name not in BODYSITE_CLASSES:
        raise ConfigError(f"phantom class: expected one of {BODYSITE_CLASSES}, got {class_name!r}")
    u = BODYSITE_CLASSES.index(class_name) + 0.5
    return render(u, Patient(), np.random.default_rng(12345), texture=False)
