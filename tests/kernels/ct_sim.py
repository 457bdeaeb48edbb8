"""A small projection-domain CT truth for the dose-reduction tests (no scikit-image needed).

Parallel beam, exact line integrals of ellipses (the Shepp-Logan construction),
Poisson photon counts plus Gaussian electronic noise per ray, log, filtered
back-projection (Ram-Lak ramp times a reconstruction window, XCIST's "standard"
by default, or Hann; linear interpolation). Images in HU
(water = 0). Everything is vectorised over repeats, so dozens of 128x128 images
take about a second on one core.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import interp1d

from kernels import PRESET_WINDOWS

MU_WATER = 0.02  # 1/mm, effective linear attenuation of water


@dataclass(frozen=True)
class Ellipse:
    x0: float  # mm
    y0: float
    a: float  # semi-axes, mm
    b: float
    phi: float  # rotation, radians
    dmu: float  # attenuation added to what lies beneath, 1/mm


def water_phantom(radius: float = 75.0) -> list[Ellipse]:
    """A water cylinder with two soft-tissue inserts (+-5% attenuation, i.e. +-50 HU) near its edge."""
    return [Ellipse(0.0, 0.0, radius, radius, 0.0, MU_WATER),
            Ellipse(0.6 * radius, 0.4 * radius, 0.16 * radius, 0.11 * radius, 0.3, 0.05 * MU_WATER),
            Ellipse(-0.6 * radius, -0.4 * radius, 0.13 * radius, 0.13 * radius, 0.0, -0.05 * MU_WATER)]


def body_phantom() -> list[Ellipse]:
    """A non-uniform body section: an elliptical body, a liver, lungs, a spine (for local sigma maps)."""
    return [Ellipse(0, 0, 85, 65, 0, MU_WATER), Ellipse(35, 5, 30, 25, 0.2, 0.06 * MU_WATER),
            Ellipse(-40, 10, 22, 30, 0, -0.7 * MU_WATER), Ellipse(0, -45, 10, 10, 0, 0.6 * MU_WATER)]


def wide_body() -> list[Ellipse]:
    """A strongly non-uniform section for local sigma maps: a wide, flat body (200 x 96 mm, so lateral paths are
    twice the antero-posterior ones), two dense femoral-head-like inserts (+800 HU) and a spine-like one."""
    return [Ellipse(0, 0, 100, 48, 0, MU_WATER), Ellipse(-58, 0, 12, 12, 0, 0.8 * MU_WATER),
            Ellipse(58, 0, 12, 12, 0, 0.8 * MU_WATER), Ellipse(0, -32, 8, 7, 0, 0.8 * MU_WATER)]


class Scanner:
    """Geometry: ``n`` x ``n`` pixels of ``pixel`` mm, ``n_angles`` views over 180 degrees, detector pitch = pixel."""

    def __init__(self, n: int = 128, pixel: float = 1.0, n_angles: int = 180, window: str = "standard") -> None:
        self.n, self.pixel = n, pixel
        self.n_det = int(math.ceil(n * math.sqrt(2))) + 3
        self.t = (np.arange(self.n_det) - (self.n_det - 1) / 2) * pixel
        self.theta = np.arange(n_angles) * np.pi / n_angles
        c = (np.arange(n) - (n - 1) / 2) * pixel
        self.x, self.y = np.meshgrid(c, -c)  # row 0 at the top (+y)
        # Ram-Lak ramp from its band-limited spatial kernel (Kak & Slaney eq. 3.61: no DC error), times a Hann window.
        m = 2 * self.n_det
        k = np.fft.fftfreq(m, 1.0 / m).astype(np.int64)  # signed sample offsets in FFT order
        odd = k % 2 == 1
        h = np.zeros(m)
        h[k == 0] = 1 / (4 * pixel**2)
        h[odd] = -1 / (np.pi * k[odd] * pixel) ** 2
        freq = np.fft.fftfreq(m, pixel)
        u = np.minimum(np.abs(freq) * 2 * pixel, 1.0)  # f / f_Nyquist
        if window == "hann":
            w = 0.5 * (1 + np.cos(np.pi * u))
        else:  # a reconstruction-kernel window of XCIST (kernels.PRESET_WINDOWS), quadratically interpolated
            w = np.clip(interp1d(np.linspace(0, 1, 5), PRESET_WINDOWS[window], kind="quadratic")(u), 0, None)
        self.filter = pixel * np.real(np.fft.fft(h)) * w

    def line_integrals(self, ellipses: list[Ellipse]) -> np.ndarray:
        """Exact sinogram (n_angles, n_det) of the ellipses, in attenuation x mm (dimensionless)."""
        th, t = self.theta[:, None], self.t[None, :]
        p = np.zeros((self.theta.size, self.n_det))
        for e in ellipses:
            tp = t - (e.x0 * np.cos(th) + e.y0 * np.sin(th))
            a2 = (e.a * np.cos(th - e.phi)) ** 2 + (e.b * np.sin(th - e.phi)) ** 2
            inside = tp**2 < a2
            p += np.where(inside, 2 * e.dmu * e.a * e.b * np.sqrt(np.maximum(a2 - tp**2, 0)) / a2, 0.0)
        return p

    def mu_image(self, ellipses: list[Ellipse]) -> np.ndarray:
        img = np.zeros((self.n, self.n))
        for e in ellipses:
            xr = (self.x - e.x0) * math.cos(e.phi) + (self.y - e.y0) * math.sin(e.phi)
            yr = -(self.x - e.x0) * math.sin(e.phi) + (self.y - e.y0) * math.cos(e.phi)
            img += e.dmu * ((xr / e.a) ** 2 + (yr / e.b) ** 2 <= 1)
        return img

    def fbp(self, sino: np.ndarray) -> np.ndarray:
        """Filtered back-projection of sinograms (R, n_angles, n_det) -> mu images (R, n, n) in 1/mm."""
        sino = sino if sino.ndim == 3 else sino[None]
        r = sino.shape[0]
        spec = np.fft.fft(sino, n=2 * self.n_det, axis=-1) * self.filter  # zero-padded: no wrap-around
        q = np.real(np.fft.ifft(spec, axis=-1))[..., : self.n_det]  # 1/mm (dt of the transform and df of its inverse cancel)
        out = np.zeros((r, self.n * self.n))
        xf, yf = self.x.ravel(), self.y.ravel()
        for k, th in enumerate(self.theta):
            u = (xf * math.cos(th) + yf * math.sin(th) - self.t[0]) / self.pixel
            i0 = np.clip(np.floor(u).astype(np.int64), 0, self.n_det - 2)
            w = u - i0
            qk = q[:, k, :]
            out += qk[:, i0] * (1 - w) + qk[:, i0 + 1] * w
        return (out * (np.pi / self.theta.size)).reshape(r, self.n, self.n)

    def scan(self, p: np.ndarray, i0: float, electronic: float, repeats: int, rng: np.random.Generator) -> np.ndarray:
        """``repeats`` noisy scans in HU: Poisson(i0 exp(-p)) + N(0, electronic^2) counts per ray, log, FBP."""
        mean = i0 * np.exp(-p)
        counts = rng.poisson(mean, size=(repeats, *p.shape)) + rng.normal(0.0, electronic, size=(repeats, *p.shape))
        sino = -np.log(np.maximum(counts, 1.0) / i0)
        return to_hu(self.fbp(sino))

    def noise_components(self, p: np.ndarray, i0: float, electronic: float, repeats: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Image noise of the quantum and the electronic term separately (HU; the same normals, scaled per ray).

        The log-domain variance of a ray is 1/N + s_e^2/N^2 (N the mean count), and FBP is linear, so these two
        maps split the image variance exactly into its 1/dose and 1/dose^2 parts: how a physicist measures a
        scanner's electronic share (e.g. from dark scans).
        """
        n = i0 * np.exp(-p)
        z = rng.standard_normal((repeats, *p.shape))
        quantum = to_hu(self.fbp(z / np.sqrt(n))) + 1000.0
        elec = to_hu(self.fbp(z * electronic / n)) + 1000.0
        return quantum, elec


