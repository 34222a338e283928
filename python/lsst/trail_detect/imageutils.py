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

"""Small accessors shared by tasks that read `lsst.images.VisitImage` objects."""

from __future__ import annotations

__all__ = (
    "PIXEL_X_COLUMNS",
    "PIXEL_Y_COLUMNS",
    "any_plane",
    "mask_planes",
    "pixel_to_sky_function",
    "psf_sigma",
    "shift_pixel_columns",
    "sky_to_pixel_function",
    "variance_with_missing",
)

import numpy as np


def pixel_to_sky_function(visit_image):
    """Return ``f(x, y) -> (ra, dec)`` in degrees for 0-based pixel arrays."""
    wcs = visit_image.sky_projection.as_astropy(visit_image.bbox)

    def pixel_to_sky(x, y):
        coords = wcs.pixel_to_world(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
        return np.asarray(coords.ra.deg), np.asarray(coords.dec.deg)

    return pixel_to_sky


def sky_to_pixel_function(visit_image):
    """Return ``f(ra, dec) -> (x, y)``, the inverse of `pixel_to_sky_function`."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    wcs = visit_image.sky_projection.as_astropy(visit_image.bbox)

    def sky_to_pixel(ra, dec):
        x, y = wcs.world_to_pixel(SkyCoord(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg))
        return np.asarray(x, dtype=float), np.asarray(y, dtype=float)

    return sky_to_pixel


def psf_sigma(visit_image) -> float:
    """Return the Gaussian sigma (pixels) of a visit image's PSF model.

    A Gaussian model gives its sigma; any other model falls back to the
    ``psfSigma`` summary statistic, as the stack records it.
    """
    try:
        psf = visit_image.psf
    except Exception as err:  # The reader keeps an unreadable PSF as an error raised on access.
        psf = err
    sigma = None if isinstance(psf, Exception) else getattr(psf, "sigma", None)
    if sigma is not None and np.isfinite(sigma) and sigma > 0:
        return float(sigma)
    stats = visit_image.summary_stats
    value = float(getattr(stats, "psfSigma", np.nan)) if stats is not None else np.nan
    if not np.isfinite(value) or value <= 0:
        problem = "no Gaussian PSF model"
        if isinstance(psf, Exception):
            problem = f"a PSF that could not be read ({psf})"
        raise ValueError(f"the visit image has {problem} and no usable psfSigma summary statistic.")
    return value


def mask_planes(visit_image) -> dict[str, np.ndarray]:
    """Return every mask plane of a visit image as boolean arrays."""
    return {name: visit_image.mask.get(name) for name in visit_image.mask.schema.names}


def variance_with_missing(visit_image, planes=("NO_DATA",)) -> np.ndarray:
    """A float32 copy of a visit image's variance with NaN where any of ``planes`` is set."""
    variance = np.array(visit_image.variance.array, dtype=np.float32)
    names = visit_image.mask.schema.names
    for name in planes:
        if name in names:
            variance[visit_image.mask.get(name)] = np.nan
    return variance


def any_plane(planes: dict[str, np.ndarray], names, shape: tuple[int, int]) -> np.ndarray:
    """Return the pixels set in any of the named planes (absent planes are ignored)."""
    out = np.zeros(shape, dtype=bool)
    for name in names:
        if name in planes:
            out |= planes[name]
    return out


#: Pixel-coordinate columns of the package's catalogs (trails, truth, sources).
PIXEL_X_COLUMNS = ("x", "x_start", "x_end", "x_start_clipped", "x_end_clipped", "slot_Centroid_x")
PIXEL_Y_COLUMNS = ("y", "y_start", "y_end", "y_start_clipped", "y_end_clipped", "slot_Centroid_y")


def shift_pixel_columns(table, dx: float, dy: float):
    """Return a copy of a catalog with ``dx`` and ``dy`` added to its pixel columns.

    Moves catalogs between an image's parent coordinates (those of Rubin
    catalogs) and 0-based array indices: pass ``-x0, -y0`` of the image's
    bounding box to go to array indices, ``x0, y0`` to come back. Columns a
    catalog lacks are skipped.
    """
    table = table.copy()
    for names, shift in ((PIXEL_X_COLUMNS, dx), (PIXEL_Y_COLUMNS, dy)):
        for name in names:
            if name in table.colnames:
                table[name] = table[name] + shift
    return table
