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

__all__ = ("LineSearchConfig", "LineSearchResult", "line_search", "segment_kernel", "source_mask")

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
    """

    lengths_fwhm: tuple[float, ...] = (5.0, 10.0, 20.0)
    angle_step_sigma: float = 1.0
    threshold: float = 5.5
    mask_levels: tuple[tuple[float, float], ...] = ((5.0, 1.0), (30.0, 3.0), (300.0, 8.0))
    min_coverage: float = 0.5
    max_candidates: int = 200
    bin_min_sigma: float = 1.2
    bin_min_length_fwhm: float = 8.0

    @classmethod
    def from_dict(cls, values: dict) -> LineSearchConfig:
        """From `to_dict`'s output (a model's metadata); unknown keys are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown line search settings {sorted(unknown)}; known: {sorted(known)}.")
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
    """

    candidates: list
    snr: np.ndarray
    masked: np.ndarray


def source_mask(
    image: np.ndarray,
    variance: np.ndarray,
    good: np.ndarray,
    psf_sigma: float,
    levels: tuple[tuple[float, float], ...],
) -> np.ndarray:
    """Pixels of sources: the union over ``(snr, grow)`` levels of PSF-filter SNR above ``snr``.

    Each level's pixels are grown by ``grow`` PSF sigmas.
    """
    from ..simulation.stack_detection import _dilate_disc, psf_filter_snr

    snr, _ = psf_filter_snr(image, variance, psf_sigma, bad=~good)
    masked = np.zeros(image.shape, dtype=bool)
    for threshold, grow in levels:
        above = snr > threshold
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


def _filter(
    data: np.ndarray,
    weight: np.ndarray,
    length: float,
    angle: float,
    psf_sigma: float,
    factor: int,
    config: LineSearchConfig,
    workers: int,
) -> np.ndarray:
    """Matched-filter SNR of one segment kernel over (binned) weighted data and weights."""
    kernel = segment_kernel(length, angle, psf_sigma, factor)
    half = kernel.shape[0] // 2
    h, w = data.shape
    shape = tuple(fft.next_fast_len(n + 2 * half + 1, real=True) for n in data.shape)
    num = fft.irfft2(
        fft.rfft2(data, shape, workers=workers) * fft.rfft2(kernel, shape, workers=workers),
        shape,
        workers=workers,
    )[half : half + h, half : half + w]
    den = fft.irfft2(
        fft.rfft2(weight, shape, workers=workers) * fft.rfft2(kernel * kernel, shape, workers=workers),
        shape,
        workers=workers,
    )[half : half + h, half : half + w]
    positive = weight[weight > 0]
    full = float(np.median(positive)) * float(np.sum(kernel * kernel)) if positive.size else np.inf
    covered = den >= config.min_coverage * full
    snr = np.zeros(data.shape, dtype=np.float32)
    np.divide(num, np.sqrt(np.maximum(den, 1e-30)), out=snr, where=covered, casting="unsafe")
    return snr


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
    )
    use = good & ~masked
    weight = np.where(use, 1.0 / np.where(good, variance, 1.0), 0.0).astype(np.float32)
    data = (np.where(use, image, 0.0) * weight).astype(np.float32)
    if not use.any():
        return LineSearchResult(candidates=[], snr=np.zeros(image.shape, dtype=np.float32), masked=masked)

    lengths = [lf * fwhm for lf in config.lengths_fwhm]
    best = np.zeros(image.shape, dtype=np.float32)
    best_kernel = np.full(image.shape, -1, dtype=np.int32)
    kernels = []
    for factor in sorted({_bin_factor(length, psf_sigma, config) for length in lengths}):
        scale_lengths = [length for length in lengths if _bin_factor(length, psf_sigma, config) == factor]
        binned_data, binned_weight = _bin(data, factor), _bin(weight, factor)
        for length in scale_lengths:
            for angle in _angles(length, psf_sigma, config.angle_step_sigma):
                kernels.append((length, angle))
                snr = _filter(binned_data, binned_weight, length, angle, psf_sigma, factor, config, workers)
                if factor > 1:
                    snr = np.repeat(np.repeat(snr, factor, axis=0), factor, axis=1)
                snr = snr[: image.shape[0], : image.shape[1]]
                better = snr > best
                best[better] = snr[better]
                best_kernel[better] = len(kernels) - 1

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
    return LineSearchResult(candidates=candidates, snr=best, masked=masked)
