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


"""PSF matching and subtraction of a template from a science image.

Both images are calibrated (nJy) on the same pixel grid. The sharper of the
two (by their PSF models) is convolved to the other's PSF: the template, as
the stack's default ``convolveTemplate`` mode, or the science image when the
template is the broader one. The matching kernel is fitted on the pixels
around bright, isolated stars, as a free pixel kernel with a constant
background (the delta-function basis of Bramich 2008), so that it takes up
what Gaussian PSF models leave out; with too few such stars it falls back
to the Gaussian of width ``sqrt(sigma_broad**2 - sigma_sharp**2)``. What the
kernel cannot match (a PSF that varies over the detector, noise in the fit,
registration errors, proper motions) stays in the difference image at
bright sources, as in real subtractions.
"""

from __future__ import annotations

__all__ = (
    "SubtractionResult",
    "apply_kernel",
    "convolve_gaussian",
    "fit_matching_kernel",
    "gaussian_kernel_1d",
    "kernel_stamp_centres",
    "subtract_images",
)

import dataclasses
import math

import numpy as np


def gaussian_kernel_1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Return a normalized, pixel-sampled 1-D Gaussian kernel.

    Parameters
    ----------
    sigma : `float`
        Width (pixels); 0 gives the identity kernel.
    truncate : `float`, optional
        Half-width of the kernel in sigmas.
    """
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"kernel sigma must be finite and not negative, not {sigma}.")
    if sigma == 0:
        return np.ones(1)
    half = max(int(math.ceil(truncate * sigma)), 1)
    x = np.arange(-half, half + 1, dtype=float)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def convolve_gaussian(image: np.ndarray, variance: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Convolve an image with a Gaussian and propagate its per-pixel variance.

    The variance of each output pixel is the sum of the input variances
    weighted by the squared kernel (the noise between pixels becomes
    correlated; that is not tracked). Non-finite pixels count as 0 in the
    image and the variance.

    Returns
    -------
    image, variance : `numpy.ndarray`
        The convolved image and its variance (float32).
    """
    from scipy.ndimage import correlate1d

    kernel = gaussian_kernel_1d(sigma)
    data = np.where(np.isfinite(image), image, 0.0).astype(np.float64)
    var = np.where(np.isfinite(variance), variance, 0.0).astype(np.float64)
    for axis in (0, 1):
        data = correlate1d(data, kernel, axis=axis, mode="nearest")
        var = correlate1d(var, kernel**2, axis=axis, mode="nearest")
    return data.astype(np.float32), var.astype(np.float32)


def _grow(bad: np.ndarray, radius: int) -> np.ndarray:
    """Grow a mask of missing pixels by the reach (pixels) of the convolution kernel."""
    if not bad.any():
        return bad
    from scipy.ndimage import binary_dilation

    return binary_dilation(bad, iterations=max(radius, 1))


def kernel_stamp_centres(
    reference: np.ndarray,
    reference_variance: np.ndarray,
    bad: np.ndarray,
    *,
    stamp_half: int,
    min_snr: float = 30.0,
    max_snr: float = 3000.0,
    max_stamps: int = 150,
    isolation: int | None = None,
) -> np.ndarray:
    """Choose the centres of the stamps a matching kernel is fitted on.

    Local maxima of the reference image's per-pixel SNR between ``min_snr``
    and ``max_snr`` whose stamp lies inside the image, touches no ``bad``
    pixel and holds no brighter peak; the brightest ``max_stamps`` are kept.

    Returns
    -------
    centres : `numpy.ndarray`
        ``(n, 2)`` integer ``(y, x)`` centres.
    """
    from scipy.ndimage import binary_dilation, maximum_filter

    isolation = stamp_half if isolation is None else isolation
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(np.isfinite(reference_variance) & (reference_variance > 0), reference, 0.0) / np.sqrt(
            np.where(reference_variance > 0, reference_variance, np.inf)
        )
    snr = np.nan_to_num(snr, nan=0.0, posinf=0.0, neginf=0.0)
    peaks = (snr == maximum_filter(snr, size=2 * isolation + 1)) & (snr >= min_snr) & (snr <= max_snr)
    ny, nx = snr.shape
    peaks[:stamp_half, :] = peaks[ny - stamp_half :, :] = False
    peaks[:, :stamp_half] = peaks[:, nx - stamp_half :] = False
    if bad.any():
        peaks &= ~binary_dilation(bad, iterations=stamp_half)
    ys, xs = np.nonzero(peaks)
    order = np.argsort(-snr[ys, xs])[:max_stamps]
    return np.stack([ys[order], xs[order]], axis=1)


