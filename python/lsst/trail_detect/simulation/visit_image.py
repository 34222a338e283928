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

"""Assembly of `lsst.images.VisitImage` objects for SimCam.

The arrays come from `~lsst.trail_detect.simulation.scene.simulate_detector`;
this module adds what a calibrated LSST visit image carries: units (nJy),
a sky projection on the detector frame, the approximate Gaussian PSF model,
observation info, the photometric calibration and summary statistics.
"""

from __future__ import annotations

__all__ = ("MASK_PLANES", "make_mask_schema", "make_simple_visit_image", "make_visit_image")

import math

import numpy as np

MASK_PLANES = {
    "BAD": "Bad pixel in the instrument (defect list).",
    "SATURATED": "Pixel was saturated or affected by saturation in a neighbouring pixel.",
    "INTERPOLATED": "Original pixel value was interpolated.",
    "COSMIC_RAY": "A cosmic ray affected this pixel.",
    "DETECTION_EDGE": "Pixel was too close to the edge to be considered for detection.",
    "DETECTED": "Pixel was part of a detected source.",
    "SUSPECT": "Pixel was close to the saturation level.",
    "NO_DATA": "No data was available for this pixel.",
    "INJECTED": "Pixel has had a synthetic source injected into it.",
    "INJECTED_CORE": "Pixel is in the core of an injected source.",
    "STREAK": "Pixel is part of a trail or satellite streak.",
}
"""Mask planes of SimCam visit images, with the DP2 ``VisitImage`` names
(``SATURATED`` is the stack's ``SAT``, ``COSMIC_RAY`` its ``CR``,
``DETECTION_EDGE`` its ``EDGE`` and ``INTERPOLATED`` its ``INTRP``)."""


def make_mask_schema():
    """Return the `lsst.images.MaskSchema` of SimCam visit images."""
    from lsst.images import MaskPlane, MaskSchema

    return MaskSchema([MaskPlane(name, doc) for name, doc in MASK_PLANES.items()])


def make_visit_image(sim, conditions: dict, detector: int, *, frames=None):
    """Wrap a simulated detector in a `lsst.images.VisitImage`.

    Parameters
    ----------
    sim : `~lsst.trail_detect.simulation.scene.SimulatedDetector`
        Arrays and metadata of the simulated image.
    conditions : `dict`
        Visit conditions.
    detector : `int`
        Detector ID.
    frames : `lsst.images.cameras.CameraFrameSet`, optional
        Camera frames, shared between detectors.

    Returns
    -------
    visit_image : `lsst.images.VisitImage`
    """
    import astropy.time
    import astropy.units as u
    from astro_metadata_translator import ObservationInfo

    from lsst.images import Box, Image, Mask, ObservationSummaryStats, SkyProjection, VisitImage
    from lsst.images.fields import ChebyshevField
    from lsst.images.psfs import GaussianPointSpreadFunction

    from .camera import DETECTOR_NAMES, make_detector

    size = sim.image.shape[0]
    visit = int(conditions["visit"])
    bbox = Box.factory[0:size, 0:size]
    det = make_detector(detector, size, visit=visit, frames=frames)
    projection = SkyProjection.from_fits_wcs(sim.wcs, det.frame, pixel_bounds=bbox)
    image = Image(sim.image, bbox=bbox, unit=u.nJy, sky_projection=projection)
    variance = Image(sim.variance, bbox=bbox, unit=u.nJy**2)
    mask = Mask(0, schema=make_mask_schema(), bbox=bbox)
    for name, plane in sim.masks.items():
        if plane.any():
            mask.set(name, plane)
    begin = astropy.time.Time(conditions["datetime_begin"], scale="tai")
    raft, sensor = DETECTOR_NAMES[detector].split("_")
    obs_info = ObservationInfo(
        instrument="SimCam",
        telescope="Simonyi Survey Telescope (simulated)",
        physical_filter=conditions["physical_filter"],
        exposure_id=visit,
        visit_id=visit,
        observation_id=f"SIM_{visit}",
        detector_num=detector,
        detector_name=sensor,
        detector_group=raft,
        detector_exposure_id=visit * 1000 + detector,
        datetime_begin=begin,
        datetime_end=begin + conditions["exposure_time"] * u.s,
        exposure_time=conditions["exposure_time"] * u.s,
        observation_type="science",
        boresight_airmass=conditions["airmass"],
        boresight_rotation_angle=conditions["rotation_deg"] * u.deg,
    )
    stats = ObservationSummaryStats(**sim.summary)
    calibration = ChebyshevField(bbox, np.array([[sim.nJy_per_adu]]), unit=u.nJy / u.adu)
    stamp = int(2 * math.ceil(5 * sim.psf_sigma_model) + 1)
    psf = GaussianPointSpreadFunction(sigma=sim.psf_sigma_model, bounds=bbox, stamp_size=stamp)
    metadata = {
        "SEEING": float(conditions["seeing_fwhm_arcsec"]),
        "PSF_PROFILE": str(conditions["psf_profile"]),
        "PSF_SIGMA_TRUE": float(sim.psf_sigma_true),
        "SIM_SEED": int(conditions["seed"]),
        "SURVEY_SEED": int(conditions["survey_seed"]),
        "GAIN": float(conditions["gain"]),
        "READ_NOISE": float(conditions["read_noise"]),
        "FULL_WELL": float(conditions["full_well"]),
        "SKY_SUBTRACTED_NJY": float(sim.background_nJy),
        "NJY_PER_ADU": float(sim.nJy_per_adu),
    }
    return VisitImage(
        image,
        mask=mask,
        variance=variance,
        obs_info=obs_info,
        summary_stats=stats,
        photometric_scaling=calibration,
        psf=psf,
        detector=det,
        band=conditions["band"],
        metadata=metadata,
    )


