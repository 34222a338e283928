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

"""Print a summary of an embedded-survey repository.

Usage: ``python -m lsst.trail_detect.simulation.summary REPO COLLECTION``.
"""

from __future__ import annotations

__all__ = ("summarize_survey",)

import sys

import numpy as np


def summarize_survey(repo: str, collection: str) -> str:
    """Return a human-readable summary of the simulated survey in ``collection``."""
    from lsst.daf.butler import Butler

    butler = Butler.from_config(repo, collections=collection)
    refs = sorted(
        butler.query_datasets("visit_image", limit=None),
        key=lambda r: (r.dataId["visit"], r.dataId["detector"]),
    )
    lines = [
        f"{'visit':>14} {'det':>3} {'seeing':>6} {'psfSig':>6} {'stars':>6} {'gals':>6} {'CRs':>4} "
        f"{'sat.px':>7} {'sources':>7} {'src/star5sig':>12}"
    ]
    for ref in refs:
        did = ref.dataId
        stats = butler.get("visit_image.summary_stats", did)
        truth = butler.get("visit_image_truth", did)
        sources = butler.get("source", did)
        mask = butler.get("visit_image.mask", did)
        kinds = np.asarray(truth["type"])
        on = np.asarray(truth["on_detector"])
        bright = (kinds == "star") & on & (np.asarray(truth["nu_psf"]) > 20) & ~np.asarray(truth["saturated"])
        recovered = _match_fraction(truth[bright], sources)
        lines.append(
            f"{did['visit']:>14} {did['detector']:>3} {2.3548 * stats.psfSigma * 0.2:>6.2f} "
            f"{stats.psfSigma:>6.2f} {int(((kinds == 'star') & on).sum()):>6} "
            f"{int(((kinds == 'galaxy') & on).sum()):>6} {int((kinds == 'cosmic_ray').sum()):>4} "
            f"{int(mask.get('SATURATED').sum()):>7} {len(sources):>7} {recovered:>12.2f}"
        )
    lines.append(
        "seeing: FWHM of the stored PSF model (arcsec); src/star5sig: fraction of unsaturated truth stars "
        "with PSF SNR > 20 that have a source within 1.5 px."
    )
    return "\n".join(lines)


def _match_fraction(truth, sources, radius: float = 1.5) -> float:
    """Fraction of truth rows with a source within ``radius`` pixels."""
    if len(truth) == 0:
        return float("nan")
    if len(sources) == 0:
        return 0.0
    from scipy.spatial import cKDTree

    tree = cKDTree(np.stack([np.asarray(sources["x"]), np.asarray(sources["y"])], axis=1))
    dist, _ = tree.query(np.stack([np.asarray(truth["x"]), np.asarray(truth["y"])], axis=1))
    return float(np.mean(dist < radius))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m lsst.trail_detect.simulation.summary REPO COLLECTION")
    print(summarize_survey(sys.argv[1], sys.argv[2]))
