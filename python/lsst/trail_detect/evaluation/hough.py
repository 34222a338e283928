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
For each connected detected component (8-connectivity) with at least
`HoughConfig.min_cluster_pixels` pixels:

1. Canny edges of the component's (binary, lightly smoothed) mask;
2. a Hough transform of those edges (`skimage.transform.hough_line`),
   peeled one line at a time: take the strongest cell, examine its line,
   take the edge pixels that are explained out of the accumulator, repeat;
3. along each line the component's pixels within
   `HoughConfig.max_line_width` are split into runs (a gap longer than
   `HoughConfig.line_gap` ends a run); a run needs a long enough chain of
   edge pixels on the line of its own, is re-centred on its pixels
   (principal axis) and measured: its endpoints come from the extent along
   the axis, pulled in by the distance by which a thresholded trail's
   footprint overhangs its ends;
4. short, stubby (round footprints) or blob-embedded runs are dropped.

Finally collinear pieces from different components that are separated by
no more than `HoughConfig.line_gap` (a trail cut by a gap, or by a bad
column) are joined, and duplicates (the two edges of one trail give two
nearly parallel Hough lines) are merged.

The Hough transform is run per component, not on the whole image: in a
crowded field a line across the image collects a few edge pixels from each of
many stars it passes, and these chance alignments outvote short trails. The
stack's kernel Hough transform avoids them differently (it votes with chains
of collinear edge pixels); this module is written from scratch with
scikit-image and does not reproduce it, only the idea. Unlike a global
transform it does not add up collinear fragments that are each too small to
be found on their own.

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

# Refinement passes (re-centre on the pixels, re-collect) per run.
_REFINE_ITERATIONS = 3

# Components with more pixels than this are bucketed (`_PixelGrid`) so that
# each line only looks at the pixels near it.
_GRID_MIN_PIXELS = 20_000


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
    """Fewest edge pixels a Hough cell must hold to be examined, and fewest a
    trail must have in one chain along its line (gaps of at most
    `line_gap`)."""

    max_lines: int = 20
    """Most trails returned (those with the most pixels)."""

    max_line_width: float = 8.0
    """Largest distance of a pixel from a line's axis for it to belong to the
    trail (the trail's half-width). Also the width of the flanks checked by
    `max_flank_fraction`."""

    min_length: float = 10.0
    """Shortest trail returned (after pulling the ends in)."""

    line_gap: float = 5.0
    """Longest run of undetected pixels along a line that does not end a
    trail; also the largest gap across which collinear pieces are joined."""

    merge_angle_deg: float = 2.0
    """Two trails closer in angle than this whose axes lie within
    `max_line_width` of each other and that overlap, or nearly meet, along
    the line are one trail."""

    min_aspect_ratio: float = 2.0
    """Smallest ratio of a run's extent along the line to the full width of
    the detected object at its middle (measured out to ``2 *
    max_line_width``); rejects round footprints (stars) crossed by a line."""

    max_flank_fraction: float = 0.5
    """Largest fraction of detected pixels in either flank beside a trail
    (``max_line_width`` to ``2 * max_line_width`` from the axis); rejects
    lines drawn through, or along the edge of, large detected regions."""

    max_lines_per_component: int = 10
    """Most trails taken from one component."""

    max_iterations: int = 50
    """Most Hough cells examined per component."""

    max_edge_pixels: int = 500_000
    """Cap on the edge pixels of one component fed to the Hough transform;
    above it a random subset is used (and the vote thresholds scaled), which
    bounds the work on pathological, largely detected masks."""

    max_components: int = 20_000
    """Most components searched, the largest first."""

    seed: int = 0
    """Seed of the subsampling above."""


@dataclasses.dataclass
class _Trail:
    """A trail found in the mask: an axis, the extent of its pixels along
    it, and the pixels themselves.
    """

    cx: float
    cy: float
    ux: float
    uy: float
    s_min: float
    s_max: float
    half_width: float
    overhang: float
    votes: float
    flat: np.ndarray
    """Sorted flat indices (``y * width + x``) of the trail's pixels."""

    @property
    def start(self) -> tuple[float, float]:
        s = self.s_min + self.overhang
        return self.cx + s * self.ux, self.cy + s * self.uy

    @property
    def end(self) -> tuple[float, float]:
        s = self.s_max - self.overhang
        return self.cx + s * self.ux, self.cy + s * self.uy

    @property
    def length(self) -> float:
        return max(self.s_max - self.s_min - 2.0 * self.overhang, 0.0)


