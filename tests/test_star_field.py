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

"""Star fields for detector pretraining and their CenterNet targets."""

import dataclasses
import math
import unittest

import numpy as np
from astropy.table import Table

import lsst.utils.tests
from lsst.trail_detect.simulation.camera import detector_wcs
from lsst.trail_detect.simulation.gaia import gaia_to_band, galactic_star_density, synthetic_gaia_catalog
from lsst.trail_detect.simulation.scene import make_true_psf, psf_moment_sigma
from lsst.trail_detect.simulation.star_field import (
    SimulateStarFieldConfig,
    SimulateStarFieldTask,
    default_star_field_parameters,
    depth_exposure_time,
    draw_star_field_parameters,
    simulate_star_field,
)
from lsst.trail_detect.simulation.survey import plan_survey
from lsst.trail_detect.tiles.star_targets import decode_star_targets, star_targets

ARCMIN2_PER_PIXEL = (0.2 / 60.0) ** 2


def _galactic(conditions, detector, size):
    """Galactic |b| and l of a detector's centre."""
    wcs = detector_wcs(
        conditions["boresight_ra"], conditions["boresight_dec"], conditions["rotation_deg"], detector, size
    )
    centre = wcs.pixel_to_world(size / 2.0, size / 2.0).galactic
    return abs(centre.b.deg), centre.l.deg


def _centroid(image, x, y, sigma, iterations=30):
    """Iterative Gaussian-weighted centroid (converges on the centre of a symmetric profile)."""
    half = int(4 * sigma) + 2
    ix, iy = int(round(x)), int(round(y))
    stamp = image[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(float)
    yy, xx = np.mgrid[iy - half : iy + half + 1, ix - half : ix + half + 1]
    cx, cy = float(ix), float(iy)
    for _ in range(iterations):
        w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)) * stamp
        cx, cy = float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())
    return cx, cy


class CrowdingTestCase(lsst.utils.tests.TestCase):
    """A crowded field without a catalog: every star comes from the model times the crowding."""

    @classmethod
    def setUpClass(cls):
        cls.size = 512
        cls.conditions = plan_survey(1, 9, cls.size, seed=21)[0]
        cls.crowding, cls.mag_limit = 6.0, 24.5
        cls.field = simulate_star_field(
            cls.conditions, 4, None, crowding=cls.crowding, mag_limit=cls.mag_limit
        )

    def test_density_is_model_times_crowding(self):
        """Stars per arcmin^2 on the detector = crowding x model density, within Poisson error."""
        b, l_deg = _galactic(self.conditions, 4, self.size)
        offset = float(gaia_to_band(np.array([0.0]), np.array([1.2]), "r")[0])  # model stars' colour
        area = self.size**2 * ARCMIN2_PER_PIXEL
        stars = self.field.stars
        for limit, count in (
            (self.field.star_mag_limit, len(stars)),
            (self.mag_limit, int((stars["mag"] <= self.mag_limit).sum())),
        ):
            per_arcmin2 = (
                galactic_star_density(b, limit - offset, l_deg) - galactic_star_density(b, 9.0, l_deg)
            ) / 3600.0
            expected = self.crowding * per_arcmin2 * area
            self.assertGreater(expected, 200)
            self.assertLess(abs(count - expected), 4 * math.sqrt(expected), (limit, count, expected))
        self.assertFloatsAlmostEqual(self.field.density_all, len(stars) / area, rtol=1e-12)
        self.assertGreater(self.field.density, 100.0)  # a crowded field: ~170 per arcmin^2 here

    def test_depth(self):
        """A star at mag_limit has nu_psf = 5, and the variance plane agrees."""
        truth = self.field.stars
        nu_at_limit = truth["nu_psf"] * 10 ** (0.4 * (np.asarray(truth["mag"]) - self.mag_limit))
        np.testing.assert_allclose(nu_at_limit, 5.0, rtol=1e-6)
        sim = self.field.detector
        # Sky + read variance per pixel (nJy^2) from the field's emptiest pixels.
        sky_var = float(np.percentile(sim.variance, 5))
        flux_limit = 10 ** (-0.4 * (self.mag_limit - 31.4))
        nu = flux_limit / math.sqrt(4 * math.pi * sim.psf_sigma_true**2 * sky_var)
        self.assertFloatsAlmostEqual(nu, 5.0, rtol=0.03)

    def test_no_galaxies_or_satellites(self):
        types = set(self.field.detector.truth["type"])
        self.assertIn("star", types)
        self.assertNotIn("galaxy", types)
        self.assertNotIn("satellite", types)


