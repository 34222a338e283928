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

"""Tests of trail detection: inference blending, post-processing, detect_trails and detect-fits."""

import math
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

import lsst.utils.tests
from lsst.trail_detect.detection.detect import (
    TRAIL_CATALOG_COLUMNS,
    apply_score_calibration,
    detect_trails,
    fit_score_calibration,
    load_network,
)
from lsst.trail_detect.detection.inference import InferenceSettings, blend_window, predict_probability
from lsst.trail_detect.detection.postprocess import (
    PostprocessConfig,
    TrailCandidate,
    classify_candidate,
    component_lines,
    find_components,
    fit_trail,
    merge_collinear,
    saturated_blobs,
    trail_model,
    trail_model_jacobian,
    trail_photometry,
)

SIGMA = 2.0
NOISE = 10.0
FIXTURE = (
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "legacy_calexp" / "hsc_calexp_cutout.fits"
)


def grid(shape):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return xx.astype(float), yy.astype(float)


def star_field(shape=(512, 512), n_stars=40, seed=1):
    """Noise plus Gaussian stars (no trail)."""
    rng = np.random.default_rng(seed)
    xx, yy = grid(shape)
    image = rng.normal(0.0, NOISE, shape)
    for _ in range(n_stars):
        x, y = rng.uniform(12, shape[1] - 12), rng.uniform(12, shape[0] - 12)
        image += 10 ** rng.uniform(2.5, 4.5) * trail_model(xx, yy, x, y, x, y, SIGMA)
    return image.astype(np.float32)


def add_trail(image, x0, y0, x1, y1, flux, sigma=SIGMA):
    xx, yy = grid(image.shape)
    return (image + flux * trail_model(xx, yy, x0, y0, x1, y1, sigma)).astype(np.float32)


def segment_errors(row, truth):
    """Endpoint distance (either order), angle difference (deg)."""
    det = np.array([row["x_start"], row["y_start"], row["x_end"], row["y_end"]], dtype=float)
    t = np.asarray(truth, dtype=float)
    direct = max(math.hypot(*(det[:2] - t[:2])), math.hypot(*(det[2:] - t[2:])))
    swapped = max(math.hypot(*(det[:2] - t[2:])), math.hypot(*(det[2:] - t[:2])))
    beta = math.degrees(math.atan2(t[3] - t[1], t[2] - t[0])) % 180.0
    diff = abs(float(row["beta"]) - beta) % 180.0
    return min(direct, swapped), min(diff, 180.0 - diff)