def _empty_table() -> Table:
    """A trail table with no rows and all of `HOUGH_COLUMNS`."""
    return Table(
        {name: np.zeros(0, dtype=np.int64 if name in _INT_COLUMNS else np.float64) for name in HOUGH_COLUMNS}
    )


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
        acc, self.theta, dists = hough_line(image, theta=theta)
        self.acc = acc.astype(np.int32)
        self.offset = (len(dists) - 1) // 2
        self.cos, self.sin = np.cos(self.theta), np.sin(self.theta)
        self.alive = np.ones(len(lx), dtype=bool)

    def peak(self) -> tuple[int, int, int]:
        """Votes, rho index and theta index of the strongest cell."""
        r_i, t_i = np.unravel_index(int(np.argmax(self.acc)), self.acc.shape)
        return int(self.acc[r_i, t_i]), int(r_i), int(t_i)

    def line(self, r_i: int, t_i: int) -> tuple[float, float]:
        """``theta`` and full-image ``rho`` of a cell."""
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
        flat_acc = self.acc.reshape(-1)
        for start in range(0, index.size, 8192):
            chunk = index[start : start + 8192]
            rho = np.rint(np.outer(self._lx[chunk], self.cos) + np.outer(self._ly[chunk], self.sin))
            flat = ((rho.astype(np.int64) + self.offset) * n_theta + columns).ravel()
            if flat.size > flat_acc.size // 8:
                flat_acc -= np.bincount(flat, minlength=flat_acc.size).astype(flat_acc.dtype)
            else:
                np.subtract.at(flat_acc, flat, 1)


