# This file is part of trail_detect.
#
# Developed for the LSST Data Management System.
# This product includes software developed by the LSST Project
# (https://www.lsst.org).
# See the COPYRIGHT file at the top-level directory of this distribution
# for details of code ownership.
#
# This program is free software: you can redistribute it and/or modify
# it under the terms of the GNU General Public License as published by
# the Free Software Foundation, either version 3 of the License, or
# (at your option) any later version.
#
# This program is distributed in the hope that it will be useful,
# but WITHOUT ANY WARRANTY; without even the implied warranty of
# MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
# GNU General Public License for more details.
#
# You should have received a copy of the GNU General Public License
# along with this program.  If not, see <https://www.gnu.org/licenses/>.

"""Rendering of one simulated calibrated detector image.

Everything here is a plain function over numpy arrays and GalSim objects.
The sequence in `simulate_detector` follows the physics and the processing
of a real LSST visit image:

1. the expected number of electrons per pixel: sky with a gradient, stars
   (from the catalog plus fainter ones), Sersic galaxies, diffraction spikes
   of bright stars and the odd satellite streak, all seen through the true
   (Kolmogorov or Moffat) PSF;
2. Poisson noise, cosmic-ray charge, hot pixels and hot column segments;
3. saturation at the full well with the excess charge bleeding along columns;
4. read noise, the gain, background subtraction from a coarse grid;
5. masking and interpolation of known defects and of the cosmic rays the
   processing found, a dead amplifier marked NO_DATA;
6. calibration to nJy, with a variance plane and an approximate Gaussian
   PSF model, as the stack stores it.

Every object that was drawn is recorded in a truth table.
"""

from __future__ import annotations

__all__ = (
    "SceneParameters",
    "SimulatedDetector",
    "estimate_background",
    "galaxy_number_density",
    "make_true_psf",
    "psf_moment_sigma",
    "TemplateParameters",
    "render_static_sky",
    "simulate_detector",
    "simulate_template",
)

import dataclasses
import math
from typing import Any

import numpy as np

from ..geometry import clip_segment
from .camera import PIXEL_SCALE_ARCSEC, PIXEL_SIZE_MM, detector_wcs

# Offsets from r to other bands for a typical faint galaxy (AB mag).
_GALAXY_COLOUR = {"u": 1.4, "g": 0.6, "r": 0.0, "i": -0.35, "z": -0.55, "y": -0.65}

# Sersic indices drawn for galaxies (GalSim caches each index's profile).
_SERSIC_N = np.array([0.5, 1.0, 1.5, 2.5, 4.0])
_SERSIC_P = np.array([0.10, 0.50, 0.10, 0.10, 0.20])

TRUTH_TYPES = ("star", "galaxy", "cosmic_ray", "hot_pixel", "bad_column", "satellite", "diffraction_spike")


@dataclasses.dataclass
class SceneParameters:
    """Physical recipe of the embedded survey's scenes.

    Attributes are documented inline; the simulation task's config exposes
    the same names.
    """

    galaxy_mag_limit: float = 25.0
    """Faintest galaxy drawn (AB mag in r)."""
    galaxy_density_scale: float = 1.0
    """Multiplier on the galaxy number counts."""
    star_mag_limit: float = 25.0
    """Faintest star drawn; stars fainter than the catalog come from the density model."""
    star_mag_bright: float = 9.0
    """Brightest catalog star drawn."""
    star_density_scale: float = 1.0
    """Multiplier on the density of the stars fainter than the catalog (the star-density model)."""
    star_psf_oversampling: int = 0
    """0: draw every star with the exact PSF (GalSim FFT). N > 0: draw stars
    whose stamp is at most 127 pixels from an N-times oversampled image of the
    pixel-convolved PSF (quintic interpolation, about 1e-4 of the peak and
    6-30 times faster); brighter stars keep the exact PSF."""
    spike_mag_limit: float = 15.5
    """Stars brighter than this (band mag) get diffraction spikes."""
    cosmic_ray_rate: float = 6.0
    """Cosmic rays per cm^2 per minute of exposure (all kinds)."""
    cosmic_ray_detect_fraction: float = 0.9
    """Fraction of compact cosmic rays that the processing masked and interpolated."""
    long_cosmic_ray_detect_fraction: float = 0.5
    """Fraction of long (> 20 px) grazing tracks that the processing masked and interpolated."""
    hot_pixel_density: float = 2e-5
    """Hot pixels per pixel (fixed per detector)."""
    hot_pixel_masked_fraction: float = 0.8
    """Fraction of hot pixels in the defect list (masked BAD and interpolated)."""
    bad_columns_per_4k: float = 2.0
    """Mean number of bad column segments on a full 4k sensor (fixed per detector)."""
    bad_column_masked_fraction: float = 0.7
    """Fraction of bad columns in the defect list."""
    dead_amp_probability: float = 0.12
    """Probability that a detector has a dead amplifier segment (NO_DATA)."""
    background_cell: int = 128
    """Size of the background estimation cells (pixels)."""
    sersic_gsparams: dict = dataclasses.field(
        default_factory=lambda: {"folding_threshold": 5e-3, "maximum_fft_size": 8192}
    )
    """GalSim accuracy settings for galaxy rendering."""


@dataclasses.dataclass
class TemplateParameters:
    """How the template (a deep coadd of earlier visits) of a detector differs from the visit.

    The template holds the same stars and galaxies as the visit, seen
    through a coadd PSF of its own and with the noise of ``depth`` visits
    coadded; it has no cosmic rays, defects, satellites or diffraction
    spikes (the coadd's clipping removed them, and the spikes rotate from
    visit to visit). What the subtraction leaves at the static sources comes
    from the differences a real template has: its PSF is not the visit's
    (the matching kernel is fitted between approximate PSF models), its
    catalog stars are at an earlier epoch (proper motion) and its warp onto
    the detector carries a small registration error.
    """

    fwhm_arcsec: float = 0.5
    """FWHM of the coadd PSF (arcsec)."""
    depth: float = 10.0
    """Number of visits the coadd averages: its noise variance is the visit's divided by this."""
    epoch_offset_years: float = -2.0
    """Epoch of the template's catalog stars relative to the visit's (years)."""
    registration_rms_px: float = 0.02
    """RMS (per axis, pixels) of the registration error of the warped template."""
    psf_model_sigma_rms: float = 0.01
    """RMS fractional error of the template's Gaussian PSF model width."""
    variable_fraction: float = 0.03
    """Fraction of the stars that are variable (fixed on the sky by the survey seed)."""
    variable_rms_mag: float = 0.15
    """RMS (mag) of a variable star's brightness in a visit about its mean, the template's."""

    def __post_init__(self):
        if not self.fwhm_arcsec > 0:
            raise ValueError(f"template fwhm_arcsec must be positive, not {self.fwhm_arcsec}.")
        if not self.depth > 0:
            raise ValueError(f"template depth must be positive, not {self.depth}.")
        if self.registration_rms_px < 0 or self.psf_model_sigma_rms < 0 or self.variable_rms_mag < 0:
            raise ValueError(
                "template registration_rms_px, psf_model_sigma_rms and variable_rms_mag must not be negative."
            )
        if not 0 <= self.variable_fraction <= 1:
            raise ValueError(f"template variable_fraction must be in [0, 1], not {self.variable_fraction}.")


