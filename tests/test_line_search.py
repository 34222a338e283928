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

"""Tests of the source-masked matched-filter line search and of its place in the detection."""

import math
import unittest

import numpy as np

import lsst.utils.tests
from lsst.trail_detect.detection.detect import resolve_duplicates
from lsst.trail_detect.detection.line_search import (
    LineSearchConfig,
    _Scale,
    extend_segment,
    line_search,
    remove_line_patterns,
    robust_scatter,
    segment_chunk_snr,
    segment_kernel,
    segment_snr,
    source_mask,
)
from lsst.trail_detect.detection.postprocess import TrailCandidate, same_trail, trail_model

SIGMA = 1.7


def grid(shape):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return xx.astype(float), yy.astype(float)


def trail_image(shape, segment, nu_det, sigma=SIGMA, noise=1.0):
    """Unit-variance noise-free model of a trail scaled to a PSF-filter peak SNR ``nu_det``."""
    xx, yy = grid(shape)
    model = trail_model(xx, yy, *segment, sigma)
    # PSF-filter peak SNR of the unit-flux model: max of (model * psf) / sqrt(sum psf^2) with unit noise.
    from scipy import ndimage

    psf_norm = 1.0 / math.sqrt(4 * math.pi * sigma**2)  # sqrt(sum psf^2) for a unit Gaussian
    peak = float(ndimage.gaussian_filter(model, sigma).max()) / (psf_norm**2) * psf_norm
    return (nu_det / peak) * noise * model


def nu_opt(image, noise=1.0):
    return float(np.sqrt(np.sum((image / noise) ** 2)))


