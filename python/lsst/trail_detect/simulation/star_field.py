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

"""Star fields for detector pretraining: crowded, star-only detector images.

A star field is a calibrated detector image of a visit (seeing, sky, PSF
shape and electronics from its ``visit_conditions``) that holds the stars
of the Gaia catalog at their proper-motion corrected positions plus the
fainter stars of the star-density model
(`~lsst.trail_detect.simulation.gaia.galactic_star_density`), whose density
is multiplied by a *crowding* factor, so that fields range from a
high-latitude sky to a bulge-like field of hundreds of stars per arcmin^2.
Galaxies and satellites are off by default; cosmic rays and detector
defects come at a reduced realistic rate; saturation and bleed trails are
on. Everything is rendered by
`~lsst.trail_detect.simulation.scene.simulate_detector`.

Depth
-----
The depth ``mag_limit`` is the magnitude (in the visit's band) of a point
source with a PSF signal-to-noise ``nu_psf`` of 5, with the truth table's
definition ``nu_psf = F / sqrt(4 pi sigma^2 (sky + read_noise^2))``
(``sigma`` the second-moment width of the true PSF). It is reached by
changing the effective exposure time: up to 30 s the image is one short
exposure; beyond, it stands for a stack of ``T / 30 s`` visits, with the
read-noise variance and full well of that many exposures and the cosmic
rays of one (the stack's outlier rejection removed the others). Stars are
drawn down to ``mag_limit + faint_margin`` so that the image also holds
the undetectable stars below its depth, as a real one does.

Seeds
-----
Crowding and depth are drawn per quantum from the visit's ``seed`` and
the detector (`draw_star_field_parameters`); the faint stars and the
detector defects from a field seed derived from the same two numbers, so
every (visit, detector) has its own independent field and the whole
image is a deterministic function of the conditions, the detector and the
catalog.
"""

from __future__ import annotations

__all__ = (
    "SimulateStarFieldConfig",
    "SimulateStarFieldConnections",
    "SimulateStarFieldTask",
    "SimulatedStarField",
    "default_star_field_parameters",
    "depth_exposure_time",
    "draw_star_field_parameters",
    "simulate_star_field",
    "star_field_conditions",
)

import dataclasses
import math

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from .camera import PIXEL_SCALE_ARCSEC
from .scene import SceneParameters, SimulatedDetector, make_true_psf, psf_moment_sigma, simulate_detector
from .simulate_visit import SimulateDetectorConnectionsBase, SimulateDetectorTaskBase, gather_star_catalog
from .survey import EXPOSURE_TIME, nJy_per_electron, sky_electrons_per_pixel

DEPTH_NSIGMA = 5.0
"""PSF signal-to-noise of a star at the depth ``mag_limit``."""

_SEED_TAG = 0x57A2F1E1
"""Tag that separates the star-field random streams from those of `simulate_detector`."""


@dataclasses.dataclass
class SimulatedStarField:
    """A simulated star field and what it was made from.

    Attributes
    ----------
    detector : `~lsst.trail_detect.simulation.scene.SimulatedDetector`
        Arrays and truth of the image. The truth holds every rendered
        object (``type`` ``"star"`` for the stars; cosmic rays, defects,
        diffraction spikes and galaxies, if any, as other types), with the
        stars' sub-pixel ``x``, ``y``, ``flux`` (nJy), ``mag`` and
        ``nu_psf``; its ``meta`` carries the numbers below.
    conditions : `dict`
        The effective conditions the image was rendered with (exposure
        time, calibration, read noise, full well and seeds for the depth).
    crowding : `float`
        Multiplier on the density of the stars fainter than the catalog.
    mag_limit : `float`
        Depth: band magnitude of a star with ``nu_psf = 5``.
    star_mag_limit : `float`
        Faintest star drawn from the density model (band magnitude).
    density : `float`
        Stars on the detector brighter than ``mag_limit`` per arcmin^2.
    density_all : `float`
        All rendered stars on the detector per arcmin^2.
    """

    detector: SimulatedDetector
    conditions: dict
    crowding: float
    mag_limit: float
    star_mag_limit: float
    density: float
    density_all: float

    @property
    def stars(self):
        """Truth rows of the stars whose centre is on the detector (`astropy.table.Table`)."""
        truth = self.detector.truth
        return truth[(truth["type"] == "star") & truth["on_detector"]]


