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

"""Star-detector evaluation: matching, metrics, the classical 5 sigma
baseline on stars of known SNR, CNN inference and the evaluation task.
"""

import inspect
import json
import math
import unittest

import numpy as np
import torch
from scipy.special import erf, ndtr

import lsst.utils.tests
from lsst.trail_detect.evaluation.evaluate_stars import (
    EvaluateStarDetectorConfig,
    EvaluateStarDetectorConnections,
    EvaluateStarDetectorTask,
)
from lsst.trail_detect.evaluation.metrics import wilson_interval
from lsst.trail_detect.evaluation.stars import (
    classical_detections,
    completeness_crossing,
    crowded_fields,
    detect_stars,
    fit_completeness_probit,
    match_points,
    matching_radius,
    predict_star_maps,
    star_detection_metrics,
)
from lsst.trail_detect.models.networks import build_model, default_architecture
from lsst.trail_detect.models.storage import TrailDetectorModel

torch.set_num_threads(1)


def gaussian_stars(shape, x, y, flux, sigma):
    """Pixel-integrated circular Gaussian stars."""
    image = np.zeros(shape)
    half = int(math.ceil(5 * sigma))
    s2 = math.sqrt(2.0) * sigma
    for xc, yc, f in zip(x, y, flux):
        ix, iy = int(round(xc)), int(round(yc))
        px = np.arange(ix - half, ix + half + 1)
        py = np.arange(iy - half, iy + half + 1)
        wx = 0.5 * (erf((px + 0.5 - xc) / s2) - erf((px - 0.5 - xc) / s2))
        wy = 0.5 * (erf((py + 0.5 - yc) / s2) - erf((py - 0.5 - yc) / s2))
        image[iy - half : iy + half + 1, ix - half : ix + half + 1] += f * np.outer(wy, wx)
    return image


class MatchPointsTestCase(lsst.utils.tests.TestCase):
    def test_one_to_one(self):
        det_x, det_y = np.array([10.2, 10.0, 50.0, 80.0]), np.array([10.1, 10.9, 50.0, 80.0])
        true_x, true_y = np.array([10.0, 50.9, 200.0]), np.array([10.0, 50.0, 200.0])
        det_match, truth_match = match_points(det_x, det_y, true_x, true_y, 1.5)
        # The closer of two detections of one star is its match; the other one is unmatched.
        np.testing.assert_array_equal(det_match, [0, -1, 1, -1])
        np.testing.assert_array_equal(truth_match, [0, 2, -1])
        # Just beyond the radius: no match.
        det_match, truth_match = match_points([0.0], [0.0], [1.5001], [0.0], 1.5)
        np.testing.assert_array_equal(det_match, [-1])
        det_match, _ = match_points([0.0], [0.0], [1.5], [0.0], 1.5)
        np.testing.assert_array_equal(det_match, [0])

    def test_greedy_and_hungarian(self):
        """Closest pair first can lose a match that the optimal assignment keeps."""
        det_x, true_x = np.array([0.9, 2.5]), np.array([0.0, 1.6])
        zeros = np.zeros(2)
        det_g, truth_g = match_points(det_x, zeros, true_x, zeros, 1.0)
        np.testing.assert_array_equal(det_g, [1, -1])
        np.testing.assert_array_equal(truth_g, [-1, 0])
        det_h, truth_h = match_points(det_x, zeros, true_x, zeros, 1.0, method="hungarian")
        np.testing.assert_array_equal(det_h, [0, 1])
        np.testing.assert_array_equal(truth_h, [0, 1])

    def test_many_points_agree(self):
        """On separated points both methods find the same pairs."""
        rng = np.random.default_rng(3)
        g = np.arange(5, 300, 10, dtype=float)
        tx, ty = (a.ravel() for a in np.meshgrid(g, g))
        keep = rng.random(tx.size) < 0.8
        dx, dy = tx[keep] + rng.normal(0, 0.3, keep.sum()), ty[keep] + rng.normal(0, 0.3, keep.sum())
        dx, dy = np.append(dx, [3.0, 500.0]), np.append(dy, [3.0, 500.0])
        for method in ("greedy", "hungarian"):
            det_match, truth_match = match_points(dx, dy, tx, ty, 2.0, method=method)
            self.assertEqual(int((truth_match >= 0).sum()), int(keep.sum()))
            np.testing.assert_array_equal(truth_match >= 0, keep)
            matched = det_match >= 0
            np.testing.assert_array_equal(truth_match[det_match[matched]], np.nonzero(matched)[0])

    def test_empty_and_invalid(self):
        det_match, truth_match = match_points([], [], [1.0, 2.0], [1.0, 2.0], 1.0)
        self.assertEqual(len(det_match), 0)
        np.testing.assert_array_equal(truth_match, [-1, -1])
        det_match, _ = match_points([np.nan, 1.0], [0.0, 1.0], [1.0], [1.0], 1.0)
        np.testing.assert_array_equal(det_match, [-1, 0])
        with self.assertRaises(ValueError):
            match_points([0.0], [0.0], [0.0], [0.0], 0.0)
        with self.assertRaises(ValueError):
            match_points([0.0], [0.0], [0.0], [0.0], 1.0, method="nearest")

    def test_radius(self):
        self.assertEqual(matching_radius(0.5), 1.5)
        self.assertFloatsAlmostEqual(matching_radius(2.0), 0.5 * 2.0 * 2.3548200450309493, rtol=1e-12)


