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

"""Scoring a star detector against the truth of simulated star fields.

The detector under test never sees the truth: `detect_stars` takes a
network and a normalized image and returns positions and scores, and
`classical_detections` runs the stack-like 5 sigma PSF-filter detection
(`~lsst.trail_detect.simulation.stack_detection.detect_sources`) on the
same pixels. Only afterwards are detections matched one to one to the true
stars (`match_points`) and scored (`star_detection_metrics`).

Conventions
-----------
Positions are 0-based array pixels (pixel centres at integers), as in the
``star_field_truth`` tables. The SNR of a true star is its truth
``nu_psf``, the PSF-filter signal-to-noise ``F / sqrt(4 pi sigma^2 var)``
of the isolated star on the sky and read noise. The SNR of a detection is
*measured* on the image: the PSF-filter SNR map
(`~lsst.trail_detect.simulation.stack_detection.psf_filter_snr`) at its
nearest pixel, the same for every detector, so purity can be binned by an
SNR that unmatched detections have too.

Completeness in an SNR bin is the fraction of the true stars of that bin
that a detection was matched to; purity the fraction of detections that
were matched to a true star (of any SNR: a detection of a star fainter than
the detection limit is not false). Intervals are Wilson score intervals.
"""

from __future__ import annotations

__all__ = (
    "DEFAULT_SNR_EDGES",
    "classical_detections",
    "completeness_crossing",
    "crowded_fields",
    "detect_stars",
    "detect_stars_hybrid",
    "field_density",
    "fit_completeness_probit",
    "match_points",
    "matching_radius",
    "predict_star_maps",
    "sample_map",
    "score_star_field",
    "star_detection_metrics",
)

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .metrics import fit_completeness_curve, wilson_interval

DEFAULT_SNR_EDGES = (
    *(1.0, 2.0, 3.0, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 8.0),
    *(10.0, 15.0, 20.0, 50.0, 100.0, 1e5),
)
"""Default edges of the SNR bins of `star_detection_metrics`."""

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


# --- Inference ------------------------------------------------------------------------------------


