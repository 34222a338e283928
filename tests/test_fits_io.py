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

"""Reading FITS images (plain and legacy LSST Exposure), noise and PSF width measurement."""

import tempfile
import unittest
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy.special import erf

import lsst.utils.tests
from lsst.trail_detect.detection.fits_io import (
    FitsImage,
    measure_psf_sigma,
    read_fits_image,
    robust_noise,
)

CALEXP = (
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "legacy_calexp" / "hsc_calexp_cutout.fits"
)


def make_wcs(shape=(40, 60)):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    wcs.wcs.cd = np.array([[-0.2, 0.01], [0.01, 0.2]]) / 3600.0
    return wcs


def pixel_gaussian(coords, centre, sigma):
    """Pixel-integrated 1-D unit Gaussian."""
    s = np.sqrt(2.0) * sigma
    return 0.5 * (erf((coords + 0.5 - centre) / s) - erf((coords - 0.5 - centre) / s))


def star_field(
    shape=(256, 256),
    n_stars=50,
    sigma=1.7,
    *,
    noise=10.0,
    sky=100.0,
    n_hot=30,
    n_galaxies=0,
    peak_snr=(30.0, 300.0),
    seed=0,
):
    """Gaussian stars (pixel integrated), noise, hot pixels and optionally
    extended round "galaxies".
    """
    rng = np.random.default_rng(seed)
    image = rng.normal(sky, noise, shape)
    ny, nx = shape
    ys, xs = np.arange(ny), np.arange(nx)
    half = int(6 * sigma) + 2
    for _ in range(n_stars):
        x0, y0 = rng.uniform(8, nx - 8), rng.uniform(8, ny - 8)
        flux = rng.uniform(*peak_snr) * noise * 2 * np.pi * sigma**2
        r0, r1 = max(int(y0) - half, 0), int(y0) + half + 1
        c0, c1 = max(int(x0) - half, 0), int(x0) + half + 1
        image[r0:r1, c0:c1] += flux * np.outer(
            pixel_gaussian(ys[r0:r1], y0, sigma), pixel_gaussian(xs[c0:c1], x0, sigma)
        )
    for _ in range(n_galaxies):
        x0, y0 = rng.uniform(8, nx - 8), rng.uniform(8, ny - 8)
        width = sigma * rng.uniform(2.5, 4.0)
        peak = rng.uniform(30.0, 100.0) * noise
        image += peak * np.exp(-0.5 * ((ys[:, None] - y0) ** 2 + (xs[None, :] - x0) ** 2) / width**2)
    rows, cols = rng.integers(0, ny, n_hot), rng.integers(0, nx, n_hot)
    image[rows, cols] += rng.uniform(50.0, 500.0, n_hot) * noise
    return image.astype(np.float32)


class ReadPlainFitsTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.rng = np.random.default_rng(42)

    def tearDown(self):
        self.tmp.cleanup()

    def test_plain_single_hdu_wcs(self):
        shape = (40, 60)
        wcs = make_wcs(shape)
        data = self.rng.normal(0.0, 1.0, shape)  # float64 on disk
        header = wcs.to_header()
        header["OBJECT"] = "test field"
        path = self.dir / "plain.fits"
        fits.PrimaryHDU(data, header=header).writeto(path)

        result = read_fits_image(path)
        self.assertIsInstance(result, FitsImage)
        self.assertEqual(result.kind, "plain")
        self.assertEqual(result.image.dtype, np.float32)
        self.assertEqual(result.image.shape, shape)
        self.assertEqual(result.shape, shape)
        np.testing.assert_allclose(result.image, data.astype(np.float32))
        self.assertIsNone(result.variance)
        self.assertIsNone(result.psf_sigma)
        self.assertEqual(result.bad.dtype, bool)
        self.assertFalse(result.bad.any())
        self.assertFalse(result.saturated.any())
        self.assertEqual(result.header["OBJECT"], "test field")
        self.assertIn(str(path), result.source)
        # The WCS maps 0-based array indices (x = column, y = row) as the original.
        self.assertIsNotNone(result.wcs)
        self.assertTrue(result.wcs.has_celestial)
        for x, y in [(0, 0), (59, 39), (12.5, 30.25)]:
            expected = wcs.pixel_to_world(x, y)
            got = result.wcs.pixel_to_world(x, y)
            self.assertLess(expected.separation(got).arcsec, 1e-6)
            back = result.wcs.world_to_pixel(got)
            self.assertAlmostEqual(float(back[0]), x, places=6)
            self.assertAlmostEqual(float(back[1]), y, places=6)

    def test_no_wcs_and_scaled_integers(self):
        # uint16 is stored as int16 with BZERO = 32768.
        data = self.rng.integers(0, 65000, (20, 30)).astype(np.uint16)
        path = self.dir / "int.fits"
        fits.PrimaryHDU(data).writeto(path)
        with fits.open(path) as hdul:
            self.assertEqual(hdul[0].header["BZERO"], 32768)
        result = read_fits_image(path)
        self.assertIsNone(result.wcs)
        self.assertEqual(result.image.dtype, np.float32)
        np.testing.assert_array_equal(result.image, data.astype(np.float32))

    def test_multi_extension_image_variance_mask(self):
        shape = (30, 50)
        image = self.rng.normal(10.0, 2.0, shape).astype(np.float32)
        variance = np.full(shape, 4.0, dtype=np.float32)
        variance[3, 4] = 0.0
        variance[5, 6] = -1.0
        variance[7, 8] = np.nan
        mask = np.zeros(shape, dtype=np.int32)
        mask[10, 11] = 4
        mask[12, 13] = 1
        primary = fits.PrimaryHDU()
        primary.header["OBSERVER"] = "someone"
        image_hdu = fits.ImageHDU(image, header=make_wcs(shape).to_header(), name="IMAGE")
        path = self.dir / "mef.fits"
        fits.HDUList(
            [
                primary,
                image_hdu,
                fits.ImageHDU(mask, name="MASK"),
                fits.ImageHDU(variance, name="VARIANCE"),
            ]
        ).writeto(path)

        result = read_fits_image(path)
        # IMAGE plus MASK/VARIANCE extensions is the afw Exposure layout.
        self.assertEqual(result.kind, "lsst_calexp")
        self.assertIn("IMAGE", result.source)
        np.testing.assert_array_equal(result.image, image)
        np.testing.assert_array_equal(result.variance, variance)
        expected_bad = np.zeros(shape, dtype=bool)
        for row, col in [(3, 4), (5, 6), (7, 8), (10, 11), (12, 13)]:
            expected_bad[row, col] = True
        # Without MP_ cards any nonzero mask value is bad.
        np.testing.assert_array_equal(result.bad, expected_bad)
        self.assertFalse(result.saturated.any())
        self.assertIsNone(result.psf_sigma)
        self.assertIsNotNone(result.wcs)
        # Primary cards are merged into the image header.
        self.assertEqual(result.header["OBSERVER"], "someone")
        self.assertEqual(result.header["EXTNAME"], "IMAGE")

    def test_mask_planes_from_header(self):
        shape = (8, 9)
        image = np.zeros(shape, dtype=np.float32)
        mask = np.zeros(shape, dtype=np.int32)
        mask_header = fits.Header()
        # Non-default bit assignment: the MP_ cards decide.
        for name, bit in {"BAD": 6, "SAT": 2, "CR": 0, "DETECTED": 5, "NO_DATA": 9, "INJECTED": 31}.items():
            key = f"MP_{name}"
            mask_header[key if len(key) <= 8 else f"HIERARCH {key}"] = bit
        mask[0, 0] = 1 << 6  # BAD
        mask[1, 1] = 1 << 2  # SAT
        mask[2, 2] = 1  # CR
        mask[3, 3] = 1 << 5  # DETECTED: fine
        mask[4, 4] = 1 << 9  # NO_DATA
        mask[5, 5] = np.int32(-(2**31))  # bit 31 (INJECTED): fine
        mask[6, 6] = (1 << 5) | (1 << 2)  # DETECTED and SAT
        path = self.dir / "planes.fits"
        fits.HDUList(
            [
                fits.PrimaryHDU(),
                fits.ImageHDU(image, name="IMAGE"),
                fits.ImageHDU(mask, header=mask_header, name="MASK"),
            ]
        ).writeto(path)
        result = read_fits_image(path)
        self.assertEqual(result.kind, "lsst_calexp")
        self.assertIsNone(result.variance)
        expected_bad = np.zeros(shape, dtype=bool)
        expected_bad[[0, 1, 2, 4, 6], [0, 1, 2, 4, 6]] = True
        np.testing.assert_array_equal(result.bad, expected_bad)
        expected_sat = np.zeros(shape, dtype=bool)
        expected_sat[[1, 6], [1, 6]] = True
        np.testing.assert_array_equal(result.saturated, expected_sat)

    def test_inverse_variance_weight(self):
        shape = (16, 24)
        image = self.rng.normal(0.0, 1.0, shape).astype(np.float32)
        weight = np.full(shape, 0.25, dtype=np.float32)
        weight[2, 3] = 0.0
        weight[4, 5] = -1.0
        path = self.dir / "weight.fits"
        fits.HDUList([fits.PrimaryHDU(image), fits.ImageHDU(weight, name="WEIGHT")]).writeto(path)
        result = read_fits_image(path)
        self.assertEqual(result.kind, "plain")
        self.assertEqual(result.variance.dtype, np.float32)
        good = weight > 0
        np.testing.assert_allclose(result.variance[good], 4.0)
        np.testing.assert_array_equal(result.bad, ~good)

        # WHT is the same thing, and a DQ plane flags with any nonzero value.
        dq = np.zeros(shape, dtype=np.int16)
        dq[7, 7] = 128
        path = self.dir / "wht.fits"
        fits.HDUList(
            [
                fits.PrimaryHDU(),
                fits.ImageHDU(image, name="SCI"),
                fits.ImageHDU(weight, name="WHT"),
                fits.ImageHDU(dq, name="DQ"),
            ]
        ).writeto(path)
        result = read_fits_image(path)
        self.assertIn("SCI", result.source)
        expected = ~good
        expected[7, 7] = True
        np.testing.assert_array_equal(result.bad, expected)

    def test_nan_pixels_are_bad(self):
        image = np.ones((10, 12), dtype=np.float32)
        image[1, 2] = np.nan
        image[3, 4] = np.inf
        image[5, 6] = -np.inf
        path = self.dir / "nan.fits"
        fits.PrimaryHDU(image).writeto(path)
        result = read_fits_image(path)
        self.assertEqual(int(result.bad.sum()), 3)
        self.assertTrue(result.bad[1, 2] and result.bad[3, 4] and result.bad[5, 6])

    def test_hdu_selection(self):
        shape = (10, 12)
        first = np.zeros(shape, dtype=np.float32)
        second = np.ones(shape, dtype=np.float32)
        path = self.dir / "two.fits"
        fits.HDUList(
            [fits.PrimaryHDU(), fits.ImageHDU(first, name="CCD1"), fits.ImageHDU(second, name="CCD2")]
        ).writeto(path)
        # The empty primary HDU is skipped.
        np.testing.assert_array_equal(read_fits_image(path).image, first)
        np.testing.assert_array_equal(read_fits_image(path, hdu="CCD2").image, second)
        np.testing.assert_array_equal(read_fits_image(path, hdu=2).image, second)
        with self.assertRaisesRegex(ValueError, "two.fits.*no HDU named 'CCD3'"):
            read_fits_image(path, hdu="CCD3")
        with self.assertRaisesRegex(ValueError, "two.fits.*no HDU 7"):
            read_fits_image(path, hdu=7)
        with self.assertRaisesRegex(ValueError, "two.fits.*no image data"):
            read_fits_image(path, hdu=0)

    def test_bad_inputs(self):
        missing = self.dir / "missing.fits"
        with self.assertRaisesRegex(FileNotFoundError, "missing.fits"):
            read_fits_image(missing)

        text = self.dir / "notes.txt"
        text.write_text("this is not a FITS file\n" * 50)
        with self.assertRaisesRegex(ValueError, "notes.txt"):
            read_fits_image(text)

        cube = self.dir / "cube.fits"
        fits.PrimaryHDU(np.zeros((3, 8, 9), dtype=np.float32)).writeto(cube)
        with self.assertRaisesRegex(ValueError, r"cube.fits.*3-D"):
            read_fits_image(cube)
        with self.assertRaisesRegex(ValueError, r"cube.fits.*3-D"):
            read_fits_image(cube, hdu=0)

        mismatch = self.dir / "mismatch.fits"
        fits.HDUList(
            [
                fits.PrimaryHDU(np.zeros((8, 9), dtype=np.float32)),
                fits.ImageHDU(np.ones((8, 10), dtype=np.float32), name="VARIANCE"),
            ]
        ).writeto(mismatch)
        with self.assertRaisesRegex(ValueError, r"mismatch.fits.*variance.*\(8, 10\)"):
            read_fits_image(mismatch)

        all_nan = self.dir / "allnan.fits"
        fits.PrimaryHDU(np.full((8, 9), np.nan, dtype=np.float32)).writeto(all_nan)
        with self.assertRaisesRegex(ValueError, "allnan.fits.*finite"):
            read_fits_image(all_nan)

        table = self.dir / "table.fits"
        column = fits.Column(name="a", format="E", array=np.ones(3))
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([column])]).writeto(table)
        with self.assertRaisesRegex(ValueError, "table.fits.*no HDU with 2-D image"):
            read_fits_image(table)
        with self.assertRaisesRegex(ValueError, "table.fits.*not an image"):
            read_fits_image(table, hdu=1)

        with self.assertRaises(ValueError):
            read_fits_image(self.dir)


