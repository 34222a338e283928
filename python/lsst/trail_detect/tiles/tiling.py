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

"""Cutting images into training tiles, with labels, weights, metadata and splits."""

from __future__ import annotations

__all__ = (
    "assign_split",
    "build_trail_tiles",
    "cut_tiles",
    "new_detections",
    "reassemble",
    "tile_origins",
    "trails_in_tiles",
    "weight_map",
)

import hashlib
import math

import numpy as np

from .normalization import Normalization, apply_normalization, fit_normalization


def tile_origins(length: int, tile: int, overlap: int) -> np.ndarray:
    """Return tile start positions covering ``[0, length)`` along one axis.

    Tiles step by ``tile - overlap``; the last one is moved back to end at
    the edge, so every pixel is covered and no tile sticks out. An axis
    shorter than a tile gets one tile at 0 (padded when cut).
    """
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile (tile={tile}, overlap={overlap}).")
    if length <= tile:
        return np.array([0])
    step = tile - overlap
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return np.array(starts)


def cut_tiles(array: np.ndarray, origins: list[tuple[int, int]], tile: int, fill: float = 0.0) -> np.ndarray:
    """Cut ``(y0, x0)`` tiles from an array whose last two axes are the image.

    Parts of a tile outside the array are filled with ``fill``.
    """
    height, width = array.shape[-2:]
    out = np.full((len(origins),) + array.shape[:-2] + (tile, tile), fill, dtype=array.dtype)
    for k, (y0, x0) in enumerate(origins):
        y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
        out[k, ..., : y1 - y0, : x1 - x0] = array[..., y0:y1, x0:x1]
    return out


def reassemble(tiles: np.ndarray, origins: list[tuple[int, int]], shape: tuple[int, int]) -> np.ndarray:
    """Put tiles back into an image, averaging where they overlap."""
    total = np.zeros(tiles.shape[1:-2] + tuple(shape), dtype=np.float64)
    count = np.zeros(shape, dtype=np.float64)
    tile = tiles.shape[-1]
    for k, (y0, x0) in enumerate(origins):
        y1, x1 = min(y0 + tile, shape[0]), min(x0 + tile, shape[1])
        total[..., y0:y1, x0:x1] += tiles[k, ..., : y1 - y0, : x1 - x0]
        count[y0:y1, x0:x1] += 1
    with np.errstate(invalid="ignore"):
        return total / count


