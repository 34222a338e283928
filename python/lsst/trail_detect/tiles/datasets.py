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

"""PyTorch datasets over HDF5 tile shards, with augmentation and balanced sampling.

The shards are those written by `lsst.trail_detect.tiles.shard` (format
``lsst.trail_detect.tiles``, ``format_version`` 1)::

    /  attrs: format, format_version, kind ("trail" or "star"), tile_size, overlap, n_tiles,
              normalization (JSON), provenance (JSON), splits (JSON {"visit:detector": split})
    /inputs               float32 (N, C, H, W)
    /weights              float32 (N, H, W)
    /targets/mask         uint8 (N, H, W)            kind "trail"
    /targets/heatmap      float32 (N, H, W)          kind "star"
    /targets/offset       float32 (N, 2, H, W)       kind "star", (dx, dy)
    /targets/offset_mask  uint8 (N, H, W)            kind "star"
    /tiles/<column>       visit, detector, x0, y0, split, has_trail, ...

`TileDataset` reads only the small ``/tiles`` columns when it is built and
opens the files lazily, once per process, so that it can be handed to a
`torch.utils.data.DataLoader` with worker processes started by ``fork`` or
``spawn``. Every (visit, detector) must belong to one split only;
`check_disjoint_splits` enforces that before any training sees the data.

Conventions
-----------
Arrays are indexed ``[..., y, x]``: ``x`` is the last (column) axis and
``y`` the one before it. A star offset target holds ``(dx, dy)`` in its two
channels, the sub-pixel position of the source minus the index of the
peak pixel it is stored at, so that ``(x_peak + dx, y_peak + dy)`` is the
source position in the tile's pixel coordinates. `Augment` keeps that true
under its flips and 90-degree rotations.

This module does not import the Butler; ``h5py`` is imported only when a
file is read.
"""

from __future__ import annotations

__all__ = (
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SPLITS",
    "Augment",
    "SplitOverlapError",
    "TileDataset",
    "balanced_sampler",
    "check_disjoint_splits",
    "collate_tiles",
)

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data

from .h5io import open_shard_file

FORMAT_NAME = "lsst.trail_detect.tiles"
"""Value of the ``format`` root attribute of a tile shard."""

FORMAT_VERSION = 1
"""The ``format_version`` this module reads."""

SPLITS = ("train", "validation", "test")
"""The split names a tile may belong to."""

_TARGETS = {"trail": ("mask",), "star": ("heatmap", "offset", "offset_mask")}
_REQUIRED_COLUMNS = ("visit", "detector", "split")


class SplitOverlapError(ValueError):
    """Raised when a (visit, detector) belongs to more than one split."""


def _decode(value: Any) -> Any:
    """Turn an HDF5 attribute or scalar into a plain Python value."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, bytes):
            return value.decode()
    return value


def _str_column(column: np.ndarray) -> np.ndarray:
    """Return a string column (stored as bytes or str) as a numpy ``str`` array."""
    column = np.asarray(column)
    if column.dtype.kind == "S":
        return np.char.decode(column, "utf-8")
    if column.dtype.kind == "O":
        return np.array([_decode(v) for v in column], dtype=str)
    return column.astype(str)


def _read_json_attr(f: Any, name: str, path: str) -> Any:
    """Read a JSON root attribute, naming the file when it is unreadable."""
    if name not in f.attrs:
        return {}
    try:
        return json.loads(_decode(f.attrs[name]))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: root attribute {name!r} is not valid JSON ({err}).") from err


def _parse_key(key: str, path: str) -> tuple[int, int]:
    """Parse a ``"visit:detector"`` key."""
    try:
        visit, detector = key.split(":")
        return int(visit), int(detector)
    except ValueError as err:
        raise ValueError(f"{path}: bad 'visit:detector' key {key!r} in the splits attribute.") from err


def _read_tile_splits(f: Any, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read visit, detector and split of every tile of an open shard.

    The split comes from ``/tiles/split``, or from the root ``splits``
    attribute where that column is missing.
    """
    if "tiles" not in f or "visit" not in f["tiles"] or "detector" not in f["tiles"]:
        raise ValueError(f"{path}: the /tiles/visit and /tiles/detector columns are missing.")
    visit = np.asarray(f["tiles/visit"][()], dtype=np.int64)
    detector = np.asarray(f["tiles/detector"][()], dtype=np.int64)
    if len(visit) != len(detector):
        raise ValueError(f"{path}: /tiles/visit and /tiles/detector differ in length.")
    if "split" in f["tiles"]:
        split = _str_column(f["tiles/split"][()])
        if len(split) != len(visit):
            raise ValueError(f"{path}: /tiles/split has {len(split)} rows, not {len(visit)}.")
    else:
        splits = _read_json_attr(f, "splits", path)
        try:
            split = np.array([splits[f"{v}:{d}"] for v, d in zip(visit, detector)], dtype=str)
        except KeyError as err:
            raise ValueError(f"{path}: no /tiles/split column and no split for {err} in 'splits'.") from None
        split = split.reshape(len(visit))
    bad = sorted(set(split.tolist()) - set(SPLITS))
    if bad:
        raise ValueError(f"{path}: unknown split names {bad}; expected one of {SPLITS}.")
    return visit, detector, split


