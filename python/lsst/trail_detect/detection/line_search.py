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

"""Source-masked matched-filter search for faint straight trails.

A trail too faint to pass a 5 sigma PSF detection anywhere along its length
(``nu_det`` of 2-5) is still significant to a filter matched to a segment of
it: its SNR grows as the square root of the length. Stars and galaxies make
such a filter useless on the raw image (every bright source responds at
every angle), so the search first masks everything a 5 sigma PSF-filter
detection finds, grown by a few PSF widths, and then correlates the masked,
inverse-variance weighted image with PSF-convolved segments of a few
lengths and all orientations::

    snr = sum(w k I) / sqrt(sum(w k^2)),    w = good / V

which is the exact matched-filter SNR of a trail piece under the per-pixel
variance, unit normal on noise however much of the kernel is masked. Peaks
above a threshold become `~.postprocess.TrailCandidate` lines that the
detection refines, classifies and scores like the network's own.

Bright trails are masked by the same detection and are left to the network.
"""

from __future__ import annotations

__all__ = (
    "LineSearchConfig",
    "LineSearchResult",
    "line_search",
    "remove_line_patterns",
    "segment_kernel",
    "extend_segment",
    "segment_chunk_snr",
    "segment_snr",
    "source_mask",
)

import dataclasses
import math

import numpy as np
from scipy import fft, ndimage

from .postprocess import TrailCandidate, trail_model


@dataclasses.dataclass
class LineSearchConfig:
    """Parameters of `line_search`.

    Attributes
    ----------
    lengths_fwhm : `tuple` [`float`, ...]
        Kernel segment lengths, in PSF FWHM.
    angle_step_sigma : `float`
        Angular step such that the ends of the longest kernel move by this
        many PSF sigmas between neighbouring orientations.
    threshold : `float`
        Matched-filter SNR a peak must reach.
    mask_levels : `tuple` [`tuple` [`float`, `float`], ...]
        ``(snr, grow)`` pairs: pixels whose PSF-filter SNR exceeds ``snr``
        are masked as sources, grown by ``grow`` PSF sigmas. Brighter
        sources get wider masks, for their PSF wings; the first level
        masks a faint trail only where noise lifts it past that SNR.
    min_coverage : `float`
        Kernel weight (``sum(w k^2)`` relative to its unmasked value) a
        position needs; less-covered positions are not searched.
    max_candidates : `int`
        Most candidates kept per image (highest SNR first).
    bin_min_sigma, bin_min_length_fwhm : `float`
        Kernels at least ``bin_min_length_fwhm`` PSF FWHM long search
        2 x 2 binned data when the PSF sigma is at least ``bin_min_sigma``
        pixels (four times fewer pixels, a few per cent of SNR lost).
    remove_patterns : `bool`
        Subtract column and row medians first (`remove_line_patterns`).
    spare_elongation : `float` or `None`
        Footprints of the faintest mask level with at least this axis
        ratio are left unmasked there: where noise lifts a faint trail past
        the detection threshold, its footprints follow the trail.
    spare_max_snr : `float`
        Only footprints whose peak PSF-filter SNR is below this are spared
        (bright trails are the network's; elongated galaxies stay masked).
    normalize_noise : `bool`
        Divide each kernel's SNR map by its robust scatter over the image
        (1.4826 times its median absolute deviation), so that the threshold
        means the same for every kernel where the noise is not white (the
        convolved template of a difference image, residual background) or
        the variance plane is off.
    """

    lengths_fwhm: tuple[float, ...] = (5.0, 10.0, 20.0)
    angle_step_sigma: float = 1.0
    threshold: float = 5.0
    mask_levels: tuple[tuple[float, float], ...] = ((5.0, 1.0), (30.0, 3.0), (300.0, 8.0))
    min_coverage: float = 0.5
    max_candidates: int = 200
    bin_min_sigma: float = 1.2
    bin_min_length_fwhm: float = 8.0
    remove_patterns: bool = True
    spare_elongation: float | None = None
    spare_max_snr: float = 8.0
    normalize_noise: bool = False

    @classmethod
    def from_dict(cls, values: dict) -> LineSearchConfig:
        """From `to_dict`'s output (a model's metadata); unknown keys are refused."""
        from ..settings import check_known_fields

        check_known_fields(cls, values, "line search")
        values = dict(values)
        if "lengths_fwhm" in values:
            values["lengths_fwhm"] = tuple(float(v) for v in values["lengths_fwhm"])
        if "mask_levels" in values:
            values["mask_levels"] = tuple((float(a), float(b)) for a, b in values["mask_levels"])
        return cls(**values)

    def to_dict(self) -> dict:
        """JSON-able settings."""
        out = dataclasses.asdict(self)
        out["lengths_fwhm"] = list(self.lengths_fwhm)
        out["mask_levels"] = [list(level) for level in self.mask_levels]
        return out

    def __post_init__(self):
        if not self.lengths_fwhm or min(self.lengths_fwhm) <= 0:
            raise ValueError(f"line search lengths must be positive, not {self.lengths_fwhm}.")
        if not self.mask_levels or any(len(level) != 2 or min(level) < 0 for level in self.mask_levels):
            raise ValueError(
                f"line search mask_levels must be (snr, grow) pairs of non-negative numbers, not "
                f"{self.mask_levels}."
            )
        for name in ("angle_step_sigma", "threshold", "min_coverage"):
            if not getattr(self, name) > 0:
                raise ValueError(f"line search {name} must be positive, not {getattr(self, name)}.")
        if not self.min_coverage <= 1:
            raise ValueError(f"line search min_coverage must be at most 1, not {self.min_coverage}.")


