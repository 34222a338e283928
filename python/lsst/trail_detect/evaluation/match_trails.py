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

"""matchTrails: detections against injected truth, the stack's view, false-positive classes."""

from __future__ import annotations

__all__ = ("MatchTrailsConfig", "MatchTrailsConnections", "MatchTrailsTask", "build_match_table")

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

_DIMS = ("instrument", "visit", "detector")


class MatchTrailsConnections(pipeBase.PipelineTaskConnections, dimensions=_DIMS):
    """Connections of `MatchTrailsTask`."""

    detections = cT.Input(
        doc="CNN trail detections on the injected image.",
        name="trail_catalog",
        storageClass="ArrowAstropy",
        dimensions=_DIMS,
    )
    truth = cT.Input(
        doc="Injected trails with their truth (nu_det, nu_opt, clipped endpoints, injection_flag).",
        name="injected_visit_image_catalog",
        storageClass="ArrowAstropy",
        dimensions=_DIMS,
    )
    exposure = cT.Input(
        doc="The injected image (PSF width, size, saturated and cosmic-ray mask planes).",
        name="injected_visit_image",
        storageClass="VisitImage",
        dimensions=_DIMS,
    )
    injected_sources = cT.Input(
        doc="Stack-like detection on the injected image.",
        name="injected_source",
        storageClass="ArrowAstropy",
        dimensions=_DIMS,
    )
    reference_sources = cT.Input(
        doc="Stack-like detection on the image before injection (sources that are not trails).",
        name="source",
        storageClass="ArrowAstropy",
        dimensions=_DIMS,
    )
    scene_truth = cT.Input(
        doc="What the simulation put in the image (stars, galaxies, cosmic rays, bad columns, spikes).",
        name="visit_image_truth",
        storageClass="ArrowAstropy",
        dimensions=_DIMS,
    )
    hough = cT.Input(
        doc="Classical Hough-transform detections on the injected image's detection mask.",
        name="hough_trail_catalog",
        storageClass="ArrowAstropy",
        dimensions=_DIMS,
    )
    matches = cT.Output(
        doc="One row per injected trail (CNN, stack and Hough outcome) and per unmatched CNN detection "
        "(false positive with what lies under it, or fragment of a matched trail).",
        name="trail_matches",
        storageClass="ArrowAstropy",
        dimensions=_DIMS,
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config is not None:
            if not config.do_hough:
                del self.hough
            if not config.do_scene_truth:
                del self.scene_truth


class MatchTrailsConfig(pipeBase.PipelineTaskConfig, pipelineConnections=MatchTrailsConnections):
    """Configuration of `MatchTrailsTask`."""

    max_angle = pexConfig.Field[float](doc="Largest angle difference of a match (deg).", default=5.0)
    max_distance_sigma = pexConfig.Field[float](
        doc="Largest perpendicular distance of a match, in PSF sigmas (at least 3 px).", default=2.0
    )
    min_overlap = pexConfig.Field[float](
        doc="Smallest fraction of the injected segment a match must cover.", default=0.3
    )
    stack_band_sigma = pexConfig.Field[float](
        doc="Half-width of the band along a trail in which stack sources count, in PSF sigmas.", default=1.5
    )
    coord_units = pexConfig.ChoiceField[str](
        doc="Units of coord_ra/coord_dec in the source catalogs, used when they lack pixel columns.",
        allowed={"deg": "degrees (source, DP1 and later)", "rad": "radians (src, older catalogs)"},
        default="deg",
    )
    do_hough = pexConfig.Field[bool](doc="Match the classical Hough detections too.", default=True)
    do_scene_truth = pexConfig.Field[bool](
        doc="Classify false positives with the simulation truth (simulated data only).", default=True
    )


def _mask_plane(exposure, names):
    from ..imageutils import any_plane, mask_planes

    return any_plane(mask_planes(exposure), names, exposure.image.array.shape)


def _pixel_scale_arcsec(exposure) -> float:
    """Pixel scale at the image centre (arcsec), from the WCS."""
    from ..imageutils import pixel_to_sky_function

    to_sky = pixel_to_sky_function(exposure)
    cx = exposure.bbox.x.start + exposure.image.array.shape[1] / 2
    cy = exposure.bbox.y.start + exposure.image.array.shape[0] / 2
    ra, dec = to_sky(np.array([cx, cx + 1.0]), np.array([cy, cy]))
    dra = (ra[1] - ra[0]) * np.cos(np.radians(dec[0]))
    return float(np.hypot(dra, dec[1] - dec[0]) * 3600.0)


def build_match_table(
    detections,
    truth,
    *,
    psf_sigma: float,
    image_shape: tuple[int, int],
    visit: int,
    detector: int,
    injected_sources=None,
    reference_sources=None,
    hough=None,
    truth_scene: dict | None = None,
    sky_to_pixel=None,
    config: MatchTrailsConfig | None = None,
):
    """Build the ``trail_matches`` table of one image (pixel coordinates of the image arrays).

    Returns
    -------
    table : `astropy.table.Table`
        Rows of ``row_type`` ``truth`` (every drawn injected trail),
        ``false_positive`` and ``fragment`` (CNN detections not matched
        one-to-one).
    """
    from astropy.table import Table

    from .matching import classify_false_positives, match_trails, stack_view

    config = config or MatchTrailsConfig()
    max_distance = max(3.0, config.max_distance_sigma * psf_sigma)
    truth = truth[np.asarray(truth["injection_flag"]) == 0] if len(truth) else truth
    match = match_trails(
        detections,
        truth,
        max_angle=config.max_angle,
        max_distance=max_distance,
        psf_sigma=psf_sigma,
        min_overlap=config.min_overlap,
    )
    n_truth, n_det = len(truth), len(detections)
    pixels = int(image_shape[0] * image_shape[1])
    rows = Table()
    rows["row_type"] = np.full(n_truth, "truth", dtype="U16")
    for name in ("injection_id",):
        rows[name] = np.asarray(truth[name], dtype=np.int64) if n_truth else np.zeros(0, np.int64)
    for name in ("trail_length", "nu_det", "nu_opt", "mag", "beta", "x_start", "y_start", "x_end", "y_end"):
        rows[name] = (
            np.asarray(truth[name], dtype=float)
            if (n_truth and name in truth.colnames)
            else np.full(n_truth, np.nan)
        )
    matched = np.asarray(match.truth_to_det, dtype=int)
    detected = matched >= 0
    rows["detected"] = detected
    rows["det_trail_id"] = np.where(
        detected, np.asarray(detections["trail_id"])[matched] if n_det else -1, -1
    )

    def det_values(name):
        if not n_det:
            return np.full(n_truth, np.nan)
        values = np.asarray(detections[name], dtype=float)
        return np.where(detected, values[np.clip(matched, 0, None)], np.nan)

    for name in ("score", "score_raw", "snr", "flux"):
        rows[name] = det_values(name)
    # What found each detection: the network or the line search (catalogs before the line search: cnn).
    origin = (
        np.asarray(detections["origin"], dtype="U8")
        if n_det and "origin" in detections.colnames
        else np.full(n_det, "cnn", dtype="U8")
    )
    rows["det_origin"] = np.where(detected, origin[np.clip(matched, 0, None)] if n_det else "", "")
    rows["angle_difference"] = np.asarray(match.angle_difference, dtype=float)
    rows["perpendicular_distance"] = np.asarray(match.perpendicular_distance, dtype=float)
    rows["overlap"] = np.asarray(match.overlap, dtype=float)
    rows["n_fragments"] = np.asarray(match.truth_n_fragments, dtype=np.int64)
    if injected_sources is not None and n_truth:
        view = stack_view(
            truth,
            injected_sources,
            psf_sigma=psf_sigma,
            band_width=config.stack_band_sigma * psf_sigma,
            reference_sources=reference_sources,
            sky_to_pixel=sky_to_pixel,
            coord_units=config.coord_units,
        )
        rows["stack_status"] = np.asarray(view["stack_status"], dtype="U16")
        rows["stack_n_sources"] = np.asarray(view["n_sources"], dtype=np.int64)
    else:
        rows["stack_status"] = np.full(n_truth, "" if injected_sources is None else "missed", dtype="U16")
        rows["stack_n_sources"] = np.zeros(n_truth, dtype=np.int64)
    if hough is not None:
        hough_match = match_trails(
            hough,
            truth,
            max_angle=config.max_angle,
            max_distance=max_distance,
            psf_sigma=psf_sigma,
            min_overlap=config.min_overlap,
        )
        rows["hough_detected"] = np.asarray(hough_match.truth_to_det) >= 0
        n_hough_fp = int(hough_match.n_false_positives)
    else:
        n_hough_fp = 0
    rows["fp_class"] = np.full(n_truth, "", dtype="U16")

    # Unmatched CNN detections.
    status = np.asarray(match.det_status)
    extra = np.nonzero(status != "matched")[0]
    fp_index = np.nonzero(status == "false_positive")[0]
    classes = np.full(n_det, "", dtype="U16")
    if truth_scene is not None and fp_index.size:
        classes[fp_index] = classify_false_positives(detections, fp_index, truth_scene, psf_sigma=psf_sigma)
    if extra.size:
        more = Table()
        more["row_type"] = np.asarray(status[extra], dtype="U16")
        more["injection_id"] = np.full(extra.size, -1, dtype=np.int64)
        for name in ("trail_length", "beta", "x_start", "y_start", "x_end", "y_end"):
            more[name] = np.asarray(detections[name], dtype=float)[extra]
        for name in ("nu_det", "nu_opt", "mag"):
            more[name] = np.full(extra.size, np.nan)
        more["detected"] = np.zeros(extra.size, dtype=bool)
        more["det_trail_id"] = np.asarray(detections["trail_id"], dtype=np.int64)[extra]
        for name in ("score", "score_raw", "snr", "flux"):
            more[name] = np.asarray(detections[name], dtype=float)[extra]
        more["det_origin"] = origin[extra]
        for name in ("angle_difference", "perpendicular_distance", "overlap"):
            more[name] = np.full(extra.size, np.nan)
        more["n_fragments"] = np.zeros(extra.size, dtype=np.int64)
        more["stack_status"] = np.full(extra.size, "", dtype="U16")
        more["stack_n_sources"] = np.zeros(extra.size, dtype=np.int64)
        if hough is not None:
            more["hough_detected"] = np.zeros(extra.size, dtype=bool)
        more["fp_class"] = classes[extra]
        from astropy.table import vstack

        rows = vstack([rows, more], join_type="exact") if len(rows) else more
    rows["visit"] = np.full(len(rows), visit, dtype=np.int64)
    rows["detector"] = np.full(len(rows), detector, dtype=np.int64)
    rows["psf_sigma"] = np.full(len(rows), psf_sigma)
    rows["image_pixels"] = np.full(len(rows), pixels, dtype=np.int64)
    rows.meta["n_hough_false_positives"] = n_hough_fp
    rows.meta["n_hough"] = 0 if hough is None else len(hough)
    return rows


class MatchTrailsTask(pipeBase.PipelineTask):
    """Match CNN detections to injected trails by segment geometry.

    Detections and injected trails are matched one-to-one by perpendicular
    distance, angle and overlap along the segment (not by centre distance).
    For each injected trail the task also records how the stack-like
    detection saw it (the sources along it that were not there before the
    injection: found, broken into pieces, or missed) and whether the
    classical Hough detector found it. Each unmatched detection is a false
    positive, classified by what the simulation put under it, or a
    fragment of a matched trail.
    """

    ConfigClass = MatchTrailsConfig
    _DefaultName = "matchTrails"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        outputs = self.run(visit=int(data_id["visit"]), detector=int(data_id["detector"]), **inputs)
        butlerQC.put(outputs, outputRefs)

    def run(
        self,
        detections,
        truth,
        exposure,
        injected_sources,
        reference_sources,
        scene_truth=None,
        hough=None,
        visit: int = 0,
        detector: int = 0,
    ) -> pipeBase.Struct:
        """Match one image's detections.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``matches`` (`astropy.table.Table`).
        """
        from ..imageutils import psf_sigma, shift_pixel_columns, sky_to_pixel_function

        x0, y0 = exposure.bbox.x.start, exposure.bbox.y.start
        shape = exposure.image.array.shape

        detections, truth, injected_sources, reference_sources = (
            shift_pixel_columns(table, -x0, -y0)
            for table in (detections, truth, injected_sources, reference_sources)
        )
        hough = shift_pixel_columns(hough, -x0, -y0) if hough is not None else None
        to_pixel = sky_to_pixel_function(exposure)

        def sky_to_pixel(ra, dec):
            x, y = to_pixel(ra, dec)
            return x - x0, y - y0

        truth_scene = None
        if scene_truth is not None:
            scene = shift_pixel_columns(scene_truth, -x0, -y0)
            kinds = np.asarray(scene["type"])
            stars = scene[kinds == "star"]
            galaxies = scene[kinds == "galaxy"]
            pixel_scale = _pixel_scale_arcsec(exposure)
            truth_scene = {
                "stars": stars,
                "galaxies": galaxies,
                "pixel_scale": pixel_scale,
                "saturated": _mask_plane(exposure, ["SATURATED", "SAT"]),
                "cosmic_rays": _mask_plane(exposure, ["COSMIC_RAY", "CR"]),
                "bad_columns": _mask_plane(exposure, ["BAD"]),
            }
        table = build_match_table(
            detections,
            truth,
            psf_sigma=psf_sigma(exposure),
            image_shape=shape,
            visit=visit,
            detector=detector,
            injected_sources=injected_sources,
            reference_sources=reference_sources,
            hough=hough,
            truth_scene=truth_scene,
            sky_to_pixel=sky_to_pixel,
            config=self.config,
        )
        n_truth = int(np.sum(table["row_type"] == "truth"))
        self.log.info(
            "%d of %d injected trails detected (stack found %d, Hough %s); %d false positives, %d fragments.",
            int(np.sum(table["detected"])),
            n_truth,
            int(np.sum(np.isin(table["stack_status"], ["found", "broken"]))),
            int(np.sum(table["hough_detected"])) if "hough_detected" in table.colnames else "not run",
            int(np.sum(table["row_type"] == "false_positive")),
            int(np.sum(table["row_type"] == "fragment")),
        )
        return pipeBase.Struct(matches=table)
