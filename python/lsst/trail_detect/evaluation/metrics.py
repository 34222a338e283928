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

"""Completeness, false-positive and score metrics of trail detection on
injected data, and the comparison with the ideal matched-filter detector.

The input is the ``trail_matches`` table: one row per injected truth trail
(``row_type == "truth"``) and one row per CNN detection not matched to a
truth (``"false_positive"`` or ``"fragment"``). The ideal detector is the
matched filter on a known template with a blind-search threshold ``t`` in
units of the optimal SNR: ``C(nu_opt) = Phi(nu_opt - t)``, with ``t = 6``
for about one false alarm per 4096x4096 detector. The shape-limited ideal
detector must also tell the trail from a point source at the same place, a
test whose significance is ``nu_opt * sqrt(1 - rho**2)``, with ``rho`` the
overlap of the trail with the best-matching point source
(`point_source_overlap`); short trails are no brighter than stars of the
same flux in that test, which bounds what any single-visit detector can do.

All functions are plain numpy/scipy; `evaluate_matches` gathers them into a
JSON-serializable dict (python floats, ints, bools, strings and lists;
NaN where a number is undefined).
"""

from __future__ import annotations

__all__ = (
    "DETECTOR_4K_PIXELS",
    "GOAL_COMPLETENESS",
    "auc",
    "binned_completeness",
    "calibration_curve",
    "evaluate_matches",
    "false_positives_per_detector",
    "fit_completeness_curve",
    "headline_table",
    "ideal_completeness",
    "ideal_shape_completeness",
    "offset_from_ideal",
    "point_source_overlap",
    "precision_recall_curve",
    "roc_curve",
    "score_at_fp_budget",
    "wilson_interval",
)

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import optimize, stats

DETECTOR_4K_PIXELS = 4096 * 4096
"""Pixels of the 4k x 4k detector that false-positive rates are normalised to."""

GOAL_COMPLETENESS = {(2.0, 5.0): 0.30, (5.0, 10.0): 0.60, (10.0, 31.0): 0.90}
"""Completeness goals per ``nu_det`` bin ``(low, high)`` at the operating point."""

GOAL_MAX_FP_PER_4K = 10.0
"""Most false positives per 4k x 4k detector allowed at the operating point."""

GOAL_MAX_OFFSET = 0.75
"""Largest allowed ``|nu50 - t|`` (sigma) of the CNN for long trails."""

GOAL_MIN_OFFSET_LENGTH = 20.0
"""Length bins whose lower edge is at least this (pixels) carry the offset goal."""

_MIN_FIT_TRAILS = 10
_MAX_CURVE_POINTS = 500


# --- Small helpers --------------------------------------------------------------------------------


def _colnames(table: Any) -> set[str]:
    if hasattr(table, "colnames"):
        return set(table.colnames)
    if isinstance(table, Mapping):
        return set(table.keys())
    return {str(c) for c in table.columns}


def _col(table: Any, name: str, dtype: Any = float, fill: Any = np.nan) -> np.ndarray:
    """A column as a plain 1-D array, masked entries replaced by ``fill``."""
    values = table[name]
    if isinstance(values, np.ma.MaskedArray):
        return np.ma.filled(values.astype(dtype), fill)
    return np.atleast_1d(np.asarray(values, dtype=dtype))


def _str_col(table: Any, name: str) -> np.ndarray:
    """A string column, masked entries as ``""`` and bytes decoded."""
    values = table[name]
    if isinstance(values, np.ma.MaskedArray):
        values = np.ma.filled(values, "")
    values = np.atleast_1d(np.asarray(values))
    if values.dtype.kind == "S":
        values = np.char.decode(values, "utf-8")
    return np.char.strip(values.astype(str))


def _passes(scores: np.ndarray, min_score: float) -> np.ndarray:
    """Scores at or above ``min_score``; a missing (NaN) score passes only when no cut applies."""
    scores = np.asarray(scores, dtype=float)
    with np.errstate(invalid="ignore"):
        return (scores >= min_score) | (np.isnan(scores) & (min_score <= 0.0))


