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

"""End-to-end tests of the embedded survey: make-repo, pipetask, Butler queries, physics."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

import lsst.utils.tests

SIZE = 512
VISITS = 2
DETECTORS = 2


def trail_detect_command() -> list[str]:
    """Return the command line of the installed ``trail-detect`` entry point."""
    exe = Path(sys.executable).parent / "trail-detect"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from lsst.trail_detect.cli.trail_detect import main; main()"]


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``trail-detect`` in a subprocess."""
    proc = subprocess.run(
        trail_detect_command() + list(args),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"trail-detect {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


class SurveyRepoMixin:
    """A small survey repository made once per test case with ``trail-detect make-repo``; pipelines on it."""

    @classmethod
    def make_survey(cls, prefix: str = "trail_detect_survey_"):
        from lsst.daf.butler import Butler

        cls.tmp = tempfile.mkdtemp(prefix=prefix)
        cls.repo = os.path.join(cls.tmp, "repo")
        cls.proc = run_cli(
            "make-repo",
            cls.repo,
            "--visits",
            str(VISITS),
            "--detectors",
            str(DETECTORS),
            "--size",
            str(SIZE),
            "--seed",
            "7",
            "-j",
            "2",
        )
        cls.butler = Butler.from_config(cls.repo, collections="SimCam/runs/survey")
        cls.refs = sorted(
            cls.butler.query_datasets("visit_image", limit=None),
            key=lambda r: (r.dataId["visit"], r.dataId["detector"]),
        )

    def run_pipeline(self, name, output, inputs="SimCam/runs/survey,SimCam/defaults", extra=()):
        from lsst.trail_detect.paths import package_dir, pipeline_path

        pipeline = name if os.path.isabs(name) else str(pipeline_path(name))
        exe = Path(sys.executable).parent / "pipetask"
        cmd = [
            str(exe) if exe.exists() else "pipetask",
            "run",
            "-b",
            self.repo,
            "-i",
            inputs,
            "-o",
            output,
            "-p",
            pipeline,
            "--register-dataset-types",
            "-j",
            "2",
            *extra,
        ]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=900,
            env=dict(os.environ, TRAIL_DETECT_DIR=str(package_dir())),
        )
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        from lsst.daf.butler import Butler

        return Butler.from_config(self.repo, collections=output)

    def check_evaluation(self, butler, collection):
        """EndToEnd's detection, matching and evaluation outputs, and the report made from them."""
        self.assertEqual(len(butler.query_datasets("trail_catalog", limit=None)), VISITS * DETECTORS)
        self.assertEqual(len(butler.query_datasets("hough_trail_catalog", limit=None)), VISITS * DETECTORS)
        n_truth = 0
        for ref in butler.query_datasets("trail_matches", limit=None):
            matches = butler.get(ref)
            truth = butler.get("injected_visit_image_catalog", ref.dataId)
            detections = butler.get("trail_catalog", ref.dataId)
            is_truth = matches["row_type"] == "truth"
            self.assertEqual(int(is_truth.sum()), int(np.sum(truth["injection_flag"] == 0)))
            # Every detection is a match, a false positive or a fragment, exactly once.
            self.assertEqual(int(matches["detected"].sum()) + int((~is_truth).sum()), len(detections))
            self.assertTrue(set(matches["stack_status"][is_truth]) <= {"found", "broken", "missed"})
            n_truth += int(is_truth.sum())
        metrics = butler.get("trail_detection_metrics", instrument="SimCam")
        self.assertEqual(metrics["n_truth"], n_truth)
        self.assertEqual(metrics["n_images"], VISITS * DETECTORS)
        for curve in ("cnn", "stack", "hough", "ideal", "ideal_shape"):
            self.assertIn(curve, metrics["completeness_nu_det"])
        # Telling trails from stars can only cost the ideal detector completeness.
        for shaped, ideal in zip(
            metrics["completeness_nu_det"]["ideal_shape"]["completeness"],
            metrics["completeness_nu_det"]["ideal"]["completeness"],
        ):
            if ideal is not None and np.isfinite(ideal):
                self.assertLessEqual(shaped, ideal + 1e-12)
        self.assertTrue(metrics["goals"])
        out = os.path.join(self.tmp, "report")
        proc = run_cli("report", self.repo, "--collections", collection, "--out", out)
        self.assertIn("2-5", proc.stdout)
        self.assertIn("detectTrails: median", proc.stdout)
        page = Path(out, "index.html").read_text()
        self.assertIn("data:image/png;base64,", page)
        self.assertIn("Goals", page)


