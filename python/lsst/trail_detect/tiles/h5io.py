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

"""Opening HDF5 tile shards with errors that name the file (no Butler, no torch)."""

from __future__ import annotations

__all__ = ("open_shard_file",)

import os


def open_shard_file(path: str | os.PathLike):
    """Open an HDF5 file for reading; a missing, truncated or non-HDF5 file raises an error naming it.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not a readable HDF5 file.
    """
    import h5py

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such tile shard file.")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 tile shard (truncated or corrupt?): {err}") from err
