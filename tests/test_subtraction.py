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

"""Tests of difference imaging: the simulated templates, the PSF-matched subtraction and the source search."""

import math
import unittest

import numpy as np

import lsst.utils.tests
from lsst.trail_detect.detection.postprocess import trail_model
from lsst.trail_detect.detection.source_search import SourceSearchConfig, source_search
from lsst.trail_detect.subtraction.matching import (
    convolve_gaussian,
    fit_matching_kernel,
    gaussian_kernel_1d,
    kernel_stamp_centres,
    subtract_images,
)


def grid(shape):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return xx.astype(float), yy.astype(float)


def star_field(shape, sigma, positions, fluxes):
    """Noise-free image of Gaussian stars."""
    xx, yy = grid(shape)
    image = np.zeros(shape)
    for (x, y), flux in zip(positions, fluxes):
        image += flux * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma**2) / (2 * math.pi * sigma**2)
    return image


def psf_filter_peaks(image, variance, sigma, threshold=5.0):
    """Number of footprints of the PSF-filtered SNR above +threshold and below -threshold."""
    from scipy import ndimage

    from lsst.trail_detect.simulation.stack_detection import psf_filter_snr

    snr, _ = psf_filter_snr(image, variance, sigma)
    snr = np.nan_to_num(snr)
    return ndimage.label(snr > threshold)[1], ndimage.label(snr < -threshold)[1]


