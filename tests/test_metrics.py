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

"""Tests of `lsst.trail_detect.evaluation.metrics` and
`lsst.trail_detect.evaluation.plots` on tables with known answers.
"""

import json
import math
import os
import tempfile
import unittest

import numpy as np
from astropy.table import Table
from scipy import stats

import lsst.utils.tests
from lsst.trail_detect.evaluation.metrics import (
    auc,
    binned_completeness,
    calibration_curve,
    evaluate_matches,
    false_positives_per_detector,
    fit_completeness_curve,
    headline_table,
    ideal_completeness,
    ideal_shape_completeness,
    offset_from_ideal,
    point_source_overlap,
    precision_recall_curve,
    roc_curve,
    wilson_interval,
)
from lsst.trail_detect.evaluation.plots import make_all_plots
from lsst.trail_detect.injection.catalog import nu_det_closed_form, nu_opt_closed_form


def match_table(truth, fps=(), fragments=(), images=((1, 10), (1, 11)), pixels=2048 * 2048, hough=None):
    """A ``trail_matches`` table.

    ``truth`` rows are ``(nu_det, nu_opt, length, detected, score, stack_status)``;
    ``fps`` are ``(score, fp_class)``; ``fragments`` are scores. Rows are
    spread over ``images`` in turn.
    """
    rows = []
    for nu_det, nu_opt, length, detected, score, stack in truth:
        rows.append(("truth", nu_det, nu_opt, length, detected, score, stack, ""))
    for score, fp_class in fps:
        rows.append(("false_positive", np.nan, np.nan, 10.0, False, score, "", fp_class))
    for score in fragments:
        rows.append(("fragment", np.nan, np.nan, 5.0, False, score, "", ""))
    n = len(rows)
    visit = [images[i % len(images)][0] for i in range(n)]
    detector = [images[i % len(images)][1] for i in range(n)]
    is_truth = np.array([r[0] == "truth" for r in rows])
    table = Table(
        {
            "row_type": np.array([r[0] for r in rows], dtype="U16"),
            "visit": np.array(visit, dtype=np.int64),
            "detector": np.array(detector, dtype=np.int64),
            "injection_id": np.where(is_truth, np.arange(n), -1),
            "trail_length": np.array([r[3] for r in rows], dtype=float),
            "nu_det": np.array([r[1] for r in rows], dtype=float),
            "nu_opt": np.array([r[2] for r in rows], dtype=float),
            "mag": np.where(is_truth, 22.0, np.nan),
            "psf_sigma": np.full(n, 1.5),
            "detected": np.array([r[4] for r in rows], dtype=bool),
            "score": np.array([r[5] for r in rows], dtype=float),
            "score_raw": np.array([r[5] for r in rows], dtype=float),
            "stack_status": np.array([r[6] for r in rows], dtype="U16"),
            "stack_n_sources": np.zeros(n, dtype=np.int64),
            "fp_class": np.array([r[7] for r in rows], dtype="U16"),
            "image_pixels": np.full(n, pixels, dtype=np.int64),
        }
    )
    if hough is not None:
        table["hough_detected"] = np.r_[np.asarray(hough, dtype=bool), np.zeros(n - len(truth), dtype=bool)]
    return table


def known_truth():
    """30 trails, 10 per nu_det bin: CNN finds 4, 5, 10; the stack 2, 6, 9 (found or broken)."""
    truth = []
    plan = [
        (3.0, 4.5, 4, ["found", "broken"]),
        (7.0, 9.0, 5, ["found"] * 4 + ["broken"] * 2),
        (20.0, 25.0, 10, None),
    ]
    for nu_det, nu_opt, n_cnn, stack in plan:
        stack = stack if stack is not None else ["found"] * 9
        for k in range(10):
            detected = k < n_cnn
            truth.append(
                (
                    nu_det,
                    nu_opt,
                    15.0,
                    detected,
                    0.9 if detected else np.nan,
                    stack[k] if k < len(stack) else "missed",
                )
            )
    return truth


