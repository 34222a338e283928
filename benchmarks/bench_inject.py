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

"""Time the injection of trails into one detector image.

Usage::

    python benchmarks/bench_inject.py [--size 4096] [--trails 50] [--repeat 3]

Builds a SimCam visit image of the given size (Gaussian PSF model, sky
noise), draws a trail catalog with generateTrailCatalog's defaults and times
InjectTrailsTask.run (rendering, noise, truth, masks, the output copy).
The last line is ``inject_seconds_per_detector: X`` (median of the repeats).
"""

import argparse
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096, help="Image size (pixels).")
    parser.add_argument("--trails", type=int, default=50, help="Trails to inject.")
    parser.add_argument("--repeat", type=int, default=3, help="Timed repetitions.")
    args = parser.parse_args()

    from lsst.trail_detect.injection.generate_catalog import (
        GenerateTrailCatalogConfig,
        GenerateTrailCatalogTask,
    )
    from lsst.trail_detect.injection.inject_trails import InjectTrailsTask
    from lsst.trail_detect.simulation.visit_image import make_simple_visit_image

    rng = np.random.default_rng(1)
    sky_sigma = 30.0
    image = rng.normal(0.0, sky_sigma, (args.size, args.size)).astype(np.float32)
    variance = np.full(image.shape, sky_sigma**2, np.float32)
    visit_image = make_simple_visit_image(image, variance, psf_sigma=1.8)
    config = GenerateTrailCatalogConfig()
    config.n_trails = args.trails
    catalog = GenerateTrailCatalogTask(config=config).run(visit_image, visit=1, detector=4).catalog
    task = InjectTrailsTask()
    times = []
    for k in range(args.repeat):
        t0 = time.perf_counter()
        result = task.run(visit_image, catalog)
        times.append(time.perf_counter() - t0)
        print(
            f"run {k}: {times[-1]:.2f} s, {int(np.sum(result.output_catalog['injection_flag'] == 0))} trails "
            f"injected, {int(result.trail_mask.get('TRAIL').sum())} truth pixels"
        )
    print(
        f"{args.trails} trails, lengths {catalog['trail_length'].min():.0f}-"
        f"{catalog['trail_length'].max():.0f} px, image {args.size}x{args.size}, cpu cores {os.cpu_count()}"
    )
    print(f"inject_seconds_per_detector: {np.median(times):.2f}")


if __name__ == "__main__":
    main()
