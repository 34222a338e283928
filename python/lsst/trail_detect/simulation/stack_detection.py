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

"""Stack-like PSF-matched-filter source detection and simple measurement.

This module is a lightweight, array-only stand-in for the LSST Science
Pipelines' single-visit source detection (``SourceDetectionTask``) followed
by a minimal deblend and a handful of measurement plugins.  It is used to
build ``Source``-like catalogues on the embedded simulated survey and as the
classical baseline that the trail-finding network must beat.

The algorithm follows the stack closely:

1. The calibrated image is correlated with a circular Gaussian PSF ``psi``
   (pixel-integrated, truncated at 4 sigma, normalized to unit sum) and the
   variance with ``psi**2``, which gives the exact signal-to-noise ratio of a
   PSF-fit flux at every pixel (`psf_filter_snr`).  ``BAD`` and ``NO_DATA``
   pixels, and pixels whose image or variance are not finite, are treated as
   missing.
2. The SNR map is thresholded at ``threshold`` (5 by default, positive only)
   away from an image border of width ``edge_width``; the above-threshold
   pixels are grown by a disc of radius ``grow_sigma * psf_sigma`` (the
   stack's ``nSigmaToGrow``) and the connected components of the grown mask
   are the footprints.  The grown mask is the ``DETECTED`` plane.
3. Every local maximum of the SNR map above threshold (with non-maximum
   suppression closer than ``min_peak_separation``) becomes one source row,
   i.e. a minimal deblend in which children share their parent's footprint
   and are measured on the undeblended image.
4. Each source is measured at its sub-pixel centroid: PSF-fit flux,
   12-pixel-radius aperture flux, a Gaussian-model extendedness and the
   stack's footprint and centre pixel flags.

Only plain `numpy` arrays go in and an `astropy.table.Table` comes out; the
Butler-facing ``PipelineTask`` wrapper lives elsewhere.
"""

from __future__ import annotations

__all__ = ["APERTURE_RADIUS", "detect_sources", "empty_source_table", "pixel_gaussian_1d", "psf_filter_snr"]

import math
from collections.abc import Callable, Mapping, Sequence

import astropy.units as u
import numpy as np
from astropy.table import Table
from photutils.geometry import circular_overlap_grid
from scipy import ndimage, special
from scipy.spatial import cKDTree

APERTURE_RADIUS = 12.0
"""Radius in pixels of the circular aperture reported as ``apFlux_12``."""

_KERNEL_TRUNCATE = 4.0
"""Truncation radius of the detection kernel, in units of the PSF sigma."""

_MIN_COVERAGE = 1.0e-3
"""Minimum fraction of the unmasked ``sum(psi**2)`` for a defined SNR."""

_WIDE_SIGMA_FACTOR = 2.0
"""Sigma of the extendedness Gaussian model, in PSF sigmas."""

_CHUNK = 1024
"""Number of sources measured at once (bounds the stamp-stack memory)."""

# Flag name -> mask plane names accepted for it.  The saturated entry is
# replaced by ``saturation_planes`` (plus the ``SAT`` alias) at call time.
_FLAG_PLANES: dict[str, tuple[str, ...]] = {
    "bad": ("BAD",),
    "cr": ("COSMIC_RAY", "CR"),
    "edge": ("DETECTION_EDGE", "EDGE"),
    "nodata": ("NO_DATA",),
    "saturated": ("SATURATED", "SAT"),
    "suspect": ("SUSPECT",),
    "interpolated": ("INTERPOLATED", "INTRP"),
}
_CENTER_FLAGS = ("saturated", "cr", "bad", "suspect")

# Output schema: (name, dtype, unit kind); unit kind is None, "pix", "deg"
# or "flux".
_SCHEMA: tuple[tuple[str, type, str | None], ...] = (
    ("sourceId", np.int64, None),
    ("parentSourceId", np.int64, None),
    ("x", np.float64, "pix"),
    ("y", np.float64, "pix"),
    ("xErr", np.float64, "pix"),
    ("yErr", np.float64, "pix"),
    ("coord_ra", np.float64, "deg"),
    ("coord_dec", np.float64, "deg"),
    ("psfFlux", np.float64, "flux"),
    ("psfFluxErr", np.float64, "flux"),
    ("psfFlux_snr", np.float64, None),
    ("apFlux_12", np.float64, "flux"),
    ("apFluxErr_12", np.float64, "flux"),
    ("extendedness", np.float64, None),
    ("footprintArea", np.int64, None),
    *((f"pixelFlags_{name}", np.bool_, None) for name in _FLAG_PLANES),
    *((f"pixelFlags_{name}Center", np.bool_, None) for name in _CENTER_FLAGS),
)


