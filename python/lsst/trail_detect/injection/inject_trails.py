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

"""injectTrails: inject synthetic trails into a visit image, with truth."""

from __future__ import annotations

__all__ = ("InjectTrailsConfig", "InjectTrailsConnections", "InjectTrailsTask")

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT


class InjectTrailsConnections(
    pipeBase.PipelineTaskConnections, dimensions=("instrument", "visit", "detector")
):
    """Connections of `InjectTrailsTask`."""

    input_exposure = cT.Input(
        doc="Calibrated image to inject into (preliminary_visit_image or calexp on USDF).",
        name="visit_image",
        storageClass="VisitImage",
        dimensions=("instrument", "visit", "detector"),
    )
    injection_catalog = cT.Input(
        doc="Trails to inject (lsst.source.injection schema).",
        name="trail_injection_catalog",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )
    conditions = cT.Input(
        doc="Simulated visit conditions, to draw trails with the true (not the modelled) PSF.",
        name="visit_conditions",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "visit"),
    )
    output_exposure = cT.Output(
        doc="The image with the trails added, noise included, INJECTED and INJECTED_CORE set.",
        name="injected_visit_image",
        storageClass="VisitImage",
        dimensions=("instrument", "visit", "detector"),
    )
    output_catalog = cT.Output(
        doc="The injection catalog with injection_flag and the truth: flux drawn, nu_opt, nu_det, clipped "
        "endpoints.",
        name="injected_visit_image_catalog",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )
    trail_mask = cT.Output(
        doc="Truth pixels of the trails (TRAIL plane) from the noiseless model; never a detector input.",
        name="injected_trail_mask",
        storageClass="MaskV2",
        dimensions=("instrument", "visit", "detector"),
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config is not None and not config.use_simulated_true_psf:
            del self.conditions


class InjectTrailsConfig(pipeBase.PipelineTaskConfig, pipelineConnections=InjectTrailsConnections):
    """Configuration of `InjectTrailsTask`."""

    add_noise = pexConfig.Field[bool](doc="Add the trails' Poisson noise.", default=True)
    inject_variance = pexConfig.Field[bool](
        doc="Add the trails' shot noise to the variance plane.", default=True
    )
    noise_seed = pexConfig.Field[int](doc="Noise seed, combined with each injection_id.", default=0)
    mask_plane_name = pexConfig.Field[str](
        doc="Mask plane set over each trail's draw box; '_CORE' is appended for the 3x3 centre box.",
        default="INJECTED",
    )
    mask_threshold = pexConfig.Field[float](
        doc="Truth-mask pixels are where the noiseless trail exceeds this fraction of the local noise.",
        default=0.2,
    )
    trim_padding = pexConfig.Field[int](
        doc="Trails centred more than this many pixels outside the image get NO_OVERLAP.", default=100
    )
    nJy_per_electron = pexConfig.Field[float](
        doc="Conversion of image units to electrons for the shot noise; 0 takes the GAIN and NJY_PER_ADU "
        "metadata when present, else fits the variance plane against the image.",
        default=0.0,
    )
    use_simulated_true_psf = pexConfig.Field[bool](
        doc="Draw trails with the simulation's true PSF (Kolmogorov or Moffat, from visit_conditions) "
        "instead of the image's PSF model, so trails and stars share one PSF as on the sky.",
        default=False,
    )


class InjectTrailsTask(pipeBase.PipelineTask):
    """Inject synthetic trails into a calibrated visit image.

    Each trail is GalSim's ``Box(L, 1e-6)`` rotated by ``beta`` with the
    total flux of ``mag`` per pixel of length (``lsst.source.injection``'s
    convention), convolved with the PSF at its position and drawn in pixel
    units. Poisson noise is added in electrons, the variance plane gains the
    trails' shot noise, INJECTED (draw boxes) and INJECTED_CORE (3x3 at the
    centres) are set. The output catalog adds ``injection_flag``, the flux
    actually drawn on the detector, ``nu_opt`` and ``nu_det`` and the
    clipped endpoints; the truth mask marks where the noiseless model is
    above ``mask_threshold`` of the local noise.
    """

    ConfigClass = InjectTrailsConfig
    _DefaultName = "injectTrails"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        inputs = butlerQC.get(inputRefs)
        outputs = self.run(
            inputs["input_exposure"],
            inputs["injection_catalog"],
            conditions=inputs.get("conditions"),
            input_name=inputRefs.input_exposure.datasetType.name,
        )
        butlerQC.put(outputs, outputRefs)

    def run(self, input_exposure, injection_catalog, conditions=None, input_name="visit_image"):
        """Inject the trails.

        Parameters
        ----------
        input_exposure : `lsst.images.VisitImage`
            Calibrated image (nJy) with variance and PSF model.
        injection_catalog : `astropy.table.Table`
            Trails to inject.
        conditions : `dict`, optional
            Simulated visit conditions (with ``use_simulated_true_psf``).
        input_name : `str`, optional
            Dataset type injected into, recorded in the metadata.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``output_exposure``, ``output_catalog`` and ``trail_mask``.
        """
        from lsst.images import Mask, MaskPlane, MaskSchema

        from ..imageutils import mask_planes, psf_sigma, sky_to_pixel_function
        from .catalog import validate_trail_catalog
        from .render import fit_nJy_per_electron, inject_trails

        validate_trail_catalog(injection_catalog, name="injection_catalog")
        image = input_exposure.image.array
        variance = input_exposure.variance.array
        sigma = psf_sigma(input_exposure)
        import astropy.units as u

        if input_exposure.unit is None or input_exposure.unit != u.nJy:
            raise ValueError(
                f"{input_name} is in {input_exposure.unit!s}, not nJy: the trail magnitudes are AB, so "
                "the image must be calibrated to nJy."
            )
        scale = self._nJy_per_electron(input_exposure, fit_nJy_per_electron)
        psf_at = self._psf_factory(input_exposure, conditions)
        result = inject_trails(
            image,
            variance,
            injection_catalog,
            psf_at,
            sigma,
            nJy_per_electron=scale,
            add_noise=self.config.add_noise,
            inject_variance=self.config.inject_variance,
            seed=self.config.noise_seed,
            mask_threshold=self.config.mask_threshold,
            trim_padding=self.config.trim_padding,
            sky_to_pixel=sky_to_pixel_function(input_exposure),
        )
        output = input_exposure.copy()
        output.image.array[...] = result.image
        output.variance.array[...] = result.variance
        plane, core = self.config.mask_plane_name, self.config.mask_plane_name + "_CORE"
        names = set(mask_planes(output))
        if plane not in names or core not in names:
            raise RuntimeError(
                f"the input image has no {plane} or {core} mask plane to record the injection."
            )
        output.mask.set(plane, result.injected)
        output.mask.set(core, result.injected_core)
        output.metadata["INJECTED"] = input_name
        output.metadata["HAS_SIMULATED_CONTENT"] = True
        output.metadata["INJECTION_NJY_PER_ELECTRON"] = float(scale)
        truth_mask = Mask(
            0,
            schema=MaskSchema([MaskPlane("TRAIL", "Pixel of an injected trail (truth).")]),
            bbox=input_exposure.bbox,
        )
        truth_mask.set("TRAIL", result.trail_mask)
        catalog = result.catalog
        n_ok = int(np.sum(catalog["injection_flag"] == 0))
        self.log.info(
            "Injected %d of %d trails (%.1f e-/nJy); %d truth-mask pixels.",
            n_ok,
            len(catalog),
            1.0 / scale,
            int(result.trail_mask.sum()),
        )
        return pipeBase.Struct(output_exposure=output, output_catalog=catalog, trail_mask=truth_mask)

    def _nJy_per_electron(self, exposure, fit) -> float:
        """Return the image units per electron (config, metadata or a variance fit)."""
        if self.config.nJy_per_electron > 0:
            return float(self.config.nJy_per_electron)
        meta = exposure.metadata
        if "GAIN" in meta and "NJY_PER_ADU" in meta:
            return float(meta["NJY_PER_ADU"]) / float(meta["GAIN"])
        good = np.ones(exposure.image.array.shape, dtype=bool)
        for name in ("BAD", "SATURATED", "COSMIC_RAY", "NO_DATA", "SUSPECT", "INTERPOLATED"):
            if name in exposure.mask.schema.names:
                good &= ~exposure.mask.get(name)
        return fit(exposure.image.array, exposure.variance.array, good)

    def _psf_factory(self, exposure, conditions):
        """Return ``psf_at(x, y) -> (galsim profile in pixels, includes_pixel)``."""
        import galsim

        if self.config.use_simulated_true_psf:
            if conditions is None:
                raise RuntimeError("use_simulated_true_psf needs the visit_conditions input.")
            from ..simulation.camera import PIXEL_SCALE_ARCSEC
            from ..simulation.scene import make_true_psf

            true_psf = make_true_psf(conditions).dilate(1.0 / PIXEL_SCALE_ARCSEC)
            return lambda x, y: (true_psf, False)
        psf = exposure.psf

        def psf_at(x, y):
            kernel = psf.compute_kernel_image(x=x, y=y).array
            return galsim.InterpolatedImage(
                galsim.Image(np.ascontiguousarray(kernel, dtype=float), scale=1.0), normalization="flux"
            ), True

        return psf_at
