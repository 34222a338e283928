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

"""A classical baseline trail finder: Hough lines on the edges of the
detection mask.

This works in the spirit of the stack's ``MaskStreaksTask``
(``lsst.meas_algorithms``, DMTN-197): its input is the DETECTED mask, i.e.
the footprints of a (typically 5 sigma) threshold on the PSF-smoothed image,
so it can only find trails whose pixels are already inside such footprints.
The steps are

1. drop the detected components smaller than
   `HoughConfig.min_cluster_pixels` (isolated stars and noise peaks);
2. Canny edges of the remaining (binary, lightly smoothed) mask, computed
   per component;
3. a Hough transform of the edge pixels and its strongest peaks;
4. for each peak line, the detected pixels within
   `HoughConfig.max_line_width` of it are split into runs along the line
   (a gap longer than `HoughConfig.line_gap` ends a run); each run is
   re-centred on its pixels (principal axis) and measured: its endpoints come
   from the extent along the axis, pulled in by the distance by which a
   thresholded trail's footprint overhangs its ends;
5. short, stubby or blob-embedded runs are dropped, and duplicates (the two
   edges of one trail give two nearly parallel Hough lines) are merged.

It is written from scratch with scikit-image; it does not reproduce the
stack's kernel Hough transform, only the idea.

All positions are 0-based pixel coordinates (``x`` the column, ``y`` the
row, pixel centres on integers), and ``beta`` is the angle of the trail from
+x toward +y in degrees, in ``[0, 180)``.
"""

from __future__ import annotations

__all__ = ("HOUGH_COLUMNS", "HoughConfig", "hough_trails")

import dataclasses
import math

import numpy as np
from astropy.table import Table
from scipy import ndimage, special
from skimage.feature import canny
from skimage.transform import hough_line

HOUGH_COLUMNS = (
    "trail_id",
    "x_start",
    "y_start",
    "x_end",
    "y_end",
    "x",
    "y",
    "trail_length",
    "beta",
    "n_pixels",
    "votes",
    "flux",
    "snr",
)
"""Columns of the table returned by `hough_trails`, in order."""

_INT_COLUMNS = ("trail_id", "n_pixels", "votes")

# Above this many kept components one Canny pass over their common bounding
# box is cheaper than a Python loop over per-component crops.
_MAX_COMPONENT_LOOP = 2000

# Refinement passes (re-centre on the pixels, re-collect) per run.
_REFINE_ITERATIONS = 3


@dataclasses.dataclass
class HoughConfig:
    """Parameters of `hough_trails`.

    Lengths are in pixels.
    """

    min_cluster_pixels: int = 50
    """Detected components with fewer pixels are dropped before the edge
    detection (like ``MaskStreaksConfig.clusterMinimumSize``)."""

    canny_sigma: float = 1.0
    """Gaussian smoothing of the binary mask in the Canny edge detector."""

    canny_low_threshold: float = 0.1
    """Low hysteresis threshold of Canny on the 0/1 mask (the gradient of a
    smoothed unit step peaks near 0.4 at ``canny_sigma = 1``)."""

    canny_high_threshold: float = 0.2
    """High hysteresis threshold of Canny on the 0/1 mask."""

    angle_resolution_deg: float = 0.5
    """Step of the Hough angle grid."""

    min_line_votes: int = 12
    """Fewest edge pixels a Hough peak must collect, and fewest of those a
    single trail (a run of pixels along the line) must hold."""

    max_lines: int = 20
    """Most trails returned; the search stops when this many are found."""

    max_line_width: float = 8.0
    """Largest distance of a pixel from a line's axis for it to belong to the
    trail (the trail's half-width). Also the width of the flanks checked by
    `max_flank_fraction`."""

    min_length: float = 10.0
    """Shortest trail returned (after pulling the ends in)."""

    line_gap: float = 5.0
    """Longest run of undetected pixels along a line that does not end a
    trail."""

    merge_angle_deg: float = 2.0
    """Two trails closer in angle than this, whose axes lie within
    ``2 * max_line_width`` of each other and which overlap along the line,
    are one trail."""

    min_aspect_ratio: float = 2.0
    """Smallest ratio of a run's extent along the line to the full width of
    the detected object at its middle (measured out to ``2 *
    max_line_width``); rejects round footprints (stars) crossed by a line."""

    max_flank_fraction: float = 0.5
    """Largest fraction of detected pixels in either flank beside a trail
    (``max_line_width`` to ``2 * max_line_width`` from the axis); rejects
    lines drawn through, or along the edge of, large detected regions."""

    max_edge_pixels: int = 2_000_000
    """Cap on the edge pixels fed to the Hough transform; above it a random
    subset is used (and the vote threshold scaled), which bounds the work on
    pathological, largely detected masks."""

    seed: int = 0
    """Seed of the subsampling above."""

    max_iterations: int = 200
    """Most Hough peaks examined. Lines are peeled off one at a time: after
    each peak its voting edge pixels, and those of every trail found, are
    taken out of the accumulator."""


