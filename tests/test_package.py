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

"""SimCam geometry, the instrument, the pipelines and the package as a whole."""

import subprocess
import sys
import unittest
from pathlib import Path

import numpy as np

import lsst.utils.tests
from lsst.trail_detect.simulation import camera


class CameraTestCase(lsst.utils.tests.TestCase):
    def test_detector_layout_on_sky(self):
        """Neighbouring detectors are one sensor pitch apart at 0.2"/px, whatever the rotation."""
        for rotation in (0.0, 33.0, 271.0):
            w0 = camera.detector_wcs(95.0, -25.0, rotation, 4, 1024)
            w1 = camera.detector_wcs(95.0, -25.0, rotation, 5, 1024)
            c0 = w0.pixel_to_world(511.5, 511.5)
            c1 = w1.pixel_to_world(511.5, 511.5)
            self.assertFloatsAlmostEqual(c0.separation(c1).arcsec, camera.SENSOR_PITCH_PX * 0.2, rtol=1e-4)
            # The centre detector's centre is the boresight.
            self.assertLess(c0.separation(w0.pixel_to_world(511.5, 511.5)).arcsec, 1e-9)
        centre = camera.detector_wcs(95.0, -25.0, 0.0, 4, 1024).pixel_to_world(511.5, 511.5)
        self.assertFloatsAlmostEqual(centre.ra.deg, 95.0, atol=1e-9)

    def test_parity_and_rotation(self):
        """+x points east (RA decreasing on the image like the sky seen from inside) at rotation 0."""
        w = camera.detector_wcs(95.0, -25.0, 0.0, 4, 1024)
        a, b = w.pixel_to_world(500, 500), w.pixel_to_world(600, 500)
        self.assertLess(b.ra.deg, a.ra.deg)
        c = w.pixel_to_world(500, 600)
        self.assertGreater(c.dec.deg, a.dec.deg)
        w90 = camera.detector_wcs(95.0, -25.0, 90.0, 4, 1024)
        self.assertFloatsAlmostEqual(
            w90.pixel_to_world(500, 500).position_angle(w90.pixel_to_world(500, 600)).deg % 360,
            90.0,
            atol=0.01,
        )

    def test_polygon_contains_detector(self):
        import lsst.sphgeom as sg

        w = camera.detector_wcs(10.0, 60.0, 12.0, 2, 512)
        poly = camera.detector_polygon(w, 512)
        for x, y, inside in ((256, 256, True), (5, 5, True), (-40, 256, False), (600, 256, False)):
            c = w.pixel_to_world(x, y)
            self.assertEqual(
                poly.contains(sg.UnitVector3d(sg.LonLat.fromDegrees(c.ra.deg, c.dec.deg))), inside
            )
        visit = camera.visit_polygon(10.0, 60.0, 12.0, [0, 2, 6, 8], 512)
        c = camera.detector_wcs(10.0, 60.0, 12.0, 4, 512).pixel_to_world(256, 256)
        self.assertTrue(visit.contains(sg.UnitVector3d(sg.LonLat.fromDegrees(c.ra.deg, c.dec.deg))))

    def test_camera_frames_agree_with_wcs(self):
        """The lsst.images camera maps detector pixels to the focal plane like the WCS does."""
        from lsst.images import XY

        frames = camera.make_camera_frame_set(1024)
        det = camera.make_detector(5, 1024, frames=frames)
        fp = det.to_focal_plane.apply_forward(XY(np.array([511.5]), np.array([511.5])))
        xc, yc = camera.detector_center_px(5)
        self.assertFloatsAlmostEqual(float(fp.x[0]), xc * camera.PIXEL_SIZE_MM, atol=1e-9)
        self.assertFloatsAlmostEqual(float(fp.y[0]), yc * camera.PIXEL_SIZE_MM, atol=1e-9)
        self.assertEqual(det.name, "R22_S12")

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "detector 9"):
            camera.detector_center_px(9)
        with self.assertRaisesRegex(ValueError, "size 5000"):
            camera.detector_wcs(0, 0, 0, 0, 5000)


class SurveyPlanTestCase(lsst.utils.tests.TestCase):
    def test_plan(self):
        from lsst.trail_detect.simulation.survey import nJy_per_electron, plan_survey, sky_electrons_per_pixel

        plan = plan_survey(30, 3, 512, seed=5, bands="gri")
        self.assertEqual(plan, plan_survey(30, 3, 512, seed=5, bands="gri"))
        seeing = np.array([v["seeing_fwhm_arcsec"] for v in plan])
        self.assertTrue(np.all((seeing >= 0.5) & (seeing <= 1.3)))
        self.assertGreater(np.ptp(seeing), 0.3)
        self.assertEqual({v["band"] for v in plan}, {"g", "r", "i"})
        self.assertEqual(len({v["visit"] for v in plan}), 30)
        # r-band dark sky at 0.2"/px in 30 s: about a thousand electrons per pixel.
        sky = sky_electrons_per_pixel(21.2, "r", 30.0)
        self.assertTrue(700 < sky < 1500)
        # 1 electron of r-band in 30 s is about half a nJy; a 24th-mag star gives ~1000 e-.
        self.assertTrue(0.3 < nJy_per_electron("r", 30.0) < 0.8)
        with self.assertRaises(ValueError):
            plan_survey(1, 10, 512, seed=1)


