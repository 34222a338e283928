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

"""Helpers shared by the summaries and pictures that people look at."""

from __future__ import annotations

__all__ = ("new_figure", "show_image", "sorted_refs")

import numpy as np


def sorted_refs(butler, dataset_type: str) -> list:
    """Return the refs of a per-(visit, detector) dataset type in data ID order."""
    return sorted(
        butler.query_datasets(dataset_type, limit=None),
        key=lambda r: (r.dataId["visit"], r.dataId["detector"]),
    )


def new_figure(ncols: int = 1, size: float = 8.0):
    """Return ``(figure, axes)`` from a non-interactive matplotlib backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(size * ncols, size))


def show_image(ax, array: np.ndarray, stretch: float = 1.0) -> None:
    """Show an image with a zscale stretch (``stretch`` widens the range above the low limit)."""
    from astropy.visualization import ZScaleInterval

    lo, hi = ZScaleInterval().get_limits(array[np.isfinite(array)])
    ax.imshow(
        array, origin="lower", cmap="gray", vmin=lo, vmax=lo + stretch * (hi - lo), interpolation="nearest"
    )