@unittest.skipUnless(CALEXP.exists(), f"legacy calexp fixture {CALEXP} not available")
class LegacyCalexpTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.result = read_fits_image(CALEXP)
        with fits.open(CALEXP) as hdul:
            self.mask = hdul["MASK"].data.astype(np.int64)
            self.mask_header = hdul["MASK"].header.copy()
            self.variance = hdul["VARIANCE"].data.astype(np.float32)
            self.image = hdul["IMAGE"].data.astype(np.float32)
            self.image_header = hdul["IMAGE"].header.copy()
            self.table_sigma = float(hdul["GaussianPsf"].data["sigma"][0])

    def test_layout(self):
        result = self.result
        self.assertEqual(result.kind, "lsst_calexp")
        self.assertEqual(result.image.shape, (32, 64))
        self.assertEqual(result.variance.shape, (32, 64))
        self.assertEqual(result.bad.shape, (32, 64))
        self.assertEqual(result.saturated.shape, (32, 64))
        self.assertEqual(result.image.dtype, np.float32)
        self.assertEqual(result.variance.dtype, np.float32)
        np.testing.assert_array_equal(result.image, self.image)
        np.testing.assert_array_equal(result.variance, self.variance)
        self.assertIn("IMAGE", result.source)
        # Primary-header metadata is available through the merged header.
        self.assertEqual(result.header["DETNAME"].strip(), "1_42")
        self.assertEqual(result.header["EXTNAME"], "IMAGE")
        # Asking for the IMAGE HDU explicitly gives the same reading.
        self.assertEqual(read_fits_image(CALEXP, hdu="IMAGE").kind, "lsst_calexp")

    def test_psf_sigma(self):
        self.assertIsNotNone(self.result.psf_sigma)
        self.assertEqual(self.result.psf_sigma, self.table_sigma)

    def test_mask_planes(self):
        planes = {key[3:]: int(self.mask_header[key]) for key in self.mask_header if key.startswith("MP_")}
        bits = sum(1 << planes[name] for name in ("NO_DATA", "BAD", "SAT", "CR", "EDGE", "SUSPECT"))
        expected = ((self.mask & bits) != 0) | ~np.isfinite(self.image)
        expected |= ~(np.isfinite(self.variance) & (self.variance > 0))
        np.testing.assert_array_equal(self.result.bad, expected)
        self.assertTrue(self.result.bad.any())
        self.assertFalse(self.result.bad.all())
        np.testing.assert_array_equal(self.result.saturated, (self.mask & (1 << planes["SAT"])) != 0)
        # DETECTED alone is not bad.
        detected_only = self.mask == (1 << planes["DETECTED"])
        self.assertFalse(self.result.bad[detected_only].any())

    def test_wcs(self):
        wcs = self.result.wcs
        self.assertIsNotNone(wcs)
        self.assertTrue(wcs.has_celestial)
        corner = wcs.pixel_to_world(0, 0)
        # HSC visit 904010, detector 1_42: RA ~ 320.7 deg, Dec ~ -0.4 deg.
        self.assertAlmostEqual(corner.ra.deg, 320.661, delta=0.01)
        self.assertAlmostEqual(corner.dec.deg, -0.375, delta=0.01)
        # Array index (0, 0) is FITS pixel (1, 1) of the header WCS: no xy0 offset.
        ra, dec = WCS(self.image_header).all_pix2world(1.0, 1.0, 1)
        self.assertLess(corner.separation(WCS(self.image_header).pixel_to_world(0, 0)).arcsec, 1e-6)
        self.assertAlmostEqual(corner.ra.deg, float(ra), places=9)
        self.assertAlmostEqual(corner.dec.deg, float(dec), places=9)
        # About 0.17 arcsec pixels across the cutout.
        far = wcs.pixel_to_world(63, 31)
        self.assertAlmostEqual(corner.separation(far).arcsec, np.hypot(63, 31) * 0.168, delta=1.0)


