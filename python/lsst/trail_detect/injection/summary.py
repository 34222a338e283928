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

"""Summaries of injected trails for people: a table and a picture."""

from __future__ import annotations

__all__ = ("plot_injected_image", "summarize_injection")

import numpy as np


def summarize_injection(repo: str, collection: str) -> str:
    """Return a table of the injected trails per (visit, detector) in ``collection``."""
    from lsst.daf.butler import Butler

    from ..plotting import sorted_refs

    butler = Butler.from_config(repo, collections=collection)
    refs = sorted_refs(butler, "injected_visit_image_catalog")
    lines = [
        f"{'visit':>14} {'det':>3} {'trails':>6} {'drawn':>5} {'len med':>7} {'nu_det 10/50/90%':>17} "
        f"{'nu_opt med':>10} {'mask px':>7}"
    ]
    for ref in refs:
        cat = butler.get(ref)
        ok = cat["injection_flag"] == 0
        nu = np.asarray(cat["nu_det"][ok])
        p10, p50, p90 = np.percentile(nu, [10, 50, 90]) if len(nu) else (np.nan,) * 3
        lines.append(
            f"{ref.dataId['visit']:>14} {ref.dataId['detector']:>3} {len(cat):>6} {int(ok.sum()):>5} "
            f"{np.median(cat['trail_length']):>7.1f} {p10:>5.1f}/{p50:>5.1f}/{p90:>5.1f} "
            f"{np.nanmedian(cat['nu_opt']):>10.1f} {int(np.sum(cat['mask_pixels'])):>7}"
        )
    lines.append(
        "nu_det: peak SNR of a PSF matched filter (what a 5-sigma detection sees); nu_opt: SNR of the "
        "optimal trail filter; both from the noiseless model and the variance plane."
    )
    return "\n".join(lines)


def plot_injected_image(repo: str, collection: str, out: str) -> str:
    """Draw the first injected image beside its truth mask, labelling each trail with its nu_det."""
    import matplotlib.pyplot as plt

    from lsst.daf.butler import Butler

    from ..plotting import new_figure, show_image, sorted_refs

    butler = Butler.from_config(repo, collections=collection)
    ref = sorted_refs(butler, "injected_visit_image")[0]
    image = butler.get(ref).image.array
    mask = butler.get("injected_trail_mask", ref.dataId).get("TRAIL")
    catalog = butler.get("injected_visit_image_catalog", ref.dataId)
    fig, axes = new_figure(2, 8.0)
    show_image(axes[0], image)
    axes[1].imshow(mask, origin="lower", cmap="gray", interpolation="nearest")
    for row in catalog[catalog["injection_flag"] == 0]:
        axes[0].annotate(
            f"{row['nu_det']:.1f}",
            (row["x"], row["y"]),
            xytext=(8, 8),
            textcoords="offset points",
            color="tab:red",
            fontsize=7,
        )
    axes[0].set_title(
        f"injected_visit_image visit={ref.dataId['visit']} detector={ref.dataId['detector']} (labels: nu_det)"
    )
    axes[1].set_title("injected_trail_mask (TRAIL)")
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    plt.close(fig)
    return out