class StarPhotometryTestCase(lsst.utils.tests.TestCase):
    """Bright, isolated catalog stars on a sparse field: fluxes and positions measured back."""

    @classmethod
    def setUpClass(cls):
        cls.size = 384
        cls.detector = 4
        cls.conditions = plan_survey(2, 9, cls.size, seed=8)[1]
        c = cls.conditions
        wcs = detector_wcs(c["boresight_ra"], c["boresight_dec"], c["rotation_deg"], cls.detector, cls.size)
        rng = np.random.default_rng(4)
        grid = np.arange(40, cls.size - 40, 60, dtype=float)
        gx, gy = np.meshgrid(grid, grid)
        x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
        y = gy.ravel() + rng.uniform(-0.5, 0.5, gy.size)
        ra, dec = wcs.wcs_pix2world(x, y, 0)
        n = len(x)
        cls.catalog = Table(
            {
                "source_id": np.arange(1, n + 1, dtype=np.int64),
                "ra": ra,
                "dec": dec,
                "phot_g_mean_mag": rng.uniform(17.5, 19.5, n),
                "bp_rp": rng.uniform(0.6, 1.8, n),
                "pmra": np.zeros(n),
                "pmdec": np.zeros(n),
                "parallax": np.full(n, np.nan),
            }
        )
        cls.x, cls.y = x, y
        params = dataclasses.replace(
            default_star_field_parameters(),
            cosmic_ray_rate=0.0,
            hot_pixel_density=0.0,
            bad_columns_per_4k=0.0,
        )
        cls.field = simulate_star_field(
            c, cls.detector, cls.catalog, crowding=0.3, mag_limit=24.0, params=params, catalog_mag_limit=21.0
        )

    def _isolated(self):
        truth = self.field.stars
        cat = truth[truth["in_catalog"]]
        keep = []
        for row in cat:
            d = np.hypot(truth["x"] - row["x"], truth["y"] - row["y"])
            near = (d > 0) & (d < 25) & (truth["mag"] < row["mag"] + 6.0)
            if not near.any() and not row["saturated"]:
                keep.append(row)
        self.assertGreater(len(keep), 15)
        return keep

    def test_catalog_positions(self):
        """Catalog stars land on the pixel positions they were placed at."""
        truth = self.field.stars
        cat = truth[truth["in_catalog"]]
        order = np.argsort(cat["catalog_id"])
        np.testing.assert_allclose(cat["x"][order], self.x, atol=1e-6)
        np.testing.assert_allclose(cat["y"][order], self.y, atol=1e-6)

    def test_centroids(self):
        """Centroids measured on the image agree with the truth within 0.05 px."""
        sim = self.field.detector
        errors = []
        for row in self._isolated():
            cx, cy = _centroid(sim.image, row["x"], row["y"], sim.psf_sigma_true)
            errors.append((cx - row["x"], cy - row["y"]))
        errors = np.array(errors)
        self.assertLess(float(np.abs(errors).max()), 0.05)

    def test_aperture_fluxes(self):
        """Aperture fluxes, corrected with the true PSF's encircled energy, agree with the truth."""
        import galsim

        sim = self.field.detector
        psf = galsim.Convolve(make_true_psf(self.field.conditions), galsim.Pixel(0.2))
        radius = 3.0 * self.conditions["seeing_fwhm_arcsec"] / 0.2 + 2.0
        outer = radius + 8.0
        half = int(outer) + 1
        d = np.arange(-half, half + 1)
        ratios, pulls = [], []
        for row in self._isolated():
            ix, iy = int(np.floor(row["x"] + 0.5)), int(np.floor(row["y"] + 0.5))
            box = (slice(iy - half, iy + half + 1), slice(ix - half, ix + half + 1))
            dx, dy = row["x"] - ix, row["y"] - iy
            r = np.hypot(d[None, :] - dx, d[:, None] - dy)
            aperture, annulus = r < radius, (r >= radius + 3.0) & (r < outer)
            model = psf.drawImage(
                nx=2 * half + 1, ny=2 * half + 1, scale=0.2, offset=(dx, dy), method="no_pixel"
            ).array
            n_ap = int(aperture.sum())
            # Local background from the annulus median; the PSF's own wings there are allowed for.
            encircled = float(model[aperture].sum()) - n_ap * float(np.median(model[annulus]))
            measured = float(sim.image[box][aperture].sum()) - n_ap * float(
                np.median(sim.image[box][annulus])
            )
            variance = sim.variance[box]
            noise = math.sqrt(
                float(variance[aperture].sum())
                + n_ap**2 * 0.5 * math.pi * float(np.mean(variance[annulus])) / int(annulus.sum())
            )
            ratios.append(measured / encircled / row["flux"])
            pulls.append((measured / encircled - row["flux"]) / (noise / encircled))
        ratios = np.array(ratios)
        self.assertFloatsAlmostEqual(float(np.median(ratios)), 1.0, rtol=0.005)
        self.assertLess(float(np.abs(ratios - 1).max()), 0.05)
        # The scatter is the photon and read noise of the aperture and annulus.
        self.assertLess(float(np.abs(pulls).max()), 4.5)
        self.assertLess(float(np.std(pulls)), 1.5)


