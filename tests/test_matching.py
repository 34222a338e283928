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

"""Tests of `lsst.trail_detect.evaluation.matching`: segment metrics,
one-to-one matching with fragments, the stack's view of injected trails
and the classification of false positives, on constructed geometry.
"""

import math
import unittest

import numpy as np
from astropy.table import Table

import lsst.utils.tests
from lsst.trail_detect.evaluation.matching import (
    FALSE_POSITIVE_CLASSES,
    MatchResult,
    classify_false_positives,
    match_trails,
    segment_match_metrics,
    source_pixel_positions,
    stack_view,
)


def segments(rows, **extra):
    """A trail table from ``(x_start, y_start, x_end, y_end)`` rows."""
    rows = np.asarray(rows, dtype=float).reshape(-1, 4)
    table = Table({name: rows[:, k] for k, name in enumerate(("x_start", "y_start", "x_end", "y_end"))})
    for name, values in extra.items():
        table[name] = values
    return table


def truth_table(rows, flags=None):
    """An injected-truth table with ids, lengths and flags."""
    rows = np.asarray(rows, dtype=float).reshape(-1, 4)
    n = len(rows)
    return segments(
        rows,
        injection_id=np.arange(100, 100 + n),
        trail_length=np.hypot(rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1]),
        nu_det=np.full(n, 10.0),
        nu_opt=np.full(n, 12.0),
        injection_flag=np.zeros(n, dtype=np.int64) if flags is None else np.asarray(flags),
    )


def along(x0, y0, beta, start, stop):
    """Endpoints of the part ``[start, stop]`` of the line through (x0, y0) at angle beta."""
    ux, uy = math.cos(math.radians(beta)), math.sin(math.radians(beta))
    return (x0 + start * ux, y0 + start * uy, x0 + stop * ux, y0 + stop * uy)


class SegmentDistanceTestCase(lsst.utils.tests.TestCase):
    def test_points_and_segments_broadcast(self):
        """Distances to one segment; to many at once; a zero-length segment is a point."""
        from lsst.trail_detect.geometry import segment_distance

        x, y = np.array([0.0, 5.0, 12.0, 5.0]), np.array([0.0, 3.0, 0.0, 0.0])
        np.testing.assert_allclose(segment_distance(x, y, 0.0, 0.0, 10.0, 0.0), [0.0, 3.0, 2.0, 0.0])
        np.testing.assert_allclose(segment_distance(x, y, 5.0, 0.0, 5.0, 0.0), [5.0, 3.0, 7.0, 0.0])
        x0, y0 = np.array([0.0, 5.0, 0.0]), np.array([0.0, 0.0, 3.0])
        x1, y1 = np.array([10.0, 5.0, 10.0]), np.array([0.0, 0.0, 3.0])
        table = segment_distance(x[:, None], y[:, None], x0, y0, x1, y1)
        self.assertEqual(table.shape, (4, 3))
        for k in range(3):
            np.testing.assert_array_equal(table[:, k], segment_distance(x, y, x0[k], y0[k], x1[k], y1[k]))


