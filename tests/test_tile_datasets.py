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

"""Tests of the PyTorch tile datasets, augmentation and sampling over HDF5 shards."""

import itertools
import json
import os
import pickle
import tempfile
import unittest

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader

import lsst.utils.tests
from lsst.trail_detect.tiles.datasets import (
    Augment,
    SplitOverlapError,
    TileDataset,
    balanced_sampler,
    check_disjoint_splits,
    collate_tiles,
)


def write_shard(
    path,
    groups,
    kind="trail",
    tile=8,
    seed=0,
    format_version=1,
    positive_every=2,
    splits_attr=None,
):
    """Write a tile shard in the format-version-1 layout.

    ``groups`` is a list of (visit, detector, split, n_tiles). Every
    ``positive_every``-th tile of a trail shard has a trail. Returns the
    arrays written.
    """
    rng = np.random.default_rng(seed)
    visit, detector, split = [], [], []
    for v, d, s, n in groups:
        visit += [v] * n
        detector += [d] * n
        split += [s] * n
    n = len(visit)
    inputs = rng.normal(size=(n, 1, tile, tile)).astype(np.float32)
    weights = rng.uniform(0.5, 2.0, size=(n, tile, tile)).astype(np.float32)
    tiles = {
        "visit": np.array(visit, dtype=np.int64),
        "detector": np.array(detector, dtype=np.int64),
        "x0": (np.arange(n) * tile).astype(np.int32),
        "y0": np.zeros(n, dtype=np.int32),
        "split": np.array(split, dtype="S"),
    }
    if kind == "trail":
        has_trail = np.arange(n) % positive_every == 0
        mask = (rng.uniform(size=(n, tile, tile)) < 0.2).astype(np.uint8) * has_trail[:, None, None]
        targets = {"mask": mask.astype(np.uint8)}
        tiles["has_trail"] = has_trail
        tiles["n_trail_pixels"] = mask.sum(axis=(1, 2)).astype(np.int32)
        tiles["max_nu_det"] = np.where(has_trail, rng.uniform(3, 10, n), np.nan).astype(np.float32)
        tiles["stack_detected"] = np.where(has_trail, rng.integers(0, 2, n), -1).astype(np.int8)
    else:
        targets = {
            "heatmap": rng.uniform(size=(n, tile, tile)).astype(np.float32),
            "offset": rng.uniform(-0.5, 0.5, size=(n, 2, tile, tile)).astype(np.float32),
            "offset_mask": (rng.uniform(size=(n, tile, tile)) < 0.1).astype(np.uint8),
        }
        tiles["n_stars"] = targets["offset_mask"].sum(axis=(1, 2)).astype(np.int32)
    if splits_attr is None:
        splits_attr = {f"{v}:{d}": s for v, d, s, _ in groups}
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "lsst.trail_detect.tiles"
        f.attrs["format_version"] = format_version
        f.attrs["kind"] = kind
        f.attrs["tile_size"] = tile
        f.attrs["overlap"] = 0
        f.attrs["n_tiles"] = n
        f.attrs["normalization"] = json.dumps({"method": "noise", "seed": seed})
        f.attrs["provenance"] = json.dumps({"test": True})
        f.attrs["splits"] = json.dumps(splits_attr)
        opts = {"compression": "gzip"} if n else {}
        f.create_dataset("inputs", data=inputs, chunks=(1, 1, tile, tile) if n else None, **opts)
        f.create_dataset("weights", data=weights)
        group = f.create_group("targets")
        for name, array in targets.items():
            group.create_dataset(name, data=array)
        group = f.create_group("tiles")
        for name, column in tiles.items():
            group.create_dataset(name, data=column)
    return {"inputs": inputs, "weights": weights, "targets": targets, "tiles": tiles}