@dataclasses.dataclass
class SimulatedDetector:
    """The arrays and truth of one simulated detector image.

    Attributes
    ----------
    image : `numpy.ndarray`
        Calibrated, background-subtracted image (nJy per pixel), float32.
    variance : `numpy.ndarray`
        Variance (nJy^2), float32; NaN where there is no data.
    masks : `dict` [`str`, `numpy.ndarray`]
        Boolean mask planes by name (VisitImage plane names).
    model : `numpy.ndarray`
        Noiseless astrophysical model (nJy, no sky): stars, galaxies,
        spikes and satellites before saturation.
    truth : `astropy.table.Table`
        One row per rendered object.
    wcs : `astropy.wcs.WCS`
        The detector's WCS.
    psf_sigma_true : `float`
        Second-moment Gaussian sigma of the true PSF (pixels).
    psf_sigma_model : `float`
        Sigma of the stored (approximate) Gaussian PSF model (pixels).
    nJy_per_adu : `float`
        Photometric calibration applied to the post-ISR image.
    background_nJy : `float`
        Mean sky level that was subtracted (nJy per pixel).
    summary : `dict`
        Summary statistics for the visit image.
    """

    image: np.ndarray
    variance: np.ndarray
    masks: dict[str, np.ndarray]
    model: np.ndarray
    truth: Any
    wcs: Any
    psf_sigma_true: float
    psf_sigma_model: float
    nJy_per_adu: float
    background_nJy: float
    summary: dict


def make_true_psf(conditions: dict):
    """Return the true PSF of a visit as a GalSim profile in arcsec.

    Parameters
    ----------
    conditions : `dict`
        Visit conditions from `~lsst.trail_detect.simulation.survey.plan_survey`.
    """
    import galsim

    fwhm = conditions["seeing_fwhm_arcsec"]
    if conditions["psf_profile"] == "kolmogorov":
        atmosphere = galsim.Kolmogorov(fwhm=fwhm)
    else:
        atmosphere = galsim.Moffat(beta=conditions["moffat_beta"], fwhm=fwhm)
    atmosphere = atmosphere.shear(g1=conditions["psf_g1"], g2=conditions["psf_g2"])
    optics = galsim.Gaussian(fwhm=0.25)
    return galsim.Convolve(atmosphere, optics)


def psf_moment_sigma(psf) -> float:
    """Return the adaptive-moment Gaussian sigma (pixels) of a PSF, pixel included."""
    import galsim

    stamp = psf.drawImage(nx=65, ny=65, scale=PIXEL_SCALE_ARCSEC)
    moments = galsim.hsm.FindAdaptiveMom(stamp)
    return float(moments.moments_sigma)


def galaxy_number_density(mag: np.ndarray | float) -> np.ndarray:
    """Differential galaxy counts in r (per deg^2 per mag).

    A broken power law through deep-field counts: slope 0.45 brighter than
    r = 21 and 0.33 fainter, with 1.4e4 galaxies per deg^2 per mag at r = 22.
    """
    mag = np.asarray(mag, dtype=float)
    faint = 1.4e4 * 10.0 ** (0.33 * (mag - 22.0))
    bright = 1.4e4 * 10.0 ** (0.33 * (21.0 - 22.0) + 0.45 * (mag - 21.0))
    return np.where(mag >= 21.0, faint, bright)


def _sky_cells(ra_min: float, ra_max: float, dec_min: float, dec_max: float, cell: float):
    """Yield the (i, j) indices of RA/Dec cells covering a box."""
    for j in range(math.floor(dec_min / cell), math.floor(dec_max / cell) + 1):
        for i in range(math.floor(ra_min / cell), math.floor(ra_max / cell) + 1):
            yield i, j


def _draw_in_cells(wcs, size: int, margin: float, seed: int, kind: int, cell: float, density_fn):
    """Draw a sky-fixed Poisson population, reproducible across visits.

    Objects live in RA/Dec cells, each seeded by (survey seed, kind, cell);
    so an object appears identically in every visit that covers its cell.

    Returns
    -------
    ra, dec, u : `numpy.ndarray`
        Positions (degrees) and a uniform deviate per object for magnitudes,
        plus the per-object seeds for further draws.
    """
    from .camera import detector_corners_sky

    corners = detector_corners_sky(wcs, size)
    pad = margin * PIXEL_SCALE_ARCSEC / 3600.0
    ra_c = corners[:, 0]
    # Unwrap RA around the detector centre.
    ra_ref = ra_c[0]
    ra_c = ra_ref + ((ra_c - ra_ref + 180.0) % 360.0) - 180.0
    dec_min, dec_max = corners[:, 1].min() - pad, corners[:, 1].max() + pad
    cosd = max(math.cos(math.radians(max(abs(dec_min), abs(dec_max)))), 1e-3)
    ra_min, ra_max = ra_c.min() - pad / cosd, ra_c.max() + pad / cosd
    ras, decs, seeds = [], [], []
    for i, j in _sky_cells(ra_min, ra_max, dec_min, dec_max, cell):
        rng = np.random.default_rng([seed, kind, i % 100000, j + 100000])
        d1, d2 = math.radians(j * cell), math.radians((j + 1) * cell)
        area = math.degrees(math.radians(cell)) * math.degrees(math.sin(d2) - math.sin(d1))
        dec_mid = (j + 0.5) * cell
        n = rng.poisson(density_fn(dec_mid, (i + 0.5) * cell) * area)
        if n == 0:
            continue
        ra = (i + rng.uniform(size=n)) * cell
        dec = np.degrees(np.arcsin(rng.uniform(math.sin(d1), math.sin(d2), size=n)))
        ras.append(ra % 360.0)
        decs.append(dec)
        seeds.append(rng.integers(0, 2**62, size=n))
    if not ras:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(ras), np.concatenate(decs), np.concatenate(seeds)


def _add_profile(canvas, profile, x: float, y: float, stamp: int, method: str = "auto") -> None:
    """Draw a GalSim profile centred at 0-based (x, y) onto a GalSim image."""
    import galsim

    half = stamp // 2
    ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
    bounds = galsim.BoundsI(ix - half + 1, ix + half + 1, iy - half + 1, iy + half + 1)
    overlap = bounds & canvas.bounds
    if not overlap.isDefined():
        return
    sub = canvas[overlap]
    profile.drawImage(image=sub, center=galsim.PositionD(x + 1.0, y + 1.0), add_to_image=True, method=method)


_FAST_STAMP_MAX = 127
"""Largest stamp (pixels) drawn from the oversampled PSF image."""


def _oversampled_psf(psf, oversampling: int):
    """Return the pixel-convolved PSF as an interpolated image, to draw with ``method="no_pixel"``.

    The image is ``oversampling`` times finer than the detector pixels and
    covers the corners of a `_FAST_STAMP_MAX` stamp; sampling it at pixel
    centres gives the pixel-integrated PSF.
    """
    import galsim

    scale = PIXEL_SCALE_ARCSEC / oversampling
    n = (2 * _FAST_STAMP_MAX + 1) * oversampling | 1
    image = galsim.Convolve(psf, galsim.Pixel(PIXEL_SCALE_ARCSEC)).drawImage(
        nx=n, ny=n, scale=scale, method="no_pixel"
    )
    return galsim.InterpolatedImage(
        image, x_interpolant="quintic", normalization="sb", calculate_stepk=False, calculate_maxk=False
    )


