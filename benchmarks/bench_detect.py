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

"""Time trail detection on one detector: inference plus post-processing.

Usage::

    python benchmarks/bench_detect.py [--size 4096] [--threads 2] [--repeat 2] [--device auto]
                                      [--model FILE] [--scene simulated|noise]

Makes one detector image (not timed): by default a full simulated SimCam
scene (stars from the synthetic Gaia catalog, galaxies, cosmic rays,
saturation) with 50 injected trails; ``--scene noise`` uses sky noise only.
Then times `DetectTrailsTask.run` (normalization, tiled inference with the
model, post-processing, catalog, mask) without Butler I/O, after one
warm-up run. Prints the thread count and device, the time of each stage and,
as its last line, ``detect_seconds_per_detector: X`` (median of the repeats).
"""

import argparse
import os
import time

import numpy as np


def make_image(size: int, scene: str, trails: int, seed: int):
    from lsst.trail_detect.injection.generate_catalog import (
        GenerateTrailCatalogConfig,
        GenerateTrailCatalogTask,
    )
    from lsst.trail_detect.injection.inject_trails import InjectTrailsTask

    detector = 4
    if scene == "simulated":
        from lsst.trail_detect.simulation.gaia import synthetic_gaia_catalog
        from lsst.trail_detect.simulation.make_repo import catalog_cone
        from lsst.trail_detect.simulation.scene import simulate_detector
        from lsst.trail_detect.simulation.survey import plan_survey
        from lsst.trail_detect.simulation.visit_image import make_visit_image

        plan = plan_survey(1, [detector], size, seed)
        ra, dec, radius = catalog_cone(plan)
        stars = synthetic_gaia_catalog(ra, dec, radius, 21.0, seed=seed)
        sim = simulate_detector(plan[0], detector, stars, catalog_mag_limit=21.0)
        visit_image = make_visit_image(sim, plan[0], detector)
    else:
        from lsst.trail_detect.simulation.visit_image import make_simple_visit_image

        rng = np.random.default_rng(seed)
        image = rng.normal(0.0, 30.0, (size, size)).astype(np.float32)
        visit_image = make_simple_visit_image(image, np.full(image.shape, 900.0, np.float32), psf_sigma=1.8)
    config = GenerateTrailCatalogConfig()
    config.n_trails = trails
    catalog = GenerateTrailCatalogTask(config=config).run(visit_image, visit=1, detector=detector).catalog
    return InjectTrailsTask().run(visit_image, catalog).output_exposure


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096, help="Image size (pixels).")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    parser.add_argument("--repeat", type=int, default=2, help="Timed repetitions.")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    parser.add_argument("--model", default=None, help="Model file (default: the shipped model).")
    parser.add_argument("--scene", choices=("simulated", "noise"), default="simulated", help="Test image.")
    parser.add_argument("--trails", type=int, default=50, help="Trails injected.")
    parser.add_argument("--tile", type=int, default=512, help="Inference tile size.")
    parser.add_argument("--batch-size", type=int, default=4, help="Tiles per forward pass.")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the test image.")
    args = parser.parse_args()

    import torch

    from lsst.trail_detect.detection.detect_trails import DetectTrailsConfig, DetectTrailsTask
    from lsst.trail_detect.models.storage import TrailDetectorModel
    from lsst.trail_detect.paths import default_model_path

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    exposure = make_image(args.size, args.scene, args.trails, args.seed)
    print(
        f"test image: {args.scene} {args.size}x{args.size} with {args.trails} trails "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    model = TrailDetectorModel.load(args.model or default_model_path())
    config = DetectTrailsConfig()
    config.threads = args.threads
    config.device = args.device
    config.tile = args.tile
    config.batch_size = args.batch_size
    task = DetectTrailsTask(config=config)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    if device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}")
    else:
        print(f"device: cpu, torch threads {torch.get_num_threads()}, cpu cores {os.cpu_count()}")
    print(f"model: {model.summary()}")
    task.run(exposure, model)  # warm-up (kernel selection, CUDA context)
    times = []
    for k in range(args.repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = task.run(exposure, model)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        meta = task.metadata
        print(
            f"run {k}: {times[-1]:.2f} s (normalization {meta['seconds_normalization']:.2f} s, inference "
            f"{meta['seconds_inference']:.2f} s, post-processing {meta['seconds_postprocess']:.2f} s, "
            f"line search {meta.get('seconds_line_search', 0.0):.2f} s); "
            f"{len(result.catalog)} trails"
        )
    print(f"detect_seconds_per_detector: {np.median(times):.2f}")


if __name__ == "__main__":
    main()