def gaussian(x, y, shape, sigma=1.3, amplitude=1.0):
    """Render a Gaussian centred at sub-pixel (x, y) on an array indexed [y, x]."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (amplitude * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))).astype(np.float32)


def transform_position(x, y, shape, flip_x, flip_y, k):
    """Transform a sub-pixel position like Augment.transform does (flips, then rot90 turns)."""
    h, w = shape
    if flip_x:
        x = w - 1 - x
    if flip_y:
        y = h - 1 - y
    for _ in range(k):
        x, y, h, w = y, w - 1 - x, w, h
    return x, y


def star_sample(x, y, shape=(32, 32)):
    """A star tile: the image of a source at (x, y) and its CenterNet targets."""
    ix, iy = int(round(x)), int(round(y))
    offset = np.zeros((2,) + shape, dtype=np.float32)
    offset[:, iy, ix] = (x - ix, y - iy)
    offset_mask = np.zeros(shape, dtype=np.float32)
    offset_mask[iy, ix] = 1
    return {
        "image": gaussian(x, y, shape, amplitude=10.0)[None],
        "weight": np.ones(shape, dtype=np.float32),
        "heatmap": gaussian(ix, iy, shape, sigma=2.0),
        "offset": offset,
        "offset_mask": offset_mask,
    }


def decode_star(sample):
    """Source position from the heatmap peak and its offset."""
    heatmap = np.asarray(sample["heatmap"])
    py, px = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert sample["offset_mask"][py, px] == 1
    dx, dy = np.asarray(sample["offset"])[:, py, px]
    return px + dx, py + dy


class _ShardTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.dir = self._tmp.name

    def path(self, name):
        return os.path.join(self.dir, name)

    def open(self, *args, **kwargs):
        ds = TileDataset(*args, **kwargs)
        self.addCleanup(ds.close)
        return ds


class TileDatasetTestCase(_ShardTestCase):
    def setUp(self):
        super().setUp()
        self.a = self.path("a.h5")
        self.b = self.path("b.h5")
        self.written = {
            self.a: write_shard(self.a, [(1, 0, "train", 5), (2, 0, "validation", 3)], seed=1),
            self.b: write_shard(self.b, [(3, 1, "train", 4), (4, 1, "test", 2), (5, 2, "train", 3)], seed=2),
        }

    def expected(self, ds, index):
        meta = ds.tile_meta[index]
        written = self.written[meta["file"]]
        row = meta["row"]
        return written, row

    def test_split_selection(self):
        counts = {"train": 12, "validation": 3, "test": 2, None: 17}
        for split, count in counts.items():
            with self.subTest(split=split):
                ds = self.open([self.a, self.b], split=split)
                self.assertEqual(len(ds), count)
                self.assertEqual(ds.kind, "trail")
                self.assertEqual(ds.tile_shape, (1, 8, 8))
                self.assertEqual(ds.normalization, {"method": "noise", "seed": 1})
                meta = ds.tile_meta
                self.assertEqual(len(meta), count)
                if split is not None:
                    self.assertTrue(np.all(meta["split"] == split))
                for index in range(count):
                    item = ds[index]
                    written, row = self.expected(ds, index)
                    self.assertEqual(meta["visit"][index], written["tiles"]["visit"][row])
                    self.assertEqual(item["index"], index)
                    self.assertEqual(item["image"].dtype, torch.float32)
                    self.assertEqual(tuple(item["image"].shape), (1, 8, 8))
                    np.testing.assert_array_equal(item["image"].numpy(), written["inputs"][row])
                    np.testing.assert_array_equal(item["weight"].numpy(), written["weights"][row])
                    self.assertEqual(item["mask"].dtype, torch.float32)
                    np.testing.assert_array_equal(item["mask"].numpy(), written["targets"]["mask"][row])
                    self.assertEqual(bool(item["has_trail"]), bool(written["tiles"]["has_trail"][row]))
                    self.assertEqual(set(item), {"image", "weight", "mask", "index", "has_trail"})
                np.testing.assert_array_equal(ds.has_trail, np.asarray(meta["has_trail"], dtype=bool))
        # The train split holds the visits of both files, in file then row order.
        ds = self.open([self.a, self.b], split="train")
        self.assertEqual(sorted(set(ds.tile_meta["visit"])), [1, 3, 5])
        self.assertEqual(list(ds.tile_meta["file"][:5]), [self.a] * 5)
        self.assertEqual(list(ds.tile_meta["row"][5:9]), [0, 1, 2, 3])
        self.assertEqual(ds[-1]["index"], len(ds) - 1)
        with self.assertRaises(IndexError):
            ds[len(ds)]
        with self.assertRaises(ValueError):
            TileDataset([self.a], split="training")

    def test_star_targets(self):
        path = self.path("stars.h5")
        written = write_shard(path, [(7, 3, "train", 4)], kind="star", seed=5)
        ds = self.open(path)
        self.assertEqual(ds.kind, "star")
        self.assertFalse(ds.has_trail.any())
        item = ds[2]
        self.assertEqual(set(item), {"image", "weight", "heatmap", "offset", "offset_mask", "index"})
        self.assertEqual(tuple(item["offset"].shape), (2, 8, 8))
        for name in ("heatmap", "offset", "offset_mask"):
            np.testing.assert_array_equal(item[name].numpy(), written["targets"][name][2])
        ds = self.open(path, targets=["heatmap"])
        self.assertEqual(set(ds[0]), {"image", "weight", "heatmap", "index"})
        with self.assertRaisesRegex(ValueError, "mask"):
            TileDataset(path, targets=["mask"])

    def test_lazy_and_picklable(self):
        ds = self.open([self.a, self.b], split="train")
        self.assertEqual(ds._handles, {})
        first = ds[0]
        self.assertEqual(len(ds._handles), 1)
        handle = ds._handles[0]
        ds[1]
        self.assertIs(ds._handles[0], handle)  # one open file per shard and process
        clone = pickle.loads(pickle.dumps(ds))
        self.addCleanup(clone.close)
        self.assertEqual(clone._handles, {})
        np.testing.assert_array_equal(clone[0]["image"].numpy(), first["image"].numpy())
        ds.close()
        self.assertEqual(ds._handles, {})

    def check_loader(self, **kwargs):
        ds = self.open([self.a, self.b], split="train")
        loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=True, **kwargs)
        seen = []
        for batch in loader:
            self.assertEqual(batch["image"].shape[1:], (1, 8, 8))
            for j, index in enumerate(batch["index"].tolist()):
                seen.append(index)
                written, row = self.expected(ds, index)
                np.testing.assert_array_equal(batch["image"][j].numpy(), written["inputs"][row])
                np.testing.assert_array_equal(batch["weight"][j].numpy(), written["weights"][row])
                np.testing.assert_array_equal(batch["mask"][j].numpy(), written["targets"]["mask"][row])
        self.assertEqual(sorted(seen), list(range(len(ds))))
        # The main process never opened a file.
        self.assertEqual(ds._handles, {})

    def test_dataloader_fork(self):
        self.check_loader(multiprocessing_context="fork")

    def test_dataloader_spawn(self):
        self.check_loader(multiprocessing_context="spawn", collate_fn=collate_tiles)

    def test_augmented_items_reproducible(self):
        augment = Augment(snr_scale=(0.5, 0.9), p_snr_scale=1.0)
        ds = self.open([self.a, self.b], split="train", augment=augment, seed=4)
        again = self.open([self.a, self.b], split="train", augment=augment, seed=4)
        other = self.open([self.a, self.b], split="train", augment=augment, seed=5)
        for index in range(len(ds)):
            x, y = ds[index], again[index]
            for key in ("image", "weight", "mask"):
                np.testing.assert_array_equal(x[key].numpy(), y[key].numpy())
        self.assertFalse(np.array_equal(ds[0]["image"].numpy(), other[0]["image"].numpy()))
        before = ds[1]["image"].numpy()
        ds.set_epoch(1)
        self.assertFalse(np.array_equal(before, ds[1]["image"].numpy()))
        # The same items through two workers are augmented identically.
        loader = DataLoader(again, batch_size=4, num_workers=2, multiprocessing_context="fork")
        for batch in loader:
            for j, index in enumerate(batch["index"].tolist()):
                np.testing.assert_array_equal(batch["image"][j].numpy(), again[index]["image"].numpy())

    def test_collate(self):
        ds = self.open([self.a], split="train")
        batch = collate_tiles([ds[0], ds[1], ds[2]])
        self.assertEqual(tuple(batch["image"].shape), (3, 1, 8, 8))
        self.assertEqual(batch["index"].tolist(), [0, 1, 2])
        self.assertEqual(batch["has_trail"].dtype, torch.bool)
        mixed = collate_tiles([{"name": "a", "x": torch.zeros(2)}, {"name": "b", "x": torch.zeros(3)}])
        self.assertEqual(mixed["name"], ["a", "b"])
        self.assertEqual(len(mixed["x"]), 2)


class SplitGuardTestCase(_ShardTestCase):
    def test_disjoint(self):
        a, b = self.path("a.h5"), self.path("b.h5")
        write_shard(a, [(10, 1, "train", 2), (10, 2, "test", 2)])
        write_shard(b, [(11, 1, "train", 2), (12, 1, "validation", 1)])
        splits = check_disjoint_splits([a, b])
        self.assertEqual(splits, {"train": {(10, 1), (11, 1)}, "test": {(10, 2)}, "validation": {(12, 1)}})
        self.assertEqual(len(self.open([a, b], split="train")), 4)

    def test_overlap_between_files(self):
        a, b = self.path("first.h5"), self.path("second.h5")
        write_shard(a, [(20240101, 17, "train", 2), (20240101, 18, "train", 1)])
        write_shard(b, [(20240101, 17, "test", 1), (20240102, 17, "test", 1)])
        with self.assertRaises(SplitOverlapError) as cm:
            check_disjoint_splits([a, b])
        message = str(cm.exception)
        self.assertIn("(20240101, 17)", message)
        self.assertNotIn("(20240101, 18)", message)
        self.assertNotIn("(20240102, 17)", message)
        self.assertIn(a, message)
        self.assertIn(b, message)
        self.assertIsInstance(cm.exception, ValueError)
        with self.assertRaisesRegex(SplitOverlapError, r"\(20240101, 17\)"):
            TileDataset([a, b], split="train")
        ds = self.open([a, b], split="test", check_splits=False)
        self.assertEqual(len(ds), 2)

    def test_overlap_within_file(self):
        # The tiles of one (visit, detector) split across train and validation in one file.
        path = self.path("mixed.h5")
        write_shard(path, [(30, 4, "train", 2), (30, 4, "validation", 1)], splits_attr={"30:4": "train"})
        with self.assertRaisesRegex(SplitOverlapError, r"\(30, 4\)"):
            check_disjoint_splits([path])

    def test_attribute_disagrees(self):
        # The root splits attribute puts a pair in another split than its tiles.
        path = self.path("attr.h5")
        write_shard(path, [(40, 5, "train", 2)], splits_attr={"40:5": "test"})
        with self.assertRaisesRegex(SplitOverlapError, r"\(40, 5\)"):
            check_disjoint_splits([path])


class BadShardTestCase(_ShardTestCase):
    def test_format_version(self):
        good, bad = self.path("good.h5"), self.path("version2.h5")
        write_shard(good, [(1, 1, "train", 2)])
        write_shard(bad, [(2, 1, "train", 2)], format_version=2)
        with self.assertRaisesRegex(ValueError, "version2.h5") as cm:
            TileDataset([good, bad])
        self.assertIn("format_version", str(cm.exception))

    def test_mixed_kinds(self):
        trail, star = self.path("trail.h5"), self.path("star_shard.h5")
        write_shard(trail, [(1, 1, "train", 2)])
        write_shard(star, [(2, 1, "train", 2)], kind="star")
        with self.assertRaisesRegex(ValueError, "star_shard.h5"):
            TileDataset([trail, star])
        with self.assertRaisesRegex(ValueError, "trail.h5"):
            TileDataset([star, trail])

    def test_not_a_shard(self):
        path = self.path("other.h5")
        with h5py.File(path, "w") as f:
            f.attrs["format"] = "something else"
        with self.assertRaisesRegex(ValueError, "other.h5"):
            TileDataset(path)


class AugmentTestCase(lsst.utils.tests.TestCase):
    def trail_sample(self, shape=(24, 24), seed=0):
        rng = np.random.default_rng(seed)
        image = rng.normal(size=(1,) + shape).astype(np.float32)
        # An asymmetric "L" of bright pixels marks the trail.
        image[0, 3:15, 5] = 20.0
        image[0, 14, 5:11] = 20.0
        mask = (image[0] > 10.0).astype(np.float32)
        weight = (2.0 * image[0] + 3.0).astype(np.float32)
        return {"image": image, "weight": weight, "mask": mask}

    def test_geometry_aligned(self):
        sample = self.trail_sample()
        aug = Augment(snr_scale=None)
        for flip_x, flip_y, k in itertools.product((False, True), (False, True), range(4)):
            out = aug.transform(sample, flip_x=flip_x, flip_y=flip_y, k=k)
            image = out["image"][0]
            np.testing.assert_array_equal(out["mask"], (image > 10.0).astype(np.float32))
            np.testing.assert_array_equal(out["weight"], 2.0 * image + 3.0)
            # The corner pixel of the L moves where the position transform says.
            x, y = transform_position(5, 14, (24, 24), flip_x, flip_y, k)
            self.assertEqual(image[int(y), int(x)], 20.0)
            self.assertEqual(out["mask"].sum(), sample["mask"].sum())
        np.testing.assert_array_equal(sample["mask"], (sample["image"][0] > 10.0))  # input untouched
        # Random draws keep the alignment and reach all eight orientations.
        outcomes = set()
        for seed in range(64):
            out = Augment(snr_scale=None)(sample, rng=np.random.default_rng(seed))
            np.testing.assert_array_equal(out["mask"], (out["image"][0] > 10.0).astype(np.float32))
            np.testing.assert_array_equal(out["weight"], 2.0 * out["image"][0] + 3.0)
            outcomes.add(out["mask"].tobytes())
        self.assertEqual(len(outcomes), 8)

    def test_torch_tensors(self):
        sample = {k: torch.from_numpy(v) for k, v in self.trail_sample().items()}
        sample["index"] = 3
        out = Augment(snr_scale=None).transform(sample, flip_x=True, k=1)
        self.assertIsInstance(out["image"], torch.Tensor)
        self.assertEqual(out["index"], 3)
        expected = np.rot90(sample["mask"].numpy()[:, ::-1], 1)
        np.testing.assert_array_equal(out["mask"].numpy(), expected)

    def test_offsets(self):
        shape = (32, 32)
        xs, ys = 10.3, 20.65
        sample = star_sample(xs, ys, shape)
        aug = Augment(snr_scale=None)
        for flip_x, flip_y, k in itertools.product((False, True), (False, True), range(4)):
            with self.subTest(flip_x=flip_x, flip_y=flip_y, k=k):
                out = aug.transform(sample, flip_x=flip_x, flip_y=flip_y, k=k)
                x, y = decode_star(out)
                tx, ty = transform_position(xs, ys, shape, flip_x, flip_y, k)
                self.assertFloatsAlmostEqual(x, tx, atol=1e-5)
                self.assertFloatsAlmostEqual(y, ty, atol=1e-5)
                # Re-rendering the source at the decoded position gives the augmented image.
                np.testing.assert_allclose(out["image"][0], gaussian(x, y, shape, amplitude=10.0), atol=1e-4)
        for seed in range(24):
            out = aug(sample, rng=np.random.default_rng(seed))
            x, y = decode_star(out)
            np.testing.assert_allclose(out["image"][0], gaussian(x, y, shape, amplitude=10.0), atol=1e-4)

    def test_snr_scaling(self):
        rng = np.random.default_rng(1)
        noise = {"image": rng.normal(size=(1, 512, 512)).astype(np.float32)}
        aug = Augment(flips=False, rot90=False, snr_scale=(0.4, 0.4), p_snr_scale=1.0)
        out = aug(noise, rng=np.random.default_rng(2))
        self.assertFloatsAlmostEqual(float(out["image"].std()), 1.0, rtol=0.02)
        self.assertEqual(out["image"].dtype, np.float32)
        # The noise is partly fresh: correlation with the input is s.
        corr = np.corrcoef(out["image"].ravel(), noise["image"].ravel())[0, 1]
        self.assertFloatsAlmostEqual(corr, 0.4, atol=0.01)
        # A known signal is scaled by s.
        signal = np.zeros((1, 512, 512), dtype=np.float32)
        signal[0, :, :256] = 5.0
        out = aug({"image": signal + noise["image"]}, rng=np.random.default_rng(3))
        self.assertFloatsAlmostEqual(float(out["image"][0, :, :256].mean()), 2.0, atol=0.02)
        self.assertFloatsAlmostEqual(float(out["image"][0, :, 256:].mean()), 0.0, atol=0.02)
        self.assertFloatsAlmostEqual(float(out["image"][0, :, 256:].std()), 1.0, rtol=0.02)
        # Never applied with p = 0; fresh noise adds in quadrature.
        same = Augment(flips=False, rot90=False, p_snr_scale=0.0)(noise, rng=np.random.default_rng(4))
        np.testing.assert_array_equal(same["image"], noise["image"])
        noisy = Augment(flips=False, rot90=False, snr_scale=None, fresh_noise=0.5)(
            noise, rng=np.random.default_rng(5)
        )
        self.assertFloatsAlmostEqual(float(noisy["image"].std()), np.sqrt(1.25), rtol=0.02)
        for bad in ((0.5, 1.2), (0.0, 1.0), (0.9, 0.5)):
            with self.assertRaises(ValueError):
                Augment(snr_scale=bad)
        with self.assertRaises(ValueError):
            Augment(fresh_noise=-1.0)

    def test_reproducible(self):
        sample = self.trail_sample()
        aug = Augment(snr_scale=(0.5, 1.0), fresh_noise=0.1, p_snr_scale=0.5)
        a = aug(sample, rng=np.random.default_rng(9))
        b = aug(sample, rng=np.random.default_rng(9))
        c = aug(sample, rng=np.random.default_rng(10))
        for key in sample:
            np.testing.assert_array_equal(a[key], b[key])
        self.assertFalse(np.array_equal(a["image"], c["image"]))
        # Without a generator, Augments with the same seed repeat the same stream.
        aug1, aug2, aug3 = Augment(seed=3), Augment(seed=3), Augment(seed=4)
        draws1 = [aug1(sample)["image"] for _ in range(4)]
        draws2 = [aug2(sample)["image"] for _ in range(4)]
        draws3 = [aug3(sample)["image"] for _ in range(4)]
        for x, y in zip(draws1, draws2):
            np.testing.assert_array_equal(x, y)
        self.assertFalse(all(np.array_equal(x, z) for x, z in zip(draws1, draws3)))


class SamplerTestCase(_ShardTestCase):
    def test_balanced(self):
        path = self.path("many.h5")
        write_shard(path, [(1, 1, "train", 100), (2, 1, "train", 100)], tile=4, positive_every=10)
        ds = self.open(path)
        self.assertFloatsAlmostEqual(ds.has_trail.mean(), 0.1)
        for fraction in (0.5, 0.25):
            sampler = balanced_sampler(ds, positive_fraction=fraction, num_samples=4000, seed=1)
            draws = np.array(list(sampler))
            self.assertEqual(len(draws), 4000)
            self.assertFloatsAlmostEqual(ds.has_trail[draws].mean(), fraction, atol=0.05)
            # Every positive tile gets drawn; the negatives are drawn across the board.
            self.assertEqual(len(set(draws[ds.has_trail[draws]])), 20)
            self.assertGreater(len(set(draws[~ds.has_trail[draws]])), 150)
        again = balanced_sampler(ds, num_samples=50, seed=1)
        self.assertEqual(list(again), list(balanced_sampler(ds, num_samples=50, seed=1)))
        self.assertEqual(len(balanced_sampler(ds)), len(ds))
        loader = DataLoader(ds, batch_size=50, sampler=balanced_sampler(ds, num_samples=200, seed=2))
        n_pos = sum(int(batch["has_trail"].sum()) for batch in loader)
        self.assertGreater(n_pos, 60)
        with self.assertRaises(ValueError):
            balanced_sampler(np.zeros(10, dtype=bool), 0.5)
        with self.assertRaises(ValueError):
            balanced_sampler(ds, 1.5)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
