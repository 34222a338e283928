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

"""What ``make demo`` prints: a summary of everything the main job made.

Usage: ``python -m lsst.trail_detect.demo REPO OUTDIR``.
"""

from __future__ import annotations

__all__ = ("main",)

import sys
from pathlib import Path

SURVEY = "SimCam/runs/survey"
END_TO_END = "SimCam/runs/end_to_end"
STARS = "SimCam/runs/star_pretraining"


def main(argv: list[str] | None = None) -> None:
    """Print the summaries and write the pictures of a demo repository."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        sys.exit("usage: python -m lsst.trail_detect.demo REPO OUTDIR")
    repo, outdir = argv
    Path(outdir).mkdir(parents=True, exist_ok=True)
    from lsst.daf.butler import Butler

    from .injection.summary import plot_injected_image, summarize_injection
    from .simulation.summary import plot_visit_image, summarize_survey

    collections = set(Butler.from_config(repo).collections.query("*"))
    print("== Embedded survey (collection SimCam/runs/survey)")
    print(summarize_survey(repo, SURVEY))
    print(f"Picture: {plot_visit_image(repo, SURVEY, str(Path(outdir) / 'visit_image.png'))}")
    if END_TO_END in collections:
        print(f"\n== Injected trails (collection {END_TO_END})")
        print(summarize_injection(repo, END_TO_END))
        picture = plot_injected_image(repo, END_TO_END, str(Path(outdir) / "injected_visit_image.png"))
        print(f"Picture: {picture}")
        from .tiles.summary import summarize_tiles

        print(f"\n== Training tiles (collection {END_TO_END})")
        print(summarize_tiles(repo, END_TO_END))
    if STARS in collections:
        from .tiles.summary import summarize_tiles

        print(f"\n== Star-field pretraining tiles (collection {STARS})")
        print(summarize_tiles(repo, STARS, "star_training_tiles"))


if __name__ == "__main__":
    main()
