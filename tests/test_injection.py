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

"""Trail catalogs and the trail renderer: flux, geometry, SNR, noise, clipping, bad input."""

import math
import unittest

import numpy as np
from astropy.table import Table

import lsst.utils.tests
from lsst.trail_detect.injection.catalog import (
    INJECTION_FLAGS,
    TrailCatalogError,
    flux_for_nu_det,
    generate_trail_catalog,
    nu_det_closed_form,
    nu_opt_closed_form,
    validate_trail_catalog,
)
from lsst.trail_detect.injection.inject_trails import InjectTrailsConfig, InjectTrailsTask
from lsst.trail_detect.injection.render import fit_nJy_per_electron, inject_trails
from lsst.trail_detect.simulation.visit_image import make_simple_visit_image

SIGMA = 2.0  # PSF sigma (pixels)
NOISE = 10.0  # per-pixel noise (nJy)


def gaussian_psf_at(sigma=SIGMA):
    """A Gaussian PSF model kernel, as the visit images carry, in GalSim form."""
    import galsim

    r = int(math.ceil(5 * sigma))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    kernel = np.exp(-0.5 * (xx**2 + yy**2) / sigma**2)
    kernel /= kernel.sum()
    profile = galsim.InterpolatedImage(galsim.Image(kernel, scale=1.0), normalization="flux")
    return lambda x, y: (profile, True)


def trail_table(rows):
    """A catalog in the source_injection schema from (x, y, length, beta, total flux) tuples."""
    x, y, length, beta, flux = (np.array(v, dtype=float) for v in zip(*rows))
    mag = 31.4 - 2.5 * np.log10(flux / length)
    return Table(
        {
            "injection_id": np.arange(len(x)),
            "x": x,
            "y": y,
            "source_type": ["Trail"] * len(x),
            "mag": mag,
            "trail_length": length,
            "beta": beta,
        }
    )


def inject(rows, size=256, noise=False, seed=0, variance=NOISE**2, image=None, **kwargs):
    image = np.zeros((size, size), np.float32) if image is None else image
    var = np.full((size, size), variance, np.float32)
    return inject_trails(
        image,
        var,
        trail_table(rows),
        gaussian_psf_at(),
        SIGMA,
        nJy_per_electron=0.5,
        add_noise=noise,
        seed=seed,
        **kwargs,
    )


def moments(model):
    """Centroid and the principal axis angle (deg) and variances of an image."""
    yy, xx = np.mgrid[0 : model.shape[0], 0 : model.shape[1]]
    w = model / model.sum()
    cx, cy = (w * xx).sum(), (w * yy).sum()
    ixx = (w * (xx - cx) ** 2).sum()
    iyy = (w * (yy - cy) ** 2).sum()
    ixy = (w * (xx - cx) * (yy - cy)).sum()
    evals, evecs = np.linalg.eigh(np.array([[ixx, ixy], [ixy, iyy]]))
    major = evecs[:, 1]
    angle = math.degrees(math.atan2(major[1], major[0])) % 180.0
    return cx, cy, angle, evals[1], evals[0]