class IdealAndWilsonTestCase(lsst.utils.tests.TestCase):
    def test_ideal_completeness(self):
        values = ideal_completeness([6.0, 7.0, 5.0, 4.0, np.nan])
        np.testing.assert_allclose(values[:4], [0.5, 0.841345, 0.158655, 0.022750], atol=1e-6)
        self.assertTrue(np.isnan(values[4]))
        self.assertAlmostEqual(float(ideal_completeness(5.0, threshold=5.0)), 0.5)

    def test_point_source_overlap_against_pixels(self):
        # The normalized inner product of a rendered trail (Gaussians spread finely along the
        # segment, at a slant) with a Gaussian at its centre, on a fine grid.
        sigma = 2.0
        y, x = np.mgrid[-60:60.01:0.25, -60:60.01:0.25]
        point = np.exp(-(x**2 + y**2) / (2 * sigma**2))
        for length in (1.0, 4.0, 8.0, 20.0, 50.0):
            angle = 0.7
            image = np.zeros_like(x)
            n = int(length * 20)
            for s in (np.arange(n) + 0.5) * length / n - length / 2:
                dx, dy = x - s * np.cos(angle), y - s * np.sin(angle)
                image += np.exp(-(dx**2 + dy**2) / (2 * sigma**2))
            rho = np.sum(image * point) / np.sqrt(np.sum(image**2) * np.sum(point**2))
            self.assertAlmostEqual(float(point_source_overlap(length, sigma)), rho, delta=1e-4, msg=length)

    def test_point_source_overlap_limits(self):
        lengths = np.array([0.0, 1e-6, 0.5, 2.0, 5.0, 10.0, 40.0])
        rho = point_source_overlap(lengths, 1.5)
        self.assertEqual(rho[0], 1.0)
        self.assertAlmostEqual(float(rho[1]), 1.0, places=9)
        self.assertTrue(np.all(np.diff(rho[1:]) < 0))
        # Depends on length / sigma only; long trails fall as sqrt(2 sqrt(pi) sigma / L).
        np.testing.assert_allclose(point_source_overlap(2 * lengths, 3.0), rho)
        self.assertAlmostEqual(
            float(point_source_overlap(4000.0, 1.0)), np.sqrt(2 * np.sqrt(np.pi) / 4000.0), delta=1e-4
        )
        # For a Gaussian PSF the overlap is nu_det / nu_opt: the point-source filter's peak SNR on the
        # trail over the trail's matched-filter SNR (the injection catalog's closed forms).
        for length in (0.5, 3.0, 10.0, 40.0, 110.0):
            ratio = nu_det_closed_form(1e3, length, 1.7, 2.0) / nu_opt_closed_form(1e3, length, 1.7, 2.0)
            self.assertAlmostEqual(float(point_source_overlap(length, 1.7)), float(ratio), places=9)
        bad = point_source_overlap([5.0, np.nan, 5.0], [np.nan, 1.0, 0.0])
        self.assertTrue(np.all(np.isnan(bad)))

    def test_ideal_shape_completeness(self):
        nu, length, sigma = np.array([8.0, 20.0, 20.0, 40.0]), np.array([60.0, 3.0, 10.0, 200.0]), 1.5
        rho = point_source_overlap(length, sigma)
        expected = stats.norm.cdf(nu - 6.0) * stats.norm.cdf(nu * np.sqrt(1 - rho**2) - 3.0)
        values = ideal_shape_completeness(nu, length, sigma)
        np.testing.assert_allclose(values, expected)
        self.assertTrue(np.all(values <= ideal_completeness(nu)))
        # A long bright trail is as easy as for the ideal detector; a 3 px one at SNR 20 is not.
        self.assertAlmostEqual(float(values[3]), float(ideal_completeness(40.0)), places=6)
        self.assertLess(values[1], 0.25)
        self.assertGreater(values[2], 0.99)
        self.assertAlmostEqual(
            float(ideal_shape_completeness(20.0, 3.0, 1.5, threshold=5.0, shape_threshold=2.0)),
            float(stats.norm.cdf(15.0) * stats.norm.cdf(20.0 * np.sqrt(1 - rho[1] ** 2) - 2.0)),
        )

    def test_wilson_hand_value(self):
        # k = 8, n = 10, z = 1: centre (0.8 + 0.05) / 1.1, half sqrt(0.016 + 0.0025) / 1.1.
        lower, upper = wilson_interval(8, 10)
        self.assertAlmostEqual(float(lower), 0.649077, places=5)
        self.assertAlmostEqual(float(upper), 0.896377, places=5)
        lower, upper = wilson_interval([0, 5], [0, 5])
        self.assertTrue(np.isnan(lower[0]) and np.isnan(upper[0]))
        self.assertAlmostEqual(float(upper[1]), 1.0)
        self.assertLess(float(lower[1]), 1.0)

    def test_binned_completeness(self):
        values = [1.0, 2.0, 2.5, 4.9, 5.0, 9.0, 10.0, 40.0, np.nan]
        detected = [True, False, True, True, False, True, True, True, True]
        result = binned_completeness(values, detected, [2, 5, 10])
        self.assertEqual(result["labels"], ["2-5", "5-10"])
        np.testing.assert_array_equal(result["n"], [3, 3])
        np.testing.assert_array_equal(result["n_detected"], [2, 2])
        np.testing.assert_allclose(result["completeness"], [2 / 3, 2 / 3])
        self.assertTrue(np.all(result["lower"] < result["completeness"]))
        self.assertTrue(np.all(result["upper"] > result["completeness"]))
        empty = binned_completeness([1.0], [True], [2, 5])
        self.assertEqual(int(empty["n"][0]), 0)
        self.assertTrue(np.isnan(empty["completeness"][0]))


