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

"""Match trail detections to injected truth by segment geometry, see what
the stack's source catalog made of each injected trail, and say what lies
under the false positives.

All positions are 0-based pixel coordinates. A trail is a straight segment
with columns ``x_start, y_start, x_end, y_end``; its direction is undirected,
so angles are compared modulo 180 degrees (0 along +x, 90 along +y, as for
``beta``). Catalogs may be `astropy.table.Table`, dicts of arrays or pandas
data frames.
"""

from __future__ import annotations

__all__ = (
    "FALSE_POSITIVE_CLASSES",
    "MatchResult",
    "classify_false_positives",
    "match_trails",
    "segment_match_metrics",
    "source_pixel_positions",
    "stack_view",
)

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from astropy.table import Table

from ..geometry import segment_distance

_SEGMENT_COLUMNS = ("x_start", "y_start", "x_end", "y_end")
_CLIPPED_COLUMNS = tuple(f"{name}_clipped" for name in _SEGMENT_COLUMNS)
_PIXEL_COLUMNS = (("x", "y"), ("slot_Centroid_x", "slot_Centroid_y"))
_ID_COLUMNS = ("id", "sourceId", "source_id")
_EPS = 1e-9

FALSE_POSITIVE_CLASSES = ("bleed_trail", "bad_column", "cosmic_ray", "satellite", "star", "galaxy", "nothing")
"""Labels of `classify_false_positives`, in the order the rules are tried."""


# --- Catalog access -------------------------------------------------------------------------------


def _colnames(table: Any) -> set[str]:
    """Column names of a Table, a pandas data frame or a dict of arrays."""
    if table is None or isinstance(table, np.ndarray):
        return set()
    if hasattr(table, "colnames"):
        return set(table.colnames)
    if isinstance(table, Mapping):
        return set(table.keys())
    if hasattr(table, "columns"):
        return {str(c) for c in table.columns}
    raise TypeError(f"cannot read columns from a {type(table).__name__}.")


def _nrows(table: Any) -> int:
    """Number of rows of a catalog (0 for `None` or a dict without columns)."""
    if table is None:
        return 0
    if isinstance(table, Mapping):
        names = list(table.keys())
        return len(np.atleast_1d(table[names[0]])) if names else 0
    return len(table)


def _column(table: Any, name: str, dtype: Any = float, fill: Any = np.nan) -> np.ndarray:
    """A column as a plain array, masked entries replaced by ``fill``."""
    values = table[name]
    if isinstance(values, np.ma.MaskedArray):
        return np.ma.filled(values.astype(dtype), fill)
    return np.atleast_1d(np.asarray(values, dtype=dtype))


def _segments(table: Any, *, use_clipped: bool = False) -> np.ndarray:
    """Segment endpoints of a catalog as an ``(n, 4)`` array.

    An ``(n, 4)`` array is passed through. With ``use_clipped``, rows whose
    ``*_clipped`` endpoints are finite use them instead.
    """
    if isinstance(table, np.ndarray):
        seg = np.asarray(table, dtype=float).reshape(-1, 4)
        return seg.copy()
    n = _nrows(table)
    names = _colnames(table)
    missing = [c for c in _SEGMENT_COLUMNS if c not in names]
    if missing:
        if n == 0:
            return np.zeros((0, 4))
        raise ValueError(f"the trail catalog lacks columns {missing}.")
    seg = np.stack([_column(table, c) for c in _SEGMENT_COLUMNS], axis=1).reshape(-1, 4)
    if use_clipped and all(c in names for c in _CLIPPED_COLUMNS):
        clipped = np.stack([_column(table, c) for c in _CLIPPED_COLUMNS], axis=1).reshape(-1, 4)
        ok = np.all(np.isfinite(clipped), axis=1)
        seg[ok] = clipped[ok]
    return seg


def _truth_valid(truth: Any, seg: np.ndarray) -> np.ndarray:
    """Rows that count as truth: drawn (``injection_flag == 0``) with finite endpoints."""
    valid = np.all(np.isfinite(seg), axis=1)
    if "injection_flag" in _colnames(truth) and len(seg):
        valid &= _column(truth, "injection_flag") == 0
    return valid


def _lengths(seg: np.ndarray) -> np.ndarray:
    return np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1])