class StarFieldSeedsTestCase(lsst.utils.tests.TestCase):
    def test_deterministic(self):
        """The same conditions give the same field; another seed another field."""
        conditions = plan_survey(1, 9, 192, seed=3)[0]
        a = simulate_star_field(conditions, 4, None, crowding=3.0, mag_limit=24.0)
        b = simulate_star_field(conditions, 4, None, crowding=3.0, mag_limit=24.0)
        np.testing.assert_array_equal(a.detector.image, b.detector.image)
        np.testing.assert_array_equal(a.detector.truth["x"], b.detector.truth["x"])
        other = dict(conditions, seed=conditions["seed"] + 1)
        c = simulate_star_field(other, 4, None, crowding=3.0, mag_limit=24.0)
        self.assertFalse(np.array_equal(a.detector.image, c.detector.image))
        # The faint stars of each quantum are its own (not those of the same sky in another visit).
        self.assertNotEqual(a.conditions["survey_seed"], c.conditions["survey_seed"])

    def test_seeing_and_depth_span_quanta(self):
        """Across quanta the seeing follows the visits, crowding and depth the configured ranges."""
        visits = plan_survey(40, 9, 256, seed=17)
        draws = np.array([draw_star_field_parameters(c, d) for c in visits for d in range(9)])
        self.assertEqual(draws.shape, (360, 2))
        self.assertEqual(tuple(draw_star_field_parameters(visits[0], 3)), tuple(draws[3]))
        log_c = np.log(draws[:, 0])
        self.assertTrue(np.all((log_c >= 0) & (log_c <= math.log(20.0))))
        self.assertLess(log_c.min(), 0.1 * math.log(20.0))
        self.assertGreater(log_c.max(), 0.9 * math.log(20.0))
        self.assertTrue(np.all((draws[:, 1] >= 22.0) & (draws[:, 1] <= 26.0)))
        self.assertLess(draws[:, 1].min(), 22.4)
        self.assertGreater(draws[:, 1].max(), 25.6)
        seeing = np.array([c["seeing_fwhm_arcsec"] for c in visits])
        self.assertGreater(seeing.max() / seeing.min(), 1.5)
        # The true PSF width follows the seeing; a deeper image needs a longer exposure.
        sharp, blurred = visits[int(np.argmin(seeing))], visits[int(np.argmax(seeing))]
        s_sharp = psf_moment_sigma(make_true_psf(sharp))
        s_blurred = psf_moment_sigma(make_true_psf(blurred))
        self.assertGreater(s_blurred / s_sharp, 1.3)
        times = [depth_exposure_time(sharp, m, s_sharp) for m in (22.0, 23.0, 24.0, 25.0, 26.0)]
        self.assertTrue(np.all(np.diff(times) > 0))
        # Background-limited: 1 mag deeper is 10^0.8 = 6.3 times longer.
        self.assertFloatsAlmostEqual(times[-1] / times[-2], 10**0.8, rtol=0.02)
        # Worse seeing needs a longer exposure for the same depth (same sky and airmass).
        same_sky = dict(blurred, sky_mag=sharp["sky_mag"], airmass=sharp["airmass"], band=sharp["band"])
        self.assertGreater(depth_exposure_time(same_sky, 24.0, s_blurred), times[2])

    def test_default_density_range(self):
        """The default config spans ~10 to several hundred detectable stars per arcmin^2."""
        config = SimulateStarFieldConfig()
        visits = plan_survey(60, 9, 1024, seed=5)
        offset = float(gaia_to_band(np.array([0.0]), np.array([1.2]), "r")[0])
        density = []
        for c in visits:
            for d in range(9):
                crowding, mag_limit = draw_star_field_parameters(
                    c,
                    d,
                    (config.crowding_min, config.crowding_max),
                    (config.mag_limit_min, config.mag_limit_max),
                )
                b, l_deg = _galactic(c, d, 1024)
                catalog = galactic_star_density(b, 21.0, l_deg, gaia_selection=True)
                faint = galactic_star_density(b, mag_limit - offset, l_deg) - galactic_star_density(
                    b, 21.0, l_deg
                )
                density.append((catalog + crowding * max(faint, 0.0)) / 3600.0)
        density = np.array(density)
        self.assertLess(np.percentile(density, 5), 20.0)
        self.assertGreater(np.percentile(density, 95), 200.0)
        self.assertGreater(density.max(), 400.0)


class StarTargetsTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        rng = np.random.default_rng(12)
        # Stars on a jittered grid, 8 px apart: every peak pixel distinct and separated.
        g = np.arange(4, 60, 8, dtype=float)
        gx, gy = np.meshgrid(g, g)
        self.x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
        self.y = gy.ravel() + rng.uniform(-0.5, 0.5, gy.size)
        self.shape = (64, 72)

    def test_peaks_and_offsets(self):
        t = star_targets(self.x, self.y, self.shape, sigma=1.5)
        heat, offset, mask = t["heatmap"], t["offset"], t["offset_mask"]
        self.assertEqual(heat.dtype, np.float32)
        self.assertEqual(offset.dtype, np.float32)
        self.assertEqual(mask.dtype, np.uint8)
        self.assertEqual(heat.shape, self.shape)
        self.assertEqual(offset.shape, (2,) + self.shape)
        ix, iy = np.floor(self.x + 0.5).astype(int), np.floor(self.y + 0.5).astype(int)
        np.testing.assert_array_equal(heat[iy, ix], 1.0)
        self.assertEqual(int(mask.sum()), len(self.x))
        np.testing.assert_array_equal(np.nonzero(mask), np.nonzero(heat == 1.0))
        self.assertTrue(np.all(np.abs(offset) <= 0.5))
        np.testing.assert_allclose(offset[0, iy, ix], self.x - ix, atol=1e-6)
        np.testing.assert_allclose(offset[1, iy, ix], self.y - iy, atol=1e-6)
        self.assertTrue(np.all(offset[:, mask == 0] == 0))
        # The Gaussian profile around a peak: one pixel away exp(-1 / 2 sigma^2).
        self.assertFloatsAlmostEqual(float(heat[iy[0], ix[0] + 1]), math.exp(-1 / (2 * 1.5**2)), rtol=1e-6)
        # Half-pixel edge: x = ix - 0.5 belongs to pixel ix with offset -0.5.
        edge = star_targets([10.5 - 1.0], [5.0], (12, 12), sigma=1.0)
        self.assertEqual(float(edge["heatmap"][5, 10]), 1.0)
        self.assertEqual(float(edge["offset"][0, 5, 10]), -0.5)

    def test_round_trip(self):
        """decode(encode(x, y)) gives back the positions of separated stars."""
        t = star_targets(self.x, self.y, self.shape, sigma=2.0)
        x, y, score = decode_star_targets(t["heatmap"], t["offset"])
        self.assertEqual(len(x), len(self.x))
        np.testing.assert_array_equal(score, 1.0)
        order = np.lexsort((np.round(x), np.round(y)))
        truth = np.lexsort((np.round(self.x), np.round(self.y)))
        np.testing.assert_allclose(x[order], self.x[truth], atol=1e-5)
        np.testing.assert_allclose(y[order], self.y[truth], atol=1e-5)

    def test_tile_origin(self):
        """A tile cut at (x0, y0) of a bigger image holds the shifted targets."""
        big = star_targets(self.x, self.y, self.shape, sigma=1.5)
        x0, y0 = 17, 9
        tile = star_targets(self.x, self.y, (30, 40), sigma=1.5, x0=x0, y0=y0)
        ix, iy = np.floor(self.x + 0.5).astype(int), np.floor(self.y + 0.5).astype(int)
        inside = (ix >= x0) & (ix < x0 + 40) & (iy >= y0) & (iy < y0 + 30)
        np.testing.assert_array_equal(tile["selected"], inside)
        np.testing.assert_array_equal(tile["offset_mask"], big["offset_mask"][y0 : y0 + 30, x0 : x0 + 40])
        np.testing.assert_array_equal(tile["offset"], big["offset"][:, y0 : y0 + 30, x0 : x0 + 40])
        x, y, _ = decode_star_targets(tile["heatmap"], tile["offset"], x0=x0, y0=y0)
        self.assertEqual(len(x), int(inside.sum()))
        order = np.lexsort((np.round(x), np.round(y)))
        truth = np.lexsort((np.round(self.x[inside]), np.round(self.y[inside])))
        np.testing.assert_allclose(x[order], self.x[inside][truth], atol=1e-5)
        np.testing.assert_allclose(y[order], self.y[inside][truth], atol=1e-5)
        # Away from the tile's edges (where stars outside leave no tail) the heatmaps agree.
        np.testing.assert_array_equal(
            tile["heatmap"][6:-6, 6:-6], big["heatmap"][y0 + 6 : y0 + 24, x0 + 6 : x0 + 34]
        )

    def test_faint_stars_excluded(self):
        nu = np.where(np.arange(len(self.x)) % 2 == 0, 10.0, 2.0)
        nu[1] = np.nan
        t = star_targets(self.x, self.y, self.shape, sigma=1.5, nu=nu, nu_min=3.0)
        bright = nu >= 3.0
        np.testing.assert_array_equal(t["selected"], bright)
        self.assertEqual(int(t["offset_mask"].sum()), int(bright.sum()))
        ix, iy = np.floor(self.x + 0.5).astype(int), np.floor(self.y + 0.5).astype(int)
        np.testing.assert_array_equal(t["offset_mask"][iy[~bright], ix[~bright]], 0)
        self.assertTrue(np.all(t["heatmap"][iy[~bright], ix[~bright]] < 0.5))
        x, _, _ = decode_star_targets(t["heatmap"], t["offset"])
        self.assertEqual(len(x), int(bright.sum()))

    def test_shared_peak_keeps_brightest(self):
        t = star_targets([5.1, 4.8, 20.0], [5.2, 4.9, 20.0], (32, 32), sigma=1.0, nu=[50.0, 8.0, 6.0])
        self.assertEqual(int(t["offset_mask"].sum()), 2)
        self.assertFloatsAlmostEqual(float(t["offset"][0, 5, 5]), 0.1, atol=1e-6)
        self.assertFloatsAlmostEqual(float(t["offset"][1, 5, 5]), 0.2, atol=1e-6)

    def test_empty(self):
        t = star_targets([], [], (8, 8), sigma=1.0)
        self.assertEqual(float(t["heatmap"].max()), 0.0)
        x, y, score = decode_star_targets(t["heatmap"], t["offset"])
        self.assertEqual(len(x), 0)
        with self.assertRaises(ValueError):
            star_targets([1.0], [1.0], (8, 8), sigma=0.0)