class PostprocessTestCase(lsst.utils.tests.TestCase):
    """Plain functions on constructed images and probability maps."""

    def test_trail_model_normalization(self):
        xx, yy = grid((200, 200))
        for ends in ((50.2, 60.7, 140.1, 120.3), (100.0, 100.0, 100.0, 100.0), (20.0, 100.0, 180.0, 100.0)):
            self.assertAlmostEqual(float(trail_model(xx, yy, *ends, SIGMA).sum()), 1.0, delta=1e-3)

    def test_jacobian(self):
        """The analytic derivatives of the trail model agree with finite differences."""
        xx, yy = grid((60, 80))
        params = np.array([20.3, 15.2, 60.7, 44.1, 1.9])
        model, jac = trail_model_jacobian(xx, yy, *params)
        np.testing.assert_allclose(model, trail_model(xx, yy, *params))
        for k in range(5):
            step = np.zeros(5)
            step[k] = 1e-5
            numeric = (trail_model(xx, yy, *(params + step)) - trail_model(xx, yy, *(params - step))) / 2e-5
            self.assertLess(float(np.abs(numeric - jac[k]).max() / np.abs(numeric).max()), 1e-6)

    def test_blend_window(self):
        w = blend_window(64, 96, 16)
        self.assertEqual(w.shape, (64, 96))
        self.assertTrue(np.all(w > 0))
        self.assertEqual(float(w[32, 48]), 1.0)
        self.assertLess(float(w[0, 0]), 0.01)
        np.testing.assert_allclose(w, w[::-1, ::-1])

    def test_fit_and_photometry(self):
        """Fitted endpoints, angle and flux of a bright trail; the flux error matches the scatter."""
        truth = (60.3, 80.6, 150.2, 130.9)
        flux = 15000.0
        fluxes, errors = [], []
        for seed in range(12):
            rng = np.random.default_rng(seed)
            image = add_trail(rng.normal(0.0, NOISE, (200, 220)), *truth, flux)
            variance = np.full(image.shape, NOISE**2, dtype=np.float32)
            good = np.ones(image.shape, bool)
            # A rough start, as from a probability map: ends 3 px off, 2 degrees rotated.
            start = TrailCandidate(63.0, 82.0, 147.0, 126.0, np.zeros(0), np.zeros(0), np.zeros(0), 1.0)
            fitted = fit_trail(start, image, variance, good, SIGMA, PostprocessConfig())
            self.assertTrue(fitted.fit_ok)
            row = {
                "x_start": fitted.x_start,
                "y_start": fitted.y_start,
                "x_end": fitted.x_end,
                "y_end": fitted.y_end,
                "beta": fitted.beta,
            }
            end_error, angle_error = segment_errors(row, truth)
            self.assertLess(end_error, 2.0)
            self.assertLess(angle_error, 1.0)
            self.assertAlmostEqual(fitted.width_sigma / SIGMA, 1.0, delta=0.1)
            f, e = trail_photometry(fitted, image, variance, good, SIGMA)
            fluxes.append(f)
            errors.append(e)
        self.assertAlmostEqual(np.mean(fluxes) / flux, 1.0, delta=0.02)
        # Matched-filter error of a long trail: sigma * sqrt(2 sqrt(pi) sigma L).
        length = math.hypot(truth[2] - truth[0], truth[3] - truth[1])
        expected = NOISE * math.sqrt(2 * math.sqrt(math.pi) * SIGMA * length)
        self.assertAlmostEqual(np.median(errors) / expected, 1.0, delta=0.1)
        self.assertAlmostEqual(np.std(fluxes) / np.median(errors), 1.0, delta=0.5)

    def test_components_merge_across_masked_column(self):
        """A probability map split by a masked column gives one merged line."""
        xx, yy = grid((160, 200))
        truth = (20.0, 40.0, 180.0, 120.0)
        model = trail_model(xx, yy, *truth, SIGMA)
        probability = np.clip(model / model.max(), 0, 1) * 0.9
        bad = np.zeros(probability.shape, bool)
        bad[:, 98:103] = True
        probability[bad] = 0.0
        labels, n = find_components(probability, 0.5, 0.3, min_pixels=4)
        self.assertEqual(n, 2)
        lines = component_lines(labels, n, probability, SIGMA)
        merged = merge_collinear(lines, SIGMA, PostprocessConfig(), bad=bad)
        self.assertEqual(len(merged), 1)
        self.assertEqual(merged[0].n_fragments, 2)
        end_error, angle_error = segment_errors(
            {
                "x_start": merged[0].x_start,
                "y_start": merged[0].y_start,
                "x_end": merged[0].x_end,
                "y_end": merged[0].y_end,
                "beta": merged[0].beta,
            },
            truth,
        )
        self.assertLess(angle_error, 1.0)
        self.assertLess(end_error, 4.0)
        # Parallel trails 15 px apart are not merged.
        second = trail_model(xx, yy, 20.0, 55.0, 180.0, 135.0, SIGMA)
        both = np.maximum(probability, np.clip(second / second.max(), 0, 1) * 0.9)
        labels, n = find_components(both, 0.5, 0.3)
        lines = component_lines(labels, n, both, SIGMA)
        self.assertGreaterEqual(len(merge_collinear(lines, SIGMA, PostprocessConfig(), bad=bad)), 2)

    def test_hysteresis(self):
        p = np.zeros((50, 50))
        p[10, 5:40] = 0.35
        p[10, 20] = 0.8
        p[30, 5:40] = 0.35  # never reaches the threshold
        labels, n = find_components(p, 0.5, 0.3)
        self.assertEqual(n, 1)
        self.assertEqual(int((labels == 1).sum()), 35)
        with self.assertRaises(ValueError):
            find_components(p, 0.5, 0.7)

    def test_rejection_classes(self):
        config = PostprocessConfig()
        empty = np.zeros(0)

        def candidate(x0, y0, x1, y1, width=SIGMA, snr=20.0):
            c = TrailCandidate(x0, y0, x1, y1, empty, empty, empty, 0.9, width_sigma=width, fit_ok=True)
            c.flux, c.snr = 100.0, snr
            return c

        saturated = np.zeros((300, 300), bool)
        saturated[150:160, 145:155] = True  # a saturated star at (150, 155)
        saturated[160:200, 149:151] = True  # and its bleed trail up the columns
        blobs = saturated_blobs(saturated, config.min_saturated_blob)
        self.assertEqual(len(blobs), 1)
        cases = {
            "": candidate(10, 10, 80, 50),
            "short": candidate(10, 10, 12, 11),
            "cosmic_ray": candidate(10, 10, 40, 30, width=0.5),
            "extended": candidate(10, 10, 40, 30, width=8.0),
            "bleed": candidate(150.2, 200, 150.1, 240),
            "spike": candidate(170, 175, 230, 235),
            "low_snr": candidate(10, 200, 60, 290, snr=2.0),
        }
        for reason, c in cases.items():
            with self.subTest(reason=reason):
                self.assertEqual(classify_candidate(c, SIGMA, config, saturated, blobs), reason)

    def test_score_calibration(self):
        """Isotonic and logistic calibrations: scores match the observed fraction of real detections."""
        rng = np.random.default_rng(3)
        raw = rng.uniform(0, 1, 4000)
        real = rng.uniform(0, 1, 4000) < raw**2
        calibration = fit_score_calibration(raw, real, method="isotonic")
        self.assertLessEqual(len(calibration["raw"]), 64)
        self.assertTrue(np.all(np.diff(calibration["calibrated"]) >= 0))
        score = apply_score_calibration(raw, calibration)
        for lo, hi in ((0.2, 0.4), (0.6, 0.8), (0.85, 0.95)):
            sel = (score >= lo) & (score < hi)
            self.assertAlmostEqual(float(real[sel].mean()), float(score[sel].mean()), delta=0.05)
        np.testing.assert_array_equal(apply_score_calibration(raw, None), raw)
        with self.assertRaises(ValueError):
            fit_score_calibration(raw[:1], real[:1], method="isotonic")
        # Logistic: real detections are long, false ones short, whatever their probability.
        length = np.exp(rng.uniform(np.log(4), np.log(100), 4000))
        real = rng.uniform(0, 1, 4000) < 1 / (1 + np.exp(-3 * (np.log(length) - np.log(15))))
        properties = {
            "score_raw": raw,
            "max_probability": np.clip(raw + 0.05, 0, 1),
            "trail_length": length,
            "snr": rng.uniform(5, 50, 4000),
        }
        calibration = fit_score_calibration(properties, real)
        self.assertEqual(calibration["method"], "logistic")
        score = apply_score_calibration(properties, calibration)
        for lo, hi in ((0.1, 0.3), (0.4, 0.6), (0.8, 0.95)):
            sel = (score >= lo) & (score < hi)
            self.assertAlmostEqual(float(real[sel].mean()), float(score[sel].mean()), delta=0.06)
        with self.assertRaisesRegex(ValueError, "properties"):
            apply_score_calibration(raw, calibration)