def _angle_tolerance(
    short_length: np.ndarray, max_angle: float, psf_sigma: float, max_distance: float
) -> np.ndarray:
    """Angle tolerance (degrees) for pairs whose shorter segment is ``short_length`` long.

    ``max(max_angle, atan(2 max_distance / L))``: a segment of length ``L``
    centred on a line and turned by that angle has both ends
    ``max_distance`` from it, the distance a match may lie at; the direction
    of a short or faint segment blurred by the PSF is no better known. Below
    ``L = 3 psf_sigma`` any angle is allowed.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        tol = np.maximum(max_angle, np.degrees(np.arctan2(2.0 * max_distance, short_length)))
    return np.where(short_length < 3.0 * psf_sigma, 90.0, tol)


# --- Segment metrics -----------------------------------------------------------------------------


def _pair_metrics(dseg: np.ndarray, tseg: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of every (detection, truth) pair; see `segment_match_metrics`."""
    dx0, dy0, dx1, dy1 = (dseg[:, k, None] for k in range(4))
    tx0, ty0, tx1, ty1 = (tseg[None, :, k] for k in range(4))
    ddx, ddy = dx1 - dx0, dy1 - dy0
    tdx, tdy = tx1 - tx0, ty1 - ty0
    ld = np.hypot(ddx, ddy)
    lt = np.hypot(tdx, tdy)
    with np.errstate(invalid="ignore"):
        point_t = lt <= _EPS
        point_d = ld <= _EPS

    diff = np.abs(np.degrees(np.arctan2(ddy, ddx)) - np.degrees(np.arctan2(tdy, tdx))) % 180.0
    angle = np.minimum(diff, 180.0 - diff)
    angle = np.where(point_t | point_d, np.nan, angle)

    # Frame of the truth: u along it from its start, h across it.
    safe_lt = np.where(point_t, 1.0, lt)
    ux = np.where(point_t, 1.0, tdx / safe_lt)
    uy = np.where(point_t, 0.0, tdy / safe_lt)
    s0 = (dx0 - tx0) * ux + (dy0 - ty0) * uy
    s1 = (dx1 - tx0) * ux + (dy1 - ty0) * uy
    h0 = (dy0 - ty0) * ux - (dx0 - tx0) * uy
    h1 = (dy1 - ty0) * ux - (dx1 - tx0) * uy
    lo = np.maximum(np.minimum(s0, s1), 0.0)
    hi = np.minimum(np.maximum(s0, s1), lt)
    covered = np.clip(hi - lo, 0.0, None)

    # The part of the detection that projects inside the truth (the whole detection if none does);
    # the offset h is linear along it, so the mean of |h| is exact.
    ds = s1 - s0
    inside = (covered > 0) & (np.abs(ds) > _EPS)
    safe_ds = np.where(inside, ds, 1.0)
    ta = np.where(inside, (lo - s0) / safe_ds, 0.0)
    tb = np.where(inside, (hi - s0) / safe_ds, 1.0)
    ha = h0 + ta * (h1 - h0)
    hb = h0 + tb * (h1 - h0)
    aa, ab = np.abs(ha), np.abs(hb)
    denom = np.where(aa + ab > 0, 2.0 * (aa + ab), 1.0)
    perpendicular = np.where(ha * hb >= 0, 0.5 * (aa + ab), (ha * ha + hb * hb) / denom)

    overlap = np.where(point_t, 0.0, covered / safe_lt)
    detection_overlap = np.where(point_d, 0.0, covered / np.where(point_d, 1.0, ld))

    if np.any(point_t):
        # A point-like truth: covered if it projects inside the detection; distance from its line.
        safe_ld = np.where(point_d, 1.0, ld)
        tau = ((tx0 - dx0) * ddx + (ty0 - dy0) * ddy) / (safe_ld * safe_ld)
        perp_point = np.where(
            point_d, np.hypot(tx0 - dx0, ty0 - dy0), np.abs((tx0 - dx0) * ddy - (ty0 - dy0) * ddx) / safe_ld
        )
        within = ~point_d & (tau >= 0.0) & (tau <= 1.0)
        overlap = np.where(point_t, within.astype(float), overlap)
        detection_overlap = np.where(point_t, 0.0, detection_overlap)
        perpendicular = np.where(point_t, perp_point, perpendicular)

    shape = (dseg.shape[0], tseg.shape[0])
    return {
        "angle_difference": np.broadcast_to(angle, shape).copy(),
        "perpendicular_distance": np.broadcast_to(perpendicular, shape).copy(),
        "overlap": np.broadcast_to(overlap, shape).copy(),
        "detection_overlap": np.broadcast_to(detection_overlap, shape).copy(),
    }


def segment_match_metrics(det: Any, truth: Any, *, use_clipped: bool = True) -> dict[str, np.ndarray]:
    """Geometric agreement of every detection with every truth segment.

    Parameters
    ----------
    det, truth : `astropy.table.Table`, `dict` or `numpy.ndarray`
        Catalogs with ``x_start, y_start, x_end, y_end`` (or ``(n, 4)``
        arrays of those). All truth rows are used, whatever their
        ``injection_flag``.
    use_clipped : `bool`, optional
        Use the truth's ``x_start_clipped`` ... (the part on the detector)
        where present and finite.

    Returns
    -------
    metrics : `dict` [`str`, `numpy.ndarray`]
        ``(n_det, n_truth)`` arrays:

        ``angle_difference``
            Angle between the two (undirected) segments, degrees in
            ``[0, 90]``; NaN if either has zero length.
        ``perpendicular_distance``
            Mean distance from the truth's (infinite) line of the points of
            the part of the detection whose projection onto the truth axis
            falls inside the truth segment: the average of ``|h|`` over that
            sub-segment, ``h`` being the signed perpendicular offset, computed
            exactly (``h`` is linear along it). When no part of the detection
            projects inside the truth, the whole detection is used. For a
            zero-length truth, the distance of the truth point from the
            detection's line.
        ``overlap``
            Length of the detection's projection onto the truth axis that
            lies inside the truth segment, divided by the truth length, in
            ``[0, 1]``. For a zero-length truth, 1 if the point projects
            inside the detection, else 0.
        ``detection_overlap``
            The same length divided by the detection length (at most the
            cosine of the angle difference); 0 for zero-length segments.
    """
    return _pair_metrics(_segments(det), _segments(truth, use_clipped=use_clipped))


# --- One-to-one matching --------------------------------------------------------------------------