def _bin_labels(edges: Sequence[float]) -> list[str]:
    return [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value, ``[e_i, e_{i+1})`` with the last bin closed; -1 outside or NaN."""
    values = np.asarray(values, dtype=float)
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = len(edges) - 2
    index[(index < 0) | (index >= len(edges) - 1) | ~np.isfinite(values)] = -1
    return index


def _to_builtin(value: Any) -> Any:
    """Convert numpy scalars and arrays (recursively) to python objects for JSON."""
    if isinstance(value, Mapping):
        return {str(k): _to_builtin(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_to_builtin(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_to_builtin(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, str | np.str_):
        return str(value)
    if value is None:
        return None
    raise TypeError(f"cannot convert a {type(value).__name__} to JSON.")


def _thin_curve(curve: dict[str, np.ndarray], max_points: int = _MAX_CURVE_POINTS) -> dict[str, Any]:
    """Keep at most ``max_points`` evenly spaced points (ends included) of the array entries."""
    lengths = {len(v) for v in curve.values() if isinstance(v, np.ndarray)}
    if not lengths or max(lengths) <= max_points:
        return curve
    n = max(lengths)
    keep = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(int))
    return {k: (v[keep] if isinstance(v, np.ndarray) and len(v) == n else v) for k, v in curve.items()}


# --- Ideal detector and binned completeness -------------------------------------------------------


def ideal_completeness(nu_opt: Any, threshold: float = 6.0) -> np.ndarray:
    """Completeness of the ideal matched-filter detector.

    Parameters
    ----------
    nu_opt : array-like
        Optimal (matched-filter) SNR of each trail.
    threshold : `float`, optional
        Detection threshold ``t`` in units of the matched-filter noise;
        ``t = 6`` gives about one false alarm per 4096x4096 detector for a
        blind search over positions, angles and lengths.

    Returns
    -------
    completeness : `numpy.ndarray`
        ``Phi(nu_opt - threshold)``, NaN where ``nu_opt`` is NaN.
    """
    return stats.norm.cdf(np.asarray(nu_opt, dtype=float) - threshold)


def point_source_overlap(length: Any, psf_sigma: Any) -> np.ndarray:
    """Overlap of a trail's image with that of a point source, for a Gaussian PSF.

    The normalized inner product ``rho = <T, P> / sqrt(<T, T> <P, P>)`` of
    a trail ``T`` (a segment of the given length convolved with the PSF)
    and a point source ``P`` at the trail's centre, the position that
    matches it best. It is ``nu_det / nu_opt``: the peak SNR of the
    point-source filter on the trail over its matched-filter SNR (the
    closed forms of `~lsst.trail_detect.injection.catalog`), so the
    trail-or-star test of `ideal_shape_completeness` has significance
    ``sqrt(nu_opt**2 - nu_det**2)``.

    Parameters
    ----------
    length : array-like
        Trail length (pixels); zero is a point source.
    psf_sigma : array-like
        Gaussian sigma of the PSF (pixels).

    Returns
    -------
    rho : `numpy.ndarray`
        Between 0 and 1: 1 for a point source, falling as ``sqrt(2 sqrt(pi)
        psf_sigma / length)`` for long trails; NaN where an input is NaN or
        the PSF width is not positive.
    """
    from ..injection.catalog import nu_det_closed_form, nu_opt_closed_form

    length = np.clip(np.asarray(length, dtype=float), 0.0, None)
    sigma = np.asarray(psf_sigma, dtype=float)
    good = np.isfinite(length) & np.isfinite(sigma) & (sigma > 0)
    sigma = np.where(good, sigma, 1.0)
    length = np.where(good, length, 1.0)
    rho = nu_det_closed_form(1.0, length, sigma, 1.0) / nu_opt_closed_form(1.0, length, sigma, 1.0)
    # Below 1e-3 px both closed forms are the point-source limit; keep rounding from leaving 1.
    rho = np.where(length < 1e-3, 1.0, np.clip(rho, 0.0, 1.0))
    return np.where(good, rho, np.nan)


def ideal_shape_completeness(
    nu_opt: Any, length: Any, psf_sigma: Any, threshold: float = 6.0, shape_threshold: float = 3.0
) -> np.ndarray:
    """Completeness of the ideal detector that must also tell a trail from a star.

    The matched filter finds the trail with probability
    ``Phi(nu_opt - threshold)``; it then calls it a trail, not a point
    source, when the likelihood ratio of the two templates is significant.
    That test's signal-to-noise is ``nu_opt * sqrt(1 - rho**2)``
    (`point_source_overlap`), so::

        C = Phi(nu_opt - threshold) * Phi(nu_opt * sqrt(1 - rho**2) - shape_threshold)

    Parameters
    ----------
    nu_opt : array-like
        Optimal (matched-filter) SNR of each trail.
    length : array-like
        Trail length (pixels).
    psf_sigma : array-like
        Gaussian sigma of the PSF (pixels) on the trail's image.
    threshold : `float`, optional
        Detection threshold, as in `ideal_completeness`.
    shape_threshold : `float`, optional
        Significance a point source reaches by chance with the allowed
        probability: 3.0 lets about 1.3e-3 of them through, 10 of the 7400
        stack sources of a 4k detector of the embedded survey.

    Returns
    -------
    completeness : `numpy.ndarray`
        At most `ideal_completeness`, equal to it for long bright trails;
        NaN where an input is NaN.
    """
    nu_opt = np.asarray(nu_opt, dtype=float)
    rho = point_source_overlap(length, psf_sigma)
    separation = nu_opt * np.sqrt(1.0 - rho**2)
    return ideal_completeness(nu_opt, threshold) * stats.norm.cdf(separation - shape_threshold)


def wilson_interval(k: Any, n: Any, z: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial fraction ``k / n``.

    Parameters
    ----------
    k, n : array-like
        Successes and trials.
    z : `float`, optional
        Normal quantile of the interval; 1 gives the 68.3% interval.

    Returns
    -------
    lower, upper : `numpy.ndarray`
        Interval bounds; NaN where ``n == 0``.
    """
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + z**2 / n
        centre = (p + z**2 / (2.0 * n)) / denom
        half = z / denom * np.sqrt(np.clip(p * (1.0 - p), 0.0, None) / n + z**2 / (4.0 * n**2))
    lower = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
    upper = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    return lower, upper


def binned_completeness(values: Any, detected: Any, edges: Sequence[float], z: float = 1.0) -> dict:
    """Completeness in bins of a trail property.

    Parameters
    ----------
    values : array-like
        The property (e.g. ``nu_det``) of each truth trail; NaN never binned.
    detected : array-like of `bool`
        Whether each trail was detected.
    edges : sequence of `float`
        Bin edges; bins are ``[e_i, e_{i+1})``, the last one closed.
    z : `float`, optional
        Normal quantile of the Wilson interval (1: 68%).

    Returns
    -------
    result : `dict`
        Arrays with one entry per bin: ``n``, ``n_detected``,
        ``completeness`` (NaN for empty bins), ``lower`` and ``upper`` (the
        Wilson interval), ``mean_value`` (mean of ``values`` in the bin) and
        ``centers``; plus ``edges`` and ``labels`` (``"2-5"``).
    """
    edges = np.asarray(edges, dtype=float)
    values = np.asarray(values, dtype=float)
    detected = np.asarray(detected, dtype=bool)
    if values.shape != detected.shape:
        raise ValueError("values and detected must have the same shape.")
    nbin = len(edges) - 1
    index = _bin_index(values, edges)
    inside = index >= 0
    n = np.bincount(index[inside], minlength=nbin)
    k = np.bincount(index[inside], weights=detected[inside].astype(float), minlength=nbin).astype(int)
    total = np.bincount(index[inside], weights=values[inside], minlength=nbin)
    with np.errstate(invalid="ignore", divide="ignore"):
        completeness = np.where(n > 0, k / n, np.nan)
        mean_value = np.where(n > 0, total / n, np.nan)
    lower, upper = wilson_interval(k, n, z=z)
    return {
        "edges": edges,
        "labels": _bin_labels(edges),
        "centers": 0.5 * (edges[:-1] + edges[1:]),
        "mean_value": mean_value,
        "n": n,
        "n_detected": k,
        "completeness": completeness,
        "lower": lower,
        "upper": upper,
    }


def _binned_mean(values: Any, weights: Any, edges: Sequence[float]) -> dict:
    """Mean of ``weights`` (finite ones) per bin of ``values``: the ideal detector's curve."""
    edges = np.asarray(edges, dtype=float)
    values = np.asarray(values, dtype=float)
    weights = np.asarray(weights, dtype=float)
    nbin = len(edges) - 1
    index = _bin_index(values, edges)
    ok = (index >= 0) & np.isfinite(weights)
    n = np.bincount(index[ok], minlength=nbin)
    total = np.bincount(index[ok], weights=weights[ok], minlength=nbin)
    vsum = np.bincount(index[ok], weights=values[ok], minlength=nbin)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "edges": edges,
            "labels": _bin_labels(edges),
            "centers": 0.5 * (edges[:-1] + edges[1:]),
            "mean_value": np.where(n > 0, vsum / n, np.nan),
            "n": n,
            "completeness": np.where(n > 0, total / n, np.nan),
        }