class SegmentMetricsTestCase(lsst.utils.tests.TestCase):
    def test_exact(self):
        """A segment compared with itself, either way round."""
        truth = truth_table([[10, 20, 110, 70]])
        det = segments([[10, 20, 110, 70], [110, 70, 10, 20]])
        m = segment_match_metrics(det, truth)
        self.assertEqual(m["angle_difference"].shape, (2, 1))
        np.testing.assert_allclose(m["angle_difference"], 0.0, atol=1e-9)
        np.testing.assert_allclose(m["perpendicular_distance"], 0.0, atol=1e-9)
        np.testing.assert_allclose(m["overlap"], 1.0)
        np.testing.assert_allclose(m["detection_overlap"], 1.0)

    def test_angles_are_undirected(self):
        truth = segments([[0, 0, 100, 0]])
        det = segments([along(50, 0, 170, -20, 20), along(50, 0, 95, -20, 20), along(50, 0, -30, -20, 20)])
        m = segment_match_metrics(det, truth)
        np.testing.assert_allclose(m["angle_difference"][:, 0], [10.0, 85.0, 30.0], atol=1e-9)

    def test_perpendicular_distance_and_overlap(self):
        """Mean |offset| over the overlapping part, exact for tilted and crossing detections."""
        truth = segments([[0, 0, 100, 0]])
        det = segments(
            [
                [0, 1, 100, 3],  # tilted, one side: mean offset 2
                [0, -2, 100, 2],  # crossing the line: mean |offset| 1
                [-50, 0, 150, 0],  # twice as long: covers the truth, half of it overlaps
                [50, 4, 150, 4],  # half overlap, offset 4
                [200, 0, 250, 0],  # beyond the end, on the line
            ]
        )
        m = segment_match_metrics(det, truth)
        np.testing.assert_allclose(m["perpendicular_distance"][:, 0], [2.0, 1.0, 0.0, 4.0, 0.0], atol=1e-9)
        np.testing.assert_allclose(m["overlap"][:, 0], [1.0, 1.0, 1.0, 0.5, 0.0], atol=1e-9)
        np.testing.assert_allclose(
            m["detection_overlap"][:, 0], [100 / math.hypot(100, 2), 100 / math.hypot(100, 4), 0.5, 0.5, 0.0]
        )

    def test_only_overlapping_part_counts(self):
        """A detection leaving the line past the truth's end is judged on the part alongside it."""
        truth = segments([[0, 0, 100, 0]])
        det = segments([[50, 0, 150, 50]])  # from the line at x=50, rising 0.5 px per px
        m = segment_match_metrics(det, truth)
        # Inside the truth x runs 50..100, the offset 0..25: mean 12.5.
        self.assertFloatsAlmostEqual(m["perpendicular_distance"][0, 0], 12.5, atol=1e-9)
        self.assertFloatsAlmostEqual(m["overlap"][0, 0], 0.5, atol=1e-9)

    def test_point_truth(self):
        truth = segments([[50, 2, 50, 2]])
        det = segments([[0, 0, 100, 0], [60, 0, 100, 0]])
        m = segment_match_metrics(det, truth)
        np.testing.assert_allclose(m["overlap"][:, 0], [1.0, 0.0])
        np.testing.assert_allclose(m["perpendicular_distance"][:, 0], [2.0, 2.0])
        self.assertTrue(np.all(np.isnan(m["angle_difference"])))

    def test_clipped_truth(self):
        """The on-detector part of the truth is used when present."""
        truth = segments([[-100, 10, 100, 10]], x_start_clipped=[-0.5], y_start_clipped=[10.0])
        truth["x_end_clipped"] = [100.0]
        truth["y_end_clipped"] = [10.0]
        det = segments([[0, 10, 100, 10]])
        self.assertFloatsAlmostEqual(
            segment_match_metrics(det, truth)["overlap"][0, 0], 100 / 100.5, rtol=1e-9
        )
        self.assertFloatsAlmostEqual(
            segment_match_metrics(det, truth, use_clipped=False)["overlap"][0, 0], 0.5, rtol=1e-9
        )

    def test_empty(self):
        m = segment_match_metrics(segments(np.zeros((0, 4))), truth_table([[0, 0, 10, 0]]))
        self.assertEqual(m["overlap"].shape, (0, 1))
        m = segment_match_metrics(segments([[0, 0, 10, 0]]), {})
        self.assertEqual(m["angle_difference"].shape, (1, 0))