class MetricsTestCase(lsst.utils.tests.TestCase):
    def test_wilson(self):
        low, high = wilson_interval(5, 10, z=1.0)
        self.assertFloatsAlmostEqual(float(low), 0.5 - math.sqrt(0.0275) / 1.1, rtol=1e-12)
        self.assertFloatsAlmostEqual(float(high), 0.5 + math.sqrt(0.0275) / 1.1, rtol=1e-12)
        low, high = wilson_interval(0, 10)
        self.assertEqual(float(low), 0.0)
        self.assertGreater(float(high), 0.0)
        low, _ = wilson_interval(0, 0)
        self.assertTrue(np.isnan(low))

    def test_constructed_outcomes(self):
        # 10 stars at SNR 3 (2 found), 10 at 5 (5), 10 at 6.5 (9), 10 at 20 (10).
        truth_snr = np.repeat([3.0, 5.0, 6.5, 20.0], 10)
        found = np.concatenate([np.arange(10) < n for n in (2, 5, 9, 10)])
        # 20 detections: 10 faint (6 real), 10 bright (9 real).
        det_snr = np.repeat([6.0, 30.0], 10)
        det_matched = np.concatenate([np.arange(10) < 6, np.arange(10) < 9])
        m = star_detection_metrics(truth_snr, found, det_matched, det_snr, [2.0, 4.0, 6.0, 10.0, 100.0])
        self.assertEqual([b["n"] for b in m["completeness"]], [10, 10, 10, 10])
        self.assertEqual([b["k"] for b in m["completeness"]], [2, 5, 9, 10])
        self.assertEqual([b["value"] for b in m["completeness"]], [0.2, 0.5, 0.9, 1.0])
        self.assertEqual([b["snr_mean"] for b in m["completeness"]], [3.0, 5.0, 6.5, 20.0])
        self.assertEqual(m["completeness_at"]["5"]["value"], 0.5)
        self.assertEqual(m["completeness_at"]["6.5"]["value"], 0.9)
        self.assertFloatsAlmostEqual(m["completeness_at"]["5"]["low"], 0.5 - math.sqrt(0.0275) / 1.1)
        self.assertEqual(m["snr50"], 5.0)
        self.assertEqual(m["snr90"], 6.5)
        self.assertEqual(m["purity"]["value"], 0.75)
        self.assertEqual(m["purity_above"]["value"], 0.9)
        self.assertEqual(m["purity_above"]["n"], 10)
        self.assertEqual([b["value"] for b in m["purity_by_snr"]], [None, None, 0.6, 0.9])
        self.assertEqual((m["n_truth"], m["n_detections"], m["n_false"]), (40, 20, 5))
        json.dumps(m, allow_nan=False)
        # Nothing at all.
        empty = star_detection_metrics([], [], [], [])
        self.assertIsNone(empty["purity"]["value"])
        self.assertIsNone(empty["snr50"])
        self.assertIsNone(empty["probit"])
        with self.assertRaises(ValueError):
            star_detection_metrics([1.0], [True, False], [], [])

    def test_crossing_and_probit(self):
        self.assertFloatsAlmostEqual(completeness_crossing([3, 5, 7], [0.2, 0.4, 0.8], 0.5), 5.5)
        self.assertIsNone(completeness_crossing([3, 5], [0.2, 0.4], 0.9))
        self.assertEqual(completeness_crossing([3, 5], [0.6, 0.9], 0.5), 3.0)
        rng = np.random.default_rng(7)
        nu = rng.uniform(1.0, 12.0, 20000)
        found = rng.random(nu.size) < ndtr(nu - 5.0)
        nu50, width = fit_completeness_probit(nu, found)
        self.assertFloatsAlmostEqual(nu50, 5.0, atol=0.05)
        self.assertFloatsAlmostEqual(width, 1.0, atol=0.05)
        self.assertIsNone(fit_completeness_probit(nu[:5], found[:5]))

    def test_crowded_fields(self):
        crowded, rule = crowded_fields([20.0, 150.0, 90.0, 100.0])
        np.testing.assert_array_equal(crowded, [False, True, False, True])
        self.assertIn("100", rule)
        crowded, rule = crowded_fields([20.0, 50.0, 10.0, 30.0, 40.0, 5.0])
        np.testing.assert_array_equal(crowded, [False, True, False, False, True, False])
        self.assertEqual(rule, "densest third")
        crowded, _ = crowded_fields([20.0])
        np.testing.assert_array_equal(crowded, [False])