def default_star_field_parameters() -> SceneParameters:
    """Return the scene recipe of star fields.

    No galaxies; cosmic rays at 2 per cm^2 per minute (a third of the
    embedded survey's rate); half the survey's hot pixels and bad columns;
    no dead amplifier; stars drawn from a 4 times oversampled PSF image.
    """
    return SceneParameters(
        galaxy_density_scale=0.0,
        cosmic_ray_rate=2.0,
        hot_pixel_density=1e-5,
        bad_columns_per_4k=1.0,
        dead_amp_probability=0.0,
        star_psf_oversampling=4,
    )


def draw_star_field_parameters(
    conditions: dict,
    detector: int,
    crowding_range: tuple[float, float] = (1.0, 20.0),
    mag_limit_range: tuple[float, float] = (22.0, 26.0),
) -> tuple[float, float]:
    """Draw the crowding and depth of one (visit, detector).

    Parameters
    ----------
    conditions : `dict`
        Visit conditions; only ``seed`` is used.
    detector : `int`
        Detector ID.
    crowding_range : `tuple` [`float`, `float`], optional
        Range of the crowding, drawn log-uniformly.
    mag_limit_range : `tuple` [`float`, `float`], optional
        Range of the depth (band magnitude), drawn uniformly.

    Returns
    -------
    crowding, mag_limit : `float`
    """
    lo, hi = crowding_range
    if not 0 < lo <= hi:
        raise ValueError(f"crowding range must satisfy 0 < min <= max, not {crowding_range}.")
    if not mag_limit_range[0] <= mag_limit_range[1]:
        raise ValueError(f"mag_limit range must satisfy min <= max, not {mag_limit_range}.")
    rng = np.random.default_rng([int(conditions["seed"]), int(detector), _SEED_TAG])
    crowding = float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)
    mag_limit = (
        float(rng.uniform(*mag_limit_range))
        if mag_limit_range[1] > mag_limit_range[0]
        else float(mag_limit_range[0])
    )
    return crowding, mag_limit


def depth_exposure_time(
    conditions: dict, mag_limit: float, psf_sigma: float, nsigma: float = DEPTH_NSIGMA
) -> float:
    """Return the effective exposure time that reaches a depth.

    Parameters
    ----------
    conditions : `dict`
        Visit conditions (band, sky brightness, airmass, read noise).
    mag_limit : `float`
        Band magnitude of a star with PSF signal-to-noise ``nsigma``.
    psf_sigma : `float`
        Second-moment sigma of the true PSF (pixels).
    nsigma : `float`, optional
        Signal-to-noise at the depth.

    Returns
    -------
    exposure_time : `float`
        Seconds. Up to `~lsst.trail_detect.simulation.survey.EXPOSURE_TIME`
        a single exposure with the detector's read noise; beyond, a stack
        of ``T / EXPOSURE_TIME`` exposures whose read-noise variance adds up.
    """
    band, airmass = conditions["band"], conditions["airmass"]
    area = 4.0 * math.pi * psf_sigma**2
    flux_rate = 10.0 ** (-0.4 * (mag_limit - 31.4)) / nJy_per_electron(band, 1.0, airmass)  # e / s
    sky_rate = sky_electrons_per_pixel(conditions["sky_mag"], band, 1.0, airmass)  # e / s / pixel
    read_var = float(conditions["read_noise"]) ** 2
    k = nsigma**2 * area
    # Stack: (f T)^2 = k (s + rn^2 / T0) T.
    t_stack = k * (sky_rate + read_var / EXPOSURE_TIME) / flux_rate**2
    if t_stack >= EXPOSURE_TIME:
        return float(t_stack)
    # Single exposure: (f T)^2 = k (s T + rn^2).
    b = k * sky_rate
    return float((b + math.sqrt(b * b + 4.0 * flux_rate**2 * k * read_var)) / (2.0 * flux_rate**2))


