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

"""Trail detection on one image: normalization, inference, post-processing, catalog.

`detect_trails` is the whole job on plain arrays; `DetectTrailsTask` and
``trail-detect detect-fits`` only wire their inputs to it.
"""

from __future__ import annotations

__all__ = (
    "TRAIL_CATALOG_COLUMNS",
    "DetectionResult",
    "LINE_SCORE_FEATURES",
    "SCORE_FEATURES",
    "apply_score_calibration",
    "detect_trails",
    "empty_trail_catalog",
    "fit_score_calibration",
    "score_features",
    "line_probability",
    "load_network",
    "trail_catalog_from_rows",
    "model_settings",
)

import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..tiles.normalization import Normalization, apply_normalization, fit_normalization
from .inference import InferenceSettings, predict_probability, resolve_device
from .line_search import LineSearchConfig, extend_segment, segment_chunk_snr
from .line_search import line_search as run_line_search
from .postprocess import (
    PostprocessConfig,
    TrailCandidate,
    classify_candidate,
    component_lines,
    find_components,
    fit_trail,
    merge_collinear,
    same_trail,
    saturated_blobs,
    segment_band,
    trail_photometry,
)
from .source_search import SourceSearchConfig
from .source_search import source_search as run_source_search

_LOG = logging.getLogger(__name__)

#: Columns of ``trail_catalog``: name -> (dtype, unit, description).
TRAIL_CATALOG_COLUMNS: dict[str, tuple[Any, str | None, str]] = {
    "trail_id": (np.int64, None, "Trail number within the image (0-based)."),
    "x": (np.float64, "pix", "Column of the segment centre (0-based)."),
    "y": (np.float64, "pix", "Row of the segment centre (0-based)."),
    "x_start": (np.float64, "pix", "Column of the first endpoint."),
    "y_start": (np.float64, "pix", "Row of the first endpoint."),
    "x_end": (np.float64, "pix", "Column of the second endpoint."),
    "y_end": (np.float64, "pix", "Row of the second endpoint."),
    "ra": (np.float64, "deg", "Right ascension of the centre (NaN without a WCS)."),
    "dec": (np.float64, "deg", "Declination of the centre (NaN without a WCS)."),
    "ra_start": (np.float64, "deg", "Right ascension of the first endpoint."),
    "dec_start": (np.float64, "deg", "Declination of the first endpoint."),
    "ra_end": (np.float64, "deg", "Right ascension of the second endpoint."),
    "dec_end": (np.float64, "deg", "Declination of the second endpoint."),
    "trail_length": (np.float64, "pix", "Segment length (PSF-deconvolved: the motion during the exposure)."),
    "beta": (np.float64, "deg", "Angle from +x towards +y, in [0, 180)."),
    "width": (np.float64, "pix", "Fitted FWHM across the trail (NaN if the fit failed)."),
    "flux": (np.float64, None, "Matched-filter flux along the fitted segment, in image units."),
    "flux_err": (np.float64, None, "Error of flux from the variance plane."),
    "snr": (np.float64, None, "flux / flux_err: the matched-filter SNR."),
    "score": (
        np.float64,
        None,
        "Calibrated score: the fraction of detections with this score that were "
        "real on validation data (equal to score_raw if the model has no calibration).",
    ),
    "score_raw": (np.float64, None, "Mean network probability along the fitted segment."),
    "origin": (
        str,
        None,
        "What found the candidate: 'cnn' (the network), 'line' (the line search) or 'source' (the "
        "source search of difference images).",
    ),
    "line_snr": (
        np.float64,
        None,
        "Line search candidates: SNR of the fitted segment's flux on the source-masked image, with a "
        "local plane background fitted beside it (NaN for the network's candidates).",
    ),
    "line_snr_trim": (
        np.float64,
        None,
        "Line search candidates: the same SNR without the segment's most significant two-FWHM piece "
        "(low for a line through one faint source or along a bright one's edge; NaN for the network's "
        "candidates and for segments under four FWHM).",
    ),
    "peak_snr": (
        np.float64,
        None,
        "Source search candidates: peak PSF-filtered SNR of the footprint (NaN for the others).",
    ),
    "negative_snr": (
        np.float64,
        None,
        "Source search candidates: the lowest PSF-filtered SNR beside the footprint, negative where a "
        "subtraction residual or dipole lies next to it (NaN for the others).",
    ),
    "width_ratio": (np.float64, None, "Fitted width across the trail in PSF widths (NaN if the fit failed)."),
    "template_snr": (
        np.float64,
        None,
        "Difference images: the highest PSF-filtered SNR of the template within 1.5 PSF sigmas of the "
        "segment, high where a static source lies under the candidate (NaN without a template).",
    ),
    "max_probability": (np.float64, None, "Highest network probability in the trail's pixels."),
    "n_pixels": (np.int64, None, "Pixels above the hysteresis threshold."),
    "n_fragments": (np.int64, None, "Components merged into this trail."),
    "flag_edge": (bool, None, "An endpoint lies near the image edge or no-data pixels."),
    "flag_saturated": (bool, None, "The trail crosses saturated pixels."),
    "flag_bad": (bool, None, "The trail crosses bad (masked) pixels."),
    "flag_fit_failed": (bool, None, "The segment fit failed; endpoints are from the probability map."),
    "rejected": (str, None, "Why the candidate was rejected ('' if kept); only with keep_rejected."),
}


