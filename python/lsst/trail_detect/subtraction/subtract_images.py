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


"""subtractImages: a PSF-matched difference image of a visit image and its template."""

from __future__ import annotations

__all__ = ("SubtractImagesConfig", "SubtractImagesConnections", "SubtractImagesTask")

import math

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

_DIMS = ("instrument", "visit", "detector")


class SubtractImagesConnections(pipeBase.PipelineTaskConnections, dimensions=_DIMS):
    """Connections of `SubtractImagesTask`."""

    science = cT.Input(
        doc="Calibrated science image (nJy) to subtract the template from.",
        name="injected_visit_image",
        storageClass="VisitImage",
        dimensions=_DIMS,
    )
    template = cT.Input(
        doc="Template warped onto the science image's detector (nJy, same pixel grid).",
        name="template_detector",
        storageClass="VisitImage",
        dimensions=_DIMS,
    )
    difference = cT.Output(
        doc="Science minus the PSF-matched template, before source detection (DETECTED cleared).",
        name="injected_difference_image_predetection",
        storageClass="VisitImage",
        dimensions=_DIMS,
    )


class SubtractImagesConfig(pipeBase.PipelineTaskConfig, pipelineConnections=SubtractImagesConnections):
    """Configuration of `SubtractImagesTask`."""

    cleared_planes = pexConfig.ListField[str](
        doc="Mask planes of the science image that do not describe the difference and are cleared.",
        default=["DETECTED", "DETECTION_EDGE"],
    )
    fit_kernel = pexConfig.Field[bool](
        doc="Fit the matching kernel on bright isolated stars (a free pixel kernel); off: the Gaussian "
        "between the two PSF models.",
        default=True,
    )
    kernel_excluded_planes = pexConfig.ListField[str](
        doc="Science mask planes that no kernel-fitting stamp may touch.",
        default=["SATURATED", "SUSPECT", "BAD", "NO_DATA", "COSMIC_RAY", "INTERPOLATED", "INJECTED"],
    )
    min_kernel_stamps = pexConfig.Field[int](
        doc="Fewest star stamps a kernel fit needs; with fewer the Gaussian of the PSF models is used.",
        default=8,
    )
    template_bad_planes = pexConfig.ListField[str](
        doc="Template mask planes copied into the difference image's NO_DATA plane.", default=["NO_DATA"]
    )


class SubtractImagesTask(pipeBase.PipelineTask):
    """Subtract a template from a visit image after matching their PSFs.

    The matching kernel is fitted on bright isolated stars, or is the
    Gaussian that takes the sharper PSF model to the broader one
    (`~lsst.trail_detect.subtraction.matching.subtract_images`).
    The difference image keeps the science image's mask planes (less
    ``cleared_planes``), WCS, calibration and observation info; its variance
    is the sum of the two images' variances and its PSF model the broader
    Gaussian. On USDF the stack's ``difference_image`` can be searched
    instead through the detection task's input connection.
    """

    ConfigClass = SubtractImagesConfig
    _DefaultName = "subtractImages"

    def run(self, science, template) -> pipeBase.Struct:
        """Make the difference image.

        Parameters
        ----------
        science : `lsst.images.VisitImage`
            Science image.
        template : `lsst.images.VisitImage`
            Template on the science image's pixel grid.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``difference`` (`lsst.images.VisitImage`).
        """
        from lsst.images import ObservationSummaryStats, VisitImage
        from lsst.images.psfs import GaussianPointSpreadFunction

        from ..imageutils import any_plane, mask_planes, psf_sigma, variance_with_missing
        from .matching import subtract_images

        if science.bbox != template.bbox:
            raise ValueError(
                f"template bounding box {template.bbox} does not match the science image's {science.bbox}."
            )
        if science.image.unit != template.image.unit:
            raise ValueError(
                f"template unit {template.image.unit} differs from the science image's {science.image.unit}."
            )
        sigma_science, sigma_template = psf_sigma(science), psf_sigma(template)
        template_variance = variance_with_missing(template, self.config.template_bad_planes)
        bad = any_plane(mask_planes(science), self.config.kernel_excluded_planes, science.image.array.shape)
        result = subtract_images(
            science.image.array,
            science.variance.array,
            sigma_science,
            template.image.array,
            template_variance,
            sigma_template,
            bad=bad,
            fit_kernel=self.config.fit_kernel,
            min_stamps=self.config.min_kernel_stamps,
        )
        output = science.copy()
        output.image.array[...] = result.difference
        output.variance.array[...] = result.variance
        for name in self.config.cleared_planes:
            if name in output.mask.schema.names:
                output.mask.clear(name)
        output.mask.set("NO_DATA", ~np.isfinite(result.variance))
        stamp = int(2 * math.ceil(5 * result.psf_sigma) + 1)
        bbox = science.bbox
        psf = GaussianPointSpreadFunction(sigma=result.psf_sigma, bounds=bbox, stamp_size=stamp)
        stats = science.summary_stats
        if stats is not None:
            values = stats.model_dump() if hasattr(stats, "model_dump") else dict(vars(stats))
            values.update(psfSigma=result.psf_sigma, psfArea=4.0 * math.pi * result.psf_sigma**2)
            stats = ObservationSummaryStats(**values)
        metadata = dict(science.metadata or {})
        metadata.update(
            {
                "DIFF_KERNEL_SIGMA": float(result.kernel_sigma),
                "DIFF_CONVOLVED": result.convolved,
                "DIFF_KERNEL_STAMPS": int(result.n_stamps),
                "TEMPLATE_PSF_SIGMA": float(sigma_template),
                "SCIENCE_PSF_SIGMA": float(sigma_science),
            }
        )
        difference = VisitImage(
            output.image,
            mask=output.mask,
            variance=output.variance,
            obs_info=science.obs_info,
            summary_stats=stats,
            photometric_scaling=science.photometric_scaling,
            psf=psf,
            detector=science.detector,
            band=science.band,
            metadata=metadata,
        )
        self.log.info(
            "Subtracted the template (PSF sigma %.2f px) from the science image (%.2f px): convolved the %s "
            "with a kernel of width %.2f px (%s).",
            sigma_template,
            sigma_science,
            result.convolved,
            result.kernel_sigma,
            f"fitted on {result.n_stamps} stars" if result.n_stamps else "Gaussian of the PSF models",
        )
        return pipeBase.Struct(difference=difference)
