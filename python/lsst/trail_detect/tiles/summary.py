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

"""Summary of training-tile shards for people."""

from __future__ import annotations

__all__ = ("summarize_tiles",)

import numpy as np


def summarize_tiles(repo: str, collection: str, dataset_type: str = "trail_training_tiles") -> str:
    """Return per-split counts of the tiles of ``dataset_type`` in ``collection``."""
    from lsst.daf.butler import Butler

    butler = Butler.from_config(repo, collections=collection)
    refs = butler.query_datasets(dataset_type, limit=None)
    counts: dict[str, dict[str, int]] = {}
    size_mb = 0.0
    tile = None
    for ref in refs:
        shard = butler.get(ref)
        tile = shard.tile_size
        size_mb += float(butler.getURI(ref).size()) / 1e6
        for split in np.unique(shard.tiles["split"]):
            rows = shard.tiles["split"] == split
            c = counts.setdefault(str(split), {"shards": 0, "tiles": 0, "trail": 0, "missed": 0})
            c["shards"] += 1
            c["tiles"] += int(rows.sum())
            if "has_trail" in shard.tiles:
                c["trail"] += int(np.sum(shard.tiles["has_trail"][rows]))
                c["missed"] += int(np.sum(shard.tiles["stack_detected"][rows] == 0))
            elif "n_stars" in shard.tiles:
                c["trail"] += int(np.sum(shard.tiles["n_stars"][rows]))
    stars = dataset_type.startswith("star")
    head = f"{'split':>10} {'shards':>6} {'tiles':>6} "
    lines = [
        f"{len(refs)} {dataset_type} shards, {tile} px tiles, {size_mb:.1f} MB in all",
        head + (f"{'stars':>6}" if stars else f"{'trail':>6} {'stack missed':>12}"),
    ]
    for split in ("train", "validation", "test"):
        c = counts.get(split, {"shards": 0, "tiles": 0, "trail": 0, "missed": 0})
        row = f"{split:>10} {c['shards']:>6} {c['tiles']:>6} {c['trail']:>6}"
        lines.append(row if stars else row + f" {c['missed']:>12}")
    if stars:
        lines.append("stars: target stars (PSF SNR >= nu_min), summed over tiles (overlaps count twice).")
    else:
        lines.append(
            "trail: tiles holding truth trail pixels; stack missed: tiles whose brightest trail the "
            "stack-like 5-sigma detection did not find (oversampled in training)."
        )
    return "\n".join(lines)