def pixel_gaussian_1d(offset: np.ndarray, sigma: float) -> np.ndarray:
    """Integrate a unit-flux 1-d Gaussian over unit pixels.

    Parameters
    ----------
    offset : `numpy.ndarray`
        Pixel centre minus Gaussian centre, in pixels.
    sigma : `float`
        Gaussian sigma in pixels.

    Returns
    -------
    values : `numpy.ndarray`
        Fraction of the flux falling in each pixel (sums to 1 over all pixels).
    """
    scale = math.sqrt(2.0) * sigma
    return 0.5 * (special.erf((offset + 0.5) / scale) - special.erf((offset - 0.5) / scale))


def _psf_kernel_1d(psf_sigma: float) -> np.ndarray:
    """Return the 1-d factor of the discrete detection kernel.

    Parameters
    ----------
    psf_sigma : `float`
        PSF sigma in pixels.

    Returns
    -------
    kernel : `numpy.ndarray`
        Pixel-integrated Gaussian sampled on ``[-R, R]`` with
        ``R = ceil(4 * psf_sigma)``, renormalized to unit sum so that the 2-d
        kernel ``outer(kernel, kernel)`` sums to one exactly.
    """
    radius = max(1, math.ceil(_KERNEL_TRUNCATE * psf_sigma))
    kernel = pixel_gaussian_1d(np.arange(-radius, radius + 1, dtype=float), psf_sigma)
    return kernel / kernel.sum()