def check_disjoint_splits(paths: Iterable[str | os.PathLike]) -> dict[str, set[tuple[int, int]]]:
    """Check that no (visit, detector) belongs to more than one split.

    Only the ``/tiles/visit``, ``/tiles/detector`` and ``/tiles/split``
    columns and the root ``splits`` attribute of each shard are read.

    Parameters
    ----------
    paths : iterable of `str` or `os.PathLike`
        The HDF5 tile shards.

    Returns
    -------
    splits : `dict` [`str`, `set` [`tuple` [`int`, `int`]]]
        The (visit, detector) pairs of each split that occurs.

    Raises
    ------
    SplitOverlapError
        If a (visit, detector) is put in two splits, by the tiles of one or
        several shards or by a shard's ``splits`` attribute; the message
        names the pairs, their splits and the files.
    ValueError
        If a shard lacks the columns or holds an unknown split name.
    """
    seen: dict[tuple[int, int], dict[str, set[str]]] = {}
    for path in paths:
        path = os.fspath(path)
        with open_shard_file(path) as f:
            visit, detector, split = _read_tile_splits(f, path)
            pairs = {(int(v), int(d), str(s)) for v, d, s in zip(visit, detector, split)}
            for key, name in _read_json_attr(f, "splits", path).items():
                name = str(name)
                if name not in SPLITS:
                    raise ValueError(f"{path}: unknown split name {name!r} for {key!r} in 'splits'.")
                pairs.add((*_parse_key(key, path), name))
        for v, d, s in pairs:
            seen.setdefault((v, d), {}).setdefault(s, set()).add(path)

    overlaps = {pair: by_split for pair, by_split in seen.items() if len(by_split) > 1}
    if overlaps:
        lines = []
        for pair in sorted(overlaps):
            where = "; ".join(
                f"{name} in {', '.join(sorted(files))}" for name, files in sorted(overlaps[pair].items())
            )
            lines.append(f"  (visit, detector) = {pair}: {where}")
        raise SplitOverlapError(
            f"{len(overlaps)} (visit, detector) pair(s) belong to more than one split:\n" + "\n".join(lines)
        )
    result: dict[str, set[tuple[int, int]]] = {}
    for pair, by_split in seen.items():
        for name in by_split:
            result.setdefault(name, set()).add(pair)
    return result