class MatchingTestCase(lsst.utils.tests.TestCase):
    """PSF matching and subtraction on constructed star fields."""

    def setUp(self):
        self.rng = np.random.default_rng(3)
        self.shape = (256, 256)
        n = 60
        self.positions = self.rng.uniform(20, 236, size=(n, 2))
        self.fluxes = 10 ** self.rng.uniform(2.5, 4.5, n)

    def test_kernel_and_convolution(self):
        kernel = gaussian_kernel_1d(1.5)
        self.assertAlmostEqual(kernel.sum(), 1.0)
        self.assertEqual(len(kernel) % 2, 1)
        np.testing.assert_array_equal(gaussian_kernel_1d(0.0), [1.0])
        with self.assertRaises(ValueError):
            gaussian_kernel_1d(-1.0)
        # The propagated variance is that of convolved white noise.
        noise = self.rng.normal(0.0, 2.0, size=(400, 400))
        smooth, variance = convolve_gaussian(noise, np.full(noise.shape, 4.0), 1.2)
        self.assertFloatsAlmostEqual(
            float(np.var(smooth[20:-20, 20:-20])), float(variance[200, 200]), rtol=0.05
        )
        self.assertFloatsAlmostEqual(
            float(variance[200, 200]),
            4.0 * float(np.sum(np.outer(*[gaussian_kernel_1d(1.2)] * 2) ** 2)),
            rtol=1e-5,
        )

    def check_subtraction(self, sigma_science, sigma_template, fit):
        noise_s, noise_t = 1.0, 0.3
        science = star_field(self.shape, sigma_science, self.positions, self.fluxes)
        template = star_field(self.shape, sigma_template, self.positions, self.fluxes)
        # A new source only in the science image.
        science += star_field(self.shape, sigma_science, [(128.3, 101.7)], [400.0])
        science += self.rng.normal(0.0, noise_s, self.shape)
        template += self.rng.normal(0.0, noise_t, self.shape)
        result = subtract_images(
            science,
            np.full(self.shape, noise_s**2),
            sigma_science,
            template,
            np.full(self.shape, noise_t**2),
            sigma_template,
            fit_kernel=fit,
        )
        positive, negative = psf_filter_peaks(result.difference, result.variance, result.psf_sigma)
        # The static stars are gone; the new source is all that is left.
        self.assertEqual(positive, 1)
        self.assertEqual(negative, 0)
        good = np.ones(self.shape, bool)
        good[:12] = good[-12:] = False
        good[:, :12] = good[:, -12:] = False
        z = result.difference[good] / np.sqrt(result.variance[good])
        self.assertLess(abs(float(np.std(z)) - 1.0), 0.15)
        self.assertTrue(np.all(result.variance >= noise_s**2 * 0.99) or result.convolved == "science")
        return result

    def test_gaussian_kernel(self):
        result = self.check_subtraction(2.0, 1.3, fit=False)
        self.assertEqual(result.convolved, "template")
        self.assertAlmostEqual(result.kernel_sigma, math.sqrt(2.0**2 - 1.3**2))
        self.assertEqual(result.psf_sigma, 2.0)
        self.assertEqual(result.n_stamps, 0)

    def test_fitted_kernel(self):
        result = self.check_subtraction(2.0, 1.3, fit=True)
        self.assertEqual(result.convolved, "template")
        self.assertGreaterEqual(result.n_stamps, 8)
        # The fitted kernel's width is the Gaussian's.
        self.assertFloatsAlmostEqual(result.kernel_sigma, math.sqrt(2.0**2 - 1.3**2), rtol=0.05)

    def test_sharper_science(self):
        # The science image is convolved to the template's PSF (its noise becomes correlated, so the
        # residuals are measured as fluxes, not as SNRs).
        science = star_field(self.shape, 1.2, self.positions, self.fluxes)
        science += star_field(self.shape, 1.2, [(128.3, 101.7)], [400.0])
        template = star_field(self.shape, 1.8, self.positions, self.fluxes)
        ones = np.ones(self.shape)
        result = subtract_images(science, ones, 1.2, template, ones, 1.8, fit_kernel=False)
        self.assertEqual(result.convolved, "science")
        self.assertEqual(result.psf_sigma, 1.8)
        xx, yy = grid(self.shape)
        for (x, y), flux in zip(self.positions, self.fluxes):
            aperture = (xx - x) ** 2 + (yy - y) ** 2 < (3 * 1.8) ** 2
            self.assertLess(abs(float(result.difference[aperture].sum())), 0.01 * flux)
        aperture = (xx - 128.3) ** 2 + (yy - 101.7) ** 2 < (4 * 1.8) ** 2
        self.assertFloatsAlmostEqual(float(result.difference[aperture].sum()), 400.0, rtol=0.03)

    def test_fit_recovers_kernel(self):
        reference = star_field(self.shape, 1.0, self.positions, self.fluxes) + self.rng.normal(
            0, 0.1, self.shape
        )
        target = star_field(self.shape, 1.0, self.positions + [0.3, -0.2], 1.1 * self.fluxes) + 5.0
        centres = kernel_stamp_centres(
            reference, np.full(self.shape, 0.01), np.zeros(self.shape, bool), stamp_half=16
        )
        self.assertGreater(len(centres), 8)
        kernel, background = fit_matching_kernel(
            reference, target, np.ones(self.shape), centres, kernel_half=4, stamp_half=11
        )
        # A shift and a flux ratio: the kernel's sum is the ratio, its centroid the shift.
        self.assertFloatsAlmostEqual(float(kernel.sum()), 1.1, rtol=0.02)
        y, x = np.mgrid[-4:5, -4:5]
        self.assertFloatsAlmostEqual(float((kernel * x).sum() / kernel.sum()), -0.3, atol=0.05)
        self.assertFloatsAlmostEqual(float((kernel * y).sum() / kernel.sum()), 0.2, atol=0.05)
        self.assertFloatsAlmostEqual(background, 5.0, atol=0.1)

    def test_missing_pixels_and_bad_input(self):
        science = self.rng.normal(size=self.shape)
        variance = np.ones(self.shape)
        variance[:, :40] = np.nan  # no data
        result = subtract_images(science, variance, 2.0, science, np.ones(self.shape), 1.5, fit_kernel=False)
        self.assertTrue(np.all(np.isnan(result.variance[:, :40])))
        self.assertTrue(np.all(result.difference[:, :40] == 0))
        self.assertTrue(np.all(np.isfinite(result.variance[:, 50:])))
        with self.assertRaisesRegex(ValueError, "one shape"):
            subtract_images(science, variance, 2.0, science[:100], variance[:100], 1.5)
        with self.assertRaisesRegex(ValueError, "template PSF sigma"):
            subtract_images(science, variance, 2.0, science, variance, 0.0)
        with self.assertRaisesRegex(ValueError, "science variance"):
            subtract_images(science, variance[:10], 2.0, science, variance, 1.0)


