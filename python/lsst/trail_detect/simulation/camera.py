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

"""The embedded survey's camera: one LSSTCam-like raft of nine 4k sensors.

Geometry is kept in plain functions so that repository creation (visit and
visit-detector regions), simulation (pixel WCS) and the ``lsst.images``
camera description all agree.
"""

from __future__ import annotations

__all__ = (
    "DETECTOR_NAMES",
    "FULL_SENSOR_SIZE",
    "N_DETECTORS",
    "PIXEL_SCALE_ARCSEC",
    "PIXEL_SIZE_MM",
    "SENSOR_PITCH_PX",
    "detector_center_px",
    "detector_corners_sky",
    "detector_polygon",
    "detector_wcs",
    "make_camera_frame_set",
    "make_detector",
    "visit_polygon",
)

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PIXEL_SCALE_ARCSEC = 0.2
"""Nominal pixel scale (arcsec per pixel), as LSSTCam."""

PIXEL_SIZE_MM = 0.010
"""Physical pixel size (mm): 10 micron pixels, as LSSTCam."""

FULL_SENSOR_SIZE = 4096
"""Largest square image that can be simulated for one sensor (pixels)."""

SENSOR_PITCH_PX = 4225
"""Centre-to-centre distance between neighbouring sensors of the raft (pixels)."""

N_DETECTORS = 9
"""Number of detectors of the camera (one 3x3 raft)."""

DETECTOR_NAMES = tuple(f"R22_S{row}{col}" for row in range(3) for col in range(3))
"""Full detector names, indexed by detector ID (row-major, ``S{row}{col}``)."""


def detector_center_px(detector: int) -> tuple[float, float]:
    """Return the focal-plane position of a detector centre.

    Parameters
    ----------
    detector : `int`
        Detector ID, 0 to 8.

    Returns
    -------
    x, y : `float`
        Position of the sensor centre relative to the boresight, in pixels.
    """
    if not 0 <= detector < N_DETECTORS:
        raise ValueError(f"detector {detector} is not a SimCam detector (0 to {N_DETECTORS - 1}).")
    row, col = divmod(detector, 3)
    return (col - 1) * SENSOR_PITCH_PX, (row - 1) * SENSOR_PITCH_PX


def detector_wcs(boresight_ra: float, boresight_dec: float, rotation_deg: float, detector: int, size: int):
    """Build the TAN WCS of one detector for one pointing.

    Parameters
    ----------
    boresight_ra, boresight_dec : `float`
        Pointing of the optical axis (degrees, ICRS).
    rotation_deg : `float`
        Rotation of the camera on the sky (degrees, east of north for +y).
    detector : `int`
        Detector ID.
    size : `int`
        Number of pixels along each side of the simulated (square) image,
        which is the central part of the sensor.

    Returns
    -------
    wcs : `astropy.wcs.WCS`
        Gnomonic projection about the boresight; FITS 1-based pixel
        convention as usual, so ``wcs.pixel_to_world(x, y)`` takes 0-based
        array coordinates.
    """
    import astropy.wcs

    if not 0 < size <= FULL_SENSOR_SIZE:
        raise ValueError(f"size {size} must be between 1 and {FULL_SENSOR_SIZE} pixels.")
    xc, yc = detector_center_px(detector)
    scale = PIXEL_SCALE_ARCSEC / 3600.0
    theta = math.radians(rotation_deg)
    c, s = math.cos(theta), math.sin(theta)
    wcs = astropy.wcs.WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [boresight_ra, boresight_dec]
    # 0-based pixel p sits at focal-plane position (p - (size-1)/2 + centre).
    wcs.wcs.crpix = [(size - 1) / 2.0 - xc + 1.0, (size - 1) / 2.0 - yc + 1.0]
    wcs.wcs.cd = np.array([[-scale * c, scale * s], [scale * s, scale * c]])
    wcs.wcs.radesys = "ICRS"
    wcs.pixel_shape = (size, size)
    return wcs


def detector_corners_sky(wcs, size: int) -> np.ndarray:
    """Return the sky positions of the four outer pixel corners.

    Parameters
    ----------
    wcs : `astropy.wcs.WCS`
        Detector WCS.
    size : `int`
        Image size in pixels.

    Returns
    -------
    corners : `numpy.ndarray`
        Array of shape (4, 2) with (ra, dec) in degrees.
    """
    x = np.array([-0.5, size - 0.5, size - 0.5, -0.5])
    y = np.array([-0.5, -0.5, size - 0.5, size - 0.5])
    ra, dec = wcs.wcs_pix2world(x, y, 0)
    return np.stack([ra, dec], axis=1)


