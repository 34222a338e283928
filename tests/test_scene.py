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

"""Physics of the scene renderer, without a Butler."""

import unittest

import numpy as np
from astropy.table import Table

import lsst.utils.tests
from lsst.trail_detect.simulation.scene import (
    SceneParameters,
    estimate_background,
    galaxy_number_density,
    simulate_detector,
)
from lsst.trail_detect.simulation.survey import plan_survey


def _catalog(conditions, n=400, seed=3):
    rng = np.random.default_rng(seed)
    return Table(
        {
            "source_id": np.arange(n, dtype=np.int64),
            "ra": conditions["boresight_ra"] + rng.uniform(-0.05, 0.05, n),
            "dec": conditions["boresight_dec"] + rng.uniform(-0.05, 0.05, n),
            "phot_g_mean_mag": rng.uniform(12.0, 21.0, n),
            "bp_rp": rng.uniform(0.5, 2.0, n),
            "pmra": rng.normal(0, 5, n),
            "pmdec": rng.normal(0, 5, n),
            "parallax": np.full(n, np.nan),
        }
    )


class SceneTestCase(lsst.utils.tests.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.conditions = plan_survey(1, 1, 384, seed=11)[0]
        cls.stars = _catalog(cls.conditions)
        # Detector 4 sits on the boresight; a high cosmic-ray rate makes sure some are masked.
        cls.params = SceneParameters(cosmic_ray_rate=100.0)
        cls.sim = simulate_detector(cls.conditions, 4, cls.stars, catalog_mag_limit=21.0, params=cls.params)

    def test_reproducible(self):
        """The same conditions and seeds give the same image."""
        again = simulate_detector(self.conditions, 4, self.stars, catalog_mag_limit=21.0, params=self.params)
        np.testing.assert_array_equal(again.image, self.sim.image)
        self.assertEqual(len(again.truth), len(self.sim.truth))
        other = dict(self.conditions, seed=self.conditions["seed"] + 1)
        different = simulate_detector(other, 4, self.stars, catalog_mag_limit=21.0, params=self.params)
        self.assertFalse(np.array_equal(different.image, self.sim.image))

    def test_noise_is_what_variance_says(self):
        """(image - model) / sqrt(variance) has unit width away from saturation and artefacts."""
        from scipy.ndimage import binary_dilation

        sim = self.sim
        masked = np.zeros(sim.image.shape, bool)
        for plane in sim.masks.values():
            masked |= plane
        masked = binary_dilation(masked, iterations=10)
        crs = sim.truth[sim.truth["type"] == "cosmic_ray"]
        yy, xx = np.mgrid[0 : sim.image.shape[0], 0 : sim.image.shape[1]]
        for row in crs:  # unmasked cosmic rays are real signal not in the model
            masked |= np.hypot(xx - row["x"], yy - row["y"]) < row["length"] / 2 + 15
        for kind in ("hot_pixel", "bad_column"):
            for row in sim.truth[sim.truth["type"] == kind]:
                masked[int(row["y"]) if kind == "hot_pixel" else slice(None), int(row["x"])] = True
        z = ((sim.image - sim.model) / np.sqrt(sim.variance))[~masked]
        self.assertFloatsAlmostEqual(float(np.std(z)), 1.0, atol=0.03)
        # The residual's mean is the background-subtraction error: the cell medians include the
        # light of faint sources, so the sky is over-subtracted by a small fraction of the noise,
        # as in real processing.
        self.assertLess(float(np.mean(z)), 0.05)
        self.assertGreater(float(np.mean(z)), -0.25)

    def test_star_truth(self):
        """Catalog stars land where the WCS says, with their catalog brightness."""
        stars = self.sim.truth[(self.sim.truth["type"] == "star") & self.sim.truth["in_catalog"]]
        self.assertGreater(len(stars), 0)
        x, y = self.sim.wcs.wcs_world2pix(np.asarray(stars["ra"]), np.asarray(stars["dec"]), 0)
        np.testing.assert_allclose(x, stars["x"], atol=1e-6)
        np.testing.assert_allclose(stars["flux"], 10 ** (-0.4 * (np.asarray(stars["mag"]) - 31.4)), rtol=1e-6)
        # The model holds each star's flux (sum over a big box around isolated ones).
        model = self.sim.model
        size = model.shape[0]
        for row in stars:
            if 40 < row["x"] < size - 40 and 40 < row["y"] < size - 40 and row["mag"] > 16:
                box = model[int(row["y"]) - 30 : int(row["y"]) + 31, int(row["x"]) - 30 : int(row["x"]) + 31]
                others = self.sim.truth[
                    (np.abs(self.sim.truth["x"] - row["x"]) < 45)
                    & (np.abs(self.sim.truth["y"] - row["y"]) < 45)
                ]
                if len(others) == 1:
                    self.assertFloatsAlmostEqual(float(box.sum()), float(row["flux"]), rtol=0.03)

    def test_psf_model_is_approximate(self):
        """The stored Gaussian PSF is close to, not equal to, the true PSF's second moments."""
        ratio = self.sim.psf_sigma_model / self.sim.psf_sigma_true
        self.assertFloatsAlmostEqual(ratio, 1.0 + self.conditions["psf_model_sigma_error"], rtol=1e-9)
        fwhm_px = self.conditions["seeing_fwhm_arcsec"] / 0.2
        self.assertTrue(0.35 * fwhm_px < self.sim.psf_sigma_true < 0.6 * fwhm_px)

    def test_galaxy_counts(self):
        """Galaxy numbers follow the counts model over the detector area."""
        params = SceneParameters()
        mags = np.linspace(16, params.galaxy_mag_limit, 400)
        per_deg2 = np.trapezoid(galaxy_number_density(mags), mags)
        area = (384 * 0.2 / 3600) ** 2
        gal = self.sim.truth[(self.sim.truth["type"] == "galaxy") & self.sim.truth["on_detector"]]
        expected = per_deg2 * area
        self.assertLess(abs(len(gal) - expected), 4 * np.sqrt(expected))

    def test_cosmic_rays_masked_and_interpolated(self):
        """Masked cosmic rays are interpolated: no CR pixel stays far above the noise."""
        cr = self.sim.masks["COSMIC_RAY"]
        if not cr.any():
            self.skipTest("no masked cosmic ray in this draw")
        self.assertTrue(np.all(self.sim.masks["INTERPOLATED"][cr]))
        z = self.sim.image[cr] / np.sqrt(self.sim.variance[cr])
        self.assertLess(float(np.median(np.abs(z))), 5.0)

    def test_saturation_and_bleed(self):
        """A very bright star saturates, bleeds along its column and conserves charge."""
        cond = dict(self.conditions, satellite_rate=0.0)
        c = self.conditions
        bright = Table(
            {
                "source_id": [1],
                "ra": [c["boresight_ra"]],
                "dec": [c["boresight_dec"]],
                "phot_g_mean_mag": [12.0],
                "bp_rp": [0.8],
                "pmra": [0.0],
                "pmdec": [0.0],
                "parallax": [np.nan],
            }
        )
        # Put the star at the centre of detector 4, which sits on the boresight.
        cond = dict(cond, size=384)
        sim = simulate_detector(
            cond,
            4,
            bright,
            catalog_mag_limit=21.0,
            params=SceneParameters(
                cosmic_ray_rate=0.0,
                hot_pixel_density=0.0,
                bad_columns_per_4k=0.0,
                dead_amp_probability=0.0,
                galaxy_density_scale=0.0,
                star_mag_limit=12.5,
                background_cell=384,
            ),
        )
        sat = sim.masks["SATURATED"]
        self.assertGreater(sat.sum(), 50)
        ys, xs = np.nonzero(sat)
        # Bleed trails are vertical: the saturated region is much taller than wide.
        self.assertGreater(np.ptp(ys), 3 * np.ptp(xs))
        # Total flux in a box holding the star and its bleed matches the truth.
        star = sim.truth[sim.truth["type"] == "star"][0]
        self.assertTrue(star["saturated"])
        total = float(np.sum(sim.image))
        self.assertFloatsAlmostEqual(total / float(star["flux"]), 1.0, atol=0.1)

    def test_background_estimate(self):
        """A smooth gradient is recovered by the cell background."""
        yy, xx = np.mgrid[0:512, 0:512]
        truth = 100.0 + 0.05 * xx + 0.02 * yy
        rng = np.random.default_rng(2)
        bg = estimate_background(truth + rng.normal(0, 3, truth.shape), 64)
        self.assertLess(float(np.max(np.abs(bg - truth)[32:-32, 32:-32])), 1.0)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
