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

"""HDF5 tile shards: the in-memory type, its file layout and its Butler formatter.

File layout (``format_version`` 1)::

    /  attrs: format, format_version, kind ("trail" or "star"), tile_size, overlap, n_tiles,
              normalization (JSON), provenance (JSON), splits (JSON {"visit:detector": split})
    /inputs               float32 (N, C, H, W), one chunk per tile, gzip + shuffle
    /weights              float32 (N, H, W)
    /targets/<name>       per-kind targets: mask (uint8) for trails; heatmap (float32),
                          offset (float32, (N, 2, H, W)) and offset_mask (uint8) for stars
    /tiles/<column>       one value per tile: visit, detector, x0, y0, split, ...

Files are written to a temporary name and renamed, so a failed write
leaves nothing behind.
"""

from __future__ import annotations

__all__ = (
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "TileShard",
    "TileShardFormatter",
    "concatenate_shards",
    "read_shard",
    "write_shard",
)

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lsst.daf.butler import FormatterV2

from .h5io import open_shard_file

FORMAT_NAME = "lsst.trail_detect.tiles"
FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class TileShard:
    """Training tiles cut from one or more images.

    Attributes
    ----------
    kind : `str`
        ``trail`` or ``star``.
    inputs : `numpy.ndarray`
        Normalized images, float32 (N, C, H, W).
    weights : `numpy.ndarray`
        Per-pixel loss weights, float32 (N, H, W).
    targets : `dict` [`str`, `numpy.ndarray`]
        Per-pixel targets, first axis N.
    tiles : `dict` [`str`, `numpy.ndarray`]
        Per-tile metadata columns of length N (``visit``, ``detector``,
        ``x0``, ``y0``, ``split`` at least).
    tile_size, overlap : `int`
        Tiling parameters.
    normalization : `dict`
        The `~.normalization.Normalization` of each image, as a dict (one
        per ``"visit:detector"`` key).
    provenance : `dict`
        Data IDs, seeds, package version, configs.
    splits : `dict` [`str`, `str`]
        Split of each ``"visit:detector"``.
    """

    kind: str
    inputs: np.ndarray
    weights: np.ndarray
    targets: dict[str, np.ndarray]
    tiles: dict[str, np.ndarray]
    tile_size: int
    overlap: int
    normalization: dict = dataclasses.field(default_factory=dict)
    provenance: dict = dataclasses.field(default_factory=dict)
    splits: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def validate(self) -> None:
        """Check shapes and columns; raise `ValueError` naming what is wrong."""
        if self.kind not in ("trail", "star"):
            raise ValueError(f"tile shard kind must be 'trail' or 'star', not {self.kind!r}.")
        if self.inputs.ndim != 4:
            raise ValueError(f"inputs must be (N, C, H, W), not shape {self.inputs.shape}.")
        n, _, h, w = self.inputs.shape
        if self.weights.shape != (n, h, w):
            raise ValueError(f"weights must have shape {(n, h, w)}, not {self.weights.shape}.")
        for name, array in self.targets.items():
            if array.shape[0] != n or array.shape[-2:] != (h, w):
                raise ValueError(f"target {name!r} has shape {array.shape}, not (N={n}, ..., {h}, {w}).")
        for name in ("visit", "detector", "x0", "y0", "split"):
            if name not in self.tiles:
                raise ValueError(f"tile metadata column {name!r} is missing.")
        for name, column in self.tiles.items():
            if len(column) != n:
                raise ValueError(f"tile metadata column {name!r} has {len(column)} rows, not {n}.")
        bad = set(np.asarray(self.tiles["split"]).astype(str)) - set(SPLITS)
        if bad:
            raise ValueError(f"unknown split names {sorted(bad)}; use {SPLITS}.")

    def keys(self) -> list[str]:
        """Return the ``"visit:detector"`` keys of the tiles."""
        return sorted({f"{v}:{d}" for v, d in zip(self.tiles["visit"], self.tiles["detector"])})