class RendererTestCase(lsst.utils.tests.TestCase):
    def test_flux_is_conserved(self):
        """The noiseless model holds the requested total flux to better than 1%."""
        for length, beta in ((4.0, 10.0), (30.0, 47.0), (120.0, 133.0)):
            res = inject([(128.3, 127.6, length, beta, 5000.0)])
            self.assertFloatsAlmostEqual(float(res.model.sum()), 5000.0, rtol=0.01)
            self.assertFloatsAlmostEqual(float(res.catalog["flux_drawn"][0]), 5000.0, rtol=0.01)
            # The catalog's mag is per pixel of length; total_mag = mag - 2.5 log10(L).
            self.assertFloatsAlmostEqual(
                10 ** (-0.4 * (res.catalog["mag"][0] - 31.4)) * length, 5000.0, rtol=1e-9
            )

    def test_angle_convention_and_geometry(self):
        """beta = 0 runs along +x and 90 along +y; centroid and length land where the catalog says."""
        for beta in (0.0, 30.0, 90.0, 150.0):
            length = 60.0
            res = inject([(120.4, 131.7, length, beta, 1e5)])
            cx, cy, angle, major, minor = moments(res.model)
            self.assertFloatsAlmostEqual(cx, 120.4, atol=0.02)
            self.assertFloatsAlmostEqual(cy, 131.7, atol=0.02)
            self.assertFloatsAlmostEqual(min(abs(angle - beta), 180 - abs(angle - beta)), 0.0, atol=0.2)
            # A uniform segment convolved with the PSF: variance L^2/12 + sigma^2 along it.
            self.assertFloatsAlmostEqual(major, length**2 / 12 + SIGMA**2, rtol=0.02)
            self.assertFloatsAlmostEqual(minor, SIGMA**2, rtol=0.05)
        # Endpoints: the model falls to half its plateau at the catalog's endpoints.
        res = inject([(100.0, 128.0, 80.0, 0.0, 8e4)])
        row = res.model[128]
        plateau = row[100]
        self.assertFloatsAlmostEqual(float(row[60]), 0.5 * plateau, rtol=0.03)
        self.assertFloatsAlmostEqual(float(row[140]), 0.5 * plateau, rtol=0.03)

    def test_snr_against_closed_forms(self):
        """nu_opt and nu_det match the Gaussian-PSF closed forms (anchors section 2.2)."""
        for length in (3.0, 10.0, 40.0, 110.0):
            flux = 3000.0
            res = inject([(128.0, 128.0, length, 35.0, flux)])
            nu_opt = nu_opt_closed_form(flux, length, SIGMA, NOISE)
            nu_det = nu_det_closed_form(flux, length, SIGMA, NOISE)
            self.assertFloatsAlmostEqual(float(res.catalog["nu_opt"][0]), float(nu_opt), rtol=0.02)
            self.assertFloatsAlmostEqual(float(res.catalog["nu_det"][0]), float(nu_det), rtol=0.03)
        # Limits: a point source, and the long-trail formula.
        point = nu_opt_closed_form(1000.0, 1e-4, SIGMA, NOISE)
        self.assertFloatsAlmostEqual(
            float(point), 1000.0 / (NOISE * math.sqrt(4 * math.pi) * SIGMA), rtol=1e-3
        )
        self.assertFloatsAlmostEqual(
            float(nu_det_closed_form(1000.0, 1e-9, SIGMA, NOISE)), float(point), rtol=1e-3
        )
        long_l = 2000.0
        self.assertFloatsAlmostEqual(
            float(nu_opt_closed_form(1000.0, long_l, SIGMA, NOISE)),
            1000.0 / (NOISE * math.sqrt(2 * math.sqrt(math.pi) * SIGMA * long_l)),
            rtol=0.01,
        )
        self.assertFloatsAlmostEqual(
            float(nu_det_closed_form(flux_for_nu_det(7.0, 25.0, SIGMA, NOISE), 25.0, SIGMA, NOISE)),
            7.0,
            rtol=1e-12,
        )

    def test_noise_matches_variance(self):
        """The added noise has the variance that the variance plane gains."""
        res = inject([(128.0, 128.0, 200.0, 0.0, 4e6)], size=256, noise=True, seed=3)
        added_var = res.variance - NOISE**2
        signal = res.model > 0.2 * res.model.max()
        resid = (res.image - res.model)[signal]
        self.assertGreater(signal.sum(), 1000)
        # Input image had no noise, so the residual is only the trail's shot noise.
        self.assertFloatsAlmostEqual(float(np.var(resid / np.sqrt(added_var[signal]))), 1.0, atol=0.06)
        self.assertFloatsAlmostEqual(
            float(np.mean(resid)), 0.0, atol=3 * float(np.sqrt(added_var[signal].mean() / signal.sum()))
        )
        # nJy per electron 0.5: variance gained equals 0.5 x model.
        np.testing.assert_allclose(added_var[signal], 0.5 * res.model[signal], rtol=1e-5)

    def test_seed_reproducibility(self):
        a = inject([(100.0, 120.0, 50.0, 20.0, 2e4)], noise=True, seed=5)
        b = inject([(100.0, 120.0, 50.0, 20.0, 2e4)], noise=True, seed=5)
        c = inject([(100.0, 120.0, 50.0, 20.0, 2e4)], noise=True, seed=6)
        np.testing.assert_array_equal(a.image, b.image)
        self.assertFalse(np.array_equal(a.image, c.image))

    def test_clipping_and_no_overlap(self):
        """Trails across the edge are clipped; trails wholly off the detector are flagged NO_OVERLAP."""
        res = inject(
            [
                (10.0, 100.0, 60.0, 0.0, 6000.0),  # half off the left edge
                (-400.0, 100.0, 50.0, 0.0, 6000.0),  # far off
                (-20.0, 100.0, 10.0, 90.0, 6000.0),
            ]
        )  # within the padding but off the image
        cat = res.catalog
        self.assertEqual(cat["injection_flag"][0], 0)
        self.assertFloatsAlmostEqual(float(cat["x_start_clipped"][0]), -0.5, atol=1e-9)
        self.assertFloatsAlmostEqual(float(cat["x_end_clipped"][0]), 40.0, atol=1e-9)
        self.assertFloatsAlmostEqual(float(cat["length_clipped"][0]), 40.5, atol=1e-9)
        # About 40.5/60 of the flux is on the detector.
        self.assertFloatsAlmostEqual(float(cat["flux_drawn"][0]) / 6000.0, 40.5 / 60.0, atol=0.02)
        no_overlap = 1 << INJECTION_FLAGS["NO_OVERLAP"]
        self.assertEqual(cat["injection_flag"][1], no_overlap)
        self.assertEqual(cat["injection_flag"][2], no_overlap)
        self.assertTrue(np.isnan(cat["flux_drawn"][1]))
        self.assertFloatsAlmostEqual(float(res.model.sum()), float(cat["flux_drawn"][0]), rtol=1e-5)

    def test_masks(self):
        res = inject([(128.0, 128.0, 40.0, 0.0, 4000.0)], mask_threshold=0.5)
        # Truth mask: model above half the noise; INJECTED covers the draw box; INJECTED_CORE the centre.
        np.testing.assert_array_equal(res.trail_mask, res.model > 0.5 * NOISE)
        self.assertTrue(res.injected[res.trail_mask].all())
        self.assertEqual(int(res.injected_core.sum()), 9)
        self.assertTrue(res.injected_core[127:130, 127:130].all())
        self.assertEqual(int(res.catalog["mask_pixels"][0]), int(res.trail_mask.sum()))

    def test_gain_from_variance(self):
        """The nJy-per-electron conversion is recovered from the variance plane."""
        rng = np.random.default_rng(2)
        c = 0.7
        model = np.tile(np.linspace(0, 5e4, 256), (256, 1)).astype(np.float32)
        electrons = rng.poisson(model / c + 400.0)
        image = (electrons - 400.0) * c
        variance = (model / c + 400.0) * c * c
        self.assertFloatsAlmostEqual(
            fit_nJy_per_electron(image, variance, np.ones(image.shape, bool)), c, rtol=0.02
        )


