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

"""Bad input, interruption and determinism through the real entry points (pipetask and trail-detect)."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import numpy as np

import lsst.utils.tests

SIZE = 256


def _exe(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def run(cmd, check=True, timeout=600):
    from lsst.trail_detect.paths import package_dir

    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        env=dict(os.environ, TRAIL_DETECT_DIR=str(package_dir())),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def pipetask(repo, pipeline, inputs, output, *extra, check=True):
    from lsst.trail_detect.paths import pipeline_path

    path = (
        pipeline
        if "/" in pipeline
        else str(pipeline_path(pipeline.split("#")[0]))
        + ("#" + pipeline.split("#")[1] if "#" in pipeline else "")
    )
    return run(
        [
            _exe("pipetask"),
            "run",
            "-b",
            repo,
            "-i",
            inputs,
            "-o",
            output,
            "-p",
            path,
            "--register-dataset-types",
            *extra,
        ],
        check=check,
    )


def trail_detect(*args, check=True):
    return run([_exe("trail-detect"), *args], check=check)


def modified_visit_image(
    image, *, pixels=None, variance=None, mask_all=None, wcs=True, psf=None, summary_stats=True, unit=None
):
    """A copy of a VisitImage with replaced arrays, PSF, summary statistics or unit."""
    from lsst.images import Image, VisitImage

    mask = image.mask.copy()
    if mask_all is not None:
        mask.set(mask_all, np.ones(mask.array.shape[:2], dtype=bool))
    return VisitImage(
        Image(
            image.image.array.copy() if pixels is None else pixels,
            bbox=image.bbox,
            unit=image.unit if unit is None else unit,
        ),
        mask=mask,
        variance=Image(image.variance.array.copy() if variance is None else variance, bbox=image.bbox),
        sky_projection=image.sky_projection if wcs else None,
        obs_info=image.obs_info,
        summary_stats=image.summary_stats if summary_stats else None,
        psf=image.psf if psf is None else psf,
        detector=image.detector,
        band=image.band,
        metadata=dict(image.metadata),
    )


class ReliabilityTestCase(lsst.utils.tests.TestCase):
    """One small survey repository; each test puts its bad input in its own RUN collection."""

    @classmethod
    def setUpClass(cls):
        from lsst.daf.butler import Butler

        cls.tmp = tempfile.mkdtemp(prefix="trail_detect_reliability_")
        cls.repo = os.path.join(cls.tmp, "repo")
        trail_detect(
            "make-repo",
            cls.repo,
            "--visits",
            "1",
            "--detectors",
            "2",
            "--size",
            str(SIZE),
            "--seed",
            "11",
            "-j",
            "1",
        )
        cls.butler = Butler.from_config(cls.repo, writeable=True, collections="SimCam/runs/survey")
        cls.refs = sorted(
            cls.butler.query_datasets("visit_image", limit=None), key=lambda r: r.dataId["detector"]
        )

    @classmethod
    def tearDownClass(cls):
        del cls.butler
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def put(self, dataset_type, obj, run, data_id):
        from lsst.daf.butler import CollectionType

        self.butler.registry.registerCollection(run, CollectionType.RUN)
        self.butler.put(obj, dataset_type, data_id, run=run)

    def outputs(self, collection, dataset_type):
        from lsst.daf.butler import Butler, MissingCollectionError, MissingDatasetTypeError

        butler = Butler.from_config(self.repo)
        try:
            return butler.query_datasets(dataset_type, collections=collection, limit=None, explain=False)
        except (MissingDatasetTypeError, MissingCollectionError):
            return []

    def detect(self, image, name):
        """Put ``image`` as visit_image in its own run and run DetectTrails on it."""
        ref = self.refs[0]
        self.put("visit_image", image, f"u/test/input_{name}", ref.dataId)
        query = f"instrument = 'SimCam' AND detector = {ref.dataId['detector']}"
        return pipetask(
            self.repo,
            "DetectTrails.yaml",
            f"u/test/input_{name},SimCam/defaults",
            f"u/test/detect_{name}",
            "-d",
            query,
            "-c",
            "detectTrails:threads=1",
            check=False,
        )

    def read(self, name, dataset_type="trail_catalog"):
        from lsst.daf.butler import Butler

        butler = Butler.from_config(self.repo, collections=f"u/test/detect_{name}")
        return butler.get(dataset_type, self.refs[0].dataId)

    def test_nan_inf_and_bad_variance(self):
        """NaN and infinite pixels, zero and negative variance: searched around, finite outputs."""
        image = self.butler.get(self.refs[0])
        pixels = image.image.array.copy()
        variance = image.variance.array.copy()
        rng = np.random.default_rng(1)
        pixels[rng.uniform(size=pixels.shape) < 0.02] = np.nan
        pixels[10:12, :] = np.inf
        variance[:, 100:104] = 0.0
        variance[200:205, :] = -1.0
        proc = self.detect(modified_visit_image(image, pixels=pixels, variance=variance), "nan")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        probability = self.read("nan", "trail_probability").array
        self.assertTrue(np.all(np.isfinite(probability)))
        catalog = self.read("nan")
        for name in ("x_start", "y_start", "x_end", "y_end", "flux", "snr", "score"):
            self.assertTrue(np.all(np.isfinite(catalog[name])), name)

    def test_fully_masked_detector(self):
        """A detector with no data gives an empty catalog and mask (documented), not a failure."""
        image = self.butler.get(self.refs[0])
        proc = self.detect(modified_visit_image(image, mask_all="NO_DATA"), "masked")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertIn("No usable pixel", proc.stderr + proc.stdout)
        self.assertEqual(len(self.read("masked")), 0)
        self.assertFalse(self.read("masked", "trail_mask").get("TRAIL").any())

    def test_missing_wcs(self):
        """Without a WCS (a plain FITS file) the pixel columns are filled and the sky columns are NaN.

        A VisitImage always has a sky projection, so this is the detect-fits path.
        """
        from astropy.io import fits
        from astropy.table import Table

        from lsst.trail_detect.detection.postprocess import trail_model

        rng = np.random.default_rng(3)
        yy, xx = np.mgrid[:SIZE, :SIZE].astype(float)
        pixels = rng.normal(0.0, 10.0, (SIZE, SIZE)) + 25 * 10.0 * 144 * trail_model(
            xx, yy, 60.0, 70.0, 180.0, 150.0, 2.0
        )
        work = Path(self.tmp) / "nowcs"
        work.mkdir(exist_ok=True)
        fits.PrimaryHDU(pixels.astype(np.float32)).writeto(work / "nowcs.fits")
        proc = trail_detect(
            "detect-fits", str(work / "nowcs.fits"), "--out", str(work), "--psf-fwhm", "4.7", "--threads", "1"
        )
        self.assertIn("no WCS", proc.stdout)
        catalog = Table.read(work / "nowcs.trails.ecsv")
        self.assertGreaterEqual(len(catalog), 1)
        self.assertTrue(np.all(np.isnan(catalog["ra"])))
        self.assertTrue(np.all(np.isfinite(catalog["x_start"])))

    def test_broken_psf_and_unknown_units(self):
        """An unreadable PSF: psfSigma is used, or a clear error without it; non-nJy images are refused."""
        import astropy.units as u

        from lsst.images.serialization import ArchiveReadError
        from lsst.trail_detect.detection.detect_trails import DetectTrailsConfig, DetectTrailsTask
        from lsst.trail_detect.models.storage import TrailDetectorModel
        from lsst.trail_detect.paths import default_model_path

        # A PSF the reader could not rebuild comes back as an ArchiveReadError in its place (such an image
        # cannot be written back, so the task is run directly on it).
        image = self.butler.get(self.refs[0])
        broken = ArchiveReadError("PSF archive entry is corrupt")
        model = TrailDetectorModel.load(default_model_path())
        config = DetectTrailsConfig()
        config.threads = 1
        task = DetectTrailsTask(config=config)
        result = task.run(modified_visit_image(image, psf=broken), model)
        self.assertEqual(result.catalog.meta["psf_sigma"], float(image.summary_stats.psfSigma))
        with self.assertRaisesRegex(ValueError, "PSF that could not be read"):
            task.run(modified_visit_image(image, psf=broken, summary_stats=False), model)
        # Injection needs nJy (its magnitudes are AB).
        ref = self.refs[0]
        self.put("visit_image", modified_visit_image(image, unit=u.adu), "u/test/input_adu", ref.dataId)
        query = f"instrument = 'SimCam' AND detector = {ref.dataId['detector']}"
        proc = pipetask(
            self.repo,
            "InjectTrails.yaml",
            "u/test/input_adu,SimCam/defaults",
            "u/test/inject_adu",
            "-d",
            query,
            check=False,
        )
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("not nJy", proc.stderr + proc.stdout)
        self.assertEqual(self.outputs("u/test/inject_adu", "injected_visit_image"), [])

    def test_catalog_missing_column_and_nan(self):
        """injectTrails refuses a catalog without 'beta' or with NaN lengths; nothing is registered."""
        from lsst.daf.butler import Butler

        ref = self.refs[0]
        query = f"instrument = 'SimCam' AND detector = {ref.dataId['detector']}"
        pipetask(
            self.repo,
            "InjectTrails.yaml#generateTrailCatalog",
            "SimCam/runs/survey,SimCam/defaults",
            "u/test/catalog",
            "-d",
            query,
        )
        catalog = Butler.from_config(self.repo, collections="u/test/catalog").get(
            "trail_injection_catalog", ref.dataId
        )
        for name, bad in (
            ("nobeta", catalog[[c for c in catalog.colnames if c != "beta"]]),
            ("nanlength", catalog.copy()),
        ):
            if name == "nanlength":
                bad["trail_length"][0] = np.nan
            self.put("trail_injection_catalog", bad, f"u/test/bad_{name}", ref.dataId)
            proc = pipetask(
                self.repo,
                "InjectTrails.yaml#injectTrails",
                f"u/test/bad_{name},SimCam/runs/survey,SimCam/defaults",
                f"u/test/inject_{name}",
                "-d",
                query,
                check=False,
            )
            self.assertNotEqual(proc.returncode, 0)
            self.assertIn("beta" if name == "nobeta" else "trail_length", proc.stderr + proc.stdout)
            self.assertEqual(self.outputs(f"u/test/inject_{name}", "injected_visit_image"), [])

    def test_trails_off_the_detector(self):
        """Trails entirely off the detector are flagged NO_OVERLAP and leave the image unchanged."""
        from lsst.daf.butler import Butler
        from lsst.trail_detect.imageutils import pixel_to_sky_function

        ref = self.refs[0]
        image = self.butler.get(ref)
        query = f"instrument = 'SimCam' AND detector = {ref.dataId['detector']}"
        pipetask(
            self.repo,
            "InjectTrails.yaml#generateTrailCatalog",
            "SimCam/runs/survey,SimCam/defaults",
            "u/test/catalog_off",
            "-d",
            query,
        )
        catalog = Butler.from_config(self.repo, collections="u/test/catalog_off").get(
            "trail_injection_catalog", ref.dataId
        )
        ra, dec = pixel_to_sky_function(image)(np.full(len(catalog), 5000.0), np.full(len(catalog), 5000.0))
        catalog["ra"], catalog["dec"] = ra, dec
        for name in ("x", "y"):
            if name in catalog.colnames:
                catalog[name] = 5000.0
        self.put("trail_injection_catalog", catalog, "u/test/off", ref.dataId)
        pipetask(
            self.repo,
            "InjectTrails.yaml#injectTrails",
            "u/test/off,SimCam/runs/survey,SimCam/defaults",
            "u/test/inject_off",
            "-d",
            query,
        )
        butler = Butler.from_config(self.repo, collections="u/test/inject_off")
        truth = butler.get("injected_visit_image_catalog", ref.dataId)
        self.assertTrue(np.all(truth["injection_flag"] != 0))
        injected = butler.get("injected_visit_image", ref.dataId)
        np.testing.assert_array_equal(injected.image.array, image.image.array)

    def test_bad_files_through_trail_detect(self):
        """Truncated shards and corrupt or mismatched model files: clear errors naming the file."""
        from lsst.trail_detect.paths import default_model_path

        work = Path(self.tmp) / "files"
        work.mkdir(exist_ok=True)
        shard = work / "truncated.h5"
        shard.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
        proc = trail_detect(
            "train", str(shard), "--out", str(work / "m.safetensors"), "--epochs", "1", check=False
        )
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("truncated.h5", proc.stderr)
        self.assertFalse((work / "m.safetensors").exists())
        corrupt = work / "corrupt.safetensors"
        data = bytearray(default_model_path().read_bytes())
        data[-1000:] = b"\0" * 1000  # weights changed: the checksum in the metadata no longer matches
        corrupt.write_bytes(bytes(data))
        fits_path = work / "img.fits"
        from astropy.io import fits

        fits.PrimaryHDU(np.random.default_rng(0).normal(0, 1, (64, 64)).astype(np.float32)).writeto(fits_path)
        for model in (corrupt, work / "missing.safetensors"):
            proc = trail_detect(
                "detect-fits",
                str(fits_path),
                "--out",
                str(work / "out"),
                "--model",
                str(model),
                "--psf-fwhm",
                "4",
                check=False,
            )
            self.assertNotEqual(proc.returncode, 0)
            self.assertIn(model.name, proc.stderr)
        proc = trail_detect(
            "import-model", self.repo, str(corrupt), "--run", "u/test/corrupt_model", check=False
        )
        self.assertNotEqual(proc.returncode, 0)
        self.assertEqual(self.outputs("u/test/corrupt_model", "trail_detector_model"), [])

    def test_empty_collections(self):
        """Empty inputs: clear errors, no outputs."""
        from lsst.daf.butler import CollectionType

        self.butler.registry.registerCollection("u/test/empty", CollectionType.RUN)
        proc = trail_detect(
            "export-tiles",
            self.repo,
            os.path.join(self.tmp, "tiles.h5"),
            "--collections",
            "u/test/empty",
            check=False,
        )
        self.assertNotEqual(proc.returncode, 0)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "tiles.h5")))
        proc = trail_detect(
            "report",
            self.repo,
            "--collections",
            "u/test/empty",
            "--out",
            os.path.join(self.tmp, "report"),
            check=False,
        )
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("no trail_detection_metrics", proc.stderr)
        proc = pipetask(
            self.repo, "DetectTrails.yaml", "u/test/empty,SimCam/defaults", "u/test/detect_empty", check=False
        )
        self.assertEqual(self.outputs("u/test/detect_empty", "trail_catalog"), [])

    def test_interrupted_run_resumes(self):
        """A killed pipetask run resumed with --extend-run --skip-existing-in ends with the same outputs."""
        from lsst.daf.butler import Butler
        from lsst.trail_detect.paths import package_dir, pipeline_path

        inputs = "SimCam/runs/survey,SimCam/defaults"
        pipetask(self.repo, "InjectTrails.yaml", inputs, "u/test/whole", "-j", "1")
        cmd = [
            _exe("pipetask"),
            "run",
            "-b",
            self.repo,
            "-i",
            inputs,
            "-o",
            "u/test/killed",
            "-p",
            str(pipeline_path("InjectTrails.yaml")),
            "--register-dataset-types",
            "-j",
            "1",
        ]
        env = dict(os.environ, TRAIL_DETECT_DIR=str(package_dir()))
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            start_new_session=True,
        )
        # Kill it once the first injected image has been written.
        deadline = time.time() + 300
        killed = False
        for line in proc.stdout:
            if "Injected" in line or time.time() > deadline:
                # The first injection has been logged, its outputs not yet all written.
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
        proc.wait(timeout=60)
        self.assertTrue(killed)
        # The killed run left some of the outputs, not all.
        self.assertLess(len(self.outputs("u/test/killed", "injected_visit_image")), len(self.refs))
        pipetask(
            self.repo,
            "InjectTrails.yaml",
            inputs,
            "u/test/killed",
            "-j",
            "1",
            "--extend-run",
            "--skip-existing-in",
            "u/test/killed",
        )
        whole = Butler.from_config(self.repo, collections="u/test/whole")
        resumed = Butler.from_config(self.repo, collections="u/test/killed")
        for ref in self.refs:
            a = whole.get("injected_visit_image_catalog", ref.dataId)
            b = resumed.get("injected_visit_image_catalog", ref.dataId)
            for name in a.colnames:
                np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
            np.testing.assert_array_equal(
                whole.get("injected_visit_image", ref.dataId).image.array,
                resumed.get("injected_visit_image", ref.dataId).image.array,
            )

    def test_parallel_equals_serial(self):
        """-j 2 gives the same catalogs, images and training tiles as -j 1; so does a rerun."""
        from lsst.daf.butler import Butler

        inputs = "SimCam/runs/survey,SimCam/defaults"
        for output, jobs in (("u/test/serial", "1"), ("u/test/parallel", "2"), ("u/test/serial_again", "1")):
            pipetask(self.repo, "InjectTrails.yaml", inputs, output, "-j", jobs)
            pipetask(self.repo, "BuildTrainingSet.yaml", output, output + "_tiles", "-j", jobs)
        reference = Butler.from_config(self.repo, collections="u/test/serial_tiles")
        for other in ("u/test/parallel_tiles", "u/test/serial_again_tiles"):
            butler = Butler.from_config(self.repo, collections=other)
            for ref in self.refs:
                a = reference.get("injected_visit_image_catalog", ref.dataId)
                b = butler.get("injected_visit_image_catalog", ref.dataId)
                for name in a.colnames:
                    np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
                ta = reference.get("trail_training_tiles", ref.dataId)
                tb = butler.get("trail_training_tiles", ref.dataId)
                np.testing.assert_array_equal(ta.inputs, tb.inputs)
                np.testing.assert_array_equal(ta.targets["mask"], tb.targets["mask"])
                np.testing.assert_array_equal(ta.weights, tb.weights)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
