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

"""Configuration fields shared by the tasks that cut images into training tiles."""

from __future__ import annotations

__all__ = ("TilingConfig",)

import lsst.pex.config as pexConfig


class TilingConfig(pexConfig.Config):
    """Tiling, normalization, bad-pixel and split settings of a tile-building task."""

    tile_size = pexConfig.Field[int](doc="Tile side (pixels).", default=256)
    overlap = pexConfig.Field[int](doc="Overlap between neighbouring tiles (pixels).", default=32)
    normalization = pexConfig.ChoiceField[str](
        doc="Image normalization (stored with the shard and later with the model).",
        default="robust",
        allowed={
            "robust": "(image - sigma-clipped median) / (1.4826 MAD), per detector",
            "variance": "image / sqrt(variance)",
        },
    )
    clip_min = pexConfig.Field[float](doc="Lower clip of the normalized image.", default=-10.0)
    clip_max = pexConfig.Field[float](doc="Upper clip of the normalized image.", default=50.0)
    bad_planes = pexConfig.ListField[str](
        doc="Mask planes whose pixels get zero input and zero weight.",
        default=["NO_DATA", "BAD", "SATURATED"],
    )
    split_fractions = pexConfig.ListField[float](
        doc="Fractions of (visit, detector) pairs in train, validation and test.", default=[0.7, 0.15, 0.15]
    )
    split_seed = pexConfig.Field[int](doc="Seed of the split assignment.", default=0)
