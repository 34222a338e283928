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

"""Normalization, tiling, splits and HDF5 shards."""

import os
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
from astropy.table import Table

import lsst.utils.tests
from lsst.trail_detect.tiles.normalization import (
    Normalization,
    apply_normalization,
    fit_normalization,
    robust_stats,
)
from lsst.trail_detect.tiles.shard import TileShard, concatenate_shards, read_shard, write_shard
from lsst.trail_detect.tiles.tiling import (
    assign_split,
    build_trail_tiles,
    cut_tiles,
    reassemble,
    tile_origins,
    weight_map,
)


def make_shard(n=5, visit=1, detector=2, split="train", tile=32, kind="trail", seed=0):
    rng = np.random.default_rng(seed)
    targets = {"mask": rng.integers(0, 2, (n, tile, tile)).astype(np.uint8)}
    if kind == "star":
        targets = {
            "heatmap": rng.uniform(size=(n, tile, tile)).astype(np.float32),
            "offset": rng.uniform(-0.5, 0.5, (n, 2, tile, tile)).astype(np.float32),
            "offset_mask": rng.integers(0, 2, (n, tile, tile)).astype(np.uint8),
        }
    return TileShard(
        kind=kind,
        inputs=rng.normal(size=(n, 1, tile, tile)).astype(np.float32),
        weights=rng.uniform(size=(n, tile, tile)).astype(np.float32),
        targets=targets,
        tiles={
            "visit": np.full(n, visit),
            "detector": np.full(n, detector),
            "x0": np.arange(n, dtype=np.int32),
            "y0": np.zeros(n, np.int32),
            "split": np.full(n, split),
            "max_nu_det": rng.uniform(size=n),
        },
        tile_size=tile,
        overlap=4,
        normalization={f"{visit}:{detector}": Normalization("robust", 1.0, 2.0).__dict__},
        provenance={"seed": seed},
        splits={f"{visit}:{detector}": split},
    )


class NormalizationTestCase(lsst.utils.tests.TestCase):
    def test_robust_stats_on_known_input(self):
        """Sigma-clipped median and 1.4826 MAD recover the Gaussian's centre and width despite sources."""
        rng = np.random.default_rng(1)
        data = rng.normal(100.0, 7.0, 400_000)
        data[:8000] += rng.exponential(500.0, 8000)  # 2% bright "sources"
        data[8000:8100] = np.nan
        median, scale = robust_stats(data)
        self.assertFloatsAlmostEqual(median, 100.0, atol=0.1)
        self.assertFloatsAlmostEqual(scale, 7.0, rtol=0.02)

    def test_apply(self):
        rng = np.random.default_rng(2)
        image = rng.normal(50.0, 4.0, (300, 300)).astype(np.float32)
        bad = np.zeros(image.shape, bool)
        bad[10, 10] = True
        image[20, 20] = np.nan
        image[30, 30] = 1e6
        norm = fit_normalization(image, bad, method="robust", subsample=1)
        out = apply_normalization(image, norm, bad=bad)
        self.assertFloatsAlmostEqual(float(np.median(out)), 0.0, atol=0.02)
        self.assertFloatsAlmostEqual(float(np.std(out[out < 40])), 1.0, rtol=0.02)
        self.assertEqual(out[10, 10], 0.0)
        self.assertEqual(out[20, 20], 0.0)
        self.assertEqual(out[30, 30], norm.clip_max)
        variance = np.full(image.shape, 16.0, np.float32)
        out_v = apply_normalization(image - 50.0, Normalization("variance"), variance=variance)
        self.assertFloatsAlmostEqual(float(np.std(out_v[np.abs(out_v) < 10])), 1.0, rtol=0.02)
        self.assertEqual(Normalization.from_json(norm.to_json()), norm)
        with self.assertRaises(ValueError):
            Normalization("unknown")
        with self.assertRaises(ValueError):
            apply_normalization(image, Normalization("variance"))


