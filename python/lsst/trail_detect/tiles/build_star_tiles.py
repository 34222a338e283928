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

"""buildStarTiles: cut simulated star fields into heatmap/offset training shards."""

from __future__ import annotations

__all__ = ("BuildStarTilesConfig", "BuildStarTilesConnections", "BuildStarTilesTask", "build_star_tiles")

import dataclasses

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from .tiling_config import TilingConfig


def build_star_tiles(
    image,
    variance,
    bad,
    truth,
    psf_sigma: float,
    *,
    tile: int = 256,
    overlap: int = 32,
    normalization: str = "robust",
    clip: tuple[float, float] = (-10.0, 50.0),
    nu_min: float = 3.0,
    heatmap_sigma: float | None = None,
):
    """Cut a star field into tiles with CenterNet targets.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        The star-field image and its variance.
    bad : `numpy.ndarray`
        Pixels with no usable data (input and weight 0).
    truth : `astropy.table.Table`
        ``star_field_truth``; rows of type ``star`` with ``x``, ``y`` and
        ``nu_psf`` are the targets.
    psf_sigma : `float`
        Gaussian sigma of the PSF model (pixels); the heatmap peaks have
        this width unless ``heatmap_sigma`` is given.
    tile, overlap : `int`
        Tiling.
    normalization, clip
        As for trail tiles (`~.normalization`).
    nu_min : `float`
        Stars fainter than this PSF SNR are not targets.

    Returns
    -------
    tiles : `dict`
        ``inputs``, ``weights``, ``heatmap``, ``offset``, ``offset_mask``,
        ``x0``, ``y0``, ``n_stars``.
    norm : `~.normalization.Normalization`
    """
    from .normalization import apply_normalization, fit_normalization
    from .star_targets import star_targets
    from .tiling import cut_tiles, tile_origins, weight_map

    norm = fit_normalization(image, bad, method=normalization, clip_min=clip[0], clip_max=clip[1])
    normalized = apply_normalization(image, norm, variance=variance, bad=bad)
    weights = weight_map(image.shape, bad=bad)
    origins = [
        (int(y), int(x))
        for y in tile_origins(image.shape[0], tile, overlap)
        for x in tile_origins(image.shape[1], tile, overlap)
    ]
    stars = truth[truth["type"] == "star"] if "type" in truth.colnames else truth
    x, y = np.asarray(stars["x"], dtype=float), np.asarray(stars["y"], dtype=float)
    nu = np.asarray(stars["nu_psf"], dtype=float)
    sigma = heatmap_sigma if heatmap_sigma is not None else psf_sigma
    heatmaps, offsets, offset_masks, counts = [], [], [], []
    for y0, x0 in origins:
        targets = star_targets(x, y, (tile, tile), sigma=sigma, nu=nu, nu_min=nu_min, x0=x0, y0=y0)
        heatmaps.append(targets["heatmap"])
        offsets.append(targets["offset"])
        offset_masks.append(targets["offset_mask"])
        counts.append(int(targets["offset_mask"].sum()))
    return {
        "inputs": cut_tiles(normalized, origins, tile)[:, None],
        "weights": cut_tiles(weights, origins, tile),
        "heatmap": np.stack(heatmaps).astype(np.float32),
        "offset": np.stack(offsets).astype(np.float32),
        "offset_mask": np.stack(offset_masks).astype(np.uint8),
        "x0": np.array([o[1] for o in origins], dtype=np.int32),
        "y0": np.array([o[0] for o in origins], dtype=np.int32),
        "n_stars": np.array(counts, dtype=np.int32),
    }, norm


class BuildStarTilesConnections(
    pipeBase.PipelineTaskConnections, dimensions=("instrument", "visit", "detector")
):
    """Connections of `BuildStarTilesTask`."""

    exposure = cT.Input(
        doc="Simulated star field.",
        name="star_field_image",
        storageClass="VisitImage",
        dimensions=("instrument", "visit", "detector"),
    )
    truth = cT.Input(
        doc="Truth of the star field (sub-pixel positions, fluxes, PSF SNR).",
        name="star_field_truth",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )
    tiles = cT.Output(
        doc="HDF5 shard of star tiles: normalized image, heatmap, sub-pixel offsets, weights, split.",
        name="star_training_tiles",
        storageClass="TileShard",
        dimensions=("instrument", "visit", "detector"),
    )


class BuildStarTilesConfig(
    pipeBase.PipelineTaskConfig, TilingConfig, pipelineConnections=BuildStarTilesConnections
):
    """Configuration of `BuildStarTilesTask`."""

    nu_min = pexConfig.Field[float](doc="Faintest star (PSF SNR) that is a target.", default=3.0)

    def setDefaults(self):
        super().setDefaults()
        self.split_seed = 1  # independent of the trail-tile splits


class BuildStarTilesTask(pipeBase.PipelineTask):
    """Cut a simulated star field into tiles with CenterNet targets.

    Targets are a heatmap of Gaussian peaks at the stars' pixels, their
    sub-pixel offsets and a mask of the peak pixels, for every truth star
    above ``nu_min``; the whole field is kept. Shards follow the trail-tile
    HDF5 conventions (kind ``star``).
    """

    ConfigClass = BuildStarTilesConfig
    _DefaultName = "buildStarTiles"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        outputs = self.run(**inputs, visit=int(data_id["visit"]), detector=int(data_id["detector"]))
        butlerQC.put(outputs, outputRefs)

    def run(self, exposure, truth, visit: int, detector: int) -> pipeBase.Struct:
        """Build the shard of one star field.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``tiles`` (`~lsst.trail_detect.tiles.shard.TileShard`).
        """
        from .. import __version__
        from ..imageutils import any_plane, mask_planes, psf_sigma
        from .shard import TileShard
        from .tiling import assign_split

        c = self.config
        planes = mask_planes(exposure)
        bad = any_plane(planes, c.bad_planes, exposure.image.array.shape)
        tiles, norm = build_star_tiles(
            exposure.image.array,
            exposure.variance.array,
            bad,
            truth,
            psf_sigma(exposure),
            tile=c.tile_size,
            overlap=c.overlap,
            normalization=c.normalization,
            clip=(c.clip_min, c.clip_max),
            nu_min=c.nu_min,
        )
        split = assign_split(visit, detector, tuple(c.split_fractions), c.split_seed)
        key = f"{visit}:{detector}"
        n = len(tiles["x0"])
        shard = TileShard(
            kind="star",
            inputs=tiles["inputs"],
            weights=tiles["weights"],
            targets={name: tiles[name] for name in ("heatmap", "offset", "offset_mask")},
            tiles={
                "visit": np.full(n, visit, dtype=np.int64),
                "detector": np.full(n, detector, dtype=np.int64),
                "x0": tiles["x0"],
                "y0": tiles["y0"],
                "split": np.full(n, split),
                "n_stars": tiles["n_stars"],
            },
            tile_size=c.tile_size,
            overlap=c.overlap,
            normalization={key: dataclasses.asdict(norm)},
            provenance={
                "data_ids": [{"visit": visit, "detector": detector}],
                "split_seed": c.split_seed,
                "package_version": __version__,
                "task": "buildStarTiles",
                "metadata": {
                    k: exposure.metadata[k]
                    for k in ("CROWDING", "MAG_LIMIT", "STAR_DENSITY")
                    if k in exposure.metadata
                },
            },
            splits={key: split},
        )
        self.log.info(
            "%d star tiles with %d target stars -> %s split.", n, int(tiles["n_stars"].sum()), split
        )
        return pipeBase.Struct(tiles=shard)
