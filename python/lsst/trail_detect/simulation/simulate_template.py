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


"""simulateTemplate: the template of one detector of a visit, as a deep coadd warped onto it."""

from __future__ import annotations

__all__ = ("SimulateTemplateConfig", "SimulateTemplateConnections", "SimulateTemplateTask")

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from .scene import TemplateParameters, simulate_template
from .simulate_visit import (
    SimulateDetectorConnectionsBase,
    SimulateDetectorTaskBase,
    SimulateVisitImageConfig,
    gather_star_catalog,
)


class SimulateTemplateConnections(
    SimulateDetectorConnectionsBase, dimensions=("instrument", "visit", "detector")
):
    """Connections of `SimulateTemplateTask`."""

    template = cT.Output(
        doc="Template of the static sky on the visit's detector pixels (nJy), deeper and sharper.",
        name="template_detector",
        storageClass="VisitImage",
        dimensions=("instrument", "visit", "detector"),
    )


class SimulateTemplateConfig(SimulateVisitImageConfig, pipelineConnections=SimulateTemplateConnections):
    """Configuration of `SimulateTemplateTask`.

    The scene fields are the visit simulation's and must be set as they
    were for ``simulateVisitImage`` (the pipelines apply the same config
    file to both), so that the template holds the visit's sky.
    """

    template_fwhm = pexConfig.Field[float](doc="FWHM of the coadd PSF (arcsec).", default=0.5)
    template_depth = pexConfig.Field[float](
        doc="Number of visits the coadd averages (its noise variance is a visit's divided by this).",
        default=10.0,
    )
    template_epoch_offset = pexConfig.Field[float](
        doc="Epoch of the template's catalog stars relative to the visit (years).", default=-2.0
    )
    registration_rms = pexConfig.Field[float](
        doc="RMS registration error of the warped template, per axis (pixels).", default=0.02
    )
    template_psf_model_rms = pexConfig.Field[float](
        doc="RMS fractional error of the template's Gaussian PSF model width.", default=0.01
    )
    variable_fraction = pexConfig.Field[float](
        doc="Fraction of the stars that vary (fixed on the sky by the survey seed).", default=0.03
    )
    variable_rms = pexConfig.Field[float](
        doc="RMS (mag) of a variable star's brightness in a visit about its mean (the template's).",
        default=0.15,
    )

    def template_parameters(self) -> TemplateParameters:
        """Return the plain-function template parameters matching this config."""
        return TemplateParameters(
            fwhm_arcsec=self.template_fwhm,
            depth=self.template_depth,
            epoch_offset_years=self.template_epoch_offset,
            registration_rms_px=self.registration_rms,
            psf_model_sigma_rms=self.template_psf_model_rms,
            variable_fraction=self.variable_fraction,
            variable_rms_mag=self.variable_rms,
        )


class SimulateTemplateTask(SimulateDetectorTaskBase):
    """Simulate the template of a visit's detector: the same sky, deep and sharp.

    The template is what the difference imaging of a survey subtracts: a
    coadd of earlier visits warped onto this detector. It holds the visit's
    stars and galaxies (from the same catalog shards and seeds) through a
    coadd PSF, with the noise of ``template_depth`` visits and none of a
    visit's artefacts (`~lsst.trail_detect.simulation.scene.simulate_template`).
    """

    ConfigClass = SimulateTemplateConfig
    _DefaultName = "simulateTemplate"

    def run(self, conditions: dict, star_catalog, detector: int) -> pipeBase.Struct:
        """Simulate the template of one detector.

        Parameters
        ----------
        conditions : `dict`
            Conditions of the visit.
        star_catalog : `list`
            Star catalog shards (tables or deferred dataset handles).
        detector : `int`
            Detector ID.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``template`` (`lsst.images.VisitImage`).
        """
        from .visit_image import make_visit_image

        stars = gather_star_catalog(star_catalog)
        sim = simulate_template(
            conditions,
            detector,
            stars,
            params=self.config.scene_parameters(),
            template=self.config.template_parameters(),
            catalog_mag_limit=conditions.get("catalog_mag_limit"),
        )
        coadd = dict(conditions, seeing_fwhm_arcsec=self.config.template_fwhm)
        template = make_visit_image(sim, coadd, detector)
        template.metadata["TEMPLATE_DEPTH"] = float(self.config.template_depth)
        self.log.info(
            "Template of visit %s detector %d: %d stars and galaxies, PSF sigma %.2f px (model %.2f).",
            conditions["visit"],
            detector,
            len(sim.truth),
            sim.psf_sigma_true,
            sim.psf_sigma_model,
        )
        return pipeBase.Struct(template=template)