def _stamp_size(flux_e: float, fwhm_px: float, extra: float = 0.0) -> int:
    """Choose an odd stamp size that holds a profile down to ~0.1 e per pixel."""
    base = 6.0 * fwhm_px + extra
    wing = 2.0 * fwhm_px * max(0.0, math.log10(max(flux_e, 1.0)) - 3.0) ** 2
    n = int(min(max(base + wing, 15), 1025))
    return n | 1


def _render_spikes(model_e, x, y, flux_e, angle_deg, sigma_px, rng) -> dict:
    """Add four diffraction spikes of a bright star; return their truth."""
    size_y, size_x = model_e.shape
    fraction = 0.004
    length = float(min(60.0 * math.sqrt(flux_e / 1e7) * 10, 1500.0))
    r0 = 3.0 * sigma_px
    half = int(length) + 4
    x0, x1 = max(int(x) - half, 0), min(int(x) + half + 1, size_x)
    y0, y1 = max(int(y) - half, 0), min(int(y) + half + 1, size_y)
    if x0 >= x1 or y0 >= y1:
        return {"length": length}
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dx, dy = xx - x, yy - y
    # Radial profile lambda(r) ~ r0^2/(r0 + r)^2 normalised on [0, length].
    norm = r0 * length / (r0 + length)
    for k in range(4):
        theta = math.radians(angle_deg + 90.0 * k)
        along = dx * math.cos(theta) + dy * math.sin(theta)
        perp = -dx * math.sin(theta) + dy * math.cos(theta)
        sel = (along > 0) & (along < length) & (np.abs(perp) < 5 * sigma_px)
        lam = fraction / 4.0 * flux_e * (r0**2 / (r0 + along[sel]) ** 2) / norm
        prof = np.exp(-0.5 * (perp[sel] / (0.7 * sigma_px)) ** 2) / (math.sqrt(2 * math.pi) * 0.7 * sigma_px)
        model_e[yy[sel], xx[sel]] += lam * prof
    return {"length": length}


def _render_satellite(model_e, p0, p1, flux_per_px, sigma_px) -> None:
    """Add an analytic streak along the infinite line through p0 and p1."""
    size_y, size_x = model_e.shape
    (xa, ya), (xb, yb) = p0, p1
    dx, dy = xb - xa, yb - ya
    norm = math.hypot(dx, dy)
    nx, ny = -dy / norm, dx / norm
    yy, xx = np.mgrid[0:size_y, 0:size_x].astype(np.float32)
    perp = (xx - xa) * nx + (yy - ya) * ny
    sel = np.abs(perp) < 6 * sigma_px
    model_e[sel] += (
        flux_per_px * np.exp(-0.5 * (perp[sel] / sigma_px) ** 2) / (math.sqrt(2 * math.pi) * sigma_px)
    )


def _cosmic_rays(shape, n, rng, read_sigma_e):
    """Make cosmic-ray charge: spots, curly electron tracks and straight muon tracks.

    Returns
    -------
    charge : `numpy.ndarray`
        Deposited electrons per pixel.
    rows : `list` [`dict`]
        One truth row per cosmic ray, with its own pixel footprint.
    """
    size_y, size_x = shape
    charge = np.zeros(shape, dtype=np.float32)
    rows = []
    thickness_px = 0.1 / PIXEL_SIZE_MM  # 100 micron deep depletion over 10 micron pixels
    for _ in range(n):
        kind = rng.choice(["spot", "worm", "track"], p=[0.45, 0.30, 0.25])
        x0, y0 = rng.uniform(0, size_x), rng.uniform(0, size_y)
        if kind == "spot":
            pts = np.array([[x0, y0]]) + rng.normal(0, 0.4, size=(4, 2))
            total = rng.lognormal(math.log(2000.0), 0.6)
        elif kind == "worm":
            steps = rng.integers(6, 25)
            direction = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0, 0.5, size=steps))
            pts = np.stack([x0 + np.cumsum(np.cos(direction)), y0 + np.cumsum(np.sin(direction))], axis=1)
            total = steps * rng.lognormal(math.log(900.0), 0.4)
        else:
            # Muon zenith angle ~ cos^2; projected length = thickness * tan(theta).
            while True:
                theta = math.acos(rng.uniform() ** (1 / 3))
                if theta < math.radians(89.5):
                    break
            length = min(thickness_px * math.tan(theta), 400.0)
            phi = rng.uniform(0, 2 * math.pi)
            n_pts = max(int(length * 4), 2)
            t = np.linspace(0, 1, n_pts)
            pts = np.stack([x0 + t * length * math.cos(phi), y0 + t * length * math.sin(phi)], axis=1)
            path_um = math.hypot(length * PIXEL_SIZE_MM * 1000, 100.0)
            total = 80.0 * path_um * rng.lognormal(0.0, 0.3)
        # Bilinear deposition of equal charge per sample point.
        w = total / len(pts)
        fx, fy = pts[:, 0] - 0.5, pts[:, 1] - 0.5
        ix, iy = np.floor(fx).astype(int), np.floor(fy).astype(int)
        ax, ay = fx - ix, fy - iy
        footprint = []
        for ddx, ddy, wt in (
            (0, 0, (1 - ax) * (1 - ay)),
            (1, 0, ax * (1 - ay)),
            (0, 1, (1 - ax) * ay),
            (1, 1, ax * ay),
        ):
            px, py = ix + ddx + 1, iy + ddy + 1
            ok = (px >= 0) & (px < size_x) & (py >= 0) & (py < size_y)
            np.add.at(charge, (py[ok], px[ok]), (w * wt[ok]).astype(np.float32))
            footprint.append(np.stack([py[ok], px[ok]], axis=1))
        footprint = np.unique(np.concatenate(footprint), axis=0) if footprint else np.zeros((0, 2), int)
        xs = np.clip(pts[:, 0], 0, size_x - 1)
        ys = np.clip(pts[:, 1], 0, size_y - 1)
        length_px = float(np.hypot(xs[-1] - xs[0], ys[-1] - ys[0]))
        rows.append(
            {
                "kind": kind,
                "x0": float(xs[0]),
                "y0": float(ys[0]),
                "x1": float(xs[-1]),
                "y1": float(ys[-1]),
                "length": length_px,
                "charge": float(total),
                "footprint": footprint,
            }
        )
    return charge, rows


def _bleed(e_image: np.ndarray, full_well: float) -> np.ndarray:
    """Cap pixels at the full well and spill the excess charge along columns.

    Returns the boolean array of saturated pixels (after bleeding).
    """
    over = e_image > full_well
    if not over.any():
        return over
    size_y = e_image.shape[0]
    for col in np.unique(np.nonzero(over)[1]):
        column = e_image[:, col]
        rows = np.nonzero(column > full_well)[0]
        # Contiguous runs of over-full pixels.
        breaks = np.nonzero(np.diff(rows) > 1)[0]
        starts = np.concatenate([[rows[0]], rows[breaks + 1]])
        ends = np.concatenate([rows[breaks], [rows[-1]]])
        for start, end in zip(starts, ends):
            excess = float(np.sum(column[start : end + 1] - full_well))
            column[start : end + 1] = full_well
            for direction, edge in ((1, end), (-1, start)):
                remaining = excess / 2.0
                idx = edge + direction
                while remaining > 0 and 0 <= idx < size_y:
                    room = full_well - column[idx]
                    if room > 0:
                        take = min(room, remaining)
                        column[idx] += take
                        remaining -= take
                    idx += direction
        e_image[:, col] = column
    return e_image >= full_well