@dataclasses.dataclass
class DetectionResult:
    """What `detect_trails` returns.

    Attributes
    ----------
    catalog : `astropy.table.Table`
        One row per trail (columns `TRAIL_CATALOG_COLUMNS`).
    probability : `numpy.ndarray`
        float32 trail probability per pixel.
    mask : `numpy.ndarray`
        Boolean: pixels within ``mask_nsigma`` widths of an accepted trail.
    rejected : `dict` [`str`, `int`]
        Candidates rejected, per reason.
    timing : `dict` [`str`, `float`]
        Seconds spent in normalization, inference and post-processing.
    """

    catalog: Any
    probability: np.ndarray
    mask: np.ndarray
    rejected: dict[str, int]
    timing: dict[str, float]


def empty_trail_catalog(keep_rejected: bool = False):
    """Return a zero-row trail catalog with every column and unit."""
    return trail_catalog_from_rows([], keep_rejected)


def trail_catalog_from_rows(rows: list[dict], keep_rejected: bool = False):
    """Make a trail catalog with the `TRAIL_CATALOG_COLUMNS` from row dicts.

    Columns a row lacks (the sky coordinates) are NaN; ``rejected`` is kept
    only with ``keep_rejected``.
    """
    from astropy.table import Column, Table

    table = Table()
    for name, (dtype, unit, description) in TRAIL_CATALOG_COLUMNS.items():
        if name == "rejected" and not keep_rejected:
            continue
        values = [row.get(name, np.nan) for row in rows]
        table[name] = Column(
            np.asarray(values, dtype=dtype if dtype is not str else "U16"), unit=unit, description=description
        )
    return table


def load_network(model, device: str = "auto"):
    """Build a stored trail model's network for inference on ``device``.

    Parameters
    ----------
    model : `~lsst.trail_detect.models.storage.TrailDetectorModel`
        A ``trail`` model.
    device : `str`, optional
        See `~.inference.InferenceSettings`.

    Returns
    -------
    network : `torch.nn.Module`
        In eval mode with batch normalization folded (CPU).
    """
    from ..models.networks import prepare_for_inference

    if model.kind != "trail":
        raise ValueError(f"trail detection needs a 'trail' model, not a {model.kind!r} model.")
    torch_device = resolve_device(device)
    network = model.build(device="cpu")
    network = prepare_for_inference(network, channels_last=torch_device.type == "cpu")
    return network.to(torch_device)


def model_settings(
    model,
    *,
    threshold: float | None = None,
    min_score: float | None = None,
    line_search: bool = True,
    source_search: bool = True,
    calibration: str = "visit",
) -> dict:
    """The `detect_trails` arguments a stored model carries (overridable).

    Parameters
    ----------
    model : `~lsst.trail_detect.models.storage.TrailDetectorModel`
        A ``trail`` model.
    threshold, min_score : `float`, optional
        Override the model's.
    line_search : `bool`, optional
        Run the model's line search, if it has one (metadata
        ``line_search``: the `~.line_search.LineSearchConfig` and the score
        calibration of its candidates, fitted together with the network's).
    source_search : `bool`, optional
        Run the model's source search, if it has one (metadata
        ``source_search``, as ``line_search``; calibrations for difference
        images).
    calibration : `str`, optional
        Which of the model's calibrations to use: ``"visit"`` (calibrated
        visit images: the top-level metadata) or ``"difference"``
        (difference images: metadata ``difference``, with the same keys),
        so that one network carries the operating point of each kind of
        image.

    Returns
    -------
    kwargs : `dict`
        ``normalization``, ``threshold`` (the model's validated operating
        threshold unless given), ``score_calibration``, ``min_score``
        (the model's, chosen for its false-positive budget, unless given;
        0 if it has none), ``line_search`` and ``line_score_calibration``
        (`None` without a line search), ``source_search`` and
        ``source_score_calibration`` (`None` without a source search).

    Raises
    ------
    ValueError
        If neither the model nor the caller gives a threshold, or the model
        has no calibration of the kind asked for.
    """
    threshold = threshold if threshold is not None else model.threshold
    if threshold is None:
        raise ValueError("the model has no operating threshold; give one.")
    if calibration == "visit":
        meta = model.metadata
    elif calibration == "difference":
        meta = model.metadata.get("difference")
        if not meta:
            raise ValueError(
                "the model has no calibration for difference images; make one with `trail-detect calibrate "
                "--image-type injected_difference_image --calibration difference`."
            )
    else:
        raise ValueError(f"unknown calibration {calibration!r}; use one of {CALIBRATIONS}.")
    line = meta.get("line_search") if line_search else None
    source = meta.get("source_search") if source_search else None
    return {
        "normalization": model.metadata.get("normalization"),
        "threshold": float(threshold),
        "score_calibration": meta.get("score_calibration"),
        "min_score": float(min_score if min_score is not None else meta.get("min_score", 0.0)),
        "line_search": LineSearchConfig.from_dict(line["config"]) if line else None,
        "line_score_calibration": line.get("score_calibration") if line else None,
        "source_search": SourceSearchConfig.from_dict(source["config"]) if source else None,
        "source_score_calibration": source.get("score_calibration") if source else None,
    }


