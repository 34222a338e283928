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

"""Plane geometry of line segments in pixel coordinates."""

from __future__ import annotations

__all__ = ("clip_segment", "segment_distance")

from typing import Any

import numpy as np


def clip_segment(
    x0: float, y0: float, x1: float, y1: float, width: int, height: int
) -> tuple[float, float, float, float] | None:
    """Clip a segment to the pixel box of an image (Liang-Barsky).

    Parameters
    ----------
    x0, y0, x1, y1 : `float`
        Segment endpoints in 0-based pixel coordinates (pixel centres on
        integers).
    width, height : `int`
        Image size; the box is ``[-0.5, width - 0.5] x [-0.5, height - 0.5]``.

    Returns
    -------
    clipped : `tuple` [`float`] or `None`
        The clipped endpoints, in the original order, or `None` if the
        segment misses the box.
    """
    lo_x, hi_x, lo_y, hi_y = -0.5, width - 0.5, -0.5, height - 0.5
    dx, dy = x1 - x0, y1 - y0
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, x0 - lo_x), (dx, hi_x - x0), (-dy, y0 - lo_y), (dy, hi_y - y0)):
        if p == 0:
            if q < 0:
                return None
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
    if t0 > t1:
        return None
    return x0 + t0 * dx, y0 + t0 * dy, x0 + t1 * dx, y0 + t1 * dy


def segment_distance(x: np.ndarray, y: np.ndarray, x0: Any, y0: Any, x1: Any, y1: Any) -> np.ndarray:
    """Return the distance of points from a segment.

    The endpoints may be arrays too: everything broadcasts, so
    ``segment_distance(x[:, None], y[:, None], x0, y0, x1, y1)`` gives the
    distance of every point from every segment. A zero-length segment is
    a point.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    dx, dy = np.subtract(x1, x0, dtype=float), np.subtract(y1, y0, dtype=float)
    length2 = dx * dx + dy * dy
    # Where the segment is a point, dx = dy = 0 and t is 0 whatever the divisor.
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
    return np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))
