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

"""Time the simulation of one calibrated detector image.

Usage::

    python benchmarks/bench_simulate.py [--size 4096] [--repeat 1] [--seed 1]

Prints the time of each stage and, as its last line,
``simulate_seconds_per_detector: X``: rendering plus VisitImage assembly,
the work of one simulateVisitImage quantum without Butler I/O, averaged
over ``--repeat`` visits.
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
    parser.add_argument("--repeat", type=int, default=1, help="Detectors to simulate (different visits).")
    parser.add_argument("--seed", type=int, default=1, help="Survey seed.")
    parser.add_argument("--detector", type=int, default=4, help="Detector ID.")
    args = parser.parse_args()

    from lsst.trail_detect.simulation.gaia import synthetic_gaia_catalog
    from lsst.trail_detect.simulation.make_repo import catalog_cone
    from lsst.trail_detect.simulation.scene import simulate_detector
    from lsst.trail_detect.simulation.survey import plan_survey
    from lsst.trail_detect.simulation.visit_image import make_visit_image

    plan = plan_survey(args.repeat, [args.detector], args.size, args.seed)
    ra, dec, radius = catalog_cone(plan)
    t0 = time.perf_counter()
    stars = synthetic_gaia_catalog(ra, dec, radius, 21.0, seed=args.seed)
    print(f"catalog: {len(stars)} stars within {radius:.2f} deg, {time.perf_counter() - t0:.2f} s")
    times = []
    for conditions in plan:
        t0 = time.perf_counter()
        sim = simulate_detector(conditions, args.detector, stars, catalog_mag_limit=21.0)
        t1 = time.perf_counter()
        image = make_visit_image(sim, conditions, args.detector)
        t2 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "visit_image.fits")
            image.write(path)
            t3 = time.perf_counter()
            megabytes = os.path.getsize(path) / 1e6
        kinds, counts = np.unique(np.asarray(sim.truth["type"]), return_counts=True)
        print(
            f"visit {conditions['visit']} ({args.size}x{args.size} px): seeing "
            f'{conditions["seeing_fwhm_arcsec"]:.2f}", '
            + ", ".join(f"{k} {c}" for k, c in zip(kinds, counts))
        )
        print(
            f"  render {t1 - t0:.2f} s, VisitImage {t2 - t1:.2f} s, FITS write {t3 - t2:.2f} s "
            f"({megabytes:.0f} MB)"
        )
        times.append(t2 - t0)
    print(f"cpu cores: {os.cpu_count()}")
    print(f"simulate_seconds_per_detector: {np.mean(times):.2f}")


if __name__ == "__main__":
    main()
