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

"""Rendering trails into images, with noise and truth.

A trail is a GalSim ``Box(L, 1e-6)`` rotated by ``beta`` with total flux
``F = 10**(-0.4 (mag - 31.4)) * L`` nJy (``mag`` per pixel of length, as in
``lsst.source.injection``), convolved with the PSF and drawn in pixel
units. With the image's PSF model (which already includes the pixel) it is
drawn with ``method="no_pixel"``; with a physical PSF profile the pixel
response is added by GalSim.

Noise is Poisson in electrons: with ``c`` nJy per electron, the image gains
``c * Poisson(model / c)`` and the variance ``c * model``.
"""

from __future__ import annotations

__all__ = (
    "InjectedTrails",
    "fit_nJy_per_electron",
    "inject_trails",
    "render_trail",
)

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from .catalog import INJECTION_FLAGS, NJY_ZEROPOINT


def render_trail(
    length: float,
    beta: float,
    flux: float,
    x: float,
    y: float,
    psf,
    *,
    psf_has_pixel: bool,
    max_fft_size: int = 16384,
):
    """Draw the noiseless model of one trail on a stamp.

    Parameters
    ----------
    length, beta, flux : `float`
        Trail length (pixels), angle (degrees counter-clockwise from +x) and
        total flux (image units).
    x, y : `float`
        Trail centre, 0-based pixel coordinates.
    psf : `galsim.GSObject`
        PSF in pixel units (scale 1).
    psf_has_pixel : `bool`
        Whether ``psf`` already includes the pixel response (a PSF model
        kernel), so that it is drawn without convolving by the pixel again.
    max_fft_size : `int`, optional
        GalSim's largest FFT.

    Returns
    -------
    stamp : `numpy.ndarray`
        The model (image units per pixel).
    x0, y0 : `int`
        Image coordinates of the stamp's first pixel.
    """
    import galsim

    gsparams = galsim.GSParams(maximum_fft_size=max_fft_size)
    line = galsim.Box(width=max(length, 1e-6), height=1e-6, flux=flux, gsparams=gsparams)
    line = line.rotate(beta * galsim.degrees)
    model = galsim.Convolve(line, psf, gsparams=gsparams)
    # A square stamp holding the segment plus the PSF: its half-size is half the length plus the PSF's
    # extent, as source_injection does with getGoodImageSize.
    psf_size = psf.getGoodImageSize(1.0)
    half = int(math.ceil(0.5 * length + 0.5 * psf_size)) + 2
    ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
    bounds = galsim.BoundsI(ix - half + 1, ix + half + 1, iy - half + 1, iy + half + 1)
    stamp = galsim.ImageD(bounds, scale=1.0)
    model.drawImage(
        image=stamp, center=galsim.PositionD(x + 1.0, y + 1.0), method="no_pixel" if psf_has_pixel else "auto"
    )
    return stamp.array, ix - half, iy - half


def fit_nJy_per_electron(image: np.ndarray, variance: np.ndarray, good: np.ndarray) -> float:
    """Measure the nJy per electron of a calibrated image from its variance.

    For shot noise, ``variance = a + c * image`` with ``c`` in nJy per
    electron; ``c`` is the slope of a straight-line fit of binned median
    variance against binned median image value (``lsst.source.injection``
    fits the same relation per amplifier).

    Raises
    ------
    ValueError
        If the fit gives no positive slope.
    """
    sel = good & np.isfinite(image) & np.isfinite(variance) & (variance > 0)
    img, var = image[sel], variance[sel]
    if img.size < 100:
        raise ValueError("too few good pixels to measure the gain from the variance plane.")
    edges = np.unique(np.percentile(img, np.linspace(1, 99.9, 40)))
    idx = np.digitize(img, edges)
    xs, ys = [], []
    for k in range(1, len(edges)):
        members = idx == k
        if members.sum() > 20:
            xs.append(np.median(img[members]))
            ys.append(np.median(var[members]))
    if len(xs) < 3:
        raise ValueError(
            "the image has too little dynamic range to measure the gain from the variance plane."
        )
    slope = np.polyfit(np.array(xs), np.array(ys), 1)[0]
    if not np.isfinite(slope) or slope <= 0:
        raise ValueError(f"the variance plane does not grow with the image (slope {slope:.3g}).")
    return float(slope)


