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

"""detectSourcesStackLike: a 5-sigma PSF-filter detection standing in for the stack's."""

from __future__ import annotations

__all__ = ("DetectSourcesStackLikeConfig", "DetectSourcesStackLikeConnections", "DetectSourcesStackLikeTask")

import math

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT


class DetectSourcesStackLikeConnections(
    pipeBase.PipelineTaskConnections, dimensions=("instrument", "visit", "detector")
):
    """Connections of `DetectSourcesStackLikeTask`."""

    exposure = cT.Input(
        doc="Calibrated visit image to detect sources on.",
        name="simulated_visit_image",
        storageClass="VisitImage",
        dimensions=("instrument", "visit", "detector"),
    )
    detected_exposure = cT.Output(
        doc="The same image with the DETECTED and DETECTION_EDGE mask planes set.",
        name="visit_image",
        storageClass="VisitImage",
        dimensions=("instrument", "visit", "detector"),
    )
    sources = cT.Output(
        doc="Detected sources with DP1 Source-like columns (coord_ra/coord_dec in degrees).",
        name="source",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config is not None and not config.write_detected_exposure:
            del self.detected_exposure


class DetectSourcesStackLikeConfig(
    pipeBase.PipelineTaskConfig, pipelineConnections=DetectSourcesStackLikeConnections
):
    """Configuration of `DetectSourcesStackLikeTask`."""

    threshold = pexConfig.Field[float](doc="Detection threshold in PSF-filtered SNR.", default=5.0)
    grow_sigma = pexConfig.Field[float](
        doc="Footprints are grown by this many PSF sigmas (the stack's nSigmaToGrow).", default=2.4
    )
    write_detected_exposure = pexConfig.Field[bool](
        doc="Write the image with DETECTED set; turn off to write only the catalog "
        "(e.g. on injected images).",
        default=True,
    )
    excluded_planes = pexConfig.ListField[str](
        doc="Mask planes whose pixels are left out of the matched filter.", default=["NO_DATA", "BAD"]
    )


class DetectSourcesStackLikeTask(pipeBase.PipelineTask):
    """Detect sources above a PSF-filtered SNR threshold, as the stack does.

    The image is correlated with its Gaussian PSF model and divided by the
    correspondingly filtered noise; footprints above ``threshold`` are grown
    and their peaks measured (PSF and aperture fluxes, centroids,
    extendedness, pixel flags). The output image carries DETECTED and
    DETECTION_EDGE planes; the catalog has DP1 ``source`` column names.
    """

    ConfigClass = DetectSourcesStackLikeConfig
    _DefaultName = "detectSourcesStackLike"

    def run(self, exposure) -> pipeBase.Struct:
        """Detect and measure sources.

        Parameters
        ----------
        exposure : `lsst.images.VisitImage`
            Calibrated image with variance, mask and PSF model.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``detected_exposure`` (a copy with DETECTED and DETECTION_EDGE
            set, or `None` if ``write_detected_exposure`` is off) and
            ``sources`` (`astropy.table.Table`).
        """
        import astropy.units as u

        from ..imageutils import mask_planes, pixel_to_sky_function, psf_sigma
        from .stack_detection import detect_sources

        image = exposure.image.array
        variance = exposure.variance.array
        planes = mask_planes(exposure)
        sigma = psf_sigma(exposure)
        edge_width = int(math.ceil(3.0 * sigma))
        pixel_to_sky = pixel_to_sky_function(exposure)

        table, detected = detect_sources(
            image,
            variance,
            sigma,
            mask_planes=planes,
            threshold=self.config.threshold,
            exclude_planes=tuple(self.config.excluded_planes),
            grow_sigma=self.config.grow_sigma,
            edge_width=edge_width,
            pixel_to_sky=pixel_to_sky,
            flux_unit=u.nJy,
        )
        result = None
        if self.config.write_detected_exposure:
            result = exposure.copy()
            edge = np.zeros(image.shape, dtype=bool)
            edge[:edge_width, :] = edge[-edge_width:, :] = True
            edge[:, :edge_width] = edge[:, -edge_width:] = True
            result.mask.set("DETECTION_EDGE", edge)
            result.mask.set("DETECTED", detected)
        self.log.info(
            "Detected %d sources above %.1f sigma (%.1f%% of pixels DETECTED).",
            len(table),
            self.config.threshold,
            100.0 * detected.mean(),
        )
        return pipeBase.Struct(detected_exposure=result, sources=table)
