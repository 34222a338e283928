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

"""detectTrails: full-detector CNN trail detection with a catalog, a mask and a probability map."""

from __future__ import annotations

__all__ = ("DetectTrailsConfig", "DetectTrailsConnections", "DetectTrailsTask")

import dataclasses

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from .inference import InferenceSettings
from .postprocess import PostprocessConfig


class DetectTrailsConnections(
    pipeBase.PipelineTaskConnections, dimensions=("instrument", "visit", "detector")
):
    """Connections of `DetectTrailsTask`."""

    exposure = cT.Input(
        doc="Calibrated single-visit image to search (visit_image, injected_visit_image; on USDF "
        "preliminary_visit_image, or calexp where a storage-class conversion to VisitImage exists).",
        name="visit_image",
        storageClass="VisitImage",
        dimensions=("instrument", "visit", "detector"),
    )
    model = cT.Input(
        doc="Trained trail segmenter with its normalization, operating threshold and score calibration.",
        name="trail_detector_model",
        storageClass="TrailDetectorModel",
        dimensions=(),
    )
    template = cT.Input(
        doc="Template the difference image was made with (use_template), on its pixel grid.",
        name="template_detector",
        storageClass="VisitImage",
        dimensions=("instrument", "visit", "detector"),
    )
    probability = cT.Output(
        doc="Per-pixel trail probability from the network (tiles blended).",
        name="trail_probability",
        storageClass="ImageV2",
        dimensions=("instrument", "visit", "detector"),
    )
    mask = cT.Output(
        doc="TRAIL plane: pixels within a few widths of each detected trail's fitted segment.",
        name="trail_mask",
        storageClass="MaskV2",
        dimensions=("instrument", "visit", "detector"),
    )
    catalog = cT.Output(
        doc="One row per detected trail: endpoints in pixels and on the sky, length, angle, width, "
        "matched-filter flux and SNR, calibrated score and flags.",
        name="trail_catalog",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config is not None and not config.write_probability:
            del self.probability
        if config is not None and not config.use_template:
            del self.template


class DetectTrailsConfig(pipeBase.PipelineTaskConfig, pipelineConnections=DetectTrailsConnections):
    """Configuration of `DetectTrailsTask`."""

    threshold = pexConfig.Field[float](
        doc="Probability threshold; None uses the model's validated operating threshold.",
        default=None,
        optional=True,
    )
    min_score = pexConfig.Field[float](
        doc="Lowest calibrated score kept; None uses the model's (chosen on validation data for its "
        "false-positive budget), 0 keeps everything above the threshold.",
        default=None,
        optional=True,
    )
    tile = pexConfig.Field[int](doc="Inference tile size (pixels).", default=512)
    overlap = pexConfig.Field[int](
        doc="Overlap of inference tiles (pixels); blending tapers over it.", default=64
    )
    batch_size = pexConfig.Field[int](doc="Tiles per forward pass.", default=4)
    device = pexConfig.Field[str](doc="auto (CUDA when available), cpu, cuda or cuda:N.", default="auto")
    precision = pexConfig.ChoiceField[str](
        doc="Arithmetic of the forward pass.",
        allowed={
            "auto": "bfloat16 autocast on CUDA, float32 on CPU",
            "float32": "float32 everywhere",
            "bfloat16": "bfloat16 autocast",
        },
        default="auto",
    )
    threads = pexConfig.Field[int](
        doc="torch CPU threads for this worker (0: leave torch's setting, e.g. from OMP_NUM_THREADS).",
        default=0,
    )
    bad_mask_planes = pexConfig.ListField[str](
        doc="Mask planes whose pixels carry no usable data (zero network input, left out of fits). "
        "Planes absent from an image are ignored.",
        default=["NO_DATA", "BAD", "SATURATED", "SAT"],
    )
    saturated_mask_planes = pexConfig.ListField[str](
        doc="Mask planes of saturated pixels (bleed-trail and spike rejection, flag_saturated).",
        default=["SATURATED", "SAT"],
    )
    no_data_mask_planes = pexConfig.ListField[str](
        doc="Mask planes outside the data region (flag_edge).", default=["NO_DATA", "DETECTION_EDGE", "EDGE"]
    )
    low_threshold_ratio = pexConfig.Field[float](
        doc="Hysteresis: pixels above threshold * this join a component reaching the threshold.", default=0.6
    )
    min_pixels = pexConfig.Field[int](doc="Smallest component considered.", default=6)
    merge_max_angle = pexConfig.Field[float](doc="Degrees within which fragments are merged.", default=5.0)
    merge_max_offset_sigma = pexConfig.Field[float](
        doc="Perpendicular offset allowed between merged fragments, in PSF sigmas.", default=2.0
    )
    merge_max_gap = pexConfig.Field[float](doc="Largest gap between merged fragments (pixels).", default=40.0)
    merge_max_masked_gap = pexConfig.Field[float](
        doc="Largest gap between merged fragments when the gap is masked pixels.", default=200.0
    )
    min_length_fwhm = pexConfig.Field[float](doc="Shortest trail kept, in PSF FWHM.", default=1.0)
    min_snr = pexConfig.Field[float](doc="Lowest matched-filter SNR kept.", default=3.0)
    cosmic_ray_width_ratio = pexConfig.Field[float](
        doc="Fitted width below this fraction of the PSF's: rejected as a cosmic ray.", default=0.45
    )
    extended_width_ratio = pexConfig.Field[float](
        doc="Fitted width above this multiple of the PSF's: rejected as extended (galaxy edge).", default=2.5
    )
    bleed_max_angle = pexConfig.Field[float](
        doc="Degrees from the columns within which a trail touching saturated pixels is a bleed trail.",
        default=3.0,
    )
    spike_radius = pexConfig.Field[float](
        doc="A trail whose line passes this close (pixels, plus the star's radius) to a saturated star "
        "within spike_length is a diffraction spike.",
        default=4.0,
    )
    spike_length = pexConfig.Field[float](doc="See spike_radius (pixels).", default=300.0)
    line_search = pexConfig.Field[bool](
        doc="Also run the model's source-masked matched-filter line search for faint trails, when the "
        "model carries one (its settings and score calibration are part of the model).",
        default=True,
    )
    calibration = pexConfig.ChoiceField[str](
        doc="Which of the model's score calibrations (operating points) to use.",
        allowed={
            "visit": "Calibrated visit images (the model's main calibration).",
            "difference": "Difference images (the model's 'difference' calibration).",
        },
        default="visit",
    )
    use_template = pexConfig.Field[bool](
        doc="Read the template of the difference image searched (connection template) and measure each "
        "candidate's template_snr; calibrations for difference images need it.",
        default=False,
    )
    source_search = pexConfig.Field[bool](
        doc="Also take every significant source as a candidate, when the model carries a source search "
        "(models calibrated on difference images).",
        default=True,
    )
    keep_rejected = pexConfig.Field[bool](
        doc="Keep rejected candidates in trail_catalog with the reason in the 'rejected' column.",
        default=False,
    )
    mask_nsigma = pexConfig.Field[float](
        doc="Half-width of the TRAIL mask around each fitted segment, in widths (PSF or fitted sigma).",
        default=3.0,
    )
    mask_plane_name = pexConfig.Field[str](doc="Plane of trail_mask.", default="TRAIL")
    write_probability = pexConfig.Field[bool](
        doc="Write trail_probability (float32, the image's size).", default=True
    )

    def validate(self):
        super().validate()
        InferenceSettings(**self.inference_settings_kwargs())
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), not {self.threshold}.")
        if not 0 < self.low_threshold_ratio <= 1:
            raise ValueError(f"low_threshold_ratio must be in (0, 1], not {self.low_threshold_ratio}.")

    def inference_settings_kwargs(self) -> dict:
        return {
            "tile": self.tile,
            "overlap": self.overlap,
            "batch_size": self.batch_size,
            "device": self.device,
            "precision": self.precision,
            "threads": self.threads,
        }

    def planes(self, exposure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The bad, saturated and no-data pixels of an exposure under these mask-plane lists."""
        from ..imageutils import any_plane, mask_planes

        planes = mask_planes(exposure)
        shape = exposure.image.array.shape
        return (
            any_plane(planes, self.bad_mask_planes, shape),
            any_plane(planes, self.saturated_mask_planes, shape),
            any_plane(planes, self.no_data_mask_planes, shape),
        )

    def postprocess_config(self, threshold: float) -> PostprocessConfig:
        """The `~.postprocess.PostprocessConfig` these fields describe."""
        fields = {f.name for f in dataclasses.fields(PostprocessConfig)}
        values = {
            name: getattr(self, name) for name in fields if name in self._fields and name != "threshold"
        }
        return PostprocessConfig(**values, threshold=threshold)


class DetectTrailsTask(pipeBase.PipelineTask):
    """Find trails in a whole detector image with a trained segmentation network.

    The image is normalized as the model's training tiles were, the network
    runs over overlapping tiles whose probabilities are blended with smooth
    weights, and the probability map is thresholded at the model's
    validated operating point. Components are fitted with lines, collinear
    fragments merged, each trail refined by a least-squares fit of a
    PSF-convolved segment, measured by matched-filter photometry, and
    rejected if it only looks like a trail (cosmic ray, extended light,
    bleed trail, diffraction spike, too short or too faint). Scores are
    mapped through the model's calibration so that a score of 0.9 means
    about 90% of such detections were real on validation data.
    """

    ConfigClass = DetectTrailsConfig
    _DefaultName = "detectTrails"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        inputs = butlerQC.get(inputRefs)
        outputs = self.run(inputs["exposure"], inputs["model"], template=inputs.get("template"))
        if not self.config.write_probability:
            del outputs.probability
        butlerQC.put(outputs, outputRefs)

    def run(self, exposure, model, template=None) -> pipeBase.Struct:
        """Detect trails.

        Parameters
        ----------
        exposure : `lsst.images.VisitImage`
            Calibrated image with variance, mask, PSF and WCS.
        model : `~lsst.trail_detect.models.storage.TrailDetectorModel`
            A ``trail`` model.
        template : `lsst.images.VisitImage`, optional
            Template of the difference image ``exposure`` (``use_template``).

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``catalog`` (`astropy.table.Table`), ``mask``
            (`lsst.images.Mask` with the TRAIL plane) and ``probability``
            (`lsst.images.Image`).
        """
        import torch

        from ..imageutils import pixel_to_sky_function, psf_sigma
        from .detect import DetectionResult, detect_trails, empty_trail_catalog, load_network, model_settings

        if model.kind != "trail":
            raise ValueError(f"detectTrails needs a 'trail' model, got a {model.kind!r} model.")
        c = self.config
        if c.threads > 0:
            torch.set_num_threads(c.threads)
        from_model = model_settings(
            model,
            threshold=c.threshold,
            min_score=c.min_score,
            line_search=c.line_search,
            source_search=c.source_search,
            calibration=c.calibration,
        )
        threshold = from_model["threshold"]
        image = exposure.image.array
        variance = exposure.variance.array
        shape = image.shape
        bad, saturated, no_data = c.planes(exposure)
        sigma = psf_sigma(exposure)
        try:
            to_sky = pixel_to_sky_function(exposure)
        except Exception as err:  # A missing or unusable WCS: pixel columns only.
            self.log.warning("No usable WCS (%s); sky coordinates will be NaN.", err)
            to_sky = None
        x0, y0 = exposure.bbox.x.start, exposure.bbox.y.start

        def pixel_to_sky(x, y):
            return to_sky(np.asarray(x) + x0, np.asarray(y) + y0)

        usable = ~bad & np.isfinite(image) & np.isfinite(variance) & (variance > 0)
        if not usable.any():
            # A fully masked detector: nothing to search, which is a result, not an error.
            self.log.warning("No usable pixel (all masked, NaN or with non-positive variance): no trails.")
            result = DetectionResult(
                catalog=empty_trail_catalog(c.keep_rejected),
                probability=np.zeros(shape, dtype=np.float32),
                mask=np.zeros(shape, dtype=bool),
                rejected={},
                timing={"normalization": 0.0, "inference": 0.0, "postprocess": 0.0},
            )
            result.catalog.meta["psf_sigma"] = float(sigma)
            return self._package(result, exposure, model, threshold, sigma)
        network = load_network(model, c.device)
        template_arrays_ = None
        if template is not None:
            from .calibration import template_arrays

            template_arrays_ = template_arrays(template, exposure)
        result = detect_trails(
            image,
            variance,
            network=network,
            psf_sigma=sigma,
            **from_model,
            bad=bad,
            saturated=saturated,
            no_data=no_data,
            pixel_to_sky=pixel_to_sky if to_sky is not None else None,
            settings=InferenceSettings(**c.inference_settings_kwargs()),
            config=c.postprocess_config(threshold),
            keep_rejected=c.keep_rejected,
            mask_nsigma=c.mask_nsigma,
            template=template_arrays_,
            workers=max(c.threads, 1),
        )
        return self._package(result, exposure, model, threshold, sigma)

    def _package(self, result, exposure, model, threshold, sigma) -> pipeBase.Struct:
        """Turn a `~.detect.DetectionResult` into the task's outputs."""
        from lsst.images import Image, Mask, MaskPlane, MaskSchema

        c = self.config
        from ..imageutils import shift_pixel_columns

        # Pixel columns in the image's parent coordinates, as Rubin catalogs are.
        catalog = shift_pixel_columns(result.catalog, exposure.bbox.x.start, exposure.bbox.y.start)
        catalog.meta["model_sha256"] = model.sha256
        n_kept = int(np.sum(catalog["rejected"] == "")) if "rejected" in catalog.colnames else len(catalog)
        self.log.info(
            "Found %d trails (threshold %.2f, PSF sigma %.2f px); rejected %s; %.1f s inference, "
            "%.1f s post-processing, %.1f s line search, %.1f s source search.",
            n_kept,
            threshold,
            sigma,
            result.rejected or "none",
            result.timing["inference"],
            result.timing["postprocess"],
            result.timing.get("line_search", 0.0),
            result.timing.get("source_search", 0.0),
        )
        self.metadata["n_trails"] = n_kept
        for reason, count in result.rejected.items():
            self.metadata[f"n_rejected_{reason}"] = count
        for step, seconds in result.timing.items():
            self.metadata[f"seconds_{step}"] = float(seconds)
        mask = Mask(
            0,
            schema=MaskSchema([MaskPlane(c.mask_plane_name, "Pixel near a detected trail.")]),
            bbox=exposure.bbox,
        )
        mask.set(c.mask_plane_name, result.mask)
        probability = Image(result.probability, bbox=exposure.bbox)
        return pipeBase.Struct(catalog=catalog, mask=mask, probability=probability)