#: Detection properties the logistic score calibration of the network's candidates uses.
SCORE_FEATURES = ("score_raw", "max_probability", "trail_length", "snr")

#: Properties of the line search's candidates: those of the network's plus the source-masked
#: matched-filter SNR of the search, with and without the segment's most significant piece.
LINE_SCORE_FEATURES = SCORE_FEATURES + ("line_snr", "line_snr_trim")

#: Properties of the source search's candidates (difference images): those of the network's plus
#: the deepest negative PSF-filtered SNR beside the source and the fitted width in PSF widths.
SOURCE_SCORE_FEATURES = SCORE_FEATURES + ("negative_snr", "width_ratio")

# How each property enters the logistic calibration: probabilities as logits, the rest as logs,
# clipped below.
_FEATURE_TRANSFORMS = {
    "score_raw": "logit",
    "max_probability": "logit",
    "trail_length": ("log", 1.0),
    "snr": ("log", 0.5),
    "line_snr": ("half_square", 0.0),
    "line_snr_trim": ("half_square", 0.0),
    "negative_snr": ("negative_log", 0.0),
    "width_ratio": ("abs_log_ratio", 0.2),
    "template_snr": ("log", 1.0),
}

#: The kinds of image a model can carry a calibration for (`model_settings`'s ``calibration``).
CALIBRATIONS = ("visit", "difference")

#: The property a calibration for difference images adds to every source's: the highest
#: PSF-filtered SNR of the template along the candidate (a static source under it).
TEMPLATE_FEATURE = "template_snr"


def score_features(values: Any, features: tuple[str, ...] | list[str] = SCORE_FEATURES) -> np.ndarray:
    """The (n, len(features)) feature matrix of the logistic calibration.

    Parameters
    ----------
    values : `astropy.table.Table` or mapping
        Columns ``features``: probabilities (``score_raw``,
        ``max_probability``) enter as logits, ``trail_length`` and ``snr``
        as logs, ``line_snr`` and ``line_snr_trim`` as half their
        squares (the log-odds of a Gaussian noise tail, which is what the
        line search's false candidates are; NaN, not measured, as 0),
        ``negative_snr`` as ``log(1 + max(-value, 0))``, ``width_ratio``
        as the absolute value of its log clipped to [0.2, 5] (too narrow and
        too wide both count against; NaN, no fit, as 1) and
        ``template_snr`` as a log clipped at 1.
    features : sequence of `str`, optional
        `SCORE_FEATURES` (the default), `LINE_SCORE_FEATURES` or
        `SOURCE_SCORE_FEATURES`.
    """
    eps = 1e-4
    columns = []
    for name in features:
        transform = _FEATURE_TRANSFORMS.get(name)
        if transform is None:
            raise ValueError(f"unknown score feature {name!r}; known: {sorted(_FEATURE_TRANSFORMS)}.")
        value = np.asarray(values[name], dtype=float)
        if transform == "logit":
            p = np.clip(value, eps, 1 - eps)
            columns.append(np.log(p / (1 - p)))
        elif transform[0] == "log":
            columns.append(np.log(np.clip(value, transform[1], None)))
        elif transform[0] == "negative_log":
            columns.append(np.log1p(np.clip(-np.nan_to_num(value, nan=0.0), 0.0, None)))
        elif transform[0] == "abs_log_ratio":
            value = np.where(np.isfinite(value), value, 1.0)
            columns.append(np.abs(np.log(np.clip(value, transform[1], 1.0 / transform[1]))))
        else:  # half_square: the log-odds of a Gaussian noise tail; NaN (not measured) as no evidence
            value = np.where(np.isnan(value), transform[1], value)
            columns.append(0.5 * np.clip(value, transform[1], None) ** 2)
    return np.column_stack(columns)