# --- Probit fit of the completeness curve --------------------------------------------------------


def _probit_nll(params: np.ndarray, nu: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Negative log likelihood of ``Phi((nu - nu50) / width)`` and its gradient.

    ``params = (nu50, log width)``.
    """
    inv_w = math.exp(-params[1])
    z = (nu - params[0]) * inv_w
    log_p = np.where(y, stats.norm.logcdf(z), stats.norm.logcdf(-z))
    # d log L / dz: phi / Phi(z) for detections, -phi / Phi(-z) otherwise.
    dz = np.where(y, 1.0, -1.0) * np.exp(stats.norm.logpdf(z) - log_p)
    grad = np.array([np.sum(dz) * inv_w, np.sum(dz * z)])
    return -float(np.sum(log_p)), grad


def _crossing(x: np.ndarray, c: np.ndarray, level: float) -> float:
    """First ``x`` where the binned curve ``c`` rises through ``level`` (linear interpolation)."""
    for i in range(len(c) - 1):
        if c[i] < level <= c[i + 1]:
            return float(x[i] + (level - c[i]) * (x[i + 1] - x[i]) / (c[i + 1] - c[i]))
    return math.nan


def fit_completeness_curve(nu: Any, detected: Any, *, min_trails: int = _MIN_FIT_TRAILS) -> dict:
    """Maximum-likelihood fit of a probit completeness curve to per-trail outcomes.

    The model is ``C(nu) = Phi((nu - nu50) / width)``; for the ideal
    detector ``nu50 = t`` and ``width = 1`` in ``nu_opt``.

    Parameters
    ----------
    nu : array-like
        SNR (or any property) of each truth trail; NaN entries are dropped.
    detected : array-like of `bool`
        Whether each trail was detected.
    min_trails : `int`, optional
        Fewest trails to attempt a fit.

    Returns
    -------
    fit : `dict`
        ``nu50`` and its error ``nu50_err``, ``width`` and ``width_err``,
        ``nu90`` (90% point), ``n``, ``n_detected``, ``converged`` and
        ``log_likelihood``. Numbers are NaN when there are fewer than
        ``min_trails`` trails or no transition (all or none detected).
        Errors are from the inverse Fisher information at the optimum; the
        width is bounded below by 1% of the spread of ``nu``, so a
        perfectly separated (step-like) sample gives that width.
    """
    nu = np.asarray(nu, dtype=float)
    y = np.asarray(detected, dtype=bool)
    ok = np.isfinite(nu)
    nu, y = nu[ok], y[ok]
    n, k = int(nu.size), int(y.sum())
    result = {
        "nu50": math.nan,
        "nu50_err": math.nan,
        "width": math.nan,
        "width_err": math.nan,
        "nu90": math.nan,
        "n": n,
        "n_detected": k,
        "converged": False,
        "log_likelihood": math.nan,
    }
    if n < min_trails or k == 0 or k == n:
        return result

    lo, hi = float(nu.min()), float(nu.max())
    spread = max(hi - lo, 1e-6)
    min_log_w, max_log_w = math.log(0.01 * spread), math.log(2.0 * spread)
    bounds = [(lo - 0.5 * spread, hi + 0.5 * spread), (min_log_w, max_log_w)]

    # Starting points: crossings of the binned curve in equal-count bins, and a coarse grid.
    nbin = int(np.clip(n // 20, 3, 12))
    qedges = np.unique(np.quantile(nu, np.linspace(0.0, 1.0, nbin + 1)))
    starts = []
    if qedges.size >= 3:
        binned = binned_completeness(nu, y, qedges)
        good = binned["n"] > 0
        x, c = binned["mean_value"][good], np.maximum.accumulate(binned["completeness"][good])
        c50, c16, c84 = (_crossing(x, c, level) for level in (0.5, 0.16, 0.84))
        if np.isfinite(c50):
            width0 = 0.5 * (c84 - c16) if np.isfinite(c16) and np.isfinite(c84) and c84 > c16 else spread / 10
            starts.append((c50, math.log(np.clip(width0, 0.02 * spread, spread))))
    grid_nu50, grid_log_w = np.meshgrid(
        np.quantile(nu, np.linspace(0.05, 0.95, 10)), np.linspace(min_log_w + 1.0, max_log_w - 0.5, 4)
    )
    grid_nu50, grid_log_w = grid_nu50.ravel(), grid_log_w.ravel()
    best_grid, best_nll = 0, math.inf
    for chunk in range(0, grid_nu50.size, max(1, 4_000_000 // n)):
        part = slice(chunk, chunk + max(1, 4_000_000 // n))
        z = (nu[None, :] - grid_nu50[part, None]) * np.exp(-grid_log_w[part, None])
        nll = -np.sum(np.where(y, stats.norm.logcdf(z), stats.norm.logcdf(-z)), axis=1)
        if nll.min() < best_nll:
            best_grid, best_nll = chunk + int(np.argmin(nll)), float(nll.min())
    starts.append((grid_nu50[best_grid], grid_log_w[best_grid]))

    best = None
    for start in starts:
        x0 = np.clip(np.array(start, dtype=float), [b[0] for b in bounds], [b[1] for b in bounds])
        res = optimize.minimize(_probit_nll, x0, args=(nu, y), jac=True, method="SLSQP", bounds=bounds)
        if best is None or res.fun < best.fun:
            best = res
    nu50, width = float(best.x[0]), float(math.exp(best.x[1]))

    # Fisher information of (nu50, width): sum phi^2 / (p (1 - p)) g g^T, g = dz/dtheta.
    z = (nu - nu50) / width
    p = np.clip(stats.norm.cdf(z), 1e-12, 1.0 - 1e-12)
    weight = stats.norm.pdf(z) ** 2 / (p * (1.0 - p))
    g = np.stack([-np.ones_like(z) / width, -z / width])
    info = (g * weight) @ g.T
    try:
        cov = np.linalg.inv(info)
        nu50_err, width_err = (float(math.sqrt(v)) if v > 0 else math.nan for v in np.diag(cov))
    except np.linalg.LinAlgError:
        nu50_err = width_err = math.nan
    result.update(
        nu50=nu50,
        nu50_err=nu50_err,
        width=width,
        width_err=width_err,
        nu90=nu50 + float(stats.norm.ppf(0.9)) * width,
        converged=bool(best.success),
        log_likelihood=-float(best.fun),
    )
    return result


def offset_from_ideal(
    nu_opt: Any,
    detected: Any,
    length: Any,
    length_edges: Sequence[float],
    threshold: float = 6.0,
) -> dict:
    """Distance of the detector's 50% point from the ideal detector's, per length bin.

    Parameters
    ----------
    nu_opt : array-like
        Optimal SNR of each truth trail.
    detected : array-like of `bool`
        Whether each trail was detected.
    length : array-like
        Trail length in pixels.
    length_edges : sequence of `float`
        Length bin edges.
    threshold : `float`, optional
        Threshold of the ideal detector; its 50% point is at ``nu_opt = threshold``.

    Returns
    -------
    offsets : `dict`
        Per length bin (arrays): ``offset`` (fitted ``nu50`` minus
        ``threshold``, in sigma of the matched filter; positive means the
        detector needs more SNR than the ideal one), ``offset_err``,
        ``nu50``, ``width``, ``n``, ``n_detected`` and ``efficiency`` (the
        detections divided by the number the ideal detector expects,
        ``sum Phi(nu_opt - t)``); plus ``edges``, ``labels`` and ``threshold``.
    """
    nu_opt = np.asarray(nu_opt, dtype=float)
    detected = np.asarray(detected, dtype=bool)
    edges = np.asarray(length_edges, dtype=float)
    index = _bin_index(np.asarray(length, dtype=float), edges)
    keys = ("offset", "offset_err", "nu50", "width", "efficiency")
    out: dict[str, Any] = {key: np.full(len(edges) - 1, np.nan) for key in keys}
    out["n"] = np.zeros(len(edges) - 1, dtype=int)
    out["n_detected"] = np.zeros(len(edges) - 1, dtype=int)
    ideal = ideal_completeness(nu_opt, threshold)
    for i in range(len(edges) - 1):
        sel = (index == i) & np.isfinite(nu_opt)
        fit = fit_completeness_curve(nu_opt[sel], detected[sel])
        out["n"][i], out["n_detected"][i] = fit["n"], fit["n_detected"]
        out["offset"][i] = fit["nu50"] - threshold
        out["offset_err"][i] = fit["nu50_err"]
        out["nu50"][i] = fit["nu50"]
        out["width"][i] = fit["width"]
        expected = float(np.sum(ideal[sel]))
        if expected > 0:
            out["efficiency"][i] = fit["n_detected"] / expected
    out.update(edges=edges, labels=_bin_labels(edges), threshold=float(threshold))
    return out


# --- Score curves ---------------------------------------------------------------------------------


def _cumulative_counts(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Thresholds (distinct finite scores, descending) and TP, FP counts at ``score >= threshold``.

    NaN scores are never selected but count in the positive and negative totals.
    """
    scores = np.asarray(scores, dtype=float).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError("scores and labels must have the same length.")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    finite = ~np.isnan(scores)
    s, lab = scores[finite], labels[finite]
    order = np.argsort(-s, kind="mergesort")
    s, lab = s[order], lab[order]
    tp = np.cumsum(lab)
    fp = np.cumsum(~lab)
    # Last index of each run of tied scores: all tied items enter together.
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1] if s.size else np.zeros(0, dtype=int)
    return s[last], tp[last], fp[last], n_pos, n_neg