def write_shard(
    shard: TileShard, path: str | os.PathLike, *, compression: str = "gzip", level: int = 4
) -> Path:
    """Write a shard to an HDF5 file (atomically: temporary file, then rename).

    Parameters
    ----------
    shard : `TileShard`
        The tiles.
    path : path-like
        Destination; an existing file is replaced only once the new one is
        complete.
    compression : `str`, optional
        h5py compression filter (``gzip`` or ``lzf``).
    level : `int`, optional
        gzip level.
    """
    import h5py

    from .. import __version__

    shard.validate()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    opts: dict[str, Any] = {"compression": compression, "shuffle": True}
    if compression == "gzip":
        opts["compression_opts"] = level
    n, c, h, w = shard.inputs.shape
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["kind"] = shard.kind
            f.attrs["tile_size"] = int(shard.tile_size)
            f.attrs["overlap"] = int(shard.overlap)
            f.attrs["n_tiles"] = n
            f.attrs["normalization"] = json.dumps(shard.normalization, sort_keys=True)
            provenance = dict(shard.provenance)
            provenance.setdefault("package_version", __version__)
            f.attrs["provenance"] = json.dumps(provenance, sort_keys=True, default=str)
            f.attrs["splits"] = json.dumps(shard.splits, sort_keys=True)
            chunk = (1, c, h, w) if n else None
            f.create_dataset(
                "inputs", data=shard.inputs.astype(np.float32), chunks=chunk, **(opts if n else {})
            )
            f.create_dataset(
                "weights",
                data=shard.weights.astype(np.float32),
                chunks=(1, h, w) if n else None,
                **(opts if n else {}),
            )
            targets = f.create_group("targets")
            for name, array in shard.targets.items():
                targets.create_dataset(
                    name, data=array, chunks=(1,) + array.shape[1:] if n else None, **(opts if n else {})
                )
            tiles = f.create_group("tiles")
            for name, column in shard.tiles.items():
                column = np.asarray(column)
                if column.dtype.kind == "U":
                    column = column.astype("S")
                tiles.create_dataset(name, data=column)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_shard(path: str | os.PathLike, *, rows: np.ndarray | slice | None = None) -> TileShard:
    """Read a shard (or some of its rows) from an HDF5 file.

    Raises
    ------
    ValueError
        If the file is not a tile shard of a supported version.
    """
    path = Path(path)
    with open_shard_file(path) as f:
        if f.attrs.get("format") != FORMAT_NAME:
            raise ValueError(f"{path} is not a {FORMAT_NAME} shard (format {f.attrs.get('format')!r}).")
        if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
            raise ValueError(
                f"{path} has format_version {f.attrs.get('format_version')}, not {FORMAT_VERSION}."
            )
        sel = slice(None) if rows is None else rows
        tiles = {}
        for name, dataset in f["tiles"].items():
            column = dataset[()][sel]
            if column.dtype.kind == "S":
                column = column.astype(str)
            tiles[name] = column
        return TileShard(
            kind=str(f.attrs["kind"]),
            inputs=f["inputs"][sel],
            weights=f["weights"][sel],
            targets={name: dataset[sel] for name, dataset in f["targets"].items()},
            tiles=tiles,
            tile_size=int(f.attrs["tile_size"]),
            overlap=int(f.attrs["overlap"]),
            normalization=json.loads(f.attrs["normalization"]),
            provenance=json.loads(f.attrs["provenance"]),
            splits=json.loads(f.attrs["splits"]),
        )


def concatenate_shards(shards: list[TileShard]) -> TileShard:
    """Join shards of one kind into one, refusing overlapping splits.

    Raises
    ------
    ValueError
        If the shards differ in kind, tile size, targets or normalization
        method, or a (visit, detector) is assigned to two splits.
    """
    if not shards:
        raise ValueError("no shards to concatenate.")
    first = shards[0]
    splits: dict[str, str] = {}
    for shard in shards:
        if (shard.kind, shard.tile_size, sorted(shard.targets)) != (
            first.kind,
            first.tile_size,
            sorted(first.targets),
        ):
            raise ValueError("cannot concatenate shards of different kinds, tile sizes or targets.")
        for key, split in shard.splits.items():
            if splits.setdefault(key, split) != split:
                raise ValueError(f"(visit:detector) {key} is in both the {splits[key]} and {split} splits.")
    methods = {n.get("method") for s in shards for n in s.normalization.values()}
    if len(methods) > 1:
        raise ValueError(f"cannot concatenate shards normalized differently ({sorted(methods)}).")
    columns = set.intersection(*(set(s.tiles) for s in shards))
    return TileShard(
        kind=first.kind,
        inputs=np.concatenate([s.inputs for s in shards]),
        weights=np.concatenate([s.weights for s in shards]),
        targets={name: np.concatenate([s.targets[name] for s in shards]) for name in first.targets},
        tiles={name: np.concatenate([np.asarray(s.tiles[name]) for s in shards]) for name in sorted(columns)},
        tile_size=first.tile_size,
        overlap=first.overlap,
        normalization={k: v for s in shards for k, v in s.normalization.items()},
        provenance={"sources": [s.provenance for s in shards]},
        splits=splits,
    )


class TileShardFormatter(FormatterV2):
    """Butler formatter reading and writing `TileShard` as HDF5."""

    default_extension = ".h5"
    supported_extensions = frozenset({".h5", ".hdf5"})
    can_read_from_local_file = True

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        # Docstring inherited.
        return read_shard(path)

    def write_local_file(self, in_memory_dataset: Any, uri) -> None:
        # Docstring inherited.
        write_shard(in_memory_dataset, uri.ospath)