class TilingTestCase(lsst.utils.tests.TestCase):
    def test_cover_and_reassemble(self):
        """Tiles cover every pixel and put back together give the original image."""
        rng = np.random.default_rng(3)
        for shape, tile, overlap in (((300, 437), 128, 16), ((256, 256), 256, 32), ((100, 90), 128, 8)):
            image = rng.normal(size=shape)
            origins = [
                (int(y), int(x))
                for y in tile_origins(shape[0], tile, overlap)
                for x in tile_origins(shape[1], tile, overlap)
            ]
            tiles = cut_tiles(image, origins, tile)
            self.assertEqual(tiles.shape[1:], (tile, tile))
            np.testing.assert_allclose(reassemble(tiles, origins, shape), image, rtol=0, atol=1e-12)
            steps = np.diff(tile_origins(shape[1], tile, overlap))
            self.assertTrue(np.all(steps <= tile - overlap))
        with self.assertRaises(ValueError):
            tile_origins(100, 32, 32)

    def test_splits(self):
        pairs = [(v, d) for v in range(200) for d in range(9)]
        splits = [assign_split(v, d, (0.7, 0.15, 0.15), seed=4) for v, d in pairs]
        self.assertEqual(splits, [assign_split(v, d, (0.7, 0.15, 0.15), seed=4) for v, d in pairs])
        fractions = [splits.count(s) / len(splits) for s in ("train", "validation", "test")]
        np.testing.assert_allclose(fractions, [0.7, 0.15, 0.15], atol=0.03)
        self.assertNotEqual(splits, [assign_split(v, d, (0.7, 0.15, 0.15), seed=5) for v, d in pairs])
        with self.assertRaises(ValueError):
            assign_split(1, 1, (0.5, 0.2, 0.2))

    def test_weight_map(self):
        bad = np.zeros((8, 8), bool)
        bad[0] = True
        detected = np.zeros((8, 8), bool)
        detected[2:5, 2:5] = True
        label = np.zeros((8, 8), bool)
        label[3, :] = True
        w = weight_map((8, 8), bad=bad, detected=detected, label=label, detected_weight=0.25)
        self.assertEqual(w[0, 3], 0.0)
        self.assertEqual(w[2, 2], 0.25)
        self.assertEqual(w[3, 3], 1.0)
        self.assertEqual(w[7, 7], 1.0)

    def test_build_trail_tiles(self):
        """Every trail tile is kept with its label, metadata and the stack's verdict on its trail."""
        from test_injection import SIGMA, gaussian_psf_at, trail_table

        from lsst.trail_detect.injection.render import inject_trails

        rng = np.random.default_rng(5)
        size = 300
        image = rng.normal(0, 10.0, (size, size)).astype(np.float32)
        var = np.full((size, size), 100.0, np.float32)
        catalog = trail_table([(60.0, 60.0, 40.0, 20.0, 1e4), (240.0, 230.0, 30.0, 100.0, 1500.0)])
        res = inject_trails(image, var, catalog, gaussian_psf_at(), SIGMA, nJy_per_electron=0.5, seed=1)
        bad = np.zeros(image.shape, bool)
        bad[:, 150] = True
        # The stack found the first (bright) trail only.
        new_sources = (np.array([61.0]), np.array([60.0]))
        tiles, norm = build_trail_tiles(
            res.image,
            res.variance,
            bad=bad,
            detected=np.zeros(image.shape, bool),
            label=res.trail_mask,
            catalog=res.catalog,
            new_sources=new_sources,
            rng=np.random.default_rng(0),
            tile=128,
            overlap=16,
            background_fraction=0.0,
            missed_weight=4.0,
        )
        self.assertEqual(norm.method, "robust")
        self.assertTrue(np.all(tiles["has_trail"]))
        # background_fraction 0: exactly the tiles holding label pixels.
        origins = [(y, x) for y in tile_origins(size, 128, 16) for x in tile_origins(size, 128, 16)]
        expected = sum(res.trail_mask[y : y + 128, x : x + 128].any() for y, x in origins)
        self.assertEqual(len(tiles["x0"]), expected)
        for k in range(len(tiles["x0"])):
            x0, y0 = tiles["x0"][k], tiles["y0"][k]
            np.testing.assert_array_equal(tiles["mask"][k], res.trail_mask[y0 : y0 + 128, x0 : x0 + 128])
            bright = tiles["max_nu_det"][k] > 20
            self.assertEqual(tiles["stack_detected"][k], 1 if bright else 0)
            self.assertEqual(tiles["sample_weight"][k], 1.0 if bright else 4.0)
        self.assertEqual(tiles["inputs"].shape[1:], (1, 128, 128))
        # Bad pixels carry neither input nor weight.
        k = int(np.argmax(tiles["x0"]))
        x0 = tiles["x0"][k]
        if x0 <= 150 < x0 + 128:
            self.assertTrue(np.all(tiles["weights"][k][:, 150 - x0] == 0))
            self.assertTrue(np.all(tiles["inputs"][k, 0][:, 150 - x0] == 0))


class ShardTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()

    def tearDown(self):
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_round_trip(self):
        for kind in ("trail", "star"):
            shard = make_shard(kind=kind)
            path = write_shard(shard, Path(self.tmp, f"{kind}.h5"))
            back = read_shard(path)
            np.testing.assert_array_equal(back.inputs, shard.inputs)
            np.testing.assert_array_equal(back.weights, shard.weights)
            for name in shard.targets:
                np.testing.assert_array_equal(back.targets[name], shard.targets[name])
            for name in shard.tiles:
                np.testing.assert_array_equal(back.tiles[name], shard.tiles[name])
            self.assertEqual(back.splits, shard.splits)
            self.assertEqual(back.normalization, shard.normalization)
            self.assertEqual(back.provenance["seed"], 0)
            self.assertIn("package_version", back.provenance)
            part = read_shard(path, rows=slice(1, 3))
            np.testing.assert_array_equal(part.inputs, shard.inputs[1:3])
        import h5py

        with h5py.File(Path(self.tmp, "trail.h5")) as f:
            self.assertEqual(f["inputs"].chunks, (1, 1, 32, 32))
            self.assertEqual(f["inputs"].compression, "gzip")

    def test_failed_write_leaves_nothing(self):
        path = Path(self.tmp, "fail.h5")
        path.write_bytes(b"old content")
        import h5py

        real = h5py.Group.create_dataset

        def broken(self, name, *args, **kwargs):
            if name == "weights":
                raise OSError("disk full")
            return real(self, name, *args, **kwargs)

        with mock.patch.object(h5py.Group, "create_dataset", broken):
            with self.assertRaises(OSError):
                write_shard(make_shard(), path)
        self.assertEqual(path.read_bytes(), b"old content")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["fail.h5"])

    def test_validation(self):
        with self.assertRaisesRegex(ValueError, "weights"):
            shard = make_shard()
            TileShard(**{**shard.__dict__, "weights": shard.weights[:2]})
        with self.assertRaisesRegex(ValueError, "split"):
            make_shard(split="holdout")
        not_shard = Path(self.tmp, "other.h5")
        import h5py

        with h5py.File(not_shard, "w") as f:
            f["x"] = np.zeros(3)
        with self.assertRaisesRegex(ValueError, "not a"):
            read_shard(not_shard)

    def test_sampler_oversamples_missed_trails(self):
        """Tiles whose trail the stack missed (sample_weight 3) are drawn three times as often."""
        from lsst.trail_detect.tiles.datasets import TileDataset, balanced_sampler

        shard = make_shard(n=40)
        shard.tiles["has_trail"] = np.arange(40) < 20
        shard.tiles["sample_weight"] = np.where(np.arange(40) < 10, 3.0, 1.0).astype(np.float32)
        path = write_shard(shard, Path(self.tmp, "weighted.h5"))
        dataset = TileDataset([path], split="train")
        draws = np.array(list(balanced_sampler(dataset, positive_fraction=0.5, num_samples=20000, seed=1)))
        positives = draws < 20
        self.assertFloatsAlmostEqual(positives.mean(), 0.5, atol=0.02)
        missed = np.isin(draws, np.arange(10)).sum()
        found = np.isin(draws, np.arange(10, 20)).sum()
        self.assertFloatsAlmostEqual(missed / found, 3.0, rtol=0.1)
        dataset.close()

    def test_concatenate_refuses_overlapping_splits(self):
        a = make_shard(visit=1, detector=2, split="train")
        b = make_shard(visit=1, detector=3, split="test", seed=1)
        joined = concatenate_shards([a, b])
        self.assertEqual(len(joined), 10)
        self.assertEqual(joined.splits, {"1:2": "train", "1:3": "test"})
        c = make_shard(visit=1, detector=2, split="validation")
        with self.assertRaisesRegex(ValueError, "1:2"):
            concatenate_shards([a, c])
        with self.assertRaisesRegex(ValueError, "kinds"):
            concatenate_shards([a, make_shard(kind="star", detector=5)])


class BuildTaskTestCase(lsst.utils.tests.TestCase):
    def test_task_run(self):
        """BuildTrailTilesTask on a real injected VisitImage, without a Butler."""
        from test_injection import trail_table

        from lsst.trail_detect.injection.inject_trails import InjectTrailsTask
        from lsst.trail_detect.simulation.visit_image import make_simple_visit_image
        from lsst.trail_detect.tiles.build_trail_tiles import BuildTrailTilesTask

        rng = np.random.default_rng(3)
        size = 256
        visit_image = make_simple_visit_image(
            rng.normal(0, 20, (size, size)).astype(np.float32), np.full((size, size), 400.0, np.float32), 2.0
        )
        injected = InjectTrailsTask().run(visit_image, trail_table([(100.0, 120.0, 60.0, 45.0, 3e4)]))
        empty = Table({"x": np.zeros(0), "y": np.zeros(0)})
        result = BuildTrailTilesTask().run(
            injected.output_exposure,
            injected.output_catalog,
            injected.trail_mask,
            empty,
            empty,
            visit=3,
            detector=4,
        )
        shard = result.tiles
        self.assertEqual(shard.kind, "trail")
        self.assertEqual(set(shard.tiles["split"]), {shard.splits["3:4"]})
        self.assertTrue(np.any(shard.tiles["has_trail"]))
        self.assertEqual(int(shard.targets["mask"].max()), 1)
        self.assertTrue(np.all(shard.tiles["stack_detected"][shard.tiles["has_trail"]] == 0))


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
