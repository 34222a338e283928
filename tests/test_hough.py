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

"""Tests of `lsst.trail_detect.evaluation.hough`, the classical Hough
baseline, on DETECTED masks made by thresholding noisy simulated images at
5 sigma after smoothing with the PSF.
"""

import math
import unittest

import numpy as np
from scipy import ndimage

import lsst.utils.tests
from lsst.trail_detect.detection.postprocess import trail_model
from lsst.trail_detect.evaluation.hough import HOUGH_COLUMNS, HoughConfig, hough_trails

PSF_SIGMA = 1.5
SHAPE = (200, 200)
# Noise of white unit-variance noise smoothed with the (unit-sum) Gaussian PSF.
SMOOTHED_NOISE = 1.0 / (2.0 * math.sqrt(math.pi) * PSF_SIGMA)


def simulate(trails=(), stars=(), snr=20.0, seed=1, shape=SHAPE):
    """Image, variance and 5 sigma DETECTED mask of trails and stars.

    Parameters
    ----------
    trails : sequence of ``(x0, y0, x1, y1)``
        Trail endpoints; each trail is scaled so that its peak in the
        PSF-smoothed image is ``snr`` times the smoothed noise.
    stars : sequence of ``(x, y, flux)``
        Gaussian stars.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    image = np.zeros(shape)
    for x0, y0, x1, y1 in trails:
        length = math.hypot(x1 - x0, y1 - y0)
        pixel_peak = 1.0 / (length * math.sqrt(2.0 * math.pi) * PSF_SIGMA)
        # Smoothing a line profile with the PSF lowers its peak by sqrt(2).
        flux = snr * SMOOTHED_NOISE * math.sqrt(2.0) / pixel_peak
        image += flux * trail_model(xx, yy, x0, y0, x1, y1, PSF_SIGMA)
    for x, y, flux in stars:
        image += flux * trail_model(xx, yy, x, y, x, y, PSF_SIGMA)
    image += rng.normal(size=shape)
    smoothed = ndimage.gaussian_filter(image, PSF_SIGMA)
    return image, np.ones(shape), smoothed > 5.0 * SMOOTHED_NOISE


def endpoint_error(row, truth):
    """Largest endpoint distance, for the better of the two orientations."""
    x0, y0, x1, y1 = truth
    found = (row["x_start"], row["y_start"], row["x_end"], row["y_end"])
    errors = []
    for a, b in (((x0, y0), (x1, y1)), ((x1, y1), (x0, y0))):
        errors.append(max(math.dist(found[:2], a), math.dist(found[2:], b)))
    return min(errors)


def angle_error(row, truth):
    x0, y0, x1, y1 = truth
    beta = math.degrees(math.atan2(y1 - y0, x1 - x0)) % 180.0
    diff = abs(row["beta"] - beta) % 180.0
    return min(diff, 180.0 - diff)


class HoughTrailsTestCase(lsst.utils.tests.TestCase):
    def test_bright_trail(self):
        """A bright long trail: endpoints within 3 px, angle within 1 deg."""
        truth = (30.0, 40.0, 170.0, 120.0)
        image, variance, detected = simulate([truth])
        table = hough_trails(detected, image, variance, psf_sigma=PSF_SIGMA)
        self.assertEqual(list(table.colnames), list(HOUGH_COLUMNS))
        self.assertEqual(len(table), 1)
        row = table[0]
        self.assertLess(endpoint_error(row, truth), 3.0)
        self.assertLess(angle_error(row, truth), 1.0)
        self.assertTrue(0.0 <= row["beta"] < 180.0)
        self.assertAlmostEqual(row["x"], 0.5 * (row["x_start"] + row["x_end"]))
        self.assertAlmostEqual(
            row["trail_length"], math.hypot(row["x_end"] - row["x_start"], row["y_end"] - row["y_start"])
        )
        self.assertEqual(row["trail_id"], 0)
        self.assertGreater(row["n_pixels"], 0)
        self.assertGreaterEqual(row["votes"], HoughConfig().min_line_votes)
        self.assertGreater(row["flux"], 0.0)
        self.assertGreater(row["snr"], 20.0)
        # Without the image there is no flux or snr; the geometry does not change.
        bare = hough_trails(detected, psf_sigma=PSF_SIGMA)
        self.assertEqual(len(bare), 1)
        self.assertTrue(np.isnan(bare["flux"][0]) and np.isnan(bare["snr"][0]))
        self.assertAlmostEqual(bare["x_start"][0], row["x_start"])

    def test_crossing_trails(self):
        """Two crossing trails give two lines, each matching one trail."""
        truths = [(30.0, 40.0, 170.0, 120.0), (20.0, 150.0, 180.0, 30.0)]
        _, _, detected = simulate(truths)
        self.assertEqual(ndimage.label(detected, structure=np.ones((3, 3)))[1], 1)
        table = hough_trails(detected, psf_sigma=PSF_SIGMA)
        self.assertEqual(len(table), 2)
        for truth in truths:
            errors = [endpoint_error(row, truth) for row in table]
            best = int(np.argmin(errors))
            self.assertLess(errors[best], 3.0)
            self.assertLess(angle_error(table[best], truth), 1.0)
        self.assertEqual(sorted(table["trail_id"]), [0, 1])

    def test_below_footprint_threshold(self):
        """A trail below the 5 sigma footprint threshold is not found (the
        baseline's known limit), while the same trail brighter is.
        """
        truth = (30.0, 40.0, 170.0, 120.0)
        _, _, faint = simulate([truth], snr=3.0)
        self.assertEqual(len(hough_trails(faint, psf_sigma=PSF_SIGMA)), 0)
        _, _, brighter = simulate([truth], snr=10.0)
        table = hough_trails(brighter, psf_sigma=PSF_SIGMA)
        self.assertEqual(len(table), 1)
        self.assertLess(endpoint_error(table[0], truth), 3.0)

    def test_stars_only(self):
        """Round footprints of stars, faint to bright, are not trails."""
        stars = [
            (x, y, [50.0, 200.0, 1000.0, 5000.0][k % 4])
            for k, (x, y) in enumerate((x, y) for x in range(25, 200, 50) for y in range(25, 200, 50))
        ]
        _, _, detected = simulate(stars=stars, seed=5)
        sizes = np.bincount(ndimage.label(detected, structure=np.ones((3, 3)))[0].ravel())[1:]
        self.assertGreater(np.count_nonzero(sizes >= HoughConfig().min_cluster_pixels), 4)
        table = hough_trails(detected, psf_sigma=PSF_SIGMA)
        self.assertEqual(len(table), 0)
        self.assertEqual(list(table.colnames), list(HOUGH_COLUMNS))

    def test_empty_mask(self):
        """An empty mask gives an empty table with all the columns."""
        for detected in (np.zeros(SHAPE, dtype=bool), np.zeros((0, 0), dtype=bool)):
            table = hough_trails(detected, psf_sigma=PSF_SIGMA)
            self.assertEqual(len(table), 0)
            self.assertEqual(list(table.colnames), list(HOUGH_COLUMNS))
            self.assertEqual(table["trail_id"].dtype.kind, "i")
            self.assertEqual(table["x_start"].dtype.kind, "f")

    def test_gap(self):
        """A trail cut by a 3-px gap is one segment when line_gap > 3, two
        when line_gap < 3.
        """
        truth = (30.0, 40.0, 170.0, 120.0)
        _, _, detected = simulate([truth])
        # Cut 3 px along the trail, perpendicular to it, near its middle.
        x0, y0, x1, y1 = truth
        length = math.hypot(x1 - x0, y1 - y0)
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
        s = (xx - x0) * ux + (yy - y0) * uy
        detected &= ~((s >= 70.0) & (s < 73.0))
        self.assertEqual(ndimage.label(detected, structure=np.ones((3, 3)))[1], 2)
        joined = hough_trails(detected, psf_sigma=PSF_SIGMA, config=HoughConfig(line_gap=4.0))
        self.assertEqual(len(joined), 1)
        self.assertLess(endpoint_error(joined[0], truth), 3.0)
        split = hough_trails(detected, psf_sigma=PSF_SIGMA, config=HoughConfig(line_gap=1.0))
        self.assertEqual(len(split), 2)
        self.assertLess(abs(split["trail_length"].sum() - length), 10.0)

    def test_bad_pixels(self):
        """Pixels flagged bad (a bleed trail, say) are not searched."""
        detected = np.zeros(SHAPE, dtype=bool)
        detected[20:180, 97:104] = True
        table = hough_trails(detected, psf_sigma=PSF_SIGMA)
        self.assertEqual(len(table), 1)
        self.assertLess(abs(table["beta"][0] - 90.0), 1.0)
        self.assertEqual(len(hough_trails(detected, psf_sigma=PSF_SIGMA, bad=detected)), 0)

    def test_large_detected_regions(self):
        """Fully detected masks and big detected blocks do not break it."""
        self.assertEqual(len(hough_trails(np.ones((300, 300), dtype=bool), psf_sigma=PSF_SIGMA)), 0)
        truth = (30.0, 40.0, 170.0, 120.0)
        _, _, detected = simulate([truth])
        detected[150:, :] = True
        table = hough_trails(detected, psf_sigma=PSF_SIGMA)
        self.assertEqual(len(table), 1)
        self.assertLess(endpoint_error(table[0], truth), 3.0)
        # Capped work on a mask with many edges still returns a table.
        few = HoughConfig(max_edge_pixels=200, max_iterations=3)
        table = hough_trails(detected, psf_sigma=PSF_SIGMA, config=few)
        self.assertEqual(list(table.colnames), list(HOUGH_COLUMNS))

    def test_bad_shapes(self):
        with self.assertRaises(ValueError):
            hough_trails(np.zeros(10, dtype=bool), psf_sigma=PSF_SIGMA)
        with self.assertRaises(ValueError):
            hough_trails(np.zeros(SHAPE, dtype=bool), np.zeros((5, 5)), psf_sigma=PSF_SIGMA)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
