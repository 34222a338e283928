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

"""Measure the physics of an embedded-survey repository against its truth.

Usage::

    python benchmarks/measure_survey.py REPO [--collection SimCam/runs/survey]

Prints, over every (visit, detector): the width of source-free pixels
divided by sqrt(variance) (should be 1), the recovery of unsaturated truth
stars by ``source`` in bins of PSF SNR (a 5-sigma detection: ~50% at 5, ~all
above 10), and the ratio of 15 px aperture fluxes to true fluxes for
isolated bright stars.
"""

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("repo")
    parser.add_argument("--collection", default="SimCam/runs/survey")
    args = parser.parse_args()

    from astropy.stats import mad_std
    from scipy.spatial import cKDTree

    from lsst.daf.butler import Butler

    butler = Butler.from_config(args.repo, collections=args.collection)
    edges = [0, 2, 3, 5, 8, 15, np.inf]
    found = np.zeros(len(edges) - 1, int)
    total = np.zeros(len(edges) - 1, int)
    widths, ratios = [], []
    for ref in butler.query_datasets("visit_image", limit=None):
        image = butler.get(ref)
        truth = butler.get("visit_image_truth", ref.dataId)
        sources = butler.get("source", ref.dataId)
        size = image.image.array.shape[0]
        masked = np.zeros(image.image.array.shape, bool)
        for name in ("DETECTED", "SATURATED", "BAD", "COSMIC_RAY", "NO_DATA", "INTERPOLATED", "SUSPECT"):
            masked |= image.mask.get(name)
        widths.append(mad_std(image.image.array[~masked] / np.sqrt(image.variance.array[~masked])))
        stars = truth[(truth["type"] == "star") & truth["on_detector"] & ~truth["saturated"]]
        stars = stars[
            (stars["x"] > 10) & (stars["x"] < size - 10) & (stars["y"] > 10) & (stars["y"] < size - 10)
        ]
        dist, _ = cKDTree(np.stack([sources["x"], sources["y"]], 1)).query(
            np.stack([stars["x"], stars["y"]], 1)
        )
        k = np.digitize(stars["nu_psf"], edges) - 1
        np.add.at(total, k, 1)
        np.add.at(found, k[dist < 1.5], 1)
        tree = cKDTree(np.stack([truth["x"], truth["y"]], 1))
        yy, xx = np.mgrid[0:size, 0:size]
        for row in stars[
            (stars["nu_psf"] > 100)
            & (stars["x"] > 20)
            & (stars["x"] < size - 20)
            & (stars["y"] > 20)
            & (stars["y"] < size - 20)
        ]:
            if len(tree.query_ball_point([row["x"], row["y"]], 20.0)) > 1:
                continue
            aperture = (xx - row["x"]) ** 2 + (yy - row["y"]) ** 2 < 15.0**2
            if not (masked & aperture & ~image.mask.get("DETECTED")).any():  # no bad pixel in the aperture
                ratios.append(image.image.array[aperture].sum() / row["flux"])
    print(f"images: {len(widths)}")
    print(
        f"noise width of source-free pixels / sqrt(variance): median {np.median(widths):.3f} "
        f"(range {min(widths):.3f}-{max(widths):.3f})"
    )
    for lo, hi, f, n in zip(edges[:-1], edges[1:], found, total):
        print(f"stars with PSF SNR {lo:g}-{hi:g}: {f}/{n} found by source ({f / max(n, 1):.2f})")
    print(
        f"isolated bright stars: 15 px aperture / true flux median {np.median(ratios):.3f} over {len(ratios)}"
    )


if __name__ == "__main__":
    main()
