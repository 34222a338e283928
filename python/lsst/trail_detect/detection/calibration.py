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

"""Score calibration and the operating point of a trail model, from validation images.

The network's raw score (its mean probability along a detected segment)
is not a probability that the detection is real. `calibrate_trail_model`
runs the whole detection on validation images with injected trails,
matches the detections to the truth by segment geometry, and fits the
probability that a detection is real from its properties (a logistic
regression on the network's mean and highest probability along the trail,
its length and its matched-filter SNR; or an isotonic map of the mean
probability alone), so that a calibrated score of 0.9 means about 90% of
such detections were real. It
also chooses ``min_score``: the lowest calibrated score at which the false
positives per 4k x 4k-equivalent detector stay within a budget.
"""

from __future__ import annotations

__all__ = ("CalibrationSample", "butler_samples", "calibrate_trail_model", "choose_min_score")

import copy
import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..evaluation.metrics import DETECTOR_4K_PIXELS
from .detect import (
    SCORE_FEATURES,
    apply_score_calibration,
    detect_trails,
    fit_score_calibration,
    load_network,
    model_settings,
)
from .inference import InferenceSettings
from .postprocess import PostprocessConfig

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class CalibrationSample:
    """One validation image with its truth.

    Attributes
    ----------
    image, variance : `numpy.ndarray`
        The injected image and its variance.
    truth : `astropy.table.Table`
        ``injected_visit_image_catalog`` rows (pixel endpoints in the
        image's array coordinates, ``injection_flag``).
    psf_sigma : `float`
        PSF sigma in pixels.
    bad, saturated, no_data : `numpy.ndarray`, optional
        Mask planes as for `~.detect.detect_trails`.
    label : `str`
        Name for messages (e.g. the data ID).
    """

    image: np.ndarray
    variance: np.ndarray
    truth: Any
    psf_sigma: float
    bad: np.ndarray | None = None
    saturated: np.ndarray | None = None
    no_data: np.ndarray | None = None
    label: str = ""


def choose_min_score(
    scores: np.ndarray, is_false: np.ndarray, area_4k: float, max_fp_per_detector: float
) -> float:
    """Lowest score cut whose false positives per 4k detector stay within the budget.

    Parameters
    ----------
    scores : `numpy.ndarray`
        Calibrated scores of all detections.
    is_false : `numpy.ndarray`
        Whether each is a false positive.
    area_4k : `float`
        Searched area in units of 4k x 4k detectors.
    max_fp_per_detector : `float`
        The budget.

    Returns
    -------
    min_score : `float`
        0 if every detection fits the budget; otherwise the smallest score
        above which the budget holds.
    """
    scores = np.asarray(scores, dtype=float)
    is_false = np.asarray(is_false, dtype=bool)
    if area_4k <= 0:
        raise ValueError(f"the searched area must be positive, not {area_4k}.")
    if is_false.sum() / area_4k <= max_fp_per_detector:
        return 0.0
    candidates = np.unique(scores)
    for cut in candidates:
        if np.sum(is_false & (scores >= cut)) / area_4k <= max_fp_per_detector:
            return float(cut)
    return float(np.nextafter(candidates[-1], np.inf))


