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

"""Normalization of images for the networks, as plain documented functions.

Two methods, chosen by name and stored with every shard and model (so that
inference normalizes exactly as training did):

``robust``
    ``(image - b) / s`` with ``b`` the sigma-clipped median of the detector
    and ``s = 1.4826 * MAD`` of the clipped pixels: the noise in units of
    its robust standard deviation.
``variance``
    ``image / sqrt(variance)``: each pixel in units of its own noise
    (calibrated, background-subtracted images).

Both then clip to ``[clip_min, clip_max]`` and set bad pixels (NaN,
infinite, masked) to 0.
"""

from __future__ import annotations

__all__ = (
    "NORMALIZATION_METHODS",
    "Normalization",
    "apply_normalization",
    "fit_normalization",
    "robust_stats",
)

import dataclasses
import json

import numpy as np

NORMALIZATION_METHODS = ("robust", "variance")


@dataclasses.dataclass(frozen=True)
class Normalization:
    """How an image was normalized; serializable to JSON.

    Attributes
    ----------
    method : `str`
        ``robust`` or ``variance``.
    background, scale : `float`
        For ``robust``: the subtracted level and the divisor (image units).
    clip_min, clip_max : `float`
        Clip range after scaling.
    """

    method: str = "variance"
    background: float = 0.0
    scale: float = 1.0
    clip_min: float = -10.0
    clip_max: float = 50.0

    def __post_init__(self):
        if self.method not in NORMALIZATION_METHODS:
            raise ValueError(
                f"normalization method must be one of {NORMALIZATION_METHODS}, not {self.method!r}."
            )
        if not self.clip_min < self.clip_max:
            raise ValueError(f"clip_min {self.clip_min} must be below clip_max {self.clip_max}.")
        if self.method == "robust" and not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"robust normalization needs a positive scale, not {self.scale}.")

    def to_json(self) -> str:
        """Serialize to a JSON string."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> Normalization:
        """Read from a JSON string (or an already parsed dict)."""
        data = json.loads(text) if isinstance(text, str) else dict(text)
        return cls(**data)


def robust_stats(values: np.ndarray, nsigma: float = 3.0, iterations: int = 5) -> tuple[float, float]:
    """Return the sigma-clipped median and ``1.4826 * MAD`` of finite values.

    Clipping at ``nsigma`` about the median, repeated ``iterations`` times or
    until nothing changes.
    """
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    if data.size == 0:
        raise ValueError("no finite pixels to compute robust statistics from.")
    for _ in range(iterations):
        median = np.median(data)
        scale = 1.4826 * np.median(np.abs(data - median))
        if scale <= 0:
            break
        keep = np.abs(data - median) <= nsigma * scale
        if keep.all():
            break
        data = data[keep]
    median = float(np.median(data))
    return median, float(1.4826 * np.median(np.abs(data - median)))


def fit_normalization(
    image: np.ndarray,
    bad: np.ndarray | None = None,
    *,
    method: str = "variance",
    clip_min: float = -10.0,
    clip_max: float = 50.0,
    subsample: int = 4,
) -> Normalization:
    """Measure the normalization parameters of one detector image.

    Parameters
    ----------
    image : `numpy.ndarray`
        The image.
    bad : `numpy.ndarray`, optional
        Pixels to leave out of the statistics.
    method : `str`, optional
        ``robust`` or ``variance``.
    clip_min, clip_max : `float`, optional
        Clip range after scaling.
    subsample : `int`, optional
        Use every ``subsample``-th pixel in each direction for the
        statistics (speed; the statistics are robust).
    """
    if method == "variance":
        return Normalization("variance", 0.0, 1.0, clip_min, clip_max)
    values = image[::subsample, ::subsample]
    if bad is not None:
        values = values[~bad[::subsample, ::subsample]]
    background, scale = robust_stats(values)
    return Normalization(method, background, scale, clip_min, clip_max)


def apply_normalization(
    image: np.ndarray,
    norm: Normalization,
    *,
    variance: np.ndarray | None = None,
    bad: np.ndarray | None = None,
) -> np.ndarray:
    """Normalize an image; bad, NaN and infinite pixels become 0.

    Parameters
    ----------
    image : `numpy.ndarray`
        The image.
    norm : `Normalization`
        Parameters from `fit_normalization`.
    variance : `numpy.ndarray`, optional
        Needed for the ``variance`` method.
    bad : `numpy.ndarray`, optional
        Pixels to zero.

    Returns
    -------
    normalized : `numpy.ndarray`
        float32 array of the image's shape.
    """
    image = np.asarray(image, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        if norm.method == "variance":
            if variance is None:
                raise ValueError("the 'variance' normalization needs the variance plane.")
            out = image / np.sqrt(np.asarray(variance, dtype=np.float32))
        else:
            out = (image - np.float32(norm.background)) / np.float32(norm.scale)
    invalid = ~np.isfinite(out)
    if bad is not None:
        invalid |= bad
    np.clip(out, norm.clip_min, norm.clip_max, out=out)
    out[invalid] = 0.0
    return out
