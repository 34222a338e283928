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

"""simulateVisitImage: render one calibrated visit image of the embedded survey."""

from __future__ import annotations

__all__ = (
    "SimulateDetectorConnectionsBase",
    "SimulateDetectorTaskBase",
    "SimulateVisitImageConfig",
    "SimulateVisitImageConnections",
    "SimulateVisitImageTask",
    "gather_star_catalog",
)

import dataclasses

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from .scene import SceneParameters, simulate_detector


class SimulateDetectorConnectionsBase(
    pipeBase.PipelineTaskConnections, dimensions=("instrument", "visit", "detector")
):
    """Inputs every per-detector simulation reads: the visit's conditions and the star catalog."""

    conditions = cT.Input(
        doc="Observing conditions of the visit (pointing, seeing, sky, electronics, seeds).",
        name="visit_conditions",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "visit"),
    )
    star_catalog = cT.PrerequisiteInput(
        doc="Star catalog shards (Gaia DR3 schema) overlapping the detector.",
        name="gaia_dr3_stars",
        storageClass="ArrowAstropy",
        dimensions=("htm7",),
        multiple=True,
        deferLoad=True,
        minimum=0,
    )


class SimulateVisitImageConnections(
    SimulateDetectorConnectionsBase, dimensions=("instrument", "visit", "detector")
):
    """Connections of `SimulateVisitImageTask`."""

    visit_image = cT.Output(
        doc="Simulated calibrated visit image, before source detection.",
        name="simulated_visit_image",
        storageClass="VisitImage",
        dimensions=("instrument", "visit", "detector"),
    )
    truth = cT.Output(
        doc="Every object rendered into the image (stars, galaxies, artefacts), with positions and fluxes.",
        name="visit_image_truth",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )


class SimulateVisitImageConfig(
    pipeBase.PipelineTaskConfig, pipelineConnections=SimulateVisitImageConnections
):
    """Configuration of `SimulateVisitImageTask`."""

    galaxy_mag_limit = pexConfig.Field[float](doc="Faintest galaxy drawn (AB mag, r).", default=25.0)
    galaxy_density_scale = pexConfig.Field[float](doc="Multiplier on the galaxy number counts.", default=1.0)
    star_mag_limit = pexConfig.Field[float](
        doc="Faintest star drawn; stars fainter than the catalog limit come from the density model.",
        default=25.0,
    )
    star_mag_bright = pexConfig.Field[float](doc="Brightest catalog star drawn (G).", default=9.0)
    spike_mag_limit = pexConfig.Field[float](
        doc="Stars brighter than this get diffraction spikes.", default=15.5
    )
    cosmic_ray_rate = pexConfig.Field[float](doc="Cosmic rays per cm^2 per minute.", default=6.0)
    cosmic_ray_detect_fraction = pexConfig.Field[float](
        doc="Fraction of compact cosmic rays masked and interpolated by the processing.", default=0.9
    )
    long_cosmic_ray_detect_fraction = pexConfig.Field[float](
        doc="Fraction of long (> 20 px) grazing cosmic-ray tracks masked and interpolated.", default=0.5
    )
    hot_pixel_density = pexConfig.Field[float](doc="Hot pixels per pixel.", default=2e-5)
    hot_pixel_masked_fraction = pexConfig.Field[float](
        doc="Fraction of hot pixels in the defect list.", default=0.8
    )
    bad_columns_per_4k = pexConfig.Field[float](doc="Mean bad column segments per 4k sensor.", default=2.0)
    bad_column_masked_fraction = pexConfig.Field[float](
        doc="Fraction of bad columns in the defect list.", default=0.7
    )
    dead_amp_probability = pexConfig.Field[float](
        doc="Probability that a detector has a dead amplifier segment.", default=0.12
    )
    background_cell = pexConfig.Field[int](doc="Background estimation cell size (pixels).", default=128)

    def scene_parameters(self) -> SceneParameters:
        """Return the plain-function parameters matching this config."""
        names = {f.name for f in dataclasses.fields(SceneParameters)}
        return SceneParameters(**{name: getattr(self, name) for name in names if name in self.keys()})


def gather_star_catalog(star_catalog):
    """Join star catalog shards (tables or deferred handles) in a reproducible order.

    Returns
    -------
    stars : `astropy.table.Table` or `None`
        The rows of every non-empty shard sorted by ``source_id``, or `None`
        when there are none.
    """
    from astropy.table import vstack

    tables = [s.get() if hasattr(s, "get") else s for s in (star_catalog or [])]
    tables = [t for t in tables if len(t)]
    if not tables:
        return None
    stars = vstack(tables, metadata_conflicts="silent")
    stars.sort("source_id")  # shards arrive in no particular order
    return stars


class SimulateDetectorTaskBase(pipeBase.PipelineTask):
    """Shared quantum plumbing of the tasks that simulate one detector from visit conditions."""

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        inputs = butlerQC.get(inputRefs)
        detector = butlerQC.quantum.dataId["detector"]
        outputs = self.run(
            conditions=inputs["conditions"], star_catalog=inputs["star_catalog"], detector=detector
        )
        butlerQC.put(outputs, outputRefs)


class SimulateVisitImageTask(SimulateDetectorTaskBase):
    """Simulate a calibrated single-visit detector image with its truth.

    Stars come from the ``gaia_dr3_stars`` shards that overlap the detector
    (moved by proper motion to the visit epoch); everything else (fainter
    stars, galaxies, cosmic rays, defects, saturation, satellites) is drawn
    from the visit's ``visit_conditions`` and seeds, so a quantum is
    reproducible from its inputs alone.
    """

    ConfigClass = SimulateVisitImageConfig
    _DefaultName = "simulateVisitImage"

    def run(self, conditions: dict, star_catalog, detector: int) -> pipeBase.Struct:
        """Simulate one detector.

        Parameters
        ----------
        conditions : `dict`
            Visit conditions.
        star_catalog : `list`
            Star catalog shards: `astropy.table.Table` objects or deferred
            dataset handles.
        detector : `int`
            Detector ID.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``visit_image`` (`lsst.images.VisitImage`) and ``truth``
            (`astropy.table.Table`).
        """
        from .visit_image import make_visit_image

        stars = gather_star_catalog(star_catalog)
        # The catalog's faint limit (G): fainter stars come from the star-count model.
        limit = conditions.get("catalog_mag_limit")
        self.log.info(
            'Simulating visit %s detector %d (%d px, seeing %.2f", %d catalog stars).',
            conditions["visit"],
            detector,
            conditions["size"],
            conditions["seeing_fwhm_arcsec"],
            0 if stars is None else len(stars),
        )
        sim = simulate_detector(
            conditions, detector, stars, params=self.config.scene_parameters(), catalog_mag_limit=limit
        )
        truth = sim.truth
        truth.meta.update({"visit": int(conditions["visit"]), "detector": int(detector)})
        self.log.info(
            "Rendered %d objects; %d saturated pixels, %d cosmic-ray pixels masked.",
            len(truth),
            int(sim.masks["SATURATED"].sum()),
            int(sim.masks["COSMIC_RAY"].sum()),
        )
        return pipeBase.Struct(visit_image=make_visit_image(sim, conditions, detector), truth=truth)