class CalibrationTestCase(lsst.utils.tests.TestCase):
    """The operating point chosen for a false-positive budget."""

    def test_choose_min_score(self):
        from lsst.trail_detect.detection.calibration import choose_min_score

        scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.95])
        false = np.array([True, True, True, True, False, False, False])
        # 4 false positives over 0.5 detectors = 8 per detector: within a budget of 10.
        self.assertEqual(choose_min_score(scores, false, 0.5, 10.0), 0.0)
        # A budget of 4 per detector allows 2 false positives: cut at 0.3.
        self.assertEqual(choose_min_score(scores, false, 0.5, 4.0), 0.3)
        # A budget of 0 removes every false positive.
        self.assertEqual(choose_min_score(scores, false, 0.5, 0.0), 0.5)
        with self.assertRaises(ValueError):
            choose_min_score(scores, false, 0.0, 1.0)


class ShippedModelTestCase(lsst.utils.tests.TestCase):
    """detect_trails with the model shipped in the package, on constructed images."""

    @classmethod
    def setUpClass(cls):
        import torch

        from lsst.trail_detect.models.storage import TrailDetectorModel
        from lsst.trail_detect.paths import default_model_path

        torch.set_num_threads(1)
        cls.model = TrailDetectorModel.load(default_model_path())
        cls.network = load_network(cls.model, "cpu")

    def detect(self, image, **kwargs):
        variance = np.full(image.shape, NOISE**2, dtype=np.float32)
        return detect_trails(
            image,
            variance,
            network=self.network,
            psf_sigma=SIGMA,
            normalization=self.model.metadata["normalization"],
            threshold=self.model.threshold,
            score_calibration=self.model.metadata.get("score_calibration"),
            **({"settings": InferenceSettings(tile=256, overlap=32)} | kwargs),
        )

    def test_bright_trail(self):
        """Endpoints within 2 px, angle within 1 degree, flux within 10%."""
        truth = (100.3, 150.7, 180.9, 210.2)
        length = math.hypot(truth[2] - truth[0], truth[3] - truth[1])
        flux = 20 * NOISE * length  # peak PSF-filter SNR ~ 20
        image = add_trail(star_field(), *truth, flux)
        result = self.detect(image)
        catalog = result.catalog
        self.assertEqual(len(catalog), 1, str(catalog))
        end_error, angle_error = segment_errors(catalog[0], truth)
        self.assertLess(end_error, 2.0)
        self.assertLess(angle_error, 1.0)
        self.assertAlmostEqual(float(catalog["flux"][0]) / flux, 1.0, delta=0.1)
        self.assertGreater(float(catalog["snr"][0]), 30)
        self.assertEqual(set(catalog.colnames), set(TRAIL_CATALOG_COLUMNS) - {"rejected"})
        self.assertTrue(np.all(np.isnan(catalog["ra"])))  # no WCS given
        # The mask covers the trail.
        xx, yy = grid(image.shape)
        on_trail = trail_model(xx, yy, *truth, SIGMA) > 0.5 * trail_model(xx, yy, *truth, SIGMA).max()
        self.assertTrue(result.mask[on_trail].all())
        # Same input, same output.
        again = self.detect(image).catalog
        np.testing.assert_array_equal(np.asarray(again["x_start"]), np.asarray(catalog["x_start"]))

    def test_masked_column_gives_one_trail(self):
        truth = (60.0, 200.0, 330.0, 280.0)
        length = math.hypot(truth[2] - truth[0], truth[3] - truth[1])
        image = add_trail(star_field(seed=2), *truth, 15 * NOISE * length)
        bad = np.zeros(image.shape, bool)
        bad[:, 195:199] = True
        image[bad] = np.nan
        catalog = self.detect(image, bad=bad).catalog
        self.assertEqual(len(catalog), 1, str(catalog))
        end_error, angle_error = segment_errors(catalog[0], truth)
        self.assertLess(end_error, 2.0)
        self.assertLess(angle_error, 1.0)
        self.assertTrue(catalog["flag_bad"][0])

    def test_no_trail(self):
        result = self.detect(star_field(seed=3))
        self.assertEqual(len(result.catalog), 0, str(result.catalog))
        self.assertFalse(result.mask.any())

    def test_tiled_matches_whole_frame(self):
        """Tiled and whole-frame probabilities agree away from the image edges, and so do the trails.

        Not to the last bit: the squeeze-excitation blocks average over the whole input, so a pixel's
        probability depends a little on the tile it is seen in.
        """
        from lsst.trail_detect.tiles.normalization import apply_normalization, fit_normalization

        image = add_trail(
            star_field((768, 768), n_stars=90, seed=4), 50.0, 60.0, 700.0, 500.0, 12 * NOISE * 800
        )
        norm = fit_normalization(image, method="robust")
        x = apply_normalization(image, norm)
        whole = predict_probability(self.network, x, InferenceSettings(tile=768, overlap=0))
        tiled = predict_probability(self.network, x, InferenceSettings(tile=512, overlap=64, batch_size=3))
        diff = np.abs(whole - tiled)[32:-32, 32:-32]
        self.assertLess(float(diff.mean()), 1e-3)
        self.assertLess(float(np.percentile(diff, 99.9)), 0.1)
        catalogs = [
            self.detect(image, settings=InferenceSettings(tile=tile, overlap=overlap)).catalog
            for tile, overlap in ((768, 0), (512, 64))
        ]
        self.assertEqual(len(catalogs[0]), len(catalogs[1]))
        for a, b in zip(*catalogs):
            self.assertLess(segment_errors(a, [b["x_start"], b["y_start"], b["x_end"], b["y_end"]])[0], 1.0)

    def test_bad_input(self):
        image = star_field(seed=5)
        with self.assertRaisesRegex(ValueError, "variance shape"):
            detect_trails(image, np.ones((10, 10)), network=self.network, psf_sigma=SIGMA)
        with self.assertRaisesRegex(ValueError, "PSF sigma"):
            detect_trails(image, np.ones_like(image), network=self.network, psf_sigma=float("nan"))
        with self.assertRaisesRegex(ValueError, "no usable pixel"):
            detect_trails(
                np.full_like(image, np.nan), np.ones_like(image), network=self.network, psf_sigma=SIGMA
            )
        # NaN, infinite and zero-variance pixels are simply not used.
        image[10:20, 10:20] = np.nan
        image[30, 30] = np.inf
        variance = np.full(image.shape, NOISE**2, dtype=np.float32)
        variance[40:50, 40:50] = 0.0
        result = detect_trails(image, variance, network=self.network, psf_sigma=SIGMA)
        self.assertTrue(np.all(np.isfinite(result.probability)))