def star_field_conditions(
    conditions: dict,
    detector: int,
    *,
    mag_limit: float,
    psf_sigma: float | None = None,
    satellite_rate: float = 0.0,
) -> dict:
    """Return the effective conditions of a star field of depth ``mag_limit``.

    The exposure time, the nJy calibration, the read noise and the full
    well follow `depth_exposure_time`; ``survey_seed`` becomes a field seed
    of this (visit, detector), so its faint stars and defects are its own;
    ``satellite_rate`` replaces the visit's. Everything else is kept.

    Parameters
    ----------
    conditions : `dict`
        Visit conditions (`~lsst.trail_detect.simulation.survey.plan_survey`).
    detector : `int`
        Detector ID.
    mag_limit : `float`
        Depth (band magnitude of a star with ``nu_psf = 5``).
    psf_sigma : `float`, optional
        Second-moment sigma of the true PSF (pixels); computed if not given.
    satellite_rate : `float`, optional
        Probability of a satellite streak across the visit.

    Returns
    -------
    conditions : `dict`
        A new JSON-serializable dict.
    """
    if psf_sigma is None:
        psf_sigma = psf_moment_sigma(make_true_psf(conditions))
    exptime = depth_exposure_time(conditions, mag_limit, psf_sigma)
    n_stack = max(1.0, exptime / EXPOSURE_TIME)
    field_seed = int(
        np.random.default_rng([int(conditions["seed"]), int(detector), _SEED_TAG, 1]).integers(2**31 - 1)
    )
    result = dict(conditions)
    result.update(
        exposure_time=exptime,
        nJy_per_electron=nJy_per_electron(conditions["band"], exptime, conditions["airmass"]),
        read_noise=float(conditions["read_noise"]) * math.sqrt(n_stack),
        full_well=float(conditions["full_well"]) * n_stack,
        n_stack=n_stack,
        survey_seed=field_seed,
        visit_survey_seed=int(conditions["survey_seed"]),
        satellite_rate=float(satellite_rate),
        star_field_mag_limit=float(mag_limit),
    )
    return result


def simulate_star_field(
    conditions: dict,
    detector: int,
    stars,
    *,
    crowding: float,
    mag_limit: float,
    params: SceneParameters | None = None,
    catalog_mag_limit: float | None = None,
    faint_margin: float = 1.0,
    satellite_rate: float = 0.0,
) -> SimulatedStarField:
    """Simulate one star field.

    Parameters
    ----------
    conditions : `dict`
        Visit conditions (`~lsst.trail_detect.simulation.survey.plan_survey`):
        pointing, seeing and PSF, sky, electronics and seeds.
    detector : `int`
        Detector ID.
    stars : `astropy.table.Table` or `None`
        Star catalog in the normalized Gaia schema (as for
        `~lsst.trail_detect.simulation.scene.simulate_detector`); its stars
        are drawn as they are, whatever the crowding.
    crowding : `float`
        Multiplier on the star-density model for the stars fainter than the
        catalog (all stars when there is no catalog).
    mag_limit : `float`
        Depth: band magnitude of a star with ``nu_psf = 5``.
    params : `~lsst.trail_detect.simulation.scene.SceneParameters`, optional
        Scene recipe; `default_star_field_parameters` if not given. Its
        ``star_mag_limit`` is replaced and its ``star_density_scale``
        multiplied by ``crowding``; its cosmic-ray rate applies to at most
        one 30 s exposure.
    catalog_mag_limit : `float`, optional
        Faint G limit of the catalog (see ``simulate_detector``).
    faint_margin : `float`, optional
        Stars are drawn down to ``mag_limit + faint_margin``.
    satellite_rate : `float`, optional
        Probability of a satellite streak.

    Returns
    -------
    field : `SimulatedStarField`
    """
    from .gaia import gaia_to_band

    if not crowding >= 0:
        raise ValueError(f"crowding must be non-negative, not {crowding}.")
    params = params if params is not None else default_star_field_parameters()
    psf_sigma = psf_moment_sigma(make_true_psf(conditions))
    effective = star_field_conditions(
        conditions, detector, mag_limit=mag_limit, psf_sigma=psf_sigma, satellite_rate=satellite_rate
    )
    band = conditions["band"]
    # simulate_detector gives model stars the colour BP - RP = 1.2: band = G + offset.
    offset = float(gaia_to_band(np.array([0.0]), np.array([1.2]), band)[0])
    star_mag_limit = mag_limit + faint_margin
    cr_scale = min(1.0, EXPOSURE_TIME / effective["exposure_time"])
    run_params = dataclasses.replace(
        params,
        star_mag_limit=star_mag_limit - offset,
        star_density_scale=params.star_density_scale * crowding,
        cosmic_ray_rate=params.cosmic_ray_rate * cr_scale,
    )
    sim = simulate_detector(
        effective, detector, stars, params=run_params, catalog_mag_limit=catalog_mag_limit
    )
    truth = sim.truth
    size = sim.image.shape[0]
    area_arcmin2 = (size * PIXEL_SCALE_ARCSEC / 60.0) ** 2
    on = (truth["type"] == "star") & truth["on_detector"]
    density_all = float(on.sum()) / area_arcmin2
    density = float((on & (np.asarray(truth["mag"]) <= mag_limit)).sum()) / area_arcmin2
    truth.meta.update(
        {
            "crowding": float(crowding),
            "mag_limit": float(mag_limit),
            "star_mag_limit": float(star_mag_limit),
            "star_density": density,
            "star_density_all": density_all,
            "exposure_time": float(effective["exposure_time"]),
            "psf_sigma": float(sim.psf_sigma_true),
        }
    )
    return SimulatedStarField(
        detector=sim,
        conditions=effective,
        crowding=float(crowding),
        mag_limit=float(mag_limit),
        star_mag_limit=float(star_mag_limit),
        density=density,
        density_all=density_all,
    )