class CatalogTestCase(lsst.utils.tests.TestCase):
    def make(self, seed=1, **kwargs):
        var = np.full((512, 512), NOISE**2)
        return generate_trail_catalog(
            200, var, SIGMA, np.random.default_rng(seed), visit=7, detector=2, **kwargs
        )

    def test_schema_and_distributions(self):
        cat = self.make()
        for column in (
            "injection_id",
            "x",
            "y",
            "source_type",
            "mag",
            "trail_length",
            "beta",
            "total_mag",
            "x_start",
            "y_end",
            "target_nu_det",
        ):
            self.assertIn(column, cat.colnames)
        self.assertTrue(np.all(cat["source_type"] == "Trail"))
        length = np.asarray(cat["trail_length"])
        self.assertTrue(np.all((length >= 4) & (length <= 120)))
        # Log-uniform: the median is near the geometric mean of the range.
        self.assertFloatsAlmostEqual(float(np.median(length)), math.sqrt(4 * 120), rtol=0.25)
        nu = np.asarray(cat["target_nu_det"])
        self.assertTrue(np.all((nu >= 1.5) & (nu <= 30)))
        np.testing.assert_allclose(nu_det_closed_form(cat["flux"], length, SIGMA, NOISE), nu, rtol=1e-9)
        np.testing.assert_allclose(cat["total_mag"], cat["mag"] - 2.5 * np.log10(length), rtol=1e-12)
        # Endpoints are L apart along beta from the centre.
        dx = cat["x_end"] - cat["x_start"]
        dy = cat["y_end"] - cat["y_start"]
        np.testing.assert_allclose(np.hypot(dx, dy), length, rtol=1e-9)
        np.testing.assert_allclose(
            np.degrees(np.arctan2(dy, dx)) % 180, np.asarray(cat["beta"]) % 180, atol=1e-6
        )
        np.testing.assert_allclose(0.5 * (cat["x_start"] + cat["x_end"]), cat["x"], atol=1e-9)

    def test_deterministic(self):
        a, b, c = self.make(seed=3), self.make(seed=3), self.make(seed=4)
        np.testing.assert_array_equal(a["x"], b["x"])
        self.assertFalse(np.array_equal(a["x"], c["x"]))

    def test_magnitude_mode(self):
        cat = self.make(brightness="mag", total_mag_range=(20.0, 22.0))
        self.assertTrue(np.all((cat["total_mag"] >= 20.0) & (cat["total_mag"] <= 22.0)))
        self.assertTrue(np.all(np.isnan(cat["target_nu_det"])))

    def test_avoid_detected(self):
        avoid = np.zeros((512, 512), bool)
        avoid[:, :256] = True
        cat = self.make(avoid=avoid, length_range=(4.0, 20.0))
        self.assertTrue(np.all(np.minimum(cat["x_start"], cat["x_end"]) > 250))

    def test_validation_names_the_column(self):
        good = trail_table([(10.0, 10.0, 20.0, 0.0, 100.0)])
        validate_trail_catalog(good)
        cases = {
            "trail_length": lambda t: t.remove_column("trail_length"),
            "mag": lambda t: t["mag"].__setitem__(0, np.nan),
            "beta": lambda t: t.replace_column("beta", ["north"]),
        }
        for column, spoil in cases.items():
            t = good.copy()
            spoil(t)
            with self.assertRaisesRegex(TrailCatalogError, repr(column)):
                validate_trail_catalog(t)
        t = good.copy()
        t["trail_length"] = [-5.0]
        with self.assertRaisesRegex(TrailCatalogError, "'trail_length'.*positive"):
            validate_trail_catalog(t)
        t = good.copy()
        t["source_type"] = ["Sersic"]
        with self.assertRaisesRegex(TrailCatalogError, "'source_type'"):
            validate_trail_catalog(t)
        t = good.copy()
        t.remove_columns(["x", "y"])
        with self.assertRaisesRegex(TrailCatalogError, "position"):
            validate_trail_catalog(t)