@dataclasses.dataclass
class MatchResult:
    """Outcome of `match_trails`.

    Arrays indexed by detection have the detection catalog's length; those
    indexed by truth have the full truth catalog's length, rows that are not
    truth (``injection_flag != 0``) included and never matched.
    """

    det_to_truth: np.ndarray
    """Truth row matched to each detection, -1 if none (`int`)."""

    truth_to_det: np.ndarray
    """Detection row matched to each truth, -1 if none (`int`)."""

    det_status: np.ndarray
    """``"matched"``, ``"fragment"`` (lies along a truth trail but is not
    its one-to-one match: a piece of a split trail or a duplicate) or
    ``"false_positive"`` (`str`)."""

    truth_n_fragments: np.ndarray
    """Detections lying along each truth (matched one included), `int`."""

    angle_difference: np.ndarray
    """Angle difference of the matched pair per truth, degrees; NaN if unmatched."""

    perpendicular_distance: np.ndarray
    """Perpendicular distance of the matched pair per truth, pixels; NaN if unmatched."""

    overlap: np.ndarray
    """Fraction of the truth covered by its match; NaN if unmatched."""

    truth_valid: np.ndarray
    """Rows that count as truth (drawn, finite endpoints), `bool`."""

    det_fragment_of: np.ndarray
    """For fragments, the truth row they overlap most; -1 otherwise (`int`)."""

    @property
    def truth_matched(self) -> np.ndarray:
        """Truth rows with a one-to-one match (`bool`)."""
        return self.truth_to_det >= 0

    @property
    def n_matched(self) -> int:
        """Number of matched pairs (true positives)."""
        return int(np.sum(self.det_status == "matched"))

    @property
    def n_fragments(self) -> int:
        """Number of fragment detections (neither true nor false positives)."""
        return int(np.sum(self.det_status == "fragment"))

    @property
    def n_false_positives(self) -> int:
        """Number of false positive detections."""
        return int(np.sum(self.det_status == "false_positive"))

    @property
    def n_truth(self) -> int:
        """Number of rows that count as truth."""
        return int(np.sum(self.truth_valid))


def match_trails(
    detections: Any,
    truth: Any,
    *,
    max_angle: float = 5.0,
    max_distance: float | None = None,
    psf_sigma: float = 2.0,
    min_overlap: float = 0.3,
    use_clipped: bool = True,
) -> MatchResult:
    """Match detected trails to injected trails one to one by segment geometry.

    Parameters
    ----------
    detections : `astropy.table.Table` or `dict`
        Detected segments (``x_start, y_start, x_end, y_end``), e.g. the
        ``trail_catalog``.
    truth : `astropy.table.Table` or `dict`
        Injected trails; rows with a non-zero ``injection_flag`` or
        non-finite endpoints are ignored.
    max_angle : `float`, optional
        Largest angle difference (degrees) for trails long compared to the
        PSF; see below for short ones.
    max_distance : `float`, optional
        Largest ``perpendicular_distance`` (pixels); by default
        ``max(3, 2 psf_sigma)``.
    psf_sigma : `float`, optional
        Gaussian sigma of the PSF, pixels.
    min_overlap : `float`, optional
        Smallest fraction of the truth that a match must cover.
    use_clipped : `bool`, optional
        Compare with the on-detector part of the truth
        (``x_start_clipped`` ...) where present.

    Returns
    -------
    result : `MatchResult`
        The matches and the status of every detection.

    Notes
    -----
    A pair is a candidate when all of these hold (metrics of
    `segment_match_metrics`):

    - ``angle_difference <= max(max_angle, atan(2 max_distance / L))`` with
      ``L`` the length of the shorter of the two segments: the shorter
      segment, centred on the other and turned by that angle, has its ends
      ``max_distance`` from it, as far as the distance criterion lets a
      match lie (the direction of a segment smeared by the PSF is uncertain
      by about its width over its length). When ``L < 3 psf_sigma`` (or a
      segment has zero length) the angle is ill-defined and any angle passes;
    - ``perpendicular_distance <= max_distance``;
    - ``overlap >= min_overlap`` and ``overlap > 0``.

    Among candidates, `scipy.optimize.linear_sum_assignment` picks the
    assignment with the most pairs and, among those, the largest total
    quality ``(overlap + detection_overlap) / 2 - perpendicular_distance /
    (4 max_distance)``; non-candidate pairs get a prohibitive cost and are
    discarded.

    A detection that passes the angle and distance criteria for some truth
    with any positive overlap but is not matched is a ``"fragment"``: a piece
    of a trail the detector split, or a duplicate, and neither a true nor a
    false positive. ``truth_n_fragments`` counts, per truth, all detections
    that pass these relaxed criteria (its match included), so a trail split
    in two has 2. Everything else is a ``"false_positive"``.
    """
    dseg = _segments(detections)
    tseg = _segments(truth, use_clipped=use_clipped)
    n_det, n_truth = len(dseg), len(tseg)
    valid = _truth_valid(truth, tseg)
    if max_distance is None:
        max_distance = max(3.0, 2.0 * psf_sigma)
    metrics = _pair_metrics(dseg, tseg)
    angle = metrics["angle_difference"]
    perp = metrics["perpendicular_distance"]
    overlap = metrics["overlap"]

    short = np.minimum(_lengths(dseg)[:, None], _lengths(tseg)[None, :])
    tolerance = _angle_tolerance(short, max_angle, psf_sigma, max_distance)
    with np.errstate(invalid="ignore"):
        angle_ok = ~np.isfinite(angle) | (angle <= tolerance)
        geometry_ok = angle_ok & (perp <= max_distance) & valid[None, :] & (overlap > 0)
        candidate = geometry_ok & (overlap >= min_overlap)

    det_to_truth = np.full(n_det, -1, dtype=np.int64)
    truth_to_det = np.full(n_truth, -1, dtype=np.int64)
    rows = np.nonzero(candidate.any(axis=1))[0]
    cols = np.nonzero(candidate.any(axis=0))[0]
    if len(rows) and len(cols):
        from scipy.optimize import linear_sum_assignment

        sub = np.ix_(rows, cols)
        quality = 0.5 * (overlap[sub] + metrics["detection_overlap"][sub]) - 0.25 * perp[sub] / max_distance
        forbidden = 1e6 + len(rows) + len(cols)
        cost = np.where(candidate[sub], -quality, forbidden)
        r, c = linear_sum_assignment(cost)
        keep = candidate[rows[r], cols[c]]
        det_to_truth[rows[r[keep]]] = cols[c[keep]]
        truth_to_det[cols[c[keep]]] = rows[r[keep]]

    matched = det_to_truth >= 0
    along = geometry_ok.any(axis=1) if n_truth else np.zeros(n_det, dtype=bool)
    det_status = np.full(n_det, "false_positive", dtype="U14")
    det_status[along] = "fragment"
    det_status[matched] = "matched"
    det_fragment_of = np.full(n_det, -1, dtype=np.int64)
    fragment = det_status == "fragment"
    if fragment.any():
        scores = np.where(geometry_ok[fragment], overlap[fragment], -1.0)
        det_fragment_of[fragment] = np.argmax(scores, axis=1)

    per_truth = {
        name: np.full(n_truth, np.nan) for name in ("angle_difference", "perpendicular_distance", "overlap")
    }
    hit = truth_to_det >= 0
    for name in per_truth:
        per_truth[name][hit] = metrics[name][truth_to_det[hit], np.nonzero(hit)[0]]
    return MatchResult(
        det_to_truth=det_to_truth,
        truth_to_det=truth_to_det,
        det_status=det_status,
        truth_n_fragments=geometry_ok.sum(axis=0).astype(np.int64),
        angle_difference=per_truth["angle_difference"],
        perpendicular_distance=per_truth["perpendicular_distance"],
        overlap=per_truth["overlap"],
        truth_valid=valid,
        det_fragment_of=det_fragment_of,
    )


