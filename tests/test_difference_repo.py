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

"""End-to-end test of the search on difference images: pipetask run of EndToEndDifference, then calibrate."""

import os
import shutil
import unittest

import numpy as np

# The survey repository helpers of the end-to-end tests, in this directory.
from test_survey_repo import DETECTORS, VISITS, SurveyRepoMixin, run_cli

import lsst.utils.tests


class DifferenceRepoTestCase(SurveyRepoMixin, lsst.utils.tests.TestCase):
    """Templates, subtraction, detection and evaluation on a small survey repository of its own."""

    @classmethod
    def setUpClass(cls):
        cls.make_survey("trail_detect_difference_")

    @classmethod
    def tearDownClass(cls):
        del cls.butler
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_difference_pipeline(self):
        """pipetask run of EndToEndDifference: templates, subtraction, detection and evaluation."""
        from lsst.trail_detect.imageutils import psf_sigma

        output = "u/test/difference"
        butler = self.run_pipeline("EndToEndDifference.yaml", output, extra=("-c", "detectTrails:threads=1"))
        self.check_evaluation(butler, output)
        for ref in butler.query_datasets("injected_difference_image", limit=None):
            difference = butler.get(ref)
            science = butler.get("injected_visit_image", ref.dataId)
            template = butler.get("template_detector", ref.dataId)
            reference = butler.get("difference_image", ref.dataId)
            truth_mask = butler.get("injected_trail_mask", ref.dataId).get("TRAIL")
            self.assertEqual(difference.bbox, science.bbox)
            # The template is the static sky: deeper, sharper, without the visit's artefacts.
            self.assertLessEqual(psf_sigma(template), psf_sigma(science) * 1.05)
            self.assertFalse(template.mask.get("COSMIC_RAY").any())
            self.assertLess(
                float(np.median(template.variance.array)), 0.2 * float(np.nanmedian(science.variance.array))
            )
            self.assertEqual(psf_sigma(difference), psf_sigma(science))
            self.assertIn("DIFF_KERNEL_STAMPS", difference.metadata)
            good = np.isfinite(difference.variance.array)
            self.assertTrue(
                np.all(difference.variance.array[good] >= science.variance.array[good] * (1 - 1e-6))
            )
            # The stars and galaxies are gone and the trails are left: far fewer detected pixels
            # than on the visit image before injection, and the injected flux where the trails are.
            visit = self.butler.get("visit_image", ref.dataId)
            self.assertLess(reference.mask.get("DETECTED").mean(), 0.3 * visit.mask.get("DETECTED").mean())
            injected_flux = float(np.sum((science.image.array - visit.image.array)[truth_mask]))
            found_flux = float(np.sum((difference.image.array - reference.image.array)[truth_mask & good]))
            self.assertFloatsAlmostEqual(found_flux, injected_flux, rtol=0.1)
        for name, dia_name in (
            ("injected_dia_source", "injected_difference_image"),
            ("dia_source", "difference_image"),
        ):
            refs = butler.query_datasets(name, limit=None)
            self.assertEqual(len(refs), VISITS * DETECTORS)
            for ref in refs:
                self.assertLess(len(butler.get(ref)), len(self.butler.get("source", ref.dataId)))
        # The model's calibration for difference images was used: it runs the source search.
        ref = butler.query_datasets("trail_catalog", limit=None)[0]
        metadata = butler.get("detectTrails_metadata", ref.dataId)["detectTrails"]
        self.assertIn("seconds_source_search", metadata)
        # A calibration for difference images, made on these images, is stored beside the visit one.
        from lsst.trail_detect.models.storage import TrailDetectorModel
        from lsst.trail_detect.paths import default_model_path

        out = os.path.join(self.tmp, "difference_calibrated.safetensors")
        proc = run_cli(
            "calibrate",
            self.repo,
            out,
            "--collections",
            output,
            "--model",
            str(default_model_path()),
            "--split",
            "all",
            "--image-type",
            "injected_difference_image",
            "--calibration",
            "difference",
            "--source-search",
            "--folds",
            "1",
        )
        self.assertIn("Calibrated on 4 images", proc.stdout)
        shipped, calibrated = TrailDetectorModel.load(default_model_path()), TrailDetectorModel.load(out)
        self.assertEqual(calibrated.metadata["score_calibration"], shipped.metadata["score_calibration"])
        self.assertIn("source_search", calibrated.metadata["difference"])
        self.assertNotIn("line_search", calibrated.metadata["difference"])
        provenance = calibrated.metadata["difference"]["score_calibration"]["validation"]["provenance"]
        self.assertEqual(provenance["image_type"], "injected_difference_image")
        del butler


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