class TemplateSimulationTestCase(lsst.utils.tests.TestCase):
    """Simulated templates hold the visit's sky, and subtracting them leaves little of it."""

    @classmethod
    def setUpClass(cls):
        from lsst.trail_detect.simulation.scene import simulate_detector, simulate_template
        from lsst.trail_detect.simulation.survey import plan_survey

        cls.conditions = plan_survey(1, 1, 384, 11)[0]
        cls.visit = simulate_detector(cls.conditions, 0, None)
        cls.template = simulate_template(cls.conditions, 0, None)

    def test_same_sky(self):
        visit_truth, template_truth = self.visit.truth, self.template.truth
        for kind in ("star", "galaxy"):
            v = visit_truth[visit_truth["type"] == kind]
            t = template_truth[template_truth["type"] == kind]
            self.assertEqual(len(v), len(t))
            np.testing.assert_allclose(v["x"], t["x"])
            np.testing.assert_allclose(v["flux"], t["flux"])
        self.assertEqual(set(template_truth["type"]), {"star", "galaxy"})
        # Deeper and sharper: the coadd PSF and the noise of `depth` visits.
        self.assertLess(self.template.psf_sigma_true, self.visit.psf_sigma_true + 1e-9)
        ratio = np.median(self.visit.variance) / np.median(self.template.variance)
        self.assertFloatsAlmostEqual(float(ratio), 10.0, rtol=0.1)
        self.assertEqual(self.template.masks, {})

    def test_subtraction_removes_the_static_sky(self):
        bad = np.zeros(self.visit.image.shape, bool)
        for plane in self.visit.masks.values():
            bad |= plane
        result = subtract_images(
            self.visit.image,
            self.visit.variance,
            self.visit.psf_sigma_model,
            self.template.image,
            self.template.variance,
            self.template.psf_sigma_model,
            bad=bad,
        )
        image = np.where(bad, 0.0, result.difference)
        variance = np.where(bad | ~np.isfinite(result.variance), 1e30, result.variance)
        in_difference, _ = psf_filter_peaks(image, variance, result.psf_sigma)
        in_visit, _ = psf_filter_peaks(
            np.where(bad, 0.0, self.visit.image), np.where(bad, 1e30, self.visit.variance), result.psf_sigma
        )
        self.assertGreater(in_visit, 50)
        self.assertLess(in_difference, in_visit / 4)

    def test_variable_stars_and_validation(self):
        from lsst.trail_detect.simulation.scene import TemplateParameters, simulate_template

        steady = simulate_template(
            self.conditions, 0, None, template=TemplateParameters(variable_fraction=0.0)
        )
        varying = simulate_template(
            self.conditions, 0, None, template=TemplateParameters(variable_fraction=1.0, variable_rms_mag=0.3)
        )
        # Same noise draw, other star fluxes: the model differs only where stars are.
        self.assertGreater(float(np.abs(varying.model - steady.model).max()), 0.0)
        galaxies_only = self.template.truth["type"] == "galaxy"
        self.assertTrue(np.any(galaxies_only))
        with self.assertRaises(ValueError):
            TemplateParameters(depth=0.0)
        with self.assertRaises(ValueError):
            TemplateParameters(variable_fraction=1.5)