class ClassicalBaselineTestCase(lsst.utils.tests.TestCase):
    def test_half_complete_at_snr_5(self):
        """A 5 sigma PSF-filter threshold finds about half the isolated stars of SNR 5 on white noise."""
        rng = np.random.default_rng(11)
        size, sigma, noise = 736, 2.0, 1.0
        grid = np.arange(16, size - 16, 30, dtype=float)
        gx, gy = (a.ravel() for a in np.meshgrid(grid, grid))
        x, y = gx + rng.uniform(-0.5, 0.5, gx.size), gy + rng.uniform(-0.5, 0.5, gy.size)
        # nu = F / (noise sqrt(4 pi) sigma): SNR 5 and 8 stars alternating.
        nu = np.where(np.arange(x.size) % 2 == 0, 5.0, 8.0)
        flux = nu * noise * math.sqrt(4 * math.pi) * sigma
        image = gaussian_stars((size, size), x, y, flux, sigma) + rng.normal(0, noise, (size, size))
        variance = np.full(image.shape, noise**2)
        det_x, det_y, det_snr = classical_detections(image, variance, sigma, threshold=5.0)
        det_match, truth_match = match_points(det_x, det_y, x, y, matching_radius(sigma))
        m = star_detection_metrics(nu, truth_match >= 0, det_match >= 0, det_snr, [4.0, 6.0, 10.0])
        at5 = m["completeness_at"]["5"]
        self.assertGreater(at5["n"], 200)
        self.assertLess(abs(at5["value"] - 0.5), 0.1, at5)
        self.assertGreater(m["completeness"][1]["value"], 0.95)  # SNR 8: Phi(3)
        self.assertGreater(m["purity"]["value"], 0.99)


class ConstantNetwork(torch.nn.Module):
    """A 'network' whose heatmap logits are its input and whose offsets are constant."""

    def forward(self, x):
        return {"heatmap": x, "offset": torch.full((x.shape[0], 2) + x.shape[2:], 0.25)}