class SurveyRepoTestCase(SurveyRepoMixin, lsst.utils.tests.TestCase):
    """Build a small survey repository once with ``trail-detect make-repo`` and check it."""

    @classmethod
    def setUpClass(cls):
        cls.make_survey()

    @classmethod
    def tearDownClass(cls):
        del cls.butler
        cls._injected = None
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def load(self, ref):
        return (
            self.butler.get(ref),
            self.butler.get("visit_image_truth", ref.dataId),
            self.butler.get("source", ref.dataId),
        )

    def test_outputs_and_records(self):
        """Every (visit, detector) has its image, truth and sources; records are complete."""
        self.assertEqual(len(self.refs), VISITS * DETECTORS)
        self.assertIn("Outputs are in collection SimCam/runs/survey", self.proc.stdout)
        for name in ("visit_image_truth", "source", "simulated_visit_image"):
            self.assertEqual(len(self.butler.query_datasets(name, limit=None)), VISITS * DETECTORS)
        self.assertEqual(len(self.butler.query_datasets("visit_conditions", limit=None)), VISITS)
        self.assertGreater(len(self.butler.query_datasets("gaia_dr3_stars", limit=None)), 0)
        records = list(self.butler.query_dimension_records("visit_detector_region"))
        # Regions exist for every detector of the raft; the simulated ones are a subset.
        self.assertEqual(len(records), VISITS * 9)
        import lsst.sphgeom as sg

        for ref in self.refs:
            image = self.butler.get(ref)
            self.assertEqual(type(image).__name__, "VisitImage")
            self.assertEqual(str(image.image.unit), "nJy")
            self.assertEqual(image.image.array.shape, (SIZE, SIZE))
            centre = image.sky_projection.pixel_to_sky(_xy(SIZE / 2, SIZE / 2))
            region = [
                r.region
                for r in records
                if r.dataId["visit"] == ref.dataId["visit"] and r.dataId["detector"] == ref.dataId["detector"]
            ][0]
            self.assertTrue(
                region.contains(sg.UnitVector3d(sg.LonLat.fromDegrees(centre.ra.deg, centre.dec.deg)))
            )
            visit = list(self.butler.query_dimension_records("visit", data_id=ref.dataId))[0]
            self.assertTrue(
                visit.region.contains(sg.UnitVector3d(sg.LonLat.fromDegrees(centre.ra.deg, centre.dec.deg)))
            )
            self.assertIsNotNone(visit.timespan)

    def test_star_fluxes(self):
        """Large-aperture fluxes of isolated bright stars equal their true fluxes."""
        ratios = []
        for ref in self.refs:
            image, truth, _ = self.load(ref)
            arr = image.image.array
            bad = _planes(image, "SATURATED", "BAD", "COSMIC_RAY", "NO_DATA", "SUSPECT", "INTERPOLATED")
            sel = _isolated_stars(truth, SIZE, radius=20.0, nu_min=100.0)
            r = 15.0
            yy, xx = np.mgrid[0:SIZE, 0:SIZE]
            for row in truth[sel]:
                ap = (xx - row["x"]) ** 2 + (yy - row["y"]) ** 2 < r**2
                if bad[ap].any():
                    continue
                ratios.append(arr[ap].sum() / row["flux"])
        self.assertGreater(len(ratios), 5)
        # A 15 px (3") radius holds ~98-99% of a Kolmogorov/Moffat PSF.
        self.assertFloatsAlmostEqual(float(np.median(ratios)), 0.985, atol=0.02)

    def test_noise_normalization(self):
        """Source-free pixels divided by sqrt(variance) have unit width."""
        from astropy.stats import mad_std

        for ref in self.refs:
            image, _, _ = self.load(ref)
            good = ~_planes(
                image, "DETECTED", "SATURATED", "BAD", "COSMIC_RAY", "NO_DATA", "INTERPOLATED", "SUSPECT"
            )
            z = image.image.array[good] / np.sqrt(image.variance.array[good])
            self.assertFloatsAlmostEqual(float(mad_std(z)), 1.0, atol=0.05)
            self.assertLess(abs(float(np.median(z))), 0.1)

    def test_wcs_roundtrip(self):
        """Pixel -> sky -> pixel is exact; truth stars sit where their RA/Dec project."""
        from lsst.trail_detect.simulation.camera import detector_wcs

        for ref in self.refs:
            image, truth, _ = self.load(ref)
            proj = image.sky_projection
            x = np.array([0.0, 100.5, SIZE - 1.0])
            y = np.array([3.0, 250.25, SIZE - 1.0])
            sky = proj.pixel_to_sky(_xy(x, y))
            back = proj.sky_to_pixel(sky)
            np.testing.assert_allclose(back.x, x, atol=1e-6)
            np.testing.assert_allclose(back.y, y, atol=1e-6)
            cond = self.butler.get("visit_conditions", ref.dataId)
            wcs = detector_wcs(
                cond["boresight_ra"],
                cond["boresight_dec"],
                cond["rotation_deg"],
                ref.dataId["detector"],
                SIZE,
            )
            stars = truth[(truth["type"] == "star") & truth["on_detector"]]
            px, py = wcs.wcs_world2pix(np.asarray(stars["ra"]), np.asarray(stars["dec"]), 0)
            np.testing.assert_allclose(px, stars["x"], atol=1e-4)
            sky2 = proj.pixel_to_sky(_xy(np.asarray(stars["x"]), np.asarray(stars["y"])))
            sep = sky2.separation(_skycoord(stars["ra"], stars["dec"])).arcsec
            self.assertLess(float(np.max(sep)), 1e-3)
            # The pixel scale is 0.2"/px.
            a = proj.pixel_to_sky(_xy(0.0, 0.0))
            b = proj.pixel_to_sky(_xy(100.0, 0.0))
            self.assertFloatsAlmostEqual(a.separation(b).arcsec / 100.0, 0.2, rtol=1e-3)

    def test_mask_planes(self):
        """Mask planes mark what they claim."""
        cond = self.butler.get("visit_conditions", self.refs[0].dataId)
        for ref in self.refs:
            image, truth, sources = self.load(ref)
            arr, var = image.image.array, image.variance.array
            sat = image.mask.get("SATURATED")
            if sat.any():
                # Saturated pixels sit at the full well (minus the subtracted sky), far above the noise.
                level = cond["full_well"] / cond["gain"] * image.metadata["NJY_PER_ADU"]
                self.assertGreater(float(np.median(arr[sat])), 0.5 * level)
                sat_stars = truth[truth["saturated"]]
                self.assertGreater(len(sat_stars), 0)
            no_data = image.mask.get("NO_DATA")
            if no_data.any():
                self.assertTrue(np.all(arr[no_data] == 0.0))
                self.assertTrue(np.all(np.isnan(var[no_data])))
            self.assertTrue(np.all(np.isfinite(var[~no_data])))
            cr = image.mask.get("COSMIC_RAY")
            interp = image.mask.get("INTERPOLATED")
            self.assertTrue(np.all(interp[cr]))
            crs = truth[truth["type"] == "cosmic_ray"]
            if cr.any():
                masked = crs[crs["masked"]]
                self.assertGreater(len(masked), 0)
                # Every masked pixel is within a few pixels of a masked cosmic ray's track.
                ys, xs = np.nonzero(cr)
                d = np.min([_segment_distance(xs, ys, row) for row in masked], axis=0)
                self.assertLess(float(np.max(d)), 3.0)
            bad = image.mask.get("BAD")
            for row in truth[(truth["type"] == "bad_column") & truth["masked"]]:
                self.assertTrue(bad[int(row["y_start"]) : int(row["y_end"]) + 1, int(row["x"])].all())
            for row in truth[(truth["type"] == "hot_pixel") & truth["masked"]]:
                self.assertTrue(bad[int(row["y"]), int(row["x"])])
            # DETECTED covers every source peak; DETECTION_EDGE is a border.
            detected = image.mask.get("DETECTED")
            if len(sources):
                self.assertTrue(
                    np.all(detected[np.round(sources["y"]).astype(int), np.round(sources["x"]).astype(int)])
                )
            edge = image.mask.get("DETECTION_EDGE")
            self.assertTrue(
                edge[0].all() and edge[-1].all() and edge[:, 0].all() and not edge[SIZE // 2, SIZE // 2]
            )

    def test_source_catalog(self):
        """`source` finds bright truth stars and misses faint ones as a 5-sigma threshold should."""
        from scipy.spatial import cKDTree

        bright_found, faint_found, n_bright, n_faint = 0, 0, 0, 0
        for ref in self.refs:
            image, truth, sources = self.load(ref)
            for col in (
                "coord_ra",
                "coord_dec",
                "x",
                "y",
                "psfFlux",
                "psfFluxErr",
                "extendedness",
                "pixelFlags_saturated",
                "pixelFlags_edge",
            ):
                self.assertIn(col, sources.colnames)
            self.assertEqual(str(sources["coord_ra"].unit), "deg")
            tree = cKDTree(np.stack([sources["x"], sources["y"]], axis=1))
            stars = truth[(truth["type"] == "star") & truth["on_detector"] & ~truth["saturated"]]
            inner = (
                (stars["x"] > 10) & (stars["x"] < SIZE - 10) & (stars["y"] > 10) & (stars["y"] < SIZE - 10)
            )
            stars = stars[inner]
            dist, _ = tree.query(np.stack([stars["x"], stars["y"]], axis=1))
            bright = stars["nu_psf"] > 15
            faint = stars["nu_psf"] < 2
            n_bright += int(bright.sum())
            n_faint += int(faint.sum())
            bright_found += int((dist[bright] < 1.5).sum())
            faint_found += int((dist[faint] < 1.5).sum())
            # Coordinates agree with the image's WCS.
            sky = image.sky_projection.pixel_to_sky(_xy(np.asarray(sources["x"]), np.asarray(sources["y"])))
            np.testing.assert_allclose(sky.ra.deg, sources["coord_ra"], atol=1e-7)
        self.assertGreater(n_bright, 10)
        self.assertGreater(bright_found / n_bright, 0.95)
        # Extendedness separates bright stars from resolved galaxies.
        star_ext, gal_ext = [], []
        for ref in self.refs:
            truth, sources = (
                self.butler.get("visit_image_truth", ref.dataId),
                self.butler.get("source", ref.dataId),
            )
            tree = cKDTree(np.stack([truth["x"], truth["y"]], axis=1))
            dist, idx = tree.query(np.stack([sources["x"], sources["y"]], axis=1))
            kind = np.asarray(truth["type"])[idx]
            bright = (dist < 1.5) & (np.asarray(sources["psfFlux_snr"]) > 30)
            star_ext.extend(np.asarray(sources["extendedness"])[bright & (kind == "star")])
            big = np.asarray(truth["half_light_radius"])[idx] > 0.8
            gal_ext.extend(np.asarray(sources["extendedness"])[bright & (kind == "galaxy") & big])
        self.assertGreater(len(star_ext), 10)
        self.assertLess(np.mean(star_ext), 0.2)
        if len(gal_ext) >= 3:
            self.assertGreater(np.mean(gal_ext), 0.8)
        self.assertGreater(n_faint, 10)
        self.assertLess(faint_found / n_faint, 0.1)

    def injected(self):
        """Run InjectTrails once for the tests that need injected images; return its Butler."""
        cls = type(self)
        if getattr(cls, "_injected", None) is None:
            cls._injected = self.run_pipeline("InjectTrails.yaml", "u/test/inject")
        return cls._injected

    def test_training_set_pipeline(self):
        """pipetask run of BuildTrainingSet; shards read back, exported and loaded by a DataLoader."""
        import torch

        from lsst.trail_detect.imageutils import mask_planes
        from lsst.trail_detect.tiles.datasets import TileDataset
        from lsst.trail_detect.tiles.normalization import Normalization, apply_normalization

        self.injected()
        butler = self.run_pipeline("BuildTrainingSet.yaml", "u/test/tiles", inputs="u/test/inject")
        refs = butler.query_datasets("trail_training_tiles", limit=None)
        self.assertEqual(len(refs), VISITS * DETECTORS)
        splits = {}
        for ref in refs:
            shard = butler.get(ref)
            key = f"{ref.dataId['visit']}:{ref.dataId['detector']}"
            self.assertEqual(list(shard.splits), [key])
            splits[key] = shard.splits[key]
            image = butler.get("injected_visit_image", ref.dataId)
            label = butler.get("injected_trail_mask", ref.dataId).get("TRAIL")
            planes = mask_planes(image)
            bad = planes["NO_DATA"] | planes["BAD"] | planes["SATURATED"]
            norm = Normalization.from_json(shard.normalization[key])
            expected = apply_normalization(image.image.array, norm, bad=bad)
            for k in range(len(shard)):
                x0, y0 = int(shard.tiles["x0"][k]), int(shard.tiles["y0"][k])
                np.testing.assert_array_equal(shard.inputs[k, 0], expected[y0 : y0 + 256, x0 : x0 + 256])
                np.testing.assert_array_equal(shard.targets["mask"][k], label[y0 : y0 + 256, x0 : x0 + 256])
            # Every label pixel is in some kept tile.
            covered = np.zeros(label.shape, bool)
            for x0, y0 in zip(shard.tiles["x0"], shard.tiles["y0"]):
                covered[y0 : y0 + 256, x0 : x0 + 256] = True
            self.assertTrue(covered[label].all())
            self.assertGreater(np.mean(shard.tiles["has_trail"]), 0.5)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "tiles.h5")
            proc = run_cli("export-tiles", self.repo, out, "--collections", "u/test/tiles")
            self.assertIn("Wrote", proc.stdout)
            for split in set(splits.values()):
                dataset = TileDataset([out], split=split)
                expected_n = sum(
                    len(butler.get(r))
                    for r in refs
                    if splits[f"{r.dataId['visit']}:{r.dataId['detector']}"] == split
                )
                self.assertEqual(len(dataset), expected_n)
                loader = torch.utils.data.DataLoader(
                    dataset, batch_size=4, num_workers=2, multiprocessing_context="spawn"
                )
                seen = 0
                for batch in loader:
                    self.assertEqual(tuple(batch["image"].shape[1:]), (1, 256, 256))
                    self.assertEqual(tuple(batch["mask"].shape[1:]), (256, 256))
                    seen += batch["image"].shape[0]
                self.assertEqual(seen, expected_n)
        del butler

    def test_training_pipeline(self):
        """pipetask run of TrainTrailDetector on a tiny repo: the Butler returns both models."""
        from lsst.trail_detect.tiles.tiling import assign_split

        self.injected()
        pairs = [(ref.dataId["visit"], ref.dataId["detector"]) for ref in self.refs]
        fractions = (0.5, 0.5, 0.0)
        # Split seeds that put both train and validation data in these few images.
        trail_seed = next(
            s
            for s in range(200)
            if {"train", "validation"} <= {assign_split(v, d, fractions, s) for v, d in pairs}
        )
        star_pairs = [p for p in pairs if p[1] == 0]
        star_seed = next(
            s
            for s in range(200)
            if {"train", "validation"} <= {assign_split(v, d, fractions, s) for v, d in star_pairs}
        )
        self.run_pipeline(
            "BuildTrainingSet.yaml",
            "u/test/tiles_split",
            inputs="u/test/inject",
            extra=[
                "-c",
                "buildTrailTiles:split_fractions=[0.5,0.5,0.0]",
                "-c",
                f"buildTrailTiles:split_seed={trail_seed}",
                "-c",
                "buildTrailTiles:background_fraction=0.3",
            ],
        )
        self.run_pipeline(
            "StarPretraining.yaml",
            "u/test/stars_split",
            inputs="SimCam/defaults",
            extra=[
                "-d",
                "instrument = 'SimCam' AND detector = 0",
                "-c",
                "buildStarTiles:split_fractions=[0.5,0.5,0.0]",
                "-c",
                f"buildStarTiles:split_seed={star_seed}",
            ],
        )
        with tempfile.TemporaryDirectory() as tmp:
            tiny = Path(tmp, "tiny.py")
            tiny.write_text(
                "config.epochs = 1\nconfig.max_steps_per_epoch = 2\nconfig.batch_size = 2\n"
                "config.threads = 1\n"
            )
            butler = self.run_pipeline(
                "TrainTrailDetector.yaml",
                "u/test/models",
                inputs="u/test/tiles_split,u/test/stars_split",
                extra=["-C", f"trainStarDetector:{tiny}", "-C", f"trainTrailDetector:{tiny}"],
            )
        star = butler.get("star_detector_model")
        trail = butler.get("trail_detector_model")
        self.assertEqual((star.kind, trail.kind), ("star", "trail"))
        self.assertTrue(0.0 < trail.threshold < 1.0)
        self.assertEqual(trail.metadata["normalization"]["method"], "robust")
        self.assertTrue(trail.metadata["training"]["pretrained_encoder"])
        self.assertTrue(
            any(run.startswith("u/test/tiles_split") for run in trail.metadata["provenance"]["input_runs"])
        )
        del butler

    def test_default_model_in_repo(self):
        """make-repo puts the shipped default model in the defaults collection."""
        from lsst.trail_detect.paths import default_model_path

        if not default_model_path().exists():
            self.skipTest("no shipped default model in this checkout")
        model = self.butler.get("trail_detector_model", collections="SimCam/defaults")
        self.assertEqual(model.kind, "trail")
        self.assertGreater(model.n_parameters, 1000)

    def test_star_pretraining_pipeline(self):
        """pipetask run of StarPretraining: star fields and heatmap tiles whose peaks decode to the truth."""
        from lsst.trail_detect.tiles.star_targets import decode_star_targets

        butler = self.run_pipeline(
            "StarPretraining.yaml",
            "u/test/stars",
            inputs="SimCam/defaults",
            extra=["-d", "instrument = 'SimCam' AND detector = 0"],
        )
        refs = butler.query_datasets("star_training_tiles", limit=None)
        self.assertEqual(len(refs), VISITS)
        for ref in refs:
            shard = butler.get(ref)
            truth = butler.get("star_field_truth", ref.dataId)
            image = butler.get("star_field_image", ref.dataId)
            self.assertEqual(shard.kind, "star")
            self.assertGreater(image.metadata["STAR_DENSITY"], 1.0)
            stars = truth[(truth["type"] == "star") & (truth["nu_psf"] >= 3.0)]
            self.assertGreater(len(stars), 20)
            for k in range(len(shard)):
                x0, y0 = int(shard.tiles["x0"][k]), int(shard.tiles["y0"][k])
                x, y, _ = decode_star_targets(
                    shard.targets["heatmap"][k],
                    shard.targets["offset"][k],
                    threshold=0.99,
                    window=1,
                    x0=x0,
                    y0=y0,
                )
                self.assertEqual(len(x), int(shard.tiles["n_stars"][k]))
                if len(x):
                    # Each decoded peak is a truth star, to float32 precision.
                    d = np.min(
                        np.hypot(np.asarray(stars["x"])[:, None] - x, np.asarray(stars["y"])[:, None] - y),
                        axis=0,
                    )
                    self.assertLess(float(np.max(d)), 1e-4)
        del butler

    def test_detect_trails_pipeline(self):
        """pipetask run of DetectTrails on injected images with the default model from make-repo."""
        from lsst.trail_detect.detection.detect import TRAIL_CATALOG_COLUMNS
        from lsst.trail_detect.imageutils import pixel_to_sky_function

        self.injected()
        butler = self.run_pipeline(
            "DetectTrails.yaml",
            "u/test/detect",
            inputs="u/test/inject,SimCam/defaults",
            extra=(
                "-c",
                "detectTrails:connections.exposure=injected_visit_image",
                "-c",
                "detectTrails:threads=1",
            ),
        )
        refs = butler.query_datasets("trail_catalog", limit=None)
        self.assertEqual(len(refs), VISITS * DETECTORS)
        for ref in refs:
            catalog = butler.get(ref)
            self.assertEqual(set(catalog.colnames), set(TRAIL_CATALOG_COLUMNS) - {"rejected"})
            image = butler.get("injected_visit_image", ref.dataId)
            mask = butler.get("trail_mask", ref.dataId)
            probability = butler.get("trail_probability", ref.dataId)
            self.assertEqual(probability.array.shape, image.image.array.shape)
            self.assertTrue(np.all((probability.array >= 0) & (probability.array <= 1)))
            trail_pixels = mask.get("TRAIL")
            self.assertEqual(trail_pixels.any(), len(catalog) > 0)
            if len(catalog):
                ra, dec = pixel_to_sky_function(image)(catalog["x_start"], catalog["y_start"])
                np.testing.assert_allclose(catalog["ra_start"], ra, atol=1e-9)
                np.testing.assert_allclose(catalog["dec_start"], dec, atol=1e-9)
                self.assertTrue(np.all((catalog["beta"] >= 0) & (catalog["beta"] < 180)))
                self.assertTrue(np.all(catalog["score"] >= 0) and np.all(catalog["score"] <= 1))
                # Every trail's centre lies in its mask.
                cx = np.clip(np.rint(catalog["x"]).astype(int), 0, SIZE - 1)
                cy = np.clip(np.rint(catalog["y"]).astype(int), 0, SIZE - 1)
                self.assertTrue(trail_pixels[cy, cx].all())
        metadata = butler.get("detectTrails_metadata", refs[0].dataId)
        self.assertIn("seconds_inference", metadata["detectTrails"])
        del butler

    def test_inject_trails_pipeline(self):
        """pipetask run of InjectTrails and EndToEnd; outputs read back through the Butler."""
        for name, output, strict in (
            ("InjectTrails.yaml", "u/test/inject", True),
            ("EndToEnd.yaml", "u/test/end_to_end", False),
        ):
            butler = self.injected() if name == "InjectTrails.yaml" else self.run_pipeline(name, output)
            refs = butler.query_datasets("injected_visit_image", limit=None)
            self.assertEqual(len(refs), VISITS * DETECTORS)
            if name == "EndToEnd.yaml":  # which also searches for trails and evaluates the search
                self.check_evaluation(butler, output)
            ratios = []
            for ref in refs:
                injected = butler.get(ref)
                original = self.butler.get("visit_image", ref.dataId)
                catalog = butler.get("injected_visit_image_catalog", ref.dataId)
                requested = butler.get("trail_injection_catalog", ref.dataId)
                truth_mask = butler.get("injected_trail_mask", ref.dataId).get("TRAIL")
                self.assertEqual(len(catalog), len(requested))
                np.testing.assert_array_equal(catalog["injection_id"], requested["injection_id"])
                changed = injected.image.array != original.image.array
                in_box = injected.mask.get("INJECTED")
                self.assertTrue(in_box[changed].all())
                self.assertTrue(in_box[truth_mask].all())
                self.assertTrue(np.all(injected.variance.array[changed] >= original.variance.array[changed]))
                ends = np.stack([catalog["x_start"], catalog["x_end"], catalog["y_start"], catalog["y_end"]])
                inside = np.all((ends > 15) & (ends < SIZE - 16), axis=0)  # PSF wings on the detector too
                ok = (catalog["injection_flag"] == 0) & inside
                np.testing.assert_allclose(catalog["flux_drawn"][ok], catalog["flux"][ok], rtol=0.02)
                ratios.extend(np.asarray(catalog["nu_det"][ok] / catalog["target_nu_det"][ok]))
                self.assertTrue(injected.metadata["HAS_SIMULATED_CONTENT"])
            # With the model PSF the measured nu_det is the target; the true PSF spreads it a little.
            self.assertFloatsAlmostEqual(float(np.median(ratios)), 1.0, atol=0.05 if strict else 0.25)
        # The same catalogs, regrouped by (htm7, band) for lsst.source.injection.
        import lsst.sphgeom as sg
        from lsst.trail_detect.paths import package_dir

        butler = self.run_pipeline(
            str(package_dir() / "pipelines/_ingredients/trail_catalog_shards.yaml"),
            "u/test/shards",
            inputs="u/test/inject",
        )
        shards = butler.query_datasets("injection_catalog", limit=None)
        rows = 0
        for ref in shards:
            table = butler.get(ref)
            self.assertNotIn("x", table.colnames)
            htm = sg.HtmPixelization(7)
            for ra, dec in zip(table["ra"], table["dec"]):
                self.assertEqual(
                    htm.index(sg.UnitVector3d(sg.LonLat.fromDegrees(ra, dec))), ref.dataId["htm7"]
                )
            rows += len(table)
        n_trails = sum(
            len(butler.get("trail_injection_catalog", ref.dataId))
            for ref in butler.query_datasets("trail_injection_catalog", limit=None)
        )
        self.assertEqual(rows, n_trails)
        del butler