def roc_curve(scores: Any, labels: Any) -> dict:
    """Receiver operating characteristic of a score.

    Parameters
    ----------
    scores : array-like
        Scores, higher meaning more likely positive. NaN marks an item that
        is never selected at any threshold: at object level, an injected
        trail the detector did not find at all. It counts in the positive
        total, so the true-positive rate is ``TP(s) / n_positive`` with every
        truth in the denominator, not only the detected ones.
    labels : array-like of `bool`
        True for positives.

    Returns
    -------
    roc : `dict`
        ``fpr``, ``tpr`` and ``thresholds`` (selection is ``score >=
        threshold``), starting at ``(0, 0)`` with threshold ``+inf``. Ties
        enter together (one point per distinct score). When NaN scores are
        present a last point ``(1, 1)`` with threshold ``-inf`` ranks them
        below everything, so ``auc`` stays the probability that a random
        positive outranks a random negative. Also ``auc``, ``n_positive``
        and ``n_negative``.
    """
    thresholds, tp, fp, n_pos, n_neg = _cumulative_counts(scores, labels)
    thresholds = np.r_[np.inf, thresholds]
    tp, fp = np.r_[0, tp], np.r_[0, fp]
    if tp[-1] < n_pos or fp[-1] < n_neg:
        thresholds, tp, fp = np.r_[thresholds, -np.inf], np.r_[tp, n_pos], np.r_[fp, n_neg]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / n_pos if n_pos else np.full(tp.shape, np.nan)
        fpr = fp / n_neg if n_neg else np.full(fp.shape, np.nan)
    area = auc(fpr, tpr) if n_pos and n_neg else math.nan
    return {
        "fpr": fpr,
        "tpr": tpr,
        "thresholds": thresholds,
        "auc": area,
        "n_positive": n_pos,
        "n_negative": n_neg,
    }


