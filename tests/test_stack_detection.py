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

"""Tests for the stack-like PSF-matched-filter detection in
`lsst.trail_detect.simulation.stack_detection`.

The checks are statistical and physical: SNR-map normalization on pure
noise, false-detection rate against the Gaussian-field expectation,
completeness, flux and centroid accuracy of injected point sources,
star/galaxy separation and the behaviour of mask planes.
"""

import unittest

import astropy.units as u
import numpy as np
from scipy import ndimage, special
from scipy.spatial import cKDTree

import lsst.utils.tests
from lsst.trail_detect.simulation.stack_detection import (
    detect_sources,
    empty_source_table,
    psf_filter_snr,
)

PSF_SIGMA = 2.0
SKY_VARIANCE = 100.0


def pixel_gaussian(offset, sigma):
    """Integrate a unit-flux 1-d Gaussian over unit pixels."""
    scale = np.sqrt(2.0) * sigma
    return 0.5 * (special.erf((offset + 0.5) / scale) - special.erf((offset - 0.5) / scale))


def render(shape, xs, ys, fluxes, sigma):
    """Render pixel-integrated circular Gaussians (centres at integers)."""
    image = np.zeros(shape)
    half = int(np.ceil(6 * sigma)) + 1
    offsets = np.arange(-half, half + 1)
    for x, y, flux in zip(xs, ys, fluxes):
        ix, iy = int(round(x)), int(round(y))
        stamp = flux * np.outer(
            pixel_gaussian(iy + offsets - y, sigma), pixel_gaussian(ix + offsets - x, sigma)
        )
        r0, c0 = iy - half, ix - half
        rs = slice(max(r0, 0), min(r0 + 2 * half + 1, shape[0]))
        cs = slice(max(c0, 0), min(c0 + 2 * half + 1, shape[1]))
        image[rs, cs] += stamp[rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0]
    return image


def psf_norm(sigma):
    """Return ``sum(psi**2)`` of the unit-flux pixel-integrated PSF."""
    g = pixel_gaussian(np.arange(-30, 31), sigma)
    return (g**2).sum() ** 2


def flux_for_snr(snr, variance=SKY_VARIANCE, sigma=PSF_SIGMA):
    """Flux whose optimal PSF-fit SNR is ``snr`` on a flat variance."""
    return snr * np.sqrt(variance / psf_norm(sigma))


def star_grid(snr, size=1024, spacing=32, seed=1):
    """Return image, variance, truth x, y and flux of a jittered star grid."""
    rng = np.random.default_rng(seed)
    grid = np.arange(spacing, size - spacing + 1, spacing)
    xs, ys = np.meshgrid(grid, grid)
    xs = xs.ravel() + rng.uniform(-0.5, 0.5, xs.size)
    ys = ys.ravel() + rng.uniform(-0.5, 0.5, ys.size)
    flux = flux_for_snr(snr)
    image = render((size, size), xs, ys, np.full(xs.size, flux), PSF_SIGMA)
    image += rng.normal(0.0, np.sqrt(SKY_VARIANCE), image.shape)
    return image, np.full(image.shape, SKY_VARIANCE), xs, ys, flux


def match(table, xs, ys, radius=1.5):
    """Return (matched truth mask, table row index per truth object)."""
    if len(table) == 0:
        return np.zeros(len(xs), dtype=bool), np.zeros(len(xs), dtype=int)
    dist, idx = cKDTree(np.column_stack([table["x"], table["y"]])).query(np.column_stack([xs, ys]))
    return dist < radius, idx


