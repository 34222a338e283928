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

"""Trail injection catalogs in the schema of ``lsst.source.injection``.

Conventions, shared with source_injection's ``Trail`` source type:

- ``x``, ``y``: trail centre in pixels, relative to the image origin;
  ``ra``, ``dec``: the same point on the sky (degrees).
- ``trail_length``: pixels; ``beta``: degrees counter-clockwise from +x
  towards +y in pixel coordinates.
- ``mag``: AB magnitude **per pixel of trail length**; ``total_mag`` is the
  magnitude of the whole trail, ``total_mag = mag - 2.5 log10(trail_length)``.

The SNR of a trail is quoted two ways (closed forms for a Gaussian PSF of
width ``psf_sigma`` on white noise of ``noise_sigma`` per pixel):

- ``nu_det``: the peak SNR of a PSF matched filter, what a 5-sigma
  point-source detection sees;
- ``nu_opt``: the SNR of the optimal (trail-shaped) matched filter.
"""

from __future__ import annotations

__all__ = (
    "CATALOG_COLUMNS",
    "INJECTION_FLAGS",
    "TrailCatalogError",
    "flux_for_nu_det",
    "generate_trail_catalog",
    "nu_det_closed_form",
    "nu_opt_closed_form",
    "validate_trail_catalog",
)

import math
from collections.abc import Callable

import numpy as np
from scipy.special import erf

NJY_ZEROPOINT = 31.4

INJECTION_FLAGS = {
    "MAG_BAD": 0,
    "TYPE_UNKNOWN": 1,
    "SERSIC_EXTREME": 2,
    "NO_OVERLAP": 3,
    "FFT_SIZE_ERROR": 4,
    "PSF_COMPUTE_ERROR": 5,
}
"""Bits of ``injection_flag``, numbered as in ``lsst.source.injection``."""

CATALOG_COLUMNS = {
    "injection_id": (np.int64, None),
    "ra": (np.float64, "deg"),
    "dec": (np.float64, "deg"),
    "x": (np.float64, "pix"),
    "y": (np.float64, "pix"),
    "source_type": ("U8", None),
    "mag": (np.float64, "mag"),
    "trail_length": (np.float64, "pix"),
    "beta": (np.float64, "deg"),
    "total_mag": (np.float64, "mag"),
    "flux": (np.float64, "nJy"),
    "x_start": (np.float64, "pix"),
    "y_start": (np.float64, "pix"),
    "x_end": (np.float64, "pix"),
    "y_end": (np.float64, "pix"),
    "ra_start": (np.float64, "deg"),
    "dec_start": (np.float64, "deg"),
    "ra_end": (np.float64, "deg"),
    "dec_end": (np.float64, "deg"),
    "target_nu_det": (np.float64, None),
    "visit": (np.int64, None),
    "detector": (np.int64, None),
}
"""Columns of ``trail_injection_catalog``, with dtypes and units."""


class TrailCatalogError(ValueError):
    """A trail injection catalog is missing a column or has nonsensical values."""