class FitTestCase(lsst.utils.tests.TestCase):
    def test_recovers_probit(self):
        rng = np.random.default_rng(42)
        nu = rng.uniform(0.0, 10.0, 3000)
        detected = rng.uniform(size=nu.size) < stats.norm.cdf((nu - 5.0) / 1.2)
        fit = fit_completeness_curve(nu, detected)
        self.assertLess(abs(fit["nu50"] - 5.0), 0.2)
        self.assertLess(abs(fit["width"] - 1.2), 0.3)
        self.assertTrue(0.01 < fit["nu50_err"] < 0.2)
        self.assertAlmostEqual(fit["nu90"], fit["nu50"] + 1.28155 * fit["width"], places=4)
        self.assertEqual(fit["n"], 3000)

    def test_no_fit(self):
        self.assertTrue(math.isnan(fit_completeness_curve([1, 2, 3], [True, False, True])["nu50"]))
        nu = np.linspace(0, 10, 50)
        self.assertTrue(math.isnan(fit_completeness_curve(nu, np.ones(50, bool))["nu50"]))
        self.assertTrue(math.isnan(fit_completeness_curve(nu, np.zeros(50, bool))["nu50"]))

    def test_offset_from_ideal(self):
        nu_opt = np.tile(np.linspace(3.0, 9.0, 41), 2)
        length = np.r_[np.full(41, 30.0), np.full(41, 60.0)]
        detected = np.r_[nu_opt[:41] > 6.2, nu_opt[41:] > 7.55]
        result = offset_from_ideal(nu_opt, detected, length, [0, 20, 40, 100])
        self.assertEqual(result["labels"], ["0-20", "20-40", "40-100"])
        self.assertEqual(list(result["n"]), [0, 41, 41])
        self.assertTrue(np.isnan(result["offset"][0]))
        self.assertLess(abs(result["offset"][1] - 0.25), 0.1)
        self.assertLess(abs(result["offset"][2] - 1.575), 0.1)