def fit_matching_kernel(
    reference: np.ndarray,
    target: np.ndarray,
    target_variance: np.ndarray,
    centres: np.ndarray,
    *,
    kernel_half: int,
    stamp_half: int,
) -> tuple[np.ndarray, float]:
    """Fit the pixel kernel that takes ``reference`` to ``target`` around the given stamps.

    Minimizes the inverse-variance weighted squares of
    ``target - apply_kernel(reference, kernel) - background`` over the
    stamps' pixels, with every kernel pixel free (a linear least-squares
    problem).

    Returns
    -------
    kernel : `numpy.ndarray`
        ``(2 kernel_half + 1)`` square kernel (its sum is the flux ratio).
    background : `float`
        Constant difference of the two images' backgrounds.
    """
    size = 2 * kernel_half + 1
    n_par = size * size + 1
    normal = np.zeros((n_par, n_par))
    rhs = np.zeros(n_par)
    offsets = [
        (dy, dx) for dy in range(-kernel_half, kernel_half + 1) for dx in range(-kernel_half, kernel_half + 1)
    ]
    for cy, cx in centres:
        ys = slice(cy - stamp_half, cy + stamp_half + 1)
        xs = slice(cx - stamp_half, cx + stamp_half + 1)
        t = target[ys, xs].ravel().astype(np.float64)
        w = 1.0 / target_variance[ys, xs].ravel().astype(np.float64)
        columns = [
            reference[
                cy - stamp_half + dy : cy + stamp_half + 1 + dy,
                cx - stamp_half + dx : cx + stamp_half + 1 + dx,
            ]
            .ravel()
            .astype(np.float64)
            for dy, dx in offsets
        ]
        design = np.stack(columns + [np.ones_like(t)], axis=1)
        weighted = design * w[:, None]
        normal += design.T @ weighted
        rhs += weighted.T @ t
    solution = np.linalg.solve(normal, rhs)
    # The kernel is applied as a correlation: model(y, x) = sum k[dy, dx] reference(y + dy, x + dx).
    return solution[:-1].reshape(size, size), float(solution[-1])