def nu_det_closed_form(flux, length, psf_sigma, noise_sigma):
    """Peak PSF-matched-filter SNR of a trail (Gaussian PSF, white noise).

    ``nu_det = (F / L) erf(L / (4 sigma_p)) / sigma``, which tends to the
    point-source SNR ``F / (sigma sqrt(4 pi) sigma_p)`` as ``L -> 0``.
    """
    flux, length = np.asarray(flux, dtype=float), np.asarray(length, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_px = np.where(
            length > 1e-6,
            erf(length / (4.0 * psf_sigma)) / np.maximum(length, 1e-300),
            1.0 / (2.0 * math.sqrt(math.pi) * psf_sigma),
        )
    return flux * per_px / noise_sigma


def flux_for_nu_det(nu_det, length, psf_sigma, noise_sigma):
    """Total flux that gives a trail the requested ``nu_det`` (inverse of `nu_det_closed_form`)."""
    return np.asarray(nu_det, dtype=float) / nu_det_closed_form(1.0, length, psf_sigma, noise_sigma)


def nu_opt_closed_form(flux, length, psf_sigma, noise_sigma):
    """Optimal matched-filter SNR of a trail (Gaussian PSF, white noise).

    ``nu_opt = (F / sigma) sqrt(K(L) / (4 pi sigma_p^2 L^2))`` with
    ``K(L) = 2 [L sqrt(pi) sigma_p erf(L / 2 sigma_p) - 2 sigma_p^2 (1 - exp(-L^2 / 4 sigma_p^2))]``.
    """
    flux, length = np.asarray(flux, dtype=float), np.asarray(length, dtype=float)
    s = psf_sigma
    k = 2.0 * (
        length * math.sqrt(math.pi) * s * erf(length / (2.0 * s))
        - 2.0 * s * s * (1 - np.exp(-(length**2) / (4 * s * s)))
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(
            length > 1e-3, k / (4.0 * math.pi * s * s * length**2), 1.0 / (4.0 * math.pi * s * s)
        )
    return flux / noise_sigma * np.sqrt(ratio)


def _local_noise(variance: np.ndarray, x: float, y: float, half: int = 32) -> float:
    """Median per-pixel noise in a box around a position."""
    h, w = variance.shape
    ix, iy = int(np.clip(round(x), 0, w - 1)), int(np.clip(round(y), 0, h - 1))
    box = variance[max(iy - half, 0) : iy + half + 1, max(ix - half, 0) : ix + half + 1]
    good = box[np.isfinite(box) & (box > 0)]
    if good.size == 0:
        good = variance[np.isfinite(variance) & (variance > 0)]
    return float(np.sqrt(np.median(good))) if good.size else float("nan")


def generate_trail_catalog(
    n_trails: int,
    variance: np.ndarray,
    psf_sigma: float,
    rng: np.random.Generator,
    *,
    pixel_to_sky: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    length_range: tuple[float, float] = (4.0, 120.0),
    beta_range: tuple[float, float] = (0.0, 180.0),
    brightness: str = "snr",
    nu_det_range: tuple[float, float] = (1.5, 30.0),
    total_mag_range: tuple[float, float] = (19.0, 25.0),
    avoid: np.ndarray | None = None,
    max_tries: int = 200,
    visit: int = -1,
    detector: int = -1,
    first_id: int = 0,
):
    """Draw a catalog of trails to inject into one image.

    Parameters
    ----------
    n_trails : `int`
        Number of trails.
    variance : `numpy.ndarray`
        Variance plane of the image (nJy^2); sets the noise that
        SNR-targeted brightnesses refer to, and the image size.
    psf_sigma : `float`
        Gaussian sigma of the image's PSF model (pixels).
    rng : `numpy.random.Generator`
        Random generator (seed it from the data ID for reproducibility).
    pixel_to_sky : callable, optional
        Maps 0-based pixel arrays ``(x, y)`` to ``(ra, dec)`` in degrees.
    length_range : `tuple`, optional
        Trail lengths, drawn log-uniform (pixels).
    beta_range : `tuple`, optional
        Angles, drawn uniform (degrees counter-clockwise from +x).
    brightness : `str`, optional
        ``snr``: log-uniform in ``nu_det`` over ``nu_det_range``;
        ``mag``: uniform in total magnitude over ``total_mag_range``.
    avoid : `numpy.ndarray`, optional
        Boolean array of pixels (e.g. DETECTED) that trails must not cross;
        positions are redrawn up to ``max_tries`` times.
    visit, detector, first_id : `int`, optional
        Data ID recorded in the catalog and the first ``injection_id``.

    Returns
    -------
    catalog : `astropy.table.Table`
        Columns `CATALOG_COLUMNS`.
    """
    from astropy.table import Table

    from ..geometry import segment_distance

    if n_trails < 0:
        raise ValueError(f"n_trails must be >= 0, not {n_trails}.")
    if not 0 < length_range[0] <= length_range[1]:
        raise ValueError(f"length_range {length_range} must be positive and increasing.")
    if brightness not in ("snr", "mag"):
        raise ValueError(f"brightness must be 'snr' or 'mag', not {brightness!r}.")
    height, width = variance.shape
    rows = []
    for k in range(n_trails):
        length = float(math.exp(rng.uniform(math.log(length_range[0]), math.log(length_range[1]))))
        beta = float(rng.uniform(*beta_range))
        ux, uy = math.cos(math.radians(beta)), math.sin(math.radians(beta))
        for _ in range(max_tries):
            x, y = float(rng.uniform(-0.5, width - 0.5)), float(rng.uniform(-0.5, height - 0.5))
            if avoid is None:
                break
            # Test the pixels within 2 px of the segment.
            half = 0.5 * length + 3
            x_lo, x_hi = max(int(x - half), 0), min(int(x + half) + 1, width)
            y_lo, y_hi = max(int(y - half), 0), min(int(y + half) + 1, height)
            yy, xx = np.mgrid[y_lo:y_hi, x_lo:x_hi]
            near = (
                segment_distance(
                    xx,
                    yy,
                    x - 0.5 * length * ux,
                    y - 0.5 * length * uy,
                    x + 0.5 * length * ux,
                    y + 0.5 * length * uy,
                )
                < 2.0
            )
            if not avoid[y_lo:y_hi, x_lo:x_hi][near].any():
                break
        noise = _local_noise(variance, x, y)
        if brightness == "snr":
            target = float(math.exp(rng.uniform(math.log(nu_det_range[0]), math.log(nu_det_range[1]))))
            flux = float(flux_for_nu_det(target, length, psf_sigma, noise))
        else:
            target = float("nan")
            flux = 10.0 ** (-0.4 * (float(rng.uniform(*total_mag_range)) - NJY_ZEROPOINT))
        total_mag = NJY_ZEROPOINT - 2.5 * math.log10(flux)
        rows.append(
            {
                "injection_id": first_id + k,
                "x": x,
                "y": y,
                "source_type": "Trail",
                "mag": total_mag + 2.5 * math.log10(length),
                "trail_length": length,
                "beta": beta,
                "total_mag": total_mag,
                "flux": flux,
                "x_start": x - 0.5 * length * ux,
                "y_start": y - 0.5 * length * uy,
                "x_end": x + 0.5 * length * ux,
                "y_end": y + 0.5 * length * uy,
                "target_nu_det": target,
                "visit": visit,
                "detector": detector,
            }
        )
    table = Table(
        {
            name: np.array([r.get(name, np.nan) for r in rows], dtype=dtype)
            if rows
            else np.zeros(0, dtype=dtype)
            for name, (dtype, _) in CATALOG_COLUMNS.items()
        }
    )
    if rows and pixel_to_sky is not None:
        for suffix, xs, ys in (("", "x", "y"), ("_start", "x_start", "y_start"), ("_end", "x_end", "y_end")):
            ra, dec = pixel_to_sky(np.asarray(table[xs]), np.asarray(table[ys]))
            table["ra" + suffix] = ra
            table["dec" + suffix] = dec
    for name, (_, unit) in CATALOG_COLUMNS.items():
        if unit is not None:
            table[name].unit = unit
    return table


def validate_trail_catalog(table, name: str = "trail injection catalog") -> None:
    """Refuse a catalog that the trail renderer cannot use.

    Parameters
    ----------
    table : `astropy.table.Table`
        Catalog to check.
    name : `str`, optional
        How to call the catalog in messages.

    Raises
    ------
    TrailCatalogError
        Naming the first offending column: a required column is missing, or
        has values that are not finite or out of range, or ``source_type``
        is not ``Trail``.
    """
    columns = set(table.colnames)
    if not ({"x", "y"} <= columns or {"ra", "dec"} <= columns):
        raise TrailCatalogError(
            f"{name} has no position columns: it needs 'x' and 'y' (pixels) or 'ra' and 'dec' (degrees); "
            f"found {sorted(columns)}."
        )
    for column in ("mag", "trail_length", "beta"):
        if column not in columns:
            raise TrailCatalogError(f"{name} is missing the column {column!r}; found {sorted(columns)}.")
    if len(table) == 0:
        return
    checks = [("mag", lambda v: np.isfinite(v), "finite AB magnitudes per pixel of trail length")]
    checks.append(("trail_length", lambda v: np.isfinite(v) & (v > 0), "positive finite lengths in pixels"))
    checks.append(("beta", lambda v: np.isfinite(v), "finite angles in degrees"))
    for pos in ("x", "y", "ra", "dec"):
        if pos in columns and not ({"x", "y"} <= columns and pos in ("ra", "dec")):
            checks.append((pos, lambda v: np.isfinite(v), "finite coordinates"))
    for column, ok_fn, what in checks:
        try:
            values = np.asarray(table[column], dtype=float)
        except (TypeError, ValueError):
            raise TrailCatalogError(
                f"column {column!r} of {name} is not numeric (dtype {table[column].dtype})."
            ) from None
        bad = ~ok_fn(values)
        if bad.any():
            raise TrailCatalogError(
                f"column {column!r} of {name} must hold {what}; {int(bad.sum())} of {len(values)} rows "
                f"do not (first bad value {values[bad][0]!r})."
            )
    if "source_type" in columns:
        types = np.asarray(table["source_type"]).astype(str)
        bad = types != "Trail"
        if bad.any():
            raise TrailCatalogError(
                f"column 'source_type' of {name} must be 'Trail' for every row; "
                f"found {sorted(set(types[bad]))}."
            )