def fit_score_calibration(
    values: Any,
    is_real: np.ndarray,
    *,
    method: str = "logistic",
    l2: float = 1.0,
    max_knots: int = 64,
    features: tuple[str, ...] = SCORE_FEATURES,
) -> dict:
    """Fit a map from detection properties to the fraction of real detections.

    Parameters
    ----------
    values : `numpy.ndarray`, `astropy.table.Table` or mapping
        For ``isotonic``: the raw scores (or a table with ``score_raw``);
        for ``logistic``: a table or mapping with the `SCORE_FEATURES`
        columns.
    is_real : `numpy.ndarray`
        Whether each detection matched an injected trail (validation data).
    method : `str`, optional
        ``logistic``: L2-regularized logistic regression on the standardized
        `score_features` (the network's mean and highest probability, the
        length and the matched-filter SNR), whose output is the calibrated
        score. ``isotonic``: a monotonic map of ``score_raw`` alone, stored
        as at most ``max_knots`` knots interpolated linearly.
    l2 : `float`, optional
        Ridge penalty of the logistic fit (on standardized features).
    max_knots : `int`, optional
        Knots of the isotonic map.
    features : `tuple` [`str`, ...], optional
        Properties of the logistic fit (`SCORE_FEATURES` or
        `LINE_SCORE_FEATURES`); stored with the calibration.

    Returns
    -------
    calibration : `dict`
        JSON-able: ``method`` and its parameters, ``n`` (detections used)
        and ``n_real``.
    """
    real = np.asarray(is_real, dtype=float)
    if method == "isotonic":
        from scipy.optimize import isotonic_regression

        raw = np.asarray(
            values if isinstance(values, np.ndarray | list) else values["score_raw"], dtype=float
        )
        if raw.shape != real.shape or raw.ndim != 1:
            raise ValueError("score_raw and is_real must be 1-D arrays of one length.")
        ok = np.isfinite(raw)
        raw, real = raw[ok], real[ok]
        if raw.size < 2:
            raise ValueError(f"score calibration needs at least 2 detections, got {raw.size}.")
        order = np.argsort(raw, kind="stable")
        raw, real = raw[order], real[order]
        fitted = isotonic_regression(real, increasing=True).x
        # Knots: the mean raw score of each block of equal calibrated value.
        edges = np.flatnonzero(np.diff(fitted) != 0) + 1
        blocks = np.split(np.arange(raw.size), edges)
        knots_raw = np.array([raw[b].mean() for b in blocks])
        knots_cal = np.array([fitted[b[0]] for b in blocks])
        if knots_raw.size > max_knots:
            pick = np.unique(np.linspace(0, knots_raw.size - 1, max_knots).round().astype(int))
            knots_raw, knots_cal = knots_raw[pick], knots_cal[pick]
        return {
            "method": "isotonic",
            "raw": [float(v) for v in knots_raw],
            "calibrated": [float(v) for v in knots_cal],
            "n": int(raw.size),
            "n_real": int(real.sum()),
        }
    if method != "logistic":
        raise ValueError(f"unknown score calibration method {method!r}.")
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    x = score_features(values, features)
    if x.shape[0] != real.size:
        raise ValueError("the detection properties and is_real differ in length.")
    ok = np.all(np.isfinite(x), axis=1)
    x, real = x[ok], real[ok]
    if real.size < 2 or real.sum() == 0 or real.sum() == real.size:
        raise ValueError(
            f"score calibration needs real and false detections, got {int(real.sum())} of {real.size} real."
        )
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale

    def loss(params):
        w, b = params[:-1], params[-1]
        t = z @ w + b
        value = -np.sum(real * log_expit(t) + (1 - real) * log_expit(-t)) + 0.5 * l2 * np.sum(w * w)
        p = expit(t)
        grad_w = z.T @ (p - real) + l2 * w
        return value, np.append(grad_w, np.sum(p - real))

    result = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="BFGS")
    return {
        "method": "logistic",
        "features": list(features),
        "mean": [float(v) for v in mean],
        "scale": [float(v) for v in scale],
        "coef": [float(v) for v in result.x[:-1]],
        "intercept": float(result.x[-1]),
        "l2": float(l2),
        "n": int(real.size),
        "n_real": int(real.sum()),
    }


