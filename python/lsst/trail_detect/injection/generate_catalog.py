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

"""generateTrailCatalog: draw the trails to inject into one visit image."""

from __future__ import annotations

__all__ = ("GenerateTrailCatalogConfig", "GenerateTrailCatalogConnections", "GenerateTrailCatalogTask")

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT


class GenerateTrailCatalogConnections(
    pipeBase.PipelineTaskConnections, dimensions=("instrument", "visit", "detector")
):
    """Connections of `GenerateTrailCatalogTask`."""

    visit_image = cT.Input(
        doc="Image the trails will be injected into (for its WCS, PSF, variance and DETECTED plane).",
        name="visit_image",
        storageClass="VisitImage",
        dimensions=("instrument", "visit", "detector"),
    )
    catalog = cT.Output(
        doc="Trails to inject, in lsst.source.injection's schema (mag per pixel of trail length).",
        name="trail_injection_catalog",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )


class GenerateTrailCatalogConfig(
    pipeBase.PipelineTaskConfig, pipelineConnections=GenerateTrailCatalogConnections
):
    """Configuration of `GenerateTrailCatalogTask`."""

    n_trails = pexConfig.Field[int](doc="Number of trails per detector.", default=20, check=lambda n: n >= 0)
    length_min = pexConfig.Field[float](doc="Shortest trail (pixels); lengths are log-uniform.", default=4.0)
    length_max = pexConfig.Field[float](doc="Longest trail (pixels).", default=120.0)
    beta_min = pexConfig.Field[float](doc="Smallest angle (deg, counter-clockwise from +x).", default=0.0)
    beta_max = pexConfig.Field[float](doc="Largest angle (deg).", default=180.0)
    brightness = pexConfig.ChoiceField[str](
        doc="How trail brightness is drawn.",
        default="snr",
        allowed={
            "snr": "log-uniform in nu_det (PSF-matched-filter peak SNR) between nu_det_min and nu_det_max",
            "mag": "uniform in total magnitude between total_mag_min and total_mag_max",
        },
    )
    nu_det_min = pexConfig.Field[float](doc="Faintest target nu_det.", default=1.5)
    nu_det_max = pexConfig.Field[float](doc="Brightest target nu_det.", default=30.0)
    total_mag_min = pexConfig.Field[float](
        doc="Brightest total AB magnitude (brightness='mag').", default=19.0
    )
    total_mag_max = pexConfig.Field[float](
        doc="Faintest total AB magnitude (brightness='mag').", default=25.0
    )
    avoid_detected = pexConfig.Field[bool](
        doc="Redraw positions so that trails do not cross DETECTED footprints "
        "(by default trails cross stars and galaxies as real ones do).",
        default=False,
    )
    seed = pexConfig.Field[int](doc="Seed, combined with the visit and detector IDs.", default=0)

    def validate(self):
        super().validate()
        if not 0 < self.length_min <= self.length_max:
            raise pexConfig.FieldValidationError(
                GenerateTrailCatalogConfig.length_min, self, "need 0 < length_min <= length_max"
            )
        if not 0 < self.nu_det_min <= self.nu_det_max:
            raise pexConfig.FieldValidationError(
                GenerateTrailCatalogConfig.nu_det_min, self, "need 0 < nu_det_min <= nu_det_max"
            )


class GenerateTrailCatalogTask(pipeBase.PipelineTask):
    """Draw a catalog of synthetic asteroid trails for one detector.

    Lengths are log-uniform, angles uniform, positions uniform over the
    detector (trails may run off its edges), brightnesses either log-uniform
    in target ``nu_det`` (the SNR a 5-sigma PSF detection sees, from the
    local noise of the variance plane and the PSF model) or uniform in total
    magnitude. The result is reproducible from ``seed`` and the data ID.
    """

    ConfigClass = GenerateTrailCatalogConfig
    _DefaultName = "generateTrailCatalog"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        outputs = self.run(
            inputs["visit_image"], visit=int(data_id["visit"]), detector=int(data_id["detector"])
        )
        butlerQC.put(outputs, outputRefs)

    def run(self, visit_image, visit: int = 0, detector: int = 0) -> pipeBase.Struct:
        """Draw the catalog.

        Parameters
        ----------
        visit_image : `lsst.images.VisitImage`
            Target image.
        visit, detector : `int`
            Data ID, for the seed and the catalog columns.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``catalog`` (`astropy.table.Table`).
        """
        from ..imageutils import pixel_to_sky_function, psf_sigma
        from .catalog import generate_trail_catalog

        c = self.config
        rng = np.random.default_rng([c.seed, visit, detector, 20260315])
        avoid = visit_image.mask.get("DETECTED") if c.avoid_detected else None
        catalog = generate_trail_catalog(
            c.n_trails,
            visit_image.variance.array,
            psf_sigma(visit_image),
            rng,
            pixel_to_sky=pixel_to_sky_function(visit_image),
            length_range=(c.length_min, c.length_max),
            beta_range=(c.beta_min, c.beta_max),
            brightness=c.brightness,
            nu_det_range=(c.nu_det_min, c.nu_det_max),
            total_mag_range=(c.total_mag_min, c.total_mag_max),
            avoid=avoid,
            visit=visit,
            detector=detector,
            first_id=(visit % 100000) * 10000 + detector * 1000,
        )
        self.log.info(
            "Drew %d trails (lengths %.0f-%.0f px, %s brightness).",
            len(catalog),
            c.length_min,
            c.length_max,
            c.brightness,
        )
        return pipeBase.Struct(catalog=catalog)