class DetectStarsTestCase(lsst.utils.tests.TestCase):
    def test_blending_is_seamless(self):
        """Tiled maps equal the single-pass maps for a pixelwise network."""
        rng = np.random.default_rng(1)
        image = rng.normal(0, 1, (150, 170)).astype(np.float32)
        heat, offset = predict_star_maps(ConstantNetwork(), image, tile=64, overlap=16)
        np.testing.assert_allclose(heat, 1 / (1 + np.exp(-image)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(offset, 0.25, rtol=1e-6)
        x, y, score = detect_stars(ConstantNetwork(), image, threshold=0.9, tile=64, overlap=16)
        self.assertTrue(np.all(score >= 0.9))
        ix, iy = np.round(x - 0.25).astype(int), np.round(y - 0.25).astype(int)
        np.testing.assert_allclose(score, heat[iy, ix], rtol=1e-6)

    def test_star_center_net(self):
        """A (random) StarCenterNet runs over a tiled image; detect_stars takes no truth."""
        torch.manual_seed(0)
        network = build_model(default_architecture("star", "compact")).eval()
        rng = np.random.default_rng(2)
        image = rng.normal(0, 1, (96, 140)).astype(np.float32)
        heat, offset = predict_star_maps(network, image, tile=64, overlap=16)
        self.assertEqual(heat.shape, image.shape)
        self.assertEqual(offset.shape, (2,) + image.shape)
        self.assertTrue(np.all(np.isfinite(heat)) and np.all(np.isfinite(offset)))
        x, y, score = detect_stars(network, image, threshold=0.0, tile=64, overlap=16)
        self.assertGreater(len(x), 0)
        self.assertTrue(np.all(np.diff(score) <= 0))
        self.assertTrue(np.all((x > -1) & (x < 141) & (y > -1) & (y < 97)))
        parameters = set(inspect.signature(detect_stars).parameters)
        self.assertFalse(parameters & {"truth", "true_x", "true_y", "catalog"})
        with self.assertRaises(ValueError):
            detect_stars(network, np.full((32, 32), np.nan, dtype=np.float32))


class EvaluateStarDetectorTaskTestCase(lsst.utils.tests.TestCase):
    @classmethod
    def setUpClass(cls):
        from lsst.trail_detect.simulation.star_field import SimulateStarFieldConfig, SimulateStarFieldTask
        from lsst.trail_detect.simulation.survey import plan_survey

        visits = plan_survey(2, 9, 192, seed=29)
        task = SimulateStarFieldTask(config=SimulateStarFieldConfig())
        cls.images, cls.truths = [], []
        for conditions, detector in ((visits[0], 4), (visits[1], 2)):
            result = task.run(conditions=conditions, star_catalog=[], detector=detector)
            cls.images.append(result.star_field_image)
            cls.truths.append(result.star_field_truth)
        torch.manual_seed(0)
        architecture = default_architecture("star", "compact")
        cls.model = TrailDetectorModel.from_module(
            build_model(architecture),
            kind="star",
            architecture=architecture,
            metadata={"normalization": {"method": "robust", "clip_min": -10.0, "clip_max": 50.0}},
        )

    def _config(self, fractions=(0.0, 0.0, 1.0)):
        config = EvaluateStarDetectorConfig()
        config.split_fractions = list(fractions)
        config.threads = 1
        config.device = "cpu"
        config.tile = 128
        config.overlap = 16
        config.validate()
        return config

    def test_run(self):
        task = EvaluateStarDetectorTask(config=self._config())
        metrics = task.run(images=self.images, truths=self.truths, model=self.model).metrics
        json.dumps(metrics, allow_nan=False)
        for key in (
            "settings",
            "n_fields",
            "all",
            "crowded",
            "uncrowded",
            "fields",
            "goals",
            "crowding_rule",
        ):
            self.assertIn(key, metrics)
        self.assertEqual(metrics["n_fields"], 2)
        self.assertEqual(metrics["settings"]["threshold"], 0.3)  # the model has none
        for name in ("cnn", "classical"):
            m = metrics["all"][name]
            for key in (
                "completeness",
                "completeness_at",
                "snr50",
                "snr90",
                "probit",
                "purity",
                "purity_above",
            ):
                self.assertIn(key, m)
            self.assertEqual(set(m["completeness_at"]), {"5", "6.5"})
        self.assertEqual(metrics["all"]["n_truth"], sum(f["n_truth"] for f in metrics["fields"]))
        self.assertEqual(sum(f["crowded"] for f in metrics["fields"]), metrics["crowded"]["n_fields"])
        self.assertEqual(
            {(f["visit"], f["detector"]) for f in metrics["fields"]},
            {(int(t.meta["visit"]), int(t.meta["detector"])) for t in self.truths},
        )
        goals = metrics["goals"]
        self.assertEqual(len(goals), 6)
        for goal in goals:
            self.assertEqual(set(goal), {"goal", "sample", "measured", "classical", "target", "met"})
        # The classical detection finds the bright stars.
        self.assertGreater(metrics["all"]["classical"]["completeness"][-3]["value"], 0.9)

    def test_split(self):
        """Only fields of the configured split are read."""
        task = EvaluateStarDetectorTask(config=self._config((1.0, 0.0, 0.0)))
        metrics = task.run(images=self.images, truths=self.truths, model=self.model).metrics
        self.assertEqual(metrics["n_fields"], 0)
        self.assertIsNone(metrics["all"])
        self.assertEqual(metrics["goals"], [])
        with self.assertRaises(ValueError):
            bad = TrailDetectorModel(kind="trail", architecture=self.model.architecture, tensors={})
            task.run(images=self.images, truths=self.truths, model=bad)

    def test_connections(self):
        from lsst.pipe.base.testUtils import lintConnections

        lintConnections(EvaluateStarDetectorConnections)
        connections = EvaluateStarDetectorConnections(config=EvaluateStarDetectorConfig())
        self.assertEqual(connections.images.name, "star_field_image")
        self.assertEqual(connections.truths.name, "star_field_truth")
        self.assertEqual(connections.model.name, "star_detector_model")
        self.assertEqual(connections.metrics.name, "star_detection_metrics")
        self.assertEqual(EvaluateStarDetectorTask._DefaultName, "evaluateStarDetector")
        config = EvaluateStarDetectorConfig()
        config.goal_completeness = [0.5]
        with self.assertRaises(Exception):
            config.validate()


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