def _empty_table() -> Table:
    """A trail table with no rows and all of `HOUGH_COLUMNS`."""
    return Table(
        {name: np.zeros(0, dtype=np.int64 if name in _INT_COLUMNS else np.float64) for name in HOUGH_COLUMNS}
    )


def _edge_pixels(
    labels: np.ndarray, keep: np.ndarray, slices: list, config: HoughConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Canny edge pixels of the kept components of a label image.

    Parameters
    ----------
    labels : `numpy.ndarray`
        Label image of the detected components.
    keep : `numpy.ndarray`
        Labels (1-based) of the components to use.
    slices : `list`
        `scipy.ndimage.find_objects` of ``labels``.
    config : `HoughConfig`
        Edge detector parameters.

    Returns
    -------
    ys, xs : `numpy.ndarray`
        Row and column of every edge pixel.
    """
    height, width = labels.shape
    pad = int(math.ceil(4 * config.canny_sigma)) + 2

    def crop(sl: tuple[slice, slice]) -> tuple[int, int, int, int]:
        return (
            max(sl[0].start - pad, 0),
            min(sl[0].stop + pad, height),
            max(sl[1].start - pad, 0),
            min(sl[1].stop + pad, width),
        )

    def edges(mask: np.ndarray) -> np.ndarray:
        # mode="nearest": the image border is not an edge of a region that touches it.
        return canny(
            mask.astype(np.float32),
            sigma=config.canny_sigma,
            low_threshold=config.canny_low_threshold,
            high_threshold=config.canny_high_threshold,
            mode="nearest",
        )

    if len(keep) > _MAX_COMPONENT_LOOP:
        y0 = min(slices[k - 1][0].start for k in keep)
        y1 = max(slices[k - 1][0].stop for k in keep)
        x0 = min(slices[k - 1][1].start for k in keep)
        x1 = max(slices[k - 1][1].stop for k in keep)
        y0, y1, x0, x1 = crop((slice(y0, y1), slice(x0, x1)))
        keep_lut = np.zeros(labels.max() + 1, dtype=bool)
        keep_lut[keep] = True
        ey, ex = np.nonzero(edges(keep_lut[labels[y0:y1, x0:x1]]))
        return ey + y0, ex + x0
    all_y, all_x = [], []
    for k in keep:
        y0, y1, x0, x1 = crop(slices[k - 1])
        ey, ex = np.nonzero(edges(labels[y0:y1, x0:x1] == k))
        all_y.append(ey + y0)
        all_x.append(ex + x0)
    if not all_y:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    return np.concatenate(all_y), np.concatenate(all_x)


class _Accumulator:
    """Hough accumulator of a set of edge pixels from which pixels can be
    taken out again (peeling off one line after another).

    Parameters
    ----------
    ys, xs : `numpy.ndarray`
        Rows and columns of the edge pixels (full-image coordinates).
    step_deg : `float`
        Step of the angle grid in degrees.

    Notes
    -----
    A line is ``x cos(theta) + y sin(theta) = rho`` with ``theta`` the angle
    of its normal; its direction is ``(-sin(theta), cos(theta))``.
    """

    def __init__(self, ys: np.ndarray, xs: np.ndarray, step_deg: float):
        self.y0, self.x0 = int(ys.min()), int(xs.min())
        image = np.zeros((int(ys.max()) - self.y0 + 1, int(xs.max()) - self.x0 + 1), dtype=bool)
        image[ys - self.y0, xs - self.x0] = True
        # hough_line counts each distinct pixel once; so do we.
        ly, lx = np.nonzero(image)
        self.xs, self.ys = (lx + self.x0).astype(np.float64), (ly + self.y0).astype(np.float64)
        self._lx, self._ly = lx.astype(np.float64), ly.astype(np.float64)
        theta = np.deg2rad(np.arange(-90.0, 90.0, step_deg))
        self.acc, self.theta, dists = hough_line(image, theta=theta)
        self.offset = (len(dists) - 1) // 2
        self.cos, self.sin = np.cos(self.theta), np.sin(self.theta)
        self.alive = np.ones(len(lx), dtype=bool)

    def peak(self) -> tuple[int, int, int]:
        """Votes, rho index and theta index of the strongest line."""
        r_i, t_i = np.unravel_index(int(np.argmax(self.acc)), self.acc.shape)
        return int(self.acc[r_i, t_i]), int(r_i), int(t_i)

    def line(self, r_i: int, t_i: int) -> tuple[float, float]:
        """``theta`` and full-image ``rho`` of an accumulator cell."""
        theta = float(self.theta[t_i])
        rho = (r_i - self.offset) + self.x0 * self.cos[t_i] + self.y0 * self.sin[t_i]
        return theta, float(rho)

    def voters(self, r_i: int, t_i: int) -> np.ndarray:
        """Indices of the remaining edge pixels that vote for a cell."""
        rho = np.rint(self._lx * self.cos[t_i] + self._ly * self.sin[t_i]).astype(np.int64) + self.offset
        return np.flatnonzero(self.alive & (rho == r_i))

    def remove(self, index: np.ndarray) -> None:
        """Take edge pixels (indices) out of the accumulator."""
        index = index[self.alive[index]]
        if index.size == 0:
            return
        self.alive[index] = False
        n_theta = len(self.theta)
        columns = np.arange(n_theta)
        for start in range(0, index.size, 8192):
            chunk = index[start : start + 8192]
            rho = np.rint(np.outer(self._lx[chunk], self.cos) + np.outer(self._ly[chunk], self.sin))
            flat = (rho.astype(np.int64) + self.offset) * n_theta + columns
            np.subtract.at(self.acc.reshape(-1), flat.ravel(), 1)


def _split_runs(s: np.ndarray, line_gap: float) -> list[np.ndarray]:
    """Split positions along a line into runs separated by gaps.

    Parameters
    ----------
    s : `numpy.ndarray`
        Positions of pixels along the line.
    line_gap : `float`
        Longest tolerated stretch without pixels; consecutive (sorted)
        positions further apart than ``line_gap + 1`` end a run.

    Returns
    -------
    runs : `list` [`numpy.ndarray`]
        Indices into ``s`` of each run, in order along the line.
    """
    if len(s) == 0:
        return []
    order = np.argsort(s, kind="stable")
    breaks = np.flatnonzero(np.diff(s[order]) > line_gap + 1.0) + 1
    return np.split(order, breaks)


def _principal_axis(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """Centroid and unit direction (with ``uy >= 0``) of a pixel set's major axis."""
    cx, cy = float(x.mean()), float(y.mean())
    dx, dy = x - cx, y - cy
    cov = np.array([[np.mean(dx * dx), np.mean(dx * dy)], [np.mean(dx * dy), np.mean(dy * dy)]])
    _, vectors = np.linalg.eigh(cov)
    ux, uy = float(vectors[0, 1]), float(vectors[1, 1])
    if uy < 0 or (uy == 0 and ux < 0):
        ux, uy = -ux, -uy
    return cx, cy, ux, uy


def _end_overhang(half_width: float, psf_sigma: float) -> float:
    """How far a thresholded trail footprint extends beyond the trail's ends.

    The detection image is taken to be the image smoothed with the PSF, so
    its profile is Gaussian with ``sigma_eff = sqrt(2) psf_sigma``. Across
    the trail the footprint reaches ``h`` where ``A g(h) = t``, so ``t/A =
    exp(-h^2 / 2 sigma_eff^2)``; beyond an end the profile falls as ``A
    erfc(e / (sqrt(2) sigma_eff)) / 2``, which meets the threshold at the
    returned ``e`` (between 0 and ``h``). Footprint growth is ignored.
    """
    sigma_eff = math.sqrt(2.0) * max(psf_sigma, 1e-3)
    level = 2.0 * math.exp(-0.5 * (half_width / sigma_eff) ** 2)
    if level >= 1.0:
        return 0.0
    return float(min(max(math.sqrt(2.0) * sigma_eff * special.erfcinv(level), 0.0), half_width))


@dataclasses.dataclass
class _Candidate:
    """A measured run of pixels along a line."""

    x_start: float
    y_start: float
    x_end: float
    y_end: float
    cx: float
    cy: float
    ux: float
    uy: float
    s_min: float
    s_max: float
    half_width: float
    votes: float
    pixels: np.ndarray  # sorted indices into the kept-pixel arrays

    @property
    def length(self) -> float:
        return math.hypot(self.x_end - self.x_start, self.y_end - self.y_start)


def _measure_run(
    xs: np.ndarray,
    ys: np.ndarray,
    window: np.ndarray,
    run: np.ndarray,
    votes: float,
    psf_sigma: float,
    config: HoughConfig,
) -> _Candidate | None:
    """Re-centre a run of pixels on its principal axis and measure it.

    Parameters
    ----------
    xs, ys : `numpy.ndarray`
        Coordinates of all kept detected pixels.
    window : `numpy.ndarray`
        Indices of the kept pixels near the Hough line; all work is done on
        these.
    run : `numpy.ndarray`
        Indices (into ``window``) of the run's pixels.
    votes : `float`
        Hough votes of the line, carried along.
    psf_sigma : `float`
        Gaussian sigma of the PSF in pixels.
    config : `HoughConfig`
        Selection parameters.

    Returns
    -------
    candidate : `_Candidate` or `None`
        The measured trail, or `None` where the run fails a cut.
    """
    wx, wy = xs[window], ys[window]
    width = config.max_line_width
    margin = config.line_gap + 1.0
    sel = run
    for _ in range(_REFINE_ITERATIONS):
        if len(sel) < 3:
            return None
        cx, cy, ux, uy = _principal_axis(wx[sel], wy[sel])
        s_all = (wx - cx) * ux + (wy - cy) * uy
        d_all = np.abs((wy - cy) * ux - (wx - cx) * uy)
        s_lo, s_hi = s_all[sel].min() - margin, s_all[sel].max() + margin
        sel = np.flatnonzero((d_all <= width) & (s_all >= s_lo) & (s_all <= s_hi))
    if len(sel) < 3:
        return None
    # The refined collection may have picked up a separate piece across the margin: keep the biggest run.
    runs = _split_runs(s_all[sel], config.line_gap)
    sel = sel[max(runs, key=len)]
    cx, cy, ux, uy = _principal_axis(wx[sel], wy[sel])
    s_all = (wx - cx) * ux + (wy - cy) * uy
    d_signed = (wy - cy) * ux - (wx - cx) * uy
    d_all = np.abs(d_signed)
    s_run = s_all[sel]
    s_min, s_max = float(s_run.min()), float(s_run.max())
    extent = s_max - s_min
    # Full half-width of the detected object from the central half of the run (the ends taper),
    # not clipped at max_line_width, so that a round footprint wider than the band is seen as
    # round: a filled band of half-width h has median |d| = h / 2.
    middle = (np.abs(s_all - 0.5 * (s_min + s_max)) <= 0.25 * extent) & (d_all <= 2.0 * width)
    d_mid = d_all[middle] if middle.sum() >= 3 else d_all[sel]
    half_width = 2.0 * float(np.median(d_mid)) + 0.5
    if extent < config.min_aspect_ratio * 2.0 * half_width:
        return None
    overhang = _end_overhang(min(half_width, width), psf_sigma)
    a, b = s_min + overhang, s_max - overhang
    if b - a < config.min_length:
        return None
    # Flanks, each side on its own: a line along the edge of a big region has one side full.
    along = (s_all >= s_min) & (s_all <= s_max) & (d_all > width) & (d_all <= 2.0 * width)
    flank_area = width * max(extent, 1.0)
    for side in (d_signed > 0, d_signed < 0):
        if np.count_nonzero(along & side) > config.max_flank_fraction * flank_area:
            return None
    return _Candidate(
        x_start=cx + a * ux,
        y_start=cy + a * uy,
        x_end=cx + b * ux,
        y_end=cy + b * uy,
        cx=cx,
        cy=cy,
        ux=ux,
        uy=uy,
        s_min=s_min,
        s_max=s_max,
        half_width=half_width,
        votes=votes,
        pixels=np.sort(window[sel]),
    )


def _is_duplicate(a: _Candidate, b: _Candidate, config: HoughConfig) -> bool:
    """Whether candidate ``b`` repeats the (bigger) candidate ``a``."""
    shared = np.intersect1d(a.pixels, b.pixels, assume_unique=True).size
    if shared > 0.5 * min(a.pixels.size, b.pixels.size):
        return True
    cos_angle = abs(a.ux * b.ux + a.uy * b.uy)
    if cos_angle < math.cos(math.radians(config.merge_angle_deg)):
        return False
    mx, my = 0.5 * (b.x_start + b.x_end) - a.cx, 0.5 * (b.y_start + b.y_end) - a.cy
    if abs(my * a.ux - mx * a.uy) > 2.0 * config.max_line_width:
        return False
    # Overlap along a's axis.
    sb0 = (b.x_start - a.cx) * a.ux + (b.y_start - a.cy) * a.uy
    sb1 = (b.x_end - a.cx) * a.ux + (b.y_end - a.cy) * a.uy
    lo, hi = min(sb0, sb1), max(sb0, sb1)
    overlap = min(hi, a.s_max) - max(lo, a.s_min)
    return overlap > 0.5 * min(hi - lo, a.s_max - a.s_min)


def hough_trails(
    detected: np.ndarray,
    image: np.ndarray | None = None,
    variance: np.ndarray | None = None,
    *,
    psf_sigma: float,
    bad: np.ndarray | None = None,
    config: HoughConfig | None = None,
) -> Table:
    """Find straight trails in a detection mask with a Hough transform.

    Parameters
    ----------
    detected : `numpy.ndarray`
        Boolean (or 0/non-zero) 2-D mask of detected pixels, e.g. the DETECTED
        plane of a 5 sigma detection on the PSF-smoothed image.
    image : `numpy.ndarray`, optional
        Image of the same shape, for the ``flux`` column.
    variance : `numpy.ndarray`, optional
        Variance of ``image``, for the ``snr`` column.
    psf_sigma : `float`
        Gaussian sigma of the PSF in pixels; sets how far the footprint is
        taken to overhang the trail's ends.
    bad : `numpy.ndarray`, optional
        Boolean mask of pixels to ignore (e.g. saturated, bad columns, bleed
        trails); they are removed from ``detected`` before anything else.
    config : `HoughConfig`, optional
        Parameters; defaults are used if not given.

    Returns
    -------
    trails : `astropy.table.Table`
        One row per trail with the columns of `HOUGH_COLUMNS`: ``trail_id``
        (0, 1, ...), the endpoints ``x_start, y_start, x_end, y_end`` (0-based
        pixels, start at the lower ``s`` along ``beta``), the centre ``x, y``,
        ``trail_length``, ``beta`` (degrees from +x toward +y in [0, 180)),
        ``n_pixels`` (detected pixels assigned to the trail), ``votes``
        (Hough accumulator count of its line), ``flux`` (sum of ``image``
        over the assigned pixels) and ``snr`` (``flux / sqrt(sum variance)``);
        the last two are NaN without ``image`` (``snr`` also without
        ``variance``). Rows are sorted by decreasing ``n_pixels``; at most
        ``config.max_lines`` of them.

    Raises
    ------
    ValueError
        If an array is not 2-D or the shapes differ.
    """
    config = HoughConfig() if config is None else config
    detected = np.asarray(detected)
    if detected.ndim != 2:
        raise ValueError(f"detected must be 2-D, not {detected.shape}")
    mask = detected.astype(bool, copy=True)
    for name, array in (("image", image), ("variance", variance), ("bad", bad)):
        if array is not None and np.shape(array) != mask.shape:
            raise ValueError(f"{name} has shape {np.shape(array)}, detected has {mask.shape}")
    if bad is not None:
        mask &= ~np.asarray(bad, dtype=bool)
    if not mask.any():
        return _empty_table()

    # 1. Drop small components.
    labels, n_labels = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n_labels + 1)
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= config.min_cluster_pixels)
    if keep.size == 0:
        return _empty_table()
    slices = ndimage.find_objects(labels)

    # 2. Canny edges.
    edge_y, edge_x = _edge_pixels(labels, keep, slices, config)
    vote_scale = 1.0
    if edge_y.size > config.max_edge_pixels:
        rng = np.random.default_rng(config.seed)
        pick = np.sort(rng.choice(edge_y.size, size=config.max_edge_pixels, replace=False))
        vote_scale = edge_y.size / config.max_edge_pixels
        edge_y, edge_x = edge_y[pick], edge_x[pick]
    min_votes = config.min_line_votes / vote_scale
    if edge_y.size < min_votes:
        return _empty_table()

    # The kept detected pixels.
    keep_lut = np.zeros(n_labels + 1, dtype=bool)
    keep_lut[keep] = True
    pix_y, pix_x = np.nonzero(keep_lut[labels])
    del labels
    xs, ys = pix_x.astype(np.float64), pix_y.astype(np.float64)

    # 3. Hough transform, peeled one line at a time, and 4. runs of pixels along each line.
    hough = _Accumulator(edge_y, edge_x, config.angle_resolution_deg)
    width = config.max_line_width
    accepted: list[_Candidate] = []
    for _ in range(config.max_iterations):
        if len(accepted) >= config.max_lines:
            break
        votes, r_i, t_i = hough.peak()
        if votes < min_votes:
            break
        theta, rho = hough.line(r_i, t_i)
        voters = hough.voters(r_i, t_i)
        cos_t, sin_t = math.cos(theta), math.sin(theta)
        voter_s = np.sort(hough.xs[voters] * -sin_t + hough.ys[voters] * cos_t)
        d = xs * cos_t + ys * sin_t - rho
        # Generous window: the trail's axis is within max_line_width of an edge line, its flanks
        # within another 2 * max_line_width, and the Hough angle is only good to half a bin.
        window = np.flatnonzero(np.abs(d) <= 4.0 * width)
        band = np.flatnonzero(np.abs(d[window]) <= width)
        s = xs[window[band]] * -sin_t + ys[window[band]] * cos_t
        for run in _split_runs(s, config.line_gap):
            s_lo, s_hi = s[run].min(), s[run].max()
            if s_hi - s_lo < config.min_length:
                continue
            # Only runs with enough straight edge of their own: the line's votes from elsewhere
            # (a long trail it grazes, say) do not make the stars it crosses a trail.
            run_votes = np.searchsorted(voter_s, s_hi, "right") - np.searchsorted(voter_s, s_lo, "left")
            if run_votes < min_votes:
                continue
            found = _measure_run(xs, ys, window, band[run], run_votes * vote_scale, psf_sigma, config)
            if found is None or any(_is_duplicate(a, found, config) for a in accepted):
                continue
            accepted.append(found)
            # Take the trail's edges out of the transform, so that its side lobes go too.
            ex, ey = hough.xs - found.cx, hough.ys - found.cy
            along = ex * found.ux + ey * found.uy
            across = np.abs(ey * found.ux - ex * found.uy)
            margin = 2.0 + config.canny_sigma
            hough.remove(
                np.flatnonzero(
                    (across <= min(found.half_width, 2.0 * width) + margin)
                    & (along >= found.s_min - margin)
                    & (along <= found.s_max + margin)
                )
            )
            if len(accepted) >= config.max_lines:
                break
        hough.remove(voters)

    accepted.sort(key=lambda c: (c.pixels.size, c.votes), reverse=True)
    if not accepted:
        return _empty_table()

    rows: dict[str, list] = {name: [] for name in HOUGH_COLUMNS}
    image_arr = None if image is None else np.asarray(image, dtype=np.float64)
    var_arr = None if variance is None else np.asarray(variance, dtype=np.float64)
    for k, c in enumerate(accepted):
        py, px = pix_y[c.pixels], pix_x[c.pixels]
        flux = snr = math.nan
        if image_arr is not None:
            flux = float(np.nansum(image_arr[py, px]))
            if var_arr is not None:
                var_sum = float(np.nansum(var_arr[py, px]))
                snr = flux / math.sqrt(var_sum) if var_sum > 0 else math.nan
        beta = math.degrees(math.atan2(c.uy, c.ux)) % 180.0
        values = {
            "trail_id": k,
            "x_start": c.x_start,
            "y_start": c.y_start,
            "x_end": c.x_end,
            "y_end": c.y_end,
            "x": 0.5 * (c.x_start + c.x_end),
            "y": 0.5 * (c.y_start + c.y_end),
            "trail_length": c.length,
            "beta": beta,
            "n_pixels": int(c.pixels.size),
            "votes": int(c.votes),
            "flux": flux,
            "snr": snr,
        }
        for name in HOUGH_COLUMNS:
            rows[name].append(values[name])
    return Table(
        {
            name: np.asarray(rows[name], dtype=np.int64 if name in _INT_COLUMNS else np.float64)
            for name in HOUGH_COLUMNS
        }
    )
