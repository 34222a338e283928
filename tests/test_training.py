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

"""The training loop: learning, model files, checkpoints and resume, pretraining, DDP with 2 processes."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

import lsst.utils.tests
from lsst.trail_detect.tiles.shard import TileShard, write_shard

TINY_TRAIL = {"name": "ResAttentionUNet", "in_channels": 1, "out_channels": 1, "base_channels": 4, "depth": 2}
TINY_STAR = {"name": "StarCenterNet", "in_channels": 1, "base_channels": 4, "depth": 2}


def line_tiles(n, tile=48, seed=0):
    """Tiles of unit noise, most crossed by a bright line labelled in the mask."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 1, tile, tile)).astype(np.float32)
    masks = np.zeros((n, tile, tile), np.uint8)
    has = np.zeros(n, bool)
    yy, xx = np.mgrid[0:tile, 0:tile]
    for k in range(n):
        if k % 4 == 3:
            continue
        theta = rng.uniform(0, np.pi)
        x0, y0 = rng.uniform(10, tile - 10, 2)
        d = np.abs((xx - x0) * np.sin(theta) - (yy - y0) * np.cos(theta))
        line = d < 1.5
        images[k, 0][line] += 4.0
        masks[k] = line
        has[k] = True
    return images, masks, has


def write_trail_shards(directory, seed=0):
    paths = []
    for visit, split in ((1, "train"), (2, "train"), (3, "validation")):
        n = 16
        images, masks, has = line_tiles(n, seed=seed + visit)
        shard = TileShard(
            kind="trail",
            inputs=images,
            weights=np.ones(masks.shape, np.float32),
            targets={"mask": masks},
            tiles={
                "visit": np.full(n, visit),
                "detector": np.zeros(n, int),
                "x0": np.zeros(n, np.int32),
                "y0": np.zeros(n, np.int32),
                "split": np.full(n, split),
                "has_trail": has,
                "max_nu_det": np.where(has, 10.0, np.nan).astype(np.float32),
                "sample_weight": np.ones(n, np.float32),
            },
            tile_size=48,
            overlap=0,
            normalization={
                f"{visit}:0": {
                    "method": "robust",
                    "background": 0.0,
                    "scale": 1.0,
                    "clip_min": -10.0,
                    "clip_max": 50.0,
                }
            },
            splits={f"{visit}:0": split},
        )
        paths.append(write_shard(shard, Path(directory, f"trail_{visit}.h5")))
    return paths


def write_star_shards(directory):
    from lsst.trail_detect.tiles.star_targets import star_targets

    rng = np.random.default_rng(4)
    paths = []
    for visit, split in ((1, "train"), (2, "validation")):
        n, tile = 12, 48
        images = rng.normal(size=(n, 1, tile, tile)).astype(np.float32)
        heat, off, om = [], [], []
        yy, xx = np.mgrid[0:tile, 0:tile]
        for k in range(n):
            x, y = rng.uniform(4, tile - 4, 6), rng.uniform(4, tile - 4, 6)
            for sx, sy in zip(x, y):
                images[k, 0] += 8.0 * np.exp(-0.5 * ((xx - sx) ** 2 + (yy - sy) ** 2) / 1.5**2)
            t = star_targets(x, y, (tile, tile), sigma=1.5)
            heat.append(t["heatmap"])
            off.append(t["offset"])
            om.append(t["offset_mask"])
        shard = TileShard(
            kind="star",
            inputs=images,
            weights=np.ones((n, tile, tile), np.float32),
            targets={"heatmap": np.stack(heat), "offset": np.stack(off), "offset_mask": np.stack(om)},
            tiles={
                "visit": np.full(n, visit),
                "detector": np.zeros(n, int),
                "x0": np.zeros(n, np.int32),
                "y0": np.zeros(n, np.int32),
                "split": np.full(n, split),
                "n_stars": np.full(n, 6),
            },
            tile_size=tile,
            overlap=0,
            normalization={},
            splits={f"{visit}:0": split},
        )
        paths.append(write_shard(shard, Path(directory, f"star_{visit}.h5")))
    return paths


class TrainingLoopTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="trail_detect_training_")
        self.paths = write_trail_shards(self.tmp)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def config(self, **kwargs):
        from lsst.trail_detect.training.loop import TrainingConfig

        settings = {
            "kind": "trail",
            "architecture": TINY_TRAIL,
            "epochs": 4,
            "batch_size": 8,
            "seed": 1,
            "learning_rate": 1e-2,
            "progress": False,
            "threads": 2,
            "patience": 10,
        }
        settings.update(kwargs)
        return TrainingConfig(**settings)

    def test_learns_and_saves(self):
        """Training lowers the loss; the saved model reproduces the trained network exactly."""
        import torch

        from lsst.trail_detect.models.storage import TrailDetectorModel
        from lsst.trail_detect.training.loop import train

        out = Path(self.tmp, "model.safetensors")
        result = train(self.paths, self.config(epochs=5, samples_per_epoch=64), out=out, log=lambda _: None)
        history = result.history
        self.assertLess(history[-1]["train_loss"], 0.8 * history[0]["train_loss"])
        self.assertGreater(max(h["f1"] for h in history), 0.3)
        model = TrailDetectorModel.load(out)
        self.assertEqual(model.kind, "trail")
        self.assertEqual(model.metadata["normalization"]["method"], "robust")
        self.assertTrue(0.0 < model.threshold < 1.0)
        self.assertEqual(model.threshold, result.model.threshold)
        x = torch.randn(2, 1, 37, 53)
        a = result.model.build()(x)
        b = model.build()(x)
        self.assertTrue(torch.equal(a, b))

    def test_select_by_recall_at_fp_budget(self):
        """object_recall_at_fp picks the epoch with the best recall in budget, and its threshold."""
        from lsst.trail_detect.training.loop import train

        lines = []
        config = self.config(
            epochs=3, samples_per_epoch=32, selection_metric="object_recall_at_fp", selection_fp_budget=5e4
        )
        result = train(self.paths, config, log=lines.append)
        self.assertTrue(all("false per 4k recall" in line for line in lines[:3]), lines)
        scores = [h["object_recall_at_fp"] for h in result.history]
        validation = result.model.metadata["validation"]
        self.assertEqual(validation["score"], max(scores))
        self.assertEqual(validation["epoch"], int(np.argmax(scores)))
        self.assertEqual(result.model.threshold, validation["budget_threshold"])
        self.assertEqual(validation["fp_budget"], 5e4)

    def test_reproducible(self):
        from lsst.trail_detect.training.loop import train

        a = train(self.paths, self.config(epochs=1), log=lambda _: None)
        b = train(self.paths, self.config(epochs=1), log=lambda _: None)
        self.assertEqual(a.model.sha256, b.model.sha256)

    def test_checkpoint_and_resume(self):
        from lsst.trail_detect.training.loop import train

        ckpt = Path(self.tmp, "ckpt")
        first = train(self.paths, self.config(epochs=2, checkpoint_dir=str(ckpt)), log=lambda _: None)
        self.assertTrue((ckpt / "checkpoint.safetensors").exists())
        self.assertEqual(len(first.history), 2)
        lines = []
        resumed = train(
            self.paths, self.config(epochs=3, checkpoint_dir=str(ckpt), resume=True), log=lines.append
        )
        self.assertTrue(any("resumed" in line for line in lines))
        self.assertEqual([h["epoch"] for h in resumed.history], [0, 1, 2])
        self.assertEqual(resumed.history[:2], first.history)

    def test_killed_training_resumes(self):
        """A `trail-detect train` process killed mid-run continues from its checkpoint with --resume."""
        import json
        import signal

        exe = Path(sys.executable).parent / "trail-detect"
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "lsst.trail_detect.cli.trail_detect"]
        ckpt = Path(self.tmp, "ckpt_killed")
        out = Path(self.tmp, "killed.safetensors")
        settings = {
            "architecture": TINY_TRAIL,
            "samples_per_epoch": 32,
            "threads": 1,
            "progress": False,
            "patience": 10,
            "learning_rate": 1e-2,
        }
        args = command + [
            "train",
            *map(str, self.paths),
            "--out",
            str(out),
            "--epochs",
            "5",
            "--seed",
            "3",
            "--checkpoint-dir",
            str(ckpt),
            "--config",
            json.dumps(settings),
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
        )
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("epoch 2/5"):
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=120)
        self.assertTrue(any(line.startswith("epoch 2/5") for line in seen), "".join(seen))
        self.assertFalse(out.exists())
        self.assertTrue((ckpt / "checkpoint.safetensors").exists())
        resumed = subprocess.run(
            args + ["--resume"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env=env,
            timeout=600,
        )
        self.assertEqual(resumed.returncode, 0, resumed.stdout + resumed.stderr)
        self.assertIn("resumed", resumed.stdout)
        self.assertNotIn("epoch 1/5", resumed.stdout)
        self.assertIn("epoch 5/5", resumed.stdout)
        self.assertTrue(out.exists())

    def test_short_trail_oversampling(self):
        """Tiles holding a whole short trail are found and drawn more often; class fractions stay."""
        from lsst.trail_detect.training.loop import TrainingConfig, _sampler, small_trail_tiles

        class Tiles:
            def __init__(self, masks):
                self.masks = masks
                self.has_trail = np.array([m.any() for m in masks])
                self.tile_meta = None

            def __len__(self):
                return len(self.masks)

            def read_arrays(self, index):
                return {"mask": self.masks[index][None].astype(np.float32)}

        masks = np.zeros((5, 40, 40), dtype=bool)
        masks[0, 10:13, 10:20] = True  # short, inside
        masks[1, 20, 0:30] = True  # long
        masks[2, 0:3, 5:12] = True  # short but cut by the edge: not counted
        masks[3, 5:8, 5:9] = True  # short, beside a long one
        masks[3, 30, 2:38] = True
        tiles = Tiles(masks)
        flags = small_trail_tiles(tiles, max_extent=12)
        self.assertEqual(flags.tolist(), [True, False, False, True, False])
        boost = {"max_extent": 12, "factor": 3}
        config = TrainingConfig(positive_fraction=0.6, oversample_small_trails=boost)
        weights = _sampler(tiles, config, 0, 0, 1, small=flags).weights.numpy()
        self.assertAlmostEqual(weights[tiles.has_trail].sum(), 0.6)
        self.assertAlmostEqual(weights[4], 0.4)
        self.assertAlmostEqual(weights[0] / weights[1], 3.0)
        plain = _sampler(tiles, TrainingConfig(positive_fraction=0.6), 0, 0, 1).weights.numpy()
        self.assertAlmostEqual(plain[0] / plain[1], 1.0)

    def test_fine_tune_from_model(self):
        """init_model starts from a trained network's weights; a different architecture is refused."""
        from lsst.trail_detect.models.storage import TrailDetectorModel
        from lsst.trail_detect.training.loop import train

        out = Path(self.tmp, "first.safetensors")
        first = train(self.paths, self.config(epochs=2, samples_per_epoch=32), out=out, log=lambda _: None)
        lines = []
        zero_lr = self.config(
            epochs=1,
            samples_per_epoch=16,
            init_model=str(out),
            architecture=None,
            learning_rate=0.0,
            weight_decay=0.0,
            instance_balance={"power": 0.5, "reference_pixels": 200, "max_factor": 4},
            selection_metric="object_f1",
        )
        tuned = train(self.paths, zero_lr, log=lines.append)
        self.assertIn("weights initialized from", lines[0])
        self.assertIn("objects F1", lines[1])
        validation = tuned.model.metadata["validation"]
        self.assertEqual(tuned.model.threshold, validation["object_threshold"])
        self.assertEqual(validation["score"], validation["object_f1"])
        self.assertEqual(tuned.model.architecture, first.model.architecture)
        a, b = first.model.tensors, tuned.model.tensors
        # With a zero learning rate only the batch-norm running statistics move.
        for name in a:
            if "running" not in name and "num_batches" not in name:
                self.assertTrue(np.array_equal(np.asarray(a[name]), np.asarray(b[name])), name)
        # The command line: --init-model takes the model's architecture whatever --size says.
        import json

        exe = Path(sys.executable).parent / "trail-detect"
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "lsst.trail_detect.cli.trail_detect"]
        cli_out = Path(self.tmp, "cli_tuned.safetensors")
        settings = {"samples_per_epoch": 16, "threads": 1, "progress": False}
        done = subprocess.run(
            command
            + ["train", *map(str, self.paths), "--out", str(cli_out), "--epochs", "1", "--size", "large"]
            + ["--init-model", str(out), "--config", json.dumps(settings)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("weights initialized from", done.stdout)
        self.assertEqual(TrailDetectorModel.load(cli_out).architecture, first.model.architecture)
        other = dict(TINY_TRAIL, base_channels=TINY_TRAIL["base_channels"] * 2)
        with self.assertRaisesRegex(ValueError, "architecture"):
            train(
                self.paths, self.config(epochs=1, init_model=str(out), architecture=other), log=lambda _: None
            )

    def test_fine_tune_adding_line_filters(self):
        """line_filters on an init_model without them: its weights are kept, the new inputs start at zero."""
        from lsst.trail_detect.models.networks import input_conv_key
        from lsst.trail_detect.training.loop import train

        out = Path(self.tmp, "first.safetensors")
        first = train(self.paths, self.config(epochs=1, samples_per_epoch=16), out=out, log=lambda _: None)
        settings = {"epochs": 1, "samples_per_epoch": 16, "init_model": str(out), "architecture": None}
        frozen = self.config(learning_rate=0.0, weight_decay=0.0, line_filters=[[9, 4]], **settings)
        tuned = train(self.paths, frozen, log=lambda _: None)
        self.assertEqual(tuned.model.architecture, {**first.model.architecture, **tuned.model.architecture})
        self.assertEqual(tuned.model.architecture["line_filters"], [[9.0, 4]])
        self.assertEqual(tuned.model.metadata["training"]["line_filters"], [[9, 4]])
        key = "encoder." + input_conv_key(tuned.model.build().encoder)
        stem = np.asarray(tuned.model.tensors[key])
        np.testing.assert_array_equal(stem[:, :1], np.asarray(first.model.tensors[key]))
        self.assertFalse(stem[:, 1:].any())
        # A learning model uses them.
        moving = train(self.paths, self.config(line_filters=[[9, 4]], **settings), log=lambda _: None)
        self.assertTrue(np.asarray(moving.model.tensors[key])[:, 1:].any())
        # Fine-tuning a model with line filters keeps them; other filters are refused.
        lined = Path(self.tmp, "lined.safetensors")
        moving.model.save(lined)
        again = dict(settings, init_model=str(lined), learning_rate=0.0, weight_decay=0.0)
        kept = train(self.paths, self.config(line_filters=[[9, 4]], **again), log=lambda _: None)
        self.assertEqual(kept.model.architecture, moving.model.architecture)
        with self.assertRaisesRegex(ValueError, "line filters"):
            train(self.paths, self.config(line_filters=[[15, 4]], **again), log=lambda _: None)
        with self.assertRaisesRegex(ValueError, "trail kind"):
            train(self.paths, self.config(kind="star", line_filters=[[9, 4]]), log=lambda _: None)

    def test_refuses_missing_validation(self):
        from lsst.trail_detect.training.loop import train

        with self.assertRaisesRegex(ValueError, "validation"):
            train(self.paths[:2], self.config(epochs=1), log=lambda _: None)

    def test_pretrained_encoder_and_unfreezing(self):
        """A star detector's encoder initializes the segmenter; frozen stages stay as pretrained."""
        from lsst.trail_detect.models.storage import TrailDetectorModel
        from lsst.trail_detect.training.loop import TrainingConfig, train

        star_paths = write_star_shards(self.tmp)
        star_file = Path(self.tmp, "star.safetensors")
        star = train(
            star_paths,
            TrainingConfig(
                kind="star", architecture=TINY_STAR, epochs=2, batch_size=4, progress=False, threads=2
            ),
            out=star_file,
            log=lambda _: None,
        )
        self.assertEqual(star.model.kind, "star")
        self.assertIn("recall", star.model.metadata["validation"])
        # Encoder frozen for the whole (short) run: its weights must equal the star detector's.
        trail = train(
            self.paths,
            self.config(epochs=1, pretrained_encoder=str(star_file), unfreeze_epochs=[5]),
            log=lambda _: None,
        )
        star_tensors = TrailDetectorModel.load(star_file).tensors
        enc = {
            k: v
            for k, v in trail.model.tensors.items()
            if k.startswith("encoder.") and "num_batches" not in k and "running" not in k
        }
        self.assertGreater(len(enc), 0)
        for name, value in enc.items():
            np.testing.assert_array_equal(np.asarray(value), np.asarray(star_tensors[name]), err_msg=name)
        self.assertEqual(trail.history[0]["open_encoder_stages"], 0)


class ValidationMetricsTestCase(lsst.utils.tests.TestCase):
    def test_object_metrics(self):
        """Every truth component counts once; predictions touching no truth are false positives."""
        from lsst.trail_detect.training.loop import _object_metrics, _trail_metrics

        target = np.zeros((2, 32, 32), dtype=np.float32)
        target[0, 5, 2:30] = 1  # a long trail, found
        target[0, 20:23, 20:23] = 1  # a short one (9 pixels), missed
        target[1, 10:12, 4:8] = 1  # a short one (8 pixels), found
        target[1, 28, 28:31] = 1  # 3 pixels: too small to count
        probs = np.zeros_like(target)
        probs[0, 5, 2:30] = 0.9
        probs[1, 10:12, 4:8] = 0.6
        probs[1, 25:28, 2:5] = 0.8  # a false positive of 9 pixels
        probs[1, 0, 0:3] = 0.99  # too small to count
        weight = np.ones_like(target)
        thresholds = np.array([0.5, 0.7])
        out = _object_metrics(probs, target, weight, thresholds)
        curve = {row[0]: row[1:4] for row in out["object_curve"]}
        self.assertFloatsAlmostEqual(np.array(curve[0.5]), np.array([2 / 3, 2 / 3, 2 / 3]), atol=1e-12)
        self.assertFloatsAlmostEqual(np.array(curve[0.7]), np.array([1 / 2, 1 / 3, 0.4]), atol=1e-12)
        self.assertEqual(out["object_threshold"], 0.5)
        # Unusable pixels are neither truth nor prediction.
        weight[1, 25:28, 2:5] = 0
        out = _object_metrics(probs, target, weight, thresholds)
        self.assertFloatsAlmostEqual(out["object_precision"], 1.0, atol=1e-12)
        # The pixel metrics carry the object ones.
        full = _trail_metrics(probs, target, weight)
        self.assertIn("object_f1", full)
        self.assertGreater(full["f1"], full["object_f1"])

    def test_recall_at_fp_budget(self):
        """Recall at the lowest threshold whose false components per 4k detector fit the budget."""
        from lsst.trail_detect.training.loop import _object_metrics

        target = np.zeros((2, 64, 64), dtype=np.float32)
        target[0, 5, 2:30] = 1  # found down to 0.9
        target[1, 40, 10:40] = 1  # found down to 0.6
        probs = np.zeros_like(target)
        probs[0, 5, 2:30] = 0.9
        probs[1, 40, 10:40] = 0.6
        probs[0, 30:33, 30:33] = 0.95  # a false component at every threshold
        probs[1, 10:13, 10:13] = 0.55  # one more below 0.6
        weight = np.ones_like(target)
        per_false = 4096**2 / target.size  # one false component, per 4k x 4k detector
        thresholds = np.array([0.5, 0.7])
        rows = {}
        for budget in (2.5 * per_false, 1.5 * per_false, 0.5 * per_false):
            out = _object_metrics(probs, target, weight, thresholds, fp_budget=budget)
            rows[budget] = (out["budget_threshold"], out["object_recall_at_fp"])
            self.assertEqual(out["fp_budget"], budget)
        self.assertEqual(rows[2.5 * per_false], (0.5, 1.0))
        self.assertEqual(rows[1.5 * per_false][0], 0.7)
        self.assertAlmostEqual(rows[1.5 * per_false][1], 0.5)
        # Over budget at every threshold: the highest, its recall scaled by budget / rate.
        self.assertEqual(rows[0.5 * per_false][0], 0.7)
        self.assertAlmostEqual(rows[0.5 * per_false][1], 0.25)
        curve = {row[0]: row[4] for row in out["object_curve"]}
        self.assertAlmostEqual(curve[0.5], 2 * per_false)
        self.assertAlmostEqual(curve[0.7], per_false)
        # Unusable pixels do not count in the area.
        weight[1] = 0
        out = _object_metrics(probs, target, weight, thresholds, fp_budget=per_false)
        self.assertAlmostEqual(out["fp_per_4k_at_budget_threshold"], 2 * per_false)

    def test_task_settings(self):
        """The trainTrailDetector config fields reach the training settings; defaults change nothing."""
        from lsst.trail_detect.training.loop import TrainingConfig
        from lsst.trail_detect.training.train_tasks import TrainTrailDetectorConfig, TrainTrailDetectorTask

        config = TrainTrailDetectorConfig()
        plain = TrainTrailDetectorTask(config=config)._training_config()
        self.assertIsNone(plain.instance_balance)
        self.assertIsNone(plain.oversample_small_trails)
        self.assertEqual(plain.selection_metric, "pixel_f1")
        self.assertEqual(plain.selection_fp_budget, TrainingConfig().selection_fp_budget)
        config.instance_balance_power = 0.5
        config.short_trail_boost = 3.0
        config.selection_metric = "object_f1"
        config.selection_fp_budget = 80.0
        tuned = TrainTrailDetectorTask(config=config)._training_config()
        self.assertEqual(tuned.selection_fp_budget, 80.0)
        self.assertEqual(tuned.instance_balance, {"power": 0.5, "reference_pixels": 400.0, "max_factor": 4.0})
        self.assertEqual(tuned.oversample_small_trails, {"max_extent": 16.0, "factor": 3.0})
        self.assertEqual(tuned.selection_metric, "object_f1")
        self.assertIsNone(plain.line_filters)
        config.line_filter_lengths = [9.0, 25.0]
        config.line_filter_angles = [8, 16]
        config.validate()
        self.assertEqual(
            TrainTrailDetectorTask(config=config)._training_config().line_filters, [[9, 8], [25, 16]]
        )
        config.line_filter_angles = [8]
        with self.assertRaisesRegex(Exception, "line_filter_lengths"):
            config.validate()

    def test_selection_metric_checked(self):
        from lsst.trail_detect.training.loop import TrainingConfig

        with self.assertRaisesRegex(ValueError, "selection_metric"):
            TrainingConfig(selection_metric="loss")
        with self.assertRaisesRegex(ValueError, "selection_fp_budget"):
            TrainingConfig(selection_fp_budget=0.0)


class DistributedTestCase(lsst.utils.tests.TestCase):
    def test_ddp_two_cpu_processes(self):
        """torchrun with 2 CPU processes (gloo) trains and writes one model."""
        from lsst.trail_detect.models.storage import TrailDetectorModel

        with tempfile.TemporaryDirectory() as tmp:
            paths = write_trail_shards(tmp)
            out = Path(tmp, "ddp.safetensors")
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            import json

            settings = json.dumps(
                {
                    "architecture": TINY_TRAIL,
                    "max_steps_per_epoch": 3,
                    "batch_size": 4,
                    "threads": 1,
                    "progress": False,
                }
            )
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                "2",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                "-m",
                "lsst.trail_detect.training",
                *map(str, paths),
                "--out",
                str(out),
                "--epochs",
                "2",
                "--config",
                settings,
            ]
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=600,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
            )
            self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
            model = TrailDetectorModel.load(out)
            self.assertEqual(model.metadata["provenance"]["world_size"], 2)
            self.assertEqual(len(model.metadata["history"]), 2)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
