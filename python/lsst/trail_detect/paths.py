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

"""Where the package's pipelines and config overrides live."""

from __future__ import annotations

__all__ = ("config_path", "default_model_path", "package_dir", "pipeline_path")

import os
from pathlib import Path


def package_dir() -> Path:
    """Return the product directory holding ``pipelines/`` and ``config/``.

    ``$TRAIL_DETECT_DIR`` wins (EUPS sets it); otherwise the source checkout
    this module was imported from, or the copy installed with the package.
    """
    env = os.environ.get("TRAIL_DETECT_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    checkout = here.parents[2]
    if (checkout / "pipelines").is_dir() and (checkout / "python" / "lsst" / "trail_detect").is_dir():
        return checkout
    return here / "share"


def pipeline_path(name: str) -> Path:
    """Return the path of a pipeline YAML by file name (``SimulateSurvey.yaml``)."""
    path = package_dir() / "pipelines" / name
    if not path.is_file():
        raise FileNotFoundError(f"pipeline {name!r} not found in {path.parent}.")
    return path


def config_path(name: str) -> Path:
    """Return the path of a config override file by name."""
    return package_dir() / "config" / name


def default_model_path() -> Path:
    """Return the path of the trail model shipped with the package."""
    return Path(__file__).resolve().parent / "data" / "trail_detector_default.safetensors"