def _separable_correlate(data: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate with ``outer(kernel, kernel)``, zero outside the array.

    Parameters
    ----------
    data : `numpy.ndarray`
        Finite 2-d array.
    kernel : `numpy.ndarray`
        Odd-length 1-d kernel.

    Returns
    -------
    result : `numpy.ndarray`
        Float32 array of the same shape.  `scipy.ndimage.correlate1d`
        accumulates each output pixel in double precision, so the only
        error is the final rounding to float32 (unlike an FFT, whose
        round-off leaks the dynamic range of the whole image everywhere).
    """
    rows = ndimage.correlate1d(data, kernel, axis=1, output=np.float32, mode="constant", cval=0.0)
    return ndimage.correlate1d(rows, kernel, axis=0, output=np.float32, mode="constant", cval=0.0)


class _FilterSums:
    """PSF-weighted sums behind the SNR and flux maps.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        Image and variance planes.
    psf_sigma : `float`
        PSF sigma in pixels.
    bad : `numpy.ndarray` or `None`
        Pixels to treat as missing.

    Notes
    -----
    Holds ``numerator = (w I) * psi``, ``denominator = (w V) * psi**2``
    (float32 maps, correlations accumulated in double) and the coverage
    ``norm = w * psi**2``, which is only materialized as a map when some
    pixels are missing (otherwise it is the separable product of two 1-d
    edge profiles).  ``good`` is the boolean map ``w``.
    """

    def __init__(self, image: np.ndarray, variance: np.ndarray, psf_sigma: float, bad: np.ndarray | None):
        image = np.asarray(image)
        variance = np.asarray(variance)
        if image.ndim != 2 or image.shape != variance.shape:
            raise ValueError(f"image {image.shape} and variance {variance.shape} must be 2-d of equal shape.")
        if not psf_sigma > 0:
            raise ValueError(f"psf_sigma must be positive, not {psf_sigma}.")
        self.shape = image.shape
        with np.errstate(invalid="ignore"):
            good = np.isfinite(image) & np.isfinite(variance) & (variance >= 0)
        if bad is not None:
            bad = np.asarray(bad, dtype=bool)
            if bad.shape != image.shape:
                raise ValueError(f"bad {bad.shape} must have the image shape {image.shape}.")
            good &= ~bad
        self.good = good
        kernel = _psf_kernel_1d(psf_sigma)
        kernel2 = kernel * kernel
        self.all_good = bool(good.all())
        if self.all_good:
            self.numerator = _separable_correlate(image, kernel)
            self.denominator = _separable_correlate(variance, kernel2)
            # Only the image border reduces the coverage: it is separable.
            self._norm_rows = ndimage.correlate1d(np.ones(image.shape[0]), kernel2, mode="constant")
            self._norm_cols = ndimage.correlate1d(np.ones(image.shape[1]), kernel2, mode="constant")
            self._norm = None
        else:
            self.numerator = _separable_correlate(np.where(good, image, 0), kernel)
            self.denominator = _separable_correlate(np.where(good, variance, 0), kernel2)
            self._norm = _separable_correlate(good.astype(np.float32), kernel2)
        self.min_norm = _MIN_COVERAGE * kernel2.sum() ** 2

    def norm_map(self) -> np.ndarray:
        """Return the coverage map ``sum(w psi**2)``."""
        if self._norm is None:
            return np.outer(self._norm_rows, self._norm_cols)
        return self._norm

    def covered(self) -> np.ndarray:
        """Return the boolean map of pixels with enough coverage."""
        if self._norm is None:
            return np.outer(self._norm_rows > 0, self._norm_cols > 0) & (self.norm_map() > self.min_norm)
        return self._norm > self.min_norm

    def snr32(self) -> np.ndarray:
        """Return the SNR map as float32 (zero where undefined)."""
        snr = np.zeros(self.shape, dtype=np.float32)
        valid = self.denominator > 0
        if self._norm is not None:
            valid &= self._norm > self.min_norm
        np.divide(self.numerator, np.sqrt(np.maximum(self.denominator, 0)), out=snr, where=valid)
        return snr

    def filtered_at(self, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
        """Return the PSF-fit flux at pixels ``(iy, ix)``, NaN if uncovered.

        Parameters
        ----------
        iy, ix : `numpy.ndarray`
            Integer pixel positions inside the image.

        Returns
        -------
        flux : `numpy.ndarray`
            Float64 PSF-fit fluxes.
        """
        if self._norm is None:
            norm = self._norm_rows[iy] * self._norm_cols[ix]
        else:
            norm = self._norm[iy, ix].astype(np.float64)
        flux = np.full(np.shape(iy), np.nan)
        np.divide(self.numerator[iy, ix], norm, out=flux, where=norm > self.min_norm)
        return flux


def psf_filter_snr(
    image: np.ndarray,
    variance: np.ndarray,
    psf_sigma: float,
    *,
    bad: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Correlate an image with its PSF; return PSF-fit SNR and flux maps.

    For a circular Gaussian PSF ``psi`` centred on each pixel, the linear
    least-squares PSF flux with fixed centroid and its variance are::

        F = sum(w psi I) / sum(w psi**2)
        var(F) = sum(w psi**2 V) / sum(w psi**2)**2

    where ``w`` is 0 for missing pixels and 1 otherwise, so that
    ``snr = F / sqrt(var(F)) = sum(w psi I) / sqrt(sum(w psi**2 V))`` is the
    exact signal-to-noise ratio of that flux under the per-pixel variance.

    Parameters
    ----------
    image : `numpy.ndarray`
        Background-subtracted 2-d image.
    variance : `numpy.ndarray`
        Per-pixel variance, same shape as ``image``.
    psf_sigma : `float`
        Sigma of the circular Gaussian PSF, in pixels.
    bad : `numpy.ndarray`, optional
        Boolean array, true for pixels to treat as missing (zero weight in
        both sums).  Pixels whose image or variance are not finite, or whose
        variance is negative, are missing too.

    Returns
    -------
    snr : `numpy.ndarray`
        PSF-fit signal-to-noise ratio at each pixel (float64).  Zero where
        the PSF-weighted good-pixel coverage ``sum(w psi**2)`` is below
        1e-3 of its unmasked value or the filtered variance vanishes.
    filtered : `numpy.ndarray`
        PSF-fit flux ``F`` at each pixel (float64): the total flux, in image
        units summed over pixels, of a PSF centred there; NaN where the
        coverage is below 1e-3 of its unmasked value.

    Notes
    -----
    ``psi`` is the Gaussian integrated over each pixel, truncated at
    ``ceil(4 * psf_sigma)`` pixels and renormalized to unit sum over the
    truncated support.  Pixels outside the image count as missing.
    """
    sums = _FilterSums(image, variance, psf_sigma, bad)
    covered = sums.covered()
    snr = np.zeros(sums.shape)
    np.divide(
        sums.numerator,
        np.sqrt(np.maximum(sums.denominator, 0.0)),
        out=snr,
        where=covered & (sums.denominator > 0),
    )
    filtered = np.full(sums.shape, np.nan)
    np.divide(sums.numerator, sums.norm_map(), out=filtered, where=covered)
    return snr, filtered


def _dilate_disc(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation by the disc ``dx**2 + dy**2 <= radius**2``.

    Parameters
    ----------
    mask : `numpy.ndarray`
        2-d boolean array.
    radius : `float`
        Disc radius in pixels.

    Returns
    -------
    dilated : `numpy.ndarray`
        Boolean array; exact disc dilation done as 1-d running maxima per
        disc row (fast for any radius).
    """
    mask = np.asarray(mask, dtype=bool)
    reach = math.floor(radius + 1e-9) if radius > 0 else 0
    if reach == 0:
        return mask.copy()
    as_uint8 = mask.view(np.uint8)
    rows_by_half: dict[int, np.ndarray] = {}
    out = np.zeros_like(mask)
    n_rows = mask.shape[0]
    for dy in range(-reach, reach + 1):
        half = math.floor(math.sqrt(max(radius * radius - dy * dy, 0.0)) + 1e-9)
        if half not in rows_by_half:
            rows_by_half[half] = ndimage.maximum_filter1d(
                as_uint8, 2 * half + 1, axis=1, mode="constant"
            ).view(bool)
        shifted = rows_by_half[half]
        if abs(dy) >= n_rows:
            continue
        if dy > 0:
            out[dy:] |= shifted[:-dy]
        elif dy < 0:
            out[:dy] |= shifted[-dy:]
        else:
            out |= shifted
    return out


def _find_peaks(snr: np.ndarray, above: np.ndarray, separation: float) -> tuple[np.ndarray, np.ndarray]:
    """Find the significant local maxima of the SNR map.

    Parameters
    ----------
    snr : `numpy.ndarray`
        SNR map.
    above : `numpy.ndarray`
        Boolean array of pixels allowed to host a peak (above threshold and
        away from the border).
    separation : `float`
        A peak is dropped if a higher (or equal, earlier in raster order)
        peak lies within this Euclidean distance in pixels.

    Returns
    -------
    iy, ix : `numpy.ndarray`
        Integer row and column of each peak.
    """
    iy, ix = np.nonzero(above)
    if len(iy) == 0:
        return iy, ix
    values = snr[iy, ix]
    is_max = np.ones(len(iy), dtype=bool)
    n_rows, n_cols = snr.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            ny, nx = iy + dy, ix + dx
            inside = (ny >= 0) & (ny < n_rows) & (nx >= 0) & (nx < n_cols)
            neighbour = snr[np.clip(ny, 0, n_rows - 1), np.clip(nx, 0, n_cols - 1)]
            is_max &= ~inside | (values >= neighbour)
    iy, ix, values = iy[is_max], ix[is_max], values[is_max]
    if len(iy) > 1 and separation > 0:
        pairs = cKDTree(np.column_stack([iy, ix])).query_pairs(separation, output_type="ndarray")
        if len(pairs):
            first, second = pairs[:, 0], pairs[:, 1]
            first_wins = (values[first] > values[second]) | (
                (values[first] == values[second]) & (first < second)
            )
            keep = np.ones(len(iy), dtype=bool)
            keep[np.where(first_wins, second, first)] = False
            iy, ix = iy[keep], ix[keep]
    return iy, ix


def _quadratic_centroid(sums: _FilterSums, iy: np.ndarray, ix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel peak offsets from a quadratic fit to the 3x3 neighbourhood.

    Parameters
    ----------
    sums : `_FilterSums`
        PSF-filtered sums of the image.
    iy, ix : `numpy.ndarray`
        Integer peak positions.

    Returns
    -------
    dy, dx : `numpy.ndarray`
        Offsets of the fitted maximum from the peak pixel, clipped to
        ``[-1, 1]``.

    Notes
    -----
    A 6-parameter 2-d quadratic is least-squares fitted to the logarithm of
    the nine values when they are all positive (exact for a Gaussian peak,
    which the PSF-filtered image of a Gaussian star is to good accuracy),
    otherwise to the values themselves.  If the fitted surface has no
    maximum, each axis is fitted separately, and a non-concave axis gets a
    zero offset.
    """
    n_rows, n_cols = sums.shape
    grid_y, grid_x = np.mgrid[-1:2, -1:2]
    grid_y, grid_x = grid_y.ravel().astype(float), grid_x.ravel().astype(float)
    design = np.column_stack([np.ones(9), grid_x, grid_y, grid_x**2, grid_x * grid_y, grid_y**2])
    projector = np.linalg.pinv(design)
    values = sums.filtered_at(
        np.clip(iy[:, None] + grid_y.astype(int), 0, n_rows - 1),
        np.clip(ix[:, None] + grid_x.astype(int), 0, n_cols - 1),
    )
    finite = np.all(np.isfinite(values), axis=1)
    positive = finite & np.all(values > 0, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(positive[:, None], np.log(np.where(positive[:, None], values, 1.0)), values)
    values = np.where(finite[:, None], values, 0.0)
    coeff = values @ projector.T
    gx, gy, axx, axy, ayy = coeff[:, 1], coeff[:, 2], coeff[:, 3], coeff[:, 4], coeff[:, 5]
    det = 4.0 * axx * ayy - axy * axy
    concave = (axx < 0) & (det > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        dx = np.where(concave, (axy * gy - 2.0 * ayy * gx) / det, np.where(axx < 0, -gx / (2.0 * axx), 0.0))
        dy = np.where(concave, (axy * gx - 2.0 * axx * gy) / det, np.where(ayy < 0, -gy / (2.0 * ayy), 0.0))
    dx = np.clip(np.nan_to_num(dx), -1.0, 1.0)
    dy = np.clip(np.nan_to_num(dy), -1.0, 1.0)
    return dy, dx


def _separable_sum(stamps: np.ndarray, wy: np.ndarray, wx: np.ndarray) -> np.ndarray:
    """Return ``sum_ij stamps[n, i, j] * wy[n, i] * wx[n, j]`` for each ``n``.

    Parameters
    ----------
    stamps : `numpy.ndarray`
        Stack of stamps, shape ``(n, k, k)``.
    wy, wx : `numpy.ndarray`
        Row and column weights, shape ``(n, k)``.

    Returns
    -------
    sums : `numpy.ndarray`
        Weighted sums, shape ``(n,)``.
    """
    return np.einsum("ni,ni->n", np.matmul(stamps, wx[:, :, np.newaxis])[:, :, 0], wy)


def _measure(
    image: np.ndarray,
    variance: np.ndarray,
    good: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    iy: np.ndarray,
    ix: np.ndarray,
    psf_sigma: float,
) -> dict[str, np.ndarray]:
    """Measure PSF, aperture and extended-model fluxes at fixed centroids.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        Image and variance planes.
    good : `numpy.ndarray`
        Boolean array of usable pixels.
    y, x : `numpy.ndarray`
        Sub-pixel centroids (0-based, pixel centres at integers).
    iy, ix : `numpy.ndarray`
        Integer pixels the stamps are centred on.
    psf_sigma : `float`
        PSF sigma in pixels.

    Returns
    -------
    measurements : `dict` [`str`, `numpy.ndarray`]
        ``psfFlux``, ``psfFluxErr``, ``apFlux_12``, ``apFluxErr_12`` and
        ``modelFlux`` (the point-source-normalized wide-Gaussian flux).
    """
    wide_sigma = _WIDE_SIGMA_FACTOR * psf_sigma
    half = max(math.ceil(_KERNEL_TRUNCATE * wide_sigma) + 1, math.ceil(APERTURE_RADIUS + 2.0))
    size = 2 * half + 1
    offsets = np.arange(-half, half + 1)
    n_rows, n_cols = image.shape
    n_src = len(y)
    out = {key: np.full(n_src, np.nan) for key in ("psfFlux", "psfFluxErr", "apFlux_12", "apFluxErr_12")}
    out["modelFlux"] = np.full(n_src, np.nan)
    for start in range(0, n_src, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n_src))
        rows = iy[sl, None] + offsets
        cols = ix[sl, None] + offsets
        valid = ((rows >= 0) & (rows < n_rows))[:, :, None] & ((cols >= 0) & (cols < n_cols))[:, None, :]
        rows = np.clip(rows, 0, n_rows - 1)[:, :, None]
        cols = np.clip(cols, 0, n_cols - 1)[:, None, :]
        weight = valid & good[rows, cols]
        pix = np.where(weight, image[rows, cols].astype(np.float64), 0.0)
        var = np.where(weight, variance[rows, cols].astype(np.float64), 0.0)
        weight = weight.astype(np.float64)
        # Offsets of the stamp pixel centres from the centroid.
        off_x = offsets[None, :] - (x[sl] - ix[sl])[:, None]
        off_y = offsets[None, :] - (y[sl] - iy[sl])[:, None]
        psf_x, psf_y = pixel_gaussian_1d(off_x, psf_sigma), pixel_gaussian_1d(off_y, psf_sigma)
        wide_x, wide_y = pixel_gaussian_1d(off_x, wide_sigma), pixel_gaussian_1d(off_y, wide_sigma)
        psf_norm = _separable_sum(weight, psf_y**2, psf_x**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["psfFlux"][sl] = _separable_sum(pix, psf_y, psf_x) / psf_norm
            out["psfFluxErr"][sl] = np.sqrt(_separable_sum(var, psf_y**2, psf_x**2)) / psf_norm
            # Wide-Gaussian amplitude scaled so that a point source gives
            # its flux:
            # sum(w g I) / sum(w g psi) with g the wide Gaussian.
            out["modelFlux"][sl] = _separable_sum(pix, wide_y, wide_x) / _separable_sum(
                weight, wide_y * psf_y, wide_x * psf_x
            )
        aperture = np.empty((sl.stop - sl.start, size, size))
        for k, (cy, cx) in enumerate(zip(y[sl] - iy[sl], x[sl] - ix[sl])):
            aperture[k] = circular_overlap_grid(
                -half - 0.5 - cx,
                half + 0.5 - cx,
                -half - 0.5 - cy,
                half + 0.5 - cy,
                size,
                size,
                APERTURE_RADIUS,
                1,
                1,
            )
        out["apFlux_12"][sl] = np.einsum("nij,nij->n", aperture, pix)
        out["apFluxErr_12"][sl] = np.sqrt(np.einsum("nij,nij->n", aperture**2, var))
    return out


def _build_table(columns: Mapping[str, np.ndarray], flux_unit: u.UnitBase | None) -> Table:
    """Assemble the output table in schema order with dtypes and units.

    Parameters
    ----------
    columns : `~collections.abc.Mapping` [`str`, `numpy.ndarray`]
        Column values by name; every schema column must be present.
    flux_unit : `astropy.units.UnitBase` or `None`
        Unit of the flux columns.

    Returns
    -------
    table : `astropy.table.Table`
        The source table.
    """
    units = {"pix": u.pix, "deg": u.deg, "flux": flux_unit, None: None}
    table = Table()
    for name, dtype, unit in _SCHEMA:
        table[name] = np.asarray(columns[name], dtype=dtype)
        table[name].unit = units[unit]
    return table


def empty_source_table(flux_unit: u.UnitBase | str | None = None) -> Table:
    """Return a zero-row source table with the full `detect_sources` schema.

    Parameters
    ----------
    flux_unit : `astropy.units.UnitBase`, `str` or `None`, optional
        Unit of the flux columns.

    Returns
    -------
    table : `astropy.table.Table`
        Empty table with every column, dtype and unit.
    """
    flux_unit = u.Unit(flux_unit) if flux_unit is not None else None
    return _build_table({name: np.zeros(0, dtype=dtype) for name, dtype, _ in _SCHEMA}, flux_unit)


def _union_planes(
    mask_planes: Mapping[str, np.ndarray], names: Sequence[str], shape: tuple[int, int]
) -> np.ndarray | None:
    """Return the union of the named planes present, or `None` if none is.

    Parameters
    ----------
    mask_planes : `~collections.abc.Mapping` [`str`, `numpy.ndarray`]
        Boolean planes by name.
    names : `~collections.abc.Sequence` [`str`]
        Names to combine.
    shape : `tuple` [`int`, `int`]
        Required plane shape.

    Returns
    -------
    union : `numpy.ndarray` or `None`
        Union of the planes found.
    """
    union = None
    for name in names:
        plane = mask_planes.get(name)
        if plane is None:
            continue
        plane = np.asarray(plane, dtype=bool)
        if plane.shape != shape:
            raise ValueError(f"Mask plane {name} has shape {plane.shape}, not the image shape {shape}.")
        union = plane.copy() if union is None else union | plane
    return union


def _stellar_locus(ratio: np.ndarray, snr: np.ndarray, min_snr: float = 30.0, min_count: int = 5) -> float:
    """Return the psf/model flux ratio of point sources in an image.

    Point sources have the highest ratios; the locus is the median of the
    upper 40% of ratios among sources above ``min_snr``, or 1 when there are
    fewer than ``min_count`` of them.
    """
    good = np.isfinite(ratio) & np.isfinite(snr) & (snr > min_snr)
    if good.sum() < min_count:
        return 1.0
    r = ratio[good]
    return float(np.median(r[r >= np.percentile(r, 60.0)]))


def detect_sources(
    image: np.ndarray,
    variance: np.ndarray,
    psf_sigma: float,
    *,
    mask_planes: Mapping[str, np.ndarray] | None = None,
    threshold: float = 5.0,
    grow_sigma: float = 2.4,
    min_peak_separation: float | None = None,
    edge_width: int | None = None,
    pixel_to_sky: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    saturation_planes: Sequence[str] = ("SATURATED",),
    flux_unit: u.UnitBase | str | None = None,
    exclude_planes: Sequence[str] = ("BAD", "NO_DATA"),
    extendedness_ratio: float = 0.985,
    calibrate_extendedness: bool = True,
) -> tuple[Table, np.ndarray]:
    """Detect and measure point-like and extended sources like the LSST stack.

    Parameters
    ----------
    image : `numpy.ndarray`
        Calibrated, background-subtracted 2-d image (any float dtype).
    variance : `numpy.ndarray`
        Per-pixel variance of ``image``.
    psf_sigma : `float`
        Sigma of the circular Gaussian PSF, in pixels.
    mask_planes : `~collections.abc.Mapping` [`str`, `numpy.ndarray`], optional
        Boolean mask planes by name (``BAD``, ``SATURATED``/``SAT``,
        ``COSMIC_RAY``/``CR``, ``DETECTION_EDGE``/``EDGE``, ``NO_DATA``,
        ``SUSPECT``, ``INTERPOLATED``/``INTRP``); other names are ignored and
        missing planes give false flags.
    threshold : `float`, optional
        Detection threshold on the PSF-fit SNR map (positive sources only).
    grow_sigma : `float`, optional
        Footprints are grown by a disc of radius ``grow_sigma * psf_sigma``
        pixels (the stack's ``nSigmaToGrow``).
    min_peak_separation : `float`, optional
        Minimum distance in pixels between two peaks; the lower one is
        dropped.  Defaults to ``2 * psf_sigma``.
    edge_width : `int`, optional
        Width in pixels of the image border that can host neither a peak
        nor an above-threshold pixel (the stack's ``EDGE`` band).  Defaults
        to ``ceil(3 * psf_sigma)``.
    pixel_to_sky : callable, optional
        ``pixel_to_sky(x, y) -> (ra, dec)`` in degrees for arrays of 0-based
        pixel positions; without it ``coord_ra`` and ``coord_dec`` are NaN.
    saturation_planes : `~collections.abc.Sequence` [`str`], optional
        Planes whose union is reported as saturated (``SAT`` is accepted as
        an alias of ``SATURATED``).
    flux_unit : `astropy.units.UnitBase`, `str` or `None`, optional
        Unit of the image, attached to the flux columns (e.g. ``u.nJy``).
    exclude_planes : `~collections.abc.Sequence` [`str`], optional
        Planes whose pixels are treated as missing in detection and
        measurement.
    extendedness_ratio : `float`, optional
        A source is extended when ``psfFlux < extendedness_ratio *
        modelFlux``, the stack's ``fluxRatio``.
    calibrate_extendedness : `bool`, optional
        Divide the flux ratio by its value on the stellar locus, measured on
        the bright sources of the image, before comparing it with
        ``extendedness_ratio``, and lower the cut by ``1.5 / SNR`` for the
        noise of the ratio. This stands in for the stack's PSF model being
        fit to the stars: with an approximate PSF model, point sources do
        not have a ratio of exactly 1.

    Returns
    -------
    sources : `astropy.table.Table`
        One row per peak, ordered by footprint then by decreasing peak SNR,
        with the columns:

        ``sourceId``, ``parentSourceId``
            1-based row id and 1-based footprint id (all peaks of a
            footprint share it; it is not a ``sourceId``).
        ``x``, ``y``, ``xErr``, ``yErr``
            0-based array centroid (``x`` is the column, pixel centres at
            integers) from a quadratic fit to the 3x3 neighbourhood of the
            PSF-filtered image, and ``sqrt(2) * psf_sigma / psfFlux_snr``.
        ``coord_ra``, ``coord_dec``
            ``pixel_to_sky(x, y)`` in degrees.
        ``psfFlux``, ``psfFluxErr``, ``psfFlux_snr``
            Linear PSF-fit flux at fixed centroid, ``sum(w psi I) /
            sum(w psi**2)`` with error ``sqrt(sum(w psi**2 V)) /
            sum(w psi**2)``, where ``psi`` is the pixel-integrated unit-flux
            Gaussian centred exactly on ``(x, y)`` (not interpolated, not
            truncated-renormalized: summed over a stamp of half-width at
            least ``8 * psf_sigma``) and ``w`` is 0 on excluded pixels.
        ``apFlux_12``, ``apFluxErr_12``
            Sum of the image over a circle of radius 12 pixels centred on
            ``(x, y)`` with exact fractional pixel overlaps ``a``, and
            ``sqrt(sum(a**2 V))``; excluded pixels contribute nothing.
        ``extendedness``
            1.0 if ``psfFlux < extendedness_ratio * modelFlux`` else 0.0,
            where ``modelFlux = sum(w g I) / sum(w g psi)`` is the flux of a
            Gaussian ``g`` of sigma ``2 * psf_sigma`` fitted at the
            centroid, scaled so that a point source gives exactly its flux
            (the role aperture corrections play in the stack).
        ``footprintArea``
            Number of pixels of the (grown) parent footprint.
        ``pixelFlags_<flag>``
            Any pixel of the footprint is in the plane (``edge`` is also set
            when the footprint reaches the ``edge_width`` border).
        ``pixelFlags_<flag>Center``
            Any pixel of the 3x3 box around the peak pixel is in the plane.

    detected : `numpy.ndarray`
        Boolean ``DETECTED`` plane: the above-threshold pixels grown by
        ``grow_sigma * psf_sigma``.

    Notes
    -----
    The deblend is minimal: every peak is a row and all rows of a footprint
    are measured on the same undeblended pixels, so fluxes of blended
    neighbours are contaminated.  Like the stack's, extendedness is noisy at
    low SNR and assumes the PSF really is the given Gaussian.
    """
    image = np.asarray(image)
    variance = np.asarray(variance)
    shape = image.shape
    if image.ndim != 2 or variance.shape != shape:
        raise ValueError(f"image {image.shape} and variance {variance.shape} must be 2-d of equal shape.")
    if not psf_sigma > 0:
        raise ValueError(f"psf_sigma must be positive, not {psf_sigma}.")
    mask_planes = dict(mask_planes or {})
    flux_unit = u.Unit(flux_unit) if flux_unit is not None else None
    if min_peak_separation is None:
        min_peak_separation = 2.0 * psf_sigma
    if edge_width is None:
        edge_width = math.ceil(3.0 * psf_sigma)
    edge_width = max(int(edge_width), 0)

    excluded = _union_planes(mask_planes, exclude_planes, shape)
    sums = _FilterSums(image, variance, psf_sigma, excluded)
    snr = sums.snr32()

    interior = np.zeros(shape, dtype=bool)
    if 2 * edge_width < min(shape):
        interior[edge_width : shape[0] - edge_width, edge_width : shape[1] - edge_width] = True
    above = (snr >= threshold) & interior
    detected = _dilate_disc(above, grow_sigma * psf_sigma)
    iy, ix = _find_peaks(snr, above, min_peak_separation)
    if len(iy) == 0:
        return empty_source_table(flux_unit), detected

    labels, _ = ndimage.label(detected, structure=np.ones((3, 3), dtype=bool))
    n_footprints = int(labels.max())
    parent = labels[iy, ix].astype(np.int64)
    peak_snr = snr[iy, ix]
    order = np.lexsort((-peak_snr, parent))
    iy, ix, parent = iy[order], ix[order], parent[order]

    dy, dx = _quadratic_centroid(sums, iy, ix)
    y, x = iy + dy, ix + dx
    columns: dict[str, np.ndarray] = {
        "sourceId": np.arange(1, len(iy) + 1, dtype=np.int64),
        "parentSourceId": parent,
        "x": x,
        "y": y,
    }
    measured = _measure(image, variance, sums.good, y, x, iy, ix, psf_sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        flux_snr = measured["psfFlux"] / measured["psfFluxErr"]
        columns["xErr"] = columns["yErr"] = math.sqrt(2.0) * psf_sigma / flux_snr
    columns["psfFlux"], columns["psfFluxErr"] = measured["psfFlux"], measured["psfFluxErr"]
    columns["psfFlux_snr"] = flux_snr
    columns["apFlux_12"], columns["apFluxErr_12"] = measured["apFlux_12"], measured["apFluxErr_12"]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = measured["psfFlux"] / measured["modelFlux"]
    if calibrate_extendedness:
        locus = _stellar_locus(ratio, flux_snr)
        # Allow for the measurement noise of the ratio, which grows as the SNR falls.
        with np.errstate(invalid="ignore", divide="ignore"):
            cut = extendedness_ratio * locus - 1.5 / np.abs(flux_snr)
    else:
        locus = 1.0
        cut = extendedness_ratio
    with np.errstate(invalid="ignore"):
        extended = ratio < cut
    columns["extendedness"] = extended.astype(np.float64)
    if pixel_to_sky is not None:
        ra, dec = pixel_to_sky(x, y)
        columns["coord_ra"] = np.broadcast_to(np.asarray(ra, dtype=np.float64), x.shape)
        columns["coord_dec"] = np.broadcast_to(np.asarray(dec, dtype=np.float64), x.shape)
    else:
        columns["coord_ra"] = columns["coord_dec"] = np.full(len(x), np.nan)

    footprint_labels = labels[detected]
    columns["footprintArea"] = np.bincount(footprint_labels, minlength=n_footprints + 1)[parent]

    flag_planes = dict(_FLAG_PLANES)
    saturated = tuple(saturation_planes)
    flag_planes["saturated"] = saturated + (("SAT",) if "SATURATED" in saturated else ())
    n_rows, n_cols = shape
    box = [(oy, ox) for oy in (-1, 0, 1) for ox in (-1, 0, 1)]
    for flag, names in flag_planes.items():
        plane = _union_planes(mask_planes, names, shape)
        in_footprint = np.zeros(n_footprints + 1, dtype=bool)
        if plane is not None:
            in_footprint |= np.bincount(labels[plane & detected], minlength=n_footprints + 1) > 0
        if flag == "edge" and edge_width > 0:
            border = np.concatenate(
                [
                    labels[:edge_width].ravel(),
                    labels[n_rows - edge_width :].ravel(),
                    labels[:, :edge_width].ravel(),
                    labels[:, n_cols - edge_width :].ravel(),
                ]
            )
            in_footprint |= np.bincount(border, minlength=n_footprints + 1) > 0
        in_footprint[0] = False
        columns[f"pixelFlags_{flag}"] = in_footprint[parent]
        if flag in _CENTER_FLAGS:
            center = np.zeros(len(iy), dtype=bool)
            if plane is not None:
                for oy, ox in box:
                    center |= plane[np.clip(iy + oy, 0, n_rows - 1), np.clip(ix + ox, 0, n_cols - 1)]
            columns[f"pixelFlags_{flag}Center"] = center

    table = _build_table(columns, flux_unit)
    table.meta.update(
        {
            "psf_sigma": float(psf_sigma),
            "threshold": float(threshold),
            "grow_radius": float(grow_sigma * psf_sigma),
            "edge_width": edge_width,
            "min_peak_separation": float(min_peak_separation),
            "n_footprints": n_footprints,
            "stellar_locus_ratio": float(locus),
        }
    )
    return table, detected