def trail_detect_command() -> list[str]:
    exe = Path(sys.executable).parent / "trail-detect"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from lsst.trail_detect.cli.trail_detect import main; main()"]


class DetectFitsTestCase(lsst.utils.tests.TestCase):
    """``trail-detect detect-fits`` on files written here and on the legacy calexp fixture."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def run_cli(self, *args, check=True):
        proc = subprocess.run(
            trail_detect_command() + ["detect-fits", *args, "--threads", "1"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=600,
        )
        if check:
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        return proc

    def test_plain_fits_with_wcs(self):
        from astropy.io import fits
        from astropy.table import Table
        from astropy.wcs import WCS

        truth = (100.3, 150.7, 180.9, 210.2)
        length = math.hypot(truth[2] - truth[0], truth[3] - truth[1])
        image = add_trail(star_field(n_stars=60), *truth, 20 * NOISE * length) + 1000.0  # sky left in
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [150.0, 2.0]
        wcs.wcs.crpix = [256.5, 256.5]
        wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
        path = os.path.join(self.tmp.name, "frame.fits")
        fits.PrimaryHDU(image, header=wcs.to_header()).writeto(path)
        out = os.path.join(self.tmp.name, "out")
        proc = self.run_cli(path, "--out", out)
        self.assertIn("1 trails", proc.stdout)
        self.assertIn("measured from stars", proc.stdout)
        catalog = Table.read(os.path.join(out, "frame.trails.ecsv"))
        self.assertTrue(os.path.getsize(os.path.join(out, "frame.trails.png")) > 0)
        self.assertEqual(len(catalog), 1)
        end_error, angle_error = segment_errors(catalog[0], truth)
        self.assertLess(end_error, 2.0)
        self.assertLess(angle_error, 1.0)
        ra, dec = wcs.pixel_to_world_values(catalog["x_start"][0], catalog["y_start"][0])
        self.assertAlmostEqual(float(catalog["ra_start"][0]), float(ra), places=8)
        self.assertAlmostEqual(float(catalog["dec_start"][0]), float(dec), places=8)
        self.assertAlmostEqual(catalog.meta["psf_sigma"] / SIGMA, 1.0, delta=0.1)

    @unittest.skipUnless(FIXTURE.exists(), "legacy calexp fixture not present")
    def test_legacy_calexp(self):
        from astropy.table import Table

        out = os.path.join(self.tmp.name, "out")
        proc = self.run_cli(str(FIXTURE), "--out", out)
        self.assertIn("lsst_calexp", proc.stdout)
        self.assertIn("file PSF model", proc.stdout)
        self.assertIn("with WCS", proc.stdout)
        catalog = Table.read(os.path.join(out, "hsc_calexp_cutout.trails.ecsv"))
        self.assertEqual(len(catalog), 0)
        self.assertEqual(catalog.meta["psf_sigma"], 4.0)

    def test_bad_files(self):
        text = os.path.join(self.tmp.name, "notes.fits")
        Path(text).write_text("not a FITS file\n")
        out = os.path.join(self.tmp.name, "out")
        proc = self.run_cli(text, os.path.join(self.tmp.name, "missing.fits"), "--out", out, check=False)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("notes.fits", proc.stderr)
        self.assertIn("missing.fits", proc.stderr)
        self.assertFalse(any(Path(out).glob("*.ecsv")) if os.path.isdir(out) else False)
        # A pure-noise image has no stars to measure the PSF from: a clear error, --psf-fwhm fixes it.
        from astropy.io import fits

        noise = os.path.join(self.tmp.name, "noise.fits")
        fits.PrimaryHDU(np.random.default_rng(0).normal(0, 1, (128, 128)).astype(np.float32)).writeto(noise)
        proc = self.run_cli(noise, "--out", out, check=False)
        self.assertIn("--psf-fwhm", proc.stderr)
        self.assertFalse(os.path.exists(os.path.join(out, "noise.trails.ecsv")))
        self.run_cli(noise, "--out", out, "--psf-fwhm", "4.7")
        self.assertTrue(os.path.exists(os.path.join(out, "noise.trails.ecsv")))


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