class SourceSearchTestCase(lsst.utils.tests.TestCase):
    """Sources of a difference image as trail candidates."""

    SIGMA = 1.6

    @classmethod
    def setUpClass(cls):
        import torch

        from lsst.trail_detect.detection.detect import load_network
        from lsst.trail_detect.models.storage import TrailDetectorModel
        from lsst.trail_detect.paths import default_model_path

        torch.set_num_threads(1)
        cls.shipped = TrailDetectorModel.load(default_model_path())
        cls.network = load_network(cls.shipped, "cpu")

    def detect(self, image, variance, **kwargs):
        """`detect_trails` with the shipped network and the source search."""
        from lsst.trail_detect.detection.detect import detect_trails

        return detect_trails(
            image,
            variance,
            network=self.network,
            psf_sigma=self.SIGMA,
            source_search=SourceSearchConfig(),
            **kwargs,
        )

    def make_image(self):
        rng = np.random.default_rng(8)
        shape = (200, 200)
        xx, yy = grid(shape)
        image = rng.normal(size=shape)
        # A short trail (6 px), a subtraction dipole and an undersampled cosmic-ray hit.
        image += 150.0 * trail_model(xx, yy, 47.0, 50.0, 53.0, 54.0, self.SIGMA)
        image += 300.0 * trail_model(xx, yy, 150.0, 50.0, 150.0, 50.0, self.SIGMA)
        image -= 300.0 * trail_model(xx, yy, 152.5, 50.0, 152.5, 50.0, self.SIGMA)
        image[150, 100] += 60.0
        image[151, 100] += 40.0
        return image.astype(np.float32), np.ones(shape, np.float32)

    def test_candidates(self):
        image, variance = self.make_image()
        result = source_search(image, variance, self.SIGMA, good=np.ones(image.shape, bool))
        self.assertEqual(result.snr.shape, image.shape)
        by_place = {}
        for c in result.candidates:
            self.assertEqual(c.origin, "source")
            self.assertGreaterEqual(c.peak_snr, 5.0)
            by_place[(round(c.centre[0] / 50), round(c.centre[1] / 50))] = c
        trail, dipole = by_place[(1, 1)], by_place[(3, 1)]
        self.assertIn((2, 3), by_place)  # the cosmic ray
        self.assertLess(dipole.negative_snr, -10.0)
        self.assertGreater(trail.negative_snr, -5.0)
        with self.assertRaises(ValueError):
            SourceSearchConfig(threshold=5.0, footprint_threshold=6.0)
        with self.assertRaisesRegex(ValueError, "unknown source search"):
            SourceSearchConfig.from_dict({"thresh": 5})

    def test_in_detection(self):
        from astropy.table import Table

        from lsst.trail_detect.evaluation.matching import match_trails

        image, variance = self.make_image()
        truth = Table(rows=[(47.0, 50.0, 53.0, 54.0)], names=("x_start", "y_start", "x_end", "y_end"))
        truth["injection_flag"] = 0
        result = self.detect(image, variance, keep_rejected=True)
        catalog = result.catalog
        self.assertIn("source_search", result.timing)
        sources = catalog[catalog["origin"] == "source"]
        self.assertGreaterEqual(len(sources), 3)
        # The cosmic ray is narrower than the PSF: its width collapses and the fit fails.
        near_cr = sources[(np.abs(sources["x"] - 100) < 3) & (np.abs(sources["y"] - 150.5) < 3)]
        self.assertEqual(len(near_cr), 1)
        self.assertIn(near_cr["rejected"][0], ("cosmic_ray", "fit_failed"))
        kept = catalog[catalog["rejected"] == ""]
        match = match_trails(kept, truth, psf_sigma=self.SIGMA)
        self.assertEqual(int(np.sum(np.asarray(match.truth_to_det) >= 0)), 1)
        found = kept[int(np.asarray(match.truth_to_det)[0])]
        self.assertEqual(found["origin"], "source")
        self.assertFloatsAlmostEqual(float(found["width_ratio"]), 1.0, atol=0.25)
        self.assertTrue(np.isnan(catalog["peak_snr"][catalog["origin"] != "source"]).all())

    def test_template_snr(self):
        image, variance = self.make_image()
        xx, yy = grid(image.shape)
        # A variable star: a point source in the difference image on a star of the template.
        image += 150.0 * trail_model(xx, yy, 100.0, 60.0, 100.0, 60.0, self.SIGMA)
        template = 2000.0 * trail_model(xx, yy, 100.0, 60.0, 100.0, 60.0, 1.2)
        template = (template + np.random.default_rng(1).normal(0, 0.3, image.shape)).astype(np.float32)
        result = self.detect(
            image,
            variance,
            keep_rejected=True,
            template=(template, np.full(image.shape, 0.09, np.float32), 1.2),
        )
        catalog = result.catalog[result.catalog["origin"] == "source"]
        on_star = catalog[(np.abs(catalog["x"] - 100) < 3) & (np.abs(catalog["y"] - 60) < 3)]
        trail = catalog[(np.abs(catalog["x"] - 50) < 3) & (np.abs(catalog["y"] - 52) < 3)]
        self.assertGreater(float(on_star["template_snr"][0]), 100.0)
        self.assertLess(float(trail["template_snr"][0]), 5.0)
        # A calibration that weighs the template cannot be used without one.
        calibration = {
            "method": "logistic",
            "features": ["score_raw", "template_snr"],
            "coef": [1.0, -1.0],
            "intercept": 0.0,
            "mean": [0.0, 0.0],
            "scale": [1.0, 1.0],
        }
        with self.assertRaisesRegex(ValueError, "uses the template"):
            self.detect(image, variance, source_score_calibration=calibration)
        with self.assertRaisesRegex(ValueError, "template shape"):
            self.detect(image, variance, template=(template[:10], template, 1.2))

    def test_model_settings(self):
        from lsst.trail_detect.detection.detect import model_settings
        from lsst.trail_detect.models.storage import TrailDetectorModel

        shipped = self.shipped
        visit = model_settings(shipped)
        self.assertIsNone(visit["source_search"])
        metadata = {k: v for k, v in shipped.metadata.items() if k != "difference"}
        bare = TrailDetectorModel(
            kind=shipped.kind, architecture=shipped.architecture, tensors=shipped.tensors, metadata=metadata
        )
        with self.assertRaisesRegex(ValueError, "no calibration for difference images"):
            model_settings(bare, calibration="difference")
        with self.assertRaisesRegex(ValueError, "unknown calibration"):
            model_settings(shipped, calibration="coadd")
        if "difference" in shipped.metadata:
            difference = model_settings(shipped, calibration="difference")
            self.assertIsInstance(difference["source_search"], SourceSearchConfig)
            self.assertIn("template_snr", difference["source_score_calibration"]["features"])
            self.assertNotEqual(difference["min_score"], visit["min_score"])


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
