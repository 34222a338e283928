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

"""Observing conditions of the embedded survey.

`plan_survey` draws, for every visit, a pointing, a time, a band, the seeing
and PSF shape, the sky brightness and the detector electronics. The result is
a plain dict per visit, stored in the Butler as ``visit_conditions`` so that
each simulation quantum is reproducible from it alone.
"""

from __future__ import annotations

__all__ = (
    "BAND_DARK_SKY",
    "BAND_ZEROPOINT_1E",
    "DEFAULT_FIELD",
    "EXPOSURE_TIME",
    "NJY_ZEROPOINT",
    "nJy_per_electron",
    "plan_survey",
    "sky_electrons_per_pixel",
)

import math

import numpy as np

from .camera import N_DETECTORS, PIXEL_SCALE_ARCSEC

NJY_ZEROPOINT = 31.4
"""AB magnitude of a 1 nJy source."""

EXPOSURE_TIME = 30.0
"""Visit exposure time (seconds), as an LSST 30 s visit."""

BAND_DARK_SKY = {"u": 22.99, "g": 22.26, "r": 21.20, "i": 20.48, "z": 19.60, "y": 18.61}
"""Dark-sky surface brightness at zenith (AB mag / arcsec^2), LSST throughput estimates."""

BAND_ZEROPOINT_1E = {"u": 26.52, "g": 28.51, "r": 28.36, "i": 28.17, "z": 27.78, "y": 26.82}
"""AB magnitude giving 1 electron per second through the LSST system in each band."""

DEFAULT_FIELD = (95.0, -25.0)
"""Default survey field (degrees): a low-latitude Rubin commissioning field, rich in stars."""


def nJy_per_electron(band: str, exposure_time: float, airmass: float = 1.0, extinction: float = 0.1) -> float:
    """Return the calibration from detected electrons to nJy.

    Parameters
    ----------
    band : `str`
        Band name.
    exposure_time : `float`
        Exposure time (seconds).
    airmass : `float`, optional
        Airmass of the observation.
    extinction : `float`, optional
        Atmospheric extinction per airmass beyond the zenith value (mag).
    """
    zp = BAND_ZEROPOINT_1E[band] + 2.5 * math.log10(exposure_time) - extinction * (airmass - 1.0)
    return 10.0 ** (-0.4 * (zp - NJY_ZEROPOINT))


def sky_electrons_per_pixel(sky_mag: float, band: str, exposure_time: float, airmass: float = 1.0) -> float:
    """Return the sky level in electrons per pixel for a surface brightness."""
    pixel_area = PIXEL_SCALE_ARCSEC**2
    sky_njy = pixel_area * 10.0 ** (-0.4 * (sky_mag - NJY_ZEROPOINT))
    return sky_njy / nJy_per_electron(band, exposure_time, airmass)


def plan_survey(
    n_visits: int,
    detectors: list[int] | int,
    size: int,
    seed: int,
    *,
    field: tuple[float, float] = DEFAULT_FIELD,
    bands: str = "r",
    dither_deg: float = 0.1,
    start: str = "2026-03-15T01:00:00",
) -> list[dict]:
    """Draw the conditions of every visit of a survey.

    Parameters
    ----------
    n_visits : `int`
        Number of visits.
    detectors : `list` [`int`] or `int`
        Detector IDs observed in every visit, or how many of the first ones.
    size : `int`
        Simulated image size per detector (pixels).
    seed : `int`
        Survey seed; every random draw of the survey derives from it.
    field : `tuple` [`float`, `float`], optional
        Field centre (ra, dec) in degrees.
    bands : `str`, optional
        Bands to cycle through, one character each.
    dither_deg : `float`, optional
        Largest offset of a pointing from the field centre (degrees).
    start : `str`, optional
        ISO time (TAI) of the first visit.

    Returns
    -------
    visits : `list` [`dict`]
        One JSON-serializable dict per visit (see the keys below).
    """
    if n_visits < 1:
        raise ValueError(f"n_visits must be at least 1, not {n_visits}.")
    if isinstance(detectors, int):
        if not 1 <= detectors <= N_DETECTORS:
            raise ValueError(f"number of detectors must be between 1 and {N_DETECTORS}, not {detectors}.")
        detectors = list(range(detectors))
    for band in bands:
        if band not in BAND_DARK_SKY:
            raise ValueError(f"unknown band {band!r}; SimCam has {''.join(BAND_DARK_SKY)}.")
    import astropy.time
    import astropy.units as u

    rng = np.random.default_rng([seed, 20260315])
    t0 = astropy.time.Time(start, scale="tai")
    visits = []
    for i in range(n_visits):
        visit_id = int(t0.strftime("%Y%m%d")) * 100000 + i + 1
        band = bands[i % len(bands)]
        # Pointing: uniform in a disc of dither_deg around the field centre.
        r = dither_deg * math.sqrt(rng.uniform())
        phi = rng.uniform(0, 2 * math.pi)
        dec = field[1] + r * math.sin(phi)
        ra = (field[0] + r * math.cos(phi) / max(math.cos(math.radians(dec)), 1e-6)) % 360.0
        # Seeing: log-normal around 0.8", kept within 0.5"-1.3" as LSST's site statistics.
        fwhm = float(np.clip(rng.lognormal(math.log(0.8), 0.25), 0.5, 1.3))
        profile = "kolmogorov" if rng.uniform() < 0.5 else "moffat"
        airmass = float(rng.uniform(1.0, 1.6))
        sky_mag = BAND_DARK_SKY[band] - float(rng.uniform(0.0, 1.2))  # moon and twilight
        begin = t0 + (i * 40.0) * u.s
        visits.append(
            {
                "visit": visit_id,
                "band": band,
                "physical_filter": f"{band}_sim",
                "detectors": list(detectors),
                "size": int(size),
                "survey_seed": int(seed),
                "seed": int(rng.integers(0, 2**31 - 1)),
                "boresight_ra": ra,
                "boresight_dec": dec,
                "rotation_deg": float(rng.uniform(0.0, 360.0)),
                "datetime_begin": begin.isot,
                "exposure_time": EXPOSURE_TIME,
                "airmass": airmass,
                "seeing_fwhm_arcsec": fwhm,
                "psf_profile": profile,
                "moffat_beta": float(rng.uniform(2.5, 4.5)),
                "psf_g1": float(rng.normal(0.0, 0.02)),
                "psf_g2": float(rng.normal(0.0, 0.02)),
                "psf_model_sigma_error": float(rng.normal(0.0, 0.03)),
                "sky_mag": sky_mag,
                "sky_gradient": float(rng.uniform(0.0, 0.04)),
                "sky_gradient_angle_deg": float(rng.uniform(0.0, 360.0)),
                "gain": 1.6,
                "read_noise": 6.0,
                "full_well": 1.2e5,
                "nJy_per_electron": nJy_per_electron(band, EXPOSURE_TIME, airmass),
                "satellite_rate": 0.15,
            }
        )
    return visits