def precision_recall_curve(scores: Any, labels: Any) -> dict:
    """Precision and recall of a score versus threshold.

    Parameters
    ----------
    scores : array-like
        Scores, higher meaning more likely positive. NaN marks an item never
        selected: for injected trails the detector missed, they count in the
        recall denominator at every threshold (``recall = TP(s) / n_truth``),
        so recall tops out at the detector's completeness.
    labels : array-like of `bool`
        True for positives.

    Returns
    -------
    pr : `dict`
        ``precision``, ``recall`` and ``thresholds`` (``score >= threshold``),
        one point per distinct finite score (ties enter together), preceded
        by ``(recall 0, precision 1)`` at threshold ``+inf``; ``auc`` (the
        trapezoid under precision versus recall), ``average_precision``
        (``sum (R_k - R_{k-1}) P_k``), ``n_positive`` and ``n_negative``.
    """
    thresholds, tp, fp, n_pos, n_neg = _cumulative_counts(scores, labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.r_[1.0, tp / np.maximum(tp + fp, 1)]
        recall = np.r_[0.0, tp / n_pos] if n_pos else np.full(tp.size + 1, np.nan)
    thresholds = np.r_[np.inf, thresholds]
    if n_pos and recall.size > 1:
        area = auc(recall, precision)
        ap = float(np.sum(np.diff(recall) * precision[1:]))
    else:
        area = ap = math.nan
    return {
        "precision": precision,
        "recall": recall,
        "thresholds": thresholds,
        "auc": area,
        "average_precision": ap,
        "n_positive": n_pos,
        "n_negative": n_neg,
    }


def auc(x: Any, y: Any) -> float:
    """Area under a curve by the trapezoid rule.

    Parameters
    ----------
    x, y : array-like
        Curve points; ``x`` must be monotonic (non-decreasing or
        non-increasing), as it is for ROC and precision-recall curves.

    Returns
    -------
    area : `float`
        The area, positive for either direction of ``x``; NaN for fewer than
        two points.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size < 2:
        return math.nan
    dx = np.diff(x)
    if np.all(dx <= 0):
        x, y, dx = x[::-1], y[::-1], -dx[::-1]
    elif not np.all(dx >= 0):
        raise ValueError("x must be monotonic.")
    return float(np.sum(dx * 0.5 * (y[1:] + y[:-1])))


def calibration_curve(scores: Any, is_real: Any, bins: int | Sequence[float] = 10) -> dict:
    """Reliability of a probability-like score.

    Parameters
    ----------
    scores : array-like
        Scores in ``[0, 1]``; NaN entries are dropped.
    is_real : array-like of `bool`
        Whether each scored item is real.
    bins : `int` or sequence of `float`, optional
        Number of equal bins on ``[0, 1]`` or the bin edges.

    Returns
    -------
    calibration : `dict`
        Per bin: ``mean_predicted``, ``fraction_real`` (NaN for empty bins)
        and ``counts``; ``edges``; ``ece``, the expected calibration error
        ``sum_b (n_b / N) |fraction_real_b - mean_predicted_b|``; ``n``.
    """
    scores = np.asarray(scores, dtype=float).ravel()
    real = np.asarray(is_real, dtype=bool).ravel()
    ok = np.isfinite(scores)
    scores, real = scores[ok], real[ok]
    edges = np.linspace(0.0, 1.0, bins + 1) if np.isscalar(bins) else np.asarray(bins, dtype=float)
    nbin = len(edges) - 1
    index = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, nbin - 1)
    counts = np.bincount(index, minlength=nbin)
    psum = np.bincount(index, weights=scores, minlength=nbin)
    rsum = np.bincount(index, weights=real.astype(float), minlength=nbin)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(counts > 0, psum / counts, np.nan)
        fraction_real = np.where(counts > 0, rsum / counts, np.nan)
    n = int(counts.sum())
    used = counts > 0
    ece = (
        float(np.sum(counts[used] * np.abs(fraction_real[used] - mean_predicted[used])) / n)
        if n
        else math.nan
    )
    return {
        "edges": edges,
        "mean_predicted": mean_predicted,
        "fraction_real": fraction_real,
        "counts": counts,
        "ece": ece,
        "n": n,
    }


# --- False positives ------------------------------------------------------------------------------


def _image_area(table: Any) -> tuple[int, float]:
    """Number of distinct (visit, detector) images in the table and their total pixels."""
    names = _colnames(table)
    if len(table) == 0:
        return 0, 0.0
    visit = _col(table, "visit", dtype=np.int64, fill=-1)
    detector = _col(table, "detector", dtype=np.int64, fill=-1)
    _, first = np.unique(np.stack([visit, detector], axis=1), axis=0, return_index=True)
    if "image_pixels" in names:
        pixels = _col(table, "image_pixels", dtype=float)[first]
    else:
        pixels = np.full(first.size, float(DETECTOR_4K_PIXELS))
    return int(first.size), float(np.nansum(pixels))


def false_positives_per_detector(
    table: Any, min_score: float = 0.0, *, area_pixels: float | None = None
) -> dict:
    """False positives per 4096x4096-equivalent detector, purity and FP classes.

    Parameters
    ----------
    table : `astropy.table.Table`
        The ``trail_matches`` table.
    min_score : `float`, optional
        Detections (matched or not) count when ``score >= min_score``.
    area_pixels : `float`, optional
        Searched area in pixels; by default the sum of ``image_pixels`` over
        the distinct ``(visit, detector)`` images in the table (an image with
        no truth and no detection has no rows, so pass the area when such
        images exist; without ``image_pixels`` each image counts as a 4k
        detector).

    Returns
    -------
    fp : `dict`
        ``n_false_positives``, ``n_true_positives``, ``n_fragments`` (kept
        out of both), ``n_images``, ``area_4k_detectors``,
        ``fp_per_4k_detector`` and its Poisson error ``fp_per_4k_detector_err``,
        ``purity = TP / (TP + FP)`` with its Wilson 68% interval
        (``purity_lower``, ``purity_upper``), ``min_score``, and
        ``fp_classes``: counts per ``fp_class`` (``"unclassified"`` for an
        empty class).
    """
    row_type = _str_col(table, "row_type")
    score = _col(table, "score")
    keep = _passes(score, min_score)
    truth = row_type == "truth"
    detected = _col(table, "detected", dtype=bool, fill=False) & truth & keep
    fp = (row_type == "false_positive") & keep
    fragments = (row_type == "fragment") & keep
    n_images, area = _image_area(table)
    if area_pixels is not None:
        area = float(area_pixels)
    n_4k = area / DETECTOR_4K_PIXELS
    n_fp, n_tp = int(fp.sum()), int(detected.sum())
    classes: dict[str, int] = {}
    if "fp_class" in _colnames(table):
        names, counts = np.unique(_str_col(table, "fp_class")[fp], return_counts=True)
        classes = {(name or "unclassified"): int(c) for name, c in zip(names, counts)}
    elif n_fp:
        classes = {"unclassified": n_fp}
    lower, upper = wilson_interval(n_tp, n_tp + n_fp)
    return {
        "min_score": float(min_score),
        "n_false_positives": n_fp,
        "n_true_positives": n_tp,
        "n_fragments": int(fragments.sum()),
        "n_images": n_images,
        "area_4k_detectors": n_4k,
        "fp_per_4k_detector": n_fp / n_4k if n_4k > 0 else math.nan,
        "fp_per_4k_detector_err": math.sqrt(max(n_fp, 1)) / n_4k if n_4k > 0 else math.nan,
        "purity": n_tp / (n_tp + n_fp) if n_tp + n_fp else math.nan,
        "purity_lower": float(lower),
        "purity_upper": float(upper),
        "fp_classes": classes,
    }


def score_at_fp_budget(fp_scores: np.ndarray, n_4k: float, budget: float) -> float:
    """Lowest score cut that keeps at most ``budget`` false positives per 4k detector.

    Parameters
    ----------
    fp_scores : `numpy.ndarray`
        Scores (at least 0) of the false detections; non-finite ones are ignored.
    n_4k : `float`
        Searched area in 4k x 4k detectors.
    budget : `float`
        False positives allowed per 4k detector.

    Returns
    -------
    cut : `float`
        Detections with ``score >= cut`` pass; 0 when the false detections
        are within the budget anyway.
    """
    allowed = int(math.floor(budget * n_4k + 1e-9))
    fp_scores = np.sort(fp_scores[np.isfinite(fp_scores)])[::-1]
    if fp_scores.size <= allowed:
        return 0.0
    return float(np.nextafter(fp_scores[allowed], np.inf))


# --- Everything together --------------------------------------------------------------------------


def evaluate_matches(
    table: Any,
    *,
    nu_det_edges: Sequence[float] = (2, 5, 10, 31),
    length_edges: Sequence[float] = (0, 10, 20, 40, 1000),
    nu_opt_edges: Sequence[float] = (*range(0, 13), 14, 17, 20, 31, 100),
    min_score: float = 0.0,
    ideal_threshold: float = 6.0,
    shape_threshold: float | None = 3.0,
    pixel_scores: Any = None,
    pixel_labels: Any = None,
    area_pixels: float | None = None,
    calibration_bins: int = 10,
) -> dict:
    """All metrics of a ``trail_matches`` table in one JSON-serializable dict.

    Parameters
    ----------
    table : `astropy.table.Table`
        The ``trail_matches`` table (one row per truth trail and per
        unmatched CNN detection).
    nu_det_edges, length_edges, nu_opt_edges : sequence of `float`, optional
        Bins in stack-like detection SNR, trail length (pixels) and optimal SNR.
    min_score : `float`, optional
        Operating point: a CNN detection counts when its calibrated
        ``score >= min_score`` (truth rows by their matched detection's score).
    ideal_threshold : `float`, optional
        Threshold ``t`` of the ideal matched-filter detector.
    shape_threshold : `float` or `None`, optional
        Threshold of the shape-limited ideal detector's trail-or-star test
        (`ideal_shape_completeness`); `None` leaves that curve out. It needs
        the ``psf_sigma`` column.
    pixel_scores, pixel_labels : array-like or sequence of arrays, optional
        Sampled pixel probabilities and labels (per image arrays are
        concatenated) for pixel-level ROC, PR and calibration.
    area_pixels : `float`, optional
        Searched area in pixels, see `false_positives_per_detector`.
    calibration_bins : `int`, optional
        Bins of the calibration curves.

    Returns
    -------
    metrics : `dict`
        Keys:

        - ``min_score``, ``ideal_threshold``, ``shape_threshold``, ``n_truth``, ``n_images``,
          ``area_4k_detectors``, ``detectors``: the curve names present
          (``cnn``, ``stack``, ``stack_found_single``, ``hough``);
        - ``completeness_nu_det`` and ``completeness_nu_opt``: ``edges``,
          ``labels``, then per detector a `binned_completeness` dict
          (``cnn``; ``stack``: ``stack_status`` found or broken, i.e.
          detected by the stack at all; ``stack_found_single``: found as
          one source; ``hough`` if the column exists; ``ideal``: mean of
          ``Phi(nu_opt - t)`` over the trails in the bin; ``ideal_shape``:
          mean of `ideal_shape_completeness`), and ``fits``:
          `fit_completeness_curve` per detector in that variable;
        - ``completeness_by_length``: ``edges``, ``labels`` and ``bins``, a
          list with, per length bin, the ``nu_opt`` curves as above;
        - ``offset_from_ideal``: `offset_from_ideal` of the CNN in ``nu_opt``;
        - ``found_by`` (with a ``det_origin`` column): per ``nu_det`` bin,
          the completeness from the network's detections (``cnn``) and from
          the line search's (``line``), which add up to the ``cnn`` curve;
        - ``false_positives_per_4k_detector``, ``purity``, ``fp_classes``
          and ``false_positives``: the `false_positives_per_detector` dict;
        - ``at_fp_budget``: the lowest score cut with at most 10 FP per 4k
          detector and the CNN completeness per ``nu_det`` bin there;
        - ``roc``, ``pr`` and ``calibration``: ``object`` level (truth
          rows' matched detections as positives, undetected truths with no
          score so they count in the recall denominator; false positives as
          negatives; fragments left out) and ``pixel`` level when given;
          curves thinned to at most 500 points, areas from the full curves;
          ``roc.object`` adds ``fp_per_4k`` per threshold (a FROC curve)
          and ``auc_detections_only`` (matched detections against false
          positives, missed truths left out: how well the score alone
          separates real from false detections);
        - ``goals``: list of dicts with ``goal``, ``target``, ``measured``,
          ``met``: completeness per ``nu_det`` bin at the operating point
          (met only if FP per 4k detector is also within 10), CNN above the
          stack in each bin, FP per 4k within 10, and ``|offset| <= 0.75``
          for length bins starting at 20 px or more.
    """
    names = _colnames(table)
    row_type = _str_col(table, "row_type")
    truth = row_type == "truth"
    t = table[truth] if hasattr(table, "colnames") else {k: np.asarray(table[k])[truth] for k in names}
    nu_det = _col(t, "nu_det")
    nu_opt = _col(t, "nu_opt")
    length = _col(t, "trail_length")
    truth_score = _col(t, "score")
    cnn = _col(t, "detected", dtype=bool, fill=False) & _passes(truth_score, min_score)
    outcomes = {"cnn": cnn}
    stack_status = _str_col(t, "stack_status") if "stack_status" in names else np.zeros(0, dtype=str)
    if stack_status.size and np.any(stack_status != ""):
        outcomes["stack"] = np.isin(stack_status, ["found", "broken"])
        outcomes["stack_found_single"] = stack_status == "found"
    if "hough_detected" in names:
        outcomes["hough"] = _col(t, "hough_detected", dtype=bool, fill=False)
    ideal = ideal_completeness(nu_opt, ideal_threshold)
    ideal_shape = None
    if shape_threshold is not None and "psf_sigma" in names:
        ideal_shape = ideal_shape_completeness(
            nu_opt, length, _col(t, "psf_sigma"), ideal_threshold, shape_threshold
        )

    def curves(values: np.ndarray, edges: Sequence[float], sel: np.ndarray | None = None) -> dict:
        sel = np.ones(values.shape, dtype=bool) if sel is None else sel
        out: dict[str, Any] = {"edges": np.asarray(edges, dtype=float), "labels": _bin_labels(edges)}
        for name, det in outcomes.items():
            out[name] = binned_completeness(values[sel], det[sel], edges)
        out["ideal"] = _binned_mean(values[sel], ideal[sel], edges)
        if ideal_shape is not None:
            out["ideal_shape"] = _binned_mean(values[sel], ideal_shape[sel], edges)
        out["fits"] = {name: fit_completeness_curve(values[sel], det[sel]) for name, det in outcomes.items()}
        return out

    metrics: dict[str, Any] = {
        "min_score": float(min_score),
        "ideal_threshold": float(ideal_threshold),
        "shape_threshold": math.nan if ideal_shape is None else float(shape_threshold),
        "n_truth": int(truth.sum()),
        "detectors": list(outcomes),
    }
    metrics["completeness_nu_det"] = curves(nu_det, nu_det_edges)
    metrics["completeness_nu_opt"] = curves(nu_opt, nu_opt_edges)
    length_index = _bin_index(length, np.asarray(length_edges, dtype=float))
    metrics["completeness_by_length"] = {
        "edges": np.asarray(length_edges, dtype=float),
        "labels": _bin_labels(length_edges),
        "bins": [curves(nu_opt, nu_opt_edges, length_index == i) for i in range(len(length_edges) - 1)],
    }
    metrics["offset_from_ideal"] = offset_from_ideal(nu_opt, cnn, length, length_edges, ideal_threshold)
    if "det_origin" in names:
        # Which part of the detection found each trail: the network or the line search.
        origin = _str_col(t, "det_origin")
        metrics["found_by"] = {
            "edges": np.asarray(nu_det_edges, dtype=float),
            "labels": _bin_labels(nu_det_edges),
            **{
                name: binned_completeness(nu_det, cnn & (origin == name), nu_det_edges)["completeness"]
                for name in ("cnn", "line")
            },
        }

    fp = false_positives_per_detector(table, min_score, area_pixels=area_pixels)
    metrics.update(
        n_images=fp["n_images"],
        area_4k_detectors=fp["area_4k_detectors"],
        false_positives=fp,
        false_positives_per_4k_detector=fp["fp_per_4k_detector"],
        purity=fp["purity"],
        fp_classes=fp["fp_classes"],
    )

    # Object-level score curves: matched truths (positives, NaN score if undetected) vs false positives.
    all_score = _col(table, "score")
    is_fp = row_type == "false_positive"
    truth_obj_score = np.where(_col(t, "detected", dtype=bool, fill=False), truth_score, np.nan)
    obj_scores = np.r_[truth_obj_score, all_score[is_fp]]
    obj_labels = np.r_[np.ones(truth_obj_score.size, bool), np.zeros(int(is_fp.sum()), bool)]
    n_4k = fp["area_4k_detectors"]
    roc = roc_curve(obj_scores, obj_labels)
    obj_detected = np.isfinite(obj_scores)
    roc["auc_detections_only"] = roc_curve(obj_scores[obj_detected], obj_labels[obj_detected])["auc"]
    with np.errstate(invalid="ignore", divide="ignore"):
        roc["fp_per_4k"] = roc["fpr"] * roc["n_negative"] / n_4k if n_4k > 0 else roc["fpr"] * np.nan
    metrics["roc"] = {"object": _thin_curve(roc)}
    metrics["pr"] = {"object": _thin_curve(precision_recall_curve(obj_scores, obj_labels))}
    metrics["calibration"] = {
        "object": calibration_curve(obj_scores[obj_detected], obj_labels[obj_detected], calibration_bins)
    }
    if pixel_scores is not None and pixel_labels is not None:
        pscores, plabels = pixel_scores, pixel_labels
        if isinstance(pscores, list | tuple):
            pscores, plabels = (
                np.concatenate([np.ravel(a) for a in pscores]),
                np.concatenate([np.ravel(a) for a in plabels]),
            )
        pscores = np.asarray(pscores, dtype=float).ravel()
        plabels = np.asarray(plabels, dtype=bool).ravel()
        metrics["roc"]["pixel"] = _thin_curve(roc_curve(pscores, plabels))
        metrics["pr"]["pixel"] = _thin_curve(precision_recall_curve(pscores, plabels))
        metrics["calibration"]["pixel"] = calibration_curve(pscores, plabels, calibration_bins)

    # Completeness at the score cut that meets the FP budget.
    budget_cut = score_at_fp_budget(all_score[is_fp], n_4k, GOAL_MAX_FP_PER_4K) if n_4k > 0 else math.nan
    if np.isfinite(budget_cut):
        at_cut = _col(t, "detected", dtype=bool, fill=False) & _passes(
            truth_score, max(budget_cut, min_score)
        )
        budget_cut = max(budget_cut, min_score)
        fp_cut = false_positives_per_detector(table, budget_cut, area_pixels=area_pixels)
        metrics["at_fp_budget"] = {
            "max_fp_per_4k_detector": GOAL_MAX_FP_PER_4K,
            "min_score": budget_cut,
            "fp_per_4k_detector": fp_cut["fp_per_4k_detector"],
            "purity": fp_cut["purity"],
            "completeness_nu_det": binned_completeness(nu_det, at_cut, nu_det_edges),
        }

    metrics["goals"] = _goals(metrics)
    return _to_builtin(metrics)


def _goals(metrics: dict) -> list[dict]:
    """Check the completeness, stack, false-positive and ideal-offset goals."""
    goals = []
    curves = metrics["completeness_nu_det"]
    fp_rate = metrics["false_positives_per_4k_detector"]
    fp_ok = bool(np.isfinite(fp_rate) and fp_rate <= GOAL_MAX_FP_PER_4K)
    edges = curves["edges"]
    for i, label in enumerate(curves["labels"]):
        target = GOAL_COMPLETENESS.get((float(edges[i]), float(edges[i + 1])))
        if target is None:
            continue
        measured = float(curves["cnn"]["completeness"][i])
        goals.append(
            {
                "goal": f"CNN completeness >= {target:.2f} at nu_det {label} "
                f"with <= {GOAL_MAX_FP_PER_4K:g} FP per 4k detector",
                "target": target,
                "measured": measured,
                "met": bool(np.isfinite(measured) and measured >= target and fp_ok),
            }
        )
    if "stack" in curves:
        for i, label in enumerate(curves["labels"]):
            cnn, stack = float(curves["cnn"]["completeness"][i]), float(curves["stack"]["completeness"][i])
            diff = cnn - stack
            goals.append(
                {
                    "goal": f"CNN completeness above the stack (found or broken) at nu_det {label}",
                    "target": 0.0,
                    "measured": diff,
                    "met": bool(np.isfinite(diff) and (diff > 0 or cnn >= 1.0)),
                }
            )
    goals.append(
        {
            "goal": f"<= {GOAL_MAX_FP_PER_4K:g} false positives per 4k detector",
            "target": GOAL_MAX_FP_PER_4K,
            "measured": float(fp_rate),
            "met": fp_ok,
        }
    )
    offsets = metrics["offset_from_ideal"]
    for i, label in enumerate(offsets["labels"]):
        if offsets["edges"][i] < GOAL_MIN_OFFSET_LENGTH:
            continue
        offset = float(offsets["offset"][i])
        goals.append(
            {
                "goal": f"|nu50 - t| <= {GOAL_MAX_OFFSET:g} sigma in nu_opt for length {label} px",
                "target": GOAL_MAX_OFFSET,
                "measured": offset,
                "met": bool(np.isfinite(offset) and abs(offset) <= GOAL_MAX_OFFSET),
            }
        )
    return goals


def _fmt(value: Any, spec: str = ".3f") -> str:
    value = float(value)
    return "nan" if not np.isfinite(value) else format(value, spec)


def headline_table(metrics: Mapping) -> str:
    """A plain-text summary of completeness per ``nu_det`` bin and the false positives.

    Parameters
    ----------
    metrics : `dict`
        Output of `evaluate_matches`.

    Returns
    -------
    table : `str`
        One row per ``nu_det`` bin with the number of trails and the
        completeness of the CNN (with its 68% interval), the stack (found or
        broken, and found as a single source), the Hough detector (when
        present), the ideal detector and the shape-limited ideal detector
        (when measured); then the false positives per 4k
        detector, the purity at the operating point and the goals.
    """
    curves = metrics["completeness_nu_det"]
    columns = [("CNN", "cnn"), ("stack", "stack"), ("stack 1-src", "stack_found_single")]
    columns += [("Hough", "hough"), ("ideal", "ideal"), ("ideal+shape", "ideal_shape")]
    columns = [(title, key) for title, key in columns if key in curves]
    header = f"{'nu_det':>8} {'n':>6} {'CNN [68%]':>21}" + "".join(
        f" {title:>11}" for title, _ in columns[1:]
    )
    lines = [
        f"Completeness per nu_det bin (score >= {_fmt(metrics['min_score'], 'g')}, "
        f"ideal t = {_fmt(metrics['ideal_threshold'], 'g')})",
        header,
        "-" * len(header),
    ]
    for i, label in enumerate(curves["labels"]):
        c = curves["cnn"]
        cell = f"{_fmt(c['completeness'][i])} [{_fmt(c['lower'][i], '.2f')},{_fmt(c['upper'][i], '.2f')}]"
        row = f"{label:>8} {int(c['n'][i]):>6} {cell:>21}"
        row += "".join(f" {_fmt(curves[key]['completeness'][i]):>11}" for _, key in columns[1:])
        lines.append(row)
    if "ideal_shape" in curves:
        lines.append(
            "ideal+shape: the ideal detector that must also tell the trail from a point source "
            f"(test threshold {_fmt(metrics.get('shape_threshold'), 'g')} sigma)"
        )
    fp = metrics["false_positives"]
    lines.append("")
    lines.append(
        f"FP per 4k detector: {_fmt(fp['fp_per_4k_detector'], '.2f')} +- "
        f"{_fmt(fp['fp_per_4k_detector_err'], '.2f')} ({fp['n_false_positives']} FP over "
        f"{_fmt(fp['area_4k_detectors'], '.2f')} 4k detectors, {fp['n_images']} images)"
    )
    lines.append(
        f"Purity TP/(TP+FP): {_fmt(fp['purity'])} ({fp['n_true_positives']} TP, "
        f"{fp['n_fragments']} fragments not counted)"
    )
    if metrics.get("goals"):
        lines.append("")
        lines.append("Goals:")
        for goal in metrics["goals"]:
            mark = "met" if goal["met"] else "NOT met"
            lines.append(f"  [{mark:>7}] {goal['goal']}: measured {_fmt(goal['measured'])}")
    return "\n".join(lines)