def apply_score_calibration(values: Any, calibration: Mapping[str, Any] | None) -> np.ndarray:
    """Calibrated scores from a calibration of `fit_score_calibration`.

    Parameters
    ----------
    values : `numpy.ndarray`, `astropy.table.Table` or mapping
        Raw scores, or a table or mapping with the `SCORE_FEATURES`
        columns (needed by a logistic calibration).
    calibration : `dict` or `None`
        Without one, the raw scores are returned.
    """
    if isinstance(values, np.ndarray | list | tuple):
        raw = np.asarray(values, dtype=float)
    else:
        raw = np.asarray(values["score_raw"], dtype=float)
    if not calibration:
        return raw.copy()
    method = calibration.get("method")
    if method == "isotonic":
        knots_raw = np.asarray(calibration["raw"], dtype=float)
        knots_cal = np.asarray(calibration["calibrated"], dtype=float)
        if knots_raw.size == 0 or knots_raw.size != knots_cal.size:
            raise ValueError("score calibration has no knots or mismatched knot lists.")
        return np.interp(raw, knots_raw, knots_cal)
    if method == "logistic":
        from scipy.special import expit

        if isinstance(values, np.ndarray | list | tuple):
            raise ValueError("a logistic score calibration needs the detections' properties, not raw scores.")
        features = tuple(calibration.get("features", SCORE_FEATURES))
        z = (score_features(values, features) - np.asarray(calibration["mean"])) / np.asarray(
            calibration["scale"]
        )
        return expit(z @ np.asarray(calibration["coef"]) + calibration["intercept"])
    raise ValueError(f"unknown score calibration method {method!r}.")


def line_probability(candidate: TrailCandidate, probability: np.ndarray, good: np.ndarray) -> float:
    """Mean probability sampled every pixel along a segment's centre line (good pixels only)."""
    c = candidate
    n = max(int(math.ceil(c.length)) + 1, 2)
    t = np.linspace(0.0, 1.0, n)
    xs = np.clip(np.rint(c.x_start + t * (c.x_end - c.x_start)).astype(int), 0, probability.shape[1] - 1)
    ys = np.clip(np.rint(c.y_start + t * (c.y_end - c.y_start)).astype(int), 0, probability.shape[0] - 1)
    keep = good[ys, xs]
    if not keep.any():
        return float(np.mean(probability[ys, xs]))
    return float(np.mean(probability[ys[keep], xs[keep]]))


def _touches(plane: np.ndarray | None, c: TrailCandidate, half_width: float) -> bool:
    if plane is None or not plane.any():
        return False
    box, inside = segment_band(plane.shape, c.x_start, c.y_start, c.x_end, c.y_end, half_width)
    return bool(np.any(plane[box] & inside))


def _near_edge(c: TrailCandidate, shape: tuple[int, int], no_data: np.ndarray | None, margin: float) -> bool:
    height, width = shape
    for x, y in ((c.x_start, c.y_start), (c.x_end, c.y_end)):
        if x < margin - 0.5 or y < margin - 0.5 or x > width - 0.5 - margin or y > height - 0.5 - margin:
            return True
        if no_data is not None:
            xa, xb = int(max(math.floor(x - margin), 0)), int(min(math.ceil(x + margin) + 1, width))
            ya, yb = int(max(math.floor(y - margin), 0)), int(min(math.ceil(y + margin) + 1, height))
            if xa < xb and ya < yb and no_data[ya:yb, xa:xb].any():
                return True
    return False


def band_maximum(
    candidate: TrailCandidate, values: np.ndarray, half_width: float, extend: float = 0.0
) -> float:
    """Highest value of a map within ``half_width`` of a segment (and ``extend`` past its ends); 0 if none."""
    c = candidate
    box, inside = segment_band(
        values.shape, c.x_start, c.y_start, c.x_end, c.y_end, half_width, extend=extend
    )
    inner = values[box][inside]
    return float(inner.max()) if inner.size else 0.0


def band_probability(candidate: TrailCandidate, probability: np.ndarray, half_width: float) -> float:
    """Highest network probability within ``half_width`` of a segment."""
    return band_maximum(candidate, probability, half_width)


def _properties(c: TrailCandidate) -> dict[str, list[float]]:
    return {
        "score_raw": [c.score_raw],
        "max_probability": [c.max_probability],
        "trail_length": [c.length],
        "snr": [c.snr],
        "line_snr": [c.line_snr],
        "line_snr_trim": [c.line_snr_trim],
        "negative_snr": [c.negative_snr],
        "width_ratio": [c.width_ratio],
        "template_snr": [c.template_snr],
    }


def resolve_duplicates(
    network: list[TrailCandidate], line: list[TrailCandidate], psf_sigma: float
) -> list[TrailCandidate]:
    """Join the network's and the line search's candidates, one per trail.

    Line candidates are taken in order of calibrated score; one that is the
    same trail (`~.postprocess.same_trail`) as a candidate already held,
    from either source, keeps whichever of the two has the higher calibrated
    score and rejects the other as ``duplicate``. Candidates rejected for
    their shape never displace another.
    """
    held = list(network)
    for cand in sorted(line, key=lambda c: -c.score if np.isfinite(c.score) else np.inf):
        if cand.rejected and cand.rejected != "low_score":
            held.append(cand)
            continue
        for other in held:
            if other.rejected and other.rejected != "low_score":
                continue
            if not same_trail(cand, other, psf_sigma):
                continue
            loser = cand if not cand.score > other.score else other
            loser.rejected = "duplicate"
            if loser is cand:
                break
        held.append(cand)
    return held


