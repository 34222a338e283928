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

"""Time building training tiles from one injected detector image.

Usage::

    python benchmarks/bench_tiles.py [--size 4096] [--trails 50] [--repeat 2]

Makes a SimCam visit image of the given size with sky noise, injects trails
(InjectTrailsTask, not timed), then times BuildTrailTilesTask.run plus
writing the HDF5 shard, and reports the shard's size. The last line is
``tiles_seconds_per_detector: X`` (median of the repeats).
"""

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096, help="Image size (pixels).")
    parser.add_argument("--trails", type=int, default=50, help="Trails injected.")
    parser.add_argument("--repeat", type=int, default=2, help="Timed repetitions.")
    parser.add_argument("--background-fraction", type=float, default=0.1, help="Trail-free tiles kept.")
    args = parser.parse_args()

    from astropy.table import Table

    from lsst.trail_detect.injection.generate_catalog import (
        GenerateTrailCatalogConfig,
        GenerateTrailCatalogTask,
    )
    from lsst.trail_detect.injection.inject_trails import InjectTrailsTask
    from lsst.trail_detect.simulation.visit_image import make_simple_visit_image
    from lsst.trail_detect.tiles.build_trail_tiles import BuildTrailTilesConfig, BuildTrailTilesTask
    from lsst.trail_detect.tiles.shard import write_shard

    rng = np.random.default_rng(1)
    image = rng.normal(0.0, 30.0, (args.size, args.size)).astype(np.float32)
    visit_image = make_simple_visit_image(image, np.full(image.shape, 900.0, np.float32), psf_sigma=1.8)
    gen_config = GenerateTrailCatalogConfig()
    gen_config.n_trails = args.trails
    catalog = GenerateTrailCatalogTask(config=gen_config).run(visit_image, visit=1, detector=4).catalog
    injected = InjectTrailsTask().run(visit_image, catalog)
    config = BuildTrailTilesConfig()
    config.background_fraction = args.background_fraction
    task = BuildTrailTilesTask(config=config)
    empty = Table({"x": np.zeros(0), "y": np.zeros(0)})
    times, sizes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeat):
            t0 = time.perf_counter()
            shard = task.run(
                injected.output_exposure,
                injected.output_catalog,
                injected.trail_mask,
                empty,
                empty,
                visit=1,
                detector=4,
            ).tiles
            path = write_shard(shard, os.path.join(tmp, f"shard{k}.h5"))
            times.append(time.perf_counter() - t0)
            sizes.append(os.path.getsize(path) / 1e6)
            n_trail = int(np.sum(shard.tiles["has_trail"]))
            print(
                f"run {k}: {times[-1]:.2f} s, {len(shard)} tiles ({n_trail} with trails) "
                f"of {shard.tile_size} px, {sizes[-1]:.1f} MB"
            )
    print(f"image {args.size}x{args.size}, {args.trails} trails, cpu cores {os.cpu_count()}")
    print(f"tiles_megabytes_per_detector: {np.median(sizes):.1f}")
    print(f"tiles_seconds_per_detector: {np.median(times):.2f}")


if __name__ == "__main__":
    main()
