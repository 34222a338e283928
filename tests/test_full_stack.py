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

"""Paths that involve the full Science Pipelines (afw), and old-style ``src`` catalogs.

The afw tests skip cleanly where afw is not installed (pip installs).
"""

import importlib.util
import os
import tempfile
import unittest

import numpy as np

import lsst.utils.tests
from lsst.trail_detect.simulation.visit_image import make_simple_visit_image

HAVE_AFW = importlib.util.find_spec("lsst.afw") is not None


def simple_image(size=256, sigma=2.0, seed=1):
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 10.0, (size, size)).astype(np.float32)
    return make_simple_visit_image(image, np.full(image.shape, 100.0, np.float32), psf_sigma=sigma)


@unittest.skipUnless(HAVE_AFW, "lsst.afw is not available (a pip install); the conversion needs it")
class ExposureConversionTestCase(lsst.utils.tests.TestCase):
    """An ExposureF dataset (calexp) read as VisitImage through storage-class conversion."""

    def test_exposure_as_visit_image(self):
        from lsst.daf.butler import Butler, DatasetType
        from lsst.trail_detect.instrument import SimCam

        with tempfile.TemporaryDirectory() as tmp:
            repo = os.path.join(tmp, "repo")
            Butler.makeRepo(repo)
            butler = Butler.from_config(repo, writeable=True, run="test/calexp")
            SimCam().register(butler.registry)
            visit_image = simple_image()
            exposure = visit_image.to_legacy()
            butler.registry.registerDatasetType(
                DatasetType("calexp", ("instrument", "detector"), "ExposureF", universe=butler.dimensions)
            )
            butler.put(exposure, "calexp", instrument="SimCam", detector=4)
            converted = butler.get("calexp", instrument="SimCam", detector=4, storageClass="VisitImage")
            self.assertEqual(type(converted).__name__, "VisitImage")
            np.testing.assert_array_equal(converted.image.array, visit_image.image.array)
            np.testing.assert_array_equal(converted.variance.array, visit_image.variance.array)


class OldSourceCatalogTestCase(lsst.utils.tests.TestCase):
    """matchTrails reads old ``src`` catalogs (sky coordinates in radians, no pixel columns)."""

    def test_src_in_radians(self):
        from astropy.table import Table

        from lsst.trail_detect.evaluation.match_trails import MatchTrailsConfig, build_match_table
        from lsst.trail_detect.imageutils import pixel_to_sky_function, sky_to_pixel_function

        exposure = simple_image()
        truth = Table(
            {
                "injection_id": [1, 2],
                "injection_flag": [0, 0],
                "x_start": [40.0, 150.0],
                "y_start": [50.0, 200.0],
                "x_end": [120.0, 200.0],
                "y_end": [90.0, 210.0],
                "trail_length": [89.4, 51.0],
                "nu_det": [8.0, 3.0],
                "nu_opt": [15.0, 5.0],
                "mag": [22.0, 23.0],
                "beta": [26.6, 11.3],
            }
        )
        # Two stack sources along the first trail, none along the second.
        x = np.array([60.0, 100.0, 20.0])
        y = np.array([60.0, 80.0, 230.0])
        ra, dec = pixel_to_sky_function(exposure)(x, y)
        new = Table({"x": x, "y": y, "coord_ra": ra, "coord_dec": dec})
        old = Table({"id": [1, 2, 3], "coord_ra": np.radians(ra), "coord_dec": np.radians(dec)})
        empty = Table({"x": np.zeros(0), "y": np.zeros(0)})
        detections = Table(
            {
                name: np.zeros(0)
                for name in (
                    "x_start",
                    "y_start",
                    "x_end",
                    "y_end",
                    "trail_length",
                    "beta",
                    "score",
                    "score_raw",
                    "snr",
                    "flux",
                )
            }
        )
        detections["trail_id"] = np.zeros(0, dtype=int)
        to_pixel = sky_to_pixel_function(exposure)
        results = {}
        for units, sources in (("deg", new), ("rad", old)):
            config = MatchTrailsConfig()
            config.coord_units = units
            table = build_match_table(
                detections,
                truth,
                psf_sigma=2.0,
                image_shape=(256, 256),
                visit=1,
                detector=4,
                injected_sources=sources,
                reference_sources=empty,
                sky_to_pixel=to_pixel,
                config=config,
            )
            results[units] = list(table["stack_status"])
        self.assertEqual(results["deg"], ["broken", "missed"])
        self.assertEqual(results["rad"], results["deg"])


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
