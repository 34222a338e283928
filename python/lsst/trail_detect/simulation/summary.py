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

Usage: ``python -m lsst.trail_detect.simulation.summary REPO COLLECTION [PNG]``;
with PNG, also draw the first visit image with its sources and truth.
"""

from __future__ import annotations

__all__ = ("plot_visit_image", "summarize_survey")

import sys

import numpy as np


def summarize_survey(repo: str, collection: str) -> str:
    """Return a human-readable summary of the simulated survey in ``collection``."""
    from lsst.daf.butler import Butler

    from ..plotting import sorted_refs

    butler = Butler.from_config(repo, collections=collection)
    refs = sorted_refs(butler, "visit_image")
    lines = [
        f"{'visit':>14} {'det':>3} {'FWHM':>6} {'psfSig':>6} {'stars':>6} {'gals':>6} {'CRs':>4} "
        f"{'sat.px':>7} {'sources':>7} {'found':>6}"
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
            f"{int(mask.get('SATURATED').sum()):>7} {len(sources):>7} {recovered:>6.2f}"
        )
    lines.append(
        "FWHM: of the stored Gaussian PSF model (arcsec); found: fraction of unsaturated truth stars "
        "with PSF SNR > 20 that have a source within 1.5 px (misses are at the detection edge or blended)."
    )
    return "\n".join(lines)


def plot_visit_image(repo: str, collection: str, out: str) -> str:
    """Draw the first visit image with its sources (circles) and truth satellites and cosmic rays."""
    import matplotlib.pyplot as plt

    from lsst.daf.butler import Butler

    from ..plotting import new_figure, show_image, sorted_refs

    butler = Butler.from_config(repo, collections=collection)
    ref = sorted_refs(butler, "visit_image")[0]
    image = butler.get(ref)
    sources = butler.get("source", ref.dataId)
    truth = butler.get("visit_image_truth", ref.dataId)
    arr = image.image.array
    fig, ax = new_figure(1, 9.0)
    show_image(ax, arr, stretch=3.0)
    ax.scatter(
        sources["x"],
        sources["y"],
        s=40,
        facecolors="none",
        edgecolors="tab:green",
        linewidths=0.6,
        label=f"source ({len(sources)})",
    )
    for kind, colour in (("satellite", "tab:red"), ("cosmic_ray", "tab:orange")):
        rows = truth[truth["type"] == kind]
        for row in rows:
            ax.plot([row["x_start"], row["x_end"]], [row["y_start"], row["y_end"]], color=colour, lw=0.8)
        if len(rows):
            ax.plot([], [], color=colour, label=f"truth {kind} ({len(rows)})")
    ax.set_xlim(-0.5, arr.shape[1] - 0.5)
    ax.set_ylim(-0.5, arr.shape[0] - 0.5)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"visit_image visit={ref.dataId['visit']} detector={ref.dataId['detector']}")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


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
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m lsst.trail_detect.simulation.summary REPO COLLECTION [PNG]")
    print(summarize_survey(sys.argv[1], sys.argv[2]))
    if len(sys.argv) == 4:
        print(f"Wrote {plot_visit_image(sys.argv[1], sys.argv[2], sys.argv[3])}")
