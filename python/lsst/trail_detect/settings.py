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


"""Settings dataclasses built from JSON-able dicts (model metadata, command-line JSON)."""

from __future__ import annotations

__all__ = ("check_known_fields",)

import dataclasses
from collections.abc import Mapping


def check_known_fields(cls: type, values: Mapping, what: str) -> None:
    """Refuse keys of ``values`` that are not fields of the dataclass ``cls``.

    Raises
    ------
    ValueError
        Naming the unknown keys and the known ones, as ``unknown {what} settings ...``.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {what} settings {sorted(unknown)}; known: {sorted(known)}.")