def assign_split(
    visit: int, detector: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> str:
    """Assign a (visit, detector) to ``train``, ``validation`` or ``test``.

    Deterministic (a hash of seed, visit and detector mapped to [0, 1)), so
    every task and every rerun agrees, and disjoint by construction.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
        raise ValueError(f"split fractions {fractions} must be three non-negative numbers summing to 1.")
    digest = hashlib.sha256(f"{seed}:{visit}:{detector}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "validation"
    return "test"


def weight_map(
    shape: tuple[int, int],
    *,
    bad: np.ndarray | None = None,
    detected: np.ndarray | None = None,
    label: np.ndarray | None = None,
    detected_weight: float = 0.5,
) -> np.ndarray:
    """Per-pixel loss weights: 0 on bad pixels, ``detected_weight`` on real sources, 1 elsewhere.

    Label (trail) pixels keep weight 1 where they cross a real source; they
    get 0 only on bad pixels.
    """
    weights = np.ones(shape, dtype=np.float32)
    if detected is not None:
        weights[detected] = detected_weight
    if label is not None:
        weights[label] = 1.0
    if bad is not None:
        weights[bad] = 0.0
    return weights


def trails_in_tiles(catalog, origins: list[tuple[int, int]], tile: int) -> list[np.ndarray]:
    """Return, for each tile, the catalog rows whose (clipped) segment crosses it."""
    rows = []
    samples = []
    for k, row in enumerate(catalog):
        x0, y0 = row["x_start_clipped"], row["y_start_clipped"]
        x1, y1 = row["x_end_clipped"], row["y_end_clipped"]
        if row["injection_flag"] != 0 or not np.isfinite(x0):
            continue
        n = max(int(math.ceil(math.hypot(x1 - x0, y1 - y0))), 1) + 1
        t = np.linspace(0.0, 1.0, n)
        samples.append((k, x0 + t * (x1 - x0), y0 + t * (y1 - y0)))
    for y_origin, x_origin in origins:
        inside = [
            k
            for k, xs, ys in samples
            if np.any(
                (xs >= x_origin - 0.5)
                & (xs < x_origin + tile - 0.5)
                & (ys >= y_origin - 0.5)
                & (ys < y_origin + tile - 0.5)
            )
        ]
        rows.append(np.array(inside, dtype=int))
    return rows


def _stack_found(catalog, new_x: np.ndarray, new_y: np.ndarray, radius: float) -> np.ndarray:
    """Whether each trail has a new stack-like detection within ``radius`` of its segment."""
    from ..geometry import segment_distance

    found = np.zeros(len(catalog), dtype=bool)
    if len(new_x) == 0:
        return found
    for k, row in enumerate(catalog):
        if row["injection_flag"] != 0 or not np.isfinite(row["x_start_clipped"]):
            continue
        d = segment_distance(
            new_x,
            new_y,
            row["x_start_clipped"],
            row["y_start_clipped"],
            row["x_end_clipped"],
            row["y_end_clipped"],
        )
        found[k] = bool(np.any(d < radius))
    return found


def new_detections(injected_sources, sources, radius: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Positions of detections on the injected image with no counterpart before injection."""
    from scipy.spatial import cKDTree

    x = np.asarray(injected_sources["x"], dtype=float)
    y = np.asarray(injected_sources["y"], dtype=float)
    if len(sources) == 0 or len(x) == 0:
        return x, y
    tree = cKDTree(np.stack([np.asarray(sources["x"]), np.asarray(sources["y"])], axis=1))
    dist, _ = tree.query(np.stack([x, y], axis=1))
    keep = dist > radius
    return x[keep], y[keep]


def build_trail_tiles(
    image: np.ndarray,
    variance: np.ndarray,
    *,
    bad: np.ndarray,
    detected: np.ndarray,
    label: np.ndarray,
    catalog,
    new_sources: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
    tile: int = 256,
    overlap: int = 32,
    normalization: str = "robust",
    clip: tuple[float, float] = (-10.0, 50.0),
    background_fraction: float = 0.1,
    missed_weight: float = 3.0,
    detected_weight: float = 0.5,
    match_radius: float = 3.0,
) -> tuple[dict, Normalization]:
    """Cut one injected detector image into training tiles.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        The injected image and its variance.
    bad : `numpy.ndarray`
        Pixels with no usable data (weight 0, input 0).
    detected : `numpy.ndarray`
        Real-source footprints before injection (down-weighted).
    label : `numpy.ndarray`
        Truth trail pixels.
    catalog : `astropy.table.Table`
        ``injected_visit_image_catalog`` rows of this image.
    new_sources : `tuple` [`numpy.ndarray`, `numpy.ndarray`]
        (x, y) of stack-like detections that appeared with the injection.
    rng : `numpy.random.Generator`
        For the choice of background tiles.
    tile, overlap : `int`
        Tiling.
    normalization : `str`
        ``robust`` or ``variance`` (`~.normalization`).
    clip : `tuple`
        Clip range of the normalized image.
    background_fraction : `float`
        Fraction of tiles without a trail that are kept.
    missed_weight : `float`
        ``sample_weight`` of tiles whose brightest trail the stack-like
        detection missed (others have 1): samplers oversample them.
    detected_weight : `float`
        Loss weight of real-source pixels.
    match_radius : `float`
        A trail counts as found by the stack if a new detection lies within
        this many pixels of its segment.

    Returns
    -------
    tiles : `dict`
        ``inputs`` (N, 1, T, T), ``weights``, ``mask`` and the metadata
        columns ``x0``, ``y0``, ``has_trail``, ``n_trails``,
        ``n_trail_pixels``, ``max_nu_det``, ``max_nu_opt``,
        ``stack_detected``, ``sample_weight``.
    norm : `~.normalization.Normalization`
        How the image was normalized.
    """
    shape = image.shape
    norm = fit_normalization(image, bad, method=normalization, clip_min=clip[0], clip_max=clip[1])
    normalized = apply_normalization(image, norm, variance=variance, bad=bad)
    weights = weight_map(shape, bad=bad, detected=detected, label=label, detected_weight=detected_weight)
    ys, xs = tile_origins(shape[0], tile, overlap), tile_origins(shape[1], tile, overlap)
    origins = [(int(y), int(x)) for y in ys for x in xs]
    found = _stack_found(catalog, new_sources[0], new_sources[1], match_radius)
    members = trails_in_tiles(catalog, origins, tile)
    label_tiles = cut_tiles(label.astype(np.uint8), origins, tile)
    n_pixels = label_tiles.reshape(len(origins), -1).sum(axis=1)
    nu_det = np.asarray(catalog["nu_det"], dtype=float) if len(catalog) else np.zeros(0)
    nu_opt = np.asarray(catalog["nu_opt"], dtype=float) if len(catalog) else np.zeros(0)
    has_trail = np.array([len(m) > 0 for m in members]) & (n_pixels > 0)
    keep = has_trail | (rng.uniform(size=len(origins)) < background_fraction)
    index = np.nonzero(keep)[0]
    chosen = [origins[k] for k in index]
    columns = {
        "x0": np.array([o[1] for o in chosen], dtype=np.int32),
        "y0": np.array([o[0] for o in chosen], dtype=np.int32),
        "has_trail": has_trail[index],
        "n_trails": np.array([len(members[k]) for k in index], dtype=np.int32),
        "n_trail_pixels": n_pixels[index].astype(np.int32),
        "max_nu_det": np.full(len(index), np.nan, dtype=np.float32),
        "max_nu_opt": np.full(len(index), np.nan, dtype=np.float32),
        "stack_detected": np.full(len(index), -1, dtype=np.int8),
        "sample_weight": np.ones(len(index), dtype=np.float32),
    }
    for j, k in enumerate(index):
        rows = members[k]
        if len(rows) == 0 or not has_trail[k]:
            continue
        brightest = rows[np.nanargmax(nu_det[rows])]
        columns["max_nu_det"][j] = nu_det[brightest]
        columns["max_nu_opt"][j] = np.nanmax(nu_opt[rows])
        columns["stack_detected"][j] = int(found[brightest])
        if not found[brightest]:
            columns["sample_weight"][j] = missed_weight
    return {
        "inputs": cut_tiles(normalized, chosen, tile)[:, None],
        "weights": cut_tiles(weights, chosen, tile),
        "mask": label_tiles[index],
        **columns,
    }, norm