def _apply_geometry(sample: dict[str, Any], flip_x: bool, flip_y: bool, k: int) -> dict[str, Any]:
    """Flip and rotate every spatial array of a sample of numpy arrays.

    The order is: flip x, flip y, then `numpy.rot90` by ``k`` quarter turns
    in the (y, x) plane. The ``offset`` vectors are transformed with the
    pixels.
    """
    out = dict(sample)
    for key, value in sample.items():
        if not isinstance(value, np.ndarray) or value.ndim < 2:
            continue
        a = value
        if flip_x:
            a = a[..., ::-1]
        if flip_y:
            a = a[..., ::-1, :]
        if k:
            a = np.rot90(a, k, axes=(-2, -1))
        if key == "offset":
            dx, dy = a[..., 0, :, :], a[..., 1, :, :]
            if flip_x:
                dx = -dx
            if flip_y:
                dy = -dy
            # One numpy.rot90 quarter turn maps (x, y) -> (y, W - 1 - x), so (dx, dy) -> (dy, -dx).
            for _ in range(k):
                dx, dy = dy, -dx
            a = np.stack([dx, dy], axis=-3)
        out[key] = np.ascontiguousarray(a)
    return out


class Augment:
    """Random augmentation of a tile sample.

    Parameters
    ----------
    flips : `bool`, optional
        Flip x and y, each with probability 1/2.
    rot90 : `bool`, optional
        Rotate by a random multiple of 90 degrees (only by 0 or 180
        degrees when the tile is not square).
    snr_scale : `tuple` [`float`, `float`] or `None`, optional
        Range of the signal-to-noise scale factor ``s``, drawn uniformly.
        The image is in noise units (unit noise standard deviation), so
        the signal is scaled by ``s`` while the noise stays at unit
        standard deviation with ``x' = s x + sqrt(1 - s**2) n``, where
        ``n`` is fresh unit Gaussian noise: a source of SNR ``nu`` becomes
        one of SNR ``s nu``. Requires ``0 < s <= 1``. `None` disables it.
    fresh_noise : `float`, optional
        Standard deviation of independent Gaussian noise added to every
        image pixel (0 disables it). This lowers the SNR of everything by
        ``sqrt(1 + fresh_noise**2)`` and makes the noise standard deviation
        no longer 1.
    p_snr_scale : `float`, optional
        Probability of applying the SNR scaling to a sample.
    seed : `int`, optional
        Seed of the generator used when `__call__` is given none; it is
        combined with the DataLoader worker id, so every worker draws a
        different, reproducible stream. `TileDataset` always passes a
        generator seeded from its seed, epoch and the item index instead.

    Notes
    -----
    Geometric transforms apply identically to the image, the weights and
    every target (any array of two or more dimensions, with the last two
    taken as y and x); the ``offset`` target's ``(dx, dy)`` vectors are
    rotated and reflected with the pixels. SNR scaling and fresh noise
    apply to ``image`` only. Samples may hold numpy arrays or torch
    tensors; the same types come back.
    """

    def __init__(
        self,
        flips: bool = True,
        rot90: bool = True,
        snr_scale: tuple[float, float] | None = (0.5, 1.0),
        fresh_noise: float = 0.0,
        p_snr_scale: float = 0.5,
        seed: int = 0,
    ):
        if snr_scale is not None:
            lo, hi = (float(s) for s in snr_scale)
            if not (0.0 < lo <= hi <= 1.0):
                raise ValueError(
                    f"snr_scale must be a range (lo, hi) with 0 < lo <= hi <= 1, not {snr_scale!r}: "
                    "scaling the signal up would need noise removed."
                )
            snr_scale = (lo, hi)
        if not (0.0 <= p_snr_scale <= 1.0):
            raise ValueError(f"p_snr_scale must be in [0, 1], not {p_snr_scale}.")
        if not (fresh_noise >= 0.0 and np.isfinite(fresh_noise)):
            raise ValueError(f"fresh_noise must be a finite number >= 0, not {fresh_noise}.")
        self.flips = bool(flips)
        self.rot90 = bool(rot90)
        self.snr_scale = snr_scale
        self.fresh_noise = float(fresh_noise)
        self.p_snr_scale = float(p_snr_scale)
        self.seed = int(seed)
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return (
            f"Augment(flips={self.flips}, rot90={self.rot90}, snr_scale={self.snr_scale}, "
            f"fresh_noise={self.fresh_noise}, p_snr_scale={self.p_snr_scale}, seed={self.seed})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_rng"] = None
        state["_rng_key"] = None
        return state

    def _default_rng(self) -> np.random.Generator:
        """Return this process's generator, seeded from ``seed`` and the worker id."""
        info = torch.utils.data.get_worker_info()
        worker = -1 if info is None else int(info.id)
        key = (os.getpid(), worker)
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([self.seed, worker + 1])
            self._rng_key = key
        return self._rng

    def transform(
        self, sample: Mapping[str, Any], flip_x: bool = False, flip_y: bool = False, k: int = 0
    ) -> dict[str, Any]:
        """Apply a given flip and rotation to a sample (no randomness).

        Parameters
        ----------
        sample : `dict` [`str`, `numpy.ndarray` or `torch.Tensor`]
            The sample.
        flip_x, flip_y : `bool`, optional
            Reverse the x (last) or y (second to last) axis.
        k : `int`, optional
            Number of `numpy.rot90` quarter turns in the (y, x) plane,
            applied after the flips; a pixel at ``(x, y)`` goes to
            ``(y, W - 1 - x)`` per turn.

        Returns
        -------
        sample : `dict`
            A new sample; the input is not changed.
        """
        arrays, tensors = self._to_numpy(sample)
        return self._from_numpy(_apply_geometry(arrays, bool(flip_x), bool(flip_y), int(k) % 4), tensors)

    def __call__(self, sample: Mapping[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Augment a sample.

        Parameters
        ----------
        sample : `dict` [`str`, `numpy.ndarray` or `torch.Tensor`]
            The sample, with ``image`` (C, H, W) and optionally ``weight``
            and targets.
        rng : `numpy.random.Generator`, optional
            Source of randomness; by default a per-worker generator
            seeded from ``seed``.

        Returns
        -------
        sample : `dict`
            A new, augmented sample; the input is not changed.
        """
        if rng is None:
            rng = self._default_rng()
        arrays, tensors = self._to_numpy(sample)
        image = arrays.get("image")
        square = image is None or image.shape[-1] == image.shape[-2]
        flip_x = flip_y = False
        k = 0
        if self.flips:
            flip_x, flip_y = (bool(b) for b in rng.integers(0, 2, size=2))
        if self.rot90:
            k = int(rng.integers(0, 4)) if square else 2 * int(rng.integers(0, 2))
        if flip_x or flip_y or k:
            arrays = _apply_geometry(arrays, flip_x, flip_y, k)
        if image is not None:
            image = arrays["image"]
            changed = False
            if self.snr_scale is not None and rng.random() < self.p_snr_scale:
                s = float(rng.uniform(*self.snr_scale))
                noise = rng.standard_normal(image.shape, dtype=np.float32)
                image = np.float32(s) * image + np.float32(np.sqrt(max(0.0, 1.0 - s * s))) * noise
                changed = True
            if self.fresh_noise > 0.0:
                noise = rng.standard_normal(image.shape, dtype=np.float32)
                image = image + np.float32(self.fresh_noise) * noise
                changed = True
            if changed:
                arrays["image"] = image.astype(np.float32, copy=False)
        return self._from_numpy(arrays, tensors)

    @staticmethod
    def _to_numpy(sample: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
        arrays: dict[str, Any] = {}
        tensors: set[str] = set()
        for key, value in sample.items():
            if isinstance(value, torch.Tensor):
                tensors.add(key)
                arrays[key] = value.detach().cpu().numpy() if value.ndim >= 2 else value
            else:
                arrays[key] = value
        return arrays, tensors

    @staticmethod
    def _from_numpy(arrays: dict[str, Any], tensors: set[str]) -> dict[str, Any]:
        return {
            key: torch.from_numpy(value) if key in tensors and isinstance(value, np.ndarray) else value
            for key, value in arrays.items()
        }


class TileDataset(torch.utils.data.Dataset):
    """Tiles of one split from a set of HDF5 tile shards.

    Parameters
    ----------
    paths : `str`, `os.PathLike` or sequence of them
        The shards; all must have the same ``kind`` and ``format_version``
        1.
    split : `str` or `None`, optional
        ``train``, ``validation`` or ``test``; `None` selects every tile.
    targets : sequence of `str`, optional
        Targets to return; by default all of the kind's (``mask`` for
        trail shards; ``heatmap``, ``offset`` and ``offset_mask`` for star
        shards).
    augment : callable, optional
        Called as ``augment(sample, rng=generator)`` on the numpy sample
        (for example an `Augment`); the generator is seeded from ``seed``,
        the epoch (`set_epoch`) and the item index, so the augmentation of
        an item does not depend on the DataLoader worker that reads it nor
        on the number of workers.
    seed : `int`, optional
        Seed of the augmentation randomness.
    check_splits : `bool`, optional
        Run `check_disjoint_splits` over ``paths`` first.

    Raises
    ------
    ValueError
        If a shard is not a version 1 tile shard, the kinds or tile shapes
        differ, a requested target is missing, or the split is unknown;
        the message names the file.
    SplitOverlapError
        If ``check_splits`` and a (visit, detector) is in two splits.

    Notes
    -----
    Building the dataset reads only the ``/tiles`` columns. Files are
    opened on first access, once per process (the handles are keyed by the
    process id and dropped when pickled), which makes the dataset safe in
    DataLoader workers started by ``fork`` or ``spawn``. Call `close` (or
    use the dataset as a context manager) to close the files in this
    process.

    Items are dicts of tensors: ``image`` (C, H, W) float32, ``weight``
    (H, W) float32, the targets as float32 (``mask``, ``heatmap``,
    ``offset_mask`` (H, W); ``offset`` (2, H, W)), ``index`` (the item's
    position in the dataset, `int`) and, where the shards say,
    ``has_trail`` (bool tensor).
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        split: str | None = "train",
        targets: Sequence[str] | None = None,
        augment: Callable[..., Mapping[str, Any]] | None = None,
        seed: int = 0,
        check_splits: bool = True,
    ):
        import h5py

        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        self._paths = [os.fspath(p) for p in paths]
        if not self._paths:
            raise ValueError("TileDataset needs at least one shard.")
        duplicated = sorted({p for p in self._paths if self._paths.count(p) > 1})
        if duplicated:
            raise ValueError(f"shards given more than once: {duplicated}.")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, not {split!r}.")
        self._split = split
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0

        kind = None
        shape = None
        columns: list[dict[str, np.ndarray]] = []
        file_index: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        self._normalization: dict = {}
        self._attrs: dict[str, Any] = {}
        for i, path in enumerate(self._paths):
            with open_shard_file(path) as f:
                fmt = _decode(f.attrs.get("format"))
                version = _decode(f.attrs.get("format_version"))
                if fmt != FORMAT_NAME:
                    raise ValueError(
                        f"{path}: not a tile shard (format attribute {fmt!r}, not {FORMAT_NAME!r})."
                    )
                if version != FORMAT_VERSION:
                    raise ValueError(
                        f"{path}: tile shard format_version {version!r} is not supported; this reads "
                        f"version {FORMAT_VERSION}."
                    )
                this_kind = _decode(f.attrs.get("kind"))
                if this_kind not in _TARGETS:
                    raise ValueError(f"{path}: unknown tile shard kind {this_kind!r}.")
                if kind is None:
                    kind = this_kind
                    self._normalization = _read_json_attr(f, "normalization", path)
                    self._attrs = {
                        "tile_size": _decode(f.attrs.get("tile_size")),
                        "overlap": _decode(f.attrs.get("overlap")),
                    }
                elif this_kind != kind:
                    raise ValueError(
                        f"{path}: shard kind {this_kind!r} differs from {kind!r} of {self._paths[0]}; "
                        "a dataset reads one kind of shard."
                    )
                for name in ("inputs", "weights"):
                    if name not in f:
                        raise ValueError(f"{path}: the /{name} dataset is missing.")
                this_shape = tuple(f["inputs"].shape[1:])
                n = int(f["inputs"].shape[0])
                if len(this_shape) != 3:
                    raise ValueError(f"{path}: /inputs must be (N, C, H, W), not {f['inputs'].shape}.")
                if shape is None:
                    shape = this_shape
                elif this_shape != shape:
                    raise ValueError(
                        f"{path}: tiles of shape {this_shape} differ from {shape} of {self._paths[0]}."
                    )
                if tuple(f["weights"].shape) != (n, *this_shape[1:]):
                    raise ValueError(
                        f"{path}: /weights has shape {f['weights'].shape}, not {(n, *this_shape[1:])}."
                    )
                wanted = _TARGETS[kind] if targets is None else tuple(targets)
                unknown = [t for t in wanted if t not in _TARGETS[kind]]
                if unknown:
                    raise ValueError(f"unknown targets {unknown} for {kind} shards; use {_TARGETS[kind]}.")
                for name in wanted:
                    if f"targets/{name}" not in f:
                        raise ValueError(f"{path}: the /targets/{name} dataset is missing.")
                visit, detector, split_column = _read_tile_splits(f, path)
                if len(visit) != n:
                    raise ValueError(f"{path}: /tiles has {len(visit)} rows but /inputs has {n} tiles.")
                cols = {
                    name: np.asarray(f["tiles"][name][()])
                    for name in f["tiles"]
                    if isinstance(f["tiles"][name], h5py.Dataset)
                }
                cols["visit"], cols["detector"], cols["split"] = visit, detector, split_column
                selected = np.arange(n) if split is None else np.flatnonzero(split_column == split)
                columns.append({name: col[selected] for name, col in cols.items() if len(col) == n})
                file_index.append(np.full(len(selected), i, dtype=np.int64))
                rows.append(selected.astype(np.int64))
        self._kind = kind
        self._shape = shape
        self._targets = _TARGETS[kind] if targets is None else tuple(targets)
        self._file = np.concatenate(file_index)
        self._row = np.concatenate(rows)
        common = set.intersection(*(set(c) for c in columns))
        self._columns = {
            name: np.concatenate([c[name] for c in columns])
            for name in sorted(common, key=self._column_order)
        }
        self._columns["split"] = _str_column(self._columns["split"])
        if "has_trail" in self._columns:
            self._has_trail: np.ndarray | None = self._columns["has_trail"].astype(bool)
        elif "n_trail_pixels" in self._columns:
            self._has_trail = self._columns["n_trail_pixels"] > 0
        else:
            self._has_trail = None
        if check_splits:
            check_disjoint_splits(self._paths)
        self._handles: dict[int, Any] = {}
        self._pid: int | None = None

    @staticmethod
    def _column_order(name: str) -> tuple[int, str]:
        order = ("visit", "detector", "x0", "y0", "split")
        return (order.index(name), name) if name in order else (len(order), name)

    def __len__(self) -> int:
        return len(self._row)

    def __repr__(self) -> str:
        return (
            f"TileDataset({len(self._paths)} shard(s), kind={self._kind!r}, split={self._split!r}, "
            f"n={len(self)})"
        )

    @property
    def kind(self) -> str:
        """Kind of the shards, ``trail`` or ``star`` (`str`)."""
        return self._kind

    @property
    def split(self) -> str | None:
        """Selected split, or `None` for all tiles."""
        return self._split

    @property
    def paths(self) -> list[str]:
        """Paths of the shards (`list` [`str`])."""
        return list(self._paths)

    @property
    def targets(self) -> tuple[str, ...]:
        """Names of the targets returned with each item."""
        return self._targets

    @property
    def tile_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of the image of an item."""
        return self._shape

    @property
    def normalization(self) -> dict:
        """The ``normalization`` root attribute of the first shard (`dict`)."""
        return self._normalization

    @property
    def tile_size(self) -> int | None:
        """The ``tile_size`` root attribute of the first shard."""
        return self._attrs.get("tile_size")

    @property
    def overlap(self) -> int | None:
        """The ``overlap`` root attribute of the first shard."""
        return self._attrs.get("overlap")

    @property
    def tile_meta(self) -> Any:
        """Metadata of the selected tiles, one row per item
        (`astropy.table.Table`).

        Columns: ``file`` (shard path), ``row`` (row in the shard) and
        every ``/tiles`` column present in all shards (``split`` as
        `str`).
        """
        from astropy.table import Table

        table = Table()
        table["file"] = np.array(self._paths, dtype=str)[self._file] if len(self) else np.array([], dtype=str)
        table["row"] = self._row
        for name, column in self._columns.items():
            table[name] = column
        return table

    @property
    def has_trail(self) -> np.ndarray:
        """Whether each item holds a trail (`numpy.ndarray` of `bool`).

        From the ``has_trail`` column, else from ``n_trail_pixels > 0``;
        all `False` for shards with neither (star shards).
        """
        if self._has_trail is None:
            return np.zeros(len(self), dtype=bool)
        return self._has_trail.copy()

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch mixed into the augmentation seed.

        With ``persistent_workers=False`` (the default) DataLoader workers
        receive a fresh copy of the dataset each epoch, so calling this
        before iterating changes the augmentations of that epoch.
        """
        self.epoch = int(epoch)

    def _open(self, i: int) -> Any:
        """Return the open h5py file of shard ``i`` in this process."""
        pid = os.getpid()
        if self._pid != pid:
            # Handles inherited through fork belong to the parent; never use (or close) them here.
            self._handles = {}
            self._pid = pid
        handle = self._handles.get(i)
        if handle is None:
            import h5py

            handle = h5py.File(self._paths[i], "r")
            self._handles[i] = handle
        return handle

    def close(self) -> None:
        """Close the files opened by this process."""
        if self._pid == os.getpid():
            for handle in self._handles.values():
                try:
                    handle.close()
                except Exception:  # pragma: no cover - closing at interpreter exit
                    pass
        self._handles = {}
        self._pid = None

    def __enter__(self) -> TileDataset:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def read_arrays(self, index: int) -> dict[str, np.ndarray]:
        """Read the numpy arrays of an item, without augmentation.

        Parameters
        ----------
        index : `int`
            Item index, ``0 <= index < len(self)`` (negative indices count
            from the end).

        Returns
        -------
        arrays : `dict` [`str`, `numpy.ndarray`]
            ``image``, ``weight`` and the targets, all float32.
        """
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} tiles.")
        index = int(index) % n
        f = self._open(int(self._file[index]))
        row = int(self._row[index])
        arrays = {
            "image": np.asarray(f["inputs"][row], dtype=np.float32),
            "weight": np.asarray(f["weights"][row], dtype=np.float32),
        }
        for name in self._targets:
            arrays[name] = np.asarray(f["targets"][name][row], dtype=np.float32)
        return arrays

    def item_rng(self, index: int) -> np.random.Generator:
        """Return the augmentation generator of an item.

        It is seeded from (``seed``, epoch, ``index``), so an item's
        augmentation is reproducible whatever worker reads it.
        """
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, int(index)]))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        index = int(index)
        if index < 0:
            index += len(self)
        sample: dict[str, Any] = self.read_arrays(index)
        if self.augment is not None:
            sample = dict(self.augment(sample, rng=self.item_rng(index)))
        item: dict[str, Any] = {
            key: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
            for key, value in sample.items()
            if isinstance(value, np.ndarray)
        }
        item.update({key: value for key, value in sample.items() if isinstance(value, torch.Tensor)})
        item["index"] = index
        if self._has_trail is not None:
            item["has_trail"] = torch.tensor(bool(self._has_trail[index]))
        return item


