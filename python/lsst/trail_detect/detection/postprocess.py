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

"""From a trail probability map to a catalog of fitted trail segments.

The steps, each a plain function over numpy arrays:

1. `find_components`: hysteresis threshold of the probability map
   (components of ``p > low`` that hold at least one pixel above the
   operating threshold) and connected-component labelling;
2. `component_lines`: a probability-weighted principal-axis line per
   component;
3. `merge_collinear`: fragments of one trail (split by noise, a masked
   column or a star) joined when they are collinear and close along the
   line;
4. `fit_trail`: least-squares fit of a PSF-convolved segment model (free
   endpoints, flux, width and local background) to the pixels around each
   line, with a robust loss so stars in the band do not pull it;
5. `trail_photometry`: matched-filter flux and its error along the fitted
   segment with the PSF width, and the SNR;
6. `classify_candidate`: rejection of what only looks like a trail
   (cosmic rays narrower than the PSF, extended galaxy edges, bleed trails
   along columns from saturated stars, diffraction spikes pointing at a
   saturated star, too short, too faint).
"""

from __future__ import annotations

__all__ = (
    "PostprocessConfig",
    "TrailCandidate",
    "classify_candidate",
    "component_lines",
    "find_components",
    "fit_trail",
    "merge_collinear",
    "same_trail",
    "saturated_blobs",
    "segment_band",
    "trail_model",
    "trail_model_jacobian",
    "trail_photometry",
)

import dataclasses
import math

import numpy as np
from scipy import ndimage, special

from ..geometry import segment_distance

_SQRT2 = math.sqrt(2.0)


@dataclasses.dataclass
class PostprocessConfig:
    """Parameters of the post-processing (lengths in pixels unless noted).

    Attributes
    ----------
    threshold : `float`
        Operating probability threshold (a component must reach it).
    low_threshold_ratio : `float`
        Hysteresis: pixels above ``threshold * low_threshold_ratio`` join a
        component that reaches ``threshold``.
    min_pixels : `int`
        Smallest component kept.
    merge_max_angle : `float`
        Degrees; fragments are merged when their directions differ by less
        (relaxed for short fragments, whose angle is uncertain).
    merge_max_offset_sigma : `float`
        Perpendicular offset allowed between fragments, in PSF sigmas.
    merge_max_gap : `float`
        Largest gap along the line between merged fragments.
    merge_max_masked_gap : `float`
        Largest gap when the gap is mostly bad (masked) pixels.
    min_length_fwhm : `float`
        Shortest trail kept, in PSF FWHM.
    min_snr : `float`
        Lowest matched-filter SNR kept.
    cosmic_ray_width_ratio : `float`
        Fitted width below this fraction of the PSF width: cosmic ray.
    extended_width_ratio : `float`
        Fitted width above this multiple of the PSF width: extended object.
    bleed_max_angle : `float`
        Degrees from the column direction within which a segment touching
        saturated pixels is a bleed trail.
    spike_radius : `float`
        A segment whose line passes within this distance (plus the star's
        saturated radius) of a saturated star and whose near end is within
        ``spike_length`` of it is a diffraction spike.
    spike_length : `float`
        See ``spike_radius``.
    min_saturated_blob : `int`
        Saturated components at least this large mark bright stars.
    edge_margin_sigma : `float`
        Endpoints this many PSF sigmas from the image edge or from no-data
        pixels are flagged ``flag_edge``.
    fit_margin_sigma : `float`
        Half-width of the fit band, in PSF sigmas (plus the fitted width).
    max_fit_shift : `float`
        A fit that moves an endpoint further than this (in pixels, plus a
        quarter of the length) is distrusted and the initial line kept.
    """

    threshold: float = 0.5
    low_threshold_ratio: float = 0.6
    min_pixels: int = 6
    merge_max_angle: float = 5.0
    merge_max_offset_sigma: float = 2.0
    merge_max_gap: float = 40.0
    merge_max_masked_gap: float = 200.0
    min_length_fwhm: float = 1.0
    min_snr: float = 3.0
    cosmic_ray_width_ratio: float = 0.45
    extended_width_ratio: float = 2.5
    bleed_max_angle: float = 3.0
    spike_radius: float = 4.0
    spike_length: float = 300.0
    min_saturated_blob: int = 5
    edge_margin_sigma: float = 2.0
    fit_margin_sigma: float = 4.0
    max_fit_shift: float = 6.0