class MatchTrailsTestCase(lsst.utils.tests.TestCase):
    def check_counts(self, result, matched, fragments, fps):
        self.assertEqual(
            (result.n_matched, result.n_fragments, result.n_false_positives), (matched, fragments, fps)
        )

    def test_exact_match(self):
        truth = truth_table([[20, 30, 220, 130]])
        result = match_trails(segments([[20, 30, 220, 130]]), truth)
        self.assertIsInstance(result, MatchResult)
        np.testing.assert_array_equal(result.det_to_truth, [0])
        np.testing.assert_array_equal(result.truth_to_det, [0])
        np.testing.assert_array_equal(result.det_status, ["matched"])
        np.testing.assert_array_equal(result.truth_n_fragments, [1])
        self.assertFloatsAlmostEqual(result.overlap[0], 1.0)
        self.assertFloatsAlmostEqual(result.angle_difference[0], 0.0, atol=1e-9)
        self.assertFloatsAlmostEqual(result.perpendicular_distance[0], 0.0, atol=1e-9)
        self.assertTrue(result.truth_matched[0])
        # Plain (n, 4) arrays work too.
        result = match_trails(np.array([[20.0, 30, 220, 130]]), np.array([[220.0, 130, 20, 30]]))
        np.testing.assert_array_equal(result.det_status, ["matched"])

    def test_parallel_offsets(self):
        """1 px beside the truth matches; 20 px beside it is a false positive."""
        truth = truth_table([along(100, 100, 30, -60, 60)])
        nx, ny = -math.sin(math.radians(30)), math.cos(math.radians(30))
        for offset, expected in ((1.0, "matched"), (20.0, "false_positive")):
            x0, y0, x1, y1 = along(100 + offset * nx, 100 + offset * ny, 30, -55, 58)
            result = match_trails(segments([[x0, y0, x1, y1]]), truth, psf_sigma=2.0)
            self.assertEqual(result.det_status[0], expected)
            if expected == "matched":
                self.assertFloatsAlmostEqual(result.perpendicular_distance[0], offset, rtol=1e-9)
            else:
                self.assertEqual(result.truth_to_det[0], -1)
                self.assertTrue(np.isnan(result.overlap[0]))
                self.assertEqual(result.truth_n_fragments[0], 0)

    def test_max_distance_default(self):
        """The default distance limit is max(3, 2 psf_sigma)."""
        truth = truth_table([[0, 0, 100, 0]])
        det = segments([[0, 5, 100, 5]])
        self.assertEqual(match_trails(det, truth, psf_sigma=2.0).det_status[0], "false_positive")
        self.assertEqual(match_trails(det, truth, psf_sigma=3.0).det_status[0], "matched")
        self.assertEqual(match_trails(det, truth, psf_sigma=2.0, max_distance=6).det_status[0], "matched")

    def test_crossing_trails(self):
        """Two trails crossing at 60 degrees; each detection goes to its own trail, not the nearest centre."""
        truth = truth_table([along(200, 200, 10, -100, 100), along(200, 200, 70, -100, 100)])
        # Listed the other way round, both centred on the crossing point.
        det = segments([along(201, 200, 70, -90, 95), along(200, 201, 10, -95, 90)])
        result = match_trails(det, truth)
        np.testing.assert_array_equal(result.det_to_truth, [1, 0])
        np.testing.assert_array_equal(result.truth_to_det, [1, 0])
        np.testing.assert_array_equal(result.truth_n_fragments, [1, 1])
        self.check_counts(result, 2, 0, 0)
        np.testing.assert_array_less(result.angle_difference, 1e-6)

    def test_split_trail(self):
        """A trail found in two pieces: one match, one fragment, no false positive."""
        truth = truth_table([[0, 50, 200, 50], [0, 150, 200, 150]])
        det = segments([[120, 50.5, 200, 50.5], [0, 49.5, 110, 49.5], [10, 150, 190, 150]])
        result = match_trails(det, truth)
        np.testing.assert_array_equal(result.det_status, ["fragment", "matched", "matched"])
        np.testing.assert_array_equal(result.det_to_truth, [-1, 0, 1])
        np.testing.assert_array_equal(result.truth_to_det, [1, 2])
        np.testing.assert_array_equal(result.truth_n_fragments, [2, 1])
        np.testing.assert_array_equal(result.det_fragment_of, [0, -1, -1])
        self.assertFloatsAlmostEqual(result.overlap[0], 110 / 200)
        self.check_counts(result, 2, 1, 0)

    def test_split_below_min_overlap(self):
        """Pieces each too short to match are still fragments, not false positives."""
        truth = truth_table([[0, 0, 300, 0]])
        det = segments([[0, 0, 70, 0], [80, 0, 150, 0], [160, 0, 230, 0]])
        result = match_trails(det, truth, min_overlap=0.3)
        np.testing.assert_array_equal(result.det_status, ["fragment"] * 3)
        self.assertEqual(result.truth_to_det[0], -1)
        self.assertEqual(result.truth_n_fragments[0], 3)

    def test_duplicate_detection(self):
        """Two detections of the same trail: the better one matches, the other is a fragment."""
        truth = truth_table([[0, 0, 100, 0]])
        det = segments([[5, 1.5, 95, 1.5], [0, 0.2, 100, 0.2]])
        result = match_trails(det, truth)
        np.testing.assert_array_equal(result.det_status, ["fragment", "matched"])

    def test_angle_tolerance(self):
        """Long trails need the angle; short ones are forgiven, more so the shorter they are."""
        truth_long = truth_table([along(100, 100, 20, -100, 100)])
        det_off = segments([along(100, 100, 28, -100, 100)])
        self.assertEqual(match_trails(det_off, truth_long).det_status[0], "false_positive")
        det_close = segments([along(100, 100, 24, -100, 100)])
        self.assertEqual(match_trails(det_close, truth_long).det_status[0], "matched")
        # 20 px long with psf_sigma 2 (max_distance 4 px): tolerance atan(2 * 4 / 20) = 21.8 degrees.
        truth_mid = truth_table([along(100, 100, 20, -10, 10)])
        self.assertEqual(
            match_trails(segments([along(100, 100, 35, -10, 10)]), truth_mid).det_status[0], "matched"
        )
        self.assertEqual(
            match_trails(segments([along(100, 100, 45, -10, 10)]), truth_mid).det_status[0], "false_positive"
        )
        # The angle allowed is the one at which the ends reach max_distance: a 40 px detection
        # turned 10 degrees has its ends 3.5 px off, within 4 px; turned 13 degrees, 4.5 px.
        truth_40 = truth_table([along(100, 100, 20, -20, 20)])
        self.assertEqual(
            match_trails(segments([along(100, 100, 30, -20, 20)]), truth_40).det_status[0], "matched"
        )
        self.assertEqual(
            match_trails(segments([along(100, 100, 33, -20, 20)]), truth_40).det_status[0], "false_positive"
        )

    def test_short_trail_wrong_angle(self):
        """A trail shorter than 3 psf sigma matches a detection at a wrong-ish angle."""
        truth = truth_table([along(50, 50, 0, -2.5, 2.5)])  # 5 px, below 3 * 2 px
        det = segments([along(50.5, 50, 70, -3, 3)])
        result = match_trails(det, truth, psf_sigma=2.0)
        self.assertEqual(result.det_status[0], "matched")
        self.assertFloatsAlmostEqual(result.angle_difference[0], 70.0, atol=1e-6)
        # With a sharp PSF the same pair is too long for the angle to be forgiven (the tolerance is
        # atan(2 * 3 / 5) = 50 degrees, the 3 px least max_distance at the ends).
        self.assertEqual(match_trails(det, truth, psf_sigma=0.5).det_status[0], "false_positive")

    def test_false_positive(self):
        truth = truth_table([[0, 0, 100, 0]])
        det = segments([[0, 0, 100, 0], [300, 300, 350, 320]])
        result = match_trails(det, truth)
        np.testing.assert_array_equal(result.det_status, ["matched", "false_positive"])
        np.testing.assert_array_equal(result.det_to_truth, [0, -1])
        self.check_counts(result, 1, 0, 1)

    def test_flagged_truth_is_ignored(self):
        """A row with a non-zero injection_flag is not truth: a detection on it is a false positive."""
        truth = truth_table([[0, 0, 100, 0], [0, 50, 100, 50]], flags=[8, 0])
        det = segments([[0, 0, 100, 0], [0, 50, 100, 50]])
        result = match_trails(det, truth)
        np.testing.assert_array_equal(result.truth_valid, [False, True])
        np.testing.assert_array_equal(result.det_status, ["false_positive", "matched"])
        np.testing.assert_array_equal(result.truth_to_det, [-1, 1])
        np.testing.assert_array_equal(result.truth_n_fragments, [0, 1])
        self.assertEqual(result.n_truth, 1)

    def test_empty_inputs(self):
        no_det = segments(np.zeros((0, 4)))
        truth = truth_table([[0, 0, 100, 0], [0, 50, 100, 50]])
        result = match_trails(no_det, truth)
        np.testing.assert_array_equal(result.truth_to_det, [-1, -1])
        np.testing.assert_array_equal(result.truth_n_fragments, [0, 0])
        self.assertTrue(np.all(np.isnan(result.overlap)))
        self.assertEqual(len(result.det_status), 0)

        result = match_trails(segments([[0, 0, 10, 0]]), truth_table(np.zeros((0, 4))))
        np.testing.assert_array_equal(result.det_status, ["false_positive"])
        np.testing.assert_array_equal(result.det_to_truth, [-1])
        self.assertEqual(len(result.truth_to_det), 0)

        result = match_trails({}, {})
        self.assertEqual((len(result.det_to_truth), len(result.truth_to_det)), (0, 0))
        self.check_counts(result, 0, 0, 0)


class StackViewTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.psf_sigma = 2.0
        # A: found (plus a pre-existing star on it); B: missed; C: broken in 3; D: not drawn.
        self.truth = truth_table(
            [[10, 20, 110, 20], [10, 80, 110, 80], [10, 140, 130, 200], [10, 300, 100, 300]],
            flags=[0, 0, 0, 8],
        )
        cx = np.array([30.0, 70.0, 110.0])
        self.sources = Table(
            {
                "id": np.arange(1000, 1011),
                "x": np.concatenate([[60.0, 90.0, 60.0, 60.0, 116.0, 60.0], cx, [30.3, 50.0]]),
                "y": np.concatenate(
                    [[20.5, 20.0, 26.0, 80.0 + 4.0, 20.0, 240.0], 140 + (cx - 10) * 0.5, [150.0, 300.0]]
                ),
            }
        )
        # Rows: 0 on A; 1 a star on A that was there before; 2 beside A (6 px); 3 beside B (4 px);
        # 4 past A's end by 6 px; 5 far away; 6-8 along C; 9 a duplicate of 6; 10 on the flagged D.
        self.reference = Table({"x": [90.6, 400.0], "y": [19.8, 400.0]})

    def test_found_missed_broken(self):
        view = stack_view(
            self.truth, self.sources, psf_sigma=self.psf_sigma, reference_sources=self.reference
        )
        np.testing.assert_array_equal(view["injection_id"], [100, 101, 102])
        np.testing.assert_array_equal(view["stack_status"], ["found", "missed", "broken"])
        np.testing.assert_array_equal(view["n_sources"], [1, 0, 3])
        np.testing.assert_array_equal(view["n_along"], [1, 0, 4])
        np.testing.assert_array_equal(view["n_excluded"], [1, 0, 0])
        np.testing.assert_array_equal(view["source_ids"][0], [1000])
        np.testing.assert_array_equal(np.sort(view["source_ids"][2]), [1006, 1007, 1008, 1009])
        np.testing.assert_array_equal(view["nu_det"], [10.0] * 3)

    def test_pre_existing_source(self):
        """Without the pre-injection catalog the old star makes A look broken; exclude works too."""
        view = stack_view(self.truth, self.sources, psf_sigma=self.psf_sigma)
        self.assertEqual(view["stack_status"][0], "broken")
        self.assertEqual(view["n_sources"][0], 2)
        exclude = np.zeros(len(self.sources), dtype=bool)
        exclude[1] = True
        view = stack_view(self.truth, self.sources, psf_sigma=self.psf_sigma, exclude=exclude)
        self.assertEqual(view["stack_status"][0], "found")
        self.assertEqual(view["n_excluded"][0], 0)

    def test_band_and_ends(self):
        """A wider band takes the sources beside the trails; a longer end margin the one past the end."""
        view = stack_view(
            self.truth,
            self.sources,
            psf_sigma=self.psf_sigma,
            band_width=7.0,
            reference_sources=self.reference,
        )
        np.testing.assert_array_equal(view["stack_status"], ["broken", "found", "broken"])
        # Row 4 lies 6 px past A's end: in with a 6 px margin (band 3 px), out by default (2 px).
        view = stack_view(
            self.truth,
            self.sources,
            psf_sigma=self.psf_sigma,
            end_margin=6.0,
            reference_sources=self.reference,
        )
        self.assertEqual(view["n_sources"][0], 2)

    def test_min_separation(self):
        """Duplicates closer than min_separation are one piece; with 0 they are counted."""
        view = stack_view(self.truth, self.sources, psf_sigma=self.psf_sigma, min_separation=0.0)
        self.assertEqual(view["n_sources"][2], 4)

    def test_old_src_columns(self):
        """``slot_Centroid_x/y`` are read, deblended parents and sky sources are skipped."""
        src = Table(
            {
                "id": [1, 2, 3, 4],
                "slot_Centroid_x": [60.0, 60.0, 30.0, 80.0],
                "slot_Centroid_y": [20.0, 20.0, 80.0, 80.0],
                "deblend_nChild": [2, 0, 0, 0],
                "sky_source": [False, False, True, False],
            }
        )
        view = stack_view(self.truth, src, psf_sigma=self.psf_sigma)
        np.testing.assert_array_equal(view["stack_status"], ["found", "found", "missed"])
        np.testing.assert_array_equal(view["source_ids"][0], [2])

    def test_empty(self):
        view = stack_view(truth_table(np.zeros((0, 4))), self.sources, psf_sigma=2.0)
        self.assertEqual(len(view), 0)
        self.assertIn("stack_status", view.colnames)
        view = stack_view(self.truth, Table({"x": np.zeros(0), "y": np.zeros(0)}), psf_sigma=2.0)
        np.testing.assert_array_equal(view["stack_status"], ["missed"] * 3)