class ScoreCurveTestCase(lsst.utils.tests.TestCase):
    def test_roc_separated_and_random(self):
        scores = np.r_[np.linspace(0.6, 1.0, 50), np.linspace(0.0, 0.4, 50)]
        labels = np.r_[np.ones(50, bool), np.zeros(50, bool)]
        self.assertAlmostEqual(roc_curve(scores, labels)["auc"], 1.0)
        self.assertAlmostEqual(roc_curve(-scores, labels)["auc"], 0.0)
        rng = np.random.default_rng(1)
        random = roc_curve(rng.uniform(size=4000), rng.uniform(size=4000) < 0.3)
        self.assertLess(abs(random["auc"] - 0.5), 0.04)
        tied = roc_curve(np.full(10, 0.5), np.arange(10) < 4)
        np.testing.assert_allclose(tied["fpr"], [0, 1])
        np.testing.assert_allclose(tied["tpr"], [0, 1])
        self.assertAlmostEqual(tied["auc"], 0.5)

    def test_roc_missed_positives(self):
        # Two missed truths (NaN) rank below every false positive.
        roc = roc_curve([0.9, 0.8, np.nan, np.nan, 0.5, 0.1], [1, 1, 1, 1, 0, 0])
        self.assertAlmostEqual(float(roc["tpr"][roc["fpr"] == 0].max()), 0.5)
        self.assertAlmostEqual(roc["auc"], 0.5)
        self.assertEqual(roc["n_positive"], 4)

    def test_pr_with_ties(self):
        pr = precision_recall_curve([0.9, 0.5, 0.5, 0.1], [True, True, False, False])
        np.testing.assert_allclose(pr["thresholds"], [np.inf, 0.9, 0.5, 0.1])
        np.testing.assert_allclose(pr["recall"], [0, 0.5, 1, 1])
        np.testing.assert_allclose(pr["precision"], [1, 1, 2 / 3, 0.5])
        self.assertAlmostEqual(pr["average_precision"], 0.5 * 1 + 0.5 * 2 / 3)
        self.assertAlmostEqual(pr["auc"], 0.5 * 1 + 0.5 * (1 + 2 / 3) / 2)
        # Undetected truths count in the recall denominator.
        pr = precision_recall_curve([0.9, np.nan, 0.2], [True, True, False])
        self.assertAlmostEqual(float(pr["recall"].max()), 0.5)

    def test_auc(self):
        self.assertAlmostEqual(auc([0, 1, 2], [0, 1, 0]), 1.0)
        self.assertAlmostEqual(auc([2, 1, 0], [0, 1, 0]), 1.0)
        self.assertTrue(math.isnan(auc([1], [1])))
        with self.assertRaises(ValueError):
            auc([0, 2, 1], [0, 1, 0])

    def test_calibration(self):
        rng = np.random.default_rng(7)
        p = rng.uniform(size=20000)
        cal = calibration_curve(p, rng.uniform(size=p.size) < p, bins=10)
        self.assertLess(cal["ece"], 0.03)
        self.assertEqual(int(np.sum(cal["counts"])), 20000)
        bad = calibration_curve(np.full(1000, 0.9), np.arange(1000) < 500)
        self.assertAlmostEqual(bad["ece"], 0.4)
        self.assertEqual(int(bad["counts"][9]), 1000)