@dataclasses.dataclass
class TrailCandidate:
    """One candidate trail as it moves through the post-processing.

    Coordinates are 0-based pixels (``x`` column, ``y`` row).
    """

    x_start: float
    y_start: float
    x_end: float
    y_end: float
    pixels_y: np.ndarray
    pixels_x: np.ndarray
    weights: np.ndarray
    max_probability: float
    n_fragments: int = 1
    width_sigma: float = float("nan")
    fit_flux: float = float("nan")
    fit_ok: bool = False
    flux: float = float("nan")
    flux_err: float = float("nan")
    snr: float = float("nan")
    score_raw: float = float("nan")
    rejected: str = ""
    origin: str = "cnn"
    line_snr: float = float("nan")
    line_snr_trim: float = float("nan")
    peak_snr: float = float("nan")
    negative_snr: float = float("nan")
    width_ratio: float = float("nan")
    template_snr: float = float("nan")
    score: float = float("nan")

    @property
    def length(self) -> float:
        return math.hypot(self.x_end - self.x_start, self.y_end - self.y_start)

    @property
    def beta(self) -> float:
        """Angle in degrees from +x towards +y, in [0, 180)."""
        return math.degrees(math.atan2(self.y_end - self.y_start, self.x_end - self.x_start)) % 180.0

    @property
    def centre(self) -> tuple[float, float]:
        return 0.5 * (self.x_start + self.x_end), 0.5 * (self.y_start + self.y_end)