def to_hu(mu: np.ndarray) -> np.ndarray:
    return 1000.0 * (mu - MU_WATER) / MU_WATER


def disk_mask(scanner: Scanner, radius: float) -> np.ndarray:
    return scanner.x**2 + scanner.y**2 <= radius**2


@dataclass(frozen=True)
class DoseTruth:
    """Full- and quarter-dose repeats of one phantom and the image-domain electronic share at full dose."""

    scanner: Scanner
    full: np.ndarray  # (R, n, n) HU at i0
    quarter: np.ndarray  # (R, n, n) HU at i0 / 4
    electronic_fraction: float  # electronic share of the full-dose variance inside the phantom (r <= 0.8 radius)
    i0: float
    electronic: float


@functools.lru_cache(maxsize=2)  # shared by the kernel and the audit tests of one session
def dose_truth(repeats: int = 48, seed: int = 0, *, i0: float = 2e4, electronic: float = 10.0, radius: float = 60.0,
               fraction: float = 0.25) -> DoseTruth:
    """The projection-domain truth of the dose-reduction tests: ``repeats`` scans at ``i0`` and at ``fraction * i0``."""
    sc = Scanner()
    p = sc.line_integrals(water_phantom(radius))
    rng = np.random.default_rng(seed)
    full = sc.scan(p, i0, electronic, repeats, rng)
    low = sc.scan(p, fraction * i0, electronic, repeats, rng)
    q, el = sc.noise_components(p, i0, electronic, 8, rng)
    inside = disk_mask(sc, 0.8 * radius)
    e = float(el[:, inside].var() / (q[:, inside].var() + el[:, inside].var()))
    return DoseTruth(sc, full, low, e, i0, electronic)