def make_simple_visit_image(
    image: np.ndarray,
    variance: np.ndarray,
    psf_sigma: float,
    *,
    gain: float = 1.6,
    nJy_per_adu: float = 0.9,
    visit: int = 1,
    detector: int = 4,
    band: str = "r",
    boresight: tuple[float, float] = (95.0, -25.0),
    rotation_deg: float = 0.0,
):
    """Wrap plain arrays in a SimCam `lsst.images.VisitImage`.

    For tests and benchmarks that need a real visit image without running
    the scene simulation: a TAN WCS on detector ``detector`` of a pointing,
    a Gaussian PSF model of ``psf_sigma`` pixels and a photometric
    calibration of ``nJy_per_adu``, with ``GAIN`` and ``NJY_PER_ADU`` in
    the metadata.
    """
    from .camera import detector_wcs
    from .scene import SimulatedDetector
    from .survey import plan_survey

    size = image.shape[0]
    if image.shape != (size, size) or variance.shape != image.shape:
        raise ValueError(
            f"image and variance must be the same square shape, not {image.shape}, {variance.shape}."
        )
    conditions = dict(plan_survey(1, [detector], size, seed=visit)[0])
    conditions.update(
        visit=visit,
        band=band,
        physical_filter=f"{band}_sim",
        boresight_ra=boresight[0],
        boresight_dec=boresight[1],
        rotation_deg=rotation_deg,
        gain=gain,
        seeing_fwhm_arcsec=2.3548 * psf_sigma * 0.2,
    )
    wcs = detector_wcs(boresight[0], boresight[1], rotation_deg, detector, size)
    masks = {name: np.zeros(image.shape, dtype=bool) for name in ("SATURATED", "BAD", "NO_DATA")}
    sim = SimulatedDetector(
        image=np.asarray(image, dtype=np.float32),
        variance=np.asarray(variance, dtype=np.float32),
        masks=masks,
        model=np.zeros(image.shape, dtype=np.float32),
        truth=None,
        wcs=wcs,
        psf_sigma_true=psf_sigma,
        psf_sigma_model=psf_sigma,
        nJy_per_adu=nJy_per_adu,
        background_nJy=0.0,
        summary={"psfSigma": psf_sigma, "pixelScale": 0.2, "expTime": conditions["exposure_time"]},
    )
    return make_visit_image(sim, conditions, detector)