class SimulateStarFieldTaskTestCase(lsst.utils.tests.TestCase):
    def test_run(self):
        """The task returns a VisitImage and a truth table that agree with each other."""
        from lsst.images import VisitImage

        size, detector = 256, 4
        conditions = plan_survey(1, 9, size, seed=29)[0]
        catalog = synthetic_gaia_catalog(
            conditions["boresight_ra"], conditions["boresight_dec"], 0.05, 21.0, seed=2
        )
        conditions = dict(conditions, catalog_mag_limit=21.0)
        config = SimulateStarFieldConfig()
        config.validate()
        task = SimulateStarFieldTask(config=config)
        result = task.run(
            conditions=conditions,
            star_catalog=[catalog[: len(catalog) // 2], catalog[len(catalog) // 2 :]],
            detector=detector,
        )
        image, truth = result.star_field_image, result.star_field_truth
        self.assertIsInstance(image, VisitImage)
        self.assertEqual(image.image.array.shape, (size, size))
        crowding, mag_limit = draw_star_field_parameters(conditions, detector)
        self.assertFloatsAlmostEqual(image.metadata["CROWDING"], crowding, rtol=1e-12)
        self.assertFloatsAlmostEqual(image.metadata["MAG_LIMIT"], mag_limit, rtol=1e-12)
        self.assertEqual(truth.meta["visit"], conditions["visit"])
        self.assertEqual(truth.meta["detector"], detector)
        stars = truth[(truth["type"] == "star") & truth["on_detector"]]
        area = size**2 * ARCMIN2_PER_PIXEL
        self.assertFloatsAlmostEqual(image.metadata["STAR_DENSITY_ALL"], len(stars) / area, rtol=1e-12)
        self.assertFloatsAlmostEqual(
            image.metadata["STAR_DENSITY"], float((stars["mag"] <= mag_limit).sum()) / area, rtol=1e-12
        )
        self.assertGreater(int(stars["in_catalog"].sum()), 0)
        self.assertFloatsAlmostEqual(
            image.obs_info.exposure_time.to_value("s"), image.metadata["EFFECTIVE_EXPTIME"], rtol=1e-9
        )
        # Bright stars of the truth are peaks of the image, at the truth's pixels.
        pixels = image.image.array
        sigma = np.sqrt(image.variance.array)
        bright = stars[(stars["nu_psf"] > 30) & ~stars["saturated"]]
        self.assertGreater(len(bright), 3)
        ix, iy = np.floor(bright["x"] + 0.5).astype(int), np.floor(bright["y"] + 0.5).astype(int)
        self.assertTrue(np.all(pixels[iy, ix] > 5 * sigma[iy, ix]))
        # The same quantum again gives the same image.
        again = task.run(conditions=conditions, star_catalog=[catalog], detector=detector)
        np.testing.assert_array_equal(again.star_field_image.image.array, pixels)

    def test_connections(self):
        from lsst.pipe.base.testUtils import lintConnections
        from lsst.trail_detect.simulation.star_field import SimulateStarFieldConnections

        lintConnections(SimulateStarFieldConnections)
        connections = SimulateStarFieldConnections(config=SimulateStarFieldConfig())
        self.assertEqual(connections.star_field_image.name, "star_field_image")
        self.assertEqual(connections.star_field_truth.name, "star_field_truth")
        self.assertEqual(SimulateStarFieldTask._DefaultName, "simulateStarField")

    def test_config_validation(self):
        config = SimulateStarFieldConfig()
        config.crowding_min = 30.0
        with self.assertRaises(Exception):
            config.validate()
        config = SimulateStarFieldConfig()
        config.include_galaxies = True
        self.assertGreater(config.scene_parameters().galaxy_density_scale, 0.0)
        self.assertEqual(SimulateStarFieldConfig().scene_parameters().galaxy_density_scale, 0.0)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
