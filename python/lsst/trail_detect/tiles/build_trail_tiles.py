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

"""buildTrailTiles: cut injected visit images into HDF5 training shards."""

from __future__ import annotations

__all__ = ("BuildTrailTilesConfig", "BuildTrailTilesConnections", "BuildTrailTilesTask")

import dataclasses

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from .tiling_config import TilingConfig


class BuildTrailTilesConnections(
    pipeBase.PipelineTaskConnections, dimensions=("instrument", "visit", "detector")
):
    """Connections of `BuildTrailTilesTask`."""

    exposure = cT.Input(
        doc="Image with injected trails.",
        name="injected_visit_image",
        storageClass="VisitImage",
        dimensions=("instrument", "visit", "detector"),
    )
    catalog = cT.Input(
        doc="Truth of the injected trails.",
        name="injected_visit_image_catalog",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )
    trail_mask = cT.Input(
        doc="Truth pixels of the injected trails (the label).",
        name="injected_trail_mask",
        storageClass="MaskV2",
        dimensions=("instrument", "visit", "detector"),
    )
    injected_sources = cT.Input(
        doc="Stack-like detections on the injected image.",
        name="injected_source",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )
    sources = cT.Input(
        doc="Stack-like detections on the image before injection.",
        name="source",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )
    tiles = cT.Output(
        doc="HDF5 shard of training tiles (normalized image, trail mask, weights, metadata, split).",
        name="trail_training_tiles",
        storageClass="TileShard",
        dimensions=("instrument", "visit", "detector"),
    )


class BuildTrailTilesConfig(
    pipeBase.PipelineTaskConfig, TilingConfig, pipelineConnections=BuildTrailTilesConnections
):
    """Configuration of `BuildTrailTilesTask`."""

    background_fraction = pexConfig.Field[float](doc="Fraction of trail-free tiles kept.", default=0.1)
    missed_weight = pexConfig.Field[float](
        doc="Sampling weight of tiles whose brightest trail the stack-like detection missed (others 1).",
        default=3.0,
    )
    detected_weight = pexConfig.Field[float](doc="Loss weight of real-source (DETECTED) pixels.", default=0.5)
    seed = pexConfig.Field[int](doc="Seed of the background-tile choice, with the data ID.", default=0)


class BuildTrailTilesTask(pipeBase.PipelineTask):
    """Cut an injected visit image into normalized training tiles.

    Every tile crossed by a trail is kept, with a configurable fraction of
    trail-free tiles; tiles whose brightest trail the stack-like detection
    missed get a larger ``sample_weight``. Inputs are normalized per
    detector; labels are the truth trail mask; weights are 0 on bad pixels
    and reduced on real sources. The (visit, detector) goes to one split,
    recorded in the shard.
    """

    ConfigClass = BuildTrailTilesConfig
    _DefaultName = "buildTrailTiles"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        outputs = self.run(**inputs, visit=int(data_id["visit"]), detector=int(data_id["detector"]))
        butlerQC.put(outputs, outputRefs)

    def run(self, exposure, catalog, trail_mask, injected_sources, sources, visit: int, detector: int):
        """Build the shard of one detector.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``tiles`` (`~lsst.trail_detect.tiles.shard.TileShard`).
        """
        from .. import __version__
        from ..imageutils import any_plane, mask_planes
        from .shard import TileShard
        from .tiling import assign_split, build_trail_tiles, new_detections

        c = self.config
        planes = mask_planes(exposure)
        bad = any_plane(planes, c.bad_planes, exposure.image.array.shape)
        label = trail_mask.get("TRAIL")
        rng = np.random.default_rng([c.seed, visit, detector])
        tiles, norm = build_trail_tiles(
            exposure.image.array,
            exposure.variance.array,
            bad=bad,
            detected=planes.get("DETECTED", bad & False),
            label=label,
            catalog=catalog,
            new_sources=new_detections(injected_sources, sources),
            rng=rng,
            tile=c.tile_size,
            overlap=c.overlap,
            normalization=c.normalization,
            clip=(c.clip_min, c.clip_max),
            background_fraction=c.background_fraction,
            missed_weight=c.missed_weight,
            detected_weight=c.detected_weight,
        )
        split = assign_split(visit, detector, tuple(c.split_fractions), c.split_seed)
        n = len(tiles["x0"])
        key = f"{visit}:{detector}"
        meta = {name: tiles[name] for name in tiles if name not in ("inputs", "weights", "mask")}
        meta.update(
            visit=np.full(n, visit, dtype=np.int64),
            detector=np.full(n, detector, dtype=np.int64),
            split=np.full(n, split),
        )
        shard = TileShard(
            kind="trail",
            inputs=tiles["inputs"],
            weights=tiles["weights"],
            targets={"mask": tiles["mask"]},
            tiles=meta,
            tile_size=c.tile_size,
            overlap=c.overlap,
            normalization={key: dataclasses.asdict(norm)},
            provenance={
                "data_ids": [{"visit": visit, "detector": detector}],
                "seed": c.seed,
                "split_seed": c.split_seed,
                "split_fractions": list(c.split_fractions),
                "package_version": __version__,
                "task": "buildTrailTiles",
                "config": {k: v for k, v in c.toDict().items() if k != "connections"},
            },
            splits={key: split},
        )
        n_trail = int(np.sum(tiles["has_trail"]))
        missed = int(np.sum(tiles["stack_detected"] == 0))
        self.log.info(
            "%d tiles (%d with trails, %d whose trail the stack missed) -> %s split.",
            n,
            n_trail,
            missed,
            split,
        )
        return pipeBase.Struct(tiles=shard)
