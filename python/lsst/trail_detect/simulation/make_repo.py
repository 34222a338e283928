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

"""Creation of a Butler repository holding the embedded simulated survey."""

from __future__ import annotations

__all__ = (
    "CONDITIONS_RUN",
    "DEFAULTS_COLLECTION",
    "MODELS_RUN",
    "REFCAT_RUN",
    "SURVEY_OUTPUT",
    "MakeRepoError",
    "catalog_cone",
    "create_repo",
    "make_repo",
    "put_default_model",
    "register_survey",
    "run_pipetask",
    "survey_data_query",
)

import dataclasses
import logging
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..paths import default_model_path
from .camera import N_DETECTORS, detector_corners_sky, detector_wcs
from .survey import DEFAULT_FIELD, plan_survey

_LOG = logging.getLogger(__name__)

INSTRUMENT = "SimCam"
REFCAT_RUN = "refcats/gaia_dr3"
CONDITIONS_RUN = "SimCam/survey/conditions"
DEFAULTS_COLLECTION = "SimCam/defaults"
SURVEY_OUTPUT = "SimCam/runs/survey"
MODELS_RUN = "SimCam/models/default"
BUTLER_EXTRA_CONFIG = "resource://lsst.trail_detect/configs/butler_extra.yaml"


class MakeRepoError(RuntimeError):
    """Raised when the survey repository cannot be made; nothing is left behind."""


@dataclasses.dataclass
class MakeRepoResult:
    """What `make_repo` made."""

    repo: Path
    visits: list[int]
    detectors: list[int]
    n_stars: int
    n_star_shards: int
    output_collection: str
    seconds: float