class SimulateStarFieldConnections(
    SimulateDetectorConnectionsBase, dimensions=("instrument", "visit", "detector")
):
    """Connections of `SimulateStarFieldTask`."""

    star_field_image = cT.Output(
        doc="Simulated star field: a calibrated, star-only detector image for detector training.",
        name="star_field_image",
        storageClass="VisitImage",
        dimensions=("instrument", "visit", "detector"),
    )
    star_field_truth = cT.Output(
        doc="Every object rendered into the star field (type 'star' for the stars), with positions, "
        "fluxes (nJy), magnitudes and PSF signal-to-noise.",
        name="star_field_truth",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )


class SimulateStarFieldConfig(pipeBase.PipelineTaskConfig, pipelineConnections=SimulateStarFieldConnections):
    """Configuration of `SimulateStarFieldTask`."""

    crowding_min = pexConfig.Field[float](
        doc="Smallest crowding (multiplier on the model density of stars fainter than the catalog); "
        "the crowding is log-uniform between crowding_min and crowding_max per quantum.",
        default=1.0,
    )
    crowding_max = pexConfig.Field[float](doc="Largest crowding.", default=20.0)
    mag_limit_min = pexConfig.Field[float](
        doc="Shallowest depth (band magnitude of a star with PSF S/N 5); the depth is uniform between "
        "mag_limit_min and mag_limit_max per quantum.",
        default=22.0,
    )
    mag_limit_max = pexConfig.Field[float](doc="Deepest depth (band magnitude).", default=26.0)
    faint_margin = pexConfig.Field[float](
        doc="Stars are drawn down to the depth plus this margin (mag), below detection.", default=1.0
    )
    include_galaxies = pexConfig.Field[bool](doc="Draw a few galaxies as well.", default=False)
    galaxy_density_scale = pexConfig.Field[float](
        doc="Multiplier on the galaxy number counts when include_galaxies is set.", default=0.2
    )
    galaxy_mag_limit = pexConfig.Field[float](doc="Faintest galaxy drawn (AB mag, r).", default=25.0)
    star_mag_bright = pexConfig.Field[float](doc="Brightest catalog star drawn (G).", default=9.0)
    spike_mag_limit = pexConfig.Field[float](
        doc="Stars brighter than this get diffraction spikes.", default=15.5
    )
    cosmic_ray_rate = pexConfig.Field[float](
        doc="Cosmic rays per cm^2 per minute, for at most one 30 s exposure (0 for none).", default=2.0
    )
    hot_pixel_density = pexConfig.Field[float](doc="Hot pixels per pixel (0 for none).", default=1e-5)
    bad_columns_per_4k = pexConfig.Field[float](
        doc="Mean bad column segments per 4k sensor (0 for none).", default=1.0
    )
    dead_amp_probability = pexConfig.Field[float](
        doc="Probability that a detector has a dead amplifier segment.", default=0.0
    )
    satellite_rate = pexConfig.Field[float](doc="Probability of a satellite streak.", default=0.0)
    psf_oversampling = pexConfig.Field[int](
        doc="Oversampling of the PSF image faint stars are drawn from (0: exact GalSim FFT for every star).",
        default=4,
    )

    def validate(self):
        super().validate()
        if not 0 < self.crowding_min <= self.crowding_max:
            raise pexConfig.FieldValidationError(
                SimulateStarFieldConfig.crowding_min, self, "need 0 < crowding_min <= crowding_max"
            )
        if not self.mag_limit_min <= self.mag_limit_max:
            raise pexConfig.FieldValidationError(
                SimulateStarFieldConfig.mag_limit_min, self, "need mag_limit_min <= mag_limit_max"
            )

    def scene_parameters(self) -> SceneParameters:
        """Return the scene recipe matching this config (before the crowding and depth)."""
        return dataclasses.replace(
            default_star_field_parameters(),
            galaxy_density_scale=self.galaxy_density_scale if self.include_galaxies else 0.0,
            galaxy_mag_limit=self.galaxy_mag_limit,
            star_mag_bright=self.star_mag_bright,
            spike_mag_limit=self.spike_mag_limit,
            cosmic_ray_rate=self.cosmic_ray_rate,
            hot_pixel_density=self.hot_pixel_density,
            bad_columns_per_4k=self.bad_columns_per_4k,
            dead_amp_probability=self.dead_amp_probability,
            star_psf_oversampling=self.psf_oversampling,
        )