class InstrumentTestCase(lsst.utils.tests.TestCase):
    def test_register(self):
        import tempfile

        from lsst.daf.butler import Butler
        from lsst.trail_detect.instrument import SimCam

        with tempfile.TemporaryDirectory() as tmp:
            Butler.makeRepo(tmp)
            butler = Butler.from_config(tmp, writeable=True)
            SimCam().register(butler.registry)
            SimCam().register(butler.registry)  # idempotent
            dets = list(butler.query_dimension_records("detector", instrument="SimCam"))
            self.assertEqual(len(dets), 9)
            self.assertEqual(sorted(d.full_name for d in dets)[0], "R22_S00")
            filters = {r.name for r in butler.query_dimension_records("physical_filter")}
            self.assertIn("r_sim", filters)
            instrument = SimCam.fromName("SimCam", butler.registry)
            self.assertIsInstance(instrument, SimCam)
            del butler


class PipelinesTestCase(lsst.utils.tests.TestCase):
    def test_pipelines_load_and_lint(self):
        """Every pipeline YAML loads, and its tasks' connections are consistent."""
        import os

        from lsst.pipe.base import Pipeline
        from lsst.pipe.base.testUtils import lintConnections
        from lsst.trail_detect.paths import package_dir

        os.environ.setdefault("TRAIL_DETECT_DIR", str(package_dir()))
        pipelines = sorted((package_dir() / "pipelines").glob("*.yaml"))
        self.assertTrue(pipelines)
        for path in pipelines:
            graph = Pipeline.from_uri(str(path)).to_graph()
            self.assertGreater(len(graph.tasks), 0, path.name)
            for node in graph.tasks.values():
                lintConnections(node.task_class.ConfigClass.ConnectionsClass)
        # Ingredients parse; those whose tasks all import here also build.
        import importlib.util

        stack = importlib.util.find_spec("lsst.source") is not None
        for path in sorted((package_dir() / "pipelines" / "_ingredients").glob("*.yaml")):
            pipeline = Pipeline.from_uri(str(path))
            if path.name != "injection_stack.yaml" or stack:
                self.assertGreater(len(pipeline.to_graph().tasks), 0, path.name)
            else:
                self.assertIn("injectVisit", pipeline.task_labels)


class PackageTestCase(lsst.utils.tests.ImportTestCase):
    PACKAGES = {
        "lsst.trail_detect",
        "lsst.trail_detect.simulation",
        "lsst.trail_detect.cli",
        "lsst.trail_detect.injection",
        "lsst.trail_detect.tiles",
        "lsst.trail_detect.models",
        "lsst.trail_detect.training",
    }


class CliTestCase(lsst.utils.tests.TestCase):
    def test_help(self):
        from click.testing import CliRunner

        from lsst.trail_detect.cli.trail_detect import cli

        runner = CliRunner()
        result = runner.invoke(cli, ["--help"])
        self.assertEqual(result.exit_code, 0)
        for command in ("make-repo", "fetch-gaia", "ingest-catalog"):
            self.assertIn(command, result.output)
            sub = runner.invoke(cli, [command, "--help"])
            self.assertEqual(sub.exit_code, 0, sub.output)

    def test_layout(self):
        """The package carries the Rubin layout pieces."""
        root = Path(__file__).resolve().parents[1]
        for name in (
            "SConstruct",
            "ups/trail_detect.table",
            "LICENSE",
            "COPYRIGHT",
            "pyproject.toml",
            "doc/lsst.trail_detect/index.rst",
            "python/lsst/__init__.py",
            "README.md",
        ):
            self.assertTrue((root / name).exists(), name)
        self.assertIn(
            'versionModuleName="python/lsst/trail_detect/version.py"', (root / "SConstruct").read_text()
        )

    def test_lint(self):
        """The code passes ruff with the package's configuration (line length 110)."""
        import shutil

        ruff = Path(sys.executable).parent / "ruff"
        ruff = str(ruff) if ruff.exists() else shutil.which("ruff")
        if ruff is None:
            self.skipTest("ruff is not installed")
        root = Path(__file__).resolve().parents[1]
        proc = subprocess.run(
            [ruff, "check", "python", "tests", "benchmarks"], cwd=root, capture_output=True, text=True
        )
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_entry_point(self):
        exe = Path(sys.executable).parent / "trail-detect"
        if not exe.exists():
            self.skipTest("trail-detect entry point not installed in this environment")
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
        self.assertIn("trail-detect", out.stdout)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