def estimate_background(image: np.ndarray, cell: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Estimate a smooth background from sigma-clipped cell medians.

    Parameters
    ----------
    image : `numpy.ndarray`
        Image to model.
    cell : `int`
        Cell size (pixels).
    exclude : `numpy.ndarray`, optional
        Boolean array of pixels to ignore.

    Returns
    -------
    background : `numpy.ndarray`
        The background, interpolated with a bicubic spline through the cell
        centres (lower orders when there are few cells).
    """
    from scipy.interpolate import RectBivariateSpline

    size_y, size_x = image.shape
    ny, nx = max(size_y // cell, 1), max(size_x // cell, 1)
    ey, ex = np.linspace(0, size_y, ny + 1).astype(int), np.linspace(0, size_x, nx + 1).astype(int)
    data = np.where(exclude, np.nan, image) if exclude is not None else image.astype(float)
    values = np.zeros((ny, nx))
    for j in range(ny):
        # All cells of a row at once: (nx, pixels) with NaN padding.
        blocks = [data[ey[j] : ey[j + 1], ex[i] : ex[i + 1]].ravel() for i in range(nx)]
        width = max(len(b) for b in blocks)
        stack = np.full((nx, width), np.nan)
        for i, b in enumerate(blocks):
            stack[i, : len(b)] = b
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                for _ in range(5):  # 3-sigma clipping about the median, MAD scale
                    med = np.nanmedian(stack, axis=1, keepdims=True)
                    mad = 1.4826 * np.nanmedian(np.abs(stack - med), axis=1, keepdims=True)
                    stack = np.where(np.abs(stack - med) > 3.0 * mad, np.nan, stack)
                values[j] = np.nanmedian(stack, axis=1)
    if not np.all(np.isfinite(values)):
        values[~np.isfinite(values)] = np.nanmedian(values) if np.isfinite(values).any() else 0.0
    if nx == 1 and ny == 1:
        return np.full(image.shape, values[0, 0], dtype=np.float32)
    cy = 0.5 * (ey[:-1] + ey[1:]) - 0.5
    cx = 0.5 * (ex[:-1] + ex[1:]) - 0.5
    if ny == 1 or nx == 1:
        line = values.ravel()
        centres = cx if ny == 1 else cy
        full = np.interp(np.arange(size_x if ny == 1 else size_y), centres, line)
        return (
            np.broadcast_to(full, image.shape) if ny == 1 else np.broadcast_to(full[:, None], image.shape)
        ).astype(np.float32)
    spline = RectBivariateSpline(cy, cx, values, kx=min(3, ny - 1), ky=min(3, nx - 1))
    return spline(np.arange(size_y), np.arange(size_x)).astype(np.float32)


def _source_mask(
    image: np.ndarray, pixel_sigma: float, smooth: float = 2.0, nsigma: float = 2.0, grow: int = 4
) -> np.ndarray:
    """Mask the pixels of sources, as a first detection pass before the final background.

    The image is smoothed with a Gaussian of ``smooth`` pixels; pixels above
    ``nsigma`` times the smoothed noise are masked and the mask is grown by
    ``grow`` pixels. ``image`` must already have a first background removed.
    """
    from scipy.ndimage import binary_dilation, gaussian_filter

    smoothed = gaussian_filter(image, smooth, mode="nearest")
    noise = pixel_sigma / (2.0 * math.sqrt(math.pi) * smooth)
    return binary_dilation(smoothed > nsigma * noise, iterations=grow)


def _interpolate_over(image: np.ndarray, bad: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Replace bad pixels by a Gaussian-weighted mean of good neighbours."""
    from scipy.ndimage import gaussian_filter

    good = (~bad).astype(np.float32)
    num = gaussian_filter(np.where(bad, 0.0, image).astype(np.float32), sigma, mode="nearest")
    den = gaussian_filter(good, sigma, mode="nearest")
    out = image.copy()
    fill = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0)
    out[bad] = fill[bad]
    return out


