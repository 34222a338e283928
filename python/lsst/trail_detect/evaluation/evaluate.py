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

"""evaluateTrailDetection: completeness, false positives, ROC and calibration over many images."""

from __future__ import annotations

__all__ = (
    "EvaluateTrailDetectionConfig",
    "EvaluateTrailDetectionConnections",
    "EvaluateTrailDetectionTask",
    "summary_figure",
)

import tempfile

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

_IMAGE_DIMS = ("instrument", "visit", "detector")


class EvaluateTrailDetectionConnections(pipeBase.PipelineTaskConnections, dimensions=("instrument",)):
    """Connections of `EvaluateTrailDetectionTask`."""

    matches = cT.Input(
        doc="Per-image match tables (all of the input collections).",
        name="trail_matches",
        storageClass="ArrowAstropy",
        dimensions=_IMAGE_DIMS,
        multiple=True,
        deferLoad=True,
    )
    probabilities = cT.Input(
        doc="CNN probability maps, for the pixel-level curves.",
        name="trail_probability",
        storageClass="ImageV2",
        dimensions=_IMAGE_DIMS,
        multiple=True,
        deferLoad=True,
    )
    truth_masks = cT.Input(
        doc="Truth pixels of the injected trails, for the pixel-level curves.",
        name="injected_trail_mask",
        storageClass="MaskV2",
        dimensions=_IMAGE_DIMS,
        multiple=True,
        deferLoad=True,
    )
    metrics = cT.Output(
        doc="Completeness against nu_det, nu_opt and length for the CNN, the stack-like detection, the Hough "
        "baseline and the ideal detector; false positives per 4k detector by class; purity; ROC, PR and "
        "calibration curves; the goals and whether they are met.",
        name="trail_detection_metrics",
        storageClass="StructuredDataDict",
        dimensions=("instrument",),
    )
    plots = cT.Output(
        doc="Completeness, ROC/PR, calibration and false-positive plots in one figure.",
        name="trail_detection_plots",
        storageClass="Plot",
        dimensions=("instrument",),
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config is not None and not config.do_pixel_level:
            del self.probabilities
            del self.truth_masks


class EvaluateTrailDetectionConfig(
    pipeBase.PipelineTaskConfig, pipelineConnections=EvaluateTrailDetectionConnections
):
    """Configuration of `EvaluateTrailDetectionTask`."""

    nu_det_edges = pexConfig.ListField[float](
        doc="nu_det bins (those of the published trail-CNN blind test).", default=[2.0, 5.0, 10.0, 31.0]
    )
    length_edges = pexConfig.ListField[float](
        doc="Trail length bins (pixels).", default=[0, 10, 20, 40, 1000]
    )
    min_score = pexConfig.Field[float](doc="Calibrated score cut of the CNN detections.", default=0.0)
    ideal_threshold = pexConfig.Field[float](
        doc="Threshold t of the ideal matched-filter detector, Phi(nu_opt - t).", default=6.0
    )
    shape_threshold = pexConfig.Field[float](
        doc="Significance threshold of the shape-limited ideal detector's trail-or-point-source test "
        "(3 lets about 10 of the 7400 stack sources of a 4k detector through); None leaves that curve out.",
        default=3.0,
        optional=True,
    )
    do_pixel_level = pexConfig.Field[bool](doc="Pixel-level ROC and PR curves.", default=True)
    pixels_per_image = pexConfig.Field[int](
        doc="Pixels sampled uniformly per image for the pixel-level curves.",
        default=200_000,
    )
    seed = pexConfig.Field[int](doc="Seed of the pixel sampling.", default=0)


def summary_figure(metrics: dict):
    """Return one matplotlib figure with the evaluation plots as panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    from .plots import make_all_plots

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_all_plots(metrics, tmp)
        images = {name: mpimg.imread(path) for name, path in paths.items()}
    n = len(images)
    ncols = 2
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(16, 6 * nrows))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, (name, image) in zip(np.ravel(axes), images.items()):
        ax.imshow(image)
        ax.set_title(name.replace("_", " "))
    fig.tight_layout()
    return fig


class EvaluateTrailDetectionTask(pipeBase.PipelineTask):
    """Gather the match tables of many images and measure the detection.

    Completeness per ``nu_det`` bin (2-5, 5-10, 10-31, the published
    trail-CNN blind-test bins) and against ``nu_opt`` per length bin for the
    CNN, the stack-like 5 sigma detection, the classical Hough baseline and
    the ideal matched-filter detector ``Phi(nu_opt - t)`` and the ideal
    detector that must also tell each trail from a point source; the offset of the
    CNN's 50% point from the ideal one; false positives per 4k x
    4k-equivalent detector and their classes; purity; object- and
    pixel-level ROC and precision-recall curves with their areas; the score
    calibration curve; and the goals with whether they are met.
    """

    ConfigClass = EvaluateTrailDetectionConfig
    _DefaultName = "evaluateTrailDetection"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        tables = [butlerQC.get(ref).get() for ref in inputRefs.matches]
        pixel_scores, pixel_labels = None, None
        if self.config.do_pixel_level:
            probabilities = {_key(ref): ref for ref in inputRefs.probabilities}
            masks = {_key(ref): ref for ref in inputRefs.truth_masks}
            rng = np.random.default_rng(self.config.seed)
            pixel_scores, pixel_labels = [], []
            for key in sorted(set(probabilities) & set(masks)):
                probability = butlerQC.get(probabilities[key]).get().array
                label = butlerQC.get(masks[key]).get().get("TRAIL")
                scores, labels = sample_pixels(probability, label, self.config.pixels_per_image, rng)
                pixel_scores.append(scores)
                pixel_labels.append(labels)
        outputs = self.run(tables, pixel_scores=pixel_scores, pixel_labels=pixel_labels)
        butlerQC.put(outputs, outputRefs)

    def run(self, tables, pixel_scores=None, pixel_labels=None) -> pipeBase.Struct:
        """Measure the detection from match tables.

        Parameters
        ----------
        tables : `list` [`astropy.table.Table`]
            ``trail_matches`` of each image.
        pixel_scores, pixel_labels : `list` [`numpy.ndarray`], optional
            Sampled pixel probabilities and truth labels.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``metrics`` (`dict`) and ``plots`` (`matplotlib.figure.Figure`).
        """
        from astropy.table import vstack

        from .metrics import evaluate_matches, headline_table

        if not tables:
            raise ValueError("no trail_matches to evaluate in the input collections.")
        table = vstack(list(tables), join_type="outer", metadata_conflicts="silent")
        c = self.config
        metrics = evaluate_matches(
            table,
            nu_det_edges=tuple(c.nu_det_edges),
            length_edges=tuple(c.length_edges),
            min_score=c.min_score,
            ideal_threshold=c.ideal_threshold,
            shape_threshold=c.shape_threshold,
            pixel_scores=pixel_scores,
            pixel_labels=pixel_labels,
        )
        for line in headline_table(metrics).splitlines():
            self.log.info(line)
        met = sum(bool(goal["met"]) for goal in metrics["goals"])
        self.log.info("Goals met: %d of %d.", met, len(metrics["goals"]))
        return pipeBase.Struct(metrics=metrics, plots=summary_figure(metrics))


def _key(ref) -> tuple[int, int]:
    return int(ref.dataId["visit"]), int(ref.dataId["detector"])


def sample_pixels(
    probability: np.ndarray, label: np.ndarray, n_pixels: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A uniform random sample of ``n_pixels`` pixels with their probabilities and truth labels.

    Uniform, so that both the ROC and the precision-recall curves of the
    sample estimate those of all pixels without bias.
    """
    probability = np.asarray(probability, dtype=np.float32).ravel()
    label = np.asarray(label, dtype=bool).ravel()
    if probability.size != label.size:
        raise ValueError(f"probability map ({probability.size} px) and truth mask ({label.size} px) differ.")
    index = rng.choice(probability.size, min(n_pixels, probability.size), replace=False)
    return probability[index], label[index]