def balanced_sampler(
    dataset: TileDataset | Sequence[bool] | np.ndarray,
    positive_fraction: float = 0.5,
    num_samples: int | None = None,
    seed: int = 0,
    use_sample_weight: bool = True,
    tile_weights: np.ndarray | None = None,
) -> torch.utils.data.WeightedRandomSampler:
    """Make a sampler that draws tiles with a trail at a given rate.

    Parameters
    ----------
    dataset : `TileDataset` or array-like of `bool`
        The dataset (its `TileDataset.has_trail` is used) or the
        per-item positive flags.
    positive_fraction : `float`, optional
        Expected fraction of draws that are tiles with a trail.
    num_samples : `int`, optional
        Draws per epoch; by default the length of the dataset.
    seed : `int`, optional
        Seed of the sampler's generator.
    use_sample_weight : `bool`, optional
        Within each class, draw tiles in proportion to the shards'
        ``sample_weight`` column when the dataset has one (tiles whose trail
        the stack-like detection missed are oversampled); the class
        fractions are unchanged.
    tile_weights : `numpy.ndarray`, optional
        Further non-negative per-tile factors on the draw rates within each
        class (a curriculum, oversampling of some tiles); the class
        fractions are unchanged.

    Returns
    -------
    sampler : `torch.utils.data.WeightedRandomSampler`
        Draws with replacement; positives share the weight
        ``positive_fraction`` and negatives ``1 - positive_fraction``.

    Raises
    ------
    ValueError
        If the fraction is outside [0, 1] or asks for a class the data
        lack.
    """
    flags = np.asarray(dataset.has_trail if hasattr(dataset, "has_trail") else dataset, dtype=bool)
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], not {positive_fraction}.")
    n_pos = int(flags.sum())
    n_neg = len(flags) - n_pos
    if positive_fraction > 0 and n_pos == 0:
        raise ValueError("positive_fraction > 0 but no tile has a trail.")
    if positive_fraction < 1 and n_neg == 0:
        raise ValueError("positive_fraction < 1 but every tile has a trail.")
    within = np.ones(len(flags))
    meta = getattr(dataset, "tile_meta", None)
    if use_sample_weight and meta is not None and "sample_weight" in meta.colnames:
        within = np.asarray(meta["sample_weight"], dtype=float)
        if np.any(~np.isfinite(within) | (within < 0)):
            raise ValueError("sample_weight must be finite and non-negative.")
    if tile_weights is not None:
        extra = np.asarray(tile_weights, dtype=float)
        if extra.shape != flags.shape or np.any(~np.isfinite(extra) | (extra < 0)):
            raise ValueError(f"tile_weights must be {len(flags)} finite non-negative values.")
        within = within * extra
    pos_total = max(float(within[flags].sum()), 1e-300)
    neg_total = max(float(within[~flags].sum()), 1e-300)
    weights = np.where(
        flags, positive_fraction * within / pos_total, (1.0 - positive_fraction) * within / neg_total
    )
    if num_samples is None:
        num_samples = len(flags)
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return torch.utils.data.WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double), int(num_samples), replacement=True, generator=generator
    )