class LineSearchTestCase(lsst.utils.tests.TestCase):
    """Noise calibration, masking, recovery of faint trails."""

    def test_kernel(self):
        for factor in (1, 2):
            kernel = segment_kernel(30.0, 0.4, SIGMA, factor)
            self.assertEqual(kernel.shape[0] % 2, 1)
            self.assertEqual(kernel.shape[0], kernel.shape[1])
            # Unit flux per pixel of the original grid (a block holds factor**2 pixels).
            self.assertAlmostEqual(float(kernel.sum()) * factor**2, 1.0, delta=0.01)
            # Point-symmetric about the centre, as a centred segment is.
            np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-9)

    def test_unit_normal_on_noise_with_masks(self):
        """Each kernel's SNR is unit normal on noise, also where part of the kernel is masked."""
        rng = np.random.default_rng(5)
        shape = (384, 384)
        variance = rng.uniform(0.5, 2.0) * np.ones(shape, dtype=np.float32)
        image = (rng.normal(size=shape) * np.sqrt(variance)).astype(np.float32)
        good = rng.uniform(size=shape) > 0.2  # 20% of the pixels missing
        good[100:140, :] = False  # and a band
        weight = np.where(good, 1.0 / variance, 0.0).astype(np.float32)
        data = (np.where(good, image, 0.0) * weight).astype(np.float32)
        config = LineSearchConfig(min_coverage=0.3)
        for factor, length in ((1, 12.0), (2, 40.0)):
            kernel = segment_kernel(length, 0.7, SIGMA, factor)
            snr = _Scale(data, weight, factor, kernel.shape[0] // 2, 1).snr(kernel, config.min_coverage)
            values = snr[snr != 0]
            # Neighbouring outputs are correlated, so the sample is smaller than it looks.
            self.assertAlmostEqual(float(values.mean()), 0.0, delta=0.08)
            self.assertAlmostEqual(float(values.std()), 1.0, delta=0.06)

    def test_matched_filter_snr(self):
        """On a noiseless trail matching a kernel, the SNR is the trail's optimal SNR."""
        shape = (200, 200)
        fwhm = 2.3548 * SIGMA
        length = 10 * fwhm
        angle = math.radians(30.0)
        cx, cy = 100.0, 90.0
        dx, dy = 0.5 * length * math.cos(angle), 0.5 * length * math.sin(angle)
        segment = (cx - dx, cy - dy, cx + dx, cy + dy)
        signal = trail_image(shape, segment, 3.0)
        config = LineSearchConfig(lengths_fwhm=(10.0,), threshold=3.0, bin_min_sigma=100.0)
        result = line_search(signal.astype(np.float32), np.ones(shape, np.float32), SIGMA, config=config)
        expected = nu_opt(signal)
        self.assertGreater(expected, 6.0)
        # Within the angular and pixel sampling of the bank.
        self.assertAlmostEqual(float(result.snr.max()) / expected, 1.0, delta=0.04)

    def test_finds_faint_trail_among_stars(self):
        """A trail below any 5 sigma detection is found; bright stars are masked, not found."""
        rng = np.random.default_rng(11)
        shape = (512, 512)
        xx, yy = grid(shape)
        image = rng.normal(size=shape)
        for _ in range(30):
            x, y = rng.uniform(10, 502, 2)
            image += 10 ** rng.uniform(1.5, 3.5) * trail_model(xx, yy, x, y, x, y, SIGMA)
        segment = (80.0, 300.0, 220.0, 380.0)
        faint = trail_image(shape, segment, 3.0)
        self.assertGreater(nu_opt(faint), 8.0)
        variance = np.ones(shape, dtype=np.float32)
        without = line_search(image.astype(np.float32), variance, SIGMA)
        self.assertEqual(without.candidates, [], [c.line_snr for c in without.candidates])
        self.assertGreater(without.masked.mean(), 0.005)
        found = line_search((image + faint).astype(np.float32), variance, SIGMA)
        self.assertGreaterEqual(len(found.candidates), 1)
        best = found.candidates[0]
        self.assertEqual(best.origin, "line")
        self.assertGreater(best.line_snr, 6.0)
        truth = TrailCandidate(*segment, np.zeros(0), np.zeros(0), np.zeros(0), max_probability=0.0)
        self.assertTrue(same_trail(best, truth, SIGMA))
        self.assertGreater(best.length, 0.4 * truth.length)

    def test_noise_normalization(self):
        """Correlated noise, whose matched-filter scatter the variance plane understates, gives false
        trails unless the search measures each kernel's scatter; the trail is found either way.
        """
        from scipy import ndimage

        rng = np.random.default_rng(21)
        shape = (384, 384)
        segment = (60.0, 80.0, 300.0, 260.0)
        # Unit pixel variance, 15% of it smoothed over a pixel: a PSF-filter scatter of about 1.5.
        smooth = ndimage.gaussian_filter(rng.normal(size=shape), 1.0)
        noise = math.sqrt(0.85) * rng.normal(size=shape) + math.sqrt(0.15) * smooth / smooth.std()
        trail = trail_image(shape, segment, 2.5, noise=1.5)
        image = (noise + trail).astype(np.float32)
        variance = np.ones(shape, dtype=np.float32)
        truth = TrailCandidate(*segment, np.zeros(0), np.zeros(0), np.zeros(0), max_probability=0.0)
        plain = line_search(image, variance, SIGMA, config=LineSearchConfig(threshold=6.0))
        self.assertGreater(sum(not same_trail(c, truth, SIGMA) for c in plain.candidates), 3)
        config = LineSearchConfig(threshold=6.0, normalize_noise=True)
        found = line_search(image, variance, SIGMA, config=config)
        self.assertGreaterEqual(len(found.candidates), 1)
        # The trail is longer than the longest kernel, so it may come in pieces: all of them its own.
        self.assertTrue(all(same_trail(c, truth, SIGMA) for c in found.candidates))
        # The scatter of a normal map, and the fallback for a map with nothing in it.
        self.assertAlmostEqual(robust_scatter(1.3 * rng.normal(size=(1000, 1000))), 1.3, delta=0.03)
        self.assertEqual(robust_scatter(np.zeros((50, 50))), 1.0)

    def test_remove_line_patterns(self):
        """Column and row offsets go; a trail across them keeps its flux."""
        rng = np.random.default_rng(3)
        shape = (256, 256)
        segment = (30.0, 40.0, 220.0, 200.0)
        trail = trail_image(shape, segment, 4.0)
        image = rng.normal(size=shape) + trail
        image[:, 100] += 3.0
        image[50, :] -= 2.0
        use = np.ones(shape, dtype=bool)
        use[:, :10] = False
        cleaned = remove_line_patterns(image.astype(np.float32), use)
        self.assertTrue(np.all(cleaned[~use] == 0))
        self.assertAlmostEqual(float(np.median(cleaned[use[:, 100], 100])), 0.0, delta=0.15)
        self.assertAlmostEqual(float(np.median(cleaned[50, use[50]])), 0.0, delta=0.15)
        kept = float(np.sum(cleaned * trail) / np.sum(trail * trail))
        self.assertAlmostEqual(kept, 1.0, delta=0.1)

    def test_segment_snr_ignores_smooth_light(self):
        """The plane fitted beside the segment takes up a galaxy's or a star's smooth light."""
        rng = np.random.default_rng(4)
        shape = (200, 200)
        segment = (40.0, 100.0, 160.0, 100.0)
        candidate = TrailCandidate(*segment, np.zeros(0), np.zeros(0), np.zeros(0), max_probability=0.0)
        noise = rng.normal(size=shape)
        variance = np.ones(shape)
        use = np.ones(shape, dtype=bool)
        trail = trail_image(shape, segment, 3.0)
        expected = nu_opt(trail)
        measured = segment_snr(candidate, noise + trail, variance, use, SIGMA)
        self.assertAlmostEqual(measured / expected, 0.85, delta=0.15)
        # A gradient across the segment (the wing of a source beside it), with no trail.
        _, yy = grid(shape)
        ramp = 0.4 * (yy - 80.0) / 10.0
        self.assertLess(abs(segment_snr(candidate, noise + ramp, variance, use, SIGMA)), 3.0)
        template = trail_model(*grid(shape), *segment, SIGMA)
        plain = float(np.sum(template * (noise + ramp + 0.5)) / np.sqrt(np.sum(template**2)))
        self.assertGreater(plain, 10.0)
        # Too few usable pixels.
        self.assertTrue(np.isnan(segment_snr(candidate, noise, variance, np.zeros(shape, bool), SIGMA)))

    def test_segment_chunk_snr(self):
        """Dropping a trail's best piece costs it little; dropping the source a line crosses, nearly all."""
        rng = np.random.default_rng(8)
        shape = (200, 200)
        segment = (30.0, 100.0, 170.0, 100.0)
        candidate = TrailCandidate(*segment, np.zeros(0), np.zeros(0), np.zeros(0), max_probability=0.0)
        variance = np.ones(shape)
        use = np.ones(shape, dtype=bool)
        n = int(candidate.length // (2.0 * 2.3548 * SIGMA))
        ratios = []
        for k in range(20):
            image = rng.normal(size=shape) + trail_image(shape, segment, 4.0)
            ratios.append(
                segment_chunk_snr(candidate, image, variance, use, SIGMA)
                / segment_snr(candidate, image, variance, use, SIGMA)
            )
        # Less than sqrt((n - 1) / n): the piece dropped is the one noise lifted most.
        self.assertLess(float(np.mean(ratios)), math.sqrt((n - 1) / n))
        self.assertGreater(float(np.mean(ratios)), 0.8)
        # No trail: a point source on the line, bright enough to give the whole segment an SNR of 8.
        xx, yy = grid(shape)
        star = trail_model(xx, yy, 100.0, 100.0, 100.0, 100.0, SIGMA)
        noise = rng.normal(size=shape)
        template = trail_model(xx, yy, *segment, SIGMA)
        flux = 8.0 * np.sqrt(np.sum(template**2)) / np.sum(template * star)
        image = noise + flux * star
        self.assertGreater(segment_snr(candidate, image, variance, use, SIGMA), 6.0)
        self.assertLess(abs(segment_chunk_snr(candidate, image, variance, use, SIGMA)), 3.0)
        # Too short to cut in two, or no usable pixels.
        short = TrailCandidate(30.0, 100.0, 36.0, 100.0, np.zeros(0), np.zeros(0), np.zeros(0), 0.0)
        self.assertTrue(np.isnan(segment_chunk_snr(short, image, variance, use, SIGMA)))
        self.assertTrue(np.isnan(segment_chunk_snr(candidate, image, variance, ~use, SIGMA)))

    def test_extend_segment(self):
        """A piece of a trail grows to the trail's ends."""
        rng = np.random.default_rng(6)
        shape = (256, 256)
        segment = (40.0, 60.0, 210.0, 170.0)
        trail = trail_image(shape, segment, 3.0)
        image = rng.normal(size=shape) + trail
        t = 0.3, 0.6
        piece = TrailCandidate(
            segment[0] + t[0] * (segment[2] - segment[0]),
            segment[1] + t[0] * (segment[3] - segment[1]),
            segment[0] + t[1] * (segment[2] - segment[0]),
            segment[1] + t[1] * (segment[3] - segment[1]),
            np.zeros(0),
            np.zeros(0),
            np.zeros(0),
            max_probability=0.0,
        )
        use = np.ones(shape, dtype=bool)
        variance = np.ones(shape)
        before = segment_snr(piece, image, variance, use, SIGMA)
        grown, after = extend_segment(piece, image, variance, use, SIGMA)
        self.assertGreater(after, before + 2.0)
        truth_length = math.hypot(segment[2] - segment[0], segment[3] - segment[1])
        self.assertAlmostEqual(grown.length, truth_length, delta=4 * 2.3548 * SIGMA)
        self.assertAlmostEqual(grown.beta, piece.beta, delta=1e-6)

    def test_source_mask_spares_faint_trails(self):
        """Noise lifts a faint trail past 5 sigma in places: those footprints are spared, stars are not."""
        rng = np.random.default_rng(8)
        shape = (256, 256)
        xx, yy = grid(shape)
        segment = (20.0, 40.0, 230.0, 60.0)
        star = 60.0 * trail_model(xx, yy, 128.0, 180.0, 128.0, 180.0, SIGMA)  # PSF SNR ~ 10
        image = rng.normal(size=shape) + trail_image(shape, segment, 5.5) + star
        variance, good = np.ones(shape), np.ones(shape, dtype=bool)
        levels = ((5.0, 1.0), (30.0, 3.0))
        plain = source_mask(image, variance, good, SIGMA, levels)
        spared = source_mask(image, variance, good, SIGMA, levels, spare_elongation=2.0, spare_max_snr=8.0)
        q = np.linspace(0.05, 0.95, 80)
        on_trail = (
            np.rint(segment[1] + q * (segment[3] - segment[1])).astype(int),
            np.rint(segment[0] + q * (segment[2] - segment[0])).astype(int),
        )
        self.assertGreater(plain[on_trail].mean(), 0.3)
        self.assertLess(spared[on_trail].mean(), 0.5 * plain[on_trail].mean())
        self.assertTrue(spared[180, 128] and plain[180, 128])

    def test_bad_input(self):
        image = np.zeros((64, 64), dtype=np.float32)
        with self.assertRaisesRegex(ValueError, "PSF sigma"):
            line_search(image, np.ones_like(image), 0.0)
        with self.assertRaisesRegex(ValueError, "shape"):
            line_search(image, np.ones((32, 32), np.float32), SIGMA)
        # Nothing usable: no candidates, no error.
        self.assertEqual(line_search(image, np.zeros_like(image), SIGMA).candidates, [])

    def test_config(self):
        config = LineSearchConfig(lengths_fwhm=(4.0, 12.0), threshold=6.5)
        self.assertEqual(LineSearchConfig.from_dict(config.to_dict()), config)
        with self.assertRaisesRegex(ValueError, "unknown line search settings"):
            LineSearchConfig.from_dict({"lengths": [1.0]})
        with self.assertRaisesRegex(ValueError, "lengths"):
            LineSearchConfig(lengths_fwhm=(0.0,))
        with self.assertRaisesRegex(ValueError, "min_coverage"):
            LineSearchConfig(min_coverage=1.5)
        config = LineSearchConfig(normalize_noise=True)
        self.assertEqual(LineSearchConfig.from_dict(config.to_dict()), config)


class DuplicateTestCase(lsst.utils.tests.TestCase):
    """One detection per trail when the network and the line search both find it."""

    def candidate(self, segment, score, origin="line", rejected=""):
        c = TrailCandidate(
            *segment, np.zeros(0), np.zeros(0), np.zeros(0), max_probability=0.5, origin=origin
        )
        c.score = score
        c.rejected = rejected
        return c

    def test_same_trail(self):
        long = self.candidate((0.0, 0.0, 100.0, 0.0), 0.5)
        self.assertTrue(same_trail(long, self.candidate((20.0, 2.0, 60.0, 2.5), 0.5), SIGMA))
        # Parallel but offset by 10 sigma: another trail.
        self.assertFalse(same_trail(long, self.candidate((20.0, 17.0, 60.0, 17.0), 0.5), SIGMA))
        # Crossing at 45 degrees: another trail.
        self.assertFalse(same_trail(long, self.candidate((30.0, -20.0, 70.0, 20.0), 0.5), SIGMA))
        # Collinear but beyond the end.
        self.assertFalse(same_trail(long, self.candidate((130.0, 0.0, 170.0, 0.0), 0.5), SIGMA))

    def test_resolve(self):
        cnn = self.candidate((0.0, 0.0, 100.0, 0.0), 0.9, origin="cnn")
        weaker = self.candidate((10.0, 1.0, 80.0, 1.0), 0.4)
        stronger_cnn_low = self.candidate((0.0, 50.0, 100.0, 50.0), 0.2, origin="cnn", rejected="low_score")
        stronger = self.candidate((5.0, 50.0, 95.0, 50.5), 0.7)
        shape_rejected = self.candidate((0.0, 90.0, 100.0, 90.0), 0.99, origin="cnn", rejected="extended")
        on_rejected = self.candidate((0.0, 90.0, 100.0, 90.0), 0.6)
        twin_a = self.candidate((0.0, 150.0, 60.0, 150.0), 0.8)
        twin_b = self.candidate((5.0, 150.5, 70.0, 150.5), 0.75)
        held = resolve_duplicates(
            [cnn, stronger_cnn_low, shape_rejected], [weaker, stronger, on_rejected, twin_b, twin_a], SIGMA
        )
        self.assertEqual(len(held), 8)
        self.assertEqual(cnn.rejected, "")
        self.assertEqual(weaker.rejected, "duplicate")
        # A line candidate scoring higher replaces the network's candidate of the same trail.
        self.assertEqual(stronger.rejected, "")
        self.assertEqual(stronger_cnn_low.rejected, "duplicate")
        # A candidate rejected for its shape does not hide another.
        self.assertEqual(shape_rejected.rejected, "extended")
        self.assertEqual(on_rejected.rejected, "")
        # Two line candidates of one trail: the higher score stays.
        self.assertEqual(twin_a.rejected, "")
        self.assertEqual(twin_b.rejected, "duplicate")


class HybridDetectionTestCase(lsst.utils.tests.TestCase):
    """The line search inside detect_trails and the calibration, with the shipped network."""

    @classmethod
    def setUpClass(cls):
        import torch

        from lsst.trail_detect.detection.detect import load_network
        from lsst.trail_detect.models.storage import TrailDetectorModel
        from lsst.trail_detect.paths import default_model_path

        torch.set_num_threads(1)
        shipped = TrailDetectorModel.load(default_model_path())
        # The network alone: the shipped model without its line search, to calibrate one anew.
        metadata = {k: v for k, v in shipped.metadata.items() if k != "line_search"}
        cls.model = TrailDetectorModel(
            kind=shipped.kind, architecture=shipped.architecture, tensors=shipped.tensors, metadata=metadata
        )
        cls.shipped = shipped
        cls.network = load_network(cls.model, "cpu")

    def test_shipped_model_has_a_line_search(self):
        from lsst.trail_detect.detection.detect import LINE_SCORE_FEATURES, model_settings

        kwargs = model_settings(self.shipped)
        self.assertIsInstance(kwargs["line_search"], LineSearchConfig)
        self.assertEqual(kwargs["line_score_calibration"]["features"], list(LINE_SCORE_FEATURES))
        validation = self.shipped.metadata["score_calibration"]["validation"]
        self.assertLessEqual(validation["false_positives_per_4k_detector_at_min_score"], 10.0)

    def samples(self, n, seed):
        """Star fields of 256^2 with one faint long trail (nu_det 3) and one bright one each."""
        from astropy.table import Table

        from lsst.trail_detect.detection.calibration import CalibrationSample

        rng = np.random.default_rng(seed)
        shape = (256, 256)
        xx, yy = grid(shape)
        out = []
        for k in range(n):
            image = rng.normal(size=shape)
            for _ in range(8):
                x, y = rng.uniform(10, 246, 2)
                image += 10 ** rng.uniform(1.5, 3.0) * trail_model(xx, yy, x, y, x, y, SIGMA)
            # Edge-on galaxies, which the network and the search can take for trails.
            for _ in range(3):
                x, y, theta = rng.uniform(20, 236), rng.uniform(110, 150), rng.uniform(0, math.pi)
                u = (xx - x) * math.cos(theta) + (yy - y) * math.sin(theta)
                v = -(xx - x) * math.sin(theta) + (yy - y) * math.cos(theta)
                image += (
                    400
                    * np.exp(-0.5 * ((u / (4 * SIGMA)) ** 2 + (v / (1.3 * SIGMA)) ** 2))
                    / (2 * math.pi * 5.2 * SIGMA**2)
                )
            rows = []
            for nu_det, y0 in ((3.0, 60.0), (15.0, 190.0)):
                angle = rng.uniform(-0.3, 0.3)
                segment = (40.0, y0, 40.0 + 160 * math.cos(angle), y0 + 160 * math.sin(angle))
                image += trail_image(shape, segment, nu_det)
                rows.append((*segment, nu_det))
            truth = Table(rows=rows, names=("x_start", "y_start", "x_end", "y_end", "nu_det"))
            truth["injection_flag"] = 0
            truth["trail_length"] = np.hypot(
                truth["x_end"] - truth["x_start"], truth["y_end"] - truth["y_start"]
            )
            out.append(
                CalibrationSample(
                    image=image.astype(np.float32),
                    variance=np.ones(shape, np.float32),
                    truth=truth,
                    psf_sigma=SIGMA,
                    label=f"image {k}",
                )
            )
        return out

    def test_calibrate_and_detect(self):
        from lsst.trail_detect.detection.calibration import calibrate_trail_model
        from lsst.trail_detect.detection.detect import LINE_SCORE_FEATURES, detect_trails, model_settings
        from lsst.trail_detect.detection.inference import InferenceSettings
        from lsst.trail_detect.evaluation.matching import match_trails

        settings = InferenceSettings(tile=256, overlap=32)
        # Low thresholds so that both sources have false candidates to calibrate on.
        search = LineSearchConfig(threshold=4.0, lengths_fwhm=(10.0, 20.0))

        def calibrate(folds):
            return calibrate_trail_model(
                self.model,
                self.samples(4, seed=1),
                network=self.network,
                threshold=0.1,
                settings=settings,
                line_search=search,
                max_fp_per_detector=1000.0,
                folds=folds,
            )

        calibrated, summary = calibrate(4)
        line = calibrated.metadata["line_search"]
        self.assertEqual(LineSearchConfig.from_dict(line["config"]), search)
        self.assertEqual(line["score_calibration"]["features"], list(LINE_SCORE_FEATURES))
        self.assertGreater(summary["n_line_real"], 0)
        self.assertGreater(summary["n_line_candidates"], summary["n_line_real"])
        # min_score is chosen on out-of-fold scores; the calibration stored is fitted on every image.
        self.assertEqual(summary["folds"], 4)
        in_sample, in_sample_summary = calibrate(1)
        self.assertEqual(in_sample_summary["folds"], 1)
        a, b = dict(calibrated.metadata["score_calibration"]), dict(in_sample.metadata["score_calibration"])
        a.pop("validation"), b.pop("validation")
        self.assertEqual(a, b)
        self.assertEqual(
            calibrated.metadata["line_search"]["score_calibration"],
            in_sample.metadata["line_search"]["score_calibration"],
        )
        with self.assertRaisesRegex(ValueError, "folds"):
            calibrate_trail_model(self.model, [], network=self.network, folds=0)
        # The network's own calibration is unchanged in kind; the model without the search is as before.
        self.assertNotIn("line_search", self.model.metadata)
        plain = model_settings(self.model)
        self.assertIsNone(plain["line_search"])
        kwargs = model_settings(calibrated)
        self.assertEqual(kwargs["line_search"], search)
        self.assertIsNone(model_settings(calibrated, line_search=False)["line_search"])
        # On new images the faint trails come from the line search, one detection per trail.
        n_found = {"cnn": 0, "line": 0}
        for sample in self.samples(2, seed=2):
            common = dict(network=self.network, psf_sigma=SIGMA, settings=settings, **kwargs)
            result = detect_trails(sample.image, sample.variance, **common)
            catalog = result.catalog
            self.assertIn("line_search", result.timing)
            match = match_trails(catalog, sample.truth, psf_sigma=SIGMA)
            self.assertEqual(match.n_fragments, 0, str(catalog))
            for row in range(len(sample.truth)):
                det = match.truth_to_det[row]
                if det >= 0:
                    n_found[str(catalog["origin"][det])] += 1
            faint = match.truth_to_det[0]
            self.assertGreaterEqual(faint, 0, str(catalog))
            self.assertEqual(catalog["origin"][faint], "line")
            self.assertGreater(catalog["line_snr"][faint], 6.0)
            # Without the search the network alone misses the faint trail.
            alone = detect_trails(sample.image, sample.variance, **(common | {"line_search": None}))
            self.assertLess(match_trails(alone.catalog, sample.truth, psf_sigma=SIGMA).truth_to_det[0], 0)
        self.assertEqual(n_found["line"] + n_found["cnn"], 4)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
