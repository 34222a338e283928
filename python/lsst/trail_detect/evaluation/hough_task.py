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

"""detectTrailsHough: the classical baseline, Hough lines on the 5 sigma detection mask."""

from __future__ import annotations

__all__ = ("DetectTrailsHoughConfig", "DetectTrailsHoughConnections", "DetectTrailsHoughTask")

import dataclasses

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

_DIMS = ("instrument", "visit", "detector")


class DetectTrailsHoughConnections(pipeBase.PipelineTaskConnections, dimensions=_DIMS):
    """Connections of `DetectTrailsHoughTask`."""

    exposure = cT.Input(
        doc="Image to search (injected_visit_image by default).",
        name="injected_visit_image",
        storageClass="VisitImage",
        dimensions=_DIMS,
    )
    catalog = cT.Output(
        doc="Trails found by edges plus a Hough transform on the detection mask.",
        name="hough_trail_catalog",
        storageClass="ArrowAstropy",
        dimensions=_DIMS,
    )


class DetectTrailsHoughConfig(pipeBase.PipelineTaskConfig, pipelineConnections=DetectTrailsHoughConnections):
    """Configuration of `DetectTrailsHoughTask`."""

    threshold = pexConfig.Field[float](
        doc="Detection threshold of the PSF-filtered image, in sigma (the stack's 5).", default=5.0
    )
    bad_mask_planes = pexConfig.ListField[str](
        doc="Mask planes left out of the detection.", default=["NO_DATA", "BAD", "SATURATED", "SAT"]
    )
    min_cluster_pixels = pexConfig.Field[int](
        doc="Detection footprints smaller than this are ignored (MaskStreaksTask's clusterMinimumSize).",
        default=50,
    )
    min_length = pexConfig.Field[float](doc="Shortest segment kept (pixels).", default=10.0)


class DetectTrailsHoughTask(pipeBase.PipelineTask):
    """Find trails the classical way, in the spirit of the stack's MaskStreaksTask.

    The image is correlated with its PSF and thresholded at ``threshold``
    sigma (the detection mask of the stack's 5 sigma footprints); small
    footprints are dropped, Canny edges of the rest go through a Hough
    transform, and the lines found are fitted with segments. By
    construction it finds only trails already inside 5 sigma footprints.
    """

    ConfigClass = DetectTrailsHoughConfig
    _DefaultName = "detectTrailsHough"

    def run(self, exposure) -> pipeBase.Struct:
        """Search one image.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``catalog`` (`astropy.table.Table`, pixel coordinates in the
            image's parent frame).
        """
        from ..imageutils import any_plane, mask_planes, psf_sigma, shift_pixel_columns
        from ..simulation.stack_detection import psf_filter_snr
        from .hough import HoughConfig, hough_trails

        c = self.config
        image = exposure.image.array
        variance = exposure.variance.array
        bad = any_plane(mask_planes(exposure), c.bad_mask_planes, image.shape)
        bad |= ~np.isfinite(image) | ~(variance > 0)
        sigma = psf_sigma(exposure)
        snr, _ = psf_filter_snr(np.where(bad, 0.0, image), np.where(bad, 1.0, variance), sigma, bad=bad)
        detected = (snr >= c.threshold) & ~bad
        config = HoughConfig()
        fields = {f.name for f in dataclasses.fields(HoughConfig)}
        for name in ("min_cluster_pixels", "min_length"):
            if name in fields:
                setattr(config, name, getattr(c, name))
        catalog = hough_trails(detected, image, variance, psf_sigma=sigma, bad=bad, config=config)
        catalog = shift_pixel_columns(catalog, exposure.bbox.x.start, exposure.bbox.y.start)
        self.log.info("Hough baseline found %d trails.", len(catalog))
        return pipeBase.Struct(catalog=catalog)