class InjectTaskTestCase(lsst.utils.tests.TestCase):
    """InjectTrailsTask on a real VisitImage, without a Butler."""

    def setUp(self):
        rng = np.random.default_rng(9)
        size = 200
        self.var = np.full((size, size), 400.0, np.float32)
        self.image = rng.normal(0, 20.0, (size, size)).astype(np.float32)
        self.visit_image = make_simple_visit_image(self.image, self.var, SIGMA)

    def test_run(self):
        cat = trail_table([(100.0, 100.0, 50.0, 30.0, 2e4), (5000.0, 10.0, 10.0, 0.0, 100.0)])
        task = InjectTrailsTask()
        result = task.run(self.visit_image, cat)
        out = result.output_exposure
        # Input untouched; output differs only inside the injected box.
        np.testing.assert_array_equal(self.visit_image.image.array, self.image)
        changed = out.image.array != self.image
        self.assertTrue(out.mask.get("INJECTED")[changed].all())
        self.assertTrue(out.mask.get("INJECTED_CORE")[99:102, 99:102].all())
        self.assertEqual(out.metadata["INJECTED"], "visit_image")
        # GAIN 1.6 e/ADU and 0.9 nJy/ADU: 0.5625 nJy per electron.
        self.assertFloatsAlmostEqual(out.metadata["INJECTION_NJY_PER_ELECTRON"], 0.9 / 1.6, rtol=1e-12)
        catalog = result.output_catalog
        self.assertEqual(list(catalog["injection_flag"]), [0, 1 << INJECTION_FLAGS["NO_OVERLAP"]])
        self.assertFloatsAlmostEqual(float(catalog["flux_drawn"][0]), 2e4, rtol=0.01)
        self.assertEqual(int(result.trail_mask.get("TRAIL").sum()), int(catalog["mask_pixels"][0]))
        # Sky coordinates of a pixel-only catalog are not needed; positions came from x, y.
        self.assertFloatsAlmostEqual(float(catalog["x"][0]), 100.0, atol=0)

    def test_sky_positions(self):
        """A catalog with only ra/dec is placed through the WCS."""
        from lsst.trail_detect.imageutils import pixel_to_sky_function

        ra, dec = pixel_to_sky_function(self.visit_image)(np.array([80.0]), np.array([120.0]))
        cat = Table({"ra": ra, "dec": dec, "mag": [24.0], "trail_length": [30.0], "beta": [0.0]})
        config = InjectTrailsConfig()
        config.add_noise = False
        result = InjectTrailsTask(config=config).run(self.visit_image, cat)
        diff = result.output_exposure.image.array - self.image
        cx = (diff.sum(axis=0) * np.arange(200)).sum() / diff.sum()
        cy = (diff.sum(axis=1) * np.arange(200)).sum() / diff.sum()
        self.assertFloatsAlmostEqual(cx, 80.0, atol=0.01)
        self.assertFloatsAlmostEqual(cy, 120.0, atol=0.01)

    def test_bad_catalog_is_refused(self):
        cat = trail_table([(100.0, 100.0, 50.0, 30.0, 2e4)])
        cat.remove_column("beta")
        with self.assertRaisesRegex(TrailCatalogError, "'beta'"):
            InjectTrailsTask().run(self.visit_image, cat)

    def test_true_psf_needs_conditions(self):
        config = InjectTrailsConfig()
        config.use_simulated_true_psf = True
        with self.assertRaisesRegex(RuntimeError, "visit_conditions"):
            InjectTrailsTask(config=config).run(
                self.visit_image, trail_table([(100.0, 100.0, 5.0, 0.0, 1e3)])
            )
        # The connection exists only when the option is on.
        from lsst.trail_detect.injection.inject_trails import InjectTrailsConnections

        self.assertNotIn("conditions", InjectTrailsConnections(config=InjectTrailsConfig()).inputs)
        self.assertIn("conditions", InjectTrailsConnections(config=config).inputs)