def calibrate_trail_model(
    model,
    samples: Iterable[CalibrationSample],
    *,
    network=None,
    threshold: float | None = None,
    settings: InferenceSettings | None = None,
    config: PostprocessConfig | None = None,
    max_fp_per_detector: float = 10.0,
    method: str = "logistic",
    provenance: dict | None = None,
):
    """Calibrate a trail model's scores on validation images with injected trails.

    Parameters
    ----------
    model : `~lsst.trail_detect.models.storage.TrailDetectorModel`
        A ``trail`` model (left unchanged).
    samples : iterable of `CalibrationSample`
        Validation images (never used in training).
    network : `torch.nn.Module`, optional
        From `~.detect.load_network`.
    threshold : `float`, optional
        Probability threshold (default: the model's).
    settings, config : optional
        Inference and post-processing parameters.
    max_fp_per_detector : `float`, optional
        False-positive budget per 4k x 4k-equivalent detector for
        ``min_score``.
    method : `str`, optional
        ``logistic`` (the network's mean and highest probability, length and
        SNR) or ``isotonic`` (the mean probability alone); see
        `~.detect.fit_score_calibration`.
    provenance : `dict`, optional
        Recorded with the calibration (e.g. the collections).

    Returns
    -------
    calibrated : `~lsst.trail_detect.models.storage.TrailDetectorModel`
        A copy with ``score_calibration`` and ``min_score`` in its metadata
        (the calibration also records what it was measured on).
    summary : `dict`
        Counts and rates on the validation images.
    """
    from ..evaluation.matching import match_trails

    network = (
        network if network is not None else load_network(model, (settings or InferenceSettings()).device)
    )
    settings_from_model = model_settings(model, threshold=threshold, min_score=0.0)
    settings_from_model["score_calibration"] = None  # raw scores are what is calibrated
    threshold = settings_from_model["threshold"]
    properties = {name: [] for name in SCORE_FEATURES}
    real, false = [], []
    n_images = n_truth = n_matched = 0
    pixels = 0
    for sample in samples:
        result = detect_trails(
            sample.image,
            sample.variance,
            network=network,
            psf_sigma=sample.psf_sigma,
            **settings_from_model,
            bad=sample.bad,
            saturated=sample.saturated,
            no_data=sample.no_data,
            settings=settings,
            config=config,
        )
        catalog = result.catalog
        match = match_trails(catalog, sample.truth, psf_sigma=sample.psf_sigma)
        status = np.asarray(match.det_status)
        keep = status != "fragment"  # fragments of a real trail are neither real nor false
        for name in SCORE_FEATURES:
            properties[name].extend(np.asarray(catalog[name], dtype=float)[keep])
        real.extend((status == "matched")[keep])
        false.extend((status == "false_positive")[keep])
        n_images += 1
        n_truth += match.n_truth
        n_matched += match.n_matched
        pixels += sample.image.size
        _LOG.info(
            "%s: %d detections, %d of %d injected trails matched, %d false positives.",
            sample.label or f"image {n_images}",
            len(catalog),
            match.n_matched,
            match.n_truth,
            match.n_false_positives,
        )
    if n_images == 0:
        raise ValueError("no validation images to calibrate the scores on.")
    properties = {name: np.asarray(values, dtype=float) for name, values in properties.items()}
    real, false = np.asarray(real, dtype=bool), np.asarray(false, dtype=bool)
    if real.sum() == 0 or false.sum() == 0:
        raise ValueError(
            f"score calibration needs both real and false detections; got {int(real.sum())} real and "
            f"{int(false.sum())} false over {n_images} images."
        )
    calibration = fit_score_calibration(properties, real, method=method)
    scores = apply_score_calibration(properties, calibration)
    area_4k = pixels / DETECTOR_4K_PIXELS
    min_score = choose_min_score(scores, false, area_4k, max_fp_per_detector)
    above = scores >= min_score
    summary = {
        "n_images": n_images,
        "area_4k_detectors": area_4k,
        "n_truth": n_truth,
        "n_matched": n_matched,
        "n_detections": int(real.size),
        "n_false_positives": int(false.sum()),
        "false_positives_per_4k_detector": float(false.sum() / area_4k),
        "min_score": min_score,
        "max_fp_per_4k_detector": max_fp_per_detector,
        "completeness_at_min_score": float(np.sum(real & above) / max(n_truth, 1)),
        "false_positives_per_4k_detector_at_min_score": float(np.sum(false & above) / area_4k),
        "threshold": float(threshold),
    }
    calibration["validation"] = dict(summary, **({"provenance": provenance} if provenance else {}))
    metadata = copy.deepcopy(model.metadata)
    metadata["score_calibration"] = calibration
    metadata["min_score"] = min_score
    calibrated = type(model)(
        kind=model.kind, architecture=model.architecture, tensors=model.tensors, metadata=metadata
    )
    return calibrated, summary


def butler_samples(
    butler,
    *,
    split: str = "validation",
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    split_seed: int = 0,
    where: str = "",
    image_type: str = "injected_visit_image",
    truth_type: str = "injected_visit_image_catalog",
    detect_config=None,
):
    """Yield `CalibrationSample` for the (visit, detector) pairs of one split in a repository.

    The split is the deterministic assignment the tile builders use
    (`~lsst.trail_detect.tiles.tiling.assign_split` with the same fractions
    and seed), so validation images are never training images. The mask
    planes are read as ``detect_config`` (a
    `~.detect_trails.DetectTrailsConfig`, default: its defaults) says.
    """
    from ..imageutils import psf_sigma, shift_pixel_columns
    from ..tiles.tiling import assign_split
    from .detect_trails import DetectTrailsConfig

    detect_config = detect_config if detect_config is not None else DetectTrailsConfig()

    refs = sorted(
        butler.query_datasets(image_type, where=where, limit=None, explain=False),
        key=lambda r: (r.dataId["visit"], r.dataId["detector"]),
    )
    for ref in refs:
        visit, detector = int(ref.dataId["visit"]), int(ref.dataId["detector"])
        if assign_split(visit, detector, tuple(split_fractions), split_seed) != split:
            continue
        exposure = butler.get(ref)
        truth = butler.get(truth_type, ref.dataId)
        bad, saturated, no_data = detect_config.planes(exposure)
        truth = shift_pixel_columns(truth, -exposure.bbox.x.start, -exposure.bbox.y.start)
        yield CalibrationSample(
            image=exposure.image.array,
            variance=exposure.variance.array,
            truth=truth,
            psf_sigma=psf_sigma(exposure),
            bad=bad,
            saturated=saturated,
            no_data=no_data,
            label=f"visit {visit} detector {detector}",
        )
