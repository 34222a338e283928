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

"""shardTrailInjectionCatalogs: regroup per-detector trail catalogs as source_injection expects them."""

from __future__ import annotations

__all__ = (
    "ShardTrailInjectionCatalogsConfig",
    "ShardTrailInjectionCatalogsConnections",
    "ShardTrailInjectionCatalogsTask",
)

import numpy as np

import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT


class ShardTrailInjectionCatalogsConnections(pipeBase.PipelineTaskConnections, dimensions=("htm7", "band")):
    """Connections of `ShardTrailInjectionCatalogsTask`."""

    catalogs = cT.Input(
        doc="Per-detector trail catalogs overlapping the trixel.",
        name="trail_injection_catalog",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
        multiple=True,
    )
    injection_catalog = cT.Output(
        doc="Trails centred in the trixel, for lsst.source.injection's VisitInjectTask "
        "(select rows by visit).",
        name="injection_catalog",
        storageClass="ArrowAstropy",
        dimensions=("htm7", "band"),
    )


class ShardTrailInjectionCatalogsConfig(
    pipeBase.PipelineTaskConfig, pipelineConnections=ShardTrailInjectionCatalogsConnections
):
    """Configuration of `ShardTrailInjectionCatalogsTask`."""


class ShardTrailInjectionCatalogsTask(pipeBase.PipelineTask):
    """Regroup trail catalogs by (htm7, band), as source_injection ingests catalogs.

    Rows keep their ``visit`` column, so that ``VisitInjectTask`` with
    ``selection: "np.isin(injection_catalog['visit'], {visit})"`` injects
    each trail only into the visit it was drawn for. Pixel ``x``/``y``
    columns are dropped: source_injection would take them as positions on
    whichever detector it injects into; it places trails by ``ra``/``dec``.
    """

    ConfigClass = ShardTrailInjectionCatalogsConfig
    _DefaultName = "shardTrailInjectionCatalogs"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        inputs = butlerQC.get(inputRefs)
        outputs = self.run(inputs["catalogs"], htm7=int(butlerQC.quantum.dataId["htm7"]))
        butlerQC.put(outputs, outputRefs)

    def run(self, catalogs, htm7: int) -> pipeBase.Struct:
        """Keep the rows centred in trixel ``htm7``.

        Parameters
        ----------
        catalogs : `list` [`astropy.table.Table`]
            Trail catalogs.
        htm7 : `int`
            Trixel index at HTM level 7.
        """
        from astropy.table import vstack

        import lsst.sphgeom as sg

        pixelization = sg.HtmPixelization(7)
        tables = [t for t in catalogs if len(t)]
        if not tables:
            raise pipeBase.NoWorkFound("no trails overlap this trixel.")
        table = vstack(tables, metadata_conflicts="silent")
        index = np.array(
            [
                pixelization.index(sg.UnitVector3d(sg.LonLat.fromDegrees(float(ra), float(dec))))
                for ra, dec in zip(table["ra"], table["dec"])
            ]
        )
        table = table[index == htm7]
        if len(table) == 0:
            raise pipeBase.NoWorkFound("no trail is centred in this trixel.")
        table.remove_columns(
            [c for c in ("x", "y", "x_start", "y_start", "x_end", "y_end") if c in table.colnames]
        )
        table.sort("injection_id")
        self.log.info("%d trails centred in htm7 trixel %d.", len(table), htm7)
        return pipeBase.Struct(injection_catalog=table)