def detector_polygon(wcs, size: int):
    """Return the sky region of a detector as an `lsst.sphgeom.ConvexPolygon`."""
    import lsst.sphgeom as sg

    corners = detector_corners_sky(wcs, size)
    return sg.ConvexPolygon.convexHull(
        [sg.UnitVector3d(sg.LonLat.fromDegrees(float(r), float(d))) for r, d in corners]
    )


def visit_polygon(
    boresight_ra: float, boresight_dec: float, rotation_deg: float, detectors: Sequence[int], size: int
):
    """Return the convex hull of all detectors of a visit on the sky."""
    import lsst.sphgeom as sg

    vertices = []
    for det in detectors:
        wcs = detector_wcs(boresight_ra, boresight_dec, rotation_deg, det, size)
        vertices.extend(
            sg.UnitVector3d(sg.LonLat.fromDegrees(float(r), float(d)))
            for r, d in detector_corners_sky(wcs, size)
        )
    return sg.ConvexPolygon.convexHull(vertices)


def make_camera_frame_set(size: int, instrument: str = "SimCam"):
    """Describe the camera's coordinate systems for `lsst.images`.

    Parameters
    ----------
    size : `int`
        Simulated image size per detector (pixels).
    instrument : `str`, optional
        Instrument name.

    Returns
    -------
    frames : `lsst.images.cameras.CameraFrameSet`
        Frames DETECTOR_n (pixels), FOCAL_PLANE (mm) and FIELD_ANGLE (rad).
    """
    from lsst.images._transforms import _ast
    from lsst.images.cameras import CameraFrameSet

    frame_set = _ast.FrameSet(_ast.Frame(2, "Domain=FOCAL_PLANE,Ident=FOCAL_PLANE,Unit(1)=mm,Unit(2)=mm"))
    rad_per_mm = math.radians(PIXEL_SCALE_ARCSEC / 3600.0) / PIXEL_SIZE_MM
    frame_set.addFrame(
        1,
        _ast.ZoomMap(2, rad_per_mm),
        _ast.Frame(2, "Domain=FIELD_ANGLE,Ident=FIELD_ANGLE,Unit(1)=rad,Unit(2)=rad"),
    )
    for det in range(N_DETECTORS):
        xc, yc = detector_center_px(det)
        pixels_to_mm = _ast.CmpMap(
            _ast.ShiftMap([xc - (size - 1) / 2.0, yc - (size - 1) / 2.0]),
            _ast.ZoomMap(2, PIXEL_SIZE_MM),
            True,
        )
        frame_set.addFrame(
            1,
            pixels_to_mm.inverted(),
            _ast.Frame(
                2,
                f"Domain=DETECTOR_{det},Ident=DETECTOR_{det},Bottom(1)=0,Top(1)={size},"
                f"Bottom(2)=0,Top(2)={size}",
            ),
        )
    return CameraFrameSet(instrument, frame_set)


def make_detector(
    detector: int,
    size: int,
    visit: int | None = None,
    frames: Any = None,
    serials: Mapping[int, str] | None = None,
):
    """Build the `lsst.images.cameras.Detector` of one SimCam detector.

    Parameters
    ----------
    detector : `int`
        Detector ID.
    size : `int`
        Simulated image size (pixels).
    visit : `int`, optional
        Visit the detector frame belongs to.
    frames : `lsst.images.cameras.CameraFrameSet`, optional
        Camera frames; built with `make_camera_frame_set` if not given.
    serials : `dict`, optional
        Serial numbers by detector ID.
    """
    from lsst.images import Box
    from lsst.images.cameras import Detector, DetectorAttributes, DetectorType, Orientation

    if frames is None:
        frames = make_camera_frame_set(size)
    xc, yc = detector_center_px(detector)
    attributes = DetectorAttributes(
        name=DETECTOR_NAMES[detector],
        id=detector,
        type=DetectorType.SCIENCE,
        serial=(serials or {}).get(detector, f"SIM-{detector:03d}"),
        bbox=Box.factory[0:size, 0:size],
        orientation=Orientation(
            focal_plane_x=xc * PIXEL_SIZE_MM, focal_plane_y=yc * PIXEL_SIZE_MM, focal_plane_z=0.0
        ),
        pixel_size=PIXEL_SIZE_MM,
        physical_type="SIM-CCD",
    )
    return Detector(attributes, [], frames, visit=visit)
