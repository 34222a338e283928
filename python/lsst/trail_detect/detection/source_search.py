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


"""The source search: every significant source of a difference image as a trail candidate.

On a difference image the static sky is gone, so a 5-sigma source is a
transient, an artefact (a cosmic ray the processing missed, a subtraction
residual at a star, a diffraction spike) or noise, and a short trail is
one of them: too short for the network, which finds no trail under about
10 pixels, it is a source of the difference image whose profile is a
PSF drawn out along a segment. Each footprint above the threshold of the
PSF-filtered SNR becomes a candidate, its segment is fitted, and its
calibrated score weighs the fit against what the artefacts look like: a
negative lobe beside it (a residual of a star that moved or was matched
imperfectly), a width below the PSF's (cosmic rays) or above it.
It is meant for difference images; on a calibrated visit image every
star and galaxy would be a candidate.
"""

from __future__ import annotations

__all__ = ("SourceSearchConfig", "SourceSearchResult", "source_search")

import dataclasses

import numpy as np
from scipy import ndimage

from .postprocess import component_lines


@dataclasses.dataclass
class SourceSearchConfig:
    """Parameters of `source_search`."""

    threshold: float = 5.0
    """PSF-filtered SNR a footprint's peak must reach."""
    footprint_threshold: float = 3.0
    """PSF-filtered SNR that bounds the footprints grown from the peaks above ``threshold``."""
    min_pixels: int = 3
    """Fewest pixels of a footprint above ``threshold``."""
    max_candidates: int = 3000
    """Most candidates kept per image, brightest peaks first."""
    dipole_radius_sigma: float = 3.0
    """The negative lobe is searched this many PSF sigmas around the footprint."""

    @classmethod
    def from_dict(cls, values: dict) -> SourceSearchConfig:
        """Build from a dict (e.g. a model's metadata), refusing unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown source search setting(s) {sorted(unknown)}; known: {sorted(names)}.")
        return cls(**values)

    def to_dict(self) -> dict:
        """Return a JSON-serializable dict."""
        return dataclasses.asdict(self)

    def __post_init__(self):
        if not self.threshold > 0:
            raise ValueError(f"source search threshold must be positive, not {self.threshold}.")
        if not 0 < self.footprint_threshold <= self.threshold:
            raise ValueError(
                f"footprint_threshold ({self.footprint_threshold}) must be positive and at most the "
                f"threshold ({self.threshold})."
            )
        if self.min_pixels < 1 or self.max_candidates < 1:
            raise ValueError("min_pixels and max_candidates must be at least 1.")
        if self.dipole_radius_sigma < 0:
            raise ValueError(f"dipole_radius_sigma must not be negative, not {self.dipole_radius_sigma}.")


@dataclasses.dataclass
class SourceSearchResult:
    """What `source_search` returns.

    Attributes
    ----------
    candidates : `list` [`~.postprocess.TrailCandidate`]
        One per footprint, with ``origin`` ``"source"``, ``peak_snr`` and
        ``negative_snr`` set.
    snr : `numpy.ndarray`
        PSF-filtered SNR map (float32).
    """

    candidates: list
    snr: np.ndarray


def source_search(
    image: np.ndarray,
    variance: np.ndarray,
    psf_sigma: float,
    *,
    good: np.ndarray,
    config: SourceSearchConfig | None = None,
) -> SourceSearchResult:
    """Turn the significant sources of a (difference) image into trail candidates.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        The image and its variance.
    psf_sigma : `float`
        Gaussian PSF sigma (pixels).
    good : `numpy.ndarray`
        Usable pixels.
    config : `SourceSearchConfig`, optional
        Parameters.

    Returns
    -------
    result : `SourceSearchResult`
    """
    from ..simulation.stack_detection import psf_filter_snr

    config = config or SourceSearchConfig()
    snr, _ = psf_filter_snr(image, variance, psf_sigma, bad=~good)
    snr = np.nan_to_num(snr, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    structure = np.ones((3, 3), dtype=bool)
    labels, n = ndimage.label(snr > config.footprint_threshold, structure=structure)
    if n == 0:
        return SourceSearchResult(candidates=[], snr=snr)
    index = np.arange(1, n + 1)
    peak = np.asarray(ndimage.maximum(snr, labels, index), dtype=float)
    above = np.asarray(ndimage.sum_labels(snr > config.threshold, labels, index), dtype=float)
    keep = (peak >= config.threshold) & (above >= config.min_pixels)
    order = np.argsort(-np.where(keep, peak, -np.inf))[: min(int(keep.sum()), config.max_candidates)]
    lookup = np.zeros(n + 1, dtype=np.int32)
    lookup[order + 1] = np.arange(1, len(order) + 1)
    kept_labels = lookup[labels]
    weights = np.clip(snr, 0.0, None)
    candidates = component_lines(kept_labels, len(order), weights, psf_sigma)
    objects = ndimage.find_objects(kept_labels)
    radius = int(np.ceil(config.dipole_radius_sigma * psf_sigma))
    height, width = snr.shape
    for candidate, slc, k in zip(candidates, objects, order):
        candidate.origin = "source"
        candidate.peak_snr = float(peak[k])
        ys = slice(max(slc[0].start - radius, 0), min(slc[0].stop + radius, height))
        xs = slice(max(slc[1].start - radius, 0), min(slc[1].stop + radius, width))
        candidate.negative_snr = float(snr[ys, xs].min())
        candidate.max_probability = 0.0
    return SourceSearchResult(candidates=candidates, snr=snr)