class SimulateStarFieldTask(SimulateDetectorTaskBase):
    """Simulate a star field for detector training, with its truth.

    Mirrors `~lsst.trail_detect.simulation.simulate_visit.SimulateVisitImageTask`:
    the seeing, PSF, sky and electronics are the visit's; the crowding and
    depth are drawn per quantum from the visit's seed and the detector
    (see `simulate_star_field`), so a quantum is reproducible from its
    inputs alone. The image metadata carry ``CROWDING``, ``MAG_LIMIT``,
    ``STAR_MAG_LIMIT``, ``STAR_DENSITY`` (stars brighter than the depth per
    arcmin^2) and ``STAR_DENSITY_ALL`` (all rendered stars per arcmin^2).
    """

    ConfigClass = SimulateStarFieldConfig
    _DefaultName = "simulateStarField"

    def run(self, conditions: dict, star_catalog, detector: int) -> pipeBase.Struct:
        """Simulate the star field of one detector.

        Parameters
        ----------
        conditions : `dict`
            Visit conditions.
        star_catalog : `list`
            Star catalog shards: `astropy.table.Table` objects or deferred
            dataset handles.
        detector : `int`
            Detector ID.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``star_field_image`` (`lsst.images.VisitImage`) and
            ``star_field_truth`` (`astropy.table.Table`).
        """
        from .visit_image import make_visit_image

        stars = gather_star_catalog(star_catalog)
        crowding, mag_limit = draw_star_field_parameters(
            conditions,
            detector,
            (self.config.crowding_min, self.config.crowding_max),
            (self.config.mag_limit_min, self.config.mag_limit_max),
        )
        field = simulate_star_field(
            conditions,
            detector,
            stars,
            crowding=crowding,
            mag_limit=mag_limit,
            params=self.config.scene_parameters(),
            catalog_mag_limit=conditions.get("catalog_mag_limit"),
            faint_margin=self.config.faint_margin,
            satellite_rate=self.config.satellite_rate,
        )
        sim = field.detector
        truth = sim.truth
        truth.meta.update({"visit": int(conditions["visit"]), "detector": int(detector)})
        self.log.info(
            'Star field visit %s detector %d: seeing %.2f", depth %.2f (%.0f s), crowding %.2f, '
            "%.1f stars per arcmin^2 brighter than the depth (%.1f rendered), %d catalog stars.",
            conditions["visit"],
            detector,
            conditions["seeing_fwhm_arcsec"],
            mag_limit,
            field.conditions["exposure_time"],
            crowding,
            field.density,
            field.density_all,
            0 if stars is None else len(stars),
        )
        image = make_visit_image(sim, field.conditions, detector)
        image.metadata.update(
            {
                "CROWDING": field.crowding,
                "MAG_LIMIT": field.mag_limit,
                "STAR_MAG_LIMIT": field.star_mag_limit,
                "STAR_DENSITY": field.density,
                "STAR_DENSITY_ALL": field.density_all,
                "EFFECTIVE_EXPTIME": float(field.conditions["exposure_time"]),
            }
        )
        return pipeBase.Struct(star_field_image=image, star_field_truth=truth)