def predict_star_maps(
    network: Any,
    normalized_image: np.ndarray,
    *,
    tile: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Run a star network over a whole image in overlapping tiles.

    Parameters
    ----------
    network : `torch.nn.Module`
        Returns ``{"heatmap": (N, 1, H, W) logits, "offset": (N, 2, H, W)}``
        for inputs ``(N, 1, H, W)``
        (`~lsst.trail_detect.models.networks.StarCenterNet`); in eval mode.
    normalized_image : `numpy.ndarray`
        The normalized image (bad pixels already 0), any size.
    tile, overlap : `int`, optional
        Tile side and overlap (pixels); an image no larger than ``tile``
        is run in one pass.
    batch_size : `int`, optional
        Tiles per forward pass.

    Returns
    -------
    probability : `numpy.ndarray`
        float32 ``(H, W)`` heatmap probabilities (sigmoid of the logits).
    offset : `numpy.ndarray`
        float32 ``(2, H, W)`` sub-pixel offsets ``(dx, dy)``.

    Notes
    -----
    Probabilities and offsets of overlapping tiles are averaged with the
    weights of `~lsst.trail_detect.detection.inference.blend_window`, as
    the trail segmenter's are, so no seam appears where tiles meet.
    """
    import torch

    from ..detection.inference import InferenceSettings, predict_maps

    if tile < 16 or not 0 <= overlap < tile // 2:
        raise ValueError(f"need tile >= 16 and 0 <= overlap < tile / 2 (tile={tile}, overlap={overlap}).")

    def to_maps(out):
        return torch.cat([torch.sigmoid(out["heatmap"][:, :1].float()), out["offset"].float()], dim=1)

    settings = InferenceSettings(tile=tile, overlap=overlap, batch_size=batch_size)
    maps = predict_maps(network, normalized_image, to_maps, settings)
    heat, offset = maps[0], maps[1:3]
    np.clip(heat, 0.0, 1.0, out=heat)
    return heat, offset


def detect_stars(
    network: Any,
    normalized_image: np.ndarray,
    threshold: float = 0.3,
    tile: int = 512,
    overlap: int = 64,
    *,
    window: int = 3,
    batch_size: int = 4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Find stars in an image with a CenterNet star network.

    Parameters
    ----------
    network : `torch.nn.Module`
        Star network (see `predict_star_maps`), in eval mode.
    normalized_image : `numpy.ndarray`
        The image normalized as the network's training tiles were.
    threshold : `float`, optional
        Smallest heatmap probability of a detection (the model's operating
        threshold).
    tile, overlap : `int`, optional
        Inference tiling.
    window : `int`, optional
        A detection is the maximum of the heatmap in this square window.
    batch_size : `int`, optional
        Tiles per forward pass.

    Returns
    -------
    x, y : `numpy.ndarray`
        Positions (0-based array pixels), by decreasing score.
    score : `numpy.ndarray`
        Heatmap probability at each detection.
    """
    from ..tiles.star_targets import decode_star_targets

    if (
        type(network).__name__ == "HybridStarDetector"
        or getattr(network, "architecture", {}).get("name") == "HybridStarDetector"
    ):
        return detect_stars_hybrid(network, normalized_image, threshold=threshold)
    heat, offset = predict_star_maps(
        network, normalized_image, tile=tile, overlap=overlap, batch_size=batch_size
    )
    return decode_star_targets(heat, offset, threshold=threshold, window=window)


def detect_stars_hybrid(
    network: Any, normalized_image: np.ndarray, threshold: float = 0.3, tile: int = 256, overlap: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Find stars with the hybrid detector: its re-scored candidates, tile by tile.

    The transformer re-scores the ``top_k`` heatmap peaks of each tile (the
    image alone goes in); a candidate is kept if its refined probability
    reaches ``threshold`` and it lies in the part of its tile no other tile
    covers better (the central region of overlapping tiles), so each star is
    reported once.

    Returns
    -------
    x, y, score : `numpy.ndarray`
        Positions (array pixels) by decreasing score, and the refined
        probabilities.
    """
    import torch

    from ..tiles.tiling import tile_origins

    image = np.asarray(normalized_image, dtype=np.float32)
    height, width = image.shape
    th, tw = min(tile, height), min(tile, width)
    ys = tile_origins(height, th, overlap) if height > th else np.array([0])
    xs = tile_origins(width, tw, overlap) if width > tw else np.array([0])

    def core(starts, size, length):
        # Each pixel belongs to the tile whose centre is nearest.
        centres = np.asarray(starts) + size / 2
        bounds = np.concatenate([[-np.inf], (centres[1:] + centres[:-1]) / 2, [np.inf]])
        return bounds

    ybounds, xbounds = core(ys, th, height), core(xs, tw, width)
    out_x, out_y, out_s = [], [], []
    device = next(network.parameters()).device
    with torch.inference_mode():
        for i, y0 in enumerate(ys):
            for j, x0 in enumerate(xs):
                x_in = torch.from_numpy(image[y0 : y0 + th, x0 : x0 + tw][None, None].copy()).to(device)
                result = network(x_in)
                prob = torch.sigmoid(result["candidate_logits"][0].float()).cpu().numpy()
                xy = (result["candidates"][0] + result["candidate_offset"][0]).float().cpu().numpy()
                px, py = xy[:, 0] + x0, xy[:, 1] + y0
                keep = (
                    (prob >= threshold)
                    & (py >= ybounds[i])
                    & (py < ybounds[i + 1])
                    & (px >= xbounds[j])
                    & (px < xbounds[j + 1])
                )
                out_x.append(px[keep])
                out_y.append(py[keep])
                out_s.append(prob[keep])
    x, y, score = (np.concatenate(v) if v else np.zeros(0) for v in (out_x, out_y, out_s))
    order = np.argsort(-score, kind="stable")
    return x[order].astype(float), y[order].astype(float), score[order].astype(float)


def classical_detections(
    image: np.ndarray,
    variance: np.ndarray,
    psf_sigma: float,
    *,
    mask_planes: Mapping[str, np.ndarray] | None = None,
    threshold: float = 5.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detect point sources with the stack-like PSF-filter threshold.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        Calibrated, background-subtracted image and its variance.
    psf_sigma : `float`
        Gaussian sigma of the PSF model (pixels).
    mask_planes : `~collections.abc.Mapping` [`str`, `numpy.ndarray`], optional
        Boolean mask planes (``BAD`` and ``NO_DATA`` pixels are missing).
    threshold : `float`, optional
        Threshold on the PSF-filter SNR (5 for the stack's default).

    Returns
    -------
    x, y : `numpy.ndarray`
        Sub-pixel peak positions (0-based array pixels).
    snr : `numpy.ndarray`
        PSF-fit signal-to-noise of each peak.
    """
    from ..simulation.stack_detection import detect_sources

    sources, _ = detect_sources(image, variance, psf_sigma, mask_planes=mask_planes, threshold=threshold)
    return (
        np.asarray(sources["x"], dtype=float),
        np.asarray(sources["y"], dtype=float),
        np.asarray(sources["psfFlux_snr"], dtype=float),
    )


def sample_map(values: np.ndarray, x, y, fill: float = np.nan) -> np.ndarray:
    """Return a map's value at the nearest pixel of each position (``fill`` outside)."""
    values = np.asarray(values)
    ix = np.floor(np.asarray(x, dtype=float) + 0.5)
    iy = np.floor(np.asarray(y, dtype=float) + 0.5)
    inside = (ix >= 0) & (ix < values.shape[1]) & (iy >= 0) & (iy < values.shape[0])
    out = np.full(ix.shape, fill, dtype=float)
    out[inside] = values[iy[inside].astype(int), ix[inside].astype(int)]
    return out


# --- Matching -------------------------------------------------------------------------------------


def matching_radius(psf_sigma: float, min_radius: float = 1.5, fwhm_fraction: float = 0.5) -> float:
    """Return the matching radius ``max(min_radius, fwhm_fraction * FWHM)`` (pixels)."""
    return float(max(min_radius, fwhm_fraction * _FWHM_PER_SIGMA * float(psf_sigma)))


def match_points(
    det_x, det_y, true_x, true_y, radius: float, *, method: str = "greedy"
) -> tuple[np.ndarray, np.ndarray]:
    """Match detections to true positions one to one within a radius.

    Parameters
    ----------
    det_x, det_y : array-like
        Detected positions.
    true_x, true_y : array-like
        True positions.
    radius : `float`
        Largest distance of a match (same units).
    method : `str`, optional
        ``greedy``: candidate pairs are taken by increasing distance, each
        detection and each true point at most once. ``hungarian``: in each
        connected group of candidate pairs, the assignment with the most
        matches and, among those, the smallest total distance
        (`scipy.optimize.linear_sum_assignment`).

    Returns
    -------
    det_match : `numpy.ndarray`
        For each detection the index of its true point, -1 if unmatched.
    truth_match : `numpy.ndarray`
        For each true point the index of its detection, -1 if unmatched.
    """
    from scipy.spatial import cKDTree

    if method not in ("greedy", "hungarian"):
        raise ValueError(f"method must be 'greedy' or 'hungarian', not {method!r}.")
    if not radius > 0:
        raise ValueError(f"the matching radius must be positive, not {radius}.")
    det = np.column_stack([np.asarray(det_x, dtype=float).ravel(), np.asarray(det_y, dtype=float).ravel()])
    true = np.column_stack([np.asarray(true_x, dtype=float).ravel(), np.asarray(true_y, dtype=float).ravel()])
    det_match = np.full(len(det), -1, dtype=np.int64)
    truth_match = np.full(len(true), -1, dtype=np.int64)
    if len(det) == 0 or len(true) == 0:
        return det_match, truth_match
    good_det = np.all(np.isfinite(det), axis=1)
    good_true = np.all(np.isfinite(true), axis=1)
    det_index, true_index = np.nonzero(good_det)[0], np.nonzero(good_true)[0]
    if len(det_index) == 0 or len(true_index) == 0:
        return det_match, truth_match
    pairs = cKDTree(det[det_index]).sparse_distance_matrix(
        cKDTree(true[true_index]), radius, output_type="coo_matrix"
    )
    i, j = det_index[pairs.row], true_index[pairs.col]
    d = np.hypot(det[i, 0] - true[j, 0], det[i, 1] - true[j, 1])  # exact, including zero distances
    keep = d <= radius
    i, j, d = i[keep], j[keep], d[keep]
    if method == "greedy":
        for k in np.lexsort((j, i, d)):
            if det_match[i[k]] < 0 and truth_match[j[k]] < 0:
                det_match[i[k]] = j[k]
                truth_match[j[k]] = i[k]
        return det_match, truth_match

    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_det = len(det)
    graph = coo_matrix((np.ones(len(i)), (i, n_det + j)), shape=(n_det + len(true),) * 2)
    _, labels = connected_components(graph, directed=False)
    group = labels[i]
    for g in np.unique(group):
        sel = group == g
        gi, gj, gd = i[sel], j[sel], d[sel]
        rows, ri = np.unique(gi, return_inverse=True)
        cols, ci = np.unique(gj, return_inverse=True)
        # Non-pairs cost 0 and pairs d - big < 0, big > the sum of any set of distances: the most
        # matches first, then the smallest total distance.
        big = radius * (min(len(rows), len(cols)) + 1)
        cost = np.zeros((len(rows), len(cols)))
        is_pair = np.zeros(cost.shape, dtype=bool)
        cost[ri, ci] = gd - big
        is_pair[ri, ci] = True
        r, c = linear_sum_assignment(cost)
        ok = is_pair[r, c]
        det_match[rows[r[ok]]] = cols[c[ok]]
        truth_match[cols[c[ok]]] = rows[r[ok]]
    return det_match, truth_match


# --- Metrics --------------------------------------------------------------------------------------


def fit_completeness_probit(
    snr, detected, snr_range: tuple[float, float] = (0.5, 50.0)
) -> tuple[float, float] | None:
    """Fit ``C(nu) = Phi((nu - nu50) / width)`` to detected / missed stars.

    `~.metrics.fit_completeness_curve` on the stars with ``snr_range[0] <=
    nu <= snr_range[1]``; the asymptotic completeness is 1, so in crowded
    fields, where bright blended stars are lost too, the model-free
    `completeness_crossing` is the better summary.

    Returns
    -------
    fit : `tuple` [`float`, `float`] or `None`
        ``(nu50, width)``; `None` if fewer than 10 stars or no detected and
        missed star in range.
    """
    snr = np.asarray(snr, dtype=float)
    detected = np.asarray(detected, dtype=bool)
    sel = np.isfinite(snr) & (snr >= snr_range[0]) & (snr <= snr_range[1])
    fit = fit_completeness_curve(snr[sel], detected[sel])
    if not np.isfinite(fit["nu50"]):
        return None
    return float(fit["nu50"]), float(fit["width"])


def completeness_crossing(snr, completeness, level: float) -> float | None:
    """SNR at which a binned completeness curve first reaches ``level``.

    Linear interpolation between the first bin at or above ``level`` and
    the bin before it; `None` if no bin reaches it, the first bin's SNR if
    it already does. Empty bins (NaN) are skipped.
    """
    snr = np.asarray(snr, dtype=float)
    completeness = np.asarray(completeness, dtype=float)
    ok = np.isfinite(snr) & np.isfinite(completeness)
    snr, completeness = snr[ok], completeness[ok]
    above = np.nonzero(completeness >= level)[0]
    if len(above) == 0:
        return None
    k = int(above[0])
    if k == 0:
        return float(snr[0])
    c0, c1 = completeness[k - 1], completeness[k]
    return float(snr[k - 1] + (level - c0) * (snr[k] - snr[k - 1]) / (c1 - c0))


def _fraction(k: int, n: int, z: float) -> dict:
    low, high = wilson_interval(k, n, z)
    return {
        "value": float(k / n) if n else None,
        "low": None if n == 0 else float(low),
        "high": None if n == 0 else float(high),
        "k": int(k),
        "n": int(n),
    }


def star_detection_metrics(
    truth_snr,
    truth_matched,
    det_matched,
    det_snr,
    snr_edges: Sequence[float] = DEFAULT_SNR_EDGES,
    *,
    purity_snr: float = 10.0,
    snr_points: Sequence[float] = (5.0, 6.5),
    snr_window: float = 0.25,
    z: float = 1.0,
) -> dict:
    """Completeness against SNR and purity of one detector's outcomes.

    Parameters
    ----------
    truth_snr : array-like
        True SNR (``nu_psf``) of every true star that counts.
    truth_matched : array-like
        Whether a detection was matched to each of them.
    det_matched : array-like
        Whether each detection that counts was matched to a true star.
    det_snr : array-like
        Measured SNR of each detection (on the image, not from the truth).
    snr_edges : sequence of `float`, optional
        Edges of the SNR bins (increasing).
    purity_snr : `float`, optional
        Purity is also given for detections with measured SNR above this.
    snr_points : sequence of `float`, optional
        SNRs at which the completeness is given, from the stars within
        ``snr_window`` of each.
    snr_window : `float`, optional
        Half-width of those windows.
    z : `float`, optional
        Half-width of the Wilson intervals in standard deviations.

    Returns
    -------
    metrics : `dict`
        JSON-serializable (`None` for undefined values):

        ``completeness``
            One entry per bin: ``snr_min``, ``snr_max``, ``snr_mean`` (of
            its stars), ``n``, ``k`` (detected), ``value``, ``low``,
            ``high``.
        ``completeness_at``
            ``{"5": {...}, "6.5": {...}}``: the same for the windows.
        ``snr50``, ``snr90``
            Where the binned curve first reaches 50% and 90%
            (`completeness_crossing`).
        ``probit``
            ``{"snr50", "snr90", "width"}`` from
            `fit_completeness_probit`, or `None`.
        ``purity``, ``purity_above``
            All detections, and those with measured SNR above
            ``purity_snr`` (with ``snr``), as fractions with intervals.
        ``purity_by_snr``
            Purity per measured-SNR bin.
        ``n_truth``, ``n_detections``, ``n_false``
            Counts.
    """
    truth_snr = np.asarray(truth_snr, dtype=float).ravel()
    truth_matched = np.asarray(truth_matched, dtype=bool).ravel()
    det_matched = np.asarray(det_matched, dtype=bool).ravel()
    det_snr = np.asarray(det_snr, dtype=float).ravel()
    edges = np.asarray(snr_edges, dtype=float)
    if truth_snr.shape != truth_matched.shape or det_snr.shape != det_matched.shape:
        raise ValueError("truth_snr/truth_matched and det_snr/det_matched must have equal lengths.")
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"snr_edges must be increasing with at least two entries, not {snr_edges}.")

    completeness, purity_by_snr = [], []
    centres, values = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (truth_snr >= lo) & (truth_snr < hi)
        entry = _fraction(int(truth_matched[in_bin].sum()), int(in_bin.sum()), z)
        mean = float(truth_snr[in_bin].mean()) if in_bin.any() else None
        completeness.append({"snr_min": float(lo), "snr_max": float(hi), "snr_mean": mean, **entry})
        centres.append(np.nan if mean is None else mean)
        values.append(np.nan if entry["value"] is None else entry["value"])
        det_bin = (det_snr >= lo) & (det_snr < hi)
        purity_by_snr.append(
            {"snr_min": float(lo), "snr_max": float(hi)}
            | _fraction(int(det_matched[det_bin].sum()), int(det_bin.sum()), z)
        )
    at = {}
    for point in snr_points:
        near = np.abs(truth_snr - point) <= snr_window
        at[f"{point:g}"] = {"snr": float(point), "window": float(snr_window)} | _fraction(
            int(truth_matched[near].sum()), int(near.sum()), z
        )
    fit = fit_completeness_probit(truth_snr, truth_matched)
    above = det_snr > purity_snr
    return {
        "n_truth": int(len(truth_snr)),
        "n_detections": int(len(det_snr)),
        "n_matched": int(det_matched.sum()),
        "n_false": int((~det_matched).sum()),
        "completeness": completeness,
        "completeness_at": at,
        "snr50": completeness_crossing(centres, values, 0.5),
        "snr90": completeness_crossing(centres, values, 0.9),
        "probit": None
        if fit is None
        else {"snr50": fit[0], "width": fit[1], "snr90": fit[0] + 1.2815515655446004 * fit[1]},
        "purity": _fraction(int(det_matched.sum()), int(len(det_matched)), z),
        "purity_above": {"snr": float(purity_snr)}
        | _fraction(int(det_matched[above].sum()), int(above.sum()), z),
        "purity_by_snr": purity_by_snr,
        "interval_z": float(z),
    }


def crowded_fields(densities, cut: float = 100.0) -> tuple[np.ndarray, str]:
    """Choose the crowded fields.

    Parameters
    ----------
    densities : array-like
        True density of each field (stars above the detection limit per
        arcmin^2).
    cut : `float`, optional
        Fields at or above this density are crowded.

    Returns
    -------
    crowded : `numpy.ndarray`
        Boolean, one per field.
    rule : `str`
        ``"density >= cut"``, or, when no field reaches the cut, the
        densest third of the fields (at least one; none when there are
        fewer than two fields): ``"densest third"``.
    """
    densities = np.asarray(densities, dtype=float)
    crowded = densities >= cut
    if crowded.any():
        return crowded, f"density >= {cut:g} per arcmin^2"
    if len(densities) < 2:
        return crowded, "none (fewer than two fields)"
    n = max(1, len(densities) // 3)
    order = np.argsort(-densities, kind="stable")
    crowded[order[:n]] = True
    return crowded, "densest third"


# --- One field ------------------------------------------------------------------------------------


def _stars(truth):
    """Truth rows of the stars with their centre on the detector."""
    rows = truth
    if "type" in truth.colnames:
        rows = rows[np.asarray(rows["type"]) == "star"]
    if "on_detector" in rows.colnames:
        rows = rows[np.asarray(rows["on_detector"], dtype=bool)]
    return rows


def field_density(
    truth, shape: tuple[int, int], pixel_scale_arcsec: float = 0.2, snr_min: float = 5.0
) -> float:
    """True density of detectable stars in a field (per arcmin^2).

    The truth table's ``star_density`` metadata (stars brighter than the
    depth, i.e. with ``nu_psf >= 5``) when present, else the stars on the
    detector with ``nu_psf >= snr_min`` over the image area.
    """
    if "star_density" in truth.meta:
        return float(truth.meta["star_density"])
    stars = _stars(truth)
    nu = np.asarray(stars["nu_psf"], dtype=float)
    area = shape[0] * shape[1] * (pixel_scale_arcsec / 60.0) ** 2
    return float(np.sum(nu >= snr_min)) / area


def score_star_field(
    image: np.ndarray,
    variance: np.ndarray,
    truth,
    psf_sigma: float,
    *,
    network: Any,
    normalization: Mapping[str, Any] | None = None,
    mask_planes: Mapping[str, np.ndarray] | None = None,
    bad_planes: Sequence[str] = ("NO_DATA", "BAD", "SATURATED"),
    threshold: float = 0.3,
    tile: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    window: int = 3,
    classical_threshold: float = 5.0,
    min_radius: float = 1.5,
    fwhm_fraction: float = 0.5,
    match_method: str = "greedy",
    border_sigma: float = 3.0,
) -> dict:
    """Run the CNN and the classical detection on one star field and match both to its truth.

    Both detectors see only the pixels; the truth is read after they ran.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        Star-field image and variance.
    truth : `astropy.table.Table`
        ``star_field_truth`` (stars with ``x``, ``y``, ``nu_psf`` and,
        when present, ``type``, ``on_detector`` and ``saturated``).
    psf_sigma : `float`
        Gaussian sigma of the PSF model (pixels).
    network : `torch.nn.Module`
        Star network in eval mode.
    normalization : `dict`, optional
        The model's ``normalization`` metadata (method and clip range);
        ``robust`` with clip (-10, 50) if not given.
    mask_planes : `dict` [`str`, `numpy.ndarray`], optional
        Boolean mask planes.
    bad_planes : sequence of `str`, optional
        Planes of pixels with no usable data: zero network input, missing
        for the SNR map, and no star or detection whose peak pixel is in
        them is scored (saturated stars and what lies on bleed trails).
    threshold : `float`, optional
        CNN heatmap threshold.
    tile, overlap, batch_size, window : `int`, optional
        CNN inference tiling and peak window (`detect_stars`).
    classical_threshold : `float`, optional
        PSF-filter SNR threshold of the classical detection.
    min_radius, fwhm_fraction : `float`, optional
        Matching radius ``max(min_radius, fwhm_fraction * FWHM)``.
    match_method : `str`, optional
        See `match_points`.
    border_sigma : `float`, optional
        Stars and detections within ``ceil(border_sigma * psf_sigma)``
        pixels of the image edge, where the classical detection finds no
        peak, are not scored.

    Returns
    -------
    scores : `dict`
        ``truth_snr`` (the scored stars' ``nu_psf``), ``match_radius``,
        ``border``, ``n_stars`` (all stars on the detector), and for
        ``"cnn"`` and ``"classical"``: ``truth_matched`` (per scored
        star), ``det_matched``, ``det_snr`` (measured), ``det_score``
        (heatmap probability or PSF-fit SNR) for the scored detections and
        ``n_detections_all``.
    """
    from ..simulation.stack_detection import psf_filter_snr
    from ..tiles.normalization import Normalization, apply_normalization, fit_normalization

    image = np.asarray(image, dtype=np.float32)
    variance = np.asarray(variance, dtype=np.float32)
    shape = image.shape
    planes = dict(mask_planes or {})
    bad = ~np.isfinite(image) | ~(variance > 0)
    for name in bad_planes:
        if name in planes:
            bad |= np.asarray(planes[name], dtype=bool)

    # Detection: pixels only.
    norm = Normalization(**dict(normalization)) if normalization else Normalization("robust")
    fitted = fit_normalization(image, bad, method=norm.method, clip_min=norm.clip_min, clip_max=norm.clip_max)
    normalized = apply_normalization(image, fitted, variance=variance, bad=bad)
    cnn_x, cnn_y, cnn_score = detect_stars(
        network, normalized, threshold, tile, overlap, window=window, batch_size=batch_size
    )
    cls_x, cls_y, cls_snr = classical_detections(
        image, variance, psf_sigma, mask_planes=planes, threshold=classical_threshold
    )
    snr_map, _ = psf_filter_snr(image, variance, psf_sigma, bad=bad)

    # Scoring.
    radius = matching_radius(psf_sigma, min_radius, fwhm_fraction)
    border = int(math.ceil(border_sigma * psf_sigma))

    def scored(x, y):
        ix = np.floor(np.asarray(x, dtype=float) + 0.5)
        iy = np.floor(np.asarray(y, dtype=float) + 0.5)
        inside = (ix >= border) & (ix < shape[1] - border) & (iy >= border) & (iy < shape[0] - border)
        inside &= np.isfinite(ix) & np.isfinite(iy)
        out = np.zeros(ix.shape, dtype=bool)
        out[inside] = ~bad[iy[inside].astype(int), ix[inside].astype(int)]
        return out

    stars = _stars(truth)
    true_x = np.asarray(stars["x"], dtype=float)
    true_y = np.asarray(stars["y"], dtype=float)
    nu = np.asarray(stars["nu_psf"], dtype=float)
    counted = scored(true_x, true_y) & np.isfinite(nu)
    if "saturated" in stars.colnames:
        counted &= ~np.asarray(stars["saturated"], dtype=bool)
    result = {
        "truth_snr": nu[counted],
        "match_radius": radius,
        "border": border,
        "n_stars": int(len(stars)),
    }
    for name, x, y, score in (("cnn", cnn_x, cnn_y, cnn_score), ("classical", cls_x, cls_y, cls_snr)):
        det_match, truth_match = match_points(x, y, true_x, true_y, radius, method=match_method)
        keep = scored(x, y)
        result[name] = {
            "truth_matched": (truth_match >= 0)[counted],
            "det_matched": (det_match >= 0)[keep],
            "det_snr": sample_map(snr_map, x[keep], y[keep]),
            "det_score": np.asarray(score, dtype=float)[keep],
            "n_detections_all": int(len(x)),
        }
    return result
