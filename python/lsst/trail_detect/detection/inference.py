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

"""Whole-detector inference of a trail segmentation network.

The network sees overlapping tiles; their probabilities are blended with
weights that fall smoothly to (almost) zero at the tile edges, so no seam
appears where tiles meet and every pixel's value comes mostly from tiles
in which it lies far from an edge.
"""

from __future__ import annotations

__all__ = ("InferenceSettings", "blend_window", "predict_maps", "predict_probability", "resolve_device")

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..tiles.tiling import tile_origins

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """How a network is run over a whole detector.

    Attributes
    ----------
    tile : `int`
        Tile size in pixels (the networks are fully convolutional; tiles
        need not match the training tiles).
    overlap : `int`
        Overlap of neighbouring tiles in pixels; the blending window
        tapers over this width.
    batch_size : `int`
        Tiles per forward pass.
    device : `str`
        ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or
        ``cuda:N``.
    precision : `str`
        ``auto`` (bfloat16 autocast on CUDA, float32 on CPU), ``float32``
        or ``bfloat16``.
    threads : `int`
        torch CPU threads; 0 leaves torch's setting alone.
    """

    tile: int = 512
    overlap: int = 64
    batch_size: int = 4
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0

    def __post_init__(self):
        if self.tile < 16:
            raise ValueError(f"inference tile size must be at least 16 pixels, not {self.tile}.")
        if not 0 <= self.overlap < self.tile // 2:
            raise ValueError(f"tile overlap must be in [0, tile/2), not {self.overlap} (tile {self.tile}).")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be positive, not {self.batch_size}.")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"precision must be auto, float32 or bfloat16, not {self.precision!r}.")


def resolve_device(device: str = "auto"):
    """Return the `torch.device` for ``device`` (``auto``: CUDA if available)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available.")
    return resolved


def blend_window(height: int, width: int, taper: int) -> np.ndarray:
    """Return blending weights for one tile.

    The weight is 1 in the interior and follows ``sin^2`` down to nearly 0
    over ``taper`` pixels at each edge (evaluated at pixel centres, so no
    weight is exactly 0).

    Parameters
    ----------
    height, width : `int`
        Tile shape.
    taper : `int`
        Width of the tapered border.

    Returns
    -------
    window : `numpy.ndarray`
        float32 ``(height, width)``.
    """

    def ramp(n: int) -> np.ndarray:
        r = np.ones(n, dtype=np.float64)
        t = min(taper, n // 2)
        if t > 0:
            edge = np.sin(0.5 * math.pi * (np.arange(t) + 0.5) / t) ** 2
            r[:t] = edge
            r[n - t :] = edge[::-1]
        return r

    return np.outer(ramp(height), ramp(width)).astype(np.float32)


def _axis_origins(length: int, tile: int, overlap: int) -> np.ndarray:
    if length <= tile:
        return np.array([0])
    return tile_origins(length, tile, overlap)


def predict_maps(
    network: Any,
    normalized: np.ndarray,
    to_maps: Callable[[Any], Any],
    settings: InferenceSettings | None = None,
    *,
    progress: bool = False,
) -> np.ndarray:
    """Run a network over a whole image in overlapping tiles and blend its output maps.

    Parameters
    ----------
    network : `torch.nn.Module`
        In eval mode, on the device it should run on.
    normalized : `numpy.ndarray`
        The normalized image (bad pixels already set to 0), any size.
    to_maps : callable
        Turns the network's output for a batch into a float tensor
        ``(N, C, h, w)`` of the maps to blend (e.g. probabilities).
    settings : `InferenceSettings`, optional
        Tiling, batching and precision.
    progress : `bool`, optional
        Show a progress bar over the batches.

    Returns
    -------
    maps : `numpy.ndarray`
        float32 ``(C, H, W)``: every pixel the weighted mean of the tiles
        covering it, with the weights of `blend_window`.
    """
    import torch

    settings = settings or InferenceSettings()
    image = np.asarray(normalized, dtype=np.float32)
    if image.ndim != 2 or min(image.shape) == 0:
        raise ValueError(f"inference needs a non-empty 2-D image, not shape {image.shape}.")
    if not np.all(np.isfinite(image)):
        raise ValueError("the normalized image has NaN or infinite pixels; normalize it first.")
    height, width = image.shape
    tile_h, tile_w = min(settings.tile, height), min(settings.tile, width)
    ys = _axis_origins(height, tile_h, settings.overlap)
    xs = _axis_origins(width, tile_w, settings.overlap)
    origins = [(int(y), int(x)) for y in ys for x in xs]
    window = blend_window(tile_h, tile_w, settings.overlap)
    total = None
    weight = np.zeros((height, width), dtype=np.float32)

    try:
        device = next(network.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    precision = settings.precision
    if precision == "auto":
        precision = "bfloat16" if device.type == "cuda" else "float32"
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if precision == "bfloat16"
        else contextlib.nullcontext()
    )
    batches = [origins[k : k + settings.batch_size] for k in range(0, len(origins), settings.batch_size)]
    iterator = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc="inference", unit="batch", leave=False)
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    with torch.inference_mode(), autocast:
        for batch in iterator:
            stack = np.stack([image[y : y + tile_h, x : x + tile_w] for y, x in batch])[:, None]
            x_in = torch.from_numpy(stack).to(device, non_blocking=True)
            x_in = x_in.contiguous(memory_format=memory_format)
            maps = to_maps(network(x_in)).float().cpu().numpy()
            if total is None:
                total = np.zeros((maps.shape[1], height, width), dtype=np.float32)
            for (y, x), m in zip(batch, maps):
                total[:, y : y + tile_h, x : x + tile_w] += m * window
                weight[y : y + tile_h, x : x + tile_w] += window
    return total / weight


def predict_probability(
    network: Any,
    normalized: np.ndarray,
    settings: InferenceSettings | None = None,
    *,
    progress: bool = False,
) -> np.ndarray:
    """Run a segmentation network over a whole image.

    Parameters
    ----------
    network : `torch.nn.Module`
        Returns logits ``(N, 1, H, W)`` for inputs ``(N, 1, H, W)``; put it
        in eval mode (e.g. with
        `~lsst.trail_detect.models.networks.prepare_for_inference`) and on
        the device of ``settings``.
    normalized : `numpy.ndarray`
        The normalized image (bad pixels already set to 0), any size.
    settings : `InferenceSettings`, optional
        Tiling, batching, device and precision.
    progress : `bool`, optional
        Show a progress bar over the batches.

    Returns
    -------
    probability : `numpy.ndarray`
        float32 array of the image's shape with values in [0, 1].
    """
    import torch

    probability = predict_maps(
        network, normalized, lambda logits: torch.sigmoid(logits[:, :1].float()), settings, progress=progress
    )[0]
    np.clip(probability, 0.0, 1.0, out=probability)
    return probability