@unittest.skipUnless(
    __import__("importlib").util.find_spec("lsst.source") is not None
    and __import__("importlib").util.find_spec("lsst.afw") is not None,
    "lsst.source.injection and afw are not available",
)
class SourceInjectionAgreementTestCase(lsst.utils.tests.TestCase):
    """Our renderer and lsst.source.injection's VisitInjectTask agree on the same catalog."""

    def test_agree(self):
        from lsst.source.injection import VisitInjectConfig, VisitInjectTask

        rng = np.random.default_rng(1)
        image = rng.normal(0, 20.0, (200, 200)).astype(np.float32)
        visit_image = make_simple_visit_image(image, np.full((200, 200), 400.0, np.float32), SIGMA)
        cat = trail_table([(100.0, 100.0, 50.0, 30.0, 2e4), (60.0, 150.0, 20.0, 100.0, 5e3)])
        ours = InjectTrailsTask(config=_noiseless()).run(visit_image, cat)
        exposure = visit_image.to_legacy()
        config = VisitInjectConfig()
        config.add_noise = False
        theirs = VisitInjectTask(config=config).run(
            injection_catalogs=[cat],
            input_exposure=exposure,
            psf=exposure.getPsf(),
            photo_calib=exposure.getPhotoCalib(),
            wcs=exposure.getWcs(),
        )
        ours_added = ours.output_exposure.image.array - image
        theirs_added = theirs.output_exposure.image.array - image
        np.testing.assert_allclose(theirs_added.sum(), ours_added.sum(), rtol=0.01)
        np.testing.assert_allclose(theirs_added, ours_added, atol=0.01 * ours_added.max())


def _noiseless():
    config = InjectTrailsConfig()
    config.add_noise = False
    return config


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