class PsfFilterSnrTestCase(lsst.utils.tests.TestCase):
    """Normalization of the PSF-matched SNR and flux maps."""

    def setUp(self):
        self.rng = np.random.default_rng(20240611)
        self.size = 1024
        # Variance varying by a factor 4 across the image.
        self.variance = np.full((self.size, self.size), 50.0) + np.linspace(0.0, 150.0, self.size)[None, :]
        self.noise = self.rng.normal(size=self.variance.shape) * np.sqrt(self.variance)

    def testNoiseSnrHasUnitVariance(self):
        snr, _ = psf_filter_snr(self.noise, self.variance, PSF_SIGMA)
        inner = snr[20:-20, 20:-20]
        self.assertFloatsAlmostEqual(inner.std(), 1.0, rtol=0.02)
        self.assertLess(abs(inner.mean()), 0.02)
        # Also at the image border, where the kernel is truncated by the edge.
        self.assertFloatsAlmostEqual(snr[:, :3].std(), 1.0, rtol=0.05)

    def testBadPixelsAreMissingNotZero(self):
        # Masking 20% of the pixels must keep the SNR normalized (the
        # variance sum drops with the masked weight) and make it independent
        # of the masked values.
        bad = self.rng.random(self.variance.shape) < 0.2
        spiked = np.where(bad, 1e6, self.noise)
        snr, filtered = psf_filter_snr(spiked, self.variance, PSF_SIGMA, bad=bad)
        self.assertFloatsAlmostEqual(snr[20:-20, 20:-20].std(), 1.0, rtol=0.02)
        snr_zeroed, _ = psf_filter_snr(np.where(bad, 0.0, self.noise), self.variance, PSF_SIGMA, bad=bad)
        self.assertFloatsAlmostEqual(snr, snr_zeroed, atol=1e-5)
        # NaN pixels behave like masked ones.
        snr_nan, _ = psf_filter_snr(np.where(bad, np.nan, self.noise), self.variance, PSF_SIGMA)
        self.assertFloatsAlmostEqual(snr_nan, snr_zeroed, atol=1e-5)
        self.assertTrue(np.all(np.isfinite(filtered)))

    def testNoiselessStarFluxAndSnr(self):
        # A centred noiseless star: the filtered map is its total flux and
        # the SNR is the optimal PSF-fit SNR, F sqrt(sum psi^2) / sigma_pix.
        flux = 1.0e4
        image = render((101, 101), [50.0], [50.0], [flux], PSF_SIGMA)
        variance = np.full(image.shape, SKY_VARIANCE)
        snr, filtered = psf_filter_snr(image, variance, PSF_SIGMA)
        self.assertFloatsAlmostEqual(filtered[50, 50], flux, rtol=1e-3)
        self.assertFloatsAlmostEqual(
            snr[50, 50], flux * np.sqrt(psf_norm(PSF_SIGMA) / SKY_VARIANCE), rtol=1e-3
        )
        self.assertEqual(np.unravel_index(np.argmax(snr), snr.shape), (50, 50))

    def testFalseDetectionRate(self):
        # Pure noise: nothing at 5 sigma; at 4 sigma the number of peaks
        # follows the Euler characteristic of the smoothed Gaussian field,
        # E[N] = A lambda / (2 pi)^(3/2) u exp(-u^2/2) with
        # lambda = 1 / (2 sigma^2) for a Gaussian-PSF matched filter.
        table, detected = detect_sources(self.noise, self.variance, PSF_SIGMA)
        self.assertLessEqual(len(table), 2)
        table4, _ = detect_sources(self.noise, self.variance, PSF_SIGMA, threshold=4.0)
        area = (self.size - 2 * np.ceil(3 * PSF_SIGMA)) ** 2
        lam = 1.0 / (2.0 * (PSF_SIGMA**2 + 1.0 / 12.0))
        expected = area * lam / (2 * np.pi) ** 1.5 * 4.0 * np.exp(-8.0)
        self.assertGreater(len(table4), 0.3 * expected)
        self.assertLess(len(table4), 2.5 * expected)
        self.assertGreater(len(table4), len(table))