class FalsePositiveTestCase(lsst.utils.tests.TestCase):
    def test_fp_per_4k_detector(self):
        fps = [(0.9, "star")] * 6 + [(0.3, "cosmic_ray")] * 4
        truth = [(3.0, 4.0, 15.0, True, 0.8, "found")] * 10
        table = match_table(truth, fps=fps, fragments=[0.9, 0.9])
        result = false_positives_per_detector(table)
        # Two 2048x2048 images are half a 4096x4096 detector: 10 FPs there are 20 per 4k detector.
        self.assertEqual(result["n_images"], 2)
        self.assertAlmostEqual(result["area_4k_detectors"], 0.5)
        self.assertEqual(result["n_false_positives"], 10)
        self.assertAlmostEqual(result["fp_per_4k_detector"], 20.0)
        self.assertAlmostEqual(result["purity"], 0.5)
        self.assertEqual(result["n_fragments"], 2)
        self.assertEqual(result["fp_classes"], {"star": 6, "cosmic_ray": 4})
        cut = false_positives_per_detector(table, min_score=0.5)
        self.assertEqual(cut["n_false_positives"], 6)
        self.assertAlmostEqual(cut["purity"], 10 / 16)
        self.assertEqual(cut["fp_classes"], {"star": 6})
        # An explicit area overrides the images in the table.
        self.assertAlmostEqual(
            false_positives_per_detector(table, area_pixels=4096 * 4096)["fp_per_4k_detector"], 10.0
        )

    def test_ten_fp_per_4k_detector(self):
        # Four 2048x2048 images (one 4k detector in all) with 10 FPs, and two 4096x2048 images.
        images = ((1, 1), (1, 2), (2, 1), (2, 2))
        table = match_table([], fps=[(0.9, "nothing")] * 10, images=images)
        result = false_positives_per_detector(table)
        self.assertEqual(result["n_images"], 4)
        self.assertAlmostEqual(result["fp_per_4k_detector"], 10.0)
        table = match_table([], fps=[(0.9, "nothing")] * 10, pixels=4096 * 2048)
        self.assertAlmostEqual(false_positives_per_detector(table)["fp_per_4k_detector"], 10.0)
        self.assertEqual(false_positives_per_detector(table)["purity"], 0.0)


class EvaluateTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        fps = [(0.95, "star"), (0.6, "cosmic_ray"), (0.3, "nothing"), (0.2, "nothing")]
        hough = [k % 2 == 0 for k in range(30)]
        self.table = match_table(known_truth(), fps=fps, fragments=[0.9, 0.8], hough=hough)

    def test_bins_and_goals(self):
        metrics = evaluate_matches(self.table)
        json.loads(json.dumps(metrics))
        self.assertEqual(metrics["n_truth"], 30)
        self.assertEqual(metrics["n_images"], 2)
        self.assertAlmostEqual(metrics["area_4k_detectors"], 0.5)
        curves = metrics["completeness_nu_det"]
        self.assertEqual(curves["labels"], ["2-5", "5-10", "10-31"])
        np.testing.assert_allclose(curves["cnn"]["completeness"], [0.4, 0.5, 1.0])
        np.testing.assert_allclose(curves["stack"]["completeness"], [0.2, 0.6, 0.9])
        np.testing.assert_allclose(curves["stack_found_single"]["completeness"], [0.1, 0.4, 0.9])
        np.testing.assert_allclose(curves["hough"]["completeness"], [0.5, 0.5, 0.5])
        np.testing.assert_allclose(curves["ideal"]["completeness"], stats.norm.cdf([-1.5, 3.0, 19.0]))
        truth = self.table[self.table["row_type"] == "truth"]
        shape = ideal_shape_completeness(truth["nu_opt"], truth["trail_length"], truth["psf_sigma"])
        bins = np.digitize(truth["nu_det"], [2, 5, 10, 31]) - 1
        np.testing.assert_allclose(
            curves["ideal_shape"]["completeness"], [shape[bins == k].mean() for k in range(3)]
        )
        self.assertEqual(metrics["shape_threshold"], 3.0)
        self.assertIn("ideal+shape", headline_table(metrics))
        without = evaluate_matches(self.table, shape_threshold=None)
        self.assertNotIn("ideal_shape", without["completeness_nu_det"])
        self.assertNotIn("ideal+shape", headline_table(without))
        self.assertEqual(curves["cnn"]["n"], [10, 10, 10])
        self.assertAlmostEqual(metrics["false_positives_per_4k_detector"], 8.0)
        self.assertAlmostEqual(metrics["purity"], 19 / 23)
        self.assertEqual(metrics["fp_classes"], {"star": 1, "cosmic_ray": 1, "nothing": 2})
        met = {goal["goal"]: goal["met"] for goal in metrics["goals"]}
        completeness_goals = [v for k, v in met.items() if k.startswith("CNN completeness >=")]
        self.assertEqual(completeness_goals, [True, False, True])
        stack_goals = [v for k, v in met.items() if k.startswith("CNN completeness above")]
        self.assertEqual(stack_goals, [True, False, True])
        fp_goal = [v for k, v in met.items() if "false positives per 4k" in k]
        self.assertEqual(fp_goal, [True])
        # All trails are 15 px: the offset goals for 20-40 and 40-1000 px have no data.
        offset_goals = [g for g in metrics["goals"] if g["goal"].startswith("|nu50")]
        self.assertEqual(len(offset_goals), 2)
        self.assertFalse(any(g["met"] for g in offset_goals))
        # 19 found truths at 0.9 outrank 3 of the 4 false positives; 11 missed truths rank last.
        self.assertAlmostEqual(metrics["roc"]["object"]["auc"], 19 * 3 / 120)
        self.assertAlmostEqual(max(metrics["pr"]["object"]["recall"]), 19 / 30)

    def test_score_cut(self):
        metrics = evaluate_matches(self.table, min_score=0.5)
        self.assertAlmostEqual(metrics["false_positives_per_4k_detector"], 4.0)
        self.assertEqual(metrics["false_positives"]["n_fragments"], 2)
        metrics = evaluate_matches(self.table, min_score=0.95)
        np.testing.assert_allclose(metrics["completeness_nu_det"]["cnn"]["completeness"], [0, 0, 0])
        met = [g["met"] for g in metrics["goals"] if g["goal"].startswith("CNN completeness >=")]
        self.assertEqual(met, [False, False, False])

    def test_fp_budget_fails_completeness_goals(self):
        fps = [(0.9, "star")] * 20
        metrics = evaluate_matches(match_table(known_truth(), fps=fps))
        self.assertAlmostEqual(metrics["false_positives_per_4k_detector"], 40.0)
        met = [g["met"] for g in metrics["goals"] if g["goal"].startswith("CNN completeness >=")]
        self.assertEqual(met, [False, False, False])
        self.assertNotIn("hough", metrics["completeness_nu_det"])
        self.assertGreater(metrics["at_fp_budget"]["min_score"], 0.9)

    def test_offset_goal(self):
        nu_opt = np.linspace(3.0, 9.0, 41)
        truth = [(v / 2, v, 30.0, bool(v > 6.2), 0.9 if v > 6.2 else np.nan, "missed") for v in nu_opt]
        metrics = evaluate_matches(match_table(truth))
        goals = {g["goal"]: g for g in metrics["goals"] if g["goal"].startswith("|nu50")}
        goal = goals["|nu50 - t| <= 0.75 sigma in nu_opt for length 20-40 px"]
        self.assertTrue(goal["met"])
        self.assertLess(abs(goal["measured"] - 0.25), 0.1)

    def test_pixel_level_headline_and_plots(self):
        rng = np.random.default_rng(3)
        labels = rng.uniform(size=5000) < 0.2
        scores = np.clip(labels * 0.5 + rng.uniform(size=5000) * 0.6, 0, 1)
        metrics = evaluate_matches(
            self.table,
            pixel_scores=[scores[:2000], scores[2000:]],
            pixel_labels=[labels[:2000], labels[2000:]],
        )
        json.dumps(metrics)
        self.assertGreater(metrics["roc"]["pixel"]["auc"], 0.9)
        self.assertLessEqual(len(metrics["roc"]["pixel"]["fpr"]), 500)
        self.assertIn("pixel", metrics["calibration"])
        text = headline_table(metrics)
        for label in (
            "2-5",
            "5-10",
            "10-31",
            "CNN",
            "stack",
            "Hough",
            "ideal",
            "FP per 4k detector",
            "Purity",
        ):
            self.assertIn(label, text)
        with tempfile.TemporaryDirectory() as tmp:
            paths = make_all_plots(json.loads(json.dumps(metrics)), os.path.join(tmp, "plots"))
            self.assertEqual(
                set(paths), {"completeness", "completeness_by_length", "roc_pr", "calibration", "fp_classes"}
            )
            for path in paths.values():
                self.assertTrue(path.endswith(".png"))
                self.assertGreater(os.path.getsize(path), 1000)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