@dataclasses.dataclass
class InjectedTrails:
    """Result of `inject_trails`.

    Attributes
    ----------
    image, variance : `numpy.ndarray`
        The image and variance with the trails added.
    model : `numpy.ndarray`
        Noiseless sum of all injected trails.
    injected, injected_core, trail_mask : `numpy.ndarray`
        Boolean planes: every stamp (INJECTED), 3x3 at each centre
        (INJECTED_CORE) and the truth pixels of the trails.
    catalog : `astropy.table.Table`
        The input catalog with the truth columns added.
    """

    image: np.ndarray
    variance: np.ndarray
    model: np.ndarray
    injected: np.ndarray
    injected_core: np.ndarray
    trail_mask: np.ndarray
    catalog: object


def inject_trails(
    image: np.ndarray,
    variance: np.ndarray,
    catalog,
    psf_at: Callable[[float, float], tuple[object, bool]],
    psf_sigma: float,
    *,
    nJy_per_electron: float,
    add_noise: bool = True,
    inject_variance: bool = True,
    seed: int = 0,
    mask_threshold: float = 0.2,
    trim_padding: float = 100.0,
    sky_to_pixel: Callable | None = None,
) -> InjectedTrails:
    """Inject a catalog of trails into an image.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        Calibrated image and its variance (not modified).
    catalog : `astropy.table.Table`
        Validated trail catalog (`~.catalog.validate_trail_catalog`); pixel
        positions from ``x``, ``y`` if present, else from ``ra``, ``dec``.
    psf_at : callable
        ``psf_at(x, y) -> (galsim profile in pixel units, includes_pixel)``.
    psf_sigma : `float`
        Gaussian sigma of the image's PSF model, for ``nu_det``.
    nJy_per_electron : `float`
        Conversion of image units to electrons for the shot noise.
    add_noise, inject_variance : `bool`, optional
        Add Poisson noise; add the trails' shot noise to the variance.
    seed : `int`, optional
        Noise seed; each trail uses ``(seed, injection_id)``.
    mask_threshold : `float`, optional
        A pixel belongs to ``trail_mask`` where the noiseless model exceeds
        this fraction of the local noise (square root of the variance).
    trim_padding : `float`, optional
        Rows centred further than this outside the image get NO_OVERLAP.
    sky_to_pixel : callable, optional
        ``(ra, dec) -> (x, y)``, used when the catalog has no ``x``, ``y``.

    Returns
    -------
    result : `InjectedTrails`
        The catalog gains ``injection_flag``, ``injection_draw_size``,
        ``flux_drawn`` (flux on the detector), ``nu_opt``, ``nu_det``,
        ``mask_pixels`` and the clipped endpoints ``x_start_clipped`` ...
    """
    from ..geometry import clip_segment
    from ..simulation.stack_detection import psf_filter_snr

    height, width = image.shape
    out_image = image.astype(np.float32, copy=True)
    out_var = variance.astype(np.float32, copy=True)
    model_sum = np.zeros(image.shape, dtype=np.float32)
    injected = np.zeros(image.shape, dtype=bool)
    core = np.zeros(image.shape, dtype=bool)
    trail_mask = np.zeros(image.shape, dtype=bool)
    table = catalog.copy()
    n = len(table)
    if {"x", "y"} <= set(table.colnames):
        xs, ys = np.asarray(table["x"], dtype=float), np.asarray(table["y"], dtype=float)
    elif sky_to_pixel is not None:
        xs, ys = sky_to_pixel(np.asarray(table["ra"], dtype=float), np.asarray(table["dec"], dtype=float))
        table["x"], table["y"] = xs, ys
    else:
        raise ValueError("the catalog has no x, y columns and no sky_to_pixel was given.")
    if "injection_id" not in table.colnames:
        table["injection_id"] = np.arange(n, dtype=np.int64)
    lengths = np.asarray(table["trail_length"], dtype=float)
    betas = np.asarray(table["beta"], dtype=float)
    fluxes = 10.0 ** (-0.4 * (np.asarray(table["mag"], dtype=float) - NJY_ZEROPOINT)) * lengths
    flags = np.zeros(n, dtype=np.int64)
    draw_size = np.zeros(n, dtype=np.int64)
    truth = {name: np.full(n, np.nan) for name in ("flux_drawn", "nu_opt", "nu_det")}
    clipped = {
        name: np.full(n, np.nan)
        for name in ("x_start_clipped", "y_start_clipped", "x_end_clipped", "y_end_clipped", "length_clipped")
    }
    mask_pixels = np.zeros(n, dtype=np.int64)
    base_var = np.where(np.isfinite(variance) & (variance > 0), variance, np.nan)
    for k in range(n):
        x, y, length, beta = xs[k], ys[k], lengths[k], betas[k]
        ux, uy = math.cos(math.radians(beta)), math.sin(math.radians(beta))
        seg = clip_segment(
            x - 0.5 * length * ux,
            y - 0.5 * length * uy,
            x + 0.5 * length * ux,
            y + 0.5 * length * uy,
            width,
            height,
        )
        outside = not (
            -trim_padding <= x <= width - 1 + trim_padding and -trim_padding <= y <= height - 1 + trim_padding
        )
        try:
            psf, has_pixel = psf_at(float(np.clip(x, 0, width - 1)), float(np.clip(y, 0, height - 1)))
        except Exception:
            flags[k] |= 1 << INJECTION_FLAGS["PSF_COMPUTE_ERROR"]
            continue
        try:
            stamp, x0, y0 = render_trail(length, beta, fluxes[k], x, y, psf, psf_has_pixel=has_pixel)
        except Exception as err:
            if type(err).__name__ == "GalSimFFTSizeError":
                flags[k] |= 1 << INJECTION_FLAGS["FFT_SIZE_ERROR"]
                continue
            raise
        draw_size[k] = stamp.shape[0]
        # Part of the stamp on the detector.
        sy0, sx0 = max(y0, 0), max(x0, 0)
        sy1, sx1 = min(y0 + stamp.shape[0], height), min(x0 + stamp.shape[1], width)
        if outside or sy0 >= sy1 or sx0 >= sx1:
            flags[k] |= 1 << INJECTION_FLAGS["NO_OVERLAP"]
            continue
        sub = stamp[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0].astype(np.float32)
        region = (slice(sy0, sy1), slice(sx0, sx1))
        var_sub = base_var[region]
        truth["flux_drawn"][k] = float(sub.sum())
        good = np.isfinite(var_sub)
        truth["nu_opt"][k] = float(np.sqrt(np.sum(sub[good] ** 2 / var_sub[good])))
        snr, _ = psf_filter_snr(sub, np.where(good, var_sub, 0.0), psf_sigma, bad=~good)
        truth["nu_det"][k] = float(np.nanmax(snr)) if np.isfinite(snr).any() else np.nan
        model_sum[region] += sub
        injected[region] = True
        cx, cy = int(math.floor(x)), int(math.floor(y))
        core[max(cy - 1, 0) : max(cy + 2, 0), max(cx - 1, 0) : max(cx + 2, 0)] = True
        noise = np.sqrt(var_sub)
        in_mask = good & (sub > mask_threshold * noise)
        trail_mask[region] |= in_mask
        mask_pixels[k] = int(in_mask.sum())
        if seg is not None:
            for name, value in zip(
                ("x_start_clipped", "y_start_clipped", "x_end_clipped", "y_end_clipped"), seg
            ):
                clipped[name][k] = value
            clipped["length_clipped"][k] = math.hypot(seg[2] - seg[0], seg[3] - seg[1])
        if add_noise:
            rng = np.random.default_rng([int(seed), int(table["injection_id"][k]) & 0x7FFFFFFF])
            electrons = rng.poisson(np.maximum(sub, 0.0) / nJy_per_electron)
            out_image[region] += (electrons * nJy_per_electron).astype(np.float32)
        else:
            out_image[region] += sub
        if inject_variance:
            out_var[region] += np.maximum(sub, 0.0) * nJy_per_electron
    table["injection_flag"] = flags
    table["injection_draw_size"] = draw_size
    for name, values in truth.items():
        table[name] = values
    table["flux_drawn"].unit = "nJy"
    for name, values in clipped.items():
        table[name] = values
        table[name].unit = "pix"
    table["mask_pixels"] = mask_pixels
    table.meta["injection_flag_bits"] = dict(INJECTION_FLAGS)
    return InjectedTrails(
        image=out_image,
        variance=out_var,
        model=model_sum,
        injected=injected,
        injected_core=core,
        trail_mask=trail_mask,
        catalog=table,
    )