class PointSourceTestCase(lsst.utils.tests.TestCase):
    """Completeness and measurement accuracy for injected point sources."""

    def testBrightStarMeasurements(self):
        image, variance, xs, ys, flux = star_grid(50.0)
        table, _ = detect_sources(image, variance, PSF_SIGMA)
        matched, idx = match(table, xs, ys)
        self.assertTrue(matched.all())
        # One row per star: no spurious extra peaks around SNR-50 stars.
        self.assertEqual(len(table), len(xs))
        rows = table[idx]
        ratio = np.asarray(rows["psfFlux"]) / flux
        self.assertLess(abs(ratio.mean() - 1.0), 0.02)
        scatter = ratio.std()
        self.assertFloatsAlmostEqual(np.median(rows["psfFluxErr"]) / flux, scatter, rtol=0.15)
        self.assertFloatsAlmostEqual(np.median(rows["psfFlux_snr"]), 50.0, rtol=0.05)
        dx, dy = rows["x"] - xs, rows["y"] - ys
        rms = np.sqrt(np.mean(dx**2 + dy**2) / 2.0)
        self.assertLess(rms, 0.1)
        self.assertLess(abs(np.mean(dx)), 0.01)
        # Centroid errors follow sqrt(2) sigma / SNR.
        self.assertFloatsAlmostEqual(np.median(rows["xErr"]), rms, rtol=0.2)
        ap_ratio = np.asarray(rows["apFlux_12"]) / flux
        self.assertLess(abs(ap_ratio.mean() - 1.0), 0.01)
        self.assertFloatsAlmostEqual(np.median(rows["apFluxErr_12"]) / flux, ap_ratio.std(), rtol=0.15)
        # Aperture error is that of ~452 pixels of sky (a little less: the
        # fractional edge pixels count with their squared weight).
        sky_error = np.sqrt(np.pi * 12.0**2 * SKY_VARIANCE)
        self.assertTrue(np.all(rows["apFluxErr_12"] < sky_error))
        self.assertTrue(np.all(rows["apFluxErr_12"] > 0.98 * sky_error))
        self.assertTrue(np.all(rows["parentSourceId"] > 0))
        self.assertEqual(len(np.unique(table["parentSourceId"])), len(table))

    def testCompleteness(self):
        fractions = {}
        for snr in (8.0, 3.0):
            image, variance, xs, ys, _ = star_grid(snr, seed=int(snr))
            table, _ = detect_sources(image, variance, PSF_SIGMA)
            fractions[snr] = match(table, xs, ys)[0].mean()
        self.assertGreater(fractions[8.0], 0.95)
        self.assertLess(fractions[3.0], 0.10)

    def testExtendedness(self):
        size = 512
        rng = np.random.default_rng(7)
        grid = np.arange(48, size - 47, 64)
        xs, ys = np.meshgrid(grid, grid)
        xs = xs.ravel() + rng.uniform(-0.5, 0.5, xs.size)
        ys = ys.ravel() + rng.uniform(-0.5, 0.5, xs.size)
        is_galaxy = np.arange(xs.size) % 2 == 1
        # Galaxy: Gaussian with sigma 3x the PSF's, convolved with the PSF.
        gal_sigma = np.hypot(PSF_SIGMA, 3.0 * PSF_SIGMA)
        image = render((size, size), xs[~is_galaxy], ys[~is_galaxy], [flux_for_snr(500.0)] * 100, PSF_SIGMA)
        image += render((size, size), xs[is_galaxy], ys[is_galaxy], [flux_for_snr(2000.0)] * 100, gal_sigma)
        image += rng.normal(0.0, np.sqrt(SKY_VARIANCE), image.shape)
        table, _ = detect_sources(image, np.full(image.shape, SKY_VARIANCE), PSF_SIGMA)
        matched, idx = match(table, xs, ys, radius=2.0)
        self.assertTrue(matched.all())
        extendedness = np.asarray(table["extendedness"])[idx]
        np.testing.assert_array_equal(extendedness[~is_galaxy], 0.0)
        np.testing.assert_array_equal(extendedness[is_galaxy], 1.0)
        # The PSF flux of a broad galaxy is a fraction of its aperture flux.
        gal_rows = table[idx[is_galaxy]]
        self.assertTrue(np.all(gal_rows["psfFlux"] < 0.5 * gal_rows["apFlux_12"]))

    def testCloseStarsShareFootprint(self):
        size = 128
        xs, ys = [60.0, 70.0], [64.0, 64.0]
        image = render((size, size), xs, ys, [flux_for_snr(200.0), flux_for_snr(100.0)], PSF_SIGMA)
        table, detected = detect_sources(image, np.full(image.shape, SKY_VARIANCE), PSF_SIGMA)
        self.assertEqual(len(table), 2)
        self.assertEqual(len(set(table["parentSourceId"])), 1)
        self.assertEqual(table["footprintArea"][0], detected.sum())
        # Ordered by decreasing SNR within the footprint.
        self.assertFloatsAlmostEqual(np.asarray(table["x"]), np.asarray(xs), atol=0.15)