def apply_kernel(
    image: np.ndarray, variance: np.ndarray, kernel: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a matching kernel (as `fit_matching_kernel` returns it) to an image and its variance.

    Returns
    -------
    image, variance : `numpy.ndarray`
        ``sum k[dy, dx] image(y + dy, x + dx)`` and the variance weighted
        by the squared kernel (float32); non-finite pixels count as 0.
    """
    from scipy.signal import fftconvolve

    data = np.where(np.isfinite(image), image, 0.0).astype(np.float32)
    var = np.where(np.isfinite(variance), variance, 0.0).astype(np.float32)
    flipped = kernel[::-1, ::-1].astype(np.float32)
    out = fftconvolve(data, flipped, mode="same")
    out_var = fftconvolve(var, flipped**2, mode="same")
    return out.astype(np.float32), np.maximum(out_var, 0.0).astype(np.float32)


@dataclasses.dataclass
class SubtractionResult:
    """A difference image and what went into it."""

    difference: np.ndarray
    """Science minus the PSF-matched template (nJy), float32."""
    variance: np.ndarray
    """Per-pixel variance of the difference (nJy^2), float32; NaN where either input has none."""
    psf_sigma: float
    """Gaussian sigma (pixels) of the difference image's PSF."""
    kernel_sigma: float
    """Sigma (pixels) of the Gaussian matching kernel."""
    convolved: str
    """Which image was convolved: ``"template"``, ``"science"`` or ``"none"``."""
    n_stamps: int = 0
    """Star stamps the pixel kernel was fitted on (0: the Gaussian of the PSF models was used)."""
    background: float = 0.0
    """Constant background term of the kernel fit that was removed (nJy)."""


def subtract_images(
    science: np.ndarray,
    science_variance: np.ndarray,
    science_psf_sigma: float,
    template: np.ndarray,
    template_variance: np.ndarray,
    template_psf_sigma: float,
    *,
    bad: np.ndarray | None = None,
    fit_kernel: bool = True,
    min_stamps: int = 8,
) -> SubtractionResult:
    """Subtract a template from a science image after matching their PSFs.

    Parameters
    ----------
    science, science_variance : `numpy.ndarray`
        Science image and variance (calibrated, same units as the template).
    science_psf_sigma : `float`
        Gaussian sigma (pixels) of the science image's PSF model.
    template, template_variance : `numpy.ndarray`
        Template image and variance on the science image's pixel grid.
    template_psf_sigma : `float`
        Gaussian sigma (pixels) of the template's PSF model.
    bad : `numpy.ndarray`, optional
        Pixels (saturated, defects, cosmic rays) no kernel stamp may touch.
    fit_kernel : `bool`, optional
        Fit a pixel kernel on bright stars (default) or use the Gaussian of
        the two PSF models.
    min_stamps : `int`, optional
        Fewest star stamps a kernel fit needs; with fewer the Gaussian is used.

    Returns
    -------
    result : `SubtractionResult`
    """
    science = np.asarray(science)
    template = np.asarray(template)
    if science.ndim != 2 or science.shape != template.shape:
        raise ValueError(
            f"science image {science.shape} and template {template.shape} must be 2-D arrays of one shape."
        )
    for name, value in (("science", science_variance), ("template", template_variance)):
        if np.shape(value) != science.shape:
            raise ValueError(f"{name} variance {np.shape(value)} does not match the images {science.shape}.")
    for name, value in (("science", science_psf_sigma), ("template", template_psf_sigma)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} PSF sigma must be positive and finite, not {value}.")
    if bad is not None and np.shape(bad) != science.shape:
        raise ValueError(f"bad-pixel mask {np.shape(bad)} does not match the images {science.shape}.")
    gap = science_psf_sigma**2 - template_psf_sigma**2
    kernel_sigma = math.sqrt(abs(gap))
    bad_science = ~np.isfinite(science_variance)
    bad_template = ~np.isfinite(template_variance)
    # A fitted kernel can also sharpen a little, so the deep (less noisy) template is
    # the one convolved unless the science image is clearly the sharper.
    if gap >= 0 or (fit_kernel and science_psf_sigma >= 0.9 * template_psf_sigma):
        convolved, psf = "template", float(science_psf_sigma)
        reference, reference_var, target, target_var = template, template_variance, science, science_variance
    else:
        convolved, psf = "science", float(template_psf_sigma)
        reference, reference_var, target, target_var = science, science_variance, template, template_variance
    n_stamps, background = 0, 0.0
    kernel = None
    if fit_kernel:
        kernel_half = int(np.clip(math.ceil(2.5 * max(science_psf_sigma, template_psf_sigma)), 3, 10))
        stamp_half = 2 * kernel_half + 2
        excluded = bad_science | bad_template
        if bad is not None:
            excluded = excluded | np.asarray(bad, dtype=bool)
        centres = kernel_stamp_centres(
            reference, reference_var, excluded, stamp_half=stamp_half + kernel_half
        )
        if len(centres) >= min_stamps:
            kernel, background = fit_matching_kernel(
                reference, target, target_var, centres, kernel_half=kernel_half, stamp_half=stamp_half
            )
            n_stamps = len(centres)
            kernel_sigma = _kernel_sigma(kernel)
    if kernel is None:
        if kernel_sigma < 1e-3:
            matched_ref, matched_ref_var = (
                np.asarray(reference, np.float32),
                np.asarray(reference_var, np.float32),
            )
            convolved = "none"
        else:
            matched_ref, matched_ref_var = convolve_gaussian(reference, reference_var, kernel_sigma)
    else:
        matched_ref, matched_ref_var = apply_kernel(reference, reference_var, kernel)
    # How far a missing pixel spreads: the Gaussian's 4 sigmas, or the fitted kernel's half-size.
    reach = int(math.ceil(4 * kernel_sigma)) if kernel is None else kernel.shape[0] // 2
    if convolved == "template":
        bad_template = _grow(bad_template, reach)
        difference = science - matched_ref - background
        variance = science_variance + matched_ref_var
    elif convolved == "science":
        bad_science = _grow(bad_science, reach)
        difference = matched_ref - template + background
        variance = matched_ref_var + template_variance
    else:
        difference = science - template
        variance = science_variance + template_variance
    invalid = bad_science | bad_template
    difference = np.asarray(difference, dtype=np.float32)
    variance = np.asarray(variance, dtype=np.float32)
    variance[invalid] = np.nan
    difference[invalid] = 0.0
    return SubtractionResult(
        difference=difference,
        variance=variance,
        psf_sigma=psf,
        kernel_sigma=kernel_sigma,
        convolved=convolved,
        n_stamps=n_stamps,
        background=background,
    )


def _kernel_sigma(kernel: np.ndarray) -> float:
    """Second-moment Gaussian width (pixels) of a matching kernel."""
    half = kernel.shape[0] // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    total = kernel.sum()
    if not total > 0:
        return float("nan")
    var = float((kernel * (x**2 + y**2)).sum() / total) / 2.0
    return math.sqrt(max(var, 0.0))