def _detector_defects(seed: int, detector: int, size: int, params: SceneParameters):
    """Draw the fixed defects of a detector (same in every visit)."""
    rng = np.random.default_rng([seed, 7, detector])
    n_hot = rng.poisson(params.hot_pixel_density * size * size)
    hot = {
        "x": rng.integers(0, size, n_hot),
        "y": rng.integers(0, size, n_hot),
        "charge": rng.lognormal(math.log(3000.0), 1.0, n_hot),
        "masked": rng.uniform(size=n_hot) < params.hot_pixel_masked_fraction,
    }
    n_col = rng.poisson(params.bad_columns_per_4k * size / 4096.0)
    cols = []
    for _ in range(n_col):
        x = int(rng.integers(0, size))
        length = int(rng.integers(max(size // 8, 2), size + 1))
        y0 = int(rng.integers(0, size - length + 1))
        cols.append(
            {
                "x": x,
                "y0": y0,
                "y1": y0 + length - 1,
                "charge": float(rng.uniform(40, 400)),
                "masked": bool(rng.uniform() < params.bad_column_masked_fraction),
            }
        )
    dead = None
    if rng.uniform() < params.dead_amp_probability:
        width = max(size // 8, 1)
        k = int(rng.integers(0, 8))
        half = int(rng.integers(0, 2))
        dead = (slice(half * size // 2, (half + 1) * size // 2), slice(k * width, min((k + 1) * width, size)))
    return hot, cols, dead


def render_static_sky(
    conditions: dict,
    stars,
    psf,
    wcs,
    *,
    params: SceneParameters,
    catalog_mag_limit: float | None,
    epoch: float,
    point_source_area: float,
    sky_variance: float,
    stamp_fwhm_px: float | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
    star_flux_factor=None,
):
    """Render the static sky of one detector (stars and galaxies), noiseless, in electrons.

    The same sky for every image of it: catalog stars moved by proper
    motion to ``epoch``, fainter stars and galaxies fixed on the sky and
    drawn from the survey seed, so that a visit and a template of the same
    detector footprint hold the same objects.

    Parameters
    ----------
    conditions : `dict`
        Visit conditions (size, band, seeds, photometric scale).
    stars : `astropy.table.Table` or `None`
        Star catalog in the normalized Gaia schema.
    psf : `galsim.GSObject`
        PSF to render with (arcsec).
    wcs : `astropy.wcs.WCS`
        Detector WCS.
    params : `SceneParameters`
        Physical recipe.
    catalog_mag_limit : `float` or `None`
        Faint limit (G) of the catalog; `None`: the faintest catalog star.
    epoch : `float`
        Julian year the catalog stars are moved to.
    point_source_area : `float`
        Effective area (pixels) of the point-source matched filter, for the
        truth's ``nu_psf``.
    sky_variance : `float`
        Per-pixel noise variance (electrons^2) of the background, for ``nu_psf``.
    stamp_fwhm_px : `float`, optional
        FWHM (pixels) that sets the stamp sizes; default: the visit seeing.
    offset : `tuple` [`float`, `float`], optional
        Shift (pixels) of everything rendered, leaving the truth positions
        alone (a registration error).
    star_flux_factor : callable, optional
        ``f(key) -> factor`` on each star's flux, where ``key`` identifies
        the star on the sky (its catalog ``source_id``, or a number made
        from the position of a star of the density model); the truth keeps
        the unscaled flux.

    Returns
    -------
    model_e : `numpy.ndarray`
        Noiseless image (electrons, float32).
    truth_rows : `list` [`dict`]
        One truth row per star and galaxy.
    bright : `list` [`tuple`]
        ``(x, y, flux_e, truth_row_index)`` of the stars that get diffraction spikes.
    """
    import galsim

    from .gaia import gaia_to_band, galactic_star_density

    size = int(conditions["size"])
    band = conditions["band"]
    survey_seed = int(conditions["survey_seed"])
    njy_per_e = conditions["nJy_per_electron"]
    fwhm_px = (
        stamp_fwhm_px if stamp_fwhm_px is not None else conditions["seeing_fwhm_arcsec"] / PIXEL_SCALE_ARCSEC
    )
    dx, dy = float(offset[0]), float(offset[1])
    margin = 60.0
    canvas = galsim.ImageF(size, size, scale=PIXEL_SCALE_ARCSEC)
    truth_rows: list[dict] = []

    def to_e(mag):
        return 10.0 ** (-0.4 * (np.asarray(mag) - 31.4)) / njy_per_e

    # --- Stars from the catalog, moved by proper motion to the epoch.
    if stars is not None and len(stars) > 0:
        ra = np.asarray(stars["ra"], dtype=float)
        dec = np.asarray(stars["dec"], dtype=float)
        pmra = np.nan_to_num(np.asarray(stars["pmra"], dtype=float))
        pmdec = np.nan_to_num(np.asarray(stars["pmdec"], dtype=float))
        dt = epoch - 2016.0
        dec_v = dec + pmdec * dt / 3.6e6
        ra_v = ra + pmra * dt / 3.6e6 / np.cos(np.radians(dec))
        x, y = wcs.wcs_world2pix(ra_v, dec_v, 0)
        on = (x > -margin) & (x < size + margin) & (y > -margin) & (y < size + margin)
        g = np.asarray(stars["phot_g_mean_mag"], dtype=float)
        bp_rp = np.asarray(stars["bp_rp"], dtype=float)
        on &= np.isfinite(g) & (g >= params.star_mag_bright)
        mags = gaia_to_band(g[on], bp_rp[on], band)
        ids = np.asarray(stars["source_id"])[on]
        if catalog_mag_limit is None:
            catalog_mag_limit = float(np.nanmax(g)) if np.isfinite(g).any() else 21.0
        cat_stars = list(zip(x[on], y[on], ra_v[on], dec_v[on], mags, ids, [True] * int(on.sum())))
    else:
        cat_stars = []
        catalog_mag_limit = catalog_mag_limit if catalog_mag_limit is not None else params.star_mag_bright
    # --- Fainter stars, fixed on the sky, from the density model.

    centre = wcs.pixel_to_world(size / 2.0, size / 2.0)
    b_deg = float(abs(centre.galactic.b.deg))
    l_deg = float(centre.galactic.l.deg)
    faint_density = params.star_density_scale * max(
        galactic_star_density(b_deg, params.star_mag_limit, l_deg)
        - galactic_star_density(b_deg, catalog_mag_limit, l_deg),
        0.0,
    )
    fra, fdec, fseed = _draw_in_cells(wcs, size, margin, survey_seed, 1, 0.05, lambda d, r: faint_density)
    if len(fra):
        fx, fy = wcs.wcs_world2pix(fra, fdec, 0)
        on = (fx > -margin) & (fx < size + margin) & (fy > -margin) & (fy < size + margin)
        # Magnitudes follow the model's slope between the catalog limit and the faint limit.
        grid = np.linspace(catalog_mag_limit, params.star_mag_limit, 64)
        cum = np.array([galactic_star_density(b_deg, m, l_deg) for m in grid])
        cum = (cum - cum[0]) / max(cum[-1] - cum[0], 1e-12)
        u_draw = (fseed[on] % 10**6) / 1e6
        fmag = np.interp(u_draw, cum, grid) + gaia_to_band(np.array([0.0]), np.array([1.2]), band)[0]
        cat_stars += list(
            zip(
                fx[on],
                fy[on],
                fra[on],
                fdec[on],
                fmag,
                -np.ones(int(on.sum()), dtype=np.int64),
                [False] * int(on.sum()),
            )
        )
    bright = []
    fast_psf = _oversampled_psf(psf, params.star_psf_oversampling) if params.star_psf_oversampling else None
    for sx, sy, sra, sdec, smag, sid, in_cat in cat_stars:
        flux_e = float(to_e(smag))
        drawn_e = flux_e
        if star_flux_factor is not None:
            key = int(sid) if sid >= 0 else int(abs(sra) * 1e7) * 1000003 + int(abs(sdec) * 1e7)
            drawn_e = flux_e * float(star_flux_factor(key))
        stamp = _stamp_size(flux_e, fwhm_px)
        if fast_psf is not None and stamp <= _FAST_STAMP_MAX:
            _add_profile(canvas, fast_psf.withFlux(drawn_e), sx + dx, sy + dy, stamp, method="no_pixel")
        else:
            _add_profile(canvas, psf.withFlux(drawn_e), sx + dx, sy + dy, stamp)
        truth_rows.append(
            {
                "type": "star",
                "ra": sra,
                "dec": sdec,
                "x": sx,
                "y": sy,
                "mag": smag,
                "flux": flux_e * njy_per_e,
                "catalog_id": int(sid),
                "in_catalog": bool(in_cat),
                "nu_psf": flux_e / math.sqrt(point_source_area * sky_variance),
            }
        )
        if smag < params.spike_mag_limit:
            bright.append((sx, sy, flux_e, len(truth_rows) - 1))

    # --- Galaxies: broken power-law counts, size-magnitude relation, Sersic profiles.
    colour = _GALAXY_COLOUR[band]
    mags_grid = np.linspace(16.0, params.galaxy_mag_limit, 200)
    dens = galaxy_number_density(mags_grid) * params.galaxy_density_scale
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(mags_grid))])
    total_density = float(cum[-1])
    gra, gdec, gseed = _draw_in_cells(wcs, size, margin, survey_seed, 2, 0.05, lambda d, r: total_density)
    if len(gra):
        gx, gy = wcs.wcs_world2pix(gra, gdec, 0)
        on = (gx > -margin) & (gx < size + margin) & (gy > -margin) & (gy < size + margin)
        gsparams = galsim.GSParams(**params.sersic_gsparams)
        for gx_, gy_, gra_, gdec_, gs in zip(gx[on], gy[on], gra[on], gdec[on], gseed[on]):
            grng = np.random.default_rng(int(gs))
            rmag = float(np.interp(grng.uniform() * total_density, cum, mags_grid))
            hlr = float(10.0 ** (-0.15 * (rmag - 22.0) - 0.25 + grng.normal(0, 0.2)))
            hlr = min(max(hlr, 0.08), 8.0)
            n = float(grng.choice(_SERSIC_N, p=_SERSIC_P))
            e = min(grng.rayleigh(0.25), 0.7)
            beta = grng.uniform(0, 180.0)
            mag = rmag + colour
            flux_e = float(to_e(mag))
            gal = galsim.Sersic(
                n=n, half_light_radius=hlr, flux=flux_e, gsparams=gsparams, trunc=8 * hlr if n >= 2 else 0.0
            )
            gal = gal.shear(e=e, beta=beta * galsim.degrees)
            stamp = _stamp_size(flux_e, fwhm_px, extra=8.0 * hlr / PIXEL_SCALE_ARCSEC)
            _add_profile(
                canvas, galsim.Convolve(gal, psf, gsparams=gsparams), gx_ + dx, gy_ + dy, min(stamp, 257)
            )
            truth_rows.append(
                {
                    "type": "galaxy",
                    "ra": gra_,
                    "dec": gdec_,
                    "x": gx_,
                    "y": gy_,
                    "mag": mag,
                    "flux": flux_e * njy_per_e,
                    "sersic_n": n,
                    "half_light_radius": hlr,
                    "ellipticity": e,
                    "position_angle": beta,
                }
            )

    return canvas.array.astype(np.float32), truth_rows, bright


def simulate_detector(
    conditions: dict,
    detector: int,
    stars,
    *,
    params: SceneParameters | None = None,
    catalog_mag_limit: float | None = None,
) -> SimulatedDetector:
    """Simulate one calibrated detector image of one visit.

    Parameters
    ----------
    conditions : `dict`
        Visit conditions (`~lsst.trail_detect.simulation.survey.plan_survey`).
    detector : `int`
        Detector ID.
    stars : `astropy.table.Table`
        Star catalog in the normalized Gaia schema (``ra``, ``dec``,
        ``phot_g_mean_mag``, ``bp_rp``, ``pmra``, ``pmdec``, ``source_id``);
        only rows on or near the detector are used.
    params : `SceneParameters`, optional
        Physical recipe.
    catalog_mag_limit : `float`, optional
        Faint limit (G) of the catalog; stars fainter than it, down to
        ``params.star_mag_limit``, are drawn from the star-density model.
        Defaults to the faintest catalog star.

    Returns
    -------
    result : `SimulatedDetector`
    """
    import astropy.time
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    params = params or SceneParameters()
    size = int(conditions["size"])
    band = conditions["band"]
    seed = int(conditions["seed"])
    survey_seed = int(conditions["survey_seed"])
    rng = np.random.default_rng([seed, detector])
    wcs = detector_wcs(
        conditions["boresight_ra"], conditions["boresight_dec"], conditions["rotation_deg"], detector, size
    )
    gain, read_noise, full_well = conditions["gain"], conditions["read_noise"], conditions["full_well"]
    njy_per_e = conditions["nJy_per_electron"]
    exptime = conditions["exposure_time"]
    from .survey import sky_electrons_per_pixel

    sky_level = sky_electrons_per_pixel(conditions["sky_mag"], band, exptime, conditions["airmass"])

    psf = make_true_psf(conditions)
    sigma_true = psf_moment_sigma(psf)
    sigma_model = sigma_true * (1.0 + conditions["psf_model_sigma_error"])

    def to_e(mag):
        return 10.0 ** (-0.4 * (np.asarray(mag) - 31.4)) / njy_per_e

    epoch = astropy.time.Time(conditions["datetime_begin"], scale="tai").jyear
    model_e, truth_rows, bright = render_static_sky(
        conditions,
        stars,
        psf,
        wcs,
        params=params,
        catalog_mag_limit=catalog_mag_limit,
        epoch=epoch,
        point_source_area=4.0 * math.pi * sigma_true**2,
        sky_variance=sky_level + read_noise**2,
    )

    # --- Diffraction spikes of bright stars (the spider rotates with the camera).
    spike_angle = 45.0 + conditions["rotation_deg"]
    for sx, sy, flux_e, row in bright:
        info = _render_spikes(model_e, sx, sy, flux_e, spike_angle, sigma_true, rng)
        truth_rows.append(
            {
                "type": "diffraction_spike",
                "ra": truth_rows[row]["ra"],
                "dec": truth_rows[row]["dec"],
                "x": sx,
                "y": sy,
                "length": info["length"],
                "position_angle": spike_angle % 90.0,
                "mag": truth_rows[row]["mag"],
            }
        )

    # --- The odd satellite streak: one great circle per visit, a straight line on each detector.
    vrng = np.random.default_rng([seed, 99])
    if vrng.uniform() < conditions.get("satellite_rate", 0.0):
        pa = vrng.uniform(0, 360.0)
        offset = vrng.uniform(-0.4, 0.4, size=2)
        c0 = SkyCoord(conditions["boresight_ra"] * u.deg, conditions["boresight_dec"] * u.deg)
        anchor = c0.spherical_offsets_by(offset[0] * u.deg, offset[1] * u.deg)
        p_a = anchor.directional_offset_by(pa * u.deg, 2.0 * u.deg)
        p_b = anchor.directional_offset_by((pa + 180.0) * u.deg, 2.0 * u.deg)
        xa, ya = wcs.world_to_pixel(p_a)
        xb, yb = wcs.world_to_pixel(p_b)
        seg = clip_segment(float(xa), float(ya), float(xb), float(yb), size, size)
        if seg is not None and math.hypot(seg[2] - seg[0], seg[3] - seg[1]) > 1.0:
            mag_arcsec = vrng.uniform(13.0, 17.0)
            width_arcsec = math.hypot(conditions["seeing_fwhm_arcsec"], vrng.uniform(1.0, 4.0))
            flux_per_px = float(to_e(mag_arcsec)) * PIXEL_SCALE_ARCSEC
            sigma_sat = width_arcsec / PIXEL_SCALE_ARCSEC / 2.3548
            _render_satellite(model_e, (float(xa), float(ya)), (float(xb), float(yb)), flux_per_px, sigma_sat)
            mid = wcs.pixel_to_world(0.5 * (seg[0] + seg[2]), 0.5 * (seg[1] + seg[3]))
            truth_rows.append(
                {
                    "type": "satellite",
                    "ra": mid.ra.deg,
                    "dec": mid.dec.deg,
                    "x": 0.5 * (seg[0] + seg[2]),
                    "y": 0.5 * (seg[1] + seg[3]),
                    "x_start": seg[0],
                    "y_start": seg[1],
                    "x_end": seg[2],
                    "y_end": seg[3],
                    "length": math.hypot(seg[2] - seg[0], seg[3] - seg[1]),
                    "width": width_arcsec,
                    "mag": mag_arcsec,
                    "flux": flux_per_px * njy_per_e * math.hypot(seg[2] - seg[0], seg[3] - seg[1]),
                    "position_angle": math.degrees(math.atan2(seg[3] - seg[1], seg[2] - seg[0])) % 180.0,
                }
            )

    # --- Sky with a gradient, Poisson noise.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ang = math.radians(conditions["sky_gradient_angle_deg"])
    grad = (
        conditions["sky_gradient"]
        * ((xx - size / 2) * math.cos(ang) + (yy - size / 2) * math.sin(ang))
        / size
    )
    sky_e = (sky_level * (1.0 + grad)).astype(np.float32)
    del xx, yy, grad
    expected = model_e + sky_e
    e_image = rng.poisson(np.maximum(expected, 0.0)).astype(np.float32)

    # --- Cosmic rays, hot pixels, hot column segments.
    area_cm2 = (size * PIXEL_SIZE_MM / 10.0) ** 2
    n_cr = rng.poisson(params.cosmic_ray_rate * area_cm2 * exptime / 60.0)
    cr_charge, cr_rows = _cosmic_rays((size, size), n_cr, rng, read_noise)
    e_image += cr_charge
    hot, columns, dead = _detector_defects(survey_seed, detector, size, params)
    np.add.at(e_image, (hot["y"], hot["x"]), hot["charge"].astype(np.float32))
    for col in columns:
        e_image[col["y0"] : col["y1"] + 1, col["x"]] += col["charge"]

    # --- Saturation and bleed trails; nonlinear (suspect) regime.
    saturated = _bleed(e_image, full_well)
    suspect = (e_image > 0.9 * full_well) & ~saturated

    # --- Read noise, gain, background subtraction.
    adu = (e_image + rng.normal(0.0, read_noise, size=e_image.shape).astype(np.float32)) / gain
    del e_image
    bad = np.zeros((size, size), dtype=bool)
    interp = np.zeros((size, size), dtype=bool)
    for k in np.nonzero(hot["masked"])[0]:
        bad[hot["y"][k], hot["x"][k]] = True
    for col in columns:
        if col["masked"]:
            bad[col["y0"] : col["y1"] + 1, col["x"]] = True
    no_data = np.zeros((size, size), dtype=bool)
    if dead is not None:
        no_data[dead] = True
    # Two passes as in the stack: a first background, a source mask over it, the final background.
    exclude = saturated | bad | no_data | (cr_charge > 0)
    first = estimate_background(adu, params.background_cell, exclude=exclude)
    exclude |= _source_mask(adu - first, math.sqrt(sky_level + read_noise**2) / gain)
    background = estimate_background(adu, params.background_cell, exclude=exclude)
    adu -= background
    background_nJy = float(np.mean(background)) * gain * njy_per_e

    # --- Cosmic rays the processing found: masked and interpolated.
    cr_mask = np.zeros((size, size), dtype=bool)
    pixel_sigma = math.sqrt(sky_level + read_noise**2)
    for row in cr_rows:
        long_track = row["length"] > 20.0
        p = params.long_cosmic_ray_detect_fraction if long_track else params.cosmic_ray_detect_fraction
        row["masked"] = bool(rng.uniform() < p)
        if row["masked"] and len(row["footprint"]):
            fy, fx = row["footprint"][:, 0], row["footprint"][:, 1]
            strong = cr_charge[fy, fx] > 2.0 * pixel_sigma
            cr_mask[fy[strong], fx[strong]] = True
    if cr_mask.any():
        from scipy.ndimage import binary_dilation

        cr_mask = binary_dilation(cr_mask) & ~no_data
    repair = (bad | cr_mask) & ~no_data
    if repair.any():
        adu = _interpolate_over(adu, repair)
        interp |= repair
    adu[no_data] = 0.0

    nJy_per_adu = gain * njy_per_e
    image = (adu * nJy_per_adu).astype(np.float32)
    variance = ((np.maximum(expected, 0.0) + read_noise**2) * njy_per_e**2).astype(np.float32)
    variance[no_data] = np.nan
    model = (model_e * njy_per_e).astype(np.float32)

    # --- Truth for artefacts.
    for row in cr_rows:
        ra_dec = wcs.pixel_to_world(0.5 * (row["x0"] + row["x1"]), 0.5 * (row["y0"] + row["y1"]))
        truth_rows.append(
            {
                "type": "cosmic_ray",
                "ra": ra_dec.ra.deg,
                "dec": ra_dec.dec.deg,
                "x": 0.5 * (row["x0"] + row["x1"]),
                "y": 0.5 * (row["y0"] + row["y1"]),
                "x_start": row["x0"],
                "y_start": row["y0"],
                "x_end": row["x1"],
                "y_end": row["y1"],
                "length": row["length"],
                "flux": row["charge"] * njy_per_e,
                "masked": row["masked"],
                "subtype": row["kind"],
            }
        )
    for k in range(len(hot["x"])):
        ra_dec = wcs.pixel_to_world(float(hot["x"][k]), float(hot["y"][k]))
        truth_rows.append(
            {
                "type": "hot_pixel",
                "ra": ra_dec.ra.deg,
                "dec": ra_dec.dec.deg,
                "x": float(hot["x"][k]),
                "y": float(hot["y"][k]),
                "flux": float(hot["charge"][k]) * njy_per_e,
                "masked": bool(hot["masked"][k]),
            }
        )
    for col in columns:
        ra_dec = wcs.pixel_to_world(float(col["x"]), 0.5 * (col["y0"] + col["y1"]))
        truth_rows.append(
            {
                "type": "bad_column",
                "ra": ra_dec.ra.deg,
                "dec": ra_dec.dec.deg,
                "x": float(col["x"]),
                "y": 0.5 * (col["y0"] + col["y1"]),
                "x_start": float(col["x"]),
                "y_start": float(col["y0"]),
                "x_end": float(col["x"]),
                "y_end": float(col["y1"]),
                "length": float(col["y1"] - col["y0"] + 1),
                "flux": col["charge"] * njy_per_e,
                "masked": col["masked"],
            }
        )

    truth = _truth_table(truth_rows, size)
    if len(truth):
        sx = np.round(truth["x"]).astype(int)
        sy = np.round(truth["y"]).astype(int)
        inside = (sx >= 0) & (sx < size) & (sy >= 0) & (sy < size)
        sat_hit = np.zeros(len(truth), dtype=bool)
        sat_hit[inside] = saturated[sy[inside], sx[inside]]
        truth["saturated"] = sat_hit & (truth["type"] == "star")
        truth["on_detector"] = inside

    masks = {
        "SATURATED": saturated,
        "SUSPECT": suspect,
        "BAD": bad,
        "COSMIC_RAY": cr_mask,
        "INTERPOLATED": interp,
        "NO_DATA": no_data,
    }
    summary = _summary_stats(
        wcs,
        size,
        sigma_model,
        truth_rows,
        expTime=exptime,
        zeroPoint=31.4 + 2.5 * math.log10(1.0 / nJy_per_adu),
        skyBg=float(np.mean(sky_e)) / gain,
        skyNoise=math.sqrt(sky_level + read_noise**2) / gain,
        meanVar=float(np.nanmean(variance)) / nJy_per_adu**2,
    )
    return SimulatedDetector(
        image=image,
        variance=variance,
        masks=masks,
        model=model,
        truth=truth,
        wcs=wcs,
        psf_sigma_true=sigma_true,
        psf_sigma_model=sigma_model,
        nJy_per_adu=nJy_per_adu,
        background_nJy=background_nJy,
        summary=summary,
    )


def _summary_stats(wcs, size: int, sigma_model: float, truth_rows: list[dict], **values) -> dict:
    """Summary statistics of a simulated image: PSF, pointing and corners, PSF stars, plus ``values``."""
    corners = wcs.wcs_pix2world(
        np.array([0, size - 1, size - 1, 0.0]), np.array([0, 0, size - 1, size - 1.0]), 0
    )
    centre = wcs.pixel_to_world(size / 2.0, size / 2.0)
    summary = {
        "psfSigma": sigma_model,
        "psfArea": 4.0 * math.pi * sigma_model**2,
        "ra": float(centre.ra.deg),
        "dec": float(centre.dec.deg),
        "pixelScale": PIXEL_SCALE_ARCSEC,
        "raCorners": tuple(float(v) for v in corners[0]),
        "decCorners": tuple(float(v) for v in corners[1]),
        "nPsfStar": int(sum(1 for r in truth_rows if r["type"] == "star" and 17 < r["mag"] < 21)),
    }
    summary.update(values)
    return summary


def simulate_template(
    conditions: dict,
    detector: int,
    stars,
    *,
    params: SceneParameters | None = None,
    template: TemplateParameters | None = None,
    catalog_mag_limit: float | None = None,
) -> SimulatedDetector:
    """Simulate the template of one detector of one visit: the static sky, deep and sharp.

    Parameters
    ----------
    conditions : `dict`
        Conditions of the visit the template is warped to.
    detector : `int`
        Detector ID.
    stars : `astropy.table.Table`
        Star catalog (as for `simulate_detector`).
    params : `SceneParameters`, optional
        Physical recipe; must be the visit's for the two to show one sky.
    template : `TemplateParameters`, optional
        How the template differs from the visit.
    catalog_mag_limit : `float`, optional
        Faint limit (G) of the catalog.

    Returns
    -------
    result : `SimulatedDetector`
        The template on the visit's pixel grid, in the visit's nJy, with
        its own PSF (``psf_sigma_true``, ``psf_sigma_model``) and a
        variance plane; ``truth`` lists its stars and galaxies.
    """
    import astropy.time

    from .survey import sky_electrons_per_pixel

    params = params or SceneParameters()
    template = template or TemplateParameters()
    size = int(conditions["size"])
    rng = np.random.default_rng([int(conditions["seed"]), detector, 71])
    wcs = detector_wcs(
        conditions["boresight_ra"], conditions["boresight_dec"], conditions["rotation_deg"], detector, size
    )
    njy_per_e = conditions["nJy_per_electron"]
    sky_level = sky_electrons_per_pixel(
        conditions["sky_mag"], conditions["band"], conditions["exposure_time"], conditions["airmass"]
    )
    sky_var = sky_level + conditions["read_noise"] ** 2
    coadd = dict(conditions, seeing_fwhm_arcsec=template.fwhm_arcsec, psf_g1=0.0, psf_g2=0.0)
    psf = make_true_psf(coadd)
    sigma_true = psf_moment_sigma(psf)
    sigma_model = sigma_true * (1.0 + rng.normal(0.0, template.psf_model_sigma_rms))
    offset = tuple(rng.normal(0.0, template.registration_rms_px, size=2))
    epoch = astropy.time.Time(conditions["datetime_begin"], scale="tai").jyear + template.epoch_offset_years
    survey_seed, visit_seed = int(conditions["survey_seed"]), int(conditions["seed"])

    def mean_over_visit(key: int) -> float:
        """The template's flux of a star over the visit's: 1 unless the star is variable."""
        if np.random.default_rng([survey_seed, 5, key % 2**62]).uniform() >= template.variable_fraction:
            return 1.0
        delta_mag = np.random.default_rng([visit_seed, 6, key % 2**62]).normal(0.0, template.variable_rms_mag)
        return float(10.0 ** (0.4 * delta_mag))

    model_e, truth_rows, _ = render_static_sky(
        conditions,
        stars,
        psf,
        wcs,
        params=params,
        catalog_mag_limit=catalog_mag_limit,
        epoch=epoch,
        point_source_area=4.0 * math.pi * sigma_true**2,
        sky_variance=sky_var / template.depth,
        stamp_fwhm_px=max(conditions["seeing_fwhm_arcsec"], template.fwhm_arcsec) / PIXEL_SCALE_ARCSEC,
        offset=offset,
        star_flux_factor=mean_over_visit if template.variable_fraction > 0 else None,
    )
    variance_e = (sky_var + np.maximum(model_e, 0.0)) / template.depth
    noisy = model_e + rng.standard_normal(model_e.shape, dtype=np.float32) * np.sqrt(variance_e)
    nJy_per_adu = conditions["gain"] * njy_per_e
    summary = _summary_stats(
        wcs,
        size,
        sigma_model,
        truth_rows,
        expTime=conditions["exposure_time"] * template.depth,
        zeroPoint=31.4 + 2.5 * math.log10(1.0 / nJy_per_adu),
        skyBg=0.0,
        skyNoise=math.sqrt(sky_var / template.depth) / conditions["gain"],
        meanVar=float(np.mean(variance_e)) / conditions["gain"] ** 2,
    )
    truth = _truth_table(truth_rows, size)
    return SimulatedDetector(
        image=(noisy * njy_per_e).astype(np.float32),
        variance=(variance_e * njy_per_e**2).astype(np.float32),
        masks={},
        model=(model_e * njy_per_e).astype(np.float32),
        truth=truth,
        wcs=wcs,
        psf_sigma_true=sigma_true,
        psf_sigma_model=sigma_model,
        nJy_per_adu=nJy_per_adu,
        background_nJy=0.0,
        summary=summary,
    )


_TRUTH_COLUMNS = {
    "truth_id": np.int64,
    "type": "U20",
    "subtype": "U10",
    "ra": float,
    "dec": float,
    "x": float,
    "y": float,
    "mag": float,
    "flux": float,
    "nu_psf": float,
    "catalog_id": np.int64,
    "in_catalog": bool,
    "sersic_n": float,
    "half_light_radius": float,
    "ellipticity": float,
    "position_angle": float,
    "x_start": float,
    "y_start": float,
    "x_end": float,
    "y_end": float,
    "length": float,
    "width": float,
    "masked": bool,
}

_TRUTH_UNITS = {
    "ra": "deg",
    "dec": "deg",
    "x": "pix",
    "y": "pix",
    "mag": "mag",
    "flux": "nJy",
    "half_light_radius": "arcsec",
    "position_angle": "deg",
    "x_start": "pix",
    "y_start": "pix",
    "x_end": "pix",
    "y_end": "pix",
    "length": "pix",
}


def _truth_table(rows: list[dict], size: int):
    """Assemble truth rows into a table with a fixed schema."""
    from astropy.table import Table

    data = {}
    for name, dtype in _TRUTH_COLUMNS.items():
        if name == "truth_id":
            data[name] = np.arange(len(rows), dtype=np.int64)
            continue
        if dtype is float:
            fill = np.nan
        elif dtype is bool:
            fill = False
        elif dtype is np.int64:
            fill = -1
        else:
            fill = ""
        data[name] = np.array([r.get(name, fill) for r in rows], dtype=dtype) if rows else np.zeros(0, dtype)
    table = Table(data)
    for name, unit in _TRUTH_UNITS.items():
        table[name].unit = unit
    table.meta["size"] = size
    return table