class MaskAndSchemaTestCase(lsst.utils.tests.TestCase):
    """Mask planes, DETECTED plane, edges, coordinates and schema."""

    def setUp(self):
        self.rng = np.random.default_rng(99)
        self.size = 256
        self.variance = np.full((self.size, self.size), SKY_VARIANCE)
        self.noise = self.rng.normal(0.0, np.sqrt(SKY_VARIANCE), self.variance.shape)

    def testSaturatedCenterFlag(self):
        xs, ys = np.array([64.0, 192.0, 64.0]), np.array([64.0, 64.0, 192.0])
        shape = self.variance.shape
        image = self.noise + render(shape, xs, ys, [flux_for_snr(3000.0)] * 3, PSF_SIGMA)
        saturated = np.zeros(shape, dtype=bool)
        saturated[63:66, 63:66] = True  # on the first star's centre
        # In the third star's footprint, 6 pixels from its centre.
        saturated[192, 70] = True
        level = image[64, 64] * 0.6
        image[saturated] = np.minimum(image[saturated], level)
        table, _ = detect_sources(image, self.variance, PSF_SIGMA, mask_planes={"SATURATED": saturated})
        matched, idx = match(table, xs, ys)
        self.assertTrue(matched.all())
        rows = table[idx]
        np.testing.assert_array_equal(rows["pixelFlags_saturatedCenter"], [True, False, False])
        np.testing.assert_array_equal(rows["pixelFlags_saturated"], [True, False, True])
        # The SAT alias and the CR plane map to their flags as well.
        table, _ = detect_sources(
            image, self.variance, PSF_SIGMA, mask_planes={"SAT": saturated, "CR": saturated}
        )
        rows = table[match(table, xs, ys)[1]]
        np.testing.assert_array_equal(rows["pixelFlags_saturatedCenter"], [True, False, False])
        np.testing.assert_array_equal(rows["pixelFlags_crCenter"], [True, False, False])
        self.assertFalse(np.any(rows["pixelFlags_badCenter"]))

    def testBadAndNoDataDoNotDetect(self):
        image = self.noise.copy()
        bad = np.zeros(image.shape, dtype=bool)
        bad[:, 100:102] = True
        no_data = np.zeros(image.shape, dtype=bool)
        no_data[150:200, 150:220] = True
        image[bad | no_data] = 1e6
        unmasked, _ = detect_sources(image, self.variance, PSF_SIGMA)
        self.assertGreater(len(unmasked), 0)
        table, detected = detect_sources(
            image, self.variance, PSF_SIGMA, mask_planes={"BAD": bad, "NO_DATA": no_data}
        )
        self.assertEqual(len(table), 0)
        self.assertFalse(detected.any())
        # A star next to the bad column is still measured, with the flag set.
        image += render(image.shape, [96.0], [60.0], [flux_for_snr(100.0)], PSF_SIGMA)
        table, _ = detect_sources(
            image, self.variance, PSF_SIGMA, mask_planes={"BAD": bad, "NO_DATA": no_data}
        )
        self.assertEqual(len(table), 1)
        self.assertTrue(table["pixelFlags_bad"][0])
        self.assertFalse(table["pixelFlags_nodata"][0])
        self.assertFloatsAlmostEqual(table["psfFlux"][0], flux_for_snr(100.0), rtol=0.05)

    def testDetectedPlaneIsGrownFootprint(self):
        xs = np.array([40.0, 128.3, 200.0, 90.0])
        ys = np.array([50.0, 120.7, 210.0, 180.0])
        image = self.noise + render(
            self.variance.shape, xs, ys, flux_for_snr(np.array([20.0, 100.0, 1000.0, 10.0])), PSF_SIGMA
        )
        table, detected = detect_sources(image, self.variance, PSF_SIGMA)
        peaks_y = np.round(np.asarray(table["y"])).astype(int)
        peaks_x = np.round(np.asarray(table["x"])).astype(int)
        self.assertTrue(detected[peaks_y, peaks_x].all())
        snr, _ = psf_filter_snr(image, self.variance, PSF_SIGMA)
        edge = int(np.ceil(3 * PSF_SIGMA))
        above = snr >= 5.0
        above[:edge] = above[-edge:] = above[:, :edge] = above[:, -edge:] = False
        distance = ndimage.distance_transform_edt(~above)
        grow = 2.4 * PSF_SIGMA
        # DETECTED is exactly the disc dilation of the above-threshold pixels
        np.testing.assert_array_equal(detected, distance <= grow)
        # and reaches about grow pixels beyond them.
        self.assertGreater(distance[detected].max(), grow - 1.0)
        labels, _ = ndimage.label(detected, structure=np.ones((3, 3)))
        areas = np.bincount(labels.ravel())
        np.testing.assert_array_equal(table["footprintArea"], areas[labels[peaks_y, peaks_x]])
        # Brighter stars have larger footprints.
        matched, idx = match(table, xs, ys)
        self.assertTrue(matched.all())
        self.assertTrue(np.all(np.diff(np.asarray(table["footprintArea"][idx[[3, 0, 1, 2]]])) > 0))

    def testEdge(self):
        xs, ys = np.array([3.0, 12.0, 128.0]), np.array([128.0, 60.0, 128.0])
        image = self.noise + render(self.variance.shape, xs, ys, [flux_for_snr(500.0)] * 3, PSF_SIGMA)
        table, _ = detect_sources(image, self.variance, PSF_SIGMA)
        matched, idx = match(table, xs, ys)
        np.testing.assert_array_equal(matched, [False, True, True])
        self.assertTrue(np.all(table["x"] >= 6 - 1.0))
        self.assertTrue(table["pixelFlags_edge"][idx[1]])
        self.assertFalse(table["pixelFlags_edge"][idx[2]])

    def testPixelToSkyAndUnits(self):
        xs, ys = np.array([50.2, 180.7]), np.array([70.4, 150.1])
        image = self.noise + render(self.variance.shape, xs, ys, [flux_for_snr(300.0)] * 2, PSF_SIGMA)
        scale = 0.2 / 3600.0

        def pixel_to_sky(x, y):
            return 150.0 + scale * (x - 128.0), 2.0 + scale * (y - 128.0)

        table, _ = detect_sources(image, self.variance, PSF_SIGMA, pixel_to_sky=pixel_to_sky, flux_unit=u.nJy)
        matched, idx = match(table, xs, ys)
        self.assertTrue(matched.all())
        rows = table[idx]
        ra, dec = pixel_to_sky(xs, ys)
        # 0.05 pixel in degrees.
        self.assertFloatsAlmostEqual(np.asarray(rows["coord_ra"]), ra, atol=0.05 * scale)
        self.assertFloatsAlmostEqual(np.asarray(rows["coord_dec"]), dec, atol=0.05 * scale)
        self.assertEqual(table["coord_ra"].unit, u.deg)
        self.assertEqual(table["x"].unit, u.pix)
        self.assertEqual(table["psfFlux"].unit, u.nJy)
        self.assertEqual(table["apFluxErr_12"].unit, u.nJy)
        no_sky, _ = detect_sources(image, self.variance, PSF_SIGMA)
        self.assertTrue(np.all(np.isnan(no_sky["coord_ra"])))
        self.assertIsNone(no_sky["psfFlux"].unit)

    def testEmptyImage(self):
        table, detected = detect_sources(np.zeros((64, 64)), np.ones((64, 64)), PSF_SIGMA, flux_unit="nJy")
        self.assertEqual(len(table), 0)
        self.assertFalse(detected.any())
        xs, ys = np.array([128.0]), np.array([128.0])
        image = self.noise + render(self.variance.shape, xs, ys, [flux_for_snr(100.0)], PSF_SIGMA)
        full, _ = detect_sources(image, self.variance, PSF_SIGMA, flux_unit="nJy")
        self.assertEqual(len(full), 1)
        self.assertEqual(table.colnames, full.colnames)
        for name in full.colnames:
            self.assertEqual(table[name].dtype, full[name].dtype, msg=name)
            self.assertEqual(table[name].unit, full[name].unit, msg=name)
        self.assertEqual(empty_source_table("nJy").colnames, full.colnames)
        for name in ("sourceId", "parentSourceId", "footprintArea"):
            self.assertEqual(full[name].dtype, np.int64)
        self.assertEqual(full["pixelFlags_saturatedCenter"].dtype, np.bool_)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    """Check for resource leaks."""


def setup_module(module):
    """Initialize the LSST test machinery."""
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
