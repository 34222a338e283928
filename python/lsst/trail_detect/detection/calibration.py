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

__all__ = (
    "CalibrationSample",
    "butler_samples",
    "calibrate_trail_model",
    "choose_min_score",
    "template_arrays",
)

import copy
import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..evaluation.metrics import DETECTOR_4K_PIXELS
from .detect import (
    CALIBRATIONS,
    LINE_SCORE_FEATURES,
    SCORE_FEATURES,
    SOURCE_SCORE_FEATURES,
    TEMPLATE_FEATURE,
    apply_score_calibration,
    detect_trails,
    fit_score_calibration,
    load_network,
    model_settings,
    resolve_duplicates,
)
from .inference import InferenceSettings
from .line_search import LineSearchConfig
from .postprocess import PostprocessConfig, TrailCandidate
from .source_search import SourceSearchConfig

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
    template : `tuple`, optional
        ``(image, variance, psf_sigma)`` of the template of a difference
        image, as for `~.detect.detect_trails`.
    """

    image: np.ndarray
    variance: np.ndarray
    truth: Any
    psf_sigma: float
    bad: np.ndarray | None = None
    saturated: np.ndarray | None = None
    no_data: np.ndarray | None = None
    label: str = ""
    template: tuple | None = None


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


def _candidates_from_rows(catalog) -> list[TrailCandidate]:
    """Segments of catalog rows, with what `~.detect.resolve_duplicates` compares."""
    empty = np.zeros(0, dtype=int)
    out = []
    for row in catalog:
        c = TrailCandidate(
            float(row["x_start"]),
            float(row["y_start"]),
            float(row["x_end"]),
            float(row["y_end"]),
            empty,
            empty,
            np.zeros(0),
            max_probability=float(row["max_probability"]),
            origin=str(row["origin"]),
        )
        c.score = float(row["score"])
        out.append(c)
    return out


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
    line_search: LineSearchConfig | None = None,
    source_search: SourceSearchConfig | None = None,
    workers: int = 1,
    folds: int = 4,
    target: str = "visit",
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
    line_search : `~.line_search.LineSearchConfig`, optional
        Also run the line search, calibrate its candidates' scores
        (logistic on `~.detect.LINE_SCORE_FEATURES`) and store both in the
        model, which then runs it in `~.detect_trails.DetectTrailsTask`.
        Without it, a line search the model already has is dropped.
    source_search : `~.source_search.SourceSearchConfig`, optional
        Also take every significant source as a candidate (difference
        images), calibrate those candidates' scores (logistic on
        `~.detect.SOURCE_SCORE_FEATURES`) and store the search in the model,
        as ``line_search``.
    workers : `int`, optional
        Threads of the line search's FFTs.
    folds : `int`, optional
        ``min_score`` is chosen on out-of-fold scores: the images are dealt
        into this many folds, and each fold's candidates are scored with the
        calibration fitted on the other folds' images. The scores a
        calibration gives the images it was fitted on are too optimistic
        for a false-positive budget to hold on new images. 1 chooses it on
        the in-sample scores.
    target : `str`, optional
        Which calibration of the model this is: ``"visit"`` (the top-level
        metadata, for calibrated visit images) or ``"difference"`` (metadata
        ``difference``, for difference images); the other is kept as it is.

    Returns
    -------
    calibrated : `~lsst.trail_detect.models.storage.TrailDetectorModel`
        A copy with ``score_calibration`` and ``min_score`` (and
        ``line_search``) in its metadata; the calibration also records what
        it was measured on.
    summary : `dict`
        Counts and rates on the validation images.

    Notes
    -----
    Each source's calibration is fitted on its own candidates, labelled by
    matching them alone to the truth (a piece of a trail that another
    match covers is neither real nor false). The two sources' candidates
    are then joined as the detection joins them, one per trail by
    calibrated score, and ``min_score`` is the one cut on the joined
    catalog that keeps the false positives within the budget, with each
    image scored by the calibration fitted without it (``folds``). The
    calibration stored is fitted on all the images; the summary's rates
    are those of the out-of-fold scores.
    """
    from ..evaluation.matching import match_trails

    network = (
        network if network is not None else load_network(model, (settings or InferenceSettings()).device)
    )
    settings_from_model = model_settings(model, threshold=threshold, min_score=0.0, line_search=False)
    settings_from_model["score_calibration"] = None  # raw scores are what is calibrated
    for key in ("line_search", "line_score_calibration", "source_search", "source_score_calibration"):
        del settings_from_model[key]
    threshold = settings_from_model["threshold"]
    origins = (
        ("cnn",)
        + (("line",) if line_search is not None else ())
        + (("source",) if source_search is not None else ())
    )
    features = {"cnn": SCORE_FEATURES, "line": LINE_SCORE_FEATURES, "source": SOURCE_SCORE_FEATURES}
    with_template = None
    if folds < 1:
        raise ValueError(f"folds must be at least 1, not {folds}.")
    if target not in CALIBRATIONS:
        raise ValueError(f"unknown calibration target {target!r}; use one of {CALIBRATIONS}.")
    # Per image and origin: the candidates' properties and whether each is real.
    properties, real = [], []
    images = []
    n_images = 0
    pixels = 0
    for sample in samples:
        if with_template is None:
            # Difference images with their templates: every source's calibration also weighs what
            # lies under the candidate in the template.
            with_template = sample.template is not None
            if with_template:
                features = {origin: tuple(names) + (TEMPLATE_FEATURE,) for origin, names in features.items()}
        elif with_template != (sample.template is not None):
            raise ValueError(f"{sample.label}: either every calibration image has a template or none has.")
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
            keep_rejected=True,
            line_search=line_search,
            source_search=source_search,
            template=sample.template,
            workers=workers,
        )
        catalog = result.catalog
        # Candidates the shape tests kept; duplicates are resolved again below with calibrated scores.
        catalog = catalog[(catalog["rejected"] == "") | (catalog["rejected"] == "duplicate")]
        properties.append({})
        real.append({})
        for origin in origins:
            sub = catalog[catalog["origin"] == origin]
            status = np.asarray(match_trails(sub, sample.truth, psf_sigma=sample.psf_sigma).det_status)
            keep = status != "fragment"  # fragments of a real trail are neither real nor false
            properties[-1][origin] = {
                name: np.asarray(sub[name], dtype=float)[keep] for name in features[origin]
            }
            real[-1][origin] = (status == "matched")[keep]
        images.append((catalog, sample.truth, sample.psf_sigma))
        n_images += 1
        pixels += sample.image.size
        _LOG.info(
            "%s: %d candidates (%s).",
            sample.label or f"image {n_images}",
            len(catalog),
            ", ".join(f"{o}: {int(np.sum(catalog['origin'] == o))}" for o in origins),
        )
    if n_images == 0:
        raise ValueError("no validation images to calibrate the scores on.")

    def fit(members: list[int]) -> dict:
        """The calibration of each origin, fitted on the candidates of the images ``members``."""
        out = {}
        for origin in origins:
            values = {
                name: np.concatenate([properties[i][origin][name] for i in members])
                for name in features[origin]
            }
            is_real = np.concatenate([real[i][origin] for i in members]).astype(bool)
            if is_real.sum() == 0 or is_real.sum() == is_real.size:
                raise ValueError(
                    f"score calibration needs both real and false detections; the {origin} candidates of "
                    f"{len(members)} images have {int(is_real.sum())} real and "
                    f"{int(is_real.size - is_real.sum())} false (fewer folds or more images help)."
                )
            out[origin] = fit_score_calibration(
                values, is_real, method=method if origin == "cnn" else "logistic", features=features[origin]
            )
        return out

    calibrations = fit(list(range(n_images)))
    folds = min(folds, n_images)
    if folds > 1:
        fold_of = np.arange(n_images) % folds
        out_of_fold = [fit([i for i in range(n_images) if fold_of[i] != k]) for k in range(folds)]
        image_calibrations = [out_of_fold[fold_of[i]] for i in range(n_images)]
    else:
        image_calibrations = [calibrations] * n_images

    # The joined catalog, as the detection makes it, and one cut on it.
    scores, false, matched = [], [], []
    truth_nu_det, truth_score = [], []
    n_matched = n_truth = 0
    for (catalog, truth, psf_sigma), image_calibration in zip(images, image_calibrations):
        catalog = catalog.copy()
        catalog["score"] = np.zeros(len(catalog))
        for origin in origins:
            rows = catalog["origin"] == origin
            catalog["score"][rows] = apply_score_calibration(catalog[rows], image_calibration[origin])
        candidates = _candidates_from_rows(catalog)
        joined = [c for c in candidates if c.origin == "cnn"]
        for origin in ("line", "source"):
            joined = resolve_duplicates(joined, [c for c in candidates if c.origin == origin], psf_sigma)
        joined = [c for c in joined if not c.rejected]
        index_of = {id(c): k for k, c in enumerate(candidates)}
        order = [index_of[id(c)] for c in joined]
        kept = catalog[order]
        match = match_trails(kept, truth, psf_sigma=psf_sigma)
        n_truth += match.n_truth
        status = np.asarray(match.det_status)
        if "nu_det" in truth.colnames:
            valid = np.asarray(match.truth_valid)
            det = np.asarray(match.truth_to_det)[valid]
            truth_nu_det.extend(np.asarray(truth["nu_det"], dtype=float)[valid])
            kept_scores = np.asarray(kept["score"], dtype=float)
            truth_score.extend(
                np.where(det >= 0, kept_scores[np.clip(det, 0, None)] if len(kept) else 0, np.nan)
            )
        scores.extend(np.asarray(kept["score"], dtype=float))
        false.extend(status == "false_positive")
        matched.extend(status == "matched")
        n_matched += int(np.sum(status == "matched"))
    scores = np.asarray(scores, dtype=float)
    false, matched = np.asarray(false, dtype=bool), np.asarray(matched, dtype=bool)
    area_4k = pixels / DETECTOR_4K_PIXELS
    min_score = choose_min_score(scores, false, area_4k, max_fp_per_detector)
    above = scores >= min_score
    summary = {
        "n_images": n_images,
        "area_4k_detectors": area_4k,
        "n_truth": n_truth,
        "n_matched": n_matched,
        "n_detections": int(np.sum(false | matched)),
        "n_false_positives": int(false.sum()),
        "false_positives_per_4k_detector": float(false.sum() / area_4k),
        "min_score": min_score,
        "max_fp_per_4k_detector": max_fp_per_detector,
        "completeness_at_min_score": float(np.sum(matched & above) / max(n_truth, 1)),
        "false_positives_per_4k_detector_at_min_score": float(np.sum(false & above) / area_4k),
        "threshold": float(threshold),
        "folds": int(folds),
    }
    if truth_nu_det:
        # Completeness at min_score in the nu_det bins of the evaluation.
        nu, found = np.asarray(truth_nu_det), np.asarray(truth_score) >= min_score
        summary["completeness_at_min_score_nu_det"] = {
            f"{lo:g}-{hi:g}": float(found[(nu >= lo) & (nu < hi)].mean())
            if np.any((nu >= lo) & (nu < hi))
            else None
            for lo, hi in ((2, 5), (5, 10), (10, 31))
        }
    for origin in origins[1:]:
        summary[f"n_{origin}_candidates"] = int(sum(len(r[origin]) for r in real))
        summary[f"n_{origin}_real"] = int(sum(np.sum(r[origin]) for r in real))
    calibration = calibrations["cnn"]
    calibration["validation"] = dict(summary, **({"provenance": provenance} if provenance else {}))
    result = {"score_calibration": calibration, "min_score": min_score}
    if line_search is not None:
        result["line_search"] = {"config": line_search.to_dict(), "score_calibration": calibrations["line"]}
    if source_search is not None:
        result["source_search"] = {
            "config": source_search.to_dict(),
            "score_calibration": calibrations["source"],
        }
    metadata = copy.deepcopy(model.metadata)
    if target == "difference":
        metadata["difference"] = result
    else:
        for key in ("line_search", "source_search"):
            metadata.pop(key, None)
        metadata.update(result)
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
    template_type: str | None = None,
):
    """Yield `CalibrationSample` for the (visit, detector) pairs of one split in a repository.

    ``split`` may name several splits, comma-separated (``validation,test``:
    every image the training never saw), or be ``all``: every image, for a
    survey that no training saw. The split is the deterministic
    assignment the tile builders use
    (`~lsst.trail_detect.tiles.tiling.assign_split` with the same fractions
    and seed), so validation images are never training images. The mask
    planes are read as ``detect_config`` (a
    `~.detect_trails.DetectTrailsConfig`, default: its defaults) says.
    With ``template_type`` (e.g. ``template_detector``) each sample also
    carries the template of its difference image.
    """
    from ..imageutils import psf_sigma, shift_pixel_columns
    from ..tiles.tiling import assign_split
    from .detect_trails import DetectTrailsConfig

    detect_config = detect_config if detect_config is not None else DetectTrailsConfig()
    splits = {name.strip() for name in split.split(",")}
    every = splits == {"all"}
    unknown = splits - {"train", "validation", "test"} if not every else set()
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; use train, validation, test or all.")
    if "train" in splits:
        _LOG.warning("Calibrating on training images: the scores will be too optimistic.")

    refs = sorted(
        butler.query_datasets(image_type, where=where, limit=None, explain=False),
        key=lambda r: (r.dataId["visit"], r.dataId["detector"]),
    )
    for ref in refs:
        visit, detector = int(ref.dataId["visit"]), int(ref.dataId["detector"])
        if not every and assign_split(visit, detector, tuple(split_fractions), split_seed) not in splits:
            continue
        exposure = butler.get(ref)
        truth = butler.get(truth_type, ref.dataId)
        bad, saturated, no_data = detect_config.planes(exposure)
        truth = shift_pixel_columns(truth, -exposure.bbox.x.start, -exposure.bbox.y.start)
        template = None
        if template_type:
            template = template_arrays(butler.get(template_type, ref.dataId), exposure)
        yield CalibrationSample(
            image=exposure.image.array,
            variance=exposure.variance.array,
            truth=truth,
            psf_sigma=psf_sigma(exposure),
            bad=bad,
            saturated=saturated,
            no_data=no_data,
            label=f"visit {visit} detector {detector}",
            template=template,
        )


def template_arrays(template, exposure) -> tuple[np.ndarray, np.ndarray, float]:
    """The ``(image, variance, psf_sigma)`` of a template for `~.detect.detect_trails`.

    Raises
    ------
    ValueError
        If the template is not on the image's pixel grid.
    """
    from ..imageutils import psf_sigma, variance_with_missing

    if template.bbox != exposure.bbox:
        raise ValueError(f"template bounding box {template.bbox} does not match the image's {exposure.bbox}.")
    return (
        np.asarray(template.image.array, dtype=np.float32),
        variance_with_missing(template),
        psf_sigma(template),
    )