def detect_trails(
    image: np.ndarray,
    variance: np.ndarray,
    *,
    network: Any,
    psf_sigma: float,
    normalization: Normalization | Mapping[str, Any] | None = None,
    threshold: float | None = None,
    bad: np.ndarray | None = None,
    saturated: np.ndarray | None = None,
    no_data: np.ndarray | None = None,
    score_calibration: Mapping[str, Any] | None = None,
    min_score: float = 0.0,
    pixel_to_sky: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    settings: InferenceSettings | None = None,
    config: PostprocessConfig | None = None,
    keep_rejected: bool = False,
    mask_nsigma: float = 3.0,
    progress: bool = False,
    line_search: LineSearchConfig | None = None,
    line_score_calibration: Mapping[str, Any] | None = None,
    source_search: SourceSearchConfig | None = None,
    source_score_calibration: Mapping[str, Any] | None = None,
    template: tuple[np.ndarray, np.ndarray, float] | None = None,
    workers: int = 1,
) -> DetectionResult:
    """Find the trails in one image.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        Background-subtracted image and its variance (same shape).
    network : `torch.nn.Module`
        From `load_network`.
    psf_sigma : `float`
        Gaussian PSF sigma in pixels.
    normalization : `~lsst.trail_detect.tiles.normalization.Normalization` or `dict`, optional
        The model's normalization (method and clip range; the background
        and scale are measured on this image). Default: ``robust``.
    threshold : `float`, optional
        Operating threshold; default ``config.threshold``.
    bad : `numpy.ndarray`, optional
        Pixels with no usable data (set to 0 in the network input and left
        out of the fits). NaN, infinite and non-positive-variance pixels are
        added to it.
    saturated : `numpy.ndarray`, optional
        Saturated pixels (bleed-trail and spike rejection, flags).
    no_data : `numpy.ndarray`, optional
        Pixels outside the data region (edge flags).
    score_calibration : `dict`, optional
        From `fit_score_calibration` (usually the model's metadata).
    min_score : `float`, optional
        Candidates whose calibrated score is below this are rejected
        (``low_score``); the model's metadata holds the value chosen on
        validation data for its false-positive budget.
    pixel_to_sky : callable, optional
        ``f(x, y) -> (ra, dec)`` in degrees; sky columns are NaN without it.
    settings : `~.inference.InferenceSettings`, optional
        Tiling, batch and device.
    config : `~.postprocess.PostprocessConfig`, optional
        Post-processing parameters.
    keep_rejected : `bool`, optional
        Keep rejected candidates in the catalog with their reason in
        ``rejected`` (they are never in the mask).
    mask_nsigma : `float`, optional
        Half-width of the trail mask in widths (the larger of the PSF sigma
        and the fitted sigma), also past the ends.
    progress : `bool`, optional
        Show a progress bar during inference.
    line_search : `~.line_search.LineSearchConfig`, optional
        Also search the source-masked image with segment matched filters
        (`~.line_search.line_search`) for trails too faint for the network.
        Its candidates are refined, classified and cut at ``min_score``
        like the network's, scored with ``line_score_calibration``; where a
        line candidate and a network candidate are the same trail, the one
        with the higher calibrated score is kept (the other is rejected as
        ``duplicate``).
    line_score_calibration : `dict`, optional
        From `fit_score_calibration` with `LINE_SCORE_FEATURES`.
    source_search : `~.source_search.SourceSearchConfig`, optional
        Also take every significant source of the image as a candidate
        (`~.source_search.source_search`; for difference images, where the
        short trails the network misses are such sources). Its candidates
        are fitted without the length cut (one whose fit fails is rejected
        as ``fit_failed``), classified and scored with
        ``source_score_calibration``, and joined to the others as the line
        search's are.
    source_score_calibration : `dict`, optional
        From `fit_score_calibration` with `SOURCE_SCORE_FEATURES`.
    template : `tuple`, optional
        ``(image, variance, psf_sigma)`` of the template a difference image
        was made with, on its pixel grid: each candidate's ``template_snr``
        is measured on it. Needed by calibrations that use that property.
    workers : `int`, optional
        Threads of the line search's FFTs.

    Returns
    -------
    result : `DetectionResult`
    """
    config = dataclasses.replace(config) if config is not None else PostprocessConfig()
    if threshold is not None:
        config.threshold = float(threshold)
    image = np.asarray(image, dtype=np.float32)
    variance = np.asarray(variance, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"the image must be 2-D, not shape {image.shape}.")
    if variance.shape != image.shape:
        raise ValueError(f"variance shape {variance.shape} differs from the image shape {image.shape}.")
    if not (np.isfinite(psf_sigma) and psf_sigma > 0):
        raise ValueError(f"the PSF sigma must be a positive number of pixels, not {psf_sigma}.")
    for name, calib in (
        ("network", score_calibration),
        ("line search", line_score_calibration),
        ("source search", source_score_calibration),
    ):
        if template is None and calib and TEMPLATE_FEATURE in calib.get("features", ()):
            raise ValueError(
                f"the {name} score calibration uses the template ({TEMPLATE_FEATURE}); give the template "
                "the difference image was made with."
            )
    template_snr_map = None
    if template is not None:
        from ..simulation.stack_detection import psf_filter_snr

        template_image, template_variance, template_sigma = template
        if np.shape(template_image) != image.shape or np.shape(template_variance) != image.shape:
            raise ValueError(
                f"template shape {np.shape(template_image)} differs from the image shape {image.shape}."
            )
        template_snr_map, _ = psf_filter_snr(
            np.asarray(template_image, dtype=np.float32),
            np.asarray(template_variance, dtype=np.float32),
            float(template_sigma),
        )
        template_snr_map = np.nan_to_num(template_snr_map, nan=0.0, posinf=0.0, neginf=0.0)
    invalid = ~np.isfinite(image) | ~np.isfinite(variance) | ~(variance > 0)
    bad = invalid if bad is None else (np.asarray(bad, dtype=bool) | invalid)
    good = ~bad
    if not good.any():
        raise ValueError("the image has no usable pixel (all masked, NaN or with non-positive variance).")
    timing = {}

    t0 = time.perf_counter()
    if normalization is None:
        normalization = Normalization("robust")
    elif not isinstance(normalization, Normalization):
        normalization = Normalization(**dict(normalization))
    norm = fit_normalization(
        image,
        bad,
        method=normalization.method,
        clip_min=normalization.clip_min,
        clip_max=normalization.clip_max,
    )
    normalized = apply_normalization(image, norm, variance=variance, bad=bad)
    timing["normalization"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    probability = predict_probability(network, normalized, settings, progress=progress)
    probability[bad] = 0.0
    timing["inference"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    labels, n = find_components(
        probability, config.threshold, config.threshold * config.low_threshold_ratio, config.min_pixels
    )
    candidates = component_lines(labels, n, probability, psf_sigma)
    candidates = merge_collinear(candidates, psf_sigma, config, bad=bad)
    blobs = saturated_blobs(saturated, config.min_saturated_blob)
    safe_image = np.where(good, image, 0.0).astype(np.float32)
    safe_variance = np.where(good, variance, 1.0).astype(np.float32)
    reasons = Counter()
    # Components much shorter than the shortest trail kept (stars, hot pixels) are not worth a fit.
    prefit_min_length = 0.5 * config.min_length_fwhm * 2.3548 * psf_sigma

    found = None

    source_config = dataclasses.replace(config, min_length_fwhm=0.0)

    def refine(candidate: TrailCandidate, calibration: Mapping[str, Any] | None) -> TrailCandidate:
        """Fit, measure, classify and score one candidate (``rejected`` says why it fails)."""
        from_source = candidate.origin == "source"
        if candidate.length < prefit_min_length and not from_source:
            candidate.rejected = "short"
            candidate.score_raw = line_probability(candidate, probability, good)
            return candidate
        # Line candidates on the searched pixels only (sources masked): the fit, the ends where the
        # trail's SNR is highest, the photometry and the SNR with the smooth light beside it fitted.
        on_line = candidate.origin == "line"
        search_image, search_good = (found.cleaned, found.use) if on_line else (safe_image, good)
        fitted = fit_trail(candidate, search_image, safe_variance, search_good, psf_sigma, config)
        if on_line:
            fitted, fitted.line_snr = extend_segment(
                fitted, search_image, safe_variance, search_good, psf_sigma
            )
            fitted.line_snr_trim = segment_chunk_snr(
                fitted, search_image, safe_variance, search_good, psf_sigma
            )
            fitted.max_probability = band_probability(fitted, probability, 2.0 * psf_sigma)
        fitted.flux, fitted.flux_err = trail_photometry(
            fitted, search_image, safe_variance, search_good, psf_sigma
        )
        fitted.snr = fitted.flux / fitted.flux_err if fitted.flux_err > 0 else float("nan")
        fitted.score_raw = line_probability(fitted, probability, good)
        if from_source:
            fitted.max_probability = band_probability(fitted, probability, 2.0 * psf_sigma)
        fitted.width_ratio = fitted.width_sigma / psf_sigma if fitted.fit_ok else float("nan")
        if template_snr_map is not None:
            fitted.template_snr = band_maximum(
                fitted, template_snr_map, 1.5 * psf_sigma, extend=1.5 * psf_sigma
            )
        fitted.rejected = classify_candidate(
            fitted, psf_sigma, source_config if from_source else config, saturated, blobs
        )
        if from_source and not fitted.fit_ok and not fitted.rejected:
            # A source the segment model cannot fit (most often a cosmic ray of a pixel or two,
            # whose width collapses) has no measured shape to score.
            fitted.rejected = "fit_failed"
        fitted.score = float(apply_score_calibration(_properties(fitted), calibration)[0])
        if not fitted.rejected and min_score > 0 and not fitted.score >= min_score:
            fitted.rejected = "low_score"
        return fitted

    refined = [refine(c, score_calibration) for c in candidates]
    timing["postprocess"] = time.perf_counter() - t0
    if line_search is not None:
        t0 = time.perf_counter()
        found = run_line_search(image, variance, psf_sigma, good=good, config=line_search, workers=workers)
        line_candidates = [refine(c, line_score_calibration) for c in found.candidates]
        refined = resolve_duplicates(refined, line_candidates, psf_sigma)
        timing["line_search"] = time.perf_counter() - t0
    if source_search is not None:
        t0 = time.perf_counter()
        sources = run_source_search(image, variance, psf_sigma, good=good, config=source_search)
        source_candidates = [refine(c, source_score_calibration) for c in sources.candidates]
        refined = resolve_duplicates(refined, source_candidates, psf_sigma)
        timing["source_search"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    kept = []
    for candidate in refined:
        if candidate.rejected:
            reasons[candidate.rejected] += 1
            if not keep_rejected:
                continue
        kept.append(candidate)
    kept.sort(key=lambda c: (-c.score_raw, c.y_start, c.x_start))

    mask = np.zeros(image.shape, dtype=bool)
    for c in kept:
        if c.rejected:
            continue
        half = mask_nsigma * max(psf_sigma, c.width_sigma if c.fit_ok else psf_sigma)
        box, inside = segment_band(image.shape, c.x_start, c.y_start, c.x_end, c.y_end, half, extend=half)
        mask[box] |= inside

    edge_margin = config.edge_margin_sigma * psf_sigma
    rows = []
    for k, c in enumerate(kept):
        cx, cy = c.centre
        rows.append(
            {
                "trail_id": k,
                "x": cx,
                "y": cy,
                "x_start": c.x_start,
                "y_start": c.y_start,
                "x_end": c.x_end,
                "y_end": c.y_end,
                "trail_length": c.length,
                "beta": c.beta,
                "width": 2.3548 * c.width_sigma if c.fit_ok else float("nan"),
                "flux": c.flux,
                "flux_err": c.flux_err,
                "snr": c.snr,
                "score_raw": c.score_raw,
                "score": c.score,
                "max_probability": c.max_probability,
                "origin": c.origin,
                "line_snr": c.line_snr,
                "line_snr_trim": c.line_snr_trim,
                "peak_snr": c.peak_snr,
                "negative_snr": c.negative_snr,
                "width_ratio": c.width_ratio,
                "template_snr": c.template_snr,
                "n_pixels": int(c.pixels_x.size),
                "n_fragments": c.n_fragments,
                "flag_edge": _near_edge(c, image.shape, no_data, edge_margin),
                "flag_saturated": _touches(saturated, c, 2.0 * psf_sigma),
                "flag_bad": _touches(bad, c, 2.0 * psf_sigma),
                "flag_fit_failed": not c.fit_ok,
                "rejected": c.rejected,
            }
        )
    catalog = trail_catalog_from_rows(rows, keep_rejected)
    if rows:
        if pixel_to_sky is not None:
            for suffix, xs, ys in (
                ("", "x", "y"),
                ("_start", "x_start", "y_start"),
                ("_end", "x_end", "y_end"),
            ):
                ra, dec = pixel_to_sky(np.asarray(catalog[xs]), np.asarray(catalog[ys]))
                catalog["ra" + suffix] = np.asarray(ra, dtype=float)
                catalog["dec" + suffix] = np.asarray(dec, dtype=float)
    catalog.meta["psf_sigma"] = float(psf_sigma)
    catalog.meta["threshold"] = float(config.threshold)
    catalog.meta["score_calibrated"] = bool(score_calibration)
    catalog.meta["min_score"] = float(min_score)
    timing["postprocess"] += time.perf_counter() - t0
    return DetectionResult(
        catalog=catalog, probability=probability, mask=mask, rejected=dict(reasons), timing=timing
    )