class NoiseAndPsfTestCase(lsst.utils.tests.TestCase):
    def test_robust_noise(self):
        image = star_field((300, 400), n_stars=40, sigma=1.5, noise=5.0, sky=1000.0, seed=1)
        background, sigma = robust_noise(image)
        self.assertAlmostEqual(background, 1000.0, delta=0.3)
        self.assertAlmostEqual(sigma, 5.0, delta=0.15)
        # Garbage in bad pixels is ignored.
        bad = np.zeros(image.shape, dtype=bool)
        bad[:100] = True
        image[:100] = 1e6
        image[150, 150] = np.nan
        background, sigma = robust_noise(image, bad)
        self.assertAlmostEqual(background, 1000.0, delta=0.3)
        self.assertAlmostEqual(sigma, 5.0, delta=0.15)
        with self.assertRaises(ValueError):
            robust_noise(image, np.ones(image.shape, dtype=bool))

    def test_psf_sigma_1_7(self):
        image = star_field(sigma=1.7, n_stars=50, n_hot=40, seed=2)
        self.assertAlmostEqual(measure_psf_sigma(image) / 1.7, 1.0, delta=0.05)

    def test_psf_sigma_2_6(self):
        image = star_field(sigma=2.6, n_stars=50, n_hot=40, seed=3)
        self.assertAlmostEqual(measure_psf_sigma(image) / 2.6, 1.0, delta=0.05)

    def test_psf_sigma_galaxies_bad_pixels_given_noise(self):
        image = star_field(sigma=1.7, n_stars=50, n_galaxies=8, seed=4)
        bad = np.zeros(image.shape, dtype=bool)
        bad[:, 100:104] = True  # a bad column block full of garbage
        image[bad] = 1e5
        sigma = measure_psf_sigma(image, bad, background=100.0, noise=10.0)
        self.assertAlmostEqual(sigma / 1.7, 1.0, delta=0.05)

    def test_psf_sigma_too_few_stars(self):
        image = star_field(n_stars=2, n_hot=50, seed=5)
        with self.assertRaisesRegex(ValueError, "found only [0-2] stars"):
            measure_psf_sigma(image)

    def test_full_detector(self):
        """A 4096x4096 image with hot pixels: noise and PSF width recovered."""
        rng = np.random.default_rng(6)
        image = rng.normal(100.0, 10.0, (4096, 4096)).astype(np.float32)
        # Paste 300 stars of sigma 1.7 px.
        coords = np.arange(-8, 9)
        stamp = np.outer(pixel_gaussian(coords, 0.0, 1.7), pixel_gaussian(coords, 0.0, 1.7))
        for _ in range(300):
            row, col = rng.integers(20, 4076, 2)
            image[row - 8 : row + 9, col - 8 : col + 9] += rng.uniform(300, 3000) * 2 * np.pi * 1.7**2 * stamp
        image[rng.integers(0, 4096, 2000), rng.integers(0, 4096, 2000)] += 3000.0
        background, noise = robust_noise(image)
        sigma = measure_psf_sigma(image)
        self.assertAlmostEqual(noise, 10.0, delta=0.3)
        self.assertAlmostEqual(sigma / 1.7, 1.0, delta=0.05)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