class BadInputTestCase(lsst.utils.tests.TestCase):
    """make-repo refuses bad input clearly and leaves nothing half-made."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="trail_detect_bad_")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_non_empty_repo_path(self):
        repo = Path(self.tmp, "repo")
        repo.mkdir()
        (repo / "precious.txt").write_text("keep me")
        proc = run_cli(
            "make-repo", str(repo), "--visits", "1", "--detectors", "1", "--size", "64", check=False
        )
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("is not empty", proc.stderr)
        self.assertEqual(sorted(p.name for p in repo.iterdir()), ["precious.txt"])
        self.assertEqual((repo / "precious.txt").read_text(), "keep me")

    def test_unreadable_catalog(self):
        bad = Path(self.tmp, "stars.fits")
        bad.write_bytes(b"this is not a FITS file")
        repo = Path(self.tmp, "repo")
        proc = run_cli("make-repo", str(repo), "--catalog", str(bad), "--size", "64", check=False)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("stars.fits", proc.stderr)
        self.assertFalse(repo.exists())

    def test_catalog_without_columns(self):
        from astropy.table import Table

        path = Path(self.tmp, "nocols.ecsv")
        Table({"flux": [1.0, 2.0], "name": ["a", "b"]}).write(path)
        repo = Path(self.tmp, "repo")
        proc = run_cli("make-repo", str(repo), "--catalog", str(path), "--size", "64", check=False)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("nocols.ecsv", proc.stderr)
        self.assertIn("flux", proc.stderr)  # names the columns it found
        self.assertFalse(repo.exists())

    def test_gaia_unreachable(self):
        repo = Path(self.tmp, "repo")
        env_proc = subprocess.run(
            trail_detect_command()
            + [
                "make-repo",
                str(repo),
                "--catalog",
                "gaia",
                "--size",
                "64",
                "--visits",
                "1",
                "--detectors",
                "1",
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=600,
            env=dict(os.environ, HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9"),
        )
        self.assertNotEqual(env_proc.returncode, 0)
        self.assertIn("Gaia", env_proc.stderr)
        self.assertNotIn("Traceback", env_proc.stderr)
        self.assertFalse(repo.exists())


class CatalogCommandsTestCase(lsst.utils.tests.TestCase):
    """ingest-catalog and fetch-gaia from the command line."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="trail_detect_cat_")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_ingest_catalog(self):
        from lsst.daf.butler import Butler
        from lsst.trail_detect.simulation.gaia import synthetic_gaia_catalog, write_star_catalog

        repo = Path(self.tmp, "repo")
        Butler.makeRepo(str(repo))
        stars = synthetic_gaia_catalog(150.0, 2.0, 0.3, 19.0, seed=4)
        path = write_star_catalog(stars, Path(self.tmp, "stars.ecsv"))
        proc = run_cli("ingest-catalog", str(repo), str(path), "--run", "refcats/test")
        self.assertIn(f"Ingested {len(stars)} stars", proc.stdout)
        butler = Butler.from_config(str(repo), collections="refcats/test")
        refs = butler.query_datasets("gaia_dr3_stars", limit=None)
        self.assertGreater(len(refs), 1)
        self.assertEqual(sum(len(butler.get(ref)) for ref in refs), len(stars))
        del butler

    def test_fetch_gaia_offline(self):
        out = Path(self.tmp, "gaia.fits")
        proc = subprocess.run(
            trail_detect_command()
            + ["fetch-gaia", "--ra", "95", "--dec", "-25", "--radius", "0.1", str(out)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=600,
            env=dict(os.environ, HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9"),
        )
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("Gaia", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertFalse(out.exists())


class FailedPipetaskTestCase(lsst.utils.tests.TestCase):
    """A failure after the repository was created removes everything make-repo wrote."""

    def test_cleanup(self):
        from unittest import mock

        from lsst.trail_detect.simulation import make_repo as mr

        with tempfile.TemporaryDirectory() as tmp:
            for existed in (False, True):
                repo = Path(tmp, f"repo{existed}")
                if existed:
                    repo.mkdir()
                with mock.patch.object(mr, "run_pipetask", side_effect=mr.MakeRepoError("pipetask failed")):
                    with self.assertRaisesRegex(mr.MakeRepoError, "pipetask failed"):
                        mr.make_repo(repo, visits=1, detectors=1, size=64, seed=3)
                # A directory the user made stays, empty; one make-repo made is gone.
                self.assertEqual(repo.exists(), existed)
                if existed:
                    self.assertEqual(list(repo.iterdir()), [])


def _xy(x, y):
    from lsst.images import XY

    return XY(x, y)


def _skycoord(ra, dec):
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    return SkyCoord(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg)


def _planes(image, *names):
    out = np.zeros(image.image.array.shape, dtype=bool)
    for name in names:
        out |= image.mask.get(name)
    return out


def _isolated_stars(truth, size, radius, nu_min):
    """Select unsaturated stars with no other truth object within ``radius`` pixels."""
    from scipy.spatial import cKDTree

    pts = np.stack([truth["x"], truth["y"]], axis=1)
    tree = cKDTree(pts)
    counts = np.array([len(tree.query_ball_point(p, radius)) for p in pts])
    return (
        (truth["type"] == "star")
        & ~truth["saturated"]
        & (truth["nu_psf"] > nu_min)
        & (counts == 1)
        & (truth["x"] > radius)
        & (truth["x"] < size - radius)
        & (truth["y"] > radius)
        & (truth["y"] < size - radius)
    )


def _segment_distance(xs, ys, row):
    """Distance of pixels from a truth segment."""
    x0, y0, x1, y1 = row["x_start"], row["y_start"], row["x_end"], row["y_end"]
    if row["subtype"] == "worm":
        # Curled electron tracks: within their random-walk radius of the midpoint.
        return np.maximum(np.hypot(xs - 0.5 * (x0 + x1), ys - 0.5 * (y0 + y1)) - 13.0, 0.0)
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / length2, 0, 1) if length2 > 0 else np.zeros(len(xs))
    return np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy))


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
