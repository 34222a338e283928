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

"""CenterNet-style training targets for star detection.

A star is a keypoint: its target is a Gaussian peak of value exactly 1 at
its *peak pixel* ``(ix, iy) = (floor(x + 0.5), floor(y + 0.5))`` (the pixel
that contains its centre; pixel centres are at integer coordinates, as in
the truth tables), with the sub-pixel offset ``(x - ix, y - iy)`` in
``[-0.5, 0.5)`` stored at that pixel. Overlapping peaks are combined by
their maximum (Zhou, Wang & Kraehenbuehl 2019, "Objects as Points").
`decode_star_targets` inverts `star_targets`: local maxima of the heatmap
plus the offsets give back the positions.

Only stars with a PSF signal-to-noise ``nu >= nu_min`` whose peak pixel
lies in the tile are targets: fainter stars are part of the background a
detector should learn to ignore (no peak, no offset), and stars outside
the tile leave no partial peak at its edge.
"""

from __future__ import annotations

__all__ = ("decode_star_targets", "star_targets")

import math

import numpy as np


def star_targets(
    x,
    y,
    shape: tuple[int, int],
    *,
    sigma: float,
    nu=None,
    nu_min: float = 3.0,
    x0: int = 0,
    y0: int = 0,
) -> dict[str, np.ndarray]:
    """Make the heatmap and offset targets of the stars in a tile.

    Parameters
    ----------
    x, y : array-like
        Star centres in image pixels (0-based, pixel centres at integers).
    shape : `tuple` [`int`, `int`]
        Tile shape ``(H, W)``.
    sigma : `float`
        Width of the Gaussian peaks (pixels), for example the PSF sigma.
    nu : array-like, optional
        PSF signal-to-noise of each star (the truth's ``nu_psf``). Stars
        with ``nu < nu_min`` or a non-finite ``nu`` are not targets. If not
        given, every star is a target.
    nu_min : `float`, optional
        Faintest target signal-to-noise.
    x0, y0 : `int`, optional
        Image pixel of the tile's first column and row: a star at image
        pixel ``(x, y)`` is at ``(x - x0, y - y0)`` in the tile.

    Returns
    -------
    targets : `dict` [`str`, `numpy.ndarray`]
        ``"heatmap"``: float32 ``(H, W)``, the maximum over targets of
        ``exp(-r^2 / 2 sigma^2)``, ``r`` the distance to the peak pixel;
        ``"offset"``: float32 ``(2, H, W)``, ``(dx, dy)`` at the peak
        pixels, 0 elsewhere (where two targets share a peak pixel, that of
        the one with the larger ``nu``, else the last one);
        ``"offset_mask"``: uint8 ``(H, W)``, 1 at the peak pixels;
        ``"selected"``: bool, one per input star, whether it is a target.
    """
    height, width = int(shape[0]), int(shape[1])
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, not {sigma}.")
    x = np.atleast_1d(np.asarray(x, dtype=float)) - x0
    y = np.atleast_1d(np.asarray(y, dtype=float)) - y0
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, not {x.shape} and {y.shape}.")
    selected = np.isfinite(x) & np.isfinite(y)
    if nu is not None:
        nu = np.broadcast_to(np.asarray(nu, dtype=float), x.shape)
        with np.errstate(invalid="ignore"):
            selected &= np.isfinite(nu) & (nu >= nu_min)
    ix = np.floor(np.where(selected, x, 0.0) + 0.5).astype(np.int64)
    iy = np.floor(np.where(selected, y, 0.0) + 0.5).astype(np.int64)
    selected &= (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)

    heatmap = np.zeros((height, width), dtype=np.float32)
    offset = np.zeros((2, height, width), dtype=np.float32)
    offset_mask = np.zeros((height, width), dtype=np.uint8)
    index = np.nonzero(selected)[0]
    if len(index):
        if nu is not None:
            index = index[np.argsort(nu[index], kind="stable")]  # the brightest is written last
        px, py = ix[index], iy[index]
        # Gaussian windows of radius 3 sigma around every peak pixel, max-combined.
        radius = max(int(math.ceil(3.0 * sigma)), 1)
        d = np.arange(-radius, radius + 1)
        dyy, dxx = np.meshgrid(d, d, indexing="ij")
        kernel = np.exp(-(dxx**2 + dyy**2) / (2.0 * sigma**2)).astype(np.float32).ravel()
        gx = (px[:, None] + dxx.ravel()[None, :]).ravel()
        gy = (py[:, None] + dyy.ravel()[None, :]).ravel()
        values = np.broadcast_to(kernel, (len(index), kernel.size)).ravel()
        inside = (gx >= 0) & (gx < width) & (gy >= 0) & (gy < height)
        np.maximum.at(heatmap, (gy[inside], gx[inside]), values[inside])
        heatmap[py, px] = 1.0
        # Repeated indices: the last assignment wins.
        offset[0, py, px] = (x[index] - px).astype(np.float32)
        offset[1, py, px] = (y[index] - py).astype(np.float32)
        offset_mask[py, px] = 1
    return {"heatmap": heatmap, "offset": offset, "offset_mask": offset_mask, "selected": selected}


def decode_star_targets(
    heatmap, offset, threshold: float = 0.5, window: int = 3, *, x0: int = 0, y0: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Find stars in a heatmap and offsets (targets or network outputs).

    Parameters
    ----------
    heatmap : array-like
        ``(H, W)`` peak heatmap.
    offset : array-like
        ``(2, H, W)`` sub-pixel offsets ``(dx, dy)``.
    threshold : `float`, optional
        Smallest heatmap value of a detection.
    window : `int`, optional
        Size of the square window in which a detection must be the maximum
        (CenterNet's 3x3 max-pooling "NMS").
    x0, y0 : `int`, optional
        Image pixel of the tile's origin, added to the positions.

    Returns
    -------
    x, y : `numpy.ndarray`
        Positions (float64, image pixels), by decreasing score.
    score : `numpy.ndarray`
        Heatmap value at each detection.
    """
    from scipy.ndimage import maximum_filter

    heatmap = np.asarray(heatmap, dtype=np.float32)
    offset = np.asarray(offset, dtype=np.float32)
    if heatmap.ndim != 2 or offset.shape != (2,) + heatmap.shape:
        raise ValueError(f"need heatmap (H, W) and offset (2, H, W), not {heatmap.shape} and {offset.shape}.")
    peak = maximum_filter(heatmap, size=window, mode="constant", cval=-np.inf)
    iy, ix = np.nonzero((heatmap == peak) & (heatmap >= threshold))
    score = heatmap[iy, ix]
    order = np.argsort(-score, kind="stable")
    iy, ix, score = iy[order], ix[order], score[order]
    xs = ix + offset[0, iy, ix].astype(np.float64) + x0
    ys = iy + offset[1, iy, ix].astype(np.float64) + y0
    return xs, ys, score.astype(np.float64)
