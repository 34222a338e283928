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

"""SimCam: the instrument of the embedded simulated survey."""

from __future__ import annotations

__all__ = ("BANDS", "SimCam")

from lsst.pipe.base import Instrument
from lsst.utils.introspection import get_full_type_name

from .simulation.camera import DETECTOR_NAMES, N_DETECTORS

BANDS = ("u", "g", "r", "i", "z", "y")
"""Bands of SimCam; the physical filter of band ``b`` is ``b_sim``."""


class SimCam(Instrument):
    """An LSSTCam-like instrument for the embedded survey.

    One raft of nine sensors (``R22_S00`` to ``R22_S22``) with 0.2 arcsec
    10 micron pixels and the six LSST bands. It registers the instrument,
    physical filter and detector dimension records; visits are added when a
    survey is planned (``trail-detect make-repo``).
    """

    policyName = "simcam"
    visit_system = 0

    @classmethod
    def getName(cls) -> str:
        # Docstring inherited.
        return "SimCam"

    def register(self, registry, *, update: bool = False) -> None:
        # Docstring inherited.
        name = self.getName()
        with registry.transaction():
            registry.syncDimensionData(
                "instrument",
                {
                    "name": name,
                    "detector_max": N_DETECTORS,
                    "visit_max": 2**30,
                    "exposure_max": 2**30,
                    "visit_system": self.visit_system,
                    "class_name": get_full_type_name(self),
                },
                update=update,
            )
            for band in BANDS:
                registry.syncDimensionData(
                    "physical_filter",
                    {"instrument": name, "name": f"{band}_sim", "band": band},
                    update=update,
                )
            for det, full_name in enumerate(DETECTOR_NAMES):
                raft, sensor = full_name.split("_")
                registry.syncDimensionData(
                    "detector",
                    {
                        "instrument": name,
                        "id": det,
                        "full_name": full_name,
                        "raft": raft,
                        "name_in_raft": sensor,
                        "purpose": "SCIENCE",
                    },
                    update=update,
                )
            registry.syncDimensionData(
                "visit_system", {"instrument": name, "id": self.visit_system, "name": "one-to-one"}
            )

    def getRawFormatter(self, dataId):
        # Docstring inherited.
        raise NotImplementedError("SimCam has no raw data: its visit images are simulated directly.")