# --- The stack's view of the injected trails ------------------------------------------------------


def source_pixel_positions(
    sources: Any, sky_to_pixel: Callable | None = None, coord_units: str = "deg"
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions of the rows of a stack source catalog.

    Parameters
    ----------
    sources : `astropy.table.Table`, `dict` or pandas data frame
        Source catalog: pixel centroids ``x``, ``y`` (DP1/DRP ``source``) or
        ``slot_Centroid_x``, ``slot_Centroid_y`` (old ``src``), and/or sky
        coordinates ``coord_ra``, ``coord_dec``.
    sky_to_pixel : callable, optional
        ``sky_to_pixel(ra, dec) -> (x, y)`` taking degrees, used when the
        catalog has no pixel columns, and for rows whose pixel centroid is
        not finite.
    coord_units : `str`, optional
        Units of ``coord_ra``, ``coord_dec``: ``"deg"`` (``source``) or
        ``"rad"`` (old ``src``).

    Returns
    -------
    x, y : `numpy.ndarray`
        Pixel positions (NaN where unknown).

    Raises
    ------
    ValueError
        If the catalog has no pixel columns and no sky coordinates with a
        ``sky_to_pixel``, or ``coord_units`` is not ``"deg"`` or ``"rad"``.
    """
    if coord_units not in ("deg", "rad"):
        raise ValueError(f"coord_units must be 'deg' or 'rad', not {coord_units!r}.")
    n = _nrows(sources)
    names = _colnames(sources)
    x = y = None
    for xc, yc in _PIXEL_COLUMNS:
        if xc in names and yc in names:
            x, y = _column(sources, xc), _column(sources, yc)
            break
    has_sky = sky_to_pixel is not None and {"coord_ra", "coord_dec"} <= names
    if x is None and not has_sky:
        if n == 0:
            return np.zeros(0), np.zeros(0)
        raise ValueError(
            "the source catalog has no x, y or slot_Centroid_x, slot_Centroid_y columns, "
            "and no coord_ra, coord_dec with a sky_to_pixel function."
        )
    if x is None:
        x, y = np.full(n, np.nan), np.full(n, np.nan)
    todo = ~(np.isfinite(x) & np.isfinite(y))
    if has_sky and todo.any():
        ra, dec = _column(sources, "coord_ra")[todo], _column(sources, "coord_dec")[todo]
        if coord_units == "rad":
            ra, dec = np.degrees(ra), np.degrees(dec)
        sx, sy = sky_to_pixel(ra, dec)
        x, y = x.copy(), y.copy()
        x[todo], y[todo] = np.asarray(sx, dtype=float), np.asarray(sy, dtype=float)
    return x, y


def _usable_sources(sources: Any, n: int) -> np.ndarray:
    """Rows that are real, non-duplicate detections: no sky sources, no deblended parents."""
    usable = np.ones(n, dtype=bool)
    names = _colnames(sources)
    if n == 0:
        return usable
    if "sky_source" in names:
        usable &= ~_column(sources, "sky_source", bool, False)
    if "deblend_nChild" in names:
        usable &= ~(_column(sources, "deblend_nChild", float, 0.0) > 0)
    return usable


def _count_pieces(along: np.ndarray, min_separation: float) -> int:
    """Number of groups of positions along a line separated by at least ``min_separation``."""
    if len(along) == 0:
        return 0
    gaps = np.diff(np.sort(along))
    return 1 + int(np.sum(gaps >= min_separation))


def stack_view(
    truth: Any,
    sources: Any,
    *,
    psf_sigma: float,
    band_width: float | None = None,
    min_separation: float | None = None,
    end_margin: float | None = None,
    reference_sources: Any = None,
    match_radius: float = 2.0,
    exclude: np.ndarray | None = None,
    sky_to_pixel: Callable | None = None,
    coord_units: str = "deg",
    use_clipped: bool = True,
) -> Table:
    """Say how the stack's source detection saw each injected trail.

    Parameters
    ----------
    truth : `astropy.table.Table` or `dict`
        Injected trails (``injection_id``, ``x_start`` ...); rows with a
        non-zero ``injection_flag`` or non-finite endpoints are left out.
    sources : `astropy.table.Table`, `dict` or pandas data frame
        Stack sources of the injected image; positions as in
        `source_pixel_positions`. Sky sources (``sky_source``) and
        deblended parents (``deblend_nChild > 0``) are ignored where those
        columns exist.
    psf_sigma : `float`
        Gaussian sigma of the PSF, pixels.
    band_width : `float`, optional
        Half-width of the band around a trail in which a source centroid is
        along it; by default ``1.5 psf_sigma`` (a band about 1.3 PSF FWHM
        wide, which holds the centroids of pieces of a faint trail).
    min_separation : `float`, optional
        Sources along a trail closer than this to each other (measured along
        the trail) count as one piece, so duplicates of one piece are not
        counted twice; by default ``psf_sigma``. Pieces of a broken trail are
        at least about a PSF long, so their centroids are further apart.
    end_margin : `float`, optional
        How far past each end of the trail the band reaches; by default
        ``psf_sigma``. Sources further beyond the ends do not count (the
        band is a capsule around the extended segment: `segment_distance`).
    reference_sources : catalog, optional
        Sources of the same image before injection. A source along a trail
        with a reference source within ``match_radius`` existed before the
        trail and is not counted as the trail's (it is reported in
        ``n_excluded``).
    match_radius : `float`, optional
        Radius, pixels, of the match to ``reference_sources``.
    exclude : `numpy.ndarray` [`bool`], optional
        Source rows to ignore outright, e.g. known pre-existing sources.
    sky_to_pixel, coord_units
        Passed to `source_pixel_positions` for ``sources`` and
        ``reference_sources``.
    use_clipped : `bool`, optional
        Use the on-detector part of the truth where present.

    Returns
    -------
    view : `astropy.table.Table`
        One row per truth trail: ``injection_id``, ``n_sources`` (number of
        pieces, see ``min_separation``), ``stack_status`` (``"missed"`` for
        0, ``"found"`` for 1, ``"broken"`` for more: the stack broke the
        trail into ``n_sources`` pieces), ``n_along`` (source rows along the
        trail before merging duplicates), ``n_excluded`` (pre-existing
        sources along it, not counted) and ``source_ids`` (object column of
        the ``id``/``sourceId``/``source_id`` values, or row indexes, of the
        sources counted; not writable to FITS, remove it first).
        ``trail_length``, ``nu_det`` and ``nu_opt`` are copied from the
        truth where present.
    """
    if band_width is None:
        band_width = 1.5 * psf_sigma
    if min_separation is None:
        min_separation = psf_sigma
    if end_margin is None:
        end_margin = psf_sigma
    tseg = _segments(truth, use_clipped=use_clipped)
    valid = _truth_valid(truth, tseg)
    truth_names = _colnames(truth)
    keep = np.nonzero(valid)[0]
    if "injection_id" in truth_names and len(tseg):
        ids = _column(truth, "injection_id", np.int64, -1)[keep]
    else:
        ids = keep.astype(np.int64)

    n_src = _nrows(sources)
    sx, sy = source_pixel_positions(sources, sky_to_pixel, coord_units) if n_src else (np.zeros(0),) * 2
    usable = _usable_sources(sources, n_src) & np.isfinite(sx) & np.isfinite(sy)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        if exclude.shape != (n_src,):
            raise ValueError(f"exclude has shape {exclude.shape}, expected ({n_src},).")
        usable &= ~exclude
    pre_existing = np.zeros(n_src, dtype=bool)
    if reference_sources is not None and _nrows(reference_sources) and usable.any():
        from scipy.spatial import cKDTree

        rx, ry = source_pixel_positions(reference_sources, sky_to_pixel, coord_units)
        good = np.isfinite(rx) & np.isfinite(ry)
        if good.any():
            tree = cKDTree(np.stack([rx[good], ry[good]], axis=1))
            points = np.stack([sx[usable], sy[usable]], axis=1)
            dist, _ = tree.query(points, distance_upper_bound=match_radius)
            pre_existing[np.nonzero(usable)[0]] = dist <= match_radius
    source_names = _colnames(sources)
    id_column = next((c for c in _ID_COLUMNS if c in source_names), None)
    source_id = _column(sources, id_column, np.int64, -1) if id_column and n_src else np.arange(n_src)

    n_pieces = np.zeros(len(keep), dtype=np.int64)
    n_along = np.zeros(len(keep), dtype=np.int64)
    n_excluded = np.zeros(len(keep), dtype=np.int64)
    counted = np.empty(len(keep), dtype=object)
    reach = band_width + end_margin
    for i, k in enumerate(keep):
        x0, y0, x1, y1 = tseg[k]
        length = math.hypot(x1 - x0, y1 - y0)
        ux, uy = ((x1 - x0) / length, (y1 - y0) / length) if length > _EPS else (0.0, 0.0)
        ex0, ey0 = x0 - end_margin * ux, y0 - end_margin * uy
        ex1, ey1 = x1 + end_margin * ux, y1 + end_margin * uy
        box = (
            usable
            & (sx >= min(x0, x1) - reach)
            & (sx <= max(x0, x1) + reach)
            & (sy >= min(y0, y1) - reach)
            & (sy <= max(y0, y1) + reach)
        )
        cand = np.nonzero(box)[0]
        if len(cand):
            near = segment_distance(sx[cand], sy[cand], ex0, ey0, ex1, ey1) <= band_width
            cand = cand[near]
        mine = cand[~pre_existing[cand]]
        n_excluded[i] = len(cand) - len(mine)
        n_along[i] = len(mine)
        n_pieces[i] = _count_pieces((sx[mine] - x0) * ux + (sy[mine] - y0) * uy, min_separation)
        counted[i] = np.asarray(source_id[mine], dtype=np.int64)

    status = np.where(n_pieces == 0, "missed", np.where(n_pieces == 1, "found", "broken")).astype("U6")
    view = Table()
    view["injection_id"] = np.asarray(ids, dtype=np.int64)
    view["n_sources"] = n_pieces
    view["stack_status"] = status
    view["n_along"] = n_along
    view["n_excluded"] = n_excluded
    view["source_ids"] = counted
    for name in ("trail_length", "nu_det", "nu_opt"):
        if name in truth_names:
            view[name] = _column(truth, name)[keep] if len(tseg) else np.zeros(0)
    view.meta["band_width"] = float(band_width)
    view.meta["min_separation"] = float(min_separation)
    view.meta["end_margin"] = float(end_margin)
    return view


# --- What lies under the false positives ----------------------------------------------------------


def _sample_segments(seg: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points every ``step`` pixels (at most) along each segment, ends included.

    Returns the points' x, y and the index of the segment they belong to.
    """
    finite = np.all(np.isfinite(seg), axis=1)
    length = np.where(finite, _lengths(np.where(finite[:, None], seg, 0.0)), 0.0)
    counts = np.ceil(length / step).astype(np.int64) + 1
    owner = np.repeat(np.arange(len(seg)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    t = (np.arange(len(owner)) - first) / np.maximum(counts[owner] - 1, 1)
    x = seg[owner, 0] + t * (seg[owner, 2] - seg[owner, 0])
    y = seg[owner, 1] + t * (seg[owner, 3] - seg[owner, 1])
    return x, y, owner


def _mask_hits(
    mask: Any, x: np.ndarray, y: np.ndarray, owner: np.ndarray, n: int, radius: int, shape: tuple | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per segment, sample points with a flagged pixel within ``radius`` (square), and points on the image.

    ``mask`` is a boolean image or a sequence of flagged column indexes
    (whole columns; the image size is then ``shape`` if known).
    """
    ix = np.rint(np.where(np.isfinite(x), x, -1e9)).astype(np.int64)
    iy = np.rint(np.where(np.isfinite(y), y, -1e9)).astype(np.int64)
    hit = np.zeros(len(x), dtype=bool)
    image = np.asarray(mask)
    if image.ndim == 2:
        height, width = image.shape
        image = image.astype(bool, copy=False)
        on = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
        for oy in range(-radius, radius + 1):
            for ox in range(-radius, radius + 1):
                jx, jy = ix + ox, iy + oy
                ok = on & (jx >= 0) & (jx < width) & (jy >= 0) & (jy < height)
                hit[ok] |= image[jy[ok], jx[ok]]
    else:
        columns = np.asarray(image, dtype=np.int64).ravel()
        on = np.isfinite(x) & np.isfinite(y)
        if shape is not None:
            on &= (ix >= 0) & (ix < shape[1]) & (iy >= 0) & (iy < shape[0])
        for ox in range(-radius, radius + 1):
            hit |= on & np.isin(ix + ox, columns)
    n_hit = np.bincount(owner, weights=hit, minlength=n)
    n_on = np.bincount(owner, weights=on, minlength=n)
    return n_hit, n_on


def _near_points(seg: np.ndarray, px: np.ndarray, py: np.ndarray, radius: np.ndarray | float) -> np.ndarray:
    """Whether each segment passes within ``radius`` (scalar or per point) of any point."""
    radius = np.broadcast_to(np.asarray(radius, dtype=float), px.shape)
    near = np.zeros(len(seg), dtype=bool)
    if len(px) == 0:
        return near
    reach = float(np.nanmax(radius)) if np.isfinite(radius).any() else 0.0
    for i, (x0, y0, x1, y1) in enumerate(seg):
        if not np.all(np.isfinite((x0, y0, x1, y1))):
            continue
        box = (
            (px >= min(x0, x1) - reach)
            & (px <= max(x0, x1) + reach)
            & (py >= min(y0, y1) - reach)
            & (py <= max(y0, y1) + reach)
        )
        if box.any():
            near[i] = bool(np.any(segment_distance(px[box], py[box], x0, y0, x1, y1) <= radius[box]))
    return near


def _point_table(table: Any) -> tuple[np.ndarray, np.ndarray]:
    if table is None or _nrows(table) == 0:
        return np.zeros(0), np.zeros(0)
    return _column(table, "x"), _column(table, "y")


def _mask_shape(truth_scene: Mapping) -> tuple | None:
    for key in ("cosmic_rays", "saturated", "bad_columns"):
        value = truth_scene.get(key)
        if value is not None and np.ndim(value) == 2:
            return np.shape(value)
    return truth_scene.get("shape")


def classify_false_positives(
    detections: Any,
    fp_index: Any,
    truth_scene: Mapping[str, Any],
    *,
    psf_sigma: float = 2.0,
    step: float = 0.5,
    column_angle: float = 10.0,
    mask_radius: int = 1,
    bleed_distance: float | None = None,
    bad_column_fraction: float = 0.5,
    max_angle: float = 5.0,
    satellite_distance: float | None = None,
    satellite_overlap: float = 0.5,
    star_distance: float | None = None,
    galaxy_margin: float = 3.0,
    galaxy_size_column: str = "half_light_radius",
) -> np.ndarray:
    """Say what lies under unmatched detections in the simulation truth.

    Parameters
    ----------
    detections : `astropy.table.Table` or `dict`
        Detected segments (``x_start, y_start, x_end, y_end``).
    fp_index : array-like of `int` or `bool`
        Rows of ``detections`` to classify (e.g.
        ``np.nonzero(result.det_status == "false_positive")[0]``), or a
        boolean mask over them.
    truth_scene : `dict`
        What the simulation put in the image; every entry is optional:

        ``stars``
            Table with ``x``, ``y`` (and ``flux`` or ``mag``); optional
            ``saturated`` (`bool`) and ``radius`` (pixels, e.g. the reach of
            its diffraction spikes).
        ``galaxies``
            Table with ``x``, ``y`` and a size column
            (``galaxy_size_column``, pixels; a column with unit arcsec is
            converted with ``truth_scene["pixel_scale"]`` in arcsec/pixel).
        ``cosmic_rays``, ``saturated``
            Boolean images.
        ``bad_columns``
            Boolean image, or a sequence of bad column indexes.
        ``satellites``
            Table of non-injected trails with ``x_start`` ... ``y_end``.
        ``shape``
            ``(height, width)``, used only with a list of ``bad_columns``.
    psf_sigma : `float`, optional
        Gaussian sigma of the PSF, pixels.
    step : `float`, optional
        Spacing of the points sampled along each segment for the pixel
        lookups, pixels.
    column_angle : `float`, optional
        A segment is along the columns when its angle is within this of 90
        degrees.
    mask_radius : `int`, optional
        A sample point hits a mask when a flagged pixel lies within this many
        pixels (square neighbourhood), allowing for the detection's
        positional error.
    bleed_distance : `float`, optional
        Distance from a saturated star's centre within which a column-aligned
        segment is its bleed trail; by default ``max(5, 2 psf_sigma)``.
    bad_column_fraction : `float`, optional
        Fraction of the sample points (on the image) that must hit bad
        columns.
    max_angle : `float`, optional
        Angle tolerance for satellites, relaxed for short segments as in
        `match_trails`.
    satellite_distance : `float`, optional
        Largest perpendicular distance from a satellite's line; by default
        ``max(5, 3 psf_sigma)`` (satellite trails are wide).
    satellite_overlap : `float`, optional
        Smallest fraction of the detection lying along the satellite.
    star_distance : `float`, optional
        A star centre this close to the segment makes it a ``"star"``
        detection (diffraction spikes and halo included); by default
        ``max(3, 2 psf_sigma)``.
    galaxy_margin : `float`, optional
        A galaxy centre within its size plus this margin of the segment
        makes it a ``"galaxy"`` detection.
    galaxy_size_column : `str`, optional
        Column of ``galaxies`` holding the size.

    Returns
    -------
    labels : `numpy.ndarray` [`str`]
        One of `FALSE_POSITIVE_CLASSES` per entry of ``fp_index``.

    Notes
    -----
    Rules, first match wins:

    1. ``"bleed_trail"``: along the columns and hitting saturated pixels,
       or passing within ``bleed_distance`` of a saturated star;
    2. ``"bad_column"``: along the columns with more than
       ``bad_column_fraction`` of its points on bad columns;
    3. ``"cosmic_ray"``: any point on a cosmic-ray pixel;
    4. ``"satellite"``: lies along a satellite trail (angle and distance as
       above, ``detection_overlap >= satellite_overlap``);
    5. ``"star"``: a star centre within ``star_distance`` (or the star's
       ``radius``) of the segment;
    6. ``"galaxy"``: a galaxy centre within its size plus ``galaxy_margin``;
    7. ``"nothing"`` otherwise: a noise fluctuation, or something not in
       the truth.
    """
    seg_all = _segments(detections)
    index = np.asarray(fp_index)
    if index.dtype == bool:
        if index.shape != (len(seg_all),):
            raise ValueError("a boolean fp_index must have one entry per detection.")
        index = np.nonzero(index)[0]
    index = index.astype(np.int64).ravel()
    seg = seg_all[index]
    n = len(seg)
    labels = np.full(n, "nothing", dtype="U11")
    if n == 0:
        return labels
    if bleed_distance is None:
        bleed_distance = max(5.0, 2.0 * psf_sigma)
    if satellite_distance is None:
        satellite_distance = max(5.0, 3.0 * psf_sigma)
    if star_distance is None:
        star_distance = max(3.0, 2.0 * psf_sigma)

    angle = np.degrees(np.arctan2(seg[:, 3] - seg[:, 1], seg[:, 2] - seg[:, 0])) % 180.0
    length = _lengths(seg)
    with np.errstate(invalid="ignore"):
        along_columns = (np.abs(angle - 90.0) < column_angle) & (length > 0)
    px, py, owner = _sample_segments(seg, step)
    shape = _mask_shape(truth_scene)
    undecided = np.ones(n, dtype=bool)

    def assign(label: str, condition: np.ndarray) -> None:
        chosen = undecided & condition
        labels[chosen] = label
        undecided[chosen] = False

    stars = truth_scene.get("stars")
    star_x, star_y = _point_table(stars)
    saturated = truth_scene.get("saturated")

    # 1. Bleed trails.
    bleed = np.zeros(n, dtype=bool)
    if saturated is not None:
        n_hit, _ = _mask_hits(saturated, px, py, owner, n, mask_radius, shape)
        bleed |= n_hit > 0
    if len(star_x):
        if "saturated" in _colnames(stars):
            star_sat = _column(stars, "saturated", bool, False)
        elif saturated is not None and np.ndim(saturated) == 2:
            sat_img = np.asarray(saturated, dtype=bool)
            ix = np.rint(np.where(np.isfinite(star_x), star_x, -1)).astype(np.int64)
            iy = np.rint(np.where(np.isfinite(star_y), star_y, -1)).astype(np.int64)
            on = (ix >= 0) & (ix < sat_img.shape[1]) & (iy >= 0) & (iy < sat_img.shape[0])
            star_sat = np.zeros(len(star_x), dtype=bool)
            star_sat[on] = sat_img[iy[on], ix[on]]
        else:
            star_sat = np.zeros(len(star_x), dtype=bool)
        if star_sat.any():
            bleed |= _near_points(seg, star_x[star_sat], star_y[star_sat], bleed_distance)
    assign("bleed_trail", along_columns & bleed)

    # 2. Bad columns.
    bad_columns = truth_scene.get("bad_columns")
    if bad_columns is not None and np.size(bad_columns) and undecided.any():
        n_hit, n_on = _mask_hits(bad_columns, px, py, owner, n, mask_radius, shape)
        fraction = np.divide(n_hit, n_on, out=np.zeros(n), where=n_on > 0)
        assign("bad_column", along_columns & (fraction > bad_column_fraction))

    # 3. Cosmic rays.
    cosmic_rays = truth_scene.get("cosmic_rays")
    if cosmic_rays is not None and undecided.any():
        n_hit, _ = _mask_hits(cosmic_rays, px, py, owner, n, mask_radius, shape)
        assign("cosmic_ray", n_hit > 0)

    # 4. Satellites.
    satellites = truth_scene.get("satellites")
    if satellites is not None and _nrows(satellites) and undecided.any():
        sseg = _segments(satellites)
        metrics = _pair_metrics(seg, sseg)
        short = np.minimum(length[:, None], _lengths(sseg)[None, :])
        tolerance = _angle_tolerance(short, max_angle, psf_sigma, psf_sigma)
        with np.errstate(invalid="ignore"):
            on_satellite = (
                (~np.isfinite(metrics["angle_difference"]) | (metrics["angle_difference"] <= tolerance))
                & (metrics["perpendicular_distance"] <= satellite_distance)
                & (metrics["detection_overlap"] >= satellite_overlap)
            )
        assign("satellite", on_satellite.any(axis=1))

    # 5. Stars (diffraction spikes and halos included).
    if len(star_x) and undecided.any():
        radius = np.full(len(star_x), star_distance)
        if "radius" in _colnames(stars):
            radius = np.fmax(radius, _column(stars, "radius"))
        assign("star", _near_points(seg, star_x, star_y, radius))

    # 6. Galaxies.
    galaxies = truth_scene.get("galaxies")
    gal_x, gal_y = _point_table(galaxies)
    if len(gal_x) and undecided.any():
        size = np.zeros(len(gal_x))
        if galaxy_size_column in _colnames(galaxies):
            size = _column(galaxies, galaxy_size_column)
            unit = getattr(galaxies[galaxy_size_column], "unit", None)
            if unit is not None and str(unit) == "arcsec":
                scale = truth_scene.get("pixel_scale")
                if scale is None:
                    raise ValueError(
                        f"galaxy {galaxy_size_column} is in arcsec; give truth_scene['pixel_scale']."
                    )
                size = size / float(scale)
            size = np.where(np.isfinite(size), size, 0.0)
        assign("galaxy", _near_points(seg, gal_x, gal_y, size + galaxy_margin))

    return labels