class _PixelGrid:
    """Pixels bucketed in square cells, so that those near a line can be
    found without looking at all of them.

    Parameters
    ----------
    ys, xs : `numpy.ndarray`
        Integer rows and columns of the pixels.
    cell : `int`
        Side of a cell in pixels.
    """

    def __init__(self, ys: np.ndarray, xs: np.ndarray, cell: int = 32):
        y0, x0 = int(ys.min()), int(xs.min())
        n_cy, n_cx = (int(ys.max()) - y0) // cell + 1, (int(xs.max()) - x0) // cell + 1
        cell_id = ((ys - y0) // cell) * n_cx + (xs - x0) // cell
        self.cell = cell
        self.order = np.argsort(cell_id, kind="stable")
        self.starts = np.searchsorted(cell_id[self.order], np.arange(n_cy * n_cx + 1))
        cy, cx = np.divmod(np.arange(n_cy * n_cx), n_cx)
        self.centre_y = y0 + (cy + 0.5) * cell - 0.5
        self.centre_x = x0 + (cx + 0.5) * cell - 0.5

    def near_line(self, cos_t: float, sin_t: float, rho: float, distance: float) -> np.ndarray:
        """Indices of the pixels in cells that come within ``distance`` of
        the line ``x cos + y sin = rho`` (a superset of the pixels that do).
        """
        reach = distance + self.cell / math.sqrt(2.0)
        cells = np.flatnonzero(np.abs(self.centre_x * cos_t + self.centre_y * sin_t - rho) <= reach)
        first, stop = self.starts[cells], self.starts[cells + 1]
        lengths = stop - first
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, dtype=np.intp)
        # Concatenate the ranges first[i]:stop[i] without a Python loop.
        shift = np.repeat(first - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        return self.order[np.arange(total) + shift]


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


def _make_trail(
    x: np.ndarray, y: np.ndarray, flat: np.ndarray, half_width: float, votes: float, psf_sigma: float
) -> _Trail:
    """A `_Trail` from its pixels (coordinates and flat indices)."""
    cx, cy, ux, uy = _principal_axis(x, y)
    s = (x - cx) * ux + (y - cy) * uy
    return _Trail(
        cx=cx,
        cy=cy,
        ux=ux,
        uy=uy,
        s_min=float(s.min()),
        s_max=float(s.max()),
        half_width=half_width,
        overhang=_end_overhang(half_width, psf_sigma),
        votes=votes,
        flat=np.sort(flat),
    )


def _measure_run(
    xs: np.ndarray,
    ys: np.ndarray,
    window: np.ndarray,
    run: np.ndarray,
    votes: float,
    psf_sigma: float,
    image_width: int,
    config: HoughConfig,
) -> _Trail | None:
    """Re-centre a run of pixels on its principal axis, test and measure it.

    Parameters
    ----------
    xs, ys : `numpy.ndarray`
        Coordinates of the component's pixels.
    window : `numpy.ndarray`
        Indices of the pixels near the Hough line; all work is done on
        these.
    run : `numpy.ndarray`
        Indices (into ``window``) of the run's pixels.
    votes : `float`
        Edge pixels supporting the run, carried along.
    psf_sigma : `float`
        Gaussian sigma of the PSF in pixels.
    image_width : `int`
        Width of the image, for the flat pixel indices.
    config : `HoughConfig`
        Selection parameters.

    Returns
    -------
    trail : `_Trail` or `None`
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
    full_half_width = 2.0 * float(np.median(d_mid)) + 0.5
    if extent < config.min_aspect_ratio * 2.0 * full_half_width:
        return None
    half_width = min(full_half_width, width)
    if extent - 2.0 * _end_overhang(half_width, psf_sigma) < config.min_length:
        return None
    # Flanks, each side on its own: a line along the edge of a big region has one side full.
    along = (s_all >= s_min) & (s_all <= s_max) & (d_all > width) & (d_all <= 2.0 * width)
    flank_area = width * max(extent, 1.0)
    for side in (d_signed > 0, d_signed < 0):
        if np.count_nonzero(along & side) > config.max_flank_fraction * flank_area:
            return None
    px, py = wx[sel], wy[sel]
    flat = py.astype(np.int64) * image_width + px.astype(np.int64)
    return _make_trail(px, py, flat, half_width, votes, psf_sigma)


def _component_trails(
    py: np.ndarray,
    px: np.ndarray,
    ey: np.ndarray,
    ex: np.ndarray,
    psf_sigma: float,
    image_width: int,
    config: HoughConfig,
    rng: np.random.Generator,
) -> list[_Trail]:
    """Trails in one detected component.

    Parameters
    ----------
    py, px : `numpy.ndarray`
        Rows and columns of the component's pixels.
    ey, ex : `numpy.ndarray`
        Rows and columns of its Canny edge pixels.
    psf_sigma : `float`
        Gaussian sigma of the PSF in pixels.
    image_width : `int`
        Width of the image, for the flat pixel indices.
    config : `HoughConfig`
        Parameters.
    rng : `numpy.random.Generator`
        For subsampling too many edge pixels.

    Returns
    -------
    trails : `list` [`_Trail`]
        The trails found, strongest line first.
    """
    vote_scale = 1.0
    if ey.size > config.max_edge_pixels:
        pick = np.sort(rng.choice(ey.size, size=config.max_edge_pixels, replace=False))
        vote_scale = ey.size / config.max_edge_pixels
        ey, ex = ey[pick], ex[pick]
    min_votes = config.min_line_votes / vote_scale
    xs, ys = px.astype(np.float64), py.astype(np.float64)
    hough = _Accumulator(ey, ex, config.angle_resolution_deg)
    grid = _PixelGrid(py, px) if px.size > _GRID_MIN_PIXELS else None
    width = config.max_line_width
    found_trails: list[_Trail] = []
    for _ in range(config.max_iterations):
        if len(found_trails) >= config.max_lines_per_component:
            break
        votes, r_i, t_i = hough.peak()
        if votes < min_votes:
            break
        theta, rho = hough.line(r_i, t_i)
        voters = hough.voters(r_i, t_i)
        cos_t, sin_t = math.cos(theta), math.sin(theta)
        voter_s = np.sort(hough.xs[voters] * -sin_t + hough.ys[voters] * cos_t)
        edge_d = np.abs(hough.xs * cos_t + hough.ys * sin_t - rho)
        edge_s = hough.xs * -sin_t + hough.ys * cos_t
        # Generous window: the trail's axis is within max_line_width of an edge line, its flanks
        # within another 2 * max_line_width, and the Hough angle is only good to half a bin.
        near = np.arange(xs.size) if grid is None else grid.near_line(cos_t, sin_t, rho, 4.0 * width)
        d = np.abs(xs[near] * cos_t + ys[near] * sin_t - rho)
        in_window = d <= 4.0 * width
        window = near[in_window]
        band = np.flatnonzero(d[in_window] <= width)
        s = xs[window[band]] * -sin_t + ys[window[band]] * cos_t
        for run in _split_runs(s, config.line_gap):
            s_lo, s_hi = s[run].min(), s[run].max()
            if s_hi - s_lo < config.min_length:
                continue
            # Whatever the run turns out to be, its edges along this line have had their say.
            hough.remove(np.flatnonzero((edge_d <= width) & (edge_s >= s_lo - 2.0) & (edge_s <= s_hi + 2.0)))
            # Only runs with a long enough straight edge of their own (the longest chain of voting
            # edge pixels without a gap): the few edge pixels where a line touches two round
            # footprints are two short chains, not one long one.
            run_s = voter_s[np.searchsorted(voter_s, s_lo, "left") : np.searchsorted(voter_s, s_hi, "right")]
            if run_s.size < min_votes:
                continue
            chains = np.split(run_s, np.flatnonzero(np.diff(run_s) > config.line_gap + 1.0) + 1)
            run_votes = max(chain.size for chain in chains)
            if run_votes < min_votes:
                continue
            trail = _measure_run(
                xs, ys, window, band[run], run_votes * vote_scale, psf_sigma, image_width, config
            )
            if trail is None or any(_same_trail(t, trail, config) for t in found_trails):
                continue
            found_trails.append(trail)
            # Take the trail's edges out of the transform, so that its side lobes go too.
            ex_c, ey_c = hough.xs - trail.cx, hough.ys - trail.cy
            along = ex_c * trail.ux + ey_c * trail.uy
            across = np.abs(ey_c * trail.ux - ex_c * trail.uy)
            margin = 2.0 + config.canny_sigma
            hough.remove(
                np.flatnonzero(
                    (across <= trail.half_width + margin)
                    & (along >= trail.s_min - margin)
                    & (along <= trail.s_max + margin)
                )
            )
        hough.remove(voters)
    return found_trails


def _collinear(a: _Trail, b: _Trail, config: HoughConfig, gap: float) -> bool:
    """Whether two trails lie on one line and overlap, or come within ``gap``
    of each other, along it.
    """
    if abs(a.ux * b.ux + a.uy * b.uy) < math.cos(math.radians(config.merge_angle_deg)):
        return False
    ends_b = [(b.cx + s * b.ux, b.cy + s * b.uy) for s in (b.s_min, b.s_max)]
    ends_a = [(a.cx + s * a.ux, a.cy + s * a.uy) for s in (a.s_min, a.s_max)]
    for (x, y), t in [(e, a) for e in ends_b] + [(e, b) for e in ends_a]:
        if abs((y - t.cy) * t.ux - (x - t.cx) * t.uy) > config.max_line_width:
            return False
    sb = sorted((x - a.cx) * a.ux + (y - a.cy) * a.uy for x, y in ends_b)
    separation = max(sb[0] - a.s_max, a.s_min - sb[1])
    return separation <= gap


def _same_trail(a: _Trail, b: _Trail, config: HoughConfig) -> bool:
    """Whether ``b`` repeats ``a``: mostly the same pixels, or collinear and
    overlapping.
    """
    shared = np.intersect1d(a.flat, b.flat, assume_unique=True).size
    if shared > 0.5 * min(a.flat.size, b.flat.size):
        return True
    return _collinear(a, b, config, gap=0.0)


def _join(a: _Trail, b: _Trail, psf_sigma: float, image_width: int) -> _Trail:
    """One trail from the pixels of two."""
    flat = np.union1d(a.flat, b.flat)
    y, x = np.divmod(flat, image_width)
    n_a, n_b = a.flat.size, b.flat.size
    half_width = (a.half_width * n_a + b.half_width * n_b) / (n_a + n_b)
    return _make_trail(
        x.astype(np.float64), y.astype(np.float64), flat, half_width, a.votes + b.votes, psf_sigma
    )


def _join_pieces(
    trails: list[_Trail], psf_sigma: float, image_width: int, config: HoughConfig
) -> list[_Trail]:
    """Join collinear trails separated by at most ``line_gap`` (or
    overlapping), then drop those that mostly repeat another's pixels.
    """
    trails = sorted(trails, key=lambda t: t.flat.size, reverse=True)
    joined = True
    while joined:
        joined = False
        for i in range(len(trails)):
            for j in range(i + 1, len(trails)):
                if _collinear(trails[i], trails[j], config, gap=config.line_gap + 1.0):
                    trails[i] = _join(trails[i], trails.pop(j), psf_sigma, image_width)
                    joined = True
                    break
            if joined:
                break
    trails.sort(key=lambda t: t.flat.size, reverse=True)
    kept: list[_Trail] = []
    for trail in trails:
        if not any(_same_trail(k, trail, config) for k in kept):
            kept.append(trail)
    return kept


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
        pixels; the start is the end with the lower coordinate along
        ``beta``), the centre ``x, y``, ``trail_length``, ``beta`` (degrees
        from +x toward +y in [0, 180)), ``n_pixels`` (detected pixels
        assigned to the trail), ``votes`` (edge pixels in the longest
        straight chain along its Hough line, summed over joined pieces),
        ``flux`` (sum of ``image`` over the assigned pixels, no matched
        filter) and ``snr`` (``flux / sqrt(sum variance)``); ``flux`` is NaN
        without ``image``, ``snr`` without ``image`` and ``variance``. Rows
        are sorted by decreasing ``n_pixels``; at most ``config.max_lines``.

    Raises
    ------
    ValueError
        If ``detected`` is not 2-D or another array's shape differs.
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
    height, image_width = mask.shape

    labels, n_labels = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    del mask
    sizes = np.bincount(labels.ravel(), minlength=n_labels + 1)
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= config.min_cluster_pixels)
    keep = keep[np.argsort(-sizes[keep], kind="stable")][: config.max_components]
    slices = ndimage.find_objects(labels)
    pad = int(math.ceil(4 * config.canny_sigma)) + 2
    rng = np.random.default_rng(config.seed)

    trails: list[_Trail] = []
    for k in keep:
        rows, cols = slices[k - 1]
        y0, y1 = max(rows.start - pad, 0), min(rows.stop + pad, height)
        x0, x1 = max(cols.start - pad, 0), min(cols.stop + pad, image_width)
        if math.hypot(rows.stop - rows.start, cols.stop - cols.start) < config.min_length:
            continue
        component = labels[y0:y1, x0:x1] == k
        # mode="nearest": the image border is not an edge of a region that touches it.
        edges = canny(
            component.astype(np.float32),
            sigma=config.canny_sigma,
            low_threshold=config.canny_low_threshold,
            high_threshold=config.canny_high_threshold,
            mode="nearest",
        )
        ey, ex = np.nonzero(edges)
        if ey.size < config.min_line_votes:
            continue
        py, px = np.nonzero(component)
        trails.extend(
            _component_trails(py + y0, px + x0, ey + y0, ex + x0, psf_sigma, image_width, config, rng)
        )
    del labels

    trails = [
        t for t in _join_pieces(trails, psf_sigma, image_width, config) if t.length >= config.min_length
    ]
    trails = trails[: config.max_lines]
    if not trails:
        return _empty_table()

    rows_out: dict[str, list] = {name: [] for name in HOUGH_COLUMNS}
    image_arr = None if image is None else np.asarray(image, dtype=np.float64).reshape(-1)
    var_arr = None if variance is None else np.asarray(variance, dtype=np.float64).reshape(-1)
    for k, trail in enumerate(trails):
        flux = snr = math.nan
        if image_arr is not None:
            flux = float(np.nansum(image_arr[trail.flat]))
            if var_arr is not None:
                var_sum = float(np.nansum(var_arr[trail.flat]))
                snr = flux / math.sqrt(var_sum) if var_sum > 0 else math.nan
        (xa, ya), (xb, yb) = trail.start, trail.end
        values = {
            "trail_id": k,
            "x_start": xa,
            "y_start": ya,
            "x_end": xb,
            "y_end": yb,
            "x": 0.5 * (xa + xb),
            "y": 0.5 * (ya + yb),
            "trail_length": math.hypot(xb - xa, yb - ya),
            "beta": math.degrees(math.atan2(trail.uy, trail.ux)) % 180.0,
            "n_pixels": int(trail.flat.size),
            "votes": int(round(trail.votes)),
            "flux": flux,
            "snr": snr,
        }
        for name in HOUGH_COLUMNS:
            rows_out[name].append(values[name])
    return Table(
        {
            name: np.asarray(rows_out[name], dtype=np.int64 if name in _INT_COLUMNS else np.float64)
            for name in HOUGH_COLUMNS
        }
    )