def catalog_cone(plan: Sequence[dict], margin_deg: float = 0.02) -> tuple[float, float, float]:
    """Return a cone (ra, dec, radius in degrees) covering every planned detector."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    corners = []
    for visit in plan:
        for det in visit["detectors"]:
            wcs = detector_wcs(
                visit["boresight_ra"], visit["boresight_dec"], visit["rotation_deg"], det, visit["size"]
            )
            corners.append(detector_corners_sky(wcs, visit["size"]))
    import numpy as np

    pts = np.concatenate(corners)
    coords = SkyCoord(pts[:, 0] * u.deg, pts[:, 1] * u.deg)
    centre = SkyCoord(coords.cartesian.mean())
    centre = SkyCoord(centre.ra, centre.dec)
    radius = float(coords.separation(centre).deg.max()) + margin_deg
    return float(centre.ra.deg), float(centre.dec.deg), radius


def _check_repo_path(repo: Path) -> bool:
    """Check that a repository can be made at ``repo``; return whether the directory exists."""
    if repo.exists():
        if not repo.is_dir():
            raise MakeRepoError(f"repository path {repo} exists and is not a directory.")
        if any(repo.iterdir()):
            raise MakeRepoError(
                f"repository path {repo} exists and is not empty; choose a new path or remove it first."
            )
        return True
    if not repo.parent.exists():
        raise MakeRepoError(f"parent directory {repo.parent} of the repository does not exist.")
    return False


def create_repo(repo: Path) -> None:
    """Create an empty Butler repository that knows the package's storage classes.

    This is ``butler create REPO`` followed by adding
    ``includeConfigs: resource://lsst.trail_detect/configs/butler_extra.yaml``
    to the repository's ``butler.yaml``, so no environment variable is
    needed to read the package's dataset types.
    """
    from lsst.daf.butler import Butler

    Butler.makeRepo(str(repo))
    with open(repo / "butler.yaml", "a") as stream:
        stream.write(f"\nincludeConfigs: {BUTLER_EXTRA_CONFIG}\n")


def register_survey(butler, plan: Sequence[dict]) -> None:
    """Register SimCam, the visits and their detector regions, and store the visit conditions.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable Butler.
    plan : `list` [`dict`]
        Visit conditions from `~lsst.trail_detect.simulation.survey.plan_survey`.
    """
    import astropy.time
    import astropy.units as u

    from lsst.daf.butler import CollectionType, DatasetType, Timespan

    from ..instrument import SimCam
    from .camera import detector_polygon, visit_polygon

    registry = butler.registry
    SimCam().register(registry)
    conditions_type = DatasetType(
        "visit_conditions", ("instrument", "visit"), "StructuredDataDict", universe=butler.dimensions
    )
    registry.registerDatasetType(conditions_type)
    registry.registerCollection(CONDITIONS_RUN, CollectionType.RUN)
    with registry.transaction():
        for visit in plan:
            begin = astropy.time.Time(visit["datetime_begin"], scale="tai")
            end = begin + visit["exposure_time"] * u.s
            day_obs = int((begin - 12 * u.hour).strftime("%Y%m%d"))
            registry.syncDimensionData(
                "day_obs",
                {
                    "instrument": INSTRUMENT,
                    "id": day_obs,
                    "timespan": Timespan(
                        astropy.time.Time(
                            f"{str(day_obs)[:4]}-{str(day_obs)[4:6]}-{str(day_obs)[6:]}T12:00:00", scale="tai"
                        ),
                        None,
                    ),
                },
            )
            # Regions cover the whole raft, so that every (visit, detector) data ID is complete; the
            # detectors that are simulated are selected by the data query.
            region = visit_polygon(
                visit["boresight_ra"],
                visit["boresight_dec"],
                visit["rotation_deg"],
                range(N_DETECTORS),
                visit["size"],
            )
            registry.insertDimensionData(
                "visit",
                {
                    "instrument": INSTRUMENT,
                    "id": visit["visit"],
                    "name": f"SIM_{visit['visit']}",
                    "physical_filter": visit["physical_filter"],
                    "day_obs": day_obs,
                    "exposure_time": visit["exposure_time"],
                    "target_name": "embedded_survey",
                    "observation_reason": "science",
                    "science_program": "trail_detect_sim",
                    "zenith_angle": math.degrees(math.acos(1.0 / visit["airmass"])),
                    "timespan": Timespan(begin, end),
                    "region": region,
                },
            )
            registry.insertDimensionData(
                "visit_system_membership",
                {"instrument": INSTRUMENT, "visit": visit["visit"], "visit_system": 0},
            )
            for det in range(N_DETECTORS):
                wcs = detector_wcs(
                    visit["boresight_ra"], visit["boresight_dec"], visit["rotation_deg"], det, visit["size"]
                )
                registry.insertDimensionData(
                    "visit_detector_region",
                    {
                        "instrument": INSTRUMENT,
                        "visit": visit["visit"],
                        "detector": det,
                        "region": detector_polygon(wcs, visit["size"]),
                    },
                )
    for visit in plan:
        butler.put(
            dict(visit), conditions_type, instrument=INSTRUMENT, visit=visit["visit"], run=CONDITIONS_RUN
        )


def put_default_model(butler, run: str = MODELS_RUN) -> bool:
    """Put the shipped default model in ``run`` as ``trail_detector_model``; return whether there was one."""
    from lsst.daf.butler import CollectionType, DatasetType

    from ..models.storage import TrailDetectorModel

    path = default_model_path()
    if not path.exists():
        _LOG.warning("No shipped default model at %s; run `make train-default` to make one.", path)
        return False
    model = TrailDetectorModel.load(path)
    butler.registry.registerDatasetType(
        DatasetType("trail_detector_model", (), "TrailDetectorModel", universe=butler.dimensions)
    )
    butler.registry.registerCollection(run, CollectionType.RUN)
    butler.put(model, "trail_detector_model", run=run)
    return True


def survey_data_query(plan: Sequence[dict]) -> str:
    """Return the pipetask data query selecting the simulated (visit, detector) pairs."""
    detectors = sorted({d for visit in plan for d in visit["detectors"]})
    return f"instrument = '{INSTRUMENT}' AND detector IN ({', '.join(str(d) for d in detectors)})"


def _pipetask_command() -> list[str]:
    """Return the command that runs ``pipetask`` from this environment."""
    candidate = Path(sys.executable).parent / "pipetask"
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which("pipetask")
    if found:
        return [found]
    return [sys.executable, "-c", "from lsst.ctrl.mpexec.cli.pipetask import main; main()"]


def run_pipetask(
    repo: Path,
    pipeline: Path | str,
    inputs: Sequence[str],
    output: str,
    *,
    jobs: int = 1,
    data_query: str | None = None,
    extra: Sequence[str] = (),
    echo: Callable[[str], None] | None = None,
) -> None:
    """Run ``pipetask run`` as a subprocess and stream its log lines.

    Raises
    ------
    MakeRepoError
        If pipetask fails; the message carries the end of its log.
    """
    from ..paths import package_dir

    cmd = _pipetask_command() + [
        "--long-log",
        "run",
        "-b",
        str(repo),
        "-i",
        ",".join(inputs),
        "-o",
        output,
        "-p",
        str(pipeline),
        "--register-dataset-types",
        "-j",
        str(jobs),
    ]
    if data_query:
        cmd += ["-d", data_query]
    cmd += list(extra)
    env = dict(os.environ)
    env.setdefault("TRAIL_DETECT_DIR", str(package_dir()))
    lines: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, stdin=subprocess.DEVNULL
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            lines.append(line)
            if echo is not None and _is_progress_line(line):
                # Keep the message, drop the long-log prefix (time, logger, data ID, source line).
                echo("  " + line.split(") - ", 1)[-1])
        proc.wait()
    if proc.returncode != 0:
        tail = "\n".join(lines[-30:])
        raise MakeRepoError(f"pipetask run of {pipeline} failed (exit {proc.returncode}):\n{tail}")


def _is_progress_line(line: str) -> bool:
    """Select the log lines worth showing a user while pipetask runs."""
    keys = ("Executed", "quanta", "Simulating", "Rendered", "Detected", "ERROR", "Error", "failed")
    return any(k in line for k in keys) and "DEBUG" not in line


def _load_catalog(
    catalog: str, cone: tuple[float, float, float], seed: int, mag_limit: float, cache_dir: Path | None
):
    """Return the star catalog for the survey (synthetic, Gaia archive or a file)."""
    from . import gaia

    ra, dec, radius = cone
    if catalog == "synthetic":
        table = gaia.synthetic_gaia_catalog(ra, dec, radius, mag_limit, seed=seed)
    elif catalog == "gaia":
        try:
            table = gaia.fetch_gaia_cone(ra, dec, radius, mag_limit, cache_dir=cache_dir)
        except gaia.GaiaUnavailableError as err:
            raise MakeRepoError(str(err)) from err
    else:
        try:
            table = gaia.read_star_catalog(catalog)
        except gaia.StarCatalogError as err:
            raise MakeRepoError(str(err)) from err
    if catalog in ("synthetic", "gaia"):
        table.meta["mag_limit"] = float(mag_limit)
    else:
        import numpy as np

        table.meta["mag_limit"] = float(np.nanmax(table["phot_g_mean_mag"]))
    return table


def make_repo(
    repo: str | os.PathLike,
    *,
    visits: int = 4,
    detectors: int = 4,
    size: int = 1024,
    seed: int = 1,
    catalog: str = "synthetic",
    field: tuple[float, float] = DEFAULT_FIELD,
    bands: str = "r",
    mag_limit: float = 21.0,
    jobs: int = 2,
    cache_dir: str | os.PathLike | None = None,
    echo: Callable[[str], None] | None = None,
) -> MakeRepoResult:
    """Create a Butler repository holding the embedded simulated survey.

    Parameters
    ----------
    repo : `str` or `os.PathLike`
        Path of the new repository: must not exist, or be an empty directory.
    visits, detectors, size : `int`
        Number of visits, detectors per visit (1 to 9) and image size (pixels).
    seed : `int`
        Survey seed: the whole repository is reproducible from it.
    catalog : `str`
        ``synthetic`` (offline Gaia-like catalog), ``gaia`` (query the Gaia
        archive) or the path of a star catalog file.
    field : `tuple` [`float`, `float`]
        Survey field centre (ra, dec) in degrees.
    bands : `str`
        Bands the visits cycle through.
    mag_limit : `float`
        Faint G limit of the catalog stars.
    jobs : `int`
        Parallel processes for ``pipetask run``.
    cache_dir : path-like, optional
        Cache for Gaia archive queries.
    echo : callable, optional
        Called with progress messages.

    Returns
    -------
    result : `MakeRepoResult`
    """
    import time

    from lsst.daf.butler import Butler, CollectionType

    from ..paths import pipeline_path
    from .gaia import ingest_star_catalog

    say = echo or (lambda msg: _LOG.info(msg))
    t0 = time.time()
    repo = Path(repo).absolute()
    if not 64 <= size <= 4096:
        raise MakeRepoError(f"--size {size} must be between 64 and 4096 pixels.")
    if visits < 1:
        raise MakeRepoError(f"--visits {visits} must be at least 1.")
    if not 1 <= detectors <= 9:
        raise MakeRepoError(f"--detectors {detectors} must be between 1 and 9 (SimCam has one 3x3 raft).")
    if catalog not in ("synthetic", "gaia") and not Path(catalog).exists():
        raise MakeRepoError(f"star catalog file {catalog} does not exist.")
    existed = _check_repo_path(repo)
    pipeline = pipeline_path("SimulateSurvey.yaml")

    plan = plan_survey(visits, detectors, size, seed, field=field, bands=bands)
    cone = catalog_cone(plan)
    say(
        f"Survey: {visits} visits x {detectors} detectors of {size}x{size} px around "
        f"RA {field[0]:.2f} Dec {field[1]:.2f}; star catalog cone radius {cone[2]:.2f} deg ({catalog})."
    )
    stars = _load_catalog(str(catalog), cone, seed, mag_limit, Path(cache_dir) if cache_dir else None)
    say(f"Star catalog: {len(stars)} stars.")
    for visit in plan:
        visit["catalog_mag_limit"] = float(stars.meta["mag_limit"])

    try:
        create_repo(repo)
        butler = Butler.from_config(str(repo), writeable=True)
        register_survey(butler, plan)
        n_shards = ingest_star_catalog(butler, stars, run=REFCAT_RUN)
        chain = [CONDITIONS_RUN, REFCAT_RUN]
        if put_default_model(butler):
            chain.append(MODELS_RUN)
            say(f"Default trail_detector_model put in {MODELS_RUN}.")
        butler.registry.registerCollection(DEFAULTS_COLLECTION, CollectionType.CHAINED)
        butler.registry.setCollectionChain(DEFAULTS_COLLECTION, chain)
        say(
            f"Repository created at {repo}: SimCam registered, {len(plan)} visits, "
            f"{n_shards} gaia_dr3_stars shards (htm7)."
        )
        del butler
        say(f"Running pipetask on {pipeline.name} ({len(plan) * detectors} quanta per task, -j {jobs})...")
        run_pipetask(
            repo,
            pipeline,
            [DEFAULTS_COLLECTION],
            SURVEY_OUTPUT,
            jobs=jobs,
            echo=say,
            data_query=survey_data_query(plan),
        )
    except BaseException:
        _remove_repo(repo, existed)
        raise
    return MakeRepoResult(
        repo=repo,
        visits=[v["visit"] for v in plan],
        detectors=list(plan[0]["detectors"]),
        n_stars=len(stars),
        n_star_shards=n_shards,
        output_collection=SURVEY_OUTPUT,
        seconds=time.time() - t0,
    )


def _remove_repo(repo: Path, existed: bool) -> None:
    """Remove what a failed `make_repo` wrote, keeping a directory the user made."""
    if not repo.exists():
        return
    if existed:
        for child in repo.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    else:
        shutil.rmtree(repo, ignore_errors=True)