def collate_tiles(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate `TileDataset` items into a batch.

    Tensors of one shape are stacked, numbers become tensors (``index``
    an int64 tensor), and anything else (strings, tensors of differing
    shapes, `None`) is kept as a list.

    Parameters
    ----------
    batch : sequence of `dict`
        The items; all must have the same keys.

    Returns
    -------
    batch : `dict` [`str`, `torch.Tensor` or `list`]
        The batch.
    """
    if not batch:
        return {}
    keys = list(batch[0])
    for item in batch[1:]:
        if list(item) != keys and set(item) != set(keys):
            raise ValueError(f"items have different keys: {sorted(keys)} and {sorted(item)}.")
    out: dict[str, Any] = {}
    for key in keys:
        values = [item[key] for item in batch]
        if all(isinstance(v, torch.Tensor) for v in values):
            if len({tuple(v.shape) for v in values}) == 1:
                out[key] = torch.stack(values)
            else:
                out[key] = values
        elif all(isinstance(v, np.ndarray) for v in values) and len({v.shape for v in values}) == 1:
            out[key] = torch.from_numpy(np.stack(values))
        elif all(isinstance(v, bool | np.bool_) for v in values):
            out[key] = torch.tensor([bool(v) for v in values])
        elif all(isinstance(v, int | np.integer) for v in values):
            out[key] = torch.tensor([int(v) for v in values], dtype=torch.int64)
        elif all(isinstance(v, float | np.floating | int | np.integer) for v in values):
            out[key] = torch.tensor([float(v) for v in values], dtype=torch.float64)
        else:
            out[key] = values
    return out