@dataclasses.dataclass
class LineSearchResult:
    """What `line_search` returns.

    Attributes
    ----------
    candidates : `list` [`~.postprocess.TrailCandidate`]
        One per peak, with the matched-filter SNR in ``line_snr``.
    snr : `numpy.ndarray`
        Highest matched-filter SNR over kernels at each pixel (float32).
    masked : `numpy.ndarray`
        The source mask used (boolean).
    use : `numpy.ndarray`
        The pixels searched: usable and not masked (boolean).
    cleaned : `numpy.ndarray`
        The image searched (`remove_line_patterns` applied; 0 outside
        ``use``).
    """

    candidates: list
    snr: np.ndarray
    masked: np.ndarray
    use: np.ndarray | None = None
    cleaned: np.ndarray | None = None


def _elongated(
    above: np.ndarray, snr: np.ndarray, min_elongation: float, min_pixels: int, max_snr: float
) -> np.ndarray:
    """Pixels of the components of ``above`` that are elongated (axis ratio of their second moments)
    and faint (peak ``snr`` below ``max_snr``).
    """
    labels, n = ndimage.label(above, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros(above.shape, dtype=bool)
    index = np.arange(1, n + 1)
    yy, xx = np.indices(above.shape, dtype=float)
    count = ndimage.sum_labels(above, labels, index)
    sx, sy = ndimage.sum_labels(xx, labels, index), ndimage.sum_labels(yy, labels, index)
    sxx, syy = ndimage.sum_labels(xx * xx, labels, index), ndimage.sum_labels(yy * yy, labels, index)
    sxy = ndimage.sum_labels(xx * yy, labels, index)
    mx, my = sx / count, sy / count
    cxx, cyy, cxy = sxx / count - mx * mx, syy / count - my * my, sxy / count - mx * my
    half_trace, det = 0.5 * (cxx + cyy), cxx * cyy - cxy * cxy
    root = np.sqrt(np.maximum(half_trace**2 - det, 0.0))
    major, minor = half_trace + root, np.maximum(half_trace - root, 1.0 / 12.0)
    peak = np.asarray(ndimage.maximum(snr, labels, index))
    keep = (np.sqrt(major / minor) >= min_elongation) & (count >= min_pixels) & (peak < max_snr)
    lookup = np.zeros(n + 1, dtype=bool)
    lookup[1:] = keep
    return lookup[labels]


def source_mask(
    image: np.ndarray,
    variance: np.ndarray,
    good: np.ndarray,
    psf_sigma: float,
    levels: tuple[tuple[float, float], ...],
    spare_elongation: float | None = None,
    spare_max_snr: float = 10.0,
) -> np.ndarray:
    """Pixels of sources: the union over ``(snr, grow)`` levels of PSF-filter SNR above ``snr``.

    Each level's pixels are grown by ``grow`` PSF sigmas. With
    ``spare_elongation``, footprints of the faintest level whose axis ratio
    reaches it and whose peak SNR stays below ``spare_max_snr`` (a faint
    trail lifted past that level by noise, not a star or a galaxy) are not
    masked at that level.
    """
    from ..simulation.stack_detection import _dilate_disc, psf_filter_snr

    snr, _ = psf_filter_snr(image, variance, psf_sigma, bad=~good)
    masked = np.zeros(image.shape, dtype=bool)
    faintest = min(threshold for threshold, _ in levels)
    for threshold, grow in levels:
        above = snr > threshold
        if threshold == faintest and spare_elongation is not None and above.any():
            min_pixels = int(math.ceil(2.0 * math.pi * psf_sigma**2))
            above &= ~_elongated(above, snr, spare_elongation, min_pixels, spare_max_snr)
        if above.any():
            masked |= _dilate_disc(above, grow * psf_sigma)
    return masked


def segment_kernel(length: float, angle: float, psf_sigma: float, factor: int = 1) -> np.ndarray:
    """Unit-flux image of a centred segment of ``length`` at ``angle`` (radians from +x towards +y).

    Odd-sized, centred, with `~.postprocess.trail_model`'s profile; values
    under 1e-6 of the peak are set to zero. With ``factor`` > 1 the kernel
    is on ``factor`` x ``factor`` blocks of pixels (lengths still in
    pixels), each the mean of the profile over the block's pixels, centred
    on the block holding the segment's centre.
    """
    half = int(math.ceil((0.5 * length + 4.0 * psf_sigma) / factor))
    offsets = (np.arange(factor) - 0.5 * (factor - 1)).astype(float)
    blocks = np.arange(-half, half + 1, dtype=float) * factor
    # Pixel centres of every block: (rows, cols) of blocks times factor**2 sub-pixels.
    ys = (blocks[:, None] + offsets[None, :]).ravel()
    yy, xx = np.meshgrid(ys, ys, indexing="ij")
    dx, dy = 0.5 * length * math.cos(angle), 0.5 * length * math.sin(angle)
    fine = trail_model(xx, yy, -dx, -dy, dx, dy, psf_sigma)
    n = 2 * half + 1
    kernel = fine.reshape(n, factor, n, factor).mean(axis=(1, 3))
    kernel[kernel < 1e-6 * kernel.max()] = 0.0
    return kernel


def _angles(length: float, psf_sigma: float, step_sigma: float) -> np.ndarray:
    step = 2.0 * step_sigma * psf_sigma / max(length, 1.0)
    n = max(int(math.ceil(math.pi / step)), 4)
    return np.arange(n) * (math.pi / n)


def _bin_factor(length: float, psf_sigma: float, config: LineSearchConfig) -> int:
    """Block size of the search for a kernel length: 2 where the PSF and the kernel are large enough."""
    long_enough = length >= config.bin_min_length_fwhm * 2.3548 * psf_sigma
    return 2 if psf_sigma >= config.bin_min_sigma and long_enough else 1


def _bin(array: np.ndarray, factor: int) -> np.ndarray:
    """Sums over ``factor`` x ``factor`` blocks (the array padded with zeros to a multiple)."""
    if factor == 1:
        return array
    h, w = array.shape
    hp, wp = -(-h // factor) * factor, -(-w // factor) * factor
    padded = np.zeros((hp, wp), dtype=array.dtype)
    padded[:h, :w] = array
    return padded.reshape(hp // factor, factor, wp // factor, factor).sum(axis=(1, 3))


class _Scale:
    """The weighted data and weights of one binning, Fourier-transformed once for all its kernels."""

    def __init__(self, data: np.ndarray, weight: np.ndarray, factor: int, max_half: int, workers: int):
        self.factor, self.workers = factor, workers
        self.data, self.weight = _bin(data, factor), _bin(weight, factor)
        self.max_half = max_half
        self.fft_shape = tuple(fft.next_fast_len(n + 2 * max_half + 1, real=True) for n in self.data.shape)
        self.data_f = fft.rfft2(self.data, self.fft_shape, workers=workers)
        self.weight_f = fft.rfft2(self.weight, self.fft_shape, workers=workers)
        positive = self.weight[self.weight > 0]
        self.typical_weight = float(np.median(positive)) if positive.size else np.inf

    def snr(self, kernel: np.ndarray, min_coverage: float) -> np.ndarray:
        """Matched-filter SNR of ``kernel`` at every (binned) pixel; 0 where too little is covered."""
        half = kernel.shape[0] // 2
        if half > self.max_half:
            raise ValueError(f"kernel half-size {half} exceeds the scale's padding {self.max_half}.")
        h, w = self.data.shape
        crop = (slice(half, half + h), slice(half, half + w))
        shape, workers = self.fft_shape, self.workers
        # Single precision throughout (the data are float32): half the time of double-precision FFTs.
        kernel = kernel.astype(np.float32)
        num = fft.irfft2(self.data_f * fft.rfft2(kernel, shape, workers=workers), shape, workers=workers)
        den = fft.irfft2(
            self.weight_f * fft.rfft2(kernel * kernel, shape, workers=workers), shape, workers=workers
        )
        num, den = num[crop], den[crop]
        covered = den >= min_coverage * self.typical_weight * float(np.sum(kernel * kernel))
        snr = np.zeros(self.data.shape, dtype=np.float32)
        np.divide(num, np.sqrt(np.maximum(den, 1e-30)), out=snr, where=covered, casting="unsafe")
        return snr


def robust_scatter(snr: np.ndarray, stride: int = 5) -> float:
    """1.4826 times the median absolute deviation of the non-zero values of an SNR map (1 if none).

    Every ``stride``-th pixel of each axis is used: the scatter of a map
    smoothed by a kernel needs no more.
    """
    values = snr[::stride, ::stride]
    values = values[values != 0]
    if values.size < 100:
        return 1.0
    scatter = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    return scatter if scatter > 0 else 1.0


def remove_line_patterns(image: np.ndarray, use: np.ndarray, min_pixels: int = 64) -> np.ndarray:
    """The image less the median of each column's, then each row's, usable pixels.

    Column and row offsets (amplifier and readout patterns, uncorrected bad
    columns) are straight lines to a segment matched filter; a trail adds
    little to the median of a whole column. Columns or rows with fewer
    than ``min_pixels`` usable pixels keep their values.
    """
    import warnings

    out = np.where(use, image, np.nan).astype(np.float32)
    for axis in (0, 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: their offset is 0 below
            offsets = np.nanmedian(out, axis=axis)
        offsets = np.where((use.sum(axis=axis) >= min_pixels) & np.isfinite(offsets), offsets, 0.0)
        out -= (offsets[None, :] if axis == 0 else offsets[:, None]).astype(np.float32)
    return np.where(use, out, 0.0).astype(np.float32)


def _fit_pieces_with_plane(
    candidate: TrailCandidate,
    image: np.ndarray,
    variance: np.ndarray,
    use: np.ndarray,
    psf_sigma: float,
    n_pieces: int,
    half_width_sigma: float,
    min_pixels: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Fluxes of ``n_pieces`` equal pieces of a segment and a local plane, by weighted least squares.

    The design is the unit-flux `~.postprocess.trail_model` of each piece
    (PSF width) and a plane ``b0 + b1 d + b2 s`` (``d`` and ``s`` across and
    along the segment), over the pixels within ``half_width_sigma`` PSF
    sigmas of it that ``use`` allows. Returns the coefficients and their
    covariance (pieces first), or None with fewer than ``min_pixels``
    pixels or a singular fit.
    """
    from .postprocess import _segment_frame, segment_band

    c = candidate
    half = half_width_sigma * psf_sigma + 1.0
    box, inside = segment_band(image.shape, c.x_start, c.y_start, c.x_end, c.y_end, half, extend=half)
    sel = inside & use[box]
    if sel.sum() < min_pixels:
        return None
    yy, xx = np.mgrid[box[0], box[1]]
    px, py = xx[sel].astype(float), yy[sel].astype(float)
    dx, dy = (c.x_end - c.x_start) / n_pieces, (c.y_end - c.y_start) / n_pieces
    ends = [(c.x_start + k * dx, c.y_start + k * dy) for k in range(n_pieces)] + [(c.x_end, c.y_end)]
    pieces = [trail_model(px, py, *ends[k], *ends[k + 1], psf_sigma) for k in range(n_pieces)]
    length, _, _, along, across = _segment_frame(px, py, c.x_start, c.y_start, c.x_end, c.y_end)
    design = np.column_stack(
        pieces + [np.ones_like(px), across / half, (along - 0.5 * length) / max(length + 2 * half, 1.0)]
    )
    inv_sigma = 1.0 / np.sqrt(variance[box][sel].astype(float))
    a = design * inv_sigma[:, None]
    b = image[box][sel].astype(float) * inv_sigma
    try:
        cov = np.linalg.inv(a.T @ a)
    except np.linalg.LinAlgError:
        return None
    return cov @ (a.T @ b), cov


def segment_snr(
    candidate: TrailCandidate,
    image: np.ndarray,
    variance: np.ndarray,
    use: np.ndarray,
    psf_sigma: float,
    half_width_sigma: float = 6.0,
) -> float:
    """SNR of a segment's flux fitted with a local plane background on the usable pixels near it.

    A weighted linear least-squares fit of ``A T + b0 + b1 d + b2 s`` (``T``
    the unit-flux `~.postprocess.trail_model` with the PSF width, ``d`` and
    ``s`` across and along the segment) to the pixels within
    ``half_width_sigma`` PSF sigmas of it that ``use`` allows; the SNR of
    ``A``. The plane takes up the smooth light of a galaxy or a star's wings
    beside the segment, which a plain matched filter counts as trail flux.
    NaN with too few pixels.
    """
    fit = _fit_pieces_with_plane(candidate, image, variance, use, psf_sigma, 1, half_width_sigma, 16)
    if fit is None:
        return float("nan")
    coef, cov = fit
    err = math.sqrt(cov[0, 0]) if cov[0, 0] > 0 else float("nan")
    return float(coef[0] / err) if err > 0 else float("nan")


def segment_chunk_snr(
    candidate: TrailCandidate,
    image: np.ndarray,
    variance: np.ndarray,
    use: np.ndarray,
    psf_sigma: float,
    chunk_fwhm: float = 2.0,
    half_width_sigma: float = 6.0,
) -> float:
    """SNR of a segment's flux without its most significant piece.

    The segment is cut into pieces about ``chunk_fwhm`` PSF FWHM long, and
    the flux of each is fitted with one shared local plane background (as in
    `segment_snr`). The summed flux of all pieces but the one with the
    highest SNR, over its error (covariances included), is this SNR. A
    trail's flux is spread evenly along it, so dropping one of ``n`` pieces
    costs it a factor of about ``sqrt((n - 1) / n)``; a line that passes
    through one faint source, or along the edge of a star's or galaxy's
    light, loses most of its signal. NaN with fewer than two pieces or too
    few pixels.
    """
    n = int(candidate.length // (chunk_fwhm * 2.3548 * psf_sigma))
    if n < 2:
        return float("nan")
    fit = _fit_pieces_with_plane(candidate, image, variance, use, psf_sigma, n, half_width_sigma, 8 * n)
    if fit is None:
        return float("nan")
    flux, cov = fit[0][:n], fit[1][:n, :n]
    err = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    if not np.all(err > 0):
        return float("nan")
    keep = np.ones(n, dtype=bool)
    keep[int(np.argmax(flux / err))] = False
    total = float(np.sum(flux[keep]))
    total_err = math.sqrt(max(float(np.sum(cov[np.ix_(keep, keep)])), 0.0))
    return total / total_err if total_err > 0 else float("nan")


def extend_segment(
    candidate: TrailCandidate,
    image: np.ndarray,
    variance: np.ndarray,
    use: np.ndarray,
    psf_sigma: float,
    max_evaluations: int = 200,
) -> tuple[TrailCandidate, float]:
    """Move a segment's ends along its line to where `segment_snr` is highest.

    Each end in turn is moved out or in by a step (four PSF FWHM, then two,
    one and a half) while the SNR rises; at most ``max_evaluations`` trial
    segments in all.

    Returns
    -------
    candidate : `~.postprocess.TrailCandidate`
        A copy with the new ends.
    snr : `float`
        Its `segment_snr`.
    """
    c = dataclasses.replace(candidate)
    best = segment_snr(c, image, variance, use, psf_sigma)
    if not np.isfinite(best):
        return c, best
    h, w = image.shape
    steps = 0
    fwhm = 2.3548 * psf_sigma
    for step in (4.0 * fwhm, 2.0 * fwhm, fwhm, 0.5 * fwhm):
        improved = True
        while improved and steps < max_evaluations:
            improved = False
            for end in (0, 1):
                for sign in (1.0, -1.0):
                    length = c.length
                    if length <= 0:
                        break
                    ux, uy = (c.x_end - c.x_start) / length, (c.y_end - c.y_start) / length
                    trial = dataclasses.replace(c)
                    move = sign * step
                    if end == 0:
                        trial.x_start, trial.y_start = c.x_start - move * ux, c.y_start - move * uy
                    else:
                        trial.x_end, trial.y_end = c.x_end + move * ux, c.y_end + move * uy
                    if trial.length < 2.3548 * psf_sigma or not (
                        -0.5 <= min(trial.x_start, trial.x_end)
                        and max(trial.x_start, trial.x_end) <= w - 0.5
                        and -0.5 <= min(trial.y_start, trial.y_end)
                        and max(trial.y_start, trial.y_end) <= h - 0.5
                    ):
                        continue
                    value = segment_snr(trial, image, variance, use, psf_sigma)
                    steps += 1
                    if value > best:
                        c, best, improved = trial, value, True
                        break
    return c, best


def line_search(
    image: np.ndarray,
    variance: np.ndarray,
    psf_sigma: float,
    *,
    good: np.ndarray | None = None,
    config: LineSearchConfig | None = None,
    workers: int = 1,
) -> LineSearchResult:
    """Find faint straight trails with a source-masked segment matched filter.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        Background-subtracted image and its variance.
    psf_sigma : `float`
        Gaussian PSF sigma in pixels.
    good : `numpy.ndarray`, optional
        Usable pixels (default: finite with positive variance).
    config : `LineSearchConfig`, optional
    workers : `int`, optional
        Threads of the FFTs.

    Returns
    -------
    result : `LineSearchResult`
    """
    config = config if config is not None else LineSearchConfig()
    image = np.asarray(image, dtype=np.float32)
    variance = np.asarray(variance, dtype=np.float32)
    if image.shape != variance.shape or image.ndim != 2:
        raise ValueError(f"image {image.shape} and variance {variance.shape} must be 2-D of one shape.")
    if not (np.isfinite(psf_sigma) and psf_sigma > 0):
        raise ValueError(f"the PSF sigma must be a positive number of pixels, not {psf_sigma}.")
    ok = np.isfinite(image) & np.isfinite(variance) & (variance > 0)
    good = ok if good is None else (np.asarray(good, dtype=bool) & ok)
    fwhm = 2.3548 * psf_sigma
    masked = source_mask(
        np.where(good, image, 0.0),
        np.where(good, variance, 1.0),
        good,
        psf_sigma,
        config.mask_levels,
        config.spare_elongation,
        config.spare_max_snr,
    )
    use = good & ~masked
    if not use.any():
        return LineSearchResult(
            candidates=[], snr=np.zeros(image.shape, dtype=np.float32), masked=masked, use=use
        )
    weight = np.where(use, 1.0 / np.where(good, variance, 1.0), 0.0).astype(np.float32)
    if config.remove_patterns:
        cleaned = remove_line_patterns(image, use)
    else:
        cleaned = np.where(use, image, 0.0).astype(np.float32)
    data = (cleaned * weight).astype(np.float32)

    lengths = [lf * fwhm for lf in config.lengths_fwhm]
    best = np.zeros(image.shape, dtype=np.float32)
    best_kernel = np.full(image.shape, -1, dtype=np.int32)
    kernels = []
    h, w = image.shape
    for factor in sorted({_bin_factor(length, psf_sigma, config) for length in lengths}):
        bank = [
            (length, angle, segment_kernel(length, angle, psf_sigma, factor))
            for length in lengths
            if _bin_factor(length, psf_sigma, config) == factor
            for angle in _angles(length, psf_sigma, config.angle_step_sigma)
        ]
        scale = _Scale(data, weight, factor, max(k.shape[0] // 2 for _, _, k in bank), workers)
        scale_best = np.zeros(scale.data.shape, dtype=np.float32)
        scale_kernel = np.full(scale.data.shape, -1, dtype=np.int32)
        for length, angle, kernel in bank:
            snr = scale.snr(kernel, config.min_coverage)
            if config.normalize_noise:
                snr /= robust_scatter(snr)
            better = snr > scale_best
            scale_best[better] = snr[better]
            scale_kernel[better] = len(kernels)
            kernels.append((length, angle))
        if factor > 1:
            scale_best = np.repeat(np.repeat(scale_best, factor, axis=0), factor, axis=1)[:h, :w]
            scale_kernel = np.repeat(np.repeat(scale_kernel, factor, axis=0), factor, axis=1)[:h, :w]
        better = scale_best > best
        best[better] = scale_best[better]
        best_kernel[better] = scale_kernel[better]

    candidates = []
    above = best >= config.threshold
    labels, n = ndimage.label(above, structure=np.ones((3, 3), dtype=bool))
    if n:
        index = np.arange(1, n + 1)
        peaks = ndimage.maximum_position(best, labels, index)
        peak_values = np.asarray(ndimage.maximum(best, labels, index))
        order = np.argsort(-peak_values)[: config.max_candidates]
        objects = ndimage.find_objects(labels)
        for k in order:
            py, px = peaks[k]
            length, angle = kernels[best_kernel[py, px]]
            ux, uy = math.cos(angle), math.sin(angle)
            # The component runs along the trail as far as the kernel finds it; its extent along the
            # peak kernel's direction gives the trail's, from which the kernel's half-length is taken.
            slc = objects[k]
            sub = labels[slc] == k + 1
            ys, xs = np.nonzero(sub)
            ys, xs = ys + slc[0].start, xs + slc[1].start
            s = (xs - px) * ux + (ys - py) * uy
            lo = min(float(s.min()) - 0.25 * length, -0.5 * length)
            hi = max(float(s.max()) + 0.25 * length, 0.5 * length)
            candidate = TrailCandidate(
                x_start=px + lo * ux,
                y_start=py + lo * uy,
                x_end=px + hi * ux,
                y_end=py + hi * uy,
                pixels_y=ys,
                pixels_x=xs,
                weights=best[ys, xs].astype(float),
                max_probability=float("nan"),
                origin="line",
                line_snr=float(peak_values[k]),
            )
            candidates.append(candidate)
    return LineSearchResult(candidates=candidates, snr=best, masked=masked, use=use, cleaned=cleaned)