class SourcePositionsTestCase(lsst.utils.tests.TestCase):
    ra0, dec0, scale = 150.0, 2.0, 0.2 / 3600.0

    def sky_to_pixel(self, ra, dec):
        """A flat tangent plane: degrees to pixels."""
        ra, dec = np.asarray(ra), np.asarray(dec)
        return (ra - self.ra0) * math.cos(math.radians(self.dec0)) / self.scale, (
            dec - self.dec0
        ) / self.scale

    def test_degrees_and_radians(self):
        x = np.array([10.0, 250.5, 3000.0])
        y = np.array([5.0, 1000.0, 42.25])
        ra = self.ra0 + x * self.scale / math.cos(math.radians(self.dec0))
        dec = self.dec0 + y * self.scale
        px, py = source_pixel_positions(
            {"coord_ra": ra, "coord_dec": dec}, self.sky_to_pixel, coord_units="deg"
        )
        np.testing.assert_allclose(px, x, atol=1e-6)
        np.testing.assert_allclose(py, y, atol=1e-6)
        src = Table({"coord_ra": np.radians(ra), "coord_dec": np.radians(dec)})
        px, py = source_pixel_positions(src, self.sky_to_pixel, coord_units="rad")
        np.testing.assert_allclose(px, x, atol=1e-6)
        np.testing.assert_allclose(py, y, atol=1e-6)
        # Radians read as degrees land nowhere near.
        px, _ = source_pixel_positions(src, self.sky_to_pixel, coord_units="deg")
        self.assertGreater(np.min(np.abs(px - x)), 1e5)

    def test_pixel_columns_first(self):
        cat = Table(
            {"x": [1.0, np.nan], "y": [2.0, np.nan], "coord_ra": [self.ra0] * 2, "coord_dec": [self.dec0] * 2}
        )
        px, py = source_pixel_positions(cat, self.sky_to_pixel)
        np.testing.assert_allclose(px, [1.0, 0.0], atol=1e-9)
        np.testing.assert_allclose(py, [2.0, 0.0], atol=1e-9)
        px, py = source_pixel_positions({"slot_Centroid_x": [3.0], "slot_Centroid_y": [4.0]})
        np.testing.assert_array_equal((px, py), ([3.0], [4.0]))

    def test_errors(self):
        with self.assertRaises(ValueError):
            source_pixel_positions({"coord_ra": [1.0], "coord_dec": [1.0]})
        with self.assertRaises(ValueError):
            source_pixel_positions({"x": [1.0], "y": [1.0]}, coord_units="arcsec")

    def test_stack_view_from_sky(self):
        """stack_view converts sky coordinates in radians."""
        truth = truth_table([[10, 20, 110, 20]])
        ra = self.ra0 + 60.0 * self.scale / math.cos(math.radians(self.dec0))
        dec = self.dec0 + 20.0 * self.scale
        src = {"coord_ra": np.radians([ra]), "coord_dec": np.radians([dec])}
        view = stack_view(truth, src, psf_sigma=2.0, sky_to_pixel=self.sky_to_pixel, coord_units="rad")
        self.assertEqual(view["stack_status"][0], "found")
        view = stack_view(truth, src, psf_sigma=2.0, sky_to_pixel=self.sky_to_pixel, coord_units="deg")
        self.assertEqual(view["stack_status"][0], "missed")


class ClassifyFalsePositivesTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        shape = (300, 300)
        saturated = np.zeros(shape, dtype=bool)
        saturated[20:90, 49:52] = True  # a bleed trail around column 50
        saturated[240:244, 148:152] = True  # the core of a saturated star at (150, 242)
        cosmic_rays = np.zeros(shape, dtype=bool)
        for k in range(12):  # a short diagonal track
            cosmic_rays[200 + k // 2, 100 + k] = True
        self.scene = {
            "stars": Table(
                {
                    "x": [150.0, 60.0, 250.0],
                    "y": [242.0, 130.0, 30.0],
                    "mag": [12.0, 18.0, 14.0],
                    "saturated": [True, False, False],
                    "radius": [0.0, 0.0, 40.0],
                }
            ),
            "galaxies": Table({"x": [120.0], "y": [60.0], "half_light_radius": [4.0]}),
            "cosmic_rays": cosmic_rays,
            "saturated": saturated,
            "bad_columns": [20],
            "satellites": segments([[0, 150, 299, 190]]),
        }
        self.detections = segments(
            [
                [50.4, 30, 50.0, 80],  # 0 bleed trail on saturated pixels
                [150.3, 246, 150.0, 280],  # 1 bleed below the saturated star, off the saturated mask
                [20.2, 100, 20.0, 200],  # 2 bad column
                [99, 199.5, 112, 206],  # 3 cosmic ray
                *[along(0, 150, math.degrees(math.atan2(40, 299)), 100, 200)],  # 4 satellite
                [40, 132, 80, 132],  # 5 star 2 px off the segment
                [240, 60, 260, 60],  # 6 diffraction spike 30 px from a bright star
                [100, 66, 140, 66],  # 7 galaxy centre 6 px away (size 4 + 3)
                [200, 250, 240, 280],  # 8 nothing
                [58.5, 128, 59, 100],  # 9 vertical near an unsaturated star: star, not bleed
            ]
        )
        self.expected = [
            "bleed_trail",
            "bleed_trail",
            "bad_column",
            "cosmic_ray",
            "satellite",
            "star",
            "star",
            "galaxy",
            "nothing",
            "star",
        ]

    def test_one_of_each(self):
        labels = classify_false_positives(self.detections, np.arange(len(self.detections)), self.scene)
        self.assertEqual(list(labels), self.expected)
        self.assertTrue(set(labels) <= set(FALSE_POSITIVE_CLASSES))

    def test_subset_and_mask(self):
        index = np.array([8, 2, 4])
        labels = classify_false_positives(self.detections, index, self.scene)
        self.assertEqual(list(labels), ["nothing", "bad_column", "satellite"])
        mask = np.zeros(len(self.detections), dtype=bool)
        mask[index] = True
        labels = classify_false_positives(self.detections, mask, self.scene)
        self.assertEqual(list(labels), ["bad_column", "satellite", "nothing"])
        self.assertEqual(len(classify_false_positives(self.detections, [], self.scene)), 0)

    def test_missing_inputs(self):
        """With no truth at all everything is 'nothing'; a bad-column mask works like a list."""
        labels = classify_false_positives(self.detections, np.arange(len(self.detections)), {})
        self.assertEqual(set(labels), {"nothing"})
        mask = np.zeros((300, 300), dtype=bool)
        mask[:, 20] = True
        labels = classify_false_positives(self.detections, [2, 3], {"bad_columns": mask})
        self.assertEqual(list(labels), ["bad_column", "nothing"])

    def test_rule_order(self):
        """A horizontal segment over saturated pixels is not a bleed trail; a short vertical one on a
        bad column needs more than half its length on it."""
        det = segments([[40, 50, 60, 50], [20, 90, 20, 130]])
        scene = {"saturated": self.scene["saturated"], "bad_columns": np.zeros((300, 300), dtype=bool)}
        scene["bad_columns"][100:300, 20] = True
        labels = classify_false_positives(det, [0, 1], scene)
        self.assertEqual(list(labels), ["nothing", "bad_column"])
        scene["bad_columns"][100:115, 20] = False
        self.assertEqual(classify_false_positives(det, [1], scene)[0], "nothing")

    def test_galaxy_size_in_arcsec(self):
        galaxies = Table({"x": [120.0], "y": [60.0], "half_light_radius": [0.8]})
        galaxies["half_light_radius"].unit = "arcsec"
        det = segments([[100, 66, 140, 66]])
        with self.assertRaises(ValueError):
            classify_false_positives(det, [0], {"galaxies": galaxies})
        label = classify_false_positives(det, [0], {"galaxies": galaxies, "pixel_scale": 0.2})[0]
        self.assertEqual(label, "galaxy")
        label = classify_false_positives(det, [0], {"galaxies": galaxies, "pixel_scale": 0.4})[0]
        self.assertEqual(label, "nothing")


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
