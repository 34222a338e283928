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

"""The ``trail-detect`` command, in the style of the ``butler`` command."""

from __future__ import annotations

__all__ = ("main",)

import logging
import sys

import click

from .. import __version__
from .commands import (
    calibrate,
    detect_fits,
    export_model,
    export_tiles,
    fetch_gaia,
    import_model,
    ingest_catalog,
    make_repo,
    report,
    train,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trail-detect")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "VERBOSE", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Logging level of the lsst.trail_detect loggers.",
)
def cli(log_level: str) -> None:
    """Find faint asteroid trails in Rubin single-visit images.

    Subcommands make and fill Butler repositories (the embedded simulated
    survey, star catalogs) and run the package's pipelines.
    """
    level = {"VERBOSE": 15}.get(log_level.upper(), getattr(logging, log_level.upper(), logging.INFO))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lsst.trail_detect").setLevel(level)


cli.add_command(make_repo)
cli.add_command(fetch_gaia)
cli.add_command(ingest_catalog)
cli.add_command(export_tiles)
cli.add_command(train)
cli.add_command(export_model)
cli.add_command(detect_fits)
cli.add_command(calibrate)
cli.add_command(import_model)
cli.add_command(report)


def main() -> None:
    """Run the ``trail-detect`` command."""
    sys.exit(cli(standalone_mode=True))