def find_components(
    probability: np.ndarray, threshold: float, low_threshold: float, min_pixels: int = 1
) -> tuple[np.ndarray, int]:
    """Hysteresis-threshold a probability map and label its components.

    Parameters
    ----------
    probability : `numpy.ndarray`
        Per-pixel trail probability.
    threshold : `float`
        A component must have a pixel at or above this.
    low_threshold : `float`
        Pixels at or above this form the components (8-connected).
    min_pixels : `int`, optional
        Smaller components are dropped.

    Returns
    -------
    labels : `numpy.ndarray`
        int32 labels, 0 for background, 1..n for the kept components.
    n : `int`
        Number of components.
    """
    if not 0 < low_threshold <= threshold:
        raise ValueError(f"need 0 < low_threshold ({low_threshold}) <= threshold ({threshold}).")
    low = probability >= low_threshold
    labels, n = ndimage.label(low, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return labels.astype(np.int32), 0
    index = np.arange(1, n + 1)
    peaks = ndimage.maximum(probability, labels, index)
    sizes = ndimage.sum_labels(low, labels, index)
    keep = (np.asarray(peaks) >= threshold) & (np.asarray(sizes) >= min_pixels)
    lookup = np.zeros(n + 1, dtype=np.int32)
    lookup[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lookup[labels], int(keep.sum())


def _principal_line(ys: np.ndarray, xs: np.ndarray, weights: np.ndarray, trim: float) -> tuple:
    """Weighted principal axis of pixel positions; endpoints trimmed by ``trim``."""
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    cx, cy = float(np.sum(w * xs)), float(np.sum(w * ys))
    dx, dy = xs - cx, ys - cy
    cxx, cyy, cxy = np.sum(w * dx * dx), np.sum(w * dy * dy), np.sum(w * dx * dy)
    angle = 0.5 * math.atan2(2 * cxy, cxx - cyy)
    ux, uy = math.cos(angle), math.sin(angle)
    s = dx * ux + dy * uy
    lo, hi = float(s.min()), float(s.max())
    if hi - lo > 2 * trim:
        lo, hi = lo + trim, hi - trim
    else:
        mid = 0.5 * (lo + hi)
        lo = hi = mid
    return cx + lo * ux, cy + lo * uy, cx + hi * ux, cy + hi * uy


def component_lines(
    labels: np.ndarray, n: int, probability: np.ndarray, psf_sigma: float
) -> list[TrailCandidate]:
    """Fit a principal-axis line to each labelled component.

    The probability mask extends about one PSF sigma past the ends of a
    trail, so the endpoints are pulled in by ``psf_sigma``.
    """
    candidates = []
    if n == 0:
        return candidates
    objects = ndimage.find_objects(labels)
    for k, slc in enumerate(objects, start=1):
        if slc is None:
            continue
        sub = labels[slc] == k
        ys, xs = np.nonzero(sub)
        ys = ys + slc[0].start
        xs = xs + slc[1].start
        weights = probability[ys, xs].astype(float)
        x0, y0, x1, y1 = _principal_line(ys.astype(float), xs.astype(float), weights, psf_sigma)
        candidates.append(
            TrailCandidate(x0, y0, x1, y1, ys, xs, weights, max_probability=float(weights.max()))
        )
    return candidates


def _angle_difference(a: float, b: float) -> float:
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


def _segment_frame(x, y, x0: float, y0: float, x1: float, y1: float):
    """Length, unit direction and the along (``s``) and across (``d``) coordinates of points.

    ``s`` runs from ``(x0, y0)`` towards ``(x1, y1)``; ``d`` is positive to the left of that
    direction. A zero-length segment gets the direction +x.
    """
    length = math.hypot(x1 - x0, y1 - y0)
    ux, uy = ((x1 - x0) / length, (y1 - y0) / length) if length > 0 else (1.0, 0.0)
    dx, dy = x - x0, y - y0
    return length, ux, uy, dx * ux + dy * uy, -dx * uy + dy * ux


def _line_offsets(c: TrailCandidate, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Along-line and perpendicular coordinates of points relative to ``c``."""
    _, _, _, s, d = _segment_frame(px, py, c.x_start, c.y_start, c.x_end, c.y_end)
    return s, d


def _gap_is_masked(a: TrailCandidate, b: TrailCandidate, bad: np.ndarray | None) -> bool:
    """Whether the straight gap between the nearest ends of two fragments is mostly bad pixels."""
    if bad is None:
        return False
    ends_a = [(a.x_start, a.y_start), (a.x_end, a.y_end)]
    ends_b = [(b.x_start, b.y_start), (b.x_end, b.y_end)]
    (xa, ya), (xb, yb) = min(
        ((p, q) for p in ends_a for q in ends_b),
        key=lambda pq: math.hypot(pq[0][0] - pq[1][0], pq[0][1] - pq[1][1]),
    )
    n = max(int(math.hypot(xb - xa, yb - ya)), 2)
    t = np.linspace(0.0, 1.0, n)
    xs = np.clip(np.rint(xa + t * (xb - xa)).astype(int), 0, bad.shape[1] - 1)
    ys = np.clip(np.rint(ya + t * (yb - ya)).astype(int), 0, bad.shape[0] - 1)
    # Dilate across the line by a pixel so a 1-px masked column is seen.
    near = (
        bad[ys, xs]
        | bad[ys, np.clip(xs + 1, 0, bad.shape[1] - 1)]
        | bad[ys, np.clip(xs - 1, 0, bad.shape[1] - 1)]
    )
    return float(near.mean()) >= 0.3


def same_trail(a: TrailCandidate, b: TrailCandidate, psf_sigma: float, max_offset_sigma: float = 3.0) -> bool:
    """Whether two segments are detections of one trail.

    Their directions agree (within 10 degrees, relaxed to ``atan(3 sigma /
    length)`` of the shorter), both ends of the shorter lie within
    ``max_offset_sigma`` PSF sigmas (plus a pixel) of the longer's line, and
    they overlap along it.
    """
    if a.length < b.length:
        a, b = b, a
    short = max(b.length, 1.0)
    tolerance = max(10.0, math.degrees(math.atan(3.0 * psf_sigma / short)))
    if _angle_difference(a.beta, b.beta) > tolerance:
        return False
    s, perp = _line_offsets(a, np.array([b.x_start, b.x_end]), np.array([b.y_start, b.y_end]))
    if np.max(np.abs(perp)) > max_offset_sigma * psf_sigma + 1.0:
        return False
    return float(s.max()) >= 0.0 and float(s.min()) <= a.length


def merge_collinear(
    candidates: list[TrailCandidate],
    psf_sigma: float,
    config: PostprocessConfig,
    bad: np.ndarray | None = None,
) -> list[TrailCandidate]:
    """Merge fragments of one trail into single candidates.

    Two fragments are merged when (i) their directions agree within
    ``merge_max_angle`` (relaxed to ``atan(2 sigma / length)`` of the
    shorter one), (ii) every end of each lies within
    ``merge_max_offset_sigma`` PSF sigmas (plus a pixel) of the other's
    line, and (iii) the gap between them along the line is below
    ``merge_max_gap``, or ``merge_max_masked_gap`` if the gap is mostly
    masked pixels. The merged line is refitted to the union of the pixels;
    merging repeats until nothing changes.
    """
    items = list(candidates)
    max_offset = config.merge_max_offset_sigma * psf_sigma + 1.0
    changed = True
    while changed and len(items) > 1:
        changed = False
        order = sorted(range(len(items)), key=lambda k: -items[k].length)
        for i_pos, i in enumerate(order):
            a = items[i]
            for j in order[i_pos + 1 :]:
                b = items[j]
                short = max(min(a.length, b.length), 1.0)
                tolerance = max(config.merge_max_angle, math.degrees(math.atan(2.0 * psf_sigma / short)))
                if _angle_difference(a.beta, b.beta) > tolerance:
                    continue
                # Perpendicular offsets of b's ends from a's line and vice versa.
                _, perp_b = _line_offsets(a, np.array([b.x_start, b.x_end]), np.array([b.y_start, b.y_end]))
                _, perp_a = _line_offsets(b, np.array([a.x_start, a.x_end]), np.array([a.y_start, a.y_end]))
                if np.max(np.abs(perp_b)) > max_offset and np.max(np.abs(perp_a)) > max_offset:
                    continue
                if min(np.max(np.abs(perp_b)), np.max(np.abs(perp_a))) > max_offset:
                    continue
                s_b, _ = _line_offsets(a, np.array([b.x_start, b.x_end]), np.array([b.y_start, b.y_end]))
                lo, hi = float(s_b.min()), float(s_b.max())
                gap = max(lo - a.length, -hi, 0.0)
                if gap > config.merge_max_gap and not (
                    gap <= config.merge_max_masked_gap and _gap_is_masked(a, b, bad)
                ):
                    continue
                items[i] = _merge_pair(a, b, psf_sigma)
                del items[j]
                changed = True
                break
            if changed:
                break
    return items


def _merge_pair(a: TrailCandidate, b: TrailCandidate, psf_sigma: float) -> TrailCandidate:
    ys = np.concatenate([a.pixels_y, b.pixels_y])
    xs = np.concatenate([a.pixels_x, b.pixels_x])
    weights = np.concatenate([a.weights, b.weights])
    x0, y0, x1, y1 = _principal_line(ys.astype(float), xs.astype(float), weights, psf_sigma)
    return TrailCandidate(
        x0,
        y0,
        x1,
        y1,
        ys,
        xs,
        weights,
        max_probability=max(a.max_probability, b.max_probability),
        n_fragments=a.n_fragments + b.n_fragments,
    )


def trail_model(
    x: np.ndarray,
    y: np.ndarray,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    sigma: float,
) -> np.ndarray:
    """Unit-flux image of a segment convolved with a round Gaussian PSF.

    The flux is spread uniformly along the segment from ``(x0, y0)`` to
    ``(x1, y1)`` (a moving point source), and the profile is evaluated at
    pixel centres: ``(1/L) g(d) [erf((L - s)/(sqrt2 sigma)) + erf(s/(sqrt2
    sigma))] / 2`` with ``s`` along and ``d`` across the segment and ``g``
    the 1-D Gaussian. A zero-length segment is the PSF itself.
    """
    sigma = max(float(sigma), 1e-3)
    length, _, _, s, d = _segment_frame(x, y, x0, y0, x1, y1)
    if length < 1e-6:
        r2 = s * s + d * d
        return np.exp(-0.5 * r2 / sigma**2) / (2 * math.pi * sigma**2)
    across = np.exp(-0.5 * (d / sigma) ** 2) / (math.sqrt(2 * math.pi) * sigma)
    along = 0.5 * (special.erf((length - s) / (_SQRT2 * sigma)) + special.erf(s / (_SQRT2 * sigma)))
    return across * along / length


def trail_model_jacobian(
    x: np.ndarray,
    y: np.ndarray,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    sigma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """`trail_model` and its derivatives with respect to ``(x0, y0, x1, y1, sigma)``.

    Returns
    -------
    model : `numpy.ndarray`
        As `trail_model`.
    jacobian : `numpy.ndarray`
        ``(5,) + model.shape``: d model / d (x0, y0, x1, y1, sigma).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    sigma = max(float(sigma), 1e-3)
    length, ux, uy, s, d = _segment_frame(x, y, x0, y0, x1, y1)
    length = max(length, 1e-6)
    nx, ny = -uy, ux
    across = np.exp(-0.5 * (d / sigma) ** 2) / (math.sqrt(2 * math.pi) * sigma)
    e_start = np.exp(-0.5 * (s / sigma) ** 2)
    e_end = np.exp(-0.5 * ((length - s) / sigma) ** 2)
    along = 0.5 * (special.erf((length - s) / (_SQRT2 * sigma)) + special.erf(s / (_SQRT2 * sigma)))
    model = across * along / length
    k = 0.5 * math.sqrt(2.0 / math.pi) / sigma
    d_model_d_d = model * (-d / sigma**2)
    d_model_d_s = across / length * k * (e_start - e_end)
    d_model_d_length = across / length * k * e_end - model / length
    # Derivatives of s, d and L with respect to the endpoints (see the docstring of the module).
    jac = np.empty((5,) + model.shape)
    for k_axis, (u_c, n_c) in enumerate(((ux, nx), (uy, ny))):
        ds_da = -u_c - d * n_c / length
        ds_db = d * n_c / length
        dd_da = -n_c + s * n_c / length
        dd_db = -s * n_c / length
        jac[k_axis] = d_model_d_d * dd_da + d_model_d_s * ds_da - d_model_d_length * u_c
        jac[2 + k_axis] = d_model_d_d * dd_db + d_model_d_s * ds_db + d_model_d_length * u_c
    d_across = across * ((d**2) / sigma**3 - 1.0 / sigma)
    d_along = 0.5 * math.sqrt(2.0 / math.pi) * (-(length - s) * e_end - s * e_start) / sigma**2
    jac[4] = (d_across * along + across * d_along) / length
    return model, jac


def segment_band(
    shape: tuple[int, int], x0: float, y0: float, x1: float, y1: float, half_width: float, extend: float = 0.0
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Pixels within ``half_width`` of a segment (extended by ``extend`` at both ends).

    Returns
    -------
    box : `tuple` [`slice`, `slice`]
        The bounding box (clipped to the image) as array slices.
    inside : `numpy.ndarray`
        Boolean array over ``box``.
    """
    length = math.hypot(x1 - x0, y1 - y0)
    if length > 0 and extend > 0:
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        x0, y0, x1, y1 = x0 - extend * ux, y0 - extend * uy, x1 + extend * ux, y1 + extend * uy
    pad = half_width + 1
    xa, xb = int(math.floor(min(x0, x1) - pad)), int(math.ceil(max(x0, x1) + pad)) + 1
    ya, yb = int(math.floor(min(y0, y1) - pad)), int(math.ceil(max(y0, y1) + pad)) + 1
    xa, ya = max(xa, 0), max(ya, 0)
    xb, yb = min(xb, shape[1]), min(yb, shape[0])
    box = (slice(ya, max(ya, yb)), slice(xa, max(xa, xb)))
    yy, xx = np.mgrid[box[0], box[1]]
    inside = segment_distance(xx, yy, x0, y0, x1, y1) <= half_width
    return box, inside


def fit_trail(
    candidate: TrailCandidate,
    image: np.ndarray,
    variance: np.ndarray,
    good: np.ndarray,
    psf_sigma: float,
    config: PostprocessConfig,
) -> TrailCandidate:
    """Refine a candidate's endpoints, width and flux by fitting the segment model.

    A robust (Huber) least-squares fit of ``flux * trail_model(...) +
    background`` with free endpoints and width, over the good pixels within
    ``fit_margin_sigma`` PSF sigmas of the (extended) initial line. If the
    fit fails, has non-positive flux or wanders off (an endpoint moves more
    than ``max_fit_shift`` plus a quarter of the length), the initial line
    is kept and ``fit_ok`` stays False.
    """
    from scipy.optimize import least_squares

    c = candidate
    half = config.fit_margin_sigma * psf_sigma + 2.0
    box, inside = segment_band(image.shape, c.x_start, c.y_start, c.x_end, c.y_end, half, extend=half)
    use = inside & good[box]
    if use.sum() < 8:
        return c
    yy, xx = np.mgrid[box[0], box[1]]
    px, py = xx[use].astype(float), yy[use].astype(float)
    data = image[box][use].astype(float)
    inv_sigma = 1.0 / np.sqrt(variance[box][use].astype(float))
    background0 = float(np.median(data))
    template0 = trail_model(px, py, c.x_start, c.y_start, c.x_end, c.y_end, psf_sigma)
    norm = float(np.sum(template0 * template0 * inv_sigma**2))
    flux0 = float(np.sum(template0 * (data - background0) * inv_sigma**2) / norm) if norm > 0 else 0.0
    flux0 = max(flux0, 1e-3 * (1.0 / np.median(inv_sigma)))
    start = np.array(
        [c.x_start, c.y_start, c.x_end, c.y_end, math.log(flux0), math.log(psf_sigma), background0]
    )

    def unpack(p):
        return math.exp(min(p[4], 60.0)), math.exp(min(max(p[5], -5.0), 5.0))

    def residuals(p):
        flux, sigma = unpack(p)
        return (data - flux * trail_model(px, py, p[0], p[1], p[2], p[3], sigma) - p[6]) * inv_sigma

    def jacobian(p):
        flux, sigma = unpack(p)
        model, jac = trail_model_jacobian(px, py, p[0], p[1], p[2], p[3], sigma)
        out = np.empty((px.size, 7))
        out[:, :4] = (flux * jac[:4]).T
        out[:, 4] = flux * model
        out[:, 5] = flux * sigma * jac[4]
        out[:, 6] = 1.0
        return -out * inv_sigma[:, None]

    try:
        result = least_squares(
            residuals,
            start,
            jac=jacobian,
            loss="huber",
            f_scale=3.0,
            x_scale="jac",
            max_nfev=80,
            xtol=1e-5,
            ftol=1e-5,
        )
    except (ValueError, FloatingPointError, OverflowError):
        return c
    p = result.x
    shift_limit = config.max_fit_shift + 0.25 * c.length
    shifts = (
        math.hypot(p[0] - c.x_start, p[1] - c.y_start),
        math.hypot(p[2] - c.x_end, p[3] - c.y_end),
    )
    shifts_swapped = (
        math.hypot(p[2] - c.x_start, p[3] - c.y_start),
        math.hypot(p[0] - c.x_end, p[1] - c.y_end),
    )
    width = math.exp(min(p[5], 10.0)) if np.isfinite(p[5]) else float("nan")
    if (
        not result.success
        or not np.all(np.isfinite(p))
        or min(max(shifts), max(shifts_swapped)) > shift_limit
        or not 0.1 <= width <= 20 * psf_sigma
    ):
        return c
    out = dataclasses.replace(c)
    out.x_start, out.y_start, out.x_end, out.y_end = (float(v) for v in p[:4])
    out.fit_flux = math.exp(min(p[4], 60.0))
    out.width_sigma = width
    out.fit_ok = True
    return out


def trail_photometry(
    candidate: TrailCandidate,
    image: np.ndarray,
    variance: np.ndarray,
    good: np.ndarray,
    psf_sigma: float,
    half_width_sigma: float = 4.0,
) -> tuple[float, float]:
    """Matched-filter flux and its error along a fitted segment.

    The local background is the median of the good pixels between
    ``half_width_sigma`` and twice that many PSF sigmas from the segment
    (robust to stars there); the flux is the matched-filter estimate
    ``sum(T (I - b) / V) / sum(T^2 / V)`` over the pixels within
    ``half_width_sigma`` PSF sigmas, with ``T`` the unit-flux
    `trail_model` with the PSF width, and its error is
    ``1 / sqrt(sum(T^2 / V))``. For a trail of that shape the estimate is
    unbiased and its SNR is the optimal (matched-filter) SNR.

    Returns
    -------
    flux, flux_err : `float`
        In the image's units; NaN when no good pixel is available.
    """
    c = candidate
    half = half_width_sigma * psf_sigma + 1.0
    outer = 2.0 * half
    box, inside = segment_band(image.shape, c.x_start, c.y_start, c.x_end, c.y_end, outer, extend=outer)
    yy, xx = np.mgrid[box[0], box[1]]
    distance = segment_distance(xx, yy, c.x_start, c.y_start, c.x_end, c.y_end)
    core = (distance <= half) & good[box]
    ring = (distance > half) & inside & good[box]
    if core.sum() < 4:
        return float("nan"), float("nan")
    background = float(np.median(image[box][ring])) if ring.sum() >= 10 else 0.0
    template = trail_model(
        xx[core].astype(float), yy[core].astype(float), c.x_start, c.y_start, c.x_end, c.y_end, psf_sigma
    )
    w = 1.0 / variance[box][core].astype(float)
    norm = float(np.sum(w * template**2))
    if not norm > 0:
        return float("nan"), float("nan")
    flux = float(np.sum(w * template * (image[box][core].astype(float) - background)) / norm)
    return flux, float(1.0 / math.sqrt(norm))


def saturated_blobs(saturated: np.ndarray | None, min_pixels: int) -> np.ndarray:
    """Centroids and radii ``(n, 3)`` of saturated components of at least ``min_pixels``."""
    if saturated is None or not saturated.any():
        return np.zeros((0, 3))
    labels, n = ndimage.label(saturated)
    index = np.arange(1, n + 1)
    sizes = np.asarray(ndimage.sum_labels(saturated, labels, index))
    keep = index[sizes >= min_pixels]
    if keep.size == 0:
        return np.zeros((0, 3))
    centres = np.array(ndimage.center_of_mass(saturated, labels, keep))
    radii = np.sqrt(sizes[keep - 1] / math.pi)
    return np.column_stack([centres[:, 1], centres[:, 0], radii])


def classify_candidate(
    candidate: TrailCandidate,
    psf_sigma: float,
    config: PostprocessConfig,
    saturated: np.ndarray | None,
    blobs: np.ndarray,
) -> str:
    """Return why a candidate is rejected, or ``""`` if it is kept.

    Reasons, in order: ``short`` (shorter than ``min_length_fwhm`` PSF
    FWHM), ``cosmic_ray`` (fitted width below ``cosmic_ray_width_ratio`` of
    the PSF's), ``extended`` (wider than ``extended_width_ratio`` PSF
    widths: galaxy edges and other extended light), ``bleed`` (within
    ``bleed_max_angle`` of the columns and touching saturated pixels on or
    just past its line), ``spike`` (its line points at a saturated star
    within ``spike_length``: a diffraction spike), ``low_snr`` (matched-
    filter SNR below ``min_snr`` or non-positive flux).
    """
    c = candidate
    fwhm = 2.3548 * psf_sigma
    if c.length < config.min_length_fwhm * fwhm:
        return "short"
    if c.fit_ok and c.width_sigma < config.cosmic_ray_width_ratio * psf_sigma:
        return "cosmic_ray"
    if c.fit_ok and c.width_sigma > config.extended_width_ratio * psf_sigma:
        return "extended"
    if saturated is not None and saturated.any():
        along_columns = _angle_difference(c.beta, 90.0) <= config.bleed_max_angle
        if along_columns:
            box, inside = segment_band(
                saturated.shape, c.x_start, c.y_start, c.x_end, c.y_end, 2.0 + psf_sigma, extend=5.0
            )
            if np.any(saturated[box] & inside):
                return "bleed"
    if len(blobs):
        s, perp = _line_offsets(c, blobs[:, 0], blobs[:, 1])
        near_line = np.abs(perp) <= config.spike_radius + blobs[:, 2]
        beyond = np.maximum(np.maximum(-s, s - c.length), 0.0)
        if np.any(near_line & (beyond <= config.spike_length)):
            return "spike"
    if not np.isfinite(c.snr) or c.snr < config.min_snr or not c.flux > 0:
        return "low_snr"
    return ""
